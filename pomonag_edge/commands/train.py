"""``pomonag-edge train``: a run's best nets trained on your data; measured accuracy beside the predicted."""

from __future__ import annotations

import click

from .options import SEED, make_placement, placement_options


@click.command(short_help="Train a run's best nets on your data.")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--data", "data", type=click.Path(), required=True, metavar="DIR|FILE.npz",
              help="Your images: a folder DIR/<class>/*.png|jpg|jpeg, or an .npz with x (images) and y (labels).")
@click.option("--top", type=click.IntRange(1), default=1, show_default=True, help="How many nets, in the run's rank order.")
@click.option("--epochs", type=click.IntRange(1), default=200, show_default=True,
              help="Epochs (NB201's recipe: SGD Nesterov, lr 0.1 cosine, wd 5e-4, batch 256).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the split and of training.")
@placement_options
def command(run_dir, data, top, epochs, seed, **placement):
    """Train the top nets of RUN_DIR (default: the newest under ./runs) on your data, checkpointing every epoch
    in RUN_DIR/train/, and record their validation accuracy there. `export` then ships these weights.
    Interrupted? Run the same command again: finished nets are kept, the current one resumes.
    With --ray, each net is one Ray task; checkpoints and results are still written here."""
    from rich.console import Console
    from rich.table import Table

    from ..export import resolve_run_dir
    from ..training import train_run
    from ._progress import stage_progress

    cluster, threads = make_placement(**placement)
    with stage_progress() as progress:
        results = train_run(resolve_run_dir(run_dir), data, top=top, epochs=epochs, seed=seed, progress=progress,
                            threads=threads, ray=cluster)
    table = Table(title=f"{len(results['nets'])} net(s) trained on {results['task']['name']} "
                        f"({epochs} epochs, validation split of {results['data']['split']['n_val']} images)")
    for col in ("#", "arch", "predicted %", "measured %", "seconds"):
        table.add_column(col, justify="left" if col == "arch" else "right", overflow="fold")
    for n in results["nets"]:
        pred = n.get("accuracy_predicted")
        table.add_row(str(n["rank"]), n["arch"], "-" if pred is None else f"{pred:.2f}",
                      f"{n['accuracy_measured']:.2f}", f"{n['seconds']:.0f}")
    console = Console()
    console.print(table)
    console.print(f"wrote {results['path']}", highlight=False)
