"""``pomonag-edge calibrate``: a profile from nets measured elsewhere: a device profile from a CSV of
arch,latency_ms, a dataset profile from a CSV of arch,accuracy."""

from __future__ import annotations

from pathlib import Path

import click

from ..calibration import (ACCURACY_SCALES, calibrate_profile, measured_precision, measurements_kind,
                           read_accuracy_measurements, read_measurements)
from ..dataset_profile import DATASETS_DIR, fit_dataset_profile
from ..errors import UserError
from ..files import check_name
from ..hardware.backends import PRECISIONS
from ..profile import PROFILES_DIR, check_profile_out, load_profile
from ..spaces import get_space
from .options import space_option

POOR_FIT = 0.25  # cross-validated q90 relative error above which the timings fit no model well
# what each latency-model candidate is, in the words of the line saying how much the timings trust it
EXPLANATIONS = {"head": "shipped-device embedding", "siblings": "shipped devices' tables",
                "head+siblings": "embedding and tables averaged", "macs": "MACs"}


@click.command(short_help="Profile from a CSV of arch,latency_ms or arch,accuracy.")
@space_option
@click.option("--measurements", type=click.Path(dir_okay=False), required=True,
              help="CSV with header arch,latency_ms (median ms per net, batch 1 unless your profile says otherwise) "
                   "for a device profile, or arch,accuracy (percent or fraction; optional epochs,seed) for a dataset "
                   "profile; at least 5 rows.")
@click.option("--name", required=True, help="Name of the device setting ('pi5-ort-fp32') or of the task ('defects').")
@click.option("--base", default=None, metavar="PATH",
              help="Refine this device profile (keeps its LUT and device facts, adds the timings).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the profile [default: profiles/NAME.json; datasets/NAME.json for accuracy].")
@click.option("--force", is_flag=True, help="Replace the profile already at the output path.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Precision the nets were timed at (or a precision column in the CSV, one value for all rows); "
                   "recorded in the device profile, whose runs export at it [default: fp32].")
@click.option("--accuracy-scale", type=click.Choice(ACCURACY_SCALES), default="auto", show_default=True,
              help="Scale of an arch,accuracy CSV: auto reads all values within 0..1 as fractions, others as "
                   "percent, and refuses a mix; percent or fraction says so outright.")
def command(space, measurements, name, base, out, force, precision, accuracy_scale):
    """Fit the latency model to timings measured on another machine and write a device profile, or the
    accuracy model to accuracies measured on your task and write a dataset profile (for --dataset PATH).

    Repeated rows of one net (or of functionally identical archs) are merged into their median: each
    distinct net counts once."""
    sp = get_space(space)
    check_name(name)
    if measurements_kind(measurements) == "accuracy":
        if base or precision:
            raise UserError(f"{'--base' if base else '--precision'} is for a device profile; an arch,accuracy CSV "
                            "makes a dataset profile")
        path = check_profile_out(out or DATASETS_DIR / f"{name}.json", force)
        items, scale = read_accuracy_measurements(sp, measurements, accuracy_scale)
        dprofile = fit_dataset_profile(sp, [dict(i, source=Path(measurements).name) for i in items], name,
                                       source={"kind": "measured elsewhere", "measurements": Path(measurements).name,
                                               "num_classes": 10, "num_classes_note": "assumed (costs only); "
                                               "`train --data` builds nets for the data's own classes"},
                                       scale=scale)
        path = dprofile.save(path)
        cv = dprofile.accuracy_model["cv"]
        click.echo(f"{path}: {len(items)} measured nets ({scale}), accuracy model fitted (cross-validated: "
                   f"{int(cv['error_quantile'] * 100)}% of errors within {cv['error_points']:.2f} points, "
                   f"Spearman {cv['spearman']:.2f})")
        return
    path = check_profile_out(out or PROFILES_DIR / f"{name}.json", force)
    items = read_measurements(sp, measurements)
    base_profile = load_profile(base).require_space(sp, base, flag="--base") if base else None
    profile = calibrate_profile(sp, items, name, base=base_profile, source=Path(measurements).name,
                                precision=measured_precision(measurements, items, precision, base_profile))
    path = profile.save(path)
    model = profile.latency_model
    rows = sum(i.get("repeats", 1) for i in items)
    if rows > len(items):
        click.echo(f"{rows} rows, {len(items)} distinct nets: repeated or functionally identical archs merged into "
                   "their median", err=True)
    click.echo(f"{path}: {model['n_calibration']} calibration timings ({len(items)} distinct nets from "
               f"{Path(measurements).name}), latency model fitted "
               f"(cross-validated {int(model['relative_error_quantile'] * 100)}% relative error "
               f"{100 * model['relative_error']:.1f}%; budget margins per net follow from it)")
    if model.get("candidates"):
        click.echo("leans on: " + ", ".join(f"{EXPLANATIONS.get(c['name'], c['name'])} {100 * c['weight']:.0f}%"
                                            for c in model["candidates"] if c["weight"] >= 0.01))
    if model["relative_error"] > POOR_FIT:
        click.echo(f"warning: these {model['n_calibration']} timings fit no latency model well (cross-validated "
                   f"{int(model['relative_error_quantile'] * 100)}% relative error {100 * model['relative_error']:.0f}%"
                   f"); profile the device op by op instead: pomonag-edge profile --host USER@DEVICE", err=True)
