"""The OFA MobileNetV3 subnet as a real ``torch.nn.Module``.

Same layers, order and attribute names as Once-for-All's ``MobileNetV3`` (``first_conv``, ``blocks[i].conv``
with ``inverted_bottleneck`` / ``depth_conv`` (+ ``se``) / ``point_linear``, ``final_expand_layer``,
``feature_mix_layer``, ``classifier``), so an OFA subnet's state_dict loads into it. The shapes come from
``mbv3.layout``, the same description the cost formulas and LUT keys use.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .arch import ENCODING_DIM, Block, MBV3Arch, layout, parse_signature
from .cost import feature_costs


def _act(name: str) -> nn.Module:
    return nn.Hardswish() if name == "h_swish" else nn.ReLU()


class SELayer(nn.Module):
    """OFA's squeeze-excite: mean pool, 1x1 reduce (/4, rounded to 8) + ReLU, 1x1 expand + h-sigmoid."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(channels, mid, 1, bias=True)),
            ("relu", nn.ReLU()),
            ("expand", nn.Conv2d(mid, channels, 1, bias=True)),
            ("h_sigmoid", nn.Hardsigmoid()),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(3, keepdim=True).mean(2, keepdim=True))


class MBConvLayer(nn.Module):
    """Expand 1x1 (absent when the ratio is 1) -> depthwise k x k (+ SE) -> project 1x1; BN after each conv."""

    def __init__(self, b: Block):
        super().__init__()
        if b.expand != 1:
            self.inverted_bottleneck = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(b.c_in, b.mid, 1, bias=False)),
                ("bn", nn.BatchNorm2d(b.mid)),
                ("act", _act(b.act)),
            ]))
        else:
            self.inverted_bottleneck = None
        depth = [
            ("conv", nn.Conv2d(b.mid, b.mid, b.kernel, b.stride, b.kernel // 2, groups=b.mid, bias=False)),
            ("bn", nn.BatchNorm2d(b.mid)),
            ("act", _act(b.act)),
        ]
        if b.se:
            depth.append(("se", SELayer(b.mid, b.se_mid)))
        self.depth_conv = nn.Sequential(OrderedDict(depth))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(b.mid, b.c_out, 1, bias=False)),
            ("bn", nn.BatchNorm2d(b.c_out)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class ResidualBlock(nn.Module):
    def __init__(self, b: Block):
        super().__init__()
        self.conv = MBConvLayer(b)
        self.residual = b.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """first_conv (3x3 s2, BN, h-swish) -> blocks -> final_expand_layer (1x1, BN, h-swish) -> mean pool ->
    feature_mix_layer (1x1, no BN, h-swish) -> classifier (dropout 0.1, linear)."""

    def __init__(self, arch: MBV3Arch, num_classes: int = 1000, dropout: float = 0.1):
        super().__init__()
        wd, blocks, _ = layout(arch)
        self.arch = str(arch)
        self.first_conv = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(3, wd.first_conv, 3, 2, 1, bias=False)),
            ("bn", nn.BatchNorm2d(wd.first_conv)),
            ("act", nn.Hardswish()),
        ]))
        self.blocks = nn.ModuleList(ResidualBlock(b) for b in blocks)
        c = blocks[-1].c_out
        self.final_expand_layer = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(c, wd.final_expand, 1, bias=False)),
            ("bn", nn.BatchNorm2d(wd.final_expand)),
            ("act", nn.Hardswish()),
        ]))
        self.feature_mix_layer = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(wd.final_expand, wd.feature_mix, 1, bias=False)),
            ("act", nn.Hardswish()),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("dropout", nn.Dropout(dropout)),
            ("linear", nn.Linear(wd.feature_mix, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        x = x.mean(3, keepdim=True).mean(2, keepdim=True)
        x = self.feature_mix_layer(x)
        return self.classifier(torch.flatten(x, 1))


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(3, keepdim=True).mean(2, keepdim=True)


def signature_module(key: str, batch: int = 1) -> tuple[nn.Module, tuple[int, ...]]:
    """The layer an ``ofa``-style LUT key times, built as ``MobileNetV3`` builds it, and its input shape.

    For a per-layer profiler: the parameters of the modules of an arch's keys add up to the arch's params.
    """
    layer, spec = parse_signature(key)
    if layer == "expanded_conv":
        return ResidualBlock(spec), (batch, spec.c_in, spec.hw_in, spec.hw_in)
    hw, c_in, _, c_out = spec
    if layer == "Conv":
        module = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, c_out, 3, 2, 1, bias=False)),
                                            ("bn", nn.BatchNorm2d(c_out)), ("act", nn.Hardswish())]))
    elif layer == "Conv_1":
        module = nn.Sequential(OrderedDict([("conv", nn.Conv2d(c_in, c_out, 1, bias=False)),
                                            ("bn", nn.BatchNorm2d(c_out)), ("act", nn.Hardswish())]))
    elif layer == "AvgPool2D":
        module = GlobalAvgPool()
    elif layer == "Conv_2":
        module = nn.Sequential(OrderedDict([("conv", nn.Conv2d(c_in, c_out, 1, bias=False)),
                                            ("act", nn.Hardswish())]))
    else:  # Logits
        module = nn.Sequential(OrderedDict([("flatten", nn.Flatten(1)), ("linear", nn.Linear(c_in, c_out))]))
    return module, (batch, c_in, hw, hw)


class LatencyEmbedding(nn.Module):
    """(n, 160) encoding [+ its (n, 2) log cost features] -> (n, dim + 2): an MLP of [encoding, standardized cost
    features] (i7 reference LUT-sum, MACs; ``cost``), then those two features appended as they are, so a linear
    head can use them directly. The features are computed from x (differentiably) when not given."""

    def __init__(self, dim: int, hidden: int, cost_mean, cost_std):
        super().__init__()
        n_cost = 2
        self.dim, self.hidden = dim + n_cost, hidden
        self.register_buffer("cost_mean", torch.as_tensor(cost_mean, dtype=torch.float32))
        self.register_buffer("cost_std", torch.as_tensor(cost_std, dtype=torch.float32))
        if hidden:
            self.net = nn.Sequential(nn.Linear(ENCODING_DIM + n_cost, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, dim))
        else:  # a linear low-rank embedding
            self.net = nn.Linear(ENCODING_DIM + n_cost, dim)

    def cost_features(self, x):
        lut, macs = feature_costs()
        raw = torch.stack([lut.evaluate_torch(x.double()), macs.evaluate_torch(x.double())], 1)
        return raw.clamp_min(1e-6).log().to(x.dtype)

    def forward(self, x, cost=None):
        cost = self.cost_features(x) if cost is None else cost
        z = (cost.to(x.dtype) - self.cost_mean) / self.cost_std
        return torch.cat([self.net(torch.cat([x, z], 1)), z], 1)
