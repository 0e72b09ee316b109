"""``pomonag-edge pretrain``: retrain the shipped checkpoints reproducibly from a seed.

Each subcommand is an entry in ``SUBCOMMANDS`` (name -> module, attribute, summary), loaded only when
used; adding ``pretrain generator`` is one entry plus its module.
"""

from __future__ import annotations

from importlib import import_module

import click

SUBCOMMANDS = {
    "latency": ("pomonag_edge.commands.pretrain", "latency", "Latency embedding pretrained on the shipped tables (nb201: 32, mbv3: 9)."),
    "accuracy": ("pomonag_edge.commands.pretrain", "accuracy", "NB201 accuracy predictor on a seeded 10% of the table."),
    "generator": ("pomonag_edge.generator.train_cli", "command", "Diffusion generator's score network (denoising score matching)."),
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
@click.option("--space", type=click.Choice(["nb201", "mbv3"]), default="nb201", show_default=True,
              help="nb201: the 32 NB201 tables; mbv3: OFA's 9 GPU settings (5,000 MobileNetV3 nets).")
def latency(seed, out, steps, space):
    """Pretrain the latency embedding and device-head prior on every shipped latency table of the space."""
    import torch

    if space == "mbv3":
        from ..predictors.latency_mbv3 import LATENCY_CHECKPOINT, train_latency_checkpoint
    else:
        from ..predictors.latency import LATENCY_CHECKPOINT, train_latency_checkpoint

    torch.set_num_threads(1)
    kw = {} if steps is None else {"steps": steps}
    _save(train_latency_checkpoint(seed=seed, progress=_progress("latency"), **kw), out, LATENCY_CHECKPOINT)


@command.command("accuracy")
@_seed
@_out
@click.option("--steps", type=int, default=None, help="Optimizer steps [default: the shipped setting].")
def accuracy(seed, out, steps):
    """Train the dataset-conditioned NB201 accuracy predictor on a seeded 10% of the shipped table."""
    import torch

    from ..predictors.accuracy import ACCURACY_CHECKPOINT, train_accuracy_checkpoint

    torch.set_num_threads(1)
    kw = {} if steps is None else {"steps": steps}
    _save(train_accuracy_checkpoint(seed=seed, progress=_progress("accuracy"), **kw), out, ACCURACY_CHECKPOINT)
