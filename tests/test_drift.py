"""Drift-aware validation: the factor from re-timed calibration nets, raw vs corrected agreement, the budget
judged on the raw measurement; export re-times calibration nets here and over SSH."""

import json
import statistics
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from pomonag_edge.export import ExportOptions, export_run
from pomonag_edge.export.pipeline import _interleave, _judge
from pomonag_edge.hardware import QUICK
from pomonag_edge.hardware.drift import compare, drift_factor, pick_probes, speed_change


def test_drift_factor_is_the_median_ratio():
    assert drift_factor([2.0, 3.3, 1.0], [1.0, 3.0, 1.0]) == pytest.approx(1.1)
    assert drift_factor([2.0, None], [1.0, 4.0]) == 2.0
    assert drift_factor([], []) is None and drift_factor([None], [1.0]) is None


def test_probes_span_the_latency_range():
    calibration = [{"arch": str(i), "latency_ms": float(i)} for i in (5, 1, 9, 3, 7)] + [{"arch": "x"}]
    assert [p["latency_ms"] for p in pick_probes(calibration, 3)] == [1.0, 5.0, 9.0]
    assert len(pick_probes(calibration, 10)) == 5 and pick_probes(calibration, 0) == []
    assert pick_probes(calibration, 1)[0]["latency_ms"] == 5.0


def test_raw_and_corrected_ratios():
    c = compare(3.3, 2.0, 1.5)  # 65% slow raw; the device runs 1.5x slower today: 10% slow corrected
    assert c["ratio_raw"] == pytest.approx(1.65) and not c["within_10pct_raw"]
    assert c["ratio_corrected"] == pytest.approx(1.1) and c["within_10pct_corrected"]
    assert "ratio_corrected" not in compare(3.3, 2.0, None)


def test_the_band_is_one_definition_for_drift_export_and_its_report():
    """``within_10pct`` (raw and corrected) and the report's summary line all read ``drift.BAND``."""
    from rich.console import Console

    from pomonag_edge.export import pipeline, report
    from pomonag_edge.hardware import drift

    assert pipeline.BAND is drift.BAND and report.BAND is drift.BAND
    entry = {"rank": 1, "checks": [], "reasons": [], "measured": {"onnxruntime": {"median_ms": 1.09, "cv": 0.0}},
             "predicted": {"latency_ms": 1.0}}
    plan = SimpleNamespace(backend="onnxruntime", informative=False, protocol=QUICK, budget_ms=None)
    _judge(entry, plan, [], 1.0)
    assert entry["within_10pct"] and entry["within_10pct_corrected"]
    console = Console(record=True, width=200)
    summary = {"passed": 1, "checked": 0, "over_budget": 0, "failed": 0, "within_10pct": 1, "compared": 1}
    report.render({"budget": {}, "environment": {"runtime": "onnxruntime", "precision": "fp32", "threads": 1,
                                                 "batch": 1}, "run_dir": "r", "profile": {"name": "p"}, "nets": [],
                   "notes": [], "summary": summary}, console)
    assert f"within ±{drift.BAND:.0%} of predicted" in console.export_text()


def test_speed_change_warns_only_beyond_the_threshold():
    assert speed_change([1.0, 2.0], [1.05, 2.1])[1] is None
    factor, warning = speed_change([1.0, 2.0, 3.0], [1.3, 2.6, 3.9])
    assert factor == pytest.approx(1.3) and "30% slower" in warning


def test_interleave_spreads_probes():
    assert _interleave(list("abcdef"), [1, 2, 3]) == [1, "a", "b", 2, "c", "d", 3, "e", "f"]
    assert _interleave(list("ab"), [1, 2, 3]) == [1, "a", 2, "b", 3]
    assert _interleave(list("ab"), []) == ["a", "b"]


def test_budget_uses_raw_and_agreement_is_also_given_corrected():
    plan = SimpleNamespace(backend="onnxruntime", informative=False, protocol=QUICK, budget_ms=3.0)
    entry = {"checks": [], "reasons": [], "measured": {"onnxruntime": {"median_ms": 3.3, "cv": 0.01}},
             "predicted": {"latency_ms": 2.0}}
    _judge(entry, plan, [], drift_factor=1.5)
    assert entry["status"] == "over_budget"  # 3.3 ms > 3 ms, whatever the drift
    assert entry["within_10pct"] is False and entry["within_10pct_corrected"] is True
    assert entry["measured_over_predicted"]["drift_corrected"] == pytest.approx(1.1)
    assert entry["latency_error_pct_corrected"] == pytest.approx(10.0)


def _setup(tmp_path):
    from tests.test_export import make_profile, make_run
    from pomonag_edge.hardware import detect_device

    profile = make_profile(tmp_path / "p.json", detect_device())
    return profile, make_run(tmp_path, str(profile), max_latency_ms=1000.0)


@pytest.mark.slow
def test_export_retimes_calibration_nets_and_reports_both_ratios(tmp_path):
    profile, run = _setup(tmp_path)
    report = export_run(run, ExportOptions(top=2, quick=True, feedback=False, drift_nets=2))
    drift = report["drift"]
    assert len(drift["nets"]) == 2 and all(r["now_ms"] > 0 for r in drift["nets"])
    assert drift["factor"] == pytest.approx(statistics.median(r["now_ms"] / r["then_ms"] for r in drift["nets"]))
    assert len(list((run / "export" / "drift").glob("*.onnx"))) == 2
    for net in report["nets"]:
        ratio = net["measured_over_predicted"]
        assert ratio["drift_corrected"] == pytest.approx(ratio["raw"] / drift["factor"])
        assert net["within_10pct_corrected"] == (abs(ratio["drift_corrected"] - 1) <= 0.10)
    s = report["summary"]
    assert s["drift_factor"] == drift["factor"] and s["within_10pct_corrected"] is not None
    none = export_run(run, ExportOptions(top=1, quick=True, feedback=False, drift_nets=0, measure=True))
    assert none["drift"] is None and "within_10pct_corrected" not in none["nets"][0]


@pytest.mark.slow
def test_export_over_ssh_measures_there_with_drift(ssh_host, tmp_path):
    host, config = ssh_host
    profile, run = _setup(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(run), "--top", "2", "--quick", "--no-feedback", "--host", host,
                                      "--ssh-config", config, "--remote-python", sys.executable,
                                      "--remote-dir", str(tmp_path / "remote"), "--drift-nets", "2"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "export" / "report.json").read_text())
    assert report["environment"]["host"] == host and report["settings"]["measured"]
    assert all(n["measured"]["onnxruntime"]["median_ms"] > 0 for n in report["nets"])
    assert len(report["drift"]["nets"]) == 2 and report["drift"]["factor"] > 0
    assert any("device runner" in note for note in report["notes"])
    assert "drift-corrected" in " ".join(result.output.split())
    assert list((tmp_path / "remote").glob("*/models/*.onnx"))  # the graphs went to the host's work folder


@pytest.mark.slow
def test_export_over_ssh_with_trtexec_brings_engines_back(ssh_host, tmp_path):
    """Plumbing only, with the STAND-IN trtexec script of test_runner on the host's PATH (there is no
    TensorRT here): the runtime is trtexec, engines come back beside the ONNX files, the report says so."""
    from tests.test_export import make_profile, make_run
    from tests.test_runner import DATA, STAND_IN
    from pomonag_edge.hardware import detect_device

    host, config = ssh_host
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "trtexec").write_text(STAND_IN.format(python=sys.executable))
    (bin_dir / "trtexec").chmod(0o755)
    profile = make_profile(tmp_path / "p.json", detect_device())
    p = json.loads(profile.read_text())
    p["runtime"]["backend"], p["runtime"]["precision"] = "trtexec", "fp16"
    profile.write_text(json.dumps(p))
    run = make_run(tmp_path, str(profile))
    python = (f"env PATH={bin_dir}:/usr/bin:/bin STAND_IN_LOG={tmp_path / 'calls.jsonl'} "
              f"STAND_IN_HELP={DATA / 'help_v8502.txt'} {sys.executable}")
    result = CliRunner().invoke(cli, ["export", str(run), "--top", "2", "--quick", "--no-feedback", "--host", host,
                                      "--ssh-config", config, "--remote-python", python,
                                      "--remote-dir", str(tmp_path / "remote"), "--drift-nets", "1"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "export" / "report.json").read_text())
    for net in report["nets"]:
        engine = net["files"]["engine"]
        assert engine["built_on"] == host and engine["precision"] == "fp16"
        assert engine["path"] == net["files"]["onnx"]["path"].replace(".onnx", ".engine")
        assert (run / "export" / engine["path"].split("/")[-1]).is_file()
        assert net["measured"]["trtexec"]["median_ms"] > 0
    assert not list((run / "export").glob("drift*.engine"))  # the probes' engines stay on the device
    calls = (tmp_path / "calls.jsonl").read_text()
    assert "--fp16" in calls and "--useCudaGraph" in calls
