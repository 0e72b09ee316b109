"""TensorRT 10: build an engine from ONNX (fp32 / fp16), run it through an execution context, time it
with CUDA events on its stream (GPU compute time with inputs resident, as trtexec reports it).

A timed run replays a CUDA graph of the engine's enqueue, as trtexec's ``--useCudaGraph`` does, so a
microsecond layer is not drowned by the host's enqueue cost; where capture fails, several enqueues run
back to back between the two events and their mean is the sample. TensorRT and cuda-python are
imported only when this backend is made; without them, or with a CUDA that cannot start (a driver older
than cuda-python, no GPU), the user gets one line. TensorRT 11 dropped weakly typed fp16
(``BuilderFlag.FP16``), so the extra pins ``tensorrt<11`` and an fp16 request on 11 is refused in one
line. Written against the TensorRT 10 Python API and cuda-python's runtime bindings; it has not run on a
GPU with TensorRT (none was available), so the first run on a target is its real test. On a Jetson,
``trtexec`` through the device runner (``runner.py``) needs no Python bindings at all.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .. import files
from ..errors import MissingDependencyError, UserError
from ..files import atomic_write_bytes
from .runnable import Runnable, _read_onnx, random_inputs
from .timing import DEFAULT, Measurement, Protocol

INSTALL_HINT = ("pip install 'pomonag-edge[tensorrt]' on a machine with an NVIDIA GPU; for a Jetson, profile it "
                "from another machine with --host USER@BOARD (JetPack's trtexec times there)")
BACK_TO_BACK = 10  # enqueues per sample when a CUDA graph cannot be captured
CACHE_DIR = files.CACHE_DIR / "tensorrt"  # timing cache and built engines
# int8: explicit quantization of a Q/DQ graph, with FP16 alongside for the layers left unquantized (as trtexec
# --int8 --fp16); TensorRT 11 keeps neither flag (strongly typed networks only) and is refused below
_FLAGS = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}


def builder_flag_names(precision: str) -> tuple[str, ...]:
    """Names of the ``trt.BuilderFlag`` members a precision turns on."""
    if precision not in _FLAGS:
        raise UserError(f"TensorRT precision {precision!r} is not supported; choose one of {', '.join(_FLAGS)}")
    return _FLAGS[precision]


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(f"TensorRT is not installed here: {INSTALL_HINT}") from None
    except (OSError, RuntimeError) as e:  # the wheel's libraries fail to load (no GPU driver, wrong CUDA)
        raise MissingDependencyError(f"TensorRT is installed but cannot load here ({e}): {INSTALL_HINT}") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise MissingDependencyError(f"TensorRT {trt.__version__} is too old (need 10 or newer): {INSTALL_HINT}")
    return trt


def import_cudart():
    """cuda-python's runtime bindings (module path changed in cuda-python 12.6+)."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
    except ImportError:
        raise MissingDependencyError(f"cuda-python is not installed here: {INSTALL_HINT}") from None
    except (OSError, RuntimeError) as e:  # e.g. CUDA 13 bindings on an older driver
        raise MissingDependencyError(f"cuda-python cannot start CUDA here ({e}): install the cuda-python "
                                     "matching this driver's CUDA version (nvidia-smi shows it)") from None
    return cudart


def cuda_check(cudart, result):
    """cuda-python returns ``(error, *values)``; raise on error, else return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, precision: str = "fp32", workspace_mb: int = 1024, cuda_graphs: bool = True,
                 cache_dir: str | os.PathLike | None = None):
        self.flags = builder_flag_names(precision)
        self.precision, self.workspace_mb, self.cuda_graphs = precision, workspace_mb, cuda_graphs
        self.cache_dir = Path(cache_dir) if cache_dir is not None else CACHE_DIR
        self.trt = import_tensorrt()
        missing = [f for f in self.flags if not hasattr(self.trt.BuilderFlag, f)]
        if missing:  # TensorRT 11 builds strongly typed networks only: the ONNX itself would have to be fp16
            raise MissingDependencyError(
                f"TensorRT {self.trt.__version__} has no BuilderFlag.{missing[0]} (weakly typed {precision} was "
                f"removed in TensorRT 11): pip install 'tensorrt>=10,<11', or use --precision fp32")
        self.cudart = import_cudart()
        try:
            count = cuda_check(self.cudart, self.cudart.cudaGetDeviceCount())
        except (RuntimeError, OSError) as e:
            raise MissingDependencyError(f"backend tensorrt cannot start CUDA here ({e}): is there an NVIDIA GPU "
                                         "and a driver as new as cuda-python's CUDA?") from None
        if not count:
            raise MissingDependencyError("backend tensorrt needs an NVIDIA GPU and this machine has none")
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        try:
            name = cuda_check(self.cudart, self.cudart.cudaGetDeviceProperties(0)).name
            self.gpu = name.decode(errors="replace").strip("\x00") if isinstance(name, bytes) else str(name)
        except (RuntimeError, AttributeError):
            self.gpu = "gpu0"

    def version(self) -> dict:
        return {"tensorrt": str(self.trt.__version__)}

    def _cache(self, kind: str, key: str) -> Path:
        """``CACHE_DIR/<kind>-<tensorrt>-<gpu>-<key>``: engines and timing caches are only valid for the
        TensorRT version and GPU that made them."""
        tag = hashlib.sha256(f"{self.trt.__version__}|{self.gpu}".encode()).hexdigest()[:12]
        return self.cache_dir / f"{kind}-{tag}-{key}"

    def build_engine(self, onnx: bytes) -> bytes:
        """Serialized engine for this GPU, TensorRT version and precision."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT could not parse the ONNX model: {errors}")
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(int(d) < 0 for d in tensor.shape):
                raise UserError(f"ONNX input {tensor.name!r} has a dynamic shape {tuple(tensor.shape)}: TensorRT "
                                "engines here are built for fixed shapes; export without --dynamic-batch")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        for flag in self.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        timing = self._cache("timing", "cache")  # tactic timings shared by every build: later builds are fast
        cache = config.create_timing_cache(timing.read_bytes() if timing.is_file() else b"")
        config.set_timing_cache(cache, False)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise RuntimeError("TensorRT failed to build an engine (see the TensorRT log above)")
        atomic_write_bytes(timing, bytes(config.get_timing_cache().serialize()))
        return bytes(engine)

    def engine_for(self, onnx: bytes) -> bytes:
        """The engine of an ONNX model: from the engine cache when this GPU and TensorRT built it before."""
        path = self._cache("engine", hashlib.sha256(onnx + self.precision.encode()).hexdigest()[:24] + ".engine")
        if path.is_file():
            return path.read_bytes()
        engine = self.build_engine(onnx)
        atomic_write_bytes(path, engine)
        return engine

    def load(self, model, inputs: dict[str, np.ndarray] | None = None) -> "TensorRTRunnable":
        """``model``: ONNX (path, bytes, ModelProto, or a torch module to export) or a ``.engine`` path."""
        if isinstance(model, (str, os.PathLike)) and str(model).endswith((".engine", ".plan")):
            with open(model, "rb") as f:
                engine = f.read()
        else:
            engine = self.engine_for(_read_onnx(model, inputs))
        return TensorRTRunnable(self, engine, inputs)


class TensorRTRunnable(Runnable):
    """An engine, an execution context, device buffers for every I/O tensor, one stream, two events."""

    def __init__(self, backend: TensorRTBackend, engine_bytes: bytes, inputs: dict[str, np.ndarray] | None):
        trt, cudart = backend.trt, backend.cudart
        self.backend, self.cudart, self.engine_bytes = backend.name, cudart, engine_bytes
        self.runtime = trt.Runtime(backend.logger)  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise UserError("TensorRT could not deserialize the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self._buffers: list[int] = []
        specs, self.output_specs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise UserError(f"tensor {name!r} has a dynamic shape {shape}: export with fixed shapes")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            pointer = cuda_check(cudart, cudart.cudaMalloc(max(1, int(np.prod(shape)) * dtype.itemsize)))
            self._buffers.append(pointer)
            self.context.set_tensor_address(name, pointer)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (specs if is_input else self.output_specs).append((name, shape, dtype, pointer))
        self._input_specs = specs
        self.input_names = [s[0] for s in specs]
        self.output_names = [s[0] for s in self.output_specs]
        self.inputs = dict(inputs) if inputs is not None else random_inputs([s[:3] for s in specs])
        self.stream = cuda_check(cudart, cudart.cudaStreamCreate())
        self._start = cuda_check(cudart, cudart.cudaEventCreate())
        self._end = cuda_check(cudart, cudart.cudaEventCreate())
        self._upload(self.inputs)
        self._graph = self._graph_exec = None
        if backend.cuda_graphs:
            self._capture()

    def _upload(self, inputs: dict[str, np.ndarray]) -> None:
        cudart = self.cudart
        for name, shape, dtype, pointer in self._input_specs:
            host = np.ascontiguousarray(inputs[name], dtype=dtype)
            if host.shape != shape:
                raise ValueError(f"input {name!r}: expected shape {shape}, got {host.shape}")
            cuda_check(cudart, cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes,
                                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        cuda_check(cudart, cudart.cudaStreamSynchronize(self.stream))

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def run(self, inputs: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        cudart = self.cudart
        if inputs is not None:
            self._upload(inputs)
        self._execute()
        outputs = []
        for _, shape, dtype, pointer in self.output_specs:
            host = np.empty(shape, dtype=dtype)
            cuda_check(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes,
                                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            outputs.append(host)
        cuda_check(cudart, cudart.cudaStreamSynchronize(self.stream))
        return outputs

    def measure(self, protocol: Protocol = DEFAULT) -> Measurement:
        self._upload(self.inputs)  # timing always runs on the fixed inputs
        return super().measure(protocol)

    def _capture(self) -> None:
        """Capture one enqueue as a CUDA graph (after one plain enqueue, which TensorRT may need to set up
        its state); a network that cannot be captured keeps ``_graph_exec`` None and is timed back to back."""
        cudart = self.cudart
        self._execute()
        cuda_check(cudart, cudart.cudaStreamSynchronize(self.stream))
        try:
            cuda_check(cudart, cudart.cudaStreamBeginCapture(
                self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            self._execute()
            self._graph = cuda_check(cudart, cudart.cudaStreamEndCapture(self.stream))
            self._graph_exec = cuda_check(cudart, cudart.cudaGraphInstantiate(self._graph, 0))
        except RuntimeError:
            self._graph = self._graph_exec = None
            cudart.cudaStreamEndCapture(self.stream)  # leave capture mode if it was entered; errors ignored
            cudart.cudaGetLastError()  # clear the failed capture's error

    def run_once_ms(self) -> float:
        """GPU time of one inference: a CUDA graph replay between two events, or the mean of
        ``BACK_TO_BACK`` enqueues between them."""
        cudart = self.cudart
        cuda_check(cudart, cudart.cudaEventRecord(self._start, self.stream))
        if self._graph_exec is not None:
            cuda_check(cudart, cudart.cudaGraphLaunch(self._graph_exec, self.stream))
            n = 1
        else:
            for _ in range(BACK_TO_BACK):
                self._execute()
            n = BACK_TO_BACK
        cuda_check(cudart, cudart.cudaEventRecord(self._end, self.stream))
        cuda_check(cudart, cudart.cudaEventSynchronize(self._end))
        return float(cuda_check(cudart, cudart.cudaEventElapsedTime(self._start, self._end))) / n

    def save_engine(self, path) -> None:
        atomic_write_bytes(path, self.engine_bytes)

    def __del__(self):
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        if getattr(self, "_graph_exec", None) is not None:
            cudart.cudaGraphExecDestroy(self._graph_exec)
        if getattr(self, "_graph", None) is not None:
            cudart.cudaGraphDestroy(self._graph)
        for pointer in getattr(self, "_buffers", []):
            cudart.cudaFree(pointer)
        for event in (getattr(self, "_start", None), getattr(self, "_end", None)):
            if event is not None:
                cudart.cudaEventDestroy(event)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
