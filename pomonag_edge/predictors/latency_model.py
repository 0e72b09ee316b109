"""The latency model classes: each kind of fitted model, with ``to_state``/``from_state`` (its JSON form, stored
in a profile's ``latency_model``) and ``state_spec`` (its fields, checked when a profile is read):

- ``HeadModel``: the weighed candidates of the few-shot fit (``fewshot``), for timings without a LUT, or a
  reference setting whose table does not cover the space (its training head; its error measured on held-out nets);
- ``TableModel``: a reference profile whose table covers the space: an exact lookup, zero error;
- ``LutModel``: a profile with its own per-op LUT: ``scale x LUT-cost ^ power``;
- ``ProxyModel``: a space with no pretrained embedding: log-linear in MACs and params.

Every model knows its own error: ``log_sigma`` per net (a constant from the cross-validated q90 relative error
where nothing better is known), and ``quantile_ms`` the latency a net stays under at a given probability.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np

from ..errors import ProfileError
from ..fields import FieldError, list_of, number, record, text
from ..spaces.base import to_genes
from ..spaces.lut import lut_cost, positive_lut_ms
from .fewshot import ERROR_QUANTILE, Z90, blend_candidates, blend_log_sigma, candidate_weights, fit_candidates, ols_loo
from .latency_pretrain import PretrainedEmbedding, fit_heads, head_design

MIN_POWER_FIT = 8  # timings needed before the LUT cost's exponent is fitted too


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
    return {"relative_error": number(0), "relative_error_quantile": number(0, 1),
            "cv_relative_errors": list_of(number(0)), "n_calibration": number(0, integer=True)}


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
    n = len(leverage["columns"])
    if len(leverage["gram_inv"]) != n or any(len(row) != n for row in leverage["gram_inv"]):
        raise FieldError(f"{where}.gram_inv", f"is not {n} x {n} (one row and column per {where}.columns)")


def _within_features(state: dict, where: str) -> None:
    """A head's weights and each candidate's cover at most the features the state names; columns index them."""
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
        design = head_design(pre.phi(archs))
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
