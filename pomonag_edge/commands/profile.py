"""``pomonag-edge profile``: measure a device into ``profiles/<device>.json`` (resumable), here or over SSH."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from ..errors import UserError
from ..hardware.backends import BACKENDS, PRECISIONS
from ..hardware.remote import parse_host
from ..profile import PROFILES_DIR
from ..profiler import ProfileRequest, build_profile, profile_path
from ._progress import stage_progress
from .options import SEED, dataset_option, make_ssh_options, space_option, ssh_options


@click.command(short_help="Measure this device, or one reached over SSH, into a profile.")
@click.option("--device", default="cpu", show_default=True, metavar="NAME|PATH",
              help="Device descriptor (`pomonag-edge devices` lists them) or a .toml file of the same form.")
@space_option
@dataset_option
@click.option("--quick", is_flag=True, help="Fewer timed runs: a fast, rougher profile (tests, a first look). "
              "mbv3: layers timed at resolutions 128 and 224 only, each alone (default: every 16 from 128 to "
              "224, residual blocks as chains); other resolutions are interpolated.")
@click.option("--calibration", type=click.IntRange(min=0), default=20, show_default=True,
              help="Whole nets to time for calibrating the latency model (chosen to span the latency range).")
@click.option("--no-lut", is_flag=True,
              help="No per-op table: time the --calibration whole nets only (spread over MACs) and fit the latency "
                   "model from them as `calibrate` does (taken anyway for a command device whose descriptor says "
                   "single_ops = false).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads [device default: 1].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="int8: every graph timed as Q/DQ ONNX made by ONNX Runtime's static quantization, written to "
                   "profiles/<device>-int8.json beside the fp32 one; fp16: TensorRT runtimes only (ONNX Runtime's "
                   "CPU provider has few fp16 kernels) [device default: fp32 on cpu, fp16 on gpu / jetson]")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size [device default: 1].")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=None,
              help="Runtime to time with [device default: the first available of its list; with --host, the "
                   "descriptor's runner runtime: trtexec or onnxruntime].")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="cpu: count only this thread's CPU time (onnxruntime, 1 thread), steady on a shared machine; "
                   "wall is the deployment number.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Profile file to write [default: profiles/<device>.json; with several --host, "
                   "profiles/<device>-<addr>.json; a PATH with {host} in it names one file per host].")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the calibration choice and inputs.")
@click.option("--fresh", is_flag=True, help="Start over instead of continuing a partial profile at the same path; for "
              "a finished one (never rewritten: runs name it by its hash), measure a new revision NAME.rN.json.")
@click.option("--host", "hosts", multiple=True, metavar="USER@ADDR[:PORT]",
              help="Measure that device over SSH instead of this machine (repeat for several boards, one profile "
                   "each). This machine builds every graph; the device runs a small python3 (>= 3.6) runner "
                   "with its trtexec (Jetson, JetPack 4-6; NVIDIA GPUs) or onnxruntime (any CPU).")
@ssh_options
@click.option("--max-temp-c", type=click.FloatRange(0, 150, min_open=True), default=None, metavar="C",
              help="With --host (or trtexec): wait before each timing round while the device is hotter than this.")
def command(device, space, dataset, quick, calibration, no_lut, threads, precision, batch, backend, clock, out, seed,
            fresh, hosts, ssh_config, remote_python, remote_dir, max_temp_c):
    """Time every building block of the search space (per-op LUT) and a few whole nets on the device.

    Without --host the device is this machine. With --host USER@ADDR[:PORT] it is that machine, reached
    with your ssh client and config: supported are NVIDIA Jetsons with JetPack 4 to 6 (trtexec on the
    board; `--device jetson`), desktop NVIDIA GPUs with TensorRT's trtexec (`--device gpu`) and any CPU with
    the onnxruntime package (`--device cpu`). A descriptor with runner = "command" is a device that is a
    command (a vendor toolchain, a simulator): it is called per graph and prints milliseconds.

    Progress is saved after every measurement (on the device, every timing round): Ctrl-C, a dropped
    connection, then the same command again continues. A finished profile is kept as it is.
    """
    console = Console(stderr=True)
    base = ProfileRequest(device=device, space=space, dataset=dataset, quick=quick, calibration=calibration,
                          lut=not no_lut, threads=threads, precision=precision, batch=batch, backend=backend,
                          clock=clock, out=out, seed=seed, fresh=fresh,
                          ssh=make_ssh_options(ssh_config, remote_python, remote_dir, hosts),
                          max_temp_c=max_temp_c)
    parsed = [parse_host(h) for h in hosts]
    if len(parsed) > 1 and out is not None and "{host}" not in out:
        raise UserError("several --host write one profile each: give --out a PATH with {host} in it, or leave it")
    reqs = []
    for h in parsed or [None]:
        if h is None:
            reqs.append(base)
            continue
        path = out.replace("{host}", h.addr) if out is not None else (
            None if len(parsed) == 1 else PROFILES_DIR / f"{Path(device).stem}-{h.addr}.json")
        reqs.append(replace(base, host=str(h), out=path))
    labels = {"lut": "per-op table", "calibration": "calibration nets", "end check": "speed check"}

    def progress_for(show, req):
        """A host's stages as bars of their own (named after it when there are several), without the item."""
        prefix = f"{parse_host(req.host).addr}: " if len(reqs) > 1 else ""
        return lambda stage, done, total, **_: show(prefix + labels.get(stage, stage), done, total)

    try:  # the bars start on the first report, so a setting refused up front prints only its line
        with stage_progress(console, transient=False) as show:
            if len(reqs) == 1:
                outcomes = [_outcome(build_profile, reqs[0], progress_for(show, reqs[0]))]
            else:  # boards are timed at once; each host's graphs are exported here one at a time
                with ThreadPoolExecutor(max_workers=len(reqs)) as pool:
                    outcomes = list(pool.map(lambda r: _outcome(build_profile, r, progress_for(show, r)), reqs))
    except KeyboardInterrupt:  # the bars stopped first, so the message is not drawn over
        paths = [profile_path(r) for r in reqs]
        console.print("interrupted: what was measured is saved (on the device too, with --host); run the same "
                      "command again to continue" if any(p.exists() for p in paths)
                      else "interrupted before anything was measured")
        raise SystemExit(130) from None

    failed = [(r, e) for r, (result, e) in zip(reqs, outcomes) if e is not None]
    for req, (result, error) in zip(reqs, outcomes):
        if error is None:
            _report(console, result, req.host)
    if failed:
        if len(reqs) == 1:
            raise failed[0][1]
        raise UserError("; ".join(f"{r.host}: {e}" for r, e in failed))


def _outcome(build, req, progress):
    """(result, None) or (None, the UserError): one host failing leaves the others' profiles."""
    try:
        return build(req, progress=progress), None
    except UserError as e:
        return None, e


def _report(console, result, host) -> None:
    p = result.profile
    if result.kept:
        console.print(f"[bold]{result.path}[/] is a finished profile (made {p.created}; {len(p.lut)} LUT entries, "
                      f"{len(p.calibration)} calibration nets): kept as it is, since runs name it by its hash; "
                      "--fresh measures a new revision beside it", highlight=False)
        return
    for reason in result.skipped_backends:
        console.print(f"[yellow]skipped backend[/] {reason}")
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    calib = [c["latency_ms"] for c in p.calibration]
    span = f"{min(calib):.2f}-{max(calib):.2f} ms" if calib else "none"
    rt = p.runtime
    console.print(f"{'resumed and finished' if result.resumed else 'wrote'} [bold]{result.path}[/] in "
                  f"{result.seconds:.0f} s{f' (measured on {host})' if host else ''}: {len(p.lut)} LUT entries, "
                  f"{len(calib)} calibration nets ({span}); {rt['backend']} {rt['precision']}, batch {rt['batch']}, "
                  f"{rt['threads']} thread(s), {rt['protocol']} protocol"
                  + ("" if rt["backend"] == "command" else f", {rt['clock']} clock"))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if result.model_note:
        console.print(f"[yellow]no latency model fitted:[/] {result.model_note}")
