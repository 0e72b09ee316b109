"""INT8 as a precision: Q/DQ graphs made by ONNX Runtime's static quantization (after its pre-processing), the
schemes per runtime, TensorRT / trtexec flags as NVIDIA documents them, timers and profiles at int8, and the
one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pomonag_edge.errors import UserError
from pomonag_edge.hardware import backends as B
from pomonag_edge.hardware import quantize as Q
from pomonag_edge.hardware import runner as R
from pomonag_edge.hardware import tensorrt as T
from pomonag_edge.hardware.timers import BackendTimer, Graph, RunnerTimer
from pomonag_edge.hardware.timing import Protocol
from pomonag_edge.profiler import ProfileRequest, build_profile, int8_warning, profile_path
from tests.test_runner import _trtexec_with_help

TINY = Protocol(name="tiny", warmup_ms=0, warmup_runs=1, min_runs=3, min_time_s=0.02, floor_runs=2, retries=0,
                settle_s=0.05)


def conv_bn_relu_onnx(channels: int = 8) -> bytes:
    """Conv -> BatchNormalization -> Relu -> GlobalAveragePool, BatchNorm left as its own node (as an exporter
    without constant folding writes it): pre-processing must fold it into the conv."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")]
    for name, value in (("scale", 1.0 + 0.1 * rng.standard_normal(channels)),
                        ("shift", 0.1 * rng.standard_normal(channels)),
                        ("mean", 0.1 * rng.standard_normal(channels)), ("var", 1.0 + rng.random(channels))):
        init.append(numpy_helper.from_array(value.astype(np.float32), name))
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["logits"])]
    graph = helper.make_graph(nodes, "cbr", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, channels, 1, 1])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _ops(data: bytes) -> dict:
    return Q.graph_ops(data)


def _calib(shape=(1, 3, 16, 16), n=4):
    return [{"input": np.random.default_rng(i).standard_normal(shape).astype(np.float32)} for i in range(n)]


def _zero_points(data: bytes) -> list[np.ndarray]:
    model = onnx.load_from_string(data)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [init[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


def test_qdq_graph_has_quantize_dequantize_nodes_and_batchnorm_folded():
    fp32 = conv_bn_relu_onnx()
    assert _ops(fp32)["BatchNormalization"] == 1
    int8 = Q.quantize_onnx(fp32, _calib(), "onnxruntime", "cbr")
    ops = _ops(int8)
    assert ops.get("QuantizeLinear", 0) >= 1 and ops.get("DequantizeLinear", 0) >= 2  # activations and weights
    assert "BatchNormalization" not in ops and ops["Conv"] == 1  # folded by quant_pre_process
    assert Q.is_quantized(int8) and not Q.is_quantized(fp32)


def test_schemes_follow_the_runtime():
    fp32 = conv_bn_relu_onnx()
    cpu, trt = (Q.quantize_onnx(fp32, _calib(), scheme) for scheme in ("onnxruntime", "tensorrt"))
    assert all(z.dtype == np.uint8 for z in _zero_points(cpu))  # U8S8: ONNX Runtime's fast x86 path
    assert all(z.dtype == np.int8 and not z.any() for z in _zero_points(trt))  # TensorRT: signed, symmetric
    assert Q.scheme_for("onnxruntime") == "onnxruntime"
    assert {Q.scheme_for(b) for b in ("tensorrt", "trtexec", "onnxruntime-trt")} == {"tensorrt"}


def test_int8_nb201_net_runs_in_onnxruntime_close_to_fp32():
    import onnxruntime as ort

    from pomonag_edge.export.onnx_export import build_model
    from pomonag_edge.hardware.runnable import onnx_bytes
    from pomonag_edge.spaces import get_space

    space = get_space("nb201")
    arch = space.parse("|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|"
                       "+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|")
    model = build_model(space, arch, "cifar10")
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    fp32 = onnx_bytes(model, {"input": x})
    for scheme in Q.SCHEMES:
        int8 = Q.quantize_onnx(fp32, [{"input": x}], scheme)
        ops = _ops(int8)
        assert ops["QuantizeLinear"] >= ops["Conv"] and ops["DequantizeLinear"] > ops["Conv"]
        ref, got = (ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
                    for m in (fp32, int8))
        assert np.abs(got - ref).max() / np.abs(ref).max() < 0.2


def test_a_graph_that_cannot_be_quantized_is_one_line():
    with pytest.raises(UserError, match="quantizing broken to INT8 failed") as e:
        Q.quantize_onnx(b"not an onnx graph", _calib(), name="broken")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no calibration"):
        Q.quantize_onnx(conv_bn_relu_onnx(), [], name="cbr")
    with pytest.raises(UserError, match="no calibration images"):
        Q.image_calibration(np.zeros((0, 3, 8, 8)), batch=1)


def test_image_calibration_batches_follow_the_graph():
    feeds = Q.image_calibration(np.ones((10, 3, 4, 4)), batch=4)
    assert [f["input"].shape[0] for f in feeds] == [4, 4]
    assert Q.image_calibration(np.ones((3, 3, 4, 4)), batch=4)[0]["input"].shape == (4, 3, 4, 4)


# ----------------------------------------------------------------------------- runtimes and their flags


def test_trtexec_int8_is_explicit_quantization_with_fp16_alongside():
    """NVIDIA's command line for a Q/DQ ONNX: ``trtexec --onnx=model.onnx --int8 --fp16``; ``--fp16`` alone for
    fp16, neither for fp32."""
    for precision, flags in (("int8", ["--int8", "--fp16"]), ("fp16", ["--fp16"]), ("fp32", [])):
        t = _trtexec_with_help("help_v8502.txt", precision)
        build = t.build_args("a.onnx", "a.engine", "/w")
        assert [a for a in build if a in ("--int8", "--fp16", "--best", "--noTF32")] == flags
        assert build[:2] == ["--onnx=a.onnx", "--saveEngine=a.engine"]
        assert not any(a.startswith("--calib") for a in build)  # scales come from the Q/DQ graph, no calibrator


def test_trtexec_before_8_refuses_int8(tmp_path):
    fake = tmp_path / "trtexec"  # a stand-in that prints TensorRT 7.1.3's banner for --help
    fake.write_text("#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v7103]'\n")
    fake.chmod(0o755)
    with pytest.raises(R.RunnerError, match="TensorRT 8.0 or newer"):
        R.Trtexec(str(fake), "int8")
    assert R.Trtexec(str(fake), "fp16").precision == "fp16"


def test_tensorrt_and_its_execution_provider_flags():
    assert T.builder_flag_names("int8") == ("INT8", "FP16")
    assert R.trt_ep_precision("int8") == {"trt_fp16_enable": True, "trt_int8_enable": True}
    assert R.trt_ep_precision("fp16") == {"trt_fp16_enable": True, "trt_int8_enable": False}
    assert R.trt_ep_precision("fp32") == {"trt_fp16_enable": False, "trt_int8_enable": False}


@pytest.mark.parametrize("name, precision, match", [
    ("torch-cpu", "int8", "Q/DQ ONNX"),
    ("onnxruntime-cuda", "int8", "no int8 convolutions"),
    ("onnxruntime", "fp16", "few fp16 kernels"),
])
def test_runtimes_without_the_precision_say_so(name, precision, match):
    with pytest.raises(UserError, match=match) as e:
        B.get_backend(name, precision=precision)
    assert "\n" not in str(e.value)


def test_cpu_int8_instructions_from_cpuinfo():
    assert R.int8_dot_instructions("flags\t: fpu sse avx2 avx512f avx512_vnni\n") == ["avx512_vnni"]
    assert R.int8_dot_instructions("flags\t: fpu sse avx2\n") == []
    assert R.int8_dot_instructions("Features\t: fp asimd asimddp i8mm\n") == ["asimddp", "i8mm"]
    assert R.int8_dot_instructions("model name : x\n") is None
    assert "no fast int8 instructions" in int8_warning("onnxruntime", {"cpu": "old", "cpu_int8_dot": []})
    assert int8_warning("onnxruntime", {"cpu_int8_dot": ["avx_vnni"]}) is None
    assert int8_warning("onnxruntime", {}) is None  # unknown: no claim
    assert int8_warning("tensorrt", {"cpu_int8_dot": []}) is None  # the GPU does the int8 work


# ----------------------------------------------------------------------------- timers and profiles


class _Recorder:
    name, precision = "onnxruntime", "int8"

    def __init__(self):
        self.loaded = []

    def load(self, model, inputs):
        self.loaded.append(model)
        return B.get_backend("onnxruntime").load(model, inputs)


def _chain():
    import torch

    return Graph(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval(),
                 {"input": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)})


def test_an_int8_timer_loads_qdq_graphs():
    backend = _Recorder()
    out = BackendTimer(backend, TINY).time({"g": _chain()})
    assert out["g"].median_ms > 0 and Q.is_quantized(backend.loaded[0])


def test_the_runner_cache_keeps_int8_graphs_apart(tmp_path):
    class Device:
        where, runtime = "here", "trtexec"

        def __init__(self, precision):
            self.precision = precision

    fp32 = RunnerTimer(Device("fp32"), cache_dir=tmp_path)._onnx("g", _chain())
    int8 = RunnerTimer(Device("int8"), cache_dir=tmp_path)._onnx("g", _chain())
    assert not Q.is_quantized(fp32) and Q.is_quantized(int8)
    assert all(z.dtype == np.int8 for z in _zero_points(int8))  # trtexec: TensorRT's scheme
    assert len(list(tmp_path.glob("*.onnx"))) == 2


def test_an_int8_profile_sits_beside_the_fp32_one_and_records_its_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(profile_path(ProfileRequest(device="cpu", precision="int8"))) == "profiles/cpu-int8.json"
    assert str(profile_path(ProfileRequest(device="cpu", precision="fp32"))) == "profiles/cpu.json"
    assert str(profile_path(ProfileRequest(device="cpu"))) == "profiles/cpu.json"
    result = build_profile(ProfileRequest(device="cpu", precision="int8", calibration=2, protocol=TINY, quick=True,
                                          out=tmp_path / "p.json"), fit_model=False)
    rt = result.profile.runtime
    assert rt["precision"] == "int8" and rt["int8"]["scheme"] == "onnxruntime"
    assert len(result.profile.lut) > 0 and len(result.profile.calibration) == 2
    with pytest.raises(UserError, match="precision 'int8'"):  # the same file is not resumed at another precision
        build_profile(ProfileRequest(device="cpu", precision="fp32", calibration=2, protocol=TINY, quick=True,
                                     out=tmp_path / "p.json"), fit_model=False)


# ----------------------------------------------------------------------------- export at int8


def _int8_setup(tmp_path, precision="int8"):
    from tests.test_export import ARCHS, make_profile, make_run

    profile = make_profile(tmp_path / "p.json", _facts())
    data = json.loads(profile.read_text())
    data["runtime"]["precision"] = precision
    profile.write_text(json.dumps(data))
    return profile, make_run(tmp_path, str(profile), archs=ARCHS[:2])


_FACTS: dict = {}


def _facts() -> dict:
    from pomonag_edge.hardware import detect_device

    if not _FACTS:
        _FACTS.update(detect_device())
    return _FACTS


def test_export_at_int8_ships_qdq_files_checked_and_timed_beside_fp32(tmp_path):
    from pomonag_edge.export import ExportOptions, export_run
    from pomonag_edge.hardware import QUICK

    profile, run = _int8_setup(tmp_path)
    report = export_run(run, ExportOptions(top=2, quick=True, feedback=False, drift_nets=1))
    assert report["settings"]["precision"] == "int8" and report["environment"]["precision"] == "int8"
    assert report["settings"]["int8"]["source"] == "random inputs"
    assert any("random inputs" in n and "accuracy is not claimed" in n for n in report["notes"])
    for net in report["nets"]:
        onnx_file, fp32_file = net["files"]["onnx"], net["files"]["onnx_fp32"]
        assert onnx_file["precision"] == "int8" and onnx_file["path"].endswith(".onnx")
        assert fp32_file["path"].endswith(".fp32.onnx") and fp32_file["precision"] == "fp32"
        data = Path(onnx_file["path"]).read_bytes()
        assert Q.is_quantized(data) and not Q.is_quantized(Path(fp32_file["path"]).read_bytes())
        fp32_check, int8_check = net["checks"]
        assert fp32_check["tolerance_rel"] == 1e-4 and fp32_check["passed"]
        assert int8_check["kind"] == "int8 vs fp32" and int8_check["passed"]
        assert int8_check["max_rel_error"] <= int8_check["tolerance_rel"]
        assert int8_check["top1_agreement_min"] is None  # random weights: near-tied logits, agreement not judged
        m, fp32 = net["measured"]["onnxruntime"], net["measured_fp32"]
        assert m["runs"] >= QUICK.floor_runs and fp32["median_ms"] > 0
        assert net["int8_speedup"] == pytest.approx(fp32["median_ms"] / m["median_ms"])
        assert "accuracy_measured" not in net and net["status"] in ("passed", "over_budget")
    assert report["summary"]["int8_speedup_median"] > 0
    drift = next(Path(report["run_dir"], "export", "drift").glob("*.onnx")).read_bytes()
    assert Q.is_quantized(drift)  # the profile's own nets re-timed as the profile timed them: INT8


def test_int8_not_faster_is_one_note_per_net():
    from types import SimpleNamespace

    from pomonag_edge.export.pipeline import _judge
    from pomonag_edge.hardware import QUICK

    plan = SimpleNamespace(backend="onnxruntime", informative=False, protocol=QUICK, budget_ms=None)
    entry = {"rank": 2, "checks": [], "reasons": [], "predicted": {"latency_ms": None},
             "measured": {"onnxruntime": {"median_ms": 2.0, "cv": 0.0}}, "measured_fp32": {"median_ms": 1.5}}
    notes = []
    _judge(entry, plan, notes)
    assert entry["int8_speedup"] == 0.75
    assert notes == ["net 2: INT8 is not faster than FP32 on this device (2.000 ms vs 1.500 ms)"]


def test_int8_export_refusals_are_one_line(tmp_path):
    from pomonag_edge.export import ExportOptions, export_run

    profile, run = _int8_setup(tmp_path, precision="fp32")
    with pytest.raises(UserError, match="measured at fp32") as e:  # an fp32 latency model does not predict int8
        export_run(run, ExportOptions(top=1, quick=True, precision="int8"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="calib-images"):
        ExportOptions(calib_images=0)
    (tmp_path / "b").mkdir()
    int8_profile, int8_run = _int8_setup(tmp_path / "b")
    with pytest.raises(UserError, match="--calib-data"):
        export_run(int8_run, ExportOptions(top=1, quick=True, weights=str(tmp_path / "w.pt")))
    (int8_run / "train").mkdir()  # trained weights whose training images are gone: no calibration source
    (int8_run / "train" / "results.json").write_text(json.dumps(
        {"task": {"name": "t", "input_hw": 32, "num_classes": 10}, "nets": [],
         "data": {"path": str(tmp_path / "gone"), "split": {"seed": 0}}}))
    with pytest.raises(UserError, match="which is gone"):
        export_run(int8_run, ExportOptions(top=1, quick=True))


@pytest.mark.slow
def test_trained_digits_export_int8_accuracy_beside_fp32(tmp_path, monkeypatch, digits_folder):
    """Real digits, a net trained briefly, exported at int8: calibrated on the training split, its accuracy
    measured on the validation split beside the FP32 file's, and the report's number is the file's."""
    import onnxruntime as ort
    import torch
    from click.testing import CliRunner

    from pomonag_edge.cli import cli
    from pomonag_edge.userdata import load_user_data

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)

    def ok(args):
        r = CliRunner().invoke(cli, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r

    run = tmp_path / "run"
    ok(["generate", "--dataset", "cifar10", "--profile", "pixel3", "--max-params", "0.3M", "--num", 1,
        "--samples", 64, "--out", run])
    ok(["train", run, "--data", digits_folder, "--top", 1, "--epochs", 15])
    out = ok(["export", run, "--top", 1, "--no-measure", "--precision", "int8", "--calib-images", 64])
    report = json.loads((run / "export" / "report.json").read_text())
    net = report["nets"][0]
    assert report["settings"]["int8"]["source"] == "training split" and report["settings"]["int8"]["images"] == 64
    assert net["status"] == "checked" and net["files"]["onnx"]["precision"] == "int8"
    assert {"accuracy_measured", "accuracy_measured_fp32", "accuracy_drop_points"} <= set(net)
    data = load_user_data(digits_folder, input_hw=32, seed=0)
    session = ort.InferenceSession(net["files"]["onnx"]["path"], providers=["CPUExecutionProvider"])
    preds = [int(session.run(None, {"input": x[None]})[0].argmax()) for x in data.x_val]
    assert abs(100.0 * float(np.mean(np.array(preds) == data.y_val)) - net["accuracy_measured"]) < 1e-3
    assert net["accuracy_drop_points"] == pytest.approx(net["accuracy_measured_fp32"] - net["accuracy_measured"])
    assert "accuracy drop from FP32" not in out.output  # --no-measure: no speed line, accuracy is in the table


# ----------------------------------------------------------------------------- calibrate and generate at int8


def _csv(path, precision_column=None, n=8):
    from tests.test_calibrate import _write_measurements

    _write_measurements(path, n=n)
    if precision_column is not None:
        lines = path.read_text().splitlines()
        values = precision_column if isinstance(precision_column, list) else [precision_column] * (len(lines) - 1)
        rows = [f"{line},{v}" for line, v in zip(lines[1:], values)]
        path.write_text("\n".join([lines[0] + ",precision"] + rows) + "\n")
    return path


def test_calibrate_records_the_precision_from_the_csv_or_the_flag(tmp_path):
    from click.testing import CliRunner

    from pomonag_edge.cli import cli
    from pomonag_edge.profile import load_profile

    def calibrate(csv_path, *extra):
        return CliRunner().invoke(cli, ["calibrate", "--measurements", str(csv_path), "--name", "x", "--force",
                                        "--out", str(tmp_path / "x.json"), *extra])

    r = calibrate(_csv(tmp_path / "a.csv", "int8"))
    assert r.exit_code == 0, r.output
    assert load_profile(tmp_path / "x.json").runtime["precision"] == "int8"
    r = calibrate(_csv(tmp_path / "b.csv"), "--precision", "int8")
    assert r.exit_code == 0 and load_profile(tmp_path / "x.json").runtime["precision"] == "int8"
    for csv_path, extra, match in (
            (_csv(tmp_path / "c.csv", "fp16"), ("--precision", "int8"), "timed at fp16"),
            (_csv(tmp_path / "d.csv", ["int8"] * 4 + ["fp32"] * 4), (), "several precisions"),
            (_csv(tmp_path / "e.csv", ["int8"] * 4 + [""] * 4), (), "empty on some rows"),
            (_csv(tmp_path / "f.csv", "int4"), (), "precision 'int4'")):
        r = calibrate(csv_path, *extra)
        assert r.exit_code == 2 and match in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_generate_precision_picks_the_profile_of_that_precision(tmp_path):
    from pomonag_edge.errors import ProfileError
    from pomonag_edge.profile import Profile, default_profile, resolve_profile

    folder = tmp_path / "profiles"
    for name, precision, created in (("cpu", "fp32", "2026-01-02T00:00:00+0000"),
                                     ("cpu-int8", "int8", "2026-01-01T00:00:00+0000")):
        Profile(name=name, runtime={"precision": precision}, created=created).save(folder / f"{name}.json")
    assert default_profile(folder, "nb201")[0].name == "cpu.json"  # newest
    path, why = default_profile(folder, "nb201", "int8")
    assert path.name == "cpu-int8.json" and "int8" in why
    with pytest.raises(ProfileError, match="no fp16 profile.*--precision fp16"):
        default_profile(folder, "nb201", "fp16")
    with pytest.raises(ProfileError, match="measured at fp32"):
        resolve_profile(str(folder / "cpu.json"), space="nb201", precision="int8", say=lambda m: None)
    assert resolve_profile(str(folder / "cpu-int8.json"), precision="int8", say=lambda m: None).name == "cpu-int8"


@pytest.mark.slow
def test_a_mobilenetv3_net_quantizes_to_qdq_and_runs():
    import onnxruntime as ort

    from pomonag_edge.export.onnx_export import build_model
    from pomonag_edge.hardware.runnable import onnx_bytes
    from pomonag_edge.spaces import get_space

    space = get_space("mbv3")
    arch = space.parse("ks=3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3:e=3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3-3:"
                       "d=2-2-2-2-2:r=128:w=1.0")
    x = np.random.default_rng(0).standard_normal(space.input_shape(arch, None, 1)).astype(np.float32)
    fp32 = onnx_bytes(build_model(space, arch, None), {"input": x})
    int8 = Q.quantize_onnx(fp32, Q.random_calibration({"input": x}), "tensorrt", "mbv3")
    ops = _ops(int8)
    assert ops["QuantizeLinear"] >= ops["Conv"] and "BatchNormalization" not in ops
    ref, got = (ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
                for m in (fp32, int8))
    assert got.shape == ref.shape and np.isfinite(got).all()


def test_calibration_falls_back_from_training_split_to_task_images_to_random(tmp_path):
    from types import SimpleNamespace

    from pomonag_edge.export.int8 import calibration_data, feeds
    from pomonag_edge.spaces import get_space

    space = get_space("nb201")
    rng = np.random.default_rng(0)
    npz = tmp_path / "task.npz"
    np.savez(npz, x=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), y=np.repeat([0, 1, 2], 10))
    run = SimpleNamespace(task=SimpleNamespace(source={"path": str(npz), "split": {"seed": 0}}))
    calib = calibration_data(space, run, None, 8, None)
    assert calib.source == "task images" and calib.train.shape == (8, 3, 32, 32) and not calib.claims_accuracy
    assert [f["input"].shape for f in feeds(calib, (4, 3, 32, 32), 0)] == [(4, 3, 32, 32)] * 2
    trained = {"data": {"path": str(npz), "split": {"seed": 0}}}
    calib = calibration_data(space, run, trained, 100, None)  # fewer images than asked: all of the split
    assert calib.source == "training split" and calib.claims_accuracy and len(calib.train) == 24
    assert len(calib.val_x) == 6
    gone = SimpleNamespace(task=SimpleNamespace(source={"path": str(tmp_path / "moved.npz")}))
    assert calibration_data(space, gone, None, 8, None).source == "random inputs"
    with pytest.raises(UserError, match="fingerprint changed"):
        calibration_data(space, run, {"data": {"path": str(npz), "fingerprint": "other"}}, 8, None)
