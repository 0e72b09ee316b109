"""NAS-Bench-201's cell, its strings and exact costs (numpy only): a cell of 4 nodes and 6 edges, 5 ops per
edge, stacked 3 x 5 in a fixed skeleton.

Canonical string: ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: node 1, 2, 3 in turn, each listing the op on
the edge from every earlier node. Edge order everywhere (encoding, tuples): (1<-0), (2<-0), (2<-1),
(3<-0), (3<-1), (3<-2).

Deployment convention (followed by ``build``, the costs with ``prune=True`` and the LUT keys): an edge
computes something only if it is *live*: its op is not ``none``, its source node is reachable from the
cell input and its destination reaches the cell output. Dead edges are removed, as an exporter does.
``prune=False`` counts every op of the genotype, the convention of the original NB201 code and NASLib.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...data import nb201_arch_strings
from ...errors import ArchParseError

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from)
NONE, SKIP, CONV1, CONV3, POOL = range(5)
NUM_EDGES, NUM_OPS = len(EDGES), len(OPS)

DATASETS = ("cifar10", "cifar100", "imagenet16-120")
# dataset -> (input resolution, classes)
DATASET_SHAPES = {"cifar10": (32, 10), "cifar100": (32, 100), "imagenet16-120": (16, 120)}
STAGE_CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5


@dataclass(frozen=True, order=True)
class NB201Arch:
    """An NB201 cell as six op ids in edge order. Immutable, hashable, ordered."""

    ops: tuple[int, ...]

    def __post_init__(self):
        if len(self.ops) != NUM_EDGES or any(not 0 <= o < NUM_OPS for o in self.ops):
            raise ValueError(f"NB201 arch needs {NUM_EDGES} op ids in 0..{NUM_OPS - 1}, got {self.ops}")

    def __str__(self) -> str:
        nodes, k = [], 0
        for node in (1, 2, 3):
            nodes.append("|" + "|".join(f"{OPS[self.ops[k + j]]}~{j}" for j in range(node)) + "|")
            k += node
        return "+".join(nodes)

    def __repr__(self) -> str:
        return f"NB201Arch('{self}')"


def parse(text: str) -> NB201Arch:
    """Parse the canonical string; every error names the offending part."""
    if not isinstance(text, str) or not text.strip():
        raise ArchParseError("empty NB201 architecture string")
    text = text.strip()
    groups = text.split("+")
    if len(groups) != 3:
        raise ArchParseError(f"NB201 arch {text!r}: expected 3 nodes separated by '+', got {len(groups)}")
    ops = []
    for node, group in enumerate(groups, start=1):
        if len(group) < 2 or not (group.startswith("|") and group.endswith("|")):
            raise ArchParseError(f"NB201 arch node {node} {group!r}: must look like |op~0|...|")
        edges = group[1:-1].split("|")
        if len(edges) != node:
            raise ArchParseError(f"NB201 arch node {node} {group!r}: expected {node} edge(s), got {len(edges)}")
        for j, edge in enumerate(edges):
            name, sep, src = edge.partition("~")
            if not sep:
                raise ArchParseError(f"NB201 arch node {node}: edge {edge!r} must be op~input")
            if name not in OPS:
                raise ArchParseError(f"NB201 arch node {node}: unknown op {name!r} (known: {', '.join(OPS)})")
            if src != str(j):
                raise ArchParseError(f"NB201 arch node {node}: edge {edge!r} has input node {src!r}, expected {j}")
            ops.append(OPS.index(name))
    return NB201Arch(tuple(ops))


# ---------------------------------------------------------------- the table order, validity, equivalence


@lru_cache(maxsize=1)
def _all_ops() -> np.ndarray:
    """(15625, 6) op ids in topology-index order, read from the shipped table."""
    return np.array([parse(s).ops for s in nb201_arch_strings()], dtype=np.int8)


@lru_cache(maxsize=1)
def _index_of() -> dict[tuple[int, ...], int]:
    return {tuple(int(o) for o in row): i for i, row in enumerate(_all_ops())}


def live_edges(arch: NB201Arch) -> tuple[bool, ...]:
    """Which edges compute something that reaches the cell output from the cell input."""
    on = [op != NONE for op in arch.ops]
    reach_in = {0}
    for k, (to, frm) in enumerate(EDGES):  # EDGES is in topological order of `to`
        if on[k] and frm in reach_in:
            reach_in.add(to)
    reach_out = {3}
    for k in reversed(range(NUM_EDGES)):
        to, frm = EDGES[k]
        if on[k] and to in reach_out:
            reach_out.add(frm)
    return tuple(on[k] and EDGES[k][1] in reach_in and EDGES[k][0] in reach_out for k in range(NUM_EDGES))


def is_valid(arch: NB201Arch) -> bool:
    """False when the cell output is disconnected from its input (the net outputs a constant)."""
    return any(live_edges(arch))


def _function_key(arch: NB201Arch):
    """A hashable key equal for archs that compute the same function.

    A node's value is a multiset of terms; ``skip`` passes its source's terms through, so skip chains
    and node relabelling collapse; dead edges contribute nothing; parametric ops stay distinct
    (two convs on one input are two convs).
    """
    live = live_edges(arch)
    nodes: list[tuple] = [(("x",),)]  # node 0 is the input: one term
    for node in (1, 2, 3):
        terms: list = []
        for k, (to, frm) in enumerate(EDGES):
            if to != node or not live[k]:
                continue
            src = nodes[frm]
            if arch.ops[k] == SKIP:
                terms.extend(src)
            else:
                terms.append((OPS[arch.ops[k]], src))
        nodes.append(tuple(sorted(terms, key=repr)))
    return nodes[3]


@lru_cache(maxsize=1)
def _canonical_index() -> np.ndarray:
    """For every index, the smallest index computing the same function."""
    first: dict = {}
    out = np.empty(len(_all_ops()), dtype=np.int64)
    for i, row in enumerate(_all_ops()):
        key = _function_key(NB201Arch(tuple(int(o) for o in row)))
        out[i] = first.setdefault(key, i)
    return out


def _signature_probe_archs() -> list[NB201Arch]:
    """A few archs that together use every op on every stage plus the fixed blocks."""
    return [NB201Arch((op,) * NUM_EDGES) for op in (SKIP, CONV1, CONV3, POOL)]


def _shape(dataset) -> tuple[int, int]:
    """(input resolution, classes) of a shipped dataset's name or of a user task's (hw, classes)."""
    return DATASET_SHAPES[dataset] if isinstance(dataset, str) else dataset


def _costs(arch: NB201Arch, dataset, prune: bool) -> tuple[int, int]:
    """Exact (params, MACs). MACs count multiply-accumulates of convs and the linear layer only
    (one multiply-add = 1), the convention of NASLib's and NB201's ``flops`` figure."""
    hw, classes = _shape(dataset)
    keep = live_edges(arch) if prune else tuple(op != NONE for op in arch.ops)
    c0 = STAGE_CHANNELS[0]
    params = 3 * c0 * 9 + 2 * c0  # stem conv + BN
    macs = 3 * c0 * 9 * hw * hw
    for s, c in enumerate(STAGE_CHANNELS):
        h = hw >> s
        if s:  # residual reduction block: conv_a (3x3, stride 2) + conv_b (3x3) each with BN; pool + 1x1 shortcut
            cin = STAGE_CHANNELS[s - 1]
            params += 9 * cin * c + 2 * c + 9 * c * c + 2 * c + cin * c
            macs += (9 * cin * c + 9 * c * c + cin * c) * h * h
        for k, op in enumerate(arch.ops):
            if not keep[k]:
                continue
            if op == CONV1:
                params += CELLS_PER_STAGE * (c * c + 2 * c)
                macs += CELLS_PER_STAGE * c * c * h * h
            elif op == CONV3:
                params += CELLS_PER_STAGE * (9 * c * c + 2 * c)
                macs += CELLS_PER_STAGE * 9 * c * c * h * h
    c = STAGE_CHANNELS[-1]
    params += 2 * c + c * classes + classes  # last BN + classifier
    macs += c * classes
    return params, macs


