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
