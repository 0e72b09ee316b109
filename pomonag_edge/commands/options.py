"""Options shared by several commands, declared once."""

from __future__ import annotations

import click

from ..spaces import SPACES

space_option = click.option(
    "--space", type=click.Choice(sorted(SPACES)), default="nb201", show_default=True, help="Search space."
)
dataset_option = click.option(
    "--dataset", default=None, metavar="NAME",
    help="Dataset the accuracy refers to (nb201: cifar10, cifar100, imagenet16-120).",
)
profile_option = click.option(
    "--profile", "profile", default=None, metavar="PATH|NAME",
    help="A profile file, or the name of a shipped reference profile (see `pomonag-edge devices`).",
)
