"""The search, stated once, as pymoo states a problem: objectives, constraints and the predictors behind them.

Objectives ``accuracy`` (maximised), ``latency_ms``, ``params``, ``macs`` (minimised); constraints G <= 0 for
each budget given: ``latency_ms * (1 + margin) <= max_latency_ms`` (margin: the latency model's own relative
error), ``params <= max_params``, ``macs <= max_macs``. Strategies (``strategies``, ``generator.strategy``)
propose archs against a ``SearchProblem``; ``selection`` turns proposals into the ranked answer. This module
imports nothing else of the package but errors and units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import UserError
from .units import Budget, format_count

OBJECTIVES = ("accuracy", "latency_ms", "params", "macs")
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
    """The clean predictors a search scores nets with; ``margin`` is the latency model's relative error."""

    accuracy: Callable[[Sequence], np.ndarray]
    latency_ms: Callable[[Sequence], np.ndarray]
    margin: float = 0.0
    source: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the problem


class SearchProblem:
    """Objectives and constraints of one request. ``evaluate`` memoises per arch and counts predictor calls."""

    n_obj, n_constr = len(OBJECTIVES), 3

    def __init__(self, space, dataset: str, budget: Budget, predictors: Predictors):
        self.space, self.dataset, self.budget, self.predictors = space, dataset, budget, predictors
        self.margin = float(predictors.margin)
        self.calls = 0  # distinct nets scored for the search itself (work like distillation not counted)
        self._cache: dict = {}
        self._counted: set = set()

    @property
    def latency_limit_ms(self) -> float | None:
        b = self.budget.max_latency_ms
        return None if b is None else b / (1.0 + self.margin)

    def evaluate(self, archs: Sequence, count: bool = True) -> dict[str, np.ndarray]:
        """Objectives of ``archs`` as arrays; ``count=False`` for work that is not the search (distillation)."""
        archs = list(archs)
        todo = [a for a in dict.fromkeys(archs) if a not in self._cache]
        if todo:
            acc = np.asarray(self.predictors.accuracy(todo), dtype=np.float64)
            lat = np.asarray(self.predictors.latency_ms(todo), dtype=np.float64)
            for a, ac, la in zip(todo, acc, lat):
                self._cache[a] = (float(ac), float(la), float(self.space.params(a, self.dataset)),
                                  float(self.space.macs(a, self.dataset)))
        if count:
            fresh = set(archs) - self._counted
            self._counted |= fresh
            self.calls += len(fresh)
        rows = np.array([self._cache[a] for a in archs], dtype=np.float64).reshape(-1, 4)
        return {name: rows[:, j] for j, name in enumerate(OBJECTIVES)}

    def F(self, scores: dict) -> np.ndarray:
        """Objective matrix, every column minimised."""
        return np.stack([-scores["accuracy"], scores["latency_ms"], scores["params"], scores["macs"]], axis=1)

    def G(self, scores: dict) -> np.ndarray:
        """Relative budget excess per constraint (<= 0 feasible; 0 where unconstrained)."""
        b = self.budget
        cols = []
        for value, limit in ((scores["latency_ms"] * (1 + self.margin), b.max_latency_ms),
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
