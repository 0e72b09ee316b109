"""``generate --measure``: the closed loop times the deciding candidates, measured beats predicted, resumes."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from pomonag_edge.closed_loop import Journal, LoopOptions, acquire, run_loop
from pomonag_edge.data import nb201_accuracy, nb201_latency_ms
from pomonag_edge.hardware.timing import Protocol
from pomonag_edge.problem import Predictors, SearchProblem
from pomonag_edge.selection import select, used
from pomonag_edge.spaces.nb201 import SPACE
from pomonag_edge.strategies import make_strategy
from pomonag_edge.units import Budget

TINY = Protocol(name="tiny", warmup_ms=0, warmup_runs=2, min_runs=8, min_time_s=0.03, max_time_s=1.0, floor_runs=3,
                max_cv=10.0, retries=0, settle_s=0.0, rounds=2)
ACC, LAT = nb201_accuracy("cifar100"), nb201_latency_ms("pixel3")


def run(*args):
    return CliRunner().invoke(cli, list(args))


def cpu_profile(path: Path, facts=None) -> Path:
    """A profile of this machine (its detected facts, a tiny protocol) whose 8 calibration nets are timed here."""
    from pomonag_edge.hardware import detect_device
    from pomonag_edge.hardware.timers import make_timer
    from pomonag_edge.profiler import net_graph
    from pomonag_edge.predictors import fit_profile_model
    from pomonag_edge.profile import Profile

    archs = [a for a in SPACE.sample(40, seed=3) if SPACE.is_valid(a)][:8]
    timed = make_timer("onnxruntime", TINY).time({str(a): net_graph(SPACE, a, "cifar10", 1, 0) for a in archs})
    profile = Profile(name="cpu-test", space="nb201", dataset="cifar10",
                      device={"name": "cpu", **(facts or detect_device())},
                      runtime={"backend": "onnxruntime", "precision": "fp32", "batch": 1, "threads": 1,
                               "clock": "wall", "protocol": TINY.name, "protocol_settings": TINY.to_dict()},
                      calibration=[{"arch": str(a), "latency_ms": timed[str(a)].median_ms} for a in archs])
    profile.latency_model = fit_profile_model(SPACE, profile)
    profile.save(path)
    return path


def noisy_predictors(scale: float = 0.25, seed: int = 0):
    """pixel3's table with a per-net log-normal error the model knows (sigma ``scale``): the kind of model a
    few timings give; the table itself is the device."""
    err = np.exp(np.random.default_rng(seed).normal(0, scale, len(LAT)))
    return Predictors(accuracy=lambda archs: ACC[[SPACE.index(a) for a in archs]],
                      latency_ms=lambda archs: (LAT * err)[[SPACE.index(a) for a in archs]], margin=0.0,
                      latency_log_sigma=lambda archs: np.full(len(list(archs)), scale))


class TableTimer:
    """The device: pixel3's measured table, looked up (counts what it timed)."""

    where = "pixel3's table"

    def __init__(self):
        self.timed = []

    def time(self, archs, record, progress=None):
        for a in archs:
            self.timed.append(str(a))
            record(a, {"arch": str(a), "latency_ms": float(LAT[SPACE.index(a)])})


def table_loop(tmp_path, monkeypatch, measure, budget_ms=20.0, timer=None, journal=None):
    """``run_loop`` over pixel3 / cifar100 with ``noisy_predictors``, the timings overlaid (no refit)."""
    import pomonag_edge.closed_loop as cl
    from pomonag_edge.profile import Profile

    timer = timer or TableTimer()
    journal = journal or Journal(tmp_path / "loop.json", {"test": 1})
    base = noisy_predictors()

    def predictors_for(profile, dataset):
        return Predictors(base.accuracy, base.latency_ms, 0.0, latency_log_sigma=base.latency_log_sigma,
                          measured_latency_ms={c["arch"]: c["latency_ms"] for c in profile.calibration})

    monkeypatch.setattr(cl, "with_timings", lambda space, p, timings: Profile(name=p.name, calibration=timings))
    out = run_loop(space=SPACE, profile=Profile(name="table"), task=None, dataset="cifar100",
                   budget=Budget(max_latency_ms=budget_ms), level=0.9, strategy=make_strategy("random"), samples=400,
                   num=5, seed=0, options=LoopOptions(measure=measure), journal=journal, predictors_for=predictors_for,
                   timer_factory=lambda: timer, trainer_factory=None)
    return out, timer


def test_loop_times_at_most_n_stops_with_a_reason_and_never_loses_to_a_measured_net(tmp_path, monkeypatch):
    out, timer = table_loop(tmp_path, monkeypatch, measure=12)
    assert 1 <= len(timer.timed) <= 12 and len(set(timer.timed)) == len(timer.timed)  # no net timed twice
    stop = out.journal.stop
    assert stop["reason"] in ("converged", "spent", "exhausted") and stop["threshold"] == pytest.approx(0.1)
    assert stop["reason"] != "spent" or len(timer.timed) == 12
    rows = out.result.selected
    measured_ok = [r for r in out.result.scored
                   if r["latency_ms_measured"] is not None and r["latency_ms_measured"] <= 20]
    assert measured_ok and used(rows[0], "accuracy") >= max(r["accuracy"] for r in measured_ok)
    for r in out.result.scored:  # measured beats predicted: the measurement, no margin, and the rank says so
        if r["latency_ms_measured"] is not None:
            assert r["latency_ms_measured"] == pytest.approx(LAT[r["index"]], rel=1e-4)
            assert r["rank_used"]["latency"] == "measured" and r["p_within_budget"] in (0.0, 1.0)
    saved = json.loads((tmp_path / "loop.json").read_text())
    assert len(saved["timings"]) == len(timer.timed) and saved["stop"]["reason"] == stop["reason"]
    if stop["reason"] == "converged":
        assert rows[0]["latency_ms_measured"] is not None and stop["p_beat"] < 0.1


def test_measuring_beats_the_one_shot_pick_on_a_wrong_model(tmp_path, monkeypatch):
    """With a latency model 25% off per net, the one-shot pick can be over budget; after the loop the top pick
    is measured within budget, and truly so."""
    out, timer = table_loop(tmp_path, monkeypatch, measure=20, budget_ms=15.0)
    top = out.result.selected[0]
    assert top["latency_ms_measured"] is not None and LAT[top["index"]] <= 15.0


def test_resume_keeps_timings_and_times_no_net_twice(tmp_path, monkeypatch):
    class Interrupted(TableTimer):
        def time(self, archs, record, progress=None):
            super().time(archs[:1], record)
            raise KeyboardInterrupt

    first = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        table_loop(tmp_path, monkeypatch, measure=8, timer=first)
    kept = json.loads((tmp_path / "loop.json").read_text())["timings"]
    assert [t["arch"] for t in kept] == first.timed and len(kept) == 1
    journal = Journal.open(tmp_path / "loop.json", {"test": 1})
    out, second = table_loop(tmp_path, monkeypatch, measure=8, journal=journal)
    assert not set(second.timed) & set(first.timed) and len(out.journal.timings) == len(first.timed) + len(second.timed)
    assert len(out.journal.timings) <= 8
    with pytest.raises(Exception, match="another request"):
        Journal.open(tmp_path / "loop.json", {"test": 2})


def test_acquisition_prefers_the_net_that_could_be_the_answer():
    """Three nets over a 10 ms budget: a sure one (measured), an accurate one likely within budget, an accurate
    one surely over; the loop times the likely one, never the sure-over one."""
    sure, likely, over = SPACE.from_index(1), SPACE.from_index(2), SPACE.from_index(3)
    acc = {str(sure): 70.0, str(likely): 72.0, str(over): 75.0}
    lat = {str(sure): 8.0, str(likely): 9.5, str(over): 30.0}
    preds = Predictors(accuracy=lambda archs: np.array([acc[str(a)] for a in archs]),
                       latency_ms=lambda archs: np.array([lat[str(a)] for a in archs]), margin=0.0,
                       latency_log_sigma=lambda archs: np.full(len(list(archs)), 0.1),
                       measured_latency_ms={str(sure): 8.0})
    problem = SearchProblem(SPACE, "cifar100", Budget(max_latency_ms=10.0), preds)
    result = select(problem, [sure, likely, over], num=3)
    d = acquire(problem, result, timings_left=5, trainings_left=0, batch_time=1, batch_train=0)
    assert d.stop is None and d.to_time == [likely] and d.incumbent == 70.0
    # once the likely net is measured within budget, nothing left is likely to beat it: converged
    preds.measured_latency_ms[str(likely)] = 9.0
    problem = SearchProblem(SPACE, "cifar100", Budget(max_latency_ms=10.0), preds)
    result = select(problem, [sure, likely, over], num=3)
    d = acquire(problem, result, timings_left=4, trainings_left=0, batch_time=1, batch_train=0)
    assert d.stop == "converged" and d.p_beat < 0.1 and result.selected[0]["arch"] == str(likely)
    # no timings left and the pick not measured: spent
    d = acquire(problem, select(problem, [sure, over], num=2), timings_left=0, trainings_left=0, batch_time=1,
                batch_train=0)
    assert d.stop in ("converged", "spent")


# ------------------------------------------------------------------ the command, on this CPU


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_generate_measure_on_this_cpu(here):
    profile = cpu_profile(here / "p.json")
    r = run("generate", "--profile", str(profile), "--max-latency", "2.5ms", "--strategy", "random", "--samples",
            "48", "--num", "4", "--measure", "3", "--out", "r")
    assert r.exit_code == 0, r.output
    loop = json.loads((here / "r" / "loop.json").read_text())
    manifest = json.loads((here / "r" / "manifest.json").read_text())
    rows = json.loads((here / "r" / "pareto.json").read_text())
    assert 1 <= len(loop["timings"]) <= 3 and loop["stop"]["reason"] in ("converged", "spent", "exhausted")
    assert "closed loop:" in r.output and "stopped:" in r.output
    revision = Path(manifest["profile"]["spec"])
    assert revision.name == "p.r2.json" and manifest["profile"]["parent"]["path"] == str(profile)
    assert manifest["profile"]["path"] == str(revision.absolute())  # the revision's file, where export finds it
    from pomonag_edge.profile import load_profile

    rev = load_profile(revision)
    assert rev.sha256 == manifest["profile"]["sha256"] and len(rev.calibration) == 8 + len(loop["timings"])
    assert {t["arch"] for t in loop["timings"]} <= {c["arch"] for c in rev.calibration}
    timed = {t["arch"]: t["latency_ms"] for t in loop["timings"]}
    for row in rows:
        assert {"latency_ms_measured", "accuracy_measured", "rank_used"} <= set(row)
        if row["arch"] in timed:
            assert row["latency_ms_measured"] == pytest.approx(timed[row["arch"]], rel=1e-3)
            assert row["rank_used"]["latency"] == "measured"
    assert load_profile(profile).calibration == load_profile(profile).calibration[:8]  # the parent is untouched


def test_measure_refuses_what_it_cannot_do(here):
    for args, words in ((("--profile", "pixel3", "--max-latency", "5ms"), "reference profile"),
                        (("--profile", str(cpu_profile(here / "p.json")),), "give --max-latency too")):
        r = run("generate", *args, "--strategy", "random", "--samples", "16", "--measure", "2")
        assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and words in r.output, r.output
    other = cpu_profile(here / "q.json", facts={"cpu": "some other cpu"})
    r = run("generate", "--profile", str(other), "--max-latency", "5ms", "--strategy", "random", "--samples", "16",
            "--measure", "2")
    assert r.exit_code == 2 and "is not the device of profile" in r.output and "--host" in r.output
    r = run("generate", "--profile", "pixel3", "--host", "me@board")
    assert r.exit_code == 2 and "--measure" in r.output


@pytest.mark.slow
def test_generate_measure_through_the_ssh_runner(here, ssh_host):
    host, config = ssh_host  # the profile's device is the host: its facts as the runner reports them
    from pomonag_edge.hardware.remote import DeviceTimer, SSHOptions, parse_host

    options = SSHOptions(config=config, python=sys.executable, remote_dir=str(here / "remote"))
    facts = DeviceTimer(parse_host(host), TINY, options=options).facts()
    profile = cpu_profile(here / "p.json", facts={k: v for k, v in facts.items() if isinstance(v, str)})
    r = run("generate", "--profile", str(profile), "--max-latency", "2.5ms", "--strategy", "random", "--samples",
            "48", "--num", "4", "--measure", "2", "--host", host, "--ssh-config", config, "--remote-python",
            sys.executable, "--remote-dir", str(here / "remote"), "--out", "r")
    assert r.exit_code == 0, r.output
    loop = json.loads((here / "r" / "loop.json").read_text())
    assert 1 <= len(loop["timings"]) <= 2 and loop["identity"]["device"] == host
    assert all(t["latency_ms"] > 0 for t in loop["timings"])


# ------------------------------------------------------------------ --train with a command trainer


def lookup_script(tmp_path: Path, values: dict, name: str) -> str:
    """A command that prints the value of the arch it is given (a trainer or a device from a table)."""
    table = tmp_path / f"{name}.json"
    table.write_text(json.dumps(values))
    script = tmp_path / f"{name}.py"
    script.write_text("import json, sys\nprint(json.load(open(sys.argv[1]))[sys.argv[2]])\n")
    return f"{sys.executable} {script} {table} {{arch}}"


def task_profile(path: Path, n: int = 10) -> Path:
    """A user task whose truth is the cifar10 table, its accuracy model fitted from ``n`` chosen probes."""
    from pomonag_edge.dataset_profile import fit_dataset_profile
    from pomonag_edge.predictors.accuracy_fewshot import choose_probes

    truth = nb201_accuracy("cifar10")
    probes = choose_probes(SPACE, n, 0)
    task = fit_dataset_profile(SPACE, [{"arch": str(a), "accuracy": float(truth[SPACE.index(a)])} for a in probes],
                               "task", source={"probe": {"epochs": 3, "seed": 0}})
    task.save(path)
    return path


def test_generate_train_with_a_command_trainer(here):
    truth = nb201_accuracy("cifar10")
    trainer = lookup_script(here, {str(SPACE.from_index(i)): float(truth[i]) for i in range(SPACE.size())}, "acc")
    task = task_profile(here / "task.json")
    r = run("generate", "--profile", "pixel3", "--dataset", str(task), "--max-params", "0.8M", "--strategy",
            "random", "--samples", "200", "--num", "4", "--train", "4", "--trainer", trainer, "--out", "r")
    assert r.exit_code == 0, r.output
    loop = json.loads((here / "r" / "loop.json").read_text())
    manifest = json.loads((here / "r" / "manifest.json").read_text())
    rows = json.loads((here / "r" / "pareto.json").read_text())
    assert 1 <= len(loop["trainings"]) <= 4 and loop["stop"]["reason"] in ("converged", "spent", "exhausted")
    for t in loop["trainings"]:  # the command's number, as trained, with the probes' epochs
        assert t["accuracy"] == pytest.approx(truth[SPACE.index(SPACE.parse(t["arch"]))]) and t["epochs"] == 3
    from pomonag_edge.dataset_profile import load_dataset_profile

    rev = load_dataset_profile(manifest["dataset_profile"]["spec"])
    assert Path(manifest["dataset_profile"]["spec"]).name == "task.r2.json" and rev.parent["path"] == str(task)
    assert len(rev.measurements) == 10 + len(loop["trainings"])
    assert rev.accuracy_model["n_measurements"] == len(rev.measurements)
    trained = {t["arch"] for t in loop["trainings"]}
    measured = {m["arch"] for m in rev.measurements}
    assert all((row["accuracy_measured"] is not None) == (row["arch"] in measured) for row in rows)
    best_measured = max(m["accuracy"] for m in rev.measurements if SPACE.params(SPACE.parse(m["arch"])) <= 0.8e6)
    assert (rows[0]["accuracy_measured"] or rows[0]["accuracy"]) >= best_measured
    assert trained and "trainings" in r.output
    # a re-run into the finished run is refused; --force starts it over; an unfinished one resumes
    again = run("generate", "--profile", "pixel3", "--dataset", str(task), "--max-params", "0.8M", "--strategy",
                "random", "--samples", "200", "--train", "4", "--trainer", trainer, "--out", "r")
    assert again.exit_code == 2 and "already holds a run" in again.output


def test_train_refuses_what_it_cannot_do(here):
    task = task_profile(here / "task.json")
    for args, words in ((("--dataset", "cifar10", "--train", "2", "--trainer", "echo 1"), "dataset profile"),
                        (("--dataset", str(task), "--train", "2"), "exactly one"),
                        (("--dataset", str(task), "--trainer", "echo 1"), "add --train")):
        r = run("generate", "--profile", "pixel3", "--max-params", "1M", "--strategy", "random", "--samples", "16",
                *args)
        assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and words in r.output, r.output


def test_an_interrupted_run_folder_resumes_without_training_a_net_again(here):
    """A run folder holding only the journal (as Ctrl-C leaves it) is resumed by the same command."""
    truth = nb201_accuracy("cifar10")
    trainer = lookup_script(here, {str(SPACE.from_index(i)): float(truth[i]) for i in range(SPACE.size())}, "acc")
    task = task_profile(here / "task.json")
    args = ["generate", "--profile", "pixel3", "--dataset", str(task), "--max-params", "0.8M", "--strategy", "random",
            "--samples", "200", "--num", "4", "--train", "4", "--trainer", trainer, "--out", "r"]
    assert run(*args).exit_code == 0
    journal = json.loads((here / "r" / "loop.json").read_text())
    for f in (here / "r").iterdir():  # what an interruption after the first training leaves
        if f.name != "loop.json":
            f.unlink() if f.is_file() else None
    journal["trainings"], journal["stop"] = journal["trainings"][:1], None
    (here / "r" / "loop.json").write_text(json.dumps(journal))
    (here / "acc.py").write_text("import json, sys\nopen(sys.argv[1] + '.calls', 'a').write(sys.argv[2] + '\\n')\n"
                                 "print(json.load(open(sys.argv[1]))[sys.argv[2]])\n")
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "resuming the closed loop" in again.output and (here / "r" / "pareto.json").is_file()
    called = (here / "acc.json.calls").read_text().split() if (here / "acc.json.calls").exists() else []
    assert journal["trainings"][0]["arch"] not in called
