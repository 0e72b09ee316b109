"""Noise-aware predictors: read a noised encoding x_t and t, predict the objectives of the clean net it
will become, so guidance has a gradient at every step of sampling.

- ``PosteriorMeanPredictor``: E[y | x_t] in closed form from the clean predictors' scores of every net of
  a finite product space. Exact, no training; on NB201 it guides better than any distilled network, which can
  at best approximate this function (see benchmarks/README.md).
- ``NoiseAwarePredictor``: a small network distilled from clean scores at random t (DiffusionNAG's form),
  cached per input hash; the way for a space too large to enumerate, where it is distilled from a sample of
  nets and reads ``PosteriorFeatures`` of x_t rather than x_t itself.

Outputs are standardised per objective (mean 0, std 1 over the space); ``mean``/``std`` undo that.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import CACHE_DIR, atomic_write_bytes
from .sde import timestep_embedding


class PosteriorFeatures(nn.Module):
    """x_t -> per-group posterior probabilities of the clean one-hots, depth-masked (flat encodings).

    Under a uniform prior over a categorical group's values, p(value j | x_t) = softmax_j(alpha x_t[j] /
    std^2) exactly (the per-slot factor of ``PosteriorMeanPredictor``). MobileNetV3's block-slot features
    are then multiplied by the probability that the slot is used (P(stage depth > position), from the
    depth groups' own posteriors), as OFA's predictor reads an unused slot as all zero. So the features
    equal the clean encoding as t -> 0, are uniform-ish at t = 1, and an unused slot's noise never reaches
    the predictor: the distilled net only has to learn the objectives of (soft) clean nets.
    """

    def __init__(self, sde, groups, usage=None):
        super().__init__()
        self.sde = sde
        self.groups = [(int(o), int(w)) for o, w in groups]
        dim = sum(w for _, w in self.groups)
        if [o for o, _ in self.groups] != list(np.cumsum([0] + [w for _, w in self.groups])[:-1]):
            raise ValueError("posterior features need contiguous groups covering the encoding in order")
        self.config = {"kind": "posterior-features", "groups": self.groups, "masked": usage is not None}
        self.runs: list[tuple[int, int, int]] = []  # (offset, width, count): consecutive groups of one width
        for o, w in self.groups:
            if self.runs and self.runs[-1][1] == w:
                self.runs[-1] = (self.runs[-1][0], w, self.runs[-1][2] + 1)
            else:
                self.runs.append((o, w, 1))
        if usage is not None:
            depth_idx, use = usage
            self.register_buffer("depth_idx", torch.as_tensor(depth_idx, dtype=torch.long), persistent=False)
            self.register_buffer("use", torch.as_tensor(use).reshape(dim, -1), persistent=False)
        else:
            self.depth_idx = None

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, std = self.sde.marginal_prob(torch.ones(len(t)), t)
        z = x * (alpha / std**2).reshape(-1, 1)
        p = torch.cat([_softmax_last(z[:, o:o + w * c].reshape(len(z), c, w)).flatten(1)
                       for o, w, c in self.runs], dim=1)
        if self.depth_idx is None:
            return p
        usage = p[:, self.depth_idx.flatten()] @ self.use.T  # (n, features): P(feature's slot is used)
        return p * usage

    def extra_repr(self) -> str:
        return repr(self.config)


def _softmax_last(z: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis, written out: torch.softmax over 3 values is ~20x slower on CPU."""
    e = torch.exp(z - z.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


class NoiseAwarePredictor(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], names: tuple[str, ...], hidden: int = 128, t_dim: int = 32,
                 features: nn.Module | None = None):
        super().__init__()
        self.names, self.in_shape, self.t_dim = tuple(names), tuple(in_shape), t_dim
        self.features = features  # no parameters: the state_dict is the same with or without it
        k = len(names)
        self.net = nn.Sequential(nn.Linear(int(np.prod(in_shape)) + t_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, k))
        self.register_buffer("mean", torch.zeros(k))
        self.register_buffer("std", torch.ones(k))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Standardised predictions, shape (n, len(names))."""
        if self.features is not None:
            x = self.features(x.flatten(1), t)
        return self.net(torch.cat([x.flatten(1), timestep_embedding(t, self.t_dim)], dim=1))

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predictions in the objectives' own units."""
        return self(x, t) * self.std + self.mean


def distill(sde, x0: np.ndarray, targets: np.ndarray, names: tuple[str, ...], *, steps: int = 1500,
            batch: int = 512, lr: float = 3e-3, seed: int = 0, hidden: int = 128,
            features: nn.Module | None = None) -> NoiseAwarePredictor:
    """Fit a NoiseAwarePredictor to ``targets`` (n, k) of clean encodings ``x0`` (n, *shape) under noise;
    ``features`` (e.g. ``PosteriorFeatures``) transforms x_t before the network reads it. Runs on one
    torch thread: its tensors are too small to gain from more, and on a loaded machine extra threads
    only wait on each other on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _distill(sde, x0, targets, names, steps=steps, batch=batch, lr=lr, seed=seed, hidden=hidden,
                        features=features)
    finally:
        torch.set_num_threads(threads)


def _distill(sde, x0, targets, names, *, steps, batch, lr, seed, hidden, features) -> NoiseAwarePredictor:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(x0, dtype=torch.float32)
    Y = torch.as_tensor(targets, dtype=torch.float32)
    model = NoiseAwarePredictor(tuple(X.shape[1:]), names, hidden=hidden, features=features)
    model.mean.copy_(Y.mean(0))
    model.std.copy_(Y.std(0).clamp_min(1e-8))
    Yz = (Y - model.mean) / model.std
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(len(X), (batch,), generator=gen)
        # t = u^2: most of the batch near t = 0, where guidance decides the final ops and precision matters
        t = (torch.rand(batch, generator=gen) ** 2).clamp_min(1e-3)
        mean, std = sde.marginal_prob(X[idx], t)
        xt = mean + std.reshape(-1, *([1] * (X.dim() - 1))) * torch.randn(mean.shape, generator=gen)
        loss = ((model(xt, t) - Yz[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def cache_dir() -> Path:
    """Where distilled predictors are cached: $POMONAG_EDGE_CACHE, else ~/.cache/pomonag-edge."""
    return Path(os.environ.get("POMONAG_EDGE_CACHE", CACHE_DIR)) / "noise_aware"


def cached_distill(sde, x0: np.ndarray, targets: np.ndarray, names: tuple[str, ...], seed: int = 0,
                   features: nn.Module | None = None, **kw) -> tuple[NoiseAwarePredictor, dict]:
    """``distill`` keyed by a hash of its exact inputs, so repeated runs on one profile/dataset reuse it."""
    h = hashlib.sha256()
    for part in (np.ascontiguousarray(x0, dtype=np.float32), np.ascontiguousarray(targets, dtype=np.float64)):
        h.update(part.tobytes())
    h.update(repr((names, seed, sorted(kw.items()), sde.config())).encode())
    if features is not None:
        h.update(repr(features.config).encode())
    key = h.hexdigest()[:16]
    path = cache_dir() / f"{key}.pt"
    info = {"key": key, "cached": False, "seconds": 0.0}
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = NoiseAwarePredictor(tuple(x0.shape[1:]), names, hidden=kw.get("hidden", 128), features=features)
            model.load_state_dict(state)
            info["cached"] = True
            return model.eval(), info
        except (OSError, RuntimeError, ValueError):
            pass  # a corrupt or stale cache entry: retrain below
    start = time.perf_counter()
    model = distill(sde, x0, targets, names, seed=seed, features=features, **kw)
    info["seconds"] = round(time.perf_counter() - start, 2)
    try:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # caching is an optimisation; a read-only home must not fail the run
    return model, info


class PosteriorMeanPredictor(nn.Module):
    """The exact noise-aware predictor of a finite product space: E[y(x_0) | x_t] under the forward SDE.

    With a uniform prior over every combination of one op per slot, p(x_0 | x_t) factorises over slots:
    slot s takes op j with probability softmax_j(alpha(t) x_t[s, j] / std(t)^2). The expectation is then
    the table of clean predictions contracted with those per-slot probabilities, exactly and cheaply
    (n x 5^6 x k multiply-adds for NB201). This is the function a distilled network can at best
    approximate (the MSE minimiser); it equals the clean predictor as t -> 0, needs no training, and is
    differentiable in x_t. Same interface as ``NoiseAwarePredictor`` (standardised outputs, mean/std).
    """

    def __init__(self, sde, x0: np.ndarray, targets: np.ndarray, names: tuple[str, ...]):
        super().__init__()
        x0 = np.asarray(x0)
        if x0.ndim != 3:
            raise ValueError(f"expected one-hot encodings of shape (n, slots, choices), got {x0.shape}")
        n, slots, choices = x0.shape
        if n != choices**slots:
            raise ValueError(f"the exact posterior needs every one of the {choices}^{slots} nets, got {n}")
        self.sde, self.names, self.slots, self.choices = sde, tuple(names), slots, choices
        Y = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.register_buffer("mean", Y.mean(0))
        self.register_buffer("std", Y.std(0).clamp_min(1e-8))
        ops = x0.argmax(-1)  # (n, slots)
        flat = np.ravel_multi_index(tuple(ops.T), (choices,) * slots)
        if len(np.unique(flat)) != n:
            raise ValueError("the encodings given to the exact posterior repeat a net")
        table = torch.empty(n, Y.shape[1])
        table[torch.as_tensor(flat)] = (Y - self.mean) / self.std
        self.register_buffer("table", table)  # row = op of slot 0 is the most significant digit

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, std = self.sde.marginal_prob(torch.ones(len(t)), t)
        p = torch.softmax(x * (alpha / std**2).reshape(-1, 1, 1), dim=-1)  # (n, slots, choices)
        k = self.table.shape[1]
        out = p[:, 0] @ self.table.reshape(self.choices, -1)  # contract slot 0: (n, C^(S-1) k)
        for s in range(1, self.slots):  # then slot s: (n, 1, C) @ (n, C, C^(S-1-s) k)
            out = torch.bmm(p[:, s : s + 1, :], out.reshape(len(x), self.choices, -1))
        return out.reshape(len(x), k)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self(x, t) * self.std + self.mean
