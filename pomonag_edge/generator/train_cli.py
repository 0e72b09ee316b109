"""``pomonag-edge pretrain generator``: trains the score network and writes a checkpoint (.pt + .json).

Registered in the ``pretrain`` group (``pomonag_edge/commands/pretrain.py``). torch is imported inside the
command so ``--help`` stays fast. The shipped checkpoints are exactly the defaults with --seed 0: the options
below for nb201; for mbv3 the unset options take ``train.SPACE_DEFAULTS['mbv3']`` (training set pareto, batch
128: one step of the 26-token network costs ~70 ms here, so 3,000 steps train in ~4 min on one thread).
"""

from __future__ import annotations

import click


@click.command("generator", short_help="Train the diffusion generator's score network.")
@click.option("--space", default="nb201", show_default=True, help="Search space.")
@click.option("--training-set", "kind", type=click.Choice(["valid", "pareto"]), default=None,
              help="valid: every connected net (mbv3: 40,000 OFA-sampled nets); pareto: first fronts of (accuracy, "
                   "params, MACs), >= 3,000 nets (mbv3: the most accurate quarter per MAC bin). Default: valid for "
                   "nb201, pareto for mbv3.")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=None, type=click.IntRange(1), help="Batch size (default 256; mbv3 128).")
@click.option("--d-model", default=64, show_default=True, type=click.IntRange(8))
@click.option("--layers", default=2, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="torch intra-op threads.")
@click.option("--out", default=None, metavar="STEM",
              help="Output path without suffix (writes STEM.pt and STEM.json); default: the shipped checkpoint.")
def command(space, kind, steps, batch, d_model, layers, lr, seed, threads, out):
    """Train the score network by denoising score matching; same arguments, same checkpoint."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..spaces import get_space
    from .train import SPACE_DEFAULTS, save_checkpoint, shipped_checkpoint, train_score_model

    torch.set_num_threads(threads)
    sp = get_space(space)
    defaults = SPACE_DEFAULTS.get(sp.name, SPACE_DEFAULTS["nb201"])
    kind = kind or defaults["kind"]
    batch = batch or defaults["batch"]
    stem = out if out is not None else shipped_checkpoint(sp.name).with_suffix("")
    with Progress(TextColumn("training score network"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        model, sde, meta = train_score_model(
            sp, steps=steps, batch=batch, d_model=d_model, layers=layers, lr=lr, seed=seed, kind=kind,
            progress=lambda done, total, loss: bar.update(task, completed=done, loss=loss))
    meta["training"]["threads"] = threads
    pt, js = save_checkpoint(model, meta, stem)
    loss = meta["training"]["final_loss_ema"]
    click.echo(f"wrote {pt} ({pt.stat().st_size / 1e6:.2f} MB) and {js}; final loss {loss}")
