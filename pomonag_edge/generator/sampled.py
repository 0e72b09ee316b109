"""Noise-aware predictors for a space too large to score whole (or when the table is not to be read).

As DiffusionNAG, a small network is distilled from the clean predictors' scores of a sample of nets, reading
the (depth-masked) per-group posteriors of x_t (``PosteriorFeatures``). The nets it learns from are scored
through the search problem and counted as predictor calls, and they join the candidates: they were paid for.
The sample is drawn with its own fixed seed, not the run's, so runs with other seeds on the same profile
reuse the cached network.
"""

from __future__ import annotations

import numpy as np

from ..problem import GUIDED

DISTILL_NETS = 2048
DISTILL_SEED = 12345
SCALE_FACTOR = 3.0  # distilled guidance takes 3x the exact path's scale (chosen on benchmarks/generate.py --space mbv3)


def distilled_predictor(problem, sde, *, nets: int = DISTILL_NETS, steps: int = 1500, progress=None):
    """(NoiseAwarePredictor over the problem's guided columns (objectives + budgeted latency), info, the sampled
    nets) for ``problem.space``, distilled from ``nets`` sampled nets. The caller adds those nets to its
    candidates: they were scored (and counted) anyway, so leaving them out would waste paid calls."""
    from .noise_aware import PosteriorFeatures, cached_distill

    space = problem.space
    if progress is not None:
        progress("scoring nets for the noise-aware predictor", 0, 1)
    archs = list(dict.fromkeys(space.sample(nets, DISTILL_SEED)))
    s = problem.evaluate(archs)  # counted: real predictor calls
    targets = np.stack([s[k] for k in GUIDED], axis=1)
    features = PosteriorFeatures(sde, space.categorical_groups(), space.slot_usage())
    if progress is not None:
        progress("distilling noise-aware predictors", 0, 1)
    nap, info = cached_distill(sde, space.encode(archs), targets, GUIDED, steps=steps, features=features)
    info.update(kind="distilled", nets=len(archs), features=features.config["kind"], scale_factor=SCALE_FACTOR)
    return nap, info, archs
