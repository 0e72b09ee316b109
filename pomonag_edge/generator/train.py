"""Training the score network (denoising score matching) and its checkpoint format.

A checkpoint is two files: ``<name>.pt`` (state_dict) and ``<name>.json`` (network size, SDE schedule,
training set, seed, steps, versions, final loss), so ``pomonag-edge pretrain generator`` with the same
arguments rebuilds it and the JSON alone says how it was made.
"""

from __future__ import annotations

import io
import json
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..errors import UserError
from ..files import atomic_write_bytes, atomic_write_json
from ..pareto import non_dominated_sort
from .losses import dsm_loss
from .score_net import GroupedScoreTransformer, ScoreTransformer, build_score_model
from .sde import VPSDE, get_sde

TRAINING_SETS = ("valid", "pareto")
SPACE_DEFAULTS = {"nb201": {"kind": "valid", "batch": 256}, "mbv3": {"kind": "pareto", "batch": 128}}
SHIPPED = "generator_nb201"


def training_set(space, kind: str = "valid", seed: int = 0) -> list:
    """The nets the prior learns.

    ``valid``: every net whose output is connected to its input (NB201: 15,625 - disconnected ones).
    ``pareto``: POMONAG-style filtering: functionally distinct valid nets on the first fronts of
    (mean accuracy percentile over the space's datasets up, params down, MACs down), at least 3,000 nets.
    MobileNetV3 (not enumerable): see ``mbv3_training_set``.
    """
    if kind not in TRAINING_SETS:
        raise UserError(f"unknown training set {kind!r}; choose one of {', '.join(TRAINING_SETS)}")
    if space.size() is None or space.name == "mbv3":
        return mbv3_training_set(space, kind, seed)
    archs = [a for a in space.enumerate() if space.is_valid(a)]
    if kind == "valid":
        return archs
    from ..data import nb201_accuracy
    from scipy.stats import rankdata

    archs = sorted({space.canonical(a) for a in archs}, key=space.index)
    idx = np.array([space.index(a) for a in archs])
    pct = np.mean([rankdata(nb201_accuracy(d)[idx]) / len(idx) for d in space.datasets], axis=0)
    F = np.stack([-pct, [space.params(a) for a in archs], [space.macs(a) for a in archs]], axis=1)
    keep: list[int] = []
    for front in non_dominated_sort(F):
        keep.extend(front.tolist())
        if len(keep) >= 3000:
            break
    return [archs[i] for i in sorted(keep)]


MBV3_VALID_NETS = 40_000
MBV3_POOL, MBV3_BINS, MBV3_KEEP = 80_000, 20, 0.25


def mbv3_training_set(space, kind: str = "valid", seed: int = 0) -> list:
    """MobileNetV3 training nets, drawn with OFA's sampling (depths, kernels, expands, resolution uniform).

    ``valid``: 40,000 such nets. ``pareto`` (POMONAG's accuracy-filtered prior, scaled to a space that
    cannot be enumerated): of 80,000 nets, the quarter with the highest OFA-predicted top-1 within each of
    20 MAC quantile bins (20,000 nets). Filtering per MAC bin keeps every cost level in the prior, so the
    guidance can still reach small nets for tight budgets while each level holds its most accurate nets.
    """
    if kind == "valid":
        return space.sample(MBV3_VALID_NETS, seed)
    from ..predictors.ofa_accuracy import OFAAccuracyPredictor

    pool = space.sample(MBV3_POOL, seed)
    acc = OFAAccuracyPredictor().predict(pool, warn=False)
    macs = np.array([space.macs(a) for a in pool], dtype=np.float64)
    edges = np.quantile(macs, np.linspace(0, 1, MBV3_BINS + 1)[1:-1])
    bins = np.searchsorted(edges, macs)
    keep = []
    for b in range(MBV3_BINS):
        idx = np.flatnonzero(bins == b)
        keep.extend(idx[np.argsort(-acc[idx], kind="stable")[: int(round(MBV3_KEEP * len(idx)))]].tolist())
    return [pool[i] for i in sorted(keep)]


def train_score_model(space, *, steps: int = 3000, batch: int = 256, d_model: int = 64, layers: int = 2,
                      heads: int = 4, lr: float = 2e-3, seed: int = 0, kind: str = "valid",
                      progress: Callable[[int, int, float], None] | None = None):
    """Train from scratch with a fixed seed; returns (model, sde, meta)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    archs = training_set(space, kind, seed)
    X = torch.as_tensor(space.encode(archs))
    sde = VPSDE()
    mask = None
    if len(space.encoding_shape) == 2:
        slots, choices = space.encoding_shape
        model = ScoreTransformer(slots, choices, d_model=d_model, layers=layers, heads=heads)
    else:  # a flat encoding of unequal groups (mbv3); unused slots are masked out of the loss
        from .layout import token_groups

        model = GroupedScoreTransformer([w for _, w in token_groups(space)], d_model=d_model, layers=layers,
                                        heads=heads, features=X.shape[1])
        if hasattr(space, "slot_mask"):
            mask = torch.as_tensor(space.slot_mask(X.numpy()))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    start, ema = time.perf_counter(), None
    for step in range(steps):
        idx = torch.randint(len(X), (batch,), generator=gen)
        loss = dsm_loss(model, sde, X[idx], generator=gen, mask=None if mask is None else mask[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        lv = float(loss.detach())
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        if progress is not None:
            progress(step + 1, steps, ema)
    meta = {
        "space": space.name, "model": model.config, "sde": sde.config(),
        "training": {"set": kind, "nets": len(archs), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                     "final_loss_ema": round(ema, 5), "seconds": round(time.perf_counter() - start, 1)},
        "versions": versions(),
    }
    return model.eval(), sde, meta


def versions() -> dict:
    return {"pomonag_edge": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def save_checkpoint(model, meta: dict, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.pt`` and ``<stem>.json`` atomically."""
    stem = Path(path_stem)
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, buf)
    pt = atomic_write_bytes(stem.with_suffix(".pt"), buf.getvalue())
    js = atomic_write_json(stem.with_suffix(".json"), meta)
    return pt, js


def shipped_checkpoint(space_name: str = "nb201") -> Path:
    from ..data import data_path

    return Path(str(data_path("checkpoints", f"generator_{space_name}.pt")))


def load_checkpoint(path: str | Path | None = None, space_name: str = "nb201"):
    """(model, sde, meta) from a checkpoint path (``.pt``, its ``.json`` beside it), default the shipped one."""
    pt = Path(path) if path is not None else shipped_checkpoint(space_name)
    pt = pt if pt.suffix == ".pt" else pt.with_suffix(".pt")
    js = pt.with_suffix(".json")
    if not pt.exists() or not js.exists():
        raise UserError(f"generator checkpoint {pt} (and {js.name} beside it) not found: "
                        f"run `pomonag-edge pretrain generator --space {space_name} --out {pt.with_suffix('')}`")
    meta = json.loads(js.read_text())
    model = build_score_model(meta["model"])
    model.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
    return model.eval(), get_sde(meta["sde"]), meta
