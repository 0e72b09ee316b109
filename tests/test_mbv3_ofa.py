"""Cross-check against Once-for-All's own code, where the ``ofa`` package is installed (``pip install ofa``;
it is not a dependency). Skipped elsewhere. OFA's package imports torchvision for its data loaders only,
so a missing torchvision is replaced by a stand-in for the import."""

import sys
from unittest import mock

import pytest
import torch

from pomonag_edge.spaces.mbv3 import SPACE, SPACE_W10
from pomonag_edge.spaces.mbv3.arch import op_signatures

pytest.importorskip("ofa")


@pytest.fixture
def ofa_modules(monkeypatch):
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                     "torchvision.datasets", "torchvision.transforms.transforms"):
            monkeypatch.setitem(sys.modules, name, mock.MagicMock())
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    from ofa.nas.efficiency_predictor.latency_lookup_table import MBv3LatencyTable

    return OFAMobileNetV3, MBv3LatencyTable


@pytest.mark.slow
@pytest.mark.parametrize("space", [SPACE, SPACE_W10], ids=["w1.2", "w1.0"])
def test_built_net_equals_ofa_subnet(ofa_modules, space):
    """Same state_dict keys and shapes, OFA's weights load, identical outputs, same params, FLOPs and LUT keys."""
    OFAMobileNetV3, MBv3LatencyTable = ofa_modules
    torch.set_num_threads(1)
    supernet = OFAMobileNetV3(n_classes=1000, dropout_rate=0.1, width_mult=space.width, ks_list=[3, 5, 7],
                              expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])

    class Keys(MBv3LatencyTable):
        def __init__(self):
            self.keys = []

        def query(self, l_type, input_shape, output_shape, mid=None, ks=None, stride=None, id_skip=None, se=None,
                  h_swish=None):
            infos = [l_type, f"input:{self.repr_shape(input_shape)}", f"output:{self.repr_shape(output_shape)}"]
            if l_type == "expanded_conv":
                infos += [f"expand:{mid}", f"kernel:{ks}", f"stride:{stride}", f"idskip:{id_skip}", f"se:{se}",
                          f"hs:{h_swish}"]
            self.keys.append("-".join(infos))
            return 0.0

    for a in space.sample(4, seed=11):
        supernet.set_active_subnet(ks=list(a.ks), e=list(a.e), d=list(a.d))
        theirs = supernet.get_active_subnet(preserve_weight=True).eval()
        ours = space.build(a).eval()
        shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
        assert shapes(theirs) == shapes(ours)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(1, 3, a.r, a.r)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in theirs.parameters()) == space.params(a)
        config = supernet.get_active_net_config()
        assert round(MBv3LatencyTable.count_flops_given_config(config, a.r) * 1e6) == space.macs(a)
        table = Keys()
        table.predict_network_latency_given_config(config, a.r)
        assert table.keys == op_signatures(a)
