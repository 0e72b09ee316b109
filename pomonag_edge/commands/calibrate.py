"""``pomonag-edge calibrate``: a profile from whole-net latencies measured elsewhere (CSV of arch,latency_ms)."""

from __future__ import annotations

import click

from .options import space_option


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
@click.option("--force", is_flag=True, help="Replace the profile already at the output path.")
def command(space, measurements, name, base, out, force):
    """Fit the latency model to timings measured on another machine and write a profile.

    Repeated rows of one net (or of functionally identical archs) are merged into their median: each
    distinct net counts once."""
    from pathlib import Path

    from ..files import check_name
    from ..predictors.calibration import calibrate_profile, read_measurements
    from ..profile import PROFILES_DIR, check_profile_out, check_space, load_profile
    from ..spaces import get_space

    sp = get_space(space)
    path = check_profile_out(out or PROFILES_DIR / f"{check_name(name)}.json", force)
    items = read_measurements(sp, measurements)
    base_profile = check_space(load_profile(base), sp.name, base) if base else None
    profile = calibrate_profile(sp, items, name, base=base_profile, source=Path(measurements).name)
    path = profile.save(path)
    model = profile.latency_model
    rows = sum(i.get("repeats", 1) for i in items)
    if rows > len(items):
        click.echo(f"{rows} rows, {len(items)} distinct nets: repeated or functionally identical archs merged into "
                   "their median", err=True)
    click.echo(f"{path}: {model['n_calibration']} calibration timings ({len(items)} distinct nets from "
               f"{Path(measurements).name}), latency model fitted "
               f"(cross-validated {int(model['relative_error_quantile'] * 100)}% relative error "
               f"{100 * model['relative_error']:.1f}%, used as the budget margin)")
