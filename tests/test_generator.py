"""The diffusion pieces: SDE, loss, sampler determinism, guidance direction, budget respected."""

import numpy as np
import pytest
import torch

from pomonag_edge.generator.guidance import make_guidance, make_tilted_guidance, trade_off_directions
from pomonag_edge.generator.losses import dsm_loss
from pomonag_edge.generator.noise_aware import NoiseAwarePredictor, PosteriorMeanPredictor, cached_distill
from pomonag_edge.generator.sampler import sample
from pomonag_edge.generator.score_net import ScoreTransformer, score_fn_from
from pomonag_edge.generator.sde import VPSDE
from pomonag_edge.generator.train import load_checkpoint
from pomonag_edge.predictors import table_predictors
from pomonag_edge.problem import OBJECTIVES, SearchProblem
from pomonag_edge.selection import run_search
from pomonag_edge.strategies import make_strategy
from pomonag_edge.spaces.nb201 import SPACE
from pomonag_edge.units import Budget

torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("POMONAG_EDGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(None, SPACE)


@pytest.fixture(scope="module")
def tables():
    """Measured pixel3 latency and cifar100 accuracy of every net, and the exact noise-aware predictor of them."""
    preds = table_predictors(SPACE, "cifar100", "pixel3")
    problem = SearchProblem(SPACE, "cifar100", Budget(), preds)
    archs = list(SPACE.enumerate())
    s = problem.evaluate(archs, count=False)
    Y = np.stack([s[k] for k in OBJECTIVES], axis=1)
    return preds, PosteriorMeanPredictor(VPSDE(), SPACE.encode(archs), Y, OBJECTIVES), SPACE.encode(archs), Y


def test_posterior_mean_is_exact():
    """Equals the clean values at t -> 0 and the brute-force posterior over all 15,625 nets at t = 0.2."""
    X = SPACE.encode(list(SPACE.enumerate()))
    Y = np.random.default_rng(0).normal(size=(len(X), 2))
    sde = VPSDE()
    m = PosteriorMeanPredictor(sde, X, Y, ("a", "b"))
    Xt, Yt = torch.as_tensor(X), torch.as_tensor(Y, dtype=torch.float32)
    idx = torch.arange(0, len(X), 997)
    with torch.no_grad():
        assert torch.allclose(m.predict(Xt[idx], torch.full((len(idx),), 1e-3)), Yt[idx], atol=1e-4)
        t = torch.full((4,), 0.2)
        x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(0))
        alpha, std = sde.marginal_prob(torch.ones(4), t)
        logits = alpha[0] * (x.flatten(1) @ Xt.flatten(1).T) / std[0] ** 2
        assert torch.allclose(m.predict(x, t), torch.softmax(logits, 1) @ Yt, atol=1e-4)
    with pytest.raises(ValueError, match="every one of the 5\\^6"):
        PosteriorMeanPredictor(sde, X[:100], Y[:100], ("a", "b"))


@pytest.mark.slow
def test_distilled_predictor_learns_clean_objectives(tables):
    from scipy.stats import spearmanr

    _, _, X, Y = tables
    nap, info = cached_distill(VPSDE(), X, Y[:, 1:2], ("latency_ms",), steps=300)
    with torch.no_grad():
        pred = nap.predict(torch.as_tensor(X), torch.full((len(X),), 1e-3)).numpy()[:, 0]
    assert spearmanr(pred, Y[:, 1])[0] > 0.8 and not info["cached"]
    assert cached_distill(VPSDE(), X, Y[:, 1:2], ("latency_ms",), steps=300)[1]["cached"]


def test_vp_marginal_matches_closed_form():
    sde = VPSDE(0.1, 20.0)
    t = torch.tensor([0.0, 0.5, 1.0])
    mean, std = sde.marginal_prob(torch.ones(3, 6, 5), t)
    alpha = torch.exp(-0.5 * (0.1 * t + 0.5 * t**2 * 19.9))  # exp(-1/2 int_0^t beta)
    assert torch.allclose(mean[:, 0, 0], alpha) and torch.allclose(std, torch.sqrt(1 - alpha**2))
    assert std[0] == 0 and abs(float(std[-1]) - 1) < 1e-4  # data at t=0, N(0, I) at t=1


def test_dsm_loss_decreases_when_training_a_tiny_model():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    X = torch.as_tensor(SPACE.encode(SPACE.sample(512, 0)))
    model, sde = ScoreTransformer(6, 5, d_model=16, layers=1, heads=2), VPSDE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = float(dsm_loss(model, sde, X, generator=torch.Generator().manual_seed(1)))
    for _ in range(150):
        loss = dsm_loss(model, sde, X[torch.randint(512, (128,), generator=gen)], generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(dsm_loss(model, sde, X, generator=torch.Generator().manual_seed(1))) < 0.8 * first


def test_sampler_is_deterministic_given_a_seed(shipped):
    model, sde, _ = shipped
    score = score_fn_from(model, sde)
    seen = []

    def draw(seed):
        return sample(sde, score, (32, 6, 5), steps=20, generator=torch.Generator().manual_seed(seed),
                      progress=lambda d, t: seen.append((d, t)))

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert seen[-1] == (20, 20) and len(seen) == 60


def test_shipped_prior_mostly_valid_and_diverse(shipped):
    model, sde, meta = shipped
    x = sample(sde, score_fn_from(model, sde), (200, 6, 5), steps=meta.get("sampling_steps", 100),
               generator=torch.Generator().manual_seed(0))
    archs = SPACE.decode(x.numpy())
    assert np.mean([SPACE.is_valid(a) for a in archs]) >= 0.9
    assert len(set(archs)) >= 150  # the unguided prior does not collapse


def _guided_mean(shipped, nap, weights, index_values, seed=3, n=64):
    model, sde, _ = shipped
    g = make_guidance(nap, weights, scale=10.0) if weights else None
    x = sample(sde, score_fn_from(model, sde), (n, 6, 5), steps=40, guidance_fn=g,
               generator=torch.Generator().manual_seed(seed))
    return float(np.nanmean(index_values[[SPACE.index(a) for a in SPACE.decode(x.numpy())]]))


def test_guidance_moves_samples_the_right_way(shipped, tables):
    """Same seed, same prior noise: accuracy guidance raises measured accuracy, latency guidance lowers latency."""
    from pomonag_edge.data import nb201_accuracy, nb201_latency_ms

    _, nap, _, _ = tables
    acc, lat = nb201_accuracy("cifar100"), nb201_latency_ms("pixel3")
    assert _guided_mean(shipped, nap, {"accuracy": 1.0}, acc) > _guided_mean(shipped, nap, {}, acc) + 2.0
    assert _guided_mean(shipped, nap, {"latency_ms": 1.0}, lat) < _guided_mean(shipped, nap, {}, lat) - 1.0


def test_tilted_guidance_is_the_exact_tilted_score():
    """Equals grad log sum_i p(x_0 = i | x_t) exp(scale * J_i), brute force over all 15,625 nets; excluded nets
    drop to the floor weight."""
    X = SPACE.encode(list(SPACE.enumerate()))
    Y = np.random.default_rng(1).normal(size=(len(X), 2))
    sde = VPSDE()
    post = PosteriorMeanPredictor(sde, X, Y, ("accuracy", "latency_ms"))
    dirs = [{"accuracy": 1.0}, {"accuracy": 0.3, "latency_ms": 0.7}]
    assign = torch.tensor([0, 1, 1, 0])
    g = make_tilted_guidance(post, dirs, assign, {"latency_ms": 0.5}, scale=3.0, penalty=2.0, floor=-1e9)
    flat = np.ravel_multi_index(tuple(X.argmax(-1).T), (5,) * 6)  # the table's row of each net
    Xt, Z = torch.as_tensor(X[np.argsort(flat)], dtype=torch.float64), post.table.double()
    v = (Z[:, 1] - (0.5 - float(post.mean[1])) / float(post.std[1])).clamp_min(0)
    J = torch.stack([Z[:, 0], 0.3 * Z[:, 0] - 0.7 * Z[:, 1]], 1) - 2.0 * (v + v**2)[:, None]
    for tv in (0.8, 0.3, 0.05):
        x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_(True)
        t = torch.full((4,), tv)
        alpha, std = sde.marginal_prob(torch.ones(4), t)
        logp = torch.log_softmax(x * (alpha / std**2).double().reshape(-1, 1, 1), -1)
        joint = torch.einsum("nsc,msc->nm", logp, Xt)  # log p(x_0 = m | x_t) (factorised over slots)
        obj = torch.logsumexp(joint + 3.0 * J[:, assign].T, dim=1).sum()
        (want,) = torch.autograd.grad(obj, x)
        got = g(x.detach().float(), t)
        assert torch.allclose(got.double(), want, atol=1e-3 * float(want.abs().max()) + 1e-5), tv
    # excluding every net but one leaves that net's direction of pull at small t
    keep = 4321
    g = make_tilted_guidance(post, dirs[:1], torch.zeros(1, dtype=torch.long), scale=3.0,
                             exclude=np.delete(X, keep, axis=0))
    x = torch.zeros(1, 6, 5)
    assert (g(x, torch.full((1,), 0.5)).argmax(-1) == torch.as_tensor(X[keep]).argmax(-1)).all()


def test_perplexity_sets_how_many_nets_a_direction_spreads_over():
    from pomonag_edge.generator.guidance import _scale_for_perplexity

    J = torch.as_tensor(np.random.default_rng(0).normal(size=15625), dtype=torch.float64)
    J[:100] = float("-inf")  # excluded nets do not count
    for target in (8.0, 32.0):
        p = torch.softmax(_scale_for_perplexity(J, target) * J[100:], 0)
        assert float(torch.exp(-(p * p.log()).sum())) == pytest.approx(target, rel=1e-3)


def test_trade_off_directions_sweep_from_accuracy_to_cost():
    dirs = trade_off_directions({"accuracy": 1.0, "latency_ms": 0.5, "params": 0.1, "macs": 0.1}, 6, seed=0)
    assert len(dirs) == 6 and all(abs(sum(d.values()) - 1) < 1e-9 for d in dirs)
    assert dirs[0]["accuracy"] > 0.95 and dirs[-1]["accuracy"] < 0.2
    assert trade_off_directions({"accuracy": 1.0, "latency_ms": 0.0}, 3) == [{"accuracy": 1.0}] * 3
    assert dirs == trade_off_directions({"accuracy": 1.0, "latency_ms": 0.5, "params": 0.1, "macs": 0.1}, 6, seed=0)


def test_guidance_rejects_unknown_objective():
    nap = NoiseAwarePredictor((6, 5), ("accuracy", "latency_ms"))
    with pytest.raises(ValueError, match="predictor knows only"):
        make_guidance(nap, {"energy": 1.0})


@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_diffusion_search_respects_budget_with_margin(margin, tables):
    preds = tables[0]
    preds = type(preds)(preds.accuracy, preds.latency_ms, margin=margin, source=preds.source)
    problem = SearchProblem(SPACE, "cifar100", Budget.parse("8ms", "1M"), preds)
    strategy = make_strategy("diffusion", steps=60)
    result = run_search(problem, strategy, samples=128, num=10, seed=0)
    assert result.selected, result.stats
    for row in result.selected:
        assert row["latency_ms"] * (1 + margin) <= 8.0 + 1e-9 and row["params"] <= 1e6
        assert row["feasible"] and row["front"] == 0
    accs = [r["accuracy"] for r in result.selected]
    assert accs == sorted(accs, reverse=True)
    assert len({SPACE.canonical(SPACE.parse(r["arch"])) for r in result.selected}) == len(result.selected)


@pytest.mark.slow
def test_tilted_diffusion_fills_the_call_budget_and_finds_the_best_feasible_net(tables):
    """Rounds steer away from nets already proposed, so up to ``samples`` distinct nets come back; the
    accuracy-first directions reach the table's best net within budget (what exhaustive returns). The exact
    posterior reads the predictors' value of every net, and the call count says so."""
    problem = SearchProblem(SPACE, "cifar100", Budget.parse("8ms"), tables[0])
    strategy = make_strategy("diffusion", steps=40)
    got = run_search(problem, strategy, samples=96, num=1, seed=0)
    assert got.stats["proposed"] == got.stats["valid"] and got.stats["predictor_calls"] == SPACE.size()
    assert 0.9 * 96 <= got.stats["proposed"] <= 96 and strategy.info["rounds"] <= 3
    best = run_search(problem, make_strategy("exhaustive"), num=1).selected[0]
    assert got.selected[0]["accuracy"] == pytest.approx(best["accuracy"], abs=1e-3)


def test_pretrain_generator_command_is_reproducible(tmp_path):
    import json

    from click.testing import CliRunner

    from pomonag_edge.cli import cli

    args = ["pretrain", "generator", "--steps", "6", "--batch", "32", "--d-model", "16", "--layers", "1", "--seed", "5"]
    for name in ("a", "b"):
        r = CliRunner().invoke(cli, args + ["--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["training"]["seed"] == 5 and meta["model"]["d_model"] == 16 and meta["sde"]["kind"] == "vp"
    model, sde, _ = load_checkpoint(tmp_path / "a.pt", SPACE)
    assert model(torch.zeros(2, 6, 5), torch.ones(2)).shape == (2, 6, 5)
