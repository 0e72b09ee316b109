"""Human quantities (``5ms``, ``1.5M``, ``300M``) parsed in exactly one place, and the Budget they form."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from .errors import BudgetError

_SCALE = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9, "b": 1e9, "B": 1e9}
_TIME_MS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def _number_and_unit(text: str | float | int, unit_pattern: str, unreadable: str) -> tuple[float, str]:
    """(number, unit) of ``text``: a number followed by an optional unit matching ``unit_pattern`` ("" when
    absent); a bare int or float has no unit. Anything else raises ``BudgetError(unreadable)``."""
    if isinstance(text, (int, float)):
        return float(text), ""
    m = re.fullmatch(_NUMBER + r"\s*(" + unit_pattern + ")", str(text).strip())
    if not m:
        raise BudgetError(unreadable)
    return float(m.group(1)), m.group(2)


def parse_count(text: str | float | int, what: str = "count") -> float:
    """``'1.5M'`` -> 1.5e6, ``'300k'`` -> 3e5, ``'200'`` -> 200. Must be positive and finite."""
    number, unit = _number_and_unit(text, "[kKmMgGbB]?", f"cannot read {what} {text!r}: expected a number with an "
                                    "optional k/M/G suffix, e.g. 1.5M")
    value = number * _SCALE[unit]
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"{what} must be a positive number, got {text!r}")
    return value


def parse_latency_ms(text: str | float | int) -> float:
    """``'5ms'`` -> 5.0, ``'0.5s'`` -> 500.0, ``'800us'`` -> 0.8, a bare number is milliseconds."""
    number, unit = _number_and_unit(text, "(?:ms|s|us|µs)?", f"cannot read latency {text!r}: expected e.g. 5ms, "
                                    "0.5s or 800us")
    value = number * _TIME_MS[unit or "ms"]
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"latency budget must be positive, got {text!r}")
    return value


def parse_probability(text: str | float, what: str = "probability") -> float:
    """``'90%'`` -> 0.9, ``'0.95'`` -> 0.95; must lie in [0.5, 1) (below a coin toss is no guarantee)."""
    number, unit = _number_and_unit(text, "%?", f"cannot read {what} {text!r}: expected e.g. 90% or 0.9")
    value = number / (100.0 if unit else 1.0)
    if not math.isfinite(value) or not 0.5 <= value < 1:
        raise BudgetError(f"{what} must be at least 50% and below 100%, got {text!r}")
    return value


@dataclass(frozen=True)
class Budget:
    """Upper bounds on the cost objectives; ``None`` means unconstrained."""

    max_latency_ms: float | None = None
    max_params: float | None = None
    max_macs: float | None = None

    @classmethod
    def parse(cls, max_latency=None, max_params=None, max_macs=None) -> "Budget":
        return cls(
            max_latency_ms=None if max_latency is None else parse_latency_ms(max_latency),
            max_params=None if max_params is None else parse_count(max_params, "parameter budget"),
            max_macs=None if max_macs is None else parse_count(max_macs, "MAC budget"),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def format_count(value: float) -> str:
    """1_530_000 -> '1.53M' for tables."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"
