"""Why one device caps few-shot latency prediction: edgetpu-large's table jumps between two modes.

Its latencies fall in two clusters ~5x apart. This script measures, from the shipped tables alone:

1. the two modes (split at the widest gap in log-ms) and their share of the nets;
2. that the mode is a property of the net, not measurement noise: functional twins (different cell strings
   that compute the same function, hence the same deployed graph) land in the same mode far above chance;
3. that no other device's table carries it: a logistic classifier on all other devices' log-ms, trained on
   80% of this device's *whole* table, predicts the mode of the other 20% barely above the base rate, and
   within the slow mode no other device ranks the nets (best |Spearman| printed).

A few-shot model sees this device only through 10 timings and the other devices' tables, so it cannot tell
which unseen nets are in the slow mode: its ranking is capped well below 0.90 whatever the method.

    python benchmarks/latency_modes.py                  # edgetpu-large
    python benchmarks/latency_modes.py --device pixel3  # the same checks on any shipped table
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from scipy.stats import spearmanr


def main(argv=None):
    from pomonag_edge.spaces.nb201 import SPACE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="embedded-tpu-edgetpu-large")
    args = p.parse_args(argv)
    _, names, ms = SPACE.latency_recipe.tables()
    if args.device not in names:
        p.error(f"unknown device {args.device!r}; shipped: {', '.join(names)}")
    d = names.index(args.device)
    connected = np.array([SPACE.is_valid(a) for a in SPACE.enumerate()])
    ok = np.isfinite(ms[:, d]) & connected
    logy = np.log(ms[:, d])

    # 1. modes: split at the widest gap between consecutive sorted log-ms, inside the central 90%
    srt = np.sort(logy[ok])
    lo, hi = int(0.05 * len(srt)), int(0.95 * len(srt))
    cut = lo + int(np.argmax(np.diff(srt[lo:hi])))
    threshold = 0.5 * (srt[cut] + srt[cut + 1])
    if srt[cut + 1] - srt[cut] < np.log(1.2):
        print(f"{args.device}: no gap in its table (widest {np.exp(srt[cut + 1] - srt[cut]):.2f}x): one mode")
        return
    slow = logy > threshold
    share = slow[ok].mean()
    ratio = np.exp(np.median(logy[ok & slow]) - np.median(logy[ok & ~slow]))
    print(f"{args.device}: {ok.sum()} connected nets; widest gap at {np.exp(threshold):.2f} ms "
          f"({np.exp(srt[cut + 1] - srt[cut]):.2f}x wide); slow mode {100 * share:.1f}% of nets, "
          f"median {ratio:.1f}x the fast mode's")

    # 2. determinism: functional twins
    groups = defaultdict(list)
    for i, arch in enumerate(SPACE.enumerate()):
        if ok[i]:
            groups[SPACE.canonical(arch)].append(i)
    a, b = zip(*[(g[0], j) for g in groups.values() for j in g[1:]])
    agree = np.mean(slow[list(a)] == slow[list(b)])
    chance = share**2 + (1 - share) ** 2
    print(f"functional twins ({len(a)} pairs) in the same mode: {100 * agree:.1f}% (chance {100 * chance:.1f}%); "
          f"median |log ratio| between twins {np.median(np.abs(logy[list(a)] - logy[list(b)])):.3f}")

    # 3. the other devices' tables: a classifier trained on 80% of this device's table, tested on 20%
    others = [j for j in range(len(names)) if j != d]
    feats = np.log(ms[:, others])
    rows = np.where(ok & np.all(np.isfinite(feats), axis=1))[0]
    x = (feats[rows] - feats[rows].mean(0)) / feats[rows].std(0)
    x = np.hstack([x, np.ones((len(rows), 1))])
    t = slow[rows].astype(float)
    order = np.random.default_rng(0).permutation(len(rows))
    train, test = order[: int(0.8 * len(rows))], order[int(0.8 * len(rows)):]
    w = _logistic(x[train], t[train])
    acc = np.mean(((x[test] @ w) > 0) == (t[test] > 0.5))
    base = max(t[test].mean(), 1 - t[test].mean())
    print(f"mode predicted from the {len(others)} other devices' tables (logistic, trained on "
          f"{len(train)} of this device's nets): {100 * acc:.1f}% right on {len(test)} others "
          f"(always guessing the larger mode: {100 * base:.1f}%)")
    inside = ok & slow
    best = max(abs(spearmanr(ms[inside, d], ms[inside, j], nan_policy="omit")[0]) for j in others)
    print(f"within the slow mode, best |Spearman| of any other device: {best:.3f}")


def _logistic(x: np.ndarray, t: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (a few dozen features)."""
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - t) / len(t) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(t) + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


if __name__ == "__main__":
    main()
