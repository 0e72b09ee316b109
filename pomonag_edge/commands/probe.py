"""``pomonag-edge probe``: a few chosen nets trained briefly on your data -> measurements CSV + dataset profile."""

from __future__ import annotations

import click

from .options import SEED


@click.command(short_help="Dataset profile from a few nets trained on your data.")
@click.option("--data", "data", type=click.Path(), required=True, metavar="DIR|FILE.npz",
              help="Your images: a folder DIR/<class>/*.png|jpg|jpeg, or an .npz with x (images) and y (labels).")
@click.option("--space", type=click.Choice(["nb201"]), default="nb201", show_default=True,
              help="Search space (user tasks: nb201; mbv3's accuracy is OFA's ImageNet estimate).")
@click.option("--probes", type=click.IntRange(5), default=20, show_default=True, help="How many nets to train (at least 5).")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True,
              help="Epochs per probe (NB201's recipe, its cosine schedule scaled to these epochs).")
@click.option("--name", default=None, help="Name of the task [default: the data folder's name].")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Dataset profile to write [default: datasets/NAME.json]; measurements go beside it as .csv.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the split, the probe choice and training.")
def command(data, space, probes, epochs, name, out, seed):
    """Train PROBES nets chosen to inform the accuracy model on your data, measure each on a held-out split,
    and fit the dataset profile that `generate --dataset PATH` uses. Runs on a GPU when torch sees one.
    Interrupted? Run the same command again: finished probes are kept, the current one resumes."""
    from ..probe import probe_task
    from ._progress import stage_progress

    with stage_progress() as progress:
        profile, path, csv_path = probe_task(data, space, probes=probes, epochs=epochs, out=out, seed=seed,
                                             name=name, progress=progress)
    cv = profile.accuracy_model["cv"]
    accs = [m["accuracy"] for m in profile.measurements]
    click.echo(f"{csv_path}: {len(accs)} probes trained {epochs} epoch(s), validation accuracy "
               f"{min(accs):.1f}-{max(accs):.1f}%")
    click.echo(f"{path}: accuracy model fitted (cross-validated: {int(cv['error_quantile'] * 100)}% of errors "
               f"within {cv['error_points']:.2f} points, Spearman {cv['spearman']:.2f})")
