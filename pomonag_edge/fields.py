"""Declarative checks of the fields of a JSON document the tool reads back (device and dataset profiles, stored
model states, a run's train results).

A spec is a tree of small checks (``number``, ``text``, ``flag``, ``list_of``, ``record``); ``check`` walks a
document with it and turns the first problem into one ``UserError`` line naming the field by its path
(``accuracy_model.head[2] is NaN, not a finite number``). Why declarative: a hand-edited profile can be wrong
anywhere, and a wrong type, a missing key, a list of the wrong length or a NaN that slips through turns into a
traceback or, worse, into every prediction being NaN with exit status 0.
"""

from __future__ import annotations

import math
from typing import Callable

Check = Callable[[object, str], None]


class FieldError(Exception):
    """A field that fails its check: ``where`` (its path) and ``problem`` (what is wrong with it)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")
        self.where, self.problem = where, problem


def _shown(value) -> str:
    """A value as a message names it: JSON's words for null, true and false and for containers, else its repr."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _optional(check: Check, optional: bool) -> Check:
    return (lambda v, where: None if v is None else check(v, where)) if optional else check


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False, above: bool = False,
           finite: bool = True, optional: bool = False) -> Check:
    """A JSON number (never true/false) within ``lo``..``hi`` (``above``: strictly above ``lo``); ``integer``: a
    whole number; ``finite=False`` lets NaN through (a statistic that can be undefined, never one that is used)."""

    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FieldError(where, f"is {_shown(v)}, not {'an integer' if integer else 'a number'}")
        if math.isnan(v) and not finite:
            return
        if not math.isfinite(v):
            raise FieldError(where, f"is {v!r}, not a finite number".replace("nan", "NaN"))
        if integer and v != int(v):
            raise FieldError(where, f"is {v!r}, not an integer")
        if lo is not None and (v <= lo if above else v < lo) or hi is not None and v > hi:
            bounds = (f"above {lo:g}" if above else f"at least {lo:g}") if hi is None else \
                f"at most {hi:g}" if lo is None else f"within {lo:g}..{hi:g}"
            raise FieldError(where, f"is {v!r}; it must be {bounds}")

    return _optional(check, optional)


def text(choices: tuple[str, ...] | None = None, *, nonempty: bool = False, optional: bool = False) -> Check:
    """A string; with ``choices`` one of them."""

    def check(v, where):
        if not isinstance(v, str):
            raise FieldError(where, f"is {_shown(v)}, not text")
        if nonempty and not v.strip():
            raise FieldError(where, "is empty")
        if choices is not None and v not in choices:
            raise FieldError(where, f"is {v!r}, not one of {', '.join(choices)}")

    return _optional(check, optional)


def flag(optional: bool = False) -> Check:
    def check(v, where):
        if not isinstance(v, bool):
            raise FieldError(where, f"is {_shown(v)}, not true/false")

    return _optional(check, optional)


def list_of(item: Check | None = None, *, min_len: int = 0, length: int | None = None,
            optional: bool = False) -> Check:
    """A list (of ``length`` items, or at least ``min_len``), each item checked by ``item``."""

    def check(v, where):
        if not isinstance(v, list):
            raise FieldError(where, f"is {_shown(v)}, not a list")
        if length is not None and len(v) != length:
            raise FieldError(where, f"holds {len(v)} item(s), not {length}")
        if len(v) < min_len:
            raise FieldError(where, f"holds {len(v)} item(s); it needs at least {min_len}")
        if item is not None:
            for i, x in enumerate(v):
                item(x, f"{where}[{i}]")

    return _optional(check, optional)


def record(fields: dict[str, Check] | None = None, *, required: tuple[str, ...] = (), values: Check | None = None,
           rules: tuple[Callable[[dict, str], None], ...] = (), optional: bool = False) -> Check:
    """An object: the ``required`` keys present, each key of ``fields`` present checked by its check, every other
    value by ``values`` (a map of names to entries), then each of ``rules(obj, where)`` (checks across fields,
    such as two lists of one length). Keys nobody declared are kept as they are."""
    fields = fields or {}

    def check(v, where):
        if not isinstance(v, dict):
            raise FieldError(where, f"is {_shown(v)}, not an object")
        for key in required:
            if key not in v:
                raise FieldError(join(where, key), "is missing")
        for key, x in v.items():
            if key in fields:
                fields[key](x, join(where, key))
            elif values is not None:
                values(x, join(where, key))
        for rule in rules:
            rule(v, where)

    check.fields = fields  # what it declares, for a test that every field of a document is
    return _optional(check, optional)


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check(document, spec: Check, source: str, error: type, where: str = "", hint: str = "") -> None:
    """Raise ``error`` (a ``UserError``) as ``{source} is malformed: {field} {problem}[; {hint}]`` at the first
    field of ``document`` that fails ``spec``."""
    try:
        spec(document, where)
    except FieldError as e:
        raise error(f"{source} is malformed: {e}" + (f"; {hint}" if hint else "")) from None
