"""Independent jobs (one net's training each) fanned out: here, one after another, or as Ray tasks on a cluster.

``fan_out(work, shared, jobs, on_result)`` runs ``work(shared, job.key, checkpoint, progress)`` for each job and
calls ``on_result(job, result)`` in this process as each one finishes. ``shared`` is what every job needs (a
trainer with the task's data, or the data and recipe): with Ray it goes to the cluster once (``ray.put``) and each
task reads it from the object store. ``work`` reports ``progress(done, total, loss=None)`` (epochs) and keeps its
resumable state in ``checkpoint`` (``load() -> bytes | None``, ``save(bytes)``).

Where files are written: only here, by the driver (the process the user started). A Ray task is a generator
that yields each epoch's checkpoint as it is saved and then its result; the driver writes the checkpoint to
``job.checkpoint``, where a local run keeps it, and sends the latest one along whenever it (re)starts the job.
So no node needs to see the output folder, a worker that dies loses at most its epoch in flight (the job is
started again from the driver's copy, ``retries`` times), and when the cluster itself goes away the run ends
with one line and the same command resumes from the driver's files.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import MissingDependencyError, UserError
from .files import atomic_write_bytes

RAY_INSTALL = "pip install -e '.[ray]' (or pip install 'pomonag-edge[ray]')"
CONNECT_TIMEOUT_S = 5.0
DATA_MODES = ("object-store", "shared")


@dataclass(frozen=True)
class Job:
    key: str  # what ``work`` receives (an arch string)
    label: str  # how the progress display names it
    checkpoint: Path | None = None  # this job's per-epoch state, on the driver


@dataclass(frozen=True)
class RayOptions:
    """Where and how jobs run on Ray: ``address`` is HOST:PORT of a running cluster's head, ``auto`` (the cluster
    this machine belongs to) or ``local`` (a Ray started in this process). Each job reserves ``cpus_per_net`` CPUs
    and ``gpus_per_net`` GPUs (0.25 packs four per GPU). ``data``: ``object-store`` sends the
    user's data to the cluster once; ``shared``: every node reads it from the same path."""

    address: str
    cpus_per_net: float = 1.0
    gpus_per_net: float = 0.0
    data: str = "object-store"
    retries: int = 2

    def __post_init__(self):
        if not self.cpus_per_net > 0:
            raise UserError(f"--cpus-per-net must be above 0, got {self.cpus_per_net:g}")
        if self.gpus_per_net < 0 or self.gpus_per_net > 1 and self.gpus_per_net != int(self.gpus_per_net):
            raise UserError(f"--gpus-per-net must be 0, a fraction of one GPU or a whole number, got "
                            f"{self.gpus_per_net:g}")
        if self.data not in DATA_MODES:
            raise UserError(f"--ray-data must be one of {', '.join(DATA_MODES)}, got {self.data!r}")
        if self.retries < 0:
            raise UserError(f"--retries must be at least 0, got {self.retries}")

    @property
    def threads(self) -> int:
        """torch threads of a task: the CPUs it reserved (at least one)."""
        return max(1, int(self.cpus_per_net))


class FileCheckpoint:
    """A job's state in one file, rewritten atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> bytes | None:
        return self.path.read_bytes() if self.path.is_file() else None

    def save(self, blob: bytes) -> None:
        atomic_write_bytes(self.path, blob)


def as_checkpoint(checkpoint):
    """None, a path (a ``FileCheckpoint``), or anything with ``load`` and ``save``."""
    if checkpoint is None or hasattr(checkpoint, "save"):
        return checkpoint
    return FileCheckpoint(checkpoint)


class _Board:
    """Counts jobs done, running and queued and reports them, with each running job's epochs, to ``progress``."""

    def __init__(self, progress, stage: str, jobs: list[Job], done_before: int):
        self.progress, self.stage = progress, stage
        self.total, self.done, self.running = len(jobs) + done_before, done_before, set()

    def _report(self):
        if self.progress is not None:
            queued = self.total - self.done - len(self.running)
            self.progress(self.stage, self.done, self.total, detail=f"{len(self.running)} running, {queued} queued")

    def start(self, job: Job):
        self.running.add(job.key)
        self._report()

    def epochs(self, job: Job):
        return lambda done, total, loss=None: self.progress is not None and self.progress(job.label, done, total, loss)

    def lost(self, job: Job):
        self.running.discard(job.key)
        self._report()

    def finish(self, job: Job):
        self.running.discard(job.key)
        self.done += 1
        self._report()


def fan_out(work, shared, jobs, on_result, ray: RayOptions | None = None, progress=None, stage: str = "nets",
            done_before: int = 0, say=None) -> None:
    """Run every job (here in turn, or on Ray with ``ray``); ``on_result(job, result)`` as each finishes.
    ``progress(stage, done, total, detail=...)`` counts jobs (``done_before`` finished earlier), and
    ``progress(job.label, epoch, epochs, loss)`` follows each running job. ``say(line)`` tells of a restarted job."""
    jobs = list(jobs)
    board = _Board(progress, stage, jobs, done_before)
    if ray is None:
        board._report()
        for job in jobs:
            board.start(job)
            result = work(shared, job.key, as_checkpoint(job.checkpoint), board.epochs(job))
            on_result(job, result)
            board.finish(job)
    elif jobs:  # nothing left to train needs no cluster
        connected = connect(ray.address)  # before any display: a bad address or a missing package is one line
        try:
            board._report()
            _fan_out_ray(work, shared, jobs, on_result, ray, board, say or (lambda line: print(line, file=sys.stderr)))
        finally:
            if connected:
                import_ray().shutdown()
    else:
        board._report()


# ------------------------------------------------------------------ Ray

def import_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--ray needs the ray package: {RAY_INSTALL}") from None
    return ray


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (HOST:PORT, ``auto`` or ``local``); True when this call connected
    (the caller then disconnects). An address nothing answers on fails within ``CONNECT_TIMEOUT_S``, one line."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"logging_level": "ERROR", "log_to_driver": False}
    if address == "local":
        ray.init(include_dashboard=False, **quiet)
        return True
    if address != "auto":
        host, sep, port = address.removeprefix("ray://").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UserError(f"--ray takes HOST:PORT of a Ray head (`ray start --head` prints it), auto or local; "
                            f"got {address!r}")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise UserError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}): start one there with "
                            f"`ray start --head --port {port}`, or pass --ray local") from None
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    return True


def _check_fits(ray, opts: RayOptions) -> None:
    """Refuse a job size that no alive node can hold (Ray would wait for it forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= opts.cpus_per_net and r.get("GPU", 0) >= opts.gpus_per_net for r in nodes):
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPU / {r.get('GPU', 0):g} GPU" for r in nodes) or "no alive node"
    raise UserError(f"no node of the Ray cluster has {opts.cpus_per_net:g} CPU(s) and {opts.gpus_per_net:g} GPU(s) "
                    f"for one net (nodes: {have}); lower --cpus-per-net / --gpus-per-net or add a node")


def _fan_out_ray(work, shared, jobs, on_result, opts: RayOptions, board: _Board, say) -> None:
    ray = import_ray()
    _check_fits(ray, opts)
    shared_ref = ray.put(shared)
    task = ray.remote(_ray_job).options(num_cpus=opts.cpus_per_net, num_gpus=opts.gpus_per_net, max_retries=0)
    running: dict = {}  # generator -> (job, attempt)

    def submit(job: Job, attempt: int):
        blob = FileCheckpoint(job.checkpoint).load() if job.checkpoint is not None else None
        running[task.remote(work, shared_ref, job.key, blob, __version__)] = (job, attempt)

    for job in jobs:
        submit(job, 1)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for gen in ready:
            job, attempt = running[gen]
            try:
                kind, *payload = ray.get(next(gen))
            except StopIteration:
                raise RuntimeError(f"{job.label}: its Ray task ended without a result") from None
            except ray.exceptions.RayTaskError as e:  # the job itself failed: its own error, as here
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, BaseException) else e) from None
            except ray.exceptions.RayError as e:  # a worker, node or object lost: start the job again
                del running[gen]
                board.lost(job)
                if attempt > opts.retries:
                    raise UserError(f"{job.label}: its Ray worker was lost {attempt} time(s) ({type(e).__name__}); "
                                    "finished nets and its last epoch are saved, run the same command again to "
                                    "resume") from None
                say(f"{job.label}: Ray worker lost ({type(e).__name__}); restarting it from its last saved epoch "
                    f"(attempt {attempt + 1} of {opts.retries + 1})")
                submit(job, attempt + 1)
                continue
            if kind == "started":
                board.start(job)
            elif kind == "epoch":
                board.epochs(job)(*payload)
            elif kind == "checkpoint":
                FileCheckpoint(job.checkpoint).save(payload[0])
            elif kind == "result":
                del running[gen]
                on_result(job, payload[0])
                board.finish(job)


class _RelayCheckpoint:
    """A worker's side of a job's checkpoint: starts from the driver's copy; each save goes back to the driver."""

    def __init__(self, blob: bytes | None, events: queue.Queue):
        self.blob, self.events = blob, events

    def load(self) -> bytes | None:
        return self.blob

    def save(self, blob: bytes) -> None:
        self.blob = blob
        self.events.put(("checkpoint", blob))


def _ray_job(work, shared, key, blob, version):
    """One job as a Ray generator task: yields ``started``, then ``epoch`` and ``checkpoint`` events as ``work``
    makes them, then ``result``. ``work`` runs in a thread so its events stream out while it trains."""
    if __version__ != version:
        raise UserError(f"node {socket.gethostname()} runs pomonag-edge {__version__}, the driver {version}: "
                        "install the same version on every node")
    yield ("started", socket.gethostname(), os.getpid())
    events: queue.Queue = queue.Queue()
    box: dict = {}

    def run():
        try:
            box["result"] = work(shared, key, _RelayCheckpoint(blob, events),
                                 lambda done, total, loss=None: events.put(("epoch", done, total, loss)))
        except BaseException as e:  # noqa: BLE001 - raised again in the task, below
            box["error"] = e
        finally:
            events.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while (event := events.get()) is not None:
        yield event
    thread.join()
    if "error" in box:
        raise box["error"]
    yield ("result", box["result"])


# ------------------------------------------------------------------ a throwaway head on this machine

# Ray's single-machine mode (its name says Windows and macOS): every address it uses is 127.0.0.1, nothing else
# listens; and no token auth, so a ~/.ray/auth_token of whoever shares this home cannot decide whether we connect
LOCAL_HEAD_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                  "RAY_DISABLE_USAGE_STATS": "1", "RAY_memory_monitor_refresh_ms": "0"}


@dataclass
class LocalHead:
    address: str  # what --ray takes
    env: dict  # the environment a driver (a pomonag-edge command) runs with to reach it
    pid: int  # the head's process, leader of its own process group (its raylet and workers are in it)


@contextmanager
def local_head(num_cpus: int, num_gpus: int | None = None, object_store_bytes: int = 200_000_000,
               start_timeout_s: float = 90.0):
    """A Ray head on 127.0.0.1 for tests and benchmarks: ``num_cpus`` CPUs, no dashboard, a small object store,
    its own short temp folder (Ray's socket paths have a length limit) and its own session; stopped by killing
    its own process group, nothing broader. Yields a ``LocalHead``."""
    ray_bin = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **LOCAL_HEAD_ENV}
    log_path = Path(temp) / "head.log"
    argv = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--port", str(port), "--num-cpus",
            str(num_cpus), "--include-dashboard=false", "--temp-dir", temp, "--object-store-memory",
            str(object_store_bytes), "--disable-usage-stats", "--block"]
    if num_gpus is not None:
        argv += ["--num-gpus", str(num_gpus)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while "Ray runtime started" not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start: {log_path.read_text()[-400:]}")
            time.sleep(0.5)
        yield LocalHead(f"127.0.0.1:{port}", env, process.pid)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(["pgrep", "-g", str(process.pid)],
                                                             capture_output=True).returncode == 0:
            time.sleep(0.2)
        shutil.rmtree(temp, ignore_errors=True)
