"""Accuracy on a task no shipped table covers, adapted from a few measured (arch, accuracy) pairs.

The twin of the few-shot latency model, through the same fit (``fewshot.py``), with the shipped NB201 accuracy
tables in the role of the device tables: each shipped dataset is a task whose accuracy is known for all 15,625
nets. A net is described by ``task_features``: its normal score (rank, Gaussianised) on each shipped table, its
log params (standardised), and 1. A new task's accuracy, standardised over its measurements, is modelled as a linear
function of those features, fitted two ways and averaged (``fewshot.SIBLING_MIX``):

- a *head* under a mixture prior (``fewshot.mixture_head``): one narrow component per shipped task's head
  (how that task is explained by the other tables and params), one per single table, one on params alone,
  and a broad population Gaussian; the measurements weigh them by marginal likelihood;
- a *sibling fit* (``fewshot.sibling_fit``): every one- and two-column least-squares fit (tables and params),
  averaged with weights from their leave-one-out error.

No image encoder is involved: the user's task enters only through the measurements. The model knows its own
error: each measurement is predicted by a model fitted without it (leave-one-out), giving the error in
accuracy points and the rank correlation that ``generate`` reports.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..fields import FieldError, list_of, number, record, text
from .fewshot import ERROR_QUANTILE, SIBLING_MIX, cv_folds, mix_head_siblings, mixture_head, mixture_prior, sibling_fit

MODEL_KIND = "accuracy-fewshot"
MODEL_VERSION = 1
MIN_MEASUREMENTS = 5
HEAD_COV = 0.02  # narrow components: isotropic variance around each candidate head (standardised units)
POPULATION_VAR = 1.0  # broad component: isotropic variance around the mean head


def supports_tasks(space) -> bool:
    """Whether ``space`` can take a user task: every net enumerable, and measured accuracy tables of at least
    two shipped datasets to learn what a task looks like (``space.accuracy_table``; rows in ``enumerate`` order)."""
    size = space.size()
    return size is not None and size <= 10**6 and len(space.datasets) >= 2


@lru_cache(maxsize=None)
def _archs(space) -> tuple:
    return tuple(space.enumerate())


@lru_cache(maxsize=None)
def _table_scores(space, dataset: str) -> np.ndarray:
    """Normal scores of the ranks of one shipped table's accuracies, every net of the space, table order."""
    from scipy.stats import norm, rankdata

    acc = space.accuracy_table(dataset)
    return norm.ppf((rankdata(acc) - 0.5) / len(acc))


@lru_cache(maxsize=None)
def _log_params(space) -> np.ndarray:
    logp = np.log(np.array([space.params(a) for a in _archs(space)], dtype=np.float64))
    return (logp - logp.mean()) / logp.std()


@lru_cache(maxsize=None)
def task_features(space, datasets: tuple[str, ...]) -> np.ndarray:
    """(nets, D + 2): normal score on each table of ``datasets``, standardised log params, 1."""
    cols = [_table_scores(space, d) for d in datasets] + [_log_params(space), np.ones(len(_archs(space)))]
    return np.stack(cols, axis=1)


@lru_cache(maxsize=None)
def _connected(space) -> np.ndarray:
    return np.array([space.is_valid(a) for a in _archs(space)])


@lru_cache(maxsize=None)
def task_heads(space, datasets: tuple[str, ...]) -> np.ndarray:
    """Candidate heads over ``task_features(datasets)``: each shipped task explained by the *other* tables and
    params (least squares over connected nets; zero on its own column: a new task has no column of its own),
    each single table (identity), and params alone (least squares of each task, averaged)."""
    feats = task_features(space, datasets)
    ok = _connected(space)
    d = len(datasets)
    heads = []
    for t in range(d):
        cols = [j for j in range(d + 2) if j != t]
        coef = np.linalg.lstsq(feats[ok][:, cols], feats[ok, t], rcond=None)[0]
        h = np.zeros(d + 2)
        h[cols] = coef
        heads.append(h)
    for j in range(d):
        h = np.zeros(d + 2)
        h[j] = 1.0
        heads.append(h)
    params_only = np.mean([np.linalg.lstsq(feats[ok][:, [d, d + 1]], feats[ok, t], rcond=None)[0] for t in range(d)],
                          axis=0)
    h = np.zeros(d + 2)
    h[[d, d + 1]] = params_only
    heads.append(h)
    return np.array(heads)


def prior_components(space, datasets: tuple[str, ...]) -> list:
    heads = task_heads(space, datasets)
    p = heads.shape[1]
    return mixture_prior(heads.mean(axis=0), POPULATION_VAR * np.eye(p), heads, HEAD_COV * np.eye(p))


def _fit(feats: np.ndarray, y: np.ndarray, components) -> tuple:
    """(theta, sibling coef, sibling shift) in standardised units for measurements ``y`` (already standardised)."""
    theta, _ = mixture_head(feats, y, components)
    coef, shift = sibling_fit(feats[:, :-1], y)
    return theta, coef, shift


def _predict(feats: np.ndarray, theta, coef, shift) -> np.ndarray:
    return mix_head_siblings(feats @ theta, feats[:, :-1] @ coef + shift)


def _state_lengths(state: dict, where: str) -> None:
    p = len(state["tables"]) + 2  # a normal score per table, log params, bias
    for key, coef, n in (("head", state["head"], p), ("sibling.coef", state["sibling"]["coef"], p - 1)):
        if len(coef) != n:
            raise FieldError(f"{where}.{key}", f"holds {len(coef)} weight(s), not {n} (one per table of "
                                               f"{where}.tables, log params{', bias' if n == p else ''})")
    predictions = state["cv"].get("predictions")
    if predictions is not None and len(predictions) != state["n_measurements"]:
        raise FieldError(f"{where}.cv.predictions", f"holds {len(predictions)} item(s) but {where}.n_measurements "
                                                    f"says {state['n_measurements']}")


def state_spec():
    """The fields of a stored model's ``state`` (``FewShotAccuracyModel.to_dict``), for ``fields.check``."""
    return record({
        "kind": text(), "version": number(integer=True), "space": text(), "task": text(),
        "tables": list_of(text(), min_len=1), "features": list_of(text()),
        "y_mean": number(), "y_std": number(0, above=True), "head": list_of(number()),
        "sibling": record({"mix": number(0, 1), "coef": list_of(number()), "shift": number()},
                          required=("coef", "shift")),
        "cv": record({"method": text(), "error_quantile": number(0, 1), "error_points": number(0),
                      "mae_points": number(0), "spearman": number(-1, 1, finite=False, optional=True),
                      "predictions": list_of(number())}, required=("error_points",)),
        "n_measurements": number(MIN_MEASUREMENTS, integer=True),
    }, required=("tables", "y_mean", "y_std", "head", "sibling", "cv", "n_measurements"), rules=(_state_lengths,))


def is_current(state) -> bool:
    """Whether ``state`` is this version's stored model (else it is refitted from the measurements)."""
    return isinstance(state, dict) and state.get("kind") == MODEL_KIND and state.get("version") == MODEL_VERSION


class FewShotAccuracyModel:
    """``predict(archs)`` in percent for one task; ``state`` is its JSON form (stored in a dataset profile)."""

    def __init__(self, space, state: dict):
        self.space, self.state = space, state
        self.datasets = tuple(state["tables"])
        self.theta = np.asarray(state["head"], dtype=np.float64)
        self.coef = np.asarray(state["sibling"]["coef"], dtype=np.float64)
        self.shift = float(state["sibling"]["shift"])
        self.y_mean, self.y_std = float(state["y_mean"]), float(state["y_std"])
        self.name = state.get("task", "task")

    @property
    def error_points(self) -> float:
        """Cross-validated absolute error (accuracy points) that ``ERROR_QUANTILE`` of predictions stay within."""
        return float(self.state["cv"]["error_points"])

    def predict_index(self, index: np.ndarray) -> np.ndarray:
        """Percent for nets given by topology index. A disconnected net (its output ignores the input) gets
        the lowest prediction of any connected net: a linear model fitted to a few noisy probes can otherwise
        rank such nets first, and guidance would steer toward nets the search then drops."""
        index = np.asarray(index, dtype=np.int64)
        pred = np.clip(self.y_mean + self.y_std * _predict(task_features(self.space, self.datasets)[index],
                                                            self.theta, self.coef, self.shift), 0.0, 100.0)
        return np.where(_connected(self.space)[index], pred, self._floor())

    def _floor(self) -> float:
        if getattr(self, "_floor_value", None) is None:
            feats = task_features(self.space, self.datasets)[_connected(self.space)]
            self._floor_value = float(np.clip(self.y_mean + self.y_std * _predict(feats, self.theta, self.coef,
                                                                                  self.shift).min(), 0.0, 100.0))
        return self._floor_value

    def describe(self, dataset=None) -> str:
        return (f"few-shot accuracy model of dataset profile {self.name} "
                f"({self.state['n_measurements']} measured nets, no image encoder)")

    def predict(self, archs: Sequence, dataset=None) -> np.ndarray:
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        return self.predict_index(np.array([self.space.table_index(a) for a in archs]))

    def to_dict(self) -> dict:
        return self.state


def fit_fewshot(space, archs: Sequence, accuracy_percent: Sequence[float], datasets: Sequence[str] | None = None,
                task: str = "task", folds: int = 20) -> FewShotAccuracyModel:
    """Adapt to measured (arch, accuracy %) pairs of ``space`` (its shipped tables of ``datasets``, default all,
    as the prior); cross-validated (leave-one-out up to ``folds``)."""
    from scipy.stats import spearmanr

    if not supports_tasks(space):
        raise UserError(f"the {space.name} space cannot take a user task (it needs every net enumerable and "
                        "measured accuracy tables of several datasets)")
    datasets = tuple(datasets or space.datasets)
    y = np.asarray(accuracy_percent, dtype=np.float64)
    if len(y) < MIN_MEASUREMENTS:
        raise UserError(f"the accuracy model needs at least {MIN_MEASUREMENTS} measured nets, got {len(y)}")
    index = np.array([space.table_index(a) for a in archs])
    if len(set(index.tolist())) < MIN_MEASUREMENTS:
        raise UserError(f"the accuracy model needs at least {MIN_MEASUREMENTS} distinct nets, got {len(set(index))}")
    feats = task_features(space, datasets)[index]
    mean, std = float(y.mean()), float(y.std())
    if std < 1e-9:
        raise UserError(f"all {len(y)} measured accuracies are equal ({mean:g}): they say nothing about which "
                        "net is better (train the probes longer?)")
    comps = prior_components(space, datasets)
    theta, coef, shift = _fit(feats, (y - mean) / std, comps)
    cv = np.empty(len(y))
    for held in cv_folds(len(y), folds):
        ym, ys = y[~held].mean(), max(y[~held].std(), 1e-9)
        t, c, s = _fit(feats[~held], (y[~held] - ym) / ys, comps)
        cv[held] = ym + ys * _predict(feats[held], t, c, s)
    err = np.abs(cv - y)
    state = {
        "kind": MODEL_KIND, "version": MODEL_VERSION, "space": space.name, "task": task, "tables": list(datasets),
        "features": [f"normal score on {d}" for d in datasets] + ["log params (standardised)", "bias"],
        "y_mean": mean, "y_std": std, "head": [float(v) for v in theta],
        "sibling": {"mix": SIBLING_MIX, "coef": [float(v) for v in coef], "shift": float(shift)},
        "cv": {"method": f"leave-one-out up to {folds}, else {folds}-fold", "error_quantile": ERROR_QUANTILE,
               "error_points": float(np.quantile(err, ERROR_QUANTILE)), "mae_points": float(err.mean()),
               "spearman": float(spearmanr(cv, y)[0]) if len(y) > 2 else None,
               "predictions": [round(float(v), 4) for v in cv]},
        "n_measurements": int(len(y)),
    }
    return FewShotAccuracyModel(space, state)


def choose_probes(space, n: int, seed: int = 0, datasets: Sequence[str] | None = None, pool: int = 2000,
                  top_fraction: float = 0.5) -> list:
    """``n`` probe nets that inform the model: distinct connected functions from the upper ``top_fraction`` of
    the shipped tables' mean ranking, spread over the features the model reads (table scores and params) by
    greedy max-min distance within a seeded pool, starting from the net the tables rank best. Why: a pick
    under a budget is decided among good nets, and a spread design steadies a fit of a few coefficients;
    random probes cluster where most nets are. ``benchmarks/accuracy_fewshot.py`` compares the two."""
    datasets = tuple(datasets or space.datasets)
    feats = task_features(space, datasets)[:, :-1]
    rng = np.random.default_rng(seed)
    unique = unique_functions(space)
    prior = feats[unique, : len(datasets)].mean(axis=1)
    unique = unique[prior >= np.quantile(prior, 1 - top_fraction)]
    cand = rng.choice(unique, size=min(pool, len(unique)), replace=False)
    x = feats[cand]
    chosen = [int(np.argmax(x[:, : len(datasets)].mean(axis=1)))]
    dist = np.linalg.norm(x - x[chosen[0]], axis=1)
    while len(chosen) < min(n, len(cand)):
        k = int(np.argmax(dist))
        chosen.append(k)
        dist = np.minimum(dist, np.linalg.norm(x - x[k], axis=1))
    archs = _archs(space)
    return [archs[int(cand[k])] for k in chosen]


@lru_cache(maxsize=None)
def unique_functions(space) -> np.ndarray:
    """Table rows of one connected net per function (its canonical net), the pool probes are drawn from."""
    out = sorted({space.table_index(space.canonical(a)) for a in _archs(space) if space.is_valid(a)})
    return np.array(out)
