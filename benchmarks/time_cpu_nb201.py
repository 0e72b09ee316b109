"""Time a few hundred NB201 nets on this CPU once, for ``latency_fewshot.py --family-out``: one more device
unlike the shipped tables. Never shipped as a training table.

ONNX Runtime, 1 thread, the quick protocol, ``cpu`` clock (this thread's CPU time: steady while other
processes share the machine). Valid nets, one per function, in a seeded random order; rows are appended as
they are timed, so an interrupted run resumes where it stopped.

    python benchmarks/time_cpu_nb201.py                      # 300 nets -> benchmarks/data/nb201_this_cpu_ms.csv
    python benchmarks/time_cpu_nb201.py --nets 50 --out /tmp/x.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).parent / "data" / "nb201_this_cpu_ms.csv"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)

    import torch

    from pomonag_edge.hardware import QUICK, get_backend
    from pomonag_edge.spaces.nb201 import SPACE

    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        with out.open() as f:
            done = {int(r["index"]) for r in csv.DictReader(f)}
    picks, seen = [], set()
    for i in np.random.default_rng(args.seed).permutation(SPACE.size()):
        a = SPACE.from_index(int(i))
        key = str(SPACE.canonical(a))
        if SPACE.is_valid(a) and key not in seen:
            seen.add(key)
            picks.append(int(i))
            if len(picks) == args.nets:
                break
    backend = get_backend("onnxruntime", threads=1, clock="cpu")
    x = np.random.default_rng(args.seed).standard_normal(SPACE.input_shape(None, "cifar10")).astype(np.float32)
    new = not out.exists()
    t0 = time.time()
    with out.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["index", "arch", "latency_ms"])
        for k, i in enumerate(picks):
            if i in done:
                continue
            a = SPACE.from_index(i)
            m = backend.load(SPACE.build(a, "cifar10").eval(), {"input": x}).measure(QUICK)
            w.writerow([i, str(a), f"{m.median_ms:.5f}"])
            f.flush()
            if k % 25 == 0:
                print(f"{k + 1}/{len(picks)} nets, {time.time() - t0:.0f} s", flush=True)
    print(f"wrote {out} ({len(picks)} nets) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
