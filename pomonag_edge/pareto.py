"""Pareto tools over objective matrices F of shape (n, m), every column MINIMISED (negate what you maximise).

Non-dominated sorting (efficient non-dominated sort, memory linear in n), exact hypervolume (slicing over
distinct values, 2-D sweep at the base; exact and fast for the few hundred points a front holds), and front
filtering. Pure numpy:
used by the selection of a run's answer and by the benchmarks.
"""

from __future__ import annotations

import numpy as np


def _check(F) -> np.ndarray:
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"expected an objective matrix of shape (n, m), got shape {F.shape}")
    return F


def dominates_any(front: np.ndarray, point: np.ndarray) -> bool:
    """Whether some row of ``front`` dominates ``point`` (no worse everywhere, better somewhere)."""
    return bool(np.any(np.all(front <= point, axis=1) & np.any(front < point, axis=1)))


def non_dominated_sort(F) -> list[np.ndarray]:
    """Fronts as sorted arrays of row indices: front 0 is the Pareto set, front 1 what is left after removing
    it, ... pymoo's compiled sort where pymoo is installed; otherwise the same efficient non-dominated sort
    (Zhang et al. 2015, binary search over fronts) in numpy. Both keep memory linear in n: a dense dominance
    matrix of the 15,625 NB201 nets took 1.8 GB."""
    F = _check(F)
    if len(F) == 0:
        return []
    try:
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
    except ImportError:
        return _efficient_sort(F)
    fronts = NonDominatedSorting(method="efficient_non_dominated_sort").do(F)
    return [np.sort(np.asarray(f, dtype=np.intp)) for f in fronts]


def _efficient_sort(F: np.ndarray) -> list[np.ndarray]:
    """ENS-BS: visit rows in lexicographic order (a row can only be dominated by rows before it) and put each in
    the first front none of whose members dominates it, found by binary search over the fronts."""
    order = np.lexsort(F.T[::-1])
    fronts: list[list[int]] = []
    members: list[np.ndarray] = []  # each front's rows, grown in blocks
    sizes: list[int] = []
    for i in order:
        point = F[i]
        lo, hi = 0, len(fronts)
        while lo < hi:  # fronts are nested: dominated in front k implies dominated in every front before k
            mid = (lo + hi) // 2
            if dominates_any(members[mid][:sizes[mid]], point):
                lo = mid + 1
            else:
                hi = mid
        if lo == len(fronts):
            fronts.append([])
            members.append(np.empty((16, F.shape[1])))
            sizes.append(0)
        if sizes[lo] == len(members[lo]):
            members[lo] = np.concatenate([members[lo], np.empty_like(members[lo])])
        members[lo][sizes[lo]] = point
        sizes[lo] += 1
        fronts[lo].append(int(i))
    return [np.sort(np.asarray(f, dtype=np.intp)) for f in fronts]


def pareto_mask(F) -> np.ndarray:
    """True for the non-dominated rows."""
    F = _check(F)
    mask = np.zeros(len(F), dtype=bool)
    if len(F):
        mask[non_dominated_sort(F)[0]] = True
    return mask


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
