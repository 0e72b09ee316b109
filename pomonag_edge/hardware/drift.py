"""How much faster or slower the device runs now than when its profile was taken, from nets timed both times.

A shared machine, a laptop on battery or a throttling Jetson can run slower or faster for minutes. Timing a
few of the profile's own calibration nets again, interleaved with the nets under test, measures that drift:
the factor is the median of now / then over them. A net's measured / predicted ratio divided by the factor
is what the latency model would have been judged on had the device run at its profiling speed.
"""

from __future__ import annotations

import statistics
from typing import Sequence

BAND = 0.10  # "within +-10% of predicted" (nn-Meter's accuracy criterion): export's within_10pct and its report
SPEED_CHANGE = 0.10  # a profile whose first nets re-time more than 10% off is reported


def pick_probes(calibration: Sequence[dict], n: int) -> list[dict]:
    """``n`` calibration records spread over the latency range (slowest, fastest and between)."""
    timed = sorted((c for c in calibration if c.get("latency_ms")), key=lambda c: c["latency_ms"])
    if n <= 0 or not timed:
        return []
    if n >= len(timed):
        return list(timed)
    step = (len(timed) - 1) / max(1, n - 1)
    return [timed[round(i * step)] for i in range(n)] if n > 1 else [timed[len(timed) // 2]]


def drift_factor(now_ms: Sequence[float], then_ms: Sequence[float]) -> float | None:
    """median(now / then) over pairs with both timings; None without any."""
    ratios = [a / b for a, b in zip(now_ms, then_ms) if a and b and a > 0 and b > 0]
    return statistics.median(ratios) if ratios else None


def compare(measured_ms: float, predicted_ms: float, factor: float | None) -> dict:
    """Measured / predicted, raw and drift-corrected (the prediction scaled by ``factor``), and whether each
    lies within ``BAND``."""
    raw = measured_ms / predicted_ms
    out = {"ratio_raw": raw, "error_pct_raw": 100.0 * (raw - 1.0), "within_10pct_raw": abs(raw - 1.0) <= BAND}
    if factor:
        corrected = raw / factor
        out.update(ratio_corrected=corrected, error_pct_corrected=100.0 * (corrected - 1.0),
                   within_10pct_corrected=abs(corrected - 1.0) <= BAND)
    return out


def speed_change(before_ms: Sequence[float], after_ms: Sequence[float], threshold: float = SPEED_CHANGE
                 ) -> tuple[float | None, str | None]:
    """(after / before median ratio, a warning when it moved more than ``threshold``) for nets timed at the
    start and again at the end of a long measurement."""
    factor = drift_factor(after_ms, before_ms)
    if factor is None or abs(factor - 1.0) <= threshold:
        return factor, None
    word = "slower" if factor > 1 else "faster"
    return factor, (f"the device ran {abs(factor - 1.0):.0%} {word} at the end than at the start (the first "
                    f"{len(before_ms)} nets re-timed at x{factor:.2f}): another load, throttling or a clock change "
                    "during profiling; re-run on a quiet device (--fresh) if the table must be trusted")
