"""Denoising score matching, written against the SDE's two methods only (``marginal_prob``) and an
eps-predicting model: || eps_theta(x_t, t) - eps ||^2, i.e. score matching weighted by std(t)^2."""

from __future__ import annotations

import torch


def dsm_loss(model, sde, x0: torch.Tensor, generator: torch.Generator | None = None, eps: float = 1e-3,
             weight: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean DSM loss over a batch of clean encodings ``x0``; ``weight`` (n,) reweights samples if given;
    ``mask`` (same shape as x0, 0/1) drops features that do not matter for that net (MBV3's unused slots)."""
    n = x0.shape[0]
    t = torch.rand(n, generator=generator) * (1.0 - eps) + eps
    z = torch.randn(x0.shape, generator=generator)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std.reshape(-1, *([1] * (x0.dim() - 1))) * z
    sq = (model(xt, t) - z) ** 2
    per = (sq if mask is None else sq * mask).flatten(1).sum(1)
    if weight is not None:
        return (per * weight).sum() / weight.sum()
    return per.mean()
