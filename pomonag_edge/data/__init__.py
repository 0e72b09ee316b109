"""Shipped benchmark tables, loaded lazily and cached. Sources and licences: NOTICE.md in this folder.

Every NB201 table is keyed by the NAS-Bench-201 topology ``index`` (0..15624); arrays returned here
are indexed by it. Latencies are milliseconds; NaN means "not measured".
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from ..errors import UserError

NB201_DATASETS = ("cifar10", "cifar100", "imagenet16-120")
_ACC_COLUMN = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16-120": "imagenet16_120"}
_LATENCY_FILES = {"latency_ms.csv.gz": "HELP / HW-NAS-Bench", "latency_brpnas_ms.csv.gz": "BRP-NAS / Eagle"}

HELP_GPUS = ("1080ti", "2080ti", "titanx", "titanxp", "titan_xp", "v100")  # HELP names GPU settings <gpu>_<batch>


def batch_of(setting: str) -> int:
    """The batch size a published latency setting (of either space's tables) was measured at (``<gpu>_<batch>``;
    1 otherwise)."""
    head, _, tail = setting.rpartition("_")
    return int(tail) if head in HELP_GPUS and tail.isdigit() else 1


def data_path(*parts: str):
    """A path to a shipped file (a Traversable usable with ``open``)."""
    return resources.files(__name__).joinpath(*parts)


@lru_cache(maxsize=None)
def _read_csv(*parts: str) -> tuple[list[str], list[list[str]]]:
    raw = data_path(*parts).read_bytes()
    if parts[-1].endswith(".gz"):
        raw = gzip.decompress(raw)
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    return rows[0], rows[1:]


def _column(header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    j = header.index(name)
    return np.array([float(r[j]) if r[j] != "" else np.nan for r in rows], dtype=np.float64)


@lru_cache(maxsize=None)
def nb201_arch_strings() -> tuple[str, ...]:
    """All 15,625 NB201 arch strings in topology-index order."""
    header, rows = _read_csv("nb201", "accuracy.csv.gz")
    idx = [int(r[0]) for r in rows]
    assert idx == list(range(len(rows))), "accuracy table must be sorted by index"
    return tuple(r[1] for r in rows)


def check_dataset(dataset: str) -> str:
    if dataset not in _ACC_COLUMN:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(NB201_DATASETS)}")
    return dataset


@lru_cache(maxsize=None)
def nb201_accuracy(dataset: str) -> np.ndarray:
    """Test accuracy (%) after 200 epochs (NATS-Bench), indexed by topology index."""
    header, rows = _read_csv("nb201", "accuracy.csv.gz")
    return _column(header, rows, _ACC_COLUMN[check_dataset(dataset)])


@dataclass(frozen=True)
class LatencyTable:
    """One measured device setting of the shipped NB201 latency tables."""

    name: str
    source: str
    file: str
    measured: int  # number of nets with a measurement


@lru_cache(maxsize=None)
def nb201_latency_tables() -> tuple[LatencyTable, ...]:
    """Every device setting in the shipped NB201 latency tables (HELP: 19, BRP-NAS: 13)."""
    tables = []
    for file, source in _LATENCY_FILES.items():
        header, rows = _read_csv("nb201", file)
        for name in header[2:]:
            col = _column(header, rows, name)
            tables.append(LatencyTable(name, source, file, int(np.isfinite(col).sum())))
    return tuple(tables)


@lru_cache(maxsize=None)
def nb201_latency_ms(device: str) -> np.ndarray:
    """Measured end-to-end latency (ms) of every NB201 net on one shipped device setting."""
    for table in nb201_latency_tables():
        if table.name == device:
            header, rows = _read_csv("nb201", table.file)
            return _column(header, rows, device)
    names = ", ".join(t.name for t in nb201_latency_tables())
    raise UserError(f"no shipped latency table named {device!r}; known: {names}")


@lru_cache(maxsize=None)
def naslib_costs() -> list[dict]:
    """NASLib's FLOPs (M) and params (M) for 725 nets per dataset, for checking our exact costs."""
    header, rows = _read_csv("nb201", "naslib_725_flops_params_valacc.csv.gz")
    names = {"cifar10": "cifar10", "cifar100": "cifar100", "ImageNet16-120": "imagenet16-120"}
    out = []
    for r in rows:
        d = dict(zip(header, r))
        out.append({"dataset": names[d["dataset"]], "index": int(d["nb201_idx"]), "arch": d["arch_str"],
                    "flops_M": float(d["flops_M"]), "params_M": float(d["params_MB"])})
    return out
