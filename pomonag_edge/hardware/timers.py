"""One way to time a batch of named graphs, whoever times them: a backend in this process, or the device
runner (``runner.py``) here or on ``--host``.

    timer = make_timer(backend_name, protocol, host=None, ...)
    medians = timer.time({"chain-12": Graph(module, {"input": x}), ...})   # {name: Measurement}

The profiler and export ask a timer, never a backend, so the same code serves this machine and a board
over SSH. A graph is a ``torch.nn.Module`` with fixed inputs; the runner path exports it to ONNX here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserError
from .timing import Measurement, Protocol, settle

ProgressFn = Callable[[int, int, str], None]  # (done, total, item)
_EXPORT = threading.Lock()  # torch.onnx.export is not thread-safe: several hosts' timers export in turn


@dataclass(frozen=True)
class Graph:
    module: object  # torch.nn.Module, in eval mode
    inputs: dict[str, np.ndarray]


class BackendTimer:
    """A backend of this process (``backends.get_backend``), one graph after the other."""

    where = "this machine"

    def __init__(self, backend, protocol: Protocol):
        self.backend, self.protocol = backend, protocol

    def versions(self) -> dict:
        return self.backend.version()

    def facts(self) -> dict:
        from .devices import detect_device

        return detect_device()

    def settle(self, graph: Graph) -> None:
        settle(self.backend.load(graph.module, graph.inputs).run_once_ms, self.protocol)

    def time(self, graphs: dict[str, Graph], progress: ProgressFn | None = None, tag: str = "") -> dict[str, Measurement]:
        out = {}
        for n, (name, g) in enumerate(graphs.items(), start=1):
            out[name] = self.backend.load(g.module, g.inputs).measure(self.protocol)
            if progress is not None:
                progress(n, len(graphs), name)
        return out


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

    def time(self, graphs: dict[str, Graph], progress: ProgressFn | None = None, tag: str = "") -> dict[str, Measurement]:
        onnx = {name: self._onnx(name, g) for name, g in graphs.items()}
        result = self.device.time(onnx, progress=progress, tag=tag)
        if result.errors:
            name, why = next(iter(result.errors.items()))
            raise UserError(f"timing {name} on {self.where} failed: {why}")
        return result.measurements


    def _onnx(self, name: str, graph: Graph) -> bytes:
        import hashlib
        from pathlib import Path

        from ..files import atomic_write_bytes
        from .runnable import onnx_bytes

        if self.cache_dir is None:
            with _EXPORT:
                return onnx_bytes(graph.module, graph.inputs)
        shapes = ",".join(f"{k}:{tuple(v.shape)}" for k, v in graph.inputs.items())
        path = Path(self.cache_dir) / (hashlib.sha256(f"{name}|{shapes}".encode()).hexdigest()[:24] + ".onnx")
        if path.is_file():
            return path.read_bytes()
        with _EXPORT:
            data = onnx_bytes(graph.module, graph.inputs)
        atomic_write_bytes(path, data)
        return data


def make_timer(backend_name: str, protocol: Protocol, precision: str = "fp32", threads: int = 1,
               clock: str = "wall", host=None, ssh=None, key: str = "default", cache_dir=None):
    """The device runner for ``host`` (a ``remote.Host``) or for backend trtexec, else the backend here."""
    if host is not None or backend_name == "trtexec":
        from .remote import DeviceTimer

        runtime = "trtexec" if backend_name in ("trtexec", "tensorrt") else "onnxruntime"
        if backend_name not in ("trtexec", "tensorrt", "onnxruntime"):
            raise UserError(f"backend {backend_name} cannot time through the device runner (it runs trtexec or "
                            "onnxruntime on CPU): drop --host, or use --backend onnxruntime or trtexec")
        return RunnerTimer(DeviceTimer(host, protocol, runtime=runtime, precision=precision, threads=threads,
                                       clock=clock, options=ssh, key=key), cache_dir=cache_dir)
    from .backends import get_backend

    return BackendTimer(get_backend(backend_name, precision=precision, threads=threads, clock=clock), protocol)
