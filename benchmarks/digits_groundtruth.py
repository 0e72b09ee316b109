"""A small ground-truth table on real images (scikit-learn's 1,797 digits), made with the project's own training,
and the few-shot accuracy model scored against it.

Nets: ``--probes`` chosen by ``choose_probes`` (what ``probe`` trains) and ``--held-out`` uniformly random
distinct functions, each trained with ``training.train_net`` (what ``probe`` and ``train`` run: NB201's recipe
for ``--epochs``, seed 0, the seeded 80/20 split) and measured on the validation split. Rows are appended to
``benchmarks/data/digits_groundtruth.csv`` as each net finishes, so a stopped run resumes.

Score (``score``): leave one out over every trained net, the few-shot model against each shipped table's
ranking and params-only; the training time this CPU allows keeps the table small, so read it as a sanity check
on real images, not as a benchmark.

    python benchmarks/digits_groundtruth.py [--epochs 5] [--probes 6] [--held-out 8]  # trains what is missing, scores
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

    from pomonag_edge.predictors.accuracy_fewshot import choose_probes, unique_functions
    from pomonag_edge.spaces.nb201 import SPACE
    from pomonag_edge.training import Recipe, train_net

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    data = digits_data()
    chosen = choose_probes(SPACE, probes, seed=0)
    pool = np.setdiff1d(unique_functions(SPACE), [SPACE.index(a) for a in chosen])
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
    """Leave one out over every trained net: the few-shot model fitted on the others predicts it (all three
    shipped tables as the prior); beside it, each shipped table's and params' ranking of the same nets. With
    ``dataset``, a dataset profile's stored model (e.g. from ``probe``) is scored on the nets it did not measure."""
    from pomonag_edge.data import NB201_DATASETS, nb201_accuracy
    from pomonag_edge.predictors.accuracy_fewshot import fit_fewshot
    from pomonag_edge.spaces.nb201 import SPACE

    rows = read_rows()
    if len(rows) < 6:
        raise SystemExit(f"{TABLE} holds {len(rows)} nets; scoring needs at least 6")
    archs = [SPACE.parse(r["arch"]) for r in rows]
    idx = np.array([SPACE.index(a) for a in archs])
    truth = np.array([float(r["accuracy"]) for r in rows])
    loo = np.array([fit_fewshot(SPACE, [a for j, a in enumerate(archs) if j != i],
                                np.delete(truth, i)).predict([archs[i]])[0] for i in range(len(rows))])
    cands = {"fewshot (leave one out)": loo}
    for d in NB201_DATASETS:
        cands[f"{d} table"] = nb201_accuracy(d)[idx]
    cands["params-only"] = np.array([SPACE.params(a) for a in archs], dtype=np.float64)
    if dataset:  # a dataset profile made elsewhere, e.g. by `pomonag-edge probe --data DIGITS`
        from pomonag_edge.dataset_profile import accuracy_model_of, resolve_dataset

        prof = resolve_dataset(dataset, SPACE)
        seen = {m["arch"] for m in prof.measurements}
        keep = np.array([str(a) not in seen for a in archs])
        cands[f"profile {Path(dataset).name}"] = np.where(keep, accuracy_model_of(prof).predict(archs), np.nan)
    epochs = sorted({r["epochs"] for r in rows})
    print(f"digits: {len(rows)} nets trained ({sum(r['role'] == 'probe' for r in rows)} chosen probes, "
          f"{sum(r['role'] != 'probe' for r in rows)} random), {'/'.join(epochs)} epochs, validation accuracy "
          f"{truth.min():.1f}-{truth.max():.1f}%")
    print(f"{'ranking':28s} {'spearman':>9s} {'MAE':>7s}")
    for name, s in cands.items():
        ok = np.isfinite(s)
        mae = f"{np.mean(np.abs(s[ok] - truth[ok])):7.2f}" if name.startswith(("fewshot", "profile")) else "      -"
        print(f"{name:28s} {spearmanr(s[ok], truth[ok])[0]:9.3f} {mae}")


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
