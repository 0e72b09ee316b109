"""``pomonag-edge probe``: a few chosen nets trained briefly on your task -> measurements CSV + dataset profile."""

from __future__ import annotations

import click

from ..calibration import ACCURACY_SCALES
from ..probe import probe_task
from ._progress import stage_progress
from .options import SEED, make_placement, placement_options


@click.command(short_help="Dataset profile from a few nets trained on your data or by your pipeline.")
@click.option("--data", "data", type=click.Path(), default=None, metavar="DIR|FILE.npz",
              help="Your images, trained with the built-in NB201 recipe: a folder DIR/<class>/*.png|jpg|jpeg, or an "
                   ".npz with x (images) and y (labels).")
@click.option("--trainer", default=None, metavar="CMD",
              help="Your own training pipeline instead of --data (it owns its data: signals, PDEs, anything): run "
                   "once per net with {arch}, {space}, {epochs}, {seed}, {classes}, {workdir} (a folder with the "
                   "untrained state_dict.pt and arch.txt) and {onnx} (the untrained net) filled in; the last line "
                   "it prints is the accuracy, percent or fraction.")
@click.option("--trainer-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Longest one --trainer call may take [default: no limit].")
@click.option("--accuracy-scale", type=click.Choice(ACCURACY_SCALES), default="auto", show_default=True,
              help="Scale of the accuracies --trainer prints: auto reads all values within 0..1 as fractions, others "
                   "as percent, and refuses a mix; percent or fraction says so outright.")
@click.option("--num-classes", type=click.IntRange(min=2), default=10, show_default=True,
              help="With --trainer: classes of the untrained nets' classifier (and of the costs).")
@click.option("--space", type=click.Choice(["nb201"]), default="nb201", show_default=True,
              help="Search space (user tasks: nb201; mbv3's accuracy is OFA's ImageNet estimate).")
@click.option("--probes", type=click.IntRange(5), default=20, show_default=True,
              help="How many nets to train (at least 5).")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True,
              help="Epochs per probe (NB201's recipe, its cosine schedule scaled to these epochs; --trainer: "
                   "its {epochs}).")
@click.option("--name", default=None, help="Name of the task [default: the data folder's name; needed with --trainer "
                                           "unless --out is given].")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Dataset profile to write [default: datasets/NAME.json]; measurements go beside it as .csv.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the split, the probe choice and training (--trainer: the untrained weights, its {seed}).")
@placement_options
def command(data, trainer, trainer_timeout, accuracy_scale, num_classes, space, probes, epochs, name, out, seed,
            **placement):
    """Train PROBES nets chosen to inform the accuracy model on your task, measure each on a held-out split,
    and fit the dataset profile that `generate --dataset PATH` uses. With --data the built-in recipe trains
    them (on a GPU when torch sees one); with --trainer CMD your pipeline does.
    Interrupted? Run the same command again: finished probes are kept, the current one resumes.
    With --ray, each probe is one Ray task (--trainer's too) and the same seeds give the same measurements."""
    cluster, threads = make_placement(**placement)
    with stage_progress() as progress:
        profile, path, csv_path = probe_task(data, space, probes=probes, epochs=epochs, out=out, seed=seed,
                                             name=name, progress=progress, trainer=trainer,
                                             trainer_timeout_s=trainer_timeout, accuracy_scale=accuracy_scale,
                                             num_classes=num_classes, threads=threads, ray=cluster)
    cv = profile.accuracy_model["cv"]
    accs = [m["accuracy"] for m in profile.measurements]
    how = f"trained {epochs} epoch(s), validation accuracy" if trainer is None else \
        f"measured by --trainer ({profile.scale}), accuracy"
    click.echo(f"{csv_path}: {len(accs)} probes {how} {min(accs):.1f}-{max(accs):.1f}%")
    click.echo(f"{path}: accuracy model fitted (cross-validated: {int(cv['error_quantile'] * 100)}% of errors "
               f"within {cv['error_points']:.2f} points, Spearman {cv['spearman']:.2f})")
    chance = profile.source.get("probe", {}).get("chance") or {}
    if chance.get("at_chance"):
        click.echo(f"warning: the probes learned nothing: the best of {chance['probes']} reached "
                   f"{chance['best_pct']:.1f}%, within noise of chance "
                   f"({chance['chance_pct']:.1f}%, the largest class; "
                   f"{chance['threshold_pct']:.1f}% is the most {chance['n_val']} validation images give by luck), so "
                   f"their accuracies rank nets by luck: train them longer (--epochs {2 * epochs}) or give more "
                   "images", err=True)
