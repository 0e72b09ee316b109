"""Backends, timing protocol, device descriptors / detection and the NB201 per-op LUT."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pomonag_edge.errors import MissingDependencyError, ProfileError, UserError
from pomonag_edge.hardware import backends as B
from pomonag_edge.hardware import devices as D
from pomonag_edge.hardware import lut as L
from pomonag_edge.hardware import tensorrt as T
from pomonag_edge.hardware.timing import Measurement, Protocol, measure
from pomonag_edge.profile import Profile, reference_profile
from pomonag_edge.spaces.lut import lut_cost
from pomonag_edge.spaces.nb201 import SPACE

TINY = Protocol(name="tiny", warmup_ms=0, warmup_runs=1, min_runs=5, min_time_s=0.05, floor_runs=3, retries=0,
                settle_s=0.05)


def tiny_onnx(w: np.ndarray) -> bytes:
    """y = relu(x @ w), x of shape (2, w.shape[0])."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, w.shape[1]])],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


W = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)


# ----------------------------------------------------------------------------- timing protocol


def test_measurement_statistics():
    m = Measurement.from_samples([1.0, 2.0, 3.0, 4.0, 100.0])
    assert m.median_ms == 3.0 and m.runs == 5 and m.mean_ms == pytest.approx(22.0)
    assert m.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 100], 90))
    assert m.p99_ms > m.p90_ms > m.median_ms
    assert m.cv == pytest.approx(np.std([1, 2, 3, 4, 100]) / 22.0)
    assert set(m.to_dict()) >= {"median_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "runs"}


def test_protocol_warmup_and_run_counts():
    calls = []
    m = measure(lambda: calls.append(1) or 1.0, Protocol(warmup_ms=0, warmup_runs=7, min_runs=40, min_time_s=0,
                                                          floor_runs=3, retries=0))
    assert m.runs == 40 and len(calls) == 47 and m.cv == 0.0 and m.repeats == 1


def test_protocol_needs_both_runs_and_time_like_trtexec():
    def sleepy():
        time.sleep(0.002)
        return 2.0

    # 3 runs would be enough by count; the 0.06 s minimum keeps it going (an OR would stop at 3)
    m = measure(sleepy, Protocol(warmup_ms=0, warmup_runs=1, min_runs=3, min_time_s=0.06, floor_runs=1, retries=0))
    assert m.runs >= 10
    # enough time after 1 run, but the count asks for 12
    m = measure(sleepy, Protocol(warmup_ms=0, warmup_runs=1, min_runs=12, min_time_s=0.0, floor_runs=1, retries=0))
    assert m.runs == 12


def test_protocol_stops_at_its_cap_but_not_below_floor():
    def sleepy():
        time.sleep(0.002)
        return 2.0

    m = measure(sleepy, Protocol(warmup_ms=0, warmup_runs=1, min_runs=10**6, min_time_s=0.03, max_time_s=0.03,
                                 floor_runs=4, retries=0))
    assert 4 <= m.runs < 100
    m = measure(sleepy, Protocol(warmup_ms=0, warmup_runs=1, min_runs=10**6, min_time_s=0.0, max_time_s=0.0,
                                 floor_runs=6, retries=0))
    assert m.runs == 6


def test_protocol_remeasures_when_noisy_and_keeps_the_quietest():
    noisy = iter([1.0, 9.0] * 10 + [1.0, 1.1] * 20)  # first pass noisy, second quiet
    m = measure(lambda: next(noisy), Protocol(warmup_ms=0, warmup_runs=0, min_runs=20, min_time_s=0,
                                              floor_runs=1, max_cv=0.2, retries=3))
    assert m.repeats == 2 and m.cv < 0.2 and m.median_ms == pytest.approx(1.05)


def test_thread_cpu_clock_ignores_time_spent_waiting():
    from pomonag_edge.hardware.timing import thread_cpu_clock, wall_clock

    assert wall_clock(lambda: time.sleep(0.02))() >= 19
    assert thread_cpu_clock(lambda: time.sleep(0.02))() < 5  # sleeping, like being pre-empted, costs no CPU time


def test_default_protocol_is_the_design_one():
    d = Protocol()
    assert d.warmup_ms >= 200 and d.warmup_runs >= 10 and d.min_runs >= 100 and d.min_time_s >= 1
    assert d.max_time_s >= 3 * d.min_time_s and d.rounds >= 2


# ----------------------------------------------------------------------------- backends


def test_onnxruntime_runs_and_times_a_real_model(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    backend = B.get_backend("onnxruntime", threads=1)
    for source in (tiny_onnx(W), _write(tmp_path / "tiny.onnx", tiny_onnx(W)), onnx.load_from_string(tiny_onnx(W))):
        r = backend.load(source)
        (y,) = r.run({"x": x})
        np.testing.assert_allclose(y, np.maximum(x @ W, 0), rtol=1e-5, atol=1e-6)
        assert r.input_names == ["x"] and r.inputs["x"].shape == (2, 8)
        m = r.measure(TINY)
        assert m.runs >= 3 and 0 < m.median_ms <= m.p99_ms
    cpu = B.get_backend("onnxruntime", clock="cpu").load(tiny_onnx(W)).measure(TINY)
    assert cpu.runs >= 3 and cpu.median_ms >= 0
    with pytest.raises(UserError, match="does not exist"):
        backend.load(str(tmp_path / "missing.onnx"))


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_onnxruntime_exports_a_torch_module_and_agrees_with_it():
    import torch

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (y,) = B.get_backend("onnxruntime").load(module, {"input": x}).run()
    np.testing.assert_allclose(y, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "nope"}, "unknown backend"),
    ({"name": "onnxruntime", "precision": "int4"}, "unknown precision"),
    ({"name": "onnxruntime", "threads": 0}, "threads"),
    ({"name": "onnxruntime", "precision": "fp16"}, "fp16"),
    ({"name": "torch-cpu", "precision": "fp16"}, "fp16"),
    ({"name": "onnxruntime", "threads": 2, "clock": "cpu"}, "threads 1"),
    ({"name": "onnxruntime", "clock": "sundial"}, "unknown clock"),
    ({"name": "torch-cpu", "clock": "cpu"}, "only with backend onnxruntime"),
])
def test_backend_settings_are_checked(kwargs, match):
    with pytest.raises(UserError, match=match):
        B.get_backend(**kwargs)


def test_onnxruntime_gpu_providers_missing_here_say_so():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"):
        B.get_backend("onnxruntime-cuda")


def test_torch_cpu_backend_times_a_module_and_refuses_onnx():
    import torch

    module = torch.nn.Linear(8, 4).eval()
    x = np.ones((2, 8), np.float32)
    backend = B.get_backend("torch-cpu", threads=1)
    r = backend.load(module, {"x": x})
    np.testing.assert_allclose(r.run()[0], module(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
    assert r.measure(TINY).median_ms > 0
    with pytest.raises(UserError, match="torch.nn.Module"):
        backend.load(tiny_onnx(W))


def test_torch_cuda_backend():
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match="CUDA"):
            B.get_backend("torch-cuda")
        return
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    for precision, tol in (("fp32", 1e-4), ("fp16", 2e-2)):
        r = B.get_backend("torch-cuda", precision=precision).load(module, {"x": x})
        np.testing.assert_allclose(r.run()[0], module.float().cpu()(torch.from_numpy(x)).detach().numpy(),
                                   rtol=tol, atol=tol)
        assert r.measure(TINY).median_ms > 0


# ----------------------------------------------------------------------------- TensorRT (logic testable anywhere)


def test_tensorrt_builder_flags():
    assert T.builder_flag_names("fp32") == ()
    assert T.builder_flag_names("fp16") == ("FP16",)
    assert T.builder_flag_names("int8") == ("INT8", "FP16")  # explicit quantization, fp16 for unquantized layers
    with pytest.raises(UserError, match="int4"):
        T.builder_flag_names("int4")


def test_tensorrt_missing_says_how_to_install():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError) as e:
            B.get_backend("tensorrt")
        assert "pip install 'pomonag-edge[tensorrt]'" in str(e.value) and "\n" not in str(e.value)
        ok, reason = B.backend_available("tensorrt")
        assert not ok and "pomonag-edge[tensorrt]" in reason
    else:
        pytest.skip("TensorRT is installed: covered by test_tensorrt_engine")


def test_tensorrt_engine_on_a_gpu():
    pytest.importorskip("tensorrt")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    for precision, tol in (("fp32", 1e-4), ("fp16", 2e-2)):
        r = B.get_backend("tensorrt", precision=precision).load(tiny_onnx(W))
        np.testing.assert_allclose(r.run({"x": x})[0], np.maximum(x @ W, 0), rtol=tol, atol=tol)
        assert r.measure(TINY).median_ms > 0


# ----------------------------------------------------------------------------- devices


def test_shipped_descriptors_load():
    names = D.descriptor_names()
    assert {"cpu", "gpu", "jetson"} <= set(names)
    for name in names:
        d = D.load_descriptor(name)
        assert d.name == name and d.backends and all(b in B.BACKENDS for b in d.backends)
    assert D.load_descriptor("cpu").backends[0] == "onnxruntime"
    assert D.load_descriptor("jetson").requires == "jetson"


def test_unknown_device_lists_known_ones():
    with pytest.raises(UserError, match="known devices: cpu, gpu, jetson"):
        D.load_descriptor("toaster")


def test_custom_descriptor_file_is_checked(tmp_path):
    good = tmp_path / "edge.toml"
    good.write_text('description = "x"\nbackends = ["onnxruntime"]\nthreads = 2\n')
    assert D.load_descriptor(str(good)).threads == 2
    for text, match in (('backends = ["warp-drive"]', "backends"), ('backends = ["onnxruntime"]\ncolour = 1',
                                                                    "unknown field"), ("backends = [", "TOML")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(UserError, match=match):
            D.load_descriptor(str(bad))


def test_detection_parsers():
    assert D.parse_tegra_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64"
                                 ) == "35.4.1"
    assert D.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (0)"
    assert D.parse_nvpmodel("NV Power Mode: 15W\n") == "15W"
    facts = D.parse_nvidia_smi("NVIDIA H200, 550.54.15\n",
                               "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4     |")
    assert facts == {"gpu": "NVIDIA H200", "gpu_count": 1, "gpu_driver": "550.54.15", "cuda": "12.4"}


def test_gpu_facts_from_driver_files(tmp_path):
    if D.shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi present: its answer is used")
    assert D.gpu_facts(tmp_path) == {}
    gpu = tmp_path / "proc/driver/nvidia/gpus/0000:00:05.0"
    gpu.mkdir(parents=True)
    (gpu / "information").write_text("Model: \t\t NVIDIA H200\nIRQ:   42\n")
    (tmp_path / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")
    assert D.gpu_facts(tmp_path) == {"gpu": "NVIDIA H200", "gpu_count": 1, "gpu_driver": "550.54.15"}


def test_jetson_facts_from_its_files(tmp_path):
    assert D.jetson_facts(tmp_path) == {}
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson Orin Nano Developer Kit\x00")
    facts = D.jetson_facts(tmp_path)
    assert facts["jetson"] and facts["l4t"] == "36.3.0"
    assert facts["jetson_model"] == "NVIDIA Jetson Orin Nano Developer Kit"


def test_detect_device_and_hardware_checks():
    facts = D.detect_device()
    assert facts["cpu"] and facts["cpu_cores"] >= 1 and facts["onnxruntime"]
    D.check_hardware(D.load_descriptor("cpu"), facts)
    with pytest.raises(UserError, match="Jetson"):
        D.check_hardware(D.load_descriptor("jetson"), {"cpu": "x"})
    with pytest.raises(UserError, match="NVIDIA GPU"):
        D.check_hardware(D.load_descriptor("gpu"), {"cpu": "x"})
    D.check_hardware(D.load_descriptor("gpu"), {"gpu": "NVIDIA H200"})


# ----------------------------------------------------------------------------- per-op LUT


def test_lut_jobs_cover_every_signature_of_the_space():
    archs = list(SPACE.enumerate())
    for dataset in ("cifar10", "imagenet16-120"):
        jobs = SPACE.lut_plan(dataset, quick=False).jobs
        keys = [k for j in jobs for k in j.keys]
        assert len(keys) == len(set(keys)) and set(keys) == set(SPACE.lut_signatures(dataset))
        needed = {k for a in archs for k in SPACE.op_signatures(a, dataset)}
        assert needed <= set(keys)
        assert not any(k.startswith("skip_connect") for k in keys)


def _synthetic_profile() -> Profile:
    """A LUT with known numbers (no timing) to test the arithmetic on."""
    lut = {k: {"median_ms": 0.01 * (i + 1)} for i, k in enumerate(SPACE.lut_signatures("cifar10"))}
    return Profile(name="t", space="nb201", dataset="cifar10", lut=lut)


def test_lut_sum_is_the_sum_over_op_signatures():
    p = _synthetic_profile()
    archs = SPACE.sample(20, seed=3)
    got = lut_cost(SPACE, p).ms(archs)
    want = [sum(p.lut[k]["median_ms"] for k in SPACE.op_signatures(a, "cifar10")) for a in archs]
    np.testing.assert_allclose(got, want)
    del p.lut["nor_conv_3x3:c32:hw16"]
    with pytest.raises(ProfileError, match="nor_conv_3x3:c32:hw16"):
        lut_cost(SPACE, p).ms([SPACE.parse("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")])
    with pytest.raises(ProfileError, match="without a per-op"):
        lut_cost(SPACE, reference_profile("pixel3"))


def test_calibration_choice_spans_the_range_and_is_seeded():
    p = _synthetic_profile()
    chosen = L.select_calibration(SPACE, p, 10, seed=0)
    assert chosen == L.select_calibration(SPACE, p, 10, seed=0)
    assert len({SPACE.canonical(a) for a in chosen}) == 10 and all(SPACE.is_valid(a) for a in chosen)
    valid = [a for a in SPACE.enumerate() if SPACE.is_valid(a)]
    all_sums = lut_cost(SPACE, p).ms(valid)
    sums = np.sort(lut_cost(SPACE, p).ms(chosen))
    width = (all_sums.max() - all_sums.min()) / 10
    assert sums[0] <= all_sums.min() + width and sums[-1] >= all_sums.max() - width
    assert np.all(np.diff(sums) > 0)


def test_chain_and_skeleton_jobs_measure_in_context():
    backend = B.get_backend("onnxruntime")
    jobs = {j.name: j for j in SPACE.lut_plan("cifar10", quick=False).jobs}
    (stats,) = L.measure_job(jobs["nor_conv_3x3:c16:hw32"], backend, TINY).values()
    assert stats["median_ms"] >= 0 and stats["method"] == "chain 12-2"
    assert stats["chain12_ms"] > stats["chain2_ms"]  # ten more 3x3 convs at 32x32 cost something
    fixed = L.measure_job(jobs["stem + reductions + head"], backend, TINY)
    skeleton_arch = SPACE.parse("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    assert list(fixed) == list(dict.fromkeys(SPACE.op_signatures(skeleton_arch, "cifar10")))
    skeleton = next(iter(fixed.values()))["skeleton_ms"]
    assert sum(v["median_ms"] for v in fixed.values()) == pytest.approx(skeleton)
