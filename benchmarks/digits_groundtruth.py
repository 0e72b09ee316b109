"""A small ground-truth table on real images (scikit-learn's 1,797 digits), made with the project's own training,
and the few-shot accuracy model scored against it.

Nets: ``--probes`` chosen by ``choose_probes`` (what ``probe`` trains) and ``--held-out`` uniformly random
distinct functions, each trained with ``training.train_net`` (what ``probe`` and ``train`` run: NB201's recipe
for ``--epochs``, seed 0, the seeded 80/20 split) and measured on the validation split. Rows are appended to
``benchmarks/data/digits_groundtruth.csv`` as each net finishes, so a stopped run resumes.

Score: the few-shot model fitted on the probe rows only (all three shipped tables as the prior), against the
held-out rows: Spearman, and the true accuracy of its best-predicted held-out net vs the best held-out net;
beside each shipped table's ranking and params-only.

    python benchmarks/digits_groundtruth.py [--epochs 5] [--probes 6] [--held-out 8]   # trains what is missing, then scores
    python benchmarks/digits_groundtruth.py --score-only [--dataset datasets/digits.json]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

TABLE = Path(__file__).parent / "data" / "digits_groundtruth.csv"
FIELDS = ("role", "arch", "accuracy", "epochs", "seed", "seconds", "device")


def digits_data():
    from sklearn.datasets import load_digits

    from pomonag_edge.userdata import load_user_data

    digits = load_digits()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.npz"
        np.savez(path, x=(digits.images / 16.0).astype(np.float32), y=digits.target)
        return load_user_data(path, input_hw=32, seed=0)


def read_rows() -> list[dict]:
    if not TABLE.is_file():
        return []
    return list(csv.DictReader(TABLE.read_text().splitlines()))


def write_rows(rows: list[dict]) -> None:
    from pomonag_edge.files import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(TABLE, buf.getvalue())


def build(epochs: int, probes: int, held_out: int) -> None:
    import torch

    from pomonag_edge.predictors.accuracy_fewshot import _unique_functions, choose_probes
    from pomonag_edge.spaces.nb201 import SPACE
    from pomonag_edge.training import Recipe, train_net

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    data = digits_data()
    chosen = choose_probes(probes, seed=0)
    pool = np.setdiff1d(_unique_functions(), [SPACE.index(a) for a in chosen])
    held = [SPACE.from_index(int(i)) for i in np.random.default_rng(1).choice(pool, held_out, replace=False)]
    rows = [r for r in read_rows() if int(r["epochs"]) == epochs]
    done = {r["arch"] for r in rows}
    for role, archs in (("probe", chosen), ("held-out", held)):
        for arch in archs:
            if str(arch) in done:
                continue
            r = train_net(SPACE, arch, data, Recipe(epochs=epochs, seed=0))
            rows.append({"role": role, "arch": str(arch), "accuracy": r["accuracy"], "epochs": epochs, "seed": 0,
                         "seconds": r["seconds"], "device": r["device"]})
            write_rows(rows)
            print(f"{role:8s} {r['accuracy']:6.2f}% {r['seconds']:6.1f}s {arch}", flush=True)


def score(dataset: str | None = None) -> None:
    from pomonag_edge.data import NB201_DATASETS, nb201_accuracy
    from pomonag_edge.predictors.accuracy_fewshot import fit_fewshot
    from pomonag_edge.spaces.nb201 import SPACE

    rows = read_rows()
    probe = [r for r in rows if r["role"] == "probe"]
    held = [r for r in rows if r["role"] == "held-out"]
    idx = np.array([SPACE.index(SPACE.parse(r["arch"])) for r in held])
    truth = np.array([float(r["accuracy"]) for r in held])
    model = fit_fewshot([SPACE.parse(r["arch"]) for r in probe], [float(r["accuracy"]) for r in probe])
    cands = {"fewshot (from the probes)": model.predict_index(idx)}
    if dataset:  # a dataset profile made elsewhere, e.g. by `pomonag-edge probe --data DIGITS`
        from pomonag_edge.dataset_profile import accuracy_model_of, resolve_dataset

        cands[f"profile {Path(dataset).name}"] = accuracy_model_of(resolve_dataset(dataset, SPACE)).predict_index(idx)
    for d in NB201_DATASETS:
        cands[f"{d} table"] = nb201_accuracy(d)[idx]
    cands["params-only"] = np.array([SPACE.params(SPACE.from_index(int(i))) for i in idx], dtype=np.float64)
    epochs = {r["epochs"] for r in rows}
    print(f"digits ({len(probe)} probes, {len(held)} held-out nets, {'/'.join(sorted(epochs))} epochs; held-out "
          f"accuracy {truth.min():.1f}-{truth.max():.1f}%, best {truth.max():.2f}%)")
    print(f"{'ranking':28s} {'spearman':>9s} {'pick':>7s} {'regret':>7s}")
    for name, s in cands.items():
        pick = truth[np.argmax(s)]
        print(f"{name:28s} {spearmanr(s, truth)[0]:9.3f} {pick:7.2f} {truth.max() - pick:7.2f}")
    cv = model.state["cv"]
    print(f"model's own cross-validated error on the probes: 90% within {cv['error_points']:.2f} points, "
          f"Spearman {cv['spearman']:.2f}; its actual error on held-out nets: 90% within "
          f"{np.quantile(np.abs(model.predict_index(idx) - truth), 0.9):.2f} points")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--probes", type=int, default=6)
    p.add_argument("--held-out", type=int, default=8)
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--dataset", default=None, metavar="PATH", help="also score this dataset profile's model")
    args = p.parse_args(argv)
    if not args.score_only:
        build(args.epochs, args.probes, args.held_out)
    score(args.dataset)


if __name__ == "__main__":
    main()
