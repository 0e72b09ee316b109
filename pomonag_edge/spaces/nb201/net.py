"""The NB201 network as a real ``torch.nn.Module`` (layout of the NAS-Bench-201 reference code), the pieces of
it a LUT times, and the latency embedding over the cell encoding.

Stem 3x3 conv + BN; three stages of 5 cells at C = 16, 32, 64 with a residual reduction block between
stages; BN-ReLU; global average pooling; linear classifier. ``nor_conv`` is ReLU-Conv-BN.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .cell import CELLS_PER_STAGE, CONV1, CONV3, EDGES, OPS, POOL, SKIP, STAGE_CHANNELS


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


class ResidualReduction(nn.Module):
    """Between stages: two ReLU-Conv-BN (the first with stride 2) plus an avg-pool + 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def make_op(op: int, c: int) -> nn.Module:
    if op == SKIP:
        return nn.Identity()
    if op == CONV1:
        return ReLUConvBN(c, c, 1)
    if op == CONV3:
        return ReLUConvBN(c, c, 3)
    if op == POOL:
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"op id {op} builds no module")


class Cell(nn.Module):
    """One cell with only the kept edges; a cell with none outputs zeros of the input's shape."""

    def __init__(self, ops: tuple[int, ...], keep: tuple[bool, ...], c: int):
        super().__init__()
        self.edges = [(k, to, frm) for k, (to, frm) in enumerate(EDGES) if keep[k]]
        self.ops = nn.ModuleDict({str(k): make_op(ops[k], c) for k, _, _ in self.edges})

    def forward(self, x):
        nodes: list = [x, None, None, None]
        for k, to, frm in self.edges:
            if nodes[frm] is None:
                continue
            y = self.ops[str(k)](nodes[frm])
            nodes[to] = y if nodes[to] is None else nodes[to] + y
        return nodes[3] if nodes[3] is not None else x * 0.0


class NB201Network(nn.Module):
    def __init__(self, ops: tuple[int, ...], keep: tuple[bool, ...], num_classes: int):
        super().__init__()
        c0 = STAGE_CHANNELS[0]
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0))
        layers: list[nn.Module] = []
        for s, c in enumerate(STAGE_CHANNELS):
            if s:
                layers.append(ResidualReduction(STAGE_CHANNELS[s - 1], c))
            layers.extend(Cell(ops, keep, c) for _ in range(CELLS_PER_STAGE))
        self.cells = nn.Sequential(*layers)
        c = STAGE_CHANNELS[-1]
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lastact(self.cells(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


# ----------------------------------------------------------------------------- what the LUT times


def chain_module(op: str, c: int, copies: int) -> nn.Module:
    """``copies`` of one cell op at ``c`` channels, back to back (they keep the feature map's shape)."""
    return nn.Sequential(*[make_op(OPS.index(op), c) for _ in range(copies)])


class Head(nn.Module):
    """The head as one module: last BN-ReLU, global pool, classifier."""

    def __init__(self, net: NB201Network):
        super().__init__()
        self.lastact, self.pool, self.classifier = net.lastact, net.pool, net.classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.lastact(x)), 1))


def fixed_blocks(net: NB201Network, keys: list[str], shape: tuple[int, ...]) -> list[tuple[str, nn.Module, tuple]]:
    """[(key, module, input shape)] of the blocks every net has once: stem, two reductions, head (in ``keys``'
    order, that of ``op_signatures`` of an arch without cell ops)."""
    batch, hw = shape[0], shape[-1]
    blocks = [(keys[0], net.stem, shape)]
    for s in (1, 2):
        index = s * (CELLS_PER_STAGE + 1) - 1  # cells 0..4, reduction 5, cells 6..10, reduction 11, ...
        c_in, h = STAGE_CHANNELS[s - 1], hw >> (s - 1)
        blocks.append((keys[s], net.cells[index], (batch, c_in, h, h)))
    blocks.append((keys[3], Head(net), (batch, STAGE_CHANNELS[-1], hw >> 2, hw >> 2)))
    return blocks


# ----------------------------------------------------------------------------- latency embedding


class LatencyEmbedding(nn.Module):
    """(n, 6, 5) encoding -> (n, dim): an MLP over the cell's structure features; differentiable, so guidance
    can use it."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        from .features import NUM_FEATURES

        self.dim, self.hidden = dim, hidden
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x):
        from .features import nb201_features

        return self.net(nb201_features(x))
