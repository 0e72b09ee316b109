"""The search as one problem with interchangeable strategies (exhaustive, nsga2, random; diffusion in
test_generator.py), judged against the measured tables."""

import numpy as np
import pytest

from pomonag_edge.data import nb201_accuracy, nb201_latency_ms
from pomonag_edge.errors import BudgetError, UserError
from pomonag_edge.predictors import table_predictors
from pomonag_edge.problem import DEFAULT_WEIGHTS, Predictors, SearchProblem, parse_weights
from pomonag_edge.selection import run_search
from pomonag_edge.strategies import make_strategy
from pomonag_edge.spaces.nb201 import SPACE
from pomonag_edge.units import Budget


def problem(budget=None, margin=0.0):
    budget = Budget.parse("12ms") if budget is None else budget
    p = table_predictors(SPACE, "cifar100", "pixel3")
    return SearchProblem(SPACE, "cifar100", budget, Predictors(p.accuracy, p.latency_ms, margin, p.source))


def test_parse_weights():
    assert parse_weights(None) == DEFAULT_WEIGHTS
    assert parse_weights("accuracy=2, latency=0") == {**DEFAULT_WEIGHTS, "accuracy": 2.0, "latency": 0.0}
    for bad, words in (("speed=1", "cannot read weight"), ("latency=x", "not a number"), ("macs=-1", "non-negative")):
        with pytest.raises(UserError, match=words):
            parse_weights(bad)


def test_constraints_use_margin():
    p = problem(Budget.parse("10ms", "1M"), margin=0.25)
    s = {"accuracy": np.array([70.0, 70.0]), "latency_ms": np.array([8.0, 8.1]),
         "params": np.array([1e6, 1e6]), "macs": np.array([1.0, 1.0])}
    assert p.latency_limit_ms == pytest.approx(8.0)
    assert p.feasible(s).tolist() == [True, False]
    assert p.G(s)[:, 2].tolist() == [0.0, 0.0]  # no MAC budget: unconstrained


def test_exhaustive_finds_the_true_optimum():
    result = run_search(problem(), make_strategy("exhaustive"), num=5)
    acc, lat = nb201_accuracy("cifar100"), nb201_latency_ms("pixel3")
    best = np.nanmax(np.where(lat <= 12.0, acc, -np.inf))
    assert result.selected[0]["accuracy"] == pytest.approx(best, abs=1e-3)
    assert all(r["front"] == 0 and r["latency_ms"] <= 12.0 for r in result.selected)


@pytest.mark.parametrize("name", ["nsga2", "random"])
def test_baselines_keep_call_budget_and_are_seeded(name):
    a = run_search(problem(), make_strategy(name), samples=200, num=5, seed=1)
    b = run_search(problem(), make_strategy(name), samples=200, num=5, seed=1)
    assert a.selected == b.selected and a.stats["predictor_calls"] <= 200
    assert all(r["latency_ms"] <= 12.0 for r in a.selected)


def test_nsga2_beats_random_at_equal_calls():
    acc = lambda name: np.mean([run_search(problem(), make_strategy(name), samples=400, num=1, seed=s)  # noqa: E731
                                .selected[0]["accuracy"] for s in range(3)])
    assert acc("nsga2") > acc("random")


def test_impossible_budget_reports_closest():
    result = run_search(problem(Budget.parse("0.001ms")), make_strategy("random"), samples=50, num=5, closest=3)
    assert result.selected == [] and len(result.closest) == 3
    assert all(not r["feasible"] for r in result.closest)
    with pytest.raises(BudgetError, match="no candidate net meets the budget"):
        result.require_feasible(Budget.parse("0.001ms"))
