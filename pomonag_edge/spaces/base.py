"""What every search space offers. The profiler, predictors, strategies, generator and exporter speak only this.

A space is the pymoo ``Problem`` of this project: it owns every fact and recipe that differs between spaces
(strings, encoding layout, networks, costs, LUT jobs, latency features, accuracy predictor, the generator's
training set, reference devices), and the generic code never asks which space it serves. ``SpaceBase``
gives the defaults most spaces share; a space overrides what differs. A new space is one module (or another
package's ``pomonag_edge.spaces`` entry point) with one instance of a class like these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import UserError
from .lut import CountedLutCost, LutPlan, chain_job, lone_job

if TYPE_CHECKING:  # torch is imported only where a network is built
    import torch.nn as nn

    from .lut import LutCost

Groups = list[tuple[int, int]]  # (offset, width) over the flattened encoding


@runtime_checkable
class Arch(Hashable, Protocol):
    """An immutable architecture; ``str(arch)`` is its canonical string and parses back to it."""

    def __str__(self) -> str: ...


@dataclass(frozen=True)
class LatencyRecipe:
    """How a space's latency embedding is built, fed and pretrained on its shipped latency tables.

    ``build(config)`` makes the (untrained) embedding module from a checkpoint's ``config``;
    ``config_for(archs, dim, hidden)`` is that config for a training set (it may hold input statistics);
    ``inputs(archs)`` the tensors the embedding reads; ``tables()`` the shipped measurements (archs, setting
    names, ms (archs x settings), NaN = not measured). ``covers_space``: the tables hold every net of the space
    in ``table_index`` order, so a reference profile is an exact lookup and sibling tables can be read for any
    arch; otherwise a reference profile is its setting's head, with the error measured on ``heldout_fraction``
    of the nets held out.
    ``prior_floor``: diagonal floor of the head prior, as a fraction of its mean variance (few training
    settings span few directions). ``dim``, ``hidden``, ``steps``: the shipped checkpoint's recipe; ``fold``: the
    (smaller) one a few-shot benchmark pretrains each fold with."""

    checkpoint: str
    build: Callable[[dict], "nn.Module"]
    config_for: Callable[[list, int, int], dict]
    inputs: Callable[[list], tuple]
    tables: Callable[[], tuple[list, list[str], np.ndarray]]
    covers_space: bool
    dim: int
    hidden: int
    steps: int
    batch: int
    fold: dict
    lr: float = 3e-3
    weight_decay: float = 0.0
    prior_floor: float = 0.0
    heldout_fraction: float = 0.0
    source: str = ""


@dataclass(frozen=True)
class GeneratorRecipe:
    """The score network's shipped training recipe: training set kind and batch, and the checkpoint's name."""

    kind: str
    batch: int
    checkpoint: str | None  # file stem under data/checkpoints; None: the space ships none


class SearchSpace(Protocol):
    """A search space, everything about it that generic code needs.

    Strings and counting: ``parse``, ``sample``, ``size`` (None or a count; ``enumerate`` only when finite
    and small), ``is_valid``, ``canonical`` (one arch per function). Learning: ``encode`` (float32 one-hots,
    shape ``(n, *encoding_shape)``), ``decode`` (any real array of that shape to the nearest valid archs),
    ``categorical_groups`` / ``token_groups`` / ``slot_usage`` (the encoding's layout). Networks and costs:
    ``build``, ``input_shape``, ``params``, ``macs``, ``op_signatures`` (LUT keys, with repeats). Measuring:
    ``settle_arch``, ``lut_plan``, ``lut_cost``. Predictors: ``accuracy_predictor``, ``latency_recipe``,
    ``table_index``. Generation: ``generator_recipe``, ``generator_training_set``. Reference devices:
    ``reference_devices``.
    """

    name: str
    encoding_shape: tuple[int, ...]
    datasets: tuple[str, ...]
    default_dataset: str
    latency_recipe: LatencyRecipe | None
    generator_recipe: GeneratorRecipe

    def parse(self, text: str) -> Arch: ...
    def sample(self, n: int, seed: int) -> list[Arch]: ...
    def size(self) -> int | None: ...
    def enumerate(self) -> Iterator[Arch]: ...
    def encode(self, archs: Sequence[Arch]) -> np.ndarray: ...
    def decode(self, x: np.ndarray) -> list[Arch]: ...
    def is_valid(self, arch: Arch) -> bool: ...
    def canonical(self, arch: Arch) -> Arch: ...
    def categorical_groups(self) -> Groups: ...
    def token_groups(self) -> Groups: ...
    def slot_usage(self) -> tuple[np.ndarray, np.ndarray] | None: ...
    def check_dataset(self, dataset: str | None) -> str: ...
    def build(self, arch: Arch, dataset: str | None = None) -> "nn.Module": ...
    def input_shape(self, arch: Arch, dataset: str | None = None, batch: int = 1) -> tuple[int, ...]: ...
    def params(self, arch: Arch, dataset: str | None = None) -> int: ...
    def macs(self, arch: Arch, dataset: str | None = None) -> int: ...
    def op_signatures(self, arch: Arch, dataset: str | None = None) -> list[str]: ...
    def settle_arch(self, dataset: str | None = None) -> Arch: ...
    def lut_plan(self, dataset: str, quick: bool, resolutions: Sequence[int] | None = None) -> "LutPlan": ...
    def lut_cost(self, lut_ms: dict[str, float], dataset: str | None, name: str) -> "LutCost": ...
    def accuracy_predictor(self): ...
    def table_index(self, arch: Arch) -> int | None: ...
    def generator_training_set(self, kind: str, seed: int) -> list[Arch]: ...
    def reference_devices(self) -> dict[str, dict]: ...


class SpaceBase:
    """Defaults for a space whose encoding is ``(slots, choices)`` one-hots and whose LUT keys each name a
    layer the space can build (``lut_module``). Override what differs."""

    latency_recipe: LatencyRecipe | None = None
    generator_recipe = GeneratorRecipe(kind="valid", batch=256, checkpoint=None)
    max_enumerated = 100_000  # below this many nets, a space is scored and sampled from whole where useful

    # -- encoding layout
    def categorical_groups(self) -> Groups:
        """One group per categorical choice (one-hot, or all zero for an unused slot) in the flat encoding."""
        if len(self.encoding_shape) != 2:
            raise NotImplementedError(f"space {self.name} must state its categorical groups")
        slots, choices = self.encoding_shape
        return [(i * choices, choices) for i in range(slots)]

    def token_groups(self) -> Groups:
        """The score network's tokens: by default one per categorical group."""
        return self.categorical_groups()

    def slot_usage(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Which features a depth-like choice switches off (see ``spaces.mbv3``); None: every feature counts."""
        return None

    def slot_mask(self, x: np.ndarray) -> np.ndarray | None:
        """(n, features) 0/1 mask of the features that matter for each encoding (a denoiser's loss ignores the
        rest), or None when all do."""
        return None

    # -- datasets
    def check_dataset(self, dataset: str | None) -> str:
        dataset = dataset or self.default_dataset
        if dataset not in self.datasets:
            raise UserError(f"unknown dataset {dataset!r} for {self.name}; choose one of {', '.join(self.datasets)}")
        return dataset

    # -- measuring
    def settle_arch(self, dataset: str | None = None):
        """The heaviest net (most MACs) of the space, or of a seeded sample: what warms a machine up."""
        archs = [a for a in self._pool(2048, 0) if self.is_valid(a)]
        return max(archs, key=lambda a: self.macs(a, dataset))

    def lut_plan(self, dataset: str, quick: bool, resolutions: Sequence[int] | None = None) -> "LutPlan":
        """Every distinct LUT key of the space, chained where the layer keeps its input's shape, else alone."""
        jobs = []
        for key in self.lut_signatures(dataset):
            if self.lut_chainable(key):
                jobs.append(chain_job(key, lambda n, k=key: self.lut_module(k, 1, copies=n)[0],
                                      lambda b, k=key: self.lut_module(k, b)[1]))
            else:
                jobs.append(lone_job(key, lambda b, k=key: self.lut_module(k, b)))
        return LutPlan(jobs, {"lut_method": "shape-keeping layers as chains, others alone"})

    def lut_module(self, key: str, batch: int, copies: int = 1):
        """(module running ``copies`` of the layer ``key`` names, its input shape): what the default plan times."""
        raise NotImplementedError(f"space {self.name} must state how to build the layer of LUT key {key!r}")

    def lut_chainable(self, key: str) -> bool:
        """Whether the layer keeps its input's shape, so copies of it chain (and are timed as a chain)."""
        return False

    def lut_signatures(self, dataset: str | None = None) -> list[str]:
        """Every distinct LUT key any arch of the space needs (from the whole space, or a seeded sample)."""
        return sorted({k for a in self._pool(4096, 0) for k in self.op_signatures(a, dataset)})

    def lut_cost(self, lut_ms: dict[str, float], dataset: str | None, name: str) -> "LutCost":
        return CountedLutCost(self, lut_ms, dataset, name)

    # -- predictors and tables
    def accuracy_predictor(self):
        raise UserError(f"space {self.name} ships no accuracy predictor")

    def table_index(self, arch) -> int | None:
        """The row of the space's shipped tables that ``arch`` is, or None for a space without such tables."""
        return None

    def reference_latency_ms(self, name: str) -> np.ndarray:
        """A reference device's measured ms of every net in ``table_index`` order (spaces whose tables cover them)."""
        raise UserError(f"space {self.name} has no measured latency table covering it")

    def accuracy_table(self, dataset: str) -> np.ndarray:
        """Measured accuracy of every net in ``table_index`` order (spaces that ship such a table)."""
        raise UserError(f"space {self.name} has no measured accuracy table")

    def reference_devices(self) -> dict[str, dict]:
        """Shipped reference profiles of the space: name -> {source, batch, dataset, measured (nets)}."""
        return {}

    # -- generation
    def generator_training_set(self, kind: str, seed: int) -> list:
        """The nets the score network learns: ``valid`` (every valid net, or a seeded sample of a large space)."""
        if kind != "valid":
            raise UserError(f"space {self.name} has only the 'valid' generator training set")
        return [a for a in self._pool(40_000, seed) if self.is_valid(a)]

    def _pool(self, n: int, seed: int) -> list:
        size = self.size()
        if size is not None and size <= self.max_enumerated:
            return list(self.enumerate())
        return self.sample(n, seed)


# ----------------------------------------------------------------------------- genes over the layout


def gene_choices(space) -> np.ndarray:
    """Number of values of every categorical choice (gene), shape (genes,)."""
    return np.array([w for _, w in space.categorical_groups()], dtype=np.int64)


def to_genes(space, x: np.ndarray) -> np.ndarray:
    """Encodings (n, *encoding_shape) -> genes (n, genes): the argmax of every group (0 for an all-zero one)."""
    flat = np.asarray(x).reshape(len(x), -1)
    return np.stack([flat[:, o:o + w].argmax(1) for o, w in space.categorical_groups()], axis=1)


def from_genes(space, genes: np.ndarray) -> np.ndarray:
    """Genes (n, genes) -> one-hot encodings (n, *encoding_shape) that ``space.decode`` reads back."""
    genes = np.asarray(genes, dtype=np.int64)
    x = np.zeros((len(genes), int(np.prod(space.encoding_shape))), dtype=np.float32)
    rows = np.arange(len(genes))
    for g, (o, _width) in enumerate(space.categorical_groups()):
        x[rows, o + genes[:, g]] = 1.0
    return x.reshape(len(genes), *space.encoding_shape)
