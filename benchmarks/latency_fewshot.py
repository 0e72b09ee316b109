"""Few-shot latency on unseen devices: leave one of a space's shipped latency tables out, pretrain the space's
latency embedding on the others, adapt with ``--shots`` measured nets, score on the rest of that device's nets.

Prints per device the adapted model's Spearman, Kendall and MAPE (means over seeds), the pretrained prior's
Spearman before any timing, the MACs-only ranking, and HELP's published figure (0.932 mean Spearman, 10
samples, NeurIPS 2021). Scored on the device's measured *valid* nets: a net whose output is independent of its
input is never generated (pixel3 times those at ~0.004 ms, which no few-shot fit can see coming).

    python benchmarks/latency_fewshot.py                 # nb201: all 32 devices, 5 seeds
    python benchmarks/latency_fewshot.py --quick         # 6 devices, 2 seeds, shorter pretraining
    python benchmarks/latency_fewshot.py --space mbv3    # the 9 OFA GPU settings
    python benchmarks/latency_fewshot.py --family-out [--family-threshold 0.95]   # leave one family out, K=5/10/20

Where the tables cover the whole space (nb201) the adapted model averages the embedding head with the sibling
tables, and two ceilings are printed beside each device: ``ceil-sp``/``ceil-MAPE`` fit the same model family
(the fold's embedding plus all training tables, affine in log space) by least squares on the held-out device's
*whole* table; ``ties-sp`` is a perfect continuous predictor against the table as stored (below 1 only for
whole-millisecond phones). ``covered%``: how often a held-out net's measured latency is within the prediction
plus the model's own per-net 90% margin (~90 means the margin is honest); ``glob-cov``/``cov-g%``: the same for one
global margin, the q90 of the K held-out errors, on every net (what ``generate`` used before per-net margins).
A space whose tables do not cover it (mbv3) also
prints its shipped reference profiles' held-out errors, their budget margins.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

# Each fold's numpy work is small matrices: BLAS threads only oversubscribe a shared machine (set before import).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

HELP_SPEARMAN = 0.932
CPU_TABLE = Path(__file__).parent / "data" / "nb201_this_cpu_ms.csv"  # written by benchmarks/time_cpu_nb201.py


def main(argv=None):
    import torch

    from pomonag_edge.predictors.latency import fit_calibration
    from pomonag_edge.predictors.latency_pretrain import PretrainedEmbedding, head_design, load_pretrained
    from pomonag_edge.spaces import get_space

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="nb201")
    p.add_argument("--quick", action="store_true", help="every 6th device, 2 seeds, half the pretraining")
    p.add_argument("--devices", nargs="*", help="held-out devices (default: all)")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="pretraining steps per fold (default: the space's)")
    p.add_argument("--family-out", action="store_true",
                   help="hold each device out with every shipped device that ranks the nets like it (+ this CPU)")
    p.add_argument("--family-threshold", type=float, default=0.95,
                   help="Spearman on the full tables at or above which a shipped device is the held-out one's kin")
    p.add_argument("--ks", default="5,10,20", help="--family-out: timings per device, comma-separated")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    space = get_space(args.space)
    recipe = space.latency_recipe
    archs, names, ms = recipe.tables()
    if args.family_out:
        return family_out(space, archs, names, ms, args)
    held = args.devices or (names[::6] if args.quick else names)
    seeds = args.seeds or (2 if args.quick else 5)
    steps = args.steps or (recipe.fold["steps"] // 2 if args.quick else recipe.fold["steps"])
    macs = np.array([space.macs(a) for a in archs], dtype=np.float64)
    valid = np.array([space.is_valid(a) for a in archs])
    covers = recipe.covers_space and len(archs) == space.size()

    print(f"{space.name} latency few-shot: leave one of {len(names)} devices out, pretrain on the rest ({steps} "
          f"steps), adapt with {args.shots} random nets, {seeds} seeds; scored on the other nets")
    extra = f" {'ceil-sp':>8s} {'ceil-MAPE':>9s} {'ties-sp':>8s}" if covers else ""
    print(f"{'device':44s} {'spearman':>8s} {'kendall':>8s} {'MAPE%':>7s} {'prior-sp':>8s} {'MACs-sp':>8s} "
          f"{'HELP-sp':>8s} {'covered%':>8s}{extra} {'glob-cov':>8s}")
    rows, t0 = [], time.time()
    for dev in held:
        d = names.index(dev)
        train = [j for j in range(len(names)) if j != d]
        pre = PretrainedEmbedding.from_tables(space, archs, ms[:, train], [names[j] for j in train], steps=steps,
                                              seed=0)
        target = ms[:, d]
        pool = np.where(np.isfinite(target) & valid)[0]
        phi = pre.phi([archs[i] for i in pool])
        prior_sp = spearmanr(head_design(phi) @ pre.prior_mean, target[pool])[0]
        sp, kt, mape, covered, covered_global = [], [], [], [], []
        for seed in range(seeds):
            shots = np.random.default_rng(seed).choice(pool, size=args.shots, replace=False)
            model = fit_calibration(space, [archs[i] for i in shots], target[shots], pre)
            rest = np.setdiff1d(pool, shots)
            pred = model.predict_ms([archs[i] for i in rest])
            sp.append(spearmanr(pred, target[rest])[0])
            kt.append(kendalltau(pred, target[rest])[0])
            mape.append(100 * np.mean(np.abs(pred / target[rest] - 1)))
            covered.append(100 * np.mean(target[rest] <= model.quantile_ms([archs[i] for i in rest])))
            covered_global.append(100 * np.mean(target[rest] <= pred * (1 + model.relative_error)))
        msp = spearmanr(macs[pool], target[pool])[0]
        row = [np.mean(sp), np.mean(kt), np.mean(mape), prior_sp, msp, np.mean(covered)]
        if covers:
            row += list(_ceilings(pre, phi, target, pool))
        row.append(np.mean(covered_global))
        rows.append(row)
        tail = f" {row[6]:8.3f} {row[7]:9.1f} {row[8]:8.3f}" if covers else ""
        print(f"{dev:44s} {row[0]:8.3f} {row[1]:8.3f} {row[2]:7.1f} {row[3]:8.3f} {row[4]:8.3f} {HELP_SPEARMAN:8.3f} "
              f"{row[5]:8.1f}{tail} {row[-1]:8.1f}", flush=True)
    m = np.mean(rows, axis=0)
    tail = (f" {m[6]:8.3f} {m[7]:9.1f} {m[8]:8.3f}" if covers else "") + f" {m[-1]:8.1f}"
    label = f"MEAN ({len(rows)} devices, {seeds} seeds, {args.shots} shots)"
    print(f"{label:44s} {m[0]:8.3f} {m[1]:8.3f} {m[2]:7.1f} {m[3]:8.3f} {m[4]:8.3f} {HELP_SPEARMAN:8.3f} "
          f"{m[5]:8.1f}{tail}")
    below = [f"{dev} {r[0]:.4f}" for dev, r in zip(held, rows) if r[0] < 0.90]
    print(f"worst device spearman {min(r[0] for r in rows):.3f}; devices below 0.90: {len(below)} "
          f"({', '.join(below) or 'none'}); {time.time() - t0:.0f} s")
    shipped = load_pretrained(space)
    if shipped.heldout:
        print(f"\nReference {space.name} profiles (shipped checkpoint {shipped.sha256}): error on the nets held out "
              "of an identical fit; the q90 error is the profile's budget margin")
        print(f"{'setting':12s} {'Spearman':>8s} {'Kendall':>7s} {'MAPE':>6s} {'q90 err':>7s}")
        for name, r in shipped.heldout.items():
            print(f"{name:12s} {r['spearman']:8.3f} {r['kendall']:7.3f} {100 * r['mape']:5.1f}% "
                  f"{100 * r['rel_err_q90']:6.1f}%")


def this_cpu_column(space, n: int) -> np.ndarray | None:
    """This machine's NB201 timings (``benchmarks/time_cpu_nb201.py``) as a table column, NaN where untimed."""
    if space.name != "nb201" or not CPU_TABLE.exists():
        return None
    col = np.full(n, np.nan)
    with CPU_TABLE.open() as f:
        for row in csv.DictReader(f):
            col[int(row["index"])] = float(row["latency_ms"])
    return col


def families(ms: np.ndarray, threshold: float) -> list[list[int]]:
    """Per column, the other columns whose Spearman with it (on the nets both measured) is >= ``threshold``."""
    out = []
    for d in range(ms.shape[1]):
        kin = []
        for j in range(ms.shape[1]):
            both = np.isfinite(ms[:, d]) & np.isfinite(ms[:, j])
            if j != d and both.sum() > 20 and spearmanr(ms[both, d], ms[both, j])[0] >= threshold:
                kin.append(j)
        out.append(kin)
    return out


def family_out(space, archs, names, ms, args) -> None:
    """Leave-one-family-out: per device and K, Spearman of the model beside MACs-only, params-only and the model
    before cost-proxy fallbacks (embedding head + sibling tables: the LUT-free model of the previous version);
    MAPE and covered% of the model (its per-net margins), and cov-g% (one global q90 margin); every number a mean
    over seeds, on the device's untimed valid nets."""
    from pomonag_edge.predictors.latency import fit_calibration
    from pomonag_edge.predictors.latency_pretrain import PretrainedEmbedding

    recipe = space.latency_recipe
    ks = [int(k) for k in args.ks.split(",")]
    seeds = args.seeds or (2 if args.quick else 5)
    steps = args.steps or (recipe.fold["steps"] // 2 if args.quick else recipe.fold["steps"])
    valid = np.array([space.is_valid(a) for a in archs])
    cpu = this_cpu_column(space, len(archs))
    cols, labels = ms, list(names)
    if cpu is not None:
        cols, labels = np.hstack([ms, cpu[:, None]]), labels + ["this-cpu (ORT, 1 thread)"]
    kin = families(cols, args.family_threshold)
    held = [labels.index(d) for d in args.devices] if args.devices else (
        list(range(0, len(names), 6)) + ([len(names)] if cpu is not None else []) if args.quick else range(len(labels)))
    macs = np.array([space.macs(a) for a in archs], dtype=np.float64)
    params = np.array([space.params(a) for a in archs], dtype=np.float64)
    old_name = "head+siblings" if recipe.covers_space and len(archs) == space.size() else "head"
    print(f"{space.name} latency few-shot, leave-one-family-out: a device is held out with every shipped device "
          f"whose full table ranks the nets at Spearman >= {args.family_threshold}; pretrain on the rest ({steps} "
          f"steps), adapt with K random valid nets, {seeds} seeds; scored on the device's other valid nets")
    print(f"{'device':40s} {'fam':>3s} {'K':>3s} {'model':>6s} {'MACs':>6s} {'params':>6s} {'before':>6s} "
          f"{'MAPE%':>6s} {'cov%':>5s} {'cov-g%':>6s}  main candidates")
    rows, t0 = [], time.time()
    for d in held:
        train = [j for j in range(len(names)) if j != d and j not in kin[d]]
        pre = PretrainedEmbedding.from_tables(space, archs, ms[:, train], [names[j] for j in train], steps=steps,
                                              seed=0)
        target = cols[:, d]
        pool = np.where(np.isfinite(target) & valid)[0]
        for k in ks:
            r = {"model": [], "macs": [], "params": [], "before": [], "mape": [], "cov": [], "cov_g": [], "marg": [],
                 "marg_g": []}
            mains = {}
            for seed in range(seeds):
                shots = np.random.default_rng(seed).choice(pool, size=k, replace=False)
                model = fit_calibration(space, [archs[i] for i in shots], target[shots], pre)
                rest = np.setdiff1d(pool, shots)
                ra = [archs[i] for i in rest]
                pred = model.predict_ms(ra)
                cands = model.state["candidates"]
                old = next((c for c in cands if c["name"] == old_name), None)
                if old is None:  # pruned for lack of weight: refit it alone for the comparison
                    old = _candidate_coef(pre, space, [archs[i] for i in shots], target[shots], old_name)
                else:
                    old = old["coef"]
                r["model"].append(spearmanr(pred, target[rest])[0])
                r["macs"].append(spearmanr(macs[rest], target[rest])[0])
                r["params"].append(spearmanr(params[rest], target[rest])[0])
                r["before"].append(spearmanr(pre.joint_features(ra) @ np.asarray(old), target[rest])[0])
                r["mape"].append(100 * np.mean(np.abs(pred / target[rest] - 1)))
                bound = model.quantile_ms(ra)
                r["cov"].append(100 * np.mean(target[rest] <= bound))
                r["cov_g"].append(100 * np.mean(target[rest] <= pred * (1 + model.relative_error)))
                r["marg"].append(100 * np.median(bound / pred - 1))
                r["marg_g"].append(100 * model.relative_error)
                for c in cands:
                    mains[c["name"]] = mains.get(c["name"], 0.0) + c["weight"] / seeds
            m = {key: float(np.mean(v)) for key, v in r.items()}
            rows.append((d, k, m))
            top = ", ".join(f"{n} {w:.2f}" for n, w in sorted(mains.items(), key=lambda t: -t[1])[:3])
            print(f"{labels[d][:40]:40s} {len(kin[d]):3d} {k:3d} {m['model']:6.3f} {m['macs']:6.3f} "
                  f"{m['params']:6.3f} {m['before']:6.3f} {m['mape']:6.1f} {m['cov']:5.1f} {m['cov_g']:6.1f}  {top}",
                  flush=True)
    print()
    for k in ks:
        ms_k = [m for _, kk, m in rows if kk == k]
        worst = min(m["model"] - m["macs"] for m in ms_k)
        print(f"MEAN K={k:<3d} ({len(ms_k)} devices) model {np.mean([m['model'] for m in ms_k]):.3f}  MACs "
              f"{np.mean([m['macs'] for m in ms_k]):.3f}  params {np.mean([m['params'] for m in ms_k]):.3f}  before "
              f"{np.mean([m['before'] for m in ms_k]):.3f}  MAPE {np.mean([m['mape'] for m in ms_k]):.1f}%  covered "
              f"{np.mean([m['cov'] for m in ms_k]):.1f}% (lowest device {min(m['cov'] for m in ms_k):.1f}%)  "
              f"worst model-MACs {worst:+.3f}")
        print(f"           90% margins: per-net median {np.mean([m['marg'] for m in ms_k]):.1f}%, covered "
              f"{np.mean([m['cov'] for m in ms_k]):.1f}%; one global q90 {np.mean([m['marg_g'] for m in ms_k]):.1f}%, "
              f"covered {np.mean([m['cov_g'] for m in ms_k]):.1f}% (lowest device "
              f"{min(m['cov_g'] for m in ms_k):.1f}%)")
    print(f"{time.time() - t0:.0f} s")


def _candidate_coef(pre, space, archs, y_ms, name):
    from pomonag_edge.predictors.fewshot import fit_candidates
    from pomonag_edge.predictors.latency_pretrain import head_design

    design = head_design(pre.phi(archs))
    tables = pre.sibling_tables()[[space.table_index(a) for a in archs]] if pre.covers_space else None
    cands = fit_candidates(design, tables, pre.proxies(archs), np.log(y_ms), pre.prior_components())
    return next(c["coef"] for c in cands if c["name"] == name)


def _ceilings(pre, phi, target, pool) -> tuple[float, float, float]:
    """(Spearman, MAPE %) of the model family fitted to the held-out device's whole table by least squares,
    and the Spearman of a perfect tie-free predictor against the stored (possibly whole-ms) table."""
    design = np.hstack([phi, np.ones((len(pool), 1)), pre.sibling_tables()[pool]])
    y = np.log(target[pool])
    fit = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    return spearmanr(fit, y)[0], 100 * np.mean(np.abs(np.exp(fit - y) - 1)), _tie_ceiling(target[pool])


def _tie_ceiling(values: np.ndarray) -> float:
    """Spearman of any tie-free ranking that agrees with ``values`` wherever they differ: the same for every
    way of breaking the ties (within a tie the average rank is constant)."""
    order = np.lexsort((np.arange(len(values)), values))
    strict = np.empty(len(values))
    strict[order] = np.arange(len(values))
    return spearmanr(values, strict)[0]


if __name__ == "__main__":
    main()
