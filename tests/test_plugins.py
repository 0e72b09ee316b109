"""A device that is a command and a trainer that is a command: small scripts written here stand in for a
vendor toolchain and a user's training pipeline. Each script appends its argument to a calls file, so a test
can count what was timed or trained, and reads a mode file, so it can fail, print garbage or hang on cue."""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from pomonag_edge.errors import UserError

DEVICE = '''
import os, sys, time
from pathlib import Path
onnx, arch, calls = sys.argv[1], sys.argv[2], Path(sys.argv[3])
mode = (calls.parent / "mode").read_text().split() if (calls.parent / "mode").exists() else ["ok"]
n = len(calls.read_text().splitlines()) if calls.exists() else 0
with calls.open("a") as f:
    f.write((arch or "op") + "\\n")
if mode[0] == "fail-after" and n >= int(mode[1]):
    print("compiling...", file=sys.stderr); print("boom: no such accelerator", file=sys.stderr); sys.exit(3)
if mode[0] == "garbage":
    print("latency: fast"); sys.exit(0)
if mode[0] == "hang":
    time.sleep(60)
print("compiled", Path(onnx).name)
print(0.5 + os.path.getsize(onnx) / 1e5)  # a latency that grows with the net: the model can fit it
'''

TRAINER = '''
import hashlib, sys, time
from pathlib import Path
arch, work, calls = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
mode = (calls.parent / "tmode").read_text().split() if (calls.parent / "tmode").exists() else ["percent"]
n = len(calls.read_text().splitlines()) if calls.exists() else 0
with calls.open("a") as f:
    f.write(arch + "\\n")
assert (work / "arch.txt").read_text().strip() == arch and (work / "state_dict.pt").is_file()
h = int(hashlib.sha256(arch.encode()).hexdigest(), 16) % 4000 / 100
if mode[0] == "fail":
    print("CUDA out of memory", file=sys.stderr); sys.exit(1)
if mode[0] == "garbage":
    print("accuracy=high"); sys.exit(0)
if mode[0] == "hang":
    time.sleep(60)
if mode[0] == "fraction" or (mode[0] == "mixed" and n % 2):
    print((50 + h) / 100)
else:
    print(50 + h)
'''


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_exit_2(r, *words):
    """Exit 2 with one error line, the last (a progress bar drawn before it may stand above it)."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert "Traceback" not in r.stderr and errors == lines[-1:], r.stderr
    for w in words:
        assert w in lines[-1], lines[-1]
    return lines[-1]


def calls(folder: Path) -> list[str]:
    path = folder / "calls"
    return path.read_text().splitlines() if path.exists() else []


def descriptor(folder: Path, name="dev", extra="") -> Path:
    (folder / "device.py").write_text(DEVICE)
    path = folder / f"{name}.toml"
    path.write_text(f'description = "a script"\nrunner = "command"\n'
                    f'command = "{sys.executable} {folder / "device.py"} {{onnx}} {{arch}} {folder / "calls"}"\n'
                    + extra)
    return path


def test_command_device_profile_no_lut_resumes_after_a_failure(tmp_path):
    toml = descriptor(tmp_path)
    (tmp_path / "mode").write_text("fail-after 3")
    out = tmp_path / "p.json"
    r = invoke("profile", "--device", toml, "--calibration", 6, "--out", out)
    line = one_line_exit_2(r, "device dev", "exited with status 3: boom: no such accelerator", "last-failure.log")
    assert "net |" in line
    assert len(calls(tmp_path)) == 4  # 3 timed, the 4th failed
    assert json.loads(out.read_text())["partial"]

    (tmp_path / "mode").write_text("ok")
    r = invoke("profile", "--device", toml, "--calibration", 6, "--out", out)
    assert r.exit_code == 0, r.output
    assert "times whole nets only" in r.stderr
    timed = calls(tmp_path)
    assert len(timed) == 4 + 3 + 3  # the failed net and the 2 after it, then 3 nets of the end check
    assert timed[3] == timed[4] and len(set(timed[:4])) == 4  # resumed at the net that failed, none timed twice
    profile = json.loads(out.read_text())
    assert not profile.get("partial") and profile["lut"] == {} and profile["runtime"]["lut"] is False
    assert profile["runtime"]["backend"] == "command" and profile["device"]["command"].endswith("calls")
    assert len(profile["calibration"]) == 6 and all(c["calls"] == 1 for c in profile["calibration"])
    assert profile["latency_model"] is not None
    assert not (tmp_path / ".p.graphs").exists()  # the ONNX files and timings log go once the profile is done


def test_command_device_errors_are_one_line(tmp_path):
    toml = descriptor(tmp_path, extra="timeout_s = 1\n")
    (tmp_path / "mode").write_text("garbage")
    one_line_exit_2(invoke("profile", "--device", toml, "--calibration", 5, "--out", tmp_path / "p.json"),
                    "printed 'latency: fast' as its last line, not a number")
    (tmp_path / "mode").write_text("hang")
    one_line_exit_2(invoke("profile", "--device", toml, "--calibration", 5, "--out", tmp_path / "p.json"),
                    "timed out after 1 s (timeout_s of the descriptor)")
    one_line_exit_2(invoke("profile", "--device", toml, "--host", "me@board", "--out", tmp_path / "p.json"),
                    "is a command", "drop --host")
    bad = tmp_path / "bad.toml"
    for body, words in [('runner = "command"\n', ["needs command"]),
                        ('runner = "command"\ncommand = "x {onnx} {model}"\n', ["unknown placeholder {model}"]),
                        ('runner = "command"\ncommand = "x \'{onnx}"\n', ["cannot split"]),
                        ('runner = "command"\ncommand = "x {onnx}"\ncalls = 0\n', ["calls 1 or more"]),
                        ('backends = ["onnxruntime"]\ncommand = "x {onnx}"\n', ['runner = "command"'])]:
        bad.write_text(body)
        one_line_exit_2(invoke("profile", "--device", bad, "--out", tmp_path / "q.json"), *words)
    (tmp_path / "mode").write_text("ok")
    missing = tmp_path / "missing.toml"
    missing.write_text('runner = "command"\ncommand = "/no/such/tool {onnx}"\n')
    one_line_exit_2(invoke("profile", "--device", missing, "--calibration", 5, "--out", tmp_path / "m.json"),
                    "cannot run '/no/such/tool'")


def test_command_device_times_a_lut_when_it_can_time_single_ops(tmp_path):
    from pomonag_edge.hardware.devices import load_descriptor
    from pomonag_edge.hardware.timers import CommandTimer, Graph, make_timer

    import numpy as np
    import torch

    toml = descriptor(tmp_path, extra="single_ops = true\ncalls = 3\n")
    d = load_descriptor(str(toml))
    timer = make_timer("command", None, descriptor=d, space="nb201", cache_dir=tmp_path / "cache")
    assert isinstance(timer, CommandTimer) and timer.facts()["runner"] == "command"
    graphs = {"op/conv": Graph(torch.nn.Conv2d(3, 4, 3).eval(), {"input": np.zeros((1, 3, 8, 8), np.float32)})}
    m = timer.time(graphs)["op/conv"]
    assert m.calls == 3 and m.runs == 3 and m.median_ms > 0.5
    assert calls(tmp_path) == ["op"] * 3  # a graph that is not a whole net gets {arch} = ""
    assert timer.time(graphs)["op/conv"] == m and len(calls(tmp_path)) == 3  # logged: not called again
    assert len(timer.time(graphs, tag="end-check")) == 1 and len(calls(tmp_path)) == 6  # a tag times it again


def test_an_int8_command_device_is_told_int8_and_quantizes_itself(tmp_path):
    toml = descriptor(tmp_path, extra='precision = "int8"\n')
    toml.write_text(toml.read_text().replace("{arch}", "{precision}"))
    r = invoke("profile", "--device", toml, "--calibration", 5, "--out", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    assert set(calls(tmp_path)) == {"int8"}
    runtime = json.loads((tmp_path / "p.json").read_text())["runtime"]
    assert runtime["precision"] == "int8" and runtime["int8"]["scheme"] == "the command's own"


@pytest.mark.slow
def test_command_device_that_times_single_ops_takes_the_lut_through_it(tmp_path):
    toml = descriptor(tmp_path, extra="single_ops = true\n")
    r = invoke("profile", "--device", toml, "--calibration", 5, "--out", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    profile = json.loads((tmp_path / "p.json").read_text())
    assert len(profile["lut"]) == 13 and profile["latency_model"]["kind"] == "lut-scale"
    assert calls(tmp_path).count("op") > 13  # each op graph was given to the command, with {arch} empty


@pytest.fixture(scope="module")
def command_run(tmp_path_factory):
    """A command device's no-LUT profile and a run generated with it."""
    root = tmp_path_factory.mktemp("cmd")
    toml = descriptor(root)
    r = invoke("profile", "--device", toml, "--calibration", 6, "--out", root / "p.json")
    assert r.exit_code == 0, r.output
    r = invoke("generate", "--profile", root / "p.json", "--max-latency", "1000ms", "--strategy", "random",
               "--samples", 32, "--num", 3, "--out", root / "run")
    assert r.exit_code == 0, r.output
    (root / "calls").unlink()
    return root


def test_export_measures_through_the_command_and_resumes(command_run):
    root = command_run
    (root / "mode").write_text("fail-after 2")  # the drift probe and net 1 are timed, net 2 fails
    r = invoke("export", root / "run", "--top", 2, "--drift-nets", 1)
    one_line_exit_2(r, "exited with status 3")
    assert len(calls(root)) == 3 and not (root / "run" / "export").exists()

    (root / "mode").write_text("ok")
    r = invoke("export", root / "run", "--top", 2, "--drift-nets", 1)
    assert r.exit_code == 0, r.output
    assert len(calls(root)) == 4 and calls(root)[3] == calls(root)[2]  # only the net that failed, again
    report = json.loads((root / "run" / "export" / "report.json").read_text())
    assert [n["status"] for n in report["nets"]] == ["passed", "passed"]
    assert all(n["measured"]["command"]["calls"] == 1 for n in report["nets"])
    assert report["drift"]["nets"][0]["now_ms"] > 0 and report["feedback"]["applied"]
    assert not report["environment"]["mismatch"]
    assert not (root / "run" / ".export.command").exists()  # complete: a later --measure times them again


def test_timer_for_profile_is_the_device_the_profile_was_taken_on(command_run):
    from pomonag_edge.hardware.timers import BackendTimer, CommandTimer, timer_for_profile
    from pomonag_edge.profile import Profile, load_profile, reference_profile

    command = load_profile(command_run / "p.json")
    timer = timer_for_profile(command, cache_dir=command_run / "t")
    assert isinstance(timer, CommandTimer) and timer.settings["space"] == "nb201"
    with pytest.raises(UserError, match="drop --host"):
        timer_for_profile(command, host="me@board")
    here = Profile(name="cpu", runtime={"backend": "onnxruntime", "protocol": "quick", "threads": 1})
    assert isinstance(timer_for_profile(here), BackendTimer)
    for elsewhere in (reference_profile("pixel3"), Profile(name="x", runtime={"backend": "measured elsewhere"})):
        with pytest.raises(UserError, match="no device to time on"):
            timer_for_profile(elsewhere)


# ------------------------------------------------------------------ the command trainer

def trainer_cmd(folder: Path) -> str:
    (folder / "train.py").write_text(TRAINER)
    return f"{sys.executable} {folder / 'train.py'} {{arch}} {{workdir}} {folder / 'calls'}"


def test_probe_trainer_writes_csv_and_profile_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = trainer_cmd(tmp_path)
    r = invoke("probe", "--trainer", cmd, "--name", "emg", "--probes", 5, "--num-classes", 6)
    assert r.exit_code == 0, r.output
    assert len(calls(tmp_path)) == 5
    profile = json.loads((tmp_path / "datasets" / "emg.json").read_text())
    assert profile["source"]["kind"] == "trainer command" and profile["source"]["trainer"]["command"] == cmd
    assert profile["source"]["num_classes"] == 6 and profile["scale"] == "percent"
    assert all(m["source"] == "trainer" and 50 <= m["accuracy"] <= 90 for m in profile["measurements"])
    rows = (tmp_path / "datasets" / "emg.csv").read_text().splitlines()
    assert rows[0].startswith("arch,accuracy") and len(rows) == 6
    r = invoke("probe", "--trainer", cmd, "--name", "emg", "--probes", 5, "--num-classes", 6)
    assert r.exit_code == 0 and len(calls(tmp_path)) == 5  # all finished: nothing trained again
    r = invoke("probe", "--trainer", cmd, "--name", "emg", "--probes", 6, "--num-classes", 6)
    assert r.exit_code == 0 and len(calls(tmp_path)) == 6  # one more probe: only it is trained
    # calibrate reads the same CSV into the same accuracies
    r = invoke("calibrate", "--measurements", tmp_path / "datasets" / "emg.csv", "--name", "again")
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "datasets" / "again.json").read_text())
    assert sorted(m["accuracy"] for m in again["measurements"]) == \
        sorted(m["accuracy"] for m in json.loads((tmp_path / "datasets" / "emg.json").read_text())["measurements"])


def test_probe_trainer_fractions_and_mixed_scales(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = trainer_cmd(tmp_path)
    (tmp_path / "tmode").write_text("fraction")
    r = invoke("probe", "--trainer", cmd, "--name", "frac", "--probes", 5)
    assert r.exit_code == 0, r.output
    profile = json.loads((tmp_path / "datasets" / "frac.json").read_text())
    assert profile["scale"] == "fraction" and all(m["accuracy"] > 1 for m in profile["measurements"])

    (tmp_path / "calls").unlink()
    (tmp_path / "tmode").write_text("mixed")  # percent, fraction, percent, ...
    r = invoke("probe", "--trainer", cmd, "--name", "mix", "--probes", 5)
    one_line_exit_2(r, "mixes scales", "--accuracy-scale percent")
    assert len(calls(tmp_path)) == 2
    r = invoke("probe", "--trainer", cmd, "--name", "mix", "--probes", 5, "--accuracy-scale", "fraction")
    one_line_exit_2(r, "accuracy must be a fraction (0..1)")  # the logged percent is no fraction: nothing retrained
    assert len(calls(tmp_path)) == 2
    r = invoke("probe", "--trainer", cmd, "--name", "mix", "--probes", 5, "--accuracy-scale", "percent")
    assert r.exit_code == 0, r.output
    assert len(calls(tmp_path)) == 5  # the two finished nets were not trained again
    assert json.loads((tmp_path / "datasets" / "mix.json").read_text())["scale"] == "percent"


def test_probe_trainer_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = trainer_cmd(tmp_path)
    (tmp_path / "tmode").write_text("fail")
    one_line_exit_2(invoke("probe", "--trainer", cmd, "--name", "t", "--probes", 5),
                    "--trainer, net |", "exited with status 1: CUDA out of memory")
    (tmp_path / "tmode").write_text("garbage")
    one_line_exit_2(invoke("probe", "--trainer", cmd, "--name", "t", "--probes", 5), "'accuracy=high'")
    (tmp_path / "tmode").write_text("hang")
    one_line_exit_2(invoke("probe", "--trainer", cmd, "--name", "t", "--probes", 5, "--trainer-timeout", 1),
                    "timed out after 1 s (--trainer-timeout)")
    assert (tmp_path / "datasets" / "t.probe" / "last-failure.log").is_file()
    one_line_exit_2(invoke("probe", "--trainer", cmd, "--probes", 5), "--trainer needs --name")
    one_line_exit_2(invoke("probe", "--trainer", cmd, "--data", tmp_path, "--name", "t"), "give exactly one")
    one_line_exit_2(invoke("probe", "--name", "t"), "give exactly one")
    one_line_exit_2(invoke("probe", "--trainer", "train {model}", "--name", "t"), "unknown placeholder {model}")


def test_trainer_api_logs_and_resumes(tmp_path):
    from pomonag_edge.spaces import get_space
    from pomonag_edge.trainers import CommandTrainer, make_trainer

    space = get_space("nb201")
    arch = space.sample(1, seed=1)[0]
    t = make_trainer(space, command=trainer_cmd(tmp_path) + " {onnx}", epochs=3, seed=0, workdir=tmp_path / "w")
    assert isinstance(t, CommandTrainer)
    acc = t.measure(arch)
    assert 50 <= acc <= 90 and t.record(arch)["printed"] == acc and t.scale == "percent"
    assert (tmp_path / "w" / "nets").is_dir() and any((tmp_path / "w" / "nets").glob("*/net.onnx"))
    again = make_trainer(space, command=trainer_cmd(tmp_path) + " {onnx}", epochs=3, seed=0, workdir=tmp_path / "w")
    assert again.measure(arch) == acc and len(calls(tmp_path)) == 1  # another caller, the same log: not retrained
    with pytest.raises(UserError, match="exactly one"):
        make_trainer(space, epochs=3, seed=0, workdir=tmp_path / "w")


def test_a_timed_out_command_is_killed_with_its_children(tmp_path):
    import time

    from pomonag_edge.external import run_for_number

    pidfile = tmp_path / "child"
    t0 = time.monotonic()
    with pytest.raises(UserError, match="timed out after 1 s"):
        run_for_number(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout_s=1, what="x", item="y")
    assert time.monotonic() - t0 < 10
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # the grandchild went too (at most a zombie)


def test_results_log_skips_a_line_cut_short_and_appends(tmp_path):
    from pomonag_edge.external import ResultLog

    path = tmp_path / "log.jsonl"
    path.write_text('{"key": "a", "latency_ms": 1.5}\n{"key": "b", "lat')  # a crash in the middle of a line
    log = ResultLog(path)
    assert log.get("a")["latency_ms"] == 1.5 and log.get("b") is None
    log.add("b", {"latency_ms": 2.0})
    assert ResultLog(path).get("b")["latency_ms"] == 2.0 and ResultLog(path).get("a") is not None
