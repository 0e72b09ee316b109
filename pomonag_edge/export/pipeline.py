"""``export_run``: the best nets of a run -> checked ONNX (and TensorRT) files, re-measured on the target.

``plan_export`` first decides, from the run, the profile, the options and what the timing machine is, which nets
are exported to which files at which precision and what is timed (it reads, writes and times nothing, so it is
tested without hardware). Then, per net in order: build (seeded random init, ``--weights`` or the trained weights),
export ONNX, check ONNX Runtime outputs against PyTorch, optionally build and check a TensorRT engine. The nets and
a few of the profile's own calibration nets are then timed, interleaved, by the profile's timer
(``hardware.timers``: a backend here, the device runner here or over SSH, or a device's command), and each net is
judged against the budget. Every step's outcome lands in ``RUN_DIR/export/report.json``.

An export is built in a hidden folder beside ``RUN_DIR/export`` and then replaces ``export/`` whole: the folder
only ever holds the files of one export, listed in its report's ``files``. An interrupted export removes its
hidden folder and leaves ``export/`` as it was; one export of a run at a time (``files.claim``), and what a
killed one left is removed by the next. Feedback goes into a new profile revision.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from functools import wraps
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from ..errors import UserError
from ..files import atomic_write_bytes, claim, replace_dir, staging_dir
from ..hardware import drift
from ..hardware.drift import BAND
from ..hardware.backends import BACKENDS, PRECISIONS, get_backend, tensorrt_missing_here
from ..hardware.devices import detect_device
from ..hardware.quantize import graph_ops, quantize_onnx, random_calibration, scheme_for
from ..hardware.timers import (BackendTimer, Graph, Reach, profile_protocol, reach_for_profile,
                               timer_for_profile)
from ..hardware.timing import Protocol
from ..predictors import latency_model_for, with_timings
from ..profile import Profile, load_profile, locate_profile
from ..runs import Run, load_run, profile_spec_for
from ..spaces import get_space
from ..training import Task, load_trained_state, trained_results
from .int8 import CALIB_IMAGES, calibration_data, check_int8, feeds
from .onnx_export import (DEFAULT_OPSET, INPUT_NAME, build_model, check_opset, export_onnx, file_stem, load_weights,
                          onnx_summary, preprocessing, random_inputs)
from .report import SCHEMA, SCHEMA_VERSION, environment, write_report
from .validate import check_outputs, onnxruntime_runner, tolerance_for

FORMATS = ("onnx", "tensorrt")


@dataclass
class ExportOptions:
    top: int = 5
    formats: tuple[str, ...] = ("onnx",)
    profile: str | None = None  # None: the run's own
    precision: str | None = None  # None: the profile's
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = False
    weights: str | None = None
    allow_over_budget: bool = False
    measure: bool | None = None  # None: measure when this machine is the profile's device
    feedback: bool = True
    quick: bool = False
    seed: int = 0
    drift_nets: int = 3  # calibration nets of the profile timed again beside the exported ones
    host: str | None = None  # USER@ADDR[:PORT]: measure there through the device runner
    ssh: object | None = None  # remote.SSHOptions (ssh config, remote python, remote folder)
    calib_images: int = CALIB_IMAGES  # int8: training images the Q/DQ scales are calibrated on
    calib_data: str | None = None  # int8: the images to calibrate on (default: the training data, or the task's)

    def __post_init__(self):
        if self.top < 1:
            raise UserError(f"--top must be at least 1, got {self.top}")
        if self.drift_nets < 0:
            raise UserError(f"--drift-nets must be 0 or more, got {self.drift_nets}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise UserError(f"unknown --format {','.join(bad) or '(empty)'}; use onnx, tensorrt or onnx,tensorrt")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.calib_images < 1:
            raise UserError(f"--calib-images must be at least 1, got {self.calib_images}")
        check_opset(self.opset)


def parse_formats(text: str) -> tuple[str, ...]:
    """``onnx,tensorrt`` -> ('onnx', 'tensorrt'); ONNX is always made (TensorRT engines are built from it)."""
    parts = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    bad = [p for p in parts if p not in FORMATS]
    if bad or not parts:
        raise UserError(f"unknown --format {text!r}; use onnx, tensorrt or onnx,tensorrt")
    return tuple(f for f in FORMATS if f in parts or f == "onnx")


# ------------------------------------------------------------------ profile, machine, backends


def machine_mismatch(profile: Profile, detected: dict) -> list[str]:
    """Why this machine is not the profile's device (empty when it is)."""
    if profile.reference:
        return ["it is a reference profile: published measurements of another device"]
    if not profile.identity_recorded:
        return [f"profile {profile.name!r} records no detected device facts (made from timings taken elsewhere?)"]
    return profile.identity_mismatch(detected)


def _predicted_ms(space, profile: Profile, run: Run, items: list[dict]) -> tuple[list[float | None], str]:
    """The run's own predictions when the profile is unchanged, else the profile's latency model."""
    if profile.sha256 == run.profile_sha256 or (run.profile_sha256 is None and profile.name == run.profile_spec):
        return [i.get("latency_ms") for i in items], "run"
    try:
        archs = [space.parse(i["arch"]) for i in items]
        return [float(v) for v in latency_model_for(space, profile).predict_ms(archs)], "profile latency model"
    except (ImportError, UserError) as e:
        return [i.get("latency_ms") for i in items], f"run (profile model unavailable: {e})"



# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class NetPlan:
    """One of the run's nets to export: its rank, its ``pareto.json`` record, the stem of its files, and whether
    ``--measure`` re-times the previous export's files (they move into this export) instead of building them."""

    rank: int
    item: dict
    stem: str
    reuse: bool = False


@dataclass(frozen=True, kw_only=True)
class ExportPlan:
    """What an export builds and times, decided before anything is built or timed (``plan_export``)."""

    backend: str  # what the nets are timed and recorded with: the profile's backend, "command", or a stand-in
    precision: str  # of the timed runtime
    engine_precision: str  # of the files and TensorRT engines (fp16 engines beside fp32 CPU timings)
    threads: int
    batch: int
    clock: str  # the profile's: a net is re-timed with the clock its prediction was fitted on
    protocol: Protocol
    measure: bool
    informative: bool  # measured here for a reference profile: this machine's time, not judged
    engines: str | None  # TensorRT engines: "here" (built and checked in this process), "device" (by trtexec)
    int8_scheme: str | None  # INT8 files quantized here with this Q/DQ scheme (None: FP32, or a command quantizes)
    nets: tuple[NetPlan, ...]
    probes: tuple[dict, ...]  # the profile's calibration records timed again beside the nets
    budget_ms: float | None
    mismatch: tuple[str, ...]  # why the timing machine is not the profile's device (empty when it is)
    notes: tuple[str, ...]

    @property
    def runtimes(self) -> tuple[str, ...]:
        """What each net is timed with: the backend, and TensorRT for engines built here beside another runtime."""
        return tuple(dict.fromkeys((self.backend,) + (("tensorrt",) if self.engines == "here" else ())))


def _settings(profile: Profile, options: ExportOptions) -> tuple[str, int, int]:
    """(precision of the files, threads, batch): ``--precision`` or the profile's, and the profile's."""
    runtime = profile.runtime or {}
    return (options.precision or runtime.get("precision") or "fp32", int(runtime.get("threads") or 1),
            int(runtime.get("batch") or 1))


def wants_engines_here(options: ExportOptions, reach: Reach) -> bool:
    """Whether TensorRT engines would be built in this process (``plan_export`` asks why they cannot be)."""
    return reach.kind == "here" and ("tensorrt" in options.formats or reach.backend == "tensorrt")


def plan_export(run: Run, space, profile: Profile, options: ExportOptions, *, reach: Reach, detected: dict,
                tensorrt_missing: str | None = None, previous: Collection[str] = ()) -> ExportPlan:
    """Which nets are exported to which files, at which precision, and what is timed where; refusals raise
    ``UserError``. ``reach``: how the profile's device is timed (``timers.reach_for_profile``); ``detected``: the
    facts of the machine that times (this one, the host, or the command's); ``tensorrt_missing``: why TensorRT
    cannot build engines here (``backends.tensorrt_missing_here``; asked when ``wants_engines_here``);
    ``previous``: the file stems of the export in place, which ``--measure`` re-times."""
    runtime = profile.runtime or {}
    backend = reach.backend
    precision, threads, batch = _settings(profile, options)
    mismatch = machine_mismatch(profile, detected)
    notes: list[str] = []
    measure = options.measure if options.measure is not None else not mismatch
    informative = False  # measured on this machine, but it is not the profile's device: no budget test
    if mismatch and options.measure is None and profile.reference:
        # a reference profile is published timings of a device that is never here: what this machine can add
        # is its own latency, for information (the ONNX file runs here), never judged against the budget
        measure = informative = True
        notes.append(f"profile {profile.name!r} is a reference profile (published timings of another device): "
                     f"latency measured on this machine with {backend} for information only, not tested "
                     "against the budget nor compared with the prediction")
    elif mismatch and options.measure is None:
        notes.append(f"this machine differs from profile {profile.name!r} ({'; '.join(mismatch)}): numerics checked, "
                     f"latency not measured; run `pomonag-edge export {run.path} --measure` on the target")
    elif mismatch and options.measure:
        notes.append(f"--measure on a machine that differs from profile {profile.name!r} ({'; '.join(mismatch)}): "
                     "the latencies are this machine's and are not fed back into the profile")

    engines = None
    if reach.kind == "command":
        if "tensorrt" in options.formats:
            notes.append(f"the profile's device is a command ({reach.descriptor.name}): no TensorRT engines built")
    elif reach.kind == "runner":  # engines are built by trtexec on the device while timing, and brought back
        if reach.runtime == "trtexec":
            engines = "device"
        elif "tensorrt" in options.formats:
            raise UserError(f"--format tensorrt: the profile's runtime on {options.host or 'this machine'} is "
                            f"{reach.runtime}, so no TensorRT engines can be built there: export with a TensorRT "
                            "profile of that device, or drop --format tensorrt")
    elif wants_engines_here(options, reach):
        if tensorrt_missing is not None and "tensorrt" in options.formats:  # engines asked for cannot be built
            raise UserError(f"--format tensorrt: {tensorrt_missing}, so no TensorRT engines can be built: run the "
                            "export on the target, or with --host USER@BOARD to build them there; or drop --format "
                            "tensorrt")
        if tensorrt_missing is not None:
            notes.append(f"{tensorrt_missing}: exported ONNX only; run `pomonag-edge export --format tensorrt` on the "
                         "target to build and time TensorRT engines")
            if backend == "tensorrt":
                measure = False
        else:
            engines = "here"
    profile_precision = runtime.get("precision") or "fp32"
    if "int8" in (precision, profile_precision) and precision != profile_precision and not profile.reference:
        raise UserError(f"--precision {precision}, but profile {profile.name!r} was measured at {profile_precision}: "
                        f"its latency model predicts {profile_precision} nets; profile the device with --precision "
                        f"{precision} and generate against that profile (its runs export {precision})")
    measure_precision = precision
    if precision == "fp16" and reach.kind == "here" and not BACKENDS[backend].gpu:
        if "tensorrt" not in options.formats:
            raise UserError(f"--precision fp16 needs a GPU runtime and the profile's is {backend} (CPU): use "
                            "fp32, add --format tensorrt for fp16 engines, or use a GPU profile on the target")
        measure_precision = "fp32"  # fp16 is for the engines; the CPU runtime stays fp32
    if engines is not None and options.dynamic_batch:
        raise UserError("--dynamic-batch cannot be used with TensorRT engines here (they are built for the "
                        f"profile's fixed batch {batch}): drop one of the two")
    candidates = [c for c in run.candidates if c.get("feasible", True) or options.allow_over_budget][: options.top]
    if not candidates:
        raise UserError(f"{run.path / 'pareto.json'} holds no net within budget (pass --allow-over-budget to export "
                        "infeasible ones)")

    int8_scheme = None
    if precision == "int8" and reach.kind == "command":  # the device's toolchain quantizes: it gets the FP32 files
        notes.append(f"int8: device {reach.descriptor.name}'s command is given the FP32 ONNX files with "
                     "{precision} = int8 and quantizes them its own way")
    elif precision == "int8":
        if options.weights is not None and options.calib_data is None:
            raise UserError("--precision int8 with --weights needs images to calibrate on: pass --calib-data PATH")
        int8_scheme = scheme_for(backend)
    nets = []
    for position, item in enumerate(candidates, start=1):
        rank = int(item.get("rank") or position)  # the run's rank (infeasible nets may have been skipped)
        stem = file_stem(rank, space.parse(item["arch"]), space)
        reuse = bool(options.measure) and stem in previous and (int8_scheme is None or f"{stem}.fp32" in previous)
        nets.append(NetPlan(rank, item, stem, reuse))
    probes = () if informative or not measure or options.drift_nets <= 0 else \
        tuple(drift.pick_probes(profile.calibration, options.drift_nets))
    return ExportPlan(backend=backend, precision=measure_precision, engine_precision=precision, threads=threads,
                      batch=batch, clock=runtime.get("clock") or "wall",
                      protocol=profile_protocol(profile, options.quick),
                      measure=measure, informative=informative, engines=engines, int8_scheme=int8_scheme,
                      nets=tuple(nets), probes=probes, budget_ms=run.budget.get("max_latency_ms"),
                      mismatch=tuple(mismatch), notes=tuple(notes))


# ------------------------------------------------------------------ the steps


@dataclass(kw_only=True)
class _Export:
    """An export under way: its plan, what it read (run, profile, trained nets, INT8 calibration images), the
    staging folder it builds in, and its notes, which grow as the steps go."""

    run: Run
    space: object
    profile: Profile
    profile_path: Path | None
    options: ExportOptions
    plan: ExportPlan
    out_dir: Path
    notes: list[str]
    trained: dict | None = None  # RUN/train/results.json: the run's nets trained on the user's data
    calibration: object | None = None  # int8.CalibrationData: what the INT8 files are calibrated on (int8 only)
    _engine_builder: object | None = None

    def engine_builder(self):
        """The TensorRT backend that builds the engines here (plan ``engines == "here"``)."""
        if self._engine_builder is None:
            self._engine_builder = get_backend("tensorrt", precision=self.plan.engine_precision,
                                               threads=self.plan.threads)
        return self._engine_builder


@dataclass
class _Timing:
    """A net waiting to be timed: its report entry (None for a drift probe), files, module and inputs."""

    name: str
    entry: dict | None
    onnx_path: Path
    model: object
    inputs: dict
    probe: dict | None = None  # the profile's calibration record this net re-times
    fp32_path: Path | None = None  # int8: the FP32 file the INT8 one was made from, timed beside it

    def graphs(self) -> dict[str, Graph]:
        """What a timer times: the file, and right after it the FP32 file it was quantized from."""
        arch = (self.entry or self.probe)["arch"]
        out = {self.name: Graph(self.model, self.inputs, arch=arch, onnx=self.onnx_path)}
        if self.fp32_path is not None:
            out[f"{self.name}.fp32"] = Graph(self.model, self.inputs, arch=arch, onnx=self.fp32_path)
        return out


def command_timings_dir(run_path: Path) -> Path:
    """Where a command device's timings of an export are logged until the export is complete."""
    return Path(run_path) / ".export.command"


def _one_export_at_a_time(export):
    """``export`` holding a claim on ``RUN_DIR/export`` (``files.claim``): two exports of one run never build
    side by side, and what a killed export left beside the folder is removed by the next one."""
    @wraps(export)
    def claimed(run_dir, options, progress=None):
        if not Path(run_dir).is_dir():  # export says why; a claim would create the folder
            return export(run_dir, options, progress)
        with claim(Path(run_dir) / "export", "export folder"):
            return export(run_dir, options, progress)

    return claimed


@_one_export_at_a_time
def export_run(run_dir: str | Path, options: ExportOptions,
               progress: Callable[[str], None] | None = None) -> dict:
    """Export, check and measure the run's top nets; returns the report (also written to disk)."""
    say = progress or (lambda message: None)
    run = load_run(run_dir)
    space = get_space(run.space)
    spec = options.profile or profile_spec_for(run)
    profile, profile_path = locate_profile(
        spec, space=run.space, hint=f"{run.path} is a run of space {run.space}: pass a --profile of space {run.space}")
    reach = reach_for_profile(profile, options.host, stand_in=True)
    # the device runner or a command is asked now what the device is; a backend here is made once there is a net
    timer = None if reach.kind == "here" else _timer(run, profile, options, options.precision)
    detected = _timing_machine(reach, timer, options, say)
    precision, threads, _ = _settings(profile, options)
    plan = plan_export(run, space, profile, options, reach=reach, detected=detected,
                       tensorrt_missing=tensorrt_missing_here(detected, precision, threads)
                       if wants_engines_here(options, reach) else None,
                       previous=_existing_files(run.path / "export") if options.measure else {})
    ex = _Export(run=run, space=space, profile=profile, profile_path=profile_path,
                 options=options, plan=plan, out_dir=staging_dir(run.path / "export", "export folder"),
                 notes=list(plan.notes), trained=trained_results(run.path) if options.weights is None else None)
    _read_calibration(ex)
    predicted, predicted_by = _predicted_ms(space, profile, run, [n.item for n in plan.nets])
    report = _report(ex, spec, detected, predicted_by)
    try:
        timings = _build_all(ex, report, predicted, say)
        if timings:
            _measure(ex, timer or _timer(run, profile, options, plan.precision), timings, report, say)
    except BaseException:  # a refusal, Ctrl-C or a crash: nothing half-made is left behind, export/ is untouched
        shutil.rmtree(ex.out_dir, ignore_errors=True)
        raise
    _conclude(ex, report)
    replace_dir(ex.out_dir, run.path / "export", "export folder")
    if reach.kind == "command":  # complete: the next `export --measure` times the nets again
        shutil.rmtree(command_timings_dir(run.path), ignore_errors=True)
    report["path"] = str(run.path / "export" / "report.json")
    return report


def _timer(run: Run, profile: Profile, options: ExportOptions, precision: str | None = None):
    """The profile's timer (``timers.timer_for_profile``), its work keyed by the run."""
    return timer_for_profile(profile, host=options.host, ssh=options.ssh, quick=options.quick, precision=precision,
                             key=f"export:{Path(run.path).resolve()}", cache_dir=command_timings_dir(run.path),
                             stand_in=True)


def _timing_machine(reach: Reach, timer, options: ExportOptions, say) -> dict:
    """The facts of the machine that times: the host's or the command's, told by its timer, else this machine's."""
    if options.host:
        say(f"checking {options.host}")
        return timer.facts()
    return timer.facts() if reach.kind == "command" else detect_device()


def _read_calibration(ex: _Export) -> None:
    """int8: the images the INT8 files are calibrated on (the trained nets' training split, or the task's)."""
    if ex.plan.int8_scheme is None:
        return
    o = ex.options
    ex.calibration = calibration_data(ex.space, ex.run, ex.trained, o.calib_images, o.calib_data, o.seed)
    ex.notes.append(f"INT8 files: Q/DQ ONNX ({ex.plan.int8_scheme} scheme) quantized by ONNX Runtime's static "
                    f"quantization, calibrated on {ex.calibration.described}; each *.fp32.onnx beside it is the "
                    "file it was made from, timed with it"
                    + ("; TensorRT builds both with --int8 --fp16, so there the comparison is INT8 against FP16"
                       if ex.plan.int8_scheme == "tensorrt" else ""))


def _report(ex: _Export, spec: str, detected: dict, predicted_by: str) -> dict:
    """The report as it stands before any net is built (``complete`` false)."""
    run, profile, options, plan = ex.run, ex.profile, ex.options, ex.plan
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run.path), "space": run.space, "dataset": run.dataset,
        "profile": {"name": profile.name, "spec": spec, "sha256": profile.sha256, "reference": profile.reference,
                    "run_profile_sha256": run.profile_sha256},
        "budget": run.budget,
        "settings": {**{k: v for k, v in asdict(options).items() if k != "formats"}, "formats": list(options.formats),
                     "precision": plan.precision, "engine_precision": plan.engine_precision, "batch": plan.batch,
                     "threads": plan.threads, "clock": plan.clock, "measured": plan.measure,
                     "measured_for_information": plan.informative,
                     "timing_protocol": plan.protocol.to_dict() if plan.measure else None,
                     "predicted_by": predicted_by,
                     "int8": None if ex.calibration is None else {"scheme": plan.int8_scheme,
                                                                  **ex.calibration.to_dict()}},
        "environment": environment(plan.backend, plan.precision, plan.threads, plan.batch, detected, profile,
                                   list(plan.mismatch), plan.engines is not None) | {"host": options.host},
        "nets": [], "notes": ex.notes, "feedback": None, "drift": None,
    }


def _build_all(ex: _Export, report: dict, predicted: list, say) -> list[_Timing]:
    """Every net's files built and checked, the report written after each; the nets to time."""
    timings = []
    for position, (net, pred) in enumerate(zip(ex.plan.nets, predicted), start=1):
        say(f"net {position}/{len(ex.plan.nets)}: {net.item['arch']}")
        entry, timing = _export_one(ex, net, pred)
        report["nets"].append(entry)
        if timing is not None:
            timings.append(timing)
        write_report(ex.out_dir / "report.json", report)
    return timings


def _conclude(ex: _Export, report: dict) -> None:
    """The closing notes, the feedback, the summary and the file list, written as the complete report."""
    run, options = ex.run, ex.options
    untrained = [n["rank"] for n in report["nets"] if n["weights"] == "random (seeded)"]
    if untrained:
        which = "every net" if len(untrained) == len(report["nets"]) else f"net(s) {', '.join(map(str, untrained))}"
        ex.notes.append(f"{which} exported with seeded random weights (untrained): right for timing and numerics, "
                        f"not for deployment; train them first (`pomonag-edge train {run.path} --data DIR`) or pass "
                        "--weights")
    other = next((n for n in report["nets"] if n.get("accuracy_comparable") is False), None)
    if other is not None:
        ex.notes.append(f"predicted accuracies are for {other['predicted']['accuracy_for']}, measured ones for "
                        f"{other['accuracy_measured_task']} (the nets were trained on another task than the run was "
                        "generated for): the two are not compared")
    if ex.plan.measure and options.feedback and not ex.plan.mismatch and not ex.plan.informative:
        report["feedback"] = _feedback(ex, report["nets"])
    report["summary"] = summarize(report["nets"], options.allow_over_budget, report["drift"])
    report["complete"] = True
    _relocate(report, ex.out_dir, run.path / "export")
    report["files"] = sorted({p.name for p in ex.out_dir.iterdir()} | {"report.json"})
    write_report(ex.out_dir / "report.json", report)


def _relocate(report: dict, staged: Path, final: Path) -> None:
    """Paths recorded while building in the staging folder, as they will be once it is put in place."""
    for net in report["nets"]:
        for info in net["files"].values():
            if isinstance(info, dict) and isinstance(info.get("path"), str):
                p = Path(info["path"])
                if p.parent == staged:
                    info["path"] = str(final / p.name)


def _existing_files(out_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in out_dir.glob("*.onnx")} if out_dir.is_dir() else {}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _export_one(ex: _Export, net: NetPlan, predicted_ms: float | None) -> tuple[dict, _Timing | None]:
    """One net's files, built (or reused) and checked; its entry, and what to time (None: judged already)."""
    space, options, plan, stem = ex.space, ex.options, ex.plan, net.stem
    item = net.item
    arch = space.parse(item["arch"])
    dataset = ex.run.space_dataset
    weights, trained = (load_weights(options.weights, arch), None) if options.weights else (None, None)
    if ex.trained is not None:
        trained = next((n for n in ex.trained["nets"] if n["arch"] == str(arch)), None)
    if trained is not None:  # the net trained on the user's data: its weights, its classes, its accuracy
        t = ex.trained["task"]
        dataset = Task(t["name"], int(t["input_hw"]), int(t["num_classes"]))
        weights = load_trained_state(trained["checkpoint"], ex.run.path)
    entry = {"rank": net.rank, "arch": str(arch), "params": space.params(arch, dataset),
             "macs": space.macs(arch, dataset), "predicted": {"latency_ms": predicted_ms,
                                                              "accuracy": item.get("accuracy")},
             "weights": "trained" if trained else ("--weights" if options.weights else "random (seeded)"),
             "files": {}, "checks": [], "measured": {}, "timing_s": {}, "status": None, "reasons": []}
    if trained is not None:
        entry["accuracy_measured"] = trained["accuracy_measured"]
        entry["accuracy_measured_on"] = f"{trained['split']} split ({trained['n_val']} images)"
        entry["accuracy_measured_task"] = ex.trained["task"]["name"]
        # the run predicted another task's accuracy (a shipped dataset, or other data): never set side by side
        entry["predicted"]["accuracy_for"] = ex.trained.get("predicted_for", ex.run.dataset)
        entry["accuracy_comparable"] = bool(ex.trained.get("same_task", True))
    at_generate = {k: item.get(f) for k, f in (("latency_ms", "latency_ms_measured"), ("accuracy", "accuracy_measured"))
                   if item.get(f) is not None}
    if at_generate:  # what generate's closed loop measured for this net (its rank used these)
        entry["measured_by_generate"] = at_generate
    input_shape = space.input_shape(arch, dataset, batch=plan.batch)
    entry["preprocessing"] = preprocessing(input_shape, ex.trained if trained is not None else None)
    if options.dynamic_batch:
        entry["preprocessing"]["input_shape"][0] = "batch"
    batches = sorted({1, 2, plan.batch}) if options.dynamic_batch else [plan.batch]
    onnx_path = ex.out_dir / f"{stem}.onnx"  # the file to deploy (int8: the Q/DQ one)
    int8 = plan.int8_scheme is not None
    fp32_path = onnx_path.with_name(f"{stem}.fp32.onnx") if int8 else onnx_path
    if net.reuse:  # --measure re-times the previous export's file: it moves into this export, labelled as reused
        previous = ex.run.path / "export"
        _link_or_copy(previous / f"{stem}.onnx", onnx_path)
        if int8:
            _link_or_copy(previous / f"{stem}.fp32.onnx", fp32_path)

    t0 = time.perf_counter()
    model = build_model(space, arch, dataset, weights, seed=options.seed)
    try:
        if not net.reuse:
            export_onnx(model, input_shape, fp32_path, opset=options.opset, dynamic_batch=options.dynamic_batch,
                        metadata={"arch": str(arch), "weights": entry["weights"], **entry["preprocessing"]})
    except UserError:
        raise
    except Exception as e:  # an exporter or checker failure fails this net, with its message, not the run
        entry["reasons"].append(f"ONNX export failed: {type(e).__name__}: {str(e)[:300]}")
        _judge(entry, plan, ex.notes)
        return entry, None
    entry["files"]["onnx"] = onnx_summary(fp32_path) | {"reused": net.reuse}
    entry["timing_s"]["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run, names = onnxruntime_runner(fp32_path)
    check = check_outputs(model, run, names, input_shape, batches,
                          tolerance_for("onnxruntime", "fp32"), seed=options.seed, runtime="onnxruntime")
    entry["checks"].append(check.to_dict())
    entry["timing_s"]["check"] = time.perf_counter() - t0
    if int8 and check.passed:
        _quantize_one(ex, entry, stem, fp32_path, onnx_path, input_shape, net.reuse)

    timing_inputs = {INPUT_NAME: random_inputs(input_shape, options.seed)}
    if plan.engines == "here" and check.passed:
        _engine_one(ex, entry, model, onnx_path, input_shape, timing_inputs)

    if plan.measure and all(c["passed"] for c in entry["checks"]) and not entry["reasons"]:
        return entry, _Timing(stem, entry, onnx_path, model, timing_inputs, fp32_path=fp32_path if int8 else None)
    _judge(entry, plan, ex.notes)
    return entry, None


def _engine_one(ex: _Export, entry: dict, model, onnx_path: Path, input_shape, inputs: dict) -> None:
    """The TensorRT engine of the net's file, built here beside it and checked against PyTorch."""
    t0 = time.perf_counter()
    engine_path = onnx_path.with_suffix(".engine")
    try:
        trt = ex.engine_builder().load(str(onnx_path), inputs=inputs)
        trt.save_engine(engine_path)
    except UserError:
        raise
    except Exception as e:
        entry["reasons"].append(f"TensorRT engine build failed: {type(e).__name__}: {str(e)[:300]}")
    else:
        entry["files"]["engine"] = {"path": str(engine_path), "bytes": engine_path.stat().st_size,
                                    "precision": ex.plan.engine_precision}
        trt_check = check_outputs(model, trt.run, trt.output_names, input_shape, [ex.plan.batch],
                                  tolerance_for("tensorrt", ex.plan.engine_precision), seed=ex.options.seed,
                                  runtime="tensorrt")
        entry["checks"].append(trt_check.to_dict())
    entry["timing_s"]["engine"] = time.perf_counter() - t0


def _quantize_one(ex: _Export, entry: dict, stem: str, fp32_path: Path, onnx_path: Path, input_shape, reuse: bool):
    """The FP32 file -> the INT8 file (``hardware.quantize``), checked against FP32; accuracies when trained."""
    scheme = ex.plan.int8_scheme
    t0 = time.perf_counter()
    if not reuse:
        data = quantize_onnx(fp32_path.read_bytes(), feeds(ex.calibration, input_shape, ex.options.seed),
                             scheme, f"net {entry['rank']} ({stem})")
        atomic_write_bytes(onnx_path, data)
    ops = graph_ops(onnx_path.read_bytes())
    entry["files"]["onnx_fp32"] = entry["files"]["onnx"] | {"precision": "fp32"}
    entry["files"]["onnx"] = onnx_summary(onnx_path) | {
        "reused": reuse, "precision": "int8", "scheme": scheme, "calibration": ex.calibration.source,
        "quantize_nodes": ops.get("QuantizeLinear", 0), "dequantize_nodes": ops.get("DequantizeLinear", 0)}
    entry["timing_s"]["quantize"] = time.perf_counter() - t0
    check, accuracy = check_int8(fp32_path, onnx_path, ex.calibration, input_shape, ex.options.dynamic_batch,
                                 ex.options.seed)
    entry["checks"].append(check.to_dict())
    if accuracy:  # the INT8 file's accuracy, and the FP32 file's on the same validation images
        entry["accuracy_measured"] = accuracy["int8"]
        entry["accuracy_measured_fp32"] = accuracy["fp32"]
        entry["accuracy_drop_points"] = round(accuracy["fp32"] - accuracy["int8"], 4)
        entry["accuracy_measured_on"] = f"validation split ({accuracy['images']} images), ONNX Runtime"


def _drift_probes(ex: _Export) -> list[_Timing]:
    """The plan's calibration nets of the profile, exported like the others, to be timed again beside them."""
    space, options, plan = ex.space, ex.options, ex.plan
    probes = []
    for record in plan.probes:
        arch = space.parse(record["arch"])
        stem = "drift" + file_stem(0, arch, space)[2:]  # drift_nb201_3942
        path = ex.out_dir / "drift" / f"{stem}.onnx"
        shape = space.input_shape(arch, ex.run.space_dataset, batch=plan.batch)
        model = build_model(space, arch, ex.run.space_dataset, None, seed=options.seed)
        previous = ex.run.path / "export" / "drift" / path.name  # the same net, exported the same way before
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if previous.is_file():
                _link_or_copy(previous, path)
            else:
                export_onnx(model, shape, path, opset=options.opset)
                if plan.int8_scheme is not None:  # timed as the profile timed it: INT8, random calibration
                    atomic_write_bytes(path, quantize_onnx(path.read_bytes(), random_calibration(
                        {INPUT_NAME: random_inputs(shape, options.seed)}), plan.int8_scheme, stem))
        probes.append(_Timing(stem, None, path, model, {INPUT_NAME: random_inputs(shape, options.seed)},
                              probe=record))
    return probes


def _interleave(nets: list, probes: list) -> list:
    """Probes spread evenly among the nets (one first, then one every len(nets)/len(probes) nets)."""
    out, every = [], max(1.0, len(nets) / max(1, len(probes)))
    pending = list(probes)
    for i, net in enumerate(nets):
        while pending and len(probes) - len(pending) <= i / every:
            out.append(pending.pop(0))
        out.append(net)
    return out + pending


def _measure(ex: _Export, timer, timings: list[_Timing], report: dict, say) -> None:
    """Time the nets and the drift probes, interleaved, with the profile's timer (engines built here also with
    TensorRT); record what was measured, what failed and the engines brought back; judge every timed net."""
    plan = ex.plan
    probes = _drift_probes(ex)
    schedule = _interleave(timings, probes)
    graphs = {name: g for t in schedule for name, g in t.graphs().items()}
    timed = timer.time_batch(graphs, progress=lambda _, d, n, **__: say(f"timing on {timer.where}: {d}/{n}"),
                             engine_dir=ex.out_dir if plan.engines == "device" else None,
                             keep_engines={t.name for t in timings})
    beside = {}
    if "tensorrt" in plan.runtimes[1:]:  # engines built here: timed by the TensorRT backend that built them
        beside["tensorrt"] = BackendTimer(ex.engine_builder(), plan.protocol).time_batch(
            {t.name: graphs[t.name] for t in timings})
    for t in schedule:
        m = timed.measurements.get(t.name)
        if t.entry is None:
            t.probe = {**t.probe, "now": m.to_dict() if m else None}
            continue
        names = [t.name, f"{t.name}.fp32"]
        t.entry["timing_s"]["measure"] = sum(timed.seconds.get(n, 0.0) for n in names) \
            + sum(b.seconds[t.name] for b in beside.values())
        if m is None:
            t.entry["reasons"].append(f"timing on {timer.where} failed: {timed.errors.get(t.name)}")
            continue
        t.entry["measured"][plan.backend] = m.to_dict() | timed.details.get(t.name, {})
        for name, b in beside.items():
            t.entry["measured"][name] = b.measurements[t.name].to_dict()
        if timed.measurements.get(f"{t.name}.fp32") is not None:  # the FP32 file, timed with the same runtime
            t.entry["measured_fp32"] = timed.measurements[f"{t.name}.fp32"].to_dict()
        if t.name in timed.engines:
            path = timed.engines[t.name]
            t.entry["files"]["engine"] = {"path": str(path), "bytes": path.stat().st_size,
                                          "precision": plan.engine_precision, "built_on": timer.where}
    note = timer.measured_note(len(probes))
    if note:
        ex.notes.append(note)
    if timed.engines:
        ex.notes.append("TensorRT engines were built by trtexec on the device and brought back beside the ONNX "
                        "files; trtexec does not return outputs, so only the ONNX files' numerics were checked")
    factor = report["drift"] = _drift(probes, plan.backend)
    for t in timings:
        _judge(t.entry, plan, ex.notes, (factor or {}).get("factor"))
    write_report(ex.out_dir / "report.json", report)


def _drift(probes: list[_Timing], backend: str) -> dict | None:
    """The drift factor (median now / then) and the probes it came from; None without probes."""
    rows = [{"arch": p.probe["arch"], "then_ms": p.probe["latency_ms"],
             "now_ms": (p.probe.get("now") or {}).get("median_ms")} for p in probes]
    if not rows:
        return None
    factor = drift.drift_factor([r["now_ms"] for r in rows], [r["then_ms"] for r in rows])
    return {"factor": factor, "nets": rows, "runtime": backend,
            "method": "median of now / at profiling time over the profile's own calibration nets, timed "
                      "interleaved with the exported nets; corrected ratio = (measured / predicted) / factor"}


def _judge(entry: dict, plan: ExportPlan, notes: list[str], drift_factor: float | None = None) -> None:
    """Status: failed (a check or build failed), over_budget, passed (measured within budget), checked
    (not measured, or measured here for a reference profile: this machine's time is not the target's).
    The budget test uses the raw measurement; ``drift_factor`` only adds the drift-corrected agreement."""
    for c in entry["checks"]:
        entry["reasons"].extend(f"{c['runtime']}: {f}" for f in c["failures"])
    m = entry["measured"].get(plan.backend)
    fp32 = entry.get("measured_fp32")
    if m and fp32:
        entry["int8_speedup"] = fp32["median_ms"] / m["median_ms"] if m["median_ms"] > 0 else None
        if entry["int8_speedup"] is not None and entry["int8_speedup"] <= 1.0:
            notes.append(f"net {entry['rank']}: INT8 is not faster than FP32 on this device ({m['median_ms']:.3f} "
                         f"ms vs {fp32['median_ms']:.3f} ms)")
    pred = entry["predicted"]["latency_ms"]
    if m:
        entry["noisy"] = m["cv"] > plan.protocol.max_cv
    if m and plan.informative:
        entry["status"] = "failed" if entry["reasons"] else "checked"  # this machine's time, not the target's
        entry["budget_ms"] = plan.budget_ms
        return
    if m and pred:
        c = drift.compare(m["median_ms"], pred, drift_factor)
        entry["latency_error_pct"] = c["error_pct_raw"]
        entry["within_10pct"] = c["within_10pct_raw"]
        entry["measured_over_predicted"] = {"raw": c["ratio_raw"], "drift_corrected": c.get("ratio_corrected")}
        if drift_factor:
            entry["latency_error_pct_corrected"] = c["error_pct_corrected"]
            entry["within_10pct_corrected"] = c["within_10pct_corrected"]
    budget = plan.budget_ms
    entry["budget_ms"] = budget
    if entry["reasons"]:
        entry["status"] = "failed"
    elif m is None:
        entry["status"] = "checked"
    elif budget is not None and m["median_ms"] > budget:
        entry["status"] = "over_budget"
        entry["reasons"].append(f"measured median {m['median_ms']:.3f} ms > budget {budget:.3f} ms")
    else:
        entry["status"] = "passed"


def summarize(nets: list[dict], allow_over_budget: bool, drift: dict | None = None) -> dict:
    """Counts by status; agreement with the prediction raw (``within_10pct``) and drift-corrected."""
    counts = {s: sum(n["status"] == s for n in nets) for s in ("passed", "checked", "over_budget", "failed")}
    bad = counts["failed"] + (0 if allow_over_budget else counts["over_budget"])
    errors = [n["latency_error_pct"] for n in nets if n.get("latency_error_pct") is not None]
    corrected = [n["within_10pct_corrected"] for n in nets if n.get("within_10pct_corrected") is not None]
    speedups = sorted(n["int8_speedup"] for n in nets if n.get("int8_speedup"))
    int8 = {"int8_speedup_median": float(np.median(speedups)), "int8_speedup_range": [speedups[0], speedups[-1]],
            "int8_not_faster": sum(x <= 1.0 for x in speedups)} if speedups else {}
    drops = [n["accuracy_drop_points"] for n in nets if n.get("accuracy_drop_points") is not None]
    if drops:
        int8["int8_accuracy_drop_points_max"] = max(drops)
    return {**counts, **int8, "nets": len(nets), "ok": bad == 0, "noisy": sum(bool(n.get("noisy")) for n in nets),
            "within_10pct": sum(abs(e) <= 100 * BAND for e in errors), "compared": len(errors),
            "within_10pct_corrected": sum(corrected) if corrected else None,
            "drift_factor": (drift or {}).get("factor")}


def _feedback(ex: _Export, nets: list[dict]) -> dict | None:
    """Append measured latencies to the profile's calibration set and refit its latency model."""
    backend = ex.plan.backend
    if ex.profile_path is None:
        return {"applied": False, "added": 0, "skipped_noisy": 0,
                "why": "reference profile: published measurements are not extended"}
    measured = [n for n in nets if backend in n["measured"] and n["status"] != "failed"]
    rows = [(n["arch"], n["measured"][backend]) for n in measured if not n.get("noisy")]
    noisy = len(measured) - len(rows)  # a noisy timing would teach the latency model the machine's load
    if not rows:
        return {"applied": False, "added": 0, "skipped_noisy": noisy,
                "why": f"all {noisy} timings were noisy" if noisy else "nothing measured"}
    parent = load_profile(ex.profile_path)  # fresh: never build on a stale copy
    timings = [{"arch": arch, "latency_ms": m["median_ms"], **m, "source": "export",
                "protocol": ex.plan.protocol.name} for arch, m in rows]
    refit, why = False, None
    try:
        profile, refit = with_timings(ex.space, parent, timings), True
    except (ImportError, UserError) as e:
        profile, why = with_timings(ex.space, parent, timings, refit=False), f"latency model not refit: {e}"
    try:  # a new revision: the profile the run was generated with stays as it was
        path = profile.save_revision(ex.profile_path, parent)
    except UserError as e:
        return {"applied": False, "added": 0, "skipped_noisy": noisy, "why": f"revision not written: {e}"}
    return {"applied": True, "profile": str(path), "parent": str(ex.profile_path), "added": len(rows),
            "skipped_noisy": noisy,
            "calibration_size": len(profile.calibration), "refit": refit, "why": why}
