"""What every backend shares: model sources (a path, ONNX bytes, a ``torch.nn.Module`` exported on the fly),
fixed timing inputs, and the ``Runnable`` a backend's ``load`` returns. Below ``backends`` (the factory) and
``tensorrt``, so neither imports the other at module level."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from .timing import DEFAULT, Measurement, Protocol, measure

OPSET = 17


# ----------------------------------------------------------------------------- model sources


def onnx_bytes(module, inputs: dict[str, np.ndarray]) -> bytes:
    """Export a ``torch.nn.Module`` (in eval mode) to ONNX with the legacy exporter at opset 17.

    ``inputs`` fixes the input names and shapes (static shapes, as TensorRT and the LUT need)."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module.eval(), args, buf, dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=["output"])
    return buf.getvalue()


def _is_module(model) -> bool:
    return hasattr(model, "forward") and hasattr(model, "parameters")


def _read_onnx(model, inputs) -> bytes:
    """ONNX bytes from a path, bytes, an ``onnx.ModelProto`` or a module (exported with ``inputs``)."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise UserError(f"ONNX model {path} does not exist")
        return path.read_bytes()
    if _is_module(model):
        if inputs is None:
            raise ValueError("exporting a torch module needs example inputs")
        return onnx_bytes(model, inputs)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    raise TypeError(f"cannot load a model of type {type(model).__name__}")


def random_inputs(specs: list[tuple[str, tuple[int, ...], np.dtype]], seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed inputs for timing: standard normal floats, zeros for integer inputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, dtype in specs:
        dtype = np.dtype(dtype)
        out[name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype))
    return out


# ----------------------------------------------------------------------------- the runnable


class Runnable:
    """A loaded model with fixed inputs. Subclasses set ``inputs`` and implement ``run`` and ``run_once_ms``."""

    backend: str
    inputs: dict[str, np.ndarray]

    def run(self, inputs: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        raise NotImplementedError

    def run_once_ms(self) -> float:
        """One forward pass on the fixed inputs; returns its duration in milliseconds."""
        raise NotImplementedError

    def measure(self, protocol: Protocol = DEFAULT) -> Measurement:
        return measure(self.run_once_ms, protocol)
