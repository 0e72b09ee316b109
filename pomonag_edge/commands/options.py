"""Options shared by several commands, declared once."""

from __future__ import annotations

import click
from click.core import ParameterSource

from ..errors import UserError
from ..fanout import RayOptions
from ..hardware.remote import SSHOptions

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
SEED = click.IntRange(0, 2**32 - 1)
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
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def make_ssh_options(ssh_config, remote_python, remote_dir, hosts):
    """The ``SSHOptions`` of ``ssh_options``; one of them given without ``--host`` (``hosts`` empty) is refused
    with one line, since it would change nothing."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and not hosts:
        lone = [f"--{n.replace('_', '-')}" for n in ("ssh_config", "remote_python", "remote_dir") if given(ctx, n)]
        if lone:
            raise UserError(f"{', '.join(lone)} {'needs' if len(lone) == 1 else 'need'} --host USER@ADDR: "
                            "without it the nets are timed on this machine")

    return SSHOptions(config=ssh_config, python=remote_python, remote_dir=remote_dir)


def placement_options(f):
    """``--ray``, ``--cpus-per-net``, ``--gpus-per-net``, ``--ray-data``, ``--retries``: where and with what each
    net trains (``--cpus-per-net`` also without --ray)."""
    f = click.option("--retries", type=click.IntRange(0), default=None, metavar="N",
                     help="With --ray: times a net whose worker died is started again from its last epoch "
                          "[default: 2].")(f)
    f = click.option("--ray-data", type=click.Choice(["object-store", "shared"]), default=None,
                     help="With --ray: send your data to the cluster once through Ray's object store, or let every "
                          "node read it from the same path (a shared file system) [default: object-store].")(f)
    f = click.option("--gpus-per-net", type=click.FloatRange(0), default=None, metavar="G",
                     help="With --ray: GPUs each net reserves; 0.25 packs four nets per GPU [default: 0].")(f)
    f = click.option("--cpus-per-net", type=click.FloatRange(0, min_open=True), default=None, metavar="C",
                     help="torch's CPU threads per net (with --ray also the CPUs it reserves) [default: torch's own "
                          "here, 1 with --ray]. The same seeds and threads give the same weights, here or on Ray.")(f)
    f = click.option("--ray", "ray_address", default=None, metavar="HOST:PORT|auto|local",
                     help="Train each net as one Ray task: on the cluster whose head is HOST:PORT (`ray start --head` "
                          "prints it), the one this node belongs to (auto), or a Ray started here (local). Needs "
                          "the ray extra: pip install -e '.[ray]'.")(f)
    return f


def make_placement(ray_address, cpus_per_net, gpus_per_net, ray_data, retries):
    """(a ``fanout.RayOptions`` or None without --ray, torch threads per net or None); Ray's own options are
    refused without --ray."""
    if cpus_per_net is not None and not cpus_per_net > 0:
        raise UserError(f"--cpus-per-net must be above 0, got {cpus_per_net:g}")
    threads = None if cpus_per_net is None else max(1, int(cpus_per_net))
    if ray_address is None:
        given = {"--gpus-per-net": gpus_per_net, "--ray-data": ray_data, "--retries": retries}
        stray = [name for name, value in given.items() if value is not None]
        if stray:
            raise UserError(f"{', '.join(stray)} only apply with --ray ADDRESS")
        return None, threads
    chosen = {k: v for k, v in {"cpus_per_net": cpus_per_net, "gpus_per_net": gpus_per_net, "data": ray_data,
                                "retries": retries}.items() if v is not None}
    return RayOptions(ray_address, **chosen), threads
