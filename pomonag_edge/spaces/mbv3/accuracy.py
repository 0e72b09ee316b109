"""Once-for-All's released ImageNet top-1 predictor for w1.2 MobileNetV3 subnets (Cai et al., ICLR 2020).

It is OFA's *estimate* of a subnet's top-1 with weights inherited from the supernet, before any
fine-tuning; OFA fitted it on subnets at resolutions 160..224, so predictions outside that range are
flagged (``in_range``) and warned about. An MLP 128 -> 400 -> 400 -> 400 -> 1 on OFA's own features:
60 kernel one-hots + 60 expand one-hots (20 slots x 3, unused slots all zero) + 8 resolution one-hots
at ``(r - 112) // 16``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ...data.mbv3 import ofa_acc_predictor_path, specialized_subnets
from ...errors import ExtrapolationWarning, UserError
from .arch import DEPTH_OFFSET, EXPANDS, KERNELS, NUM_SLOTS, RES_OFFSET, RESOLUTIONS, SLOT_FEATURES, MBV3Arch

VALID_RESOLUTIONS = (160, 224)  # inclusive range OFA trained the predictor on
FEATURE_DIM = 2 * 3 * NUM_SLOTS + 8
WIDTH = 1.2


def ofa_features(archs: Sequence[MBV3Arch]) -> np.ndarray:
    """(n, 128) float32 in OFA's ``spec2feats`` layout."""
    x = np.zeros((len(archs), FEATURE_DIM), dtype=np.float32)
    for n, a in enumerate(archs):
        for i in range(NUM_SLOTS):
            if a.ks[i]:
                x[n, 3 * i + KERNELS.index(a.ks[i])] = 1
                x[n, 60 + 3 * i + EXPANDS.index(a.e[i])] = 1
        x[n, 120 + (a.r - 112) // 16] = 1
    return x


def in_range(archs: Sequence[MBV3Arch]) -> np.ndarray:
    """True where OFA's predictor is trustworthy (resolution 160..224)."""
    lo, hi = VALID_RESOLUTIONS
    return np.array([lo <= a.r <= hi for a in archs], dtype=bool)


def encoding_to_ofa_matrix() -> np.ndarray:
    """(160, 128) 0/1 matrix taking the space encoding (``MBV3Space.encode``) to OFA's features, so
    ``encode(archs) @ M == ofa_features(archs)``; it also maps soft (denoised) encodings, for gradients."""
    m = np.zeros((RES_OFFSET + len(RESOLUTIONS), FEATURE_DIM), dtype=np.float32)
    for i in range(NUM_SLOTS):
        for j in range(3):
            m[i * SLOT_FEATURES + j, 3 * i + j] = 1  # kernel
            m[i * SLOT_FEATURES + 3 + j, 60 + 3 * i + j] = 1  # expand
    for k, r in enumerate(RESOLUTIONS):
        m[RES_OFFSET + k, 120 + (r - 112) // 16] = 1
    assert DEPTH_OFFSET == NUM_SLOTS * SLOT_FEATURES  # depth one-hots map to nothing: zeroed slots carry depth
    return m


class OFAAccuracyPredictor:
    """``predict(archs, dataset="imagenet")`` -> ImageNet top-1 in percent, OFA's pre-fine-tuning estimate
    (w1.2 only). ``module`` maps the space encoding (n, 160) to percent, differentiably; OFA reads depth
    only from which slots are zero, so mask a soft encoding first (``MBV3Space.slot_mask``)."""

    name = "ofa-acc-predictor-w1.2"
    column_label = "OFA's ImageNet estimate %"  # how tables name its column: an estimate, not a measurement
    datasets = ("imagenet",)

    def __init__(self, path=None):
        import torch
        import torch.nn as nn

        self.model = nn.Sequential(nn.Linear(FEATURE_DIM, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
                                   nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 1))
        source = ofa_acc_predictor_path() if path is None else path
        with open(source, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()
        gather = nn.Linear(RES_OFFSET + len(RESOLUTIONS), FEATURE_DIM, bias=False)
        gather.weight.data = torch.from_numpy(encoding_to_ofa_matrix().T.copy())

        class Percent(nn.Module):
            def forward(self, y):
                return 100.0 * y.squeeze(-1)

        self.module = nn.Sequential(gather, self.model, Percent()).eval().requires_grad_(False)

    def describe(self, dataset: str) -> str:
        return f"{self.name}: OFA's ImageNet estimate before fine-tuning, extrapolated outside r 160..224"

    def note(self) -> str:
        """What a user should know about these numbers (``estimate_note``), printed beside them."""
        return estimate_note(self)

    def predict(self, archs: Sequence[MBV3Arch], dataset: str = "imagenet", warn: bool = True) -> np.ndarray:
        """Top-1 (%) per arch, float64 (n,). Archs outside r 160..224 are predicted but warned about."""
        import torch

        if dataset not in self.datasets:
            raise UserError(f"OFA's accuracy predictor is for ImageNet; dataset {dataset!r} is not available for mbv3")
        archs = list(archs)
        wrong = [a for a in archs if a.w != WIDTH]
        if wrong:
            raise UserError(f"OFA's accuracy predictor describes w{WIDTH} subnets only; got w{wrong[0].w} "
                            f"({len(wrong)} arch(s))")
        if len(archs) == 0:
            return np.zeros(0)
        ok = in_range(archs)
        if warn and not ok.all():
            warnings.warn(f"{int((~ok).sum())} arch(s) have a resolution outside 160..224, where OFA's accuracy "
                          "predictor was not fitted; their accuracy is a rough extrapolation", ExtrapolationWarning,
                          stacklevel=2)
        with torch.no_grad():
            y = self.model(torch.from_numpy(ofa_features(archs))).squeeze(1).double().numpy()
        return 100.0 * y


COLUMN_LABEL = OFAAccuracyPredictor.column_label


def finetuned_offset(predictor: "OFAAccuracyPredictor | None" = None) -> dict:
    """How OFA's estimate compares with measured top-1 on OFA's fine-tuned specialized w1.2 subnets (shipped,
    resolution 160..224): ``n``, mean ``offset_points`` (estimate - measured), ``spearman``, and
    ``loo_mae_points``: the mean error left after subtracting the offset learned from the other nets (held out
    one at a time). Predictions stay OFA's estimate; this says how far it reads from a fine-tuned net."""
    from scipy.stats import spearmanr

    predictor = predictor or OFAAccuracyPredictor()
    rows = [s for s in specialized_subnets()
            if s["w"] == WIDTH and VALID_RESOLUTIONS[0] <= s["r"] <= VALID_RESOLUTIONS[1]]
    pred = predictor.predict([MBV3Arch(s["ks"], s["e"], s["d"], s["r"], s["w"]) for s in rows], warn=False)
    diff = pred - np.array([s["top1"] for s in rows])
    loo = np.array([np.delete(diff, i).mean() for i in range(len(diff))])
    return {"n": len(rows), "offset_points": float(diff.mean()),
            "spearman": float(spearmanr(pred, pred - diff)[0]), "loo_mae_points": float(np.abs(diff - loo).mean())}


def estimate_note(predictor: "OFAAccuracyPredictor | None" = None) -> str:
    """One line for users: what the mbv3 accuracy column is, and how far it reads from fine-tuned top-1."""
    f = finetuned_offset(predictor)
    return (f"mbv3 accuracy is OFA's ImageNet estimate (supernet weights, before fine-tuning), not a measurement: on "
            f"OFA's {f['n']} fine-tuned w1.2 subnets it reads {f['offset_points']:.1f} points high (rank correlation "
            f"{f['spearman']:.2f}); less that offset, held out one at a time, {f['loo_mae_points']:.2f} points off")
