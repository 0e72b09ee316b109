"""Noise-aware predictors for a space too large to score whole (MobileNetV3, ~5e20 nets).

NB201's guidance contracts the clean predictions of all 15,625 nets into the exact posterior mean. Here
that is impossible, so (as DiffusionNAG) a small network is distilled from the clean predictors' scores of
a sample of nets, reading the depth-masked per-group posteriors of x_t (``PosteriorFeatures``). The nets it
learns from are scored through the search problem and COUNTED as predictor calls: a strategy comparison
at equal calls must charge diffusion for them (they are cached per profile, so a second run with the same
profile and predictors pays nothing, which the count does not credit).

The distilled-from nets also join the candidates (the strategy's proposals = guided samples + that
sample): with the 4-D front in view they add spread at no further cost, while the guided samples bring the
accurate nets near the budget. The distillation sample is drawn with its own fixed seed, not the run's, so runs with other seeds on the
same profile reuse the cached network.
"""

from __future__ import annotations

import numpy as np

DISTILL_NETS = 2048
DISTILL_SEED = 12345
# The guidance scale the user states is NB201's (10); this space's distilled guidance takes 3x that. On
# v100_1 at a 9 ms budget (seed 0, before the distillation sample joined the candidates) the best returned
# predicted top-1 was 81.54 / 81.69 / 81.40 % at effective scales 10 / 30 / 100 with 256 samples, and
# 81.61 / 81.58 % at 30 / 50 with 512 (NSGA-II at equal calls: 81.49 / 81.57; random 80.83 / 80.95).
SCALE_FACTOR = 3.0


def distilled_predictor(problem, sde, *, nets: int | None = None, steps: int = 1500, progress=None):
    """(NoiseAwarePredictor over the problem's four objectives, info, the sampled nets) for ``problem.space``,
    distilled from ``nets`` (default ``DISTILL_NETS``) sampled nets. The caller adds those nets to its
    candidates: they were scored (and counted) anyway, so leaving them out would waste paid calls."""
    nets = DISTILL_NETS if nets is None else nets
    from ..search import OBJECTIVES
    from .layout import categorical_groups, slot_usage_matrix
    from .noise_aware import PosteriorFeatures, cached_distill

    space = problem.space
    if progress is not None:
        progress("scoring nets for the noise-aware predictor", 0, 1)
    archs = list(dict.fromkeys(space.sample(nets, DISTILL_SEED)))
    s = problem.evaluate(archs)  # counted: real predictor calls
    targets = np.stack([s[k] for k in OBJECTIVES], axis=1)
    features = PosteriorFeatures(sde, categorical_groups(space), slot_usage_matrix(space))
    if progress is not None:
        progress("distilling noise-aware predictors", 0, 1)
    nap, info = cached_distill(sde, space.encode(archs), targets, OBJECTIVES, steps=steps, features=features)
    info.update(kind="distilled", nets=len(archs), features=features.config["kind"], scale_factor=SCALE_FACTOR)
    return nap, info, archs
