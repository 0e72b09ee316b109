"""Measuring a space's per-op latency table (LUT) and choosing the calibration nets that span it.

What to time and how the timings become entries is the space's (``space.lut_plan``, ``spaces.lut``); this
module only times a job's graphs with a backend under a protocol, and spreads calibration nets over the
finished LUT's cost range.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from ..spaces.lut import LutJob, lut_cost


def measure_job(job: LutJob, backend, protocol, batch: int = 1, seed: int = 0) -> dict:
    """Time every graph of one job; returns ``{key: stats}`` for the LUT."""
    stats = {}
    for name, module, shape in job.graphs(batch):
        inputs = {"input": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
        stats[name] = backend.load(module.eval(), inputs).measure(protocol).to_dict()
    return job.combine(stats)


@lru_cache(maxsize=None)
def _distinct_valid(space) -> tuple:
    """One arch per function the space can compute, disconnected nets left out."""
    seen, out = set(), []
    for a in space.enumerate():
        if space.is_valid(a):
            c = space.canonical(a)
            if c not in seen:
                seen.add(c)
                out.append(a)
    return tuple(out)


CANDIDATES = 3000  # a space too large to enumerate draws its calibration nets from this many seeded samples


def select_calibration(space, profile, n: int, seed: int, exclude: Sequence = ()) -> list:
    """``n`` distinct, valid, functionally different archs spanning the LUT cost range (MACs for a profile
    without a LUT): one drawn at random (seeded) from each of ``n`` equal-width bins of cost, the nearest unused
    arch when a bin is empty. Candidates: the whole space when it is small enough to enumerate, else
    ``CANDIDATES`` seeded samples."""
    if n <= 0:
        return []
    excluded = {str(a) for a in exclude}
    size = space.size()
    pool = _distinct_valid(space) if size is not None and size <= space.max_enumerated \
        else [a for a in space.sample(CANDIDATES, seed) if space.is_valid(a)]
    archs = [a for a in dict.fromkeys(pool) if str(a) not in excluded]
    sums = lut_cost(space, profile).ms(archs) if profile.lut else \
        np.array([space.macs(a, profile.dataset) for a in archs], dtype=np.float64)
    rng = np.random.default_rng(seed)
    edges = np.linspace(sums.min(), sums.max(), n + 1)
    free = np.ones(len(archs), dtype=bool)
    chosen = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        pool = np.flatnonzero(free & (sums >= lo) & (sums <= hi))
        if pool.size == 0:
            pool = np.flatnonzero(free)
            pool = pool[[np.argmin(np.abs(sums[pool] - (lo + hi) / 2))]]
        i = int(rng.choice(pool))
        free[i] = False
        chosen.append(archs[i])
        if not free.any():
            break
    return chosen
