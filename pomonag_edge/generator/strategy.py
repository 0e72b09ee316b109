"""The diffusion strategy: proposes archs for a ``problem.SearchProblem`` by guided sampling of the space's
score network. Generic over spaces; what differs (encoding layout, training set, checkpoint) is the space's."""

from __future__ import annotations

import numpy as np

from ..problem import DEFAULT_WEIGHTS, GUIDED, WEIGHT_KEYS
from .guidance import make_guidance, make_tilted_guidance, trade_off_directions
from .noise_aware import PosteriorMeanPredictor, cached_distill
from .sampled import DISTILL_NETS, distilled_predictor
from .sampler import sample
from .score_net import score_fn_from
from .train import load_checkpoint


class Diffusion:
    """Guided score-based diffusion (POMONAG / DiffusionNAG): the space's score network, noise-aware predictors
    built from the problem's clean predictors, guidance = weighted objectives + budget penalty.

    A space small enough to enumerate gets the exact posterior mean E[y | x_t] of the clean predictions of every
    net (``exact``; it reads the predictors' whole table, and those calls are counted), and by default ``tilted``
    guidance (``make_tilted_guidance``): samples follow p(x_0) exp(scale J) over ``directions`` trade-offs, in up
    to ``rounds`` rounds that steer away from functions already proposed. A larger space (or ``noise_aware=
    "sampled"``, which never reads the table) gets a small network distilled from a counted sample of scored nets
    (the sample joins the candidates), and guidance = scale x grad E[J | x_t], sample i following direction i
    mod ``directions`` of the same trade-off sweep.
    ``scale`` 10 and ``perplexity`` 32 were chosen on benchmarks/generate.py (see benchmarks/README.md).
    """

    name = "diffusion"
    takes_weights = True

    def __init__(self, weights: dict[str, float] | None = None, checkpoint=None, steps: int = 100,
                 scale: float = 10.0, penalty: float = 4.0, use_budget: bool = True, noise_aware: str = "exact",
                 distill_steps: int = 1500, distill_nets: int = DISTILL_NETS, spread: float = 1.0,
                 tilted: bool = True, directions: int = 12, rounds: int = 3, perplexity: float | None = 32.0):
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.tilted, self.directions, self.rounds, self.perplexity = tilted, directions, rounds, perplexity
        self.checkpoint, self.steps, self.scale, self.penalty, self.use_budget = \
            checkpoint, steps, scale, penalty, use_budget
        self.noise_aware, self.distill_steps, self.distill_nets = noise_aware, distill_steps, distill_nets
        self.spread = spread
        self.info: dict = {}

    def propose(self, problem, samples, seed, progress=None):
        import torch

        space = problem.space
        model, sde, meta = load_checkpoint(self.checkpoint, space)
        # too large to score whole (or asked not to read the table): a predictor distilled from sampled nets
        size = space.size()
        large = size is None or size > space.max_enumerated or self.noise_aware == "sampled"
        everything = [] if large else list(space.enumerate())
        scored: list = []  # large spaces: the distillation sample, paid for in calls, joins the candidates
        s = problem.evaluate(everything)  # the exact posterior reads every net's predictions: counted calls
        targets = np.stack([s[k] for k in GUIDED], axis=1)
        if large:
            nap, info, scored = distilled_predictor(problem, sde, nets=self.distill_nets, steps=self.distill_steps,
                                                    progress=progress)
        elif self.noise_aware == "exact":
            nap, info = PosteriorMeanPredictor(sde, space.encode(everything), targets, GUIDED), {"kind": "exact"}
        elif self.noise_aware == "distilled":
            if progress is not None:
                progress("distilling noise-aware predictors", 0, 1)
            nap, info = cached_distill(sde, space.encode(everything), targets, GUIDED, steps=self.distill_steps)
            info["kind"] = "distilled"
        else:
            raise ValueError(f"noise_aware must be 'exact', 'distilled' or 'sampled', got {self.noise_aware!r}")
        if self.tilted and info.get("kind") == "exact":
            return self._propose_tilted(problem, samples, seed, progress, model, sde, meta, nap, everything)
        # one batch over many trade-offs (decomposition, as MOEA/D): sample i follows direction i mod K of the
        # tilted path's sweep (cost weights 0.01x..30x the user's, each jittered), scaled to the user's total
        # weight; with directions=1, each cost weight instead gets its own factor in [1 - spread, 1 + spread]
        gen = torch.Generator().manual_seed(int(seed))
        weights = {}
        if self.directions > 1:
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
        limits = problem.limits() if self.use_budget else {}
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

        space = problem.space
        gen = torch.Generator().manual_seed(int(seed))
        limits = problem.limits() if self.use_budget else {}
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
