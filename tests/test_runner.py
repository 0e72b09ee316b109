"""The device runner (``hardware/runner.py``): stdlib-only on python 3.6, statistics, device state,
trtexec's file formats and flags, onnxruntime timing, interleaved rounds, resuming."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pomonag_edge.hardware import runner as R
from tests.test_hardware import tiny_onnx

RUNNER = Path(R.__file__)
DATA = Path(__file__).parent / "data" / "trtexec"
TINY = {"name": "tiny", "warmup_ms": 0, "warmup_runs": 1, "min_runs": 6, "min_time_s": 0.02, "max_time_s": 1.0,
        "floor_runs": 2, "max_cv": 10.0, "retries": 0, "settle_s": 0.0, "rounds": 2}


def test_runner_is_python36_stdlib_and_imports_nothing_of_the_package():
    source = RUNNER.read_text()
    tree = ast.parse(source, feature_version=(3, 6))  # a walrus, positional-only args... fail here
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module != "__future__", "no relative or __future__ imports"
            modules.add(node.module.split(".")[0])
    assert "dataclasses" not in modules and "pomonag_edge" not in modules
    # onnxruntime / numpy only inside the onnxruntime runtime; the rest is the standard library
    stdlib = set(getattr(sys, "stdlib_module_names", ())) or modules - {"onnxruntime", "numpy"}
    assert modules - {"onnxruntime", "numpy"} <= stdlib
    for api in ("capture_output=", "text=True", "dataclass", "f\"{", "removeprefix"):
        assert api not in source, f"{api} is newer than python 3.6"


def test_the_runners_runtimes_are_the_hosts():
    from pomonag_edge.hardware import devices, remote
    from pomonag_edge.hardware.backends import BACKENDS

    assert remote.RUNTIMES is R.RUNTIMES and devices.RUNNERS == R.RUNTIMES + ("command",)
    assert set(R.BACKEND_RUNTIMES.values()) == set(R.RUNTIMES) and set(R.BACKEND_RUNTIMES) <= set(BACKENDS)
    assert R.BACKEND_RUNTIMES["tensorrt"] == "trtexec"


def test_the_host_protocol_is_the_runners_and_a_hand_run_differs_only_where_named(tmp_path):
    from pomonag_edge.hardware.timing import DEFAULT

    assert DEFAULT.to_dict() == R.PROTOCOL
    assert {k for k in R.PROTOCOL if R.HAND_RUN_PROTOCOL[k] != R.PROTOCOL[k]} == {"min_time_s", "max_time_s", "rounds"}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(DEFAULT.to_dict()))  # what the host sends: every field, so nothing of a hand run
    assert R.load_protocol(str(path)) == R.PROTOCOL


def test_statistics_match_the_host_side_measurement():
    from pomonag_edge.hardware.timing import Measurement

    x = [1.0, 2.5, 2.0, 9.0, 3.0, 3.5, 2.2]
    got = R.statistics_ms(x)
    want = Measurement.from_samples(x).to_dict()
    for key in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "runs"):
        assert got[key] == pytest.approx(want[key]), key


def test_round_budget_splits_runs_and_time_and_caps(tmp_path):
    p = dict(R.HAND_RUN_PROTOCOL, min_runs=100, min_time_s=3.0, max_time_s=30.0, floor_runs=10, rounds=3)
    assert R.round_budget(p) == (34, 1.0, 10.0, 4)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"min_runs": 5, "rounds": 0}))
    with pytest.raises(R.RunnerError):
        R.load_protocol(str(path))


def test_timed_loop_needs_runs_and_time():
    p = dict(R.HAND_RUN_PROTOCOL, warmup_ms=0, warmup_runs=0, min_runs=4, min_time_s=0.03, max_time_s=1, floor_runs=1,
             rounds=1)
    import time

    samples = R.timed_loop(lambda: time.sleep(0.002) or 2.0, p)
    assert len(samples) >= 8  # 4 runs would do by count; 0.03 s needs more


# ----------------------------------------------------------------------------- device state


def _sysfs(root: Path, temps_mc, cpu_min_max=("1000", "2000")):
    for i, (kind, t) in enumerate(temps_mc):
        zone = root / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{t}\n")
    cpu = root / "sys/devices/system/cpu/cpu0/cpufreq"
    cpu.mkdir(parents=True)
    for f, v in (("scaling_cur_freq", "1500"), ("scaling_min_freq", cpu_min_max[0]),
                 ("scaling_max_freq", cpu_min_max[1]), ("scaling_governor", "schedutil")):
        (cpu / f).write_text(v + "\n")
    gpu = root / "sys/class/devfreq/17000000.ga10b"
    gpu.mkdir(parents=True)
    for f, v in (("cur_freq", "918000000"), ("min_freq", "306000000"), ("max_freq", "918000000")):
        (gpu / f).write_text(v + "\n")


def test_device_state_reads_thermal_zones_and_clocks(tmp_path):
    _sysfs(tmp_path, [("CPU-therm", 45500), ("GPU-therm", 51000)])
    state = R.device_state(str(tmp_path))
    assert state["temperatures_c"] == {"CPU-therm": 45.5, "GPU-therm": 51.0}
    assert state["clocks"]["cpu"]["cpu0"]["cur_khz"] == "1500"
    assert state["clocks"]["devfreq"]["17000000.ga10b"]["max_hz"] == "918000000"
    assert state["clocks_locked"] is False
    locked = tmp_path / "locked"
    _sysfs(locked, [], cpu_min_max=("2000", "2000"))
    (locked / "sys/class/devfreq/17000000.ga10b/min_freq").write_text("918000000\n")
    assert R.clocks_locked(R.clocks(str(locked))) is True
    assert R.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (0)"


def test_machine_facts_of_a_jetson(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    facts = R.machine_facts(str(tmp_path))
    assert facts["jetson"] and facts["l4t"] == "35.4.1" and facts["jetson_model"].endswith("Orin Developer Kit")


def test_waits_while_hot_then_goes_on(tmp_path):
    _sysfs(tmp_path, [("GPU-therm", 80000)])
    temp = tmp_path / "sys/class/thermal/thermal_zone0/temp"
    readings = iter([76000, 69000])
    slept = []

    def sleep(s):  # the board cools while the runner waits
        slept.append(s)
        temp.write_text(f"{next(readings)}\n")

    waited = R.wait_while_hot(70.0, 60.0, lambda m: None, root=str(tmp_path), poll_s=5.0, sleep=sleep)
    assert waited == 10.0 and len(slept) == 2
    temp.write_text("99000\n")  # never cools: gives up at the timeout
    assert R.wait_while_hot(70.0, 12.0, lambda m: None, root=str(tmp_path), poll_s=5.0, sleep=lambda s: None) == 15.0
    assert R.wait_while_hot(None, 12.0, lambda m: None, root=str(tmp_path)) == 0.0


# ----------------------------------------------------------------------------- trtexec formats and flags


def test_reads_trtexec_export_times():
    compute, latency = R.read_export_times(str(DATA / "times_nodatatransfers.json"))
    assert len(compute) == 10 and compute[0] == 0.512 and max(compute) == 0.620
    assert latency[0] == pytest.approx(0.516)
    stats = R.statistics_ms(compute)
    assert stats["median_ms"] == pytest.approx(np.median(compute))
    compute, latency = R.read_export_times(str(DATA / "times_with_copies.json"))
    assert compute == [1.20, 1.22, 1.19] and latency[0] == pytest.approx(1.27)  # GPU compute excludes the copies


def test_reads_trtexec_export_profile():
    count, layers = R.read_export_profile(str(DATA / "profile.json"))
    assert count == 1012 and [layer["name"] for layer in layers][0] == "/stem/Conv + /stem/Relu"
    assert sum(layer["percentage"] for layer in layers) == pytest.approx(100.0, abs=1e-3)


def test_rejects_what_is_not_a_trtexec_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"computeMs": 1.0}))
    with pytest.raises(ValueError):
        R.read_export_times(str(bad))
    with pytest.raises(ValueError):
        R.read_export_profile(str(bad))


def test_trtexec_version_from_its_banner():
    assert R.parse_trtexec_version((DATA / "help_v8502.txt").read_text()) == "8.5.2"
    assert R.parse_trtexec_version("[TensorRT v100300]") == "10.3.0"
    assert R.parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v7103]") == "7.1.3"
    assert R.parse_trtexec_version((DATA / "help_v7103.txt").read_text()) is None


def _trtexec_with_help(name, precision="fp32"):
    t = R.Trtexec.__new__(R.Trtexec)
    t.path, t.precision, t.layer_profile = "/usr/src/tensorrt/bin/trtexec", precision, False
    t.help = (DATA / name).read_text()
    t.trt_version = R.parse_trtexec_version(t.help)
    return t


def test_trtexec_flags_follow_the_protocol_and_what_trtexec_offers():
    t = _trtexec_with_help("help_v8502.txt", "fp16")
    p = dict(R.HAND_RUN_PROTOCOL, warmup_ms=200, min_runs=100, min_time_s=3.0, max_time_s=30.0, rounds=3)
    args = t.time_args("e.engine", p, "t.json")
    assert {"--loadEngine=e.engine", "--warmUp=200", "--iterations=34", "--duration=1", "--exportTimes=t.json",
            "--useCudaGraph", "--noDataTransfers", "--useSpinWait", "--avgRuns=1"} <= set(args)
    capped = t.time_args("e.engine", p, "t.json", estimate_ms=500.0)  # 34 runs of 0.5 s exceed the 10 s cap
    assert "--iterations=20" in capped
    build = t.build_args("a.onnx", "a.engine", "/w")
    assert {"--onnx=a.onnx", "--saveEngine=a.engine", "--fp16", "--timingCacheFile=/w/timing.cache",
            "--skipInference"} <= set(build)
    assert "--separateProfileRun" in t.time_args("e", p, "t", profile="p.json")

    old = _trtexec_with_help("help_v7103.txt")
    assert not any(a.startswith("--timingCacheFile") for a in old.build_args("a.onnx", "a.engine", "/w"))
    assert "--iterations=1" in old.build_args("a.onnx", "a.engine", "/w")  # no --skipInference: one short run
    assert "--noDataTransfers" not in old.time_args("e", p, "t") and "--useCudaGraph" in old.time_args("e", p, "t")


# ----------------------------------------------------------------------------- runs


def _models(folder: Path, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w = np.random.default_rng(i).standard_normal((8 * (i + 1), 4)).astype(np.float32)
        (folder / f"m{i}.onnx").write_bytes(tiny_onnx(w))
    return folder


def _run(args, python=sys.executable, **kw):
    return subprocess.run([python, str(RUNNER)] + args, capture_output=True, text=True, timeout=120, **kw)


def test_onnxruntime_run_interleaves_records_state_and_resumes(tmp_path):
    models = _models(tmp_path / "models")
    protocol = tmp_path / "p.json"
    protocol.write_text(json.dumps(TINY))
    out = tmp_path / "w" / "result.json"
    p = _run(["--models", str(models), "--protocol", str(protocol), "--out", str(out)])
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text())
    assert result["schema"] == R.SCHEMA and set(result["results"]) == {"m0.onnx", "m1.onnx", "m2.onnx"}
    assert result["versions"]["onnxruntime"] and "temperatures_c" in result["device_before"]
    for stats in result["results"].values():
        assert stats["runs"] >= TINY["min_runs"] and len(stats["round_medians_ms"]) == 2
    log = (tmp_path / "w" / "result.json.rounds.jsonl").read_text().splitlines()
    order = [(json.loads(line)["file"], json.loads(line)["round"]) for line in log]
    assert order == [(f"m{i}.onnx", 0) for i in range(3)] + [(f"m{i}.onnx", 1) for i in range(3)]  # interleaved
    progress = [json.loads(line.split(" ", 1)[1]) for line in p.stdout.splitlines() if line.startswith("@progress ")]
    assert progress[-1] == {"kind": "done", "done": 6, "total": 6}

    # cut off after 4 rounds (and a torn line): the re-run times only the 2 missing rounds
    (tmp_path / "w" / "result.json.rounds.jsonl").write_text("\n".join(log[:4]) + "\n{\"key\": \"torn")
    out.unlink()
    p = _run(["--models", str(models), "--protocol", str(protocol), "--out", str(out)])
    assert p.returncode == 0, p.stderr
    again = json.loads(out.read_text())
    assert again["resumed_rounds"] == 4
    new_log = (tmp_path / "w" / "result.json.rounds.jsonl").read_text().splitlines()
    assert new_log[:4] == log[:4] and len([line for line in new_log if line.startswith("{\"")]) == 6
    assert again["results"]["m0.onnx"]["round_medians_ms"] == result["results"]["m0.onnx"]["round_medians_ms"]

    # other settings (2 threads) do not reuse those rounds
    p = _run(["--models", str(models), "--protocol", str(protocol), "--out", str(out), "--threads", "2"])
    assert p.returncode == 0 and json.loads(out.read_text())["resumed_rounds"] == 0


def test_a_python_without_onnxruntime_gets_one_line_and_exit_3(tmp_path):
    bare = Path("/usr/bin/python3")
    if not bare.exists() or subprocess.run([str(bare), "-c", "import onnxruntime"],
                                           capture_output=True).returncode == 0:
        pytest.skip("needs a system python3 without onnxruntime")
    p = _run(["--check"], python=str(bare))
    assert p.returncode == R.EXIT_NO_RUNTIME
    assert len(p.stderr.strip().splitlines()) == 1 and "onnxruntime is not installed" in p.stderr
    p = _run(["--check", "--runtime", "trtexec", "--trtexec", str(tmp_path / "nope")], python=str(bare))
    assert p.returncode == R.EXIT_NO_RUNTIME and "no trtexec here" in p.stderr


STAND_IN = '''#!{python}
"""STAND-IN for NVIDIA trtexec, for plumbing tests only (no TensorRT here): it parses the flags the runner
passes, writes an "engine" file and an --exportTimes file in trtexec's documented format, and logs each call."""
import json, os, sys
args = dict(a[2:].split("=", 1) if "=" in a else (a[2:], True) for a in sys.argv[1:])
with open(os.environ["STAND_IN_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "help" in args:
    print(open(os.environ["STAND_IN_HELP"]).read())
    sys.exit(0)
if "saveEngine" in args:
    size = os.path.getsize(args["onnx"])
    open(args["saveEngine"], "w").write(json.dumps({{"ms": size / 1000.0}}))
    sys.exit(0)
ms = json.load(open(args["loadEngine"]))["ms"]
n = int(args["iterations"])
json.dump([{{"startInMs": i, "endInMs": i, "startComputeMs": i, "endComputeMs": i + ms, "startOutMs": i + ms,
            "endOutMs": i + ms, "inMs": 0.0, "computeMs": ms * (1 + 0.01 * (i % 3)), "outMs": 0.0,
            "latencyMs": ms, "endToEndMs": ms}} for i in range(n)], open(args["exportTimes"], "w"))
'''


def test_trtexec_plumbing_with_a_stand_in_trtexec(tmp_path):
    """A STAND-IN trtexec script (not a backend): checks the runner builds each engine once, then times the
    engines in interleaved rounds with the protocol's flags, and reads the times back."""
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text(STAND_IN.format(python=sys.executable))
    fake.chmod(0o755)
    env = dict(os.environ, STAND_IN_LOG=str(tmp_path / "calls.jsonl"), STAND_IN_HELP=str(DATA / "help_v8502.txt"),
               PATH=f"{fake.parent}:{os.environ['PATH']}")
    models = _models(tmp_path / "models", n=2)
    protocol = tmp_path / "p.json"
    protocol.write_text(json.dumps(TINY))
    out = tmp_path / "w" / "result.json"
    p = _run(["--models", str(models), "--protocol", str(protocol), "--out", str(out), "--runtime", "trtexec",
              "--precision", "fp16"], env=env)
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text())
    assert result["versions"]["tensorrt"] == "8.5.2" and not result["errors"]
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    kinds = [("help" if "--help" in c else "build" if any(a.startswith("--saveEngine") for a in c) else "time",
              next((Path(a.split("=", 1)[1]).stem for a in c if a.startswith(("--onnx=", "--loadEngine="))), None))
             for c in calls]
    assert kinds == [("help", None), ("build", "m0"), ("time", "m0"), ("build", "m1"), ("time", "m1"),
                     ("time", "m0"), ("time", "m1")]
    build = calls[1]
    assert "--fp16" in build and any(a.startswith("--timingCacheFile=") for a in build)
    assert {"--useCudaGraph", "--noDataTransfers"} <= set(calls[2])
    sizes = {n: (models / n).stat().st_size / 1000.0 for n in ("m0.onnx", "m1.onnx")}
    for name, stats in result["results"].items():
        assert stats["median_ms"] == pytest.approx(sizes[name] * 1.01)
        assert (out.parent / stats["engine"]).is_file()


def test_local_detection_records_the_same_device_state():
    from pomonag_edge.hardware.devices import detect_device

    state = detect_device()["state"]
    assert {"temperatures_c", "clocks", "clocks_locked", "time"} <= set(state)
