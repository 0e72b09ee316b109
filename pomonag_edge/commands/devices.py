"""``pomonag-edge devices``: device descriptors, this machine, and the shipped reference profiles."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

import click
from rich import box
from rich.console import Console
from rich.table import Table

from ..errors import ProfileError
from ..hardware.devices import JETSON_SUPPORT, descriptor_names, detect_device, load_descriptor
from ..profile import PROFILES_DIR, load_profile
from ..spaces import get_space, space_names


@click.command(short_help="List device descriptors and reference profiles.")
@click.option("--detect/--no-detect", default=True, show_default=True, help="Also show what this machine is.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: the same lists on stdout, for scripts.")
def command(detect, fmt):
    """Descriptors say how `profile --device NAME` measures; reference profiles (`--profile NAME`) are
    published device settings' measured latency tables, per search space. The names you type are never cut:
    on a narrow terminal the other columns wrap."""
    if fmt == "json":
        json.dump(_listing(detect), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    console = Console()
    table = _table("Device descriptors (profile --device NAME; the first usable backend wins; precision, "
                   "batch b, threads t)")
    for col in ("name", "description", "backends", "--host runner", "settings"):
        _column(table, col, whole=col in ("name", "settings"))
    for name in descriptor_names():
        d = load_descriptor(name)
        table.add_row(d.name, d.description, ", ".join(d.backends), d.runner, f"{d.precision} b{d.batch} t{d.threads}")
    console.print(table)
    console.print("Measuring on the device itself (profile/export --host USER@ADDR[:PORT]): the host builds every "
                  "graph; the device needs python3 >= 3.6 and trtexec or the onnxruntime package.", highlight=False)
    console.print(f"Supported: {JETSON_SUPPORT}; desktop NVIDIA GPUs with TensorRT 8-10's trtexec; any CPU with "
                  "onnxruntime.", highlight=False)
    console.print('Any other device (a vendor toolchain, a simulator): a .toml with runner = "command" and command = '
                  '"... {onnx} ..." that prints milliseconds as its last line (README: a device that is a command).',
                  highlight=False)

    if detect:
        facts = detect_device()
        keys = ("cpu", "cpu_cores", "gpu", "gpu_driver", "cuda", "jetson_model", "l4t", "power_mode",
                "onnxruntime", "tensorrt", "torch")
        console.print("This machine: " + "; ".join(f"{k} {facts[k]}" for k in keys if facts.get(k) is not None))

    mine = sorted(PROFILES_DIR.glob("*.json"))
    if mine:
        own = _table(f"Measured profiles in ./{PROFILES_DIR} (--profile PATH; LUT entries, calibration nets)")
        for col in ("file", "device", "runtime", "LUT", "nets", "created (UTC)"):
            _column(own, col, whole=col not in ("device", "runtime"))
        for path in mine:
            try:
                p = load_profile(path)
            except ProfileError as e:
                own.add_row(str(path), "[red]unreadable[/]", str(e), "", "", "")
                continue
            rt = p.runtime
            own.add_row(str(path), p.device.get("name", p.name),
                        f"{rt.get('backend')} {rt.get('precision')} b{rt.get('batch')} t{rt.get('threads')}",
                        str(len(p.lut)), str(len(p.calibration)),
                        "partial, never a default" if p.partial else _when(p.created))
        console.print(own)

    for name in space_names():
        devices = get_space(name).reference_devices()
        if not devices:
            continue
        refs = _table(f"Reference profiles for --space {name} (--profile NAME)")
        for col, justify in (("name", "left"), ("source", "left"), ("batch", "right"), ("nets", "right")):
            _column(refs, col, justify=justify, whole=col != "source")
        for device, info in devices.items():
            refs.add_row(device, info["source"], str(info["batch"]), f"{info['measured']:,}")
        console.print(refs)


def _table(title: str):
    """A table without vertical rules: at 80 columns they would cost the text its room."""
    return Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, pad_edge=False,
                 collapse_padding=True)


def _column(table, name: str, justify: str = "left", whole: bool = False) -> None:
    """``whole``: names a user types and single values, never wrapped nor cut; the free-text columns take what
    is left, wrapping at spaces (and folding a word too long for them rather than cutting it)."""
    table.add_column(name, justify=justify, no_wrap=whole, overflow="fold")


def _when(created: str) -> str:
    """A profile's ``created`` (``%Y-%m-%dT%H:%M:%S%z``) as a short UTC time, or as it is when it does not parse."""
    try:
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(created)


def _listing(detect: bool) -> dict:
    """What the tables show, as plain data."""
    profiles = []
    for path in sorted(PROFILES_DIR.glob("*.json")):
        try:
            p = load_profile(path)
        except ProfileError as e:
            profiles.append({"path": str(path), "error": str(e)})
            continue
        profiles.append({"path": str(path), "name": p.name, "space": p.space, "runtime": p.runtime.get("backend"),
                         "lut_entries": len(p.lut), "calibration_nets": len(p.calibration), "created": p.created,
                         "partial": p.partial, "parent": p.parent})
    return {"descriptors": [load_descriptor(n).to_dict() for n in descriptor_names()],
            "machine": detect_device() if detect else None,
            "profiles": profiles,
            "reference_profiles": {name: get_space(name).reference_devices() for name in space_names()}}
