"""Per-op latency tables (LUTs) as a space states them: what to time, and what an arch costs in a LUT.

A space turns its LUT keys into ``LutJob``s. A job names the graphs to time (built on the host, timed by
whatever backend or device runner the profiler uses) and how their timings become LUT entries. Three recipes
cover the shipped spaces:

- ``chain_job``: an op timed as a chain of ``long`` copies minus ``short`` copies, divided by their
  difference, so the fixed cost of a call (dispatch, layout reorders) cancels and the op is timed in
  context (a lone single-op graph overstates it).
- ``lone_job``: a layer that cannot be chained (it changes shape), timed alone.
- ``shared_job``: blocks every net has once (stem, reductions, head), timed together as one net and
  shared among them in proportion to their lone timings.

Timing stats are plain dicts (``median_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``, ``cv``, ``runs``), so this
module imports neither torch nor the hardware layer. ``lut_cost`` reads a profile's LUT back as a cost over
archs: the feature the latency model scales, and what the profiler spreads its calibration nets over.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import ProfileError

# (graph name, torch module, input shape): one graph a job times
Graph = tuple
Stats = dict


@dataclass(frozen=True)
class LutJob:
    """One unit of measuring and of resuming: the keys it fills, its graphs, how their stats combine."""

    name: str
    keys: tuple[str, ...]
    method: str  # "chain", "alone" or "shared"
    graphs: Callable[[int], list[Graph]] = field(compare=False)  # batch -> graphs to time
    combine: Callable[[dict[str, Stats]], dict[str, Stats]] = field(compare=False)  # graph stats -> LUT entries


@dataclass(frozen=True)
class LutPlan:
    """Every job of one profile, and the facts that describe how it was measured (recorded in the profile;
    a partial profile is resumed only under the same facts)."""

    jobs: list[LutJob]
    facts: dict


def _scaled(stats: Stats, factor: float, extra: dict) -> Stats:
    return {"median_ms": stats["median_ms"] * factor, "p90_ms": stats["p90_ms"] * factor,
            "p99_ms": stats["p99_ms"] * factor, "mean_ms": stats["mean_ms"] * factor, "cv": stats["cv"],
            "runs": stats["runs"], **extra}


def chain_entry(a: Stats, b: Stats, short: int, long: int) -> Stats:
    """Per-copy stats from a short (``a``) and a long (``b``) chain of one op: the fixed cost of a call cancels."""
    span = long - short
    spread = np.hypot(a["cv"] * a["mean_ms"], b["cv"] * b["mean_ms"]) / span
    median = max(0.0, (b["median_ms"] - a["median_ms"]) / span)
    return {"median_ms": median, "p90_ms": max(0.0, (b["p90_ms"] - a["p90_ms"]) / span),
            "p99_ms": max(0.0, (b["p99_ms"] - a["p99_ms"]) / span),
            "mean_ms": max(0.0, (b["mean_ms"] - a["mean_ms"]) / span),
            "cv": float(spread / median) if median > 0 else None, "runs": min(a["runs"], b["runs"]),
            "method": f"chain {long}-{short}", f"chain{short}_ms": a["median_ms"], f"chain{long}_ms": b["median_ms"]}


def chain_job(key: str, make: Callable[[int], object], shape: Callable[[int], tuple], copies=(2, 12)) -> LutJob:
    """``make(n)``: a module of ``n`` copies of the op; ``shape(batch)``: its input shape."""
    short, long = copies

    def graphs(batch: int) -> list[Graph]:
        return [(f"chain{n}", make(n), shape(batch)) for n in (short, long)]

    def combine(stats: dict[str, Stats]) -> dict[str, Stats]:
        return {key: chain_entry(stats[f"chain{short}"], stats[f"chain{long}"], short, long)}

    return LutJob(key, (key,), "chain", graphs, combine)


def lone_job(key: str, make: Callable[[int], tuple]) -> LutJob:
    """``make(batch)`` -> (module, input shape): a layer timed alone."""

    def graphs(batch: int) -> list[Graph]:
        return [("alone", *make(batch))]

    return LutJob(key, (key,), "alone", graphs, lambda stats: {key: _scaled(stats["alone"], 1.0, {"method": "alone"})})


def shared_job(name: str, make: Callable[[int], tuple[tuple, list[tuple]]]) -> LutJob:
    """``make(batch)`` -> ((whole module, shape), [(key, part module, shape), ...]): the whole net is timed,
    and its time is shared among the parts in proportion to their lone timings."""
    keys = tuple(k for k, *_ in make(1)[1])

    def graphs(batch: int) -> list[Graph]:
        (whole, shape), parts = make(batch)
        return [("whole", whole, shape)] + [(f"part:{k}", m, s) for k, m, s in parts]

    def combine(stats: dict[str, Stats]) -> dict[str, Stats]:
        whole = stats["whole"]["median_ms"]
        total = sum(stats[f"part:{k}"]["median_ms"] for k in keys)
        return {k: _scaled(stats[f"part:{k}"], whole / total,
                           {"method": "skeleton share", "alone_ms": stats[f"part:{k}"]["median_ms"],
                            "skeleton_ms": whole}) for k in keys}

    return LutJob(name, keys, "shared", graphs, combine)


# ----------------------------------------------------------------------------- a LUT read back as a cost


class LutCost(Protocol):
    """An arch's cost in one profile's LUT, in milliseconds."""

    def ms(self, archs: Sequence) -> np.ndarray: ...

    def ms_torch(self, x):  # differentiable over the space's encoding, where the space can say it
        ...


class CountedLutCost:
    """The sum of the LUT medians over each arch's op signatures (``space.op_signatures``)."""

    def __init__(self, space, lut_ms: dict[str, float], dataset: str | None, name: str = "profile"):
        self.space, self.lut_ms, self.dataset, self.name = space, lut_ms, dataset, name
        self._counts: dict = {}

    def _count(self, arch) -> Counter:
        c = self._counts.get(arch)
        if c is None:
            c = self._counts[arch] = Counter(self.space.op_signatures(arch, self.dataset))
        return c

    def ms(self, archs: Sequence) -> np.ndarray:
        per_arch = [self._count(a) for a in archs]
        keys = sorted(set().union(*per_arch)) if per_arch else []
        missing = [k for k in keys if k not in self.lut_ms]
        if missing:
            raise ProfileError(f"profile {self.name} has no LUT entry for {missing[0]!r} ({len(missing)} missing): "
                               "re-run `pomonag-edge profile`")
        column = {k: j for j, k in enumerate(keys)}
        counts = np.zeros((len(archs), len(keys)))
        for i, c in enumerate(per_arch):
            for k, n in c.items():
                counts[i, column[k]] = n
        return counts @ np.array([self.lut_ms[k] for k in keys]) if keys else np.zeros(len(archs))

    def ms_torch(self, x):
        raise NotImplementedError(f"space {self.space.name} states no differentiable LUT cost")


def lut_cost(space, profile) -> LutCost:
    """The profile's LUT as a cost over ``space``'s archs (``space.lut_cost``), or one line saying why not."""
    profile.require_space(space)
    if not profile.lut:
        what = "a reference profile" if profile.reference else "a profile"
        raise ProfileError(f"{profile.name} is {what} without a per-op latency table (LUT)")
    lut_ms = {k: float(v["median_ms"]) for k, v in profile.lut.items()}
    return space.lut_cost(lut_ms, profile.dataset, profile.name)


def positive_lut_ms(cost: LutCost, archs: Sequence, name: str) -> np.ndarray:
    """``cost.ms(archs)``, checked positive (the latency model takes its log)."""
    out = np.asarray(cost.ms(list(archs)), dtype=np.float64)
    if not np.all(out > 0):
        raise ProfileError(f"profile {name!r}: its LUT sums to a non-positive latency for some net")
    return out
