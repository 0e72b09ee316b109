"""Wall time of ``probe`` on Ray with 1 and 2 workers on this machine, beside the sequential run, and the speed-up.

Each run is the real command (``python -m pomonag_edge probe``) on scikit-learn's digits (an image folder of
``--per-class`` images per digit): ``--probes`` nets for ``--epochs`` each, one torch thread per net
(``--cpus-per-net 1``), so every run trains the same nets to the same numbers (checked: their measurement columns
must agree, else the script says so). The Ray runs go to a throwaway head on 127.0.0.1 (``fanout.local_head``) with
1 or 2 CPUs, so 1 or 2 nets train at a time. The load average is printed beside each time: on a shared machine the
figures move with it.

With ``--gpus G --gpus-per-net F`` (a GPU node) the sequential run trains on the GPU one net at a time and the Ray
run packs 1/F nets on each of G GPUs (a head with G GPUs and every CPU).

    python benchmarks/probe_scale.py [--probes 6] [--epochs 2] [--per-class 60]
    python benchmarks/probe_scale.py --gpus 1 --gpus-per-net 0.25 --per-class 180 --epochs 10
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def digits_folder(root: Path, per_class: int) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits, counts = load_digits(), {}
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(root / str(label) / f"{i:04d}.png")
    return root


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def probe(args: list, out: Path, env=None) -> tuple[float, list, str]:
    """(wall seconds, measurement columns, load average before) of one probe run."""
    before = load()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pomonag_edge", "probe", *map(str, args), "--out", out],
                       capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"probe failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    rows = csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text()))
    return seconds, [(row["arch"], row["accuracy"]) for row in rows], before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probes", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=60, help="digits per class (at most ~178)")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs of the head (a GPU node); 0: the CPU benchmark")
    ap.add_argument("--gpus-per-net", type=float, default=0.25)
    a = ap.parse_args()
    from pomonag_edge.fanout import local_head

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = digits_folder(tmp / "digits", a.per_class)
        base = ["--data", data, "--probes", a.probes, "--epochs", a.epochs]
        results = []
        if a.gpus:
            configs = [("sequential, here (GPU)", None, [])]
            configs.append((f"Ray, {a.gpus} GPU(s), {a.gpus_per_net:g} GPU per net",
                            {"num_cpus": os.cpu_count(), "num_gpus": a.gpus}, ["--gpus-per-net", a.gpus_per_net]))
        else:
            base += ["--cpus-per-net", 1]
            configs = [("sequential, here", None, []), ("Ray, 1 worker", {"num_cpus": 1}, []),
                       ("Ray, 2 workers", {"num_cpus": 2}, [])]
        for n, (name, head, extra) in enumerate(configs):
            out = tmp / f"run{n}" / "d.json"
            if head is None:
                results.append((name, *probe(base + extra, out)))
                continue
            with local_head(**head) as h:
                results.append((name, *probe(base + extra + ["--ray", h.address], out, env=h.env)))
        first = results[0][1]
        print(f"probe of {a.probes} nets x {a.epochs} epochs on {10 * a.per_class} digits "
              f"(load average 1/5/15 min before each run; {os.cpu_count()} CPUs, shared)")
        print(f"{'run':44s} {'wall s':>8s} {'speed-up':>9s}  load")
        for name, seconds, _, before in results:
            print(f"{name:44s} {seconds:8.1f} {first / seconds:8.2f}x  {before}")
        if not a.gpus:
            print(f"2 workers vs 1: {results[1][1] / results[2][1]:.2f}x")
        same = all(r[2] == results[0][2] for r in results)
        print(f"measurements identical across runs: {'yes' if same else 'NO'} (load average now {load()})")


if __name__ == "__main__":
    main()
