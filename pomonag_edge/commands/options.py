"""Options shared by several commands, declared once."""

from __future__ import annotations

import click

space_option = click.option(
    "--space", default="nb201", show_default=True, metavar="NAME",
    help="Search space: nb201, mbv3, or one another package registers (entry-point group pomonag_edge.spaces).",
)
dataset_option = click.option(
    "--dataset", default=None, metavar="NAME|PATH",
    help="Dataset the accuracy refers to: a shipped one (nb201: cifar10, cifar100, imagenet16-120; mbv3: imagenet) "
         "or a dataset profile of your task (.json from `pomonag-edge probe` or `calibrate`; nb201).",
)
# a seed feeds numpy's and torch's generators, which take 0 .. 2**32 - 1; shown in --help as the range
SEED = click.IntRange(0, 2**31 - 1)
profile_option = click.option(
    "--profile", "profile", default=None, metavar="PATH|NAME",
    help="A profile file, or the name of a shipped reference profile (see `pomonag-edge devices`).",
)


def ssh_options(f):
    """``--ssh-config``, ``--remote-python``, ``--remote-dir``: how ``--host`` reaches the device runner."""
    f = click.option("--remote-dir", default=".cache/pomonag-edge/runner", show_default=True, metavar="DIR",
                     help="Work folder on the host (relative to the login folder): graphs, runner, partial results. "
                          "Needs --host.")(f)
    f = click.option("--remote-python", default="python3", show_default=True, metavar="CMD",
                     help="Interpreter on the host (>= 3.6) that runs the device runner; where the device times "
                          "with onnxruntime it must import onnxruntime. Needs --host.")(f)
    f = click.option("--ssh-config", type=click.Path(dir_okay=False), default=None,
                     help="ssh client config file for --host (ssh -F) [default: your ~/.ssh/config]. Needs --host.")(f)
    return f


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or through the environment), not its default."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def make_ssh_options(ssh_config, remote_python, remote_dir, hosts):
    """The ``SSHOptions`` of ``ssh_options``; one of them given without ``--host`` (``hosts`` empty) is refused
    with one line, since it would change nothing."""
    from ..errors import UserError
    from ..hardware.remote import SSHOptions

    ctx = click.get_current_context(silent=True)
    if ctx is not None and not hosts:
        lone = [f"--{n.replace('_', '-')}" for n in ("ssh_config", "remote_python", "remote_dir") if given(ctx, n)]
        if lone:
            raise UserError(f"{', '.join(lone)} {'needs' if len(lone) == 1 else 'need'} --host USER@ADDR: "
                            "without it the nets are timed on this machine")

    return SSHOptions(config=ssh_config, python=remote_python, remote_dir=remote_dir)
