"""The ``pomonag-edge`` command: a thin Click group whose subcommands load lazily.

Each subcommand lives in ``pomonag_edge/commands/<name>.py`` as ``command``; ``--help`` reads the
one-line summaries below without importing them (or torch), so it answers at once and a missing
optional backend breaks only the command that needs it.
"""

from __future__ import annotations

from importlib import import_module

import click

from . import __version__
from .errors import UserError

# name -> one-line summary, in pipeline order
COMMANDS = {
    "devices": "List device descriptors and shipped reference profiles.",
    "profile": "Measure this device: per-op latency table, calibration nets, fitted latency model.",
    "calibrate": "Build a device or dataset profile from nets measured elsewhere (arch,latency_ms or arch,accuracy).",
    "probe": "Train a few chosen nets briefly on your data: measurements and a dataset profile.",
    "predict": "Exact params and MACs, predicted latency and accuracy, for archs from a file.",
    "generate": "Generate Pareto-optimal nets within a latency / params / MACs budget.",
    "train": "Train a run's best nets on your data; measured accuracy beside the predicted.",
    "export": "Export the best nets to ONNX / TensorRT and re-measure their latency on the target.",
    "pretrain": "Retrain the shipped predictor and generator checkpoints reproducibly.",
}


class LazyGroup(click.Group):
    """Loads a subcommand's module on first use; turns ``UserError`` and a bad option into one line and exit
    status 2."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return import_module(f"pomonag_edge.commands.{name}").command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except click.UsageError as e:  # a bad option value: one line too, pointing at the command's help
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"Error: {e.format_message()} (see `{where} --help`)", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pomonag-edge")
def cli():
    """Design neural networks for one measured edge device.

    \b
    pomonag-edge profile  --device cpu        # on the target: per-op LUT, calibration timings, latency model
    pomonag-edge generate --max-latency 5ms   # guided diffusion -> Pareto-optimal nets within budget
    pomonag-edge export                       # best nets -> ONNX / TensorRT, latency re-measured
    """


def main():  # console-script entry point
    cli()
