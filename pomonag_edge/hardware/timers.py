"""One way to time a batch of named graphs, whoever times them: a backend in this process, the device
runner (``runner.py``) here or on ``--host``, or a device that is a command (``runner = "command"``).

    timer = make_timer(backend_name, protocol, host=None, ...)
    medians = timer.time({"chain-12": Graph(module, {"input": x}), ...})   # {name: Measurement}

The profiler, the closed loop and export ask a timer, never a backend, so the same code serves this machine, a
board over SSH and a vendor toolchain behind a script. A graph is a ``torch.nn.Module`` with fixed inputs (and, for
a whole net, its arch string, and its ONNX file when export made one); the runner and command paths export it to
ONNX here when it has none. ``time_batch`` is ``time`` with everything a report records: per-graph failures on
the device, the runner's round medians, the engines trtexec built, the seconds spent.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..external import CommandTemplate, ResultLog, result_key, run_for_number
from ..files import CACHE_DIR, atomic_write_bytes
from ..progress import ProgressFn
from .backends import BACKENDS, get_backend
from .devices import DEVICE_PLACEHOLDERS, command_descriptor, cpu_facts, detect_device
from .quantize import quantize_onnx, random_calibration, scheme_for
from .remote import DeviceTimer, parse_host
from .runnable import onnx_bytes
from .runner import BACKEND_RUNTIMES
from .timing import DEFAULT, PROTOCOLS, QUICK, Measurement, Protocol, settle

_EXPORT = threading.Lock()  # torch.onnx.export is not thread-safe: several hosts' timers export in turn


@dataclass(frozen=True)
class Graph:
    module: object  # torch.nn.Module, in eval mode
    inputs: dict[str, np.ndarray]
    arch: str | None = None  # a whole net's arch string; None for a LUT's op graphs
    onnx: Path | None = None  # its ONNX file when one exists already (export's): timed as it is, not exported again


@dataclass
class Timed:
    """A batch as a timer measured it, by graph name. A graph the device runner failed to time is in ``errors``
    (a backend or a command raises instead); ``details``: what the runner records beside a measurement (its round
    medians); ``engines``: the TensorRT engines trtexec built, brought back; ``seconds``: the wall time each graph
    took (the runner's interleaved batch shared evenly)."""

    measurements: dict[str, Measurement]
    seconds: dict[str, float]
    errors: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)


def int8_graph(graph: Graph, scheme: str, name: str = "graph") -> bytes:
    """A timing graph as Q/DQ INT8 ONNX (``quantize.py``), calibrated on random inputs of its shape: its latency
    is the point, and a Q/DQ graph runs as fast whatever its scales."""
    with _EXPORT:
        onnx = onnx_bytes(graph.module, graph.inputs)
    return quantize_onnx(onnx, random_calibration(graph.inputs), scheme, name)


class BackendTimer:
    """A backend of this process (``backends.get_backend``), one graph after the other."""

    where = "this machine"

    def __init__(self, backend, protocol: Protocol):
        self.backend, self.protocol = backend, protocol

    def versions(self) -> dict:
        return self.backend.version()

    def facts(self) -> dict:
        return detect_device()

    def _model(self, graph: Graph, name: str = "graph"):
        """What the backend loads: the graph's own ONNX file when it has one and the backend reads ONNX, else the
        module (exported by the backend as needed), or its INT8 Q/DQ graph."""
        info = BACKENDS.get(getattr(self.backend, "name", ""))
        if graph.onnx is not None and (info is None or info.reads_onnx):
            return str(graph.onnx)
        if getattr(self.backend, "precision", "fp32") != "int8":
            return graph.module
        return int8_graph(graph, scheme_for(self.backend.name), name)

    def settle(self, graph: Graph) -> None:
        settle(self.backend.load(self._model(graph), graph.inputs).run_once_ms, self.protocol)

    def time(self, graphs: dict[str, Graph], progress: ProgressFn | None = None, tag: str = "",
             stage: str = "timing") -> dict[str, Measurement]:
        return self.time_batch(graphs, progress, tag, stage=stage).measurements

    def time_batch(self, graphs: dict[str, Graph], progress: ProgressFn | None = None, tag: str = "",
                   engine_dir: Path | None = None, keep_engines: set[str] | None = None,
                   stage: str = "timing") -> Timed:
        """``time``, with the seconds each graph took (engines are built here by whoever builds the files)."""
        out, seconds = {}, {}
        for n, (name, g) in enumerate(graphs.items(), start=1):
            t0 = time.perf_counter()
            out[name] = self.backend.load(self._model(g, name), g.inputs).measure(self.protocol)
            seconds[name] = time.perf_counter() - t0
            if progress is not None:
                progress(stage, n, len(graphs), detail=name)
        return Timed(out, seconds)

    def measured_note(self, retimed: int) -> str | None:
        """What a report says of who timed a batch with ``retimed`` calibration nets among it (nothing: here)."""
        return None


class RunnerTimer:
    """The device runner: graphs exported to ONNX here, timed in interleaved rounds there (or here).

    With ``cache_dir``, each graph's ONNX file is kept there under its name (names must identify a graph's
    structure and shapes): a re-run after a dropped connection does not export again (~1-2 s a graph)."""

    def __init__(self, device_timer, cache_dir=None):
        self.device, self.cache_dir = device_timer, cache_dir
        self.where = device_timer.where

    def versions(self) -> dict:
        return dict(self.device.prepare().get("versions") or {})

    def facts(self) -> dict:
        return self.device.facts()

    def settle(self, graph: Graph) -> None:
        pass  # the runner settles on the heaviest graph of each batch itself

    def time(self, graphs: dict[str, Graph], progress: ProgressFn | None = None, tag: str = "",
             stage: str = "timing") -> dict[str, Measurement]:
        timed = self.time_batch(graphs, progress, tag, stage=stage)
        if timed.errors:
            name, why = next(iter(timed.errors.items()))
            raise UserError(f"timing {name} on {self.where} failed: {why}")
        return timed.measurements

    def time_batch(self, graphs: dict[str, Graph], progress: ProgressFn | None = None, tag: str = "",
                   engine_dir: Path | None = None, keep_engines: set[str] | None = None,
                   stage: str = "timing") -> Timed:
        """All graphs in one interleaved batch; a graph that failed there is in ``errors``. With ``engine_dir``
        (trtexec), the engines of ``keep_engines`` (default all) come back there as ``NAME.engine``."""
        t0 = time.perf_counter()
        onnx = {name: self._onnx(name, g) for name, g in graphs.items()}
        result = self.device.time(onnx, progress=progress, tag=tag, save_engines=engine_dir is not None,
                                  engine_dir=engine_dir, keep_engines=keep_engines, stage=stage)
        share = (time.perf_counter() - t0) / max(1, len(graphs))
        return Timed(result.measurements, {name: share for name in graphs}, result.errors,
                     {name: {"round_medians_ms": s.get("round_medians_ms")} for name, s in result.stats.items()},
                     result.engines)

    def measured_note(self, retimed: int) -> str | None:
        return (f"measured on {self.where} by the device runner ({self.device.runtime}), {retimed} calibration "
                "net(s) re-timed in the same interleaved rounds")

    def _onnx(self, name: str, graph: Graph) -> bytes:
        """The graph's ONNX: export's own file, else exported here (as Q/DQ INT8 when the runner times int8)."""
        if graph.onnx is not None:
            return Path(graph.onnx).read_bytes()
        scheme = None
        if getattr(self.device, "precision", "fp32") == "int8":
            scheme = scheme_for(self.device.runtime)
        if self.cache_dir is None:
            if scheme is not None:
                return int8_graph(graph, scheme, name)
            with _EXPORT:
                return onnx_bytes(graph.module, graph.inputs)
        return onnx_file(name, graph, self.cache_dir, scheme).read_bytes()


def _shapes(graph: Graph) -> str:
    return ",".join(f"{k}:{tuple(v.shape)}" for k, v in graph.inputs.items())


def onnx_file(name: str, graph: Graph, folder, int8_scheme: str | None = None) -> Path:
    """The graph exported to ONNX in ``folder`` under its name's hash (names identify a graph's structure and
    shapes), once: a re-run after an interruption does not export again (~1-2 s a graph). With ``int8_scheme``
    it is the graph's Q/DQ INT8 form (``int8_graph``), kept under its own hash."""
    key = f"{name}|{_shapes(graph)}" + (f"|int8:{int8_scheme}" if int8_scheme else "")
    path = Path(folder) / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".onnx")
    if not path.is_file():
        if int8_scheme:
            data = int8_graph(graph, int8_scheme, name)
        else:
            with _EXPORT:
                data = onnx_bytes(graph.module, graph.inputs)
        atomic_write_bytes(path, data)
    return path


COMMAND_DIR = CACHE_DIR / "command"  # its log and ONNX files, without cache_dir


class CommandTimer:
    """A device that is a command (descriptor ``runner = "command"``): called once per graph and per call
    (``calls``), with the graph's ONNX file, arch and settings substituted, and read from the last line of its
    stdout (milliseconds). The values of a graph's calls become its ``Measurement`` (``calls`` says so).

    Every call's value is appended to ``timings.jsonl`` in ``cache_dir`` the moment it is read; a re-run
    (after a failure, a timeout, Ctrl-C) takes finished calls from there and calls the command only for the
    rest. ``tag`` times graphs again on purpose (the profiler's end check): it is part of a value's key."""

    def __init__(self, descriptor, *, space: str, precision: str, batch: int, threads: int, cache_dir=None,
                 key: str = "default"):
        self.descriptor = descriptor
        self.template = CommandTemplate.parse(descriptor.command, DEVICE_PLACEHOLDERS, f"device {descriptor.name}")
        self.settings = {"space": space, "precision": precision, "batch": batch, "threads": threads}
        self.folder = Path(cache_dir) if cache_dir is not None else COMMAND_DIR / result_key(key=key)
        self.log = ResultLog(self.folder / "timings.jsonl")
        self.where = f"device {descriptor.name} (its command)"
        self._version: str | None = None

    def _command_version(self) -> str | None:
        """The first line printed by the descriptor's ``version_command`` (recorded, not compared)."""
        if self.descriptor.version_command and self._version is None:
            try:
                out = subprocess.run(shlex.split(self.descriptor.version_command), capture_output=True, text=True,
                                     timeout=60, stdin=subprocess.DEVNULL)
                lines = (out.stdout or out.stderr).strip().splitlines()
                self._version = lines[0].strip() if lines else ""
            except (OSError, ValueError, subprocess.SubprocessError) as e:
                self._version = f"unknown ({type(e).__name__})"
        return self._version

    def versions(self) -> dict:
        d = {"command": self.template.text, "command_calls": self.descriptor.calls,
             "command_timeout_s": self.descriptor.timeout_s}
        if self.descriptor.version_command:
            d["command_version"] = self._command_version()
        return d

    def facts(self) -> dict:
        """What identifies the device: its command; the machine that called it is recorded beside (a simulator's
        speed is this machine's), not compared."""
        here = {"hostname": platform.node(), "os": platform.platform(), "cpu": cpu_facts().get("cpu")}
        return {"runner": "command", "command": self.template.text, "called_from": here,
                **({"command_version": self._command_version()} if self.descriptor.version_command else {})}

    def settle(self, graph: Graph) -> None:
        pass  # the command owns its warm-up

    def time(self, graphs: dict[str, Graph], progress: ProgressFn | None = None, tag: str = "",
             stage: str = "timing") -> dict[str, Measurement]:
        return self.time_batch(graphs, progress, tag, stage=stage).measurements

    def measured_note(self, retimed: int) -> str | None:
        return (f"measured by {self.where}: {self.descriptor.calls} call(s) per net, {retimed} calibration net(s) "
                "re-timed among them")

    def time_batch(self, graphs: dict[str, Graph], progress: ProgressFn | None = None, tag: str = "",
                   engine_dir: Path | None = None, keep_engines: set[str] | None = None,
                   stage: str = "timing") -> Timed:
        """``time``, with the seconds each graph took (its calls, or none when all were logged before)."""
        out, seconds = {}, {}
        for n, (name, g) in enumerate(graphs.items(), start=1):
            t0 = time.perf_counter()
            base = result_key(command=self.template.text, graph=name, arch=g.arch, shapes=_shapes(g), tag=tag,
                              **self.settings)
            values = []
            for call in range(self.descriptor.calls):
                record = self.log.get(f"{base}#{call}")
                if record is None:
                    path = Path(g.onnx) if g.onnx is not None else onnx_file(name, g, self.folder) \
                        if "onnx" in self.template.used else ""  # a command that reads no graph gets none made
                    item = f"net {g.arch}" if g.arch else f"graph {name}"
                    ms = run_for_number(self.template.argv(onnx=str(path), arch=g.arch or "", name=name,
                                                           **self.settings),
                                        timeout_s=self.descriptor.timeout_s, what=self.where, item=item,
                                        output_dir=self.folder,
                                        timeout_hint=" (timeout_s of the descriptor)")
                    if ms <= 0:
                        raise UserError(f"{self.where}: the command printed {ms:g} for {item}: a latency must be a "
                                        "positive number of milliseconds")
                    record = self.log.add(f"{base}#{call}", {"graph": name, "arch": g.arch, "call": call,
                                                             "latency_ms": ms, "tag": tag})
                values.append(float(record["latency_ms"]))
            m = Measurement.from_samples(values)
            out[name] = Measurement(**{**m.to_dict(), "calls": len(values)})
            seconds[name] = time.perf_counter() - t0
            if progress is not None:
                progress(stage, n, len(graphs), detail=name)
        return Timed(out, seconds)


def make_timer(backend_name: str, protocol: Protocol, precision: str = "fp32", threads: int = 1,
               clock: str = "wall", host=None, ssh=None, key: str = "default", cache_dir=None, descriptor=None,
               space: str | None = None, batch: int = 1):
    """The command of ``descriptor`` when its runner is "command" (backend name "command"; ``space`` and
    ``batch`` are substituted into it), the device runner for ``host`` (a ``remote.Host``) or for backend
    trtexec, else the backend here."""
    if backend_name == "command" or (descriptor is not None and descriptor.runner == "command"):
        if descriptor is None or descriptor.runner != "command":
            raise UserError("backend 'command' times through a device descriptor with runner = \"command\"")
        if host is not None:
            raise UserError(f"device {descriptor.name} is a command, which reaches its device itself: drop --host")
        return CommandTimer(descriptor, space=space or "", precision=precision, batch=batch, threads=threads,
                            cache_dir=cache_dir, key=key)
    if host is not None or backend_name == "trtexec":
        runtime = BACKEND_RUNTIMES.get(backend_name)
        if runtime is None:
            raise _not_on_runner(backend_name)
        return RunnerTimer(DeviceTimer(host, protocol, runtime=runtime, precision=precision, threads=threads,
                                       clock=clock, options=ssh, key=key), cache_dir=cache_dir)
    return BackendTimer(get_backend(backend_name, precision=precision, threads=threads, clock=clock), protocol)


def _not_on_runner(backend_name: str) -> UserError:
    """The refusal of a backend the device runner has no runtime for."""
    return UserError(f"backend {backend_name} cannot time through the device runner (it runs trtexec or "
                     "onnxruntime on CPU): drop --host, or use --backend onnxruntime or trtexec")


def profile_protocol(profile, quick: bool = False) -> Protocol:
    """The timing protocol a profile was taken with (``QUICK`` when asked for)."""
    if quick:
        return QUICK
    stored = profile.runtime.get("protocol_settings")
    if isinstance(stored, dict):
        return Protocol.from_dict(stored)
    return PROTOCOLS.get(profile.runtime.get("protocol"), DEFAULT)


@dataclass(frozen=True)
class Reach:
    """How a profile's device is timed (``reach_for_profile``), decided from the profile alone."""

    kind: str  # "command": the descriptor's command; "runner": the device runner (on a host, or here for trtexec);
    # "here": a backend of this process
    backend: str  # what its timings are recorded under: the profile's backend, "command", or the stand-in
    runtime: str | None = None  # the device runner's runtime (kind "runner")
    descriptor: object | None = None  # the device descriptor (kind "command")


def runner_runtime(backend_name: str) -> str:
    """The device runner's runtime for a backend (``runner.BACKEND_RUNTIMES``), ONNX Runtime on the CPU standing in
    for one the runner has none of."""
    return BACKEND_RUNTIMES.get(backend_name, "onnxruntime")


def reach_for_profile(profile, host=None, stand_in: bool = False) -> Reach:
    """How ``timer_for_profile`` times the device ``profile`` was taken on: its descriptor's command, the device
    runner on ``host`` (or here for trtexec), else the profile's backend here. A profile of timings taken
    elsewhere has no device; with ``stand_in`` (export: measure what can be measured) ONNX Runtime stands in for
    a backend this package cannot time with, and the runner's runtime for a backend the runner lacks."""
    runtime = profile.runtime or {}
    descriptor = command_descriptor(profile)
    if descriptor is not None:
        if host is not None:
            raise UserError(f"profile {profile.name!r} was taken through device {descriptor.name}'s command, which "
                            "reaches its device itself: drop --host")
        return Reach("command", "command", descriptor=descriptor)
    backend = runtime.get("backend")
    if not stand_in and (profile.reference or backend not in BACKENDS):
        raise UserError(f"profile {profile.name!r} holds timings {'published' if profile.reference else 'taken'} "
                        f"elsewhere ({backend or 'no backend'}): there is no device to time on; profile the device "
                        "(`pomonag-edge profile`), or use a profile taken on it")
    if backend not in BACKENDS:  # a reference profile's "published table"
        backend = "onnxruntime"
    if host is not None or backend == "trtexec":
        if not stand_in and backend not in BACKEND_RUNTIMES:
            raise _not_on_runner(backend)
        return Reach("runner", backend, runtime=runner_runtime(backend))
    return Reach("here", backend)


def timer_for_profile(profile, *, host=None, ssh=None, quick: bool = False, precision: str | None = None,
                      key: str = "default", cache_dir=None, stand_in: bool = False):
    """A timer for the device ``profile`` was taken on, set as it was (backend, precision, threads, batch,
    clock, protocol), reached as ``reach_for_profile`` says: the descriptor's command for a command device, the
    device runner on ``host`` (``USER@ADDR`` or a ``remote.Host``), else the profile's backend on this machine.
    What the timer times is comparable with the profile's calibration timings."""
    runtime = profile.runtime or {}
    precision = precision or runtime.get("precision") or "fp32"
    threads, batch = int(runtime.get("threads") or 1), int(runtime.get("batch") or 1)
    if isinstance(host, str):
        host = parse_host(host)
    reach = reach_for_profile(profile, host, stand_in)
    protocol = profile_protocol(profile, quick)
    if reach.kind == "command":
        return make_timer("command", protocol, precision, threads, key=key, cache_dir=cache_dir,
                          descriptor=reach.descriptor, space=profile.space, batch=batch)
    name = reach.runtime if reach.kind == "runner" else reach.backend
    return make_timer(name, protocol, precision, threads, runtime.get("clock") or "wall", host, ssh, key=key,
                      cache_dir=cache_dir)
