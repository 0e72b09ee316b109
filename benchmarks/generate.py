"""Benchmark of ``pomonag-edge generate``: does each strategy return nets that are truly within budget,
truly accurate and truly Pareto-optimal?

Every strategy searches with the SAME product predictors (the reference profile's latency model, the
shipped accuracy predictor trained on 10% of NB201) and is then judged with the TRUE tables (measured
accuracy per dataset, measured latency per device):

- feasible: share of returned nets (``--num``) whose measured latency / exact params meet the budget;
- gap: true accuracy of the best truly feasible net of the whole space (oracle) minus that of rank 1;
- HV/true, HV/exh: hypervolume in (accuracy up, latency, params, MACs down), normalised over the truly
  feasible nets, of the returned front (every feasible non-dominated candidate, true values, truly
  infeasible ones dropped), divided by the true front's, and by exhaustive-with-same-predictors';
- valid, unique (functionally distinct share of valid proposals), novel (share of unique valid proposals
  outside the generator's training set), calls (distinct nets scored), wall seconds.

Strategies, each proposing at most ``--samples`` distinct nets: diffusion (default weights + budget guidance;
its exact noise-aware posterior reads the predictors' value of every net, so its calls are the table size),
diffusion-sampled (guidance by a noise-aware predictor distilled from a counted sample of 2,048 scored nets,
as POMONAG's: it never reads the table, and its calls are its real ones), acc-only (DiffusionNAG's setting:
accuracy guidance only, budget applied afterwards), exhaustive (every net; the yardstick), nsga2 (pymoo's
NSGA-II) and random, the last two at diffusion-sampled's call count. ``--mean-guidance`` runs diffusion with
the grad E[J | x_t] guidance instead of the tilted one, for comparison.

Targets: 100% truly feasible, gap <= 0.3 points, HV >= 0.99 of exhaustive's.

    python benchmarks/generate.py --quick        # pixel3, 3 budgets, cifar100
    python benchmarks/generate.py                # 4 devices x 3 budgets x 3 datasets
    python benchmarks/generate.py --calibrated 10 --datasets cifar100   # profiles from 10 timings
    python benchmarks/generate.py --calibrated 10 --global-margin       # one q90 margin for every net (before)
    python benchmarks/generate.py --calibrated 10 --held-out            # the device unseen by the pretraining
    python benchmarks/generate.py --space mbv3   # a space without measured tables: benchmarks/generate_predicted.py
    python benchmarks/generate.py --calibrated 10 --measure 20 [--held-out]   # the closed loop (below)

``--measure N``: ``generate --measure N`` end to end (``generate_run`` with the closed loop) on each device,
simulated by a command device (descriptor ``runner = "command"``) that looks the arch up in the device's
shipped table; its profile is taken through that command (``profile --no-lut --calibration K``, K =
``--calibrated``). Printed per setting and as means, beside two baselines: ``--measure 0`` (the one-shot pick:
the loop's first round, the same search and profile) and "time 30 random nets, take the best that fits" (the
product's accuracy predictor picks among those truly within budget). Figures: truly feasible (the top pick's
measured latency within budget), gap to the oracle (points), timings per case (the profile's K + the loop's).
The candidates are ``--strategy``'s (default exhaustive: every net scored by the product's predictors; the
diffusion default reads the same scores and costs ~30-100 s a search here). Targets, leave-one-device-out
(``--held-out``): 100% truly feasible, mean gap <= 0.3 points, at most 30 timings per case.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

DEVICES = ("pixel3", "samsung_s7", "gold_6240", "titanxp_1")
DATASETS = ("cifar10", "cifar100", "imagenet16-120")
QUANTILES = (25, 50, 75)
METHODS = ("diffusion", "diffusion-sampled", "acc-only", "exhaustive", "nsga2", "random")


def main(argv=None) -> int:
    from pomonag_edge.errors import UserError
    from pomonag_edge.spaces import get_space

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--space", default="nb201")
    known, argv = pre.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    SPACE = get_space(known.space)
    try:  # judged against measured tables where the space ships them; otherwise against its predictors
        SPACE.accuracy_table(SPACE.default_dataset)
    except UserError:
        import generate_predicted  # benchmarks/generate_predicted.py

        return generate_predicted.main(["--space", known.space, *argv])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="pixel3, cifar100, the three budgets")
    ap.add_argument("--devices", default=None, help="comma-separated reference devices")
    ap.add_argument("--datasets", default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--num", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="generator checkpoint (default: shipped)")
    ap.add_argument("--oracle", action="store_true", help="search with the true tables (isolates search quality)")
    ap.add_argument("--calibrated", type=int, default=0, metavar="N",
                    help="use a profile calibrated from N measured nets of each device (its latency model then has "
                         "an error and a margin) instead of the reference profile (exact table)")
    ap.add_argument("--scale", type=float, default=None, help="diffusion guidance scale (default: the strategy's)")
    ap.add_argument("--spread", type=float, default=None,
                    help="per-sample cost-weight spread of the mean-gradient path (used only with directions=1)")
    ap.add_argument("--penalty", type=float, default=None, help="diffusion budget penalty (default: the strategy's)")
    ap.add_argument("--rounds", type=int, default=None, help="diffusion sampling rounds (default: the strategy's)")
    ap.add_argument("--mean-guidance", action="store_true",
                    help="diffusion with grad E[J | x_t] guidance (the form before the tilted one), for comparison")
    ap.add_argument("--level", type=float, default=0.9,
                    help="probability of fitting the budget a kept net must reach (per-net margins)")
    ap.add_argument("--held-out", action="store_true",
                    help="with --calibrated: adapt a latency embedding pretrained without the device (a fold, as "
                         "latency_fewshot.py), so neither its table nor its head is among the siblings")
    ap.add_argument("--global-margin", action="store_true",
                    help="one margin for every net (the latency model's q90 error), as before per-net margins")
    ap.add_argument("--measure", type=int, default=None, metavar="N",
                    help="the closed loop: generate --measure N on a command device that looks the arch up (see above)")
    ap.add_argument("--strategy", default="exhaustive", help="with --measure: the search proposing the candidates")
    ap.add_argument("--random-nets", type=int, default=30, help="with --measure: the random-timing baseline's nets")
    args = ap.parse_args(argv)
    if args.measure is not None:
        return measure_main(SPACE, args)

    import torch

    torch.set_num_threads(1)
    from pomonag_edge.generator.train import load_checkpoint
    from pomonag_edge.pareto import hypervolume, pareto_mask
    from pomonag_edge.predictors import search_predictors
    from pomonag_edge.problem import Predictors, SearchProblem, parse_weights
    from pomonag_edge.profile import reference_profile
    from pomonag_edge.selection import run_search
    from pomonag_edge.strategies import make_strategy
    from pomonag_edge.units import Budget

    devices = ("pixel3",) if args.quick else tuple((args.devices or ",".join(DEVICES)).split(","))
    datasets = ("cifar100",) if args.quick else tuple((args.datasets or ",".join(DATASETS)).split(","))
    methods = args.methods.split(",")
    _, _, meta = load_checkpoint(args.checkpoint, SPACE)
    train_set = {SPACE.canonical(a) for a in SPACE.generator_training_set(meta["training"]["set"], 0)}
    archs = list(SPACE.enumerate())
    valid = np.flatnonzero([SPACE.is_valid(a) for a in archs])
    print(f"generator: {meta['training']['set']} training set, {meta['model']}; samples {args.samples}, "
          f"num {args.num}, seed {args.seed}, predictors: {'TRUE tables (oracle)' if args.oracle else 'product'}"
          + (f", profiles calibrated from {args.calibrated} nets" if args.calibrated else ""))

    rows = []
    for dataset in datasets:
        true_acc = SPACE.accuracy_table(dataset)
        params = np.array([SPACE.params(a, dataset) for a in archs], dtype=float)
        macs = np.array([SPACE.macs(a, dataset) for a in archs], dtype=float)
        for device in devices:
            true_lat = SPACE.reference_latency_ms(device)
            prof = reference_profile(device)
            if args.calibrated:
                from pomonag_edge.calibration import calibrate_profile

                picks = np.random.default_rng(args.seed).choice(valid, args.calibrated, replace=False)
                items = [{"arch": str(archs[i]), "latency_ms": float(true_lat[i])} for i in picks]
                prof = calibrate_profile(SPACE, items, f"{device}-cal{args.calibrated}", source="benchmark")
            psig = None
            if args.oracle:
                pacc, plat, margin, src = true_acc, true_lat, 0.0, {"oracle": True}
            else:
                base = search_predictors(SPACE, prof, dataset)
                if args.held_out and args.calibrated:
                    base = _held_out_predictors(SPACE, base, device, [archs[i] for i in picks], true_lat[picks])
                pacc, plat = base.accuracy(archs), base.latency_ms(archs)
                margin, src = base.margin, base.source
                if not args.global_margin:
                    psig = base.latency_log_sigma(archs)
                    rel = np.expm1(1.2815515655446004 * psig[valid])
                    print(f"{dataset} / {device}: latency model q90 error {margin:.1%}; per-net 90% margins "
                          f"{np.percentile(rel, 10):.1%} / {np.median(rel):.1%} / {np.percentile(rel, 90):.1%} "
                          "(p10 / median / p90)")
                else:
                    print(f"{dataset} / {device}: latency model margin {margin:.1%} (global)")
            lookup = lambda arr: (lambda xs: arr[[SPACE.table_index(a) for a in xs]])  # noqa: E731
            preds = Predictors(lookup(np.asarray(pacc)), lookup(np.asarray(plat)), margin, src,
                               latency_log_sigma=None if psig is None else lookup(np.asarray(psig)))
            for q in QUANTILES:
                budget_ms = float(np.nanpercentile(true_lat[valid], q))
                budget = Budget(max_latency_ms=budget_ms)
                # every valid net counts (not one per function): the tables time the un-pruned genotype, so
                # functionally equal nets can differ in measured latency
                feas_idx = valid[true_lat[valid] <= budget_ms]
                Ft = np.stack([-true_acc, true_lat, params, macs], axis=1)
                lo, hi = Ft[feas_idx].min(0), Ft[feas_idx].max(0)
                norm = lambda F: (F - lo) / np.where(hi > lo, hi - lo, 1.0)  # noqa: E731
                ref = np.full(4, 1.0 + 1e-9)
                hv_true = hypervolume(norm(Ft[feas_idx][pareto_mask(Ft[feas_idx])]), ref)
                oracle = float(true_acc[feas_idx].max())
                hv_exh, sampled_calls = None, None
                for method in methods:
                    problem = SearchProblem(SPACE, dataset, budget, preds, level=args.level)
                    if method == "acc-only":
                        acc_only = parse_weights("accuracy=1,latency=0,params=0,macs=0")
                        strat = make_strategy("diffusion", weights=acc_only, use_budget=False,
                                              checkpoint=args.checkpoint, tilted=not args.mean_guidance)
                    elif method == "diffusion":
                        kw = {k: v for k, v in (("scale", args.scale), ("spread", args.spread),
                                                ("penalty", args.penalty), ("rounds", args.rounds)) if v is not None}
                        if args.mean_guidance:
                            kw["tilted"] = False
                        strat = make_strategy("diffusion", weights=parse_weights(None), checkpoint=args.checkpoint,
                                              **kw)
                    elif method == "diffusion-sampled":
                        strat = make_strategy("diffusion", weights=parse_weights(None), checkpoint=args.checkpoint,
                                              noise_aware="sampled")
                    else:
                        strat = make_strategy(method)
                    samples = sampled_calls if method in ("nsga2", "random") and sampled_calls else args.samples
                    start = time.perf_counter()
                    res = run_search(problem, strat, samples=samples, num=args.num, seed=args.seed)
                    wall = time.perf_counter() - start
                    if method == "diffusion-sampled":
                        sampled_calls = res.stats["predictor_calls"]
                    sel = [r["index"] for r in res.selected]
                    front = [r["index"] for r in res.front]
                    tf = lambda ids: [i for i in ids if true_lat[i] <= budget_ms]  # noqa: E731
                    hv = hypervolume(norm(Ft[tf(front)]), ref) if tf(front) else 0.0
                    if method == "exhaustive":
                        hv_exh = hv
                    uniq = {SPACE.canonical(archs[i]) for i in front}
                    rows.append({
                        "dataset": dataset, "device": device, "q": q, "budget_ms": budget_ms, "method": method,
                        "feasible": np.mean([true_lat[i] <= budget_ms for i in sel]) if sel else float("nan"),
                        "gap": oracle - float(true_acc[sel[0]]) if sel else float("nan"),
                        "hv_true": hv / hv_true if hv_true else float("nan"), "hv": hv,
                        "valid": res.stats["validity"], "unique": res.stats["uniqueness"],
                        "novel": np.mean([SPACE.canonical(a) not in train_set for a in res.candidates])
                        if (method.startswith("diffusion") or method == "acc-only") and res.candidates else None,
                        "calls": res.stats["predictor_calls"], "wall": wall, "returned": len(sel),
                        "front": len(uniq)})
                for r in rows:
                    if r["dataset"] == dataset and r["device"] == device and r["q"] == q:
                        r["hv_exh"] = r["hv"] / hv_exh if hv_exh else float("nan")
                _print_rows([r for r in rows if r["dataset"] == dataset and r["device"] == device and r["q"] == q])
                sys.stdout.flush()
    print("\nmean over every (dataset, device, budget):")
    print(f"{'method':<18}{'feasible':>9}{'gap':>7}{'gap<=0.3':>9}{'HV/true':>9}{'HV/exh':>8}{'valid':>7}"
          f"{'unique':>8}{'novel':>7}{'calls':>7}{'wall s':>8}")
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        mean = lambda k: statistics.fmean(r[k] for r in rs if r[k] is not None and np.isfinite(r[k]))  # noqa: E731
        novel = [r["novel"] for r in rs if r["novel"] is not None]
        print(f"{m:<18}{mean('feasible'):>9.1%}{mean('gap'):>7.2f}{np.mean([r['gap'] <= 0.3 for r in rs]):>9.0%}"
              f"{mean('hv_true'):>9.3f}{mean('hv_exh'):>8.3f}{mean('valid'):>7.3f}{mean('unique'):>8.3f}"
              f"{(statistics.fmean(novel) if novel else float('nan')):>7.3f}{mean('calls'):>7.0f}{mean('wall'):>8.1f}")
    print("targets: feasible 100%, gap <= 0.3, HV/exh >= 0.99. 'calls': distinct nets scored, the whole table for "
          "diffusion's exact posterior; nsga2 and random get diffusion-sampled's calls.")
    return 0


def held_out_embedding(space, device):
    """The space's latency embedding pretrained on every shipped device but ``device`` (a fold, as
    latency_fewshot.py), so neither its table nor its head is among the siblings."""
    from pomonag_edge.predictors.latency_pretrain import PretrainedEmbedding

    archs, names, ms = space.latency_recipe.tables()
    keep = [j for j, n in enumerate(names) if n != device]
    return PretrainedEmbedding.from_tables(space, archs, ms[:, keep], [names[j] for j in keep], seed=0)


def _held_out_predictors(space, base, device, shots, shots_ms, pre=None):
    """``base`` with its latency model refitted on an embedding pretrained without ``device``."""
    from pomonag_edge.predictors.latency import fit_calibration
    from pomonag_edge.problem import Predictors

    model = fit_calibration(space, shots, shots_ms, pre or held_out_embedding(space, device))
    return Predictors(base.accuracy, model.predict_ms, float(model.relative_error),
                      dict(base.source, latency=f"{device} calibrated on an embedding pretrained without it"),
                      latency_log_sigma=model.log_sigma, measured_latency_ms=base.measured_latency_ms,
                      measured_accuracy=base.measured_accuracy, accuracy_sigma=base.accuracy_sigma)


LOOKUP = "import json, sys\nprint(json.load(open(sys.argv[1]))[sys.argv[2]])\n"


def command_device(folder, space, device) -> str:
    """A device descriptor (TOML) whose command prints the shipped table's latency of the arch it is given."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lat = space.reference_latency_ms(device)
    table = folder / f"{device}.json"
    table.write_text(json.dumps({str(space.from_index(i)): float(v) for i, v in enumerate(lat) if np.isfinite(v)}))
    (folder / "lookup.py").write_text(LOOKUP)
    toml = folder / f"{device}.toml"
    toml.write_text(f'description = "{device}\'s shipped table, looked up"\n'
                    f'runner = "command"\ncommand = "{sys.executable} {folder / "lookup.py"} {table} {{arch}}"\n'
                    'timeout_s = 60\n')
    return str(toml)


def measure_main(space, args) -> int:
    """``--measure N``: the closed loop on simulated command devices, beside --measure 0 and random timing."""
    import tempfile
    from pathlib import Path

    import torch

    from pomonag_edge.closed_loop import LoopOptions
    from pomonag_edge.generate import generate_run
    from pomonag_edge.predictors import search_predictors
    from pomonag_edge.profile import load_profile
    from pomonag_edge.profiler import ProfileRequest, build_profile

    torch.set_num_threads(1)
    devices = ("pixel3",) if args.quick else tuple((args.devices or ",".join(DEVICES)).split(","))
    datasets = ("cifar100",) if args.quick else tuple((args.datasets or ",".join(DATASETS)).split(","))
    k = args.calibrated or 10
    archs = list(space.enumerate())
    valid = np.flatnonzero([space.is_valid(a) for a in archs])
    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    print(f"closed loop: generate --measure {args.measure} on command devices (each device's shipped table looked "
          f"up), profiles of {k} timings taken through them (profile --no-lut), candidates: --strategy "
          f"{args.strategy}, level {args.level}, {'held-out embedding' if args.held_out else 'shipped embedding'}")
    rows, started = [], time.perf_counter()
    for device in devices:
        true_lat = space.reference_latency_ms(device)
        toml = command_device(work / "devices", space, device)
        prof_path = work / f"{device}.json"
        build_profile(ProfileRequest(device=toml, space=space.name, lut=False, calibration=k, out=prof_path,
                                     seed=args.seed))
        pre = held_out_embedding(space, device) if args.held_out else None
        rng = np.random.default_rng(args.seed)
        random_nets = rng.choice(valid, args.random_nets, replace=False)
        for dataset in datasets:
            true_acc = space.accuracy_table(dataset)

            def predictors_for(profile, d, pre=pre, device=device):
                base = search_predictors(space, profile, d)
                if pre is None:
                    return base
                shots = [space.parse(c["arch"]) for c in profile.calibration]
                return _held_out_predictors(space, base, device, shots, [c["latency_ms"] for c in profile.calibration],
                                            pre)

            pred_acc = predictors_for(load_profile(prof_path), dataset).accuracy(archs)
            for q in QUANTILES:
                budget_ms = float(np.nanpercentile(true_lat[valid], q))
                feas = valid[true_lat[valid] <= budget_ms]
                oracle = float(true_acc[feas].max())
                t0 = time.perf_counter()
                run = generate_run(space=space.name, profile=str(prof_path), dataset=dataset,
                                   max_latency=f"{budget_ms}ms", num=args.num, samples=args.samples,
                                   strategy=args.strategy, seed=args.seed,
                                   out=work / "runs" / f"{device}-{dataset}-{q}",
                                   level=args.level, loop=LoopOptions(measure=args.measure),
                                   predictors_for=predictors_for)
                wall = time.perf_counter() - t0
                journal = run.path / "loop.json"
                import json

                rounds = json.loads(journal.read_text())["rounds"]
                first = space.table_index(space.parse(rounds[0]["top_pick"])) if rounds[0]["top_pick"] else None
                top = run.result.selected[0]["index"] if run.result.selected else None
                fits = random_nets[true_lat[random_nets] <= budget_ms]
                rand = int(fits[np.argmax(pred_acc[fits])]) if len(fits) else None
                loop_meta = run.manifest["loop"]
                row = {"device": device, "dataset": dataset, "q": q, "budget_ms": budget_ms,
                       "timings": k + loop_meta["timings"], "stop": loop_meta["stop"]["reason"], "wall": wall}
                for name, pick in (("loop", top), ("one-shot", first), ("random", rand)):
                    row[f"{name}_feasible"] = float(pick is not None and true_lat[pick] <= budget_ms)
                    row[f"{name}_gap"] = oracle - float(true_acc[pick]) if pick is not None else float("nan")
                rows.append(row)
                print(f"{dataset} / {device} / q{q} {budget_ms:.3f} ms: loop feasible {row['loop_feasible']:.0%} gap "
                      f"{row['loop_gap']:.2f} ({row['timings']} timings, {row['stop']}) | --measure 0 "
                      f"{row['one-shot_feasible']:.0%} / {row['one-shot_gap']:.2f} ({k}) | random "
                      f"{args.random_nets}: {row['random_feasible']:.0%} / {row['random_gap']:.2f} | {wall:.1f}s",
                      flush=True)
    mean = lambda key: float(np.nanmean([r[key] for r in rows]))  # noqa: E731
    print(f"\nmean over {len(rows)} (device, dataset, budget) settings:")
    print(f"{'method':<34}{'truly feasible':>15}{'gap':>7}{'gap<=0.3':>9}{'timings':>9}")
    for name, label, timings in (("loop", f"--measure {args.measure} (closed loop)", mean("timings")),
                                 ("one-shot", "--measure 0 (one-shot, today)", float(k)),
                                 ("random", f"time {args.random_nets} random nets, best fit", float(args.random_nets))):
        gaps = [r[f"{name}_gap"] for r in rows]
        print(f"{label:<34}{mean(name + '_feasible'):>15.1%}{np.nanmean(gaps):>7.2f}"
              f"{np.mean([g <= 0.3 for g in gaps]):>9.0%}{timings:>9.1f}")
    stops = {s: sum(r["stop"] == s for r in rows) for s in dict.fromkeys(r["stop"] for r in rows)}
    print(f"loop timings per case max {max(r['timings'] for r in rows)}; stops: "
          + ", ".join(f"{s} {n}" for s, n in stops.items()) + f"; wall {time.perf_counter() - started:.0f} s")
    print("targets (leave-one-device-out): truly feasible 100%, mean gap <= 0.3, at most 30 timings per case")
    return 0


def _print_rows(rows):
    r0 = rows[0]
    print(f"\n{r0['dataset']} / {r0['device']} / q{r0['q']} budget {r0['budget_ms']:.3f} ms")
    for r in rows:
        print(f"  {r['method']:<18} feasible {r['feasible']:6.1%}  gap {r['gap']:5.2f}  HV/true {r['hv_true']:.3f}  "
              f"HV/exh {r['hv_exh']:.3f}  valid {r['valid']:.3f}  unique {r['unique']:.3f}  calls {r['calls']:6d}  "
              f"front {r['front']:3d}  {r['wall']:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
