"""Predictors of the objectives: exact costs (params, MACs) from the space, latency from a profile, accuracy
from the space's predictor.

Public API: ``fit_profile_model``, ``latency_model_for`` -> a ``latency_model.LatencyModel`` (``predict_ms``,
``relative_error``, ``log_sigma``, ``quantile_ms``, ``log_ms_torch``), ``load_accuracy_predictor``
(``predict(archs, dataset)`` in percent, ``describe(dataset)``), ``accuracy_predictor_for`` (the same for a
shipped dataset or a user task's dataset profile), ``search_predictors`` and ``table_predictors`` (a search's
``problem.Predictors``). A profile and a dataset profile are taken as they come (``Profile.in_space``,
``DatasetProfile.accuracy_predictor``): this package sits below the records it fits. Submodules import torch
lazily, so importing this package stays cheap.
"""

from __future__ import annotations

import copy
import warnings
from statistics import NormalDist

import numpy as np

from ..errors import ExtrapolationWarning
from ..problem import Predictors
from ..spaces import SearchSpace
from .latency import fit_profile_model
from .latency import latency_model_for as model_for


def with_timings(space, profile, timings: list[dict], refit: bool = True):
    """A copy of ``profile`` whose calibration holds ``timings`` too (a net timed again: the newer timing), its
    latency model refitted unless ``refit`` is False. ``generate --measure`` and export's feedback both add so."""
    if not timings:
        return profile
    new = copy.deepcopy(profile)
    timed = {t["arch"] for t in timings}
    new.calibration = [c for c in new.calibration if c["arch"] not in timed] + [dict(t) for t in timings]
    if refit:
        new.latency_model = fit_profile_model(space, new)
    return new


def latency_model_for(space, profile, pretrained=None):
    """The latency model of ``profile``: its stored fit, or refitted from its calibration timings."""
    return model_for(space, profile.in_space(space.name), pretrained)


def load_accuracy_predictor(space: SearchSpace):
    """The space's accuracy predictor (``space.accuracy_predictor``)."""
    return space.accuracy_predictor()


def accuracy_predictor_for(space: SearchSpace, dataset):
    """The accuracy predictor for ``dataset``: a shipped dataset's name -> the space's own predictor; a user task
    (a ``DatasetProfile``) -> its few-shot model, fitted from the task's measured nets. Both answer
    ``predict(archs, dataset)`` in percent and ``describe(dataset)``."""
    if dataset is None or isinstance(dataset, str):
        return space.accuracy_predictor()
    return dataset.accuracy_predictor()


def search_predictors(space, profile, dataset):
    """The product's predictors for a search: the profile's latency model (its per-net sigma of log-ms sets
    each net's margin; its relative error is the summary) and the space's accuracy predictor. A predictor's
    range caveat is stated once, in the source, not warned about on every scoring call."""
    lat = latency_model_for(space, profile)
    accp = accuracy_predictor_for(space, dataset)
    margin = float(lat.relative_error)

    def accuracy(archs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExtrapolationWarning)
            return np.asarray(accp.predict(archs, dataset), dtype=np.float64)

    source = {"latency": f"latency model of profile {profile.name}", "latency_relative_error": margin,
              "accuracy": accp.describe(dataset)}
    if getattr(accp, "error_points", None) is not None:  # a user task's model knows its cross-validated error
        source["accuracy_error_points"] = accp.error_points
    if hasattr(accp, "note"):  # what the column is, when it is not a plain prediction (OFA's ImageNet estimate)
        source["accuracy_label"], source["accuracy_note"] = accp.column_label, accp.note()
    return Predictors(accuracy=accuracy, latency_ms=lambda archs: np.asarray(lat.predict_ms(archs), dtype=np.float64),
                      margin=margin, source=source,
                      latency_log_sigma=lambda archs: np.asarray(lat.log_sigma(archs), dtype=np.float64),
                      **measured_values(space, profile, dataset, accp))


def measured_values(space, profile, dataset, accuracy_model=None) -> dict:
    """What has been measured, as ``Predictors`` takes it: the profile's calibration timings (``measured_latency_ms``),
    a user task's measured accuracies (``measured_accuracy``) and its accuracy model's sigma in points (from its
    cross-validated error, read as the two-sided ``error_quantile`` of a normal error)."""
    key = lambda arch: str(space.parse(arch))  # noqa: E731 - one spelling per net
    latency = {key(c["arch"]): float(c["latency_ms"]) for c in profile.calibration} if not profile.reference else {}
    out = {"measured_latency_ms": latency}
    if dataset is not None and not isinstance(dataset, str):
        out["measured_accuracy"] = {key(m["arch"]): float(m["accuracy"]) for m in dataset.measurements}
        cv = getattr(accuracy_model, "state", {}).get("cv", {})
        if cv.get("error_points") is not None:
            out["accuracy_sigma"] = float(cv["error_points"]) / NormalDist().inv_cdf(0.5 + cv["error_quantile"] / 2)
    return out


def table_predictors(space, dataset: str, device: str):
    """A space's shipped measured tables as predictors (exact): the benchmarks' oracle and the tests'."""
    acc, lat = space.accuracy_table(dataset), space.reference_latency_ms(device)
    return Predictors(accuracy=lambda archs: acc[[space.table_index(a) for a in archs]],
                      latency_ms=lambda archs: lat[[space.table_index(a) for a in archs]],
                      margin=0.0, source={"accuracy": f"{space.name} table ({dataset})", "latency": f"table {device}"})
