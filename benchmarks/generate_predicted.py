"""Benchmark of ``pomonag-edge generate`` on a space without measured tables (``--space mbv3``): guided
diffusion vs pymoo's NSGA-II vs random search at equal predictor calls, and how many calls NSGA-II needs to
match diffusion's hypervolume.

There is no ground truth for ~5e20 nets, so every method is judged by the SAME product predictors it searched
with (the space's accuracy predictor; the reference setting's latency model; exact params and MACs):

- HV: hypervolume of the method's predicted feasible front in (accuracy up, latency, params, MACs down),
  objectives normalised over the union of every method's feasible candidates for that budget, reference
  point just past the worst; reported as a ratio to the best method's HV (1.000 = best);
- best acc: highest predicted accuracy (%) of a returned net within the budget (with the latency margin);
- feas: returned nets within budget / returned; guided: how many of the returned nets are guided diffusion
  samples (the rest come from its distillation sample, which joins its candidates); calls: distinct nets
  scored (diffusion: its distillation sample of 2,048 nets included); wall: seconds of the whole search,
  distillation included when it was not cached (the first budget of a setting);
- NSGA-II to match: the calls pymoo's NSGA-II needed to reach diffusion's HV (doubling its budget from
  diffusion's calls, up to ``--match-limit`` times diffusion's), or ">N" when it did not within the limit.

Budgets: the 25/50/75% quantiles of the setting's predicted latency over 1,000 sampled nets.

    python benchmarks/generate_predicted.py --space mbv3                      # v100_1 and 2080ti_32
    python benchmarks/generate_predicted.py --space mbv3 --settings v100_1 --quantiles 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

SETTINGS = ("v100_1", "2080ti_32")
QUANTILES = (25, 50, 75)
METHODS = ("diffusion", "nsga2", "random")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="mbv3")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="reference profiles of the space")
    ap.add_argument("--quantiles", default=",".join(str(q) for q in QUANTILES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--samples", type=int, default=512, help="diffusion samples (its calls add the distillation)")
    ap.add_argument("--num", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="generator checkpoint (default: the space's)")
    ap.add_argument("--match-limit", type=int, default=8,
                    help="NSGA-II's budget to match diffusion's HV grows up to this many times diffusion's calls")
    ap.add_argument("--scale", type=float, default=None, help="diffusion guidance scale (default: the strategy's)")
    ap.add_argument("--steps", type=int, default=None, help="diffusion sampling steps (default: the strategy's)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    os.environ["POMONAG_EDGE_CACHE"] = tempfile.mkdtemp(prefix="pomonag-bench-")  # distillation paid once here
    from pomonag_edge.generator.sampled import DISTILL_NETS, DISTILL_SEED
    from pomonag_edge.generator.train import load_checkpoint
    from pomonag_edge.pareto import hypervolume, pareto_mask
    from pomonag_edge.predictors import search_predictors
    from pomonag_edge.problem import SearchProblem, parse_weights
    from pomonag_edge.profile import reference_profile
    from pomonag_edge.selection import run_search
    from pomonag_edge.spaces import get_space
    from pomonag_edge.strategies import make_strategy
    from pomonag_edge.units import Budget

    SPACE = get_space(args.space)
    dataset = SPACE.default_dataset
    _, _, meta = load_checkpoint(args.checkpoint, SPACE)
    print(f"generator: {meta['training']['set']} training set ({meta['training']['nets']} nets), {meta['model']}; "
          f"diffusion samples {args.samples}, num {args.num}, seed {args.seed}")
    methods = args.methods.split(",")
    probe = SPACE.sample(1000, 99)
    distill_sample = set(SPACE.sample(DISTILL_NETS, DISTILL_SEED))
    rows = []
    for setting in args.settings.split(","):
        preds = search_predictors(SPACE, reference_profile(setting, SPACE.name), dataset)
        lat = np.asarray(preds.latency_ms(probe))
        print(f"{setting}: latency margin {preds.margin:.1%}; random nets {np.percentile(lat, 5):.2f}.."
              f"{np.percentile(lat, 95):.2f} ms (5-95%)")
        for q in (int(v) for v in args.quantiles.split(",")):
            budget = Budget(max_latency_ms=float(np.percentile(lat, q)))
            results, calls = {}, None
            for method in methods:
                problem = SearchProblem(SPACE, dataset, budget, preds)
                if method == "diffusion":
                    kw = {k: v for k, v in (("scale", args.scale), ("steps", args.steps)) if v is not None}
                    strat = make_strategy("diffusion", weights=parse_weights(None), checkpoint=args.checkpoint, **kw)
                    samples = args.samples
                else:
                    strat = make_strategy(method)
                    samples = calls or args.samples
                start = time.perf_counter()
                res = run_search(problem, strat, samples=samples, num=args.num, seed=args.seed)
                wall = time.perf_counter() - start
                if method == "diffusion":
                    calls = res.stats["predictor_calls"]
                na = (getattr(strat, "info", None) or {}).get("noise_aware", {})
                results[method] = (res, wall, na)
            # normalise over the union of every method's feasible candidates
            feas_rows = {m: [r for r in res.scored if r["feasible"]] for m, (res, _, _) in results.items()}
            F = lambda rs: np.array([[-r["accuracy"], r["latency_ms"], r["params"], r["macs"]] for r in rs],  # noqa
                                    dtype=float).reshape(-1, 4)
            union = np.concatenate([F(rs) for rs in feas_rows.values()]) if feas_rows else np.zeros((0, 4))
            lo, hi = (union.min(0), union.max(0)) if len(union) else (np.zeros(4), np.ones(4))
            norm = lambda X: (X - lo) / np.where(hi > lo, hi - lo, 1.0)  # noqa: E731
            ref = np.full(4, 1.0 + 1e-6)
            hvs = {m: (hypervolume(norm(F(rs)[pareto_mask(F(rs))]), ref) if rs else 0.0) for m, rs in feas_rows.items()}
            best_hv = max(hvs.values()) or 1.0
            match = _calls_to_match(SPACE, dataset, budget, preds, results, hvs, norm, ref, F, args) \
                if "diffusion" in results and "nsga2" in results else None
            for method, (res, wall, na) in results.items():
                sel = res.selected
                row = {"setting": setting, "q": q, "budget_ms": budget.max_latency_ms, "method": method,
                       "hv": hvs[method] / best_hv,
                       "best_acc": max((r["accuracy"] for r in sel), default=float("nan")),
                       "feas": f"{sum(r['feasible'] for r in sel)}/{len(sel)}", "front": res.stats["front"],
                       "calls": res.stats["predictor_calls"], "unique": res.stats["unique"], "wall": wall,
                       "guided": sum(SPACE.parse(r["arch"]) not in distill_sample for r in sel)
                       if method == "diffusion" else None, "match": match if method == "nsga2" else None,
                       "distill_s": na.get("seconds", 0.0) if not na.get("cached", True) else 0.0}
                rows.append(row)
                guided = f"  guided {row['guided']:2d}/{len(sel)}" if row["guided"] is not None else " " * 15
                print(f"  q{q:<3d} {budget.max_latency_ms:7.2f} ms  {method:<10s} HV {row['hv']:.3f}  best acc "
                      f"{row['best_acc']:.2f}  feas {row['feas']:>5s}  front {row['front']:4d}  calls "
                      f"{row['calls']:5d}{guided}  wall {wall:6.1f} s"
                      + (f" (distill {row['distill_s']:.1f} s)" if row["distill_s"] else "")
                      + (f"  calls to match diffusion's HV: {row['match']}" if row["match"] else ""), flush=True)
    print()
    print("mean over settings and budgets (HV relative to the best method per budget):")
    for method in methods:
        rs = [r for r in rows if r["method"] == method]
        if rs:
            print(f"  {method:<10s} HV {np.mean([r['hv'] for r in rs]):.3f}  best acc "
                  f"{np.nanmean([r['best_acc'] for r in rs]):.2f}  wins(HV) "
                  f"{sum(r['hv'] >= 0.9999 for r in rs)}/{len(rs)}  calls {np.mean([r['calls'] for r in rs]):.0f}  "
                  f"wall {np.mean([r['wall'] for r in rs]):.1f} s")
    return 0


def _calls_to_match(space, dataset, budget, preds, results, hvs, norm, ref, F, args) -> str:
    """Calls pymoo's NSGA-II needs for its own feasible front to reach diffusion's HV (same normalisation)."""
    from pomonag_edge.pareto import hypervolume, pareto_mask
    from pomonag_edge.problem import SearchProblem
    from pomonag_edge.selection import run_search
    from pomonag_edge.strategies import make_strategy

    target = hvs["diffusion"]
    calls = results["diffusion"][0].stats["predictor_calls"]
    limit = args.match_limit * calls
    budget_calls = calls
    while budget_calls <= limit:
        res = run_search(SearchProblem(space, dataset, budget, preds), make_strategy("nsga2"), samples=budget_calls,
                         num=args.num, seed=args.seed)
        rs = [r for r in res.scored if r["feasible"]]
        hv = hypervolume(norm(F(rs)[pareto_mask(F(rs))]), ref) if rs else 0.0
        if hv >= target:
            return str(res.stats["predictor_calls"])
        budget_calls *= 2
    return f">{limit}"


if __name__ == "__main__":
    sys.exit(main())
