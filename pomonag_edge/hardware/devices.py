"""Device descriptors (``pomonag_edge/devices/*.toml``) and detection of the facts that change a latency.

A descriptor says how to profile a kind of device (backends in order of preference, precision, batch,
threads) and what hardware it needs; ``detect_device`` records what this machine is (CPU, GPU, driver,
CUDA, TensorRT, onnxruntime, Jetson model and power mode), read without importing torch or tensorrt.

A descriptor with ``runner = "command"`` is a device that is a command (a vendor toolchain, a simulator, a
script that reaches a board): ``command`` is called per graph with ``{onnx}``, ``{arch}``, ``{space}``,
``{name}``, ``{batch}``, ``{precision}``, ``{threads}`` filled in and prints the latency in milliseconds as its
last line (``timers.CommandTimer``); ``timeout_s`` bounds one call, ``calls`` is how many calls time one
graph (their median is its latency), ``single_ops`` says whether it can time a LUT's single-op graphs (else
its profiles hold whole-net timings only) and ``version_command`` prints its toolchain's version.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata, resources
from pathlib import Path

from ..errors import UserError
from ..external import CommandTemplate
from ..files import read_user_text
from .backends import BACKENDS, PRECISIONS, backend_available
from .runner import RUNTIMES, device_state, int8_dot_instructions

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REQUIREMENTS = ("nvidia-gpu", "jetson")
RUNNERS = RUNTIMES + ("command",)  # a descriptor's runner: a runtime of the device runner, or its command
COMMAND_TIMEOUT_S = 600.0
# what a device command may say; {arch} is "" for a graph that is not a whole net (a LUT's op chains)
DEVICE_PLACEHOLDERS = ("onnx", "arch", "space", "name", "batch", "precision", "threads")
# what the runner with trtexec is written for on a Jetson; said by `devices` and `profile --help`
JETSON_SUPPORT = ("Jetson (Nano, TX2, Xavier, Orin) with JetPack 4 to 6 (TensorRT 7.1 to 10, python3 3.6 to 3.10): "
                  "timed on the board by JetPack's trtexec through the device runner, from another machine with "
                  "--host USER@BOARD; the board needs only python3 and trtexec (written against NVIDIA's "
                  "documentation, not yet run on a board)")


@dataclass(frozen=True)
class Descriptor:
    name: str
    description: str
    backends: tuple[str, ...]
    precision: str = "fp32"
    batch: int = 1
    threads: int = 1
    requires: str | None = None  # "nvidia-gpu", "jetson" or None
    runner: str = "onnxruntime"  # runtime of the device runner under --host ("onnxruntime", "trtexec"), or "command"
    command: str | None = None  # runner "command": the command line that times one graph
    timeout_s: float = COMMAND_TIMEOUT_S  # one call of the command
    calls: int = 1  # calls of the command per graph; its latency is their median
    single_ops: bool = False  # the command can time a LUT's single-op graphs (else whole nets only)
    version_command: str | None = None  # prints the toolchain's version (recorded in the profile)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.runner != "command":  # the command's fields only where they mean something: other records unchanged
            for key in ("command", "timeout_s", "calls", "single_ops", "version_command"):
                del d[key]
        return d

    @property
    def is_command(self) -> bool:
        return self.runner == "command"


def _descriptor_files() -> dict[str, object]:
    folder = resources.files("pomonag_edge").joinpath("devices")
    return {Path(f.name).stem: f for f in folder.iterdir() if f.name.endswith(".toml")}


def descriptor_names() -> list[str]:
    return sorted(_descriptor_files())


def load_descriptor(name: str) -> Descriptor:
    """A shipped descriptor by name, or a TOML file of the same form by path."""
    files = _descriptor_files()
    if name in files:
        source, text = f"device {name!r}", files[name].read_text(encoding="utf-8")
    elif name.endswith(".toml") and Path(name).is_file():
        source, text = f"device file {name}", read_user_text(name, "device file")
    else:
        raise UserError(f"unknown device {name!r}; known devices: {', '.join(sorted(files))} (or a path to a .toml)")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{source} is not valid TOML: {e}") from None
    return descriptor_from_dict(raw, Path(name).stem, source)


def descriptor_from_dict(raw: dict, name: str, source: str) -> Descriptor:
    """A descriptor from its TOML table (or the dict a profile recorded), every field checked."""
    fields = set(Descriptor.__dataclass_fields__) - {"name"}
    unknown = set(raw) - fields
    if unknown:
        raise UserError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(fields))}")
    runner = raw.get("runner", "onnxruntime")
    try:
        d = Descriptor(name=name, description=str(raw.get("description", "")),
                       backends=tuple(raw["backends"] if runner != "command" else raw.get("backends", ())),
                       precision=raw.get("precision", "fp32"),
                       batch=int(raw.get("batch", 1)), threads=int(raw.get("threads", 1)),
                       requires=raw.get("requires"), runner=runner, command=raw.get("command"),
                       timeout_s=float(raw.get("timeout_s", COMMAND_TIMEOUT_S)), calls=int(raw.get("calls", 1)),
                       single_ops=raw.get("single_ops", False), version_command=raw.get("version_command"))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source} is malformed: {e}") from None
    if d.runner not in RUNNERS:
        raise UserError(f"{source}: runner must be one of {', '.join(RUNNERS)}")
    if d.is_command:
        if not isinstance(d.command, str):
            raise UserError(f"{source}: runner = \"command\" needs command = \"...\", the command line that times one "
                            "graph ({onnx} its ONNX file, {arch} its arch) and prints milliseconds as its last line")
        CommandTemplate.parse(d.command, DEVICE_PLACEHOLDERS, source)
        if not d.timeout_s > 0 or d.calls < 1 or not isinstance(d.single_ops, bool):
            raise UserError(f"{source}: timeout_s must be positive, calls 1 or more, single_ops true or false")
        if d.version_command is not None and not isinstance(d.version_command, str):
            raise UserError(f"{source}: version_command must be a command line (a string)")
    elif d.command is not None:
        raise UserError(f"{source}: command is for runner = \"command\" (this descriptor's runner is {d.runner})")
    bad = [b for b in d.backends if b not in BACKENDS]
    if (not d.backends and not d.is_command) or bad:
        raise UserError(f"{source}: backends must list some of {', '.join(BACKENDS)} (got {list(d.backends)})")
    if d.precision not in PRECISIONS or d.batch < 1 or d.threads < 1:
        raise UserError(f"{source}: precision must be one of {', '.join(PRECISIONS)}, batch and threads >= 1")
    if d.requires is not None and d.requires not in REQUIREMENTS:
        raise UserError(f"{source}: requires must be one of {', '.join(REQUIREMENTS)}")
    return d


def command_descriptor(profile):
    """The device descriptor a profile was taken through when that device is a command, else None."""
    raw = (profile.device or {}).get("descriptor")
    if not isinstance(raw, dict) or raw.get("runner") != "command":
        return None
    return descriptor_from_dict({k: v for k, v in raw.items() if k != "name"}, str(raw.get("name") or profile.name),
                                f"profile {profile.name}'s device descriptor")


# ----------------------------------------------------------------------------- detection


def _run(args: list[str], timeout: float = 10.0) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_facts(root: Path = Path("/")) -> dict:
    model = None
    info = _read(root / "proc/cpuinfo") or ""
    m = re.search(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", info, re.MULTILINE)
    if m:
        model = m.group(1).strip()
    facts = {"cpu": model or platform.processor() or platform.machine(), "cpu_cores": os.cpu_count()}
    dot = int8_dot_instructions(info)
    if dot is not None:
        facts["cpu_int8_dot"] = dot  # fast int8 instructions (VNNI, dotprod); [] when the CPU lists none
    if hasattr(os, "sched_getaffinity"):
        facts["cpu_cores_usable"] = len(os.sched_getaffinity(0))
    governor = _read(root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        facts["cpu_governor"] = governor.strip()
    return facts


def parse_nvidia_smi(query: str | None, banner: str | None) -> dict:
    """``nvidia-smi --query-gpu=name,driver_version --format=csv,noheader`` and the plain banner."""
    facts: dict = {}
    if query:
        rows = [r.split(",") for r in query.strip().splitlines() if r.strip()]
        if rows:
            facts["gpu"] = rows[0][0].strip()
            facts["gpu_count"] = len(rows)
            if len(rows[0]) > 1:
                facts["gpu_driver"] = rows[0][1].strip()
    if banner:
        m = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
        if m:
            facts["cuda"] = m.group(1)
    return facts


def gpu_facts(root: Path = Path("/")) -> dict:
    """From nvidia-smi, else from the driver's /proc files (containers without nvidia-smi)."""
    query = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if query:
        return parse_nvidia_smi(query, _run(["nvidia-smi"]))
    facts: dict = {}
    infos = sorted((root / "proc/driver/nvidia/gpus").glob("*/information"))
    for info in infos:
        m = re.search(r"^Model:\s*(.+)$", _read(info) or "", re.MULTILINE)
        if m and "gpu" not in facts:
            facts.update(gpu=m.group(1).strip(), gpu_count=len(infos))
    version = _read(root / "proc/driver/nvidia/version") or ""
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9.]+)", version)
    if m and facts:
        facts["gpu_driver"] = m.group(1)
    return facts


def parse_tegra_release(text: str) -> str | None:
    """``# R35 (release), REVISION: 4.1, ...`` -> ``'35.4.1'`` (the L4T version)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_nvpmodel(text: str) -> str | None:
    """``nvpmodel -q`` prints ``NV Power Mode: MAXN`` then the mode id."""
    m = re.search(r"NV Power Mode:[ \t]*(\S+)[ \t]*(?:\r?\n\s*(\d+))?", text)
    if not m:
        return None
    return f"{m.group(1)} ({m.group(2)})" if m.group(2) else m.group(1)


def jetson_facts(root: Path = Path("/")) -> dict:
    """Empty unless this is a Jetson (``/etc/nv_tegra_release`` exists)."""
    release = _read(root / "etc/nv_tegra_release")
    if release is None:
        return {}
    facts = {"jetson": True, "l4t": parse_tegra_release(release)}
    model = _read(root / "proc/device-tree/model")
    if model:
        facts["jetson_model"] = model.strip("\x00\n ")
    power = _run(["nvpmodel", "-q"])
    if power:
        facts["power_mode"] = parse_nvpmodel(power)
    return facts


def detect_device() -> dict:
    """Facts about this machine that change a latency; missing ones are simply absent. ``state`` is the
    device runner's reading of temperatures, clocks and power mode, the same one a remote device gets."""
    facts = {"os": platform.platform(), "machine": platform.machine(), "python": platform.python_version()}
    facts.update(cpu_facts())
    facts.update(gpu_facts())
    facts.update(jetson_facts())
    facts["state"] = device_state()  # temperatures, clocks (locked?), power mode: what changes a number today
    for dist, key in (("onnxruntime", "onnxruntime"), ("onnxruntime-gpu", "onnxruntime"),
                      ("tensorrt", "tensorrt"), ("torch", "torch")):
        version = _version(dist)
        if version and key not in facts:
            facts[key] = version
    return facts


def check_hardware(descriptor: Descriptor, facts: dict) -> None:
    """Raise one clear line when this machine lacks what the descriptor needs."""
    where = facts.get("host") or "this machine"
    if descriptor.requires == "jetson" and not facts.get("jetson"):
        raise UserError(f"--device {descriptor.name} needs an NVIDIA Jetson and {where} is not one (no "
                        "/etc/nv_tegra_release): time the board from here with --host USER@BOARD (it needs only "
                        "python3 and JetPack 4-6's trtexec), or use --device cpu")
    if descriptor.requires == "nvidia-gpu" and not (facts.get("gpu") or facts.get("jetson")):
        raise UserError(f"--device {descriptor.name} needs an NVIDIA GPU and none was found on {where} (nvidia-smi "
                        "lists none): run on the GPU machine or reach it with --host USER@ADDR, or use --device cpu")


def choose_backend(descriptor: Descriptor, requested: str | None = None) -> tuple[str, list[str]]:
    """The backend to use and the reasons the preferred ones were skipped (shown to the user)."""
    if requested:
        return requested, []
    skipped = []
    for name in descriptor.backends:
        ok, reason = backend_available(name)
        if ok:
            return name, skipped
        skipped.append(f"{name}: {reason}")
    raise UserError(f"no backend of device {descriptor.name!r} works here ({'; '.join(skipped)})")
