"""Training the score network (denoising score matching) and its checkpoint format.

A checkpoint is two files: ``<name>.pt`` (state_dict) and ``<name>.json`` (network size, SDE schedule,
training set, seed, steps, versions, final loss), so ``pomonag-edge pretrain generator`` with the same
arguments rebuilds it and the JSON alone says how it was made.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Callable

import torch

from ..data import data_path
from ..errors import UserError
from ..files import atomic_write_bytes, atomic_write_json
from ..versions import versions as installed_versions
from .losses import dsm_loss
from .score_net import GroupedScoreTransformer, ScoreTransformer, build_score_model
from .sde import VPSDE, get_sde

def train_score_model(space, *, steps: int = 3000, batch: int | None = None, d_model: int = 64, layers: int = 2,
                      heads: int = 4, lr: float = 2e-3, seed: int = 0, kind: str | None = None, archs=None,
                      progress: Callable[[int, int, float], None] | None = None):
    """Train from scratch with a fixed seed on the space's training set (``space.generator_training_set``;
    ``kind`` and ``batch`` default to its ``generator_recipe``) or on ``archs``; returns (model, sde, meta)."""
    kind = "given" if archs is not None else (kind or space.generator_recipe.kind)
    batch = batch or space.generator_recipe.batch
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    archs = list(archs) if archs is not None else space.generator_training_set(kind, seed)
    X = torch.as_tensor(space.encode(archs))
    sde = VPSDE()
    mask = None
    if len(space.encoding_shape) == 2:
        slots, choices = space.encoding_shape
        model = ScoreTransformer(slots, choices, d_model=d_model, layers=layers, heads=heads)
    else:  # a flat encoding of unequal groups; features the space masks (unused slots) leave the loss
        model = GroupedScoreTransformer([w for _, w in space.token_groups()], d_model=d_model, layers=layers,
                                        heads=heads, features=X.shape[1])
        masks = space.slot_mask(X.numpy())
        if masks is not None:
            mask = torch.as_tensor(masks)
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
        "versions": installed_versions(),
    }
    return model.eval(), sde, meta




def save_checkpoint(model, meta: dict, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.pt`` and ``<stem>.json`` atomically."""
    stem = Path(path_stem)
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, buf)
    pt = atomic_write_bytes(stem.with_suffix(".pt"), buf.getvalue())
    js = atomic_write_json(stem.with_suffix(".json"), meta)
    return pt, js


def shipped_checkpoint(space) -> Path:
    """The space's generator checkpoint (``generator_recipe.checkpoint``): a name under the shipped checkpoints,
    or an absolute path (a space from another package ships its own)."""
    stem = space.generator_recipe.checkpoint
    if stem is None:
        raise UserError(f"space {space.name} ships no generator checkpoint: train one with "
                        f"`pomonag-edge pretrain generator --space {space.name} --out STEM`")
    if Path(stem).is_absolute():
        return Path(stem).with_suffix(".pt")
    return Path(str(data_path("checkpoints", f"{stem}.pt")))


def load_checkpoint(path: str | Path | None, space):
    """(model, sde, meta) from a checkpoint path (``.pt``, its ``.json`` beside it), default the space's."""
    pt = Path(path) if path is not None else shipped_checkpoint(space)
    pt = pt if pt.suffix == ".pt" else pt.with_suffix(".pt")
    js = pt.with_suffix(".json")
    if not pt.exists() or not js.exists():
        raise UserError(f"generator checkpoint {pt} (and {js.name} beside it) not found: "
                        f"run `pomonag-edge pretrain generator --space {space.name} --out {pt.with_suffix('')}`")
    meta = json.loads(js.read_text())
    model = build_score_model(meta["model"])
    model.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
    return model.eval(), get_sde(meta["sde"]), meta
