"""The timing protocol (DESIGN.md): warm up, time many runs, report median / p90 / p99 / CV, re-measure if noisy.

A backend supplies ``run_once() -> milliseconds`` (wall clock on a CPU, CUDA events on a GPU); this module
decides how often to call it and what to report, so every backend is timed the same way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

from .runner import PROTOCOL as _PROTOCOL


@dataclass(frozen=True)
class Protocol:
    """How to time one model. Defaults are the trustworthy ones (the device runner's ``PROTOCOL``, defined there
    because the runner stands alone on the device); ``QUICK`` is for tests and ``--quick``.

    Warm-up lasts until both ``warmup_ms`` and ``warmup_runs`` are reached. Timing stops once both
    ``min_runs`` runs and ``min_time_s`` seconds are reached, as trtexec does (its defaults: 10 runs and
    3 s; ours ask 100 runs and 1 s, since a profile times ~100 graphs), or at ``max_time_s`` so a huge net
    does not take minutes, but never before ``floor_runs`` runs. When the coefficient of variation exceeds
    ``max_cv`` the measurement is repeated up to ``retries`` times and the quietest one is kept.
    ``settle_s`` is a one-off warm-up of the whole machine before a series of measurements, since the first
    model timed in a fresh process runs slow despite its own warm-up. The device runner
    (``runner.py``) splits the runs into ``rounds`` taken in turn across all the files it times.
    """

    name: str = _PROTOCOL["name"]
    warmup_ms: float = _PROTOCOL["warmup_ms"]
    warmup_runs: int = _PROTOCOL["warmup_runs"]
    min_runs: int = _PROTOCOL["min_runs"]
    min_time_s: float = _PROTOCOL["min_time_s"]
    max_time_s: float = _PROTOCOL["max_time_s"]
    floor_runs: int = _PROTOCOL["floor_runs"]
    max_cv: float = _PROTOCOL["max_cv"]
    retries: int = _PROTOCOL["retries"]
    settle_s: float = _PROTOCOL["settle_s"]
    rounds: int = _PROTOCOL["rounds"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


DEFAULT = Protocol()
QUICK = Protocol(name="quick", warmup_ms=20.0, warmup_runs=3, min_runs=25, min_time_s=0.25, max_time_s=2.0,
                 floor_runs=5, max_cv=0.25, retries=1, settle_s=0.3, rounds=2)
PROTOCOLS = {"default": DEFAULT, "quick": QUICK}


@dataclass(frozen=True)
class Measurement:
    """Statistics of one timed model, in milliseconds per forward pass."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cv: float  # standard deviation / mean
    runs: int
    repeats: int = 1  # how many full measurements were taken (more than 1 when the first was noisy)
    calls: int | None = None  # a device that is a command: one value per call of it (runs == calls)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["calls"] is None:  # absent unless set, so every other timing's record is as it was
            del d["calls"]
        return d

    @classmethod
    def from_samples(cls, samples_ms, repeats: int = 1) -> "Measurement":
        x = np.asarray(samples_ms, dtype=np.float64)
        if x.size == 0:
            raise ValueError("no timing samples")
        mean = float(x.mean())
        return cls(median_ms=float(np.median(x)), p90_ms=float(np.percentile(x, 90)),
                   p99_ms=float(np.percentile(x, 99)), mean_ms=mean,
                   cv=float(x.std() / mean) if mean > 0 else 0.0, runs=int(x.size), repeats=repeats)


def _one_pass(run_once: Callable[[], float], protocol: Protocol) -> list[float]:
    start = time.perf_counter()
    n = 0
    while n < protocol.warmup_runs or (time.perf_counter() - start) * 1e3 < protocol.warmup_ms:
        run_once()
        n += 1
    samples: list[float] = []
    start = time.perf_counter()
    cap_s = max(protocol.max_time_s, protocol.min_time_s)
    while True:
        elapsed = time.perf_counter() - start
        if len(samples) >= protocol.floor_runs and (
                elapsed >= cap_s or (len(samples) >= protocol.min_runs and elapsed >= protocol.min_time_s)):
            return samples
        samples.append(float(run_once()))


def settle(run_once: Callable[[], float], protocol: Protocol = DEFAULT) -> None:
    """Run for ``protocol.settle_s`` seconds, results discarded: caches, allocators, clocks reach steady state."""
    start = time.perf_counter()
    while time.perf_counter() - start < protocol.settle_s:
        run_once()


def measure(run_once: Callable[[], float], protocol: Protocol = DEFAULT) -> Measurement:
    """Time ``run_once`` (one forward pass, returning its own duration in ms) under ``protocol``."""
    best: Measurement | None = None
    attempts = 0
    while attempts <= max(0, protocol.retries):
        attempts += 1
        m = Measurement.from_samples(_one_pass(run_once, protocol))
        if best is None or m.cv < best.cv:
            best = m
        if m.cv <= protocol.max_cv:
            break
    return replace(best, repeats=attempts)


def wall_clock(fn: Callable[[], object]) -> Callable[[], float]:
    """Wrap a synchronous call so it returns its duration in milliseconds."""

    def run_once() -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    return run_once


def thread_cpu_clock(fn: Callable[[], object]) -> Callable[[], float]:
    """Like ``wall_clock`` but counts only the CPU time of the calling thread: time stolen by other
    processes is not counted, so a shared machine gives steady numbers. Valid only when all the work
    runs on the calling thread (ONNX Runtime on the CPU with one intra-op thread)."""

    def run_once() -> float:
        t = time.thread_time()
        fn()
        return (time.thread_time() - t) * 1e3

    return run_once


CLOCKS = {"wall": wall_clock, "cpu": thread_cpu_clock}
