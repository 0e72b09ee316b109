"""Reading a ``generate`` run: its folder, its manifest and its ranked Pareto set."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

RUNS_DIR = Path("runs")


@dataclass
class Run:
    """What ``export`` needs from a run folder."""

    path: Path
    space: str
    dataset: str | None
    candidates: list[dict]  # pareto.json items in rank order
    budget: dict = field(default_factory=dict)  # max_latency_ms, max_params, max_macs (None = unconstrained)
    profile_spec: str | None = None
    profile_sha256: str | None = None
    manifest: dict = field(default_factory=dict)
    task: object = None  # a user task's DatasetProfile (the run folder's dataset.json), else None

    @property
    def space_dataset(self):
        """What the space builds and costs nets for: the user task, or the shipped dataset's name."""
        return self.task if self.task is not None else self.dataset


def _created(path: Path) -> str | None:
    """When ``generate`` made the run (its manifest's ``created``; '' when unrecorded, which sorts oldest), or
    None for a folder that holds no run."""
    if not (path / "pareto.json").is_file():
        return None
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    created = manifest.get("created") if isinstance(manifest, dict) else None
    return created if isinstance(created, str) else ""


def resolve_run_dir(spec: str | os.PathLike | None, folder: str | os.PathLike = RUNS_DIR, say=None) -> Path:
    """The folder the user named, or the run under ./runs that ``generate`` made last (by the time recorded in
    its manifest, not by modification time: an export into an older run does not make it the newest). The
    default is announced through ``say`` with the reason."""
    from ..profile import announce

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
    from ..files import read_user_json

    if not path.exists():
        raise UserError(f"{path} does not exist: is {path.parent} a `pomonag-edge generate` run folder?")
    return read_user_json(path, what)


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    pareto = _read_json(path / "pareto.json", "Pareto set")
    if not isinstance(pareto, list) or not all(isinstance(i, dict) and "arch" in i for i in pareto):
        raise UserError(f"{path / 'pareto.json'} must be a JSON list of objects with an 'arch' field")
    manifest_path = path / "manifest.json"
    manifest = _read_json(manifest_path, "run manifest") if manifest_path.exists() else {}
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path} must be a JSON object (the run's manifest)")
    space = manifest.get("space", "nb201")
    if isinstance(space, dict):
        space = space.get("name", "nb201")
    profile = manifest.get("profile")
    spec = sha = None
    if isinstance(profile, dict):
        spec = profile.get("path") or profile.get("spec")
        sha = profile.get("sha256")
    elif isinstance(profile, str):
        spec, sha = profile, manifest.get("profile_sha256")
    budget = manifest.get("budget") or {}
    if not isinstance(budget, dict) or not all(v is None or isinstance(v, (int, float))
                                               for v in (budget.get(k) for k in ("max_latency_ms", "max_params",
                                                                                 "max_macs"))):
        raise UserError(f"{manifest_path}: 'budget' must be an object of numbers (max_latency_ms, max_params, "
                        "max_macs)")
    _check_archs(path / "pareto.json", pareto, str(space))
    task = None
    if (path / "dataset.json").is_file():
        from ..dataset_profile import check_against_space, load_dataset_profile
        from ..spaces import get_space

        task = load_dataset_profile(path / "dataset.json")
        if task.space != str(space):
            raise UserError(f"{path / 'dataset.json'} is a dataset profile of space {task.space}, but the run is of "
                            f"space {space}: the run folder mixes two runs; generate it again")
        check_against_space(task, get_space(task.space), f"dataset profile {path / 'dataset.json'}")
    return Run(path=path, space=str(space), dataset=manifest.get("dataset"), candidates=pareto,
               budget={k: budget.get(k) for k in ("max_latency_ms", "max_params", "max_macs")},
               profile_spec=spec, profile_sha256=sha, manifest=manifest, task=task)


def _check_archs(source: Path, items: list[dict], space: str) -> None:
    """Every arch of the run parses in the run's space; the first that does not is named with its file."""
    from ..errors import ArchParseError
    from ..spaces import get_space

    sp = get_space(space)
    for n, item in enumerate(items, start=1):
        try:
            sp.parse(str(item["arch"]))
        except ArchParseError as e:
            raise UserError(f"{source}, item {n}: {e} (is this a run of space {space}?)") from None


def profile_spec_for(run: Run, folder: str | os.PathLike | None = None) -> str:
    """The run's own profile as a ``--profile`` spec.

    A reference name is used as is; a path is tried from here, then from the run folder. A run made
    with the default profile records no spec: the profile in ./profiles with the recorded hash is
    used, else ./profiles/<name>.json (it may have gained calibration timings since).
    """
    from ..profile import PROFILES_DIR, Profile, announce

    spec, folder = run.profile_spec, Path(folder or PROFILES_DIR)
    info = run.manifest.get("profile") if isinstance(run.manifest.get("profile"), dict) else {}
    said = f"the one {run.path} was generated with; --profile chooses another"
    if spec is None and info.get("reference"):
        announce(f"profile: {info['reference']} ({said})")
        return str(info["reference"])
    if spec is None:
        for path in sorted(folder.glob("*.json")):
            try:
                if Profile.from_dict(json.loads(path.read_text(encoding="utf-8"))).sha256 == run.profile_sha256:
                    announce(f"profile: {path} (the one {run.path} was generated with, found by its hash; "
                             "--profile chooses another)")
                    return str(path)
            except (OSError, ValueError, UserError):
                continue
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
