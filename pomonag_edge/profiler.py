"""Build a device profile: per-op LUT, then calibration nets, saving after every measurement.

Without the LUT (``lut=False``: ``profile --no-lut``, or a command device that cannot time single ops) the
profile holds whole-net timings only, their nets spread over MACs, and the latency model is fitted from them
as ``calibrate`` fits timings taken elsewhere.

``build_profile`` is what ``pomonag-edge profile`` calls. It resumes a partial profile at the same path
when that profile was made with the same device and runtime settings, and refuses (one line) otherwise.
Graphs are timed through a timer (``hardware/timers.py``): a backend of this process one job at a time, or the
device runner (``--host``, or trtexec here) with every job's graphs in one batch of interleaved rounds,
whose finished rounds the device keeps for a re-run. At the end the first calibration nets are timed
again: a device whose speed moved while it was profiled gets a warning.
"""

from __future__ import annotations

import glob
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import check_writable
from .hardware.backends import BACKENDS
from .hardware.devices import check_hardware, choose_backend, detect_device, load_descriptor
from .hardware.drift import speed_change
from .hardware.lut import select_calibration
from .hardware.quantize import scheme_for
from .hardware.remote import parse_host
from .hardware.runner import BACKEND_RUNTIMES
from .hardware.timers import Graph, RunnerTimer, make_timer
from .hardware.timing import PROTOCOLS, Protocol
from .predictors import fit_profile_model
from .profile import IDENTITY_FACTS, PROFILES_DIR, Profile, load_profile
from .progress import ProgressFn
from .spaces import get_space

# settings that must match for a partial profile to be continued
_RESUME_RUNTIME = ("backend", "precision", "int8", "batch", "threads", "clock", "protocol", "calibration_count",
                   "calibration_seed", "lut_method", "lut_resolutions")
_RESUME_DEVICE = ("name", "host", *IDENTITY_FACTS)
END_CHECK_NETS = 3  # calibration nets timed again at the end to see whether the device's speed moved


@dataclass
class ProfileRequest:
    device: str = "cpu"
    space: str = "nb201"
    dataset: str | None = None
    quick: bool = False
    calibration: int = 20
    threads: int | None = None
    precision: str | None = None
    batch: int | None = None
    backend: str | None = None
    clock: str = "wall"  # "cpu": calling-thread CPU time (onnxruntime, 1 thread), steady on a shared machine
    out: str | Path | None = None
    seed: int = 0
    fresh: bool = False
    protocol: Protocol | None = None  # overrides ``quick``: for tests and benchmarks
    resolutions: tuple[int, ...] | None = None  # LUT resolutions of a space with several; None: its default
    host: str | None = None  # USER@ADDR[:PORT]: time on that device through the runner, over SSH
    ssh: object | None = None  # remote.SSHOptions: ssh config, interpreter and work folder there
    max_temp_c: float | None = None  # the runner waits while the device is hotter
    lut: bool = True  # False: whole-net timings only, no per-op table


@dataclass
class ProfileResult:
    profile: Profile
    path: Path
    resumed: bool
    skipped_backends: list[str]
    measured: int  # LUT jobs + calibration nets measured in this call
    seconds: float
    model_note: str | None = None  # why no latency model was fitted, when it was not
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # choices made for the user (no LUT for a command device)
    kept: bool = False  # a finished profile was already there: kept as it is, nothing measured


def profile_path(req: ProfileRequest) -> Path:
    """Where the profile goes: ``--out``, else ``profiles/<device>.json``, or ``profiles/<device>-<precision>.json``
    for a precision other than the descriptor's (an int8 profile of this CPU sits beside its fp32 one)."""
    if req.out is not None:
        return Path(req.out)
    stem = Path(req.device).stem
    if req.precision is not None and req.precision != load_descriptor(req.device).precision:
        stem = f"{stem}-{req.precision}"
    return PROFILES_DIR / f"{stem}.json"


def int8_warning(backend: str, facts: dict) -> str | None:
    """Why int8 may not pay on this CPU: it lists no fast int8 instructions (``runner.INT8_DOT_FLAGS``)."""
    if backend in BACKENDS and BACKENDS[backend].gpu:
        return None
    dot = facts.get("cpu_int8_dot")
    if dot is None or dot:
        return None
    return (f"this CPU ({facts.get('cpu', 'unknown')}) lists no fast int8 instructions (no AVX512-VNNI, AVX-VNNI or "
            "AMX on x86, no dotprod on ARM, in /proc/cpuinfo): INT8 may run no faster than FP32 here; export reports "
            "both")


def _mismatch(old: Profile, new: Profile) -> str | None:
    if (old.space, old.dataset) != (new.space, new.dataset):
        return f"space/dataset {old.space}/{old.dataset} (now {new.space}/{new.dataset})"
    for key in _RESUME_DEVICE:
        if old.device.get(key) != new.device.get(key):
            return f"device {key} {old.device.get(key)!r} (now {new.device.get(key)!r})"
    if old.runtime.get("lut", True) != new.runtime.get("lut", True):  # absent: a profile with its LUT
        return "per-op table setting" + (" (now --no-lut)" if new.runtime.get("lut", True) is False else
                                         " (now with a LUT: pass --no-lut to continue it)")
    for key in _RESUME_RUNTIME:
        if old.runtime.get(key) != new.runtime.get(key):
            return f"{key} {old.runtime.get(key)!r} (now {new.runtime.get(key)!r})"
    return None


def fit_latency_model(space, profile: Profile) -> str | None:
    """Fit the latency model (``predictors``, by space) into the profile; returns why not, if it was not.

    A user-fixable refusal (say, a missing checkpoint) leaves the measured profile intact and is reported."""
    try:
        profile.latency_model = fit_profile_model(space, profile)
    except UserError as e:
        return str(e)
    return None


def _inputs(shape, seed: int) -> dict:
    return {"input": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def net_graph(space, arch, dataset: str, batch: int, seed: int) -> Graph:
    """A whole net as a timer's graph, with seeded inputs: how a profile's calibration nets are timed (so a
    net timed later, by export or ``generate --measure``, is timed the same way); name it ``net_name``."""
    return Graph(space.build(arch, dataset).eval(), _inputs(space.input_shape(arch, dataset, batch), seed),
                 arch=str(arch))


def net_name(space, dataset: str, batch: int, arch) -> str:
    """A whole net's graph name (names identify a graph's structure and shapes: timers key their caches by it)."""
    return f"{space.name}/{dataset}/b{batch}/net/{arch}"


def _timer_for(req: ProfileRequest, descriptor, protocol, precision: str, threads: int, path: Path,
               space=None, batch: int = 1):
    """(timer, backend name, skipped backends, device facts): the descriptor's command when it is a command,
    the device runner on ``--host`` (its runtime: ``--backend`` or the descriptor's ``runner``), else the
    descriptor's first backend usable here."""
    if descriptor.is_command:
        for flag, value in (("--host", req.host), ("--backend", req.backend), ("--max-temp-c", req.max_temp_c)):
            if value is not None:
                raise UserError(f"device {descriptor.name} is a command, which times its device itself: drop {flag}")
        if req.clock != "wall":
            raise UserError(f"device {descriptor.name} is a command, which keeps its own clock: drop --clock")
        if descriptor.requires is not None:
            check_hardware(descriptor, detect_device())
        timer = make_timer("command", protocol, precision, threads, key=f"profile:{path.resolve()}",
                           cache_dir=_graph_cache(path), descriptor=descriptor, space=space.name, batch=batch)
        return timer, "command", [], timer.facts()
    if req.host is not None:
        host = parse_host(req.host)
        name = req.backend or descriptor.runner
        if name not in BACKEND_RUNTIMES:
            raise UserError(f"--backend {name} cannot time on --host: the device runner times with trtexec or "
                            "onnxruntime")
        name = BACKEND_RUNTIMES[name]
        timer = make_timer(name, protocol, precision, threads, req.clock, host, req.ssh,
                           key=f"profile:{path.resolve()}", cache_dir=_graph_cache(path))
        timer.device.max_temp_c = req.max_temp_c
        facts = {**timer.facts(), "host": str(host)}
        check_hardware(descriptor, facts)
        return timer, name, [], facts
    facts = detect_device()
    check_hardware(descriptor, facts)
    if req.backend is not None and req.backend not in BACKENDS:
        raise UserError(f"unknown backend {req.backend!r}; choose one of {', '.join(BACKENDS)}")
    name, skipped = choose_backend(descriptor, req.backend)
    timer = make_timer(name, protocol, precision, threads, req.clock, key=f"profile:{path.resolve()}",
                       cache_dir=_graph_cache(path))
    if isinstance(timer, RunnerTimer):
        timer.device.max_temp_c = req.max_temp_c
    elif req.max_temp_c is not None:
        raise UserError(f"--max-temp-c needs --host or --backend trtexec (the device runner reads the temperatures); "
                        f"{name} here would ignore it")
    return timer, name, skipped, facts


def _partial_revision(path: Path, fresh: Profile) -> tuple[Path, Profile] | None:
    """The newest unfinished revision of the finished profile at ``path`` (``NAME.rN.json``, its ``parent``
    ``path``) made with the same settings: a ``--fresh`` re-measurement that was interrupted, to continue."""
    found = []
    for candidate in path.parent.glob(f"{glob.escape(path.stem)}.r*.json"):
        try:
            p = load_profile(candidate)
        except UserError:
            continue
        if p.partial and (p.parent or {}).get("path") == str(path) and _mismatch(p, fresh) is None:
            found.append((candidate.stat().st_mtime, candidate, p))
    return max(found)[1:] if found else None


def _graph_cache(path: Path) -> Path:
    """ONNX files of a profile's graphs while it is being taken (runner path): a re-run does not export again."""
    return path.parent / f".{path.stem}.graphs"


def build_profile(req: ProfileRequest, progress: ProgressFn | None = None, fit_model: bool = True) -> ProfileResult:
    started = time.perf_counter()
    space = get_space(req.space)
    dataset = space.check_dataset(req.dataset)
    descriptor = load_descriptor(req.device)
    if req.calibration < 0:
        raise UserError(f"--calibration must be 0 or more, got {req.calibration}")
    precision = req.precision or descriptor.precision
    threads = req.threads or descriptor.threads
    batch = req.batch or descriptor.batch
    if batch < 1:
        raise UserError(f"--batch must be 1 or more, got {batch}")
    protocol = req.protocol or PROTOCOLS["quick" if req.quick else "default"]
    path = asked = check_writable(profile_path(req), "profile")  # before any measuring
    timer, backend_name, skipped, facts = _timer_for(req, descriptor, protocol, precision, threads, path, space,
                                                     batch)
    notes = []
    lut = req.lut
    if lut and descriptor.is_command and not descriptor.single_ops:
        lut = False
        notes.append(f"no per-op table: device {descriptor.name}'s command times whole nets only (single_ops = true "
                     "in its descriptor if it can time single-op graphs); the latency model is fitted from whole-net "
                     "timings")

    timing = {"protocol": "the command's own"} if descriptor.is_command else \
        {"protocol": protocol.name, "protocol_settings": protocol.to_dict()}  # --quick changes no command
    warnings = []
    if precision == "int8":
        warning = int8_warning(backend_name, facts)
        if warning:
            warnings.append(warning)
    runtime = {"backend": backend_name, "precision": precision, "batch": batch, "threads": threads,
               "clock": req.clock, **timing, **timer.versions(),
               "calibration_count": req.calibration, "calibration_seed": req.seed, "timed_by": timer.where}
    if precision == "int8" and descriptor.is_command:  # {precision} said; pomonag-edge quantizes nothing
        runtime["int8"] = {"scheme": "the command's own", "quantizer": "the device's toolchain, given FP32 ONNX files "
                           "and {precision} = int8"}
    elif precision == "int8":  # how its Q/DQ graphs were made: export quantizes its nets the same way
        runtime["int8"] = {"scheme": scheme_for(backend_name), "quantizer": "onnxruntime.quantization.quantize_static "
                           "(QDQ, per-channel, MinMax) after quant_pre_process", "calibration": "random inputs"}
    plan = space.lut_plan(dataset, req.quick, req.resolutions)
    if lut:
        runtime.update(plan.facts)
    else:
        runtime["lut"] = False
    fresh = Profile(name=descriptor.name, space=space.name, dataset=dataset, partial=True,
                    device={"name": descriptor.name, "descriptor": descriptor.to_dict(), **facts}, runtime=runtime)
    profile, resumed = fresh, False
    old = load_profile(path) if path.exists() else None  # a corrupt / foreign / newer file ends here with one line
    if old is not None and not old.partial:  # finished: runs name it by its hash, so it is never rewritten
        if req.fresh:
            path = fresh.save_revision(path, old)  # NAME.rN.json, measured from scratch, its parent recorded
            old = None
        elif why := _mismatch(old, fresh):
            raise UserError(f"{path} is a finished profile made with another {why}: --out another path for these "
                            "settings (--fresh measures a new revision beside it)")
        else:
            again = _partial_revision(path, fresh)
            if again is None:
                return ProfileResult(old, path, False, [], 0, time.perf_counter() - started, kept=True)
            path, old = again  # an interrupted --fresh revision of it: continued below
    if path != asked:  # a revision: the device runner keys its finished rounds by the profile's path
        timer = _timer_for(req, descriptor, protocol, precision, threads, path, space, batch)[0]
    if old is not None and not req.fresh:
        why = _mismatch(old, fresh)
        if why:
            raise UserError(f"{path} holds a profile made with another {why}: pass --fresh to start it over, "
                            "or --out another path")
        profile, resumed = old, True
        profile.device, profile.runtime = fresh.device, fresh.runtime  # same settings; newest facts

    def report(stage: str, done: int, total: int, item: str | None = None) -> None:
        """Once per stage before measuring (no item), then after every item measured."""
        if progress is not None:
            progress(stage, done, total, detail=item)

    batched = isinstance(timer, RunnerTimer)  # the runner interleaves a whole batch; a backend goes job by job
    measured = 0
    # 1. per-op table
    jobs = plan.jobs if lut else []
    todo = [j for j in jobs if not all(k in profile.lut for k in j.keys)]
    plan_size = req.calibration - len(profile.calibration)
    if (todo or plan_size > 0) and not batched:
        timer.settle(net_graph(space, space.settle_arch(dataset), dataset, batch, req.seed))
    if jobs:
        report("lut", len(jobs) - len(todo), len(jobs))
    prefix = f"{space.name}/{dataset}/b{batch}"
    for chunk in ([todo] if batched and todo else [[j] for j in todo]):
        graphs = {}
        for job in chunk:
            for name, module, shape in job.graphs(batch):
                graphs[f"{prefix}/{job.name}/{name}"] = Graph(module.eval(), _inputs(shape, req.seed))
        timed = timer.time(graphs, progress=progress if batched else None, stage="lut")
        for job in chunk:
            stats = {name: timed[f"{prefix}/{job.name}/{name}"].to_dict() for name, *_ in job.graphs(batch)}
            profile.lut.update(job.combine(stats))
            measured += 1
        profile.save(path)
        if not batched:
            report("lut", sum(all(k in profile.lut for k in j.keys) for j in jobs), len(jobs), chunk[0].name)

    # 2. calibration nets, chosen from the finished LUT (so a resumed run chooses the same ones)
    plan = select_calibration(space, profile, req.calibration, req.seed)
    done = {item["arch"] for item in profile.calibration}
    report("calibration", sum(str(a) in done for a in plan), len(plan))

    def record(arch, m) -> dict:
        return {"arch": str(arch), "latency_ms": m.median_ms, **m.to_dict()}

    waiting = [a for a in plan if str(a) not in done]
    for chunk in ([waiting] if batched and waiting else [[a] for a in waiting]):
        timed = timer.time({net_name(space, dataset, batch, a): net_graph(space, a, dataset, batch, req.seed)
                            for a in chunk},
                           progress=progress if batched else None, stage="calibration")
        for a in chunk:
            profile.calibration.append(record(a, timed[net_name(space, dataset, batch, a)]))
            done.add(str(a))
            measured += 1
        profile.save(path)
        if not batched:
            report("calibration", sum(str(a) in done for a in plan), len(plan), str(chunk[0]))

    # 2b. a burst of load rarely lasts minutes: time the still-noisy nets once more, later, keep the quieter
    # (the runner has already given its noisy graphs extra rounds at the end of its batch)
    noisy = [] if batched else [i for i, item in enumerate(profile.calibration)
                                if item.get("cv", 0.0) > protocol.max_cv]
    for n, i in enumerate(noisy, start=1):
        arch = space.parse(profile.calibration[i]["arch"])
        name = net_name(space, dataset, batch, arch)
        again = record(arch, timer.time({name: net_graph(space, arch, dataset, batch, req.seed)}, tag="again")[name])
        if again["cv"] < profile.calibration[i]["cv"]:
            profile.calibration[i] = again
            profile.save(path)
        report("re-timing noisy", n, len(noisy), again["arch"])

    # 2c. did the device's speed move while it was profiled? The first nets, timed again now
    first = profile.calibration[:END_CHECK_NETS]
    if measured and first:
        report("end check", 0, len(first))
        graphs = {net_name(space, dataset, batch, c["arch"]): net_graph(space, space.parse(c["arch"]), dataset, batch,
                                                                       req.seed)
                  for c in first}
        again = timer.time(graphs, tag="end-check")
        factor, warning = speed_change([c["latency_ms"] for c in first],
                                       [again[net_name(space, dataset, batch, c["arch"])].median_ms for c in first])
        profile.runtime["end_check"] = {"nets": len(first), "factor": factor}
        if warning:
            warnings.append(warning)
        report("end check", len(first), len(first))

    # 3. latency model
    note = fit_latency_model(space, profile) if fit_model else "not asked for"
    profile.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    profile.partial = False
    profile.save(path)
    shutil.rmtree(_graph_cache(path), ignore_errors=True)
    return ProfileResult(profile, path, resumed, skipped, measured, time.perf_counter() - started, note, warnings,
                         notes)
