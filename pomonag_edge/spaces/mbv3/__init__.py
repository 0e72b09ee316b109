"""Once-for-All MobileNetV3 as a search space: the arch and its exact costs (``arch``), its network (``net``),
additive cost tables (``cost``), OFA's accuracy predictor (``accuracy``), and here every MobileNetV3 recipe the
generic code needs: encoding layout, LUT plan and cost, latency recipe, the generator's training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np

from ...data import batch_of
from ...data.mbv3 import ofa_latency_rows, ofa_latency_settings
from ...errors import UserError
from ..base import GeneratorRecipe, LatencyRecipe, SpaceBase
from ..lut import LutPlan, chain_job, lone_job
from .accuracy import OFAAccuracyPredictor
from .arch import (DATASET_CLASSES, DATASETS, DEFAULT_WIDTH, DEPTH_OFFSET, DEPTHS, ENCODING_DIM, EXPANDS, KERNELS,
                   MAX_DEPTH, NUM_SLOTS, NUM_STAGES, RES_OFFSET, RESOLUTIONS, SLOT_FEATURES, SLOTS_OFFSET, WIDTHS,
                   MBV3Arch, costs, lut_keys, op_signatures, parse, parse_signature)
from .cost import interpolated_lut_cost, raw_cost_features

__all__ = ["SPACE", "SPACE_W10", "MBV3Space", "MBV3Arch", "parse", "KERNELS", "EXPANDS", "DEPTHS", "RESOLUTIONS",
           "NUM_SLOTS", "NUM_STAGES", "MAX_DEPTH", "ENCODING_DIM", "DEPTH_OFFSET", "RES_OFFSET", "SLOT_FEATURES",
           "OFALatencyTable", "ofa_latency_table"]

LUT_CHAIN = (1, 3)  # blocks are ~100x heavier than an NB201 op: short chains cancel the per-call overhead
# resolutions a profile measures: every 16 by default, the two ends with --quick (which also times every layer
# alone, no chains: ~190 layers in ~1.5 min on a 2-core CPU); the rest are interpolated (``cost``)
LUT_RESOLUTIONS = {"default": (128, 144, 160, 176, 192, 208, 224), "quick": (128, 224)}
MBV3_VALID_NETS = 40_000
MBV3_POOL, MBV3_BINS, MBV3_KEEP = 80_000, 20, 0.25


class MBV3Space(SpaceBase):
    """The OFA MobileNetV3 space. ``SPACE`` below is the w1.2 instance (what every shipped table describes),
    ``SPACE_W10`` the w1.0 one. The space's width is what ``sample`` and ``decode`` produce; ``build``, the
    costs and the LUT keys follow each arch's own ``w``. Not enumerable: ``size()`` is ~5.4e20, so search
    code must test ``size()`` against its own limit before calling ``enumerate()``, which raises."""

    name = "mbv3"
    encoding_shape = (ENCODING_DIM,)
    datasets = DATASETS
    default_dataset = "imagenet"
    resolutions = RESOLUTIONS
    kernels, expands, depths = KERNELS, EXPANDS, DEPTHS

    def __init__(self, width: float = DEFAULT_WIDTH):
        if not any(math.isclose(width, c) for c in WIDTHS):
            raise UserError(f"MobileNetV3 width multiplier must be one of {WIDTHS}, got {width}")
        self.width = float(width)

    # -- strings and counting
    def parse(self, text: str) -> MBV3Arch:
        return parse(text)

    def size(self) -> int:
        """Distinct archs at this width: (9^2 + 9^3 + 9^4)^5 block choices x 25 resolutions, about 5.4e20."""
        per_stage = sum((len(KERNELS) * len(EXPANDS)) ** d for d in DEPTHS)
        return per_stage**NUM_STAGES * len(RESOLUTIONS)

    def enumerate(self) -> Iterator[MBV3Arch]:
        raise UserError(f"the mbv3 space holds {self.size():.2e} archs and cannot be enumerated; "
                        "sample it or generate from it instead")

    def sample(self, n: int, seed: int) -> list[MBV3Arch]:
        """OFA's sampling: each stage depth, kernel, expand ratio and the resolution uniform and independent
        (not uniform over archs, which would be almost all depth 4)."""
        rng = np.random.default_rng(seed)
        d = rng.choice(DEPTHS, size=(n, NUM_STAGES))
        ks = rng.choice(KERNELS, size=(n, NUM_SLOTS))
        e = rng.choice(EXPANDS, size=(n, NUM_SLOTS))
        r = rng.choice(RESOLUTIONS, size=n)
        return [MBV3Arch(tuple(ks[i]), tuple(e[i]), tuple(d[i]), int(r[i]), self.width) for i in range(n)]

    # -- learning encodings
    def encode(self, archs: Sequence[MBV3Arch]) -> np.ndarray:
        """Float32 (n, 160); layout in the module constants (slots, then depths, then resolution).
        The width multiplier is not encoded: it is fixed per space."""
        x = np.zeros((len(archs), ENCODING_DIM), dtype=np.float32)
        for n, a in enumerate(archs):
            for i in range(NUM_SLOTS):
                if a.ks[i]:
                    base = SLOTS_OFFSET + i * SLOT_FEATURES
                    x[n, base + KERNELS.index(a.ks[i])] = 1
                    x[n, base + len(KERNELS) + EXPANDS.index(a.e[i])] = 1
            for s in range(NUM_STAGES):
                x[n, DEPTH_OFFSET + s * len(DEPTHS) + DEPTHS.index(a.d[s])] = 1
            x[n, RES_OFFSET + RESOLUTIONS.index(a.r)] = 1
        return x

    def slot_mask(self, x: np.ndarray) -> np.ndarray:
        """(n, 160) 0/1 mask of the features that matter for each row's decoded depths (slots beyond a
        stage's depth are 0; depth and resolution features are always 1), for masking a denoiser's loss."""
        x = self._check(x)
        d = np.asarray(DEPTHS)[x[:, DEPTH_OFFSET:RES_OFFSET].reshape(-1, NUM_STAGES, len(DEPTHS)).argmax(-1)]
        used = np.arange(MAX_DEPTH)[None, None, :] < d[:, :, None]  # (n, 5, 4)
        mask = np.ones_like(x, dtype=np.float32)
        mask[:, :DEPTH_OFFSET] = np.repeat(used.reshape(-1, NUM_SLOTS), SLOT_FEATURES, axis=1)
        return mask

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1:] != self.encoding_shape:
            raise ValueError(f"expected shape (n, {ENCODING_DIM}), got {x.shape}")
        return x

    def decode(self, x: np.ndarray, width: float | None = None) -> list[MBV3Arch]:
        """Argmax per group of any real (n, 160) array: depths first, then the kernel and expand ratio of
        each used slot, then the resolution. Always valid; unused slots are ignored."""
        x = self._check(x)
        nk, ne = len(KERNELS), len(EXPANDS)
        slots = x[:, :DEPTH_OFFSET].reshape(-1, NUM_SLOTS, SLOT_FEATURES)
        ks = np.asarray(KERNELS)[slots[:, :, :nk].argmax(-1)]
        e = np.asarray(EXPANDS)[slots[:, :, nk:nk + ne].argmax(-1)]
        d = np.asarray(DEPTHS)[x[:, DEPTH_OFFSET:RES_OFFSET].reshape(-1, NUM_STAGES, len(DEPTHS)).argmax(-1)]
        r = np.asarray(RESOLUTIONS)[x[:, RES_OFFSET:].argmax(-1)]
        w = self.width if width is None else width
        return [MBV3Arch(tuple(ks[n]), tuple(e[n]), tuple(d[n]), int(r[n]), w) for n in range(len(x))]

    # -- validity and equivalence
    def is_valid(self, arch: MBV3Arch) -> bool:
        """Every constructed arch is a valid network (the constructor refuses anything else)."""
        return isinstance(arch, MBV3Arch)

    def canonical(self, arch: MBV3Arch) -> MBV3Arch:
        """Archs are canonical on construction (unused slots zeroed); no two distinct ones compute the same
        function, barring coincidences of trained weights."""
        return arch

    # -- networks and costs
    def _classes(self, dataset: str | None, num_classes: int | None) -> int:
        if num_classes is not None:
            return int(num_classes)
        return DATASET_CLASSES[self.check_dataset(dataset)]

    def input_shape(self, arch: MBV3Arch, dataset: str | None = None, batch: int = 1) -> tuple[int, ...]:
        self._classes(dataset, None)
        return (batch, 3, arch.r, arch.r)

    def build(self, arch: MBV3Arch, dataset: str | None = None, num_classes: int | None = None):
        from .net import MobileNetV3

        return MobileNetV3(arch, self._classes(dataset, num_classes))

    def params(self, arch: MBV3Arch, dataset: str | None = None, num_classes: int | None = None) -> int:
        return costs(arch, self._classes(dataset, num_classes))[0]

    def macs(self, arch: MBV3Arch, dataset: str | None = None, num_classes: int | None = None) -> int:
        return costs(arch, self._classes(dataset, num_classes))[1]

    def op_signatures(self, arch: MBV3Arch, dataset: str | None = None, style: str = "ofa",
                      num_classes: int | None = None) -> list[str]:
        return op_signatures(arch, self._classes(dataset, num_classes), style)

    def lut_signatures(self, dataset: str | None = None, resolutions: Sequence[int] = RESOLUTIONS,
                       style: str = "ofa") -> list[str]:
        """Every distinct LUT key any arch at these resolutions needs (90 blocks + 6 fixed per resolution,
        fewer where resolutions share feature-map sizes)."""
        return lut_keys(self._classes(dataset, None), tuple(resolutions), self.width, style)

    # -- encoding layout
    def categorical_groups(self):
        """20 kernels and 20 expand ratios of 3 values, 5 stage depths of 3, one resolution of 25."""
        nk, ne = len(KERNELS), len(EXPANDS)
        groups = []
        for i in range(NUM_SLOTS):
            groups += [(i * SLOT_FEATURES, nk), (i * SLOT_FEATURES + nk, ne)]
        groups += [(DEPTH_OFFSET + s * len(DEPTHS), len(DEPTHS)) for s in range(NUM_STAGES)]
        return groups + [(RES_OFFSET, len(RESOLUTIONS))]

    def token_groups(self):
        """26 tokens: one per block slot (its kernel and expand one-hots together, so attention sees a block as
        one unit), one per stage depth, one for the resolution. A slot token sits next to its stage's depth
        token, which lets the network learn that a depth-2 stage leaves slots 3 and 4 unused."""
        groups = [(i * SLOT_FEATURES, SLOT_FEATURES) for i in range(NUM_SLOTS)]
        groups += [(DEPTH_OFFSET + s * len(DEPTHS), len(DEPTHS)) for s in range(NUM_STAGES)]
        return groups + [(RES_OFFSET, len(RESOLUTIONS))]

    def slot_usage(self):
        """The depth masking as ``(depth_feature_index (stages, depths), use (features, stages, depths))``: feature
        f is used when the depth of some stage s is d and ``use[f, s, d]`` is 1; depth and resolution features are
        always used (their rows are 1 for every depth of stage 0, whose depth probabilities sum to one)."""
        nd = len(DEPTHS)
        depth_idx = np.array([[DEPTH_OFFSET + s * nd + j for j in range(nd)] for s in range(NUM_STAGES)])
        use = np.zeros((ENCODING_DIM, NUM_STAGES, nd), dtype=np.float32)
        for f in range(ENCODING_DIM):
            if f < DEPTH_OFFSET:
                stage, pos = divmod(f // SLOT_FEATURES, MAX_DEPTH)
                use[f, stage] = [1.0 if pos < d else 0.0 for d in DEPTHS]
            else:
                use[f, 0] = 1.0
        return depth_idx, use

    # -- measuring
    def settle_arch(self, dataset: str | None = None) -> MBV3Arch:
        """Every stage 4 blocks of kernel 7, expand 6, at 224: the heaviest net."""
        return MBV3Arch((7,) * NUM_SLOTS, (6,) * NUM_SLOTS, (MAX_DEPTH,) * NUM_STAGES, 224, self.width)

    def lut_plan(self, dataset: str, quick: bool, resolutions: Sequence[int] | None = None) -> LutPlan:
        """One job per ``ofa``-style key any arch at the profiled resolutions needs: residual blocks as chains
        (not with ``quick``), the other layers alone (every arch has exactly 11 of those, so their per-call
        overhead is a constant the profile's fitted scale absorbs). Unprofiled resolutions are interpolated."""
        from .net import signature_module

        resolutions = tuple(resolutions or LUT_RESOLUTIONS["quick" if quick else "default"])
        bad = [r for r in resolutions if r not in RESOLUTIONS]
        if bad:
            raise UserError(f"cannot profile mbv3 at resolution {bad[0]}: the space has 128..224 in steps of 4")
        jobs = []
        for key in self.lut_signatures(dataset, resolutions):
            layer, spec = parse_signature(key)
            if not quick and layer == "expanded_conv" and spec.residual:
                jobs.append(chain_job(key, lambda n, k=key: _chain(k, n), lambda b, k=key: signature_module(k, b)[1],
                                      LUT_CHAIN))
            else:
                jobs.append(lone_job(key, lambda b, k=key: signature_module(k, b)))
        method = "every layer alone" if quick else "residual blocks as chains, other layers alone"
        return LutPlan(jobs, {"lut_resolutions": list(resolutions),
                              "lut_method": method + "; resolutions not profiled are interpolated"})

    def lut_cost(self, lut_ms: dict[str, float], dataset: str | None, name: str) -> "MBV3LutCost":
        return MBV3LutCost(lut_ms, self._classes(dataset, None), name)

    # -- predictors and tables
    def accuracy_predictor(self):
        """OFA's released ImageNet predictor: its estimate before fine-tuning, fitted for r 160..224."""
        return _ofa_predictor()

    def reference_devices(self) -> dict[str, dict]:
        """OFA's 9 GPU settings (HELP's 5,000 measured nets): each a latency model fitted on that table."""
        return {name: {"source": "HELP / Once-for-All MobileNetV3 table", "batch": batch_of(name),
                       "dataset": "imagenet", "measured": 5000} for name in ofa_latency_settings()}

    @property
    def latency_recipe(self) -> LatencyRecipe:
        return _latency_recipe(self)

    # -- generation
    generator_recipe = GeneratorRecipe(kind="pareto", batch=128, checkpoint="generator_mbv3")

    def generator_training_set(self, kind: str, seed: int) -> list[MBV3Arch]:
        """Drawn with OFA's sampling. ``valid``: 40,000 such nets. ``pareto`` (POMONAG's accuracy-filtered prior,
        scaled to a space that cannot be enumerated): of 80,000 nets, the quarter with the highest OFA-predicted
        top-1 within each of 20 MAC quantile bins (20,000 nets), so every cost level stays in the prior and the
        guidance can still reach small nets for tight budgets."""
        if kind == "valid":
            return self.sample(MBV3_VALID_NETS, seed)
        if kind != "pareto":
            raise UserError(f"unknown training set {kind!r}; choose one of valid, pareto")
        pool = self.sample(MBV3_POOL, seed)
        acc = _ofa_predictor().predict(pool, warn=False)
        macs = np.array([self.macs(a) for a in pool], dtype=np.float64)
        edges = np.quantile(macs, np.linspace(0, 1, MBV3_BINS + 1)[1:-1])
        bins = np.searchsorted(edges, macs)
        keep = []
        for b in range(MBV3_BINS):
            idx = np.flatnonzero(bins == b)
            keep.extend(idx[np.argsort(-acc[idx], kind="stable")[: int(round(MBV3_KEEP * len(idx)))]].tolist())
        return [pool[i] for i in sorted(keep)]


def _chain(key: str, copies: int):
    import torch.nn as nn

    from .net import signature_module

    return nn.Sequential(*[signature_module(key, 1)[0] for _ in range(copies)])


@lru_cache(maxsize=1)
def _ofa_predictor():
    return OFAAccuracyPredictor()


class MBV3LutCost:
    """A profile's LUT-sum over every resolution (``cost.interpolated_lut_cost``), and its differentiable form."""

    def __init__(self, lut_ms: dict[str, float], num_classes: int, name: str):
        self.lut_ms, self.num_classes, self.name = lut_ms, num_classes, name
        self._table = None

    def table(self):
        if self._table is None:
            self._table = interpolated_lut_cost(self.lut_ms, self.num_classes, self.name)
        return self._table

    def ms(self, archs) -> np.ndarray:
        return self.table().evaluate_np(list(archs))

    def ms_torch(self, x):
        return self.table().evaluate_torch(x)


@dataclass(frozen=True)
class OFALatencyTable:
    """HELP's MobileNetV3 table: ``latency_ms[i, j]`` is subnet ``archs[i]`` on setting ``settings[j]``."""

    archs: tuple  # of MBV3Arch, all w1.2
    settings: tuple[str, ...]
    latency_ms: np.ndarray


@lru_cache(maxsize=None)
def ofa_latency_table() -> OFALatencyTable:
    """5,000 w1.2 subnets with end-to-end latency on 9 GPU settings (``<gpu>_<batch>``)."""
    settings, rows, latency_ms = ofa_latency_rows()
    archs = tuple(MBV3Arch.from_ofa(ks, e, d, r, 1.2) for ks, e, d, r in rows)
    return OFALatencyTable(archs, settings, latency_ms)


@lru_cache(maxsize=None)
def _latency_recipe(space: MBV3Space) -> LatencyRecipe:
    """An embedding of (encoding, log i7 LUT-sum, log MACs) pretrained on OFA's 9 GPU tables. The two cost
    features are additive over block slots (``cost``), exact and differentiable, and are passed straight into
    the embedding's output, so a head for a device unlike these GPUs (a CPU) can still lean on them. Batch 64
    is ~MACs-bound, batch 1 launch-bound (block count): a low-rank embedding with a linear head per setting
    holds both. The table holds 5,000 nets only, so a reference profile is its setting's head, with the error
    measured on 10% of the nets held out of an identical fit."""
    def build(config: dict):
        from .net import LatencyEmbedding

        return LatencyEmbedding(int(config["dim"]), int(config["hidden"]), config["cost_mean"], config["cost_std"])

    def config_for(archs, dim, hidden):
        cost = raw_cost_features(archs)
        return {"dim": dim, "hidden": hidden, "cost_mean": cost.mean(0).tolist(), "cost_std": cost.std(0).tolist()}

    def inputs(archs):
        import torch

        archs = list(archs)
        return (torch.from_numpy(space.encode(archs)), torch.from_numpy(raw_cost_features(archs)).float())

    def tables():
        t = ofa_latency_table()
        return list(t.archs), list(t.settings), t.latency_ms

    return LatencyRecipe(checkpoint="latency_mbv3.pt", build=build, config_for=config_for, inputs=inputs,
                         tables=tables, covers_space=False, dim=16, hidden=32, steps=800, batch=512,
                         fold={"dim": 16, "hidden": 32, "steps": 800}, weight_decay=1e-5, prior_floor=0.1,
                         heldout_fraction=0.1,
                         source="OFA MobileNetV3 w1.2 latency table (HELP): 5,000 archs x 9 GPU settings")


SPACE = MBV3Space(DEFAULT_WIDTH)
SPACE_W10 = MBV3Space(1.0)
