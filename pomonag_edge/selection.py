"""After a strategy proposes: decode, drop invalid and functionally duplicate nets, score, keep the feasible
non-dominated set and rank it; when nothing is feasible, the nets nearest the budget."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import BudgetError, UserError
from .pareto import non_dominated_sort
from .problem import Progress, SearchProblem, describe_budget
from .units import Budget


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
    p_fit = problem.p_within_budget(scores)
    rows = [_row(problem, a, scores, i, bool(feas[i]), p_fit[i]) for i, a in enumerate(distinct)]
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


def _row(problem, arch, scores, i, feasible, p_fit) -> dict:
    lat = float(scores["latency_ms"][i])
    row = {"rank": None, "arch": str(arch), "accuracy": round(float(scores["accuracy"][i]), 4),
           "latency_ms": round(lat, 4), "latency_ms_with_margin": round(float(scores["latency_bound_ms"][i]), 4),
           "p_within_budget": round(float(p_fit), 4),
           "params": int(scores["params"][i]), "macs": int(scores["macs"][i]), "feasible": feasible, "front": None}
    index = problem.space.table_index(arch)
    if index is not None:
        row["index"] = int(index)
    return row
