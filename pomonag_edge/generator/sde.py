"""The forward SDE: it knows only its noise schedule (as score_sde's ``sde_lib``), never a network.

We use the variance-preserving SDE (DDPM's continuous limit). Why VP rather than DiffusionNAG's VE:
the noised encoding keeps unit scale at every t, so the noise-aware predictors that steer sampling see
inputs in one range over the whole trajectory, and the prior N(0, I) needs no data-dependent sigma_max
(a one-hot over 5 ops has tiny spread, so VE's sigma range would be mostly wasted steps).
"""

from __future__ import annotations

import math

import torch


class VPSDE:
    """dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW, beta linear from ``beta_min`` to ``beta_max`` on t in [0, 1]."""

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def config(self) -> dict:
        return {"kind": self.kind, "beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) and diffusion g(t) (one value per sample)."""
        beta = self.beta(t)
        return -0.5 * _per_sample(beta, x) * x, torch.sqrt(beta)

    def _log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of p(x_t | x_0); std is one value per sample."""
        lmc = self._log_mean_coeff(t)
        return _per_sample(torch.exp(lmc), x0) * x0, torch.sqrt(1.0 - torch.exp(2.0 * lmc))

    def prior_sampling(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)


def get_sde(config: dict) -> VPSDE:
    """Rebuild the SDE saved beside a checkpoint."""
    kind = config.get("kind", "vp")
    if kind != "vp":
        raise ValueError(f"unknown SDE kind {kind!r} (known: vp)")
    return VPSDE(config.get("beta_min", 0.1), config.get("beta_max", 20.0))


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast one value per sample over the remaining axes of ``like`` (any encoding shape)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled to 0..1000 as in DDPM), shape (n, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
