"""MobileNetV3 costs that add up over block slots, as tables: exact on one-hot encodings, fast, differentiable
on relaxed ones (guidance). They give the latency embedding its two device-agnostic features (the i7-8700K
reference LUT-sum and MACs) and a profile's own LUT its cost over every resolution, interpolated between the
resolutions it was measured at.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from ...data.mbv3 import reference_lut
from ...errors import ProfileError
from .arch import (DEPTH_OFFSET, EXPANDS, KERNELS, MAX_DEPTH, NUM_SLOTS, NUM_STAGES, RES_OFFSET, RESOLUTIONS,
                   SLOT_FEATURES, MBV3Arch, costs, lut_keys, lut_sum_ms)

FEATURE_LUT = "i7-8700k"


@dataclass
class AdditiveCost:
    """``cost(arch) = base[r] + sum over used slots i of table[r, i, k_i, e_i]`` (exact for MACs and LUT-sums).

    ``resolutions`` index the first axis; ``evaluate_np`` takes archs, ``evaluate_torch`` an (n, 160) encoding
    (one-hot or relaxed): the resolution and each slot's kernel x expand weights multiply the table, so an
    unused slot (all zero) adds nothing."""

    resolutions: tuple[int, ...]
    base: np.ndarray  # (R,)
    table: np.ndarray  # (R, 20, 3, 3)

    def evaluate_np(self, archs) -> np.ndarray:
        ri = {r: j for j, r in enumerate(self.resolutions)}
        out = np.empty(len(archs))
        for n, a in enumerate(archs):
            if a.r not in ri:
                raise ProfileError(f"no cost table at resolution {a.r}")
            j = ri[a.r]
            out[n] = self.base[j] + sum(self.table[j, i, KERNELS.index(k), EXPANDS.index(e)]
                                        for i, (k, e) in enumerate(zip(a.ks, a.e)) if k)
        return out

    def evaluate_torch(self, x):
        import torch

        if tuple(self.resolutions) != tuple(RESOLUTIONS):
            raise ValueError("a differentiable cost needs a table at every resolution of the space")
        xr = x[:, RES_OFFSET:]
        slots = x[:, :DEPTH_OFFSET].reshape(len(x), NUM_SLOTS, SLOT_FEATURES)
        base = torch.as_tensor(self.base, dtype=x.dtype)
        table = torch.as_tensor(self.table, dtype=x.dtype)
        return xr @ base + torch.einsum("nr,nik,nie,rike->n", xr, slots[:, :, :3], slots[:, :, 3:], table)


def _probe(r: int, w: float, d, slot: int | None = None, k: int = 3, e: int = 3):
    ks, es = [3] * NUM_SLOTS, [3] * NUM_SLOTS
    if slot is not None:
        ks[slot], es[slot] = k, e
    return MBV3Arch(tuple(ks), tuple(es), tuple(d), r, w)


def additive_cost(f, resolutions: Sequence[int], w: float = 1.2) -> AdditiveCost:
    """Tables of any per-arch cost ``f`` that is a sum over layers, by differences of ``f`` on probe archs.

    Slot 0 of a stage is always used: its entry is relative to (k3, e3), which ``base`` holds. Slots 2 and 3
    hold the whole block's cost (relative to the stage one block shallower); both are the same layer (same
    shapes, stride 1), and so is slot 1, which, always used, is stored relative to (k3, e3) like slot 0."""
    base = np.empty(len(resolutions))
    table = np.empty((len(resolutions), NUM_SLOTS, len(KERNELS), len(EXPANDS)))
    for j, r in enumerate(resolutions):
        d2 = [2] * NUM_STAGES
        base[j] = f(_probe(r, w, d2))
        for s in range(NUM_STAGES):
            first, d3 = s * MAX_DEPTH, list(d2)
            d3[s] = 3
            for a, k in enumerate(KERNELS):
                for b, e in enumerate(EXPANDS):
                    table[j, first, a, b] = f(_probe(r, w, d2, first, k, e)) - base[j]
                    table[j, first + 2, a, b] = f(_probe(r, w, d3, first + 2, k, e)) - base[j]
            table[j, first + 3] = table[j, first + 2]
            table[j, first + 1] = table[j, first + 2] - table[j, first + 2, 0, 0]
    return AdditiveCost(tuple(resolutions), base, table)


@lru_cache(maxsize=None)
def feature_costs() -> tuple[AdditiveCost, AdditiveCost]:
    """(i7-8700K reference LUT-sum in ms, MACs in millions) over every resolution of the space, w1.2."""
    lut = reference_lut(FEATURE_LUT)
    return (additive_cost(lambda a: lut_sum_ms(a, lut, "nsganetv2"), RESOLUTIONS),
            additive_cost(lambda a: costs(a)[1] / 1e6, RESOLUTIONS))


def raw_cost_features(archs) -> np.ndarray:
    """(n, 2) log i7 LUT-sum ms, log MACs (M). Width is not encoded: w1.0 archs get their w1.2 twin's costs."""
    lut, macs = feature_costs()
    return np.log(np.stack([lut.evaluate_np(archs), macs.evaluate_np(archs)], axis=1))


def lut_resolutions(lut_ms, num_classes: int = 1000) -> tuple[int, ...]:
    """Resolutions at which a LUT holds every key an arch can need."""
    keys = set(lut_ms)
    return tuple(r for r in RESOLUTIONS if set(lut_keys(num_classes, (r,))) <= keys)


def interpolated_lut_cost(lut_ms: dict[str, float], num_classes: int, name: str) -> AdditiveCost:
    """The profile's LUT-sum as an additive table over every resolution: exact where its LUT was measured,
    elsewhere interpolated linearly in ``r`` between the nearest measured resolutions after dividing by ``r^2``
    (the blocks' work scales with the feature-map area), and scaled by ``(r / r_edge)^2`` beyond them."""
    have = lut_resolutions(lut_ms, num_classes)
    if not have:
        raise ProfileError(f"profile {name!r}: its LUT covers no resolution completely; "
                           "re-run `pomonag-edge profile --space mbv3`")
    exact = additive_cost(lambda a: lut_sum_ms(a, lut_ms, "ofa", num_classes), have)
    base, table = np.empty(len(RESOLUTIONS)), np.empty((len(RESOLUTIONS), *exact.table.shape[1:]))
    h = np.array(have, dtype=np.float64)
    for j, r in enumerate(RESOLUTIONS):
        hi = int(np.searchsorted(h, r))
        if hi < len(h) and h[hi] == r:
            wts = {hi: 1.0}
        elif hi == 0:
            wts = {0: (r / h[0]) ** 2}
        elif hi == len(h):
            wts = {len(h) - 1: (r / h[-1]) ** 2}
        else:
            t = (r - h[hi - 1]) / (h[hi] - h[hi - 1])
            wts = {hi - 1: (1 - t) * (r / h[hi - 1]) ** 2, hi: t * (r / h[hi]) ** 2}
        base[j] = sum(wt * exact.base[i] for i, wt in wts.items())
        table[j] = sum(wt * exact.table[i] for i, wt in wts.items())
    return AdditiveCost(tuple(RESOLUTIONS), base, table)
