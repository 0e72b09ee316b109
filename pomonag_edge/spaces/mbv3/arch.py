"""Once-for-All MobileNetV3: 5 stages of 2-4 MBConv blocks, kernel 3/5/7, expand 3/4/6, resolution 128..224.

Canonical string (the column layout of OFA's and HELP's tables, so their rows parse as they are)::

    ks=3-5-0-0-7-3-3-0-5-5-5-5-3-3-0-0-7-5-3-3:e=4-6-0-0-3-3-4-0-6-4-3-3-3-6-0-0-4-4-6-3:d=2-3-4-2-4:r=224:w=1.2

``ks`` and ``e``: 20 block slots, 4 per stage, in order; ``d``: the depth (2, 3 or 4) of each of the 5
stages; ``r``: input resolution, 128..224 in steps of 4; ``w``: width multiplier, 1.2 (the supernet all
shipped data describe) or 1.0. A slot beyond its stage's depth is unused: it is written ``0``; parsing
also accepts any kernel/expand value there (HELP's table fills them at random) and drops it, so two
strings that differ only in unused slots parse to the same arch. An arch value is therefore always
canonical, and every functional difference between two archs shows in their strings.

The network is OFA's MobileNetV3Large layout (``build``; see ``net``). Costs are exact and
analytic; ``op_signatures`` gives one LUT key per block, in the key format of OFA's own latency tables
(``style="ofa"``, the shipped Note10 LUT) or of NSGANetV2's (``style="nsganetv2"``, the shipped i7 LUT).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from ...errors import ArchParseError, UserError

KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
NUM_STAGES = 5
MAX_DEPTH = 4
NUM_SLOTS = NUM_STAGES * MAX_DEPTH  # 20
RESOLUTIONS = tuple(range(128, 225, 4))  # 25 values, as OFA samples and HELP measured
WIDTHS = (1.0, 1.2)
DEFAULT_WIDTH = 1.2

# OFA's MobileNetV3Large at w1.0: first conv, first block, 5 stages, final expand, feature mix.
BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
STAGE_SE = (False, True, False, True, True)
SE_REDUCTION = 4
DIVISOR = 8

DATASETS = ("imagenet",)
DATASET_CLASSES = {"imagenet": 1000}

# Encoding layout (flat float32 vector, ENCODING_DIM = 160):
#   [0, 120)    20 slots x 6: kernel one-hot (3, 5, 7) then expand one-hot (3, 4, 6); all zero if the slot is unused
#   [120, 135)  5 stages x 3: depth one-hot (2, 3, 4)
#   [135, 160)  resolution one-hot over RESOLUTIONS (128, 132, ..., 224)
SLOT_FEATURES = len(KERNELS) + len(EXPANDS)
SLOTS_OFFSET = 0
DEPTH_OFFSET = NUM_SLOTS * SLOT_FEATURES
RES_OFFSET = DEPTH_OFFSET + NUM_STAGES * len(DEPTHS)
ENCODING_DIM = RES_OFFSET + len(RESOLUTIONS)

LUT_STYLES = ("ofa", "nsganetv2")


def make_divisible(v: float, divisor: int = DIVISOR, min_val: int | None = None) -> int:
    """OFA's (and TF MobileNet's) channel rounding: nearest multiple, never more than 10% below ``v``."""
    min_val = divisor if min_val is None else min_val
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _fmt_width(w: float) -> str:
    return f"{w:.1f}"


@dataclass(frozen=True)
class MBV3Arch:
    """One OFA MobileNetV3 subnet. Unused slots are stored as 0, so equal nets compare and hash equal."""

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int
    w: float = DEFAULT_WIDTH

    def __post_init__(self):
        """The one place an arch is validated; ``parse`` adds only the syntax. Messages name the bad part."""
        ks, e, d = tuple(int(v) for v in self.ks), tuple(int(v) for v in self.e), tuple(int(v) for v in self.d)
        for name, values, want in (("ks", ks, NUM_SLOTS), ("e", e, NUM_SLOTS), ("d", d, NUM_STAGES)):
            if len(values) != want:
                raise ValueError(f"part {name}: expected {want} values, got {len(values)}")
        for i, v in enumerate(d):
            if v not in DEPTHS:
                raise ValueError(f"part d: stage {i + 1} depth {v} is not one of {DEPTHS}")
        used = used_slots(d)
        for name, values, choices in (("ks", ks, KERNELS), ("e", e, EXPANDS)):
            for i, v in enumerate(values):
                if used[i] and v not in choices:
                    raise ValueError(f"part {name}: slot {i} (stage {i // MAX_DEPTH + 1}, block {i % MAX_DEPTH + 1}) "
                                     f"is {v}, expected one of {choices}")
                if not used[i] and v != 0 and v not in choices:
                    raise ValueError(f"part {name}: unused slot {i} is {v}, expected 0 or one of {choices}")
        if int(self.r) != self.r or int(self.r) not in RESOLUTIONS:
            raise ValueError(f"part 'r={self.r}': resolution must be 128..224 in steps of 4")
        w = float(self.w)
        if not any(math.isclose(w, c) for c in WIDTHS):
            raise ValueError(f"part 'w={self.w}': width must be one of {', '.join(_fmt_width(c) for c in WIDTHS)}")
        object.__setattr__(self, "ks", tuple(v if u else 0 for v, u in zip(ks, used)))
        object.__setattr__(self, "e", tuple(v if u else 0 for v, u in zip(e, used)))
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "r", int(self.r))
        object.__setattr__(self, "w", min(WIDTHS, key=lambda c: abs(c - w)))

    def __str__(self) -> str:
        j = lambda vs: "-".join(str(v) for v in vs)  # noqa: E731
        return f"ks={j(self.ks)}:e={j(self.e)}:d={j(self.d)}:r={self.r}:w={_fmt_width(self.w)}"

    def __repr__(self) -> str:
        return f"MBV3Arch('{self}')"

    def blocks(self) -> list[tuple[int, int, int]]:
        """(stage, kernel, expand) of every used slot, in network order."""
        return [(i // MAX_DEPTH, self.ks[i], self.e[i]) for i in range(NUM_SLOTS) if self.ks[i]]

    @classmethod
    def from_ofa(cls, ks, e, d, r, w: float = DEFAULT_WIDTH) -> "MBV3Arch":
        """From OFA/HELP columns: lists or dash-joined strings (``'3-5-7-...'``)."""
        split = lambda v: [int(x) for x in v.split("-")] if isinstance(v, str) else list(v)  # noqa: E731
        return cls(tuple(split(ks)), tuple(split(e)), tuple(split(d)), int(r), float(w))


def used_slots(d: Sequence[int]) -> tuple[bool, ...]:
    """Which of the 20 slots a depth vector uses."""
    return tuple(i % MAX_DEPTH < d[i // MAX_DEPTH] for i in range(NUM_SLOTS))


_FIELDS = ("ks", "e", "d", "r", "w")


def parse(text: str) -> MBV3Arch:
    """Parse the canonical string: the syntax here, the values in ``MBV3Arch``; every error names the bad part."""
    if not isinstance(text, str) or not text.strip():
        raise ArchParseError("empty MobileNetV3 architecture string")
    text = text.strip()
    parts = text.split(":")
    names = [p.partition("=")[0] for p in parts]
    if names != list(_FIELDS):
        raise ArchParseError(f"MobileNetV3 arch {text!r}: expected fields ks=...:e=...:d=...:r=...:w=... in that "
                             f"order, got {':'.join(names)}")
    values = {}
    for part in parts:
        name, _, value = part.partition("=")
        try:
            values[name] = [int(v) for v in value.split("-")] if name in ("ks", "e", "d") else \
                int(value) if name == "r" else float(value)
        except ValueError:
            what = "values must be integers joined by '-'" if name in ("ks", "e", "d") else "not a number"
            raise ArchParseError(f"MobileNetV3 arch part {part!r}: {what}") from None
    try:
        return MBV3Arch(tuple(values["ks"]), tuple(values["e"]), tuple(values["d"]), values["r"], values["w"])
    except ValueError as e:
        raise ArchParseError(f"MobileNetV3 arch {e}") from None


# ---------------------------------------------------------------- the layout every consumer shares


@dataclass(frozen=True)
class Widths:
    """Channel counts of one width multiplier, rounded as OFA rounds them."""

    first_conv: int
    first_block: int
    stages: tuple[int, ...]
    final_expand: int
    feature_mix: int


@lru_cache(maxsize=None)
def widths(w: float) -> Widths:
    c = [make_divisible(b * w) for b in BASE_WIDTHS]
    return Widths(c[0], c[1], tuple(c[2:7]), c[7], c[8])


@dataclass(frozen=True)
class Block:
    """One MBConv block as built: the single source for the network, its costs and its LUT keys."""

    c_in: int
    c_out: int
    expand: int  # expand ratio; 1 means no 1x1 expansion (the first block)
    mid: int  # channels of the depthwise conv
    kernel: int
    stride: int
    se: bool
    act: str  # "relu" or "h_swish"
    residual: bool
    hw_in: int
    hw_out: int

    @property
    def se_mid(self) -> int:
        return make_divisible(self.mid // SE_REDUCTION)


def conv_out(hw: int, stride: int) -> int:
    """Spatial size after a 'same'-padded odd-kernel conv (OFA's ``(h - 1) // s + 1``)."""
    return (hw - 1) // stride + 1


def layout(arch: MBV3Arch) -> tuple[Widths, list[Block], int]:
    """(widths, blocks including the first block, spatial size after the first conv)."""
    wd = widths(arch.w)
    hw = conv_out(arch.r, 2)
    c = wd.first_conv
    blocks = [Block(c, wd.first_block, 1, c, 3, 1, False, "relu", c == wd.first_block, hw, hw)]
    c = wd.first_block
    for i in range(NUM_SLOTS):
        if not arch.ks[i]:
            continue
        stage, position = divmod(i, MAX_DEPTH)
        stride = STAGE_STRIDES[stage] if position == 0 else 1
        c_out = wd.stages[stage]
        mid = make_divisible(round(c * arch.e[i]))
        hw_out = conv_out(hw, stride)
        blocks.append(Block(c, c_out, arch.e[i], mid, arch.ks[i], stride, STAGE_SE[stage], STAGE_ACTS[stage],
                            stride == 1 and c == c_out, hw, hw_out))
        c, hw = c_out, hw_out
    return wd, blocks, conv_out(arch.r, 2)


def costs(arch: MBV3Arch, num_classes: int = 1000) -> tuple[int, int]:
    """Exact (params, MACs) of ``build(arch)``.

    Params: every trainable tensor (conv weights, BN affine pairs, SE biases, classifier weight and bias);
    BN running statistics are buffers, not params. MACs: multiply-accumulates of every conv (SE's two 1x1
    convs included) and of the classifier, one per multiply-add, the convention of OFA's published
    ``flops`` figures; BN, activations, pooling, biases and the residual add are not counted.
    """
    wd, blocks, hw0 = layout(arch)
    c0 = wd.first_conv
    params = 27 * c0 + 2 * c0
    macs = 27 * c0 * hw0 * hw0
    for b in blocks:
        if b.expand != 1:
            params += b.c_in * b.mid + 2 * b.mid
            macs += b.c_in * b.mid * b.hw_in * b.hw_in
        params += b.kernel * b.kernel * b.mid + 2 * b.mid
        macs += b.kernel * b.kernel * b.mid * b.hw_out * b.hw_out
        if b.se:
            params += 2 * b.mid * b.se_mid + b.se_mid + b.mid
            macs += 2 * b.mid * b.se_mid
        params += b.mid * b.c_out + 2 * b.c_out
        macs += b.mid * b.c_out * b.hw_out * b.hw_out
    c, hw, cf, cm = blocks[-1].c_out, blocks[-1].hw_out, wd.final_expand, wd.feature_mix
    params += c * cf + 2 * cf + cf * cm + cm * num_classes + num_classes
    macs += c * cf * hw * hw + cf * cm + cm * num_classes
    return params, macs


# ---------------------------------------------------------------- LUT keys


def _shape(hw: int, c: int) -> str:
    return f"{hw}x{hw}x{c}"


def block_signature(b: Block, style: str = "ofa") -> str:
    """The LUT key of one MBConv block (see ``op_signatures``)."""
    io = f"input:{_shape(b.hw_in, b.c_in)}-output:{_shape(b.hw_out, b.c_out)}"
    tail = f"kernel:{b.kernel}-stride:{b.stride}-idskip:{int(b.residual)}-se:{int(b.se)}"
    if style == "ofa":
        return f"expanded_conv-{io}-expand:{b.mid}-{tail}-hs:{int(b.act == 'h_swish')}"
    return f"MBConv-{io}-expand:{b.expand}-{tail}"


def op_signatures(arch: MBV3Arch, num_classes: int = 1000, style: str = "ofa") -> list[str]:
    """One LUT key per timed layer, in network order.

    ``style="ofa"``: OFA's ``MBv3LatencyTable`` keys (the shipped Note10 LUT): ``Conv``, ``expanded_conv``
    (``expand`` = depthwise channels, ``hs`` = h-swish), ``Conv_1``, ``AvgPool2D``, ``Conv_2``, ``Logits``.
    ``style="nsganetv2"``: NSGANetV2's keys (the shipped i7-8700K LUT): ``first_conv``, ``MBConv``
    (``expand`` = ratio), ``final_expand_layer``, ``feature_mix_layer``, ``classifier``; no pooling entry.
    """
    if style not in LUT_STYLES:
        raise ValueError(f"unknown LUT key style {style!r}; known: {', '.join(LUT_STYLES)}")
    wd, blocks, hw0 = layout(arch)
    ofa = style == "ofa"
    keys = [f"{'Conv' if ofa else 'first_conv'}-input:{_shape(arch.r, 3)}-output:{_shape(hw0, wd.first_conv)}"]
    keys += [block_signature(b, style) for b in blocks]
    c, hw, cf, cm = blocks[-1].c_out, blocks[-1].hw_out, wd.final_expand, wd.feature_mix
    if ofa:
        keys += [f"Conv_1-input:{_shape(hw, c)}-output:{_shape(hw, cf)}",
                 f"AvgPool2D-input:{_shape(hw, cf)}-output:{_shape(1, cf)}",
                 f"Conv_2-input:{_shape(1, cf)}-output:{_shape(1, cm)}",
                 f"Logits-input:{_shape(1, cm)}-output:{num_classes}"]
    else:
        keys += [f"final_expand_layer-input:{_shape(hw, c)}-output:{_shape(hw, cf)}",
                 f"feature_mix_layer-input:{_shape(1, cf)}-output:{_shape(1, cm)}",
                 f"classifier-input:{cm}-output:{num_classes}"]
    return keys


_SHAPE = r"(\d+)x(\d+)x(\d+)"
_OFA_KEY = re.compile(rf"^(Conv|Conv_1|AvgPool2D|Conv_2|Logits)-input:{_SHAPE}-output:(?:{_SHAPE}|(\d+))$")
_OFA_BLOCK_KEY = re.compile(rf"^expanded_conv-input:{_SHAPE}-output:{_SHAPE}-expand:(\d+)-kernel:(\d+)"
                            r"-stride:(\d+)-idskip:([01])-se:([01])-hs:([01])$")


def parse_signature(key: str) -> tuple[str, object]:
    """An ``ofa``-style LUT key back to what it times, so a profiler can build the layer from its key alone.

    Returns ``("expanded_conv", Block)`` or ``(layer, (in_hw, in_c, out_hw, out_c))`` for the fixed layers
    ``Conv``, ``Conv_1``, ``AvgPool2D``, ``Conv_2``, ``Logits`` (``Logits`` has out_hw 0: a vector).
    """
    m = _OFA_BLOCK_KEY.match(key)
    if m:
        hi, wi, ci, ho, wo, co, mid, k, s, skip, se, hs = (int(v) for v in m.groups())
        if hi != wi or ho != wo:
            raise ValueError(f"non-square LUT key {key!r}")
        return "expanded_conv", Block(ci, co, max(1, round(mid / ci)), mid, k, s, bool(se),
                                      "h_swish" if hs else "relu", bool(skip), hi, ho)
    m = _OFA_KEY.match(key)
    if not m:
        raise ValueError(f"not an ofa-style MobileNetV3 LUT key: {key!r}")
    layer, hi, _, ci = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    out_hw, out_c = (0, int(m.group(8))) if m.group(8) else (int(m.group(5)), int(m.group(7)))
    return layer, (hi, ci, out_hw, out_c)


def lut_style(lut: Mapping[str, float]) -> str:
    """Which key style a LUT uses, from its keys."""
    for key in lut:
        if key.startswith(("Conv-", "expanded_conv-", "Logits-")):
            return "ofa"
        if key.startswith(("first_conv-", "MBConv-", "classifier-")):
            return "nsganetv2"
    raise ValueError("LUT has no MobileNetV3 key of a known style")


class LUTKeyError(UserError, KeyError):
    """A LUT lacks an entry an arch needs (for example a resolution the table was not measured at)."""

    def __str__(self) -> str:  # KeyError would print the repr
        return str(self.args[0])


def lut_sum_ms(arch: MBV3Arch, lut: Mapping[str, float], style: str | None = None, num_classes: int = 1000) -> float:
    """Sum of the LUT entries of every layer of ``arch`` (ms); the style is read from the LUT's keys."""
    style = style or lut_style(lut)
    total = 0.0
    for key in op_signatures(arch, num_classes, style):
        try:
            total += lut[key]
        except KeyError:
            raise LUTKeyError(f"LUT has no entry {key!r} (needed by the r={arch.r} w{_fmt_width(arch.w)} arch); "
                              "profile this resolution or pick a LUT that covers it") from None
    return total


def _probe_archs(r: int, w: float) -> list[MBV3Arch]:
    """Nine depth-2 and nine depth-4 archs that together use every (kernel, expand) in every position kind
    (first block of a stage, later block) of every stage at resolution ``r``."""
    return [MBV3Arch((k,) * NUM_SLOTS, (e,) * NUM_SLOTS, (d,) * NUM_STAGES, r, w)
            for k in KERNELS for e in EXPANDS for d in (2, 4)]


def lut_keys(num_classes: int = 1000, resolutions: Sequence[int] = RESOLUTIONS, width: float = DEFAULT_WIDTH,
             style: str = "ofa") -> list[str]:
    """Every distinct LUT key any arch at these resolutions needs (90 blocks + 6 fixed per resolution, fewer
    where resolutions share feature-map sizes)."""
    return sorted({k for r in resolutions for a in _probe_archs(r, width)
                   for k in op_signatures(a, num_classes, style)})
