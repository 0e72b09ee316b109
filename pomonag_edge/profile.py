"""The Profile: a versioned, JSON record of one target (device + runtime + precision + batch + threads).

Written by ``profile`` (measured here) or ``calibrate`` (measured elsewhere); read by ``predict``,
``generate`` and ``export``. Shipped reference profiles are made on the fly from the shipped NB201
latency tables: no LUT, but every net's measured latency.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .errors import ProfileError
from .files import atomic_write_json, read_user_text

SCHEMA = "pomonag-edge/profile"
SCHEMA_VERSION = 1
PROFILES_DIR = Path("profiles")


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

    # -- serialisation
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "profile") -> "Profile":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ProfileError(f"{source} is not a pomonag-edge profile (no '{SCHEMA}' schema tag)")
        version = d.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise ProfileError(f"{source} has an invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise ProfileError(f"{source} uses profile schema {version}, newer than this pomonag-edge "
                               f"({__version__}, schema {SCHEMA_VERSION}): upgrade pomonag-edge")
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in d.items() if k in known}
        if "name" not in fields:
            raise ProfileError(f"{source} is missing the 'name' field")
        try:
            profile = cls(**fields)
        except TypeError as e:
            raise ProfileError(f"{source} is malformed: {e}") from None
        for item in profile.calibration:
            if not isinstance(item, dict) or "arch" not in item or "latency_ms" not in item:
                raise ProfileError(f"{source}: every calibration item needs 'arch' and 'latency_ms'")
        return profile

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())

    @property
    def sha256(self) -> str:
        """Content hash, recorded by runs and exports so a result names the exact profile it used."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_profile(path: str | os.PathLike) -> Profile:
    path = Path(path)
    text = read_user_text(path, "profile", ProfileError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"profile {path} is corrupt (not JSON: {e.msg} at line {e.lineno})") from None
    return Profile.from_dict(data, source=f"profile {path}")


def reference_profile(name: str, space: str | None = None) -> Profile:
    """A shipped reference profile: one published device setting's measured latency table.

    Each space states its own (``space.reference_devices``); where the tables cover the whole space the model
    is exact on them, elsewhere it is fitted on them. One name can exist in two spaces (``2080ti_1``): ``space``
    picks one; without it the first space in name order that has it."""
    from .spaces import get_space, space_names

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


def newest_profile(folder: str | os.PathLike = PROFILES_DIR) -> Path | None:
    files = sorted(Path(folder).glob("*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def resolve_profile(spec: str | None, folder: str | os.PathLike = PROFILES_DIR, space: str | None = None) -> Profile:
    """``--profile`` as the user gives it: a path, a reference name (of ``space`` when given), or None for the
    newest in ./profiles."""
    if spec is None:
        path = newest_profile(folder)
        if path is None:
            raise ProfileError(f"no profile found in ./{Path(folder)}: run `pomonag-edge profile --device cpu` "
                               "or pass --profile PATH|NAME (`pomonag-edge devices` lists reference profiles)")
        return load_profile(path)
    if os.path.sep in spec or spec.endswith(".json") or Path(spec).exists():
        return load_profile(spec)
    return reference_profile(spec, space)
