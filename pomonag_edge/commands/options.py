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
profile_option = click.option(
    "--profile", "profile", default=None, metavar="PATH|NAME",
    help="A profile file, or the name of a shipped reference profile (see `pomonag-edge devices`).",
)


def ssh_options(f):
    """``--ssh-config``, ``--remote-python``, ``--remote-dir``: how ``--host`` reaches the device runner."""
    f = click.option("--remote-dir", default=".cache/pomonag-edge/runner", show_default=True, metavar="DIR",
                     help="Work folder on the host (relative to the login folder): graphs, runner, partial results.")(f)
    f = click.option("--remote-python", default="python3", show_default=True, metavar="CMD",
                     help="Interpreter on the host (>= 3.6) that runs the device runner; with --runtime onnxruntime "
                          "it must import onnxruntime.")(f)
    f = click.option("--ssh-config", type=click.Path(dir_okay=False), default=None,
                     help="ssh client config file for --host (ssh -F) [default: your ~/.ssh/config].")(f)
    return f


def make_ssh_options(ssh_config, remote_python, remote_dir):
    from ..hardware.remote import SSHOptions

    return SSHOptions(config=ssh_config, python=remote_python, remote_dir=remote_dir)
