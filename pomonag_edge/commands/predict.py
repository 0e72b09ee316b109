"""``pomonag-edge predict``: objectives for archs read one per line from a file or stdin."""

from __future__ import annotations

import csv
import json
import sys
from typing import Sequence

import click

from ..dataset_profile import resolve_dataset
from ..files import read_user_text
from ..predictors import accuracy_predictor_for, latency_model_for
from ..profile import resolve_profile
from ..spaces import Arch, SearchSpace, get_space, parse_lines
from .options import dataset_option, profile_option, space_option


@click.command(short_help="Objectives for archs from a file.")
@space_option
@click.option("--archs", "archs_file", metavar="PATH", required=True,
              help="File with one arch string per line; '-' reads standard input.")
@dataset_option
@profile_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
def command(space, archs_file, dataset, profile, fmt):
    """Print exact params and MACs (and predicted latency_ms / accuracy) for each arch, in input order."""
    sp = get_space(space)
    text = read_user_text(archs_file, "archs file")
    archs = parse_lines(sp, text.splitlines(), source="<stdin>" if archs_file == "-" else archs_file)
    rows = predict_rows(sp, archs, dataset=dataset, profile=profile)
    if rows and "accuracy" in rows[0]:
        accp = accuracy_predictor_for(sp, resolve_dataset(dataset, sp))
        if hasattr(accp, "note"):  # the column is not a plain prediction (mbv3: OFA's ImageNet estimate)
            click.echo(f"note: {accp.note()}", err=True)
    if fmt == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["arch", "params", "macs"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def predict_rows(space: SearchSpace, archs: Sequence[Arch], dataset: str | None = None,
                 profile: str | None = None) -> list[dict]:
    """One dict per arch, in input order: ``arch, params, macs`` (+ ``latency_ms``, ``accuracy``)."""
    if dataset is not None:
        dataset = resolve_dataset(dataset, space)  # a shipped name (checked), or a user task's dataset profile
    rows = [{"arch": str(a), "params": space.params(a, dataset), "macs": space.macs(a, dataset)} for a in archs]
    if profile is not None:
        model = latency_model_for(space, resolve_profile(profile, space=space.name))
        for row, ms in zip(rows, model.predict_ms(archs)):
            row["latency_ms"] = round(float(ms), 4)
    if dataset is not None:
        for row, acc in zip(rows, accuracy_predictor_for(space, dataset).predict(archs, dataset)):
            row["accuracy"] = round(float(acc), 3)
    return rows
