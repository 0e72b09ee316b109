"""Predictors: differentiable features, few-shot latency adaptation, serialisation, accuracy predictor."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from pomonag_edge.data import nb201_accuracy, nb201_latency_ms
from pomonag_edge.predictors import latency_model_for, load_accuracy_predictor
from pomonag_edge.spaces.nb201.accuracy import make_accuracy_net, train_accuracy_checkpoint, training_indices
from pomonag_edge.spaces.nb201.features import soft_live
from pomonag_edge.predictors.fewshot import PROXIES, sibling_fit
from pomonag_edge.predictors.latency import fit_calibration
from pomonag_edge.predictors.latency_model import HeadModel, _soft_table_lookup, fit_lut_scale
from pomonag_edge.predictors.latency_pretrain import PretrainedEmbedding, load_pretrained
from pomonag_edge.spaces.lut import lut_cost
from pomonag_edge.spaces import get_space
from pomonag_edge.profile import Profile, reference_profile
from pomonag_edge.spaces.nb201 import SPACE, live_edges

ALL = list(SPACE.enumerate())
HELD_OUT = "embedded-tpu-edge-tpu-int8"  # an accelerator unlike the CPUs/GPUs/phones it is pretrained on


@pytest.fixture(scope="module")
def tiny_pretrained():
    """An embedding pretrained in ~2 s on 8 devices that exclude HELD_OUT."""
    torch.set_num_threads(1)
    names = ["1080ti_1", "2080ti_256", "gold_6240", "pixel3", "samsung_s7", "silver_4114",
             "desktop-cpu-core-i7-7820x-fp32", "mobile-gpu-snapdragon-855-adreno-640-int8"]
    ms = np.stack([nb201_latency_ms(n) for n in names], axis=1)
    return PretrainedEmbedding.from_tables(SPACE, ALL, ms, names, steps=200, batch=512, dim=8, hidden=32, seed=0)


def _shots_and_rest(table, n, seed):
    pool = np.where(np.isfinite(table) & np.array([SPACE.is_valid(a) for a in ALL]))[0]
    shots = np.random.default_rng(seed).choice(pool, size=n, replace=False)
    return shots, np.setdiff1d(pool, shots)


def test_soft_live_is_exact_on_one_hot_and_differentiable():
    x = torch.from_numpy(SPACE.encode(ALL))
    assert np.array_equal(soft_live(x).numpy(), np.array([live_edges(a) for a in ALL], dtype=np.float32))
    relaxed = torch.softmax(torch.randn(4, 6, 5), dim=-1).requires_grad_()
    soft_live(relaxed).sum().backward()
    assert relaxed.grad is not None and torch.isfinite(relaxed.grad).all()


def test_adaptation_beats_pretrained_prior_on_held_out_device(tiny_pretrained):
    table = nb201_latency_ms(HELD_OUT)
    shots, rest = _shots_and_rest(table, 10, seed=0)
    adapted = fit_calibration(SPACE, [ALL[i] for i in shots], table[shots], tiny_pretrained)
    state = adapted.to_state()
    prior = HeadModel(tiny_pretrained, tiny_pretrained.prior_mean, 0.0, {})
    rest_archs = [ALL[i] for i in rest]
    sp_adapted = spearmanr(adapted.predict_ms(rest_archs), table[rest])[0]
    sp_prior = spearmanr(prior.predict_ms(rest_archs), table[rest])[0]
    mape_adapted = np.mean(np.abs(adapted.predict_ms(rest_archs) / table[rest] - 1))
    mape_prior = np.mean(np.abs(prior.predict_ms(rest_archs) / table[rest] - 1))
    assert sp_adapted > sp_prior + 0.05, (sp_adapted, sp_prior)
    assert mape_adapted < mape_prior
    assert sp_adapted > 0.8
    # the stated error is a leave-one-out quantile, a real number in a sane range
    assert 0 < adapted.relative_error < 1 and len(state["cv_relative_errors"]) == 10
    assert np.allclose(adapted.margin_ms([10.0, 20.0]), [10 * adapted.relative_error, 20 * adapted.relative_error])


def test_sibling_fit_finds_the_device_the_timings_came_from(tiny_pretrained):
    """Timings that are an affine map (in log space) of one training table pick that table out."""
    tables = tiny_pretrained.sibling_tables()
    shots, _ = _shots_and_rest(nb201_latency_ms("pixel3"), 10, seed=4)
    j = tiny_pretrained.devices.index("gold_6240")
    y = 0.8 * tables[shots, j] + 1.5 + np.random.default_rng(0).normal(0, 0.01, 10)
    coef, shift = sibling_fit(tables[shots], y)
    others = np.delete(coef, j)
    assert abs(coef[j] - 0.8) < 0.1 and abs(shift - 1.5) < 0.3 and np.abs(others).sum() < 0.2, (coef, shift)


def test_sibling_fit_reaches_a_device_between_two_training_devices(tiny_pretrained):
    """Timings that mix two training tables are fitted by the two-sibling candidates, to near noise level."""
    tables = tiny_pretrained.sibling_tables()
    shots, rest = _shots_and_rest(nb201_latency_ms("pixel3"), 10, seed=4)
    i, k = tiny_pretrained.devices.index("gold_6240"), tiny_pretrained.devices.index("1080ti_1")
    truth = 0.6 * tables[:, i] + 0.5 * tables[:, k] - 0.3
    y = truth[shots] + np.random.default_rng(1).normal(0, 0.01, 10)
    coef, shift = sibling_fit(tables[shots], y)
    err = np.abs(tables[rest] @ coef + shift - truth[rest])
    best_single = min(np.abs(np.polyval(np.polyfit(tables[shots, j], y, 1), tables[rest, j]) - truth[rest]).mean()
                      for j in range(tables.shape[1]))
    assert err.mean() < 0.5 * best_single, (err.mean(), best_single)


def test_soft_table_lookup_is_exact_on_one_hot_and_differentiable():
    values = np.random.default_rng(0).normal(size=len(ALL))
    some = ALL[::131]
    x = torch.from_numpy(SPACE.encode(some)).double()
    assert np.allclose(_soft_table_lookup(SPACE, values, x).numpy(), values[[SPACE.index(a) for a in some]])
    relaxed = torch.softmax(torch.randn(3, 6, 5, dtype=torch.float64), dim=-1).requires_grad_()
    out = _soft_table_lookup(SPACE, values, relaxed)
    out.sum().backward()
    assert torch.isfinite(relaxed.grad).all() and relaxed.grad.abs().sum() > 0


def test_profile_model_serialisation_round_trip(tiny_pretrained):
    table = nb201_latency_ms("silver_4210r")
    shots, rest = _shots_and_rest(table, 8, seed=1)
    profile = Profile(name="x", calibration=[{"arch": str(ALL[i]), "latency_ms": float(table[i])} for i in shots])
    model = fit_calibration(SPACE, [ALL[i] for i in shots], table[shots], tiny_pretrained, profile)
    state = model.to_state()
    profile.latency_model = json.loads(json.dumps(state))
    loaded = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    again = latency_model_for(SPACE, loaded, tiny_pretrained)
    some = [ALL[i] for i in rest[:500]]
    assert np.allclose(again.predict_ms(some), model.predict_ms(some), rtol=1e-12)
    assert again.relative_error == model.relative_error
    # a stored model made with another embedding is refitted from the calibration, not trusted
    loaded.latency_model = dict(state, embedding={"checkpoint": "old.pt", "sha256": "0" * 16},
                                coef=[0.0] * len(state["coef"]))
    assert np.allclose(latency_model_for(SPACE, loaded, tiny_pretrained).predict_ms(some), model.predict_ms(some))


def test_lut_profile_is_scaled_lut_sum_and_soft_sum_matches_exact_sum(tiny_pretrained):
    """With a LUT the model is scale x LUT-sum; its relaxed form equals the exact sum on one-hot input."""
    keys = SPACE.lut_signatures("cifar10")
    lut = {k: {"median_ms": 0.01 + 0.001 * (i % 7)} for i, k in enumerate(keys)}
    table = nb201_latency_ms("gold_6240")
    shots, _ = _shots_and_rest(table, 10, seed=2)
    profile = Profile(name="lut", dataset="cifar10", lut=lut,
                      calibration=[{"arch": str(ALL[i]), "latency_ms": float(table[i])} for i in shots])
    model = fit_calibration(SPACE, [ALL[i] for i in shots], table[shots], tiny_pretrained, profile)
    state = model.to_state()
    assert state["kind"] == "lut-scale" and len(state["cv_relative_errors"]) == 10
    some = ALL[::97]
    exact = lut_cost(SPACE, profile).ms(some)
    assert np.allclose(model.predict_ms(some), np.exp(state["lut_scale_log"]) * exact ** state["lut_power"])
    profile.latency_model = state  # the stored state loads back as the same model
    assert np.allclose(latency_model_for(SPACE, profile, tiny_pretrained).predict_ms(some), model.predict_ms(some))
    soft = lut_cost(SPACE, profile).ms_torch(torch.from_numpy(SPACE.encode(some)).double()).numpy()
    assert np.allclose(exact, soft)
    with torch.no_grad():
        log_ms = model.log_ms_torch(torch.from_numpy(SPACE.encode(some)).double()).numpy()
    assert np.allclose(np.exp(log_ms), model.predict_ms(some), rtol=1e-5)


def test_reference_profile_is_exact_lookup_with_model_form():
    model = latency_model_for(SPACE, reference_profile("pixel3"))
    table = nb201_latency_ms("pixel3")
    assert np.array_equal(model.predict_ms(ALL[:300]), table[:300])
    assert model.relative_error == 0.0 and np.all(model.margin_ms([3.0]) == 0)
    # the differentiable form ranks the device's nets well too (it is its pretrained head)
    valid = [a for a in ALL[::5] if SPACE.is_valid(a)]
    assert spearmanr(model.model_ms(valid), table[[SPACE.index(a) for a in valid]])[0] > 0.9


def test_brpnas_reference_falls_back_to_model_for_unmeasured_nets():
    name = "desktop-cpu-core-i7-7820x-fp32"
    table = nb201_latency_ms(name)
    missing = [ALL[i] for i in np.where(~np.isfinite(table))[0][:5]]
    pred = latency_model_for(SPACE, reference_profile(name)).predict_ms(missing)
    assert np.all(np.isfinite(pred)) and np.all(pred > 0)


def test_shipped_latency_checkpoint_covers_all_devices_and_is_small():
    pre = load_pretrained(SPACE)
    assert len(pre.devices) == 32 and pre.heads.shape[0] == 32
    from pomonag_edge.checkpoints import checkpoint_path

    assert checkpoint_path("latency_nb201.pt").stat().st_size < 2_000_000


def test_shipped_accuracy_predictor_held_out_quality_and_record():
    pred = load_accuracy_predictor(get_space("nb201"))
    idx = pred.train_indices
    assert len(idx) <= 0.1 * 15625 and np.array_equal(idx, training_indices(pred.meta["seed"], pred.meta["fraction"]))
    test = np.setdiff1d(np.arange(15625), idx)[::10]
    for dataset in ("cifar10", "cifar100", "imagenet16-120"):
        truth = nb201_accuracy(dataset)[test]
        guess = pred.predict([ALL[i] for i in test], dataset)
        assert spearmanr(guess, truth)[0] > 0.9
        assert abs(np.median(guess) - np.median(truth)) < 5  # percent, same scale as the table


def test_shipped_accuracy_predictor_is_calibrated_at_the_top():
    # the generator ranks by predicted percent: the best nets must not be predicted far above any real net
    pred = load_accuracy_predictor(get_space("nb201"))
    assert pred.module.members > 1 and pred.module.knots > 0
    for dataset in ("cifar10", "cifar100", "imagenet16-120"):
        assert abs(pred.predict(ALL, dataset).max() - nb201_accuracy(dataset).max()) < 1.5  # percent


def test_accuracy_module_trains_and_conditions_on_dataset():
    torch.set_num_threads(1)
    ckpt = train_accuracy_checkpoint(SPACE, seed=3, steps=40, hidden=16)
    net = make_accuracy_net(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    x = torch.from_numpy(SPACE.encode(ALL[:8])).requires_grad_()
    a10, a100 = net(x, "cifar10"), net(x, "cifar100")
    assert a10.shape == (8,) and not torch.allclose(a10, a100)
    a10.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_lut_scale_is_robust_to_one_noisy_timing():
    lut = np.linspace(0.5, 3.0, 20)
    measured = 1.3 * lut
    measured[4] *= 3.0  # one timing caught in a burst of load
    scale, errors = fit_lut_scale(lut, measured)
    assert np.exp(scale) == pytest.approx(1.3)
    assert errors[4] == pytest.approx(2 / 3)  # predicted 1.3 x LUT, measured 3.9 x LUT
    assert np.all(np.delete(errors, 4) < 1e-9)


def _macs_driven(power=0.9, seed=0):
    """A synthetic device unlike every shipped table: ms ~ MACs^power with 3% log-normal noise."""
    macs = np.array([max(SPACE.macs(a), 1) for a in ALL], dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0, 0.03, len(ALL))
    return 1e-6 * macs ** power * np.exp(noise), macs


def test_model_falls_back_to_cost_proxies_on_a_macs_driven_device(tiny_pretrained):
    """Timings that only MACs explain: the proxies take the weight and the model ranks as well as MACs do."""
    table, macs = _macs_driven()
    shots, rest = _shots_and_rest(table, 10, seed=0)
    model = fit_calibration(SPACE, [ALL[i] for i in shots], table[shots], tiny_pretrained)
    weights = {c["name"]: c["weight"] for c in model.to_state()["candidates"]}
    assert sum(w for n, w in weights.items() if n in PROXIES) > 0.9, weights
    sp_model = spearmanr(model.predict_ms([ALL[i] for i in rest]), table[rest])[0]
    assert sp_model >= spearmanr(macs[rest], table[rest])[0] - 0.01


def test_model_keeps_the_embedding_on_a_device_like_the_tables(tiny_pretrained):
    """Timings a sibling table explains: the tables and embedding keep the weight, not the proxies."""
    table = nb201_latency_ms(HELD_OUT)
    shots, _ = _shots_and_rest(table, 10, seed=0)
    model = fit_calibration(SPACE, [ALL[i] for i in shots], table[shots], tiny_pretrained)
    weights = {c["name"]: c["weight"] for c in model.to_state()["candidates"]}
    assert sum(w for n, w in weights.items() if n in ("head", "siblings", "head+siblings")) > 0.5, weights


def test_per_net_margin_is_wider_for_nets_unlike_the_timed_ones(tiny_pretrained):
    """Timed nets use 1x1 convs and skips only: nets full of 3x3 convs and pools get a wider sigma."""
    table = nb201_latency_ms("silver_4210r")  # not among the tiny embedding's devices
    near_ops = {"nor_conv_1x1", "skip_connect", "none"}
    ops = lambda a: {part.split("~")[0] for part in str(a).replace("+", "").split("|") if part}  # noqa: E731
    pool = [i for i, a in enumerate(ALL) if SPACE.is_valid(a) and ops(a) <= near_ops]
    far = [i for i, a in enumerate(ALL) if SPACE.is_valid(a) and "nor_conv_1x1" not in ops(a)
           and "nor_conv_3x3" in ops(a) and "avg_pool_3x3" in ops(a)]
    shots = np.random.default_rng(0).choice(pool, 10, replace=False)
    model = fit_calibration(SPACE, [ALL[i] for i in shots], table[shots], tiny_pretrained)
    near_sigma = model.log_sigma([ALL[i] for i in pool])
    far_sigma = model.log_sigma([ALL[i] for i in far])
    assert np.median(far_sigma) > 1.2 * np.median(near_sigma), (np.median(far_sigma), np.median(near_sigma))
    q = model.quantile_ms([ALL[i] for i in far[:5]], 0.9)
    assert np.all(q > model.predict_ms([ALL[i] for i in far[:5]]))
    assert np.all(model.quantile_ms([ALL[i] for i in far[:5]], 0.95) > q)


def test_an_old_model_state_is_refitted_on_load(tiny_pretrained):
    table = nb201_latency_ms("silver_4210r")
    shots, rest = _shots_and_rest(table, 8, seed=1)
    profile = Profile(name="x", calibration=[{"arch": str(ALL[i]), "latency_ms": float(table[i])} for i in shots])
    model = fit_calibration(SPACE, [ALL[i] for i in shots], table[shots], tiny_pretrained, profile)
    old = dict(model.to_state(), version=HeadModel.version - 1, coef=[0.0] * 4)
    assert HeadModel.from_state(tiny_pretrained, old) is None
    profile.latency_model = old
    some = [ALL[i] for i in rest[:50]]
    assert np.allclose(latency_model_for(SPACE, profile, tiny_pretrained).predict_ms(some), model.predict_ms(some))


def _two_candidates(y, spread, residual):
    """Two equally weighted candidates whose held-out predictions straddle ``y + residual`` by +-``spread``."""
    lev = {"loo": np.zeros(len(y)), "columns": [0], "gram_inv": [[0.0]]}
    return [{"name": n, "coef": np.zeros(1), "loo": y + residual + s * spread, "lev": lev} for n, s in
            (("a", 1.0), ("b", -1.0))]


def test_kappa_narrows_a_disagreeing_blend_only_as_far_as_the_timings_justify():
    """Candidates that disagree while their blend is exact: the per-net sigma (which counts their disagreement)
    narrows below the model's own variance, but the model's variance still counts as KAPPA_PRIOR_TIMINGS
    timings, so 10 lucky timings cannot shrink it to nothing."""
    from pomonag_edge.predictors.fewshot import KAPPA_PRIOR_TIMINGS, blend_candidates

    y = np.log(np.linspace(2.0, 9.0, 10))
    # z = 1: the Student t inflation only
    t_factor = blend_candidates(_two_candidates(y, 0.0, 0.1), np.array([0.5, 0.5]), y)["kappa"]
    assert t_factor == pytest.approx(1.383 / 1.2816, abs=1e-3)  # Student t, 9 degrees of freedom, over normal
    exact = blend_candidates(_two_candidates(y, 0.2, 0.0), np.array([0.5, 0.5]), y)["kappa"]
    assert exact == pytest.approx(t_factor * np.sqrt(KAPPA_PRIOR_TIMINGS / (KAPPA_PRIOR_TIMINGS + len(y))))
