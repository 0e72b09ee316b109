"""``probe``: a few nets trained briefly on the user's task -> measurements CSV -> dataset profile.

The probes are chosen to inform the few-shot accuracy model (``accuracy_fewshot.choose_probes``) and measured
by a trainer (``trainers``): NB201's recipe for ``epochs`` on the user's images (``--data``), measured on the
seeded validation split, or the user's own pipeline (``--trainer CMD``), which owns its data and prints each
net's accuracy. Work survives interruption: each finished probe is logged by the trainer and appended to the
measurements CSV at once (atomically), and a net in built-in training checkpoints every epoch in
``<out>.probe/``; a rerun with the same data (or command), seed and epochs continues where it stopped. The
CSV is the same ``arch,accuracy`` file ``calibrate`` reads (accuracy in percent), so the profile can be
rebuilt from it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from statistics import NormalDist

from .calibration import csv_rows, row_integers, to_percent
from .dataset_profile import DATASETS_DIR, fit_dataset_profile
from .errors import UserError
from .files import atomic_write_text, check_name, check_writable, read_user_text
from .predictors.accuracy_fewshot import choose_probes
from .spaces import get_space
from .trainers import make_trainer, measure_all
from .userdata import data_name

CSV_FIELDS = ("arch", "accuracy", "epochs", "seed", "data", "seconds", "device", "trainer", "printed", "threads")


def probe_task(data_path=None, space_name: str = "nb201", probes: int = 20, epochs: int = 10, out=None, seed: int = 0,
               name: str | None = None, progress=None, device: str | None = None, trainer: str | None = None,
               trainer_timeout_s: float | None = None, accuracy_scale: str = "auto", num_classes: int = 10,
               threads: int | None = None, ray=None):
    """Measure ``probes`` chosen nets with the built-in trainer on the data at ``data_path``, or with the
    command ``trainer``; write ``<out stem>.csv`` and the dataset profile ``out`` (default
    ``datasets/<name>.json``). Returns (profile, profile path, csv path). ``progress(stage, done, total)`` is
    called per epoch (built-in) and per probe. ``threads``: torch's per built-in probe (``training.TrainingSetup``).
    With ``ray`` (a ``fanout.RayOptions``) each probe is one Ray task, a command trainer's too; the CSV, log,
    checkpoints and profile are written here, as without it."""
    if probes < 5:
        raise UserError(f"--probes must be at least 5 (the accuracy model's minimum), got {probes}")
    space = get_space(space_name)
    if name is None and data_path is None and trainer is not None and out is None:
        raise UserError("--trainer needs --name (the task's name; its profile goes to datasets/NAME.json) or --out")
    name = name or (data_name(data_path) if data_path is not None else Path(out).stem if out is not None else None)
    out = Path(out) if out is not None else DATASETS_DIR / f"{check_name(name)}.json"
    csv_path, work = out.with_suffix(".csv"), out.with_suffix(".probe")
    measurer = make_trainer(space, command=trainer, data=data_path, epochs=epochs, seed=seed, workdir=work,
                            device=device, timeout_s=trainer_timeout_s, scale=accuracy_scale, num_classes=num_classes,
                            name=name, threads=threads)
    check_writable(out, "dataset profile")  # before any training
    key = measurer.row_key()
    done = {r["arch"]: r for r in _read_rows(csv_path, space) if all((r.get(k) or "") == v for k, v in key.items())}
    archs = [str(a) for a in choose_probes(space, probes, seed)]
    rows = {a: done[a] for a in archs if a in done}
    for r in rows.values():  # a value as printed takes part in the trainer's scale; an older CSV's rows are percent
        printed = r.get("printed")
        measurer.remember(space.parse(r["arch"]), float(r["accuracy"] if printed in (None, "") else printed))

    def logged(arch: str) -> dict:
        record = measurer.record(space.parse(arch))
        return {"arch": arch, **key, "seconds": record.get("seconds"), "device": record.get("device"),
                "threads": record.get("threads"), "printed": record["printed"]}

    rows.update({a: logged(a) for a in archs if a not in rows and measurer.record(space.parse(a)) is not None})

    def write():
        _write_rows(csv_path, [rows[a] for a in archs if a in rows], measurer.scale)  # the probes' order, always

    def finished(arch):
        rows[str(arch)] = logged(str(arch))
        write()

    if rows:
        write()  # the values so far, read on one scale before any training (a mix is refused now)
    measure_all(measurer, archs, finished, ray=ray, progress=progress, stage="probes", noun="probe")  # unlogged ones
    rows = [rows[a] for a in archs]
    scale = measurer.scale
    _write_rows(csv_path, rows, scale)
    measurer.log.path.unlink(missing_ok=True)  # every value is in the CSV now
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    measurements = [{"arch": r["arch"], "accuracy": float(r["accuracy"]),
                     **{k: int(r[k]) for k in ("epochs", "seed") if str(r.get(k) or "")},
                     "source": "probe" if trainer is None else "trainer"} for r in rows]
    source = {**measurer.describe(), "probe": {"probes": probes,
                                               "epochs": int(key["epochs"]) if key["epochs"] else None,
                                               "seed": seed,
                                               "choice": "spread over the shipped tables' upper half and params",
                                               "measurements_csv": csv_path.name}}
    counts, n_val = source.get("counts"), (source.get("split") or {}).get("n_val")
    if counts and n_val:
        source["probe"]["chance"] = chance_check([m["accuracy"] for m in measurements], counts, int(n_val))
    profile = fit_dataset_profile(space, measurements, name, source=source, scale=scale)
    return profile, profile.save(out), csv_path


CHANCE_ALPHA = 0.05  # family-wise: the chance that probes which learned nothing look as if one had learned


def chance_check(accuracies: list[float], counts: list[int], n_val: int, alpha: float = CHANCE_ALPHA) -> dict:
    """Whether the probes learned anything: the best probe's validation accuracy (percent) against chance, the
    accuracy of always answering the largest class (100 / classes when they are balanced). A net that learned
    nothing scores chance plus binomial noise on ``n_val`` images; the best of K such nets stays below chance +
    z * sd with probability 1 - ``alpha`` when z is taken at ``alpha / K`` (Bonferroni). ``at_chance`` is true
    when the best probe is within that band: its accuracies then rank nets by luck."""
    p = max(counts) / sum(counts)
    sd_pct = 100.0 * (p * (1.0 - p) / max(n_val, 1)) ** 0.5
    z = NormalDist().inv_cdf(1.0 - alpha / max(len(accuracies), 1))
    best, threshold = max(accuracies), 100.0 * p + z * sd_pct
    return {"chance_pct": round(100.0 * p, 3), "best_pct": round(best, 3), "threshold_pct": round(threshold, 3),
            "n_val": n_val, "probes": len(accuracies), "alpha": alpha, "at_chance": bool(best <= threshold)}


def _read_rows(path: Path, space) -> list[dict]:
    """The rows of an earlier probe's measurements CSV (none if it is absent or empty), read and checked as
    ``calibrate`` reads one (``calibration.csv_rows``): a file that is not a probe's CSV is refused (it would be
    replaced), and a hand-edited row that cannot be read is one line naming it, never a traceback."""
    if not path.exists() or not read_user_text(path, "probe measurements file").strip():
        return []
    fix = "fix or delete that line (its probe is then trained again)"
    rows = []
    for item, _, row in csv_rows(space, path, "accuracy", hint=fix):
        where = f"{path}, line {item['_line']}"
        missing = [c for c in CSV_FIELDS[:5] if c not in row]
        if missing:
            raise UserError(f"{path} is not a probe measurements CSV (no column {', '.join(missing)}) and would be "
                            "replaced: move it away, or pass another --out")
        for key in ("accuracy", "printed"):
            if row.get(key):
                value = item["accuracy"] if key == "accuracy" else _number(row[key], f"{where}: {key}", fix)
                if not (math.isfinite(value) and 0 <= value <= 100):
                    raise UserError(f"{where}: {key} {row[key]!r} must be a number within 0..100; {fix}")
        row_integers(row, where, f"; {fix}")
        rows.append(row)
    return rows


def _number(text: str, what: str, fix: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{what} {text!r} is not a number; {fix}") from None


def _write_rows(path: Path, rows: list[dict], scale: str) -> None:
    """The rows, each one's ``accuracy`` (percent) read from the value it printed under the run's ``scale``."""
    for r in rows:
        if r.get("printed") not in (None, ""):
            r["accuracy"] = round(to_percent(r["printed"], scale), 6)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
