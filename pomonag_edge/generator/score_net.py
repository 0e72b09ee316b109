"""The score network: a small time-conditioned transformer over the op slots of an encoding.

``ScoreTransformer`` takes a (n, slots, choices) encoding (NB201); ``GroupedScoreTransformer`` a flat encoding
cut into tokens of unequal widths (MobileNetV3). ``build_score_model`` rebuilds either from its config.

Each slot (NB201: one of the 6 edges) is a token holding its noisy 5-way op vector; a learned slot
embedding tells the tokens apart and attention lets each edge see the others (which ops make a net
valid and good depends on the whole cell). It predicts the added noise eps; the score is -eps / std.
"""

from __future__ import annotations

import torch
from torch import nn

from .sde import timestep_embedding


def _time_and_body(d_model: int, layers: int, heads: int) -> tuple[nn.Module, nn.Module]:
    """The time MLP and the pre-norm transformer both score networks share (same parameter names)."""
    time = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
    layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
    return time, nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class ScoreTransformer(nn.Module):
    def __init__(self, slots: int, choices: int, d_model: int = 64, layers: int = 3, heads: int = 4):
        super().__init__()
        self.config = {"slots": slots, "choices": choices, "d_model": d_model, "layers": layers, "heads": heads}
        self.inp = nn.Linear(choices, d_model)
        self.slot = nn.Parameter(torch.randn(slots, d_model) * 0.02)
        self.time, self.body = _time_and_body(d_model, layers, heads)
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, choices))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (n, slots, choices) noised encoding; t: (n,) in (0, 1]. Returns predicted noise, same shape as x."""
        d = self.config["d_model"]
        h = self.inp(x) + self.slot[None] + self.time(timestep_embedding(t, d))[:, None]
        return self.out(self.body(h))


class GroupedScoreTransformer(nn.Module):
    """The same transformer over a flat encoding cut into tokens of unequal widths (``layout.token_groups``;
    MobileNetV3: 20 block slots of 6, 5 stage depths of 3, one resolution of 25).

    Each token's features are zero-padded to the widest token, so one input and one output projection
    serve every token and a learned token embedding tells them apart (the resolution token is the only
    one that uses all 25 outputs). Input and output: (n, features), the encoding's own flat layout.
    """

    def __init__(self, token_widths, d_model: int = 64, layers: int = 2, heads: int = 4, features: int | None = None):
        super().__init__()
        widths = [int(w) for w in token_widths]
        dim = sum(widths) if features is None else int(features)
        if sum(widths) != dim:
            raise ValueError(f"token widths sum to {sum(widths)}, the encoding has {dim} features")
        wmax, tokens = max(widths), len(widths)
        self.config = {"kind": "grouped", "token_widths": widths, "d_model": d_model, "layers": layers,
                       "heads": heads}
        gather = torch.zeros(tokens, wmax, dtype=torch.long)  # padded position -> flat feature
        valid = torch.zeros(tokens, wmax)
        scatter = torch.empty(dim, dtype=torch.long)  # flat feature -> padded position
        f = 0
        for k, w in enumerate(widths):
            gather[k, :w] = torch.arange(f, f + w)
            valid[k, :w] = 1.0
            scatter[f:f + w] = k * wmax + torch.arange(w)
            f += w
        self.register_buffer("gather", gather, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("scatter", scatter, persistent=False)
        self.inp = nn.Linear(wmax, d_model)
        self.token = nn.Parameter(torch.randn(tokens, d_model) * 0.02)
        self.time, self.body = _time_and_body(d_model, layers, heads)
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, wmax))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (n, features) noised flat encoding; t: (n,). Returns predicted noise, same shape as x."""
        d = self.config["d_model"]
        tok = x[:, self.gather] * self.valid  # (n, tokens, wmax)
        h = self.inp(tok) + self.token[None] + self.time(timestep_embedding(t, d))[:, None]
        return self.out(self.body(h)).flatten(1)[:, self.scatter]


def build_score_model(config: dict) -> nn.Module:
    """The score network a checkpoint's ``model`` config describes (NB201's configs carry no ``kind``)."""
    if config.get("kind", "slots") == "grouped":
        return GroupedScoreTransformer(config["token_widths"], d_model=config["d_model"], layers=config["layers"],
                                       heads=config["heads"])
    return ScoreTransformer(config["slots"], config["choices"], d_model=config["d_model"], layers=config["layers"],
                            heads=config["heads"])


def score_fn_from(model: nn.Module, sde) -> "callable":
    """Wrap an eps-predicting model as score_fn(x, t) = -eps(x, t) / std(t) for the sampler."""

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, std = sde.marginal_prob(torch.zeros(1), t)
        return -model(x, t) / std.reshape(-1, *([1] * (x.dim() - 1)))

    return score_fn
