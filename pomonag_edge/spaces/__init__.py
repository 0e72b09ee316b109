"""Search spaces by name; each module is imported only when asked for."""

from __future__ import annotations

from importlib import import_module

from ..errors import UserError
from .base import Arch, SearchSpace, parse_lines

SPACES = {"nb201": "pomonag_edge.spaces.nb201", "mbv3": "pomonag_edge.spaces.mbv3"}

__all__ = ["Arch", "SearchSpace", "SPACES", "get_space", "parse_lines"]


def get_space(name: str) -> SearchSpace:
    if name not in SPACES:
        raise UserError(f"unknown search space {name!r}; choose one of {', '.join(SPACES)}")
    try:
        module = import_module(SPACES[name])
    except ModuleNotFoundError as e:
        if e.name == SPACES[name]:
            raise UserError(f"search space {name!r} is not available in this version") from None
        raise
    return module.SPACE
