"""``pomonag-edge generate``: Pareto-optimal nets within a budget. Parse, call ``generate_run``, render.

The run folder's files and their keys are documented in ``pomonag_edge/generate.py``.
"""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from ..closed_loop import LoopOptions
from ..errors import UserError
from ..generate import generate_run
from ..hardware.backends import PRECISIONS
from ..strategies import STRATEGIES
from ..units import format_count, parse_probability
from ._progress import stage_progress
from .options import (SEED, dataset_option, make_placement, make_ssh_options, placement_options, profile_option,
                      space_option, ssh_options)


@click.command(short_help="Pareto-optimal nets within a budget.")
@space_option
@profile_option
@dataset_option
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Latency at this precision: without --profile, the newest finished profile measured at it; with "
                   "--profile, it must be one. Export ships the run's nets at the profile's precision.")
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
@click.option("--measure", default=0, show_default=True, type=click.IntRange(0), metavar="N",
              help="Time up to N candidates on the profile's device, in rounds, chosen by expected improvement of "
                   "the pick; measured latencies replace predictions and go into a new profile revision.")
@click.option("--host", default=None, metavar="USER@ADDR[:PORT]",
              help="With --measure: the device to time on, over SSH through the device runner [default: this "
                   "machine, which must be the profile's device].")
@ssh_options
@click.option("--train", default=0, show_default=True, type=click.IntRange(0), metavar="N",
              help="Train up to N candidates on your task (--dataset PROFILE.json), in rounds as --measure; the "
                   "measured accuracies replace predictions and go into a new dataset profile revision.")
@click.option("--trainer", default=None, metavar="CMD",
              help="With --train: your training pipeline, as `probe --trainer` runs it (last stdout line: accuracy).")
@click.option("--data", default=None, type=click.Path(), metavar="DIR",
              help="With --train: your images; nets trained with the built-in NB201 recipe, as `probe --data`.")
@click.option("--epochs", default=None, type=click.IntRange(1),
              help="With --train: epochs per net [default: the dataset profile's probes'].")
@placement_options
def command(space, profile, precision, dataset, max_latency, max_params, max_macs, weights, confidence, num, samples,
            strategy, seed, out, force, fmt, measure, host, ssh_config, remote_python, remote_dir, train, trainer, data,
            epochs, **placement):
    """Generate nets on the accuracy / latency / params / MACs Pareto front inside the budget.

    Writes DIR/pareto.json, pareto.csv, manifest.json and pareto.png. Without --profile the newest
    finished profile of the space in ./profiles is used (and named on the first line). A budget no
    candidate meets lists the closest nets and exits with 2.

    With --measure N the answer is measured, not predicted: in rounds, the candidates that could still
    change the pick are timed on the device, the latency model refitted, the nets re-ranked; it stops when
    the top pick is measured within budget and the chance that an unmeasured candidate beats it is below
    1 - --confidence, or when N timings are spent (DIR/loop.json says which). Interrupted, the same command
    with --out DIR resumes without timing a net again. --train N does the same for accuracy on your task
    (--trainer CMD or --data DIR); the two may be combined. With --ray, each net it trains is one Ray task.
    """
    import torch

    # one torch thread: the generator's tensors are small, and extra threads only wait on each other
    torch.set_num_threads(1)
    console = Console(stderr=True)
    if host is not None and not measure:
        raise UserError("--host is where --measure times nets: add --measure N, or drop --host")
    cluster, threads = make_placement(**placement)
    if (cluster is not None or threads is not None) and not train:
        raise UserError("--ray and --cpus-per-net place the nets --train trains: add --train N, or drop them")
    loop = LoopOptions(measure=measure, host=host, ssh=make_ssh_options(ssh_config, remote_python, remote_dir, host),
                       train=train, trainer=trainer, data=data, epochs=epochs, ray=cluster, threads=threads)

    def say(message):  # through the bars' console, so a line printed meanwhile stands above them
        console.print(message, highlight=False, soft_wrap=True)

    # the bars start on the first report, so a refusal up front prints one line; piped, no lines (each sampling
    # round would be a hundred)
    with stage_progress(console, lines=False) as progress:
        run = generate_run(space=space, profile=profile, precision=precision, dataset=dataset, max_latency=max_latency,
                           max_params=max_params, max_macs=max_macs, weights=weights, num=num, samples=samples,
                           strategy=strategy, seed=seed, out=out, progress=progress, force=force,
                           level=parse_probability(confidence, "--confidence"),
                           command=" ".join(["pomonag-edge", *sys.argv[1:]]), loop=loop, say=say)
    if fmt == "json":
        run.result.require_feasible(run.problem.budget)
        json.dump({"run_dir": str(run.path), "profile": run.manifest["profile"], "dataset": run.problem.dataset,
                   "margin": run.problem.margin, "loop": run.manifest.get("loop"), "nets": run.result.selected},
                  sys.stdout, indent=2, default=str)
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
    legend = measured_note(run.result.selected)
    if legend:
        out_console.print(legend, highlight=False, soft_wrap=True)
    loop = run.manifest.get("loop")
    if loop:
        out_console.print(loop_line(loop), highlight=False, soft_wrap=True)
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
    out_console.print(f"wrote {run.path}/pareto.json, pareto.csv, manifest.json, pareto.png "
                      f"({run.result.stats['seconds']} s search; full arch strings in pareto.csv)",
                      highlight=False, soft_wrap=True)


MEASURED_MARK = "*"


def loop_line(loop: dict) -> str:
    """What the closed loop did and why it stopped, in one sentence."""
    stop = loop["stop"] or {}
    made = [f"{loop['timings']} of {loop['measure']} timings" if loop["measure"] else "",
            f"{loop['trainings']} of {loop['train']} trainings" if loop["train"] else ""]
    chance = stop.get("p_beat")
    why = stop.get("why", "")
    if stop.get("reason") == "converged":
        why += f" (chance <= {chance:.1%}, threshold {stop['threshold']:.0%})"
    revisions = [v for v in (loop.get("profile_revision"), loop.get("dataset_revision")) if v]
    return (f"closed loop: {', '.join(m for m in made if m)} in {loop['rounds']} rounds; stopped: {why}"
            + (f"; measurements saved in {', '.join(revisions)}" if revisions else ""))


def render_table(rows, problem, title: str = "", width: int | None = None):
    """One row per net: its rank, its row in the space's tables (``index``, where the space has them), the arch
    string only where the width shows it whole (abbreviated, NB201's strings all start alike; the run's files
    hold them), the numbers and the budget verdict never cut. A value measured (latency on the device,
    accuracy by training) is marked ``*``; the others are predictions."""
    def value(r, key, fmt):
        measured = r.get(f"{key}_measured")
        return fmt.format(r[key]) if measured is None else fmt.format(measured) + MEASURED_MARK

    has_index = any(r.get("index") is not None for r in rows)
    acc_label = problem.predictors.source.get("accuracy_label", "accuracy %") if problem is not None else "accuracy %"
    columns = [("#", "right", [str(r.get("rank") or i) for i, r in enumerate(rows, start=1)])]
    if has_index:
        columns.append(("index", "right", ["" if r.get("index") is None else str(r["index"]) for r in rows]))
    columns += [(acc_label, "right", [value(r, "accuracy", "{:.2f}") for r in rows]),
                ("latency ms", "right", [value(r, "latency_ms", "{:.3f}") for r in rows]),
                ("params", "right", [format_count(r["params"]) for r in rows]),
                ("MACs", "right", [format_count(r["macs"]) for r in rows]),
                ("P(within budget)", "center", [_within(r) for r in rows])]
    widths = [max([len(h)] + [len(c) for c in cells]) for h, _, cells in columns]
    archs = [r["arch"] for r in rows]
    room = None if width is None else width - sum(widths) - 3 * (len(columns) + 1) - 1
    if room is None or room >= max(map(len, archs), default=0):
        columns.insert(2 if has_index else 1, ("arch", "left", archs))
    elif not has_index:  # nothing else tells the nets apart: the arch, its head and tail (the middle cut)
        keep = max(room, 11)
        columns.insert(1, ("arch", "left", [a if len(a) <= keep else a[:(keep - 1) // 2] + "…" + a[-(keep // 2):]
                                            for a in archs]))
    table = Table(title=title)
    for name, justify, cells in columns:
        table.add_column(name, justify=justify, no_wrap=True, min_width=max([len(name)] + [len(c) for c in cells]))
    for k in range(len(rows)):
        table.add_row(*(cells[k] for _, _, cells in columns))
    return table


def measured_note(rows) -> str | None:
    """The legend of the ``*`` mark, when a shown value is measured."""
    if not any(r.get("latency_ms_measured") is not None or r.get("accuracy_measured") is not None for r in rows):
        return None
    return f"{MEASURED_MARK} measured (latency on the device, accuracy by training); other values predicted"


def _within(row: dict) -> str:
    """The probability of fitting the latency budget, marked when the net does not make the asked level."""
    p = row.get("p_within_budget")
    text = "yes" if p is None else f"{p:.0%}"
    return text if row["feasible"] else f"{text} (no)" if p is not None else "no"
