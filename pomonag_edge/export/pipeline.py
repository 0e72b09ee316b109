"""``export_run``: the best nets of a run -> checked ONNX (and TensorRT) files, re-measured on the target.

Per net, in order: build (seeded random init or ``--weights``), export ONNX, check ONNX Runtime outputs
against PyTorch, optionally build and check a TensorRT engine, then time with the profile's backend and
timing protocol and test the budget. Every step's outcome lands in ``RUN_DIR/export/report.json``.

An export is built in a hidden folder beside ``RUN_DIR/export`` and then replaces ``export/`` whole: the folder
only ever holds the files of one export, listed in its report's ``files``. An interrupted export removes its
hidden folder and leaves ``export/`` as it was; one export of a run at a time (``files.claim``), and what a
killed one left is removed by the next. Feedback goes into a new profile revision.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..files import claim, replace_dir, staging_dir
from ..hardware.backends import PRECISIONS
from ..hardware.drift import BAND
from ..hardware.runner import BACKEND_RUNTIMES
from ..profile import Profile, resolve_profile
from ..runs import Run, load_run, profile_spec_for
from ..spaces import get_space
from ..training import Task, load_trained_state, trained_results
from .int8 import CALIB_IMAGES
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


# detected facts that identify the hardware a latency belongs to (software versions are recorded, not compared);
# a device that is a command is identified by its command
IDENTITY_FACTS = ("cpu", "gpu", "jetson_model", "power_mode", "command")


def machine_mismatch(profile: Profile, detected: dict) -> list[str]:
    """Why this machine is not the profile's device (empty when it is)."""
    if profile.reference:
        return ["it is a reference profile: published measurements of another device"]
    recorded = [k for k in IDENTITY_FACTS if profile.device.get(k)]
    if not recorded:
        return [f"profile {profile.name!r} records no detected device facts (made from timings taken elsewhere?)"]
    return [f"{k}: profile {profile.device.get(k)!r}, here {detected.get(k)!r}" for k in IDENTITY_FACTS
            if profile.device.get(k) != detected.get(k)]


def _backend(name: str, precision: str, threads: int, clock: str = "wall"):
    from ..hardware import get_backend

    return get_backend(name, precision=precision, threads=threads, clock=clock)


def _reads_onnx(name: str) -> bool:
    """torch-* backends time the PyTorch module itself (the profile was measured that way)."""
    from ..hardware.backends import BACKENDS

    return BACKENDS[name].reads_onnx if name in BACKENDS else True


def _protocol(profile: Profile, quick: bool):
    from ..hardware.timers import profile_protocol

    return profile_protocol(profile, quick)


def _predicted_ms(space, profile: Profile, run: Run, items: list[dict]) -> tuple[list[float | None], str]:
    """The run's own predictions when the profile is unchanged, else the profile's latency model."""
    if profile.sha256 == run.profile_sha256 or (run.profile_sha256 is None and profile.name == run.profile_spec):
        return [i.get("latency_ms") for i in items], "run"
    try:
        from ..predictors import latency_model_for  # dispatches on the space (nb201 / mbv3)

        archs = [space.parse(i["arch"]) for i in items]
        return [float(v) for v in latency_model_for(space, profile).predict_ms(archs)], "profile latency model"
    except (ImportError, UserError) as e:
        return [i.get("latency_ms") for i in items], f"run (profile model unavailable: {e})"


# ------------------------------------------------------------------ the pipeline


@dataclass
class _Context:
    run: Run
    space: object
    profile: Profile
    profile_path: Path | None
    options: ExportOptions
    out_dir: Path
    backend_name: str
    precision: str  # of the profile's runtime
    engine_precision: str  # of TensorRT engines
    threads: int
    batch: int
    measure: bool
    tensorrt: bool
    notes: list[str] = field(default_factory=list)
    clock: str = "wall"  # the profile's: a net is re-timed with the clock its prediction was fitted on
    informative: bool = False  # timings of this machine for a reference profile: not judged
    trained: dict | None = None  # RUN/train/results.json: the run's nets trained on the user's data
    timer: object | None = None  # remote.DeviceTimer under --host: every net is timed there
    command: object | None = None  # timers.CommandTimer: a device that is a command times every net
    calibration: object | None = None  # int8.CalibrationData: what the INT8 files are calibrated on (int8 only)
    int8_scheme: str | None = None  # quantize.scheme_for(the profile's runtime), int8 only
    _runtimes: dict = field(default_factory=dict)

    def runtime(self, name: str):
        if name not in self._runtimes:
            precision = self.engine_precision if name == "tensorrt" else self.precision
            clock = self.clock if name == self.backend_name else "wall"
            self._runtimes[name] = _backend(name, precision, self.threads, clock)
        return self._runtimes[name]


@dataclass
class _Timing:
    """A net waiting to be timed: its report entry (None for a drift probe), files, module and inputs."""

    name: str
    entry: dict | None
    onnx_path: Path
    model: object
    inputs: dict
    runnables: dict
    probe: dict | None = None  # the profile's calibration record this net re-times
    fp32_path: Path | None = None  # int8: the FP32 file the INT8 one was made from, timed beside it


def command_timings_dir(run_path: Path) -> Path:
    """Where a command device's timings of an export are logged until the export is complete."""
    return Path(run_path) / ".export.command"


def _runner_runtime(backend_name: str) -> str:
    """The device runner's runtime for a profile's backend (onnxruntime for one the runner has no runtime of)."""
    return BACKEND_RUNTIMES.get(backend_name, "onnxruntime")


def _one_export_at_a_time(export):
    """``export`` holding a claim on ``RUN_DIR/export`` (``files.claim``): two exports of one run never build
    side by side, and what a killed export left beside the folder is removed by the next one."""
    from functools import wraps

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
    profile = resolve_profile(spec, space=run.space,
                              hint=f"{run.path} is a run of space {run.space}: pass a --profile of space {run.space}")
    profile_path = None if profile.reference else Path(spec)

    runtime = profile.runtime or {}
    backend_name = runtime.get("backend") or "onnxruntime"
    precision = options.precision or runtime.get("precision") or "fp32"
    threads = int(runtime.get("threads") or 1)
    batch = int(runtime.get("batch") or 1)

    from ..hardware import BACKENDS, detect_device

    from ..hardware.devices import command_descriptor

    descriptor = command_descriptor(profile)
    command = None  # a device that is a command: every net is timed by calling it
    if descriptor is not None:
        from ..hardware.timers import timer_for_profile

        backend_name = "command"
        command = timer_for_profile(profile, host=options.host, quick=options.quick, precision=precision,
                                    key=f"export:{Path(run.path).resolve()}", cache_dir=command_timings_dir(run.path))
    elif backend_name not in BACKENDS:  # a reference profile's "published table": time with the default runtime
        backend_name = "onnxruntime"
    timer = None  # the device runner: on --host, or here for trtexec (it has no in-process backend)
    if command is None and (options.host or backend_name == "trtexec"):
        from ..hardware.remote import DeviceTimer, parse_host

        host = parse_host(options.host) if options.host else None
        timer = DeviceTimer(host, _protocol(profile, options.quick), runtime=_runner_runtime(backend_name),
                            precision=precision, threads=threads, clock=runtime.get("clock") or "wall",
                            options=options.ssh, key=f"export:{Path(run.path).resolve()}")
    if options.host:
        say(f"checking {options.host}")
        detected = timer.facts()
    elif command is not None:
        detected = command.facts()
    else:
        detected = detect_device()
    mismatch = machine_mismatch(profile, detected)
    notes: list[str] = []
    measure = options.measure if options.measure is not None else not mismatch
    informative = False  # measured on this machine, but it is not the profile's device: no budget test
    if mismatch and options.measure is None and profile.reference:
        # a reference profile is published timings of a device that is never here: what this machine can add
        # is its own latency, for information (the ONNX file runs here), never judged against the budget
        measure = informative = True
        notes.append(f"profile {profile.name!r} is a reference profile (published timings of another device): "
                     f"latency measured on this machine with {backend_name} for information only, not tested "
                     "against the budget nor compared with the prediction")
    elif mismatch and options.measure is None:
        notes.append(f"this machine differs from profile {profile.name!r} ({'; '.join(mismatch)}): numerics checked, "
                     f"latency not measured; run `pomonag-edge export {run.path} --measure` on the target")
    elif mismatch and options.measure:
        notes.append(f"--measure on a machine that differs from profile {profile.name!r} ({'; '.join(mismatch)}): "
                     "the latencies are this machine's and are not fed back into the profile")

    tensorrt = "tensorrt" in options.formats or backend_name == "tensorrt"
    if command is not None:
        tensorrt = False
        if "tensorrt" in options.formats:
            notes.append(f"the profile's device is a command ({descriptor.name}): no TensorRT engines built")
    elif timer is not None:  # engines are built by trtexec on the device while timing, and brought back
        tensorrt = timer.runtime == "trtexec"
        if "tensorrt" in options.formats and not tensorrt:
            raise UserError(f"--format tensorrt: the profile's runtime on {options.host or 'this machine'} is "
                            f"{timer.runtime}, so no TensorRT engines can be built there: export with a TensorRT "
                            "profile of that device, or drop --format tensorrt")
    elif tensorrt:
        why = None if (detected.get("gpu") or detected.get("jetson")) else "no NVIDIA GPU here"
        if why is None:
            try:
                _backend("tensorrt", precision, threads)
            except UserError as e:
                why = str(e)
        if why is not None and "tensorrt" in options.formats:  # engines asked for cannot be built: nothing done
            raise UserError(f"--format tensorrt: {why}, so no TensorRT engines can be built: run the export on the "
                            "target, or with --host USER@BOARD to build them there; or drop --format tensorrt")
        if why is not None:
            tensorrt = False
            notes.append(f"{why}: exported ONNX only; run `pomonag-edge export --format tensorrt` on the target "
                         "to build and time TensorRT engines")
            if backend_name == "tensorrt":
                measure = False
    profile_precision = runtime.get("precision") or "fp32"
    if "int8" in (precision, profile_precision) and precision != profile_precision and not profile.reference:
        raise UserError(f"--precision {precision}, but profile {profile.name!r} was measured at {profile_precision}: "
                        f"its latency model predicts {profile_precision} nets; profile the device with --precision "
                        f"{precision} and generate against that profile (its runs export {precision})")
    measure_precision = precision
    if precision == "fp16" and command is None and timer is None and not BACKENDS[backend_name].gpu:
        if "tensorrt" not in options.formats:
            raise UserError(f"--precision fp16 needs a GPU runtime and the profile's is {backend_name} (CPU): use "
                            "fp32, add --format tensorrt for fp16 engines, or use a GPU profile on the target")
        measure_precision = "fp32"  # fp16 is for the engines; the CPU runtime stays fp32

    if tensorrt and options.dynamic_batch:
        raise UserError("--dynamic-batch cannot be used with TensorRT engines here (they are built for the "
                        f"profile's fixed batch {batch}): drop one of the two")
    candidates = [c for c in run.candidates if c.get("feasible", True) or options.allow_over_budget][: options.top]
    if not candidates:
        raise UserError(f"{run.path / 'pareto.json'} holds no net within budget (pass --allow-over-budget to export "
                        "infeasible ones)")

    final_dir = run.path / "export"
    existing = _existing_files(final_dir) if options.measure else {}
    ctx = _Context(run, space, profile, profile_path, options, staging_dir(final_dir, "export folder"), backend_name,
                   measure_precision,
                   precision, threads, batch, measure, tensorrt, notes, clock=runtime.get("clock") or "wall",
                   informative=informative, timer=timer, command=command)
    if options.weights is None:
        ctx.trained = trained_results(run.path)
    if precision == "int8" and command is not None:  # the device's toolchain quantizes: it gets the FP32 files
        notes.append(f"int8: device {command.descriptor.name}'s command is given the FP32 ONNX files with "
                     "{precision} = int8 and quantizes them its own way")
    elif precision == "int8":
        from ..hardware.quantize import scheme_for
        from .int8 import calibration_data

        if options.weights is not None and options.calib_data is None:
            raise UserError("--precision int8 with --weights needs images to calibrate on: pass --calib-data PATH")
        ctx.int8_scheme = scheme_for(backend_name)
        ctx.calibration = calibration_data(space, run, ctx.trained, options.calib_images, options.calib_data,
                                           options.seed)
        notes.append(f"INT8 files: Q/DQ ONNX ({ctx.int8_scheme} scheme) quantized by ONNX Runtime's static "
                     f"quantization, calibrated on {ctx.calibration.described}; each *.fp32.onnx beside it is the "
                     "file it was made from, timed with it"
                     + ("; TensorRT builds both with --int8 --fp16, so there the comparison is INT8 against FP16"
                        if ctx.int8_scheme == "tensorrt" else ""))
    predicted, predicted_by = _predicted_ms(space, profile, run, candidates)
    report = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run.path), "space": run.space, "dataset": run.dataset,
        "profile": {"name": profile.name, "spec": spec, "sha256": profile.sha256, "reference": profile.reference,
                    "run_profile_sha256": run.profile_sha256},
        "budget": run.budget,
        "settings": {**{k: v for k, v in asdict(options).items() if k != "formats"}, "formats": list(options.formats),
                     "precision": measure_precision, "engine_precision": precision, "batch": batch,
                     "threads": threads, "clock": ctx.clock, "measured": measure,
                     "measured_for_information": informative,
                     "timing_protocol": _protocol(profile, options.quick).to_dict() if measure else None,
                     "predicted_by": predicted_by,
                     "int8": None if ctx.calibration is None else {"scheme": ctx.int8_scheme,
                                                                   **ctx.calibration.to_dict()}},
        "environment": environment(backend_name, measure_precision, threads, batch, detected, profile, mismatch,
                                   tensorrt) | {"host": options.host},
        "nets": [], "notes": notes, "feedback": None, "drift": None,
    }
    report_path = ctx.out_dir / "report.json"
    timings = []
    try:
        for position, (item, pred) in enumerate(zip(candidates, predicted), start=1):
            say(f"net {position}/{len(candidates)}: {item['arch']}")
            rank = int(item.get("rank") or position)  # the run's rank (infeasible nets may have been skipped)
            entry, timing = _export_one(ctx, rank, item, pred, existing)
            report["nets"].append(entry)
            if timing is not None:
                timings.append(timing)
            write_report(report_path, report)

        if timings:
            probes = _drift_probes(ctx)
            _measure_all(ctx, timings, probes, say)
            factor = report["drift"] = _drift(probes, ctx.backend_name)
            for t in timings:
                _judge(t.entry, ctx, (factor or {}).get("factor"))
            write_report(report_path, report)
    except BaseException:  # a refusal, Ctrl-C or a crash: nothing half-made is left behind, export/ is untouched
        import shutil

        shutil.rmtree(ctx.out_dir, ignore_errors=True)
        raise

    untrained = [n["rank"] for n in report["nets"] if n["weights"] == "random (seeded)"]
    if untrained:
        which = "every net" if len(untrained) == len(report["nets"]) else f"net(s) {', '.join(map(str, untrained))}"
        notes.append(f"{which} exported with seeded random weights (untrained): right for timing and numerics, "
                     f"not for deployment; train them first (`pomonag-edge train {run.path} --data DIR`) or pass "
                     "--weights")
    other = next((n for n in report["nets"] if n.get("accuracy_comparable") is False), None)
    if other is not None:
        notes.append(f"predicted accuracies are for {other['predicted']['accuracy_for']}, measured ones for "
                     f"{other['accuracy_measured_task']} (the nets were trained on another task than the run was "
                     "generated for): the two are not compared")
    if measure and options.feedback and not mismatch and not informative:
        report["feedback"] = _feedback(ctx, report["nets"])
    report["summary"] = summarize(report["nets"], options.allow_over_budget, report["drift"])
    report["complete"] = True
    _relocate(report, ctx.out_dir, final_dir)
    report["files"] = sorted({p.name for p in ctx.out_dir.iterdir()} | {"report.json"})
    write_report(report_path, report)
    replace_dir(ctx.out_dir, final_dir, "export folder")
    if command is not None:  # complete: the next `export --measure` times the nets again
        import shutil

        shutil.rmtree(command_timings_dir(run.path), ignore_errors=True)
    report["path"] = str(final_dir / "report.json")
    return report


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
    import os
    import shutil

    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _export_one(ctx: _Context, rank: int, item: dict, predicted_ms: float | None, existing: dict) -> dict:
    space, options = ctx.space, ctx.options
    arch = space.parse(item["arch"])
    stem = file_stem(rank, arch, space)
    dataset = ctx.run.space_dataset
    weights, trained = (load_weights(options.weights, arch), None) if options.weights else (None, None)
    if ctx.trained is not None:
        trained = next((n for n in ctx.trained["nets"] if n["arch"] == str(arch)), None)
    if trained is not None:  # the net trained on the user's data: its weights, its classes, its accuracy
        t = ctx.trained["task"]
        dataset = Task(t["name"], int(t["input_hw"]), int(t["num_classes"]))
        weights = load_trained_state(trained["checkpoint"], ctx.run.path)
    entry = {"rank": rank, "arch": str(arch), "params": space.params(arch, dataset),
             "macs": space.macs(arch, dataset), "predicted": {"latency_ms": predicted_ms,
                                                              "accuracy": item.get("accuracy")},
             "weights": "trained" if trained else ("--weights" if options.weights else "random (seeded)"),
             "files": {}, "checks": [], "measured": {}, "timing_s": {}, "status": None, "reasons": []}
    if trained is not None:
        entry["accuracy_measured"] = trained["accuracy_measured"]
        entry["accuracy_measured_on"] = f"{trained['split']} split ({trained['n_val']} images)"
        entry["accuracy_measured_task"] = ctx.trained["task"]["name"]
        # the run predicted another task's accuracy (a shipped dataset, or other data): never set side by side
        entry["predicted"]["accuracy_for"] = ctx.trained.get("predicted_for", ctx.run.dataset)
        entry["accuracy_comparable"] = bool(ctx.trained.get("same_task", True))
    at_generate = {k: item.get(f) for k, f in (("latency_ms", "latency_ms_measured"), ("accuracy", "accuracy_measured"))
                   if item.get(f) is not None}
    if at_generate:  # what generate's closed loop measured for this net (its rank used these)
        entry["measured_by_generate"] = at_generate
    input_shape = space.input_shape(arch, dataset, batch=ctx.batch)
    entry["preprocessing"] = preprocessing(input_shape, ctx.trained if trained is not None else None)
    if options.dynamic_batch:
        entry["preprocessing"]["input_shape"][0] = "batch"
    batches = sorted({1, 2, ctx.batch}) if options.dynamic_batch else [ctx.batch]
    onnx_path = ctx.out_dir / f"{stem}.onnx"  # the file to deploy (int8: the Q/DQ one)
    int8 = ctx.calibration is not None
    fp32_path = onnx_path.with_name(f"{stem}.fp32.onnx") if int8 else onnx_path
    reuse = bool(options.measure) and stem in existing and (not int8 or f"{stem}.fp32" in existing)
    if reuse:  # --measure re-times the previous export's file: it moves into this export, labelled as reused
        _link_or_copy(existing[stem], onnx_path)
        if int8:
            _link_or_copy(existing[f"{stem}.fp32"], fp32_path)

    t0 = time.perf_counter()
    model = build_model(space, arch, dataset, weights, seed=options.seed)
    try:
        if not reuse:
            export_onnx(model, input_shape, fp32_path, opset=options.opset, dynamic_batch=options.dynamic_batch,
                        metadata={"arch": str(arch), "weights": entry["weights"], **entry["preprocessing"]})
    except UserError:
        raise
    except Exception as e:  # an exporter or checker failure fails this net, with its message, not the run
        entry["reasons"].append(f"ONNX export failed: {type(e).__name__}: {str(e)[:300]}")
        _judge(entry, ctx)
        return entry, None
    entry["files"]["onnx"] = onnx_summary(fp32_path) | {"reused": reuse}
    entry["timing_s"]["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run, names = onnxruntime_runner(fp32_path)
    check = check_outputs(model, run, names, input_shape, batches,
                          tolerance_for("onnxruntime", "fp32"), seed=options.seed, runtime="onnxruntime")
    entry["checks"].append(check.to_dict())
    entry["timing_s"]["check"] = time.perf_counter() - t0
    if int8 and check.passed:
        _quantize_one(ctx, entry, stem, fp32_path, onnx_path, input_shape, reuse)

    runnables = {}
    timing_inputs = {INPUT_NAME: random_inputs(input_shape, options.seed)}
    if ctx.tensorrt and check.passed and ctx.timer is None:
        t0 = time.perf_counter()
        engine_path = onnx_path.with_suffix(".engine")
        try:
            trt = ctx.runtime("tensorrt").load(str(onnx_path), inputs=timing_inputs)
            trt.save_engine(engine_path)
        except UserError:
            raise
        except Exception as e:
            entry["reasons"].append(f"TensorRT engine build failed: {type(e).__name__}: {str(e)[:300]}")
        else:
            runnables["tensorrt"] = trt
            entry["files"]["engine"] = {"path": str(engine_path), "bytes": engine_path.stat().st_size,
                                        "precision": ctx.engine_precision}
            trt_check = check_outputs(model, trt.run, trt.output_names, input_shape, [ctx.batch],
                                      tolerance_for("tensorrt", ctx.engine_precision), seed=options.seed,
                                      runtime="tensorrt")
            entry["checks"].append(trt_check.to_dict())
        entry["timing_s"]["engine"] = time.perf_counter() - t0

    if ctx.measure and all(c["passed"] for c in entry["checks"]) and not entry["reasons"]:
        return entry, _Timing(stem, entry, onnx_path, model, timing_inputs, runnables,
                              fp32_path=fp32_path if int8 else None)
    _judge(entry, ctx)
    return entry, None


def _quantize_one(ctx: _Context, entry: dict, stem: str, fp32_path: Path, onnx_path: Path, input_shape, reuse: bool):
    """The FP32 file -> the INT8 file (``hardware.quantize``), checked against FP32; accuracies when trained."""
    from ..files import atomic_write_bytes
    from ..hardware.quantize import graph_ops, quantize_onnx
    from .int8 import check_int8, feeds

    t0 = time.perf_counter()
    if not reuse:
        data = quantize_onnx(fp32_path.read_bytes(), feeds(ctx.calibration, input_shape, ctx.options.seed),
                             ctx.int8_scheme, f"net {entry['rank']} ({stem})")
        atomic_write_bytes(onnx_path, data)
    ops = graph_ops(onnx_path.read_bytes())
    entry["files"]["onnx_fp32"] = entry["files"]["onnx"] | {"precision": "fp32"}
    entry["files"]["onnx"] = onnx_summary(onnx_path) | {
        "reused": reuse, "precision": "int8", "scheme": ctx.int8_scheme, "calibration": ctx.calibration.source,
        "quantize_nodes": ops.get("QuantizeLinear", 0), "dequantize_nodes": ops.get("DequantizeLinear", 0)}
    entry["timing_s"]["quantize"] = time.perf_counter() - t0
    check, accuracy = check_int8(fp32_path, onnx_path, ctx.calibration, input_shape, ctx.options.dynamic_batch,
                                 ctx.options.seed)
    entry["checks"].append(check.to_dict())
    if accuracy:  # the INT8 file's accuracy, and the FP32 file's on the same validation images
        entry["accuracy_measured"] = accuracy["int8"]
        entry["accuracy_measured_fp32"] = accuracy["fp32"]
        entry["accuracy_drop_points"] = round(accuracy["fp32"] - accuracy["int8"], 4)
        entry["accuracy_measured_on"] = f"validation split ({accuracy['images']} images), ONNX Runtime"


def _drift_probes(ctx: _Context) -> list[_Timing]:
    """A few of the profile's calibration nets, exported like the others, to be timed again beside them."""
    from ..hardware.drift import pick_probes

    if ctx.informative or ctx.options.drift_nets <= 0:
        return []
    probes = []
    for record in pick_probes(ctx.profile.calibration, ctx.options.drift_nets):
        arch = ctx.space.parse(record["arch"])
        stem = "drift" + file_stem(0, arch, ctx.space)[2:]  # drift_nb201_3942
        path = ctx.out_dir / "drift" / f"{stem}.onnx"
        shape = ctx.space.input_shape(arch, ctx.run.space_dataset, batch=ctx.batch)
        model = build_model(ctx.space, arch, ctx.run.space_dataset, None, seed=ctx.options.seed)
        previous = ctx.run.path / "export" / "drift" / path.name  # the same net, exported the same way before
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if previous.is_file():
                _link_or_copy(previous, path)
            else:
                export_onnx(model, shape, path, opset=ctx.options.opset)
                if ctx.calibration is not None:  # timed as the profile timed it: INT8, random calibration
                    from ..files import atomic_write_bytes
                    from ..hardware.quantize import quantize_onnx, random_calibration

                    atomic_write_bytes(path, quantize_onnx(path.read_bytes(), random_calibration(
                        {INPUT_NAME: random_inputs(shape, ctx.options.seed)}), ctx.int8_scheme, stem))
        probes.append(_Timing(stem, None, path, model, {INPUT_NAME: random_inputs(shape, ctx.options.seed)}, {},
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


def _measure_all(ctx: _Context, timings: list[_Timing], probes: list[_Timing], say) -> None:
    """Time the nets and the drift probes, interleaved: in turn here, or as one batch of rounds on the host."""
    protocol = _protocol(ctx.profile, ctx.options.quick)
    schedule = _interleave(timings, probes)
    if ctx.command is not None:
        from ..hardware.timers import Graph

        t0 = time.perf_counter()
        graphs = {t.name: Graph(t.model, t.inputs, arch=(t.entry or t.probe)["arch"], onnx=t.onnx_path)
                  for t in schedule}
        measured = ctx.command.time(graphs, progress=lambda d, n, item: say(f"timing {d}/{n} by the command"))
        seconds = (time.perf_counter() - t0) / max(1, len(schedule))
        for t in schedule:
            if t.entry is None:
                t.probe = {**t.probe, "now": measured[t.name].to_dict()}
            else:
                t.entry["measured"][ctx.backend_name] = measured[t.name].to_dict()
                t.entry["timing_s"]["measure"] = seconds
        ctx.notes.append(f"measured by {ctx.command.where}: {ctx.command.descriptor.calls} call(s) per net, "
                         f"{len(probes)} calibration net(s) re-timed among them")
        return
    if ctx.timer is not None:
        t0 = time.perf_counter()
        graphs = {t.name: t.onnx_path.read_bytes() for t in schedule}
        graphs.update({f"{t.name}.fp32": t.fp32_path.read_bytes() for t in schedule if t.fp32_path is not None})
        engines = ctx.tensorrt
        where = ctx.options.host or "this machine"
        result = ctx.timer.time(graphs, progress=lambda d, n, item: say(f"timing on {where}: {d}/{n}"),
                                save_engines=engines, engine_dir=ctx.out_dir if engines else None,
                                keep_engines={t.name for t in timings})
        seconds = (time.perf_counter() - t0) / max(1, len(schedule))
        for t in schedule:
            measured = result.measurements.get(t.name)
            if t.entry is None:
                t.probe = {**t.probe, "now": measured.to_dict() if measured else None}
                continue
            t.entry["timing_s"]["measure"] = seconds
            if measured is None:
                t.entry["reasons"].append(f"timing on {where} failed: {result.errors.get(t.name)}")
                continue
            t.entry["measured"][ctx.backend_name] = measured.to_dict() | {
                "round_medians_ms": result.stats[t.name].get("round_medians_ms")}
            if t.fp32_path is not None and result.measurements.get(f"{t.name}.fp32") is not None:
                t.entry["measured_fp32"] = result.measurements[f"{t.name}.fp32"].to_dict()
            if t.name in result.engines:
                path = result.engines[t.name]
                t.entry["files"]["engine"] = {"path": str(path), "bytes": path.stat().st_size,
                                              "precision": ctx.engine_precision, "built_on": where}
        ctx.notes.append(f"measured on {where} by the device runner ({ctx.timer.runtime}), "
                         f"{len(probes)} calibration net(s) re-timed in the same interleaved rounds")
        if result.engines:
            ctx.notes.append("TensorRT engines were built by trtexec on the device and brought back beside the ONNX "
                             "files; trtexec does not return outputs, so only the ONNX files' numerics were checked")
        return
    for n, t in enumerate(schedule, start=1):
        say(f"timing {n}/{len(schedule)}: {t.name}")
        t0 = time.perf_counter()
        if t.entry is None:
            runnable = ctx.runtime(ctx.backend_name).load(
                str(t.onnx_path) if _reads_onnx(ctx.backend_name) else t.model, inputs=t.inputs)
            t.probe = {**t.probe, "now": runnable.measure(protocol).to_dict()}
            continue
        for name in dict.fromkeys([ctx.backend_name] + list(t.runnables)):
            runnable = t.runnables.get(name) or ctx.runtime(name).load(
                str(t.onnx_path) if _reads_onnx(name) else t.model, inputs=t.inputs)
            t.entry["measured"][name] = runnable.measure(protocol).to_dict()
        if t.fp32_path is not None:  # the FP32 file, right after its INT8 file, with the same runtime
            t.entry["measured_fp32"] = ctx.runtime(ctx.backend_name).load(str(t.fp32_path), inputs=t.inputs) \
                .measure(protocol).to_dict()
        t.entry["timing_s"]["measure"] = time.perf_counter() - t0


def _drift(probes: list[_Timing], backend: str) -> dict | None:
    """The drift factor (median now / then) and the probes it came from; None without probes."""
    from ..hardware.drift import drift_factor

    rows = [{"arch": p.probe["arch"], "then_ms": p.probe["latency_ms"],
             "now_ms": (p.probe.get("now") or {}).get("median_ms")} for p in probes]
    if not rows:
        return None
    factor = drift_factor([r["now_ms"] for r in rows], [r["then_ms"] for r in rows])
    return {"factor": factor, "nets": rows, "runtime": backend,
            "method": "median of now / at profiling time over the profile's own calibration nets, timed "
                      "interleaved with the exported nets; corrected ratio = (measured / predicted) / factor"}


def _judge(entry: dict, ctx: _Context, drift: float | None = None) -> None:
    """Status: failed (a check or build failed), over_budget, passed (measured within budget), checked
    (not measured, or measured here for a reference profile: this machine's time is not the target's).
    The budget test uses the raw measurement; ``drift`` only adds the drift-corrected agreement."""
    for c in entry["checks"]:
        entry["reasons"].extend(f"{c['runtime']}: {f}" for f in c["failures"])
    m = entry["measured"].get(ctx.backend_name)
    fp32 = entry.get("measured_fp32")
    if m and fp32:
        entry["int8_speedup"] = fp32["median_ms"] / m["median_ms"] if m["median_ms"] > 0 else None
        if entry["int8_speedup"] is not None and entry["int8_speedup"] <= 1.0:
            ctx.notes.append(f"net {entry['rank']}: INT8 is not faster than FP32 on this device ({m['median_ms']:.3f} "
                             f"ms vs {fp32['median_ms']:.3f} ms)")
    pred = entry["predicted"]["latency_ms"]
    if m:
        entry["noisy"] = m["cv"] > _protocol(ctx.profile, ctx.options.quick).max_cv
    if m and ctx.informative:
        entry["status"] = "failed" if entry["reasons"] else "checked"  # this machine's time, not the target's
        entry["budget_ms"] = ctx.run.budget.get("max_latency_ms")
        return
    if m and pred:
        from ..hardware.drift import compare

        entry["latency_error_pct"] = 100.0 * (m["median_ms"] - pred) / pred
        entry["within_10pct"] = abs(m["median_ms"] - pred) <= BAND * pred
        c = compare(m["median_ms"], pred, drift)
        entry["measured_over_predicted"] = {"raw": c["ratio_raw"], "drift_corrected": c.get("ratio_corrected")}
        if drift:
            entry["latency_error_pct_corrected"] = c["error_pct_corrected"]
            entry["within_10pct_corrected"] = c["within_10pct_corrected"]
    budget = ctx.run.budget.get("max_latency_ms")
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


def _feedback(ctx: _Context, nets: list[dict]) -> dict | None:
    """Append measured latencies to the profile's calibration set and refit its latency model."""
    if ctx.profile_path is None:
        return {"applied": False, "added": 0, "skipped_noisy": 0,
                "why": "reference profile: published measurements are not extended"}
    measured = [n for n in nets if ctx.backend_name in n["measured"] and n["status"] != "failed"]
    rows = [(n["arch"], n["measured"][ctx.backend_name]) for n in measured if not n.get("noisy")]
    noisy = len(measured) - len(rows)  # a noisy timing would teach the latency model the machine's load
    if not rows:
        return {"applied": False, "added": 0, "skipped_noisy": noisy,
                "why": f"all {noisy} timings were noisy" if noisy else "nothing measured"}
    from ..profile import load_profile

    from ..predictors import with_timings

    parent = load_profile(ctx.profile_path)  # fresh: never build on a stale copy
    timings = [{"arch": arch, "latency_ms": m["median_ms"], **m, "source": "export",
                "protocol": _protocol(ctx.profile, ctx.options.quick).name} for arch, m in rows]
    refit, why = False, None
    try:
        profile, refit = with_timings(ctx.space, parent, timings), True
    except (ImportError, UserError) as e:
        profile, why = with_timings(ctx.space, parent, timings, refit=False), f"latency model not refit: {e}"
    try:  # a new revision: the profile the run was generated with stays as it was
        path = profile.save_revision(ctx.profile_path, parent)
    except UserError as e:
        return {"applied": False, "added": 0, "skipped_noisy": noisy, "why": f"revision not written: {e}"}
    return {"applied": True, "profile": str(path), "parent": str(ctx.profile_path), "added": len(rows),
            "skipped_noisy": noisy,
            "calibration_size": len(profile.calibration), "refit": refit, "why": why}
