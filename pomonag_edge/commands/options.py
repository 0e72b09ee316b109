"""Options shared by several commands, declared once."""

from __future__ import annotations

import click

space_option = click.option(
    "--space", default="nb201", show_default=True, metavar="NAME",
    help="Search space: nb201, mbv3, or one another package registers (entry-point group pomonag_edge.spaces).",
)
dataset_option = click.option(
    "--dataset", default=None, metavar="NAME",
    help="Dataset the accuracy refers to (nb201: cifar10, cifar100, imagenet16-120).",
)
profile_option = click.option(
    "--profile", "profile", default=None, metavar="PATH|NAME",
    help="A profile file, or the name of a shipped reference profile (see `pomonag-edge devices`).",
)
