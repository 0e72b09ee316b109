"""Shipped Once-for-All MobileNetV3 tables (``data/ofa_mbv3/``), loaded lazily and cached.

- ``ofa_latency_table()``: HELP's 5,000 w1.2 subnets x 9 GPU settings (end-to-end ms); ``ofa_latency_settings()``
  their names (the mbv3 reference profiles).
- ``reference_lut(name)``: per-layer latency tables keyed as ``spaces.mbv3.op_signatures`` writes them:
  ``"i7-8700k"`` (NSGANetV2, Intel i7-8700K CPU, r 96..256 step 4, w1.0 and w1.2) and ``"note10"`` (OFA,
  Samsung Note10, w1.2, r 160..224 step 16). Both ship only a *mean* per layer (no median), so the
  values returned are those means, in ms.
- ``specialized_subnets()``: OFA's published specialized MobileNetV3 subnets with their fine-tuned top-1.
- ``ofa_acc_predictor_path()``: OFA's released ImageNet accuracy predictor (state_dict).
"""

from __future__ import annotations

import csv
import io
import json
from functools import lru_cache

import numpy as np
import yaml

from ..errors import UserError
from . import _read_csv, data_path

REFERENCE_LUTS = {"i7-8700k": ("lut_i7-8700k.yaml",),
                  "note10": tuple(f"lut_note10_w1.2/r{r}.yaml" for r in (160, 176, 192, 208, 224))}
REFERENCE_LUT_RESOLUTIONS = {"i7-8700k": tuple(range(96, 257, 4)), "note10": (160, 176, 192, 208, 224)}
REFERENCE_LUT_WIDTHS = {"i7-8700k": (1.0, 1.2), "note10": (1.2,)}


@lru_cache(maxsize=None)
def _lut_file(path: str) -> dict[str, dict[str, float]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(data_path("ofa_mbv3", *path.split("/")).read_text("utf-8"), Loader=loader)


@lru_cache(maxsize=None)
def reference_lut(name: str) -> dict[str, float]:
    """{LUT key: mean latency ms} of one shipped reference LUT.

    The Note10 LUT comes as one file per resolution; a few late-stage layers have the same shape at two
    resolutions (e.g. 6x6 at r176 and r192) and were timed in both: such a key gets the mean of both.
    """
    if name not in REFERENCE_LUTS:
        raise UserError(f"no shipped MobileNetV3 LUT named {name!r}; known: {', '.join(REFERENCE_LUTS)}")
    values: dict[str, list[float]] = {}
    for path in REFERENCE_LUTS[name]:
        for key, fields in _lut_file(path).items():
            values.setdefault(key, []).append(fields["mean"])
    return {key: float(np.mean(v)) for key, v in values.items()}


def ofa_latency_settings() -> tuple[str, ...]:
    """The table's 9 GPU setting names, without building its 5,000 archs."""
    header, _ = _read_csv("ofa_mbv3", "latency_ms.csv.gz")
    return tuple(header[5:])


@lru_cache(maxsize=None)
def ofa_latency_rows() -> tuple[tuple[str, ...], list[tuple[str, str, str, int]], np.ndarray]:
    """HELP's 5,000 w1.2 subnets as (setting names, [(ks, e, d, r) columns], ms (nets x 9 GPU settings));
    ``spaces.mbv3.ofa_latency_table`` makes archs of them."""
    header, rows = _read_csv("ofa_mbv3", "latency_ms.csv.gz")
    col = {name: j for j, name in enumerate(header)}
    cols = [(r[col["ks"]], r[col["e"]], r[col["d"]], int(r[col["r"]])) for r in rows]
    lat = np.array([[float(v) if v else np.nan for v in r[5:]] for r in rows], dtype=np.float64)
    return tuple(header[5:]), cols, lat


@lru_cache(maxsize=None)
def specialized_subnets() -> tuple[dict, ...]:
    """OFA's specialized MobileNetV3 subnets: name, w, r, ks, e, d (lists; 0 = unused slot), top1 (%),
    finetune_epochs. Rows for other nets (ProxylessNAS) are left out. Some use resolutions outside
    128..224 (up to 260), so they stay plain dicts rather than archs of the space."""
    text = data_path("ofa_mbv3", "specialized_subnets_top1.csv").read_text("utf-8")
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        if not row["ks"]:
            continue
        out.append({"name": row["name"], "w": float(row["width_mult"]), "r": int(row["r"]),
                    "ks": json.loads(row["ks"]), "e": json.loads(row["e"]), "d": json.loads(row["d"]),
                    "top1": float(row["top1"]), "finetune_epochs": int(row["finetune_epochs"])})
    return tuple(out)


def ofa_acc_predictor_path():
    """OFA's ImageNet top-1 predictor for w1.2 subnets (a state_dict; see spaces.mbv3.accuracy)."""
    return data_path("ofa_mbv3", "acc_predictor_w1.2.pth")
