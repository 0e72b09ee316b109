"""MobileNetV3 latency model: an embedding of (encoding, LUT-sum, MACs) pretrained on OFA's 9 GPU tables,
a per-device head fitted from a few timings; the same shape and the same adaptation as NB201's
(``predictors.latency``), whose functions it reuses (``mixture_head``, ``cv_relative_errors``, ``fit_lut_scale``).

Inputs per arch: the 160-dim encoding, plus two device-agnostic cost features, log of the i7-8700K
reference-LUT sum (NSGANetV2's table, every resolution) and log MACs. Both are *additive over block slots*
for a fixed resolution, so they are computed from per-(resolution, slot, kernel, expand) tables
(``AdditiveCost``): exact on one-hot encodings, fast, and differentiable on relaxed ones (guidance).
The Note10 LUT is left out as a feature: it covers 5 of the 25 resolutions.

Why: the 9 tables are 3 GPUs x batch 1/32/64. Batch 64 is ~MACs-bound, batch 1 launch-bound (block count),
and a low-rank embedding with a linear head per setting holds both; the two cost features are passed
straight into the embedding's output, so a head for a device unlike these GPUs (a CPU) can still lean on
them. A new device's head is the MAP estimate under a mixture prior made of the training heads
(``predictors.latency.mixture_head``). The OFA table holds only 5,000 archs, so a *reference* mbv3 profile
is not a lookup: it is its setting's head fitted on the whole table, and its error is the one measured
on archs held out of an identical fit (stored in the checkpoint, ``heldout``).

A profile with its own LUT (``profile --space mbv3``) is ``scale x LUT-sum`` as for NB201, or ``scale x
LUT-sum ^ power`` when that has the lower leave-one-out error (``fit_lut_power``); resolutions its LUT was not
measured at are interpolated between the nearest measured ones (``lut_resolutions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import ProfileError, UserError
from .latency import PretrainedEmbedding, embedding_ref, fit_embedding_heads

LATENCY_CHECKPOINT = "latency_mbv3.pt"
MODEL_KIND = "mbv3-embedding-map"
REFERENCE_KIND = "mbv3-reference-model"
LUT_KIND = "mbv3-lut-scale"
FEATURE_LUT = "i7-8700k"
N_COST = 2  # cost features passed through the embedding: log i7 LUT-sum, log MACs
HELDOUT_FRACTION = 0.1


# ------------------------------------------------------------------------------------ additive cost tables


@dataclass
class AdditiveCost:
    """``cost(arch) = base[r] + sum over used slots i of table[r, i, k_i, e_i]`` (exact for MACs and LUT-sums).

    ``resolutions`` index the first axis; ``evaluate_np`` takes archs, ``evaluate_torch`` an (n, 160) encoding
    (one-hot or relaxed): the resolution and each slot's kernel x expand weights multiply the table, so an
    unused slot (all zero) adds nothing."""

    resolutions: tuple[int, ...]
    base: np.ndarray  # (R,)
    table: np.ndarray  # (R, 20, 3, 3)

    def evaluate_np(self, archs) -> np.ndarray:
        from ..spaces.mbv3 import EXPANDS, KERNELS

        ri = {r: j for j, r in enumerate(self.resolutions)}
        out = np.empty(len(archs))
        for n, a in enumerate(archs):
            if a.r not in ri:
                raise ProfileError(f"no cost table at resolution {a.r}")
            j = ri[a.r]
            out[n] = self.base[j] + sum(self.table[j, i, KERNELS.index(k), EXPANDS.index(e)]
                                        for i, (k, e) in enumerate(zip(a.ks, a.e)) if k)
        return out

    def evaluate_torch(self, x):
        import torch

        from ..spaces.mbv3 import DEPTH_OFFSET, NUM_SLOTS, RES_OFFSET, RESOLUTIONS, SLOT_FEATURES

        if tuple(self.resolutions) != tuple(RESOLUTIONS):
            raise ValueError("a differentiable cost needs a table at every resolution of the space")
        xr = x[:, RES_OFFSET:]
        slots = x[:, :DEPTH_OFFSET].reshape(len(x), NUM_SLOTS, SLOT_FEATURES)
        base = torch.as_tensor(self.base, dtype=x.dtype)
        table = torch.as_tensor(self.table, dtype=x.dtype)
        return xr @ base + torch.einsum("nr,nik,nie,rike->n", xr, slots[:, :, :3], slots[:, :, 3:], table)


def _probe(r: int, w: float, d, slot: int | None = None, k: int = 3, e: int = 3):
    from ..spaces.mbv3 import NUM_SLOTS, MBV3Arch

    ks, es = [3] * NUM_SLOTS, [3] * NUM_SLOTS
    if slot is not None:
        ks[slot], es[slot] = k, e
    return MBV3Arch(tuple(ks), tuple(es), tuple(d), r, w)


def additive_cost(f, resolutions: Sequence[int], w: float = 1.2) -> AdditiveCost:
    """Tables of any per-arch cost ``f`` that is a sum over layers, by differences of ``f`` on probe archs.

    Slot 0 of a stage is always used: its entry is relative to (k3, e3), which ``base`` holds. Slots 2 and 3
    hold the whole block's cost (relative to the stage one block shallower); both are the same layer (same
    shapes, stride 1), and so is slot 1, which, always used, is stored relative to (k3, e3) like slot 0."""
    from ..spaces.mbv3 import EXPANDS, KERNELS, MAX_DEPTH, NUM_SLOTS, NUM_STAGES

    base = np.empty(len(resolutions))
    table = np.empty((len(resolutions), NUM_SLOTS, len(KERNELS), len(EXPANDS)))
    for j, r in enumerate(resolutions):
        d2 = [2] * NUM_STAGES
        base[j] = f(_probe(r, w, d2))
        for s in range(NUM_STAGES):
            first, d3 = s * MAX_DEPTH, list(d2)
            d3[s] = 3
            for a, k in enumerate(KERNELS):
                for b, e in enumerate(EXPANDS):
                    table[j, first, a, b] = f(_probe(r, w, d2, first, k, e)) - base[j]
                    table[j, first + 2, a, b] = f(_probe(r, w, d3, first + 2, k, e)) - base[j]
            table[j, first + 3] = table[j, first + 2]
            table[j, first + 1] = table[j, first + 2] - table[j, first + 2, 0, 0]
    return AdditiveCost(tuple(resolutions), base, table)


@lru_cache(maxsize=None)
def feature_costs() -> tuple[AdditiveCost, AdditiveCost]:
    """(i7-8700K reference LUT-sum in ms, MACs in millions) over every resolution of the space, w1.2."""
    from ..data.mbv3 import reference_lut
    from ..spaces.mbv3 import RESOLUTIONS, SPACE, lut_sum_ms

    lut = reference_lut(FEATURE_LUT)
    return (additive_cost(lambda a: lut_sum_ms(a, lut, "nsganetv2"), RESOLUTIONS),
            additive_cost(lambda a: SPACE.macs(a) / 1e6, RESOLUTIONS))


def raw_cost_features(archs) -> np.ndarray:
    """(n, 2) log i7 LUT-sum ms, log MACs (M). Width is not encoded: w1.0 archs get their w1.2 twin's costs."""
    lut, macs = feature_costs()
    return np.log(np.stack([lut.evaluate_np(archs), macs.evaluate_np(archs)], axis=1))


# ------------------------------------------------------------------------------------ the network


def _build_embedding(dim: int, hidden: int, cost_mean, cost_std):
    import torch
    import torch.nn as nn

    from ..spaces.mbv3 import ENCODING_DIM

    class MBV3LatencyEmbedding(nn.Module):
        """(n, 160) encoding -> (n, dim + 2): an MLP of [encoding, standardized cost features], then those two
        cost features appended as they are (so a linear head can use them directly)."""

        def __init__(self):
            super().__init__()
            self.dim, self.hidden = dim + N_COST, hidden
            self.register_buffer("cost_mean", torch.as_tensor(np.asarray(cost_mean), dtype=torch.float32))
            self.register_buffer("cost_std", torch.as_tensor(np.asarray(cost_std), dtype=torch.float32))
            if hidden:
                self.net = nn.Sequential(nn.Linear(ENCODING_DIM + N_COST, hidden), nn.SiLU(),
                                         nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))
            else:  # a linear low-rank embedding
                self.net = nn.Linear(ENCODING_DIM + N_COST, dim)

        def cost_features(self, x):
            lut, macs = feature_costs()
            raw = torch.stack([lut.evaluate_torch(x.double()), macs.evaluate_torch(x.double())], 1)
            return raw.clamp_min(1e-6).log().to(x.dtype)

        def forward(self, x, cost=None):
            """``cost``: precomputed (n, 2) log features (exact for one-hot x); computed from x when None."""
            cost = self.cost_features(x) if cost is None else cost
            z = (cost.to(x.dtype) - self.cost_mean) / self.cost_std
            return torch.cat([self.net(torch.cat([x, z], 1)), z], 1)

    return MBV3LatencyEmbedding()


def _embed(emb, archs, cost: np.ndarray | None = None) -> np.ndarray:
    import torch

    from ..spaces.mbv3 import SPACE

    cost = raw_cost_features(archs) if cost is None else cost
    with torch.no_grad():
        return emb(torch.from_numpy(SPACE.encode(archs)), torch.from_numpy(cost).float()).double().numpy()


def pretrain_embedding(archs, latency_ms: np.ndarray, dim: int = 16, hidden: int = 32, steps: int = 800,
                       batch: int = 512, lr: float = 3e-3, seed: int = 0, cost: np.ndarray | None = None,
                       progress=None):
    """Fit phi and one linear head per column of ``latency_ms`` (archs x settings), Huber on standardized
    log-ms, NaN cells ignored. Returns the embedding module (eval mode)."""
    import torch

    from ..spaces.mbv3 import SPACE

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cost = raw_cost_features(archs) if cost is None else cost
    x = torch.from_numpy(SPACE.encode(archs))
    c = torch.from_numpy(cost).float()
    emb = _build_embedding(dim, hidden, cost.mean(0), cost.std(0))
    return fit_embedding_heads(emb, emb.dim, (x, c), latency_ms, steps=steps, batch=batch, lr=lr, gen=gen,
                               weight_decay=1e-5, progress=progress)


def _design(phi: np.ndarray) -> np.ndarray:
    return np.hstack([phi, np.ones((len(phi), 1))])


def fit_heads(phi: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    """Least-squares heads ``[w_d, b_d]`` in raw log-ms per column: (D, dim + 1)."""
    design = _design(phi)
    heads = []
    for col in np.log(latency_ms).T:
        ok = np.isfinite(col)
        heads.append(np.linalg.lstsq(design[ok], col[ok], rcond=None)[0])
    return np.array(heads)


def head_prior(heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Population Gaussian of the heads. Nine heads span 8 directions of a ~15-dim space, so the covariance
    gets a diagonal floor (10% of its mean variance): a device unlike the training GPUs can still move."""
    mean = heads.mean(axis=0)
    cov = np.cov(heads, rowvar=False)
    return mean, cov + 0.1 * np.mean(np.diag(cov)) * np.eye(len(mean))


def rank_metrics(pred_ms: np.ndarray, true_ms: np.ndarray) -> dict:
    from scipy.stats import kendalltau, spearmanr

    rel = np.abs(pred_ms / true_ms - 1)
    return {"spearman": float(spearmanr(pred_ms, true_ms)[0]), "kendall": float(kendalltau(pred_ms, true_ms)[0]),
            "mape": float(rel.mean()), "rel_err_q90": float(np.quantile(rel, 0.9))}


def train_latency_checkpoint(seed: int = 0, steps: int = 800, dim: int = 16, hidden: int = 32,
                             settings: Sequence[str] | None = None, progress=None) -> dict:
    """The shipped checkpoint: embedding, every setting's head, the prior, and held-out errors.

    Trained twice with the same recipe: first on a seeded 90% of the 5,000 archs, to measure each setting's
    error on the other 10% (``heldout``, the reference profiles' honest margin), then on all of them."""
    import torch

    from ..data.mbv3 import ofa_latency_table

    table = ofa_latency_table()
    names = list(settings or table.settings)
    ms = table.latency_ms[:, [table.settings.index(n) for n in names]]
    archs = list(table.archs)
    cost = raw_cost_features(archs)
    perm = np.random.default_rng(seed).permutation(len(archs))
    held = np.zeros(len(archs), dtype=bool)
    held[perm[: int(HELDOUT_FRACTION * len(archs))]] = True
    tr = np.flatnonzero(~held)
    kw = {"dim": dim, "hidden": hidden, "steps": steps, "seed": seed}
    phase = lambda k: None if progress is None else (lambda i, n, loss: progress(k * n + i, 2 * n, loss))  # noqa: E731
    emb = pretrain_embedding([archs[i] for i in tr], ms[tr], cost=cost[tr], progress=phase(0), **kw)
    phi = _embed(emb, archs, cost)
    heads = fit_heads(phi[~held], ms[~held])
    pred = np.exp(_design(phi[held]) @ heads.T)
    heldout = {n: {k: round(v, 4) for k, v in rank_metrics(pred[:, j], ms[held, j]).items()}
               for j, n in enumerate(names)}
    emb = pretrain_embedding(archs, ms, cost=cost, progress=phase(1), **kw)
    heads = fit_heads(_embed(emb, archs, cost), ms)
    mean, cov = head_prior(heads)
    return {
        "kind": "pomonag-edge/latency-embedding-mbv3", "version": 1,
        "config": {"dim": dim, "hidden": hidden, "cost_mean": emb.cost_mean.tolist(),
                   "cost_std": emb.cost_std.tolist()},
        "state_dict": emb.state_dict(), "devices": names,
        "heads": torch.from_numpy(heads), "prior_mean": torch.from_numpy(mean), "prior_cov": torch.from_numpy(cov),
        "heldout": heldout,
        "meta": {"seed": seed, "steps": steps, "heldout_fraction": HELDOUT_FRACTION,
                 "trained_on": "OFA MobileNetV3 w1.2 latency table (HELP): 5,000 archs x 9 GPU settings",
                 "command": f"pomonag-edge train latency --space mbv3 --seed {seed}"},
    }


@dataclass
class Pretrained(PretrainedEmbedding):
    """The mbv3 embedding (``devices``: the OFA GPU settings), with each setting's held-out error."""

    heldout: dict = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, sha256: str = "", file: str = "") -> "Pretrained":
        cfg = ckpt["config"]
        emb = _build_embedding(cfg["dim"], cfg["hidden"], cfg["cost_mean"], cfg["cost_std"])
        emb.load_state_dict(ckpt["state_dict"])
        emb.eval()
        return cls(emb, list(ckpt["devices"]), ckpt["heads"].double().numpy(), ckpt["prior_mean"].double().numpy(),
                   ckpt["prior_cov"].double().numpy(), sha256, file, heldout=dict(ckpt.get("heldout", {})))

    @classmethod
    def from_tables(cls, archs, ms: np.ndarray, names: Sequence[str], cost: np.ndarray | None = None,
                    **train_kw) -> "Pretrained":
        """Pretrain on the given archs x settings (the few-shot benchmark's and the tests' per-fold step)."""
        cost = raw_cost_features(archs) if cost is None else cost
        emb = pretrain_embedding(archs, ms, cost=cost, **train_kw)
        heads = fit_heads(_embed(emb, archs, cost), ms)
        mean, cov = head_prior(heads)
        return cls(emb, list(names), heads, mean, cov)

    def phi(self, archs, cost: np.ndarray | None = None) -> np.ndarray:
        return _embed(self.embedding, list(archs), cost)



def load_pretrained(path=None) -> Pretrained:
    """The shipped mbv3 latency embedding (or the checkpoint at ``path``), built once per process."""
    from .checkpoints import checkpoint_path, load_built

    return load_built(path or checkpoint_path(LATENCY_CHECKPOINT), Pretrained.from_checkpoint)


# ------------------------------------------------------------------------------------ a profile's own LUT


def lut_resolutions(profile) -> tuple[int, ...]:
    """Resolutions at which ``profile.lut`` holds every key an arch can need."""
    from ..spaces.mbv3 import RESOLUTIONS, SPACE

    keys = set(profile.lut)
    return tuple(r for r in RESOLUTIONS if set(SPACE.lut_signatures(profile.dataset, (r,))) <= keys)


def own_lut_cost(profile) -> AdditiveCost:
    """The profile's LUT-sum as an additive table over every resolution: exact where its LUT was measured,
    elsewhere interpolated linearly in ``r`` between the nearest measured resolutions after dividing by ``r^2``
    (the blocks' work scales with the feature-map area), and scaled by ``(r / r_edge)^2`` beyond them."""
    from ..spaces.mbv3 import RESOLUTIONS, SPACE, lut_sum_ms

    have = lut_resolutions(profile)
    if not have:
        raise ProfileError(f"profile {profile.name!r}: its LUT covers no resolution completely; "
                           "re-run `pomonag-edge profile --space mbv3`")
    lut = {k: float(v["median_ms"]) for k, v in profile.lut.items()}
    classes = SPACE._classes(profile.dataset, None)
    exact = additive_cost(lambda a: lut_sum_ms(a, lut, "ofa", classes), have)
    base, table = np.empty(len(RESOLUTIONS)), np.empty((len(RESOLUTIONS), *exact.table.shape[1:]))
    h = np.array(have, dtype=np.float64)
    for j, r in enumerate(RESOLUTIONS):
        hi = int(np.searchsorted(h, r))
        if hi < len(h) and h[hi] == r:
            wts = {hi: 1.0}
        elif hi == 0:
            wts = {0: (r / h[0]) ** 2}
        elif hi == len(h):
            wts = {len(h) - 1: (r / h[-1]) ** 2}
        else:
            t = (r - h[hi - 1]) / (h[hi] - h[hi - 1])
            wts = {hi - 1: (1 - t) * (r / h[hi - 1]) ** 2, hi: t * (r / h[hi]) ** 2}
        base[j] = sum(wt * exact.base[i] for i, wt in wts.items())
        table[j] = sum(wt * exact.table[i] for i, wt in wts.items())
    return AdditiveCost(tuple(RESOLUTIONS), base, table)


# ------------------------------------------------------------------------------------ the model


class MBV3LatencyModel:
    """Predicts ms for any mbv3 net on a profile's target; knows its error; serialises to ``to_dict()``.

    The interface of ``predictors.latency.LatencyModel`` that the search, CLI and export use: ``predict_ms``,
    ``relative_error``, ``margin_ms``, ``log_ms_torch`` (over the (n, 160) encoding, differentiable),
    ``to_dict``. Either an embedding head ``theta`` or, for a profile with its own LUT, ``lut_scale_log``."""

    def __init__(self, space, pretrained: Pretrained | None, theta, relative_error: float, profile=None,
                 state: dict | None = None, lut_scale_log: float | None = None, lut_power: float = 1.0):
        self.space, self.pretrained, self.profile = space, pretrained, profile
        self.theta = None if theta is None else np.asarray(theta, dtype=np.float64)
        self.relative_error = float(relative_error)
        self.lut_scale_log, self.lut_power = lut_scale_log, float(lut_power)
        self.state = state or {}
        self._lut_cost = None

    def lut_cost(self) -> AdditiveCost:
        if self._lut_cost is None:
            self._lut_cost = own_lut_cost(self.profile)
        return self._lut_cost

    def predict_ms(self, archs) -> np.ndarray:
        """Milliseconds per forward pass, one per arch (a model everywhere: no table covers this space)."""
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        if self.lut_scale_log is not None:
            return np.exp(self.lut_scale_log + self.lut_power * np.log(self.lut_cost().evaluate_np(archs)))
        return np.exp(_design(self.pretrained.phi(archs)) @ self.theta)

    model_ms = predict_ms

    def margin_ms(self, pred_ms) -> np.ndarray:
        """How much to add to a prediction so it is an upper bound ~90% of the time."""
        return np.asarray(pred_ms, dtype=np.float64) * self.relative_error

    def log_ms_torch(self, x):
        """Differentiable log-ms over an (n, 160) encoding (one-hot or relaxed), for guidance."""
        import torch

        if self.lut_scale_log is not None:
            return self.lut_scale_log + self.lut_power * torch.log(self.lut_cost().evaluate_torch(x).clamp_min(1e-6))
        w = torch.as_tensor(self.theta, dtype=x.dtype)
        return self.pretrained.embedding(x.float()).to(x.dtype) @ w[:-1] + w[-1]

    def to_dict(self) -> dict:
        return self.state


MIN_POWER_FIT = 8  # timings needed before the LUT-sum's exponent is fitted too


def fit_lut_power(lut_ms: np.ndarray, latency_ms: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``log ms = power * log LUT-sum + log scale`` by least squares; (power, log scale, leave-one-out
    |predicted/measured - 1|). Why: on this CPU, layers timed alone overstated big nets against small ones
    (measured/LUT-sum fell from ~1.0 to ~0.7 across the range; a fitted power of ~0.75), which one scale
    cannot take up. ``fit_calibration`` keeps it only when its leave-one-out error beats the plain scale's."""
    x, y = np.log(np.asarray(lut_ms, dtype=np.float64)), np.log(np.asarray(latency_ms, dtype=np.float64))
    design = np.stack([x, np.ones_like(x)], axis=1)
    pinv = np.linalg.pinv(design)
    power, scale = pinv @ y
    hat = np.clip(np.einsum("ij,ji->i", design, pinv), 0, 1 - 1e-9)
    loo = (design @ np.array([power, scale]) - y) / (1 - hat)
    return float(power), float(scale), np.abs(np.expm1(loo))


def _check(space, profile=None):
    from .latency import _check_space

    _check_space(space, profile, expected="mbv3")


def fit_calibration(space, archs, latency_ms, pretrained: Pretrained, profile=None) -> tuple[MBV3LatencyModel, dict]:
    """Adapt to measured (arch, ms) pairs. A profile with its own LUT gets ``LUT-sum x scale`` (NB201's
    ``fit_lut_scale``); one without, the pretrained head under the mixture prior (NB201's ``mixture_head``)."""
    from .latency import ERROR_QUANTILE, MIN_CALIBRATION, cv_relative_errors, fit_lut_scale, mixture_head

    _check(space)
    archs = list(archs)
    latency_ms = np.asarray(latency_ms, dtype=np.float64)
    if len(latency_ms) < MIN_CALIBRATION:
        raise UserError(f"the latency model needs at least {MIN_CALIBRATION} calibration timings, "
                        f"got {len(latency_ms)}")
    if profile is not None and profile.lut:
        model = MBV3LatencyModel(space, pretrained, None, 0.0, profile=profile)
        lut_ms = model.lut_cost().evaluate_np(archs)
        scale, errors = fit_lut_scale(lut_ms, latency_ms)
        power, form = 1.0, "scale x LUT-sum"
        if len(latency_ms) >= MIN_POWER_FIT:
            p_power, p_scale, p_errors = fit_lut_power(lut_ms, latency_ms)
            if np.quantile(p_errors, ERROR_QUANTILE) < np.quantile(errors, ERROR_QUANTILE):
                power, scale, errors, form = p_power, p_scale, p_errors, "scale x LUT-sum ^ power"
        rel = float(np.quantile(errors, ERROR_QUANTILE))
        model.lut_scale_log, model.lut_power, model.relative_error = scale, power, rel
        model.state = {"kind": LUT_KIND, "version": 1, "form": form, "lut_scale_log": scale, "lut_power": power,
                       "lut_entries": len(profile.lut), "lut_resolutions": list(lut_resolutions(profile)),
                       "relative_error": rel, "relative_error_quantile": ERROR_QUANTILE,
                       "cv_relative_errors": [round(float(v), 6) for v in errors], "n_calibration": len(errors)}
        return model, model.state
    components = pretrained.prior_components()
    design = _design(pretrained.phi(archs))
    y = np.log(latency_ms)
    theta, noise = mixture_head(design, y, components)
    errors = cv_relative_errors(design, y, components)
    rel = float(np.quantile(errors, ERROR_QUANTILE))
    state = {"kind": MODEL_KIND, "version": 1, "embedding": embedding_ref(pretrained),
             "coef": [float(v) for v in theta], "noise_log_std": noise, "relative_error": rel,
             "relative_error_quantile": ERROR_QUANTILE, "cv_relative_errors": [round(float(v), 6) for v in errors],
             "n_calibration": int(len(y))}
    return MBV3LatencyModel(space, pretrained, theta, rel, profile=profile, state=state), state


def _reference_model(space, profile, pre: Pretrained) -> tuple[MBV3LatencyModel, dict]:
    name = profile.reference
    if name not in pre.devices:
        raise ProfileError(f"reference profile {name!r} is not one of the mbv3 latency checkpoint's settings "
                           f"({', '.join(pre.devices)})")
    theta = pre.heads[pre.devices.index(name)]
    held = pre.heldout.get(name, {})
    rel = float(held.get("rel_err_q90", 0.0))
    state = {"kind": REFERENCE_KIND, "version": 1, "table": name, "embedding": embedding_ref(pre),
             "coef": [float(v) for v in theta], "relative_error": rel, "relative_error_quantile": 0.9,
             "heldout": held}
    return MBV3LatencyModel(space, pre, theta, rel, profile=profile, state=state), state


def _fit(space, profile, pretrained=None):
    from .latency import calibration_timings

    _check(space, profile)
    pre = pretrained or load_pretrained()
    if profile.reference:
        return _reference_model(space, profile, pre)
    return fit_calibration(space, *calibration_timings(space, profile), pre, profile)


def fit_profile_model(space, profile, pretrained: Pretrained | None = None) -> dict:
    """JSON state of the latency model fitted to ``profile`` (store it in ``profile.latency_model``)."""
    return _fit(space, profile, pretrained)[1]


def latency_model_for(space, profile, pretrained: Pretrained | None = None) -> MBV3LatencyModel:
    """The profile's model: its stored state when it matches the shipped embedding (and LUT), else refitted."""
    _check(space, profile)
    state = profile.latency_model
    if (isinstance(state, dict) and state.get("kind") == LUT_KIND and state.get("version") == 1 and profile.lut
            and state.get("lut_entries") == len(profile.lut)):
        return MBV3LatencyModel(space, pretrained, None, state["relative_error"], profile=profile, state=state,
                                lut_scale_log=state["lut_scale_log"], lut_power=state.get("lut_power", 1.0))
    pre = pretrained or load_pretrained()
    if (isinstance(state, dict) and state.get("kind") == MODEL_KIND and state.get("version") == 1
            and not profile.reference and state.get("embedding", {}).get("sha256") == pre.sha256):
        return MBV3LatencyModel(space, pre, state["coef"], state["relative_error"], profile=profile, state=state)
    return _fit(space, profile, pre)[0]
