"""The ``generate`` stage end to end: resolve the profile, budget and predictors; search; write the run folder.

Kept apart from the CLI so tests, benchmarks and the export stage call the same function. The run folder's
files and their keys are described (and written, read and checked) in ``runs``.
"""

from __future__ import annotations

import io
import os
import time

from .closed_loop import closed_loop_run
from .dataset_profile import dataset_label, resolve_dataset
from .predictors import search_predictors
from .problem import DEFAULT_LEVEL, SearchProblem, describe_budget, parse_weights
from .profile import locate_profile
from .runs import DATASET_FILE, SCHEMA, SCHEMA_VERSION, Run, check_run_out, new_run_dir, one_writer, write_run
from .selection import SearchResult, run_search, used
from .spaces import get_space
from .strategies import make_strategy
from .units import Budget
from .versions import versions


@one_writer
def generate_run(*, space="nb201", profile=None, dataset=None, max_latency=None, max_params=None, max_macs=None,
                 weights=None, num=10, samples=512, strategy="diffusion", seed=0, out=None, progress=None,
                 predictors=None, strategy_options=None, command=None, force=False, level=DEFAULT_LEVEL,
                 loop=None, predictors_for=None, say=None, precision=None) -> Run:
    """Resolve the profile, budget and weights; search; write the run folder (unless nothing is feasible).

    ``out`` is checked before the search; an existing run there is refused unless ``force``, which replaces
    the folder whole. ``predictors`` overrides the profile's predictors (tests and benchmarks pass measured
    tables); ``level``: the probability of fitting the latency budget each kept net must reach. ``loop``
    (``closed_loop.LoopOptions``): measure the deciding candidates in rounds (``closed_loop``), the predictors
    of each round from ``predictors_for(profile, dataset)`` (default: the product's); ``say`` gets its news.
    ``precision``: the profile must be of it (the default profile: the newest of it); its runs export at it.
    """
    sp = get_space(space)
    budget = Budget.parse(max_latency, max_params, max_macs)
    w = parse_weights(weights)
    dataset_spec = dataset
    dataset = resolve_dataset(dataset, sp)  # a shipped name (checked), or a user task's DatasetProfile
    out_dir = check_run_out(out, force)
    prof, prof_path = locate_profile(profile, space=sp.name, precision=precision)
    strat = make_strategy(strategy, weights=w, **(strategy_options or {}))
    profile_spec, loop_record, extra_files = profile, None, {}
    if loop is not None and loop.active:
        lr = closed_loop_run(sp, prof, profile, prof_path, dataset, dataset_spec, budget, level, strat, samples, num,
                             seed, loop, out_dir, force, predictors_for or (lambda p, d: search_predictors(sp, p, d)),
                             progress, say)
        out_dir, problem, result, preds = lr["out"], lr["problem"], lr["result"], lr["problem"].predictors
        prof, profile_spec, dataset, dataset_spec = lr["profile"], lr["profile_spec"], lr["dataset"], lr["dataset_spec"]
        prof_path = lr["profile_path"]
        loop_record, extra_files = lr["summary"], {lr["journal"].path.name: lr["journal"].to_dict()}
    else:
        preds = predictors if predictors is not None else search_predictors(sp, prof, dataset)
        problem = SearchProblem(sp, dataset, budget, preds, level=level)
        measured = [sp.parse(a) for a in {**preds.measured_latency_ms, **preds.measured_accuracy}]
        result = run_search(problem, strat, samples=samples, num=num, seed=seed, progress=progress, extra=measured)
    manifest = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "space": sp.name,
        "dataset": dataset_label(dataset), "dataset_profile": _dataset_record(dataset, dataset_spec),
        "profile": {"spec": profile_spec, "name": prof.name, "sha256": prof.sha256, "reference": prof.reference,
                    "parent": prof.parent, "path": None if prof_path is None else os.path.abspath(prof_path)},
        "budget": budget.to_dict(), "budget_text": describe_budget(budget),
        "level": problem.level, "per_net_margin": problem.per_net,
        "margin": problem.margin, "latency_limit_ms": problem.latency_limit_ms,
        "weights": w, "strategy": strategy, "num": num, "samples": samples, "seed": seed,
        "predictors": preds.source, "stats": result.stats,
        "generator": getattr(strat, "info", None) or None, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command, "loop": loop_record,
    }
    run = Run(path=out_dir, candidates=result.selected, manifest=manifest,
              task=None if isinstance(dataset, str) else dataset, problem=problem, result=result)
    if result.selected:
        run.path = out_dir or new_run_dir()
        write_run(run, plot_png(result, problem), extra=extra_files)  # the run folder carries its task
    return run


def _dataset_record(dataset, spec) -> dict | None:
    """What the manifest says about a user task (None for a shipped dataset): its profile and the accuracy
    model's own cross-validated error, so a reader knows how sure the predicted accuracies are."""
    if isinstance(dataset, str):
        return None
    cv = (dataset.accuracy_model or {}).get("cv", {})
    return {"spec": spec, "file": DATASET_FILE, "name": dataset.name, "sha256": dataset.sha256,
            "num_classes": dataset.num_classes, "measurements": len(dataset.measurements),
            "accuracy_error_points": cv.get("error_points"), "accuracy_error_quantile": cv.get("error_quantile"),
            "accuracy_cv_spearman": cv.get("spearman")}


def plot_png(result: SearchResult, problem: SearchProblem) -> bytes:
    """Accuracy vs latency of the scored candidates, the front highlighted, the budget line drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    xy = lambda rows: ([used(r, "latency_ms") for r in rows], [used(r, "accuracy") for r in rows])  # noqa: E731
    rest = [r for r in result.scored if r.get("front") != 0]
    ax.scatter(*xy(rest), s=6, c="#bbbbbb", label=f"other candidates ({len(rest)})")
    front = result.front
    ax.scatter(*xy(front), s=14, c="#9ecae1", label=f"feasible front ({len(front)})")
    measured = [r for r in result.scored if r.get("latency_ms_measured") is not None]
    if measured:
        ax.scatter(*xy(measured), s=30, facecolors="none", edgecolors="k", lw=0.8,
                   label=f"latency measured ({len(measured)})")
    sel = result.selected
    ax.scatter(*xy(sel), s=36, c="#d62728", marker="*", label=f"returned ({len(sel)})", zorder=3)
    b = problem.budget.max_latency_ms
    if b is not None:
        ax.axvline(b, color="k", ls="--", lw=1, label=f"budget {b:g} ms")
        if problem.margin > 0 and not problem.per_net:
            ax.axvline(problem.latency_limit_ms, color="gray", ls=":", lw=1,
                       label=f"budget less margin ({problem.margin:.1%})")
    ax.set_xlabel("latency (ms; measured where measured, else predicted)")
    label = problem.predictors.source.get("accuracy_label")
    ax.set_ylabel(label or f"predicted accuracy (%, {problem.dataset})")  # a user task prints as its name
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


__all__ = ["generate_run", "plot_png"]
