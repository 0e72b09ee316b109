"""``pomonag-edge export``: the run's best nets -> checked ONNX / TensorRT files, latency re-measured."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from ..export import ExportOptions, export_run, parse_formats, render
from ..export.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from ..export.report import summary_json
from ..hardware.backends import PRECISIONS
from ..runs import resolve_run_dir
from .options import SEED, make_ssh_options, profile_option, ssh_options


@click.command(short_help="Export the best nets and re-measure them.")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--top", "top", type=click.IntRange(1), default=5, show_default=True,
              help="How many nets, in the run's rank order.")
@click.option("--format", "fmt", default="onnx", show_default=True, metavar="onnx|tensorrt|onnx,tensorrt",
              help="What to build. TensorRT engines are built from the ONNX files, on an NVIDIA GPU.")
@profile_option
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Precision of the measured runtime and of TensorRT engines (default: the profile's). int8: Q/DQ "
                   "ONNX files (ONNX Runtime static quantization), timed and checked beside their FP32 files.")
@click.option("--calib-images", type=click.IntRange(min=1), default=256, show_default=True,
              help="int8: training images the quantization ranges are calibrated on.")
@click.option("--calib-data", type=click.Path(), default=None, metavar="PATH",
              help="int8: images to calibrate on (an image folder or .npz, as train reads it) [default: the data "
                   "the nets were trained on, else the task's images, else random inputs (accuracy then not "
                   "claimed)].")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset.")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch axis (checked at batch 1 and 2).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="A state_dict (or {arch: state_dict}) to export instead of a seeded random init.")
@click.option("--allow-over-budget", is_flag=True,
              help="Exit 0 even when a net measures over the latency budget (it is still marked).")
@click.option("--measure/--no-measure", default=None,
              help="Time the nets (default: when this machine is the profile's device). --measure re-times an "
                   "existing export in place, reusing its .onnx files.")
@click.option("--feedback/--no-feedback", default=True, show_default=True,
              help="Add measured latencies to the profile's calibration set and refit its latency model.")
@click.option("--quick", is_flag=True, help="Quick timing protocol (fewer runs): for tests, not for decisions.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random weights and inputs.")
@click.option("--drift-nets", type=click.IntRange(min=0), default=3, show_default=True,
              help="The profile's own calibration nets timed again, interleaved with the exported ones, to tell a "
                   "device running slower today from a wrong latency model (0: none).")
@click.option("--host", default=None, metavar="USER@ADDR[:PORT]",
              help="Measure on this device over SSH through the device runner (it needs python3 and trtexec or "
                   "onnxruntime there); TensorRT engines are built there and brought back beside the ONNX files.")
@ssh_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (per net: rank, arch, status, files, "
              "median ms) on stdout instead of the table, for scripts.")
@click.pass_context
def command(ctx, run_dir, top, fmt, profile, precision, calib_images, calib_data, opset, dynamic_batch, weights,
            allow_over_budget, measure, feedback, quick, seed, drift_nets, host, ssh_config, remote_python, remote_dir,
            as_json):
    """Export the top nets of RUN_DIR (default: the run generated last under ./runs) to RUN_DIR/export/.

    Each net's ONNX Runtime outputs are checked against PyTorch within a stated relative tolerance, then
    timed with the profile's runtime and protocol and tested against the run's latency budget. Writes
    RUN_DIR/export/report.json. Exit status 1 if any net fails its check or measures over budget.
    Each export replaces RUN_DIR/export/ whole; measured latencies go into a new revision of the profile.

    A few of the profile's calibration nets are timed again beside them: the report gives each net's
    measured / predicted ratio raw and corrected for how much slower or faster the device runs now than
    when profiled. The budget test uses the raw measurement; the ±10% agreement is shown both ways.
    """
    options = ExportOptions(top=top, formats=parse_formats(fmt), profile=profile, precision=precision,
                            calib_images=calib_images, calib_data=calib_data, opset=opset,
                            dynamic_batch=dynamic_batch, weights=weights, allow_over_budget=allow_over_budget,
                            measure=measure, feedback=feedback, quick=quick, seed=seed, drift_nets=drift_nets,
                            host=host, ssh=make_ssh_options(ssh_config, remote_python, remote_dir, host))
    console = Console(stderr=as_json)
    run_dir = resolve_run_dir(run_dir)
    try:
        with console.status("exporting") as status:
            report = export_run(run_dir, options, progress=lambda msg: status.update(msg))
    except KeyboardInterrupt:
        click.echo(f"interrupted: {run_dir}/export is as it was (this export's files were removed)", err=True)
        raise SystemExit(130) from None
    if as_json:
        json.dump(summary_json(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(report, console)
    if not report["summary"]["ok"]:
        ctx.exit(1)
