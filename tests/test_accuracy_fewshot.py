"""The few-shot accuracy model, dataset profiles and `calibrate` with arch,accuracy."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from pomonag_edge.cli import cli
from pomonag_edge.data import nb201_accuracy
from pomonag_edge.dataset_profile import DatasetProfile, DatasetProfileError, resolve_dataset
from pomonag_edge.predictors.accuracy_fewshot import choose_probes, fit_fewshot, task_features, unique_functions
from pomonag_edge.spaces import get_space

SPACE = get_space("nb201")
OTHERS = ("cifar10", "cifar100")


def test_fewshot_beats_params_only_on_a_held_out_shipped_dataset():
    truth = nb201_accuracy("imagenet16-120")
    probes = choose_probes(SPACE, 20, seed=0, datasets=OTHERS)
    idx = np.array([SPACE.index(a) for a in probes])
    model = fit_fewshot(SPACE, probes, truth[idx], datasets=OTHERS)
    rest = np.setdiff1d(unique_functions(SPACE), idx)
    few = spearmanr(model.predict_index(rest), truth[rest])[0]
    params_only = spearmanr(task_features(SPACE, OTHERS)[rest, -2], truth[rest])[0]
    assert few > params_only + 0.15 and few > 0.9, (few, params_only)
    cv = model.state["cv"]
    assert 0 < cv["error_points"] < 10 and cv["spearman"] > 0.8


def test_disconnected_nets_are_never_ranked_above_connected_ones():
    probes = choose_probes(SPACE, 6, seed=1, datasets=OTHERS)
    model = fit_fewshot(SPACE, probes, [50.0, 40.0, 30.0, 45.0, 20.0, 35.0], datasets=OTHERS)
    pred = model.predict_index(np.arange(15625))
    dead = np.array([not SPACE.is_valid(a) for a in SPACE.enumerate()])
    assert pred[dead].max() <= pred[~dead].min() + 1e-9


def _write_csv(path, rows, header="arch,accuracy"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _rows(n=20, fraction=True):
    truth = nb201_accuracy("imagenet16-120")
    archs = choose_probes(SPACE, n, seed=0, datasets=OTHERS)
    return [f"{a},{truth[SPACE.index(a)] / (100 if fraction else 1):.4f}" for a in archs]


def test_calibrate_with_arch_accuracy_makes_a_dataset_profile_used_by_predict(tmp_path):
    csv = _write_csv(tmp_path / "acc.csv", _rows())
    r = CliRunner().invoke(cli, ["calibrate", "--space", "nb201", "--measurements", str(csv), "--name", "mytask",
                                 "--out", str(tmp_path / "d.json")])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["schema"] == "pomonag-edge/dataset-profile" and d["scale"] == "fraction" and len(d["measurements"]) == 20
    assert max(m["accuracy"] for m in d["measurements"]) > 1  # stored in percent
    assert d["accuracy_model"]["cv"]["error_points"] > 0
    best = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    worst = "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|"
    r = CliRunner().invoke(cli, ["predict", "--archs", "-", "--dataset", str(tmp_path / "d.json"), "--format", "json"],
                           input=f"{best}\n{worst}\n")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert rows[0]["accuracy"] > rows[1]["accuracy"] + 5


@pytest.mark.parametrize("rows, header, message", [
    (["|bad~0|+|x|,50"] + _rows(6, False)[1:], "arch,accuracy", "line 2"),
    (_rows(5, False) + ["|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,150"], "arch,accuracy", "percent"),
    (_rows(5, False) + ["|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,abc"], "arch,accuracy", "not a number"),
    (_rows(4, False) + _rows(1, False), "arch,accuracy", "only 4 distinct"),
    (_rows(3, False), "arch,accuracy", "at least 5"),
])
def test_bad_accuracy_rows_exit_2_with_one_line(tmp_path, rows, header, message):
    csv = _write_csv(tmp_path / "acc.csv", rows, header)
    r = CliRunner().invoke(cli, ["calibrate", "--measurements", str(csv), "--name", "t",
                                 "--out", str(tmp_path / "d.json")])
    assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output


def test_dataset_profile_of_another_space_or_a_device_profile_is_refused(tmp_path):
    DatasetProfile(name="x", space="mbv3").save(tmp_path / "m.json")
    with pytest.raises(DatasetProfileError, match="--space mbv3"):
        resolve_dataset(str(tmp_path / "m.json"), SPACE)
    (tmp_path / "p.json").write_text(json.dumps({"schema": "pomonag-edge/profile", "schema_version": 1, "name": "p"}))
    with pytest.raises(DatasetProfileError, match="--profile"):
        resolve_dataset(str(tmp_path / "p.json"), SPACE)
    with pytest.raises(Exception, match="unknown dataset"):
        resolve_dataset("svhn", SPACE)
    assert resolve_dataset("cifar100", SPACE) == "cifar100"


def test_probe_choice_is_seeded_distinct_and_connected():
    a, b = choose_probes(SPACE, 12, seed=3), choose_probes(SPACE, 12, seed=3)
    assert a == b and len({SPACE.canonical(x) for x in a}) == 12 and all(SPACE.is_valid(x) for x in a)
    assert choose_probes(SPACE, 12, seed=4) != a
