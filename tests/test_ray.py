"""``--ray``: probe and train with each net as one Ray task, on a real Ray head this fixture starts on 127.0.0.1.

The head (``fanout.local_head``: 2 CPUs, no dashboard, a small object store, its own temp folder, every address
127.0.0.1) runs in its own session and is stopped by killing that process group, nothing broader; drivers run as
subprocesses, as a user's would. The error paths (no ray package, nothing at the address, bad options) need no
head.
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import _free_port

from pomonag_edge.cli import cli

TASK_TITLE = "ray::_ray_job"  # a Ray worker's process title while it runs a job (fanout._ray_job)


def job_workers(head) -> list[int]:
    """Pids of the head's worker processes that are running a job now."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "-g", str(head.pid)], capture_output=True, text=True)
    return [int(line.split(None, 1)[0]) for line in out.stdout.splitlines()
            if line.split(None, 1)[1:] and line.split(None, 1)[1].startswith(TASK_TITLE)]


@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray")
    from pomonag_edge.fanout import local_head

    try:
        with local_head(num_cpus=2) as head:
            yield head
    except RuntimeError as e:
        if "did not start" not in str(e):
            raise
        pytest.skip(str(e))


def _cli(args, env=None, timeout=600):
    """The installed command in its own process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "pomonag_edge", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _measured(csv_path: Path) -> list[tuple]:
    """The measurement columns of a probe CSV (its seconds say when, not what)."""
    rows = csv.DictReader(io.StringIO(csv_path.read_text()))
    return [(r["arch"], r["accuracy"], r["epochs"], r["seed"], r["data"], r["device"], r["threads"]) for r in rows]


@pytest.mark.slow
def test_probe_and_train_on_ray_match_local(ray_head, digits_folder, tmp_path):
    import torch

    # a Ray task trains with the threads it reserves (1 by default); on a CPU the thread count is part of the
    # numerics (another summation order, amplified by SGD), so the local run is given the same
    base = ["probe", "--data", digits_folder, "--probes", 5, "--epochs", 1, "--cpus-per-net", 1]
    local = _cli([*base, "--out", tmp_path / "local.json"])
    assert local.returncode == 0, local.stderr
    remote = _cli([*base, "--out", tmp_path / "ray.json", "--ray", ray_head.address], env=ray_head.env)
    assert remote.returncode == 0, remote.stderr
    assert _measured(tmp_path / "ray.csv") == _measured(tmp_path / "local.csv")
    assert len(_measured(tmp_path / "ray.csv")) == 5
    assert not (tmp_path / "ray.probe").exists()  # every probe's checkpoint reached the driver and was cleared
    fitted = [json.loads((tmp_path / f"{n}.json").read_text())["measurements"] for n in ("local", "ray")]
    assert fitted[0] == fitted[1]

    # train: two nets of a run; same weights within floating-point noise, checkpoints written on the driver
    archs = [row[0] for row in _measured(tmp_path / "local.csv")[:2]]
    runs = []
    for name in ("run_local", "run_ray"):
        run = tmp_path / name
        run.mkdir()
        (run / "pareto.json").write_text(json.dumps([{"arch": a, "rank": i + 1} for i, a in enumerate(archs)]))
        runs.append(run)
    assert _cli(["train", runs[0], "--data", digits_folder, "--top", 2, "--epochs", 1, "--cpus-per-net", 1]
                ).returncode == 0
    r = _cli(["train", runs[1], "--data", digits_folder, "--top", 2, "--epochs", 1, "--ray", ray_head.address,
              "--ray-data", "shared"], env=ray_head.env)
    assert r.returncode == 0, r.stderr
    results = [json.loads((run / "train" / "results.json").read_text()) for run in runs]
    assert [n["accuracy_measured"] for n in results[0]["nets"]] == [n["accuracy_measured"] for n in results[1]["nets"]]
    for a, b in zip(results[0]["nets"], results[1]["nets"]):
        wa, wb = (torch.load(n["checkpoint"], weights_only=False)["model"] for n in (a, b))
        assert Path(b["checkpoint"]).parent == runs[1] / "train"
        for key in wa:
            assert torch.allclose(wa[key].float(), wb[key].float(), rtol=1e-4, atol=1e-5), key


@pytest.mark.slow
def test_killed_worker_loses_only_the_epoch_in_flight(ray_head, digits_folder, tmp_path):
    out = tmp_path / "dg.json"
    args = ["probe", "--data", digits_folder, "--probes", 5, "--epochs", 3, "--out", out, "--ray", ray_head.address]

    def kill_a_worker_when(ready):
        killed = []

        def watch():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                if ready() and (pids := job_workers(ray_head)):
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                time.sleep(0.1)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread, killed

    def one_done_one_saved():
        saved = list((tmp_path / "dg.probe").glob("*.pt")) if (tmp_path / "dg.probe").is_dir() else []
        return (tmp_path / "dg.csv").is_file() and len(_measured(tmp_path / "dg.csv")) >= 1 and saved

    # without retries the run stops at the lost worker, in one line, keeping what it finished
    thread, killed = kill_a_worker_when(one_done_one_saved)
    first = _cli([*args, "--retries", 0], env=ray_head.env)
    thread.join()
    assert killed and first.returncode == 2, (killed, first.stderr)
    errors = [line for line in first.stderr.splitlines() if line.startswith("Error:")]  # beside piped progress lines
    assert len(errors) == 1 and "run the same command again" in errors[0] and first.stderr.rstrip().endswith(errors[0])
    before = _measured(tmp_path / "dg.csv")
    seconds = (tmp_path / "dg.csv").read_text().splitlines()[1:]
    assert 1 <= len(before) < 5

    # the same command resumes; a worker lost again is restarted from its job's last epoch within the run
    thread, killed = kill_a_worker_when(one_done_one_saved)
    again = _cli(args, env=ray_head.env)
    thread.join()
    assert killed and again.returncode == 0, (killed, again.stderr)
    assert len(_measured(tmp_path / "dg.csv")) == 5
    assert "restarting it from its last saved epoch (attempt 2 of 3)" in again.stderr
    rows = (tmp_path / "dg.csv").read_text().splitlines()[1:]
    assert all(row in rows for row in seconds)  # finished probes kept as they were (their training seconds too)


def test_missing_ray_package_is_one_line(digits_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    r = CliRunner().invoke(cli, ["probe", "--data", str(digits_folder), "--probes", "5", "--epochs", "1", "--out",
                                 str(tmp_path / "d.json"), "--ray", "127.0.0.1:1"])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0
    assert "pip install -e '.[ray]'" in r.output


def test_unreachable_address_is_one_line_in_bounded_time(digits_folder, tmp_path):
    pytest.importorskip("ray")
    start = time.monotonic()
    r = CliRunner().invoke(cli, ["probe", "--data", str(digits_folder), "--probes", "5", "--epochs", "1", "--out",
                                 str(tmp_path / "d.json"), "--ray", f"127.0.0.1:{_free_port()}"])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0, r.output
    assert "cannot reach a Ray cluster at 127.0.0.1:" in r.output and time.monotonic() - start < 30
    assert not (tmp_path / "d.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-net", "0.5"], "only apply with --ray"),
    (["--ray", "somewhere"], "--ray takes HOST:PORT"),
    (["--ray", "local", "--cpus-per-net", "0"], "'--cpus-per-net': 0.0 is not in the range x>0"),
    (["--ray", "local", "--gpus-per-net", "1.5"], "--gpus-per-net must be 0, a fraction"),
])
def test_bad_ray_options_are_one_line(digits_folder, tmp_path, args, message):
    if "--ray" in args:
        pytest.importorskip("ray")
    r = CliRunner().invoke(cli, ["probe", "--data", str(digits_folder), "--probes", "5", "--out",
                                 str(tmp_path / "d.json"), *args])
    assert r.exit_code == 2 and message in r.output and r.output.strip().count("\n") == 0, r.output


@pytest.mark.slow
def test_command_trainer_runs_as_ray_tasks(ray_head, tmp_path):
    from test_plugins import calls, trainer_cmd

    cmd = trainer_cmd(tmp_path)
    base = ["probe", "--trainer", cmd, "--probes", 5, "--num-classes", 6]
    assert _cli([*base, "--out", tmp_path / "local.json"]).returncode == 0
    r = _cli([*base, "--out", tmp_path / "ray.json", "--ray", ray_head.address], env=ray_head.env)
    assert r.returncode == 0, r.stderr
    assert len(calls(tmp_path)) == 10  # five calls each, the Ray ones from the workers
    rows = [[(r["arch"], r["accuracy"], r["printed"], r["trainer"]) for r in csv.DictReader(io.StringIO(
        (tmp_path / f"{n}.csv").read_text()))] for n in ("local", "ray")]
    assert rows[0] == rows[1] and len(rows[0]) == 5
    r = _cli([*base, "--out", tmp_path / "ray.json", "--ray", ray_head.address], env=ray_head.env)
    assert r.returncode == 0 and len(calls(tmp_path)) == 10  # finished: nothing called again, no cluster needed


@pytest.mark.slow
def test_generate_train_on_ray_matches_local(ray_head, tmp_path):
    """``generate --train`` with ``--ray``: each round's nets are Ray tasks, and the loop measures and decides as
    it does here."""
    from test_closed_loop import lookup_script, task_profile

    from pomonag_edge.data import nb201_accuracy
    from pomonag_edge.spaces.nb201 import SPACE

    truth = nb201_accuracy("cifar10")
    trainer = lookup_script(tmp_path, {str(SPACE.from_index(i)): float(truth[i]) for i in range(SPACE.size())}, "acc")
    task = task_profile(tmp_path / "task.json")
    base = ["generate", "--profile", "pixel3", "--dataset", task, "--max-params", "0.8M", "--strategy", "random",
            "--samples", 200, "--num", 4, "--train", 4, "--trainer", trainer]
    loops = []
    for name, extra, env in (("local", [], None), ("ray", ["--ray", ray_head.address], ray_head.env)):
        r = _cli([*base, "--out", tmp_path / name, *extra], env=env)
        assert r.returncode == 0, r.stderr
        loops.append(json.loads((tmp_path / name / "loop.json").read_text()))
    trained = [[(t["arch"], t["accuracy"], t["round"]) for t in loop["trainings"]] for loop in loops]
    assert trained[0] == trained[1] and trained[0]
    assert loops[0]["stop"]["reason"] == loops[1]["stop"]["reason"]


def test_generate_ray_without_train_is_refused():
    r = CliRunner().invoke(cli, ["generate", "--profile", "pixel3", "--max-params", "1M", "--ray", "local"])
    assert r.exit_code == 2 and "add --train" in r.output and r.output.strip().count("\n") == 0, r.output
