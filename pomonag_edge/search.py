"""The search, stated once: a problem (objectives, constraints, encoding) and interchangeable strategies.

Problem (as pymoo states one): objectives ``accuracy`` (maximised), ``latency_ms``, ``params``, ``macs``
(minimised); constraints G <= 0 for each budget given: ``latency_ms * (1 + margin) <= max_latency_ms``
(margin = the latency model's own relative error), ``params <= max_params``, ``macs <= max_macs``.
Strategies propose archs: ``Diffusion`` (guided score-based sampling), ``Exhaustive`` (every net of a
finite space), ``NSGA2`` (our own small NSGA-II over ``pareto.py``: the encoding is 6 genes of 5 values,
so pymoo's machinery buys nothing, while an in-house loop counts predictor calls exactly and adds no
dependency), ``RandomSearch``. ``run_search`` then decodes, drops invalid and functionally duplicate
nets, scores them, keeps the feasible non-dominated set and ranks it.

Files of a run (written by ``pomonag-edge generate``; the export stage reads them; keys are stable):

``pareto.json``: a JSON list in rank order; each item has ``rank`` (1-based), ``arch`` (canonical string),
``accuracy`` (predicted %, for ``dataset``), ``latency_ms`` (predicted, without margin),
``latency_ms_with_margin``, ``params``, ``macs`` (exact, for ``dataset``'s input), ``feasible`` (bool),
``front`` (0 = non-dominated among the feasible candidates), ``index`` (NB201 topology index).

``manifest.json``: ``schema`` ("pomonag-edge/run"), ``schema_version``, ``space``, ``dataset`` (a shipped
name, or a user task's name), ``dataset_profile`` (null, or for a user task {``spec``, ``file``, ``name``,
``sha256``, ``num_classes``, ``measurements``, ``accuracy_error_points``, ``accuracy_error_quantile``,
``accuracy_cv_spearman``}; the profile itself is copied to ``dataset.json`` beside it), ``profile`` {``spec``, ``name``, ``sha256``, ``reference``}, ``budget`` {``max_latency_ms``, ``max_params``,
``max_macs``}, ``margin`` (relative), ``latency_limit_ms`` (budget / (1 + margin)), ``weights``,
``strategy``, ``num``, ``samples``, ``seed``, ``predictors`` (what scored the nets), ``stats``,
``generator`` (checkpoint meta, diffusion only), ``versions``, ``created``, ``command``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import BudgetError, UserError
from .pareto import crowding_distance, non_dominated_sort
from .units import Budget

OBJECTIVES = ("accuracy", "latency_ms", "params", "macs")
WEIGHT_KEYS = {"accuracy": "accuracy", "latency": "latency_ms", "params": "params", "macs": "macs"}
DEFAULT_WEIGHTS = {"accuracy": 1.0, "latency": 0.5, "params": 0.1, "macs": 0.1}
STRATEGIES = ("diffusion", "exhaustive", "nsga2", "random")

Progress = Callable[[str, int, int], None]


def parse_weights(text: str | None) -> dict[str, float]:
    """``'accuracy=1,latency=0.5'`` -> weights by user name (missing names keep their defaults)."""
    weights = dict(DEFAULT_WEIGHTS)
    if text is None or not text.strip():
        return weights
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in WEIGHT_KEYS:
            raise UserError(f"cannot read weight {part.strip()!r}: expected name=value with name one of "
                            f"{', '.join(WEIGHT_KEYS)}, e.g. accuracy=1,latency=0.5")
        try:
            w = float(value)
        except ValueError:
            raise UserError(f"weight {name}={value.strip()!r} is not a number") from None
        if not np.isfinite(w) or w < 0:
            raise UserError(f"weight {name} must be a non-negative number, got {value.strip()!r}")
        weights[name] = w
    if weights["accuracy"] == 0 and not any(weights.values()):
        raise UserError("all weights are zero: give at least one objective a positive weight")
    return weights


# ---------------------------------------------------------------- clean predictors


@dataclass
class Predictors:
    """The clean predictors a search scores nets with; ``margin`` is the latency model's relative error."""

    accuracy: Callable[[Sequence], np.ndarray]
    latency_ms: Callable[[Sequence], np.ndarray]
    margin: float = 0.0
    source: dict = field(default_factory=dict)


def table_predictors(space, dataset: str, device: str) -> Predictors:
    """The shipped measured tables used as predictors (exact; the benchmark's oracle and the tests')."""
    from .data import nb201_accuracy, nb201_latency_ms

    if space.name != "nb201":
        raise UserError("measured tables exist for nb201 only")
    acc, lat = nb201_accuracy(dataset), nb201_latency_ms(device)
    return Predictors(accuracy=lambda archs: acc[[space.index(a) for a in archs]],
                      latency_ms=lambda archs: lat[[space.index(a) for a in archs]],
                      margin=0.0, source={"accuracy": f"nb201 table ({dataset})", "latency": f"table {device}"})


def predictors_for(space, profile, dataset: str) -> Predictors:
    """The product's predictors: the profile's latency model (its relative error is the margin) and the
    dataset-aware accuracy predictor. The only place the search touches ``pomonag_edge.predictors``."""
    from .predictors import latency_model_for, load_accuracy_predictor

    lat = latency_model_for(space, profile)
    margin = float(lat.relative_error)
    source = {"latency": f"latency model of profile {profile.name}", "latency_relative_error": margin,
              "accuracy": f"accuracy predictor ({space.name}, {dataset})"}
    if not isinstance(dataset, str):  # a user task: its dataset profile's few-shot model
        from .dataset_profile import accuracy_model_of

        accm = accuracy_model_of(dataset)
        source["accuracy"] = (f"few-shot accuracy model of dataset profile {dataset.name} "
                              f"({len(dataset.measurements)} measured nets)")
        source["accuracy_error_points"] = accm.error_points
        return Predictors(accuracy=lambda archs: np.asarray(accm.predict(archs), dtype=np.float64),
                          latency_ms=lambda archs: np.asarray(lat.predict_ms(archs), dtype=np.float64),
                          margin=margin, source=source)
    accp = load_accuracy_predictor(space.name)
    kw = {}
    if space.name == "mbv3":  # OFA's range caveat, stated once here rather than warned on every scoring call
        kw, source["accuracy"] = {"warn": False}, f"{accp.name}: OFA's estimate, extrapolated outside r 160..224"
    acc_fn = lambda archs: np.asarray(accp.predict(archs, dataset, **kw), dtype=np.float64)  # noqa: E731
    return Predictors(accuracy=acc_fn, latency_ms=lambda archs: np.asarray(lat.predict_ms(archs), dtype=np.float64),
                      margin=margin, source=source)


# ---------------------------------------------------------------- the problem


class SearchProblem:
    """Objectives and constraints of one request. ``evaluate`` memoises per arch and counts predictor calls."""

    n_obj, n_constr = len(OBJECTIVES), 3

    def __init__(self, space, dataset: str, budget: Budget, predictors: Predictors):
        self.space, self.dataset, self.budget, self.predictors = space, dataset, budget, predictors
        self.margin = float(predictors.margin)
        self.calls = 0  # distinct nets scored for the search itself (work like distillation not counted)
        self._cache: dict = {}
        self._counted: set = set()

    @property
    def latency_limit_ms(self) -> float | None:
        b = self.budget.max_latency_ms
        return None if b is None else b / (1.0 + self.margin)

    def evaluate(self, archs: Sequence, count: bool = True) -> dict[str, np.ndarray]:
        """Objectives of ``archs`` as arrays; ``count=False`` for work that is not the search (distillation)."""
        archs = list(archs)
        todo = [a for a in dict.fromkeys(archs) if a not in self._cache]
        if todo:
            acc = np.asarray(self.predictors.accuracy(todo), dtype=np.float64)
            lat = np.asarray(self.predictors.latency_ms(todo), dtype=np.float64)
            for a, ac, la in zip(todo, acc, lat):
                self._cache[a] = (float(ac), float(la), float(self.space.params(a, self.dataset)),
                                  float(self.space.macs(a, self.dataset)))
        if count:
            fresh = set(archs) - self._counted
            self._counted |= fresh
            self.calls += len(fresh)
        rows = np.array([self._cache[a] for a in archs], dtype=np.float64).reshape(-1, 4)
        return {name: rows[:, j] for j, name in enumerate(OBJECTIVES)}

    def F(self, scores: dict) -> np.ndarray:
        """Objective matrix, every column minimised."""
        return np.stack([-scores["accuracy"], scores["latency_ms"], scores["params"], scores["macs"]], axis=1)

    def G(self, scores: dict) -> np.ndarray:
        """Relative budget excess per constraint (<= 0 feasible; 0 where unconstrained)."""
        b = self.budget
        cols = []
        for value, limit in ((scores["latency_ms"] * (1 + self.margin), b.max_latency_ms),
                             (scores["params"], b.max_params), (scores["macs"], b.max_macs)):
            cols.append(np.zeros_like(value) if limit is None else value / limit - 1.0)
        return np.stack(cols, axis=1)

    def feasible(self, scores: dict) -> np.ndarray:
        return np.all(self.G(scores) <= 0, axis=1)

    def violation(self, scores: dict) -> np.ndarray:
        return np.clip(self.G(scores), 0, None).sum(axis=1)


# ---------------------------------------------------------------- strategies


class Exhaustive:
    """Every net of a finite space through the same predictors: the exact answer, the yardstick."""

    name = "exhaustive"

    def propose(self, problem: SearchProblem, samples: int, seed: int, progress: Progress | None = None) -> list:
        if problem.space.size() is None:
            raise UserError(f"--strategy exhaustive needs a finite space; {problem.space.name} is not enumerable")
        return list(problem.space.enumerate())


class RandomSearch:
    name = "random"

    def propose(self, problem, samples, seed, progress=None):
        return problem.space.sample(samples, seed)


class NSGA2:
    """NSGA-II (Deb et al. 2002) with constrained domination, uniform crossover and per-gene mutation over
    the categorical genes of the encoding (``generator.layout``: NB201 6 ops of 5; MobileNetV3 20 kernels,
    20 expand ratios, 5 depths of 3 values and a resolution of 25). Stops when ``samples`` distinct nets
    have been scored."""

    name = "nsga2"

    def __init__(self, pop_size: int = 40):
        self.pop_size = pop_size

    def propose(self, problem, samples, seed, progress=None):
        from .generator.layout import from_genes, gene_choices, to_genes

        space, rng = problem.space, np.random.default_rng(seed)
        counts = gene_choices(space)
        slots = len(counts)
        choices = int(counts[0]) if (counts == counts[0]).all() else counts  # a scalar keeps NB201's draws
        decode = lambda genes: space.decode(from_genes(space, genes))  # noqa: E731
        pop_size = max(4, min(self.pop_size, samples))
        pop = to_genes(space, space.encode(space.sample(pop_size, seed)))  # genes: the value id of every choice
        seen: dict = {}

        def score(genes):
            archs = decode(genes)
            for a in archs:
                seen.setdefault(a, None)
            s = problem.evaluate(archs)
            valid = np.array([space.is_valid(a) for a in archs])
            viol = problem.violation(s) + (~valid) * 1e3
            return problem.F(s), viol

        F, V = score(pop)
        stall = 0
        while len(seen) < samples and stall < 50:
            before = len(seen)
            # binary tournaments on (violation, rank, -crowding)
            key = _nsga_key(F, V)
            a, b = rng.integers(0, len(pop), (2, pop_size))
            parents = np.where(key[a] < key[b], a, b)
            mates = rng.permutation(parents)
            mask = rng.random((pop_size, slots)) < 0.5
            child = np.where(mask, pop[parents], pop[mates])
            mut = rng.random((pop_size, slots)) < 1.0 / slots
            child = np.where(mut, rng.integers(0, choices, (pop_size, slots)), child)
            # keep only as many new nets as the call budget allows
            new = [i for i, a in enumerate(decode(child)) if a not in seen]
            room = samples - len(seen)
            keep = np.array(sorted(set(range(pop_size)) - set(new[room:])), dtype=np.int64)
            child = child[keep]
            cF, cV = score(child)
            pop, F, V = np.concatenate([pop, child]), np.concatenate([F, cF]), np.concatenate([V, cV])
            order = np.argsort(_nsga_key(F, V), kind="stable")[:pop_size]
            pop, F, V = pop[order], F[order], V[order]
            stall = stall + 1 if len(seen) == before else 0
            if progress is not None:
                progress("nsga2", min(len(seen), samples), samples)
        return list(seen)


def _nsga_key(F: np.ndarray, V: np.ndarray) -> np.ndarray:
    """A sortable scalar per individual: feasible first by (front, -crowding), infeasible by violation."""
    key = np.empty(len(F))
    feas = V <= 0
    idx = np.flatnonzero(feas)
    if idx.size:
        for r, front in enumerate(non_dominated_sort(F[idx])):
            cd = crowding_distance(F[idx[front]])
            key[idx[front]] = r + 0.5 / (1.0 + np.nan_to_num(cd, posinf=1e9))
    key[~feas] = 1e6 + V[~feas]
    return key


class Diffusion:
    """Guided score-based diffusion: the shipped score network; noise-aware predictors built from the
    problem's clean predictors scored once over the whole space (``exact``: the closed-form posterior
    mean E[y | x_t]; ``distilled``: a small network trained to approximate it); guidance = weighted
    objectives + budget penalty.

    With the exact posterior (NB201) and ``tilted`` (the default) the guidance is ``make_tilted_guidance``
    over ``directions`` trade-offs in up to ``rounds`` duplicate-aware rounds (``_propose_tilted``). On
    benchmarks/generate.py's quick set (pixel3, cifar100, three budgets, product predictors, 512 samples) it
    moved diffusion from a top-net gap of 1.45 points / HV 0.962 of exhaustive's / function uniqueness 0.21
    (grad E[J | x_t], below) to 0.04 / 1.003 / 0.49 (exhaustive's gap: 0.04). Over three (device, dataset)
    pairs, ``perplexity`` 8 and 32 both gave HV 0.997-1.003 and exhaustive's gap; a fixed scale of 10 gave
    HV 0.991-0.999 and missed exhaustive's top net on CIFAR-10, whose best nets are 0.05 std apart; steering
    away from whole functions rather than single nets raised uniqueness from 0.19-0.28 to 0.49-0.54.
    Cost: ~14 s of CPU per 512-sample search here (rounds, 12 directions in float64), 6.6 s before.

    Otherwise (``distilled``, as MobileNetV3 needs, or ``tilted=False``): guidance = scale * grad E[J | x_t],
    sample i weighted by direction i mod ``directions`` of the same sweep. On MobileNetV3 (v100_1, three
    budgets, equal calls; benchmarks/generate.py --space mbv3) the sweep raised diffusion's hypervolume from
    0.906 to 0.999 of the best method's and its best accuracy in budget from 82.42 to 82.86% (NSGA-II:
    0.973 / 82.34%), against the earlier per-sample spread of the cost weights in [0, 2]x the user's
    (``directions=1``, ``spread``). ``scale=10``: on NB201 (pixel3 / cifar100, measured tables as
    predictors, before the sweep), scales 0.5 / 3 / 10 / 30 gave a mean top-net gap of 0.98 / 0.87 / 0.33 /
    0.40 points and hypervolume 0.97 / 0.97 / 0.98 / 0.87 of the true front; above 10 the samples collapse.
    """

    name = "diffusion"

    def __init__(self, weights: dict[str, float] | None = None, checkpoint=None, steps: int = 100,
                 scale: float = 10.0, penalty: float = 4.0, use_budget: bool = True, noise_aware: str = "exact",
                 distill_steps: int = 1500, spread: float = 1.0, tilted: bool = True, directions: int = 12,
                 rounds: int = 3, perplexity: float | None = 32.0):
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.tilted, self.directions, self.rounds, self.perplexity = tilted, directions, rounds, perplexity
        self.checkpoint, self.steps, self.scale, self.penalty, self.use_budget = \
            checkpoint, steps, scale, penalty, use_budget
        self.noise_aware, self.distill_steps, self.spread = noise_aware, distill_steps, spread
        self.info: dict = {}

    def propose(self, problem, samples, seed, progress=None):
        import torch

        from .generator.guidance import make_guidance
        from .generator.noise_aware import PosteriorMeanPredictor, cached_distill
        from .generator.sampler import sample
        from .generator.score_net import score_fn_from
        from .generator.train import load_checkpoint

        space = problem.space
        model, sde, meta = load_checkpoint(self.checkpoint, space.name)
        # too large to score whole (mbv3, ~5e20 nets): a predictor distilled from sampled, counted nets
        large = space.size() is None or space.size() > 10**6
        everything = [] if large else list(space.enumerate())
        scored: list = []  # large spaces: the distillation sample, paid for in calls, joins the candidates
        s = problem.evaluate(everything, count=False)
        targets = np.stack([s[k] for k in OBJECTIVES], axis=1)
        if large:
            from .generator.sampled import distilled_predictor

            nap, info, scored = distilled_predictor(problem, sde, steps=self.distill_steps, progress=progress)
        elif self.noise_aware == "exact":
            nap, info = PosteriorMeanPredictor(sde, space.encode(everything), targets, OBJECTIVES), {"kind": "exact"}
        elif self.noise_aware == "distilled":
            if progress is not None:
                progress("distilling noise-aware predictors", 0, 1)
            nap, info = cached_distill(sde, space.encode(everything), targets, OBJECTIVES, steps=self.distill_steps)
            info["kind"] = "distilled"
        else:
            raise ValueError(f"noise_aware must be 'exact' or 'distilled', got {self.noise_aware!r}")
        if self.tilted and info.get("kind") == "exact":
            return self._propose_tilted(problem, samples, seed, progress, model, sde, meta, nap, everything)
        # one batch over many trade-offs (decomposition, as MOEA/D): sample i follows direction i mod K of the
        # tilted path's sweep (cost weights 0.01x..30x the user's, each jittered), scaled to the user's total
        # weight; with directions=1, each cost weight instead gets its own factor in [1 - spread, 1 + spread]
        gen = torch.Generator().manual_seed(int(seed))
        weights = {}
        if self.directions > 1:
            from .generator.guidance import trade_off_directions

            dirs = trade_off_directions({WEIGHT_KEYS[k]: w for k, w in self.weights.items()}, self.directions,
                                        seed=int(seed))
            total, idx = sum(self.weights.values()), torch.arange(samples) % len(dirs)
            for name in dict.fromkeys(n for d in dirs for n in d):
                weights[name] = torch.tensor([d.get(name, 0.0) * total for d in dirs])[idx]
        else:
            for k, w in self.weights.items():
                if w and k != "accuracy":
                    w = w * (1.0 + self.spread * (2 * torch.rand(samples, generator=gen) - 1))
                if (w != 0).any() if torch.is_tensor(w) else w:
                    weights[WEIGHT_KEYS[k]] = w
        b = problem.budget
        limits = {"latency_ms": problem.latency_limit_ms, "params": b.max_params, "macs": b.max_macs} \
            if self.use_budget else {}
        guidance = make_guidance(nap, weights, limits, scale=self.scale * info.get("scale_factor", 1.0),
                                 penalty=self.penalty)
        x = sample(sde, score_fn_from(model, sde), (samples, *space.encoding_shape), steps=self.steps,
                   guidance_fn=guidance if (weights or limits) else None, generator=gen,
                   progress=None if progress is None else (lambda d, t: progress("sampling", d, t)))
        self.info = {"checkpoint": meta, "noise_aware": info, "steps": self.steps, "scale": self.scale,
                     "penalty": self.penalty, "weights": self.weights, "directions": self.directions,
                     "spread": self.spread if self.directions <= 1 else None, "budget_guidance": self.use_budget,
                     "whole_space_calls": len(everything)}
        return space.decode(x.numpy()) + scored

    def _propose_tilted(self, problem, samples, seed, progress, model, sde, meta, posterior, everything):
        """The exact path: tilted guidance (``make_tilted_guidance``) over ``directions`` trade-offs, each at
        the scale that spreads its tilted law over ``perplexity`` nets (fewer if it has fewer samples), in up
        to ``rounds`` rounds: each round samples as many nets as are still missing from ``samples`` distinct
        valid ones and steers away from every net computing the same function as one already proposed. So at
        most ``samples`` distinct nets are scored (the call budget the baselines get); the posterior reads
        the predictors' whole table anyway (the caveat benchmarks/generate.py prints)."""
        import torch

        from .generator.guidance import make_tilted_guidance, trade_off_directions
        from .generator.sampler import sample
        from .generator.score_net import score_fn_from

        space = problem.space
        gen = torch.Generator().manual_seed(int(seed))
        b = problem.budget
        limits = {"latency_ms": problem.latency_limit_ms, "params": b.max_params, "macs": b.max_macs} \
            if self.use_budget else {}
        dirs = trade_off_directions({WEIGHT_KEYS[k]: w for k, w in self.weights.items()}, self.directions,
                                    seed=int(seed))
        members: dict = {}  # function -> its nets: a further round steers away from every member of one seen
        for a in everything:
            members.setdefault(space.canonical(a), []).append(a)
        score_fn, seen, rounds = score_fn_from(model, sde), {}, 0
        while rounds < self.rounds and len(seen) < samples:
            n = samples - len(seen)
            avoid = [m for c in {space.canonical(a) for a in seen} for m in members[c]]
            guidance = make_tilted_guidance(posterior, dirs, torch.arange(n) % len(dirs), limits, scale=self.scale,
                                            penalty=self.penalty, exclude=space.encode(avoid) if avoid else None,
                                            perplexity=None if self.perplexity is None else
                                            min(self.perplexity, max(1.0, n / len(dirs))))
            label = f"sampling (round {rounds + 1})"
            x = sample(sde, score_fn, (n, *space.encoding_shape), steps=self.steps, guidance_fn=guidance,
                       generator=gen, progress=None if progress is None else (lambda d, t: progress(label, d, t)))
            for a in space.decode(x.numpy()):
                if space.is_valid(a) and a not in seen:
                    seen[a] = None
            rounds += 1
        self.info = {"checkpoint": meta, "noise_aware": {"kind": "exact"}, "guidance": "tilted",
                     "steps": self.steps, "scale": self.scale, "penalty": self.penalty, "weights": self.weights,
                     "perplexity": self.perplexity, "directions": dirs, "rounds": rounds,
                     "budget_guidance": self.use_budget,
                     "whole_space_calls": len(everything)}
        return list(seen)


def make_strategy(name: str, weights: dict[str, float] | None = None, **kw):
    if name == "diffusion":
        return Diffusion(weights=weights, **kw)
    if name == "exhaustive":
        return Exhaustive()
    if name == "nsga2":
        return NSGA2(**kw)
    if name == "random":
        return RandomSearch()
    raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


# ---------------------------------------------------------------- after sampling


@dataclass
class SearchResult:
    selected: list[dict]  # the answer, rank order, at most ``num``
    front: list[dict]  # every feasible non-dominated candidate, rank order
    closest: list[dict]  # when nothing is feasible: the nets nearest the budget
    stats: dict
    candidates: list = field(default_factory=list)  # the valid, distinct proposals (all members scored)
    scored: list[dict] = field(default_factory=list)  # their rows (feasible or not), for plots

    def require_feasible(self, budget: Budget) -> None:
        if not self.selected:
            raise BudgetError(f"no candidate net meets the budget ({describe_budget(budget)}); the closest are "
                              "listed above: relax the budget, or search wider (--samples, --strategy exhaustive)")


def describe_budget(budget: Budget) -> str:
    from .units import format_count

    parts = []
    if budget.max_latency_ms is not None:
        parts.append(f"latency <= {budget.max_latency_ms:g} ms")
    if budget.max_params is not None:
        parts.append(f"params <= {format_count(budget.max_params)}")
    if budget.max_macs is not None:
        parts.append(f"MACs <= {format_count(budget.max_macs)}")
    return ", ".join(parts) or "unconstrained"


def run_search(problem: SearchProblem, strategy, *, samples: int = 512, num: int = 10, seed: int = 0,
               progress: Progress | None = None, closest: int = 5) -> SearchResult:
    """Propose, decode, drop invalid and functional duplicates, score, keep the feasible front, rank."""
    if samples < 1 or num < 1:
        raise UserError("--samples and --num must be at least 1")
    space = problem.space
    start = time.perf_counter()
    calls0 = problem.calls
    proposed = strategy.propose(problem, samples, seed, progress)
    propose_s = time.perf_counter() - start
    valid = [a for a in proposed if space.is_valid(a)]
    distinct = list(dict.fromkeys(valid))
    scores = problem.evaluate(distinct)
    feas = problem.feasible(scores)
    rows = [_row(problem, a, scores, i, bool(feas[i])) for i, a in enumerate(distinct)]
    classes = [space.canonical(a) for a in distinct]
    fidx = np.flatnonzero(feas)
    front_rows: list[dict] = []
    ordered: list[dict] = []
    if fidx.size:
        fronts = non_dominated_sort(problem.F({k: v[fidx] for k, v in scores.items()}))
        for r, f in enumerate(fronts):
            for j in f:
                rows[fidx[j]]["front"] = r
        ranked = sorted(fidx, key=lambda i: (rows[i]["front"], -rows[i]["accuracy"], rows[i]["latency_ms"]))
        # one net per function, its best-ranked member: members compute the same function but need not
        # run equally fast (the published tables timed dead edges too), so the choice is the ranking's
        kept, feasible_rows = set(), []
        for i in ranked:
            if classes[i] not in kept:
                kept.add(classes[i])
                feasible_rows.append(rows[i])
        front_rows = [r for r in feasible_rows if r["front"] == 0]
        ordered = front_rows if len(front_rows) >= num else feasible_rows  # fill from the next fronts if short
    selected = [dict(r, rank=i + 1) for i, r in enumerate(ordered[:num])]
    near = []
    if not selected and rows:
        viol = problem.violation(scores)
        near = [rows[i] for i in np.argsort(viol, kind="stable")[:closest]]
    unique = list(dict.fromkeys(classes))
    stats = {"proposed": len(proposed), "valid": len(valid), "unique": len(unique),
             "feasible": len({c for c, ok in zip(classes, feas) if ok}),
             "front": len(front_rows), "returned": len(selected),
             "validity": round(len(valid) / max(1, len(proposed)), 4),
             "uniqueness": round(len(unique) / max(1, len(valid)), 4),
             "predictor_calls": problem.calls - calls0, "propose_seconds": round(propose_s, 2),
             "seconds": round(time.perf_counter() - start, 2)}
    return SearchResult(selected=selected, front=[dict(r, rank=i + 1) for i, r in enumerate(front_rows)],
                        closest=near, stats=stats, candidates=distinct, scored=rows)


def _row(problem, arch, scores, i, feasible) -> dict:
    lat = float(scores["latency_ms"][i])
    row = {"rank": None, "arch": str(arch), "accuracy": round(float(scores["accuracy"][i]), 4),
           "latency_ms": round(lat, 4), "latency_ms_with_margin": round(lat * (1 + problem.margin), 4),
           "params": int(scores["params"][i]), "macs": int(scores["macs"][i]), "feasible": feasible, "front": None}
    if problem.space.name == "nb201":
        row["index"] = int(problem.space.index(arch))
    return row
