"""``pomonag-edge pretrain``: retrain the shipped checkpoints reproducibly from a seed.

Each subcommand is an entry in ``SUBCOMMANDS`` (name -> module, attribute, summary), loaded only when
used; adding ``pretrain generator`` is one entry plus its module.
"""

from __future__ import annotations

import hashlib
from importlib import import_module
from pathlib import Path

import click

from ..checkpoints import checkpoint_path, save_checkpoint
from ..errors import UserError
from ..files import check_writable
from ..predictors.latency_pretrain import train_latency_checkpoint
from ..spaces import get_space
from ..spaces.nb201.accuracy import ACCURACY_CHECKPOINT, train_accuracy_checkpoint
from ._progress import stage_progress
from .options import SEED, space_option

SUBCOMMANDS = {
    "latency": ("pomonag_edge.commands.pretrain", "latency",
                "Latency embedding pretrained on the space's shipped latency tables."),
    "accuracy": ("pomonag_edge.commands.pretrain", "accuracy",
                 "NB201 accuracy predictor on a seeded 10% of the table."),
    "generator": ("pomonag_edge.commands.pretrain", "generator",
                  "Diffusion generator's score network (denoising score matching)."),
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


def _stage(progress, label: str):
    """The trainers' ``progress(step, total, loss)`` as one stage of ``stage_progress``."""
    return lambda step, total, loss: progress(label, step, total, loss)


USER_CHECKPOINTS = Path("checkpoints")  # where retrained checkpoints go by default: never the package


def _target(out, shipped: Path) -> Path:
    """Where the checkpoint goes (``--out``, else ``./checkpoints/<shipped name>``), checked before any training:
    writable, and not inside the installed package."""
    return check_writable(Path(out) if out is not None else USER_CHECKPOINTS / shipped.name, "checkpoint")


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def _beside_shipped(sha: str, shipped: Path | None) -> str:
    """How the new checkpoint compares with the shipped one: the point of retraining it from a seed."""
    theirs = _sha(shipped) if shipped is not None else None
    if theirs is None:
        return "no shipped checkpoint to compare with"
    return f"identical to the shipped {shipped.name}" if theirs == sha else f"the shipped {shipped.name} is {theirs}"


def _save(ckpt: dict, path: Path, shipped: Path):
    sha = save_checkpoint(ckpt, path)
    click.echo(f"{path}: {path.stat().st_size / 1024:.0f} KiB, sha256 {sha} ({_beside_shipped(sha, shipped)})")


_seed = click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of everything random.")
_out = click.option("--out", type=click.Path(dir_okay=False), default=None,
                    help="Where to write the checkpoint [default: ./checkpoints/ under the shipped file's name; the "
                         "installed package's own files are never written].")


@command.command("latency")
@_seed
@_out
@click.option("--steps", type=click.IntRange(1), default=None, help="Optimizer steps [default: the shipped setting].")
@space_option
def latency(seed, out, steps, space):
    """Pretrain the latency embedding and device-head prior on every shipped latency table of the space
    (nb201: 32 device settings; mbv3: OFA's 9 GPU settings, 5,000 nets)."""
    import torch

    sp = get_space(space)
    if sp.latency_recipe is None:
        raise UserError(f"space {sp.name} states no latency embedding to pretrain")
    shipped = checkpoint_path(sp.latency_recipe.checkpoint)
    path = _target(out, shipped)
    torch.set_num_threads(1)
    with stage_progress() as progress:
        ckpt = train_latency_checkpoint(sp, seed=seed, steps=steps, progress=_stage(progress, "latency embedding"))
    _save(ckpt, path, shipped)


@command.command("accuracy")
@_seed
@_out
@click.option("--steps", type=click.IntRange(1), default=None, help="Optimizer steps [default: the shipped setting].")
def accuracy(seed, out, steps):
    """Train the dataset-conditioned NB201 accuracy predictor on a seeded 10% of the shipped table."""
    import torch

    shipped = checkpoint_path(ACCURACY_CHECKPOINT)
    path = _target(out, shipped)
    torch.set_num_threads(1)
    kw = {} if steps is None else {"steps": steps}
    with stage_progress() as progress:
        ckpt = train_accuracy_checkpoint(get_space("nb201"), seed=seed, progress=_stage(progress, "accuracy predictor"),
                                         **kw)
    _save(ckpt, path, shipped)


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
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Adam learning rate.")
@_seed
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="torch intra-op threads.")
@click.option("--out", default=None, metavar="STEM",
              help="Output path without suffix (writes STEM.pt and STEM.json) [default: ./checkpoints/ under the "
                   "shipped checkpoint's name; the installed package's own files are never written].")
def generator(space, kind, steps, batch, d_model, layers, lr, seed, threads, out):
    """Train the score network by denoising score matching; same arguments, same checkpoint. The shipped
    checkpoints are these defaults with --seed 0."""
    import torch

    from ..generator.train import save_checkpoint, shipped_checkpoint, train_score_model

    sp = get_space(space)
    if out is None or sp.generator_recipe.checkpoint is not None:
        shipped = shipped_checkpoint(sp)  # without --out, a space that ships none is one line: name an --out
    else:
        shipped = None  # a space of another package, trained for the first time
    stem = Path(out) if out is not None else USER_CHECKPOINTS / shipped.with_suffix("").name
    for suffix in (".pt", ".json"):
        check_writable(stem.with_suffix(suffix), "checkpoint")
    torch.set_num_threads(threads)
    with stage_progress() as progress:
        model, sde, meta = train_score_model(sp, steps=steps, batch=batch, d_model=d_model, layers=layers, lr=lr,
                                             seed=seed, kind=kind, progress=_stage(progress, "score network"))
    meta["training"]["threads"] = threads
    pt, js = save_checkpoint(model, meta, stem)
    click.echo(f"wrote {pt} ({pt.stat().st_size / 1e6:.2f} MB) and {js}; "
               f"final loss {meta['training']['final_loss_ema']}; "
               f"sha256 {_sha(pt)} ({_beside_shipped(_sha(pt), shipped)})")
