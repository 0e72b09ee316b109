"""``pomonag-edge profile``: measure this device into ``profiles/<device>.json`` (resumable)."""

from __future__ import annotations

import click

from ..hardware.backends import BACKENDS, PRECISIONS
from .options import dataset_option, space_option


@click.command(short_help="Measure this device into a profile.")
@click.option("--device", default="cpu", show_default=True, metavar="NAME|PATH",
              help="Device descriptor (`pomonag-edge devices` lists them) or a .toml file of the same form.")
@space_option
@dataset_option
@click.option("--quick", is_flag=True, help="Fewer timed runs: a fast, rougher profile (tests, a first look). "
              "mbv3: layers timed at resolutions 128 and 224 only, each alone (default: every 16 from 128 to "
              "224, residual blocks as chains); other resolutions are interpolated.")
@click.option("--calibration", type=click.IntRange(min=0), default=20, show_default=True,
              help="Whole nets to time for calibrating the latency model (chosen to span the latency range).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads [device default: 1].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="[device default: fp32 on cpu, fp16 on gpu / jetson]")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size [device default: 1].")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=None,
              help="Runtime to time with [device default: the first available of its list].")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="cpu: count only this thread's CPU time (onnxruntime, 1 thread), steady on a shared machine; "
                   "wall is the deployment number.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Profile file to write [default: profiles/<device>.json].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration choice and inputs.")
@click.option("--fresh", is_flag=True, help="Start over instead of continuing a partial profile at the same path.")
def command(device, space, dataset, quick, calibration, threads, precision, batch, backend, clock, out, seed, fresh):
    """Time every building block of the search space (per-op LUT) and a few whole nets on this device.

    Progress is saved after every measurement: Ctrl-C and the same command again continues.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from ..hardware.profiler import ProfileRequest, build_profile, profile_path

    console = Console(stderr=True)
    req = ProfileRequest(device=device, space=space, dataset=dataset, quick=quick, calibration=calibration,
                         threads=threads, precision=precision, batch=batch, backend=backend, clock=clock, out=out,
                         seed=seed, fresh=fresh)
    labels = {"lut": "per-op table", "calibration": "calibration nets"}
    bar = Progress(TextColumn("{task.description:<17}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), console=console)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int, item: str) -> None:
        if not tasks:  # started on the first report, so a setting refused up front prints only its line
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(labels.get(stage, stage), total=total, completed=done)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        result = build_profile(req, progress=progress)
    except KeyboardInterrupt:
        bar.stop()  # before the message, so it is not drawn over
        path = profile_path(req)
        console.print(f"interrupted: what was measured is saved in {path}; run the same command again to continue"
                      if path.exists() else "interrupted before anything was measured")
        raise SystemExit(130) from None
    finally:
        if tasks:  # Progress.stop prints a blank line off a terminal even when never started
            bar.stop()

    p = result.profile
    for reason in result.skipped_backends:
        console.print(f"[yellow]skipped backend[/] {reason}")
    calib = [c["latency_ms"] for c in p.calibration]
    span = f"{min(calib):.2f}-{max(calib):.2f} ms" if calib else "none"
    rt = p.runtime
    console.print(f"{'resumed and finished' if result.resumed else 'wrote'} [bold]{result.path}[/] in "
                  f"{result.seconds:.0f} s: {len(p.lut)} LUT entries, {len(calib)} calibration nets ({span}); "
                  f"{rt['backend']} {rt['precision']}, batch {rt['batch']}, {rt['threads']} thread(s), "
                  f"{rt['protocol']} protocol, {rt['clock']} clock")
    if result.model_note:
        console.print(f"[yellow]no latency model fitted:[/] {result.model_note}")
