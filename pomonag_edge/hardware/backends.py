"""Runtime backends behind one small interface: load a model, run it on fixed inputs, time it.

    runnable = get_backend("onnxruntime", threads=1).load("net.onnx")   # or bytes, or a torch.nn.Module
    outputs = runnable.run({"input": x})                                 # list of numpy arrays
    stats = runnable.measure(QUICK)                                      # Measurement (median_ms, p90_ms, ...)

ONNX Runtime on the CPU is the default deployment runtime; TensorRT (``tensorrt.py``) is the one for
NVIDIA GPUs and Jetson. The PyTorch backends time a ``torch.nn.Module`` directly: ``torch-cuda`` gives
``--device gpu`` a measured path where TensorRT is absent, ``torch-cpu`` is a fallback, never a default.
torch, onnxruntime and tensorrt are imported only when a backend is made.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import MissingDependencyError, UserError
from .runnable import OPSET, Runnable, _is_module, _read_onnx, random_inputs
from .runner import ORT_PROVIDERS, TRTEXEC_PATHS, find_trtexec, ort_session_options, trt_ep_precision
from .tensorrt import TensorRTBackend
from .timing import CLOCKS, wall_clock

PRECISIONS = ("fp32", "fp16", "int8")  # int8: a Q/DQ ONNX graph (quantize.py)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    summary: str
    gpu: bool  # needs an NVIDIA GPU
    reads_onnx: bool  # False: times a torch.nn.Module instead


BACKENDS = {
    "onnxruntime": BackendInfo("onnxruntime", "ONNX Runtime, CPU execution provider", False, True),
    "onnxruntime-cuda": BackendInfo("onnxruntime-cuda", "ONNX Runtime, CUDA execution provider", True, True),
    "onnxruntime-trt": BackendInfo("onnxruntime-trt", "ONNX Runtime, TensorRT execution provider", True, True),
    "tensorrt": BackendInfo("tensorrt", "TensorRT engine built from ONNX, timed with CUDA events", True, True),
    "torch-cuda": BackendInfo("torch-cuda", "PyTorch on CUDA, CUDA events (+ CUDA graphs)", True, False),
    "torch-cpu": BackendInfo("torch-cpu", "PyTorch eager on the CPU (fallback, not a deployment number)", False,
                             False),
    "trtexec": BackendInfo("trtexec", "NVIDIA trtexec through the device runner: engines built on the device, CUDA "
                           "graphs, no host copies", True, True),
}


def get_backend(name: str, precision: str = "fp32", threads: int = 1, **options):
    """A backend by name; raises ``UserError`` for an unknown name or setting, ``MissingDependencyError``
    when this machine lacks what it needs. ``options``: ``clock`` ("wall" or "cpu", onnxruntime on the
    CPU), ``cuda_graphs`` (torch-cuda), ``workspace_mb`` (tensorrt)."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a positive integer, got {threads!r}")
    clock = options.pop("clock", "wall")
    if name == "trtexec":
        raise UserError("backend trtexec times through the device runner, not in this process: profile and export "
                        "use it directly (with --host USER@ADDR for another machine)")
    if name.startswith("onnxruntime"):
        return OnnxRuntimeBackend(name.partition("-")[2] or "cpu", precision, threads, clock=clock)
    if clock != "wall":
        raise UserError(f"--clock {clock} works only with backend onnxruntime (CPU, 1 thread); {name} uses "
                        "the wall clock or CUDA events")
    if name == "tensorrt":
        return TensorRTBackend(precision, **options)
    return TorchBackend("cuda" if name == "torch-cuda" else "cpu", precision, threads, **options)


def backend_available(name: str) -> tuple[bool, str]:
    """(usable here, reason if not), without building anything heavy.

    A GPU execution provider of ONNX Runtime is tried on a one-node model: ``get_available_providers``
    lists providers whose CUDA / TensorRT libraries then fail to load. A CUDA that cannot start (driver
    older than cuda-python's CUDA, no GPU) is a reason, not a traceback."""
    if name == "trtexec":
        return (True, "") if find_trtexec() else (False, f"no trtexec on PATH nor at {TRTEXEC_PATHS[0]}")
    try:
        backend = get_backend(name)
        if isinstance(backend, OnnxRuntimeBackend) and backend.provider != "cpu":
            backend.probe()
    except UserError as e:
        return False, str(e)
    except (RuntimeError, OSError) as e:
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def tensorrt_missing_here(detected: dict, precision: str = "fp32", threads: int = 1) -> str | None:
    """Why TensorRT engines cannot be built in this process on the machine of ``detected`` facts (None when they
    can): no NVIDIA GPU, or the backend cannot start (not installed, too old, no CUDA)."""
    if not (detected.get("gpu") or detected.get("jetson")):
        return "no NVIDIA GPU here"
    try:
        get_backend("tensorrt", precision=precision, threads=threads)
    except UserError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- ONNX Runtime


class OnnxRuntimeBackend:
    """ONNX Runtime with a fixed intra-op thread count and sequential execution.

    On CUDA the timed call includes copying inputs and outputs between host and device, as a
    ``session.run`` caller pays them."""

    def __init__(self, provider: str = "cpu", precision: str = "fp32", threads: int = 1, clock: str = "wall"):
        import onnxruntime as ort

        self.ort, self.provider, self.precision, self.threads = ort, provider, precision, threads
        if clock not in CLOCKS:
            raise UserError(f"unknown clock {clock!r}; choose one of {', '.join(CLOCKS)}")
        if clock == "cpu" and (provider != "cpu" or threads != 1):
            raise UserError("--clock cpu measures the calling thread only: it needs backend onnxruntime "
                            "with --threads 1")
        self.clock = clock
        self.name = "onnxruntime" if provider == "cpu" else f"onnxruntime-{provider}"
        if precision == "fp16" and provider != "trt":
            raise UserError(f"--precision fp16 is not supported by backend {self.name}: its execution provider has "
                            "few fp16 kernels (most ops would run in fp32 behind casts); use tensorrt, trtexec or "
                            "onnxruntime-trt for fp16, int8 or fp32 here")
        if precision == "int8" and provider == "cuda":
            raise UserError("--precision int8 is not supported by backend onnxruntime-cuda: the CUDA execution "
                            "provider has no int8 convolutions for Q/DQ graphs; use tensorrt, trtexec or "
                            "onnxruntime-trt for int8")
        wanted = ORT_PROVIDERS[provider]
        if wanted not in ort.get_available_providers():
            raise MissingDependencyError(
                f"this onnxruntime ({ort.__version__}) has no {wanted} (it offers "
                f"{', '.join(ort.get_available_providers())}): pip install onnxruntime-gpu, "
                "or choose another --backend")

    def version(self) -> dict:
        return {"onnxruntime": self.ort.__version__}

    def _providers(self) -> list:
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": 0})
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        trt = ("TensorrtExecutionProvider", {"device_id": 0, **trt_ep_precision(self.precision)})
        return [trt, cuda, "CPUExecutionProvider"]

    def probe(self) -> None:
        """Start the provider on a one-node model; ``MissingDependencyError`` when it cannot."""
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Specified provider ... is not in available provider names"
                self.load(model.SerializeToString())
        except UserError:
            raise
        except Exception as e:  # onnxruntime raises its own Fail / RuntimeException types
            raise MissingDependencyError(f"onnxruntime could not start {ORT_PROVIDERS[self.provider]} here "
                                         f"({type(e).__name__}: {str(e)[:200]})") from None

    def load(self, model, inputs: dict[str, np.ndarray] | None = None) -> "OnnxRuntimeRunnable":
        ort = self.ort
        session = ort.InferenceSession(_read_onnx(model, inputs), ort_session_options(ort, self.threads),
                                       providers=self._providers())
        wanted = ORT_PROVIDERS[self.provider]
        if wanted not in session.get_providers():  # onnxruntime falls back to the CPU silently
            raise MissingDependencyError(f"onnxruntime could not start {wanted} on this machine (CUDA libraries "
                                         "missing?); choose another --backend")
        return OnnxRuntimeRunnable(self.name, session, inputs, CLOCKS[self.clock])


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class OnnxRuntimeRunnable(Runnable):
    def __init__(self, backend: str, session, inputs: dict[str, np.ndarray] | None, clock=wall_clock):
        self.backend, self.session = backend, session
        specs = [(i.name, tuple(d if isinstance(d, int) else 1 for d in i.shape), _ORT_DTYPES.get(i.type, np.float32))
                 for i in session.get_inputs()]
        self.inputs = dict(inputs) if inputs is not None else random_inputs(specs)
        self.input_names = [s[0] for s in specs]
        self.output_names = [o.name for o in session.get_outputs()]
        self._timed = clock(lambda: self.session.run(None, self.inputs))

    def run(self, inputs: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        return self.session.run(None, self.inputs if inputs is None else inputs)

    def run_once_ms(self) -> float:
        return self._timed()


# ----------------------------------------------------------------------------- PyTorch


class TorchBackend:
    """PyTorch eager on CPU (fallback) or CUDA (CUDA events; CUDA graphs by default to drop launch cost).

    It times a ``torch.nn.Module`` and cannot read ONNX."""

    def __init__(self, device: str = "cpu", precision: str = "fp32", threads: int = 1, cuda_graphs: bool = True):
        import torch

        self.torch, self.device, self.precision, self.threads = torch, device, precision, threads
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self.name = f"torch-{device}"
        if device == "cuda" and not torch.cuda.is_available():
            raise MissingDependencyError(f"backend torch-cuda needs PyTorch with CUDA and an NVIDIA GPU; this torch "
                                         f"({torch.__version__}) sees none")
        if device == "cpu" and precision == "fp16":
            raise UserError("--precision fp16 is not supported by backend torch-cpu")
        if precision == "int8":
            raise UserError(f"--precision int8 is not supported by backend {self.name}: an int8 net is a Q/DQ ONNX "
                            "graph, and this backend times the PyTorch module; use onnxruntime, tensorrt or trtexec")

    def version(self) -> dict:
        v = {"torch": self.torch.__version__}
        if self.device == "cuda":
            v["torch_cuda"] = self.torch.version.cuda
        return v

    def load(self, model, inputs: dict[str, np.ndarray] | None = None) -> "TorchRunnable":
        if not _is_module(model):
            raise UserError(f"backend {self.name} times a torch.nn.Module, not an ONNX model; "
                            "use --backend onnxruntime or tensorrt for ONNX files")
        if inputs is None:
            raise ValueError("a torch backend needs example inputs (name -> array) to fix the input shapes")
        if self.device == "cpu":
            self.torch.set_num_threads(self.threads)
        return TorchRunnable(self, model, inputs)


class TorchRunnable(Runnable):
    """A private copy of the module on the backend's device and dtype: the caller's module is never moved
    or switched to eval mode, and a captured CUDA graph keeps pointers into the copy only."""

    def __init__(self, backend: TorchBackend, module, inputs: dict[str, np.ndarray]):
        torch = backend.torch
        self.backend, self._torch, self._device = backend.name, torch, backend.device
        self._dtype = torch.float16 if backend.precision == "fp16" else torch.float32
        self.inputs = dict(inputs)
        self.module = copy.deepcopy(module).eval().to(device=self._device, dtype=self._dtype)
        self._static = [self._tensor(v) for v in self.inputs.values()]
        self._graph = None
        if backend.cuda_graphs:
            self._capture()
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) \
            if self._device == "cuda" else None
        self._timed = wall_clock(self._forward) if self._events is None else None

    def _tensor(self, array: np.ndarray):
        t = self._torch.from_numpy(np.ascontiguousarray(array)).to(self._device)
        return t.to(self._dtype) if t.is_floating_point() else t

    def _capture(self) -> None:
        torch = self._torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream before capture, as the CUDA graphs docs ask
                self.module(*self._static)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self._graph):
            self._graph_out = self.module(*self._static)

    def _forward(self):
        if self._graph is not None:
            self._graph.replay()
            return self._graph_out
        with self._torch.inference_mode():
            return self.module(*self._static)

    def run(self, inputs: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        if inputs is not None:
            for static, value in zip(self._static, inputs.values()):
                static.copy_(self._tensor(value))
        out = self._forward()
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]

    def run_once_ms(self) -> float:
        if self._events is None:
            return self._timed()
        start, end = self._events
        start.record()
        self._forward()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

