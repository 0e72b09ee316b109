"""Predictors of the objectives: exact costs (params, MACs), latency from a profile, accuracy per dataset."""

from __future__ import annotations

from typing import Sequence

from ..errors import UserError
from ..spaces import Arch, SearchSpace


def predict_rows(space: SearchSpace, archs: Sequence[Arch], dataset: str | None = None,
                 profile: str | None = None) -> list[dict]:
    """One dict per arch, in input order: ``arch, params, macs`` (+ ``latency_ms``, ``accuracy``)."""
    if profile is not None:
        raise UserError("--profile (latency_ms) is not available yet: it comes with the latency predictor")
    if dataset is not None:
        raise UserError("--dataset (accuracy) is not available yet: it comes with the accuracy predictor")
    return [{"arch": str(a), "params": space.params(a, dataset), "macs": space.macs(a, dataset)} for a in archs]
