"""Search spaces by name: the shipped ones, and any another package registers under the ``pomonag_edge.spaces``
entry-point group (``name = "package.module:SPACE"``, as pymoo problems or timm models are added). Each is
imported only when asked for.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module, metadata
from typing import Iterable

from ..errors import ArchParseError, UserError
from .base import Arch, GeneratorRecipe, LatencyRecipe, SearchSpace, SpaceBase

BUILTIN = {"nb201": "pomonag_edge.spaces.nb201:SPACE", "mbv3": "pomonag_edge.spaces.mbv3:SPACE"}
ENTRY_POINT_GROUP = "pomonag_edge.spaces"

__all__ = ["Arch", "SearchSpace", "SpaceBase", "LatencyRecipe", "GeneratorRecipe", "get_space", "space_names",
           "parse_lines", "other_space_hint"]


def _registered() -> dict[str, object]:
    """name -> entry point (or "module:attr" string for the shipped spaces)."""
    found: dict[str, object] = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def space_names() -> list[str]:
    """The shipped spaces first (nb201, mbv3), then those of other packages in name order."""
    return list(BUILTIN) + sorted(n for n in _registered() if n not in BUILTIN)


@lru_cache(maxsize=None)
def _load(name: str, target) -> SearchSpace:
    try:
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            space = getattr(import_module(module), attr)
        else:
            space = target.load()
    except ModuleNotFoundError as e:
        raise UserError(f"search space {name!r} could not be loaded ({e}); is its package installed?") from None
    if getattr(space, "name", None) != name:
        raise UserError(f"search space entry point {name!r} names a space called {getattr(space, 'name', None)!r}")
    return space


def get_space(name: str) -> SearchSpace:
    if name in BUILTIN:  # a shipped space wins over an entry point of its name: no scan of the installed packages
        return _load(name, BUILTIN[name])
    registered = _registered()
    if name not in registered:
        raise UserError(f"unknown search space {name!r}; choose one of {', '.join(sorted(registered))}")
    return _load(name, registered[name])


def other_space_hint(space_name: str, text: str) -> str:
    """' (an arch of space X: pass --space X)' when ``text`` parses in another shipped space, else ''."""
    for name in BUILTIN:
        if name == space_name:
            continue
        try:
            get_space(name).parse(text)
        except (ArchParseError, UserError):
            continue
        return f" (an arch of space {name}: pass --space {name})"
    return ""


def parse_lines(space: SearchSpace, lines: Iterable[str], source: str = "input") -> list[Arch]:
    """Parse one arch per non-empty line; a bad line raises naming its line number."""
    archs = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            archs.append(space.parse(text))
        except ArchParseError as e:
            raise ArchParseError(f"{source}, line {number}: {e}{other_space_hint(space.name, text)}") from None
    return archs
