"""The latency model, one family for every space: a shared arch embedding pretrained on measured devices, and
a per-device head fitted from a few timings.

Why this shape: across the shipped tables, log-latency on every device is close to a linear function of one
small learned embedding of the arch, ``log ms ~ w_d . phi(arch) + b_d``. The training devices' heads
``(w_d, b_d)`` form a prior over what a device looks like, so a new device needs only a handful of whole-net
timings: its head is the posterior mean under a mixture prior (``mixture_head``; HELP's idea in closed form).
Where the shipped tables hold every net of the space, a *sibling-table* model (``sibling_fit``) is averaged in
log space with the head: a sibling device's table carries structure no low-rank embedding keeps. What is
space-specific (the embedding network, its inputs, the tables) is the space's ``latency_recipe``.

A device unlike every shipped one must not be forced into their mould: the adapted model weighs candidate
explanations (the head, the sibling tables, their average, and a cost proxy: log-linear in MACs, so that a
model falling back entirely ranks nets as MACs-only does) by how well each predicts the K timings held out
one at a time (``fit_candidates``, ``candidate_weights``). Few timings or a foreign device lean on the proxies; many timings of a familiar
kind lean on the tables. Where the candidates disagree, or a net is unlike the timed ones, its own sigma of
log-ms widens (``blend_log_sigma``): the budget test uses a per-net quantile, not one global margin.

Each kind of fitted model is a small class with ``to_state``/``from_state``:

- ``HeadModel``: the weighed candidates, for timings without a LUT, or a reference setting whose table does
  not cover the space (its training head; its error measured on held-out nets);
- ``TableModel``: a reference profile whose table covers the space: an exact lookup, zero error;
- ``LutModel``: a profile with its own per-op LUT: ``scale x LUT-cost ^ power``;
- ``ProxyModel``: a space with no pretrained embedding: log-linear in MACs and params.

Every model knows its own error: ``log_sigma`` per net (a constant from the cross-validated q90 relative error
where nothing better is known), and ``quantile_ms`` the latency a net stays under at a given probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ProfileError, UserError
from ..spaces.lut import lut_cost, positive_lut_ms
from .fewshot import (ERROR_QUANTILE, Z90, blend_candidates, blend_log_sigma, candidate_weights, fit_candidates,
                      mixture_prior, ols_loo)

MIN_CALIBRATION = 3
MIN_POWER_FIT = 8  # timings needed before the LUT cost's exponent is fitted too
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


def proxy_features(space, archs) -> np.ndarray:
    """(n, 1) log MACs: the cost proxy every space has (``space.macs``), the input of the ``PROXIES`` candidates."""
    return np.array([[math.log(max(space.macs(a), 1))] for a in archs], dtype=np.float64).reshape(-1, 1)


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
    _proxies_all: np.ndarray | None = field(default=None, repr=False)
    _features_all: np.ndarray | None = field(default=None, repr=False)
    _proxy_memo: dict = field(default_factory=dict, repr=False)

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
        return mixture_prior(self.prior_mean, self.prior_cov, self.heads, DEVICE_COV_SCALE * self.prior_cov)

    def phi(self, archs) -> np.ndarray:
        """Embedding of ``archs``; where the tables cover the space, read from its whole-space table (computed once)."""
        archs = list(archs)
        if not self.covers_space:
            return embed(self.space, self.embedding, archs)
        if self._phi_all is None:
            self._phi_all = embed(self.space, self.embedding, list(self.space.enumerate()))
        return self._phi_all[[self.space.table_index(a) for a in archs]]

    def proxies(self, archs) -> np.ndarray:
        """``proxy_features`` of ``archs`` (whole-space table once where the tables cover the space)."""
        archs = list(archs)
        if not self.covers_space:  # memoised per arch: exact MACs of a large space cost ~1 ms a net
            todo = [a for a in dict.fromkeys(archs) if a not in self._proxy_memo]
            self._proxy_memo.update(zip(todo, proxy_features(self.space, todo)))
            return np.array([self._proxy_memo[a] for a in archs], dtype=np.float64).reshape(-1, 1)
        if self._proxies_all is None:
            self._proxies_all = proxy_features(self.space, list(self.space.enumerate()))
        return self._proxies_all[[self.space.table_index(a) for a in archs]]

    @property
    def n_features(self) -> int:
        return len(self.feature_names())

    def feature_names(self) -> list[str]:
        """Names of the joint features every adapted model is linear in: embedding, bias, sibling tables (where
        they cover the space), log MACs."""
        dim = self.heads.shape[1] - 1
        tables = [f"table:{n}" for n in self.devices] if self.covers_space else []
        return [f"phi{i}" for i in range(dim)] + ["bias"] + tables + ["log_macs"]

    def joint_features(self, archs) -> np.ndarray:
        """(n, n_features) joint features of ``archs`` (see ``feature_names``)."""
        archs = list(archs)
        if self.covers_space:
            return self.features_all()[[self.space.table_index(a) for a in archs]]
        return np.hstack([_design(self.phi(archs)), self.proxies(archs)])

    def features_all(self) -> np.ndarray:
        """Joint features of every net in ``table_index`` order (only where the tables cover the space), once."""
        if self._features_all is None:
            everything = list(self.space.enumerate())
            self._features_all = np.hstack([_design(self.phi(everything)), self.sibling_tables(),
                                            self.proxies(everything)])
        return self._features_all

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
    (power, scale), loo, _ = ols_loo(np.stack([x, np.ones_like(x)], axis=1), y)
    return float(power), float(scale), np.abs(np.expm1(loo))


def _error_state(errors: np.ndarray) -> dict:
    rel = float(np.quantile(errors, ERROR_QUANTILE))
    return {"relative_error": rel, "relative_error_quantile": ERROR_QUANTILE,
            "cv_relative_errors": [round(float(v), 6) for v in errors], "n_calibration": int(len(errors))}


def _error_fields() -> dict:
    """The fields ``_error_state`` writes, for the models' ``state_spec``."""
    from ..fields import list_of, number

    return {"relative_error": number(0), "relative_error_quantile": number(0, 1),
            "cv_relative_errors": list_of(number(0)), "n_calibration": number(0, integer=True)}


# ------------------------------------------------------------------------------------------ the models


class LatencyModel:
    """Predicts ms for any net of a profile's target and knows its error. ``predict_ms`` (ms per forward pass),
    ``relative_error`` (q90 of cross-validated errors), ``log_sigma`` (per-net std of log-ms: the budget margin),
    ``quantile_ms``, ``log_ms_torch`` (differentiable log-ms over the
    space's encoding, for guidance), ``to_state``; ``from_state`` returns None for a state it cannot use."""

    kind = ""
    relative_error = 0.0

    def predict_ms(self, archs) -> np.ndarray:
        raise NotImplementedError

    def model_ms(self, archs) -> np.ndarray:
        """The fitted model's prediction (a table model's head, never its table)."""
        return self.predict_ms(archs)

    def margin_ms(self, pred_ms) -> np.ndarray:
        """One global margin: ``relative_error`` (q90 of cross-validated errors) of each prediction."""
        return np.asarray(pred_ms, dtype=np.float64) * self.relative_error

    def log_sigma(self, archs) -> np.ndarray:
        """Per-net std of log-ms around ``predict_ms``. Default: one constant, the q90 relative error read as a
        one-sided 90% bound (so ``quantile_ms(.., 0.9)`` is the global margin); models that know better override."""
        return np.full(len(list(archs)), math.log1p(self.relative_error) / Z90)

    def quantile_ms(self, archs, level: float = ERROR_QUANTILE) -> np.ndarray:
        """The latency each net stays under with probability ``level`` (log-normal around the prediction)."""
        from statistics import NormalDist

        archs = list(archs)
        return self.predict_ms(archs) * np.exp(NormalDist().inv_cdf(level) * self.log_sigma(archs))

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


def _square_gram(leverage: dict, where: str) -> None:
    from ..fields import FieldError

    n = len(leverage["columns"])
    if len(leverage["gram_inv"]) != n or any(len(row) != n for row in leverage["gram_inv"]):
        raise FieldError(f"{where}.gram_inv", f"is not {n} x {n} (one row and column per {where}.columns)")


def _within_features(state: dict, where: str) -> None:
    """A head's weights and each candidate's cover at most the features the state names; columns index them."""
    from ..fields import FieldError

    n = len(state.get("features") or []) or None
    if n is None:
        return
    for key, coef in [("coef", state["coef"])] + [(f"candidates[{i}].coef", c["coef"])
                                                 for i, c in enumerate(state["candidates"])]:
        if len(coef) > n:
            raise FieldError(f"{where}.{key}", f"holds {len(coef)} weight(s), more than the {n} of {where}.features")
    for i, c in enumerate(state["candidates"]):
        if len(c["coef"]) != n or any(j >= n for j in c["leverage"]["columns"]):
            raise FieldError(f"{where}.candidates[{i}]", f"does not span the {n} features of {where}.features")


class HeadModel(LatencyModel):
    """A device's model from K timings: the candidates of ``fit_candidates`` (embedding head, sibling tables and
    their average where tables cover the space, cost proxies) weighed by ``candidate_weights``, collapsed into
    one linear map ``coef`` of the joint features; the kept candidates give each net its own sigma
    (``blend_log_sigma``). Also the shape of a reference setting whose table does not cover the space (its
    training head, the held-out error of an identical fit)."""

    kind = "embedding-head"
    version = 6

    def __init__(self, pretrained: PretrainedEmbedding, coef, relative_error: float, state: dict,
                 candidates: list | None = None, kappa: float = 1.0):
        self.pretrained = pretrained
        coef = np.asarray(coef, dtype=np.float64)
        self.coef = np.zeros(pretrained.n_features)
        self.coef[:len(coef)] = coef  # a head alone (theta over [phi, 1]) is the joint map with zeros beyond
        self.relative_error, self.state = float(relative_error), state
        self.candidates, self.kappa = candidates, float(kappa)
        self._log_all = None

    @classmethod
    def fit(cls, pre: PretrainedEmbedding, archs, latency_ms) -> "HeadModel":
        archs = list(archs)
        y = np.log(np.asarray(latency_ms, dtype=np.float64))
        design = _design(pre.phi(archs))
        tables = pre.sibling_tables()[[pre.space.table_index(a) for a in archs]] if pre.covers_space else None
        cands = fit_candidates(design, tables, pre.proxies(archs), y, pre.prior_components())
        blend = blend_candidates(cands, candidate_weights(cands, y), y)
        state = {"kind": cls.kind, "version": cls.version, "embedding": _embedding_ref(pre),
                 "features": pre.feature_names(), "coef": [float(v) for v in blend["coef"]],
                 "noise_log_std": cands[0]["noise"], "kappa": blend["kappa"], "candidates": blend["candidates"],
                 **_error_state(blend["errors"])}
        return cls(pre, blend["coef"], state["relative_error"], state, blend["candidates"], blend["kappa"])

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
    def state_spec(cls):
        from ..fields import list_of, number, record, text

        leverage = record({"columns": list_of(number(0, integer=True)), "gram_inv": list_of(list_of(number()))},
                          required=("columns", "gram_inv"), rules=(_square_gram,))
        candidate = record({"name": text(), "weight": number(0, 1), "rms_log": number(0), "coef": list_of(number()),
                            "leverage": leverage}, required=("weight", "rms_log", "coef", "leverage"))
        return record({"embedding": record({"checkpoint": text(optional=True), "sha256": text()}),
                       "features": list_of(text()),
                       "coef": list_of(number(), min_len=1), "noise_log_std": number(0), "kappa": number(0, above=True),
                       "candidates": list_of(candidate), **_error_fields()},
                      required=("coef", "relative_error", "candidates", "kappa"), rules=(_within_features,))

    @classmethod
    def from_state(cls, pre: PretrainedEmbedding, state: dict) -> "HeadModel | None":
        if state.get("kind") != cls.kind or state.get("version") != cls.version:
            return None
        if state.get("embedding", {}).get("sha256") != pre.sha256 or state.get("features") != pre.feature_names():
            return None
        return cls(pre, state["coef"], state["relative_error"], state, state["candidates"], state["kappa"])

    def _log_table(self) -> np.ndarray:
        """log-ms of every net in ``table_index`` order (spaces whose tables cover them), computed once."""
        if self._log_all is None:
            self._log_all = self.pretrained.features_all() @ self.coef
        return self._log_all

    def predict_ms(self, archs) -> np.ndarray:
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        if self.pretrained.covers_space:
            return np.exp(self._log_table()[[self.pretrained.space.table_index(a) for a in archs]])
        return np.exp(self.pretrained.joint_features(archs) @ self.coef)

    def log_sigma(self, archs) -> np.ndarray:
        archs = list(archs)
        if not self.candidates:
            return super().log_sigma(archs)
        return blend_log_sigma(self.pretrained.joint_features(archs), self.candidates, self.kappa)

    def log_ms_torch(self, x):
        """Differentiable log-ms over the encoding: the whole-space table's multilinear extension where the
        tables cover the space, else the embedding head (a model leaning on cost proxies has no such form there)."""
        import torch

        if self.pretrained.covers_space:
            return _soft_table_lookup(self.pretrained.space, self._log_table(), x)
        de = self.pretrained.heads.shape[1]
        if np.any(self.coef[de:] != 0):
            raise NotImplementedError("this latency model leans on cost proxies, which have no differentiable form "
                                      f"over {self.pretrained.space.name}'s encoding")
        w = torch.as_tensor(self.coef[:de], dtype=x.dtype)
        return self.pretrained.embedding(x.float()).to(x.dtype) @ w[:-1] + w[-1]


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
    def state_spec(cls):
        from ..fields import number, record, text

        return record({"form": text(), "lut_scale_log": number(), "lut_power": number(0, above=True),
                       "lut_entries": number(0, integer=True), **_error_fields()},
                      required=("lut_scale_log", "lut_power", "relative_error"))

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
        coef, loo, _ = ols_loo(design, y)
        errors = np.abs(np.expm1(loo))
        state = {"kind": cls.kind, "version": cls.version, "coef": [float(v) for v in coef],
                 "features": ["log_macs", "log_params", "bias"], **_error_state(errors)}
        return cls(space, dataset, coef, state["relative_error"], state)

    @classmethod
    def state_spec(cls):
        from ..fields import list_of, number, record, text

        return record({"coef": list_of(number(), length=3), "features": list_of(text()), **_error_fields()},
                      required=("coef", "relative_error"))

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
    profile.require_space(space)
    if profile.reference:
        pre = _pretrained(space, pretrained)
        return TableModel(pre, profile.reference) if pre.covers_space else HeadModel.reference(pre, profile.reference)
    return fit_calibration(space, *calibration_timings(space, profile), pretrained, profile)


def fit_profile_model(space, profile, pretrained: PretrainedEmbedding | None = None) -> dict:
    """The JSON state of the latency model fitted to ``profile`` (stored in ``profile.latency_model``)."""
    return _fit(space, profile, pretrained).to_state()


def check_state(state, where: str) -> None:
    """``fields`` check of a profile's stored ``latency_model``: a state of this version's kinds field by field
    (each model's ``state_spec``); any other is refitted from the timings, so any object (or null) goes."""
    from ..fields import record

    for cls in (LutModel, ProxyModel, HeadModel):
        if isinstance(state, dict) and state.get("kind") == cls.kind and state.get("version") == cls.version:
            return cls.state_spec()(state, where)
    record(optional=True)(state, where)


def latency_model_for(space, profile, pretrained: PretrainedEmbedding | None = None) -> LatencyModel:
    """The profile's latency model: its stored state where still valid (same LUT, same embedding), else refitted."""
    profile.require_space(space)
    state = profile.latency_model
    if isinstance(state, dict) and not profile.reference:
        model = LutModel.from_state(space, profile, state) or ProxyModel.from_state(space, profile, state)
        if model is None and state.get("kind") == HeadModel.kind and space.latency_recipe is not None:
            model = HeadModel.from_state(_pretrained(space, pretrained), state)
        if model is not None:
            return model
    return _fit(space, profile, pretrained)
