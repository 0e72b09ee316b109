"""Build a device profile: per-op LUT, then calibration nets, saving after every measurement.

``build_profile`` is what ``pomonag-edge profile`` calls. It resumes a partial profile at the same path
when that profile was made with the same device and runtime settings, and refuses (one line) otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..files import check_writable
from ..profile import PROFILES_DIR, Profile, load_profile
from ..spaces import get_space
from .backends import BACKENDS, get_backend
from .devices import check_hardware, choose_backend, detect_device, load_descriptor
from .lut import measure_job, select_calibration
from .timing import PROTOCOLS, Protocol, settle

# progress(stage, done, total, item): called once per stage before measuring and after every item
ProgressFn = Callable[[str, int, int, str], None]

# settings that must match for a partial profile to be continued
_RESUME_RUNTIME = ("backend", "precision", "batch", "threads", "clock", "protocol", "calibration_count",
                   "calibration_seed", "lut_method", "lut_resolutions")
_RESUME_DEVICE = ("name", "cpu", "gpu", "jetson_model", "power_mode")


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


@dataclass
class ProfileResult:
    profile: Profile
    path: Path
    resumed: bool
    skipped_backends: list[str]
    measured: int  # LUT jobs + calibration nets measured in this call
    seconds: float
    model_note: str | None = None  # why no latency model was fitted, when it was not


def profile_path(req: ProfileRequest) -> Path:
    """Where the profile goes: ``--out``, else ``profiles/<device>.json``."""
    return Path(req.out) if req.out is not None else PROFILES_DIR / f"{Path(req.device).stem}.json"


def _mismatch(old: Profile, new: Profile) -> str | None:
    if (old.space, old.dataset) != (new.space, new.dataset):
        return f"space/dataset {old.space}/{old.dataset} (now {new.space}/{new.dataset})"
    for key in _RESUME_DEVICE:
        if old.device.get(key) != new.device.get(key):
            return f"device {key} {old.device.get(key)!r} (now {new.device.get(key)!r})"
    for key in _RESUME_RUNTIME:
        if old.runtime.get(key) != new.runtime.get(key):
            return f"{key} {old.runtime.get(key)!r} (now {new.runtime.get(key)!r})"
    return None


def fit_latency_model(space, profile: Profile) -> str | None:
    """Fit the latency model (``predictors``, by space) into the profile; returns why not, if it was not.

    A user-fixable refusal (say, a missing checkpoint) leaves the measured profile intact and is reported."""
    from ..predictors import fit_profile_model

    try:
        profile.latency_model = fit_profile_model(space, profile)
    except UserError as e:
        return str(e)
    return None


def _settle(space, dataset: str, batch: int, backend, protocol, seed: int) -> None:
    """Bring the machine to a steady state with the heaviest net before the first measurement."""
    arch = space.settle_arch(dataset)
    x = np.random.default_rng(seed).standard_normal(space.input_shape(arch, dataset, batch)).astype(np.float32)
    settle(backend.load(space.build(arch, dataset).eval(), {"input": x}).run_once_ms, protocol)


def build_profile(req: ProfileRequest, progress: ProgressFn | None = None, fit_model: bool = True) -> ProfileResult:
    started = time.perf_counter()
    space = get_space(req.space)
    dataset = space.check_dataset(req.dataset)
    descriptor = load_descriptor(req.device)
    facts = detect_device()
    check_hardware(descriptor, facts)
    if req.backend is not None and req.backend not in BACKENDS:
        raise UserError(f"unknown backend {req.backend!r}; choose one of {', '.join(BACKENDS)}")
    if req.calibration < 0:
        raise UserError(f"--calibration must be 0 or more, got {req.calibration}")
    backend_name, skipped = choose_backend(descriptor, req.backend)
    precision = req.precision or descriptor.precision
    threads = req.threads or descriptor.threads
    batch = req.batch or descriptor.batch
    if batch < 1:
        raise UserError(f"--batch must be 1 or more, got {batch}")
    backend = get_backend(backend_name, precision=precision, threads=threads, clock=req.clock)
    protocol = req.protocol or PROTOCOLS["quick" if req.quick else "default"]

    runtime = {"backend": backend_name, "precision": precision, "batch": batch, "threads": threads,
               "clock": req.clock,
               "protocol": protocol.name, "protocol_settings": protocol.to_dict(), **backend.version(),
               "calibration_count": req.calibration, "calibration_seed": req.seed}
    plan = space.lut_plan(dataset, req.quick, req.resolutions)
    runtime.update(plan.facts)
    fresh = Profile(name=descriptor.name, space=space.name, dataset=dataset, partial=True,
                    device={"name": descriptor.name, "descriptor": descriptor.to_dict(), **facts}, runtime=runtime)
    path = check_writable(profile_path(req), "profile")  # before any measuring
    profile, resumed = fresh, False
    if path.exists() and not req.fresh:
        old = load_profile(path)  # a corrupt / foreign / newer file ends here with one line
        why = _mismatch(old, fresh)
        if why:
            raise UserError(f"{path} holds a profile made with another {why}: pass --fresh to start it over, "
                            "or --out another path")
        profile, resumed = old, True
        profile.device, profile.runtime = fresh.device, fresh.runtime  # same settings; newest facts

    def report(stage: str, done: int, total: int, item: str) -> None:
        if progress is not None:
            progress(stage, done, total, item)

    measured = 0
    # 1. per-op table
    jobs = plan.jobs
    todo = [j for j in jobs if not all(k in profile.lut for k in j.keys)]
    plan_size = req.calibration - len(profile.calibration)
    if todo or plan_size > 0:
        _settle(space, dataset, batch, backend, protocol, req.seed)
    report("lut", len(jobs) - len(todo), len(jobs), "")
    for job in todo:
        profile.lut.update(measure_job(job, backend, protocol, batch=batch, seed=req.seed))
        profile.save(path)
        measured += 1
        report("lut", sum(all(k in profile.lut for k in j.keys) for j in jobs), len(jobs), job.name)

    # 2. calibration nets, chosen from the finished LUT (so a resumed run chooses the same ones)
    plan = select_calibration(space, profile, req.calibration, req.seed)
    done = {item["arch"] for item in profile.calibration}
    report("calibration", sum(str(a) in done for a in plan), len(plan), "")
    def time_net(arch):
        net = space.build(arch, dataset).eval()
        x = np.random.default_rng(req.seed).standard_normal(space.input_shape(arch, dataset, batch)).astype(np.float32)
        m = backend.load(net, {"input": x}).measure(protocol)
        return {"arch": str(arch), "latency_ms": m.median_ms, **m.to_dict()}

    for arch in plan:
        if str(arch) in done:
            continue
        profile.calibration.append(time_net(arch))
        done.add(str(arch))
        profile.save(path)
        measured += 1
        report("calibration", sum(str(a) in done for a in plan), len(plan), str(arch))

    # 2b. a burst of load rarely lasts minutes: time the still-noisy nets once more, later, keep the quieter
    noisy = [i for i, item in enumerate(profile.calibration) if item.get("cv", 0.0) > protocol.max_cv]
    for n, i in enumerate(noisy, start=1):
        again = time_net(space.parse(profile.calibration[i]["arch"]))
        if again["cv"] < profile.calibration[i]["cv"]:
            profile.calibration[i] = again
            profile.save(path)
        report("re-timing noisy", n, len(noisy), again["arch"])

    # 3. latency model
    note = fit_latency_model(space, profile) if fit_model else "not asked for"
    profile.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    profile.partial = False
    profile.save(path)
    return ProfileResult(profile, path, resumed, skipped, measured, time.perf_counter() - started, note)
