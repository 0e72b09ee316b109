"""The latency model, one family for every space: a shared arch embedding pretrained on measured devices, and
a per-device head fitted from a few timings.

Why this shape: across the shipped tables, log-latency on every device is close to a linear function of one
small learned embedding of the arch, ``log ms ~ w_d . phi(arch) + b_d``. The training devices' heads
``(w_d, b_d)`` form a prior over what a device looks like, so a new device needs only a handful of whole-net
timings: its head is the posterior mean under a mixture prior (``mixture_head``; HELP's idea in closed form).
Where the shipped tables hold every net of the space, a *sibling-table* model (``sibling_fit``) is averaged in
log space with the head: a sibling device's table carries structure no low-rank embedding keeps. What is
space-specific (the embedding network, its inputs, the tables) is the space's ``latency_recipe``.

Each kind of fitted model is a small class with ``to_state``/``from_state``:

- ``HeadModel``: the embedding head (+ sibling tables), for timings without a LUT, or a reference setting
  whose table does not cover the space (its error measured on held-out nets);
- ``TableModel``: a reference profile whose table covers the space: an exact lookup, zero error;
- ``LutModel``: a profile with its own per-op LUT: ``scale x LUT-cost ^ power``;
- ``ProxyModel``: a space with no pretrained embedding: log-linear in MACs and params.

Every model knows its own error: cross-validated relative errors on the calibration timings give the quantile
that ``generate`` adds to predictions as a budget margin.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ProfileError, UserError
from ..spaces.lut import lut_cost, positive_lut_ms

SIBLING_MIX = 0.5  # weight of the sibling-table model in log space (the rest: the embedding head)
ERROR_QUANTILE = 0.9
MIN_CALIBRATION = 3
MIN_POWER_FIT = 8  # timings needed before the LUT cost's exponent is fitted too
NOISE_GRID = np.geomspace(0.005, 0.5, 41)  # candidate noise std of log-ms
POPULATION_WEIGHT = 0.2  # prior weight of the broad population Gaussian; the rest is split over device heads
DEVICE_COV_SCALE = 0.03  # each training device's component: its head, covariance 0.03 x the population's


# ------------------------------------------------------------------------------------------ pretraining


def fit_embedding_heads(emb, dim: int, inputs: tuple, latency_ms: np.ndarray, *, steps: int, batch: int, lr: float,
                        gen, weight_decay: float = 0.0, progress=None):
    """Train ``emb(*inputs)`` (each input: one row per net) with one linear head per column of ``latency_ms``:
    Huber on per-column standardized log-ms, NaN cells ignored. Returns ``emb`` in eval mode."""
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


def pretrain_embedding(space, archs, latency_ms: np.ndarray, *, dim: int, hidden: int, steps: int, seed: int = 0,
                       batch: int | None = None, progress=None):
    """The space's embedding (``latency_recipe``) and one head per column of ``latency_ms`` (archs x devices),
    trained from ``seed``. Returns (embedding in eval mode, its config)."""
    import torch

    recipe = space.latency_recipe
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    archs = list(archs)
    config = recipe.config_for(archs, dim, hidden)
    inputs = recipe.inputs(archs)
    emb = recipe.build(config)
    fit_embedding_heads(emb, emb.dim, inputs, latency_ms, steps=steps, batch=batch or recipe.batch, lr=recipe.lr, gen=gen,
                        weight_decay=recipe.weight_decay, progress=progress)
    return emb, config


def embed(space, emb, archs) -> np.ndarray:
    """phi of ``archs``, float64 (n, dim)."""
    import torch

    with torch.no_grad():
        return emb(*space.latency_recipe.inputs(list(archs))).double().numpy()


def _design(phi: np.ndarray) -> np.ndarray:
    return np.hstack([phi, np.ones((len(phi), 1))])


def fit_heads(space, archs, phi: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    """Least-squares heads ``[w_d, b_d]`` in raw log-ms per device column: (D, dim + 1). Invalid nets (output
    independent of the input) are left out: never deployed, and timed at ~0 ms where timed at all."""
    valid = np.array([space.is_valid(a) for a in archs])
    design = _design(phi)
    heads = []
    for col in np.log(latency_ms).T:
        ok = np.isfinite(col) & valid
        heads.append(np.linalg.lstsq(design[ok], col[ok], rcond=None)[0])
    return np.array(heads)


def head_prior(heads: np.ndarray, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the training devices' heads; ``floor`` (fraction of the mean variance) on the
    diagonal lets a device unlike the few training ones still move."""
    mean = heads.mean(axis=0)
    cov = np.cov(heads, rowvar=False)
    jitter = floor * np.mean(np.diag(cov)) if floor else 1e-6
    return mean, cov + jitter * np.eye(len(mean))


def rank_metrics(pred_ms: np.ndarray, true_ms: np.ndarray) -> dict:
    from scipy.stats import kendalltau, spearmanr

    rel = np.abs(pred_ms / true_ms - 1)
    return {"spearman": float(spearmanr(pred_ms, true_ms)[0]), "kendall": float(kendalltau(pred_ms, true_ms)[0]),
            "mape": float(rel.mean()), "rel_err_q90": float(np.quantile(rel, 0.9))}


@dataclass
class PretrainedEmbedding:
    """A loaded latency embedding of one space, its training devices' heads and the head prior; ``sha256``
    names the checkpoint it came from. ``heldout``: per device, the error of its head on nets held out of an
    identical fit (the margin of a reference profile whose table does not cover the space)."""

    space: object
    embedding: object
    devices: list[str]
    heads: np.ndarray
    prior_mean: np.ndarray
    prior_cov: np.ndarray
    sha256: str = ""
    file: str = ""
    heldout: dict = field(default_factory=dict)
    _phi_all: np.ndarray | None = field(default=None, repr=False)
    _tables_ms: np.ndarray | None = field(default=None, repr=False)
    _fill: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_checkpoint(cls, space, ckpt: dict, sha256: str = "", file: str = "") -> "PretrainedEmbedding":
        emb = space.latency_recipe.build(ckpt["config"])
        emb.load_state_dict(ckpt["state_dict"])
        emb.eval()
        return cls(space, emb, list(ckpt["devices"]), ckpt["heads"].double().numpy(),
                   ckpt["prior_mean"].double().numpy(), ckpt["prior_cov"].double().numpy(), sha256, file,
                   heldout=dict(ckpt.get("heldout", {})))

    @classmethod
    def from_tables(cls, space, archs, ms: np.ndarray, names: Sequence[str], **train_kw) -> "PretrainedEmbedding":
        """Pretrain on the given archs x devices (a few-shot benchmark's per-fold step; the tests')."""
        recipe = space.latency_recipe
        kw = {**recipe.fold, **train_kw}
        archs = list(archs)
        emb, _ = pretrain_embedding(space, archs, ms, **kw)
        phi = embed(space, emb, archs)
        heads = fit_heads(space, archs, phi, ms)
        mean, cov = head_prior(heads, recipe.prior_floor)
        covers = recipe.covers_space and len(archs) == space.size()
        return cls(space, emb, list(names), heads, mean, cov, _phi_all=phi if covers else None,
                   _tables_ms=np.asarray(ms, dtype=np.float64) if covers else None)

    @property
    def covers_space(self) -> bool:
        return self.space.latency_recipe.covers_space

    def prior_components(self) -> list:
        """The head prior as mixture components ``(weight, mean, cov)``: the population Gaussian, and one
        narrow component per training device's head (see ``mixture_head``)."""
        comps = [(POPULATION_WEIGHT, self.prior_mean, self.prior_cov)]
        for head in self.heads:
            comps.append(((1 - POPULATION_WEIGHT) / len(self.heads), head, DEVICE_COV_SCALE * self.prior_cov))
        return comps

    def phi(self, archs) -> np.ndarray:
        """Embedding of ``archs``; where the tables cover the space, read from its whole-space table (computed once)."""
        archs = list(archs)
        if not self.covers_space:
            return embed(self.space, self.embedding, archs)
        if self._phi_all is None:
            self._phi_all = embed(self.space, self.embedding, list(self.space.enumerate()))
        return self._phi_all[[self.space.table_index(a) for a in archs]]

    def sibling_tables(self) -> np.ndarray:
        """(space size, D) log-ms of the training devices in ``table_index`` order, unmeasured cells filled by
        their heads. Only where the tables cover the space."""
        if self._fill is None:
            if self._tables_ms is None:
                ms = {n: self.space.reference_latency_ms(n) for n in self.devices}
                self._tables_ms = np.stack([ms[n] for n in self.devices], axis=1)
            log = np.log(self._tables_ms)
            if self._phi_all is None:
                self._phi_all = embed(self.space, self.embedding, list(self.space.enumerate()))
            head = _design(self._phi_all) @ self.heads.T
            self._fill = np.where(np.isfinite(log), log, head)
        return self._fill


def train_latency_checkpoint(space, seed: int = 0, steps: int | None = None, dim: int | None = None,
                             hidden: int | None = None, devices: Sequence[str] | None = None, progress=None) -> dict:
    """The shipped checkpoint's content: embedding weights, every training device's head, the prior, and (where
    the tables do not cover the space) each device's held-out error, from a first fit on a seeded part of the
    nets (``heldout_fraction`` held out), before the final fit on all of them."""
    import torch

    recipe = space.latency_recipe
    kw = {"dim": dim or recipe.dim, "hidden": hidden or recipe.hidden, "steps": steps or recipe.steps, "seed": seed}
    archs, names, ms = recipe.tables()
    if devices is not None:
        ms = ms[:, [names.index(n) for n in devices]]
        names = list(devices)
    phases = 2 if recipe.heldout_fraction else 1
    phase = lambda k: None if progress is None else (lambda i, n, loss: progress(k * n + i, phases * n, loss))  # noqa: E731
    heldout = {}
    if recipe.heldout_fraction:
        perm = np.random.default_rng(seed).permutation(len(archs))
        held = np.zeros(len(archs), dtype=bool)
        held[perm[: int(recipe.heldout_fraction * len(archs))]] = True
        tr = np.flatnonzero(~held)
        emb, _ = pretrain_embedding(space, [archs[i] for i in tr], ms[tr], progress=phase(0), **kw)
        phi = embed(space, emb, archs)
        heads = fit_heads(space, [archs[i] for i in tr], phi[~held], ms[~held])
        pred = np.exp(_design(phi[held]) @ heads.T)
        heldout = {n: {k: round(v, 4) for k, v in rank_metrics(pred[:, j], ms[held, j]).items()}
                   for j, n in enumerate(names)}
    emb, config = pretrain_embedding(space, archs, ms, progress=phase(phases - 1), **kw)
    heads = fit_heads(space, archs, embed(space, emb, archs), ms)
    mean, cov = head_prior(heads, recipe.prior_floor)
    ckpt = {
        "kind": "pomonag-edge/latency-embedding", "version": 1, "space": space.name, "config": config,
        "state_dict": emb.state_dict(), "devices": list(names),
        "heads": torch.from_numpy(heads), "prior_mean": torch.from_numpy(mean), "prior_cov": torch.from_numpy(cov),
        "meta": {"seed": seed, "steps": kw["steps"], "trained_on": recipe.source,
                 "command": f"pomonag-edge pretrain latency --space {space.name} --seed {seed}"},
    }
    if heldout:
        ckpt["heldout"], ckpt["meta"]["heldout_fraction"] = heldout, recipe.heldout_fraction
    return ckpt


def load_pretrained(space, path=None) -> PretrainedEmbedding:
    """The space's shipped latency embedding (or the checkpoint at ``path``), built once per process."""
    from .checkpoints import checkpoint_path, load_built

    recipe = space.latency_recipe
    if recipe is None:
        raise UserError(f"space {space.name} ships no pretrained latency embedding")
    return load_built(path or checkpoint_path(recipe.checkpoint),
                      lambda ckpt, sha, file: PretrainedEmbedding.from_checkpoint(space, ckpt, sha, file), key=space.name)


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
    Fits of two or three parameters cannot overfit 10 timings; the leave-one-out error (closed form through the
    hat matrix) says which to trust, and pairs reach devices that sit between two training devices.
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


def fit_lut_scale(lut_ms: np.ndarray, latency_ms: np.ndarray) -> tuple[float, np.ndarray]:
    """log scale = median of log(measured / LUT cost), and each timing's leave-one-out |predicted/measured - 1|.

    Why, for a profile with its own LUT: its LUT cost already ranks nets near the noise ceiling; what the timings
    must supply is the scale (fusion, per-call overhead), and a median is not pulled by one timing caught in a
    burst of load."""
    d = np.log(np.asarray(latency_ms, dtype=np.float64)) - np.log(np.asarray(lut_ms, dtype=np.float64))
    loo = np.array([np.median(np.delete(d, i)) for i in range(len(d))])
    return float(np.median(d)), np.abs(np.expm1(loo - d))


def fit_lut_power(lut_ms: np.ndarray, latency_ms: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``log ms = power * log LUT-cost + log scale`` by least squares; (power, log scale, leave-one-out
    |predicted/measured - 1|). Why: layers timed alone can overstate big nets against small ones, which one
    scale cannot take up; kept only when its leave-one-out error beats the plain scale's."""
    x, y = np.log(np.asarray(lut_ms, dtype=np.float64)), np.log(np.asarray(latency_ms, dtype=np.float64))
    design = np.stack([x, np.ones_like(x)], axis=1)
    pinv = np.linalg.pinv(design)
    power, scale = pinv @ y
    hat = np.clip(np.einsum("ij,ji->i", design, pinv), 0, 1 - 1e-9)
    loo = (design @ np.array([power, scale]) - y) / (1 - hat)
    return float(power), float(scale), np.abs(np.expm1(loo))


def _error_state(errors: np.ndarray) -> dict:
    rel = float(np.quantile(errors, ERROR_QUANTILE))
    return {"relative_error": rel, "relative_error_quantile": ERROR_QUANTILE,
            "cv_relative_errors": [round(float(v), 6) for v in errors], "n_calibration": int(len(errors))}


# ------------------------------------------------------------------------------------------ the models


class LatencyModel:
    """Predicts ms for any net of a profile's target and knows its error. ``predict_ms`` (ms per forward pass),
    ``relative_error`` (the budget margin), ``margin_ms``, ``log_ms_torch`` (differentiable log-ms over the
    space's encoding, for guidance), ``to_state``; ``from_state`` returns None for a state it cannot use."""

    kind = ""
    relative_error = 0.0

    def predict_ms(self, archs) -> np.ndarray:
        raise NotImplementedError

    def model_ms(self, archs) -> np.ndarray:
        """The fitted model's prediction (a table model's head, never its table)."""
        return self.predict_ms(archs)

    def margin_ms(self, pred_ms) -> np.ndarray:
        """How much to add to a prediction so it is an upper bound ~90% of the time."""
        return np.asarray(pred_ms, dtype=np.float64) * self.relative_error

    def log_ms_torch(self, x):
        raise NotImplementedError(f"a {self.kind} latency model has no differentiable form")

    def to_state(self) -> dict:
        return self.state

    to_dict = to_state


def _embedding_ref(pre: PretrainedEmbedding) -> dict:
    return {"checkpoint": Path(pre.file).name if pre.file else None, "sha256": pre.sha256}


def _soft_table_lookup(space, values: np.ndarray, x):
    """Multilinear extension of a per-arch table (``table_index`` order, one value per net of a product space)
    over an encoding: sum over nets of value * prod over groups of x[group, choice]. Exact on one-hot input,
    smooth on relaxed input; contracted group by group."""
    import torch

    from ..spaces.base import to_genes

    groups = space.categorical_groups()
    widths = tuple(w for _, w in groups)
    genes = to_genes(space, space.encode(list(space.enumerate())))
    grid = np.zeros(widths)
    grid[tuple(genes.T)] = values
    flat = x.reshape(len(x), -1)
    t = torch.as_tensor(grid, dtype=x.dtype).reshape(1, widths[0], -1).expand(len(x), -1, -1)
    for (o, w) in groups:
        t = torch.einsum("nk,nkm->nm", flat[:, o:o + w], t.reshape(len(x), w, -1))
    return t.reshape(len(x))


class HeadModel(LatencyModel):
    """The pretrained embedding's head fitted to a device (``theta``), averaged in log space with the
    sibling-table model (``sibling`` = (coef over the training devices, shift)) where the tables cover the space."""

    kind = "embedding-head"
    version = 4

    def __init__(self, pretrained: PretrainedEmbedding, theta, relative_error: float, state: dict,
                 sibling: tuple | None = None):
        self.pretrained, self.theta = pretrained, np.asarray(theta, dtype=np.float64)
        self.sibling = None if sibling is None else (np.asarray(sibling[0], dtype=np.float64), float(sibling[1]))
        self.relative_error, self.state = float(relative_error), state
        self._sibling_all = None

    @classmethod
    def fit(cls, pre: PretrainedEmbedding, archs, latency_ms) -> "HeadModel":
        archs = list(archs)
        y = np.log(np.asarray(latency_ms, dtype=np.float64))
        components = pre.prior_components()
        design = _design(pre.phi(archs))
        if pre.covers_space:
            tables = pre.sibling_tables()[[pre.space.table_index(a) for a in archs]]
            theta, coef, shift, noise = _fit_head(design, tables, y, components)
            sibling = (coef, shift)
        else:
            tables, sibling = None, None
            theta, noise = mixture_head(design, y, components)
        errors = cv_relative_errors(design, y, components, tables=tables)
        state = {"kind": cls.kind, "version": cls.version, "embedding": _embedding_ref(pre),
                 "coef": [float(v) for v in theta], "noise_log_std": noise, **_error_state(errors)}
        if sibling is not None:
            state["sibling"] = {"mix": SIBLING_MIX, "devices": list(pre.devices),
                                "coef": [float(v) for v in sibling[0]], "shift": sibling[1]}
        return cls(pre, theta, state["relative_error"], state, sibling)

    @classmethod
    def reference(cls, pre: PretrainedEmbedding, name: str) -> "HeadModel":
        """A reference setting whose table does not cover the space: its training head, the held-out error."""
        if name not in pre.devices:
            raise ProfileError(f"reference profile {name!r} is not one of the {pre.space.name} latency checkpoint's "
                               f"settings ({', '.join(pre.devices)})")
        theta = pre.heads[pre.devices.index(name)]
        held = pre.heldout.get(name, {})
        rel = float(held.get("rel_err_q90", 0.0))
        state = {"kind": "reference-head", "version": 1, "table": name, "embedding": _embedding_ref(pre),
                 "coef": [float(v) for v in theta], "relative_error": rel, "relative_error_quantile": 0.9,
                 "heldout": held}
        return cls(pre, theta, rel, state)

    @classmethod
    def from_state(cls, pre: PretrainedEmbedding, state: dict) -> "HeadModel | None":
        if state.get("kind") != cls.kind or state.get("version") != cls.version:
            return None
        if state.get("embedding", {}).get("sha256") != pre.sha256:
            return None
        sib = state.get("sibling")
        if pre.covers_space != (sib is not None):
            return None
        if sib is not None and (sib.get("devices") != list(pre.devices) or sib.get("mix") != SIBLING_MIX):
            return None
        return cls(pre, state["coef"], state["relative_error"], state,
                   None if sib is None else (sib["coef"], sib["shift"]))

    def predict_ms(self, archs) -> np.ndarray:
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        design = _design(self.pretrained.phi(archs))
        if self.sibling is None:
            return np.exp(design @ self.theta)
        tables = self.pretrained.sibling_tables()[[self.pretrained.space.table_index(a) for a in archs]]
        return np.exp(_predict_log(design, tables, self.theta, *self.sibling))

    def log_ms_torch(self, x):
        import torch

        w = torch.as_tensor(self.theta, dtype=x.dtype)
        out = self.pretrained.embedding(x.float()).to(x.dtype) @ w[:-1] + w[-1]
        if self.sibling is None:
            return out
        if self._sibling_all is None:
            coef, shift = self.sibling
            self._sibling_all = self.pretrained.sibling_tables() @ coef + shift
        return (1 - SIBLING_MIX) * out + SIBLING_MIX * _soft_table_lookup(self.pretrained.space, self._sibling_all, x)


class TableModel(LatencyModel):
    """A reference profile whose measured table covers the space: ``predict_ms`` is a lookup (zero error); the
    setting's head is there for ``model_ms`` and ``log_ms_torch`` (guidance)."""

    kind = "reference-table"

    def __init__(self, pre: PretrainedEmbedding, name: str):
        space = pre.space
        self.table_ms = space.reference_latency_ms(name)
        if name in pre.devices:
            theta = pre.heads[pre.devices.index(name)]
        else:  # a table the checkpoint was not trained on: its head fitted on the whole table
            archs = list(space.enumerate())
            theta = fit_heads(space, archs, pre.phi(archs), self.table_ms[:, None])[0]
        self.state = {"kind": self.kind, "version": 1, "table": name, "embedding": _embedding_ref(pre),
                      "coef": [float(v) for v in theta], "relative_error": 0.0}
        self.head = HeadModel(pre, theta, 0.0, self.state)
        self.space = space

    def model_ms(self, archs) -> np.ndarray:
        return self.head.predict_ms(archs)

    def predict_ms(self, archs) -> np.ndarray:
        archs = list(archs)
        pred = self.head.predict_ms(archs)
        if archs:
            measured = self.table_ms[[self.space.table_index(a) for a in archs]]
            pred = np.where(np.isfinite(measured), measured, pred)
        return pred

    def log_ms_torch(self, x):
        return self.head.log_ms_torch(x)


class LutModel(LatencyModel):
    """A profile with its own per-op LUT: ``exp(scale_log) * LUT-cost ^ power`` (power 1 unless fitting it
    beat the plain scale on held-out timings). Its LUT cost already ranks the nets; the timings set the scale."""

    kind = "lut-scale"
    version = 2

    def __init__(self, space, profile, scale_log: float, power: float, relative_error: float, state: dict):
        self.space, self.profile = space, profile
        self.scale_log, self.power, self.relative_error, self.state = scale_log, float(power), relative_error, state
        self.cost = lut_cost(space, profile)

    @classmethod
    def fit(cls, space, profile, archs, latency_ms) -> "LutModel":
        latency_ms = np.asarray(latency_ms, dtype=np.float64)
        lut_ms = positive_lut_ms(lut_cost(space, profile), archs, profile.name)
        scale, errors = fit_lut_scale(lut_ms, latency_ms)
        power, form = 1.0, "scale x LUT-cost"
        if len(latency_ms) >= MIN_POWER_FIT:
            p_power, p_scale, p_errors = fit_lut_power(lut_ms, latency_ms)
            if np.quantile(p_errors, ERROR_QUANTILE) < np.quantile(errors, ERROR_QUANTILE):
                power, scale, errors, form = p_power, p_scale, p_errors, "scale x LUT-cost ^ power"
        state = {"kind": cls.kind, "version": cls.version, "form": form, "lut_scale_log": scale, "lut_power": power,
                 "lut_entries": len(profile.lut), **_error_state(errors)}
        return cls(space, profile, scale, power, state["relative_error"], state)

    @classmethod
    def from_state(cls, space, profile, state: dict) -> "LutModel | None":
        if (state.get("kind") != cls.kind or state.get("version") != cls.version or not profile.lut
                or state.get("lut_entries") != len(profile.lut)):
            return None
        return cls(space, profile, state["lut_scale_log"], state["lut_power"], state["relative_error"], state)

    def predict_ms(self, archs) -> np.ndarray:
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        return np.exp(self.scale_log + self.power * np.log(positive_lut_ms(self.cost, archs, self.profile.name)))

    def log_ms_torch(self, x):
        import torch

        return self.scale_log + self.power * torch.log(self.cost.ms_torch(x).clamp_min(1e-6))


class ProxyModel(LatencyModel):
    """A space with no pretrained embedding and a profile without a LUT: ``log ms = a log MACs + b log params + c``
    by least squares on the timings (leave-one-out errors through the hat matrix)."""

    kind = "cost-proxy"
    version = 1

    def __init__(self, space, dataset, coef, relative_error: float, state: dict):
        self.space, self.dataset, self.coef = space, dataset, np.asarray(coef, dtype=np.float64)
        self.relative_error, self.state = float(relative_error), state

    def _design(self, archs) -> np.ndarray:
        return np.array([[math.log(max(self.space.macs(a, self.dataset), 1)),
                          math.log(max(self.space.params(a, self.dataset), 1)), 1.0] for a in archs])

    @classmethod
    def fit(cls, space, dataset, archs, latency_ms) -> "ProxyModel":
        model = cls(space, dataset, np.zeros(3), 0.0, {})
        design, y = model._design(list(archs)), np.log(np.asarray(latency_ms, dtype=np.float64))
        pinv = np.linalg.pinv(design)
        coef = pinv @ y
        hat = np.clip(np.einsum("ij,ji->i", design, pinv), 0, 1 - 1e-9)
        errors = np.abs(np.expm1((design @ coef - y) / (1 - hat)))
        state = {"kind": cls.kind, "version": cls.version, "coef": [float(v) for v in coef],
                 "features": ["log_macs", "log_params", "bias"], **_error_state(errors)}
        return cls(space, dataset, coef, state["relative_error"], state)

    @classmethod
    def from_state(cls, space, profile, state: dict) -> "ProxyModel | None":
        if state.get("kind") != cls.kind or state.get("version") != cls.version:
            return None
        return cls(space, profile.dataset, state["coef"], state["relative_error"], state)

    def predict_ms(self, archs) -> np.ndarray:
        archs = list(archs)
        return np.exp(self._design(archs) @ self.coef) if archs else np.zeros(0)


# ------------------------------------------------------------------------------------------ for a profile


def calibration_timings(space, profile) -> tuple[list, list[float]]:
    """A profile's calibration archs and measured ms; none at all is the user's to fix."""
    if not profile.calibration:
        raise ProfileError(f"profile {profile.name!r} has no calibration timings: the latency model needs "
                           f"at least {MIN_CALIBRATION} (`pomonag-edge calibrate` adds them)")
    return ([space.parse(item["arch"]) for item in profile.calibration],
            [float(item["latency_ms"]) for item in profile.calibration])


def _check_space(space, profile) -> None:
    if profile.space != space.name:
        raise ProfileError(f"profile {profile.name!r} is for space {profile.space!r}, not {space.name!r}")


def _pretrained(space, pretrained):
    if pretrained is not None or space.latency_recipe is None:
        return pretrained
    return load_pretrained(space)


def fit_calibration(space, archs, latency_ms, pretrained: PretrainedEmbedding | None = None,
                    profile=None) -> LatencyModel:
    """Adapt to measured (arch, ms) pairs: a profile with its own LUT gets ``LutModel``; otherwise the pretrained
    head under its prior (``HeadModel``), or the cost proxies where the space has no pretrained embedding."""
    archs, latency_ms = list(archs), np.asarray(latency_ms, dtype=np.float64)
    if len(latency_ms) < MIN_CALIBRATION:
        raise UserError(f"the latency model needs at least {MIN_CALIBRATION} calibration timings, got {len(latency_ms)}")
    if profile is not None and profile.lut:
        return LutModel.fit(space, profile, archs, latency_ms)
    pre = _pretrained(space, pretrained)
    if pre is None:
        return ProxyModel.fit(space, None if profile is None else profile.dataset, archs, latency_ms)
    return HeadModel.fit(pre, archs, latency_ms)


def _fit(space, profile, pretrained=None) -> LatencyModel:
    _check_space(space, profile)
    if profile.reference:
        pre = _pretrained(space, pretrained)
        return TableModel(pre, profile.reference) if pre.covers_space else HeadModel.reference(pre, profile.reference)
    return fit_calibration(space, *calibration_timings(space, profile), pretrained, profile)


def fit_profile_model(space, profile, pretrained: PretrainedEmbedding | None = None) -> dict:
    """The JSON state of the latency model fitted to ``profile`` (stored in ``profile.latency_model``)."""
    return _fit(space, profile, pretrained).to_state()


def latency_model_for(space, profile, pretrained: PretrainedEmbedding | None = None) -> LatencyModel:
    """The profile's latency model: its stored state where still valid (same LUT, same embedding), else refitted."""
    _check_space(space, profile)
    state = profile.latency_model
    if isinstance(state, dict) and not profile.reference:
        model = LutModel.from_state(space, profile, state) or ProxyModel.from_state(space, profile, state)
        if model is None and state.get("kind") == HeadModel.kind and space.latency_recipe is not None:
            model = HeadModel.from_state(_pretrained(space, pretrained), state)
        if model is not None:
            return model
    return _fit(space, profile, pretrained)
