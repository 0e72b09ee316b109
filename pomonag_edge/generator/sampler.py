"""The one sampling loop: reverse-time predictor-corrector (Euler-Maruyama + optional Langevin corrector).

It knows an SDE's schedule, a ``score_fn(x, t)`` and an optional ``guidance_fn(x, t)`` (a gradient added
to the score, as classifier guidance), nothing else: no model class, no predictor, no objective.
"""

from __future__ import annotations

from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample(sde, score_fn: ScoreFn, shape: tuple[int, ...], *, steps: int = 100,
           guidance_fn: ScoreFn | None = None, generator: torch.Generator | None = None,
           corrector_steps: int = 0, snr: float = 0.1, eps: float = 1e-3,
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Draw ``shape[0]`` samples by integrating the reverse SDE from t=1 to t=eps in ``steps`` steps.

    Same ``generator`` seed, same inputs -> bit-identical samples. ``progress(done, total)`` is called
    after every step. Returns the final noise-free mean (x_0 estimate), shape ``shape``.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x = sde.prior_sampling(shape, generator=generator)
    ts = torch.linspace(1.0, eps, steps)
    dt = -(1.0 - eps) / steps

    def total_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            s = score_fn(x, t)
        if guidance_fn is not None:
            s = s + guidance_fn(x, t).detach()
        return s

    x_mean = x
    for i, t_now in enumerate(ts):
        t = torch.full((shape[0],), float(t_now))
        for _ in range(corrector_steps):  # Langevin corrector with a step set by the signal-to-noise ratio
            s = total_score(x, t)
            z = torch.randn(x.shape, generator=generator)
            step = 2 * (snr * z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp_min(1e-12)) ** 2
            x = x + step * s + torch.sqrt(2 * step) * z
        drift, g = sde.sde(x, t)
        g = g.reshape(-1, *([1] * (x.dim() - 1)))
        x_mean = x + (drift - g**2 * total_score(x, t)) * dt
        x = x_mean + g * (-dt) ** 0.5 * torch.randn(x.shape, generator=generator)
        if progress is not None:
            progress(i + 1, steps)
    return x_mean.detach()
