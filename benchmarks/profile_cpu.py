"""Benchmark: how well a CPU profile (per-op LUT + calibration nets) predicts whole-net latency.

Builds a CPU profile here (ONNX Runtime, 1 thread, default protocol, LUT + 20 calibration nets),
then times 100 other NB201 nets end to end with the same backend and protocol, and prints the wall
time of the profile and the Spearman, Kendall and MAPE of (a) the raw LUT-sum and (b) a linear fit
of LUT-sum on the calibration nets, against those measurements, beside the targets.

    python benchmarks/profile_cpu.py [--quick] [--nets 100] [--calibration 20] [--threads 1] [--clock wall|cpu]
                                     [--ceiling] [--save JSON] [--precision fp32|int8]
                                     [--host USER@ADDR[:PORT] [--ssh-config F] [--remote-python CMD]]

With --precision int8, an INT8 profile (every graph a Q/DQ ONNX made by ONNX Runtime's static quantization)
is taken beside the FP32 one, the held-out nets (30 by default) are timed at both precisions, interleaved net
by net, and it prints each profile's Spearman / MAPE on its own precision's timings and the INT8/FP32 speed
ratio over those nets (median, range), with the load average.

With --host, a second profile of the same settings is taken there through the device runner over SSH,
and its rows are printed beside the local ones, against the same held-out nets (timed here): pointed at
this machine (an sshd on 127.0.0.1), the two should agree to the noise ceiling. Its calibration nets are
also timed here: the Spearman of their remote timings against this process's.

Timings on a shared machine are noisy: run it when nothing else runs for numbers worth quoting.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from scipy import stats

from pomonag_edge.files import atomic_write_json
from pomonag_edge.hardware import PROTOCOLS, get_backend
from pomonag_edge.profiler import ProfileRequest, build_profile
from pomonag_edge.spaces.lut import lut_cost
from pomonag_edge.spaces.nb201 import SPACE


def scores(pred: np.ndarray, true: np.ndarray) -> dict:
    return {"spearman": stats.spearmanr(pred, true)[0], "kendall": stats.kendalltau(pred, true)[0],
            "mape_%": 100 * float(np.mean(np.abs(pred - true) / true))}


def held_out_archs(n: int, exclude: set[str], seed: int) -> list:
    rng = np.random.default_rng(seed)
    out, seen = [], set(exclude)
    for i in rng.permutation(SPACE.size()):
        a = SPACE.from_index(int(i))
        key = str(SPACE.canonical(a))
        if SPACE.is_valid(a) and key not in seen and str(a) not in exclude:
            seen.add(key)
            out.append(a)
            if len(out) == n:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nets", type=int, default=100)
    ap.add_argument("--calibration", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this thread's CPU time, steady while other processes share the machine")
    ap.add_argument("--ceiling", action="store_true",
                    help="time the held-out nets a second time: how well two measurements agree (the noise ceiling)")
    ap.add_argument("--save", metavar="JSON", help="also write the profile and the held-out timings here")
    ap.add_argument("--host", help="also profile this host over SSH (device runner) and compare")
    ap.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                    help="int8: also an INT8 profile, both judged on held-out nets timed at both precisions")
    ap.add_argument("--ssh-config", default=None)
    ap.add_argument("--remote-python", default="python3")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.precision == "int8":
        return int8_main(args)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t, cpu = time.perf_counter(), time.process_time()
        result = build_profile(ProfileRequest(device="cpu", quick=args.quick, calibration=args.calibration,
                                              threads=args.threads, seed=args.seed, clock=args.clock,
                                              out=f"{tmp}/cpu.json"),
                               fit_model=False)
        profile_s, profile_cpu_s = time.perf_counter() - t, time.process_time() - cpu
        remote = None
        if args.host:
            from pomonag_edge.hardware.remote import SSHOptions

            t = time.perf_counter()
            remote = build_profile(ProfileRequest(device="cpu", quick=args.quick, calibration=args.calibration,
                                                  threads=args.threads, seed=args.seed, clock=args.clock,
                                                  out=f"{tmp}/remote.json", host=args.host,
                                                  ssh=SSHOptions(config=args.ssh_config, python=args.remote_python)),
                                   fit_model=False).profile
            print(f"remote profile on {args.host}: {len(remote.lut)} LUT entries + {len(remote.calibration)} "
                  f"calibration nets in {time.perf_counter() - t:.1f} s wall", flush=True)
    profile = result.profile
    print(f"profile: {len(profile.lut)} LUT entries + {len(profile.calibration)} calibration nets in "
          f"{profile_s:.1f} s wall, {profile_cpu_s:.1f} s CPU   (target < 120 s)", flush=True)
    protocol = PROTOCOLS[profile.runtime["protocol"]]
    calib_archs = [SPACE.parse(c["arch"]) for c in profile.calibration]
    calib_ms = np.array([c["latency_ms"] for c in profile.calibration])

    archs = held_out_archs(args.nets, {c["arch"] for c in profile.calibration}, seed=args.seed + 1)
    backend = get_backend("onnxruntime", threads=args.threads, clock=args.clock)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal(SPACE.input_shape(None, "cifar10")).astype(np.float32)
    def time_all() -> np.ndarray:
        return np.array([backend.load(SPACE.build(a, "cifar10").eval(), {"input": x}).measure(protocol).median_ms
                         for a in archs])

    t = time.perf_counter()
    measured = time_all()
    held_s = time.perf_counter() - t
    again = time_all() if args.ceiling else None

    raw = lut_cost(SPACE, profile).ms(archs)
    calib_sum = lut_cost(SPACE, profile).ms(calib_archs)
    # least squares (slope, intercept), and a robust scale through the origin: the LUT-sum already holds the
    # fixed cost (skeleton net), and one noisy calibration timing cannot pull a median
    fits = {"least squares": np.polyfit(calib_sum, calib_ms, 1),
            "median ratio": np.array([np.median(calib_ms / calib_sum), 0.0])}

    print(f"machine: {os.cpu_count()} cores, load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end "
          f"(others running => noisy); onnxruntime {profile.runtime.get('onnxruntime')}, "
          f"{args.threads} thread(s), {protocol.name} protocol, {args.clock} clock")
    print(f"held-out: {len(archs)} nets timed end to end in {held_s:.1f} s, "
          f"{measured.min():.2f} to {measured.max():.2f} ms")
    for name, (slope, intercept) in fits.items():
        print(f"linear fit on calibration ({name}): latency_ms = {slope:.3f} * lut_sum_ms {intercept:+.3f}")
    print(f"{'predictor':<40}{'spearman':>10}{'kendall':>10}{'MAPE %':>10}")
    rows = [("raw LUT-sum", raw)] + [(f"LUT-sum + linear fit ({name})", np.polyval(f, raw)) for name, f in fits.items()]
    from pomonag_edge.predictors import fit_profile_model, latency_model_for

    profile.latency_model = fit_profile_model(SPACE, profile)
    model = latency_model_for(SPACE, profile)
    rows.append(("latency model (what profile ships)", model.predict_ms(archs)))
    if again is not None:
        rows.append(("second measurement (noise ceiling)", again))
    if remote is not None:
        remote.latency_model = fit_profile_model(SPACE, remote)
        rows.append((f"latency model of the {args.host} profile", latency_model_for(SPACE, remote).predict_ms(archs)))
        there = np.array([c["latency_ms"] for c in remote.calibration])
        here = np.array([backend.load(SPACE.build(SPACE.parse(c["arch"]), "cifar10").eval(), {"input": x})
                         .measure(protocol).median_ms for c in remote.calibration])
        s = scores(there, here)
        print(f"{args.host} calibration nets, timed there vs here: Spearman {s['spearman']:.3f}, "
              f"MAPE {s['mape_%']:.1f}% (n = {len(here)}; target Spearman >= 0.95)")
    for name, pred in rows:
        s = scores(pred, measured)
        print(f"{name:<40}{s['spearman']:>10.3f}{s['kendall']:>10.3f}{s['mape_%']:>10.1f}")
    print(f"{'target (after fit)':<40}{'>= 0.97':>10}{'':>10}{'<= 8':>10}")
    if args.save:
        atomic_write_json(args.save, {"profile": profile.to_dict(), "held_out": [
            {"arch": str(a), "latency_ms": float(m), "lut_sum_ms": float(r)} for a, m, r in zip(archs, measured, raw)]})


def int8_main(args) -> None:
    """FP32 and INT8 profiles of this CPU, judged on the same held-out nets timed at both precisions."""
    from pomonag_edge.hardware.timers import BackendTimer, Graph
    from pomonag_edge.predictors import latency_model_for

    nets = args.nets if args.nets != 100 else 30
    load = [os.getloadavg()[0]]
    profiles, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8"):
            t = time.perf_counter()
            profiles[precision] = build_profile(ProfileRequest(
                device="cpu", quick=args.quick, calibration=args.calibration, threads=args.threads, seed=args.seed,
                clock=args.clock, precision=precision, out=f"{tmp}/cpu-{precision}.json")).profile
            seconds[precision] = time.perf_counter() - t
    load.append(os.getloadavg()[0])
    protocol = PROTOCOLS[profiles["fp32"].runtime["protocol"]]
    seen = {c["arch"] for p in profiles.values() for c in p.calibration}
    archs = held_out_archs(nets, seen, seed=args.seed + 1)
    timers = {p: BackendTimer(get_backend("onnxruntime", precision=p, threads=args.threads, clock=args.clock),
                              protocol) for p in ("fp32", "int8")}
    x = np.random.default_rng(args.seed).standard_normal(SPACE.input_shape(None, "cifar10")).astype(np.float32)
    measured = {"fp32": [], "int8": []}
    t = time.perf_counter()
    for i, a in enumerate(archs):  # interleaved net by net, alternating which precision goes first
        graph = Graph(SPACE.build(a, "cifar10").eval(), {"input": x})
        for p in (("fp32", "int8") if i % 2 == 0 else ("int8", "fp32")):
            measured[p].append(timers[p].time({str(i): graph})[str(i)].median_ms)
    held_s = time.perf_counter() - t
    load.append(os.getloadavg()[0])
    measured = {p: np.array(v) for p, v in measured.items()}
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} at start, {load[1]:.2f} after profiling, "
          f"{load[2]:.2f} at end; onnxruntime {profiles['fp32'].runtime.get('onnxruntime')}, {args.threads} thread(s), "
          f"{protocol.name} protocol, {args.clock} clock; int8 scheme {profiles['int8'].runtime['int8']['scheme']}")
    print(f"profiles: fp32 {seconds['fp32']:.0f} s, int8 {seconds['int8']:.0f} s wall "
          f"({len(profiles['int8'].lut)} LUT entries + {len(profiles['int8'].calibration)} calibration nets each)")
    print(f"held-out: {len(archs)} nets timed at fp32 and int8, interleaved, in {held_s:.0f} s")
    print(f"{'profile, judged on its precision':<40}{'spearman':>10}{'kendall':>10}{'MAPE %':>10}")
    for p in ("fp32", "int8"):
        s = scores(latency_model_for(SPACE, profiles[p]).predict_ms(archs), measured[p])
        print(f"{p + ' latency model':<40}{s['spearman']:>10.3f}{s['kendall']:>10.3f}{s['mape_%']:>10.1f}")
    ratio = measured["int8"] / measured["fp32"]
    print(f"INT8 / FP32 latency over the {len(archs)} nets: median {np.median(ratio):.2f} (range {ratio.min():.2f}-"
          f"{ratio.max():.2f}); INT8 faster on {int((ratio < 1).sum())} of {len(archs)}")
    if args.save:
        atomic_write_json(args.save, {"profiles": {p: v.to_dict() for p, v in profiles.items()}, "held_out": [
            {"arch": str(a), "fp32_ms": float(f), "int8_ms": float(q)}
            for a, f, q in zip(archs, measured["fp32"], measured["int8"])]})


if __name__ == "__main__":
    main()
