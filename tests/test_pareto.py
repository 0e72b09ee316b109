import itertools

import numpy as np
import pytest

from pomonag_edge import pareto
from pomonag_edge.pareto import hypervolume, non_dominated_sort, pareto_mask


def dominates(a, b) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def brute_fronts(F):
    left, fronts = list(range(len(F))), []
    while left:
        front = [i for i in left if not any(dominates(F[j], F[i]) for j in left if j != i)]
        fronts.append(sorted(front))
        left = [i for i in left if i not in front]
    return fronts


@pytest.mark.parametrize("m", [2, 3, 4])
def test_non_dominated_sort_matches_brute_force(m):
    rng = np.random.default_rng(m)
    F = rng.integers(0, 5, (80, m)).astype(float)  # ties and duplicates on purpose
    assert [f.tolist() for f in non_dominated_sort(F)] == brute_fronts(F)
    assert [f.tolist() for f in pareto._efficient_sort(F)] == brute_fronts(F)  # the sort used without pymoo
    assert np.array_equal(np.flatnonzero(pareto_mask(F)), non_dominated_sort(F)[0])


def test_fallback_sort_agrees_with_pymoo_on_many_points():
    rng = np.random.default_rng(0)
    F = rng.random((3000, 4))
    F[:, 3] = F[:, 2] + 0.05 * rng.random(3000)  # correlated columns, as params and MACs are
    assert [f.tolist() for f in pareto._efficient_sort(F)] == [f.tolist() for f in non_dominated_sort(F)]


def grid_hv(F, ref, steps=40):
    """Hypervolume by counting cell centres of a fine grid (independent check)."""
    lo = np.zeros(F.shape[1])
    axes = [np.linspace(a, b, steps, endpoint=False) + (b - a) / steps / 2 for a, b in zip(lo, ref)]
    cell = np.prod([(b - a) / steps for a, b in zip(lo, ref)])
    pts = np.array(list(itertools.product(*axes)))
    covered = np.zeros(len(pts), bool)
    for f in F:
        covered |= np.all(pts >= f, axis=1)
    return covered.sum() * cell


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_exact_on_grid_points(m):
    rng = np.random.default_rng(m)
    F = rng.integers(0, 8, (25, m)).astype(float) / 8  # on the grid, so cell counting is exact
    ref = np.ones(m)
    assert hypervolume(F, ref) == pytest.approx(grid_hv(F, ref, steps=8), rel=1e-12)


def test_hypervolume_known_values_and_reference_clipping():
    assert hypervolume([[0.5, 0.5]], [1, 1]) == pytest.approx(0.25)
    assert hypervolume([[0, 0.5], [0.5, 0]], [1, 1]) == pytest.approx(0.75)
    assert hypervolume([[2, 0]], [1, 1]) == 0.0  # outside the reference box
    with pytest.raises(ValueError, match="reference point must have 2"):
        hypervolume([[0, 0]], [1, 1, 1])


def test_hypervolume_agrees_with_pymoo():
    hv_mod = pytest.importorskip("pymoo.indicators.hv")
    rng = np.random.default_rng(3)
    F = rng.random((60, 4))
    ref = np.full(4, 1.1)
    assert hypervolume(F, ref) == pytest.approx(float(hv_mod.HV(ref_point=ref)(F)), rel=1e-9)
