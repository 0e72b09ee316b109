#!/usr/bin/env python3
"""The device runner: time every ONNX file of a folder on this machine and write one JSON result.

    python3 runner.py --models DIR --protocol PROTOCOL.json --out RESULT.json [--runtime trtexec|onnxruntime]

It is copied to the device and run there, so it imports nothing from pomonag-edge and needs only
python3 >= 3.6 (JetPack 4's) with its standard library, plus the device's runtime: NVIDIA's
``trtexec`` (JetPack's /usr/src/tensorrt/bin/trtexec or one on PATH) or the ``onnxruntime`` package.

How a file is timed (the protocol JSON holds the fields of ``pomonag_edge.hardware.timing.Protocol``):
warm-up for ``warmup_ms`` and ``warmup_runs``, then at least ``min_runs`` runs AND at least
``min_time_s`` seconds, as trtexec does, never longer than ``max_time_s`` (a cap so a huge net does not
take minutes) and never fewer than ``floor_runs`` runs. The runs are split into ``rounds``: every file
gets one round before any gets its second, so a slow phase of the machine hits every file alike.
Files whose pooled timing stays noisy (coefficient of variation above ``max_cv``) get up to ``retries``
extra rounds at the end and keep their quietest ``rounds`` rounds. trtexec builds each engine once on
the device (timing cache shared by all files), then times it with CUDA graphs and no host copies,
and its per-run GPU compute times are read from ``--exportTimes`` JSON.

Before each round the runner waits while the hottest thermal zone is above ``--max-temp-c`` (up to
``--hot-timeout-s``). Device state (temperatures, clocks, power mode, jetson_clocks, runtime versions)
is recorded before and after. Engines stay in ``engines/`` beside the result (reused by later rounds and
runs; the host copies them back when it wants them). Every finished round is appended to ``RESULT.json.rounds.jsonl`` at
once, so a run that was cut off continues where it stopped; a lock file keeps two runners from timing
at the same time. Progress goes to stdout as ``@progress {json}`` lines.

Exit status: 0 done (files that failed are listed in the result's ``errors``), 2 bad arguments,
3 the runtime is missing here (one line on stderr says what to install).
"""

import argparse
import glob
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

SCHEMA = "pomonag-edge/runner-result"
SCHEMA_VERSION = 1
RUNTIMES = ("onnxruntime", "trtexec")
# the runtime here that times a host backend's graphs: TensorRT engines are built and timed by trtexec on the device
BACKEND_RUNTIMES = {"onnxruntime": "onnxruntime", "trtexec": "trtexec", "tensorrt": "trtexec"}
PROGRESS_PREFIX = "@progress "  # starts each progress line on stdout, read by the host
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
EXIT_USAGE = 2
EXIT_NO_RUNTIME = 3

# The timing protocol's fields and default values: pomonag-edge's ``Protocol`` (hardware/timing.py) takes them
# from here, since this file must stand alone on the device. The host sends every field.
PROTOCOL = {"name": "default", "warmup_ms": 200.0, "warmup_runs": 10, "min_runs": 100, "min_time_s": 1.0,
            "max_time_s": 10.0, "floor_runs": 10, "max_cv": 0.15, "retries": 2, "settle_s": 1.0, "rounds": 3}
# What a field a protocol JSON leaves out gets: the runner run by hand times each file as trtexec does by default
# (3 s), capped at 30 s, in one round; never the host's, which sends every field of ``PROTOCOL``.
HAND_RUN_PROTOCOL = dict(PROTOCOL, min_time_s=3.0, max_time_s=30.0, rounds=1)


class RunnerError(Exception):
    """A problem the person running the runner can fix; ``code`` is the exit status."""

    def __init__(self, message, code=EXIT_USAGE):
        Exception.__init__(self, message)
        self.code = code


# ----------------------------------------------------------------------------- statistics


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default), ``q`` in 0..100."""
    n = len(sorted_values)
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def statistics_ms(samples, repeats=1):
    """median / p90 / p99 / mean / cv (population std / mean) / runs, as ``timing.Measurement`` has them."""
    if not samples:
        raise ValueError("no timing samples")
    x = sorted(float(v) for v in samples)
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    return {"median_ms": percentile(x, 50), "p90_ms": percentile(x, 90), "p99_ms": percentile(x, 99),
            "mean_ms": mean, "cv": (math.sqrt(var) / mean) if mean > 0 else 0.0, "runs": len(x),
            "repeats": repeats}


def load_protocol(path):
    """The protocol JSON merged over ``HAND_RUN_PROTOCOL``; unknown keys are ignored, bad values refused."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise RunnerError("cannot read protocol {}: {}".format(path, e)) from e
    if not isinstance(raw, dict):
        raise RunnerError("protocol {} must be a JSON object".format(path))
    protocol = dict(HAND_RUN_PROTOCOL)
    protocol.update({k: v for k, v in raw.items() if k in PROTOCOL})
    for key in ("warmup_runs", "min_runs", "floor_runs", "retries", "rounds"):
        protocol[key] = int(protocol[key])
    for key in ("warmup_ms", "min_time_s", "max_time_s", "max_cv", "settle_s"):
        protocol[key] = float(protocol[key])
    if protocol["rounds"] < 1 or protocol["min_runs"] < 1 or protocol["floor_runs"] < 1:
        raise RunnerError("protocol: rounds, min_runs and floor_runs must be at least 1")
    return protocol


def round_budget(protocol):
    """(runs, seconds, cap seconds, floor runs) of one round: the protocol split evenly over its rounds."""
    r = protocol["rounds"]
    return (int(math.ceil(protocol["min_runs"] / float(r))), protocol["min_time_s"] / r,
            max(protocol["max_time_s"], protocol["min_time_s"]) / r, int(math.ceil(protocol["floor_runs"] / float(r))))


def timed_loop(run_once, protocol):
    """Warm up, then time one round: at least ``runs`` AND ``seconds``, capped, never below the floor.

    ``run_once()`` returns its duration in milliseconds."""
    start = time.perf_counter()
    n = 0
    while n < protocol["warmup_runs"] or (time.perf_counter() - start) * 1e3 < protocol["warmup_ms"]:
        run_once()
        n += 1
    runs, seconds, cap_s, floor = round_budget(protocol)
    samples = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if len(samples) >= floor and (elapsed >= cap_s or (len(samples) >= runs and elapsed >= seconds)):
            return samples
        samples.append(float(run_once()))


# ----------------------------------------------------------------------------- device state


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip("\x00\n ")
    except (OSError, UnicodeDecodeError):
        return None


def _command(args, timeout=10.0):
    """stdout of a command, or None when it is missing or fails."""
    if shutil.which(args[0]) is None and not os.path.isfile(args[0]):
        return None
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                           timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def temperatures_c(root="/"):
    """{zone type: degrees C} of every readable thermal zone."""
    out = {}
    for zone in sorted(glob.glob(os.path.join(root, "sys/class/thermal/thermal_zone*"))):
        temp = _read(os.path.join(zone, "temp"))
        if temp is None:
            continue
        try:
            value = int(temp) / 1000.0
        except ValueError:
            continue
        name = _read(os.path.join(zone, "type")) or os.path.basename(zone)
        if name in out:
            name = "{}.{}".format(name, os.path.basename(zone))
        out[name] = value
    return out


def clocks(root="/"):
    """CPU and devfreq (Jetson GPU, EMC) clocks: current, min and max in kHz / Hz as the kernel reports them."""
    cpus = {}
    for cpu in sorted(glob.glob(os.path.join(root, "sys/devices/system/cpu/cpu[0-9]*/cpufreq"))):
        name = os.path.basename(os.path.dirname(cpu))
        entry = {k: _read(os.path.join(cpu, f)) for k, f in (
            ("cur_khz", "scaling_cur_freq"), ("min_khz", "scaling_min_freq"), ("max_khz", "scaling_max_freq"),
            ("governor", "scaling_governor"))}
        cpus[name] = {k: v for k, v in entry.items() if v is not None}
    devfreq = {}
    for dev in sorted(glob.glob(os.path.join(root, "sys/class/devfreq/*"))):
        entry = {k: _read(os.path.join(dev, f)) for k, f in (
            ("cur_hz", "cur_freq"), ("min_hz", "min_freq"), ("max_hz", "max_freq"), ("governor", "governor"))}
        devfreq[os.path.basename(dev)] = {k: v for k, v in entry.items() if v is not None}
    return {"cpu": cpus, "devfreq": devfreq}


def clocks_locked(c):
    """True when every CPU and devfreq clock has min == max (what jetson_clocks sets), None if unknown."""
    entries = list(c["cpu"].values()) + list(c["devfreq"].values())
    pairs = [(e.get("min_khz", e.get("min_hz")), e.get("max_khz", e.get("max_hz"))) for e in entries]
    pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
    if not pairs:
        return None
    return all(lo == hi for lo, hi in pairs)


def parse_nvpmodel(text):
    """``nvpmodel -q`` prints ``NV Power Mode: MAXN`` then the mode id."""
    m = re.search(r"NV Power Mode:[ \t]*(\S+)[ \t]*(?:\r?\n\s*(\d+))?", text or "")
    if not m:
        return None
    return "{} ({})".format(m.group(1), m.group(2)) if m.group(2) else m.group(1)


def nvidia_smi():
    """Desktop GPU clocks, temperature, persistence mode; None without nvidia-smi."""
    fields = "name,driver_version,persistence_mode,pstate,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu"
    out = _command(["nvidia-smi", "--query-gpu=" + fields, "--format=csv,noheader,nounits"])
    if not out:
        return None
    rows = [dict(zip(fields.split(","), (v.strip() for v in line.split(","))))
            for line in out.strip().splitlines() if line.strip()]
    return rows or None


def device_state(root="/"):
    """Everything around a timing that changes its number, read with the standard library only."""
    c = clocks(root)
    state = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "temperatures_c": temperatures_c(root), "clocks": c,
             "clocks_locked": clocks_locked(c)}
    if hasattr(os, "getloadavg"):
        state["load_average"] = list(os.getloadavg())
    power = _command(["nvpmodel", "-q"])
    if power:
        state["power_mode"] = parse_nvpmodel(power)
    shown = _command(["jetson_clocks", "--show"])
    if shown is not None:
        state["jetson_clocks_show"] = shown[-2000:]
    smi = nvidia_smi()
    if smi:
        state["nvidia_smi"] = smi
    return state


# CPU flags (x86 /proc/cpuinfo "flags", ARM "Features") of instructions that make int8 convolutions fast:
# VNNI dot products on x86 (AVX-512 or AVX), AMX tiles; the dot-product (asimddp) and i8mm extensions on ARM
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def int8_dot_instructions(cpuinfo):
    """The fast int8 instructions this ``/proc/cpuinfo`` text lists (empty: none), or None without flags."""
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo or "", re.MULTILINE)
    if not m:
        return None
    present = set(m.group(1).split())
    return [f for f in INT8_DOT_FLAGS if f in present]


def machine_facts(root="/"):
    """What this machine is: OS, CPU, GPU, Jetson model, L4T release and power mode (the facts a profile's
    device is recognised by, named as the host's ``detect_device`` names them)."""
    facts = {"hostname": platform.node(), "os": platform.platform(), "machine": platform.machine(),
             "python": platform.python_version(), "cpu_cores": os.cpu_count()}
    info = _read(os.path.join(root, "proc/cpuinfo")) or ""
    m = re.search(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", info, re.MULTILINE)
    if m:
        facts["cpu"] = m.group(1).strip()
    dot = int8_dot_instructions(info)
    if dot is not None:
        facts["cpu_int8_dot"] = dot
    release = _read(os.path.join(root, "etc/nv_tegra_release"))
    if release is not None:
        facts["jetson"] = True
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", release)
        facts["l4t"] = "{}.{}".format(m.group(1), m.group(2)) if m else release.splitlines()[0]
        model = _read(os.path.join(root, "proc/device-tree/model"))
        if model:
            facts["jetson_model"] = model
    power = _command(["nvpmodel", "-q"]) if root == "/" else None
    if power:
        facts["power_mode"] = parse_nvpmodel(power)
    gpus = nvidia_smi() if root == "/" else None
    if gpus:
        facts["gpu"], facts["gpu_count"] = gpus[0].get("name"), len(gpus)
        facts["gpu_driver"] = gpus[0].get("driver_version")
    return facts


def hottest_c(root="/"):
    temps = temperatures_c(root)
    return max(temps.values()) if temps else None


def wait_while_hot(limit_c, timeout_s, say, root="/", poll_s=2.0, sleep=time.sleep):
    """Sleep while the hottest zone is above ``limit_c``; returns the seconds waited (gives up at the timeout)."""
    if limit_c is None:
        return 0.0
    waited = 0.0
    temp = hottest_c(root)
    while temp is not None and temp > limit_c and waited < timeout_s:
        if waited == 0.0:
            say("waiting: {:.1f} C is above {:.1f} C".format(temp, limit_c))
        sleep(poll_s)
        waited += poll_s
        temp = hottest_c(root)
    return waited


# ----------------------------------------------------------------------------- onnxruntime


ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}


def ort_session_options(ort, threads):
    """The ONNX Runtime session options every timing uses: ``threads`` intra-op threads, one inter-op thread,
    sequential execution, all graph optimisations, errors only. Defined here, in the file that runs on the
    device without the package, so the host backend (``backends.py``) imports the same options."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def trt_ep_precision(precision):
    """TensorRT execution provider options for a precision: int8 (a Q/DQ graph) with fp16 alongside, as
    NVIDIA advises for explicit quantization, so layers left unquantized need not run in fp32."""
    return {"trt_fp16_enable": precision in ("fp16", "int8"), "trt_int8_enable": precision == "int8"}


class OnnxRuntime(object):
    """onnxruntime's Python package: fixed threads, sequential execution, all graph optimisations."""

    name = "onnxruntime"
    PROVIDERS = ORT_PROVIDERS

    def __init__(self, threads=1, precision="fp32", provider="cpu", clock="wall"):
        try:
            import numpy
            import onnxruntime
        except ImportError as e:
            raise RunnerError("onnxruntime is not installed for {} ({}): pip install onnxruntime there, or time "
                              "with --runtime trtexec".format(sys.executable, e), EXIT_NO_RUNTIME) from e
        wanted = self.PROVIDERS.get(provider)
        if wanted is None:
            raise RunnerError("unknown onnxruntime provider {!r}".format(provider))
        if wanted not in onnxruntime.get_available_providers():
            raise RunnerError("this onnxruntime {} has no {}".format(onnxruntime.__version__, wanted),
                              EXIT_NO_RUNTIME)
        if clock == "cpu" and (provider != "cpu" or threads != 1 or not hasattr(time, "thread_time")):
            raise RunnerError("--clock cpu needs the CPU provider, 1 thread and python >= 3.7")
        self.np, self.ort = numpy, onnxruntime
        self.threads, self.precision, self.provider, self.clock = threads, precision, provider, clock

    def version(self):
        return {"onnxruntime": self.ort.__version__, "numpy": self.np.__version__}

    def load(self, path):
        ort, np = self.ort, self.np
        options = ort_session_options(ort, self.threads)
        providers = [self.PROVIDERS[self.provider]]
        if self.provider == "trt":
            providers = [("TensorrtExecutionProvider", trt_ep_precision(self.precision)),
                         "CUDAExecutionProvider"]
        session = ort.InferenceSession(path, options, providers=providers + ["CPUExecutionProvider"])
        if self.PROVIDERS[self.provider] not in session.get_providers():
            raise RuntimeError("onnxruntime could not start {}".format(self.PROVIDERS[self.provider]))
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                  "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
        rng = np.random.RandomState(0)
        inputs = {}
        for i in session.get_inputs():
            if any(not isinstance(d, int) for d in i.shape):
                raise ValueError("input {!r} has a dynamic shape {}: export with fixed shapes".format(i.name, i.shape))
            dtype = np.dtype(dtypes.get(i.type, np.float32))
            inputs[i.name] = (rng.standard_normal(i.shape).astype(dtype) if dtype.kind == "f"
                              else np.zeros(i.shape, dtype))
        clock = time.thread_time if self.clock == "cpu" else time.perf_counter

        def run_once():
            t = clock()
            session.run(None, inputs)
            return (clock() - t) * 1e3

        return run_once

    def prepare(self, name, path, protocol, workdir, say):
        """Nothing to build ahead: a session is made per round (cheap) and dropped after it."""
        return {}

    def time_round(self, name, path, protocol, prepared, workdir):
        run_once = self.load(path)
        return {"samples_ms": timed_loop(run_once, protocol)}

    def settle(self, path, protocol):
        run_once = self.load(path)
        start = time.perf_counter()
        while time.perf_counter() - start < protocol["settle_s"]:
            run_once()


# ----------------------------------------------------------------------------- trtexec


def find_trtexec(explicit=None):
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    found = shutil.which("trtexec")
    if found:
        return found
    for path in TRTEXEC_PATHS:
        if os.path.isfile(path):
            return path
    return None


def parse_trtexec_version(text):
    """``[TensorRT v8502]`` -> '8.5.2', ``[TensorRT v100300]`` -> '10.3.0' (major*1000 before TensorRT 10)."""
    m = re.search(r"TensorRT v(\d+)", text or "")
    if not m:
        return None
    v = int(m.group(1))
    if v >= 100000:
        return "{}.{}.{}".format(v // 10000, (v // 100) % 100, v % 100)
    return "{}.{}.{}".format(v // 1000, (v // 100) % 10, v % 100)


def read_export_times(path):
    """Per-run times from trtexec ``--exportTimes``: a JSON list of records with ``computeMs`` (GPU compute
    time of one inference, trtexec's headline "GPU Compute Time") and ``latencyMs`` (host latency)."""
    with open(path) as f:
        records = json.load(f)
    if not isinstance(records, list) or not records:
        raise ValueError("{}: expected a non-empty JSON list of timing records".format(path))
    compute = [float(r["computeMs"]) for r in records if isinstance(r, dict) and "computeMs" in r]
    if not compute:
        raise ValueError("{}: no computeMs in the timing records".format(path))
    latency = [float(r["latencyMs"]) for r in records if isinstance(r, dict) and "latencyMs" in r]
    return compute, latency


def read_export_profile(path):
    """Per-layer times from trtexec ``--exportProfile``: ``[{"count": N}, {"name", "timeMs", "averageMs",
    "percentage", ...}, ...]`` -> (count, [{"name", "average_ms", "percentage"}])."""
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list) or not rows or "count" not in rows[0]:
        raise ValueError("{}: expected [{{\"count\": N}}, layer records...]".format(path))
    layers = [{"name": r["name"], "average_ms": float(r["averageMs"]), "percentage": float(r.get("percentage", 0))}
              for r in rows[1:] if isinstance(r, dict) and "name" in r and "averageMs" in r]
    return int(rows[0]["count"]), layers


# trtexec's precision flags. int8 is explicit quantization: the ONNX carries Q/DQ nodes (TensorRT >= 8.0) and
# --int8 lets the builder use them; --fp16 alongside lets the layers left unquantized run in fp16 (NVIDIA's
# advice for Q/DQ networks) instead of fp32
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}


class Trtexec(object):
    """NVIDIA's trtexec: build each engine once on the device, then time it in rounds.

    Flags are chosen from what this trtexec's ``--help`` offers, so TensorRT 7 to 10 all work: timing
    cache (8.0+), CUDA graphs, no data transfers, spin wait, a separate profiling run."""

    name = "trtexec"

    def __init__(self, path=None, precision="fp32", layer_profile=False):
        self.path = find_trtexec(path)
        if self.path is None:
            raise RunnerError("no trtexec here ({}; JetPack puts it in {}): install TensorRT's samples, name it "
                              "with --trtexec, or time with --runtime onnxruntime".format(
                                  "not at " + path if path else "not on PATH", TRTEXEC_PATHS[0]), EXIT_NO_RUNTIME)
        if precision not in PRECISION_FLAGS:
            raise RunnerError("unknown precision {!r}".format(precision))
        self.precision, self.layer_profile = precision, layer_profile
        p = subprocess.run([self.path, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
        self.help = p.stdout or ""
        self.trt_version = parse_trtexec_version(self.help)
        if precision == "int8" and self.trt_version and int(self.trt_version.split(".")[0]) < 8:
            raise RunnerError("int8 Q/DQ graphs need TensorRT 8.0 or newer (explicit quantization); this trtexec is "
                              "TensorRT {}: use --precision fp16 there".format(self.trt_version), EXIT_NO_RUNTIME)

    def supports(self, flag):
        return ("--" + flag) in self.help

    def version(self):
        return {"trtexec": self.path, "tensorrt": self.trt_version}

    def _run(self, args, log):
        p = subprocess.run([self.path] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
        with open(log, "w") as f:
            f.write(p.stdout or "")
        if self.trt_version is None:
            self.trt_version = parse_trtexec_version(p.stdout)
        if p.returncode != 0:
            lines = [line for line in (p.stdout or "").splitlines()
                     if "[E]" in line or "Error" in line or "error" in line]
            raise RuntimeError("trtexec failed (exit {}): {}".format(
                p.returncode, (lines[-1] if lines else (p.stdout or "").strip()[-300:]).strip()))
        return p.stdout

    def engine_path(self, name, workdir):
        return os.path.join(workdir, "engines", os.path.splitext(name)[0] + ".engine")

    def build_args(self, onnx, engine, workdir):
        args = ["--onnx=" + onnx, "--saveEngine=" + engine]
        args += PRECISION_FLAGS[self.precision]
        if self.supports("timingCacheFile"):
            args.append("--timingCacheFile=" + os.path.join(workdir, "timing.cache"))
        if self.supports("skipInference"):
            args.append("--skipInference")
        elif self.supports("buildOnly"):
            args.append("--buildOnly")
        else:
            args += ["--warmUp=0", "--duration=0", "--iterations=1"]
        return args

    def time_args(self, engine, protocol, times, profile=None, estimate_ms=None):
        """One round: warm-up ms, at least N iterations AND at least T s (trtexec's own AND), CUDA graphs,
        no host copies. ``estimate_ms`` lowers the iteration count so a slow net keeps to the cap."""
        runs, seconds, cap_s, floor = round_budget(protocol)
        if estimate_ms:
            runs = max(floor, min(runs, int(cap_s * 1e3 / estimate_ms)))
            seconds = min(seconds, cap_s)
        args = ["--loadEngine=" + engine, "--warmUp={}".format(int(round(protocol["warmup_ms"]))),
                "--iterations={}".format(runs), "--duration={}".format(max(0, int(math.ceil(seconds)))),
                "--exportTimes=" + times]
        if self.supports("avgRuns"):
            args.append("--avgRuns=1")
        for flag in ("useCudaGraph", "noDataTransfers", "useSpinWait"):
            if self.supports(flag):
                args.append("--" + flag)
        if profile is not None:
            args.append("--exportProfile=" + profile)
            if self.supports("separateProfileRun"):
                args.append("--separateProfileRun")
        return args

    def prepare(self, name, path, protocol, workdir, say):
        """Build the engine (once; reused when already there); returns what rounds need."""
        engine = self.engine_path(name, workdir)
        if not os.path.isfile(engine):
            say("building engine " + name)
            if not os.path.isdir(os.path.dirname(engine)):
                os.makedirs(os.path.dirname(engine))
            tmp = engine + ".tmp"
            start = time.time()
            self._run(self.build_args(path, tmp, workdir), os.path.join(workdir, "logs", name + ".build.log"))
            os.replace(tmp, engine)
            return {"engine": engine, "build_s": time.time() - start}
        return {"engine": engine}

    def time_round(self, name, path, protocol, prepared, workdir):
        logs = os.path.join(workdir, "logs")
        times = os.path.join(logs, name + ".times.json")
        profile = os.path.join(logs, name + ".profile.json") if self.layer_profile else None
        self._run(self.time_args(prepared["engine"], protocol, times, profile, prepared.get("estimate_ms")),
                  os.path.join(logs, name + ".time.log"))
        compute, latency = read_export_times(times)
        out = {"samples_ms": compute,
               "host_latency_median_ms": statistics_ms(latency)["median_ms"] if latency else None}
        if profile is not None and os.path.isfile(profile):
            count, layers = read_export_profile(profile)
            out["layers"] = layers
        return out

    def settle(self, path, protocol):
        return None  # trtexec's own warm-up runs on a GPU that stays busy between back-to-back rounds


# ----------------------------------------------------------------------------- the run


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_models(folder):
    if not os.path.isdir(folder):
        raise RunnerError("models folder {} does not exist".format(folder))
    names = sorted(n for n in os.listdir(folder) if n.endswith(".onnx"))
    if not names:
        raise RunnerError("no .onnx files in {}".format(folder))
    return names


def settings_key(runtime, args, protocol):
    """What a finished round must share with this run to be reused."""
    fields = {"runtime": runtime.name, "precision": args.precision, "threads": args.threads,
              "clock": args.clock, "provider": args.provider, "tag": args.tag,
              "protocol": {k: protocol[k] for k in sorted(PROTOCOL) if k != "name"}}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def read_log(path, key):
    """{(file sha256, round index): record} of finished rounds of this settings key; a torn last line is skipped."""
    done = {}
    if not os.path.isfile(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("key") == key and "round" in rec:
                done[(rec["sha256"], rec["round"])] = rec
    return done


def append_log(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path, obj):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Lock(object):
    """An exclusive lock beside the result: a second runner waits for the first (say, one left running
    by a dropped connection) instead of timing alongside it."""

    def __init__(self, path, timeout_s, say):
        self.path, self.timeout_s, self.say, self.f = path, timeout_s, say, None

    def __enter__(self):
        import fcntl

        self.f = open(self.path, "w")
        start, told = time.time(), False
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError:
                if time.time() - start > self.timeout_s:
                    raise RunnerError("another runner holds {} for more than {:.0f} s".format(
                        self.path, self.timeout_s)) from None
                if not told:
                    self.say("waiting for another runner to finish")
                    told = True
                time.sleep(0.5)

    def __exit__(self, *exc):
        self.f.close()


def make_runtime(args):
    if args.runtime == "onnxruntime":
        return OnnxRuntime(args.threads, args.precision, args.provider, args.clock)
    if args.clock != "wall":
        raise RunnerError("--clock cpu works with --runtime onnxruntime only")
    return Trtexec(args.trtexec, args.precision, args.layer_profile)


def progress(kind, **fields):
    """One ``@progress`` line on stdout; a reader that went away (dropped connection) ends the run."""
    fields["kind"] = kind
    try:
        sys.stdout.write(PROGRESS_PREFIX + json.dumps(fields, sort_keys=True) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        os._exit(1)  # what was measured is in the log already


def say(message):
    try:
        sys.stderr.write("runner: " + message + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        os._exit(1)


def pick_rounds(rounds, keep):
    """The ``keep`` quietest rounds (lowest cv), in time order."""
    ranked = sorted(range(len(rounds)), key=lambda i: statistics_ms(rounds[i]["samples_ms"])["cv"])
    return [rounds[i] for i in sorted(ranked[:keep])]


def run(args):
    protocol = load_protocol(args.protocol)
    names = list_models(args.models)
    wanted = set(args.only.split(",")) if args.only else set()
    if args.only_file:
        with open(args.only_file) as f:
            wanted.update(line.strip() for line in f if line.strip())
    if wanted:
        missing = sorted(wanted - set(names))
        if missing:
            raise RunnerError("not in {}: {}".format(args.models, ", ".join(missing[:5])))
        names = [n for n in names if n in wanted]
    runtime = make_runtime(args)
    out = os.path.abspath(args.out)
    workdir = os.path.dirname(out)
    for sub in ("logs", "engines"):
        if not os.path.isdir(os.path.join(workdir, sub)):
            os.makedirs(os.path.join(workdir, sub))
    log_path = out + ".rounds.jsonl"
    key = settings_key(runtime, args, protocol)
    with Lock(out + ".lock", args.lock_timeout_s, say):
        state_before = device_state()
        shas = {n: sha256_file(os.path.join(args.models, n)) for n in names}
        done = read_log(log_path, key)
        resumed = len(done)
        errors, prepared = {}, {}
        total = [len(names) * protocol["rounds"]]
        count = [sum(1 for n in names for r in range(protocol["rounds"]) if (shas[n], r) in done)]
        progress("start", done=count[0], total=total[0], resumed=resumed)
        waited = [0.0]

        def do_round(name, r):
            if (shas[name], r) in done or name in errors:
                return
            path = os.path.join(args.models, name)
            try:
                if name not in prepared:
                    prepared[name] = runtime.prepare(name, path, protocol, workdir, say)
                    if prepared[name].get("build_s") is not None:
                        append_log(log_path, {"key": key, "sha256": shas[name], "file": name, "event": "build",
                                              "build_s": prepared[name]["build_s"]})
                waited[0] += wait_while_hot(args.max_temp_c, args.hot_timeout_s, say)
                temp = hottest_c()
                result = runtime.time_round(name, path, protocol, prepared[name], workdir)
            except (RuntimeError, ValueError, OSError) as e:
                errors[name] = "{}: {}".format(type(e).__name__, e)
                say("{} failed: {}".format(name, errors[name]))
                return
            samples = result.pop("samples_ms")
            if samples:
                prepared[name]["estimate_ms"] = statistics_ms(samples)["median_ms"]
            rec = {"key": key, "sha256": shas[name], "file": name, "round": r, "time": time.time(),
                   "temp_c": temp, "samples_ms": [round(s, 6) for s in samples]}
            rec.update(result)
            append_log(log_path, rec)
            done[(shas[name], r)] = rec
            count[0] += 1
            progress("round", done=count[0], total=total[0], item=name, round=r,
                     median_ms=statistics_ms(samples)["median_ms"])

        todo = [n for n in names if any((shas[n], r) not in done for r in range(protocol["rounds"]))]
        if todo and protocol["settle_s"] > 0:
            try:
                heaviest = max(todo, key=lambda n: os.path.getsize(os.path.join(args.models, n)))
                runtime.settle(os.path.join(args.models, heaviest), protocol)
            except (RuntimeError, ValueError, OSError):
                pass  # the file's own round reports its error
        for r in range(protocol["rounds"]):
            for name in names:
                do_round(name, r)
        # noisy files: extra rounds at the end, later in time, then the quietest rounds are kept
        for extra in range(protocol["retries"]):
            noisy = [n for n in names if n not in errors and statistics_ms(
                [s for r in range(protocol["rounds"]) for s in done[(shas[n], r)]["samples_ms"]])["cv"]
                > protocol["max_cv"] and (shas[n], protocol["rounds"] + extra) not in done]
            total[0] += len(noisy)
            for name in noisy:
                do_round(name, protocol["rounds"] + extra)

        results = {}
        for name in names:
            if name in errors:
                continue
            rounds = [done[(shas[name], r)] for r in range(protocol["rounds"] + protocol["retries"])
                      if (shas[name], r) in done]
            kept = pick_rounds(rounds, protocol["rounds"])
            stats = statistics_ms([s for rec in kept for s in rec["samples_ms"]], repeats=len(rounds))
            stats["round_medians_ms"] = [statistics_ms(rec["samples_ms"])["median_ms"] for rec in rounds]
            stats["sha256"] = shas[name]
            temps = [rec["temp_c"] for rec in rounds if rec.get("temp_c") is not None]
            if temps:
                stats["max_temp_c"] = max(temps)
            if rounds[-1].get("layers"):
                stats["layers"] = rounds[-1]["layers"]
            if isinstance(runtime, Trtexec):
                stats["engine"] = os.path.relpath(runtime.engine_path(name, workdir), workdir)
                stats["host_latency_median_ms"] = rounds[-1].get("host_latency_median_ms")
            results[name] = stats
        result = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "runtime": runtime.name,
                  "versions": runtime.version(), "precision": args.precision, "threads": args.threads,
                  "clock": args.clock, "protocol": protocol, "machine": machine_facts(),
                  "device_before": state_before, "device_after": device_state(), "hot_wait_s": waited[0],
                  "resumed_rounds": resumed, "results": results, "errors": errors}
        write_json_atomic(out, result)
        progress("done", done=count[0], total=total[0])
    return result


def check(args):
    """Is the runtime usable here? Prints one JSON line: python, runtime versions, sizes of the models there."""
    info = {"python": platform.python_version(), "machine": machine_facts()}
    runtime = make_runtime(args)
    info["versions"] = runtime.version()
    if args.models and os.path.isdir(args.models):
        info["models"] = {n: os.path.getsize(os.path.join(args.models, n))
                          for n in sorted(os.listdir(args.models)) if n.endswith(".onnx")}
    sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
    return info


def parser():
    ap = argparse.ArgumentParser(description="Time every ONNX file of a folder on this device (pomonag-edge).")
    ap.add_argument("--models", help="folder of .onnx files")
    ap.add_argument("--protocol", help="timing protocol JSON (fields of pomonag-edge's Protocol)")
    ap.add_argument("--out", help="result JSON; finished rounds are kept in OUT.rounds.jsonl")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--provider", choices=("cpu", "cuda", "trt"), default="cpu", help="onnxruntime provider")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: calling-thread CPU time (onnxruntime, 1 thread)")
    ap.add_argument("--trtexec", default=None, help="path of trtexec (default: PATH, then JetPack's)")
    ap.add_argument("--layer-profile", action="store_true", help="also record trtexec's per-layer profile")
    ap.add_argument("--only", default=None, help="comma-separated file names to time (default: all)")
    ap.add_argument("--only-file", default=None, help="a file naming the files to time, one a line")
    ap.add_argument("--tag", default="", help="rounds logged under another tag are not reused (to time again)")
    ap.add_argument("--max-temp-c", type=float, default=None,
                    help="wait before a round while the hottest thermal zone is above this")
    ap.add_argument("--hot-timeout-s", type=float, default=600.0, help="give up waiting to cool after this")
    ap.add_argument("--lock-timeout-s", type=float, default=900.0)
    ap.add_argument("--check", action="store_true", help="only check that the runtime works; print facts")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if sys.version_info < (3, 6):
            raise RunnerError("python >= 3.6 needed, this is " + platform.python_version(), EXIT_NO_RUNTIME)
        if args.threads < 1:
            raise RunnerError("--threads must be at least 1")
        if args.check:
            check(args)
            return 0
        for flag in ("models", "protocol", "out"):
            if not getattr(args, flag):
                raise RunnerError("--{} is required".format(flag))
        run(args)
    except RunnerError as e:
        sys.stderr.write("runner: {}\n".format(e))
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
