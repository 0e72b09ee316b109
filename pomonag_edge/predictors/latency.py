"""Latency model: a shared arch embedding pretrained on 32 measured devices, a per-device head fitted from a few timings.

Why this shape: across the shipped NB201 tables, log-latency on every device is close to a linear function
of one small learned embedding of the arch, ``log ms ~ w_d . phi(arch) + b_d``. The heads ``(w_d, b_d)`` of
the training devices form a prior over what a device looks like, so a new device needs only a handful of
whole-net timings: its head is the MAP estimate under that prior (Bayesian linear regression, the noise
level chosen by marginal likelihood). This is HELP's idea (a device embedding inferred from a few measured
nets) in closed form, with a mixture prior (see ``mixture_head``). A profile with its own per-op LUT is
modelled instead as ``scale x LUT-sum`` (see ``fit_lut_scale``): on this CPU that beat the head every time.

The embedding cannot hold everything a training table knows (fine structure a sibling device shares), so
the prediction is the mean, in log space, of that head and a *sibling-table* model (see ``sibling_fit``):
every training table and every pair of them, affinely fitted in log space to the timings, averaged with
weights from their leave-one-out error. On the leave-one-device-out benchmark (10 shots) the single-table
version lifted mean Spearman 0.938 -> 0.946; the pairs lift it to 0.949 and MAPE 10.6% -> 9.9%.

The model knows its own error: leave-one-out (cross-validated beyond 10) residuals on the calibration
timings give a relative-error quantile that ``generate`` adds to predictions as a budget margin.

Tried on the same leave-one-device-out protocol (10 shots, 5 seeds, 32 devices) and not adopted, because
none raised the mean Spearman by more than 0.001: an ensemble of two embeddings, their concatenation as
one embedding, op-count / params / FLOPs features appended to phi, an episodic (HELP-style, closed-form
ridge) few-shot loss or a pairwise ranking loss in pretraining, a single evidence-weighted mixture over
head and sibling components instead of the fixed 0.5 mix (selection loses to hedging on 10 timings), a
sweep of the prior weights, sibling temperature and mix, triples of tables beside the pairs (0.9487 vs
0.9486), the head's reconstructions of the tables as extra sibling candidates (0.9489), head-prior components
at midpoints of pairs of training heads (0.9491), a Bayesian sibling regression with a prior learned from how
each training table is explained by the others (0.9419), and a ridge correction over all tables and phi with
evidence-chosen strength (-0.002 at 10 shots, +0.003 at 50). The family is near its ceiling: the same model fitted by least squares on a held-out
device's *whole* table reaches 0.970 on average, and 0.67 on edgetpu-large, whose table jumps ~6x between
two modes that no other device's table predicts (``benchmarks/latency_modes.py``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import ProfileError, UserError

LATENCY_CHECKPOINT = "latency_nb201.pt"
MODEL_KIND = "nb201-embedding-map"
MODEL_VERSION = 3  # 2: + sibling-table model; 3: + two-sibling fits; older stored states are refitted
SIBLING_MIX = 0.5  # weight of the sibling-table model in log space (the rest: the embedding head)
REFERENCE_KIND = "reference-table"
ERROR_QUANTILE = 0.9
MIN_CALIBRATION = 3
NOISE_GRID = np.geomspace(0.005, 0.5, 41)  # candidate noise std of log-ms
LUT_KIND = "nb201-lut-scale"  # a profile with its own LUT: measured ~ scale * LUT-sum
POPULATION_WEIGHT = 0.2  # prior weight of the broad population Gaussian; the rest is split over device heads
DEVICE_COV_SCALE = 0.03  # each training device's component: its head, covariance 0.03 x the population's


# ------------------------------------------------------------------------------------------ the network


def _build_embedding(dim: int, hidden: int):
    import torch.nn as nn

    from .features import NUM_FEATURES, nb201_features

    class LatencyEmbedding(nn.Module):
        """(n, 6, 5) encoding -> (n, dim) embedding; differentiable, so guidance can use it."""

        def __init__(self):
            super().__init__()
            self.dim, self.hidden = dim, hidden
            self.net = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, dim))

        def forward(self, x):
            return self.net(nb201_features(x))

    return LatencyEmbedding()


def shipped_device_tables(names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Device names and an (15625, D) array of measured ms (NaN = not measured), in shipped order."""
    from ..data import nb201_latency_ms, nb201_latency_tables

    if names is None:
        names = [t.name for t in nb201_latency_tables()]
    return list(names), np.stack([nb201_latency_ms(n) for n in names], axis=1)


def pretrain_embedding(latency_ms: np.ndarray, dim: int = 12, hidden: int = 64, steps: int = 600,
                       batch: int = 2048, lr: float = 3e-3, seed: int = 0, progress=None):
    """Fit phi and one head per column of ``latency_ms`` (all 15,625 NB201 nets x D devices).

    Loss: Huber on per-device standardized log-ms, NaN cells ignored. Returns the embedding module (eval mode).
    """
    import torch

    from ..spaces.nb201 import SPACE

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(SPACE.encode(list(SPACE.enumerate())))
    emb = _build_embedding(dim, hidden)
    return fit_embedding_heads(emb, dim, (x,), latency_ms, steps=steps, batch=batch, lr=lr, gen=gen,
                               progress=progress)


def fit_embedding_heads(emb, dim: int, inputs: tuple, latency_ms: np.ndarray, *, steps: int, batch: int, lr: float,
                        gen, weight_decay: float = 0.0, progress=None):
    """Train ``emb(*inputs)`` (each input: one row per net) with one linear head per column of ``latency_ms``:
    Huber on per-column standardized log-ms, NaN cells ignored. Both spaces' pretraining; returns ``emb``
    in eval mode."""
    import torch

    logy = np.log(latency_ms)
    mean, std = np.nanmean(logy, axis=0), np.nanstd(logy, axis=0)
    z = torch.from_numpy(np.nan_to_num((logy - mean) / std, nan=0.0)).float()
    mask = torch.from_numpy(np.isfinite(logy)).float()
    heads = torch.nn.Linear(dim, logy.shape[1])
    opt = torch.optim.Adam(list(emb.parameters()) + list(heads.parameters()), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        idx = torch.randint(0, len(inputs[0]), (batch,), generator=gen)
        pred = heads(emb(*(v[idx] for v in inputs)))
        loss = (torch.nn.functional.huber_loss(pred, z[idx], reduction="none", delta=1.0) * mask[idx]).sum()
        loss = loss / mask[idx].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    emb.eval()
    return emb


def embed_all(emb) -> np.ndarray:
    """phi of all 15,625 nets in topology-index order, float64."""
    import torch

    from ..spaces.nb201 import SPACE

    with torch.no_grad():
        return emb(torch.from_numpy(SPACE.encode(list(SPACE.enumerate())))).double().numpy()


def fit_heads(phi: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    """Least-squares heads ``[w_d, b_d]`` in raw log-ms for each device column: (D, dim + 1).

    Fitted on connected nets only: a disconnected net (output independent of the input) is never
    generated or deployed, and pixel3 times those at ~0.004 ms, outliers that would bend its head.
    """
    from ..spaces.nb201 import SPACE

    connected = np.array([SPACE.is_valid(a) for a in SPACE.enumerate()])
    design = np.hstack([phi, np.ones((len(phi), 1))])
    heads = []
    for col in np.log(latency_ms).T:
        ok = np.isfinite(col) & connected
        heads.append(np.linalg.lstsq(design[ok], col[ok], rcond=None)[0])
    return np.array(heads)


def head_prior(heads: np.ndarray, shrink: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the training devices' heads (optionally shrunk toward its diagonal)."""
    mean = heads.mean(axis=0)
    cov = np.cov(heads, rowvar=False)
    cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov))
    return mean, cov + 1e-6 * np.eye(len(mean))


def train_latency_checkpoint(seed: int = 0, steps: int = 1500, dim: int = 16, hidden: int = 128,
                             devices: Sequence[str] | None = None, progress=None) -> dict:
    """The shipped checkpoint's content: embedding weights, every training device's head, the prior.

    The shipped recipe is larger than ``pretrain_embedding``'s defaults (the few-shot benchmark's per-fold
    recipe): few-shot quality on unseen devices is the same, but the in-sample fit that reference profiles'
    model form uses is better (mean Spearman over the 32 tables 0.974 vs 0.964; edgetpu-large 0.91 vs 0.72)."""
    names, ms = shipped_device_tables(devices)
    emb = pretrain_embedding(ms, dim=dim, hidden=hidden, steps=steps, seed=seed, progress=progress)
    heads = fit_heads(embed_all(emb), ms)
    mean, cov = head_prior(heads)
    import torch

    return {
        "kind": "pomonag-edge/latency-embedding", "version": 1,
        "config": {"dim": dim, "hidden": hidden},
        "state_dict": emb.state_dict(),
        "devices": names,
        "heads": torch.from_numpy(heads), "prior_mean": torch.from_numpy(mean),
        "prior_cov": torch.from_numpy(cov),
        "meta": {"seed": seed, "steps": steps, "trained_on": "all shipped NB201 latency tables",
                 "command": f"pomonag-edge train latency --seed {seed}"},
    }


@dataclass
class PretrainedEmbedding:
    """A loaded latency embedding, its training devices' heads and the head prior; ``sha256`` names the
    checkpoint it came from. Both spaces' ``Pretrained`` extend it."""

    embedding: object
    devices: list[str]
    heads: np.ndarray
    prior_mean: np.ndarray
    prior_cov: np.ndarray
    sha256: str = ""
    file: str = ""

    def prior_components(self) -> list:
        """The head prior as mixture components ``(weight, mean, cov)``: the population Gaussian, and one
        narrow component per training device's head (see ``mixture_head``)."""
        comps = [(POPULATION_WEIGHT, self.prior_mean, self.prior_cov)]
        for head in self.heads:
            comps.append(((1 - POPULATION_WEIGHT) / len(self.heads), head, DEVICE_COV_SCALE * self.prior_cov))
        return comps


@dataclass
class Pretrained(PretrainedEmbedding):
    """The NB201 embedding, with its whole-space table of phi and the training devices' tables."""

    _phi_all: np.ndarray | None = field(default=None, repr=False)
    _tables_ms: np.ndarray | None = field(default=None, repr=False)
    _fill: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, sha256: str = "", file: str = "") -> "Pretrained":
        emb = _build_embedding(**ckpt["config"])
        emb.load_state_dict(ckpt["state_dict"])
        emb.eval()
        return cls(emb, list(ckpt["devices"]), ckpt["heads"].double().numpy(),
                   ckpt["prior_mean"].double().numpy(), ckpt["prior_cov"].double().numpy(), sha256, file)

    @classmethod
    def from_tables(cls, ms: np.ndarray, names: Sequence[str], **train_kw) -> "Pretrained":
        """Pretrain on the given device columns (the few-shot benchmark's per-fold step)."""
        emb = pretrain_embedding(ms, **train_kw)
        phi = embed_all(emb)
        heads = fit_heads(phi, ms)
        mean, cov = head_prior(heads)
        return cls(emb, list(names), heads, mean, cov, _phi_all=phi, _tables_ms=np.asarray(ms, dtype=np.float64))

    def sibling_tables(self) -> np.ndarray:
        """(15625, D) log-ms of the training devices, unmeasured cells filled by their heads."""
        if self._fill is None:
            if self._tables_ms is None:
                self._tables_ms = shipped_device_tables(self.devices)[1]
            log = np.log(self._tables_ms)
            head = np.hstack([self.phi(), np.ones((len(log), 1))]) @ self.heads.T
            self._fill = np.where(np.isfinite(log), log, head)
        return self._fill

    def phi(self, archs=None) -> np.ndarray:
        """Embedding of ``archs`` (all 15,625 when None); the whole-space table is computed once."""
        if self._phi_all is None:
            self._phi_all = embed_all(self.embedding)
        if archs is None:
            return self._phi_all
        from ..spaces.nb201 import SPACE

        return self._phi_all[[SPACE.index(a) for a in archs]]


def load_pretrained(path=None) -> Pretrained:
    """The shipped latency embedding (or the checkpoint at ``path``), built once per process."""
    from .checkpoints import checkpoint_path, load_built

    return load_built(path or checkpoint_path(LATENCY_CHECKPOINT), Pretrained.from_checkpoint)


# ------------------------------------------------------------------------------------------ adaptation


def _log_evidence(design, y, mean, cov, noise_std) -> float:
    r = y - design @ mean
    c = design @ cov @ design.T + noise_std**2 * np.eye(len(y))
    return -0.5 * (np.linalg.slogdet(c)[1] + r @ np.linalg.solve(c, r))


def _posterior_mean(design, y, mean, cov, noise_std) -> np.ndarray:
    prec = np.linalg.inv(cov)
    a = design.T @ design / noise_std**2 + prec
    return np.linalg.solve(a, design.T @ y / noise_std**2 + prec @ mean)


def mixture_head(design: np.ndarray, y: np.ndarray, components) -> tuple[np.ndarray, float]:
    """Posterior-mean head under a mixture-of-Gaussians prior ``[(weight, mean, cov), ...]``.

    Why a mixture: a new device usually resembles a few training devices (the same GPU at another batch,
    a sibling phone) more than their average; each training head is a narrow component, the population
    Gaussian a broad one, and the few timings weigh them by marginal likelihood (noise std marginalised
    over ``NOISE_GRID``). Returns (theta, posterior-mean noise std).
    """
    logs, thetas, noises = [], [], []
    for weight, mean, cov in components:
        for sd in NOISE_GRID[::4]:
            logs.append(math.log(weight) + _log_evidence(design, y, mean, cov, sd))
            thetas.append(_posterior_mean(design, y, mean, cov, sd))
            noises.append(sd)
    logs = np.array(logs)
    w = np.exp(logs - logs.max())
    w /= w.sum()
    return w @ np.array(thetas), float(w @ np.array(noises))


def sibling_fit(tables: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """``y ~ sum_j coef_j * log ms_j + shift``: the leave-one-out-weighted average of every one- and
    two-sibling least-squares fit, collapsed into one linear map of the D tables.

    ``tables``: (n, D) log-ms of the calibration nets on the D training devices. Returns (coef (D,), shift).
    Why: a sibling device's measured table carries structure no shared low-rank embedding keeps (whole-ms
    phones, int8 mobile CPUs); fits of two or three parameters cannot overfit 10 timings, the leave-one-out
    error (closed form through the hat matrix) says which to trust, and pairs reach devices that sit between
    two training devices (pixel3 0.894 -> 0.909, edge-tpu-int8 0.874 -> 0.903 Spearman at 10 shots).
    """
    n, dev = tables.shape
    groups = [np.arange(dev)[:, None]]  # each group: (candidates, size) device indices
    if dev > 1:
        groups.append(np.array(list(itertools.combinations(range(dev), 2))))
    fits, loo = [], []  # per group: (candidates, size + 1) coefficients, (candidates,) leave-one-out MSE
    for idx in groups:
        design = np.concatenate([tables[:, idx].transpose(1, 0, 2), np.ones((len(idx), n, 1))], axis=2)
        pinv = np.linalg.pinv(design)
        c = pinv @ y
        hat = np.clip(np.einsum("cnk,ckn->cn", design, pinv), 0, 1 - 1e-9)
        loo.append(np.mean(((np.einsum("cnk,ck->cn", design, c) - y) / (1 - hat)) ** 2, axis=1))
        fits.append(c)
    loo = np.concatenate(loo)
    weights = np.exp(-(loo - loo.min()) / (loo.min() + 1e-12))
    weights = np.split(weights / weights.sum(), np.cumsum([len(idx) for idx in groups])[:-1])
    coef, shift = np.zeros(dev), 0.0
    for idx, c, w in zip(groups, fits, weights):
        for k in range(idx.shape[1]):
            np.add.at(coef, idx[:, k], w * c[:, k])
        shift += float(w @ c[:, -1])
    return coef, shift


def _fit_head(design, tables, y, components):
    """The adapted model: (theta of the embedding head, sibling coef, sibling shift, noise std)."""
    theta, noise = mixture_head(design, y, components)
    return (theta, *sibling_fit(tables, y), noise)


def _predict_log(design, tables, theta, coef, shift) -> np.ndarray:
    return (1 - SIBLING_MIX) * (design @ theta) + SIBLING_MIX * (tables @ coef + shift)


def cv_relative_errors(design: np.ndarray, y: np.ndarray, components, folds: int = 10,
                       tables: np.ndarray | None = None) -> np.ndarray:
    """|predicted / measured - 1| for each calibration net, predicted by a head fitted without it.

    Leave-one-out up to ``folds`` timings, ``folds``-fold cross-validation beyond (bounded cost)."""
    group = np.arange(len(y)) % min(folds, len(y))
    out = np.empty(len(y))
    for g in np.unique(group):
        held = group == g
        if tables is None:
            theta, _ = mixture_head(design[~held], y[~held], components)
            out[held] = np.abs(np.expm1(design[held] @ theta - y[held]))
        else:
            theta, coef, shift, _ = _fit_head(design[~held], tables[~held], y[~held], components)
            out[held] = np.abs(np.expm1(_predict_log(design[held], tables[held], theta, coef, shift) - y[held]))
    return out


def lut_sum_ms(space, profile, archs) -> np.ndarray:
    """The profile's LUT-sum (``hardware.lut``), checked positive since the model takes its log."""
    from ..hardware.lut import lut_sum_ms as lut_sum

    out = np.asarray(lut_sum(space, profile, list(archs)), dtype=np.float64)
    if not np.all(out > 0):
        raise ProfileError(f"profile {profile.name!r}: its LUT sums to a non-positive latency for some net")
    return out


def _soft_lut_sum_ms(space, profile, x):
    """Differentiable LUT-sum over a (n, 6, 5) encoding: fixed blocks + sum over live edges of op cost."""
    import torch

    from ..spaces.nb201 import NB201Arch, SKIP
    from .features import soft_live

    # cost of each op on one edge across all stages = LUT-sum(all edges that op) - LUT-sum(no live op), / 6
    base = float(lut_sum_ms(space, profile, [NB201Arch((SKIP,) * 6)])[0])
    per_op = [0.0, 0.0]  # none, skip cost nothing
    for op in (2, 3, 4):
        per_op.append((float(lut_sum_ms(space, profile, [NB201Arch((op,) * 6)])[0]) - base) / 6)
    cost = torch.tensor(per_op, dtype=x.dtype)
    live = soft_live(x)
    return base + ((x * cost).sum(-1) * live).sum(-1)


def _soft_table_lookup(values: np.ndarray, x):
    """Multilinear extension of a per-arch table over a (n, 6, 5) encoding: sum over archs of
    value * prod_e x[e, op_e]. Exact on one-hot input, smooth on relaxed input; contracted edge by edge
    (n x 5^5 at most), so it costs little."""
    import torch

    from ..spaces.nb201 import NUM_EDGES, NUM_OPS, SPACE

    grid = np.zeros((NUM_OPS,) * NUM_EDGES)
    ops = np.array([a.ops for a in SPACE.enumerate()])
    grid[tuple(ops.T)] = values
    t = torch.as_tensor(grid, dtype=x.dtype).reshape(1, NUM_OPS, -1).expand(len(x), -1, -1)
    for e in range(NUM_EDGES):
        t = torch.einsum("nk,nkm->nm", x[:, e, :], t.reshape(len(x), NUM_OPS, -1))
    return t.reshape(len(x))


class LatencyModel:
    """Predicts ms for any net of a profile's target; knows its error; serialises to ``to_dict()``.

    ``table_ms`` (reference profiles) makes ``predict_ms`` an exact lookup with zero error; the fitted
    head is still there for ``log_ms_torch`` (differentiable guidance). ``lut_scale_log`` (profiles with
    their own LUT) makes the model ``exp(lut_scale_log) * LUT-sum``, see ``fit_lut_scale``.
    """

    def __init__(self, space, pretrained: Pretrained, theta: np.ndarray, relative_error: float,
                 profile=None, table_ms: np.ndarray | None = None, state: dict | None = None,
                 sibling: tuple | None = None, lut_scale_log: float | None = None):
        self.space, self.pretrained, self.theta = space, pretrained, np.asarray(theta, dtype=np.float64)
        # (coef over pretrained.devices, shift) of the sibling-table model, or None (the head alone)
        self.sibling = None if sibling is None else (np.asarray(sibling[0], dtype=np.float64), float(sibling[1]))
        self.relative_error = float(relative_error)
        self.profile, self.table_ms, self.lut_scale_log = profile, table_ms, lut_scale_log
        self.state = state or {}

    def _design(self, archs) -> np.ndarray:
        return np.hstack([self.pretrained.phi(archs), np.ones((len(archs), 1))])

    def model_ms(self, archs) -> np.ndarray:
        """The fitted model's prediction (never the table)."""
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        if self.lut_scale_log is not None:
            return math.exp(self.lut_scale_log) * lut_sum_ms(self.space, self.profile, archs)
        if self.sibling is None:
            return np.exp(self._design(archs) @ self.theta)
        tables = self.pretrained.sibling_tables()[[self.space.index(a) for a in archs]]
        return np.exp(_predict_log(self._design(archs), tables, self.theta, *self.sibling))

    def predict_ms(self, archs) -> np.ndarray:
        """Milliseconds per forward pass, one per arch; measured value for reference profiles."""
        archs = list(archs)
        pred = self.model_ms(archs)
        if self.table_ms is not None and archs:
            measured = self.table_ms[[self.space.index(a) for a in archs]]
            pred = np.where(np.isfinite(measured), measured, pred)
        return pred

    def margin_ms(self, pred_ms) -> np.ndarray:
        """How much to add to a prediction so it is an upper bound ~90% of the time."""
        return np.asarray(pred_ms, dtype=np.float64) * self.relative_error

    def log_ms_torch(self, x):
        """Differentiable log-ms over a (n, 6, 5) encoding (one-hot or relaxed), for guidance."""
        import torch

        if self.lut_scale_log is not None:
            return self.lut_scale_log + torch.log(_soft_lut_sum_ms(self.space, self.profile, x))
        w = torch.as_tensor(self.theta, dtype=x.dtype)
        k = self.pretrained.embedding.dim
        out = self.pretrained.embedding(x.float()).to(x.dtype) @ w[:k] + w[k]
        if self.sibling is None:
            return out
        return (1 - SIBLING_MIX) * out + SIBLING_MIX * _soft_table_lookup(self._sibling_table(), x)

    def _sibling_table(self) -> np.ndarray:
        """The sibling-table model's log-ms of all 15,625 nets (index order), computed once."""
        if getattr(self, "_sibling_all", None) is None:
            coef, shift = self.sibling
            self._sibling_all = self.pretrained.sibling_tables() @ coef + shift
        return self._sibling_all

    def to_dict(self) -> dict:
        return self.state


def _check_space(space, profile=None, expected: str = "nb201"):
    """The model in this module is for ``expected``'s space (latency_mbv3 reuses this with "mbv3")."""
    if space.name != expected:
        raise UserError(f"this latency model is for the {expected} space (got {space.name!r})")
    if profile is not None and profile.space != space.name:
        raise ProfileError(f"profile {profile.name!r} is for space {profile.space!r}, not {space.name!r}")


def embedding_ref(pre) -> dict:
    """How a fitted model names the pretrained embedding it was fitted on (file and content hash)."""
    from pathlib import Path

    return {"checkpoint": Path(pre.file).name if pre.file else None, "sha256": pre.sha256}


def fit_lut_scale(lut_ms: np.ndarray, latency_ms: np.ndarray) -> tuple[float, np.ndarray]:
    """log scale = median of log(measured / LUT-sum), and each timing's leave-one-out |predicted/measured - 1|.

    Why, for a profile with its own LUT: its LUT-sum already ranks nets at the noise ceiling (DESIGN.md);
    what the timings must supply is the scale (fusion, per-call overhead), and a median is not pulled by
    one timing caught in a burst of load. Measured on this CPU (benchmarks/profile_cpu.py and two saved
    profiles), it beat the pretrained embedding head with log(LUT-sum) as a feature every time.
    """
    d = np.log(np.asarray(latency_ms, dtype=np.float64)) - np.log(np.asarray(lut_ms, dtype=np.float64))
    loo = np.array([np.median(np.delete(d, i)) for i in range(len(d))])
    return float(np.median(d)), np.abs(np.expm1(loo - d))


def _fit_lut_scale_model(space, archs, latency_ms, pretrained: Pretrained, profile) -> tuple[LatencyModel, dict]:
    scale, errors = fit_lut_scale(lut_sum_ms(space, profile, archs), latency_ms)
    rel = float(np.quantile(errors, ERROR_QUANTILE))
    state = {"kind": LUT_KIND, "version": 1, "lut_scale_log": scale, "lut_entries": len(profile.lut),
             "relative_error": rel, "relative_error_quantile": ERROR_QUANTILE,
             "cv_relative_errors": [round(float(v), 6) for v in errors], "n_calibration": len(errors)}
    model = LatencyModel(space, pretrained, np.zeros(0), rel, profile=profile, state=state, lut_scale_log=scale)
    return model, state


def fit_calibration(space, archs, latency_ms, pretrained: Pretrained, profile=None) -> tuple[LatencyModel, dict]:
    """Adapt to measured (arch, ms) pairs; the core of ``fit_profile_model``. A profile with its own LUT
    gets ``LUT-sum x scale``; one without (measured elsewhere) the pretrained head under its prior."""
    _check_space(space)
    y = np.log(np.asarray(latency_ms, dtype=np.float64))
    if len(y) < MIN_CALIBRATION:
        raise UserError(f"the latency model needs at least {MIN_CALIBRATION} calibration timings, got {len(y)}")
    if profile is not None and profile.lut:
        return _fit_lut_scale_model(space, list(archs), latency_ms, pretrained, profile)
    components = pretrained.prior_components()
    model = LatencyModel(space, pretrained, components[0][1], 0.0, profile=profile)
    design = model._design(list(archs))
    tables = pretrained.sibling_tables()[[space.index(a) for a in archs]]
    theta, coef, shift, noise = _fit_head(design, tables, y, components)
    errors = cv_relative_errors(design, y, components, tables=tables)
    rel = float(np.quantile(errors, ERROR_QUANTILE))
    model.theta, model.relative_error, model.sibling = theta, rel, (coef, shift)
    features = [f"phi{i}" for i in range(len(pretrained.prior_mean) - 1)] + ["bias"]
    model.state = {
        "kind": MODEL_KIND, "version": MODEL_VERSION, "embedding": embedding_ref(pretrained),
        "features": features,
        "coef": [float(v) for v in theta], "noise_log_std": noise,
        "sibling": {"mix": SIBLING_MIX, "devices": list(pretrained.devices), "coef": [float(v) for v in coef],
                    "shift": shift},
        "relative_error": rel, "relative_error_quantile": ERROR_QUANTILE,
        "cv_relative_errors": [round(float(v), 6) for v in errors], "n_calibration": int(len(y)),
    }
    return model, model.state


def _reference_model(space, profile, pre: Pretrained) -> tuple[LatencyModel, dict]:
    from ..data import nb201_latency_ms

    table = nb201_latency_ms(profile.reference)
    if profile.reference in pre.devices:
        theta = pre.heads[pre.devices.index(profile.reference)]
    else:  # a table the checkpoint was not trained on: fit its head on the whole table
        theta = fit_heads(pre.phi(), table[:, None])[0]
    state = {"kind": REFERENCE_KIND, "version": 1, "table": profile.reference, "embedding": embedding_ref(pre),
             "coef": [float(v) for v in theta], "relative_error": 0.0}
    return LatencyModel(space, pre, theta, 0.0, profile=profile, table_ms=table, state=state), state


def fit_profile_model(space, profile, pretrained: Pretrained | None = None) -> dict:
    """Fit the latency model to a profile's calibration timings; returns the JSON state to store in
    ``profile.latency_model``. Reference profiles get their table's head and zero error."""
    return _fit(space, profile, pretrained)[1]


def _fit(space, profile, pretrained=None):
    _check_space(space, profile)
    pre = pretrained or load_pretrained()
    if profile.reference:
        return _reference_model(space, profile, pre)
    return fit_calibration(space, *calibration_timings(space, profile), pre, profile)


def calibration_timings(space, profile) -> tuple[list, list[float]]:
    """A profile's calibration archs and measured ms (either space); none at all is the user's to fix."""
    if not profile.calibration:
        raise ProfileError(f"profile {profile.name!r} has no calibration timings: the latency model needs "
                           f"at least {MIN_CALIBRATION} (`pomonag-edge calibrate` adds them)")
    return ([space.parse(item["arch"]) for item in profile.calibration],
            [float(item["latency_ms"]) for item in profile.calibration])


def latency_model_for(space, profile, pretrained: Pretrained | None = None) -> LatencyModel:
    """The profile's latency model: its stored state when it matches the shipped embedding, else refitted."""
    _check_space(space, profile)
    pre = pretrained or load_pretrained()
    state = profile.latency_model
    if (isinstance(state, dict) and state.get("kind") == LUT_KIND and state.get("version") == 1 and profile.lut
            and state.get("lut_entries") == len(profile.lut)):
        return LatencyModel(space, pre, np.zeros(0), state["relative_error"], profile=profile, state=state,
                            lut_scale_log=state["lut_scale_log"])
    if (isinstance(state, dict) and state.get("kind") == MODEL_KIND and state.get("version") == MODEL_VERSION
            and not profile.reference and state.get("embedding", {}).get("sha256") == pre.sha256
            and state.get("sibling", {}).get("devices") == list(pre.devices)
            and state["sibling"].get("mix") == SIBLING_MIX):
        sib = state["sibling"]
        return LatencyModel(space, pre, np.array(state["coef"]), state["relative_error"], profile=profile,
                            state=state, sibling=(sib["coef"], sib["shift"]))
    return _fit(space, profile, pre)[0]
