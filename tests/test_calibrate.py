"""calibrate -> predict round trip through the CLI, CSV mistakes, refining a base profile, train group help."""

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from pomonag_edge.cli import cli
from pomonag_edge.data import nb201_latency_ms
from pomonag_edge.profile import Profile, load_profile
from pomonag_edge.spaces.nb201 import SPACE

ALL = list(SPACE.enumerate())
DEVICE = "silver_4114"


def _write_measurements(path, n=10, seed=0):
    table = nb201_latency_ms(DEVICE)
    idx = np.random.default_rng(seed).choice([i for i, a in enumerate(ALL) if SPACE.is_valid(a)], n, replace=False)
    with open(path, "w") as f:
        f.write("arch,latency_ms\n")
        for i in idx:
            f.write(f"{ALL[i]},{table[i]}\n")
    return idx


@pytest.mark.slow  # ~4 s CPU: loads both shipped predictors and scores 2,233 nets
def test_calibrate_then_predict_round_trip(tmp_path):
    runner = CliRunner()
    m = tmp_path / "m.csv"
    _write_measurements(m)
    out = tmp_path / "x.json"
    r = runner.invoke(cli, ["calibrate", "--space", "nb201", "--measurements", str(m), "--name", "x",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    profile = load_profile(out)
    assert profile.name == "x" and len(profile.calibration) == 10
    assert profile.latency_model["n_calibration"] == 10 and profile.latency_model["relative_error"] > 0

    archs = tmp_path / "all.txt"
    archs.write_text("\n".join(str(a) for a in ALL[::7]) + "\n")
    r = runner.invoke(cli, ["predict", "--space", "nb201", "--profile", str(out), "--archs", str(archs),
                            "--dataset", "cifar100", "--format", "csv"])
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == ["arch", "params", "macs", "latency_ms", "accuracy"]
    assert [row["arch"] for row in rows] == [str(a) for a in ALL[::7]]
    pred = np.array([float(row["latency_ms"]) for row in rows])
    truth = nb201_latency_ms(DEVICE)[::7]
    valid = np.array([SPACE.is_valid(a) for a in ALL[::7]])
    assert spearmanr(pred[valid], truth[valid])[0] > 0.9  # 10 timings from this device suffice
    acc = np.array([float(row["accuracy"]) for row in rows])
    assert 0 <= acc.min() and acc.max() <= 100 and np.median(acc) > 40  # percent, cifar100 scale


def test_predict_with_reference_profile_name_gives_measured_latency(tmp_path):
    archs = tmp_path / "a.txt"
    archs.write_text("\n".join(str(a) for a in ALL[:5]))
    r = CliRunner().invoke(cli, ["predict", "--profile", "pixel3", "--archs", str(archs), "--format", "json"])
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["latency_ms"] for row in rows] == [round(float(v), 4) for v in nb201_latency_ms("pixel3")[:5]]


GOOD = str(ALL[1234])


@pytest.mark.parametrize("text, fragment", [
    ("arch,ms\n" + f"{GOOD},1.0\n" * 6, "missing latency_ms"),
    ("latency_ms\n" + "1.0\n" * 6, "missing arch"),
    ("arch,latency_ms\n" + f"{GOOD},1.0\n" * 3 + "|conv~0|+|x|,1.0\n" + f"{GOOD},1.0\n" * 2, "line 5"),
    ("arch,latency_ms\n" + f"{GOOD},1.0\n" * 2 + f"{GOOD},-3\n" + f"{GOOD},1.0\n" * 3, "line 4"),
    ("arch,latency_ms\n" + f"{GOOD},0\n" + f"{GOOD},1.0\n" * 5, "line 2"),
    ("arch,latency_ms\n" + f"{GOOD},1.0\n" * 5 + f"{GOOD},fast\n", "line 7"),
    ("arch,latency_ms\n" + f"{GOOD},nan\n" + f"{GOOD},1.0\n" * 5, "line 2"),
    ("arch,latency_ms\n" + f"{GOOD},1.0\n" * 4, "at least 5"),
], ids=["no-latency-column", "no-arch-column", "bad-arch", "negative", "zero", "not-a-number", "nan", "too-few"])
def test_bad_measurements_exit_2_with_one_line(tmp_path, text, fragment):
    m = tmp_path / "bad.csv"
    m.write_text(text)
    r = CliRunner().invoke(cli, ["calibrate", "--measurements", str(m), "--name", "x",
                                 "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert not (tmp_path / "x.json").exists()


def test_base_profile_keeps_device_facts_and_adds_calibration(tmp_path):
    base = Profile(name="pi", device={"cpu": "cortex-a76"}, runtime={"backend": "onnxruntime", "threads": 1},
                   calibration=[{"arch": str(ALL[5]), "latency_ms": float(nb201_latency_ms(DEVICE)[5])}])
    base.save(tmp_path / "base.json")
    m = tmp_path / "m.csv"
    _write_measurements(m, n=6, seed=3)
    r = CliRunner().invoke(cli, ["calibrate", "--measurements", str(m), "--name", "pi2", "--base",
                                 str(tmp_path / "base.json"), "--out", str(tmp_path / "pi2.json")])
    assert r.exit_code == 0, r.output
    refined = load_profile(tmp_path / "pi2.json")
    assert refined.device == {"cpu": "cortex-a76"} and refined.runtime["backend"] == "onnxruntime"
    assert len(refined.calibration) == 7 and refined.latency_model["n_calibration"] == 7


def test_pretrain_group_lists_its_subcommands():
    r = CliRunner().invoke(cli, ["pretrain", "--help"])
    assert r.exit_code == 0
    assert "latency" in r.output and "accuracy" in r.output


def test_timings_no_model_fits_say_so_in_one_line(tmp_path):
    """Latencies unrelated to the nets: calibrate still writes the profile and warns once, with the error."""
    idx = np.random.default_rng(0).choice([i for i, a in enumerate(ALL) if SPACE.is_valid(a)], 10, replace=False)
    noise = np.exp(np.random.default_rng(1).normal(0, 0.8, 10))
    m = tmp_path / "m.csv"
    m.write_text("arch,latency_ms\n" + "".join(f"{ALL[i]},{v}\n" for i, v in zip(idx, noise)))
    r = CliRunner().invoke(cli, ["calibrate", "--measurements", str(m), "--name", "odd",
                                 "--out", str(tmp_path / "o.json")])
    assert r.exit_code == 0, r.output
    warn = [line for line in r.stderr.splitlines() if "fit no latency model well" in line]
    assert len(warn) == 1 and "profile --host" in warn[0] and "relative error" in warn[0]
    leans = [line for line in r.output.splitlines() if line.startswith("leans on: ")]
    assert len(leans) == 1 and leans[0].startswith("leans on: MACs"), r.output  # no shipped device explains noise
