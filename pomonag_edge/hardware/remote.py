"""Time named ONNX graphs with the device runner (``runner.py``), on this machine or on a device over SSH.

    timer = DeviceTimer(parse_host("me@orin"), runtime="trtexec", precision="fp16", protocol=QUICK)
    measurements = timer.time({"net-1": onnx_bytes, ...})      # {name: Measurement}

The host builds every graph; the device only needs python3 (>= 3.6) and its runtime. The transport is
the system ``ssh`` and ``scp`` run as subprocesses: they honour the user's ``~/.ssh/config`` (host
aliases, keys, agents, ProxyJump, ControlMaster for connection reuse), add no Python dependency, and are
how a Jetson user already reaches the board. ``BatchMode`` makes a missing key fail at once instead of
prompting; ``ConnectTimeout`` bounds an unreachable host.

The device keeps a work folder per timer (``remote_dir/<key>``): graphs are uploaded once (by content
hash), and the runner appends every finished round to a log there, so after a dropped connection the same
command continues without timing finished graphs again.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import CACHE_DIR
from ..progress import ProgressFn
from .runner import EXIT_NO_RUNTIME, PROGRESS_PREFIX, RUNTIMES
from .timing import Measurement, Protocol

RUNNER = Path(__file__).with_name("runner.py")
LOCAL_DIR = CACHE_DIR / "runner"


class RemoteError(UserError):
    """The device cannot be reached, lacks python3 or its runtime, or the connection dropped."""


@dataclass(frozen=True)
class Host:
    user: str | None
    addr: str
    port: int | None = None

    @property
    def target(self) -> str:
        return f"{self.user}@{self.addr}" if self.user else self.addr

    def __str__(self) -> str:
        return self.target + (f":{self.port}" if self.port else "")


def parse_host(text: str) -> Host:
    """``USER@ADDR[:PORT]``, ``ADDR``, an ssh config alias, or ``USER@[IPv6]:PORT``."""
    m = re.fullmatch(r"(?:([^@\s:]+)@)?(\[[0-9a-fA-F:.]+\]|[^@\s:\[\]]+)(?::(\d+))?", text.strip())
    if not m:
        raise UserError(f"--host {text!r} is not USER@ADDR[:PORT]")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise UserError(f"--host {text!r}: port {port} is out of range")
    return Host(m.group(1), m.group(2).strip("[]"), port)


@dataclass(frozen=True)
class SSHOptions:
    """How to reach hosts: an ssh config file (``-F``, default the user's), the interpreter and work folder there."""

    config: str | None = None
    python: str = "python3"
    remote_dir: str = ".cache/pomonag-edge/runner"  # relative to the login folder
    connect_timeout_s: int = 10
    extra: tuple[str, ...] = ()  # more ``-o`` options


def _tail(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class SSHTransport:
    """ssh / scp to one host; every call is a subprocess of the system client."""

    def __init__(self, host: Host, options: SSHOptions):
        if shutil.which("ssh") is None or shutil.which("scp") is None:
            raise RemoteError("--host needs the OpenSSH client (ssh, scp) on this machine: install openssh-client")
        self.host, self.options = host, options

    def _common(self) -> list[str]:
        o = self.options
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={o.connect_timeout_s}"]
        if o.config:
            args = ["-F", o.config] + args
        for extra in o.extra:
            args += ["-o", extra]
        return args

    def ssh_argv(self, command: str) -> list[str]:
        port = ["-p", str(self.host.port)] if self.host.port else []
        return ["ssh", *self._common(), *port, self.host.target, command]

    def run(self, command: str, timeout: float | None = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout)

    def popen(self, command: str, stderr) -> subprocess.Popen:
        return subprocess.Popen(self.ssh_argv(command), stdout=subprocess.PIPE, stderr=stderr, text=True)

    def _remote(self, path: str) -> str:
        addr = f"[{self.host.addr}]" if ":" in self.host.addr else self.host.addr
        user = f"{self.host.user}@" if self.host.user else ""
        return f"{user}{addr}:{path}"

    def _scp(self, sources: list[str], dest: str) -> None:
        port = ["-P", str(self.host.port)] if self.host.port else []
        p = subprocess.run(["scp", "-q", *self._common(), *port, *sources, dest], capture_output=True, text=True)
        if p.returncode != 0:
            raise RemoteError(f"copying to/from {self.host} failed: {_tail(p.stderr) or f'scp exit {p.returncode}'}")

    def put(self, paths: list[Path], remote_dir: str) -> None:
        for start in range(0, len(paths), 200):  # keeps the command line short
            self._scp([str(p) for p in paths[start:start + 200]], self._remote(remote_dir.rstrip("/") + "/"))

    def get(self, remote_path: str, local: Path) -> None:
        self._scp([self._remote(remote_path)], str(local))


class LocalTransport:
    """The same runner on this machine, through a subprocess of this Python."""

    host = None

    def run(self, command: str, timeout: float | None = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout)

    def popen(self, command: str, stderr) -> subprocess.Popen:
        return subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=stderr, text=True)

    def put(self, paths: list[Path], remote_dir: str) -> None:
        for p in paths:
            shutil.copyfile(p, Path(remote_dir) / p.name)

    def get(self, remote_path: str, local: Path) -> None:
        shutil.copyfile(remote_path, local)


def measurement_of(stats: dict) -> Measurement:
    return Measurement(**{k: stats[k] for k in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "runs", "repeats")})


@dataclass
class RunnerResult:
    measurements: dict[str, Measurement]
    stats: dict[str, dict]  # the runner's per-graph record: round medians, temperature, engine...
    errors: dict[str, str]
    raw: dict  # the whole result: device state before and after, versions, machine facts
    engines: dict[str, Path] = field(default_factory=dict)


class DeviceTimer:
    """Times batches of named ONNX graphs through the runner, locally (``host=None``) or over SSH.

    ``key`` names the work folder on the device (say, the profile's path): calls with the same key share
    uploaded graphs and finished rounds, which is what lets a re-run resume."""

    def __init__(self, host: Host | None, protocol: Protocol, runtime: str = "onnxruntime", precision: str = "fp32",
                 threads: int = 1, clock: str = "wall", options: SSHOptions | None = None, key: str = "default",
                 max_temp_c: float | None = None, local_dir: Path | None = None):
        if runtime not in RUNTIMES:
            raise UserError(f"the device runner times with {' or '.join(RUNTIMES)}, not {runtime!r}")
        self.host, self.protocol, self.runtime = host, protocol, runtime
        self.precision, self.threads, self.clock, self.max_temp_c = precision, threads, clock, max_temp_c
        self.options = options or SSHOptions()
        digest = hashlib.sha256(json.dumps([key, runtime, precision, threads, clock]).encode()).hexdigest()[:16]
        if host is None:
            self.transport = LocalTransport()
            self.workdir = str((local_dir or LOCAL_DIR) / digest)
            self.python = [sys.executable]
        else:
            self.transport = SSHTransport(host, self.options)
            self.workdir = f"{self.options.remote_dir.rstrip('/')}/{digest}"
            self.python = shlex.split(self.options.python)
        self.where = str(host) if host else "this machine"
        self.info: dict | None = None

    # ------------------------------------------------------------------ remote steps

    def _fail(self, p, doing: str) -> None:
        """Turn a failed ssh/runner exit into one line."""
        line = _tail(p.stderr)
        if p.returncode == 255 and self.host is not None:
            raise RemoteError(f"cannot reach {self.host} over ssh ({line or 'ssh exit 255'}): check the address, "
                              "that sshd runs there and that your key is accepted (ssh -o BatchMode=yes works)")
        if p.returncode == 127:
            raise RemoteError(f"{self.where} has no {' '.join(self.python)} ({line}): install python3 (>= 3.6) "
                              "there, or name an interpreter with --remote-python")
        if "SyntaxError" in (p.stderr or ""):
            raise RemoteError(f"{' '.join(self.python)} on {self.where} is older than python 3.6: name a newer "
                              "one with --remote-python")
        if p.returncode == EXIT_NO_RUNTIME:
            raise RemoteError(f"{self.where}: {line.removeprefix('runner: ')}")
        raise RemoteError(f"{doing} on {self.where} failed (exit {p.returncode}): {line}")

    def _runner_argv(self) -> str:
        args = [*self.python, "runner.py", "--runtime", self.runtime, "--precision", self.precision,
                "--threads", str(self.threads), "--clock", self.clock]
        return " ".join(shlex.quote(a) for a in args)

    def _cd(self, command: str) -> str:
        return f"cd {shlex.quote(self.workdir)} && {command}"

    def prepare(self) -> dict:
        """Create the work folder, copy the runner, check python and the runtime; returns the runner's facts."""
        if self.info is not None:
            return self.info
        p = self.transport.run(f"mkdir -p {shlex.quote(self.workdir + '/models')}")
        if p.returncode != 0:
            self._fail(p, "creating the work folder")
        self.transport.put([RUNNER], self.workdir)
        p = self.transport.run(self._cd(self._runner_argv() + " --check --models models"))
        if p.returncode != 0:
            self._fail(p, "checking the runtime")
        try:
            self.info = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(f"the runner on {self.where} answered something else than JSON: "
                              f"{p.stdout.strip()[:200]!r}") from None
        return self.info

    def facts(self) -> dict:
        """What the device is and runs (for a profile's device record)."""
        info = self.prepare()
        return {**info.get("machine", {}), **(info.get("versions") or {})}

    def time(self, graphs: dict[str, bytes], progress: ProgressFn | None = None, save_engines: bool = False,
             engine_dir: Path | None = None, keep_engines: set[str] | None = None, tag: str = "",
             stage: str = "timing") -> RunnerResult:
        """Time every graph; returns measurements by name (graphs that failed are in ``errors``). With
        ``save_engines`` (trtexec), the engines of ``keep_engines`` (default all) come back to ``engine_dir``.
        Finished rounds of the same graphs are reused unless ``tag`` differs (to time them again)."""
        if not graphs:
            return RunnerResult({}, {}, {}, {})
        info = self.prepare()
        files = {name: hashlib.sha256(data).hexdigest()[:20] + ".onnx" for name, data in graphs.items()}
        sizes = info.get("models") or {}
        there = {f for name, f in files.items() if sizes.get(f) == len(graphs[name])}  # a cut-off upload is redone
        with tempfile.TemporaryDirectory(prefix="pomonag-runner-") as tmp:
            tmp = Path(tmp)
            upload = []
            for name, data in graphs.items():
                if files[name] not in there and not (tmp / files[name]).exists():
                    (tmp / files[name]).write_bytes(data)
                    upload.append(tmp / files[name])
            if upload:
                self.transport.put(upload, self.workdir + "/models")
            info["models"] = {**sizes, **{files[n]: len(d) for n, d in graphs.items()}}
            staging = tmp / "batch"
            staging.mkdir()
            (staging / "protocol.json").write_text(json.dumps(self.protocol.to_dict()))
            (staging / "batch.txt").write_text("\n".join(sorted(set(files.values()))) + "\n")
            self.transport.put([staging / "protocol.json", staging / "batch.txt"], self.workdir)
            extra = ""
            if self.max_temp_c is not None:
                extra += f" --max-temp-c {self.max_temp_c:g}"
            if tag:
                extra += f" --tag {shlex.quote(tag)}"
            raw = self._run_runner(self._cd(self._runner_argv() + " --models models --protocol protocol.json "
                                            "--out result.json --only-file batch.txt" + extra),
                                   {f: n for n, f in files.items()}, progress, stage, tmp / "result.json")
            by_file = raw.get("results", {})
            stats = {name: by_file[f] for name, f in files.items() if f in by_file}
            errors = {name: raw.get("errors", {}).get(f, "not timed") for name, f in files.items() if f not in by_file}
            engines = {}
            if save_engines and engine_dir is not None:
                engine_dir.mkdir(parents=True, exist_ok=True)
                for name, s in stats.items():
                    if s.get("engine") and (keep_engines is None or name in keep_engines):
                        local = engine_dir / f"{name}.engine"
                        self.transport.get(f"{self.workdir}/{s['engine']}", local)
                        engines[name] = local
        return RunnerResult({n: measurement_of(s) for n, s in stats.items()}, stats, errors, raw, engines)

    def _run_runner(self, command: str, names: dict[str, str], progress: ProgressFn | None, stage: str,
                    local: Path) -> dict:
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = self.transport.popen(command, stderr=err)
            try:
                for line in proc.stdout:
                    if line.startswith(PROGRESS_PREFIX) and progress is not None:
                        try:
                            event = json.loads(line[len(PROGRESS_PREFIX):])
                        except ValueError:
                            continue
                        if event.get("kind") in ("start", "round", "done"):
                            progress(stage, int(event["done"]), int(event["total"]),
                                     detail=names.get(event.get("item")))
                proc.wait()
            except BaseException:  # Ctrl-C: stop the local ssh; the device keeps what it finished
                proc.kill()
                proc.wait()
                raise
            err.seek(0)
            p = subprocess.CompletedProcess(command, proc.returncode, "", err.read())
        if p.returncode == 255 and self.host is not None:
            raise RemoteError(f"lost the connection to {self.host} while timing ({_tail(p.stderr) or 'ssh exit 255'})"
                              ": what was measured is kept there; run the same command again to continue")
        if p.returncode != 0:
            self._fail(p, "timing")
        self.transport.get(f"{self.workdir}/result.json", local)
        return json.loads(local.read_text())
