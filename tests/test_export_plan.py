"""Export's plan (``plan_export``): which nets go to which files, at which precision, what is timed where, and every
refusal, decided without hardware, files or timing; and how ``hardware.timers`` reaches a profile's device for it
(``reach_for_profile``), and times export's own files (``Graph.onnx``) and batches (``time_batch``)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pomonag_edge.errors import UserError
from pomonag_edge.export.pipeline import ExportOptions, plan_export, wants_engines_here
from pomonag_edge.hardware import QUICK
from pomonag_edge.hardware.timers import BackendTimer, Graph, Reach, RunnerTimer, reach_for_profile
from pomonag_edge.hardware.timing import Measurement
from pomonag_edge.profile import Profile
from pomonag_edge.runs import Run
from pomonag_edge.spaces import get_space

S = get_space("nb201")
ARCHS = [str(a) for a in S.sample(4, seed=5)]
FACTS = {"cpu": "Test CPU 3000", "gpu": None}
HERE = Reach("here", "onnxruntime")


def profile(backend="onnxruntime", precision="fp32", reference=None, **device) -> Profile:
    return Profile(name="p", space="nb201", dataset="cifar10", device={"name": "cpu", **FACTS, **device},
                   runtime={"backend": backend, "precision": precision, "batch": 1, "threads": 1, "clock": "wall",
                            "protocol": QUICK.name, "protocol_settings": QUICK.to_dict()},
                   calibration=[{"arch": a, "latency_ms": 1.0 + i} for i, a in enumerate(ARCHS)], reference=reference)


def run(feasible=(True, True, False, True)) -> Run:
    manifest = {"space": "nb201", "dataset": "cifar10", "budget": {"max_latency_ms": 5.0}}
    return Run(path=Path("runs/r"), manifest=manifest,
               candidates=[{"rank": i + 1, "arch": a, "latency_ms": 1.0 + i, "feasible": f} for i, (a, f) in
                           enumerate(zip(ARCHS, feasible))])


def plan(options=None, p=None, reach=HERE, detected=FACTS, **kw):
    return plan_export(run(), S, p or profile(), options or ExportOptions(quick=True), reach=reach,
                       detected=detected, **kw)


def test_on_the_profiles_device_every_feasible_net_is_built_and_timed_with_drift_probes():
    pl = plan(ExportOptions(top=5, quick=True, drift_nets=2))
    assert [n.rank for n in pl.nets] == [1, 2, 4]
    assert [n.item["arch"] for n in pl.nets] == [ARCHS[0], ARCHS[1], ARCHS[3]]
    assert pl.nets[0].stem.startswith("01_nb201_") and not any(n.reuse for n in pl.nets)
    assert pl.measure and not pl.informative and pl.mismatch == () and pl.notes == ()
    assert pl.backend == "onnxruntime" and pl.runtimes == ("onnxruntime",) and pl.engines is None
    assert pl.precision == pl.engine_precision == "fp32" and pl.int8_scheme is None and pl.budget_ms == 5.0
    assert len(pl.probes) == 2 and pl.protocol == QUICK
    assert [n.rank for n in plan(ExportOptions(top=5, quick=True, allow_over_budget=True)).nets] == [1, 2, 3, 4]


def test_another_machine_checks_numerics_only_unless_asked_and_a_reference_profile_is_timed_for_information():
    elsewhere = {"cpu": "Another CPU", "gpu": None}
    pl = plan(detected=elsewhere)
    assert not pl.measure and pl.probes == () and "latency not measured" in pl.notes[0] and pl.mismatch
    asked = plan(ExportOptions(quick=True, measure=True), detected=elsewhere)
    assert asked.measure and not asked.informative and "not fed back" in asked.notes[0]
    ref = plan(p=profile(backend="published table", reference="pixel3"), reach=reach_for_profile(
        profile(backend="published table", reference="pixel3"), stand_in=True))
    assert ref.measure and ref.informative and ref.backend == "onnxruntime" and ref.probes == ()
    assert "for information only" in ref.notes[0]


def test_tensorrt_here_needs_what_it_needs_and_says_why_not():
    options = ExportOptions(quick=True, formats=("onnx", "tensorrt"))
    assert wants_engines_here(options, HERE) and not wants_engines_here(ExportOptions(), HERE)
    with pytest.raises(UserError, match="--format tensorrt: no NVIDIA GPU here, so no TensorRT engines"):
        plan(options, tensorrt_missing="no NVIDIA GPU here")
    pl = plan(options)
    assert pl.engines == "here" and pl.runtimes == ("onnxruntime", "tensorrt")
    trt = plan(ExportOptions(quick=True), p=profile(backend="tensorrt"), reach=Reach("here", "tensorrt"),
               tensorrt_missing="TensorRT is not installed here")
    assert not trt.measure and trt.engines is None and "exported ONNX only" in trt.notes[0]
    with pytest.raises(UserError, match="--dynamic-batch cannot be used with TensorRT engines"):
        plan(ExportOptions(quick=True, formats=("onnx", "tensorrt"), dynamic_batch=True))


def test_the_runner_builds_engines_only_with_trtexec_and_a_command_builds_none():
    trtexec = plan(reach=Reach("runner", "trtexec", runtime="trtexec"))
    assert trtexec.engines == "device" and trtexec.runtimes == ("trtexec",)
    with pytest.raises(UserError, match="runtime on me@board is onnxruntime, so no TensorRT engines"):
        plan(ExportOptions(quick=True, host="me@board", formats=("onnx", "tensorrt")),
             reach=Reach("runner", "onnxruntime", runtime="onnxruntime"))
    command = Reach("command", "command", descriptor=SimpleNamespace(name="sim"))
    pl = plan(ExportOptions(quick=True, formats=("onnx", "tensorrt")), reach=command)
    assert pl.engines is None and "device is a command (sim): no TensorRT engines built" in pl.notes[0]
    int8 = plan(ExportOptions(quick=True, precision="int8"), p=profile(precision="int8"), reach=command)
    assert int8.int8_scheme is None and "command is given the FP32 ONNX files" in int8.notes[0]


def test_precisions_int8_and_fp16():
    int8 = plan(ExportOptions(quick=True, precision="int8"), p=profile(precision="int8"))
    assert int8.int8_scheme == "onnxruntime" and int8.precision == "int8"
    with pytest.raises(UserError, match="--precision int8, but profile 'p' was measured at fp32"):
        plan(ExportOptions(quick=True, precision="int8"))
    with pytest.raises(UserError, match="needs images to calibrate on"):
        plan(ExportOptions(quick=True, precision="int8", weights="w.pt"), p=profile(precision="int8"))
    with pytest.raises(UserError, match="--precision fp16 needs a GPU runtime"):
        plan(ExportOptions(quick=True, precision="fp16"))
    fp16 = plan(ExportOptions(quick=True, precision="fp16", formats=("onnx", "tensorrt")))
    assert fp16.precision == "fp32" and fp16.engine_precision == "fp16"  # fp16 engines, fp32 CPU timings


def test_measure_again_reuses_the_files_in_place_and_nothing_feasible_is_refused():
    first = plan(ExportOptions(top=2, quick=True))
    again = plan(ExportOptions(top=2, quick=True, measure=True), previous={first.nets[0].stem})
    assert [n.reuse for n in again.nets] == [True, False]
    int8 = plan(ExportOptions(top=1, quick=True, measure=True, precision="int8"), p=profile(precision="int8"),
                previous={first.nets[0].stem})
    assert not int8.nets[0].reuse  # its FP32 file is missing
    with pytest.raises(UserError, match="holds no net within budget"):
        plan_export(run(feasible=(False,) * 4), S, profile(), ExportOptions(), reach=HERE, detected=FACTS)


def test_reach_for_profile_stands_in_only_for_export():
    ref = profile(backend="published table", reference="pixel3")
    with pytest.raises(UserError, match="there is no device to time on"):
        reach_for_profile(ref)
    assert reach_for_profile(ref, stand_in=True) == Reach("here", "onnxruntime")
    assert reach_for_profile(profile(backend="trtexec")) == Reach("runner", "trtexec", runtime="trtexec")
    host = object()
    assert reach_for_profile(profile(backend="tensorrt"), host) == Reach("runner", "tensorrt", runtime="trtexec")
    with pytest.raises(UserError, match="backend torch-cpu cannot time through the device runner"):
        reach_for_profile(profile(backend="torch-cpu"), host)
    assert reach_for_profile(profile(backend="torch-cpu"), host, stand_in=True).runtime == "onnxruntime"


def _m(ms):
    return Measurement(median_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms, cv=0.0, runs=1, repeats=1)


def test_a_backend_timer_times_a_graphs_own_file_and_a_runner_batch_keeps_its_failures(tmp_path):
    loaded = []

    class Backend:
        name, precision = "onnxruntime", "int8"

        def load(self, model, inputs):
            loaded.append(model)
            return SimpleNamespace(measure=lambda protocol: _m(1.0))

    inputs = {"input": np.zeros((1, 3, 8, 8), np.float32)}
    timed = BackendTimer(Backend(), QUICK).time_batch({"a": Graph("module", inputs, onnx=tmp_path / "a.onnx")})
    assert loaded == [str(tmp_path / "a.onnx")] and timed.measurements["a"].median_ms == 1.0 and "a" in timed.seconds

    (tmp_path / "a.onnx").write_bytes(b"a")
    (tmp_path / "b.onnx").write_bytes(b"b")

    class Device:
        where, runtime = "me@board", "onnxruntime"

        def time(self, graphs, **kw):
            return SimpleNamespace(measurements={"a": _m(2.0)}, stats={"a": {"round_medians_ms": [2.0]}},
                                   errors={"b": "it crashed"}, engines={})

    runner = RunnerTimer(Device())
    timed = runner.time_batch({"a": Graph(None, inputs, onnx=tmp_path / "a.onnx"),
                               "b": Graph(None, inputs, onnx=tmp_path / "b.onnx")})
    assert timed.errors == {"b": "it crashed"} and timed.details["a"] == {"round_medians_ms": [2.0]}
    assert "re-timed in the same interleaved rounds" in runner.measured_note(2)
    with pytest.raises(UserError, match="timing b on me@board failed: it crashed"):
        runner.time({"b": Graph(None, inputs, onnx=tmp_path / "b.onnx")})
