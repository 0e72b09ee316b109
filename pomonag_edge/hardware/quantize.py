"""INT8 graphs: an fp32 ONNX graph -> an explicit Q/DQ ONNX graph, by ONNX Runtime's static quantization
(``quantize_static``, ``QuantFormat.QDQ``, per-channel weights, MinMax calibration, Q/DQ on the inputs of Conv,
Gemm and MatMul) after its pre-processing
(``quant_pre_process``: shape inference and graph optimisation, BatchNorm folded into the conv before it).

Every INT8 file the tool times or ships is made here: LUT chains, calibration nets and exported nets, so the
LUT prices what export ships. The Q/DQ scheme follows the runtime that will run the file:

- ``tensorrt`` (backends tensorrt, trtexec, onnxruntime-trt): signed int8 activations and weights, both
  symmetric (zero point 0), the only Q/DQ form TensorRT's explicit quantization accepts;
- ``onnxruntime`` (the CPU execution provider): unsigned activations, signed symmetric per-channel weights
  (U8S8), ONNX Runtime's integer fast path on x86 (VNNI). Measured here (AVX-512 VNNI, 1 thread) on an NB201
  net: U8S8 ran 2x faster than fp32, while S8S8 ran 2x slower.

Both are Q/DQ ONNX that ONNX Runtime runs (numerics and accuracy are checked with it); TensorRT takes the
first. ``onnxruntime.quantization`` is imported only when a graph is quantized.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError

SCHEMES = ("onnxruntime", "tensorrt")
# Q/DQ on the inputs and weights of the compute ops only, as NVIDIA places them for TensorRT. Quantizing pools
# and adds as well made ONNX Runtime fall back to slow QLinear kernels: an NB201 net with three avg_pool_3x3
# edges ran 0.32 ms in FP32, 10.8 ms with every op quantized, 0.42 ms with these three (load average 7.5)
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
TENSORRT_BACKENDS = ("tensorrt", "trtexec", "onnxruntime-trt")
RANDOM_CALIBRATION_BATCHES = 4  # timing graphs: latency does not depend on the scales, only on the Q/DQ layout


class QuantizationError(UserError):
    """A graph that ONNX Runtime's static quantization could not turn into Q/DQ INT8."""


def scheme_for(backend: str) -> str:
    """The Q/DQ scheme of the runtime a profile or export times with (module docstring)."""
    return "tensorrt" if backend in TENSORRT_BACKENDS else "onnxruntime"


def is_quantized(onnx: bytes) -> bool:
    """Whether a serialized ONNX graph holds Q/DQ nodes."""
    import onnx as onnx_lib

    return any(n.op_type == "QuantizeLinear" for n in onnx_lib.load_from_string(onnx).graph.node)


def random_calibration(inputs: dict[str, np.ndarray], batches: int = RANDOM_CALIBRATION_BATCHES,
                       seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Calibration feeds for a timing graph: its own fixed inputs plus seeded standard-normal ones."""
    rng = np.random.default_rng(seed + 1)
    extra = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in inputs.items()}
             for _ in range(max(0, batches - 1))]
    return [dict(inputs)] + extra


def image_calibration(images: np.ndarray, batch: int, input_name: str = "input") -> list[dict[str, np.ndarray]]:
    """Calibration feeds of ``batch`` images each (the graph's fixed batch); a short last batch is dropped
    unless it is the only one, which is then padded by repeating images."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if len(images) == 0:
        raise QuantizationError("no calibration images")
    if len(images) < batch:
        images = np.concatenate([images] * (-(-batch // len(images))))[:batch]
    n = len(images) // batch
    return [{input_name: images[i * batch:(i + 1) * batch]} for i in range(n)]


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs advice through the root logger (per-channel axis notes on rank-1 BatchNorm
    weights, 'consider pre-processing' although we did) and its sessions warn of the fp32 weights it replaced:
    kept off the user's terminal."""
    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)  # its calibration sessions: "Removing initializer ... not used" per weight
    try:
        yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)  # onnxruntime's default (it offers no getter)


def quantize_onnx(onnx: bytes, calibration: Iterable[dict[str, np.ndarray]], scheme: str = "onnxruntime",
                  name: str = "graph") -> bytes:
    """``onnx`` (fp32) -> Q/DQ INT8 ONNX bytes, calibrated on ``calibration`` (feeds of the graph's inputs).

    Raises ``QuantizationError`` (one line) when ONNX Runtime cannot pre-process or quantize the graph."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown int8 scheme {scheme!r}")
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise QuantizationError(f"INT8 needs onnxruntime's quantization tools ({e}): pip install onnxruntime onnx") \
            from None
    feeds = list(calibration)
    if not feeds:
        raise QuantizationError(f"quantizing {name} to INT8: no calibration inputs")

    class Reader(CalibrationDataReader):
        def __init__(self, items: Sequence[dict]):
            self._items = iter(items)

        def get_next(self):
            return next(self._items, None)

    signed = scheme == "tensorrt"
    with tempfile.TemporaryDirectory(prefix="pomonag-int8-") as tmp, _quiet():
        src, pre, out = (Path(tmp) / f for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            quantize_static(str(pre), str(out), Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                            op_types_to_quantize=QUANTIZED_OPS,
                            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True})
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph types, onnx its checker errors
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise QuantizationError(f"quantizing {name} to INT8 failed: {type(e).__name__}: {why}") from None
        return out.read_bytes()


def graph_ops(onnx: bytes) -> dict[str, int]:
    """Node count per op type (the report records a Q/DQ file's make-up)."""
    import onnx as onnx_lib

    return dict(Counter(n.op_type for n in onnx_lib.load_from_string(onnx).graph.node))
