"""The Profile: a versioned, JSON record of one target (device + runtime + precision + batch + threads).

Written by ``profile`` (measured here) or ``calibrate`` (measured elsewhere); read by ``predict``,
``generate`` and ``export``. Shipped reference profiles are made on the fly from the shipped NB201
latency tables: no LUT, but every net's measured latency.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .errors import ProfileError
from .fields import check, flag, list_of, number, record, text
from .files import (atomic_write_json, check_writable, from_versioned_json, json_sha256, read_user_json,
                    revision_parent_spec, save_revision_json)
from .predictors.latency import check_state
from .spaces import get_space, space_names

SCHEMA = "pomonag-edge/profile"
SCHEMA_VERSION = 1
PROFILES_DIR = Path("profiles")

# detected facts that identify the hardware a latency belongs to (software versions are recorded, not compared);
# a device that is a command is identified by its command
IDENTITY_FACTS = ("cpu", "gpu", "jetson_model", "power_mode", "command")


def _latency_model(state, where: str) -> None:
    check_state(state, where)


def _spec():
    """Every field of a device profile (``fields.check``), its stored latency model's by the model's own spec."""
    ms = number(0, optional=True)
    timing = {"median_ms": number(0), "p90_ms": ms, "p99_ms": ms, "mean_ms": ms, "cv": ms,
              "runs": number(0, integer=True, optional=True)}
    return record({
        "name": text(nonempty=True), "space": text(nonempty=True), "dataset": text(optional=True),
        "device": record(), "runtime": record(),
        "lut": record(values=record(timing, required=("median_ms",))),
        "calibration": list_of(record({**timing, "arch": text(nonempty=True), "latency_ms": number(0, above=True)},
                                      required=("arch", "latency_ms"))),
        "latency_model": _latency_model, "reference": text(optional=True),
        "tool_version": text(), "created": text(), "partial": flag(),
        "parent": revision_parent_spec(),
    })


@dataclass
class Profile:
    """One target. ``lut`` maps LUT keys to timing stats; ``calibration`` lists whole-net timings.

    Each timing stats dict holds at least ``median_ms`` (plus ``p90_ms``, ``p99_ms``, ``cv``, ``runs``
    where measured here). Each calibration item is ``{"arch": str, "latency_ms": median, ...stats}``.
    ``latency_model`` is the fitted model's own JSON state (see ``predictors``), or None before fitting.
    """

    name: str
    space: str = "nb201"
    dataset: str | None = None  # the input shape profiled (nb201: its dataset)
    device: dict = field(default_factory=dict)  # detected facts: cpu, cores, gpu, driver, jetson model, ...
    runtime: dict = field(default_factory=dict)  # backend, precision, batch, threads, versions, protocol
    lut: dict[str, dict] = field(default_factory=dict)
    calibration: list[dict] = field(default_factory=list)
    latency_model: dict | None = None
    reference: str | None = None  # name of a shipped latency table when this is a reference profile
    tool_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    partial: bool = False  # still being measured (or interrupted): never chosen as a default
    parent: dict | None = None  # a revision's origin: {"path", "name", "sha256"} of the profile it extends

    # -- serialisation
    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **asdict(self)}
        for key in ("partial", "parent"):  # absent when unset, so older profiles keep their hash
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "profile") -> "Profile":
        profile = from_versioned_json(cls, d, source, schema=SCHEMA, schema_version=SCHEMA_VERSION, kind="profile",
                                      error=ProfileError)
        check(d, _spec(), source, ProfileError)
        return profile

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict(), "profile")

    def save_revision(self, parent_path: str | os.PathLike, parent: "Profile") -> Path:
        """Save as a new file beside ``parent_path`` (``NAME.r2.json``, ``.r3``, ...), recording its parent
        (``files.save_revision_json``)."""
        self.parent = {"path": str(parent_path), "name": parent.name, "sha256": parent.sha256}
        self.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return save_revision_json(parent_path, self.to_dict(), "profile revision", ProfileError)

    @property
    def sha256(self) -> str:
        """Content hash, recorded by runs and exports so a result names the exact profile it used."""
        return json_sha256(self.to_dict())

    @property
    def identity_recorded(self) -> list[str]:
        """The facts that tell this profile's device from another (``IDENTITY_FACTS``) which it recorded."""
        return [k for k in IDENTITY_FACTS if (self.device or {}).get(k)]

    def identity_mismatch(self, facts: dict, where: str = "here") -> list[str]:
        """Where a machine's ``facts`` (``detect``'s, or a timer's) contradict this profile's device, one line
        each (empty when they agree); ``where`` names the machine."""
        device = self.device or {}
        return [f"{k}: profile {device.get(k)!r}, {where} {facts.get(k)!r}" for k in IDENTITY_FACTS
                if device.get(k) != facts.get(k)]

    def of_space(self, space) -> bool:
        """Whether this is a profile of ``space`` (a search space or its name)."""
        return self.space == getattr(space, "name", space)

    def require_space(self, space, source: str = "", hint: str | None = None, flag: str = "--profile") -> "Profile":
        """This profile, refused in one line when it is of another search space than ``space`` (a search space or
        its name), naming the flags that would fit: ``--space`` its own space, or ``flag`` one of ``space``."""
        if not self.of_space(space):
            name = getattr(space, "name", space)
            hint = hint or f"pass --space {self.space}, or a {flag} of space {name}"
            raise ProfileError(f"profile {source or self.name} is for space {self.space}, not {name}: {hint}")
        return self

    def in_space(self, space: str) -> "Profile":
        """This profile; a reference profile of another space is that space's setting of the same name
        (``2080ti_1`` names one in two spaces), or a ``ProfileError`` where ``space`` has none."""
        if self.reference and not self.of_space(space):
            return reference_profile(self.reference, space)
        return self


def load_profile(path: str | os.PathLike) -> Profile:
    path = Path(path)
    return Profile.from_dict(read_user_json(path, "profile", ProfileError), source=f"profile {path}")


def reference_profile(name: str, space: str | None = None) -> Profile:
    """A shipped reference profile: one published device setting's measured latency table.

    Each space states its own (``space.reference_devices``); where the tables cover the whole space the model
    is exact on them, elsewhere it is fitted on them. One name can exist in two spaces (``2080ti_1``): ``space``
    picks one; without it the first space in name order that has it."""
    for candidate in [space] if space is not None else space_names():
        info = get_space(candidate).reference_devices().get(name)
        if info is not None:
            return Profile(name=name, space=candidate, dataset=info["dataset"], reference=name,
                           device={"name": name, "source": info["source"]},
                           runtime={"backend": "published table", "batch": info["batch"]}, created="shipped")
    where = "" if space is None else f" for space {space}"
    elsewhere = [s for s in space_names() if s != space and name in get_space(s).reference_devices()]
    hint = f" (it is one of space {elsewhere[0]}'s: pass --space {elsewhere[0]})" if space is not None and elsewhere \
        else "; `pomonag-edge devices` lists them"
    raise ProfileError(f"no reference profile named {name!r}{where}{hint}")


def _created_key(profile: Profile) -> str:
    """``created`` as a sortable UTC string ('' when it does not parse: sorts oldest)."""
    try:
        return datetime.strptime(profile.created, "%Y-%m-%dT%H:%M:%S%z").astimezone(timezone.utc).isoformat()
    except (TypeError, ValueError):
        return ""


def _shown(folder: Path) -> str:
    return str(folder) if folder.is_absolute() else f"./{folder}"


def precision_of(profile: Profile) -> str:
    """The precision a profile's nets were timed at (profiles that do not say are fp32)."""
    return (profile.runtime or {}).get("precision") or "fp32"


def default_profile(folder: str | os.PathLike = PROFILES_DIR, space: str | None = None,
                    precision: str | None = None) -> tuple[Path, str]:
    """The profile a command uses without ``--profile``, and why (one clause for the user).

    The newest *finished* profile of ``space`` (and of ``precision`` when given) in ``folder``, by the time
    recorded inside it when it was finished, not by the file's modification time; partial, unreadable and
    other spaces' profiles are never chosen."""
    folder = Path(folder)
    found, skipped, others = [], {"partial": 0, "unreadable": 0, "of another precision": 0}, set()
    for path in sorted(folder.glob("*.json")):
        try:
            p = load_profile(path)
        except ProfileError:
            skipped["unreadable"] += 1
            continue
        if p.partial:
            skipped["partial"] += 1
        elif space is not None and not p.of_space(space):
            others.add(p.space)
        elif precision is not None and precision_of(p) != precision:
            skipped["of another precision"] += 1
        else:
            found.append((_created_key(p), path.name, path, p))
    if not found:
        hint = (f" (only profiles of space {', '.join(sorted(others))}: pass --space {sorted(others)[0]} to use "
                "one)") if others else " (partial ones are never chosen)" if skipped["partial"] else ""
        raise ProfileError(f"no {precision + ' ' if precision else ''}profile found in {_shown(folder)}"
                           f"{' for space ' + space if space else ''}{hint}: run `pomonag-edge profile --device cpu"
                           f"{' --space ' + space if space and space != 'nb201' else ''}"
                           f"{' --precision ' + precision if precision and precision != 'fp32' else ''}` or pass "
                           "--profile PATH|NAME (`pomonag-edge devices` lists reference profiles)")
    created, _, path, p = max(found)
    left = "; ".join(f"{n} {k} skipped" for k, n in skipped.items() if n)
    why = (f"newest finished {p.space}{' ' + precision if precision else ''} profile in {_shown(folder)}, made "
           f"{p.created}"
           + (f", revision of {p.parent.get('path')}" if p.parent else "") + (f"; {left}" if left else ""))
    return path, why


def announce(message: str) -> None:
    """A default choice made for the user, said on stderr so a script's stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


def resolve_profile(spec: str | None, folder: str | os.PathLike = PROFILES_DIR, space: str | None = None,
                    say=announce, hint: str | None = None, precision: str | None = None) -> Profile:
    """``--profile`` as the user gives it: a path, a reference name (of ``space`` when given), or None for the
    default (``default_profile``), which is announced through ``say``. A profile of another space is refused,
    and with ``precision`` one measured at another precision."""
    return locate_profile(spec, folder, space, say, hint, precision)[0]


def locate_profile(spec: str | None, folder: str | os.PathLike = PROFILES_DIR, space: str | None = None,
                   say=announce, hint: str | None = None, precision: str | None = None) -> tuple[Profile, Path | None]:
    """``resolve_profile``'s profile and the file it was read from (None for a shipped reference profile), so
    a run can record where its profile is as well as its hash."""
    if spec is None:
        path, why = default_profile(folder, space, precision)
        say(f"profile: {path} ({why}; --profile chooses another)")
        return load_profile(path), path
    if precision is not None:
        profile, path = locate_profile(spec, folder, space, say, hint)
        if precision_of(profile) != precision:
            raise ProfileError(f"--precision {precision}, but profile {spec} was measured at {precision_of(profile)}: "
                               f"pass a {precision} profile, or leave --profile out to take the newest one")
        return profile, path
    if os.path.sep in spec or spec.endswith(".json") or Path(spec).exists():
        profile = load_profile(spec)
        if profile.partial:
            say(f"note: profile {spec} is partial (its measuring was interrupted): run its `pomonag-edge profile` "
                "command again to finish it")
        return (profile if space is None else profile.require_space(space, spec, hint)), Path(spec)
    return reference_profile(spec, space), None


def check_profile_out(path: str | os.PathLike, force: bool = False) -> Path:
    """A profile ``--out`` checked before any measuring: writable, and not someone's profile unless ``force``."""
    path = check_writable(path, "profile")
    if path.exists() and not force:
        raise ProfileError(f"{path} already exists: pass --force to replace it, or --out another path")
    return path
