"""Does the exported file compute what the PyTorch module computes? Checked in a fixed order.

As Optimum's ``validate_model_outputs``: output names, then per input batch the output count and
shapes, then values; every failure is collected with its numbers, none stops the others, and the
caller fails the net on any (never "passed with a warning"). As Polygraphy, each output reports its
max absolute and relative error and the smallest tolerance that would have passed.

Relative error here is ``max |runtime - torch| / max |torch|`` per output: relative to the output's
scale, not element by element, because random BatchNorm statistics make logits large and logits near
zero make element-wise ratios meaningless. fp32 ONNX Runtime agrees with PyTorch to ~1e-7 on NB201.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from .int8 import LOGITS_REL_MAX
from .onnx_export import INPUT_NAME, OUTPUT_NAMES, random_inputs

# stated tolerances (relative, as defined above), per runtime and precision
TOLERANCE_REL = {
    ("onnxruntime", "fp32"): 1e-4,  # typical 1e-7; 1e-4 leaves room for other CPUs' kernels
    ("tensorrt", "fp32"): 1e-2,  # TensorRT enables TF32 on Ampere+ for fp32 builds (10-bit mantissa)
    ("tensorrt", "fp16"): 5e-2,  # fp16 accumulates ~1e-3 per layer over ~20 layers
    ("tensorrt", "int8"): LOGITS_REL_MAX,  # an int8 engine against PyTorch fp32: INT8's own tolerance (int8.py)
}


def tolerance_for(runtime: str, precision: str) -> float:
    fallback = {"fp16": ("tensorrt", "fp16"), "int8": ("tensorrt", "int8")}.get(precision, ("onnxruntime", "fp32"))
    return TOLERANCE_REL.get((runtime, precision), TOLERANCE_REL[fallback])


@dataclass
class OutputCheck:
    name: str
    batch: int
    shape: list[int]
    expected_shape: list[int]
    max_abs_error: float | None
    max_rel_error: float | None  # max |diff| / max |reference|
    reference_max_abs: float | None
    passed: bool


@dataclass
class NumericCheck:
    runtime: str
    tolerance_rel: float
    seed: int
    batches: list[int]
    passed: bool = True
    outputs: list[OutputCheck] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float | None:
        vals = [o.max_abs_error for o in self.outputs if o.max_abs_error is not None]
        return max(vals) if vals else None

    @property
    def max_rel_error(self) -> float | None:
        """Also the smallest relative tolerance that would have passed the value check."""
        vals = [o.max_rel_error for o in self.outputs if o.max_rel_error is not None]
        return max(vals) if vals else None

    def fail(self, message: str) -> None:
        self.passed = False
        self.failures.append(message)

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "passed": self.passed, "tolerance_rel": self.tolerance_rel,
                "max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "min_passing_tolerance_rel": self.max_rel_error, "seed": self.seed, "batches": self.batches,
                "outputs": [asdict(o) for o in self.outputs], "failures": self.failures}


def onnxruntime_runner(onnx_path) -> tuple[Callable[[dict], list[np.ndarray]], list[str]]:
    """A plain fp32 CPU session: the reference runtime every export is checked with."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    return (lambda feeds: session.run(None, feeds)), [o.name for o in session.get_outputs()]


def check_outputs(model, run: Callable[[dict], list[np.ndarray]], output_names: Sequence[str],
                  input_shape: Sequence[int], batches: Sequence[int], tolerance_rel: float, seed: int = 0,
                  runtime: str = "onnxruntime") -> NumericCheck:
    """Compare ``run`` (a runtime's outputs for ``{input: array}``) with ``model`` on seeded inputs.

    Order: output names; then per batch size the number of outputs, each shape, each value. Every
    failure is recorded; ``passed`` is False if any occurred.
    """
    import torch

    check = NumericCheck(runtime=runtime, tolerance_rel=float(tolerance_rel), seed=seed, batches=list(batches))
    if list(output_names) != list(OUTPUT_NAMES):
        check.fail(f"output names: expected {list(OUTPUT_NAMES)}, the {runtime} model has {list(output_names)}")
    for i, batch in enumerate(batches):
        shape = (batch, *input_shape[1:])
        x = random_inputs(shape, seed + i)
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        reference = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
        try:
            got = [np.asarray(a) for a in run({INPUT_NAME: x})]
        except Exception as e:  # a runtime that rejects the input shape is a failed check, with its message
            check.fail(f"batch {batch}: {runtime} could not run input {list(shape)}: "
                       f"{type(e).__name__}: {str(e)[:300]}")
            continue
        if len(got) != len(reference):
            check.fail(f"batch {batch}: expected {len(reference)} output(s), {runtime} returned {len(got)}")
        for name, ref, val in zip(OUTPUT_NAMES, reference, got):
            if val.shape != ref.shape:
                check.outputs.append(OutputCheck(name, batch, list(val.shape), list(ref.shape),
                                                 None, None, None, False))
                check.fail(f"batch {batch}, output {name!r}: shape {list(val.shape)}, expected {list(ref.shape)}")
                continue
            if not np.isfinite(val).all():
                check.outputs.append(OutputCheck(name, batch, list(val.shape), list(ref.shape),
                                                 None, None, None, False))
                check.fail(f"batch {batch}, output {name!r}: {runtime} returned NaN or infinite values")
                continue
            diff = np.abs(val.astype(np.float64) - ref.astype(np.float64))
            scale = float(np.abs(ref).max()) if ref.size else 0.0
            max_abs = float(diff.max()) if diff.size else 0.0
            # an all-zero reference has no scale: then only an exact match passes (max_rel stays undefined)
            max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else None)
            ok = max_rel is not None and max_rel <= tolerance_rel
            check.outputs.append(OutputCheck(name, batch, list(val.shape), list(ref.shape),
                                             max_abs, max_rel, scale, ok))
            if max_rel is None:
                check.fail(f"batch {batch}, output {name!r}: PyTorch output is all zeros, {runtime} differs by "
                           f"up to {max_abs:.3g}")
            elif not ok:
                check.fail(f"batch {batch}, output {name!r}: max relative error {max_rel:.3g} > tolerance "
                           f"{tolerance_rel:.3g} (max abs error {max_abs:.3g}, output scale {scale:.3g}); "
                           f"would pass with tolerance >= {max_rel:.3g}")
    return check
