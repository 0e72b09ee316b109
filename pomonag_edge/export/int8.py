"""INT8 export: where the calibration images come from, the INT8 file's agreement with FP32, and its accuracy.

The INT8 file is the FP32 ONNX file quantized by ``hardware.quantize`` (the maker of every INT8 graph the tool
times), with the Q/DQ scheme of the profile's runtime. Calibration, in order of preference:

1. trained weights (``train``): ``calib_images`` images of the user's training split, re-read from the data
   recorded in ``RUN/train/results.json`` (same split, same normalisation); the validation split then gives the
   INT8 file's accuracy, measured with ONNX Runtime, beside the FP32 file's on the same images;
2. a run for a user task (``dataset.json``) whose images are still where ``probe`` read them: their training split;
3. otherwise seeded random inputs, said so: the latency is right, no accuracy is claimed.

The numeric check of an INT8 file is not FP32's 1e-4: it compares the INT8 file with the FP32 file on the
check images (validation split, else calibration images, else random inputs) by the logits' error relative to
their scale and, for trained weights, by top-1 agreement, each with its stated tolerance below. Untrained
(seeded random) weights give near-tied logits whose top-1 flips on a 1% error (86% agreement at 1.5% error
was measured), so there the agreement is reported, not judged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..dataset_profile import task_input_hw
from ..errors import UserError
from ..hardware.quantize import RANDOM_CALIBRATION_BATCHES, image_calibration
from ..userdata import load_user_data
from .onnx_export import INPUT_NAME, random_inputs

CALIB_IMAGES = 256  # a few hundred images calibrate MinMax ranges (ONNX Runtime's and TensorRT's examples use ~100-500)
CHECK_IMAGES = 256  # at most this many inputs in the agreement check
TOP1_AGREEMENT_MIN = 0.90  # INT8 and FP32 files pick the same class on at least 90% of the check inputs
LOGITS_REL_MAX = 0.25  # max |int8 - fp32| / max |fp32| over the check inputs (per-channel int8: ~0.02-0.1 typical)


@dataclass
class CalibrationData:
    """Images the INT8 files are calibrated (and checked) on, and what they are."""

    source: str  # "training split", "task images", "random inputs"
    described: str  # for the report and the notes
    train: np.ndarray | None = None  # calibration images, normalised as the nets were trained
    val_x: np.ndarray | None = None  # validation split (trained weights only): accuracy is measured on it
    val_y: np.ndarray | None = None

    @property
    def claims_accuracy(self) -> bool:
        return self.val_x is not None

    def to_dict(self) -> dict:
        return {"source": self.source, "described": self.described,
                "images": None if self.train is None else int(len(self.train)),
                "validation_images": None if self.val_x is None else int(len(self.val_x))}


def _read(path: str, space, seed: int, fingerprint: str | None, what: str):
    if not Path(path).exists():
        raise UserError(f"INT8 calibration needs {what} at {path}, which is gone: put it back, or pass --calib-data "
                        "PATH (the same images)")
    data = load_user_data(path, input_hw=task_input_hw(space), seed=seed)
    if fingerprint and data.source.get("fingerprint") != fingerprint:
        raise UserError(f"{path} no longer holds the images of {what} (their fingerprint changed): pass --calib-data "
                        "with the images the nets were trained on")
    return data


def calibration_data(space, run, trained: dict | None, calib_images: int, calib_data: str | None,
                     seed: int = 0) -> CalibrationData:
    """The calibration source for an INT8 export (module docstring); a missing source is one line."""
    if calib_images < 1:
        raise UserError(f"--calib-images must be at least 1, got {calib_images}")
    rng = np.random.default_rng(seed)

    def pick(x: np.ndarray) -> np.ndarray:
        return x[np.sort(rng.choice(len(x), size=min(calib_images, len(x)), replace=False))]

    if trained is not None:
        recorded = trained.get("data") or {}
        path = calib_data or recorded.get("path")
        if not path:
            raise UserError("INT8 calibration with trained weights needs their training images: train/results.json "
                            "records none; pass --calib-data PATH")
        split_seed = int((recorded.get("split") or {}).get("seed", 0))
        data = _read(path, space, split_seed, recorded.get("fingerprint"), "the training data")
        x = pick(data.x_train)
        return CalibrationData("training split", f"{len(x)} images of the training split of {path}", x,
                               data.x_val, data.y_val)
    task = getattr(run, "task", None)
    source = (getattr(task, "source", None) or {}) if task is not None else {}
    path = calib_data or source.get("path")
    if path and (calib_data or Path(path).exists()):
        data = _read(path, space, int((source.get("split") or {}).get("seed", 0)), None if calib_data else
                     source.get("fingerprint"), "the task's images")
        x = pick(data.x_train)
        return CalibrationData("task images", f"{len(x)} images of the training split of {path} (random weights: "
                               "accuracy not claimed)", x)
    return CalibrationData("random inputs", "seeded random inputs (no trained weights, no task images): the "
                           "latency is right, the accuracy is not claimed")


def feeds(calib: CalibrationData, input_shape: tuple[int, ...], seed: int) -> list[dict[str, np.ndarray]]:
    """Calibration feeds at the file's fixed batch."""
    if calib.train is None:
        return [{INPUT_NAME: random_inputs(input_shape, seed + i)} for i in range(RANDOM_CALIBRATION_BATCHES * 4)]
    return image_calibration(calib.train, int(input_shape[0]), INPUT_NAME)


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _logits(session, x: np.ndarray, batch: int, dynamic: bool) -> np.ndarray:
    """Logits for every image: in batches of the file's fixed batch (a short last batch padded), or all at once."""
    if dynamic:
        return np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 256]})[0] for i in range(0, len(x), 256)])
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(session.run(None, {INPUT_NAME: chunk})[0][: batch - pad])
    return np.concatenate(out)


@dataclass
class AgreementCheck:
    """INT8 file vs FP32 file on the same inputs: top-1 agreement and the logits' relative error."""

    runtime: str
    inputs: str
    n: int
    top1_agreement: float
    max_rel_error: float
    top1_agreement_min: float | None = TOP1_AGREEMENT_MIN  # None: reported, not judged (untrained weights)
    tolerance_rel: float = LOGITS_REL_MAX
    max_abs_error: float | None = None
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": "int8 vs fp32", **asdict(self), "min_passing_tolerance_rel": self.max_rel_error}


def check_int8(fp32_path, int8_path, calib: CalibrationData, input_shape: tuple[int, ...], dynamic: bool,
               seed: int) -> tuple[AgreementCheck, dict]:
    """The INT8 file against the FP32 file (ONNX Runtime, CPU), and accuracies when there are labels."""
    if calib.val_x is not None:
        x, what = calib.val_x, "validation split"
    elif calib.train is not None:
        x, what = calib.train[:CHECK_IMAGES], "calibration images"
    else:
        x, what = random_inputs((64, *input_shape[1:]), seed + 101), "seeded random inputs"
    batch = int(input_shape[0])
    ref = _logits(_session(fp32_path), x, batch, dynamic)
    got = _logits(_session(int8_path), x, batch, dynamic)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max()) or 1.0
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    judged = calib.val_y is not None  # trained weights: their classes mean something
    check = AgreementCheck("onnxruntime-int8", what, int(len(x)), agree, float(diff.max() / scale),
                           top1_agreement_min=TOP1_AGREEMENT_MIN if judged else None, max_abs_error=float(diff.max()))
    if judged and agree < TOP1_AGREEMENT_MIN:
        check.passed = False
        check.failures.append(f"INT8 and FP32 agree on the top-1 class for {100 * agree:.1f}% of {len(x)} inputs "
                              f"({what}) (tolerance: at least {100 * TOP1_AGREEMENT_MIN:.0f}%)")
    if check.max_rel_error > LOGITS_REL_MAX:
        check.passed = False
        check.failures.append(f"INT8 logits differ from FP32's by up to {check.max_rel_error:.3g} of their scale "
                              f"(tolerance {LOGITS_REL_MAX:g})")
    accuracy = {}
    if calib.val_y is not None:
        y = calib.val_y
        accuracy = {"int8": round(100.0 * float((got.argmax(1) == y).mean()), 4),
                    "fp32": round(100.0 * float((ref.argmax(1) == y).mean()), 4), "images": int(len(y))}
    return check, accuracy
