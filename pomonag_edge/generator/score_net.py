"""The score network: a small time-conditioned transformer over the op slots of an encoding.

Each slot (NB201: one of the 6 edges) is a token holding its noisy 5-way op vector; a learned slot
embedding tells the tokens apart and attention lets each edge see the others (which ops make a net
valid and good depends on the whole cell). It predicts the added noise eps; the score is -eps / std.
"""

from __future__ import annotations

import torch
from torch import nn

from .sde import timestep_embedding


class ScoreTransformer(nn.Module):
    def __init__(self, slots: int, choices: int, d_model: int = 64, layers: int = 3, heads: int = 4):
        super().__init__()
        self.config = {"slots": slots, "choices": choices, "d_model": d_model, "layers": layers, "heads": heads}
        self.inp = nn.Linear(choices, d_model)
        self.slot = nn.Parameter(torch.randn(slots, d_model) * 0.02)
        self.time = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, choices))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (n, slots, choices) noised encoding; t: (n,) in (0, 1]. Returns predicted noise, same shape as x."""
        d = self.config["d_model"]
        h = self.inp(x) + self.slot[None] + self.time(timestep_embedding(t, d))[:, None]
        return self.out(self.body(h))


def score_fn_from(model: nn.Module, sde) -> "callable":
    """Wrap an eps-predicting model as score_fn(x, t) = -eps(x, t) / std(t) for the sampler."""

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, std = sde.marginal_prob(torch.zeros(1), t)
        return -model(x, t) / std.reshape(-1, *([1] * (x.dim() - 1)))

    return score_fn
