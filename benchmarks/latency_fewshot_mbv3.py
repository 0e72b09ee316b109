"""MobileNetV3 latency few-shot: leave one OFA GPU setting out, pretrain on the other 8, adapt from 10 timings.

For each of HELP's 9 settings (3 GPUs x batch 1/32/64, 5,000 w1.2 subnets): pretrain the mbv3 latency
embedding (``predictors.latency_mbv3``) on the other 8 settings, then for each seed draw 10 random subnets of
the held-out setting, adapt the head from their measured latency (mixture prior, as for NB201) and score
Spearman, Kendall and MAPE on the setting's other 4,990 subnets. Beside it, measured in the same run:

- ``pretrained``: the prior mean head before any timing (rank only: its scale is the training average);
- ``MACs``: a FLOPs-only ranking (the baseline HELP reports);
- ``i7 LUT`` / ``N10 LUT``: the shipped reference LUTs' sums (i7-8700K CPU, all nets; Note10 phone, only the
  nets at the 5 resolutions it covers) ranked against the GPU table.

    python benchmarks/latency_fewshot_mbv3.py                 # 9 folds x 5 seeds (~a few min on 1 thread)
    python benchmarks/latency_fewshot_mbv3.py --settings v100_1 --seeds 2   # one fold, quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=10, help="timings of the held-out setting used to adapt")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=800, help="pretraining steps per fold")
    p.add_argument("--settings", default=None, help="comma-separated subset of held-out settings")
    args = p.parse_args(argv)

    import torch
    from scipy.stats import kendalltau, spearmanr

    from pomonag_edge.data.mbv3 import REFERENCE_LUT_RESOLUTIONS, ofa_latency_table, reference_lut
    from pomonag_edge.predictors.latency_mbv3 import (Pretrained, _design, fit_calibration, raw_cost_features,
                                                      rank_metrics)
    from pomonag_edge.spaces.mbv3 import SPACE, lut_sum_ms

    torch.set_num_threads(1)
    t0 = time.time()
    table = ofa_latency_table()
    archs, ms, names = list(table.archs), table.latency_ms, list(table.settings)
    cost = raw_cost_features(archs)
    macs = np.array([SPACE.macs(a) for a in archs], dtype=np.float64)
    i7 = np.exp(cost[:, 0])
    on_n10 = np.array([a.r in REFERENCE_LUT_RESOLUTIONS["note10"] for a in archs])
    n10 = np.array([lut_sum_ms(a, reference_lut("note10")) if ok else np.nan for a, ok in zip(archs, on_n10)])
    held_out = args.settings.split(",") if args.settings else names

    print(f"mbv3 latency few-shot: leave one of {len(names)} OFA GPU settings out, pretrain on the rest "
          f"({args.steps} steps), adapt with {args.samples} random nets, {args.seeds} seeds; scored on the other nets")
    head = (f"{'setting':12s} | {'adapted sp':>10s} {'kt':>6s} {'MAPE':>6s} | {'pretr sp':>8s} | {'MACs sp':>7s} "
            f"{'kt':>6s} | {'i7 LUT sp':>9s} | {'N10 LUT sp':>10s}")
    print(head)
    rows = []
    for name in held_out:
        j = names.index(name)
        others = [k for k in range(len(names)) if k != j]
        pre = Pretrained.from_tables(archs, ms[:, others], [names[k] for k in others], cost=cost, steps=args.steps)
        phi = pre.phi(archs, cost)
        y = ms[:, j]
        prior = np.exp(_design(phi) @ pre.prior_mean)
        ad = []
        for seed in range(args.seeds):
            idx = np.random.default_rng(seed).choice(len(archs), args.samples, replace=False)
            model, _ = fit_calibration(SPACE, [archs[i] for i in idx], y[idx], pre)
            rest = np.setdiff1d(np.arange(len(archs)), idx)
            pred = np.exp(_design(phi[rest]) @ model.theta)
            ad.append(rank_metrics(pred, y[rest]))
        r = [np.mean([m["spearman"] for m in ad]), np.mean([m["kendall"] for m in ad]),
             np.mean([m["mape"] for m in ad]), spearmanr(prior, y)[0], spearmanr(macs, y)[0],
             kendalltau(macs, y)[0], spearmanr(i7, y)[0], spearmanr(n10[on_n10], y[on_n10])[0]]
        rows.append(r)
        print(f"{name:12s} | {r[0]:10.3f} {r[1]:6.3f} {100 * r[2]:5.1f}% | {r[3]:8.3f} | {r[4]:7.3f} {r[5]:6.3f} | "
              f"{r[6]:9.3f} | {r[7]:10.3f}", flush=True)
    m = np.mean(rows, 0)
    print(f"{'mean':12s} | {m[0]:10.3f} {m[1]:6.3f} {100 * m[2]:5.1f}% | {m[3]:8.3f} | {m[4]:7.3f} {m[5]:6.3f} | "
          f"{m[6]:9.3f} | {m[7]:10.3f}")
    print(f"({time.time() - t0:.0f} s; Spearman / Kendall / MAPE of the adapted model are means over seeds; the "
          f"baselines need no timing. N10 LUT: the {int(on_n10.sum())} nets at r in "
          f"{REFERENCE_LUT_RESOLUTIONS['note10']})")
    reference_errors()


def reference_errors():
    """The shipped checkpoint's ``heldout``: each reference profile's model on the 10% of nets held out of an
    identical fit (all 9 settings, 90% of the nets); its 90% quantile is that profile's budget margin."""
    from pomonag_edge.predictors.latency_mbv3 import load_pretrained

    pre = load_pretrained()
    print(f"\nReference mbv3 profiles (shipped checkpoint {pre.sha256}): error on the 500 nets held out of the fit")
    print(f"{'setting':12s} {'Spearman':>8s} {'Kendall':>7s} {'MAPE':>6s} {'q90 err':>7s}  "
          "(= relative_error, the margin)")
    for name, m in pre.heldout.items():
        print(f"{name:12s} {m['spearman']:8.3f} {m['kendall']:7.3f} {100 * m['mape']:5.1f}% "
              f"{100 * m['rel_err_q90']:6.1f}%")


if __name__ == "__main__":
    main()
