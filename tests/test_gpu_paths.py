"""GPU code paths checked on the CPU: stand-in ``tensorrt`` / cuda-python modules (``sys.modules``) and a
provider list that lies, each recording what the real API would be asked. They test our handling of
those APIs (errors, flags, the order of CUDA calls), never stand in as a backend."""

import sys
import types

import numpy as np
import pytest
import torch

from pomonag_edge.errors import MissingDependencyError, UserError
from pomonag_edge.hardware import backends as B
from pomonag_edge.hardware import devices as D
from pomonag_edge.hardware import tensorrt as T


class Cudart(types.SimpleNamespace):
    """cuda-python's runtime API shape: every call returns ``(error, *values)``; calls are logged."""

    def __init__(self, device_count=1, fail=(), raise_on=()):
        super().__init__()
        self.calls, self.fail, self.raise_on, self.device_count = [], set(fail), set(raise_on), device_count
        self.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1,
                                                           cudaStreamCaptureModeGlobal=0)

    def __getattr__(self, name):
        if not name.startswith("cuda"):
            raise AttributeError(name)
        values = {"cudaGetDeviceCount": (self.device_count,), "cudaMalloc": (1000,), "cudaStreamCreate": ("stream",),
                  "cudaEventCreate": ("event",), "cudaEventElapsedTime": (2.0,), "cudaStreamEndCapture": ("graph",),
                  "cudaGraphInstantiate": ("graph_exec",), "cudaGetErrorName": (b"cudaErrorStubLibrary",),
                  "cudaGetDeviceProperties": (types.SimpleNamespace(name=b"Fake GPU\x00"),)}

        def call(*args):
            self.calls.append(name)
            if name in self.raise_on:
                raise RuntimeError(f"{name}: CUDA driver version is insufficient for CUDA runtime version")
            if name in self.fail:
                return (999,)
            return (0, *values.get(name, ()))

        return call


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Engines and timing caches go to this test's folder, never to ~/.cache."""
    monkeypatch.setattr(T, "CACHE_DIR", tmp_path / "trt-cache")


def install(monkeypatch, trt=None, cudart=None):
    if trt is not None:
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if cudart is not None:
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        bindings.runtime, cuda.bindings = cudart, bindings
        for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
            monkeypatch.setitem(sys.modules, name, module)


def fake_tensorrt(version="10.3.0", fp16=True, input_shape=(1, 3, 8, 8)):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.built = []
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "FP16"} if fp16 else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    tensors = {"input": (input_shape, "in"), "output": ((1, 10), "out")}

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return types.SimpleNamespace(name="input", shape=input_shape)

    class Config:
        def set_memory_pool_limit(self, *a):
            pass

        def set_flag(self, flag):
            pass

        def create_timing_cache(self, data):
            trt.timing_loaded.append(bytes(data))
            return types.SimpleNamespace(serialize=lambda: bytes(data) + b"+tactics")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            trt.built.append(network)
            return b"engine"

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse(self, data):
            return True

    class Context:
        def __init__(self, log):
            self.log = log

        def set_tensor_address(self, name, pointer):
            pass

        def execute_async_v3(self, stream):
            self.log.append("execute_async_v3")
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, log):
            self.log = log

        def get_tensor_name(self, i):
            return list(tensors)[i]

        def get_tensor_shape(self, name):
            return tensors[name][0]

        def get_tensor_dtype(self, name):
            return "float"

        def get_tensor_mode(self, name):
            return tensors[name][1]

        def create_execution_context(self):
            return Context(self.log)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(trt.log)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.log, trt.timing_loaded = [], []
    return trt


# ----------------------------------------------------------------------------- TensorRT


def test_tensorrt_11_without_weakly_typed_fp16_is_refused_in_one_line(monkeypatch):
    install(monkeypatch, fake_tensorrt("11.0.0", fp16=False), Cudart())
    with pytest.raises(MissingDependencyError, match=r"tensorrt>=10,<11") as e:
        B.get_backend("tensorrt", precision="fp16")
    assert "\n" not in str(e.value)
    assert B.get_backend("tensorrt", precision="fp32").flags == ()  # fp32 needs no flag


def test_cuda_that_cannot_start_is_a_reason_not_a_traceback(monkeypatch):
    install(monkeypatch, fake_tensorrt(), Cudart(raise_on={"cudaGetDeviceCount"}))
    ok, reason = B.backend_available("tensorrt")
    assert not ok and "cannot start CUDA" in reason and "insufficient" in reason
    with pytest.raises(MissingDependencyError):
        B.get_backend("tensorrt")
    install(monkeypatch, cudart=Cudart(fail={"cudaGetDeviceCount"}))  # an error code, not an exception
    ok, reason = B.backend_available("tensorrt")
    assert not ok and "cudaErrorStubLibrary" in reason


def test_dynamic_batch_onnx_gets_the_fixed_shape_message_before_building(monkeypatch):
    trt = fake_tensorrt(input_shape=(-1, 3, 8, 8))
    install(monkeypatch, trt, Cudart())
    backend = B.get_backend("tensorrt")
    with pytest.raises(UserError, match="dynamic shape.*without --dynamic-batch"):
        backend.build_engine(b"onnx")
    assert trt.built == []


def test_engines_and_tactic_timings_are_cached(monkeypatch, tmp_path):
    trt = fake_tensorrt()
    install(monkeypatch, trt, Cudart())
    backend = B.get_backend("tensorrt", precision="fp16")
    assert backend.gpu == "Fake GPU"
    backend.load(b"onnx-1")
    backend.load(b"onnx-2")
    backend.load(b"onnx-1")  # built before: from the engine cache
    assert len(trt.built) == 2
    assert trt.timing_loaded == [b"", b"+tactics"]  # the second build starts from the first one's timings
    caches = sorted(p.name.split("-")[0] for p in (tmp_path / "trt-cache").iterdir())
    assert caches == ["engine", "engine", "timing"]


def _between_events(calls):
    first = calls.index("cudaEventRecord")
    last = len(calls) - 1 - calls[::-1].index("cudaEventRecord")
    return calls[first + 1:last]


def test_tensorrt_times_a_cuda_graph_replay(monkeypatch):
    trt, cudart = fake_tensorrt(), Cudart()
    install(monkeypatch, trt, cudart)
    runnable = B.get_backend("tensorrt").load(b"x")
    assert runnable._graph_exec == "graph_exec"
    trt.log.clear()
    cudart.calls.clear()
    ms = runnable.run_once_ms()
    assert _between_events(cudart.calls) == ["cudaGraphLaunch"] and trt.log == [] and ms == 2.0


def test_tensorrt_falls_back_to_back_to_back_runs_when_capture_fails(monkeypatch):
    trt, cudart = fake_tensorrt(), Cudart(fail={"cudaGraphInstantiate"})
    install(monkeypatch, trt, cudart)
    runnable = B.get_backend("tensorrt").load(b"x")
    assert runnable._graph_exec is None
    trt.log.clear()
    ms = runnable.run_once_ms()
    assert trt.log == ["execute_async_v3"] * T.BACK_TO_BACK and ms == pytest.approx(2.0 / T.BACK_TO_BACK)


# ----------------------------------------------------------------------------- ONNX Runtime providers


def test_listed_but_unloadable_providers_fall_through(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    ok, reason = B.backend_available("onnxruntime-trt")
    assert not ok and "could not start TensorrtExecutionProvider" in reason
    descriptor = D.Descriptor("t", "", ("onnxruntime-trt", "onnxruntime-cuda", "onnxruntime"))
    name, skipped = D.choose_backend(descriptor)
    assert name == "onnxruntime" and len(skipped) == 2


# ----------------------------------------------------------------------------- PyTorch


def test_torch_load_leaves_the_callers_module_alone():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double().train()
    runnable = B.get_backend("torch-cpu").load(net, {"input": np.zeros((2, 4), np.float32)})
    assert net.training and next(net.parameters()).dtype == torch.float64
    assert not runnable.module.training and next(runnable.module.parameters()).dtype == torch.float32
    assert runnable.run()[0].shape == (2, 3)


# ----------------------------------------------------------------------------- Jetson


def test_jetson_here_points_to_host_and_devices_states_what_is_supported(tmp_path):
    from click.testing import CliRunner

    from pomonag_edge.cli import cli

    result = CliRunner().invoke(cli, ["profile", "--device", "jetson", "--out", str(tmp_path / "j.json")])
    assert result.exit_code == 2 and "--host USER@BOARD" in result.output and "JetPack 4-6" in result.output
    assert result.output.strip().count("\n") == 0
    listing = CliRunner().invoke(cli, ["devices", "--no-detect"], terminal_width=200)
    assert listing.exit_code == 0 and "JetPack 4 to 6" in " ".join(listing.output.split())
    assert D.load_descriptor("jetson").runner == "trtexec" and D.load_descriptor("cpu").runner == "onnxruntime"
    bad = tmp_path / "bad.toml"
    bad.write_text('backends = ["onnxruntime"]\nrunner = "tflite"\n')
    with pytest.raises(UserError, match="runner must be one of"):
        D.load_descriptor(str(bad))
