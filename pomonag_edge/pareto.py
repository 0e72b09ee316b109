"""Pareto tools over objective matrices F of shape (n, m), every column MINIMISED (negate what you maximise).

Non-dominated sorting (Deb et al.'s fast sort), exact hypervolume (slicing over distinct values, 2-D sweep
at the base; exact and fast for the few hundred points a front holds), and front filtering. Pure numpy:
used by the selection of a run's answer and by the benchmarks.
"""

from __future__ import annotations

import numpy as np


def _check(F) -> np.ndarray:
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"expected an objective matrix of shape (n, m), got shape {F.shape}")
    return F


def domination_matrix(F) -> np.ndarray:
    """D[i, j] = True when point i dominates point j."""
    F = _check(F)
    le = np.all(F[:, None, :] <= F[None, :, :], axis=2)
    lt = np.any(F[:, None, :] < F[None, :, :], axis=2)
    return le & lt


def non_dominated_sort(F) -> list[np.ndarray]:
    """Fronts as arrays of row indices: front 0 is the Pareto set, front 1 what is left after removing it, ..."""
    F = _check(F)
    n = len(F)
    if n == 0:
        return []
    D = domination_matrix(F)
    count = D.sum(axis=0)  # how many dominate each point
    fronts, current = [], np.flatnonzero(count == 0)
    while current.size:
        fronts.append(current)
        count = count - D[current].sum(axis=0)
        count[np.concatenate(fronts)] = -1
        current = np.flatnonzero(count == 0)
    return fronts


def pareto_mask(F) -> np.ndarray:
    """True for the non-dominated rows."""
    F = _check(F)
    return ~domination_matrix(F).any(axis=0) if len(F) else np.zeros(0, dtype=bool)


def hypervolume(F, ref) -> float:
    """Exact volume dominated by the rows of F and bounded by the reference point ``ref`` (minimisation).

    Rows not strictly better than ``ref`` in every objective contribute nothing.
    """
    F = _check(F)
    ref = np.asarray(ref, dtype=np.float64)
    if ref.shape != (F.shape[1],):
        raise ValueError(f"reference point must have {F.shape[1]} values, got shape {ref.shape}")
    F = F[np.all(F < ref, axis=1)]
    if len(F) == 0:
        return 0.0
    F = np.unique(F[pareto_mask(F)], axis=0)
    return float(_hv(F, ref))


def _hv(F: np.ndarray, ref: np.ndarray) -> float:
    m = F.shape[1]
    if m == 1:
        return float(ref[0] - F[:, 0].min())
    if m == 2:
        order = np.lexsort((F[:, 1], F[:, 0]))
        x, y = F[order, 0], np.minimum.accumulate(F[order, 1])
        widths = np.diff(np.append(x, ref[0]))
        return float(np.sum(widths * (ref[1] - y)))
    # slice along the last objective at each distinct value; points at or below a slice form its (m-1)-D set
    levels = np.unique(F[:, -1])
    bounds = np.append(levels[1:], ref[-1])
    total = 0.0
    for level, upper in zip(levels, bounds):
        sub = F[F[:, -1] <= level, :-1]
        sub = sub[pareto_mask(sub)]
        total += (upper - level) * _hv(sub, ref[:-1])
    return total
