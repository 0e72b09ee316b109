"""Nothing lost, nothing silently wrong (issue 25): each case a new user hit, as a test.

Data lost: shipped checkpoints overwritten, concurrent runs into one folder, a finished profile rewritten,
writability found out after the training, an interrupted export's hidden folder. Silently wrong: 16-bit images
clipped, mixed accuracy scales, a degenerate latency fit, a run trained on another task, probes at chance,
TensorRT asked for and not built, numeric options out of range, untrained nets exported without a word.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from pomonag_edge.hardware import detect_device
from test_export import make_profile, make_run

PACKAGE = Path(__file__).resolve().parent.parent / "pomonag_edge"


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def one_line_error(result, *words):
    """Exit status 2, one line on stderr starting 'Error:', naming each of ``words``; no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def facts():
    return detect_device()


# ------------------------------------------------------------------ 1, 4: shipped data and writability


def test_pretrain_never_writes_the_installed_package(tmp_path, monkeypatch):
    shipped = PACKAGE / "data" / "checkpoints" / "accuracy_nb201.pt"
    before = shipped.read_bytes()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(PACKAGE / "data")
    for out in (shipped, "link/checkpoints/accuracy_nb201.pt", PACKAGE / "new.pt"):
        one_line_error(invoke("pretrain", "accuracy", "--steps", "1", "--out", out), "installed pomonag-edge package")
    one_line_error(invoke("pretrain", "generator", "--steps", "1", "--out", PACKAGE / "data" / "checkpoints" / "g"),
                   "read-only to the tool")
    assert shipped.read_bytes() == before and not (PACKAGE / "new.pt").exists()


def test_pretrain_writes_a_user_path_by_default_and_compares_with_the_shipped_one(tmp_path, monkeypatch):
    shipped = PACKAGE / "data" / "checkpoints" / "accuracy_nb201.pt"
    before = shipped.read_bytes()
    monkeypatch.chdir(tmp_path)
    r = invoke("pretrain", "accuracy", "--steps", "1")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "checkpoints" / "accuracy_nb201.pt").is_file()
    assert "the shipped accuracy_nb201.pt is" in r.output and shipped.read_bytes() == before


def test_pretrain_and_train_check_writability_before_training(tmp_path, monkeypatch):
    calls = []
    import pomonag_edge.generator.train as gtrain

    monkeypatch.setattr(gtrain, "train_score_model", lambda *a, **k: calls.append(1))
    one_line_error(invoke("pretrain", "generator", "--steps", "1", "--out", "/proc/x"), "/proc/x")
    assert calls == []

    # a run folder that cannot be written: refused before any net is trained
    import pomonag_edge.training as training

    monkeypatch.setattr(training, "train_net", lambda *a, **k: calls.append(1))
    run = make_run(tmp_path, str(make_profile(tmp_path / "p.json", {})))
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(3):
            _png(data / c / f"{i}.png", np.full((8, 8), 40 * i, np.uint8))
    (run / "train").write_text("a file where the training folder goes")
    one_line_error(invoke("train", run, "--data", data, "--epochs", "1"), "cannot write training folder")
    (run / "train").unlink()
    os.chmod(run, 0o555)
    try:
        if not os.access(run, os.W_OK):  # root writes read-only folders: only the case above applies then
            one_line_error(invoke("train", run, "--data", data, "--epochs", "1"), "cannot write training folder")
    finally:
        os.chmod(run, 0o755)
    assert calls == []


def _png(path, array, mode=None):
    from PIL import Image

    Image.fromarray(array, mode=mode).save(path)


# ------------------------------------------------------------------ 8, 9: calibrate


def _csv(path, column, values):
    from pomonag_edge.spaces import get_space

    archs = [str(a) for a in get_space("nb201").sample(len(values), seed=7)]
    path.write_text(f"arch,{column}\n" + "".join(f"{a},{v}\n" for a, v in zip(archs, values)))
    return path


def test_calibrate_refuses_mixed_accuracy_scales(tmp_path):
    csv = _csv(tmp_path / "acc.csv", "accuracy", [0.5, 0.6, 70, 0.7, 80, 0.9])
    one_line_error(invoke("calibrate", "--measurements", csv, "--name", "t", "--out", tmp_path / "d.json"),
                   "mixes scales", "0.5 (line 2)", "70 (line 4)")
    assert not (tmp_path / "d.json").exists()


def test_accuracy_scale_reads_one_scale_and_a_declared_one():
    from pomonag_edge.errors import UserError
    from pomonag_edge.calibration import accuracy_scale

    assert accuracy_scale([0.5, 0.9, 1.0, 0.0]) == "fraction"
    assert accuracy_scale([0.0, 1.0, 55.5, 93.1]) == "percent"  # 0 and 1 fit either scale
    with pytest.raises(UserError, match="mixes scales"):
        accuracy_scale([0.8333, 60.2, 71.0])
    # nets at chance on 120 classes (0.83%) beside trained ones: the user says which scale they mean
    assert accuracy_scale([0.8333, 60.2, 71.0], declared="percent") == "percent"
    with pytest.raises(UserError, match="fraction"):
        accuracy_scale([0.5, 60.2], declared="fraction")


def test_calibrate_declared_percent_takes_nets_below_one_percent(tmp_path):
    csv = _csv(tmp_path / "acc.csv", "accuracy", [0.8333, 30.5, 41.2, 45.0, 52.3, 60.1])
    r = invoke("calibrate", "--measurements", csv, "--name", "t", "--out", tmp_path / "d.json",
               "--accuracy-scale", "percent")
    assert r.exit_code == 0, r.output
    profile = json.loads((tmp_path / "d.json").read_text())
    assert profile["scale"] == "percent" and min(m["accuracy"] for m in profile["measurements"]) == 0.8333


def test_calibrate_says_identical_latencies_cannot_be_fitted(tmp_path):
    csv = _csv(tmp_path / "lat.csv", "latency_ms", [2.5] * 6)
    r = invoke("calibrate", "--measurements", csv, "--name", "dev", "--out", tmp_path / "p.json")
    one_line_error(r, "same latency_ms (2.5)", "cannot tell nets apart")
    assert "0.0%" not in r.output and not (tmp_path / "p.json").exists()


# ------------------------------------------------------------------ 12, 14: export


def test_export_tensorrt_without_a_gpu_is_refused(tmp_path, facts):
    from importlib.util import find_spec

    if (facts.get("gpu") or facts.get("jetson")) and find_spec("tensorrt") is not None:
        pytest.skip("this machine has an NVIDIA GPU and TensorRT: engines can be built here")
    run = make_run(tmp_path, str(make_profile(tmp_path / "p.json", facts)))
    for fmt in ("tensorrt", "onnx,tensorrt"):
        one_line_error(invoke("export", run, "--top", "1", "--format", fmt, "--quick", "--no-feedback"),
                       "--format tensorrt", "no TensorRT engines")
    assert not (run / "export").exists() and not list(run.glob(".export.*"))


def test_export_says_in_one_line_that_the_nets_are_untrained(tmp_path, facts):
    run = make_run(tmp_path, str(make_profile(tmp_path / "p.json", facts)))
    r = invoke("export", run, "--top", "2", "--no-measure")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if "seeded random weights" in line]
    assert len(lines) == 1 and "not for deployment" in lines[0] and "pomonag-edge train" in lines[0]
    report = json.loads((run / "export" / "report.json").read_text())
    assert any("seeded random weights" in n for n in report["notes"])


# ------------------------------------------------------------------ 13: ranges and options that need another


@pytest.mark.parametrize("args, words", [
    (("pretrain", "accuracy", "--steps", "-5"), ["--steps", "x>=1"]),
    (("pretrain", "latency", "--steps", "0"), ["--steps"]),
    (("pretrain", "generator", "--lr", "-1"), ["--lr"]),
    (("profile", "--max-temp-c", "-1000"), ["--max-temp-c"]),
    (("profile", "--seed", "-1"), ["--seed"]),
    (("generate", "--seed", "-3", "--max-latency", "5ms"), ["--seed"]),
    (("export", "--top", "0"), ["--top"]),
    (("export", "--opset", "9"), ["--opset", "11<=x<=20"]),
    (("train", "--data", "x", "--epochs", "0"), ["--epochs"]),
    (("train", "--data", "x", "--top", "-1"), ["--top"]),
    (("probe", "--data", "x", "--probes", "3"), ["--probes", "x>=5"]),
    (("probe", "--data", "x", "--epochs", "0"), ["--epochs"]),
    (("train", "--data", "x", "--cpus-per-net", "0"), ["--cpus-per-net"]),
    (("probe", "--data", "x", "--gpus-per-net", "-1"), ["--gpus-per-net"]),
    (("train", "--data", "x", "--retries", "-2"), ["--retries"]),
])
def test_numeric_options_out_of_range_are_one_line(args, words):
    one_line_error(invoke(*args), *words)


def test_ranges_are_shown_in_help():
    for args, shown in ((("pretrain", "accuracy"), "x>=1"), (("export",), "11<=x<=20"), (("probe",), "x>=5"),
                        (("profile",), "0<x<=150"), (("train",), "x>=1")):
        r = invoke(*args, "--help")
        assert r.exit_code == 0 and shown in r.output, (args, r.output)


@pytest.mark.parametrize("command", [("profile", "--quick"), ("export",)])
@pytest.mark.parametrize("option", [("--remote-python", "/usr/bin/python3"), ("--remote-dir", "x"),
                                    ("--ssh-config", "cfg")])
def test_ssh_options_without_host_are_refused(command, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*command, *option), f"{option[0]} needs --host")


def test_max_temp_without_the_device_runner_is_refused(tmp_path):
    r = invoke("profile", "--quick", "--max-temp-c", "80", "--out", tmp_path / "p.json")
    one_line_error(r, "--max-temp-c needs --host")
    assert not (tmp_path / "p.json").exists()


def test_remote_python_help_names_options_that_exist():
    import re

    for command in ("profile", "export"):
        r = invoke(command, "--help")
        text = " ".join(r.output.split())
        section = text[text.index("--remote-python"):text.index("--remote-python") + 300]
        assert "--runtime" not in section and "Needs --host" in section
        named = set(re.findall(r"--[a-z][a-z-]+", r.output))
        options = {o for p in cli.get_command(None, command).params for o in getattr(p, "opts", [])}
        assert named <= options | {"--help", "--no-measure", "--no-feedback", "--no-detect"}, named - options


# ------------------------------------------------------------------ 2: one writer per run folder


def _cli(*args, cwd=None):
    return [sys.executable, "-m", "pomonag_edge", *map(str, args)]


GENERATE = ("generate", "--profile", "pixel3", "--strategy", "random", "--samples", "32", "--num", "2",
            "--max-latency", "50ms", "--out", "runs/race")


def test_concurrent_generates_into_one_folder_leave_one_run(tmp_path):
    procs = [subprocess.Popen(_cli(*GENERATE, cwd=tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [(p.wait(timeout=300), p.stdout.read() + p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in outcomes) == [0, 2, 2], outcomes
    for code, text in outcomes:
        if code == 2:  # refused while the first held the folder, or after it wrote its run there
            lines = [line for line in text.splitlines() if line.startswith("Error:")]
            assert len(lines) == 1 and ("being written by another pomonag-edge" in lines[0]
                                        or "already holds a run" in lines[0]), text
    assert json.loads((tmp_path / "runs" / "race" / "pareto.json").read_text())
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["race"]  # no claim, no staging left


def test_a_live_claim_refuses_a_second_generate_and_a_stale_one_is_taken_over(tmp_path):
    from pomonag_edge.files import claim

    with claim(tmp_path / "runs" / "race", "run folder"):  # this process is writing runs/race
        p = subprocess.run(_cli(*GENERATE, cwd=tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, p.stderr
        assert f"being written by another pomonag-edge (pid {os.getpid()}" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs" / "race").exists()

    # a killed generate left its claim and its half-built folder: nobody holds the claim, so it is taken over
    (tmp_path / "runs" / ".race.claim").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "x"}))
    (tmp_path / "runs" / ".race.new-abc123").mkdir()
    (tmp_path / "runs" / ".race.new-abc123" / "pareto.json").write_text("[]")
    p = subprocess.run(_cli(*GENERATE, cwd=tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert sorted(q.name for q in (tmp_path / "runs").iterdir()) == ["race"]


# ------------------------------------------------------------------ 3: a finished profile is never rewritten


class CountingTimer:
    """Times nothing: fixed measurements, counted, so a test sees whether a profile was measured again."""

    where = "this machine"

    def __init__(self):
        self.timed = 0

    def versions(self):
        return {"onnxruntime": "counted"}

    def settle(self, graph):
        pass

    def time(self, graphs, progress=None, tag="", stage="timing"):
        from pomonag_edge.hardware.timing import Measurement

        self.timed += len(graphs)
        return {name: Measurement.from_samples([1.0 + 0.1 * n, 1.1 + 0.1 * n]) for n, name in enumerate(graphs)}


@pytest.fixture
def counting(monkeypatch):
    from pomonag_edge import profiler

    timer = CountingTimer()
    monkeypatch.setattr(profiler, "make_timer", lambda *a, **k: timer)
    return timer


def test_a_finished_profile_is_kept_as_it_is_and_fresh_makes_a_revision(tmp_path, counting):
    from pomonag_edge.profile import load_profile

    out = tmp_path / "cpu.json"
    args = ("profile", "--quick", "--calibration", "2", "--out", out)
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    before, timed = out.read_bytes(), counting.timed

    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "kept as it is" in again.output and "--fresh" in again.output
    assert out.read_bytes() == before and counting.timed == timed  # nothing measured, nothing rewritten

    fresh = invoke(*args, "--fresh")
    assert fresh.exit_code == 0, fresh.output
    revision = load_profile(tmp_path / "cpu.r2.json")
    assert out.read_bytes() == before and counting.timed > timed
    assert not revision.partial and revision.parent["path"] == str(out)
    assert revision.parent["sha256"] == load_profile(out).sha256


def test_an_interrupted_fresh_revision_is_continued(tmp_path, counting):
    from pomonag_edge.profiler import ProfileRequest, build_profile
    from pomonag_edge.profile import load_profile

    out = tmp_path / "cpu.json"
    req = ProfileRequest(device="cpu", quick=True, calibration=2, out=out)
    build_profile(req, fit_model=False)

    def interrupt(stage, done, total, loss=None, detail=None):
        if stage == "calibration" and done >= 1 and detail:
            raise KeyboardInterrupt

    from dataclasses import replace

    with pytest.raises(KeyboardInterrupt):
        build_profile(replace(req, fresh=True), progress=interrupt, fit_model=False)
    assert load_profile(tmp_path / "cpu.r2.json").partial
    result = build_profile(req, fit_model=False)  # the same command without --fresh continues the revision
    assert result.resumed and result.path == tmp_path / "cpu.r2.json" and not load_profile(result.path).partial
    assert not (tmp_path / "cpu.r3.json").exists()


def test_a_finished_profile_of_other_settings_is_refused(tmp_path, counting):
    out = tmp_path / "cpu.json"
    assert invoke("profile", "--quick", "--calibration", "2", "--out", out).exit_code == 0
    before = out.read_bytes()
    one_line_error(invoke("profile", "--quick", "--calibration", "2", "--threads", "2", "--out", out),
                   "finished profile", "threads", "--out another path")
    assert out.read_bytes() == before


# ------------------------------------------------------------------ 5: Ctrl-C during export


def _wait_for(predicate, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _staged_onnx(run):
    return [f for d in run.glob(".export.new-*") for f in d.glob("*.onnx")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_export_leaves_nothing_hidden_and_export_as_it_was(tmp_path, facts, sig):
    from test_export import ARCHS

    run = make_run(tmp_path, str(make_profile(tmp_path / "p.json", facts)), archs=ARCHS * 2)
    first = invoke("export", run, "--top", "1", "--no-measure")
    assert first.exit_code == 0, first.output
    before = (run / "export" / "report.json").read_bytes()

    p = subprocess.Popen(_cli("export", run, "--top", "8", "--no-measure", cwd=tmp_path), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the second file: by then the first net has been checked (onnxruntime loaded), so the signal lands in work
    assert _wait_for(lambda: len(_staged_onnx(run)) >= 2 or p.poll() is not None), "the export never started"
    assert p.poll() is None, p.communicate()
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert p.returncode == 130 and "interrupted" in err, (p.returncode, err)
        assert not list(run.glob(".export.*")), list(run.glob(".export.*"))  # staged folder and claim gone
    else:  # killed: the next export finds the leftovers unclaimed and removes them
        assert list(run.glob(".export.new-*"))
    assert (run / "export" / "report.json").read_bytes() == before

    again = invoke("export", run, "--top", "1", "--no-measure")
    assert again.exit_code == 0, again.output
    assert not list(run.glob(".export.*")) and (run / "export" / "report.json").is_file()


# ------------------------------------------------------------------ 6: 16-bit grayscale images


def test_16_bit_grayscale_pngs_are_scaled_by_their_range_not_clipped(tmp_path):
    from pomonag_edge.userdata import load_user_data

    ramp = np.linspace(0, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)  # 16-bit values, most above 255
    for c, flip in (("a", False), ("b", True)):
        (tmp_path / c).mkdir()
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", (ramp[::-1] if flip else ramp) // (i + 1))
    from PIL import Image

    assert Image.open(tmp_path / "a" / "0.png").mode.startswith("I")
    data = load_user_data(tmp_path, input_hw=32)
    x = np.concatenate([data.x_train, data.x_val])[:, 0]  # normalised: an affine map of the pixels
    assert len(np.unique(x.round(5))) > 1000  # clipped to 8 bits: 30 distinct values
    assert (x >= x.max() - 1e-6).mean() < 0.01  # clipped: 30% at the maximum
    raw = np.asarray(x) * data.source["normalisation"]["std"][0] + data.source["normalisation"]["mean"][0]
    assert 0.85 < raw.max() <= 60000 / 65535 + 1e-3  # the brightest pixel of the brightest image, on 0..1


# ------------------------------------------------------------------ 10 + deployment metadata: train, export


@pytest.fixture
def trained_on_other_task(tmp_path, facts):
    """A run generated for CIFAR-10 (shipped), trained for one epoch on a user's two-class folder."""
    from test_export import ARCHS

    from pomonag_edge.spaces import get_space

    run = make_run(tmp_path, str(make_profile(tmp_path / "p.json", facts)), archs=ARCHS[:2])
    pareto = json.loads((run / "pareto.json").read_text())  # as generate writes it: each net's table index
    nb201 = get_space("nb201")
    (run / "pareto.json").write_text(json.dumps([{**n, "index": nb201.table_index(nb201.parse(n["arch"]))}
                                                 for n in pareto]))
    data = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for c, level in (("circle", 60), ("square", 190)):
        (data / c).mkdir(parents=True)
        for i in range(6):
            _png(data / c / f"{i}.png", np.clip(rng.normal(level, 20, (12, 12, 3)), 0, 255).astype(np.uint8))
    r = invoke("train", run, "--data", data, "--epochs", "1", "--top", "2", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    return run, r


def test_nets_trained_on_another_task_are_labelled_not_compared(trained_on_other_task):
    run, r = trained_on_other_task
    results = json.loads((run / "train" / "results.json").read_text())
    assert results["same_task"] is False and results["predicted_for"] == "cifar10"
    assert all(n["accuracy_predicted_for"] == "cifar10" for n in results["nets"])
    assert "predicted accuracies are for cifar10" in r.stdout and "not shown beside the measured" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if "|" in line]
    assert len(rows) == 2 and all(row[3] == "-" for row in rows)  # no predicted value beside the measured one

    e = invoke("export", run, "--top", "2", "--no-measure")
    assert e.exit_code == 0, e.output
    report = json.loads((run / "export" / "report.json").read_text())
    for net in report["nets"]:
        assert net["weights"] == "trained" and net["accuracy_comparable"] is False
        assert net["predicted"]["accuracy_for"] == "cifar10" and net["accuracy_measured_task"] == "shapes"
    assert any("not compared" in n for n in report["notes"])
    assert not any("seeded random weights" in n for n in report["notes"])


def test_report_and_onnx_metadata_say_how_to_feed_the_net(trained_on_other_task):
    from pomonag_edge.export.onnx_export import read_metadata

    run, _ = trained_on_other_task
    assert invoke("export", run, "--top", "1", "--no-measure").exit_code == 0
    report = json.loads((run / "export" / "report.json").read_text())
    results = json.loads((run / "train" / "results.json").read_text())
    net = report["nets"][0]
    pre = net["preprocessing"]
    assert pre["input_shape"] == [1, 3, 32, 32] and pre["layout"] == "NCHW" and pre["pixel_scale"] == "0..1"
    assert pre["mean"] == results["data"]["normalisation"]["mean"] and len(pre["std"]) == 3
    assert pre["classes"] == ["circle", "square"]
    meta = read_metadata(net["files"]["onnx"]["path"])
    assert {k: meta[k] for k in pre} == pre and meta["arch"] == net["arch"] and meta["weights"] == "trained"


def test_untrained_exports_state_their_input_and_no_normalisation(tmp_path, facts):
    from pomonag_edge.export.onnx_export import read_metadata

    run = make_run(tmp_path, str(make_profile(tmp_path / "p.json", facts)))
    assert invoke("export", run, "--top", "1", "--no-measure", "--dynamic-batch").exit_code == 0
    net = json.loads((run / "export" / "report.json").read_text())["nets"][0]
    meta = read_metadata(net["files"]["onnx"]["path"])
    assert meta["input_shape"] == ["batch", 3, 32, 32] and meta["mean"] is None and meta["classes"] is None
    assert meta["weights"] == "random (seeded)"


# ------------------------------------------------------------------ tables at 80 columns, progress when piped


def test_train_table_fits_80_columns_with_each_nets_index(trained_on_other_task):
    run, r = trained_on_other_task
    table = r.stdout[:r.stdout.index("predicted accuracies")]
    assert max(len(line) for line in table.splitlines()) <= 80
    results = json.loads((run / "train" / "results.json").read_text())
    for n in results["nets"]:
        assert any(line.split()[:2] == [str(n["rank"]), str(n["index"])] for line in table.splitlines())
        assert f"{n['accuracy_measured']:.2f}" in table


def test_training_logs_a_line_per_epoch_when_stderr_is_not_a_terminal(trained_on_other_task):
    _, r = trained_on_other_task
    lines = [line for line in r.stderr.splitlines() if line.startswith("net ")]
    assert [line.split(":")[0] for line in lines] == ["net 1/2", "net 2/2"], r.stderr
    assert all("1/1, loss " in line for line in lines)


def test_devices_tables_fit_80_columns_without_cutting_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("devices", "--no-detect", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    for name in ("onnxruntime-trt,", "desktop-cpu-core-i7-7820x-fp32", "HELP / HW-NAS-Bench", "fp16 b1 t1"):
        assert any(name in line for line in lines), name


def test_progress_lines_off_a_terminal_have_eta_and_loss():
    import io

    from rich.console import Console

    from pomonag_edge.commands._progress import _Lines

    out = io.StringIO()
    lines = _Lines(Console(file=out, width=200))
    for epoch in (1, 2, 3):
        lines("probe 1/5", epoch, 3, 0.5 / epoch)
    text = out.getvalue().splitlines()
    assert len(text) == 3 and text[0].startswith("probe 1/5: 1/3, loss 0.5000")
    assert "eta" in text[1] and "eta" not in text[2]  # the last step has nothing left
    for step in range(1, 1001):  # a long stage of optimizer steps: its last line, not a thousand
        lines("steps", step, 1000, 1.0)
    assert len(out.getvalue().splitlines()) - 3 <= 2


# ------------------------------------------------------------------ 11: probes at chance


def test_chance_check_tells_probes_that_learned_nothing_from_ones_that_learned():
    from pomonag_edge.probe import chance_check

    counts = [36] * 10  # ten balanced classes, 360 validation images: chance 10%
    nothing = chance_check([6.7, 8.1, 9.4, 10.0, 10.3, 11.0, 12.5], counts, 360)
    assert nothing["at_chance"] and nothing["chance_pct"] == 10.0 and 10.0 < nothing["threshold_pct"] < 16.0
    learned = chance_check([9.0, 14.0, 22.0, 31.0, 40.5], counts, 360)
    assert not learned["at_chance"]
    # few validation images: more is luck (15% on 40 images is within chance's noise)
    assert chance_check([7.5, 10.0, 15.0, 12.5, 10.0], [4] * 10, 40)["at_chance"]
    # imbalanced classes: answering the largest class is chance
    assert chance_check([79.0, 80.0, 80.5, 78.0, 81.0], [80, 10, 10], 100)["at_chance"]


@pytest.mark.slow  # ~15 s: five probes trained one epoch on noise
def test_probe_warns_when_the_probes_learned_nothing(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / "noise" / c).mkdir(parents=True)
        for i in range(10):
            _png(tmp_path / "noise" / c / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    r = invoke("probe", "--data", tmp_path / "noise", "--probes", "5", "--epochs", "1", "--out", tmp_path / "n.json")
    assert r.exit_code == 0, r.output
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning: the probes learned nothing")]
    assert len(warning) == 1 and "--epochs 2" in warning[0], r.stderr
    profile = json.loads((tmp_path / "n.json").read_text())
    assert profile["source"]["probe"]["chance"]["at_chance"] is True
