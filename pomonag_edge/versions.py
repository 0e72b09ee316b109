"""The versions of everything that changes a trained checkpoint, a run or a measured number, read from the
installed distributions without importing them (so recording them costs nothing)."""

from __future__ import annotations

import platform
from importlib import metadata

# record key -> distributions that provide it (the first installed wins)
PACKAGES = {"pomonag-edge": ("pomonag-edge",), "torch": ("torch",), "numpy": ("numpy",), "onnx": ("onnx",),
            "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "tensorrt": ("tensorrt", "tensorrt-cu12")}


def versions(*extra: str) -> dict:
    """{python, pomonag-edge, torch, numpy, onnx, onnxruntime} plus ``extra`` keys of ``PACKAGES``; None where
    a package is not installed."""
    out = {"python": platform.python_version()}
    for key in ("pomonag-edge", "torch", "numpy", "onnx", "onnxruntime", *extra):
        out[key] = None
        for dist in PACKAGES[key]:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out
