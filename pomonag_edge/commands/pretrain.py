"""``pomonag-edge pretrain``: retrain the shipped checkpoints reproducibly from a seed.

Each subcommand is an entry in ``SUBCOMMANDS`` (name -> module, attribute, summary), loaded only when
used; adding ``pretrain generator`` is one entry plus its module.
"""

from __future__ import annotations

from importlib import import_module

import click

from ..errors import UserError
from .options import space_option

SUBCOMMANDS = {
    "latency": ("pomonag_edge.commands.pretrain", "latency", "Latency embedding pretrained on the space's shipped latency tables."),
    "accuracy": ("pomonag_edge.commands.pretrain", "accuracy", "NB201 accuracy predictor on a seeded 10% of the table."),
    "generator": ("pomonag_edge.commands.pretrain", "generator", "Diffusion generator's score network (denoising score matching)."),
}


class _LazyTrainGroup(click.Group):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return getattr(import_module(module), attr)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, _, summary) in SUBCOMMANDS.items()])


@click.group(cls=_LazyTrainGroup)
def command():
    """Train the shipped predictor and generator checkpoints reproducibly (torch on one thread)."""


def _progress(label: str):
    """A click progress bar fed by the trainers' ``progress(step, total, loss)`` callback."""
    state = {}

    def update(step, total, loss):
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total, label=label, file=click.get_text_stream("stderr"))
            state["bar"].__enter__()
        state["bar"].update(1)
        if step == total:
            state["bar"].__exit__(None, None, None)

    return update


def _save(ckpt: dict, out, default_name: str):
    from ..predictors.checkpoints import checkpoint_path, save_checkpoint

    path = out or checkpoint_path(default_name)
    sha = save_checkpoint(ckpt, path)
    from pathlib import Path

    click.echo(f"{path}: {Path(path).stat().st_size / 1024:.0f} KiB, sha256 {sha}")


_seed = click.option("--seed", type=int, default=0, show_default=True, help="Seed of everything random.")
_out = click.option("--out", type=click.Path(dir_okay=False), default=None,
                    help="Where to write the checkpoint [default: the shipped one in the package].")


@command.command("latency")
@_seed
@_out
@click.option("--steps", type=int, default=None, help="Optimizer steps [default: the shipped setting].")
@space_option
def latency(seed, out, steps, space):
    """Pretrain the latency embedding and device-head prior on every shipped latency table of the space
    (nb201: 32 device settings; mbv3: OFA's 9 GPU settings, 5,000 nets)."""
    import torch

    from ..predictors.latency import train_latency_checkpoint
    from ..spaces import get_space

    sp = get_space(space)
    if sp.latency_recipe is None:
        raise UserError(f"space {sp.name} states no latency embedding to pretrain")
    torch.set_num_threads(1)
    ckpt = train_latency_checkpoint(sp, seed=seed, steps=steps, progress=_progress("latency"))
    _save(ckpt, out, sp.latency_recipe.checkpoint)


@command.command("accuracy")
@_seed
@_out
@click.option("--steps", type=int, default=None, help="Optimizer steps [default: the shipped setting].")
def accuracy(seed, out, steps):
    """Train the dataset-conditioned NB201 accuracy predictor on a seeded 10% of the shipped table."""
    import torch

    from ..predictors.accuracy import ACCURACY_CHECKPOINT, train_accuracy_checkpoint
    from ..spaces import get_space

    torch.set_num_threads(1)
    kw = {} if steps is None else {"steps": steps}
    _save(train_accuracy_checkpoint(get_space("nb201"), seed=seed, progress=_progress("accuracy"), **kw), out,
          ACCURACY_CHECKPOINT)


@command.command("generator", short_help="Train the diffusion generator's score network.")
@space_option
@click.option("--training-set", "kind", default=None, metavar="KIND",
              help="The space's training set (nb201: valid = every connected net, pareto = first fronts of "
                   "(accuracy, params, MACs); mbv3: valid = 40,000 OFA-sampled nets, pareto = the most accurate "
                   "quarter per MAC bin). Default: the space's recipe.")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=None, type=click.IntRange(1), help="Batch size [default: the space's recipe].")
@click.option("--d-model", default=64, show_default=True, type=click.IntRange(8))
@click.option("--layers", default=2, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=2e-3, show_default=True, type=float)
@_seed
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="torch intra-op threads.")
@click.option("--out", default=None, metavar="STEM",
              help="Output path without suffix (writes STEM.pt and STEM.json); default: the shipped checkpoint.")
def generator(space, kind, steps, batch, d_model, layers, lr, seed, threads, out):
    """Train the score network by denoising score matching; same arguments, same checkpoint. The shipped
    checkpoints are these defaults with --seed 0."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..generator.train import save_checkpoint, shipped_checkpoint, train_score_model
    from ..spaces import get_space

    torch.set_num_threads(threads)
    sp = get_space(space)
    stem = out if out is not None else shipped_checkpoint(sp).with_suffix("")
    with Progress(TextColumn("training score network"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        model, sde, meta = train_score_model(
            sp, steps=steps, batch=batch, d_model=d_model, layers=layers, lr=lr, seed=seed, kind=kind,
            progress=lambda done, total, loss: bar.update(task, completed=done, loss=loss))
    meta["training"]["threads"] = threads
    pt, js = save_checkpoint(model, meta, stem)
    click.echo(f"wrote {pt} ({pt.stat().st_size / 1e6:.2f} MB) and {js}; final loss {meta['training']['final_loss_ema']}")
