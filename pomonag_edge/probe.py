"""``probe``: a few nets trained briefly on the user's data -> measurements CSV -> dataset profile.

The probes are chosen to inform the few-shot accuracy model (``accuracy_fewshot.choose_probes``), trained with
NB201's recipe for ``epochs`` and measured on the seeded validation split. Work survives interruption: each
finished probe is appended to the measurements CSV at once (atomically), and the net in training checkpoints
every epoch in ``<out>.probe/``; a rerun with the same data, seed and epochs continues where it stopped.
The CSV is the same ``arch,accuracy`` file ``calibrate`` reads, so the profile can be rebuilt from it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from .dataset_profile import DATASETS_DIR, check_takes_tasks, fit_dataset_profile, task_input_hw
from .errors import UserError
from .files import atomic_write_text, check_name, check_writable

CSV_FIELDS = ("arch", "accuracy", "epochs", "seed", "data", "seconds", "device")


def probe_task(data_path, space_name: str = "nb201", probes: int = 20, epochs: int = 10, out=None, seed: int = 0,
               name: str | None = None, progress=None, device: str | None = None):
    """Train ``probes`` chosen nets on the data at ``data_path``; write ``<out stem>.csv`` and the dataset
    profile ``out`` (default ``datasets/<data name>.json``). Returns (profile, profile path, csv path).
    ``progress(stage, done, total)`` is called per epoch and per probe."""
    from .predictors.accuracy_fewshot import choose_probes
    from .spaces import get_space
    from .training import Recipe, train_net
    from .userdata import load_user_data

    if probes < 5:
        raise UserError(f"--probes must be at least 5 (the accuracy model's minimum), got {probes}")
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    space = get_space(space_name)
    check_takes_tasks(space)
    data = load_user_data(data_path, input_hw=task_input_hw(space), seed=seed)
    name = name or data.name
    out = Path(out) if out is not None else DATASETS_DIR / f"{check_name(name)}.json"
    check_writable(out, "dataset profile")  # before any training
    csv_path, work = out.with_suffix(".csv"), out.with_suffix(".probe")
    fingerprint = data.source["fingerprint"]
    done = {r["arch"]: r for r in _read_rows(csv_path)
            if r.get("data") == fingerprint and int(r["epochs"]) == epochs and int(r["seed"]) == seed}
    archs = choose_probes(space, probes, seed)
    rows = [done[str(a)] for a in archs if str(a) in done]
    recipe = Recipe(epochs=epochs, seed=seed)
    for i, arch in enumerate(archs):
        if progress is not None:
            progress("probes", len(rows), len(archs))
        if str(arch) in done:
            continue
        ckpt = work / f"{hashlib.sha256(str(arch).encode()).hexdigest()[:12]}.pt"
        label = f"probe {i + 1}/{len(archs)}"
        result = train_net(space, arch, data, recipe, checkpoint=ckpt, device=device,
                           progress=None if progress is None else (lambda e, n, loss: progress(label, e, n, loss)))
        rows.append({"arch": str(arch), "accuracy": result["accuracy"], "epochs": epochs, "seed": seed,
                     "data": fingerprint, "seconds": result["seconds"], "device": result["device"]})
        _write_rows(csv_path, rows)
        ckpt.unlink(missing_ok=True)  # its number is in the CSV; the weights of a probe are not needed again
    if progress is not None:
        progress("probes", len(rows), len(archs))
    _write_rows(csv_path, rows)
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    measurements = [{"arch": r["arch"], "accuracy": float(r["accuracy"]), "epochs": int(r["epochs"]),
                     "seed": int(r["seed"]), "source": "probe"} for r in rows]
    source = {**data.source, "probe": {"probes": probes, "epochs": epochs, "seed": seed,
                                       "choice": "spread over the shipped tables' upper half and params",
                                       "measurements_csv": csv_path.name}}
    profile = fit_dataset_profile(space, measurements, name, source=source, scale="percent")
    return profile, profile.save(out), csv_path


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return [r for r in csv.DictReader(path.read_text(encoding="utf-8").splitlines()) if r.get("arch")]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
