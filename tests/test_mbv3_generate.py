"""MobileNetV3 generation and export: depth masking, the grouped score network, distilled guidance, NSGA-II
over categorical genes, the generate CLI and an ONNX export at the arch's own resolution.

The search tests use OFA's accuracy predictor and the shipped i7-8700K LUT sum as the latency predictor (a
real, measured table covering every resolution), so they do not depend on any profile."""

import json
import warnings

import numpy as np
import pytest
import torch

from pomonag_edge.data.mbv3 import reference_lut
from pomonag_edge.spaces.base import from_genes, gene_choices, to_genes
from pomonag_edge.generator.losses import dsm_loss
from pomonag_edge.generator.noise_aware import PosteriorFeatures
from pomonag_edge.generator.sampled import DISTILL_SEED
from pomonag_edge.generator.score_net import GroupedScoreTransformer, build_score_model
from pomonag_edge.generator.sde import VPSDE
from pomonag_edge.generator.train import load_checkpoint, save_checkpoint, train_score_model
from pomonag_edge.predictors import load_accuracy_predictor
from pomonag_edge.spaces import get_space
from pomonag_edge.problem import Predictors, SearchProblem
from pomonag_edge.selection import run_search
from pomonag_edge.strategies import make_strategy
from pomonag_edge.spaces.mbv3 import SPACE
from pomonag_edge.spaces.mbv3.arch import lut_sum_ms
from pomonag_edge.spaces.nb201 import SPACE as NB201
from pomonag_edge.units import Budget

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:.*outside 160..224")


DISTILL_NETS = 256  # the product distills from 2,048 nets; fewer keep these tests fast


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("POMONAG_EDGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def preds():
    lut, acc = reference_lut("i7-8700k"), load_accuracy_predictor(get_space("mbv3"))
    return Predictors(accuracy=lambda archs: acc.predict(archs, "imagenet", warn=False),
                      latency_ms=lambda archs: np.array([lut_sum_ms(a, lut) for a in archs]), margin=0.05)


def diffusion(**kw):
    kw.setdefault("distill_steps", 200)
    kw.setdefault("distill_nets", DISTILL_NETS)
    kw.setdefault("steps", 40)
    return make_strategy("diffusion", **kw)


def test_unused_slots_do_not_change_decode_features_or_loss():
    archs = SPACE.sample(64, 1)
    x = SPACE.encode(archs)
    unused = 1 - SPACE.slot_mask(x)
    noisy = x + unused * np.random.default_rng(0).normal(size=x.shape).astype(np.float32) * 3
    assert SPACE.decode(noisy) == archs
    # the noise-aware predictors' features: equal to the clean encoding at t -> 0, blind to unused slots
    f = PosteriorFeatures(VPSDE(), SPACE.categorical_groups(), SPACE.slot_usage())
    t = torch.full((64,), 1e-3)
    assert torch.allclose(f(torch.as_tensor(x), t), torch.as_tensor(x), atol=1e-5)
    assert torch.allclose(f(torch.as_tensor(noisy), t), torch.as_tensor(x), atol=1e-5)
    # the masked training loss ignores what the network says about unused slots
    net = GroupedScoreTransformer([6] * 20 + [3] * 5 + [25])
    mask = torch.as_tensor(SPACE.slot_mask(x))

    class Shifted(torch.nn.Module):
        def forward(self, xt, tt):
            return net(xt, tt) + (1 - mask) * 100.0

    losses = [dsm_loss(m, VPSDE(), torch.as_tensor(x), generator=torch.Generator().manual_seed(0), mask=mask)
              for m in (net, Shifted())]
    assert torch.allclose(losses[0], losses[1])


def test_genes_round_trip_both_spaces():
    archs = SPACE.sample(20, 2)
    genes = to_genes(SPACE, SPACE.encode(archs))
    assert genes.shape == (20, 46) and (genes < gene_choices(SPACE)).all()
    assert SPACE.decode(from_genes(SPACE, genes)) == archs
    nb = NB201.sample(20, 2)
    enc = NB201.encode(nb)
    assert (to_genes(NB201, enc) == enc.argmax(-1)).all() and (from_genes(NB201, enc.argmax(-1)) == enc).all()


def test_grouped_score_net_round_trips_through_a_checkpoint(tmp_path):
    model, _, meta = train_score_model(SPACE, steps=3, batch=8, d_model=16, layers=1, archs=SPACE.sample(300, 0))
    assert meta["model"]["kind"] == "grouped" and meta["training"]["nets"] == 300
    save_checkpoint(model, meta, tmp_path / "g")
    again, _, _ = load_checkpoint(tmp_path / "g.pt", SPACE)
    x, t = torch.randn(5, 160), torch.rand(5)
    with torch.no_grad():
        assert torch.equal(model(x, t), again(x, t)) and model(x, t).shape == (5, 160)
    assert isinstance(build_score_model(json.loads((tmp_path / "g.json").read_text())["model"]),
                      GroupedScoreTransformer)


def test_shipped_checkpoint_is_small_and_says_how_it_was_made():
    from pomonag_edge.generator.train import shipped_checkpoint

    pt = shipped_checkpoint(SPACE)
    assert pt.stat().st_size < 2e6
    meta = json.loads(pt.with_suffix(".json").read_text())
    assert meta["space"] == "mbv3" and meta["training"]["seed"] == 0 and meta["model"]["kind"] == "grouped"


@pytest.mark.slow
def test_sampler_is_deterministic_and_counts_distillation(preds):
    a = run_search(SearchProblem(SPACE, "imagenet", Budget(), preds), diffusion(), samples=32, num=5, seed=3)
    b = run_search(SearchProblem(SPACE, "imagenet", Budget(), preds), diffusion(), samples=32, num=5, seed=3)
    c = run_search(SearchProblem(SPACE, "imagenet", Budget(), preds), diffusion(), samples=32, num=5, seed=4)
    assert a.candidates == b.candidates and a.candidates != c.candidates
    # the nets the noise-aware predictor was distilled from are predictor calls too, and join the candidates
    distilled = SPACE.sample(DISTILL_NETS, DISTILL_SEED)
    assert a.candidates[-DISTILL_NETS:] == distilled and a.stats["proposed"] == 32 + DISTILL_NETS
    assert a.stats["predictor_calls"] == len(a.candidates) >= DISTILL_NETS


@pytest.mark.slow
def test_guidance_moves_samples_the_right_way(preds):
    def mean_of(weights, key):
        problem = SearchProblem(SPACE, "imagenet", Budget(), preds)
        guided = diffusion(weights=weights, use_budget=False, scale=10.0).propose(problem, 64, 0)[:64]
        return float(np.mean(problem.evaluate(guided, count=False)[key]))

    none = {"accuracy": 0.0, "latency": 0.0, "params": 0.0, "macs": 0.0}
    assert mean_of({**none, "accuracy": 1.0}, "accuracy") > mean_of(none, "accuracy") + 0.5
    assert mean_of({**none, "latency": 1.0}, "latency_ms") < 0.8 * mean_of(none, "latency_ms")


@pytest.mark.slow
def test_budget_respected_by_diffusion_and_nsga2(preds):
    lat = preds.latency_ms(SPACE.sample(300, 9))
    budget = Budget(max_latency_ms=float(np.percentile(lat, 25)))
    for strat, samples in ((diffusion(), 128), (make_strategy("nsga2"), 300)):
        problem = SearchProblem(SPACE, "imagenet", budget, preds)
        res = run_search(problem, strat, samples=samples, num=5, seed=0)
        assert res.selected, strat.name
        assert all(r["feasible"] and r["latency_ms_with_margin"] <= budget.max_latency_ms for r in res.selected)
        if strat.name == "nsga2":
            assert res.stats["predictor_calls"] == samples


@pytest.mark.slow
def test_export_mbv3_at_its_resolution(tmp_path):
    from pomonag_edge.export import ExportOptions, export_run
    from pomonag_edge.profile import Profile

    arch = SPACE.sample(1, 5)[0]
    arch = type(arch)(arch.ks, arch.e, arch.d, 128, arch.w)
    profile = Profile(name="here", space="mbv3", dataset="imagenet", runtime={"backend": "onnxruntime"})
    profile.save(tmp_path / "p.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "pareto.json").write_text(json.dumps([{"arch": str(arch), "accuracy": 75.0, "latency_ms": 5.0,
                                                  "feasible": True}]))
    (run / "manifest.json").write_text(json.dumps({
        "schema": "pomonag-edge/run", "schema_version": 1, "space": "mbv3", "dataset": "imagenet",
        "profile": {"spec": str(tmp_path / "p.json")},
        "budget": {"max_latency_ms": 1000.0}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export_run(run, ExportOptions(top=1, measure=False, feedback=False))
    net = report["nets"][0]
    assert net["files"]["onnx"]["input_shape"] == [1, 3, 128, 128]
    assert net["checks"][0]["passed"] and net["status"] == "checked" and report["summary"]["ok"]
    assert net["measured"] == {}
    # a reference profile's device is never here: timed on this machine for information, not judged
    (run / "manifest.json").write_text(json.dumps({
        "schema": "pomonag-edge/run", "schema_version": 1, "space": "mbv3", "dataset": "imagenet",
        "profile": {"spec": "v100_1", "reference": "v100_1"},
        "budget": {"max_latency_ms": 0.001}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export_run(run, ExportOptions(top=1, quick=True))
    net = report["nets"][0]
    assert net["measured"]["onnxruntime"]["median_ms"] > 0.001 and net["status"] == "checked"
    assert report["settings"]["measured_for_information"] and report["summary"]["ok"] and report["feedback"] is None
    assert any("for information only" in n for n in report["notes"])


@pytest.mark.slow
def test_generate_mbv3_product_path(tmp_path):
    """The product path: the v100_1 reference profile's latency model, OFA's predictor, the shipped generator
    (fewer sampling and distillation steps than the CLI's defaults; the same code path)."""
    from click.testing import CliRunner

    from pomonag_edge.cli import cli
    from pomonag_edge.generate import generate_run

    out = tmp_path / "run"
    generate_run(space="mbv3", profile="v100_1", max_latency="10ms", num=3, samples=32, out=out,
                 strategy_options={"steps": 20, "distill_steps": 150, "distill_nets": DISTILL_NETS})
    rows = json.loads((out / "pareto.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert 1 <= len(rows) <= 3 and manifest["space"] == "mbv3" and manifest["dataset"] == "imagenet"
    assert all(r["feasible"] and r["latency_ms_with_margin"] <= 10.0 for r in rows)
    assert [SPACE.parse(r["arch"]) for r in rows] and manifest["generator"]["noise_aware"]["kind"] == "distilled"
    assert manifest["stats"]["predictor_calls"] >= DISTILL_NETS
    for bad, words in ((["--profile", "pixel3"], "no reference profile named 'pixel3' for space mbv3"),
                       (["--dataset", "cifar10"], "unknown dataset")):
        result = CliRunner().invoke(cli, ["generate", "--space", "mbv3", "--profile", "v100_1", *bad, "--out",
                                          str(tmp_path / "bad")])
        assert result.exit_code == 2 and words in result.output, result.output
