"""Guidance composed from noise-aware predictors and the budget; the sampler only sees its gradient.

J(x_t, t) = sum_k w_k * sign_k * z_k(x_t, t)  -  rho * sum_c [ v_c + v_c^2 ]_+

z_k are the standardised predicted objectives (accuracy: sign +1, costs: sign -1), v_c the standardised
amount by which constrained objective c is predicted above its limit (so the pull grows with the
violation, linearly near the boundary and quadratically far from it). Two forms of the same J:

- ``make_guidance``: guidance_fn(x, t) = scale * dJ/dx with z_k from any noise-aware predictor (a distilled
  network works; the way for spaces too large to enumerate).
- ``make_tilted_guidance``: guidance_fn(x, t) = d/dx log E[exp(scale * J(x_0)) | x_t], J of the clean net,
  computed exactly from a table of every net (NB201); samples then follow p(x_0) exp(scale * J) instead of
  collapsing onto J's argmax, and one batch can carry several trade-off directions.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

MAXIMISE = frozenset({"accuracy"})


def make_guidance(predictor, weights: Mapping[str, float], limits: Mapping[str, float] | None = None, *,
                  scale: float = 1.0, penalty: float = 4.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``predictor`` is a NoiseAwarePredictor (``names``, ``mean``, ``std``, ``forward`` -> standardised).

    ``weights`` name -> weight, a number or a per-sample 1-D tensor (so one batch can spread over several
    trade-offs, as decomposition methods do); names the predictor lacks are an error;
    ``limits`` name -> upper bound in the objective's own units (None or missing: unconstrained).
    """
    names = list(predictor.names)
    for name in list(weights) + list(limits or {}):
        if name not in names:
            raise ValueError(f"guidance names {name!r}, but the predictor knows only {names}")
    columns = [torch.zeros(1)] * len(names)
    for name, value in weights.items():
        columns[names.index(name)] = torch.as_tensor(value, dtype=torch.float32).reshape(-1) * (
            1.0 if name in MAXIMISE else -1.0)
    w = torch.stack(torch.broadcast_tensors(*columns), dim=1)  # (1 or n, k)
    lim_idx, lim_z = [], []
    for name, limit in (limits or {}).items():
        if limit is None:
            continue
        j = names.index(name)
        lim_idx.append(j)
        lim_z.append((float(limit) - float(predictor.mean[j])) / float(predictor.std[j]))
    lim_idx_t, lim_z_t = torch.tensor(lim_idx, dtype=torch.long), torch.tensor(lim_z)

    def guidance_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            z = predictor(x, t)
            objective = (z * w).sum()
            if len(lim_idx):
                v = (z[:, lim_idx_t] - lim_z_t).clamp_min(0)
                objective = objective - penalty * (v + v**2).sum()
            (grad,) = torch.autograd.grad(objective, x)
        return scale * grad

    return guidance_fn


def make_tilted_guidance(posterior, directions: Sequence[Mapping[str, float]], assign: torch.Tensor,
                         limits: Mapping[str, float] | None = None, *, scale: float = 10.0, penalty: float = 4.0,
                         exclude=None, perplexity: float | None = None,
                         floor: float = -60.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact guidance for an enumerable space: grad_x log E[exp(scale * J_d(x_0)) | x_t], J_d as above with
    the weights of direction ``d = assign[i]`` for sample i.

    Why not ``make_guidance``'s grad E[J | x_t]: that pulls every sample towards the one argmax of J, so a
    batch collapses onto a few nets (21% functionally distinct on NB201), and at large t the mean of J over a broad
    posterior says little about where the best nets are. This term is instead the exact correction that
    turns the score of p(x_0) into that of the tilted law p(x_0) exp(scale * J(x_0)) / Z (exact when the
    posterior's slot-wise uniform prior is the model's): a Boltzmann law whose temperature 1/scale keeps the
    best few nets of each direction likely rather than one certain. Several ``directions`` (trade-offs)
    in one batch cover the front, as decomposition methods (MOEA/D) do.

    ``posterior`` is a ``PosteriorMeanPredictor`` (its standardised table of every net's objectives and its
    slot-wise posterior); ``exclude`` (one-hot encodings, (m, slots, choices)) gives those nets the floor
    weight, so a further round steers away from nets already proposed. ``perplexity``, if given, replaces
    ``scale`` by each direction's own: the one at which the tilted law over the table (uniform prior) spreads
    over that many nets, since one fixed scale is too hot where the objectives' spread is wide (CIFAR-10's
    best hundred nets lie within 0.3 points, 0.05 std of accuracy) and too cold where it is narrow.
    ``floor`` (nats below each direction's best) bounds the tilt so that log E never underflows; float64,
    as tilts span tens of nats.
    """
    names = list(posterior.names)
    for d in directions:
        for name in d:
            if name not in names:
                raise ValueError(f"guidance names {name!r}, but the predictor knows only {names}")
    Z = posterior.table.double()  # (N, k): row = op of slot 0 is the most significant digit
    slots, choices = posterior.slots, posterior.choices
    W = torch.tensor([[float(d.get(name, 0.0)) * (1.0 if name in MAXIMISE else -1.0) for name in names]
                      for d in directions], dtype=torch.float64)  # (K, k)
    violation = torch.zeros(len(Z), dtype=torch.float64)
    for name, limit in (limits or {}).items():
        if limit is None:
            continue
        j = names.index(name)
        v = (Z[:, j] - (float(limit) - float(posterior.mean[j])) / float(posterior.std[j])).clamp_min(0)
        violation = violation + v + v**2
    J = Z @ W.T - penalty * violation[:, None]  # (N, K)
    excluded = torch.zeros(len(Z), dtype=torch.bool)
    if exclude is not None and len(exclude):
        ops = torch.as_tensor(np.asarray(exclude)).argmax(-1)  # (m, slots) -> table rows, slot 0 most significant
        excluded[(ops * choices ** torch.arange(slots - 1, -1, -1)).sum(1)] = True
    J = J.masked_fill(excluded[:, None], float("-inf"))
    scales = torch.full((len(directions),), float(scale), dtype=torch.float64)
    if perplexity is not None:
        scales = torch.tensor([_scale_for_perplexity(J[:, d], perplexity) for d in range(len(directions))],
                              dtype=torch.float64)
    log_tilt = (scales * (J - J.max(0).values)).nan_to_num(neginf=floor).clamp_min(floor)
    tilt = torch.exp(log_tilt)
    assign = torch.as_tensor(assign, dtype=torch.long)
    groups = [(d, torch.nonzero(assign == d).flatten()) for d in range(len(directions))]
    groups = [(tilt[:, d].reshape(choices, -1), idx) for d, idx in groups if len(idx)]

    def guidance_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(x) != len(assign):
            raise ValueError(f"guidance was built for {len(assign)} samples, got {len(x)}")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            alpha, std = posterior.sde.marginal_prob(torch.ones(len(t)), t)
            p = torch.softmax(x * (alpha / std**2).reshape(-1, 1, 1), dim=-1).double()  # (n, slots, choices)
            objective = x.new_zeros((), dtype=torch.float64)
            for table, idx in groups:  # E[tilt | x_t], contracted one slot at a time as the posterior mean is
                pd = p[idx]
                out = pd[:, 0] @ table
                for s in range(1, slots):
                    out = torch.bmm(pd[:, s : s + 1, :], out.reshape(len(idx), choices, -1))
                objective = objective + torch.log(out.reshape(-1).clamp_min(1e-300)).sum()
            (grad,) = torch.autograd.grad(objective, x)
        return grad.to(x.dtype)

    return guidance_fn


def trade_off_directions(weights: Mapping[str, float], count: int, *, low: float = 0.01, high: float = 30.0,
                         jitter: float = 0.5, seed: int = 0) -> list[dict[str, float]]:
    """``count`` weightings around ``weights`` (objective name -> weight) that sweep the front: the cost
    weights scaled together by factors log-spaced from ``low`` (accuracy first) to ``high`` (cost first),
    each cost then by its own seeded log-normal factor exp(jitter * N(0, 1)) so the costs also trade
    among themselves; each direction L1-normalised, so one scale means one temperature for all.
    """
    rng = np.random.default_rng(seed)
    out = []
    for f in np.geomspace(low, high, count) if count > 1 else [1.0]:
        d = {}
        for name, w in weights.items():
            w = float(w)
            if name not in MAXIMISE:
                w *= float(f) * float(np.exp(jitter * rng.standard_normal()))
            if w:
                d[name] = w
        total = sum(d.values()) or 1.0
        out.append({k: v / total for k, v in d.items()})
    return out


def _scale_for_perplexity(J: torch.Tensor, perplexity: float, iters: int = 60) -> float:
    """The scale at which softmax(scale * J) over the finite entries of J has perplexity exp(H) = ``perplexity``
    (bisection on the log scale; the perplexity falls as the scale grows)."""
    J = J[torch.isfinite(J)]
    if len(J) <= perplexity:
        return 0.0
    J = J - J.max()
    lo, hi = -8.0, 12.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        p = torch.softmax(float(np.exp(mid)) * J, 0)
        h = -(p * torch.log(p.clamp_min(1e-300))).sum()
        lo, hi = (mid, hi) if float(torch.exp(h)) > perplexity else (lo, mid)
    return float(np.exp((lo + hi) / 2))
