"""``profile --host``: profiles timed by the device runner over SSH to a real sshd on 127.0.0.1 (``conftest``).

Most use the 4-slot toy space of ``test_toy_space`` (8 small graphs: fast to export and time); one profiles
NB201 there and compares its calibration timings with this process's."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from tests import test_toy_space

registered = test_toy_space.registered  # the fixture: the toy space "chain4", registered as a package would


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], terminal_width=300)


def _ssh(config, tmp_path, python=sys.executable):
    return ["--ssh-config", config, "--remote-python", python, "--remote-dir", tmp_path / "remote"]


@pytest.mark.slow
def test_profile_over_ssh_is_timed_there(registered, ssh_host, tmp_path):
    host, config = ssh_host
    out = tmp_path / "p.json"
    result = _cli("profile", "--device", "cpu", "--space", "chain4", "--quick", "--calibration", "4", "--host", host,
                  *_ssh(config, tmp_path), "--out", out)
    assert result.exit_code == 0, result.output
    assert f"measured on {host}" in result.output
    profile = json.loads(out.read_text())
    assert set(profile["lut"]) == {"stem", "head", "conv3", "conv1", "pool"} and len(profile["calibration"]) == 4
    assert profile["runtime"]["timed_by"] == host and profile["device"]["host"] == host
    assert profile["runtime"]["backend"] == "onnxruntime" and profile["runtime"]["onnxruntime"]
    assert profile["device"]["hostname"] and profile["runtime"]["end_check"]["nets"] == 3
    assert not (tmp_path / ".p.graphs").exists()  # the graphs' ONNX files go once the profile is complete
    logs = list((tmp_path / "remote").glob("*/result.json.rounds.jsonl"))
    assert len(logs) == 1 and len(logs[0].read_text().splitlines()) >= 8 + 4  # LUT graphs and nets, in rounds
    again = _cli("profile", "--device", "cpu", "--space", "chain4", "--quick", "--calibration", "4", "--host", host,
                 *_ssh(config, tmp_path), "--out", out)
    assert again.exit_code == 0 and "kept as it is" in again.output  # a finished profile is never rewritten


@pytest.mark.slow
def test_no_lut_profile_over_ssh_is_whole_nets_timed_there(registered, ssh_host, tmp_path):
    host, config = ssh_host
    out = tmp_path / "p.json"
    result = _cli("profile", "--device", "cpu", "--space", "chain4", "--quick", "--no-lut", "--calibration", "5",
                  "--host", host, *_ssh(config, tmp_path), "--out", out)
    assert result.exit_code == 0, result.output
    profile = json.loads(out.read_text())
    assert profile["lut"] == {} and profile["runtime"]["lut"] is False and len(profile["calibration"]) == 5
    assert profile["runtime"]["timed_by"] == host and profile["latency_model"] is not None


def test_profile_host_without_python_runtime_or_route_is_one_line(ssh_host, tmp_path):
    host, config = ssh_host
    cases = [(host, "/nonexistent/python3", "has no /nonexistent/python3"),
             ("nobody@127.0.0.1:1", sys.executable, "cannot reach nobody@127.0.0.1:1")]
    if Path("/usr/bin/python3").exists():
        cases.append((host, "/usr/bin/python3", "onnxruntime is not installed"))
    for target, python, words in cases:
        result = _cli("profile", "--device", "cpu", "--quick", "--host", target, *_ssh(config, tmp_path, python),
                      "--out", tmp_path / "p.json")
        assert result.exit_code == 2 and words in result.output, result.output
        assert result.output.strip().count("\n") == 0 and not (tmp_path / "p.json").exists()
    result = _cli("profile", "--device", "cpu", "--host", host, "--host", host, "--out", tmp_path / "p.json")
    assert result.exit_code == 2 and "{host}" in result.output


@pytest.mark.slow
def test_profile_cut_mid_run_resumes_without_retiming(registered, sshd, ssh_host, tmp_path):
    host, config = ssh_host
    out = tmp_path / "p.json"
    args = ["profile", "--device", "cpu", "--space", "chain4", "--quick", "--calibration", "3", "--host", host,
            *_ssh(config, tmp_path), "--out", out]
    remote = tmp_path / "remote"

    def four_rounds_logged():
        logs = list(remote.glob("*/result.json.rounds.jsonl"))
        return bool(logs) and len(logs[0].read_text().splitlines()) >= 4

    cutter = sshd.cut_when(four_rounds_logged, timeout_s=120, poll_s=0.02)
    result = _cli(*args)
    cutter.join()
    assert result.exit_code == 2 and "lost the connection" in result.output, result.output
    assert "run the same command again to continue" in result.output
    log = next(remote.glob("*/result.json.rounds.jsonl"))
    time.sleep(1.5)  # the orphaned runner stops at its next line (its reader is gone)
    kept = log.read_text().splitlines()
    assert 4 <= len(kept) < 16
    assert (tmp_path / ".p.graphs").is_dir()  # exported graphs are kept for the re-run

    result = _cli(*args)
    assert result.exit_code == 0, result.output
    after = log.read_text().splitlines()
    assert after[:len(kept)] == kept  # finished rounds were reused, not timed again
    first = {(json.loads(line)["sha256"], json.loads(line)["round"]) for line in kept}
    assert not first & {(json.loads(line)["sha256"], json.loads(line)["round"]) for line in after[len(kept):]
                        if json.loads(line).get("key") == json.loads(kept[0])["key"]}
    assert len(json.loads(out.read_text())["calibration"]) == 3


@pytest.mark.slow
def test_two_hosts_are_profiled_at_once_one_profile_each(registered, sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("".join(
        f"Host {alias}\n  HostName 127.0.0.1\n  Port {sshd.port}\n  IdentityFile {sshd.key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {sshd.known_hosts}\n  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n"
        for alias in ("board-a", "board-b")))
    result = _cli("profile", "--device", "cpu", "--space", "chain4", "--quick", "--calibration", "3",
                  "--host", f"{sshd.user}@board-a", "--host", f"{sshd.user}@board-b", *_ssh(str(config), tmp_path),
                  "--out", tmp_path / "{host}.json")
    assert result.exit_code == 0, result.output
    for alias in ("board-a", "board-b"):
        profile = json.loads((tmp_path / f"{alias}.json").read_text())
        assert profile["device"]["host"] == f"{sshd.user}@{alias}" and len(profile["calibration"]) == 3
    assert len(list((tmp_path / "remote").glob("*/result.json"))) == 2  # one work folder per profile


@pytest.mark.slow
def test_nb201_profile_over_ssh_ranks_nets_like_this_process(ssh_host, tmp_path):
    """Both sides count the timing thread's CPU time (--clock cpu): on this shared 2-core machine wall-clock
    timings of the same net differ by up to 2x within minutes, which no ranking test survives."""
    from scipy.stats import spearmanr

    from pomonag_edge.hardware import QUICK, get_backend
    from pomonag_edge.spaces import get_space

    host, config = ssh_host
    out = tmp_path / "remote.json"
    result = _cli("profile", "--device", "cpu", "--space", "nb201", "--quick", "--calibration", "6", "--clock", "cpu",
                  "--host", host, *_ssh(config, tmp_path), "--out", out)
    assert result.exit_code == 0, result.output
    profile = json.loads(out.read_text())
    assert profile["runtime"]["clock"] == "cpu"
    space, backend = get_space("nb201"), get_backend("onnxruntime", clock="cpu")
    there, here = [], []
    for item in profile["calibration"]:
        arch = space.parse(item["arch"])
        x = np.random.default_rng(0).standard_normal(space.input_shape(arch, "cifar10", 1)).astype(np.float32)
        here.append(backend.load(space.build(arch, "cifar10").eval(), {"input": x}).measure(QUICK).median_ms)
        there.append(item["latency_ms"])
    assert spearmanr(here, there)[0] >= 0.9, (here, there)
