"""NB201 space: strings, table order, equivalence, networks and exact costs."""

import dataclasses

import numpy as np
import pytest
import torch

from pomonag_edge.data import naslib_costs, nb201_arch_strings
from pomonag_edge.errors import ArchParseError, UserError
from pomonag_edge.spaces import get_space
from pomonag_edge.spaces.nb201 import NB201Arch, live_edges

S = get_space("nb201")
ALL = list(S.enumerate())
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def test_round_trip_and_index_over_whole_space():
    assert len(ALL) == 15625 == S.size()
    assert len(set(ALL)) == 15625
    strings = nb201_arch_strings()
    for i, arch in enumerate(ALL):
        assert str(arch) == strings[i]
        assert S.parse(str(arch)) == arch
        assert S.index(arch) == i
        assert S.from_index(i) == arch


@pytest.mark.parametrize("text, part", [
    ("", "empty"),
    ("   ", "empty"),
    ("garbage", "expected 3 nodes"),
    ("|conv~0|", "expected 3 nodes"),
    ("|nor_conv_3x3~0|+|none~0|none~1|", "expected 3 nodes"),
    ("|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|", "node 2"),
    ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "input node '1'"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~3|", "input node '3'"),
    ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "op~input"),
    ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "node 1"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|none~3|", "expected 3 edge"),
])
def test_parse_errors_name_the_bad_part(text, part):
    with pytest.raises(ArchParseError) as e:
        S.parse(text)
    assert part in str(e.value)
    assert isinstance(e.value, UserError)


def test_sampling_is_seeded_uniform_and_distinct():
    a, b = S.sample(200, seed=3), S.sample(200, seed=3)
    assert a == b and len(set(a)) == 200
    assert S.sample(200, seed=4) != a
    idx = np.array([S.index(x) for x in S.sample(5000, seed=0)])
    assert 0.4 * 15625 < idx.mean() < 0.6 * 15625  # uniform over the index range


def test_encode_decode():
    x = S.encode(ALL)
    assert x.shape == (15625, 6, 5) and x.dtype == np.float32
    assert np.all(x.sum(-1) == 1)
    assert S.decode(x) == ALL
    noisy = x + np.random.default_rng(0).normal(0, 0.1, x.shape)
    assert S.decode(noisy) == ALL  # small noise never flips an argmax of a one-hot
    with pytest.raises(ValueError, match="expected shape"):
        S.decode(np.zeros((2, 5, 5)))


def test_validity_and_live_edges():
    none = S.parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert not S.is_valid(none)
    # node 3 is fed only by node 2, which has no input: disconnected
    dead = S.parse("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|")
    assert not S.is_valid(dead)
    # the conv into node 1 cannot reach the output: only the direct edge is live
    a = S.parse("|nor_conv_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|")
    assert live_edges(a) == (False, False, False, True, False, False)
    assert sum(not S.is_valid(x) for x in ALL) == 341  # the nets BRP-NAS left unmeasured


def test_equivalence_classes():
    a = S.parse("|nor_conv_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|")
    b = S.parse("|nor_conv_1x1~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|")
    assert S.canonical(a) == S.canonical(b)  # differ only in a dead edge
    # node relabelling: swapping intermediate nodes 1 and 2 computes the same function
    c = S.parse("|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|none~0|avg_pool_3x3~1|skip_connect~2|")
    d = S.parse("|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|avg_pool_3x3~2|")
    assert S.canonical(c) == S.canonical(d)
    # a skip chain: node 1 = x, so conv from node 1 is conv from the input
    e = S.parse("|skip_connect~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|")
    f = S.parse("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")
    assert S.canonical(e) == S.canonical(f)
    # but two convs on one input are not one conv
    g = S.parse("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|nor_conv_3x3~0|none~1|skip_connect~2|")
    assert S.canonical(g) != S.canonical(f)
    reps = {S.canonical(x) for x in ALL}
    assert len(reps) == S.num_functions() == 4930
    assert all(S.canonical(r) == r for r in reps)
    assert all(S.index(S.canonical(x)) <= S.index(x) for x in ALL[:2000])


@pytest.mark.parametrize("dataset, hw, classes", [("cifar10", 32, 10), ("cifar100", 32, 100),
                                                  ("imagenet16-120", 16, 120)])
def test_forward_shapes(dataset, hw, classes):
    net = S.build(S.parse(BEST), dataset).eval()
    assert S.input_shape(dataset=dataset, batch=2) == (2, 3, hw, hw)
    with torch.no_grad():
        assert net(torch.randn(2, 3, hw, hw)).shape == (2, classes)
    empty = S.build(S.parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"), dataset).eval()
    with torch.no_grad():
        assert empty(torch.randn(1, 3, hw, hw)).shape == (1, classes)


def _walk(module, input_shape) -> tuple[int, int]:
    """Params and conv/linear MACs of a module, by a forward pass with hooks: the independent check."""
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        if isinstance(m, torch.nn.Conv2d):
            macs += m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups * out.numel()
        elif isinstance(m, torch.nn.Linear):
            macs += m.in_features * out.numel()

    hooks = [m.register_forward_hook(hook) for m in module.modules()]
    with torch.no_grad():
        module(torch.randn(*input_shape))
    for h in hooks:
        h.remove()
    return sum(p.numel() for p in module.parameters()), macs


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet16-120"])
@pytest.mark.parametrize("prune", [True, False])
def test_costs_match_module_walk(dataset, prune):
    for arch in S.sample(12, seed=1) + [S.parse(BEST), ALL[0]]:
        net = S.build(arch, dataset, prune=prune).eval()
        params, macs = _walk(net, S.input_shape(arch, dataset))
        assert S.params(arch, dataset, prune=prune) == params, str(arch)
        if prune or all(live_edges(arch)[k] or arch.ops[k] == 0 for k in range(6)):
            # the walk sees only convs that run; unpruned dead convs on unreachable nodes never run
            assert S.macs(arch, dataset, prune=prune) == macs, str(arch)


def test_costs_vs_naslib():
    """NASLib counts every genotype op; params exactly, FLOPs within 1% (convention: see SPACE.flops)."""
    worst_params = worst_flops = 0.0
    for row in naslib_costs():
        arch = S.parse(row["arch"])
        assert S.index(arch) == row["index"]
        worst_params = max(worst_params, abs(S.params(arch, row["dataset"], prune=False) / 1e6 / row["params_M"] - 1))
        worst_flops = max(worst_flops, abs(S.flops(arch, row["dataset"]) / 1e6 / row["flops_M"] - 1))
    assert worst_params < 0.005
    assert worst_flops < 0.01


def test_pruning_removes_dead_edges_only():
    a = S.parse("|nor_conv_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|")
    assert S.params(a, prune=True) < S.params(a, prune=False)
    b = S.parse(BEST)
    assert S.params(b, prune=True) == S.params(b, prune=False) == 1288506  # sum(numel) of the module


def test_lut_signatures_cover_every_arch():
    for dataset in S.datasets:
        keys = set(S.lut_signatures(dataset))
        for arch in ALL[::7]:
            assert set(S.op_signatures(arch, dataset)) <= keys
    assert len(S.lut_signatures("cifar10")) == 1 + 2 + 3 * 3 + 1  # stem, 2 reductions, 3 ops x 3 stages, head


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset"):
        S.params(ALL[0], "mnist")


def test_arch_is_immutable_and_validated():
    a = S.parse(BEST)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.ops = (0,) * 6
    with pytest.raises(ValueError):
        NB201Arch((9,) * 6)
