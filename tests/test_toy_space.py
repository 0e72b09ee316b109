"""A third search space, defined in this file alone and registered the way another package registers one (an
entry point in the ``pomonag_edge.spaces`` group), runs the whole product: predict, profile (its own LUT),
calibrate, pretrain generator, generate with diffusion / nsga2 / random, export (ONNX numerics checked, latency
measured). Nothing outside this file knows it exists.

The space: a chain of 4 slots, each a 3x3 conv, a 1x1 conv, a 3x3 average pool or a skip, at 8 channels on
16x16 inputs, between a 3x3 stem and a pooled linear head. Its accuracy "predictor" is a fixed formula of the
slots (a stand-in: no table of trained toy nets exists), which is all the pipeline needs from one.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from pomonag_edge.errors import ArchParseError
from pomonag_edge.spaces import GeneratorRecipe, SpaceBase

OPS = ("conv3", "conv1", "pool", "skip")
SLOTS, CHANNELS, HW, CLASSES = 4, 8, 16, 10


@dataclass(frozen=True, order=True)
class ChainArch:
    ops: tuple[int, ...]

    def __str__(self) -> str:
        return "-".join(OPS[o] for o in self.ops)


class ChainSpace(SpaceBase):
    name = "chain4"
    encoding_shape = (SLOTS, len(OPS))
    datasets = ("toy",)
    default_dataset = "toy"
    generator_recipe = GeneratorRecipe(kind="valid", batch=64, checkpoint=None)  # the test trains one

    def parse(self, text: str) -> ChainArch:
        parts = text.strip().split("-")
        if len(parts) != SLOTS or any(p not in OPS for p in parts):
            raise ArchParseError(f"chain4 arch {text!r}: expected {SLOTS} of {', '.join(OPS)} joined by '-'")
        return ChainArch(tuple(OPS.index(p) for p in parts))

    def size(self) -> int:
        return len(OPS) ** SLOTS

    def enumerate(self):
        return (ChainArch(ops) for ops in itertools.product(range(len(OPS)), repeat=SLOTS))

    def sample(self, n: int, seed: int) -> list[ChainArch]:
        rng = np.random.default_rng(seed)
        return [ChainArch(tuple(int(o) for o in row)) for row in rng.integers(0, len(OPS), (n, SLOTS))]

    def encode(self, archs) -> np.ndarray:
        return np.eye(len(OPS), dtype=np.float32)[np.array([a.ops for a in archs], dtype=np.int64).reshape(-1, SLOTS)]

    def decode(self, x) -> list[ChainArch]:
        return [ChainArch(tuple(int(o) for o in row)) for row in np.asarray(x).argmax(-1)]

    def is_valid(self, arch) -> bool:
        return True

    def canonical(self, arch):
        return arch

    def input_shape(self, arch=None, dataset=None, batch: int = 1):
        self.check_dataset(dataset)
        return (batch, 3, HW, HW)

    def build(self, arch, dataset=None):
        import torch.nn as nn

        self.check_dataset(dataset)
        return nn.Sequential(_stem(), *[_op(o) for o in arch.ops if OPS[o] != "skip"], _head())

    def params(self, arch, dataset=None) -> int:
        conv = {"conv3": 9 * CHANNELS * CHANNELS + 2 * CHANNELS, "conv1": CHANNELS * CHANNELS + 2 * CHANNELS}
        return 27 * CHANNELS + 2 * CHANNELS + sum(conv.get(OPS[o], 0) for o in arch.ops) + CHANNELS * CLASSES + CLASSES

    def macs(self, arch, dataset=None) -> int:
        conv = {"conv3": 9 * CHANNELS * CHANNELS * HW * HW, "conv1": CHANNELS * CHANNELS * HW * HW}
        return 27 * CHANNELS * HW * HW + sum(conv.get(OPS[o], 0) for o in arch.ops) + CHANNELS * CLASSES

    def op_signatures(self, arch, dataset=None) -> list[str]:
        return ["stem"] + [OPS[o] for o in arch.ops if OPS[o] != "skip"] + ["head"]

    def lut_module(self, key: str, batch: int, copies: int = 1):
        import torch.nn as nn

        if key == "stem":
            return _stem(), (batch, 3, HW, HW)
        if key == "head":
            return _head(), (batch, CHANNELS, HW, HW)
        return nn.Sequential(*[_op(OPS.index(key)) for _ in range(copies)]), (batch, CHANNELS, HW, HW)

    def lut_chainable(self, key: str) -> bool:
        return key not in ("stem", "head")

    def accuracy_predictor(self):
        return ToyAccuracy()


class ToyAccuracy:
    """Deeper chains with 3x3 convs early score higher: a fixed formula standing in for a trained predictor."""

    def describe(self, dataset: str) -> str:
        return "toy accuracy formula"

    def predict(self, archs, dataset: str) -> np.ndarray:
        gain = {"conv3": 6.0, "conv1": 3.0, "pool": 1.0, "skip": 0.0}
        return np.array([50 + sum(gain[OPS[o]] / (1 + 0.3 * i) for i, o in enumerate(a.ops)) for a in archs])


def _stem():
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, CHANNELS, 3, padding=1, bias=False), nn.BatchNorm2d(CHANNELS))


def _op(o: int):
    import torch.nn as nn

    if OPS[o] == "pool":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    k = 3 if OPS[o] == "conv3" else 1
    return nn.Sequential(nn.ReLU(), nn.Conv2d(CHANNELS, CHANNELS, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(CHANNELS))


def _head():
    import torch.nn as nn

    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(CHANNELS, CLASSES))


SPACE = ChainSpace()


# ----------------------------------------------------------------------------- registered as a package would


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A distribution's metadata on sys.path, with an entry point naming this module's SPACE."""
    site = tmp_path_factory.mktemp("site")
    info = site / "chain4_space-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chain4-space\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[pomonag_edge.spaces]\nchain4 = {__name__}:SPACE\n")
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(site))
    mp.syspath_prepend(str(Path(__file__).parent))
    sys.modules.setdefault(__name__, sys.modules[__name__])
    yield
    mp.undo()


@pytest.fixture()
def run(registered, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def invoke(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        return result

    return invoke


@pytest.mark.slow
def test_a_space_from_another_package_runs_end_to_end(run, tmp_path):
    from pomonag_edge.spaces import get_space, space_names

    assert "chain4" in space_names() and get_space("chain4") is SPACE

    # predict: exact costs and the space's accuracy predictor
    (tmp_path / "archs.txt").write_text("conv3-conv1-pool-skip\nskip-skip-skip-conv1\n")
    rows = list(csv.DictReader(run("predict", "--space", "chain4", "--archs", "archs.txt", "--dataset", "toy",
                                   "--format", "csv").stdout.splitlines()))
    arch = SPACE.parse(rows[0]["arch"])
    assert int(rows[0]["params"]) == SPACE.params(arch) == sum(p.numel() for p in SPACE.build(arch).parameters())
    assert float(rows[0]["accuracy"]) > float(rows[1]["accuracy"])

    # profile: its own LUT (stem, head, each op as a chain) and calibration nets, timed here
    run("profile", "--device", "cpu", "--space", "chain4", "--quick", "--calibration", "8", "--out", "p.json")
    profile = json.loads((tmp_path / "p.json").read_text())
    assert set(profile["lut"]) == {"stem", "head", "conv3", "conv1", "pool"}
    assert profile["lut"]["conv3"]["method"].startswith("chain") and profile["lut"]["stem"]["method"] == "alone"
    assert len(profile["calibration"]) == 8 and profile["latency_model"]["kind"] == "lut-scale"

    # calibrate: the same timings as measured elsewhere: no LUT, no pretrained embedding -> the cost proxies
    with open(tmp_path / "m.csv", "w") as f:
        f.write("arch,latency_ms\n" + "".join(f"{c['arch']},{c['latency_ms']}\n" for c in profile["calibration"]))
    run("calibrate", "--space", "chain4", "--measurements", "m.csv", "--name", "elsewhere", "--out", "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["latency_model"]["kind"] == "cost-proxy"

    # the space's score network, trained in seconds through the product's own command
    run("pretrain", "generator", "--space", "chain4", "--steps", "150", "--batch", "64", "--d-model", "16",
        "--layers", "1", "--out", tmp_path / "gen")
    SPACE.generator_recipe = GeneratorRecipe(kind="valid", batch=64, checkpoint=str(tmp_path / "gen"))

    budget = float(np.median([c["latency_ms"] for c in profile["calibration"]])) * 1.5
    for strategy in ("diffusion", "nsga2", "random"):
        run("generate", "--space", "chain4", "--profile", "p.json", "--dataset", "toy", "--max-latency",
            f"{budget:.4f}ms", "--strategy", strategy, "--samples", "64", "--num", "3", "--out", f"run-{strategy}")
        picked = json.loads((tmp_path / f"run-{strategy}" / "pareto.json").read_text())
        assert picked and all(r["latency_ms_with_margin"] <= budget for r in picked)
        assert [SPACE.parse(r["arch"]) for r in picked]

    # export: ONNX checked against PyTorch and timed with the profile's runtime
    run("export", "run-diffusion", "--top", "1", "--profile", "p.json", "--quick", "--allow-over-budget")
    report = json.loads((tmp_path / "run-diffusion" / "export" / "report.json").read_text())
    (net,) = report["nets"]
    assert net["checks"] and all(c["passed"] for c in net["checks"])
    assert next(iter(net["measured"].values()))["median_ms"] > 0
