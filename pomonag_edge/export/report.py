"""``RUN_DIR/export/report.json``: what was exported, how it was checked, what it measured, and where.

Schema (version 1), top level: ``schema, schema_version, complete, created, run_dir, space, dataset,
profile {name, spec, sha256, reference, run_profile_sha256}, budget {max_latency_ms, max_params, max_macs},
settings {...the options, precision, engine_precision, batch, threads, measured, timing_protocol,
predicted_by}, environment {runtime, precision, threads, batch, versions, device, profile_device,
profile_runtime, same_machine, mismatch, tensorrt}, nets [...], notes [...], feedback {applied, added,
skipped_noisy, why, ...} or null, summary {passed, checked, over_budget, failed, nets, ok, noisy,
within_10pct, compared}``. ``complete`` is false while nets are still being exported.

Each net: ``rank, arch, params, macs, predicted {latency_ms, accuracy}, weights ("trained", "--weights" or
"random (seeded)"), accuracy_measured? and accuracy_measured_on? (nets ``train`` trained on the user's data: top-1
% on the validation split), accuracy_measured_task? and accuracy_comparable? (false when the run predicted another
task, named in predicted.accuracy_for: the two are then not compared), preprocessing {input_name, input_shape, layout,
channels, pixel_scale, mean, std, normalise, classes, output_name} (also in each ONNX file's metadata_props as
``pomonag_edge.KEY``; mean, std and classes are null for untrained weights), files {onnx {path, bytes, sha256,
nodes, opset, input_shape, reused}, engine? {path, bytes, precision}}, checks [NumericCheck.to_dict(), one
per runtime], measured {backend: Measurement.to_dict()}, noisy?, latency_error_pct?, within_10pct?,
measured_over_predicted? {raw, drift_corrected}, latency_error_pct_corrected?, within_10pct_corrected?,
budget_ms, status, reasons, timing_s {export, check, engine?, measure?}``. ``drift`` (top level, or null):
``{factor, nets [{arch, then_ms, now_ms}], runtime, method}``: the profile's own calibration nets timed
again, interleaved with the exported nets; factor = median(now / then). Pass / fail against the budget
uses the raw measurement; the corrected ratio divides the raw one by the factor, telling a device that runs
slower today apart from a latency model that is wrong. ``summary`` adds ``within_10pct_corrected`` and
``drift_factor``. ``noisy``: the timing's
coefficient of variation stayed above the protocol's limit. ``status``: passed (measured within budget),
checked (numerics only: not measured, or measured on this machine for a reference profile, whose device
is never here; ``settings.measured_for_information`` is then true), over_budget, failed (a check or a
build failed).
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from rich import box
from rich.table import Table

from ..files import atomic_write_json
from ..hardware.drift import BAND
from ..versions import versions as installed

SCHEMA = "pomonag-edge/export-report"
SCHEMA_VERSION = 1
NET_STATUSES = ("passed", "checked", "over_budget", "failed")


def versions(tensorrt: bool = False) -> dict:
    """Versions of everything that changes an exported file or a measured number."""
    out = installed("tensorrt") if tensorrt else installed()
    if tensorrt and out.get("tensorrt") is None and find_spec("tensorrt") is not None:
        import tensorrt as trt  # a system TensorRT (JetPack) that pip does not list

        out["tensorrt"] = trt.__version__
    return out


def environment(backend: str, precision: str, threads: int, batch: int, detected: dict, profile,
                mismatch: list[str], tensorrt: bool) -> dict:
    return {"runtime": backend, "precision": precision, "threads": threads, "batch": batch,
            "versions": versions(tensorrt), "device": detected, "profile_device": profile.device,
            "profile_runtime": profile.runtime, "same_machine": not mismatch, "mismatch": mismatch,
            "tensorrt": tensorrt}


def write_report(path: str | Path, report: dict) -> Path:
    return atomic_write_json(path, report)


def summary_json(report: dict) -> dict:
    """The part of the report a script acts on: where it is, the verdict, and per net its status and files."""
    runtime = report["environment"]["runtime"]
    nets = [{"rank": n["rank"], "arch": n["arch"], "status": n["status"], "reasons": n["reasons"],
             "files": {k: v.get("path") for k, v in n["files"].items() if isinstance(v, dict)},
             "predicted_ms": n["predicted"]["latency_ms"],
             "measured_ms": (n["measured"].get(runtime) or {}).get("median_ms")} for n in report["nets"]]
    return {"report": report.get("path"), "run_dir": report["run_dir"], "profile": report["profile"]["name"],
            "summary": report["summary"], "feedback": report.get("feedback"), "notes": report["notes"], "nets": nets}


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(report: dict, console) -> None:
    """The rich table: one row per net, then notes and the summary line."""
    budget = report["budget"].get("max_latency_ms")
    env = report["environment"]
    title = (f"export of {report['run_dir']}  ·  profile {report['profile']['name']}  ·  {env['runtime']} "
             f"{env['precision']}, {env['threads']} thread(s), batch {env['batch']}"
             + (f"  ·  budget {budget:g} ms" if budget else ""))
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    names = [Path(n["files"]["onnx"]["path"]).stem if "onnx" in n["files"] else "-" for n in report["nets"]]
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("file (.onnx)", overflow="fold")
    accuracy = any("accuracy_measured" in n for n in report["nets"])
    int8 = any("accuracy_measured_fp32" in n for n in report["nets"])  # the INT8 file's accuracy beside FP32's
    speed = any("measured_fp32" in n for n in report["nets"])
    wide = not (speed or int8)  # the INT8 columns take the place of rel err and p90 (both stay in report.json)
    for col in ((("rel err",) if wide else ()) + ("pred ms", "median") + (("p90",) if wide else ()) + ("err %",)
                + (("fp32 ms", "x int8") if speed else ())
                + (("acc pred", "acc meas") if accuracy else ()) + (("acc fp32",) if int8 else ()) + ("status",)):
        table.add_column(col, justify="left" if col == "status" else "right", no_wrap=True)
    style = {"passed": "green", "checked": "cyan", "over_budget": "yellow", "failed": "bold red"}
    for n, name in zip(report["nets"], names):
        name += " +engine" if "engine" in n["files"] else ""
        rel = [c["max_rel_error"] for c in n["checks"] if c["max_rel_error"] is not None]
        m = n["measured"].get(env["runtime"])
        pred = n["predicted"]["latency_ms"]
        table.add_row(str(n["rank"]), name, *((f"{max(rel):.1e}" if rel else "-",) if wide else ()),
                      f"{pred:.3f}" if pred else "-", f"{m['median_ms']:.3f}" if m else "-",
                      *((f"{m['p90_ms']:.3f}" if m else "-",) if wide else ()),
                      f"{n['latency_error_pct']:+.1f}" if n.get("latency_error_pct") is not None else "-",
                      *((f"{n['measured_fp32']['median_ms']:.3f}" if n.get("measured_fp32") else "-",
                         f"{n['int8_speedup']:.2f}" if n.get("int8_speedup") else "-") if speed else ()),
                      *((_pct(n["predicted"].get("accuracy") if n.get("accuracy_comparable", True) else None),
                         _pct(n.get("accuracy_measured"))) if accuracy else ()),
                      *((_pct(n.get("accuracy_measured_fp32")),) if int8 else ()),
                      f"[{style[n['status']]}]{n['status']}[/]")
    console.print(table)
    for n in report["nets"]:
        for reason in n["reasons"]:
            console.print(f"[red]net {n['rank']}[/]: {reason}", highlight=False, soft_wrap=True)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    fb = report.get("feedback")
    if fb and not fb.get("applied"):
        console.print(f"feedback: none ({fb['why']})", highlight=False, soft_wrap=True)
    if fb and fb.get("applied"):
        console.print(f"feedback: {fb['added']} measured latencies added to {fb['profile']} "
                      f"({fb['calibration_size']} calibration nets){', latency model refit' if fb['refit'] else ''}"
                      + (f"; {fb['skipped_noisy']} noisy timing(s) left out" if fb.get("skipped_noisy") else "")
                      + (f"; {fb['why']}" if fb.get("why") else ""), highlight=False, soft_wrap=True)
    s = report["summary"]
    if s.get("noisy"):
        console.print(f"note: {s['noisy']} of {s['nets']} timings stayed noisy after the protocol's repeats "
                      "(coefficient of variation above its limit): another load on this machine? Re-time on a quiet "
                      "machine with "
                      f"`pomonag-edge export {report['run_dir']} --measure`", highlight=False, soft_wrap=True)
    drift = report.get("drift")
    if drift and drift.get("factor"):
        console.print(f"drift: {len(drift['nets'])} of the profile's calibration nets re-timed now run at "
                      f"x{drift['factor']:.2f} their profiling time; drift-corrected ratio = measured / predicted / "
                      f"{drift['factor']:.2f} (the budget test uses the raw measurement)", highlight=False,
                      soft_wrap=True)
    if s.get("int8_speedup_median") is not None:
        lo, hi = s["int8_speedup_range"]
        console.print(f"INT8 vs FP32 measured: x{s['int8_speedup_median']:.2f} faster (median; x{lo:.2f}-x{hi:.2f})"
                      + (f"; INT8 not faster for {s['int8_not_faster']} net(s)" if s["int8_not_faster"] else "")
                      + (f"; accuracy drop from FP32 at most {s['int8_accuracy_drop_points_max']:.2f} points"
                         if s.get("int8_accuracy_drop_points_max") is not None else ""),
                      highlight=False, soft_wrap=True)
    line = (f"{s['passed']} passed, {s['checked']} checked only, {s['over_budget']} over budget, {s['failed']} failed"
            + (f"; {s['within_10pct']}/{s['compared']} measured within ±{BAND:.0%} of predicted (raw)"
               if s["compared"] else "")
            + (f", {s['within_10pct_corrected']}/{s['compared']} drift-corrected"
               if s.get("within_10pct_corrected") is not None else ""))
    console.print(line + f"  ->  {report.get('path', '')}", highlight=False, soft_wrap=True)


