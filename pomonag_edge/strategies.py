"""Search strategies: interchangeable ways to propose archs for a ``problem.SearchProblem``.

A strategy has a ``name`` and ``propose(problem, samples, seed, progress) -> [arch, ...]``; it never asks
which space it serves. ``exhaustive`` scores every net of a finite space (the yardstick), ``random`` samples
the space, ``nsga2`` is pymoo's NSGA-II over the space's categorical genes, ``diffusion`` the guided
score-based generator (``generator.strategy``). Strategies are found by name in ``STRATEGIES`` and imported
when asked for, so a missing optional dependency (pymoo) breaks only the strategy that needs it.
"""

from __future__ import annotations

from importlib import import_module

import numpy as np

from .errors import MissingDependencyError, UserError
from .spaces.base import from_genes, gene_choices, to_genes

STRATEGIES = {
    "diffusion": "pomonag_edge.generator.strategy:Diffusion",
    "exhaustive": "pomonag_edge.strategies:Exhaustive",
    "nsga2": "pomonag_edge.strategies:NSGA2",
    "random": "pomonag_edge.strategies:RandomSearch",
}


def make_strategy(name: str, weights: dict[str, float] | None = None, **options):
    """A strategy by name; ``weights`` reach the strategies that steer by them (diffusion)."""
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    module, _, attr = STRATEGIES[name].partition(":")
    cls = getattr(import_module(module), attr)
    return cls(weights=weights, **options) if getattr(cls, "takes_weights", False) else cls(**options)


class Exhaustive:
    """Every net of a finite space through the same predictors: the exact answer, the yardstick."""

    name = "exhaustive"

    def propose(self, problem, samples, seed, progress=None) -> list:
        space = problem.space
        size = space.size()
        if size is None or size > space.max_enumerated:
            raise UserError(f"--strategy exhaustive needs a space of at most {space.max_enumerated:,} nets; "
                            f"{space.name} has {size:.2e}" if size else f"{space.name} cannot be enumerated")
        return list(space.enumerate())


class RandomSearch:
    """``samples`` nets drawn by the space's own sampler."""

    name = "random"

    def propose(self, problem, samples, seed, progress=None) -> list:
        return problem.space.sample(samples, seed)


class NSGA2:
    """pymoo's NSGA-II (Deb et al. 2002) over the space's categorical genes (``space.categorical_groups``),
    with uniform crossover and per-gene random reset, constrained domination on the budget excess, and the
    population seeded from the space's sampler. Runs through pymoo's ask-and-tell loop and stops once
    ``samples`` distinct nets have been scored, so its predictor calls are counted exactly as the others'."""

    name = "nsga2"

    def __init__(self, pop_size: int = 40):
        self.pop_size = pop_size

    def propose(self, problem, samples, seed, progress=None) -> list:
        try:
            from pymoo.algorithms.moo.nsga2 import NSGA2 as PymooNSGA2
            from pymoo.core.evaluator import Evaluator
            from pymoo.core.mutation import Mutation
            from pymoo.core.problem import Problem
            from pymoo.operators.crossover.ux import UniformCrossover
            from pymoo.problems.static import StaticProblem
        except ImportError:
            raise MissingDependencyError("--strategy nsga2 uses pymoo: pip install 'pomonag-edge[nsga2]'") from None

        space = problem.space
        choices = gene_choices(space)
        n_var, pop_size = len(choices), max(4, min(self.pop_size, samples))

        class GeneReset(Mutation):
            """Each gene, with probability 1 / genes, set to a value drawn uniformly from its choices."""

            def _do(self, _problem, X, random_state=None, **kwargs):
                X = np.asarray(X, dtype=np.int64).copy()
                reset = random_state.random(X.shape) < 1.0 / n_var
                X[reset] = np.floor(random_state.random(int(reset.sum())) * np.broadcast_to(choices, X.shape)[reset])
                return X

        genes_problem = Problem(n_var=n_var, n_obj=4, n_ieq_constr=1, xl=np.zeros(n_var), xu=choices - 1.0,
                                vtype=int)
        initial = to_genes(space, space.encode(space.sample(pop_size, seed)))
        algorithm = PymooNSGA2(pop_size=pop_size, sampling=initial, crossover=UniformCrossover(),
                               mutation=GeneReset(prob=1.0), eliminate_duplicates=True)
        algorithm.setup(genes_problem, termination=("n_gen", 10**9), seed=int(seed))
        seen: dict = {}
        stall = 0
        while len(seen) < samples and stall < 50:
            before = len(seen)
            pop = algorithm.ask()
            archs = space.decode(from_genes(space, np.asarray(pop.get("X"), dtype=np.int64)))
            room = samples - len(seen)
            fresh = [a for a in dict.fromkeys(archs) if a not in seen][:room]
            keep = set(fresh) | set(seen)
            pop = pop[[i for i, a in enumerate(archs) if a in keep]]
            archs = [a for a in archs if a in keep]
            for a in archs:
                seen.setdefault(a, None)
            scores = problem.evaluate(archs)
            invalid = np.array([not space.is_valid(a) for a in archs], dtype=np.float64)
            G = (problem.violation(scores) + invalid * 1e3)[:, None]
            Evaluator().eval(StaticProblem(genes_problem, F=problem.F(scores), G=G), pop)
            algorithm.tell(infills=pop)
            stall = stall + 1 if len(seen) == before else 0
            if progress is not None:
                progress("nsga2", min(len(seen), samples), samples)
        return list(seen)
