"""``pomonag-edge train``: a run's best nets trained on your data; measured accuracy beside the predicted."""

from __future__ import annotations

import click
from rich import box
from rich.console import Console
from rich.table import Table

from ..runs import resolve_run_dir
from ..training import train_run
from ._progress import stage_progress
from .options import SEED, make_placement, placement_options


@click.command(short_help="Train a run's best nets on your data.")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--data", "data", type=click.Path(), required=True, metavar="DIR|FILE.npz",
              help="Your images: a folder DIR/<class>/*.png|jpg|jpeg, or an .npz with x (images) and y (labels).")
@click.option("--top", type=click.IntRange(1), default=1, show_default=True,
              help="How many nets, in the run's rank order.")
@click.option("--epochs", type=click.IntRange(1), default=200, show_default=True,
              help="Epochs (NB201's recipe: SGD Nesterov, lr 0.1 cosine, wd 5e-4, batch 256).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the split and of training.")
@placement_options
def command(run_dir, data, top, epochs, seed, **placement):
    """Train the top nets of RUN_DIR (default: the newest under ./runs) on your data, checkpointing every epoch
    in RUN_DIR/train/, and record their validation accuracy there. `export` then ships these weights.
    Interrupted? Run the same command again: finished nets are kept, the current one resumes.
    With --ray, each net is one Ray task; checkpoints and results are still written here."""
    cluster, threads = make_placement(**placement)
    with stage_progress() as progress:
        results = train_run(resolve_run_dir(run_dir), data, top=top, epochs=epochs, seed=seed, progress=progress,
                            threads=threads, ray=cluster)
    console = Console()
    console.print(render_table(results, epochs, console.width))
    if not results.get("same_task", True):
        console.print(f"predicted accuracies are for {results['predicted_for']}, the task the run was generated for, "
                      f"not for {results['task']['name']}: not shown beside the measured ones (results.json keeps "
                      "them, labelled). For predictions of your task, `pomonag-edge probe --data` it and generate "
                      "with --dataset datasets/NAME.json", highlight=False)
    console.print(f"wrote {results['path']}", highlight=False, soft_wrap=True)


def render_table(results: dict, epochs: int, width: int):
    """One row per net in ``width`` columns. Only the arch column shrinks, abbreviated with an ellipsis (the
    results file holds the full strings); each net's table index keeps abbreviated rows distinct, and the
    numbers are never cut."""
    comparable = results.get("same_task", True)
    headers = ("#", "index", "arch", "predicted %", "measured %", "seconds")
    cells = []
    for n in results["nets"]:
        pred = n.get("accuracy_predicted") if comparable else None
        cells.append((str(n["rank"]), "-" if n.get("index") is None else str(n["index"]), n["arch"],
                      "-" if pred is None else f"{pred:.2f}", f"{n['accuracy_measured']:.2f}", f"{n['seconds']:.0f}"))
    widths = [max([len(h)] + [len(c[k]) for c in cells]) for k, h in enumerate(headers)]
    arch_width = max(10, width - (sum(widths) - widths[2]) - 3 * (len(headers) - 1))  # 3: between two columns
    table = Table(title=f"{len(cells)} net(s) trained on {results['task']['name']} ({epochs} epochs, validation "
                        f"split of {results['data']['split']['n_val']} images)", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, title_justify="left")
    for k, col in enumerate(headers):
        table.add_column(col, justify="left" if col == "arch" else "right", no_wrap=True, overflow="ellipsis",
                         min_width=None if col == "arch" else widths[k],
                         max_width=arch_width if col == "arch" else None)
    for row in cells:
        table.add_row(*row)
    return table
