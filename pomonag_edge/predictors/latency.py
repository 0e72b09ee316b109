"""The latency model, one family for every space: a shared arch embedding pretrained on measured devices, and
a per-device head fitted from a few timings.

Why this shape: across the shipped tables, log-latency on every device is close to a linear function of one
small learned embedding of the arch, ``log ms ~ w_d . phi(arch) + b_d``. The training devices' heads
``(w_d, b_d)`` form a prior over what a device looks like, so a new device needs only a handful of whole-net
timings: its head is the posterior mean under a mixture prior (``fewshot.mixture_head``; HELP's idea in closed
form). Where the shipped tables hold every net of the space, a *sibling-table* model (``fewshot.sibling_fit``) is
averaged in log space with the head: a sibling device's table carries structure no low-rank embedding keeps. What
is space-specific (the embedding network, its inputs, the tables) is the space's ``latency_recipe``.

A device unlike every shipped one must not be forced into their mould: the adapted model weighs candidate
explanations (the head, the sibling tables, their average, and a cost proxy: log-linear in MACs, so that a
model falling back entirely ranks nets as MACs-only does) by how well each predicts the K timings held out
one at a time (``fewshot.fit_candidates``, ``fewshot.candidate_weights``). Few timings or a foreign device lean
on the proxies; many timings of a familiar kind lean on the tables. Where the candidates disagree, or a net is
unlike the timed ones, its own sigma of log-ms widens (``fewshot.blend_log_sigma``): the budget test uses a
per-net quantile, not one global margin.

Where each part lives: this module chooses and fits a profile's model (``latency_model_for``,
``fit_profile_model``, ``fit_calibration``); ``latency_pretrain`` pretrains and loads the embedding
(``PretrainedEmbedding``); ``latency_model`` holds the model classes; ``fewshot`` the few-shot fit, shared
with the accuracy model.
"""

from __future__ import annotations

import numpy as np

from ..errors import ProfileError, UserError
from ..fields import record
from .latency_model import HeadModel, LatencyModel, LutModel, ProxyModel, TableModel
from .latency_pretrain import PretrainedEmbedding, load_pretrained

MIN_CALIBRATION = 3


def calibration_timings(space, profile) -> tuple[list, list[float]]:
    """A profile's calibration archs and measured ms; none at all is the user's to fix."""
    if not profile.calibration:
        raise ProfileError(f"profile {profile.name!r} has no calibration timings: the latency model needs "
                           f"at least {MIN_CALIBRATION} (`pomonag-edge calibrate` adds them)")
    return ([space.parse(item["arch"]) for item in profile.calibration],
            [float(item["latency_ms"]) for item in profile.calibration])


def _pretrained(space, pretrained):
    if pretrained is not None or space.latency_recipe is None:
        return pretrained
    return load_pretrained(space)


def fit_calibration(space, archs, latency_ms, pretrained: PretrainedEmbedding | None = None,
                    profile=None) -> LatencyModel:
    """Adapt to measured (arch, ms) pairs: a profile with its own LUT gets ``LutModel``; otherwise the pretrained
    head under its prior (``HeadModel``), or the cost proxies where the space has no pretrained embedding."""
    archs, latency_ms = list(archs), np.asarray(latency_ms, dtype=np.float64)
    if len(latency_ms) < MIN_CALIBRATION:
        raise UserError(f"the latency model needs at least {MIN_CALIBRATION} calibration timings, "
                        f"got {len(latency_ms)}")
    if profile is not None and profile.lut:
        return LutModel.fit(space, profile, archs, latency_ms)
    pre = _pretrained(space, pretrained)
    if pre is None:
        return ProxyModel.fit(space, None if profile is None else profile.dataset, archs, latency_ms)
    return HeadModel.fit(pre, archs, latency_ms)


def _fit(space, profile, pretrained=None) -> LatencyModel:
    profile.require_space(space)
    if profile.reference:
        pre = _pretrained(space, pretrained)
        return TableModel(pre, profile.reference) if pre.covers_space else HeadModel.reference(pre, profile.reference)
    return fit_calibration(space, *calibration_timings(space, profile), pretrained, profile)


def fit_profile_model(space, profile, pretrained: PretrainedEmbedding | None = None) -> dict:
    """The JSON state of the latency model fitted to ``profile`` (stored in ``profile.latency_model``)."""
    return _fit(space, profile, pretrained).to_state()


def check_state(state, where: str) -> None:
    """``fields`` check of a profile's stored ``latency_model``: a state of this version's kinds field by field
    (each model's ``state_spec``); any other is refitted from the timings, so any object (or null) goes."""
    for cls in (LutModel, ProxyModel, HeadModel):
        if isinstance(state, dict) and state.get("kind") == cls.kind and state.get("version") == cls.version:
            return cls.state_spec()(state, where)
    record(optional=True)(state, where)


def latency_model_for(space, profile, pretrained: PretrainedEmbedding | None = None) -> LatencyModel:
    """The profile's latency model: its stored state where still valid (same LUT, same embedding), else refitted."""
    profile.require_space(space)
    state = profile.latency_model
    if isinstance(state, dict) and not profile.reference:
        model = LutModel.from_state(space, profile, state) or ProxyModel.from_state(space, profile, state)
        if model is None and state.get("kind") == HeadModel.kind and space.latency_recipe is not None:
            model = HeadModel.from_state(_pretrained(space, pretrained), state)
        if model is not None:
            return model
    return _fit(space, profile, pretrained)
