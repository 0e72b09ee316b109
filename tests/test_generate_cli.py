"""``pomonag-edge generate`` as a user meets it: the run folder, one-line errors with exit status 2."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from pomonag_edge.data import nb201_latency_ms
from pomonag_edge.spaces.nb201 import SPACE


def run(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./profiles, ./runs lands here


def test_no_profile_is_one_line_exit_2():
    r = run("generate", "--max-latency", "5ms")
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "pomonag-edge profile" in lines[0] and "--profile" in lines[0]


@pytest.mark.parametrize("args, words", [
    (("--max-latency", "fast"), "cannot read latency"),
    (("--weights", "accuracy=1,speed=2"), "cannot read weight 'speed=2'"),
    (("--weights", "latency=-1"), "non-negative"),
    (("--dataset", "mnist"), "unknown dataset 'mnist'"),
    (("--profile", "no-such-device"), "no reference profile named"),
])
def test_bad_input_is_one_line_exit_2(args, words):
    r = run("generate", "--profile", "pixel3", "--strategy", "random", "--samples", "16", *args)
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0, r.output
    assert words in r.output


def test_impossible_budget_lists_closest_and_exits_2(tmp_path):
    r = run("generate", "--profile", "pixel3", "--dataset", "cifar10", "--max-latency", "0.001ms",
            "--strategy", "random", "--samples", "64", "--out", str(tmp_path / "r"))
    assert r.exit_code == 2
    assert "closest nets" in r.output and "no" in r.output  # the table, marked not within budget
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: no candidate net meets the budget (latency <= 0.001 ms)")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    r = run("generate", "--profile", "pixel3", "--dataset", "cifar100", "--max-latency", "12ms", "--max-params",
            "1M", "--num", "5", "--samples", "64", "--seed", "0", "--out", str(out))
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "pareto.json").read_text())
    assert 1 <= len(rows) <= 5 and [x["rank"] for x in rows] == list(range(1, len(rows) + 1))
    for x in rows:
        assert {"arch", "accuracy", "latency_ms", "params", "macs", "feasible", "p_within_budget"} <= set(x)
        assert x["feasible"] and x["latency_ms_with_margin"] <= 12.0 and x["params"] <= 1e6
        assert SPACE.params(SPACE.parse(x["arch"]), "cifar100") == x["params"]
    assert [x["accuracy"] for x in rows] == sorted((x["accuracy"] for x in rows), reverse=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["space"] == "nb201" and m["dataset"] == "cifar100" and m["seed"] == 0
    assert m["profile"]["name"] == "pixel3" and len(m["profile"]["sha256"]) == 16
    assert m["budget"]["max_latency_ms"] == 12.0 and "margin" in m and m["generator"]["checkpoint"]["training"]
    with open(out / "pareto.csv") as f:
        assert [row["arch"] for row in csv.DictReader(f)] == [x["arch"] for x in rows]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_same_seed_same_run(tmp_path):
    args = ["generate", "--profile", "pixel3", "--max-latency", "6ms", "--samples", "48", "--seed", "3"]
    a = run(*args, "--out", str(tmp_path / "a"))
    b = run(*args, "--out", str(tmp_path / "b"))
    assert a.exit_code == b.exit_code == 0
    assert (tmp_path / "a" / "pareto.json").read_text() == (tmp_path / "b" / "pareto.json").read_text()


def test_default_out_is_new_folder_under_runs(tmp_path):
    r = run("generate", "--profile", "pixel3", "--strategy", "random", "--samples", "32")
    assert r.exit_code == 0, r.output
    (folder,) = (tmp_path / "runs").iterdir()
    assert (folder / "pareto.json").exists()


@pytest.mark.slow
def test_calibrated_profile_from_10_timings_works(tmp_path):
    """A profile from `calibrate` with 10 measured nets: the budget is tested with each net's own margin."""
    lat = nb201_latency_ms("pixel3")
    idx = np.random.default_rng(0).choice(SPACE.size(), 10, replace=False)
    with open(tmp_path / "m.csv", "w") as f:
        f.write("arch,latency_ms\n" + "".join(f"{SPACE.from_index(int(i))},{lat[i]}\n" for i in idx))
    r = run("calibrate", "--space", "nb201", "--measurements", str(tmp_path / "m.csv"), "--name", "phone",
            "--out", str(tmp_path / "phone.json"))
    assert r.exit_code == 0, r.output
    r = run("generate", "--profile", str(tmp_path / "phone.json"), "--dataset", "cifar100", "--max-latency", "12ms",
            "--samples", "128", "--out", str(tmp_path / "run"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    rows = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert m["margin"] > 0 and m["profile"]["name"] == "phone" and m["per_net_margin"] and m["level"] == 0.9
    assert all(x["latency_ms"] < x["latency_ms_with_margin"] <= 12.0 + 1e-6 for x in rows)
    assert all(x["p_within_budget"] >= 0.9 - 1e-4 for x in rows)


def test_probability_of_fitting_the_budget_is_recorded_and_honoured(tmp_path):
    """Per-net sigma: a net is kept iff P(measured <= budget) >= --confidence level; pareto.json records it."""
    from scipy.stats import norm

    from pomonag_edge.generate import generate_run
    from pomonag_edge.predictors import table_predictors

    base = table_predictors(SPACE, "cifar100", "pixel3")
    sigma = lambda archs: np.array([0.4 if SPACE.index(a) % 2 else 0.02 for a in archs])  # noqa: E731
    preds = type(base)(base.accuracy, base.latency_ms, 0.0, base.source, latency_log_sigma=sigma)
    budget = 10.0
    runs = {level: generate_run(profile="pixel3", dataset="cifar100", max_latency=f"{budget}ms", num=50,
                                samples=256, strategy="random", predictors=preds, level=level,
                                out=tmp_path / str(level)) for level in (0.6, 0.95)}
    for level, r in runs.items():
        rows = json.loads((r.path / "pareto.json").read_text())
        assert rows and all(x["p_within_budget"] >= level for x in rows)
        for x in r.result.scored:
            p = norm.cdf(np.log(budget / x["latency_ms"]) / sigma([SPACE.parse(x["arch"])])[0])
            assert abs(x["p_within_budget"] - p) < 1e-3 and x["feasible"] == (p >= level - 1e-9)
        with open(r.path / "pareto.csv") as f:
            assert "p_within_budget" in next(csv.reader(f))
    # a wide-sigma net predicted under budget is kept at 60% but not at 95%
    loose = {x["arch"] for x in runs[0.6].result.scored if x["feasible"]}
    strict = {x["arch"] for x in runs[0.95].result.scored if x["feasible"]}
    assert strict < loose


def test_confidence_option_is_parsed_and_checked():
    r = run("generate", "--profile", "pixel3", "--strategy", "random", "--samples", "16", "--confidence", "101%")
    assert r.exit_code == 2 and "at least 50% and below 100%" in r.output
    r = run("generate", "--profile", "pixel3", "--strategy", "random", "--samples", "16", "--max-latency", "8ms",
            "--confidence", "95%")
    assert r.exit_code == 0, r.output
