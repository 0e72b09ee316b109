"""The few-shot fit shared by the latency and the accuracy model: a target known on many shipped tables (devices'
log-ms, datasets' accuracies), adapted from K measurements of a new one.

The new target is linear in a few features; the shipped tables say what such a target usually looks like:

- ``mixture_head``: the posterior-mean head under a mixture prior (``mixture_prior``: one narrow component per
  shipped head, a broad population Gaussian), the measurements weighing the components by marginal likelihood;
- ``sibling_fit``: every one- and two-table least-squares fit, averaged by leave-one-out error (``ols_loo``);
- ``mix_head_siblings``: the two averaged (``SIBLING_MIX``);
- ``fit_candidates``, ``candidate_weights``, ``blend_candidates``, ``blend_log_sigma`` (latency): those and the
  cost proxies (``PROXIES``) weighed by their held-out predictions, with a per-net sigma of the blend.

Only numpy here (scipy for one quantile): no space, profile or model class.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

SIBLING_MIX = 0.5  # weight of the sibling-table fit in the average with the head (the rest: the head)
ERROR_QUANTILE = 0.9  # the quantile of cross-validated errors a model states as its error
Z90 = 1.2815515655446004  # standard normal quantile at ERROR_QUANTILE: a constant sigma's margin is its q90
POPULATION_WEIGHT = 0.2  # prior weight of the broad population Gaussian; the rest is split over the shipped heads
NOISE_GRID = np.geomspace(0.005, 0.5, 41)  # candidate noise std of the target (log-ms for latency)
MIN_LOG_SIGMA = 0.02  # a per-net sigma never below this: re-timing the same net differs by a few percent
KAPPA_PRIOR_TIMINGS = 5  # the blend's own variance counts as this many held-out timings when kappa is fitted
# Cost-proxy candidates: name -> columns of the proxy features (log MACs). MACs alone: a fall-back that ranks
# exactly as MACs-only does. Each extra explanation is one more chance for a few noisy timings to crown a wrong one.
PROXIES = {"macs": (0,)}


def ols_loo(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares of ``y`` on ``design`` and each measurement's leave-one-out residual in closed form,
    ``(fit_i - y_i) / (1 - h_ii)`` through the hat matrix: (coef, loo residuals, pseudo-inverse).

    ``design`` is one (n, k) matrix or a stack (c, n, k) of candidate designs for the same ``y``. A stack's
    fitted values are its einsum contraction, one design's its matrix product: the arithmetic the shipped
    fits were made with, so their numbers stay bit for bit."""
    pinv = np.linalg.pinv(design)
    coef = pinv @ y
    hat = np.clip(np.einsum("...nk,...kn->...n", design, pinv), 0, 1 - 1e-9)
    fit = design @ coef if design.ndim == 2 else np.einsum("cnk,ck->cn", design, coef)
    return coef, (fit - y) / (1 - hat), pinv


def cv_folds(n: int, folds: int) -> list[np.ndarray]:
    """Held-out masks of a cross-validation over ``n`` measurements: leave-one-out up to ``folds`` of them,
    ``folds``-fold beyond (measurement i in fold i mod ``folds``)."""
    group = np.arange(n) % min(folds, n)
    return [group == g for g in np.unique(group)]


def mixture_prior(mean: np.ndarray, cov: np.ndarray, heads, head_cov: np.ndarray) -> list:
    """Mixture components ``(weight, mean, cov)`` for ``mixture_head``: the population Gaussian ``(mean, cov)``
    of weight ``POPULATION_WEIGHT``, and one narrow component ``(head, head_cov)`` per shipped head."""
    comps = [(POPULATION_WEIGHT, mean, cov)]
    comps += [((1 - POPULATION_WEIGHT) / len(heads), head, head_cov) for head in heads]
    return comps


def _log_evidence(design, y, mean, cov, noise_std) -> float:
    r = y - design @ mean
    c = design @ cov @ design.T + noise_std**2 * np.eye(len(y))
    return -0.5 * (np.linalg.slogdet(c)[1] + r @ np.linalg.solve(c, r))


def _posterior_mean(design, y, mean, cov, noise_std) -> np.ndarray:
    prec = np.linalg.inv(cov)
    a = design.T @ design / noise_std**2 + prec
    return np.linalg.solve(a, design.T @ y / noise_std**2 + prec @ mean)


def mixture_head(design: np.ndarray, y: np.ndarray, components) -> tuple[np.ndarray, float]:
    """Posterior-mean head under a mixture-of-Gaussians prior ``[(weight, mean, cov), ...]``.

    Why a mixture: a new device usually resembles a few training devices (the same GPU at another batch,
    a sibling phone) more than their average; each training head is a narrow component, the population
    Gaussian a broad one, and the few timings weigh them by marginal likelihood (noise std marginalised
    over ``NOISE_GRID``). Returns (theta, posterior-mean noise std).
    """
    theta, noise, _ = _mixture(design, y, components)
    return theta, noise


def _mixture(design, y, components) -> tuple[np.ndarray, float, np.ndarray]:
    """``mixture_head``'s (theta, noise std) and the prior covariance its components weigh to (for leverage)."""
    logs, thetas, noises, covs = [], [], [], []
    for weight, mean, cov in components:
        for sd in NOISE_GRID[::4]:
            logs.append(math.log(weight) + _log_evidence(design, y, mean, cov, sd))
            thetas.append(_posterior_mean(design, y, mean, cov, sd))
            noises.append(sd)
            covs.append(cov)
    logs = np.array(logs)
    w = np.exp(logs - logs.max())
    w /= w.sum()
    return w @ np.array(thetas), float(w @ np.array(noises)), np.einsum("k,kij->ij", w, np.array(covs))


def sibling_fit(tables: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """``y ~ sum_j coef_j * log ms_j + shift``: the leave-one-out-weighted average of every one- and
    two-sibling least-squares fit, collapsed into one linear map of the D tables.

    ``tables``: (n, D) log-ms of the calibration nets on the D training devices. Returns (coef (D,), shift).
    Fits of two or three parameters cannot overfit 10 timings; the leave-one-out error (closed form through the
    hat matrix) says which to trust, and pairs reach devices that sit between two training devices.
    """
    n, dev = tables.shape
    groups = [np.arange(dev)[:, None]]  # each group: (candidates, size) device indices
    if dev > 1:
        groups.append(np.array(list(itertools.combinations(range(dev), 2))))
    fits, loo = [], []  # per group: (candidates, size + 1) coefficients, (candidates,) leave-one-out MSE
    for idx in groups:
        design = np.concatenate([tables[:, idx].transpose(1, 0, 2), np.ones((len(idx), n, 1))], axis=2)
        c, residuals, _ = ols_loo(design, y)
        loo.append(np.mean(residuals ** 2, axis=1))
        fits.append(c)
    loo = np.concatenate(loo)
    weights = np.exp(-(loo - loo.min()) / (loo.min() + 1e-12))
    weights = np.split(weights / weights.sum(), np.cumsum([len(idx) for idx in groups])[:-1])
    coef, shift = np.zeros(dev), 0.0
    for idx, c, w in zip(groups, fits, weights):
        for k in range(idx.shape[1]):
            np.add.at(coef, idx[:, k], w * c[:, k])
        shift += float(w @ c[:, -1])
    return coef, shift


def mix_head_siblings(head, siblings):
    """The head and the sibling fit averaged, ``SIBLING_MIX`` on the siblings: predictions or coefficients."""
    return (1 - SIBLING_MIX) * head + SIBLING_MIX * siblings


def _proxy_design(proxies: np.ndarray, cols) -> np.ndarray:
    return np.hstack([proxies[:, list(cols)], np.ones((len(proxies), 1))])


def fit_candidates(design: np.ndarray, tables: np.ndarray | None, proxies: np.ndarray, y: np.ndarray,
                   components, folds: int = 10) -> list[dict]:
    """Every candidate model of a device's log-ms, each fitted on all K timings, with its held-out predictions.

    Candidates: the embedding head (``mixture_head``), the sibling tables (``sibling_fit``) and their
    ``SIBLING_MIX`` average where tables cover the space, and the cost proxies (``PROXIES``: log-linear in log
    MACs). Each is a vector ``coef`` over the joint features ``[phi, 1, tables..., log MACs]`` (see
    ``joint_features``), plus ``loo`` (each timing predicted by a fit without it: leave-one-out
    up to ``folds`` timings, ``folds``-fold beyond) and ``lev`` (columns and inverse Gram matrix for the
    leverage of a new net). Why: 31 shipped devices say what a device usually looks like; K timings say which
    of these explanations this device supports, and a device unlike all of them falls back to its costs.
    """
    n, de = design.shape
    dt = 0 if tables is None else tables.shape[1]
    nf = de + dt + proxies.shape[1]
    emb = ["head"] + ([] if tables is None else ["siblings", "head+siblings"])
    loo = {name: np.empty(n) for name in emb}
    for held in cv_folds(n, folds):
        keep = ~held
        theta, _ = mixture_head(design[keep], y[keep], components)
        head = design[held] @ theta
        loo["head"][held] = head
        if tables is not None:
            coef, shift = sibling_fit(tables[keep], y[keep])
            sib = tables[held] @ coef + shift
            loo["siblings"][held] = sib
            loo["head+siblings"][held] = mix_head_siblings(head, sib)
    theta, noise, cov = _mixture(design, y, components)
    gram_inv = np.linalg.inv(design.T @ design + noise**2 * np.linalg.inv(cov))
    lev = {"columns": list(range(de)), "gram_inv": gram_inv, "loo": _loo_leverage(design, gram_inv)}
    head_coef = np.zeros(nf)
    head_coef[:de] = theta
    out = [{"name": "head", "coef": head_coef, "loo": loo["head"], "lev": lev, "noise": noise}]
    if tables is not None:
        coef, shift = sibling_fit(tables, y)
        sib_coef = np.zeros(nf)
        sib_coef[de - 1], sib_coef[de:de + dt] = shift, coef  # the bias column of ``design`` carries the shift
        out.append({"name": "siblings", "coef": sib_coef, "loo": loo["siblings"], "lev": lev})
        out.append({"name": "head+siblings", "coef": mix_head_siblings(head_coef, sib_coef),
                    "loo": loo["head+siblings"], "lev": lev})
    for name, cols in PROXIES.items():
        pd = _proxy_design(proxies, cols)
        coef, residuals, pinv = ols_loo(pd, y)
        gi = pinv @ pinv.T  # (X^T X)^-1, for leverage
        full = np.zeros(nf)
        full[[de + dt + c for c in cols]] = coef[:-1]
        full[de - 1] = coef[-1]
        out.append({"name": name, "coef": full, "loo": y + residuals,
                    "lev": {"columns": [de + dt + c for c in cols] + [de - 1], "gram_inv": gi,
                            "loo": _loo_leverage(pd, gi)}})
    return out


def _loo_leverage(x: np.ndarray, gram_inv: np.ndarray) -> np.ndarray:
    """Leverage of each timed net with respect to the others, h / (1 - h): what ``1 + leverage`` of a new
    net is to the fit, its held-out counterpart."""
    h = np.clip(np.einsum("ni,ij,nj->n", x, gram_inv, x), 0, 1 - 1e-6)
    return h / (1 - h)


def candidate_weights(candidates: list[dict], y: np.ndarray) -> np.ndarray:
    """Pseudo-Bayesian model averaging on held-out predictions: weight ~ prior x (held-out MSE)^(-K/2).

    Each candidate's K held-out residuals are scored as Gaussian with its own held-out variance, so the weight
    sharpens with K: with 5 timings a 2x larger error costs a factor 5.7, with 20 a factor 1000. The prior
    gives each family of explanations one unit, split over its candidates (the shipped devices' head and
    tables; the cost proxies), not one unit per device: 31 shipped devices are one explanation, and cannot
    outvote the device's own timings."""
    mse = np.array([max(float(np.mean((c["loo"] - y) ** 2)), 1e-8) for c in candidates])
    family = [c["name"] in PROXIES for c in candidates]
    prior = np.array([1.0 / family.count(f) for f in family])  # each family (shipped devices, proxies) one unit
    logw = np.log(prior) - 0.5 * len(y) * np.log(mse)
    w = np.exp(logw - logw.max())
    return w / w.sum()


def blend_candidates(candidates: list[dict], weights: np.ndarray, y: np.ndarray, min_weight: float = 1e-4) -> dict:
    """The weighted model: joint coef, the kept candidates (weight, held-out RMS, leverage), the held-out
    relative errors of the blend, and ``kappa``, the factor that makes its per-net sigma match its held-out
    residuals, times a small-sample inflation (Student t over normal at the 90% level). kappa^2 is the mean
    squared held-out z-score shrunk towards 1 as a conjugate (inverse-gamma) prior would, the model's own variance
    counting as ``KAPPA_PRIOR_TIMINGS`` timings: K z-scores alone can be lucky."""
    from scipy.stats import t as student_t

    keep = [i for i in np.argsort(-weights) if weights[i] >= min_weight]
    w = weights[keep] / weights[keep].sum()
    cands = [candidates[i] for i in keep]
    loo = np.array([c["loo"] for c in cands])  # (C, K)
    mse = np.mean((loo - y) ** 2, axis=1)
    blend_loo = w @ loo
    lev = np.array([c["lev"]["loo"] for c in cands])
    var = w @ (mse[:, None] * (1 + lev) + (loo - blend_loo) ** 2)
    z2 = (blend_loo - y) ** 2 / var
    kappa = math.sqrt((KAPPA_PRIOR_TIMINGS + float(z2.sum())) / (KAPPA_PRIOR_TIMINGS + len(y)))
    kappa *= float(student_t.ppf(ERROR_QUANTILE, max(len(y) - 1, 1))) / Z90
    return {"coef": w @ np.array([c["coef"] for c in cands]), "kappa": kappa,
            "errors": np.abs(np.expm1(blend_loo - y)),
            "candidates": [{"name": c["name"], "weight": float(wi), "rms_log": float(np.sqrt(m)),
                            "coef": [float(v) for v in c["coef"]],
                            "leverage": {"columns": list(c["lev"]["columns"]),
                                         "gram_inv": np.asarray(c["lev"]["gram_inv"]).tolist()}}
                           for c, wi, m in zip(cands, w, mse)]}


def blend_log_sigma(features: np.ndarray, candidates: list[dict], kappa: float) -> np.ndarray:
    """Per-net sigma of log-ms: kappa x sqrt(sum_c w_c [rms_c^2 (1 + leverage_c(x)) + (f_c(x) - f(x))^2]),
    at least ``MIN_LOG_SIGMA`` (timings that one table fits exactly still meet re-measurement noise).

    Narrow where the candidates agree and the net sits among the timed ones (small leverage); wide where the
    explanations the timings could not tell apart disagree, or the net is unlike anything timed."""
    w = np.array([c["weight"] for c in candidates])
    preds = features @ np.array([c["coef"] for c in candidates]).T  # (n, C)
    mean = preds @ w
    var = np.zeros(len(features))
    for j, c in enumerate(candidates):
        x = features[:, c["leverage"]["columns"]]
        lev = np.einsum("ni,ij,nj->n", x, np.asarray(c["leverage"]["gram_inv"]), x)
        var += w[j] * (c["rms_log"] ** 2 * (1 + np.clip(lev, 0, None)) + (preds[:, j] - mean) ** 2)
    return np.maximum(kappa * np.sqrt(var), MIN_LOG_SIGMA)
