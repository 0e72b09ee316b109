"""Shipped predictor checkpoints: one ``.pt`` file each, a dict of tensors and JSON-able metadata.

A checkpoint is named by its file and identified by a content hash, so a profile's fitted model can say
exactly which pretrained embedding it was fitted on, and notice when that changed.
"""

from __future__ import annotations

import hashlib
import io
import os
from functools import lru_cache
from pathlib import Path

from .errors import UserError
from .files import atomic_write_bytes

CHECKPOINT_DIR = Path(__file__).resolve().parent / "data" / "checkpoints"


def checkpoint_path(name: str) -> Path:
    return CHECKPOINT_DIR / name


def save_checkpoint(obj: dict, path) -> str:
    """Write atomically; returns the sha256 (16 hex) of the bytes written."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    os.chmod(atomic_write_bytes(path, data), 0o644)  # package data: readable by everyone
    return hashlib.sha256(data).hexdigest()[:16]


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> tuple[dict, str]:
    import torch

    data = Path(path).read_bytes()
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return obj, hashlib.sha256(data).hexdigest()[:16]


def load_checkpoint(path) -> tuple[dict, str]:
    """(checkpoint dict, sha256-16). Cached per file and modification time."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; `pomonag-edge pretrain --help` says how to make it")
    return _load(str(path), path.stat().st_mtime)


_BUILT: dict = {}


def load_built(path, build, key=None):
    """``build(ckpt, sha, path)`` of the checkpoint at ``path``, made once per process per content hash and
    ``key`` (default: ``build`` itself), so pretrained embeddings are built once however many profiles use them."""
    ckpt, sha = load_checkpoint(path)
    key = (build if key is None else key, sha)
    if key not in _BUILT:
        _BUILT[key] = build(ckpt, sha, str(path))
    return _BUILT[key]
