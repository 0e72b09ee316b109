"""The ``generate`` stage end to end: resolve the profile, budget and predictors; search; write the run folder.

Kept apart from the CLI so tests, benchmarks and the export stage call the same function. Files of a run
(the export stage reads them; keys are stable):

``pareto.json``: a JSON list in rank order; each item has ``rank`` (1-based), ``arch`` (canonical string),
``accuracy`` (predicted %, for ``dataset``), ``accuracy_measured`` (measured %, or null), ``latency_ms``
(predicted, without margin), ``latency_ms_measured`` (measured on the device, or null), ``rank_used``
({``accuracy``, ``latency``}: "measured" or "predicted", what selection and rank used: a measurement beats the
prediction), ``latency_ms_with_margin`` (the latency the net stays under with probability ``level``; the
measurement where measured), ``p_within_budget`` (probability that its measured latency fits the budget: 1 or 0
once measured), ``params``, ``macs`` (exact, for ``dataset``'s input), ``feasible`` (bool),
``front`` (0 = non-dominated among the feasible candidates), ``index`` (row of the space's shipped tables,
where it has them). Measured nets (the profile's calibration timings, a task's measured accuracies, the closed
loop's) are always among the candidates, so the top pick is never worse than a measured net within budget.

``loop.json`` (``generate --measure`` / ``--train``): the closed loop's journal (``closed_loop``): every timing
and training, each round's top pick and decision, the stop reason; the manifest's ``loop`` summarises it.

``manifest.json``: ``schema`` ("pomonag-edge/run"), ``schema_version``, ``space``, ``dataset`` (a shipped
name, or a user task's name), ``dataset_profile`` (null, or for a user task {``spec``, ``file``, ``name``,
``sha256``, ``num_classes``, ``measurements``, ``accuracy_error_points``, ``accuracy_error_quantile``,
``accuracy_cv_spearman``}; the profile itself is copied to ``dataset.json`` beside it), ``profile`` {``spec``,
``name``, ``sha256``, ``reference``}, ``budget`` {``max_latency_ms``, ``max_params``, ``max_macs``}, ``level``
(probability of fitting the budget a kept net reaches), ``per_net_margin`` (bool), ``margin`` (relative, the
latency model's q90 error), ``latency_limit_ms`` (budget / (1 + margin), or the budget itself with per-net
margins), ``weights``,
``strategy``, ``num``, ``samples``, ``seed``, ``predictors`` (what scored the nets), ``stats``,
``generator`` (checkpoint meta, diffusion only), ``versions``, ``created``, ``command``, ``loop`` (null, or the
closed loop's summary: timings / trainings allowed and made, rounds, stop reason, the revisions written; the
``profile`` and ``dataset_profile`` are then those revisions, ``profile.parent`` the profile given).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_writable, claim, replace_dir,
                    staging_dir)
from .problem import DEFAULT_LEVEL, SearchProblem, describe_budget, parse_weights
from .selection import SearchResult, run_search
from .strategies import make_strategy
from .units import Budget
from .versions import versions

RUN_SCHEMA = "pomonag-edge/run"
RUN_SCHEMA_VERSION = 1
RUN_DATASET_FILE = "dataset.json"  # a user task's dataset profile, copied into the run folder
CSV_FIELDS = ("rank", "arch", "accuracy", "accuracy_measured", "latency_ms", "latency_ms_measured",
              "latency_ms_with_margin", "p_within_budget", "params", "macs", "feasible", "front", "index")


@dataclass
class Run:
    out: Path
    problem: SearchProblem
    result: SearchResult
    manifest: dict


def new_run_dir(root: str | Path = "runs") -> Path:
    """A fresh folder ``runs/<UTC time>-<n>`` that no other run uses (names sort in the order runs were made)."""
    from .files import make_dir

    root = make_dir(root, "runs folder")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for n in range(1000):
        path = root / (stamp if n == 0 else f"{stamp}-{n:03d}")
        try:
            path.mkdir(exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            from .files import os_error

            raise os_error(e, "create", "run folder", path) from None
    raise UserError(f"cannot create a new run folder under {root}")


def check_run_out(out: str | Path | None, force: bool = False) -> Path | None:
    """``--out`` checked before the search: writable, and not an existing run unless ``force`` (which replaces
    it whole). None: the default folder ./runs must be writable. A folder holding only an unfinished closed
    loop (``loop.json``) is resumed."""
    from .closed_loop import LOOP_FILE

    if out is None:
        check_writable("runs", "runs folder", folder=True)
        return None
    out = check_writable(out, "run folder", folder=True)
    if out.is_dir() and any(out.iterdir()):
        unfinished = (out / LOOP_FILE).is_file() and not (out / "pareto.json").is_file()
        if unfinished and not force:
            return out
        if not (out / "manifest.json").is_file() and not (out / "pareto.json").is_file() and not unfinished:
            raise UserError(f"{out} holds files that are not a run: --out a new or empty folder (--force replaces "
                            "only run folders)")
        if not force:
            inside = [p.name + "/" for p in sorted(out.iterdir()) if p.is_dir() and not p.name.startswith(".")]
            also = f" (with its {', '.join(inside)})" if inside else ""
            raise UserError(f"{out} already holds a run: runs are not overwritten; pass --force to replace the "
                            f"folder whole{also}, or --out a new folder")
    return out


def _one_writer(generate):
    """``generate`` holding a claim on ``out`` from its first check to its last write (``files.claim``): a second
    ``generate --out`` of the same folder, here or in another process, is refused instead of replacing the
    first one's run unseen. A default folder (``new_run_dir``) is unique already."""
    from contextlib import nullcontext
    from functools import wraps

    @wraps(generate)
    def claimed(*, out=None, **kw):
        with claim(out, "run folder") if out is not None else nullcontext():
            return generate(out=out, **kw)

    return claimed


@_one_writer
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
    from .predictors import search_predictors
    from .profile import resolve_profile
    from .spaces import get_space

    sp = get_space(space)
    budget = Budget.parse(max_latency, max_params, max_macs)
    w = parse_weights(weights)
    from .dataset_profile import dataset_label, resolve_dataset

    dataset_spec = dataset
    dataset = resolve_dataset(dataset, sp)  # a shipped name (checked), or a user task's DatasetProfile
    out_dir = check_run_out(out, force)
    prof = resolve_profile(profile, space=sp.name, precision=precision)
    strat = make_strategy(strategy, weights=w, **(strategy_options or {}))
    profile_spec, loop_record, extra_files = profile, None, {}
    if loop is not None and loop.active:
        from .closed_loop import closed_loop_run

        lr = closed_loop_run(sp, prof, profile, dataset, dataset_spec, budget, level, strat, samples, num, seed,
                             loop, out_dir, force, predictors_for or (lambda p, d: search_predictors(sp, p, d)),
                             progress, say)
        out_dir, problem, result, preds = lr["out"], lr["problem"], lr["result"], lr["problem"].predictors
        prof, profile_spec, dataset, dataset_spec = lr["profile"], lr["profile_spec"], lr["dataset"], lr["dataset_spec"]
        loop_record, extra_files = lr["summary"], {lr["journal"].path.name: lr["journal"].to_dict()}
    else:
        preds = predictors if predictors is not None else search_predictors(sp, prof, dataset)
        problem = SearchProblem(sp, dataset, budget, preds, level=level)
        measured = [sp.parse(a) for a in {**preds.measured_latency_ms, **preds.measured_accuracy}]
        result = run_search(problem, strat, samples=samples, num=num, seed=seed, progress=progress, extra=measured)
    manifest = {
        "schema": RUN_SCHEMA, "schema_version": RUN_SCHEMA_VERSION, "space": sp.name,
        "dataset": dataset_label(dataset), "dataset_profile": _dataset_record(dataset, dataset_spec),
        "profile": {"spec": profile_spec, "name": prof.name, "sha256": prof.sha256, "reference": prof.reference,
                    "parent": prof.parent},
        "budget": budget.to_dict(), "budget_text": describe_budget(budget),
        "level": problem.level, "per_net_margin": problem.per_net,
        "margin": problem.margin, "latency_limit_ms": problem.latency_limit_ms,
        "weights": w, "strategy": strategy, "num": num, "samples": samples, "seed": seed,
        "predictors": preds.source, "stats": result.stats,
        "generator": getattr(strat, "info", None) or None, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command, "loop": loop_record,
    }
    if result.selected:
        out_dir = out_dir or new_run_dir()
        # the run folder carries its task: train and export read it there
        write_run(out_dir, result, manifest, problem, task=None if isinstance(dataset, str) else dataset,
                  extra=extra_files)
    return Run(out=out_dir, problem=problem, result=result, manifest=manifest)


def _dataset_record(dataset, spec) -> dict | None:
    """What the manifest says about a user task (None for a shipped dataset): its profile and the accuracy
    model's own cross-validated error, so a reader knows how sure the predicted accuracies are."""
    if isinstance(dataset, str):
        return None
    cv = (dataset.accuracy_model or {}).get("cv", {})
    return {"spec": spec, "file": RUN_DATASET_FILE, "name": dataset.name, "sha256": dataset.sha256,
            "num_classes": dataset.num_classes, "measurements": len(dataset.measurements),
            "accuracy_error_points": cv.get("error_points"), "accuracy_error_quantile": cv.get("error_quantile"),
            "accuracy_cv_spearman": cv.get("spearman")}


def write_run(out: Path, result: SearchResult, manifest: dict, problem: SearchProblem, task=None,
              extra: dict | None = None) -> None:
    """Build the run in a hidden folder beside ``out``, then put it in place whole: a run folder never holds
    files of two generations, and an interrupted write leaves the previous one intact. ``task``: a user task's
    dataset profile, saved in the run as ``dataset.json``; ``extra``: more JSON files by name (the loop's)."""
    staged = staging_dir(out, "run folder")
    try:
        if task is not None:
            task.save(staged / RUN_DATASET_FILE)
        for name, obj in (extra or {}).items():
            atomic_write_json(staged / name, obj)
        atomic_write_json(staged / "pareto.json", result.selected)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.selected)
        atomic_write_text(staged / "pareto.csv", buf.getvalue())
        atomic_write_bytes(staged / "pareto.png", plot_png(result, problem))
        atomic_write_json(staged / "manifest.json", manifest)
        replace_dir(staged, out, "run folder")
    finally:
        if staged.exists():
            import shutil

            shutil.rmtree(staged, ignore_errors=True)


def plot_png(result: SearchResult, problem: SearchProblem) -> bytes:
    """Accuracy vs latency of the scored candidates, the front highlighted, the budget line drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .selection import used

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


__all__ = ["Run", "generate_run", "write_run", "new_run_dir"]
