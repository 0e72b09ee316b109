"""The NB201 network as a real ``torch.nn.Module`` (layout of the NAS-Bench-201 reference code).

Stem 3x3 conv + BN; three stages of 5 cells at C = 16, 32, 64 with a residual reduction block between
stages; BN-ReLU; global average pooling; linear classifier. ``nor_conv`` is ReLU-Conv-BN.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .nb201 import CELLS_PER_STAGE, CONV1, CONV3, EDGES, POOL, SKIP, STAGE_CHANNELS


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
