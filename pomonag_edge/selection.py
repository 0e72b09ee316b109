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
               progress: Progress | None = None, closest: int = 5, extra=()) -> SearchResult:
    """Propose, then ``select``; ``extra`` archs (nets already measured) join the proposals."""
    if samples < 1 or num < 1:
        raise UserError("--samples and --num must be at least 1")
    start = time.perf_counter()
    calls0 = problem.calls
    proposed = strategy.propose(problem, samples, seed, progress)
    propose_s = time.perf_counter() - start
    result = select(problem, list(proposed) + list(extra), num=num, closest=closest)
    result.stats.update({"proposed": len(proposed), "predictor_calls": problem.calls - calls0,
                         "propose_seconds": round(propose_s, 2), "seconds": round(time.perf_counter() - start, 2)})
    return result


def select(problem: SearchProblem, proposed, *, num: int = 10, closest: int = 5) -> SearchResult:
    """Decode, drop invalid and functional duplicates, score, keep the feasible front, rank. Measured values
    beat predictions (``problem.evaluate``), so the top pick is never worse than a measured net in budget."""
    space = problem.space
    start = time.perf_counter()
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
        ranked = sorted(fidx, key=lambda i: (rows[i]["front"], -used(rows[i], "accuracy"),
                                             used(rows[i], "latency_ms")))
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
             "predictor_calls": 0, "propose_seconds": 0.0, "seconds": round(time.perf_counter() - start, 2)}
    return SearchResult(selected=selected, front=[dict(r, rank=i + 1) for i, r in enumerate(front_rows)],
                        closest=near, stats=stats, candidates=distinct, scored=rows)


def used(row: dict, key: str):
    """The value the rank used for ``key`` (``accuracy`` or ``latency_ms``): the measurement where there is one."""
    measured = row.get(f"{key}_measured")
    return row[key] if measured is None else measured


def _row(problem, arch, scores, i, feasible, p_fit) -> dict:
    """A net as pareto.json holds it: the models' predictions in ``accuracy`` / ``latency_ms``, measurements
    beside them (None where not measured), and which of the two the rank used."""
    lat_measured, acc_measured = scores["latency_measured"][i] > 0, scores["accuracy_measured"][i] > 0
    row = {"rank": None, "arch": str(arch), "accuracy": round(float(scores["accuracy_predicted"][i]), 4),
           "accuracy_measured": round(float(scores["accuracy"][i]), 4) if acc_measured else None,
           "latency_ms": round(float(scores["latency_ms_predicted"][i]), 4),
           "latency_ms_measured": round(float(scores["latency_ms"][i]), 4) if lat_measured else None,
           "latency_ms_with_margin": round(float(scores["latency_bound_ms"][i]), 4),
           "p_within_budget": round(float(p_fit), 4),
           "params": int(scores["params"][i]), "macs": int(scores["macs"][i]), "feasible": feasible, "front": None,
           "rank_used": {"accuracy": "measured" if acc_measured else "predicted",
                         "latency": "measured" if lat_measured else "predicted"}}
    index = problem.space.table_index(arch)
    if index is not None:
        row["index"] = int(index)
    return row
