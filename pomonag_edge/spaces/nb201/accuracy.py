"""NB201 accuracy predictor, conditioned on the dataset, trained on a recorded 10% of the shipped table.

Why 10%: the other 90% stay unseen, so ``benchmarks/accuracy.py`` reports an honest figure. The network
is an ensemble of 5 small MLPs (one trunk, one output per dataset each: the datasets' accuracies are highly
correlated) over the differentiable structure features of the (n, 6, 5) encoding plus per-path facts
(3x3 convs on each input->output path, the pure-skip residual), which decide the top of NB201. Targets are
normal scores of the accuracy ranks, mapped back to percent by a monotone piecewise-linear map, and the
loss weights the best nets more: the generator picks the best net within a budget, so the order at the
top matters most (numbers in ``train_accuracy_checkpoint``). ``AccuracyNet(noise_aware=True)`` adds a
diffusion-time input; the shipped generator distils its own noise-aware predictors (generator/noise_aware.py).
A task no shipped table covers (a dataset profile) is served by ``predictors.accuracy_fewshot`` instead.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from ...checkpoints import checkpoint_path, load_checkpoint
from ...data import nb201_accuracy
from .cell import DATASETS

ACCURACY_CHECKPOINT = "accuracy_nb201.pt"
TRAIN_FRACTION = 0.10


# The four input->output paths of the cell as edge indices (edge order of ``EDGES`` in this package).
PATHS = ((3,), (0, 4), (1, 5), (0, 2, 5))
NUM_PATH_FEATURES = 4 + len(PATHS) * 5


def path_features(x):
    """(n, 6, 5) one-hot or probabilities -> (n, 24) structure facts that decide the top of NB201.

    Per live op type its count in the cell (how many 3x3 convs compute something), and per input->output
    path: whether it is fully on, how many 3x3 / 1x1 convs and pools it holds (depth), and whether it is
    a pure skip path (the cell's residual). Products of probabilities: exact on a one-hot encoding,
    smooth on a noised one."""
    import torch

    from .features import soft_live

    live = soft_live(x)
    live_ops = x[..., 1:] * live[..., None]  # skip, conv1, conv3, pool
    feats = [live_ops.sum(dim=1)]
    on = 1 - x[..., 0]
    for path in PATHS:
        p_on = torch.prod(on[:, list(path)], dim=1)
        ops = x[:, list(path), :]
        feats.append(torch.stack([p_on, p_on * ops[..., 3].sum(1), p_on * ops[..., 2].sum(1),
                                  p_on * ops[..., 4].sum(1), torch.prod(ops[..., 1], dim=1)], dim=1))
    return torch.cat(feats, dim=1)


@lru_cache(maxsize=1)
def _module_classes():
    """The torch classes, defined on first use so importing this module does not import torch."""
    import torch
    import torch.nn as nn

    from .features import NUM_FEATURES, nb201_features

    class AccuracyNet(nn.Module):
        """(n, 6, 5) encoding + dataset index [+ diffusion time t in [0, 1]] -> accuracy in percent.

        An ensemble of ``members`` small MLPs (one trunk, one output per dataset each) over the structure
        features; the prediction is their mean. ``mean``/``std`` buffers map each dataset's standardized
        output back to percent.
        """

        def __init__(self, hidden: int = 128, noise_aware: bool = False, time_dim: int = 16, members: int = 1,
                     path_features: bool = False, knots: int = 0):
            super().__init__()
            self.hidden, self.noise_aware, self.time_dim = hidden, noise_aware, time_dim if noise_aware else 0
            self.members, self.use_paths = members, path_features
            n_in = NUM_FEATURES + (NUM_PATH_FEATURES if path_features else 0) + self.time_dim
            self.nets = nn.ModuleList(
                nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                              nn.Linear(hidden, len(DATASETS))) for _ in range(members))
            self.register_buffer("mean", torch.zeros(len(DATASETS)))
            self.register_buffer("std", torch.ones(len(DATASETS)))
            self.knots = knots  # > 0: outputs are normal scores, mapped to percent by a monotone spline
            if knots:
                self.register_buffer("knot_z", torch.zeros(knots, len(DATASETS)))
                self.register_buffer("knot_acc", torch.zeros(knots, len(DATASETS)))

        def config(self) -> dict:
            return {"hidden": self.hidden, "noise_aware": self.noise_aware, "time_dim": self.time_dim or 16,
                    "members": self.members, "path_features": self.use_paths, "knots": self.knots}

        def time_embedding(self, t, n):
            t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
            t = t.expand(n) if t.numel() == 1 else t
            freqs = torch.exp(torch.arange(self.time_dim // 2) * (-math.log(1000.0) / max(self.time_dim // 2 - 1, 1)))
            ang = t[:, None] * 1000.0 * freqs[None]
            return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)

        def features(self, x, t=None):
            h = nb201_features(x)
            if self.use_paths:
                h = torch.cat([h, path_features(x)], dim=1)
            if self.noise_aware:
                if t is None:
                    raise ValueError("a noise-aware AccuracyNet needs the diffusion time t")
                h = torch.cat([h, self.time_embedding(t, len(x))], dim=1)
            return h

        def each(self, x, t=None):
            """(members, n, 3) standardized accuracy of every ensemble member (their spread: an uncertainty)."""
            h = self.features(x, t)
            return torch.stack([net(h) for net in self.nets])

        def standardized(self, x, t=None):
            """(n, 3) standardized accuracy, one column per dataset: the training target."""
            return self.each(x, t).mean(dim=0)

        def forward(self, x, dataset, t=None):
            """Accuracy (%) of each net on ``dataset`` (an index 0..2, a name, or an (n,) index tensor)."""
            if isinstance(dataset, str):
                dataset = DATASETS.index(dataset)
            z = self.standardized(x, t)
            d = torch.as_tensor(dataset, dtype=torch.long).reshape(-1)
            d = d.expand(len(x)) if d.numel() == 1 else d
            z = z.gather(1, d[:, None]).squeeze(1)
            if not self.knots:
                return z * self.std[d] + self.mean[d]
            kz, ka = self.knot_z.T[d].contiguous(), self.knot_acc.T[d]  # (n, K): piecewise linear, end slopes extend
            hi = torch.searchsorted(kz, z[:, None].detach().contiguous()).clamp(1, self.knots - 1)
            z0, z1 = kz.gather(1, hi - 1).squeeze(1), kz.gather(1, hi).squeeze(1)
            a0, a1 = ka.gather(1, hi - 1).squeeze(1), ka.gather(1, hi).squeeze(1)
            return a0 + (z - z0) * (a1 - a0) / (z1 - z0)

    return AccuracyNet


def make_accuracy_net(**config):
    return _module_classes()(**config)


def training_indices(seed: int, fraction: float = TRAIN_FRACTION, size: int = 15625) -> np.ndarray:
    """The recorded procedure: ``default_rng(seed).permutation(size)[:floor(fraction * size)]``, sorted."""
    return np.sort(np.random.default_rng(seed).permutation(size)[: int(fraction * size)])


def normal_scores(acc: np.ndarray, knots: int, span: float = 3.0):
    """Per column: normal scores of the ranks (the training target), and ``knots`` (z, percent) points of the
    monotone map back to percent. Why: accuracy is skewed (a long tail of broken nets), so z-scored targets
    crowd the best nets into a sliver of the output; normal scores give the top as much room as the bottom."""
    from scipy.stats import norm, rankdata

    n = len(acc)
    z = norm.ppf((np.apply_along_axis(rankdata, 0, acc) - 0.5) / n)
    kz = np.linspace(-span, span, knots)
    ka = np.stack([np.interp(kz, np.sort(z[:, j]), np.sort(acc[:, j])) for j in range(acc.shape[1])], axis=1)
    ka = np.maximum.accumulate(ka + 1e-3 * kz[:, None], axis=0)  # strictly increasing: no ties at the top
    return z, np.repeat(kz[:, None], acc.shape[1], axis=1), ka


def train_accuracy_checkpoint(space, seed: int = 0, steps: int = 2000, hidden: int = 128,
                              fraction: float = TRAIN_FRACTION, lr: float = 2e-3, weight_decay: float = 1e-4,
                              rank_weight: float = 1.0, pairs: int = 4096, members: int = 5, path_features: bool = True,
                              top_weight: float = 0.5, knots: int = 49, progress=None) -> dict:
    """Fit ``AccuracyNet`` on the seeded subset of ``space``'s table, all three datasets (full batch, AdamW,
    cosine schedule).

    Loss, per ensemble member: MSE on the target (normal scores with ``knots``, else z-scores) plus
    ``rank_weight`` x a pairwise logistic ranking loss on random pairs: the generator needs the order of the best
    nets more than their exact percent. ``top_weight`` (beta) weights each pair by exp(beta * z of its better net)
    and each net's squared error by exp(beta * z) (both normalised to mean 1), so errors among the top nets cost
    more."""
    import torch

    torch.manual_seed(seed)
    idx = training_indices(seed, fraction)
    archs = list(space.enumerate())
    x = torch.from_numpy(space.encode([archs[i] for i in idx]))
    acc = np.stack([nb201_accuracy(d)[idx] for d in DATASETS], axis=1)
    mean, std = acc.mean(axis=0), acc.std(axis=0)
    net = make_accuracy_net(hidden=hidden, members=members, path_features=path_features, knots=knots)
    net.mean.copy_(torch.from_numpy(mean).float())
    net.std.copy_(torch.from_numpy(std).float())
    if knots:
        z, kz, ka = normal_scores(acc, knots)
        net.knot_z.copy_(torch.from_numpy(kz).float())
        net.knot_acc.copy_(torch.from_numpy(ka).float())
        z = torch.from_numpy(z).float()
    else:
        z = torch.from_numpy((acc - mean) / std).float()
    w_mse = torch.exp(top_weight * z)
    w_mse = w_mse / w_mse.mean(dim=0)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        out = net.each(x)  # (members, n, 3): members trained independently, averaged at prediction
        loss = (w_mse * (out - z) ** 2).mean() * members
        if rank_weight > 0:
            i, j = torch.randint(0, len(x), (2, pairs), generator=gen)
            sign = torch.sign(z[i] - z[j])
            w_pair = torch.exp(top_weight * torch.maximum(z[i], z[j]))
            w_pair = w_pair / w_pair.mean(dim=0)
            rank = torch.nn.functional.softplus(-4 * sign * (out[:, i] - out[:, j]))
            loss = loss + rank_weight * (w_pair * rank).mean() * members
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    net.eval()
    return {
        "kind": "pomonag-edge/accuracy-nb201", "version": 2, "config": net.config(),
        "state_dict": net.state_dict(), "datasets": list(DATASETS),
        "train_indices": torch.from_numpy(idx.astype(np.int64)),
        "meta": {"seed": seed, "steps": steps, "fraction": fraction, "n_train": int(len(idx)),
                 "rank_weight": rank_weight, "members": members, "path_features": path_features,
                 "top_weight": top_weight, "hidden": hidden, "knots": knots,
                 "procedure": "numpy.random.default_rng(seed).permutation(15625)[:int(fraction*15625)], sorted",
                 "command": f"pomonag-edge pretrain accuracy --seed {seed}"},
    }


class AccuracyPredictor:
    """``predict(archs, dataset)`` in percent; ``module`` is the torch ``AccuracyNet`` over the encoding."""

    def __init__(self, module, space, train_indices: np.ndarray, sha256: str = "", meta: dict | None = None):
        self.module, self.space, self.train_indices = module, space, train_indices
        self.sha256, self.meta = sha256, meta or {}
        self.datasets = DATASETS

    @classmethod
    def from_checkpoint(cls, ckpt: dict, space, sha256: str = "") -> "AccuracyPredictor":
        net = make_accuracy_net(**ckpt["config"])
        state = ckpt["state_dict"]
        if ckpt.get("version", 1) == 1:  # one MLP named ``net``: the first member of today's ensemble
            state = {k.replace("net.", "nets.0.", 1) if k.startswith("net.") else k: v for k, v in state.items()}
        net.load_state_dict(state)
        net.eval()
        return cls(net, space, ckpt["train_indices"].numpy(), sha256, ckpt.get("meta"))

    def describe(self, dataset: str) -> str:
        return f"accuracy predictor ({self.space.name}, {dataset})"

    def predict(self, archs: Sequence, dataset: str) -> np.ndarray:
        import torch

        self.space.check_dataset(dataset)
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        with torch.no_grad():
            x = torch.from_numpy(self.space.encode(archs))
            acc = self.module(x, DATASETS.index(dataset)).double().numpy()
        return np.clip(acc, 0.0, 100.0)  # a percent; the raw module output stays unclipped for gradients


_LOADED: dict[str, AccuracyPredictor] = {}


def load_accuracy_predictor(space, path=None) -> AccuracyPredictor:
    """The shipped NB201 accuracy predictor (or the checkpoint at ``path``), loaded once per process."""
    ckpt, sha = load_checkpoint(path or checkpoint_path(ACCURACY_CHECKPOINT))
    if sha not in _LOADED:
        _LOADED[sha] = AccuracyPredictor.from_checkpoint(ckpt, space, sha)
    return _LOADED[sha]
