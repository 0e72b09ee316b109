"""``pomonag-edge generate``: Pareto-optimal nets within a budget. Parse, call ``generate_run``, render.

The run folder's files and their keys are documented in ``pomonag_edge/generate.py``.
"""

from __future__ import annotations

import click

from ..strategies import STRATEGIES
from .options import SEED, dataset_option, profile_option, space_option


@click.command(short_help="Pareto-optimal nets within a budget.")
@space_option
@profile_option
@dataset_option
@click.option("--max-latency", default=None, metavar="TIME", help="Latency budget, e.g. 5ms (tested with the "
              "latency model's error margin for each net, see --confidence).")
@click.option("--max-params", default=None, metavar="COUNT", help="Parameter budget, e.g. 1.5M.")
@click.option("--max-macs", default=None, metavar="COUNT", help="MAC budget, e.g. 200M.")
@click.option("--weights", default=None, metavar="SPEC",
              help="Guidance weights, default accuracy=1,latency=0.5,params=0.1,macs=0.1.")
@click.option("--confidence", default="90%", show_default=True, metavar="P",
              help="Keep nets whose probability of fitting --max-latency is at least P (e.g. 90% or 0.95); each "
                   "net's margin comes from the latency model's own error for that net.")
@click.option("--num", default=10, show_default=True, type=click.IntRange(1), help="Nets to return.")
@click.option("--samples", default=512, show_default=True, type=click.IntRange(1),
              help="Nets drawn (diffusion, random) or scored (nsga2).")
@click.option("--strategy", type=click.Choice(list(STRATEGIES)), default="diffusion",
              show_default=True, help="How candidates are proposed; the rest of the run is the same.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", default=None, metavar="DIR", help="Run folder (default: a new folder under ./runs/).")
@click.option("--force", is_flag=True, help="Replace the run already in --out DIR (as a whole).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: the run folder and its nets on stdout, for scripts.")
def command(space, profile, dataset, max_latency, max_params, max_macs, weights, confidence, num, samples, strategy,
            seed, out, force, fmt):
    """Generate nets on the accuracy / latency / params / MACs Pareto front inside the budget.

    Writes DIR/pareto.json, pareto.csv, manifest.json and pareto.png. Without --profile the newest
    finished profile of the space in ./profiles is used (and named on the first line). A budget no
    candidate meets lists the closest nets and exits with 2.
    """
    import os
    import sys

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..generate import generate_run
    from ..units import parse_probability

    # one torch thread: the generator's tensors are small, and extra threads only wait on each other
    torch.set_num_threads(1)
    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), console=console, transient=True)
    tasks: dict = {}

    def progress(stage, done, total):
        if not tasks:  # started on the first report, so a refusal up front prints only its one line
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        run = generate_run(space=space, profile=profile, dataset=dataset, max_latency=max_latency,
                           max_params=max_params, max_macs=max_macs, weights=weights, num=num, samples=samples,
                           strategy=strategy, seed=seed, out=out, progress=progress, force=force,
                           level=parse_probability(confidence, "--confidence"),
                           command=" ".join(["pomonag-edge", *sys.argv[1:]]))
    finally:
        if tasks:  # Progress.stop prints a blank line off a terminal even when never started
            bar.stop()
    if fmt == "json":
        run.result.require_feasible(run.problem.budget)
        import json

        json.dump({"run_dir": str(run.out), "profile": run.manifest["profile"], "dataset": run.problem.dataset,
                   "margin": run.problem.margin, "nets": run.result.selected}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    out_console = Console()
    if not out_console.is_terminal and "COLUMNS" not in os.environ:  # piped or logged: arch strings whole
        out_console = Console(width=max(out_console.width, 200))
    if not run.result.selected:
        out_console.print(render_table(run.result.closest, run.problem, title="closest nets (none within budget)",
                                       width=out_console.width))
        run.result.require_feasible(run.problem.budget)
    margin = (f"P(within budget) >= {run.problem.level:.0%}, per-net margins" if run.problem.per_net
              else f"margin {run.problem.margin:.1%}")
    title = (f"{len(run.result.selected)} Pareto-optimal nets ({run.manifest['profile']['name']}, "
             f"{run.problem.dataset}, {margin})")
    out_console.print(render_table(run.result.selected, run.problem, title=title, width=out_console.width))
    note = run.problem.predictors.source.get("accuracy_note")
    if note:
        out_console.print(note, highlight=False, soft_wrap=True)
    task = run.manifest.get("dataset_profile")
    if task:
        out_console.print(f"accuracy: few-shot model of {task['name']} from {task['measurements']} measured nets; "
                          f"cross-validated, {int(100 * task['accuracy_error_quantile'])}% of its predictions fall "
                          f"within {task['accuracy_error_points']:.2f} points (rank correlation "
                          f"{task['accuracy_cv_spearman']:.2f}): nets closer than that are a toss-up until trained",
                          highlight=False, soft_wrap=True)
    out_console.print(f"wrote {run.out}/pareto.json, pareto.csv, manifest.json, pareto.png "
                      f"({run.result.stats['seconds']} s search; full arch strings in pareto.csv)",
                      highlight=False, soft_wrap=True)


def render_table(rows, problem, title: str = "", width: int | None = None):
    """One row per net. Only the arch column shrinks on a narrow terminal (abbreviated with an ellipsis; the run's
    files hold the full strings); the numbers and the budget verdict are never cut."""
    from rich.table import Table

    from ..units import format_count

    cells = [(str(r.get("rank") or i), r["arch"], f"{r['accuracy']:.2f}", f"{r['latency_ms']:.3f}",
              format_count(r["params"]), format_count(r["macs"]), _within(r))
             for i, r in enumerate(rows, start=1)]
    acc_label = problem.predictors.source.get("accuracy_label", "accuracy %") if problem is not None else "accuracy %"
    headers = ("#", "arch", acc_label, "latency ms", "params", "MACs", "P(within budget)")
    widths = [max([len(h)] + [len(c[k]) for c in cells]) for k, h in enumerate(headers)]
    arch_width = None
    if width is not None:  # what the other columns and the borders leave (3 characters a column, 1 more)
        arch_width = max(10, width - (sum(widths) - widths[1]) - 3 * len(headers) - 1)
    table = Table(title=title)
    for k, name in enumerate(headers):
        table.add_column(name, justify="left" if k == 1 else "center" if k == 6 else "right", no_wrap=True,
                         overflow="ellipsis", min_width=None if k == 1 else widths[k],
                         max_width=arch_width if k == 1 else None)
    for row in cells:
        table.add_row(*row)
    return table


def _within(row: dict) -> str:
    """The probability of fitting the latency budget, marked when the net does not make the asked level."""
    p = row.get("p_within_budget")
    text = "yes" if p is None else f"{p:.0%}"
    return text if row["feasible"] else f"{text} (no)" if p is not None else "no"
