"""Few-shot accuracy on an unseen task: leave one shipped NB201 dataset out, adapt from K measured nets.

For each held-out dataset, the model knows only the other two tables (``task_features``/``task_heads`` of
those two), is calibrated from K nets with their true table accuracies as the measurements, and is scored on
every other connected net (one per function). Figures, means over the 3 held-out datasets x ``--seeds``:

- ``spearman``: rank correlation with the true accuracy on the rest;
- ``regret``: for params budgets at the 25/50/75/100% quantiles, the true accuracy of the oracle (best net in
  budget) minus that of the net picked (the method's best in budget), mean over the 4 budgets. The pick is the
  exhaustive strategy's (the predicted best in budget); with ``--generate`` the first seed's few-shot model
  also guides ``generate``'s diffusion (512 samples, default weights, pixel3's measured latency as the
  latency predictor, params budget only) and its rank-1 net is scored the same way (``fewshot, generate``).

Methods: ``fewshot`` (probes chosen by ``choose_probes``), ``fewshot, random probes`` (K uniform distinct
functions), and baselines: ``best measured`` (the best of the K measured nets in budget; a budget no probe
fits scores the median feasible net), ``nearest table`` (the other table that ranks the K measurements best),
``params-only`` (more parameters = better).

    python benchmarks/accuracy_fewshot.py [--shots 10 20] [--seeds 5] [--generate]
    python benchmarks/accuracy_fewshot.py --generate --train 10 [--shots 20]

``--generate --train N``: ``generate --train N`` end to end (``generate_run`` with the closed loop), leaving one
shipped dataset out: its task profile holds K probes (``choose_probes``, the model fitted on the other two
tables only, as are its refits), a command trainer looks the arch up in the held-out table, and the loop trains
up to N candidates under each params budget. Printed beside the one-shot pick (the loop's first round: the same
search and model, no training) and the best of K + N measured nets (``choose_probes(K + N)``: as many nets
trained as the loop may). Target: the loop's loss at most half of best-of-measured's at K + N = 30 trained nets.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

QUANTILES = (25, 50, 75, 100)


def regret(score: np.ndarray, truth: np.ndarray, params: np.ndarray, universe, budgets) -> float:
    """Oracle and pick both among ``universe`` (one net per function: the tables measure functionally equal
    nets apart by training noise, which no predictor can rank)."""
    out = []
    for b in budgets:
        ok = universe[params[universe] <= b]
        out.append(truth[ok].max() - truth[ok[np.argmax(score[ok])]])
    return float(np.mean(out))


def best_measured_regret(idx: np.ndarray, truth: np.ndarray, params: np.ndarray, universe, budgets) -> float:
    out = []
    for b in budgets:
        ok = universe[params[universe] <= b]
        fit = idx[params[idx] <= b]
        picked = truth[fit].max() if len(fit) else np.median(truth[ok])
        out.append(truth[ok].max() - picked)
    return float(np.mean(out))


def generate_regret(model, dataset: str, truth, params, universe, budgets) -> float:
    """Mean over ``budgets`` of oracle - true accuracy of ``generate``'s rank-1 net, guided by ``model``."""
    from pomonag_edge.data import nb201_latency_ms
    from pomonag_edge.problem import Predictors, SearchProblem
    from pomonag_edge.selection import run_search
    from pomonag_edge.strategies import make_strategy
    from pomonag_edge.spaces.nb201 import SPACE
    from pomonag_edge.units import Budget

    lat = nb201_latency_ms("pixel3")
    preds = Predictors(accuracy=lambda archs: model.predict(archs),
                       latency_ms=lambda archs: lat[[SPACE.index(a) for a in archs]], margin=0.0)
    out = []
    for b in budgets:
        res = run_search(SearchProblem(SPACE, dataset, Budget(max_params=float(b)), preds),
                         make_strategy("diffusion"), samples=512, num=10, seed=0)
        ok = universe[params[universe] <= b]
        pick = SPACE.index(SPACE.canonical(SPACE.parse(res.selected[0]["arch"])))  # scored as its function's net
        out.append(truth[ok].max() - truth[pick])
    return float(np.mean(out))


def main(argv=None):
    from pomonag_edge.data import NB201_DATASETS, nb201_accuracy
    from pomonag_edge.predictors.accuracy_fewshot import choose_probes, fit_fewshot, task_features, unique_functions
    from pomonag_edge.spaces.nb201 import SPACE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shots", type=int, nargs="+", default=[10, 20])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--generate", action="store_true", help="also score generate's diffusion pick (first seed)")
    p.add_argument("--train", type=int, default=None, metavar="N",
                   help="with --generate: the closed loop, generate --train N (see above)")
    p.add_argument("--strategy", default="exhaustive", help="with --train: the search proposing the candidates")
    args = p.parse_args(argv)
    if args.train is not None:
        return train_main(args)

    import torch

    torch.set_num_threads(1)
    universe = unique_functions(SPACE)
    methods = ("fewshot", "fewshot, random probes", "best measured", "nearest table", "params-only")
    methods += ("fewshot, generate",) if args.generate else ()
    rows: dict = {}
    for held in NB201_DATASETS:
        params = np.array([SPACE.params(SPACE.from_index(i), held) for i in range(15625)], dtype=np.float64)
        budgets = np.percentile(params[universe], QUANTILES)
        others = tuple(d for d in NB201_DATASETS if d != held)
        truth = nb201_accuracy(held)
        feats = task_features(SPACE, others)
        tables = np.stack([nb201_accuracy(d) for d in others], axis=1)
        for k in args.shots:
            for seed in range(args.seeds):
                chosen = np.array([SPACE.index(a) for a in choose_probes(SPACE, k, seed, others)])
                randomly = np.random.default_rng(seed).choice(universe, k, replace=False)
                for name, idx in (("fewshot", chosen), ("fewshot, random probes", randomly)):
                    model = fit_fewshot(SPACE, [SPACE.from_index(int(i)) for i in idx], truth[idx], others)
                    rest = np.setdiff1d(universe, idx)
                    pred = model.predict_index(universe)
                    score = np.full(15625, -np.inf)
                    score[universe] = pred
                    score[idx] = truth[idx]  # measured nets count with their measurement
                    rows.setdefault((held, k, name), []).append(
                        (spearmanr(model.predict_index(rest), truth[rest])[0],
                         regret(score, truth, params, universe, budgets)))
                    if args.generate and seed == 0 and name == "fewshot":
                        rows.setdefault((held, k, "fewshot, generate"), []).append(
                            (np.nan, generate_regret(model, held, truth, params, universe, budgets)))
                rest = np.setdiff1d(universe, chosen)
                rows.setdefault((held, k, "best measured"), []).append(
                    (np.nan, best_measured_regret(chosen, truth, params, universe, budgets)))
                j = int(np.argmax([spearmanr(tables[chosen, c], truth[chosen])[0] for c in range(len(others))]))
                score = np.full(15625, -np.inf)
                score[universe] = tables[universe, j]
                rows.setdefault((held, k, "nearest table"), []).append(
                    (spearmanr(tables[rest, j], truth[rest])[0], regret(score, truth, params, universe, budgets)))
                score[universe] = feats[universe, -2]
                rows.setdefault((held, k, "params-only"), []).append(
                    (spearmanr(feats[rest, -2], truth[rest])[0], regret(score, truth, params, universe, budgets)))
    print(f"leave one NB201 dataset out; {args.seeds} seeds; spearman on the other connected nets (one per "
          "function); regret = oracle - pick, true accuracy points, mean of params budgets at "
          f"{'/'.join(map(str, QUANTILES))}% quantiles")
    for k in args.shots:
        print(f"\nK = {k} measured nets")
        print(f"{'method':26s} " + " ".join(f"{d:>22s}" for d in NB201_DATASETS) + f" {'mean':>22s}")
        for name in methods:
            cells, allv = [], []
            for held in NB201_DATASETS:
                v = np.array(rows[(held, k, name)])
                allv.append(v)
                cells.append(_cell(v))
            print(f"{name:26s} " + " ".join(f"{c:>22s}" for c in cells) + f" {_cell(np.concatenate(allv)):>22s}")
    print("\ncells: spearman / regret (points)")
    from pomonag_edge.spaces.mbv3.accuracy import estimate_note

    print(estimate_note())


def train_main(args) -> int:
    """``--generate --train N``: the closed loop on each held-out dataset, beside the one-shot pick and the best of
    as many measured nets."""
    import json
    import sys
    import tempfile
    import time
    from pathlib import Path

    import torch

    from pomonag_edge.closed_loop import LoopOptions
    from pomonag_edge.data import NB201_DATASETS, nb201_accuracy
    from pomonag_edge.dataset_profile import DatasetProfile
    from pomonag_edge.generate import generate_run
    from pomonag_edge.predictors.accuracy_fewshot import choose_probes, fit_fewshot, unique_functions
    from pomonag_edge.spaces.nb201 import SPACE

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    (work / "lookup.py").write_text("import json, sys\nprint(json.load(open(sys.argv[1]))[sys.argv[2]])\n")
    universe = unique_functions(SPACE)
    rows, started = [], time.perf_counter()
    print(f"closed loop: generate --train {args.train} (command trainer looking the held-out table up), candidates: "
          f"--strategy {args.strategy}; leave one NB201 dataset out; regret = oracle - pick, true accuracy points, "
          f"params budgets at {'/'.join(map(str, QUANTILES))}% quantiles; seed 0")
    for k in args.shots:
        for held in NB201_DATASETS:
            others = tuple(d for d in NB201_DATASETS if d != held)
            truth = nb201_accuracy(held)
            params = np.array([SPACE.params(SPACE.from_index(i), held) for i in range(15625)], dtype=np.float64)
            budgets = np.percentile(params[universe], QUANTILES)
            table = work / f"{held}.json"
            table.write_text(json.dumps({str(SPACE.from_index(i)): float(truth[i]) for i in range(15625)}))
            probes = choose_probes(SPACE, k, 0, others)
            measurements = [{"arch": str(a), "accuracy": float(truth[SPACE.index(a)])} for a in probes]
            task = DatasetProfile(name=f"{held}-heldout", space="nb201", measurements=measurements,
                                  source={"num_classes": 10, "input_shape": [3, 32, 32],
                                          "probe": {"epochs": 200, "seed": 0}})
            task.accuracy_model = fit_fewshot(SPACE, probes, [m["accuracy"] for m in measurements], others,
                                              task=task.name).to_dict()
            task_path = task.save(work / f"{held}-k{k}.json")
            many = np.array([SPACE.index(a) for a in choose_probes(SPACE, k + args.train, 0, others)])
            for q, b in zip(QUANTILES, budgets):
                ok = universe[params[universe] <= b]
                oracle = float(truth[ok].max())
                t0 = time.perf_counter()
                run = generate_run(space="nb201", profile="pixel3", dataset=str(task_path), max_params=float(b),
                                   num=10, samples=512, strategy=args.strategy, seed=0,
                                   out=work / "runs" / f"{held}-k{k}-q{q}",
                                   loop=LoopOptions(train=args.train,
                                                    trainer=f"{sys.executable} {work / 'lookup.py'} {table} {{arch}}"))
                wall = time.perf_counter() - t0
                rounds = json.loads((run.path / "loop.json").read_text())["rounds"]
                score = lambda arch: float(truth[SPACE.index(SPACE.canonical(SPACE.parse(arch)))])  # noqa: E731
                fit = many[params[many] <= b]
                best = float(truth[fit].max()) if len(fit) else float(np.median(truth[ok]))
                row = {"k": k, "held": held, "q": q, "loop": oracle - score(run.result.selected[0]["arch"]),
                       "one-shot": oracle - score(rounds[0]["top_pick"]), "best": oracle - best,
                       "trained": run.manifest["loop"]["trainings"], "stop": run.manifest["loop"]["stop"]["reason"],
                       "wall": wall}
                rows.append(row)
                print(f"K={k} {held} q{q}: loop {row['loop']:.2f} ({k}+{row['trained']} trained, {row['stop']}) | "
                      f"one-shot {row['one-shot']:.2f} ({k}) | best of {k + args.train} measured {row['best']:.2f} | "
                      f"{wall:.1f}s", flush=True)
    for k in args.shots:
        rs = [r for r in rows if r["k"] == k]
        print(f"\nK = {k} probes, --train {args.train}: mean regret over {len(rs)} (dataset, budget) settings")
        print(f"{'method':<40}" + "".join(f"{d:>16}" for d in NB201_DATASETS) + f"{'mean':>8}{'nets':>7}")
        for key, label, nets in (("loop", f"generate --train {args.train} (closed loop)",
                                  k + np.mean([r["trained"] for r in rs])),
                                 ("one-shot", "one-shot pick (--train 0)", k),
                                 ("best", f"best of {k + args.train} measured", k + args.train)):
            cells = [np.mean([r[key] for r in rs if r["held"] == d]) for d in NB201_DATASETS]
            print(f"{label:<40}" + "".join(f"{c:>16.2f}" for c in cells)
                  + f"{np.mean([r[key] for r in rs]):>8.2f}{nets:>7.1f}")
        loop, best = np.mean([r["loop"] for r in rs]), np.mean([r["best"] for r in rs])
        print(f"loop / best-of-measured = {loop / best if best else float('nan'):.2f} (target <= 0.5 at 30 nets); "
              "stops: " + ", ".join(f"{s} {sum(r['stop'] == s for r in rs)}"
                                     for s in dict.fromkeys(r["stop"] for r in rs)))
    print(f"wall {time.perf_counter() - started:.0f} s")
    return 0


def _cell(v: np.ndarray) -> str:
    sp = np.nanmean(v[:, 0]) if np.isfinite(v[:, 0]).any() else np.nan
    return ("   -  " if np.isnan(sp) else f"{sp:.3f}") + f" / {np.mean(v[:, 1]):.2f}"


if __name__ == "__main__":
    main()
