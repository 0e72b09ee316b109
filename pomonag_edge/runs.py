"""The run folder: what ``generate`` writes and ``train``, ``export`` and the closed loop read, in one place.

Files of a run (keys are stable):

``pareto.json``: a JSON list in rank order; each item has ``rank`` (1-based), ``arch`` (canonical string),
``accuracy`` (predicted %, for ``dataset``), ``accuracy_measured`` (measured %, or null), ``latency_ms``
(predicted, without margin), ``latency_ms_measured`` (measured on the device, or null), ``rank_used``
({``accuracy``, ``latency``}: "measured" or "predicted", what selection and rank used: a measurement beats the
prediction), ``latency_ms_with_margin`` (the latency the net stays under with probability ``level``; the
measurement where measured), ``p_within_budget`` (probability that its measured latency fits the budget: 1 or 0
once measured), ``params``, ``macs`` (exact, for ``dataset``'s input), ``feasible`` (bool),
``front`` (0 = non-dominated among the feasible candidates), ``index`` (row of the space's shipped tables,
where it has them). Measured nets (the profile's calibration timings, a task's measured accuracies, the closed
loop's) are always among the candidates, so the top pick is never worse than a measured net within budget.
``pareto.csv`` holds the same rows (``CSV_FIELDS``), ``pareto.png`` their plot.

``loop.json`` (``generate --measure`` / ``--train``): the closed loop's journal (``closed_loop``): every timing
and training, each round's top pick and decision, the stop reason; the manifest's ``loop`` summarises it.

``manifest.json``: ``schema`` ("pomonag-edge/run"), ``schema_version``, ``space``, ``dataset`` (a shipped
name, or a user task's name), ``dataset_profile`` (null, or for a user task {``spec``, ``file``, ``name``,
``sha256``, ``num_classes``, ``measurements``, ``accuracy_error_points``, ``accuracy_error_quantile``,
``accuracy_cv_spearman``}; the profile itself is copied to ``dataset.json`` beside it), ``profile`` {``spec``,
``name``, ``sha256``, ``reference``, ``parent``, ``path`` (the absolute path of the file it was read from, null
for a reference profile; runs written before it was recorded have none)}, ``budget`` {``max_latency_ms``,
``max_params``, ``max_macs``}, ``level`` (probability of fitting the budget a kept net reaches),
``per_net_margin`` (bool), ``margin`` (relative, the latency model's q90 error), ``latency_limit_ms`` (budget /
(1 + margin), or the budget itself with per-net margins), ``weights``, ``strategy``, ``num``, ``samples``,
``seed``, ``predictors`` (what scored the nets), ``stats``, ``generator`` (checkpoint meta, diffusion only),
``versions``, ``created``, ``command``, ``loop`` (null, or the closed loop's summary: timings / trainings
allowed and made, rounds, stop reason, the revisions written; the ``profile`` and ``dataset_profile`` are then
those revisions, ``profile.parent`` the profile given).

Later stages add ``train/`` (``training``) and ``export/`` (``export``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path

from .dataset_profile import check_against_space, load_dataset_profile
from .errors import ArchParseError, UserError
from .files import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_versioned, check_writable, claim,
                    make_dir, os_error, read_user_json, replace_dir, staging_dir)
from .profile import PROFILES_DIR, announce, load_profile
from .spaces import get_space

SCHEMA = "pomonag-edge/run"
SCHEMA_VERSION = 1  # 1 also reads runs written before the manifest recorded ``profile.path``
RUNS_DIR = Path("runs")
PARETO_FILE = "pareto.json"
MANIFEST_FILE = "manifest.json"
DATASET_FILE = "dataset.json"  # a user task's dataset profile, copied into the run folder
LOOP_FILE = "loop.json"
CSV_FIELDS = ("rank", "arch", "accuracy", "accuracy_measured", "latency_ms", "latency_ms_measured",
              "latency_ms_with_margin", "p_within_budget", "params", "macs", "feasible", "front", "index")
BUDGET_KEYS = ("max_latency_ms", "max_params", "max_macs")


@dataclass
class Run:
    """One run: its folder, ranked Pareto set (``pareto.json`` items), manifest, and a user task's dataset profile
    (``dataset.json``; None for a shipped dataset). ``generate`` also leaves the search that made it: ``problem``
    (the ``SearchProblem``) and ``result`` (the ``SearchResult``); a run read from its folder has neither, and a
    search that kept no net leaves no folder (``path`` is where it would have gone, or None)."""

    path: Path | None
    candidates: list[dict]
    manifest: dict = field(default_factory=dict)
    task: object = None
    problem: object = None
    result: object = None

    @property
    def space(self) -> str:
        space = self.manifest.get("space", "nb201")
        return str(space.get("name", "nb201") if isinstance(space, dict) else space)

    @property
    def dataset(self) -> str | None:
        return self.manifest.get("dataset")

    @property
    def space_dataset(self):
        """What the space builds and costs nets for: the user task, or the shipped dataset's name."""
        return self.task if self.task is not None else self.dataset

    @property
    def budget(self) -> dict:
        """``max_latency_ms``, ``max_params``, ``max_macs`` (None = unconstrained)."""
        budget = self.manifest.get("budget") or {}
        return {k: budget.get(k) for k in BUDGET_KEYS}

    @property
    def profile_record(self) -> dict:
        """The manifest's ``profile`` object ({} when it records none, or only a name)."""
        profile = self.manifest.get("profile")
        return profile if isinstance(profile, dict) else {}

    @property
    def profile_spec(self) -> str | None:
        """``--profile`` as ``generate`` was given it (None: the default profile)."""
        profile = self.manifest.get("profile")
        return profile if isinstance(profile, str) else self.profile_record.get("spec")

    @property
    def profile_sha256(self) -> str | None:
        if isinstance(self.manifest.get("profile"), str):
            return self.manifest.get("profile_sha256")
        return self.profile_record.get("sha256")

    @property
    def profile_path(self) -> str | None:
        """The file the profile was read from, as ``generate`` resolved it (None: a reference profile, or a run
        written before the manifest recorded it)."""
        path = self.profile_record.get("path")
        return path if isinstance(path, str) else None


# ------------------------------------------------------------------ writing


def new_run_dir(root: str | Path = RUNS_DIR) -> Path:
    """A fresh folder ``runs/<UTC time>-<n>`` that no other run uses (names sort in the order runs were made)."""
    root = make_dir(root, "runs folder")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for n in range(1000):
        path = root / (stamp if n == 0 else f"{stamp}-{n:03d}")
        try:
            path.mkdir(exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise os_error(e, "create", "run folder", path) from None
    raise UserError(f"cannot create a new run folder under {root}")


def check_run_out(out: str | Path | None, force: bool = False) -> Path | None:
    """``--out`` checked before the search: writable, and not an existing run unless ``force`` (which replaces
    it whole). None: the default folder ./runs must be writable. A folder holding only an unfinished closed
    loop (``loop.json``) is resumed."""
    if out is None:
        check_writable(RUNS_DIR, "runs folder", folder=True)
        return None
    out = check_writable(out, "run folder", folder=True)
    if out.is_dir() and any(out.iterdir()):
        unfinished = (out / LOOP_FILE).is_file() and not (out / PARETO_FILE).is_file()
        if unfinished and not force:
            return out
        if not (out / MANIFEST_FILE).is_file() and not (out / PARETO_FILE).is_file() and not unfinished:
            raise UserError(f"{out} holds files that are not a run: --out a new or empty folder (--force replaces "
                            "only run folders)")
        if not force:
            inside = [p.name + "/" for p in sorted(out.iterdir()) if p.is_dir() and not p.name.startswith(".")]
            also = f" (with its {', '.join(inside)})" if inside else ""
            raise UserError(f"{out} already holds a run: runs are not overwritten; pass --force to replace the "
                            f"folder whole{also}, or --out a new folder")
    return out


def one_writer(generate):
    """``generate`` holding a claim on ``out`` from its first check to its last write (``files.claim``): a second
    ``generate --out`` of the same folder, here or in another process, is refused instead of replacing the
    first one's run unseen. A default folder (``new_run_dir``) is unique already."""
    @wraps(generate)
    def claimed(*, out=None, **kw):
        with claim(out, "run folder") if out is not None else nullcontext():
            return generate(out=out, **kw)

    return claimed


def write_run(run: Run, plot_png: bytes, extra: dict | None = None) -> None:
    """Build the run in a hidden folder beside ``run.path``, then put it in place whole: a run folder never holds
    files of two generations, and an interrupted write leaves the previous one intact. A user task's dataset
    profile is saved in the run as ``dataset.json``; ``extra``: more JSON files by name (the loop's)."""
    staged = staging_dir(run.path, "run folder")
    try:
        if run.task is not None:
            run.task.save(staged / DATASET_FILE)
        for name, obj in (extra or {}).items():
            atomic_write_json(staged / name, obj)
        atomic_write_json(staged / PARETO_FILE, run.candidates)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(run.candidates)
        atomic_write_text(staged / "pareto.csv", buf.getvalue())
        atomic_write_bytes(staged / "pareto.png", plot_png)
        atomic_write_json(staged / MANIFEST_FILE, run.manifest)
        replace_dir(staged, run.path, "run folder")
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


# ------------------------------------------------------------------ reading


def _created(path: Path) -> str | None:
    """When ``generate`` made the run (its manifest's ``created``; '' when unrecorded, which sorts oldest), or
    None for a folder that holds no run."""
    if not (path / PARETO_FILE).is_file():
        return None
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    created = manifest.get("created") if isinstance(manifest, dict) else None
    return created if isinstance(created, str) else ""


def resolve_run_dir(spec: str | os.PathLike | None, folder: str | os.PathLike = RUNS_DIR, say=None) -> Path:
    """The folder the user named, or the run under ./runs that ``generate`` made last (by the time recorded in
    its manifest, not by modification time: an export into an older run does not make it the newest). The
    default is announced through ``say`` with the reason."""
    if spec is not None:
        path = Path(spec)
        if not path.exists():
            raise UserError(f"run folder {path} does not exist")
        if not path.is_dir():
            raise UserError(f"{path} is a file, not a run folder: pass the folder `pomonag-edge generate` wrote")
        return path
    runs = [(created, p.name, p) for p in Path(folder).glob("*") if not p.name.startswith(".") and p.is_dir()
            and (created := _created(p)) is not None]
    if not runs:
        raise UserError(f"no run found under {Path(folder)}: run `pomonag-edge generate` first or pass RUN_DIR")
    created, _, path = max(runs)
    when = f"at {created}" if created else "time unrecorded, latest name"
    (say or announce)(f"run: {path} (generated last under {Path(folder)}, {when}; pass RUN_DIR to choose another)")
    return path


def _read_json(path: Path, what: str):
    if not path.exists():
        raise UserError(f"{path} does not exist: is {path.parent} a `pomonag-edge generate` run folder?")
    return read_user_json(path, what)


def read_manifest(path: Path) -> dict:
    """The checked manifest of the run folder ``path`` ({} when it has none): a corrupt, foreign or newer one, or
    a budget that is not numbers, is one ``UserError`` line naming the file."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        return {}
    manifest = _read_json(manifest_path, "run manifest")
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path} must be a JSON object (the run's manifest)")
    check_versioned(manifest, f"run manifest {manifest_path}", schema=SCHEMA, schema_version=SCHEMA_VERSION,
                    kind="run manifest", error=UserError,
                    hint=f": is {path} a folder `pomonag-edge generate` wrote?")
    budget = manifest.get("budget") or {}
    if not isinstance(budget, dict) or not all(v is None or isinstance(v, (int, float))
                                               for v in (budget.get(k) for k in BUDGET_KEYS)):
        raise UserError(f"{manifest_path}: 'budget' must be an object of numbers (max_latency_ms, max_params, "
                        "max_macs)")
    return manifest


def load_run(path: str | os.PathLike) -> Run:
    """The run in folder ``path``, checked: its Pareto set's archs parse in the run's space, and a user task's
    dataset profile is of that space."""
    path = Path(path)
    pareto = _read_json(path / PARETO_FILE, "Pareto set")
    if not isinstance(pareto, list) or not all(isinstance(i, dict) and "arch" in i for i in pareto):
        raise UserError(f"{path / PARETO_FILE} must be a JSON list of objects with an 'arch' field")
    run = Run(path=path, candidates=pareto, manifest=read_manifest(path))
    _check_archs(path / PARETO_FILE, pareto, run.space)
    if (path / DATASET_FILE).is_file():
        task = load_dataset_profile(path / DATASET_FILE)
        if task.space != run.space:
            raise UserError(f"{path / DATASET_FILE} is a dataset profile of space {task.space}, but the run is of "
                            f"space {run.space}: the run folder mixes two runs; generate it again")
        check_against_space(task, get_space(task.space), f"dataset profile {path / DATASET_FILE}")
        run.task = task
    return run


def _check_archs(source: Path, items: list[dict], space: str) -> None:
    """Every arch of the run parses in the run's space; the first that does not is named with its file."""
    sp = get_space(space)
    for n, item in enumerate(items, start=1):
        try:
            sp.parse(str(item["arch"]))
        except ArchParseError as e:
            raise UserError(f"{source}, item {n}: {e} (is this a run of space {space}?)") from None


# ------------------------------------------------------------------ the run's profile


def _holds(path: str, sha256: str | None) -> bool:
    """Whether the profile file at ``path`` is still the one of content hash ``sha256``."""
    if sha256 is None or not os.path.isfile(path):
        return False
    try:
        return load_profile(path).sha256 == sha256
    except UserError:
        return False


def find_profile_by_hash(folder: Path, sha256: str | None) -> Path | None:
    """The profile in ``folder`` whose content hash is ``sha256`` (every profile there is read and hashed): how a
    run that did not record its profile's path finds it."""
    return next((path for path in sorted(folder.glob("*.json")) if _holds(str(path), sha256)), None)


def profile_spec_for(run: Run, folder: str | os.PathLike | None = None) -> str:
    """The run's own profile as a ``--profile`` spec.

    The file the manifest records is used when it still holds the profile of the recorded hash (named as
    ``--profile`` named it, when that still finds the same file from here). Otherwise a reference name is used
    as is; a path is tried from here, then from the run folder. A run made with the default profile records no
    spec: the profile in ./profiles with the recorded hash is used, else ./profiles/<name>.json (it may have
    gained calibration timings since).
    """
    spec, folder = run.profile_spec, Path(folder or PROFILES_DIR)
    info = run.profile_record
    said = f"the one {run.path} was generated with; --profile chooses another"
    if run.profile_path is not None and _holds(run.profile_path, run.profile_sha256):
        same = spec is not None and os.path.isfile(spec) and os.path.samefile(spec, run.profile_path)
        path = spec if same else run.profile_path  # the spec as given, when it still names that file from here
        announce(f"profile: {path} ({said})")
        return path
    if spec is None and info.get("reference"):
        announce(f"profile: {info['reference']} ({said})")
        return str(info["reference"])
    if spec is None:
        path = find_profile_by_hash(folder, run.profile_sha256)
        if path is not None:
            announce(f"profile: {path} (the one {run.path} was generated with, found by its hash; "
                     "--profile chooses another)")
            return str(path)
        if info.get("name") and (folder / f"{info['name']}.json").exists():
            announce(f"profile: {folder / (info['name'] + '.json')} (named like the one {run.path} was generated "
                     f"with, whose exact file (sha256 {run.profile_sha256}) is gone; --profile chooses another)")
            return str(folder / f"{info['name']}.json")
        raise UserError(f"the run's profile ({info.get('name', 'unnamed')}, sha256 {run.profile_sha256}) is not in "
                        f"./{folder}: pass --profile PATH|NAME")
    if os.path.sep in spec or spec.endswith(".json"):
        candidate = Path(spec)
        if not candidate.exists() and not candidate.is_absolute() and (run.path / candidate).exists():
            announce(f"profile: {run.path / candidate} ({said}, found from the run folder)")
            return str(run.path / candidate)
        if not candidate.exists():
            raise UserError(f"the run's profile {spec} is not found from here: pass --profile PATH|NAME")
    announce(f"profile: {spec} ({said})")
    return spec


__all__ = ["Run", "SCHEMA", "SCHEMA_VERSION", "RUNS_DIR", "LOOP_FILE", "DATASET_FILE", "CSV_FIELDS", "new_run_dir",
           "check_run_out", "one_writer", "write_run", "read_manifest", "load_run", "resolve_run_dir",
           "profile_spec_for"]
