"""``pomonag-edge calibrate``: a profile from whole-net latencies measured elsewhere (CSV of arch,latency_ms)."""

from __future__ import annotations

import click

from .options import space_option

POOR_FIT = 0.25  # cross-validated q90 relative error above which the timings fit no model well


@click.command(short_help="Profile from a CSV of arch,latency_ms.")
@space_option
@click.option("--measurements", type=click.Path(dir_okay=False), required=True,
              help="CSV with header arch,latency_ms (median ms per net, batch 1 unless your profile says otherwise), "
                   "at least 5 rows.")
@click.option("--name", required=True, help="Name of the device setting, e.g. 'pi5-ort-fp32'.")
@click.option("--base", default=None, metavar="PATH",
              help="Refine this profile (keeps its LUT and device facts, adds the timings).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the profile [default: profiles/NAME.json].")
def command(space, measurements, name, base, out):
    """Fit the latency model to timings measured on another machine and write a profile."""
    from pathlib import Path

    from ..predictors.calibration import calibrate_profile, read_measurements
    from ..profile import PROFILES_DIR, load_profile
    from ..spaces import get_space

    sp = get_space(space)
    items = read_measurements(sp, measurements)
    profile = calibrate_profile(sp, items, name, base=load_profile(base) if base else None,
                                source=Path(measurements).name)
    path = profile.save(out or PROFILES_DIR / f"{name}.json")
    model = profile.latency_model
    click.echo(f"{path}: {model['n_calibration']} calibration timings, latency model fitted "
               f"(cross-validated {int(model['relative_error_quantile'] * 100)}% relative error "
               f"{100 * model['relative_error']:.1f}%; budget margins per net follow from it)")
    if model["relative_error"] > POOR_FIT:
        click.echo(f"warning: these {model['n_calibration']} timings fit no latency model well (cross-validated "
                   f"{int(model['relative_error_quantile'] * 100)}% relative error {100 * model['relative_error']:.0f}%"
                   f"); profile the device op by op instead: pomonag-edge profile --host USER@DEVICE", err=True)
