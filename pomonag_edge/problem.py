"""The search, stated once, as pymoo states a problem: objectives, constraints and the predictors behind them.

Objectives ``accuracy`` (maximised), ``latency_ms``, ``params``, ``macs`` (minimised); constraints G <= 0 for
each budget given: ``latency_bound_ms <= max_latency_ms``, ``params <= max_params``, ``macs <= max_macs``.
``latency_bound_ms`` is the latency a net stays under with probability ``level`` (the user's ask): the
prediction times ``exp(z_level x sigma)`` where the predictors give a per-net sigma of log-ms, else the
prediction times ``(1 + margin)``. So a net is kept when its probability of fitting the budget is >= ``level``.
Strategies (``strategies``, ``generator.strategy``) propose archs against a ``SearchProblem``; ``selection``
turns proposals into the ranked answer. This module imports nothing else of the package but errors and units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

from .errors import UserError
from .units import Budget, format_count

OBJECTIVES = ("accuracy", "latency_ms", "params", "macs")
GUIDED = OBJECTIVES + ("latency_bound_ms",)  # what strategies steer by: the objectives and the budgeted latency
# beside them in ``evaluate``: the latency sigma, the models' own predictions, and 1.0 where a measurement was used
COLUMNS = GUIDED + ("latency_log_sigma", "accuracy_predicted", "latency_ms_predicted", "accuracy_measured",
                    "latency_measured")
DEFAULT_LEVEL = 0.9  # probability of fitting the latency budget a kept net must reach
WEIGHT_KEYS = {"accuracy": "accuracy", "latency": "latency_ms", "params": "params", "macs": "macs"}
DEFAULT_WEIGHTS = {"accuracy": 1.0, "latency": 0.5, "params": 0.1, "macs": 0.1}
Progress = Callable[[str, int, int], None]


def parse_weights(text: str | None) -> dict[str, float]:
    """``'accuracy=1,latency=0.5'`` -> weights by user name (missing names keep their defaults)."""
    weights = dict(DEFAULT_WEIGHTS)
    if text is None or not text.strip():
        return weights
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in WEIGHT_KEYS:
            raise UserError(f"cannot read weight {part.strip()!r}: expected name=value with name one of "
                            f"{', '.join(WEIGHT_KEYS)}, e.g. accuracy=1,latency=0.5")
        try:
            w = float(value)
        except ValueError:
            raise UserError(f"weight {name}={value.strip()!r} is not a number") from None
        if not np.isfinite(w) or w < 0:
            raise UserError(f"weight {name} must be a non-negative number, got {value.strip()!r}")
        weights[name] = w
    if weights["accuracy"] == 0 and not any(weights.values()):
        raise UserError("all weights are zero: give at least one objective a positive weight")
    return weights


# ---------------------------------------------------------------- clean predictors


@dataclass
class Predictors:
    """The clean predictors a search scores nets with; ``margin`` is the latency model's relative error (one
    for every net), ``latency_log_sigma`` (optional) its per-net std of log-ms, which replaces the margin.

    ``measured_latency_ms`` / ``measured_accuracy`` (arch string -> value) beat the predictions: a measured net
    is scored, selected and ranked by its measurement (its latency has no margin left). ``accuracy_sigma``: the
    accuracy model's std in points where it knows it (a user task's cross-validated error), for the closed loop."""

    accuracy: Callable[[Sequence], np.ndarray]
    latency_ms: Callable[[Sequence], np.ndarray]
    margin: float = 0.0
    source: dict = field(default_factory=dict)
    latency_log_sigma: Callable[[Sequence], np.ndarray] | None = None
    measured_latency_ms: dict = field(default_factory=dict)
    measured_accuracy: dict = field(default_factory=dict)
    accuracy_sigma: float = 0.0


def normal_cdf(z) -> np.ndarray:
    """The standard normal cdf, elementwise (the standard library's erf: scipy.stats cost 1-3 s to import)."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(z / math.sqrt(2.0))) if z.size else z


# ---------------------------------------------------------------- the problem


class SearchProblem:
    """Objectives and constraints of one request. ``evaluate`` memoises per arch and counts predictor calls."""

    n_obj, n_constr = len(OBJECTIVES), 3

    def __init__(self, space, dataset: str, budget: Budget, predictors: Predictors, level: float = DEFAULT_LEVEL):
        if not 0.5 <= level < 1:
            raise UserError(f"the probability of fitting the budget must be in [0.5, 1), got {level:g}")
        self.space, self.dataset, self.budget, self.predictors = space, dataset, budget, predictors
        self.margin, self.level, self._z = float(predictors.margin), float(level), NormalDist().inv_cdf(level)
        self.calls = 0  # distinct nets scored for the search itself (work like distillation not counted)
        self._cache: dict = {}
        self._counted: set = set()

    @property
    def per_net(self) -> bool:
        """Whether each net has its own latency margin (the predictors give a sigma)."""
        return self.predictors.latency_log_sigma is not None

    @property
    def latency_limit_ms(self) -> float | None:
        """The budget less the global margin (with per-net margins: the limit a net of zero sigma meets)."""
        b = self.budget.max_latency_ms
        return None if b is None else b / (1.0 if self.per_net else 1.0 + self.margin)

    def limits(self) -> dict:
        """Upper bounds on the ``GUIDED`` columns (None: unconstrained), for strategies' guidance."""
        b = self.budget
        return {"latency_bound_ms": b.max_latency_ms, "params": b.max_params, "macs": b.max_macs}

    def evaluate(self, archs: Sequence, count: bool = True) -> dict[str, np.ndarray]:
        """Objectives of ``archs`` as arrays; ``count=False`` for work that is not the search (distillation)."""
        archs = list(archs)
        todo = [a for a in dict.fromkeys(archs) if a not in self._cache]
        if todo:
            p = self.predictors
            acc_pred = np.asarray(p.accuracy(todo), dtype=np.float64)
            lat_pred = np.asarray(p.latency_ms(todo), dtype=np.float64)
            if self.per_net:
                sigma = np.asarray(p.latency_log_sigma(todo), dtype=np.float64)
            else:
                sigma = np.zeros(len(todo))
            keys = [str(a) for a in todo]
            lat_known = np.array([k in p.measured_latency_ms for k in keys], dtype=bool)
            acc_known = np.array([k in p.measured_accuracy for k in keys], dtype=bool)
            lat = np.where(lat_known, [p.measured_latency_ms.get(k, 0.0) for k in keys], lat_pred)
            acc = np.where(acc_known, [p.measured_accuracy.get(k, 0.0) for k in keys], acc_pred)
            sigma = np.where(lat_known, 0.0, sigma)  # measured: no margin left
            bound = np.where(lat_known, lat, lat * np.exp(self._z * sigma) if self.per_net else lat * (1 + self.margin))
            for j, a in enumerate(todo):
                self._cache[a] = (float(acc[j]), float(lat[j]), float(self.space.params(a, self.dataset)),
                                  float(self.space.macs(a, self.dataset)), float(bound[j]), float(sigma[j]),
                                  float(acc_pred[j]), float(lat_pred[j]), float(acc_known[j]), float(lat_known[j]))
        if count:
            fresh = set(archs) - self._counted
            self._counted |= fresh
            self.calls += len(fresh)
        rows = np.array([self._cache[a] for a in archs], dtype=np.float64).reshape(-1, len(COLUMNS))
        return {name: rows[:, j] for j, name in enumerate(COLUMNS)}

    def _bound(self, scores: dict) -> np.ndarray:
        """The budgeted latency column; scores made by hand without it get the global margin."""
        if "latency_bound_ms" in scores:
            return scores["latency_bound_ms"]
        return scores["latency_ms"] * (1 + self.margin)

    def p_within_budget(self, scores: dict) -> np.ndarray:
        """Probability that each net's measured latency fits the budget (1 where unconstrained; with one global
        margin, 1 or 0 by whether prediction x (1 + margin) fits)."""
        b = self.budget.max_latency_ms
        lat = scores["latency_ms"]
        if b is None:
            return np.ones_like(lat)
        sigma = scores.get("latency_log_sigma", np.zeros_like(lat))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(b) - np.log(np.maximum(lat, 1e-12))) / sigma
        # a measured net has sigma 0 and its measurement as bound: 1 or 0
        return np.where(sigma > 0, normal_cdf(z), (self._bound(scores) <= b).astype(np.float64))

    def F(self, scores: dict) -> np.ndarray:
        """Objective matrix, every column minimised."""
        return np.stack([-scores["accuracy"], scores["latency_ms"], scores["params"], scores["macs"]], axis=1)

    def G(self, scores: dict) -> np.ndarray:
        """Relative budget excess per constraint (<= 0 feasible; 0 where unconstrained)."""
        b = self.budget
        cols = []
        for value, limit in ((self._bound(scores), b.max_latency_ms),
                             (scores["params"], b.max_params), (scores["macs"], b.max_macs)):
            cols.append(np.zeros_like(value) if limit is None else value / limit - 1.0)
        return np.stack(cols, axis=1)

    def feasible(self, scores: dict) -> np.ndarray:
        return np.all(self.G(scores) <= 0, axis=1)

    def violation(self, scores: dict) -> np.ndarray:
        return np.clip(self.G(scores), 0, None).sum(axis=1)


def describe_budget(budget: Budget) -> str:
    parts = []
    if budget.max_latency_ms is not None:
        parts.append(f"latency <= {budget.max_latency_ms:g} ms")
    if budget.max_params is not None:
        parts.append(f"params <= {format_count(budget.max_params)}")
    if budget.max_macs is not None:
        parts.append(f"MACs <= {format_count(budget.max_macs)}")
    return ", ".join(parts) or "unconstrained"
