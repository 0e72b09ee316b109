"""NAS-Bench-201 as a search space: the cell (``cell``), its network (``net``), its LUT, latency and accuracy
recipes and the generator's training set. Everything NB201-specific the generic code needs is a method here.

Deployment convention (``build``, the costs with ``prune=True`` and the LUT keys): an edge computes something
only if it is *live* (see ``cell``); dead edges are removed, as an exporter does.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np

from ...data import batch_of, nb201_accuracy, nb201_latency_ms, nb201_latency_tables
from ...errors import UserError
from ...pareto import non_dominated_sort
from ..base import GeneratorRecipe, LatencyRecipe, SpaceBase
from ..lut import CountedLutCost, LutPlan, chain_job, shared_job
from .accuracy import load_accuracy_predictor
from .cell import (CELLS_PER_STAGE, CONV1, CONV3, DATASET_SHAPES, DATASETS, EDGES, NONE, NUM_EDGES, NUM_OPS, OPS, POOL,
                   SKIP, STAGE_CHANNELS, NB201Arch, _all_ops, _canonical_index, _costs, _index_of, _shape,
                   _signature_probe_archs, is_valid, live_edges, parse)

__all__ = ["SPACE", "NB201Space", "NB201Arch", "parse", "live_edges", "is_valid", "OPS", "EDGES", "NONE", "SKIP",
           "CONV1", "CONV3", "POOL", "NUM_EDGES", "NUM_OPS", "DATASETS", "DATASET_SHAPES", "STAGE_CHANNELS",
           "CELLS_PER_STAGE"]

LUT_CHAIN = (2, 12)  # (short, long) copies of one cell op
_CELL_KEY = re.compile(r"^(nor_conv_1x1|nor_conv_3x3|avg_pool_3x3):c(\d+):hw(\d+)$")
class NB201Space(SpaceBase):
    """The NB201 search space. ``SPACE`` below is its one instance."""

    name = "nb201"
    encoding_shape = (NUM_EDGES, NUM_OPS)
    datasets = DATASETS
    default_dataset = "cifar10"
    ops = OPS
    edges = EDGES

    # -- strings and order
    def parse(self, text: str) -> NB201Arch:
        return parse(text)

    def size(self) -> int:
        return NUM_OPS**NUM_EDGES

    def index(self, arch: NB201Arch) -> int:
        """The NAS-Bench-201 topology index, the key of every shipped NB201 table."""
        return _index_of()[arch.ops]

    table_index = index

    def from_index(self, index: int) -> NB201Arch:
        return NB201Arch(tuple(int(o) for o in _all_ops()[index]))

    def enumerate(self) -> Iterator[NB201Arch]:
        """All 15,625 archs in topology-index order."""
        for row in _all_ops():
            yield NB201Arch(tuple(int(o) for o in row))

    def sample(self, n: int, seed: int) -> list[NB201Arch]:
        """Uniform over the space; distinct while ``n`` does not exceed its size."""
        rng = np.random.default_rng(seed)
        idx = rng.choice(self.size(), size=n, replace=n > self.size())
        return [self.from_index(int(i)) for i in idx]

    # -- learning encodings
    def encode(self, archs: Sequence[NB201Arch]) -> np.ndarray:
        """One-hot, float32, shape (n, 6 edges, 5 ops)."""
        ops = np.array([a.ops for a in archs], dtype=np.int64).reshape(-1, NUM_EDGES)
        return np.eye(NUM_OPS, dtype=np.float32)[ops]

    def decode(self, x: np.ndarray) -> list[NB201Arch]:
        """Argmax per edge of any (n, 6, 5) array, e.g. a denoised sample."""
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[1:] != self.encoding_shape:
            raise ValueError(f"expected shape (n, {NUM_EDGES}, {NUM_OPS}), got {x.shape}")
        return [NB201Arch(tuple(int(o) for o in row)) for row in x.argmax(-1)]

    # -- validity and equivalence
    def is_valid(self, arch: NB201Arch) -> bool:
        return is_valid(arch)

    def canonical(self, arch: NB201Arch) -> NB201Arch:
        """The smallest-index arch computing the same function (all disconnected nets share one)."""
        return self.from_index(int(_canonical_index()[self.index(arch)]))

    def num_functions(self) -> int:
        """How many functionally distinct nets the space holds (disconnected nets count as one)."""
        return int(len(np.unique(_canonical_index())))

    # -- networks and costs
    def _dataset(self, dataset) -> str | tuple[int, int]:
        """A shipped dataset's name, or the (input resolution, classes) of a user task (``check_dataset``)."""
        dataset = self.check_dataset(dataset)
        return dataset if isinstance(dataset, str) else (int(dataset.input_hw), int(dataset.num_classes))

    def check_dataset(self, dataset):
        """A shipped dataset's name (checked), or a user task as is: any object with ``input_hw`` and
        ``num_classes`` (a loaded ``UserData``, a ``DatasetProfile``, a trained net's ``Task``)."""
        if dataset is not None and not isinstance(dataset, str):
            return dataset
        return super().check_dataset(dataset)

    def input_shape(self, arch=None, dataset: str | None = None, batch: int = 1) -> tuple[int, ...]:
        hw = _shape(self._dataset(dataset))[0]
        return (batch, 3, hw, hw)

    def build(self, arch: NB201Arch, dataset: str | None = None, prune: bool = True):
        from .net import NB201Network

        hw, classes = _shape(self._dataset(dataset))
        keep = live_edges(arch) if prune else tuple(op != NONE for op in arch.ops)
        return NB201Network(arch.ops, keep, classes)

    def params(self, arch: NB201Arch, dataset: str | None = None, prune: bool = True) -> int:
        return _costs(arch, self._dataset(dataset), prune)[0]

    def macs(self, arch: NB201Arch, dataset: str | None = None, prune: bool = True) -> int:
        return _costs(arch, self._dataset(dataset), prune)[1]

    def flops(self, arch: NB201Arch, dataset: str | None = None, prune: bool = False) -> int:
        """FLOPs in the convention of NASLib's / NB201's published figures (checked against them):
        MACs, plus per output element 3 for each ReLU-Conv-BN (ReLU 1, BN 2), 2 for a lone BN,
        k*k for a k x k average pool, 1 for global pooling, plus the classifier bias. Counts every op
        of the genotype (``prune=False``), as NASLib does."""
        dataset = self._dataset(dataset)
        hw, classes = _shape(dataset)
        keep = live_edges(arch) if prune else tuple(op != NONE for op in arch.ops)
        c0 = STAGE_CHANNELS[0]
        flops = _costs(arch, dataset, prune)[1] + 2 * c0 * hw * hw + classes  # stem BN, classifier bias
        for s, c in enumerate(STAGE_CHANNELS):
            h = hw >> s
            if s:  # reduction: two ReLU-Conv-BN at the new size, a 2x2 pool on the old channels
                flops += 2 * 3 * c * h * h + 4 * STAGE_CHANNELS[s - 1] * h * h
            for k, op in enumerate(arch.ops):
                if keep[k] and op in (CONV1, CONV3):
                    flops += CELLS_PER_STAGE * 3 * c * h * h
                elif keep[k] and op == POOL:
                    flops += CELLS_PER_STAGE * 9 * c * h * h
        c, h = STAGE_CHANNELS[-1], hw >> (len(STAGE_CHANNELS) - 1)
        return flops + 3 * c * h * h + c * h * h  # last BN-ReLU, global average pool

    def op_signatures(self, arch: NB201Arch, dataset: str | None = None) -> list[str]:
        """LUT keys of every block the built net runs, with repeats: stem, live cell ops, reductions, head."""
        hw, classes = _shape(self._dataset(dataset))
        keys = [f"stem:c{STAGE_CHANNELS[0]}:hw{hw}"]
        live = live_edges(arch)
        for s, c in enumerate(STAGE_CHANNELS):
            h = hw >> s
            if s:
                keys.append(f"reduce:c{STAGE_CHANNELS[s - 1]}-{c}:hw{h * 2}")
            for k, op in enumerate(arch.ops):
                if live[k] and op != SKIP:
                    keys.extend([f"{OPS[op]}:c{c}:hw{h}"] * CELLS_PER_STAGE)
        keys.append(f"head:c{STAGE_CHANNELS[-1]}:hw{hw >> 2}:k{classes}")
        return keys

    def lut_signatures(self, dataset: str | None = None) -> list[str]:
        """Every distinct LUT key any arch of the space needs, for one dataset."""
        return sorted({k for a in _signature_probe_archs() for k in self.op_signatures(a, dataset)})



    # -- measuring
    def settle_arch(self, dataset: str | None = None) -> NB201Arch:
        """Every edge a 3x3 conv: the heaviest net."""
        return NB201Arch((CONV3,) * NUM_EDGES)

    def lut_plan(self, dataset: str, quick: bool, resolutions: Sequence[int] | None = None) -> LutPlan:
        """The fixed blocks (stem, reductions, head) shared out of one skeleton net whose cells are identities,
        then one chain job per distinct cell-op signature. ``quick`` changes only the timing protocol here."""
        if resolutions:
            raise UserError("nb201 has one input resolution per dataset; --resolutions does not apply")
        skeleton = NB201Arch((NONE, NONE, NONE, SKIP, NONE, NONE))  # one live skip edge per cell
        fixed = tuple(dict.fromkeys(self.op_signatures(skeleton, dataset)))

        def shared(batch: int):
            from .net import fixed_blocks

            net = self.build(skeleton, dataset).eval()
            shape = self.input_shape(skeleton, dataset, batch)
            return (net, shape), fixed_blocks(net, list(fixed), shape)

        jobs = [shared_job("stem + reductions + head", shared)]
        for key in self.lut_signatures(dataset):
            if key in fixed:
                continue
            m = _CELL_KEY.match(key)
            if not m:
                raise ValueError(f"unexpected NB201 LUT key {key!r}")
            op, c, hw = m.group(1), int(m.group(2)), int(m.group(3))

            def make(n, op=op, c=c):
                from .net import chain_module

                return chain_module(op, c, n)

            jobs.append(chain_job(key, make, lambda batch, c=c, hw=hw: (batch, c, hw, hw), LUT_CHAIN))
        return LutPlan(jobs, {"lut_method": "in-context chains"})

    def lut_cost(self, lut_ms: dict[str, float], dataset: str | None, name: str) -> "NB201LutCost":
        return NB201LutCost(self, lut_ms, dataset, name)

    # -- predictors and tables
    def accuracy_predictor(self):
        """The shipped dataset-conditioned accuracy predictor (``accuracy.py`` here)."""
        return load_accuracy_predictor(self)

    def reference_devices(self) -> dict[str, dict]:
        """The 32 published device settings of the shipped NB201 latency tables (every net measured)."""
        return {t.name: {"source": t.source, "batch": batch_of(t.name), "dataset": "cifar10", "measured": t.measured}
                for t in nb201_latency_tables()}

    def reference_latency_ms(self, name: str) -> np.ndarray:
        """A reference device's measured ms of every net, in ``table_index`` order (NaN: not measured)."""
        return nb201_latency_ms(name)

    def accuracy_table(self, dataset: str) -> np.ndarray:
        """Measured test accuracy (%) of every net on a shipped dataset, in ``table_index`` order (NATS-Bench)."""
        return nb201_accuracy(self.check_dataset(dataset))

    @property
    def latency_recipe(self) -> LatencyRecipe:
        return _latency_recipe(self)

    # -- generation
    generator_recipe = GeneratorRecipe(kind="valid", batch=256, checkpoint="generator_nb201")

    def generator_training_set(self, kind: str, seed: int) -> list[NB201Arch]:
        """``valid``: every net whose output is connected to its input. ``pareto`` (POMONAG's filtering):
        functionally distinct valid nets on the first fronts of (mean accuracy percentile over the datasets up,
        params down, MACs down), at least 3,000 nets."""
        archs = [a for a in self.enumerate() if self.is_valid(a)]
        if kind == "valid":
            return archs
        if kind != "pareto":
            raise UserError(f"unknown training set {kind!r}; choose one of valid, pareto")
        from scipy.stats import rankdata

        archs = sorted({self.canonical(a) for a in archs}, key=self.index)
        idx = np.array([self.index(a) for a in archs])
        pct = np.mean([rankdata(nb201_accuracy(d)[idx]) / len(idx) for d in self.datasets], axis=0)
        F = np.stack([-pct, [self.params(a) for a in archs], [self.macs(a) for a in archs]], axis=1)
        keep: list[int] = []
        for front in non_dominated_sort(F):
            keep.extend(front.tolist())
            if len(keep) >= 3000:
                break
        return [archs[i] for i in sorted(keep)]


class NB201LutCost(CountedLutCost):
    """LUT-sum over op signatures, and its differentiable form over a (n, 6, 5) encoding (guidance): the fixed
    blocks plus, per edge, the expected cost of its op times the probability that the edge is live."""

    def ms_torch(self, x):
        import torch

        from .features import soft_live

        # cost of each op on one edge across all stages = LUT-sum(all edges that op) - LUT-sum(no live op), / 6
        base = float(self.ms([NB201Arch((SKIP,) * NUM_EDGES)])[0])
        per_op = [0.0, 0.0]  # none, skip cost nothing
        for op in (CONV1, CONV3, POOL):
            per_op.append((float(self.ms([NB201Arch((op,) * NUM_EDGES)])[0]) - base) / NUM_EDGES)
        cost = torch.tensor(per_op, dtype=x.dtype)
        return base + ((x * cost).sum(-1) * soft_live(x)).sum(-1)


@lru_cache(maxsize=None)
def _latency_recipe(space: NB201Space) -> LatencyRecipe:
    def build(config: dict):
        from .net import LatencyEmbedding

        return LatencyEmbedding(int(config["dim"]), int(config["hidden"]))

    def inputs(archs):
        import torch

        return (torch.from_numpy(space.encode(list(archs))),)

    def tables():
        names = [t.name for t in nb201_latency_tables()]
        return list(space.enumerate()), names, np.stack([space.reference_latency_ms(n) for n in names], axis=1)

    return LatencyRecipe(checkpoint="latency_nb201.pt", build=build,
                         config_for=lambda archs, dim, hidden: {"dim": dim, "hidden": hidden}, inputs=inputs,
                         tables=tables, covers_space=True, dim=16, hidden=128, steps=1500, batch=2048,
                         fold={"dim": 12, "hidden": 64, "steps": 600},
                         source="all shipped NB201 latency tables")


SPACE = NB201Space()
