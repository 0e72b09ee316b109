"""Timing through the device runner, locally and over SSH to a real sshd on 127.0.0.1 (``conftest.sshd``)."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pomonag_edge.errors import UserError
from pomonag_edge.hardware.remote import DeviceTimer, Host, RemoteError, SSHOptions, parse_host
from pomonag_edge.hardware.timing import Protocol

TINY = Protocol(name="tiny", warmup_ms=0, warmup_runs=1, min_runs=6, min_time_s=0.02, max_time_s=1.0, floor_runs=2,
                max_cv=10.0, retries=0, settle_s=0.0, rounds=2)


def test_parse_host():
    assert parse_host("me@orin") == Host("me", "orin", None)
    assert parse_host("root@127.0.0.1:2222") == Host("root", "127.0.0.1", 2222)
    assert parse_host("jetson-alias") == Host(None, "jetson-alias", None)
    assert parse_host("me@[fe80::1]:22") == Host("me", "fe80::1", 22)
    assert str(parse_host("root@127.0.0.1:2222")) == "root@127.0.0.1:2222"
    for bad in ("me@", "a b", "me@host:99999", "me@host:port"):
        with pytest.raises(UserError):
            parse_host(bad)


def _graphs(n=3, scale=1):
    from tests.test_runner import tiny_onnx

    return {f"g{i}": tiny_onnx(np.random.default_rng(i).standard_normal((8 * scale * (i + 1), 4)).astype(np.float32))
            for i in range(n)}


def _timer(host, config, tmp_path, **kw):
    options = SSHOptions(config=config, python=kw.pop("python", sys.executable), remote_dir=str(tmp_path / "remote"),
                         connect_timeout_s=5)
    return DeviceTimer(parse_host(host) if host else None, kw.pop("protocol", TINY), options=options,
                       local_dir=tmp_path / "local", **kw)


def test_local_runner_times_named_graphs(tmp_path):
    seen = []
    result = _timer(None, None, tmp_path).time(_graphs(), progress=lambda *report, detail=None: seen.append(
        (*report, detail)))
    assert set(result.measurements) == {"g0", "g1", "g2"} and not result.errors
    assert all(m.runs >= TINY.min_runs and m.median_ms > 0 for m in result.measurements.values())
    assert seen[-1][:3] == ("timing", 6, 6) and {s[3] for s in seen} >= {"g0", "g1", "g2"}


@pytest.mark.slow
def test_ssh_runner_times_the_same_graphs_and_reuses_uploads(ssh_host, tmp_path):
    host, config = ssh_host
    timer = _timer(host, config, tmp_path)
    facts = timer.facts()
    assert facts["onnxruntime"] and facts["python"]
    result = timer.time(_graphs())
    assert set(result.measurements) == {"g0", "g1", "g2"}
    assert result.raw["machine"]["hostname"] and "temperatures_c" in result.raw["device_after"]
    models = list((tmp_path / "remote").glob("*/models/*.onnx"))
    assert len(models) == 3
    again = timer.time(_graphs())  # same graphs, same key: nothing uploaded, every round reused
    assert again.raw["resumed_rounds"] == 6
    assert again.measurements["g1"].median_ms == result.measurements["g1"].median_ms


def test_unreachable_host_is_one_line(tmp_path, ssh_host):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(RemoteError, match="cannot reach"):
        _timer(f"nobody@127.0.0.1:{port}", ssh_host[1], tmp_path).facts()


@pytest.mark.slow
def test_host_without_python_or_runtime_is_one_line(ssh_host, tmp_path):
    host, config = ssh_host
    with pytest.raises(RemoteError, match="has no /nonexistent/python3"):
        _timer(host, config, tmp_path, python="/nonexistent/python3").facts()
    if Path("/usr/bin/python3").exists():
        with pytest.raises(RemoteError, match="onnxruntime is not installed"):
            _timer(host, config, tmp_path, python="/usr/bin/python3").facts()
    with pytest.raises(RemoteError, match="no trtexec"):
        _timer(host, config, tmp_path, runtime="trtexec").facts()


@pytest.mark.slow
def test_connection_cut_mid_run_resumes_without_retiming(sshd, ssh_host, tmp_path):
    host, config = ssh_host
    slow = Protocol(name="slow", warmup_ms=0, warmup_runs=1, min_runs=5, min_time_s=0.4, max_time_s=1.0,
                    floor_runs=2, max_cv=10.0, retries=0, settle_s=0.0, rounds=2)
    timer = _timer(host, config, tmp_path, protocol=slow)
    timer.facts()
    log = next((tmp_path / "remote").glob("*")) / "result.json.rounds.jsonl"

    cutter = sshd.cut_when(lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
    with pytest.raises(RemoteError, match="lost the connection"):
        timer.time(_graphs(4))
    cutter.join()
    before = log.read_text().splitlines()
    assert 2 <= len(before) < 8
    time.sleep(1.5)  # the orphaned runner notices its reader is gone at its next line and stops
    kept = log.read_text().splitlines()
    result = _timer(host, config, tmp_path, protocol=slow).time(_graphs(4))
    assert set(result.measurements) == {"g0", "g1", "g2", "g3"}
    assert result.raw["resumed_rounds"] == len(kept) >= 2
    after = log.read_text().splitlines()
    assert after[:len(kept)] == kept and len(after) == 8  # finished rounds were not timed again


@pytest.mark.slow
def test_nb201_nets_rank_alike_over_ssh_and_here(ssh_host, tmp_path):
    """The same 6 NB201 nets timed in this process and by the runner over SSH: the ranks agree."""
    from scipy.stats import spearmanr

    from pomonag_edge.hardware import QUICK, get_backend, onnx_bytes
    from pomonag_edge.spaces import get_space

    host, config = ssh_host
    space = get_space("nb201")
    archs = [a for a in space.sample(40, seed=5) if space.is_valid(a)][:6]
    x = np.random.default_rng(0).standard_normal(space.input_shape(archs[0], "cifar10", 1)).astype(np.float32)
    graphs = {str(i): onnx_bytes(space.build(a, "cifar10").eval(), {"input": x}) for i, a in enumerate(archs)}
    backend = get_backend("onnxruntime", clock="cpu")  # thread CPU time on both sides: steady on a shared machine
    here = [backend.load(g).measure(QUICK).median_ms for g in graphs.values()]
    there = _timer(host, config, tmp_path, protocol=QUICK, clock="cpu").time(graphs).measurements
    there = [there[k].median_ms for k in graphs]
    assert min(here) > 0 and max(here) / min(here) > 2  # a spread of latencies worth ranking
    assert spearmanr(here, there)[0] >= 0.9, (here, there)


def test_timers_time_torch_graphs_here_and_through_the_runner(tmp_path):
    import torch

    from pomonag_edge.hardware.timers import BackendTimer, Graph, RunnerTimer, make_timer

    graphs = {f"lin{i}": Graph(torch.nn.Linear(16 * (i + 1), 4).eval(), {"input": np.zeros((2, 16 * (i + 1)),
                                                                                          np.float32)})
              for i in range(2)}
    here = make_timer("onnxruntime", TINY)
    assert isinstance(here, BackendTimer) and set(here.time(graphs)) == {"lin0", "lin1"}
    runner = RunnerTimer(_timer(None, None, tmp_path), cache_dir=tmp_path / "onnx")
    timed = runner.time(graphs)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2
    assert set(timed) == {"lin0", "lin1"} and all(m.runs >= TINY.min_runs for m in timed.values())
    assert runner.versions()["onnxruntime"]
    again = runner.time(graphs, tag="recheck")  # a new tag times them again rather than reusing the rounds
    assert again["lin0"].median_ms != timed["lin0"].median_ms or again["lin0"].runs != timed["lin0"].runs
    with pytest.raises(UserError, match="cannot time through the device runner"):
        make_timer("torch-cpu", TINY, host=parse_host("me@board"))


def test_export_to_a_host_without_the_runtime_is_one_line_and_exit_2(ssh_host, tmp_path):
    from click.testing import CliRunner

    from pomonag_edge.cli import cli

    host, config = ssh_host
    if not Path("/usr/bin/python3").exists():
        pytest.skip("needs a system python3 (without onnxruntime) to stand for a bare host")
    from tests.test_export import make_profile, make_run
    from pomonag_edge.hardware import detect_device

    common = ["--host", host, "--ssh-config", config, "--remote-dir", str(tmp_path / "remote")]
    run = make_run(tmp_path, str(make_profile(tmp_path / "p.json", detect_device())))
    for python, words in (("/usr/bin/python3", "onnxruntime is not installed"),
                          ("/nonexistent/python3", "has no /nonexistent/python3")):
        result = CliRunner().invoke(cli, ["export", str(run), "--top", "1", "--quick", *common,
                                          "--remote-python", python], terminal_width=300)
        assert result.exit_code == 2 and words in result.output, result.output
        said, error = result.stderr.strip().splitlines()  # the run's own profile, named; then the one error line
        assert said.startswith(f"profile: {tmp_path / 'p.json'}") and error.startswith("Error: ") and not result.stdout
