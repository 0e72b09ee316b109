"""Per-op latency table (LUT) of NB201 and MobileNetV3, timed in context, and the LUT-sum of an arch.

Lone single-op graphs overstate each op (per-call overhead, layout reorders, a ReLU that fuses into
the preceding conv inside a real net): their sum was off by ~100% here. So each cell op is timed as
a chain of the same op, ``long`` copies minus ``short`` copies divided by their difference, which
cancels the fixed cost of a call. The blocks every net has once (stem, two reductions, head) are
timed together as one *skeleton* net (every cell an identity), and that total is shared among them
in proportion to their lone timings. LUT keys are exactly ``SPACE.op_signatures``; skip edges
compute nothing and have no key.

MobileNetV3 (``mbv3_jobs``): one entry per ``ofa``-style key (``SPACE.lut_signatures``) at the resolutions
profiled, each layer built by ``mbv3_net.signature_module``. A residual block (stride 1, same channels) is
timed as a chain, ``MBV3_CHAIN`` copies, like NB201's ops; the other layers (first conv, first block of each
stage, head) cannot be chained and are timed alone: every arch has exactly 11 of those, so their per-call
overhead is a constant that the profile's fitted scale absorbs. Resolutions not profiled are interpolated
(``predictors.latency_mbv3.own_lut_cost``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import ProfileError, UserError
from .timing import Measurement

CHAIN = (2, 12)  # (short, long) copies of one op
MBV3_CHAIN = (1, 3)  # MobileNetV3 blocks are ~100x heavier than an NB201 op: short chains cancel the overhead
# resolutions an mbv3 profile measures: every 16 (7) by default, the two ends with --quick (which also times
# every layer alone, no chains: ~190 layers in ~1.5 min here); the rest are interpolated
MBV3_RESOLUTIONS = {"default": (128, 144, 160, 176, 192, 208, 224), "quick": (128, 224)}
_CELL_KEY = re.compile(r"^(nor_conv_1x1|nor_conv_3x3|avg_pool_3x3):c(\d+):hw(\d+)$")


@dataclass(frozen=True)
class LutJob:
    """One unit of measuring (and of resuming): the keys it fills in and how to build its graphs."""

    name: str
    keys: tuple[str, ...]
    kind: str  # "chain" (one cell op) or "fixed" (stem + reductions + head from the skeleton)


def skeleton_arch():
    """The NB201 arch whose cells are identities (one live skip edge): the net's fixed blocks only."""
    from ..spaces.nb201 import NONE, SKIP, NB201Arch

    return NB201Arch((NONE, NONE, NONE, SKIP, NONE, NONE))


def nb201_jobs(space, dataset: str) -> list[LutJob]:
    """The fixed-block job first, then one chain job per distinct cell-op signature."""
    fixed = tuple(dict.fromkeys(space.op_signatures(skeleton_arch(), dataset)))
    cell = [k for k in space.lut_signatures(dataset) if k not in fixed]
    bad = [k for k in cell if not _CELL_KEY.match(k)]
    if bad:
        raise ValueError(f"unexpected NB201 LUT keys {bad}")
    return [LutJob("stem + reductions + head", fixed, "fixed")] + [LutJob(k, (k,), "chain") for k in cell]


def mbv3_jobs(space, dataset: str, resolutions, chains: bool = True) -> list[LutJob]:
    """One job per ``ofa``-style key any arch at ``resolutions`` needs: a chain for residual blocks (when
    ``chains``), else the layer alone."""
    from ..spaces.mbv3 import parse_signature

    jobs = []
    for key in space.lut_signatures(dataset, tuple(resolutions)):
        layer, spec = parse_signature(key)
        chain = chains and layer == "expanded_conv" and spec.residual
        jobs.append(LutJob(key, (key,), "mbv3-chain" if chain else "mbv3-lone"))
    return jobs


# ----------------------------------------------------------------------------- graphs


def _chain_module(key: str, copies: int):
    import torch.nn as nn

    from ..spaces.nb201 import OPS
    from ..spaces.nb201_net import make_op

    op, c, hw = _CELL_KEY.match(key).groups()
    return nn.Sequential(*[make_op(OPS.index(op), int(c)) for _ in range(copies)]), (int(c), int(hw))


def _head_module(net):
    """The head as one module: last BN-ReLU, global pool, classifier."""
    import torch
    import torch.nn as nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.lastact, self.pool, self.classifier = net.lastact, net.pool, net.classifier

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.lastact(x)), 1))

    return Head()


def _fixed_blocks(space, dataset: str, batch: int):
    """(skeleton net, its input shape, [(key, lone module, input shape)]) in op_signatures order."""
    from ..spaces.nb201 import CELLS_PER_STAGE, STAGE_CHANNELS

    arch = skeleton_arch()
    keys = space.op_signatures(arch, dataset)  # stem, reduce, reduce, head
    net = space.build(arch, dataset).eval()
    shape = space.input_shape(arch, dataset, batch)
    hw = shape[-1]
    blocks = [(keys[0], net.stem, shape)]
    for s in (1, 2):
        index = s * (CELLS_PER_STAGE + 1) - 1  # cells 0..4, reduction 5, cells 6..10, reduction 11, ...
        c_in, h = STAGE_CHANNELS[s - 1], hw >> (s - 1)
        blocks.append((keys[s], net.cells[index], (batch, c_in, h, h)))
    blocks.append((keys[3], _head_module(net), (batch, STAGE_CHANNELS[-1], hw >> 2, hw >> 2)))
    return net, shape, blocks


def _timed(backend, module, shape, protocol, seed: int) -> Measurement:
    rng = np.random.default_rng(seed)
    inputs = {"input": rng.standard_normal(shape).astype(np.float32)}
    return backend.load(module.eval(), inputs).measure(protocol)


def _scaled(m: Measurement, factor: float, extra: dict) -> dict:
    return {"median_ms": m.median_ms * factor, "p90_ms": m.p90_ms * factor, "p99_ms": m.p99_ms * factor,
            "mean_ms": m.mean_ms * factor, "cv": m.cv, "runs": m.runs, **extra}


def _chain_stats(a: Measurement, b: Measurement, short: int, long: int) -> dict:
    """Per-copy stats from a short and a long chain of the same op: the fixed cost of a call cancels."""
    span = long - short
    spread = np.hypot(a.cv * a.mean_ms, b.cv * b.mean_ms) / span
    median = max(0.0, (b.median_ms - a.median_ms) / span)
    return {"median_ms": median, "p90_ms": max(0.0, (b.p90_ms - a.p90_ms) / span),
            "p99_ms": max(0.0, (b.p99_ms - a.p99_ms) / span), "mean_ms": max(0.0, (b.mean_ms - a.mean_ms) / span),
            "cv": float(spread / median) if median > 0 else None, "runs": min(a.runs, b.runs),
            "method": f"chain {long}-{short}", f"chain{short}_ms": a.median_ms, f"chain{long}_ms": b.median_ms}


def _measure_mbv3(job: LutJob, backend, protocol, batch: int, seed: int) -> dict:
    import torch.nn as nn

    from ..spaces.mbv3_net import signature_module

    key = job.keys[0]
    module, shape = signature_module(key, batch)
    if job.kind == "mbv3-lone":
        return {key: _scaled(_timed(backend, module, shape, protocol, seed), 1.0, {"method": "alone"})}
    short, long = MBV3_CHAIN
    a, b = (_timed(backend, nn.Sequential(*[signature_module(key, batch)[0] for _ in range(n)]), shape, protocol, seed)
            for n in MBV3_CHAIN)
    return {key: _chain_stats(a, b, short, long)}


def measure_job(job: LutJob, space, dataset: str, backend, protocol, batch: int = 1, seed: int = 0) -> dict:
    """Time one job; returns ``{key: stats}`` for the LUT."""
    if job.kind.startswith("mbv3"):
        return _measure_mbv3(job, backend, protocol, batch, seed)
    if job.kind == "chain":
        short, long = CHAIN
        stats = []
        for copies in CHAIN:
            module, (c, hw) = _chain_module(job.keys[0], copies)
            stats.append(_timed(backend, module, (batch, c, hw, hw), protocol, seed))
        return {job.keys[0]: _chain_stats(*stats, short, long)}
    net, shape, blocks = _fixed_blocks(space, dataset, batch)
    skeleton = _timed(backend, net, shape, protocol, seed)
    lone = [(key, _timed(backend, module, s, protocol, seed)) for key, module, s in blocks]
    total = sum(m.median_ms for _, m in lone)
    out = {}
    for key, m in lone:
        share = skeleton.median_ms / total
        out[key] = _scaled(m, share, {"method": "skeleton share", "alone_ms": m.median_ms,
                                      "skeleton_ms": skeleton.median_ms})
    return out


# ----------------------------------------------------------------------------- using the table


def _lut_vector(profile, keys: Sequence[str]) -> np.ndarray:
    if not profile.lut:
        what = "a reference profile" if profile.reference else "a profile"
        raise ProfileError(f"{profile.name} is {what} without a per-op latency table (LUT)")
    missing = [k for k in keys if k not in profile.lut]
    if missing:
        raise ProfileError(f"profile {profile.name} ({profile.space}, {profile.dataset}) has no LUT entry for "
                           f"{missing[0]!r} ({len(missing)} missing): re-run `pomonag-edge profile`")
    return np.array([float(profile.lut[k]["median_ms"]) for k in keys])


@lru_cache(maxsize=None)
def _arch_counts(space, arch, dataset: str | None) -> Counter:
    return Counter(space.op_signatures(arch, dataset))


def signature_counts(space, archs: Sequence, dataset: str | None) -> tuple[list[str], np.ndarray]:
    """(keys, counts) with ``counts[i, j]`` = how often arch i runs block ``keys[j]``."""
    per_arch = [_arch_counts(space, a, dataset) for a in archs]
    keys = sorted(set().union(*per_arch)) if per_arch else []
    column = {k: j for j, k in enumerate(keys)}
    counts = np.zeros((len(archs), len(keys)), dtype=np.float64)
    for i, c in enumerate(per_arch):
        for k, n in c.items():
            counts[i, column[k]] = n
    return keys, counts


def lut_sum_ms(space, profile, archs: Sequence) -> np.ndarray:
    """Sum of the LUT medians over each arch's op signatures (ms); a feature for the latency model.
    mbv3: at a resolution the LUT was not measured at, interpolated (``latency_mbv3.own_lut_cost``)."""
    if profile.space != space.name:
        raise UserError(f"profile {profile.name} is for space {profile.space}, not {space.name}")
    if space.name == "mbv3":
        from ..predictors.latency_mbv3 import own_lut_cost

        _lut_vector(profile, [])  # the "no LUT" error
        return own_lut_cost(profile).evaluate_np(list(archs))
    keys, counts = signature_counts(space, archs, profile.dataset)
    return counts @ _lut_vector(profile, keys) if keys else np.zeros(len(archs))


@lru_cache(maxsize=None)
def _distinct_valid(space) -> tuple:
    """One arch per function the space can compute, disconnected nets left out."""
    seen, out = set(), []
    for a in space.enumerate():
        if space.is_valid(a):
            c = space.canonical(a)
            if c not in seen:
                seen.add(c)
                out.append(a)
    return tuple(out)


MAX_ENUMERATED = 100_000  # a larger space (mbv3) draws its calibration nets from a seeded sample
CANDIDATES = 3000


def select_calibration(space, profile, n: int, seed: int, exclude: Sequence = ()) -> list:
    """``n`` distinct, valid, functionally different archs spanning the LUT-sum range: one drawn at random
    (seeded) from each of ``n`` equal-width LUT-sum bins, the nearest unused arch when a bin is empty.
    Candidates: the whole space when it is small (nb201), else ``CANDIDATES`` seeded samples (mbv3)."""
    if n <= 0:
        return []
    excluded = {str(a) for a in exclude}
    pool = _distinct_valid(space) if space.size() <= MAX_ENUMERATED else space.sample(CANDIDATES, seed)
    archs = [a for a in dict.fromkeys(pool) if str(a) not in excluded]
    sums = lut_sum_ms(space, profile, archs)
    rng = np.random.default_rng(seed)
    edges = np.linspace(sums.min(), sums.max(), n + 1)
    free = np.ones(len(archs), dtype=bool)
    chosen = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        pool = np.flatnonzero(free & (sums >= lo) & (sums <= hi))
        if pool.size == 0:
            pool = np.flatnonzero(free)
            pool = pool[[np.argmin(np.abs(sums[pool] - (lo + hi) / 2))]]
        i = int(rng.choice(pool))
        free[i] = False
        chosen.append(archs[i])
        if not free.any():
            break
    return chosen
