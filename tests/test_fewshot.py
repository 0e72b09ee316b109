"""The few-shot fit's pieces shared by the latency and the accuracy model (``predictors.fewshot``)."""

import numpy as np

from pomonag_edge.predictors.fewshot import POPULATION_WEIGHT, cv_folds, mixture_prior, ols_loo


def _refit_residuals(design, y):
    """Each measurement's residual under a least-squares fit made without it, the slow way."""
    out = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef = np.linalg.lstsq(design[keep], y[keep], rcond=None)[0]
        out.append(design[i] @ coef - y[i])
    return np.array(out)


def test_ols_loo_residuals_are_those_of_fits_without_each_measurement():
    rng = np.random.default_rng(0)
    design = np.hstack([rng.normal(size=(9, 2)), np.ones((9, 1))])
    y = design @ np.array([0.5, -1.0, 2.0]) + 0.1 * rng.normal(size=9)
    coef, loo, pinv = ols_loo(design, y)
    np.testing.assert_allclose(coef, np.linalg.lstsq(design, y, rcond=None)[0], rtol=1e-10)
    np.testing.assert_allclose(loo, _refit_residuals(design, y), rtol=1e-8)
    np.testing.assert_allclose(pinv @ pinv.T, np.linalg.inv(design.T @ design), rtol=1e-8)


def test_ols_loo_of_a_stack_is_each_design_on_its_own():
    rng = np.random.default_rng(1)
    stack = np.concatenate([rng.normal(size=(4, 7, 2)), np.ones((4, 7, 1))], axis=2)
    y = rng.normal(size=7)
    coef, loo, _ = ols_loo(stack, y)
    assert coef.shape == (4, 3) and loo.shape == (4, 7)
    for c in range(4):
        one_coef, one_loo, _ = ols_loo(stack[c], y)
        np.testing.assert_allclose(coef[c], one_coef, rtol=1e-12)
        np.testing.assert_allclose(loo[c], one_loo, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(loo[c], _refit_residuals(stack[c], y), rtol=1e-8)


def test_cv_folds_are_leave_one_out_up_to_folds_then_a_partition():
    few = cv_folds(5, 10)
    assert len(few) == 5 and all(m.sum() == 1 for m in few)
    many = cv_folds(25, 10)
    assert len(many) == 10
    assert np.array_equal(np.sum(many, axis=0), np.ones(25))  # each measurement held out exactly once
    assert np.flatnonzero(many[3]).tolist() == [3, 13, 23]


def test_mixture_prior_weights_sum_to_one_with_the_population_first():
    heads = np.eye(3)
    comps = mixture_prior(np.zeros(3), np.eye(3), heads, 0.1 * np.eye(3))
    assert comps[0][0] == POPULATION_WEIGHT and len(comps) == 4
    assert abs(sum(w for w, _, _ in comps) - 1) < 1e-12
    assert all(np.array_equal(m, h) for (_, m, _), h in zip(comps[1:], heads))
