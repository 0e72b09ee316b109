"""Few-shot latency on unseen devices: leave one of a space's shipped latency tables out, pretrain the space's
latency embedding on the others, adapt with ``--shots`` measured nets, score on the rest of that device's nets.

Prints per device the adapted model's Spearman, Kendall and MAPE (means over seeds), the pretrained prior's
Spearman before any timing, the MACs-only ranking, and HELP's published figure (0.932 mean Spearman, 10
samples, NeurIPS 2021). Scored on the device's measured *valid* nets: a net whose output is independent of its
input is never generated (pixel3 times those at ~0.004 ms, which no few-shot fit can see coming).

    python benchmarks/latency_fewshot.py                 # nb201: all 32 devices, 5 seeds
    python benchmarks/latency_fewshot.py --quick         # 6 devices, 2 seeds, shorter pretraining
    python benchmarks/latency_fewshot.py --space mbv3    # the 9 OFA GPU settings

Where the tables cover the whole space (nb201) the adapted model averages the embedding head with the sibling
tables, and two ceilings are printed beside each device: ``ceil-sp``/``ceil-MAPE`` fit the same model family
(the fold's embedding plus all training tables, affine in log space) by least squares on the held-out device's
*whole* table; ``ties-sp`` is a perfect continuous predictor against the table as stored (below 1 only for
whole-millisecond phones). ``covered%``: how often a held-out net's measured latency is within the prediction
plus the model's own margin (~90 means the margin is honest). A space whose tables do not cover it (mbv3) also
prints its shipped reference profiles' held-out errors, their budget margins.
"""

from __future__ import annotations

import argparse
import os
import time

# Each fold's numpy work is small matrices: BLAS threads only oversubscribe a shared machine (set before import).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

HELP_SPEARMAN = 0.932  # HELP, 10 samples, mean over its unseen devices


def main(argv=None):
    import torch

    from pomonag_edge.predictors.latency import PretrainedEmbedding, _design, fit_calibration, load_pretrained
    from pomonag_edge.spaces import get_space

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="nb201")
    p.add_argument("--quick", action="store_true", help="every 6th device, 2 seeds, half the pretraining")
    p.add_argument("--devices", nargs="*", help="held-out devices (default: all)")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="pretraining steps per fold (default: the space's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    space = get_space(args.space)
    recipe = space.latency_recipe
    archs, names, ms = recipe.tables()
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
          f"{'HELP-sp':>8s} {'covered%':>8s}{extra}")
    rows, t0 = [], time.time()
    for dev in held:
        d = names.index(dev)
        train = [j for j in range(len(names)) if j != d]
        pre = PretrainedEmbedding.from_tables(space, archs, ms[:, train], [names[j] for j in train], steps=steps,
                                              seed=0)
        target = ms[:, d]
        pool = np.where(np.isfinite(target) & valid)[0]
        phi = pre.phi([archs[i] for i in pool])
        prior_sp = spearmanr(_design(phi) @ pre.prior_mean, target[pool])[0]
        sp, kt, mape, covered = [], [], [], []
        for seed in range(seeds):
            shots = np.random.default_rng(seed).choice(pool, size=args.shots, replace=False)
            model = fit_calibration(space, [archs[i] for i in shots], target[shots], pre)
            rest = np.setdiff1d(pool, shots)
            pred = model.predict_ms([archs[i] for i in rest])
            sp.append(spearmanr(pred, target[rest])[0])
            kt.append(kendalltau(pred, target[rest])[0])
            mape.append(100 * np.mean(np.abs(pred / target[rest] - 1)))
            covered.append(100 * np.mean(target[rest] <= pred + model.margin_ms(pred)))
        msp = spearmanr(macs[pool], target[pool])[0]
        row = [np.mean(sp), np.mean(kt), np.mean(mape), prior_sp, msp, np.mean(covered)]
        if covers:
            row += list(_ceilings(pre, phi, target, pool))
        rows.append(row)
        tail = f" {row[6]:8.3f} {row[7]:9.1f} {row[8]:8.3f}" if covers else ""
        print(f"{dev:44s} {row[0]:8.3f} {row[1]:8.3f} {row[2]:7.1f} {row[3]:8.3f} {row[4]:8.3f} {HELP_SPEARMAN:8.3f} "
              f"{row[5]:8.1f}{tail}", flush=True)
    m = np.mean(rows, axis=0)
    tail = f" {m[6]:8.3f} {m[7]:9.1f} {m[8]:8.3f}" if covers else ""
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
