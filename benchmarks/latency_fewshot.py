"""Few-shot latency on unseen devices: leave one shipped NB201 device out, pretrain on the rest, adapt with
10 measured nets, score on the rest of that device's nets.

Prints per device Spearman, Kendall and MAPE (mean over seeds) of the adapted model, the FLOPs-only ranking
measured in the same run, and HELP's published figure (0.932 mean Spearman, 10 samples, NeurIPS 2021).
Scored on the device's measured *connected* nets: disconnected nets (output independent of the input) are
never generated; pixel3 times them at ~0.004 ms, which no few-shot fit can see coming.

    python benchmarks/latency_fewshot.py            # all 32 devices, 5 seeds
    python benchmarks/latency_fewshot.py --quick    # 6 devices, 2 seeds, shorter pretraining
    python benchmarks/latency_fewshot.py --space mbv3   # the 9 OFA GPU settings (benchmarks/latency_fewshot_mbv3.py)

The adapted model (``predictors.latency``) is the log-space mean of the embedding head (mixture prior over
the training heads) and the sibling-table model (every training table and every pair of them, affinely
fitted to the 10 timings, weighted by leave-one-out error). Head alone: 0.938 mean Spearman, 11.5% MAPE;
with single tables: 0.946, 10.6%; with pairs too: 0.949, 9.9%.

Each fold pretrains with ``pretrain_embedding``'s default recipe (600 steps, 64 hidden, 12 dims, ~10 s);
the shipped checkpoint uses a larger one (1500 steps, 128 hidden, 16 dims) that scored the same few-shot
on 6 held-out devices (0.952 vs 0.953 mean Spearman) and fits the training tables better.

Two ceilings are printed beside each device, so a figure can be read against what is achievable:
``ceil-sp``/``ceil-MAPE`` fit the same model family (the fold's embedding head plus all training devices'
tables, affine in log space) by least squares on the held-out device's *whole* table, an in-sample upper
bound for any 10-shot adaptation of that family; ``ties-sp`` is the Spearman of a perfect continuous
predictor against the table as stored (below 1 only for the whole-millisecond phones). ``covered%`` is how
often a held-out net's measured latency is within the prediction plus the model's own margin (its
leave-one-out 90% relative error, which ``generate`` adds to every prediction): ~90 means the margin is honest.

More timings help less than one would hope (same folds, ``--shots``): 20 shots 0.956 / 9.6% MAPE, 50 shots
0.958 / 9.0%. edgetpu-large alone (0.58, ceiling 0.67) costs the mean 0.012, and is capped by its table, not
by the method: ``benchmarks/latency_modes.py`` shows its two modes ~6x apart are a property of the net that
no other device's table predicts.
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
HELP_FLOPS = 0.787  # HELP's own FLOPs baseline figure


def main(argv=None):
    from _space import run_mbv3, split_space  # benchmarks/_space.py

    space, argv = split_space(argv)
    if space == "mbv3":
        return run_mbv3("latency_fewshot_mbv3", argv)
    import torch

    from pomonag_edge.predictors.latency import Pretrained, fit_calibration, shipped_device_tables
    from pomonag_edge.spaces.nb201 import SPACE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="6 devices, 2 seeds, shorter pretraining")
    p.add_argument("--devices", nargs="*", help="held-out devices (default: all)")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="pretraining steps per fold")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    names, ms = shipped_device_tables()
    held = args.devices or (names[::6] if args.quick else names)
    seeds = args.seeds or (2 if args.quick else 5)
    steps = args.steps or (300 if args.quick else 600)
    archs = list(SPACE.enumerate())
    flops = np.array([SPACE.flops(a) for a in archs], dtype=np.float64)
    connected = np.array([SPACE.is_valid(a) for a in archs])

    print(f"{'device':44s} {'spearman':>8s} {'kendall':>8s} {'MAPE%':>7s} {'FLOPs-sp':>8s} {'HELP-sp':>8s} "
          f"{'ceil-sp':>8s} {'ceil-MAPE':>9s} {'ties-sp':>8s} {'covered%':>8s}")
    rows, t0 = [], time.time()
    for dev in held:
        d = names.index(dev)
        train = [j for j in range(len(names)) if j != d]
        pre = Pretrained.from_tables(ms[:, train], [names[j] for j in train], steps=steps, seed=0)
        target = ms[:, d]
        pool = np.where(np.isfinite(target) & connected)[0]
        sp, kt, mape, covered = [], [], [], []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            shots = rng.choice(pool, size=args.shots, replace=False)
            model, _ = fit_calibration(SPACE, [archs[i] for i in shots], target[shots], pre)
            rest = np.setdiff1d(pool, shots)
            pred = model.predict_ms([archs[i] for i in rest])
            sp.append(spearmanr(pred, target[rest])[0])
            kt.append(kendalltau(pred, target[rest])[0])
            mape.append(100 * np.mean(np.abs(pred / target[rest] - 1)))
            covered.append(100 * np.mean(target[rest] <= pred + model.margin_ms(pred)))
        fsp = spearmanr(flops[pool], target[pool])[0]
        rows.append((np.mean(sp), np.mean(kt), np.mean(mape), fsp, *_ceilings(pre, target, pool), np.mean(covered)))
        print(f"{dev:44s} {rows[-1][0]:8.3f} {rows[-1][1]:8.3f} {rows[-1][2]:7.1f} {fsp:8.3f} {HELP_SPEARMAN:8.3f} "
              f"{rows[-1][4]:8.3f} {rows[-1][5]:9.1f} {rows[-1][6]:8.3f} {rows[-1][7]:8.1f}", flush=True)
    m = np.mean(rows, axis=0)
    print(f"{'MEAN (' + str(len(rows)) + ' devices, ' + str(seeds) + ' seeds, ' + str(args.shots) + ' shots)':44s} "
          f"{m[0]:8.3f} {m[1]:8.3f} {m[2]:7.1f} {m[3]:8.3f} {HELP_SPEARMAN:8.3f} {m[4]:8.3f} {m[5]:9.1f} {m[6]:8.3f} "
          f"{m[7]:8.1f}")
    below = [f"{dev} {r[0]:.4f}" for dev, r in zip(held, rows) if r[0] < 0.90]
    print(f"worst device spearman {min(r[0] for r in rows):.3f}; devices below 0.90: "
          f"{len(below)} ({', '.join(below) or 'none'}); HELP published FLOPs baseline {HELP_FLOPS}; "
          f"targets: mean >= 0.96, every device >= 0.90, MAPE <= 10%; {time.time() - t0:.0f} s")


def _ceilings(pre, target, pool) -> tuple[float, float, float]:
    """(Spearman, MAPE %) of the model family fitted to the held-out device's whole table by least squares,
    and the Spearman of a perfect tie-free predictor against the stored (possibly whole-ms) table."""
    design = np.hstack([pre.phi(), np.ones((len(target), 1)), pre.sibling_tables()])[pool]
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
