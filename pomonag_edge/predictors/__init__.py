"""Predictors of the objectives: exact costs (params, MACs), latency from a profile, accuracy per dataset.

Public API (other parts call these): ``fit_profile_model``, ``latency_model_for`` -> ``LatencyModel``
(``predict_ms``, ``relative_error``, ``margin_ms``, ``log_ms_torch``), ``load_accuracy_predictor`` ->
``AccuracyPredictor`` (``predict``, ``module``), and ``predict_rows`` for the ``predict`` command.
Submodules import torch lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Sequence

from ..spaces import Arch, SearchSpace


def _latency_module(space):
    """The latency model's module for a space: nb201 ``latency``, mbv3 ``latency_mbv3`` (same functions)."""
    if space.name == "mbv3":
        from . import latency_mbv3 as module
    else:
        from . import latency as module
    return module


def _same_space_reference(space, profile):
    """A reference name means that setting in the space asked for (``2080ti_1`` names one in both spaces)."""
    if profile.reference and profile.space != space.name:
        from ..profile import reference_profile

        return reference_profile(profile.reference, space.name)
    return profile


def fit_profile_model(space, profile, pretrained=None) -> dict:
    """JSON state of the latency model fitted to ``profile`` (store it in ``profile.latency_model``)."""
    return _latency_module(space).fit_profile_model(space, profile, pretrained)


def latency_model_for(space, profile, pretrained=None):
    """The ``LatencyModel`` of ``profile``: its stored fit, or refitted from its calibration timings."""
    return _latency_module(space).latency_model_for(space, _same_space_reference(space, profile), pretrained)


def load_accuracy_predictor(space_name: str = "nb201", path=None):
    """The shipped accuracy predictor: ``.predict(archs, dataset)`` in percent, ``.module`` its torch net.
    mbv3: OFA's released ImageNet predictor (``ofa_accuracy``), OFA's estimate, fitted on r 160..224."""
    if space_name == "mbv3":
        from .ofa_accuracy import OFAAccuracyPredictor

        return OFAAccuracyPredictor(path)
    from .accuracy import load_accuracy_predictor as load

    return load(space_name, path)


def predict_rows(space: SearchSpace, archs: Sequence[Arch], dataset: str | None = None,
                 profile: str | None = None) -> list[dict]:
    """One dict per arch, in input order: ``arch, params, macs`` (+ ``latency_ms``, ``accuracy``)."""
    from ..dataset_profile import resolve_dataset

    if dataset is not None:
        dataset = resolve_dataset(dataset, space)  # a shipped name, or a user task's dataset profile
    rows = [{"arch": str(a), "params": space.params(a, dataset), "macs": space.macs(a, dataset)} for a in archs]
    if profile is not None:
        from ..profile import resolve_profile

        model = latency_model_for(space, resolve_profile(profile, space=space.name))
        for row, ms in zip(rows, model.predict_ms(archs)):
            row["latency_ms"] = round(float(ms), 4)
    if dataset is not None:
        if isinstance(dataset, str):
            predictor = load_accuracy_predictor(space.name)
        else:
            from ..dataset_profile import accuracy_model_of

            predictor = accuracy_model_of(dataset)
        for row, acc in zip(rows, predictor.predict(archs, dataset)):
            row["accuracy"] = round(float(acc), 3)
    return rows
