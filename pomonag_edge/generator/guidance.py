"""Guidance composed from noise-aware predictors and the budget; the sampler only sees its gradient.

J(x_t, t) = sum_k w_k * sign_k * z_k(x_t, t)  -  rho * sum_c [ v_c + v_c^2 ]_+

z_k are the standardised predicted objectives (accuracy: sign +1, costs: sign -1), v_c the standardised
amount by which constrained objective c is predicted above its limit (so the pull grows with the
violation, linearly near the boundary and quadratically far from it). guidance_fn(x, t) = scale * dJ/dx.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

MAXIMISE = frozenset({"accuracy"})


def make_guidance(predictor, weights: Mapping[str, float], limits: Mapping[str, float] | None = None, *,
                  scale: float = 1.0, penalty: float = 4.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``predictor`` is a NoiseAwarePredictor (``names``, ``mean``, ``std``, ``forward`` -> standardised).

    ``weights`` name -> weight, a number or a per-sample 1-D tensor (so one batch can spread over several
    trade-offs, as decomposition methods do); names the predictor lacks are an error;
    ``limits`` name -> upper bound in the objective's own units (None or missing: unconstrained).
    """
    names = list(predictor.names)
    for name in list(weights) + list(limits or {}):
        if name not in names:
            raise ValueError(f"guidance names {name!r}, but the predictor knows only {names}")
    columns = [torch.zeros(1)] * len(names)
    for name, value in weights.items():
        columns[names.index(name)] = torch.as_tensor(value, dtype=torch.float32).reshape(-1) * (
            1.0 if name in MAXIMISE else -1.0)
    w = torch.stack(torch.broadcast_tensors(*columns), dim=1)  # (1 or n, k)
    lim_idx, lim_z = [], []
    for name, limit in (limits or {}).items():
        if limit is None:
            continue
        j = names.index(name)
        lim_idx.append(j)
        lim_z.append((float(limit) - float(predictor.mean[j])) / float(predictor.std[j]))
    lim_idx_t, lim_z_t = torch.tensor(lim_idx, dtype=torch.long), torch.tensor(lim_z)

    def guidance_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            z = predictor(x, t)
            objective = (z * w).sum()
            if len(lim_idx):
                v = (z[:, lim_idx_t] - lim_z_t).clamp_min(0)
                objective = objective - penalty * (v + v**2).sum()
            (grad,) = torch.autograd.grad(objective, x)
        return scale * grad

    return guidance_fn
