"""Export: ONNX files, the numeric check (and its failure on a perturbed model), report schema, exit status,
wrong machine, dynamic batch, feedback (TensorRT without a GPU: test_nothing_lost.py). Each test builds its own
profile and run."""

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from pomonag_edge.cli import cli
from pomonag_edge.errors import UserError
from pomonag_edge.export import SCHEMA, ExportOptions, export_run, machine_mismatch, parse_formats
from pomonag_edge.export.onnx_export import build_model, export_onnx
from pomonag_edge.export.report import NET_STATUSES
from pomonag_edge.export.validate import check_outputs, onnxruntime_runner
from pomonag_edge.hardware import QUICK, detect_device
from pomonag_edge.profile import Profile, load_profile
from pomonag_edge.spaces import get_space

S = get_space("nb201")
# small nets (pools and skips, one 1x1 conv): each exports in well under a second
ARCHS = [
    "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|",
    "|nor_conv_1x1~0|+|none~0|none~1|+|skip_connect~0|skip_connect~1|none~2|",  # x + conv1x1(x)
    "|skip_connect~0|+|avg_pool_3x3~0|none~1|+|none~0|none~1|avg_pool_3x3~2|",
    "|avg_pool_3x3~0|+|none~0|none~1|+|none~0|none~1|avg_pool_3x3~2|",
]
CALIBRATION = [str(a) for a in S.sample(12, seed=3)]


@pytest.fixture(scope="module")
def facts():
    return detect_device()


@pytest.fixture(autouse=True)
def one_drift_probe(monkeypatch):
    """One re-timed calibration net per export keeps these tests fast; tests/test_drift.py covers several."""
    from pomonag_edge.hardware import drift

    real = drift.pick_probes
    monkeypatch.setattr(drift, "pick_probes", lambda calibration, n: real(calibration, min(n, 1)))


def make_profile(path: Path, facts: dict, protocol=QUICK, clock="wall", **device) -> Path:
    profile = Profile(name="cpu-test", space="nb201", dataset="cifar10", device={"name": "cpu", **facts, **device},
                      runtime={"backend": "onnxruntime", "precision": "fp32", "batch": 1, "threads": 1, "clock": clock,
                               "protocol": protocol.name, "protocol_settings": protocol.to_dict()},
                      calibration=[{"arch": a, "latency_ms": 1.0 + i / 4} for i, a in enumerate(CALIBRATION)])
    profile.save(path)
    return path


def make_run(root: Path, profile_spec: str, archs=ARCHS[:3], max_latency_ms=1000.0, name="run",
             created="2026-01-01T00:00:00Z") -> Path:
    """A run folder as `generate` leaves it, made with the profile at ``profile_spec`` as it is now."""
    sha = load_profile(profile_spec).sha256
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    pareto = [{"arch": a, "accuracy": 90.0 - i, "latency_ms": 1.0 + i, "params": S.params(S.parse(a)),
               "macs": S.macs(S.parse(a)), "feasible": True} for i, a in enumerate(archs)]
    (run / "pareto.json").write_text(json.dumps(pareto))
    (run / "manifest.json").write_text(json.dumps({
        "schema": "pomonag-edge/run", "schema_version": 1, "space": "nb201", "dataset": "cifar10",
        "profile": {"spec": profile_spec, "sha256": sha},
        "budget": {"max_latency_ms": max_latency_ms, "max_params": None, "max_macs": None}, "seed": 0,
        "created": created}))
    return run


@pytest.fixture
def setup(tmp_path, facts):
    profile = make_profile(tmp_path / "p.json", facts)
    return tmp_path, profile, make_run(tmp_path, str(profile))


def test_export_writes_checked_onnx_and_measured_report(setup):
    root, profile, run = setup
    before = load_profile(profile)
    report = export_run(run, ExportOptions(top=3, quick=True, feedback=False))
    saved = json.loads((run / "export" / "report.json").read_text())
    assert saved["schema"] == SCHEMA and saved["complete"] and saved["schema_version"] == 1
    assert len(saved["nets"]) == 3
    for key in ("run_dir", "profile", "budget", "settings", "environment", "notes", "summary", "nets"):
        assert key in saved
    env = saved["environment"]
    assert env["runtime"] == "onnxruntime" and env["threads"] == 1 and env["same_machine"]
    assert env["versions"]["onnxruntime"] == ort.__version__ and env["device"]["cpu"]
    for net, arch in zip(saved["nets"], ARCHS):
        assert set(net) >= {"rank", "arch", "params", "macs", "predicted", "files", "checks", "measured", "timing_s",
                            "status", "reasons", "budget_ms", "latency_error_pct", "within_10pct"}
        assert net["arch"] == arch and net["status"] == "passed" and net["status"] in NET_STATUSES
        path = Path(net["files"]["onnx"]["path"])
        assert path.exists() and path.suffix == ".onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)
        (check,) = net["checks"]
        assert check["passed"] and check["failures"] == []
        assert 0 <= check["max_rel_error"] <= check["tolerance_rel"] == 1e-4
        m = net["measured"]["onnxruntime"]
        assert 0 < m["median_ms"] <= m["p90_ms"] and m["runs"] >= QUICK.floor_runs
        assert net["predicted"]["latency_ms"] == 1.0 + net["rank"] - 1
        assert net["latency_error_pct"] == pytest.approx(100 * (m["median_ms"] - net["predicted"]["latency_ms"])
                                                         / net["predicted"]["latency_ms"])
        assert net["budget_ms"] == 1000.0
    assert saved["summary"]["ok"] and saved["summary"]["passed"] == 3
    assert load_profile(profile).calibration == before.calibration  # --no-feedback leaves it alone
    assert report["path"] == str(run / "export" / "report.json")


def test_nets_are_timed_with_the_profiles_clock(tmp_path, facts, monkeypatch):
    """A profile timed with --clock cpu is re-measured with the CPU clock, not the wall clock (by its timer,
    ``timers.timer_for_profile``, whose backend ``backends.get_backend`` makes)."""
    import pomonag_edge.hardware.timers as timers

    clocks = []
    real = timers.get_backend

    def spy(name, **kw):
        clocks.append(kw.get("clock"))
        return real(name, **kw)

    monkeypatch.setattr(timers, "get_backend", spy)
    profile = make_profile(tmp_path / "p.json", facts, clock="cpu")
    report = export_run(make_run(tmp_path, str(profile), archs=ARCHS[:1]),
                        ExportOptions(top=1, quick=True, feedback=False))
    assert clocks == ["cpu"] and report["settings"]["clock"] == "cpu"
    assert report["nets"][0]["measured"]["onnxruntime"]["median_ms"] > 0


def test_numeric_check_fails_on_perturbed_initializer(tmp_path):
    arch = S.parse(ARCHS[1])
    model = build_model(S, arch, "cifar10")
    path = export_onnx(model, (1, 3, 32, 32), tmp_path / "net.onnx")
    run, names = onnxruntime_runner(path)
    good = check_outputs(model, run, names, (1, 3, 32, 32), [1], 1e-4)
    assert good.passed and good.max_rel_error < 1e-5

    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the classifier or a conv weight
    value = numpy_helper.to_array(init).copy()
    value *= 1.01  # a 1% change of one weight tensor
    init.CopyFrom(numpy_helper.from_array(value, init.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    run, names = onnxruntime_runner(tmp_path / "bad.onnx")
    bad = check_outputs(model, run, names, (1, 3, 32, 32), [1], 1e-4).to_dict()
    assert not bad["passed"]
    assert bad["max_rel_error"] > 1e-4 and bad["min_passing_tolerance_rel"] == bad["max_rel_error"]
    (failure,) = bad["failures"]
    assert "max relative error" in failure and "tolerance 0.0001" in failure and "would pass with tolerance" in failure
    # the same perturbation passes a tolerance at least as large as the reported minimum
    assert check_outputs(model, run, names, (1, 3, 32, 32), [1], bad["max_rel_error"] * 1.001).passed


def test_check_reports_wrong_names_and_shapes_in_order(tmp_path):
    model = build_model(S, S.parse(ARCHS[0]), "cifar10")
    outputs = lambda feeds: [np.zeros((1, 7), np.float32)]  # noqa: E731  (a runtime with the wrong output)
    check = check_outputs(model, outputs, ["out"], (1, 3, 32, 32), [1], 1e-4)
    assert not check.passed
    assert check.failures[0].startswith("output names") and "shape [1, 7], expected [1, 10]" in check.failures[1]


def test_perturbed_export_fails_the_command(setup):
    root, profile, run = setup
    export_run(run, ExportOptions(top=1, quick=True, measure=False, feedback=False))
    path = next((run / "export").glob("*.onnx"))
    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.05, init.name))
    onnx.save(proto, str(path))
    # --measure re-times the existing export: it re-checks the file first, and the tampered file fails
    result = CliRunner().invoke(cli, ["export", str(run), "--top", "1", "--measure", "--quick", "--no-feedback"])
    assert result.exit_code == 1, result.output
    net = json.loads((run / "export" / "report.json").read_text())["nets"][0]
    assert net["status"] == "failed" and net["files"]["onnx"]["reused"] and net["measured"] == {}
    assert "max relative error" in net["reasons"][0] and "failed" in result.output


def test_over_budget_exits_nonzero_unless_allowed(tmp_path, facts):
    profile = make_profile(tmp_path / "p.json", facts)
    run = make_run(tmp_path, str(profile), archs=ARCHS[:1], max_latency_ms=0.001)
    args = ["export", str(run), "--top", "1", "--quick", "--no-feedback"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    net = json.loads((run / "export" / "report.json").read_text())["nets"][0]
    assert net["status"] == "over_budget" and "> budget 0.001 ms" in net["reasons"][0]
    allowed = CliRunner().invoke(cli, args + ["--allow-over-budget"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads((run / "export" / "report.json").read_text())["nets"][0]["status"] == "over_budget"


def test_wrong_machine_checks_numerics_only(tmp_path, facts):
    profile = make_profile(tmp_path / "p.json", facts, cpu="Jetson Orin ARMv8", jetson_model="NVIDIA Jetson AGX Orin")
    run = make_run(tmp_path, str(profile), archs=ARCHS[:1])
    report = export_run(run, ExportOptions(top=1, quick=True))
    assert not report["environment"]["same_machine"] and not report["settings"]["measured"]
    assert any("differs from profile" in n and "--measure" in n for n in report["notes"])
    net = report["nets"][0]
    assert net["status"] == "checked" and net["measured"] == {} and net["checks"][0]["passed"]
    assert report["summary"]["ok"] and report["feedback"] is None


def test_reference_profile_is_never_this_machine(facts):
    from pomonag_edge.profile import reference_profile

    assert machine_mismatch(reference_profile("pixel3"), facts)
    mine = Profile(name="x", device={"cpu": facts.get("cpu"), "gpu": facts.get("gpu")})
    assert machine_mismatch(mine, facts) == []
    assert machine_mismatch(Profile(name="y", device={"name": "cpu"}), facts)  # no facts recorded


def test_one_identity_check_for_export_and_the_closed_loop():
    """A fact the profile did not record but the machine has (a Jetson model) is a mismatch, for both callers."""
    profile = Profile(name="x", device={"cpu": "Xeon", "gpu": None})
    assert profile.identity_recorded == ["cpu"]
    assert profile.identity_mismatch({"cpu": "Xeon"}) == []
    assert profile.identity_mismatch({"cpu": "Xeon", "jetson_model": "Orin"}, "me@orin") == [
        "jetson_model: profile None, me@orin 'Orin'"]
    assert machine_mismatch(profile, {"cpu": "Xeon", "jetson_model": "Orin"}) == [
        "jetson_model: profile None, here 'Orin'"]


def test_dynamic_batch_is_checked_at_batch_1_and_2(setup):
    root, profile, run = setup
    report = export_run(run, ExportOptions(top=1, dynamic_batch=True, measure=False))
    net = report["nets"][0]
    assert net["files"]["onnx"]["input_shape"][0] == "batch"
    assert net["checks"][0]["batches"] == [1, 2] and net["status"] == "checked"
    session = ort.InferenceSession(net["files"]["onnx"]["path"], providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((5, 3, 32, 32), np.float32)})[0].shape == (5, 10)


@pytest.mark.slow  # the refit embeds the whole NB201 space once (~5 s here)
def test_feedback_appends_measurements_and_refits(tmp_path, facts):
    # the profile's own protocol decides what counts as noisy; this one accepts any spread, so the test
    # does not depend on how busy the machine is (the next test takes the opposite extreme)
    profile = make_profile(tmp_path / "p.json", facts, protocol=replace(QUICK, max_cv=1e9))
    run = make_run(tmp_path, str(profile))
    before = load_profile(profile)
    report = export_run(run, ExportOptions(top=2))
    fb = report["feedback"]
    assert fb["applied"] and fb["added"] == 2 and fb["skipped_noisy"] == 0
    # a new revision beside the profile, recording its parent; the profile the run used is untouched
    assert fb["parent"] == str(profile) and Path(fb["profile"]).name == "p.r2.json"
    assert load_profile(profile).sha256 == before.sha256
    after = load_profile(fb["profile"])
    assert after.parent == {"path": str(profile), "name": before.name, "sha256": before.sha256}
    added = {c["arch"]: c for c in after.calibration if c.get("source") == "export"}
    assert set(added) == set(ARCHS[:2]) and len(after.calibration) == len(CALIBRATION) + 2
    for net in report["nets"]:
        assert added[net["arch"]]["latency_ms"] == net["measured"]["onnxruntime"]["median_ms"]
    assert fb["refit"] and after.latency_model["n_calibration"] == len(CALIBRATION) + 2
    again = export_run(run, ExportOptions(top=2, profile=fb["profile"]))  # measuring again replaces, never duplicates
    assert len(load_profile(again["feedback"]["profile"]).calibration) == len(CALIBRATION) + 2
    assert load_profile(again["feedback"]["profile"]).parent["path"] == fb["profile"]
    # another profile than the run's: predictions come from its (refit) latency model, not the run
    again = export_run(run, ExportOptions(top=1, measure=False, profile=fb["profile"]))
    assert again["settings"]["predicted_by"] == "profile latency model"


def test_noisy_timings_are_flagged_and_not_fed_back(tmp_path, facts):
    profile = make_profile(tmp_path / "p.json", facts, protocol=replace(QUICK, max_cv=0.0, retries=0))
    run = make_run(tmp_path, str(profile), archs=ARCHS[:1])
    result = CliRunner().invoke(cli, ["export", str(run), "--top", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "export" / "report.json").read_text())
    assert report["nets"][0]["noisy"] and report["summary"]["noisy"] == 1
    assert report["feedback"] == {"applied": False, "added": 0, "skipped_noisy": 1, "why": "all 1 timings were noisy"}
    assert len(load_profile(profile).calibration) == len(CALIBRATION)
    assert "stayed noisy" in result.output and "--measure" in result.output


def test_user_errors(tmp_path, setup):
    root, profile, run = setup
    with pytest.raises(UserError, match="--top"):
        ExportOptions(top=0)
    with pytest.raises(UserError, match="unknown --format"):
        parse_formats("onnx,coreml")
    assert parse_formats("tensorrt") == ("onnx", "tensorrt")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(cli, ["export", str(run), "--precision", "fp16", "--quick"])
    assert result.exit_code == 2 and "fp16" in result.output and "Traceback" not in result.output


def test_weights_are_exported_and_checked(setup):
    import torch

    root, profile, run = setup
    arch = S.parse(ARCHS[1])
    trained = build_model(S, arch, "cifar10", seed=7)  # stands in for a trained net: other weights than seed 0
    torch.save({ARCHS[1]: trained.state_dict()}, root / "w.pt")
    (run / "pareto.json").write_text(json.dumps([{"arch": ARCHS[1], "latency_ms": 1.0, "feasible": True}]))
    report = export_run(run, ExportOptions(top=1, measure=False, weights=str(root / "w.pt")))
    assert report["nets"][0]["checks"][0]["passed"]
    session = ort.InferenceSession(report["nets"][0]["files"]["onnx"]["path"], providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = trained(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-5)
    torch.save(build_model(S, S.parse(ARCHS[0]), "cifar10").state_dict(), root / "other.pt")  # another arch's
    with pytest.raises(UserError, match="do not fit"):
        export_run(run, ExportOptions(top=1, measure=False, weights=str(root / "other.pt")))


@pytest.mark.gpu
def test_tensorrt_engines_are_built_checked_and_timed(tmp_path, facts):
    """Runs only where TensorRT and an NVIDIA GPU exist (never in CI here): fp16 engines beside the ONNX."""
    from importlib.util import find_spec

    if not facts.get("gpu") or find_spec("tensorrt") is None:
        pytest.skip("needs an NVIDIA GPU and TensorRT")
    profile = make_profile(tmp_path / "p.json", facts)
    run = make_run(tmp_path, str(profile), archs=ARCHS[:2])
    report = export_run(run, ExportOptions(top=2, formats=("onnx", "tensorrt"), precision="fp16", quick=True,
                                           feedback=False))
    assert report["environment"]["tensorrt"] and report["environment"]["versions"]["tensorrt"]
    for net in report["nets"]:
        engine = Path(net["files"]["engine"]["path"])
        assert engine.exists() and engine.with_suffix(".onnx").exists()
        assert [c["runtime"] for c in net["checks"]] == ["onnxruntime", "tensorrt"]
        assert all(c["passed"] for c in net["checks"]), net["reasons"]
        assert net["measured"]["tensorrt"]["median_ms"] > 0


def test_default_run_dir_and_profile_found_by_hash(tmp_path, monkeypatch, facts):
    from pomonag_edge.runs import load_run, profile_spec_for, resolve_run_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    profile = make_profile(tmp_path / "profiles" / "cpu.json", facts)
    new = make_run(tmp_path / "runs", str(profile), name="a", created="2026-02-01T00:00:00Z")
    old = make_run(tmp_path / "runs", str(profile), name="b", created="2026-01-01T00:00:00Z")
    os.utime(new, (1, 1))  # touched long ago, generated last: chosen by the time in its manifest
    said = []
    assert resolve_run_dir(None, tmp_path / "runs", say=said.append) == new != old
    assert "generated last" in said[0] and "2026-02-01" in said[0]
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["profile"]["spec"] = None  # generate ran with the default profile: only name and hash recorded
    (new / "manifest.json").write_text(json.dumps(manifest))
    assert Path(profile_spec_for(load_run(new))) == Path("profiles/cpu.json")
