"""MobileNetV3 (OFA) space: strings, sampling, encoding, networks, exact costs, LUT keys, accuracy predictor."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import spearmanr

from pomonag_edge.data.mbv3 import REFERENCE_LUT_RESOLUTIONS, _lut_file, reference_lut, specialized_subnets
from pomonag_edge.errors import ArchParseError, UserError
from pomonag_edge.spaces import get_space
from pomonag_edge.spaces.mbv3 import SPACE_W10, ofa_latency_table
from pomonag_edge.spaces.mbv3.arch import (DEPTH_OFFSET, ENCODING_DIM, RES_OFFSET, LUTKeyError, MBV3Arch, lut_style,
                                           lut_sum_ms, make_divisible, op_signatures, widths)

S = get_space("mbv3")
BIG = "ks=" + "-".join(["7"] * 20) + ":e=" + "-".join(["6"] * 20) + ":d=4-4-4-4-4:r=224:w=1.2"
EXAMPLE = ("ks=3-5-0-0-7-3-3-0-5-5-5-5-3-3-0-0-7-5-3-3:e=4-6-0-0-3-3-4-0-6-4-3-3-3-6-0-0-4-4-6-3"
           ":d=2-3-4-2-4:r=224:w=1.2")


def test_round_trip_of_sampled_archs_and_canonical_unused_slots():
    archs = S.sample(300, seed=0)
    for a in archs:
        assert S.parse(str(a)) == a and str(S.parse(str(a))) == str(a)
        assert S.is_valid(a) and S.canonical(a) == a
    assert str(S.parse(EXAMPLE)) == EXAMPLE
    # HELP's table fills unused slots with random choices: they are dropped, the arch is the same
    noisy = EXAMPLE.replace("ks=3-5-0-0", "ks=3-5-7-3").replace("e=4-6-0-0", "e=4-6-6-3")
    assert S.parse(noisy) == S.parse(EXAMPLE) and hash(S.parse(noisy)) == hash(S.parse(EXAMPLE))
    assert str(S.parse(noisy)) == EXAMPLE
    a = S.parse(EXAMPLE)
    assert MBV3Arch.from_ofa("-".join(map(str, a.ks)), list(a.e), a.d, 224) == a
    assert str(S.parse(EXAMPLE.replace("w=1.2", "w=1"))).endswith("w=1.0")


def test_help_table_rows_parse_and_are_distinct_nets():
    table = ofa_latency_table()
    assert len(table.archs) == 5000 and table.latency_ms.shape == (5000, 9)
    assert np.isfinite(table.latency_ms).all()
    assert all(a.w == 1.2 for a in table.archs)
    assert len(set(table.archs)) == 5000


@pytest.mark.parametrize("text, part", [
    ("", "empty"),
    ("ks=3", "expected fields ks"),
    (EXAMPLE.replace(":w=1.2", ""), "expected fields ks"),
    (EXAMPLE.replace("d=", "depth="), "expected fields ks"),
    (EXAMPLE.replace("ks=3-5-0-0", "ks=3-5-0"), "part ks: expected 20 values, got 19"),
    (EXAMPLE.replace("e=4-6", "e=4-x"), "part 'e=4-x"),
    (EXAMPLE.replace("d=2-3-4-2-4", "d=2-3-4-2"), "part d: expected 5 values"),
    (EXAMPLE.replace("d=2-3-4-2-4", "d=2-3-5-2-4"), "stage 3 depth 5"),
    (EXAMPLE.replace("d=2-3-4-2-4", "d=2-3-1-2-4"), "stage 3 depth 1"),
    (EXAMPLE.replace("ks=3-5", "ks=3-4"), "part ks: slot 1 (stage 1, block 2) is 4"),
    (EXAMPLE.replace("ks=3-5-0", "ks=3-5-9"), "part ks: unused slot 2 is 9"),
    (EXAMPLE.replace("e=4-6-0-0-3-3-4", "e=4-6-0-0-3-3-0"), "part e: slot 6 (stage 2, block 3) is 0"),
    (EXAMPLE.replace("r=224", "r=226"), "part 'r=226'"),
    (EXAMPLE.replace("r=224", "r=232"), "part 'r=232'"),
    (EXAMPLE.replace("r=224", "r=124"), "part 'r=124'"),
    (EXAMPLE.replace("r=224", "r=abc"), "part 'r=abc'"),
    (EXAMPLE.replace("w=1.2", "w=0.75"), "part 'w=0.75'"),
    (EXAMPLE.replace("w=1.2", "w=wide"), "part 'w=wide'"),
])
def test_parse_errors_name_the_bad_part(text, part):
    with pytest.raises(ArchParseError) as e:
        S.parse(text)
    assert part in str(e.value)
    assert isinstance(e.value, UserError)


def test_size_enumerate_and_sampling():
    assert S.size() == (81 + 729 + 6561) ** 5 * 25
    with pytest.raises(UserError, match="cannot be enumerated"):
        next(iter(S.enumerate()))
    a, b = S.sample(500, seed=3), S.sample(500, seed=3)
    assert a == b and len(set(a)) == 500 and S.sample(500, seed=4) != a
    d = np.array([x.d for x in S.sample(3000, seed=0)])
    assert all(abs((d == v).mean() - 1 / 3) < 0.03 for v in (2, 3, 4))  # OFA's uniform per-stage depth
    r = np.array([x.r for x in S.sample(3000, seed=0)])
    assert r.min() == 128 and r.max() == 224
    assert all(x.w == 1.0 for x in SPACE_W10.sample(5, seed=0))


def test_encode_decode_and_mask():
    archs = S.sample(300, seed=1) + list(ofa_latency_table().archs[:200])
    x = S.encode(archs)
    assert x.shape == (500, ENCODING_DIM) == (500, 160) and x.dtype == np.float32
    assert S.decode(x) == archs
    mask = S.slot_mask(x)
    assert np.all(x * (1 - mask) == 0)  # unused slots are all zero
    used = sum(sum(a.d) for a in archs)
    assert x[:, :DEPTH_OFFSET].sum() == 2 * used  # one kernel + one expand one-hot per used slot
    assert np.all(x[:, DEPTH_OFFSET:RES_OFFSET].sum(1) == 5) and np.all(x[:, RES_OFFSET:].sum(1) == 1)
    noise = np.random.default_rng(0).normal(size=(200, ENCODING_DIM))
    decoded = S.decode(noise)
    assert all(S.parse(str(a)) == a for a in decoded)
    assert S.decode(S.encode(decoded)) == decoded
    with pytest.raises(ValueError, match="expected shape"):
        S.decode(np.zeros((2, 159)))


def test_channel_widths_follow_ofa():
    assert make_divisible(16 * 1.2) == 24 and make_divisible(112 * 1.2) == 136
    w = widths(1.2)
    assert (w.first_conv, w.first_block, w.stages, w.final_expand, w.feature_mix) == \
        (24, 24, (32, 48, 96, 136, 192), 1152, 1536)
    w = widths(1.0)
    assert (w.first_conv, w.first_block, w.stages, w.final_expand, w.feature_mix) == \
        (16, 16, (24, 40, 80, 112, 160), 960, 1280)


def _walk(model: nn.Module, r: int) -> tuple[int, int]:
    """Params by summing every parameter; MACs by hooking every conv and linear layer in a forward pass."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])
        else:
            macs.append(out.numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, r, r))
    for h in handles:
        h.remove()
    return sum(p.numel() for p in model.parameters()), sum(macs)


@pytest.mark.parametrize("r", [160, 224])
def test_exact_costs_match_module_walk_and_forward_shape(r):
    torch.set_num_threads(1)
    archs = [S.parse(BIG.replace("r=224", f"r={r}"))] + [MBV3Arch(a.ks, a.e, a.d, r, a.w) for a in S.sample(3, seed=r)]
    archs.append(MBV3Arch(archs[1].ks, archs[1].e, archs[1].d, r, 1.0))
    for a in archs:
        space = SPACE_W10 if a.w == 1.0 else S
        model = space.build(a)
        assert _walk(model, r) == (space.params(a), space.macs(a)), str(a)
    model = S.build(archs[1], num_classes=10)
    assert model(torch.zeros(S.input_shape(archs[1]))).shape == (1, 10)
    assert _walk(model, r) == (S.params(archs[1], num_classes=10), S.macs(archs[1], num_classes=10))


def test_macs_match_ofa_published_flops():
    """OFA names two specialized w1.2 subnets by their MACs: 389M and 482M."""
    for row in specialized_subnets():
        if row["name"].startswith(("flops-389M", "flops-482M")):
            a = MBV3Arch(row["ks"], row["e"], row["d"], row["r"], row["w"])
            assert round(S.macs(a) / 1e6) == int(row["name"].split("-")[1][:3])


def test_ofa_layout_names_and_blocks():
    a = S.parse(EXAMPLE)
    model = S.build(a)
    assert len(model.blocks) == 1 + sum(a.d)
    names = dict(model.named_modules())
    assert "blocks.0.conv.depth_conv.conv" in names and model.blocks[0].conv.inverted_bottleneck is None
    assert "blocks.3.conv.depth_conv.se.fc.reduce" in names  # stage 2 has SE
    assert "blocks.1.conv.depth_conv.se" not in names  # stage 1 does not
    assert isinstance(names["blocks.6.conv.depth_conv.act"], nn.Hardswish)  # stage 3 uses h-swish
    assert names["blocks.3.conv.depth_conv.se.fc.reduce"].out_channels == make_divisible(32 * a.e[4] // 4) == 24
    assert "feature_mix_layer.bn" not in names and names["feature_mix_layer.conv"].bias is None


def test_shipped_lut_files_read_as_key_to_timing_fields():
    table = _lut_file("lut_note10_w1.2/r176.yaml")
    assert len(table) > 50
    assert all(isinstance(v, dict) and isinstance(v["mean"], float) and v["mean"] > 0 for v in table.values())


@pytest.mark.parametrize("name, style", [("i7-8700k", "nsganetv2"), ("note10", "ofa")])
def test_shipped_luts_cover_every_key_of_their_resolutions(name, style):
    lut = reference_lut(name)
    assert lut_style(lut) == style
    resolutions = [r for r in REFERENCE_LUT_RESOLUTIONS[name] if r in S.resolutions]
    spaces = (S, SPACE_W10) if name == "i7-8700k" else (S,)
    for space in spaces:
        needed = space.lut_signatures(resolutions=resolutions, style=style)
        assert len(needed) > 90 and not set(needed) - set(lut)
    for a in S.sample(50, seed=2):
        a = MBV3Arch(a.ks, a.e, a.d, resolutions[a.r % len(resolutions)], a.w)
        keys = op_signatures(a, style=style)
        assert len(keys) == (6 if style == "ofa" else 5) + sum(a.d)
        assert lut_sum_ms(a, lut) == pytest.approx(sum(lut[k] for k in keys))
        assert 0 < lut_sum_ms(a, lut) < 200


def test_lut_missing_resolution_is_a_clear_user_error():
    a = S.parse(EXAMPLE.replace("r=224", "r=128"))
    with pytest.raises(LUTKeyError, match="r=128"):
        lut_sum_ms(a, reference_lut("note10"))
    with pytest.raises(UserError, match="no shipped MobileNetV3 LUT"):
        reference_lut("pixel9")


def test_ofa_keys_match_ofa_own_spec_formula():
    """OFA's MBv3LatencyTable builds the first blocks' keys with mid = round(c_in * e) at fsize=(r+1)//2."""
    a = S.parse(EXAMPLE)
    keys = op_signatures(a)
    assert keys[0] == "Conv-input:224x224x3-output:112x112x24"
    assert keys[1] == "expanded_conv-input:112x112x24-output:112x112x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0"
    assert keys[2] == "expanded_conv-input:112x112x24-output:56x56x32-expand:96-kernel:3-stride:2-idskip:0-se:0-hs:0"
    assert keys[-4:] == ["Conv_1-input:7x7x192-output:7x7x1152", "AvgPool2D-input:7x7x1152-output:1x1x1152",
                         "Conv_2-input:1x1x1152-output:1x1x1536", "Logits-input:1x1x1536-output:1000"]


def test_ofa_accuracy_predictor():
    from pomonag_edge.spaces.mbv3.accuracy import (OFAAccuracyPredictor, encoding_to_ofa_matrix, in_range,
                                                      ofa_features)

    p = OFAAccuracyPredictor()
    archs = [MBV3Arch(a.ks, a.e, a.d, 160 + 4 * (i % 17), a.w) for i, a in enumerate(S.sample(200, seed=5))]
    acc = p.predict(archs)
    assert acc.shape == (200,) and np.all((70 < acc) & (acc < 85))
    big, small = S.parse(BIG), S.parse("ks=" + "-".join(["3"] * 20) + ":e=" + "-".join(["3"] * 20)
                                       + ":d=2-2-2-2-2:r=160:w=1.2")
    assert p.predict([big])[0] > p.predict([small])[0] + 3
    f = ofa_features([S.parse(EXAMPLE)])[0]
    assert f.sum() == 2 * 15 + 1 and f[120 + (224 - 112) // 16] == 1 and f[3 * 2:3 * 4].sum() == 0
    low = S.parse(EXAMPLE.replace("r=224", "r=128"))
    assert not in_range([low])[0]
    with pytest.warns(UserWarning, match="outside 160..224"):
        p.predict([low])
    with pytest.raises(UserError, match="w1.2"):
        p.predict([MBV3Arch(big.ks, big.e, big.d, 224, 1.0)])
    with pytest.raises(UserError, match="ImageNet"):
        p.predict([big], "cifar10")
    x = S.encode(archs)
    assert np.array_equal(x @ encoding_to_ofa_matrix(), ofa_features(archs))
    with torch.no_grad():
        np.testing.assert_allclose(p.module(torch.from_numpy(x)).numpy(), acc, rtol=1e-5)
    # OFA's specialized w1.2 subnets in range: ranks agree, the estimate sits ~3.4 points above fine-tuned top-1
    rows = [s for s in specialized_subnets() if s["w"] == 1.2 and 160 <= s["r"] <= 224]
    assert len(rows) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = p.predict([MBV3Arch(s["ks"], s["e"], s["d"], s["r"], s["w"]) for s in rows])
    top1 = np.array([s["top1"] for s in rows])
    assert spearmanr(pred, top1)[0] > 0.8
    assert 2.5 < np.mean(pred - top1) < 4.5


def test_ofa_keys_parse_back_to_the_layers_they_time():
    from pomonag_edge.spaces.mbv3.arch import block_signature, layout, parse_signature
    from pomonag_edge.spaces.mbv3.net import signature_module

    for key in S.lut_signatures(resolutions=(160, 224)):
        layer, spec = parse_signature(key)
        if layer == "expanded_conv":
            assert block_signature(spec) == key and block_signature(spec, "nsganetv2").startswith("MBConv-")
    with pytest.raises(ValueError, match="not an ofa-style"):
        parse_signature("MBConv-input:10x10x16-output:10x10x16-expand:1-kernel:3-stride:1-idskip:1-se:0")
    torch.set_num_threads(1)
    for a in [S.parse(EXAMPLE.replace("r=224", "r=160"))] + S.sample(2, seed=7):
        total, blocks = 0, layout(a)[1]
        for key in op_signatures(a):
            module, shape = signature_module(key)
            with torch.no_grad():
                y = module.eval()(torch.zeros(shape))
            out = key.rpartition("output:")[2].split("-")[0].split("x")
            assert list(y.shape[1:]) == ([int(out[2]), int(out[0]), int(out[1])] if len(out) == 3 else [int(out[0])])
            total += sum(p.numel() for p in module.parameters())
        assert total == S.params(a) and len(blocks) == sum(a.d) + 1


def test_onnx_export_matches_torch():
    """h-swish, h-sigmoid and the SE mean pools survive the opset-17 TorchScript export."""
    import io

    ort = pytest.importorskip("onnxruntime")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    a = S.parse(EXAMPLE.replace("r=224", "r=160"))
    model = S.build(a).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, as a trained net has
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(S.input_shape(a))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert y.shape == (1, 1000)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
