"""MobileNetV3 latency: reference profiles, few-shot adaptation, calibrate/predict CLI, LUT profiling pieces."""

import csv
import io

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import spearmanr

from pomonag_edge.cli import cli
from pomonag_edge.spaces.mbv3 import ofa_latency_table
from pomonag_edge.errors import ExtrapolationWarning, ProfileError, UserError
from pomonag_edge.predictors import latency_model_for
from pomonag_edge.predictors import latency as LM
from pomonag_edge.predictors.latency_model import MIN_POWER_FIT, HeadModel, LutModel
from pomonag_edge.predictors.latency_pretrain import PretrainedEmbedding, head_design
from pomonag_edge.profile import Profile, reference_profile
from pomonag_edge.spaces.mbv3 import SPACE
from pomonag_edge.spaces.lut import lut_cost
from pomonag_edge.spaces.mbv3.arch import lut_sum_ms
from pomonag_edge.spaces.mbv3.cost import feature_costs, lut_resolutions


@pytest.fixture(scope="module")
def table():
    return ofa_latency_table()


def test_additive_costs_are_exact_and_differentiable():
    archs = SPACE.sample(40, seed=3)
    lut, macs = feature_costs()
    from pomonag_edge.data.mbv3 import reference_lut

    want = [lut_sum_ms(a, reference_lut("i7-8700k")) for a in archs]
    np.testing.assert_allclose(lut.evaluate_np(archs), want, rtol=1e-12)
    np.testing.assert_allclose(macs.evaluate_np(archs) * 1e6, [SPACE.macs(a) for a in archs], rtol=1e-12)
    x = torch.from_numpy(SPACE.encode(archs)).double().requires_grad_()
    y = lut.evaluate_torch(x)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_reference_profile_predicts_its_table_with_its_heldout_error(table):
    profile = reference_profile("v100_1", "mbv3")
    assert profile.space == "mbv3" and profile.runtime["batch"] == 1
    model = latency_model_for(SPACE, profile)
    idx = np.arange(0, 5000, 10)
    pred = model.predict_ms([table.archs[i] for i in idx])
    truth = table.latency_ms[idx, table.settings.index("v100_1")]
    assert spearmanr(pred, truth)[0] > 0.85
    assert np.median(np.abs(pred / truth - 1)) < 0.1
    # not a lookup: the margin is the error measured on nets held out of an identical fit
    assert 0.03 < model.relative_error == model.to_dict()["heldout"]["rel_err_q90"] < 0.3
    np.testing.assert_allclose(model.margin_ms(pred), pred * model.relative_error)
    x = torch.from_numpy(SPACE.encode([table.archs[i] for i in idx[:8]]))
    np.testing.assert_allclose(model.log_ms_torch(x).exp().detach().numpy(), pred[:8], rtol=1e-4)


def test_reference_names_shared_by_both_spaces_resolve_per_space():
    assert reference_profile("2080ti_1").space == "nb201"  # unchanged meaning without a space
    assert reference_profile("2080ti_1", "mbv3").space == "mbv3"
    assert reference_profile("v100_64").space == "mbv3"
    model = latency_model_for(SPACE, reference_profile("2080ti_1"))  # the mbv3 setting of that name
    assert model.to_dict()["table"] == "2080ti_1"
    with pytest.raises(ProfileError, match="no reference profile named 'v100_1' for space nb201"):
        reference_profile("v100_1", "nb201")


def test_search_predictors_for_reference_profile():
    from pomonag_edge.predictors import search_predictors as predictors_for

    pred = predictors_for(SPACE, reference_profile("v100_1", "mbv3"), "imagenet")
    archs = SPACE.sample(4, seed=0)
    lat = pred.latency_ms(archs)
    assert lat.shape == (4,) and np.all(lat > 0) and pred.margin > 0


@pytest.mark.slow  # ~5 s CPU: a tiny pretraining on 8 settings
def test_adaptation_beats_the_pretrained_prior_on_a_held_out_setting(table):
    torch.set_num_threads(1)
    rows = np.arange(0, 5000, 3)
    archs = [table.archs[i] for i in rows]
    held = table.settings.index("v100_1")
    others = [j for j in range(len(table.settings)) if j != held]
    pre = PretrainedEmbedding.from_tables(SPACE, archs, table.latency_ms[np.ix_(rows, others)],
                                          [table.settings[j] for j in others], steps=200)
    y = table.latency_ms[rows, held]
    idx = np.random.default_rng(0).choice(len(archs), 10, replace=False)
    model = LM.fit_calibration(SPACE, [archs[i] for i in idx], y[idx], pre)
    state = model.to_state()
    rest = np.setdiff1d(np.arange(len(archs)), idx)
    adapted = model.predict_ms([archs[i] for i in rest])
    prior = np.exp(head_design(pre.phi([archs[i] for i in rest])) @ pre.prior_mean)
    sp_adapted, sp_prior = spearmanr(adapted, y[rest])[0], spearmanr(prior, y[rest])[0]
    assert sp_adapted > sp_prior + 0.2 and sp_adapted > 0.75
    assert np.mean(np.abs(adapted / y[rest] - 1)) < 0.15
    assert state["kind"] == HeadModel.kind and state["n_calibration"] == 10 and state["relative_error"] > 0


def _write_measurements(path, table, setting="v100_32", n=10, seed=0):
    j = table.settings.index(setting)
    idx = np.random.default_rng(seed).choice(len(table.archs), n, replace=False)
    with open(path, "w") as f:
        f.write("arch,latency_ms\n")
        for i in idx:
            f.write(f"{table.archs[i]},{table.latency_ms[i, j]}\n")
    return idx


def test_calibrate_then_predict_round_trip(tmp_path, table):
    runner = CliRunner()
    m = tmp_path / "m.csv"
    _write_measurements(m, table)
    out = tmp_path / "x.json"
    r = runner.invoke(cli, ["calibrate", "--space", "mbv3", "--measurements", str(m), "--name", "x", "--out", str(out)])
    assert r.exit_code == 0, r.output
    archs = tmp_path / "a.txt"
    picked = list(range(1, 5000, 25))
    archs.write_text("\n".join(str(table.archs[i]) for i in picked) + "\n")
    with pytest.warns(ExtrapolationWarning, match="outside 160..224"):  # some timed subnets are at other resolutions
        r = runner.invoke(cli, ["predict", "--space", "mbv3", "--profile", str(out), "--archs", str(archs),
                                "--dataset", "imagenet", "--format", "csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == ["arch", "params", "macs", "latency_ms", "accuracy"]
    assert [row["arch"] for row in rows] == [str(table.archs[i]) for i in picked]
    pred = np.array([float(row["latency_ms"]) for row in rows])
    truth = table.latency_ms[picked, table.settings.index("v100_32")]
    assert spearmanr(pred, truth)[0] > 0.85 and np.median(np.abs(pred / truth - 1)) < 0.15
    acc = np.array([float(row["accuracy"]) for row in rows])
    assert 60 < acc.min() and acc.max() < 85  # OFA's ImageNet top-1 estimate, percent


def test_predict_with_mbv3_reference_name_and_wrong_dataset(tmp_path, table):
    archs = tmp_path / "a.txt"
    archs.write_text(f"{table.archs[0]}\n{table.archs[1]}\n")
    runner = CliRunner()
    r = runner.invoke(cli, ["predict", "--space", "mbv3", "--profile", "titan_xp_64", "--archs", str(archs)])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == "arch,params,macs,latency_ms"
    r = runner.invoke(cli, ["predict", "--space", "mbv3", "--archs", str(archs), "--dataset", "cifar10"])
    assert r.exit_code == 2 and "unknown dataset 'cifar10' for mbv3" in r.output


@pytest.mark.parametrize("body, message", [
    ("arch,ms\n", "missing latency_ms"),
    ("arch,latency_ms\nks=3:e=3\n", "line 2"),
    ("arch,latency_ms\n{a},0\n", "line 2: latency_ms must be a positive"),
    ("arch,latency_ms\n{a},fast\n", "line 2: latency_ms 'fast' is not a number"),
    ("arch,latency_ms\n{a},3.0\n{a},3.1\n", "2 measurement row(s); calibration needs at least 5"),
])
def test_calibrate_csv_errors_are_one_line(tmp_path, body, message, table):
    m = tmp_path / "m.csv"
    m.write_text(body.format(a=table.archs[0]))
    r = CliRunner().invoke(cli, ["calibrate", "--space", "mbv3", "--measurements", str(m), "--name", "x",
                                 "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_nb201_profile_refused_for_mbv3_model():
    nb = Profile(name="n", space="nb201", calibration=[{"arch": "x", "latency_ms": 1.0}])
    with pytest.raises(ProfileError, match="profile n is for space nb201, not mbv3: pass --space nb201"):
        LM.latency_model_for(SPACE, nb)


# ------------------------------------------------------------------------------------ profiling pieces


def _lut_profile(lut: dict, resolutions):
    p = Profile(name="t", space="mbv3", dataset="imagenet", lut={k: {"median_ms": v} for k, v in lut.items()})
    keys = set(SPACE.lut_signatures("imagenet", tuple(resolutions)))
    p.lut = {k: v for k, v in p.lut.items() if k in keys}
    return p


def test_own_lut_cost_exact_where_measured_and_interpolated_between():
    from pomonag_edge.data.mbv3 import reference_lut

    lut = reference_lut("note10")  # real per-layer timings in our key format (a phone's)
    full = _lut_profile(lut, (160, 176, 192, 208, 224))
    assert lut_resolutions(full.lut) == (160, 176, 192, 208, 224)
    sparse = _lut_profile(lut, (160, 224))
    assert lut_resolutions(sparse.lut) == (160, 224)
    archs = [a for a in SPACE.sample(300, seed=1) if a.r in (160, 176, 192, 208, 224)]
    exact = np.array([lut_sum_ms(a, lut) for a in archs])
    np.testing.assert_allclose(lut_cost(SPACE, full).ms(archs), exact, rtol=1e-9)
    interp = lut_cost(SPACE, sparse).ms(archs)
    at_ends = np.array([a.r in (160, 224) for a in archs])
    np.testing.assert_allclose(interp[at_ends], exact[at_ends], rtol=1e-9)
    assert np.median(np.abs(interp[~at_ends] / exact[~at_ends] - 1)) < 0.2
    assert spearmanr(interp, exact)[0] > 0.9


def test_lut_profile_model_is_scale_times_lut_sum():
    from pomonag_edge.data.mbv3 import reference_lut

    p = _lut_profile(reference_lut("note10"), (160, 224))
    archs = SPACE.sample(MIN_POWER_FIT - 1, seed=2)  # too few timings to fit a power too
    lut_ms = lut_cost(SPACE, p).ms(archs)
    p.calibration = [{"arch": str(a), "latency_ms": 1.7 * v * (1 + 0.01 * i)} for i, (a, v) in
                     enumerate(zip(archs, lut_ms))]
    state = LM.fit_profile_model(SPACE, p)
    assert state["kind"] == LutModel.kind and state["lut_power"] == 1.0
    p.latency_model = state
    model = latency_model_for(SPACE, p)
    others = SPACE.sample(5, seed=9)
    np.testing.assert_allclose(model.predict_ms(others) / lut_cost(SPACE, p).ms(others),
                               np.exp(state["lut_scale_log"]))
    assert 1.7 < np.exp(state["lut_scale_log"]) < 1.8
    x = torch.from_numpy(SPACE.encode(others))
    np.testing.assert_allclose(model.log_ms_torch(x).exp().numpy(), model.predict_ms(others), rtol=1e-5)


def test_mbv3_lut_jobs_time_a_chain_and_a_lone_layer():
    from pomonag_edge.hardware import lut as L
    from pomonag_edge.hardware.backends import get_backend
    from pomonag_edge.hardware.timing import Protocol

    tiny = Protocol(name="tiny", warmup_ms=0, warmup_runs=1, min_runs=3, min_time_s=0.0, floor_runs=3,
                    max_cv=10, retries=0, settle_s=0)
    jobs = SPACE.lut_plan("imagenet", quick=False, resolutions=(128,)).jobs
    assert len(jobs) == len(SPACE.lut_signatures("imagenet", (128,)))
    assert {j.method for j in jobs} == {"chain", "alone"}
    assert {j.method for j in SPACE.lut_plan("imagenet", quick=True, resolutions=(128,)).jobs} == {"alone"}
    backend = get_backend("onnxruntime", threads=1)
    chain = next(j for j in jobs if j.method == "chain" and "input:8x8" in j.name)
    lone = next(j for j in jobs if j.name.startswith("Logits"))
    for job in (chain, lone):
        (stats,) = L.measure_job(job, backend, tiny).values()
        assert stats["median_ms"] >= 0 and stats["runs"] >= 3


@pytest.mark.slow  # ~6 s CPU: exports and settles on the heaviest net twice
def test_profile_mbv3_refused_only_for_real_mistakes(tmp_path):
    from pomonag_edge.profiler import ProfileRequest, build_profile

    r = CliRunner().invoke(cli, ["profile", "--space", "mbv3", "--dataset", "cifar10",
                                 "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "unknown dataset 'cifar10' for mbv3" in r.output
    with pytest.raises(UserError, match="resolution 130"):
        build_profile(ProfileRequest(space="mbv3", resolutions=(130,), out=tmp_path / "q.json"))
    # a started mbv3 profile resumes: interrupt after two LUT entries, continue for two more
    from pomonag_edge.hardware.timing import Protocol

    tiny = Protocol(name="tiny", warmup_ms=0, warmup_runs=1, min_runs=3, min_time_s=0.0, floor_runs=3,
                    max_cv=10, retries=0, settle_s=0)
    req = ProfileRequest(space="mbv3", quick=True, calibration=3, resolutions=(128,), protocol=tiny,
                         out=tmp_path / "m.json")

    def stop_after(n):
        def progress(stage, done, total, loss=None, detail=None):
            if detail and stage == "lut":
                progress.count += 1
                if progress.count >= n:
                    raise KeyboardInterrupt
        progress.count = 0
        return progress

    with pytest.raises(KeyboardInterrupt):
        build_profile(req, progress=stop_after(2))
    from pomonag_edge.profile import load_profile

    assert len(load_profile(tmp_path / "m.json").lut) == 2
    with pytest.raises(KeyboardInterrupt):
        build_profile(req, progress=stop_after(2))
    saved = load_profile(tmp_path / "m.json")
    assert len(saved.lut) == 4 and saved.runtime["lut_resolutions"] == [128]


def test_lut_profile_model_fits_a_power_when_it_predicts_better():
    from pomonag_edge.data.mbv3 import reference_lut

    p = _lut_profile(reference_lut("note10"), (160, 224))
    archs = SPACE.sample(12, seed=4)
    lut_ms = lut_cost(SPACE, p).ms(archs)
    noise = 1 + 0.01 * np.sin(np.arange(len(archs)))
    p.calibration = [{"arch": str(a), "latency_ms": 2.0 * v ** 0.6 * e} for a, v, e in zip(archs, lut_ms, noise)]
    state = LM.fit_profile_model(SPACE, p)
    assert state["form"] == "scale x LUT-cost ^ power" and abs(state["lut_power"] - 0.6) < 0.05
    assert state["relative_error"] < 0.03
