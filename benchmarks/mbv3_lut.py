"""MobileNetV3 LUT-sum as a latency ranking: shipped reference LUTs against measured whole-net latencies.

Part 1 (shipped tables, no timing): the LUT-sum of HELP's 5,000 w1.2 subnets from the i7-8700K CPU LUT
(NSGANetV2) and the Note10 phone LUT (OFA; only the 5 resolutions it covers), ranked against the
measured end-to-end latency on HELP's 9 GPU settings, beside the MACs-only ranking. The LUTs come from
other devices than the GPUs, so this says how far a CPU/phone per-layer table transfers, not how good a
LUT is on its own device.

Part 2 (this CPU): seeded random subnets exported to ONNX (opset 17, TorchScript exporter) and timed with
ONNX Runtime, 1 intra-op thread (``hardware.backends``), ranked against the i7 LUT-sum and MACs. The machine
is shared, so nets are timed in interleaved rounds (see ``this_cpu``) and the even-vs-odd-round agreement
is printed as the noise ceiling of the comparison.

    python benchmarks/mbv3_lut.py                 # both parts, 12 nets on this CPU
    python benchmarks/mbv3_lut.py --nets 0        # shipped tables only (seconds)
    python benchmarks/mbv3_lut.py --nets 0 --profile profiles/cpu.json   # + a profile's own LUT (part 3)

Part 3 (``--profile``, a ``profile --space mbv3`` result): the profile's own LUT-sum (interpolated at the
resolutions it did not measure), the i7 LUT-sum and MACs, ranked against the profile's own whole-net
calibration timings, and the fitted latency model's cross-validated error.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import kendalltau, spearmanr


def _corr(x, y) -> tuple[float, float]:
    return float(spearmanr(x, y)[0]), float(kendalltau(x, y)[0])


def _row(name: str, r) -> str:
    f = lambda vs: " ".join(f"{v:7.3f}" for v in vs)  # noqa: E731
    return f"  {name:12s} {f(r[:4])} | {f(r[4:8])} | {r[8]:9.3f}"


def coverage() -> None:
    """Every key any arch of the space needs, against each shipped LUT, at the resolutions it covers."""
    from pomonag_edge.data.mbv3 import REFERENCE_LUT_RESOLUTIONS, REFERENCE_LUT_WIDTHS, reference_lut
    from pomonag_edge.spaces.mbv3 import SPACE, SPACE_W10

    print("Coverage of the shipped LUTs (keys any arch needs at the resolutions and widths each LUT covers):")
    for name, style in (("i7-8700k", "nsganetv2"), ("note10", "ofa")):
        lut = reference_lut(name)
        rs = [r for r in REFERENCE_LUT_RESOLUTIONS[name] if r in SPACE.resolutions]
        for space in (SPACE, SPACE_W10):
            if space.width in REFERENCE_LUT_WIDTHS[name]:
                needed = set(space.lut_signatures(resolutions=rs, style=style))
                print(f"  {name:9s} w{space.width}: {len(needed)} keys over {len(rs)} resolutions "
                      f"({rs[0]}..{rs[-1]}), {len(needed - set(lut))} missing; LUT holds {len(lut)} keys")


def shipped_tables() -> None:
    from pomonag_edge.data.mbv3 import REFERENCE_LUT_RESOLUTIONS, reference_lut
    from pomonag_edge.spaces.mbv3 import SPACE, ofa_latency_table
    from pomonag_edge.spaces.mbv3.arch import lut_sum_ms

    table = ofa_latency_table()
    archs = table.archs
    i7 = np.array([lut_sum_ms(a, reference_lut("i7-8700k")) for a in archs])
    on_note10 = np.array([a.r in REFERENCE_LUT_RESOLUTIONS["note10"] for a in archs])
    note10 = np.array([lut_sum_ms(a, reference_lut("note10")) if ok else np.nan for a, ok in zip(archs, on_note10)])
    macs = np.array([SPACE.macs(a) for a in archs], dtype=np.float64)
    blocks = np.array([sum(a.d) for a in archs])  # launch-bound batch-1 GPUs rank by layer count
    print(f"Part 1: HELP's {len(archs)} w1.2 subnets, end-to-end GPU latency vs LUT-sum of other devices' LUTs")
    print(f"  i7 LUT-sum over all {len(archs)} nets; Note10 LUT-sum over the {int(on_note10.sum())} nets at "
          f"r in {REFERENCE_LUT_RESOLUTIONS['note10']}; MACs baseline on both sets")
    print(f"  {'setting':12s} {'i7 sp':>7s} {'i7 kt':>7s} {'MACs sp':>7s} {'MACs kt':>7s} | "
          f"{'N10 sp':>7s} {'N10 kt':>7s} {'MACs sp':>7s} {'MACs kt':>7s} | {'blocks sp':>9s}")
    rows = []
    for j, name in enumerate(table.settings):
        y = table.latency_ms[:, j]
        r = _corr(i7, y) + _corr(macs, y) + _corr(note10[on_note10], y[on_note10]) \
            + _corr(macs[on_note10], y[on_note10]) + _corr(blocks, y)[:1]
        rows.append(r)
        print(_row(name, r))
    print(_row("mean", np.mean(rows, 0)))
    print("  (sp = Spearman, kt = Kendall; blocks = number of MBConv blocks, a baseline for launch-bound batch 1)")
    b1 = [j for j, n in enumerate(table.settings) if n.endswith("_1")]
    cross = [_corr(table.latency_ms[:, a], table.latency_ms[:, b])[0] for a in b1 for b in b1 if a < b]
    print(f"  reference: Spearman between the batch-1 GPU settings themselves: {min(cross):.3f}..{max(cross):.3f}")
    sp_i7_n10 = _corr(i7[on_note10], note10[on_note10])
    print(f"  i7 LUT-sum vs Note10 LUT-sum (same {int(on_note10.sum())} nets): Spearman {sp_i7_n10[0]:.3f}, "
          f"Kendall {sp_i7_n10[1]:.3f}")


def this_cpu(n: int, seed: int, rounds: int, runs: int) -> None:
    """Interleaved timing: every net is loaded first, then timed in ``rounds`` rounds of ``runs`` runs each,
    net after net, so a burst of load from other processes lands on all nets alike rather than on one."""
    import torch

    from pomonag_edge.data.mbv3 import reference_lut
    from pomonag_edge.hardware import get_backend, onnx_bytes
    from pomonag_edge.spaces.mbv3 import SPACE
    from pomonag_edge.spaces.mbv3.arch import lut_sum_ms

    torch.set_num_threads(1)
    backend = get_backend("onnxruntime", threads=1)
    archs = SPACE.sample(n, seed)
    print(f"\nPart 2: {n} random w1.2 subnets (seed {seed}) on this CPU, ONNX Runtime "
          f"{backend.version()['onnxruntime']}, 1 thread; {rounds} interleaved rounds x {runs} runs per net after "
          "3 warm-up runs; median of all runs")
    t0 = time.time()
    runnables = []
    for a in archs:
        torch.manual_seed(0)
        inputs = {"input": np.random.default_rng(0).standard_normal(SPACE.input_shape(a)).astype(np.float32)}
        runnables.append(backend.load(onnx_bytes(SPACE.build(a).eval(), inputs), inputs))
        for _ in range(3):
            runnables[-1].run_once_ms()
    samples = np.zeros((n, rounds, runs))
    for k in range(rounds):
        for i, runnable in enumerate(runnables):
            samples[i, k] = [runnable.run_once_ms() for _ in range(runs)]
    measured = np.median(samples.reshape(n, -1), axis=1)
    lut = np.array([lut_sum_ms(a, reference_lut("i7-8700k")) for a in archs])
    macs = np.array([SPACE.macs(a) for a in archs], dtype=np.float64)
    print(f"  {'r':>4s} {'MACs':>8s} {'i7 LUT ms':>9s} {'ORT ms':>8s} {'IQR/med':>7s}  arch")
    for i, a in enumerate(archs):
        q1, q3 = np.percentile(samples[i], [25, 75])
        print(f"  {a.r:4d} {macs[i] / 1e6:7.0f}M {lut[i]:9.2f} {measured[i]:8.2f} {(q3 - q1) / measured[i]:7.2f}  {a}")
    sp_lut, sp_macs = _corr(lut, measured), _corr(macs, measured)
    half = _corr(np.median(samples[:, 0::2].reshape(n, -1), 1), np.median(samples[:, 1::2].reshape(n, -1), 1))
    ratio = measured / lut
    print(f"  i7 LUT-sum vs ORT median: Spearman {sp_lut[0]:.3f}, Kendall {sp_lut[1]:.3f}; "
          f"ORT / LUT-sum ratio median {np.median(ratio):.2f} (range {ratio.min():.2f}..{ratio.max():.2f})")
    print(f"  MACs      vs ORT median: Spearman {sp_macs[0]:.3f}, Kendall {sp_macs[1]:.3f}")
    print(f"  noise ceiling: even rounds vs odd rounds of the same nets: Spearman {half[0]:.3f}, Kendall {half[1]:.3f}")
    print(f"  ({time.time() - t0:.0f} s; n={n}, so one swapped neighbour pair moves Spearman by {6 / (n * n - 1):.3f})")


def own_profile(path: str) -> None:
    from pomonag_edge.data.mbv3 import reference_lut
    from pomonag_edge.profile import load_profile
    from pomonag_edge.spaces.lut import lut_cost
    from pomonag_edge.spaces.mbv3 import SPACE
    from pomonag_edge.spaces.mbv3.arch import lut_sum_ms
    from pomonag_edge.spaces.mbv3.cost import lut_resolutions

    p = load_profile(path)
    archs = [SPACE.parse(c["arch"]) for c in p.calibration]
    measured = np.array([c["latency_ms"] for c in p.calibration])
    own = lut_cost(SPACE, p).ms(archs)
    i7 = np.array([lut_sum_ms(a, reference_lut("i7-8700k")) for a in archs])
    macs = np.array([SPACE.macs(a) for a in archs], dtype=np.float64)
    exact = np.array([a.r in lut_resolutions(p.lut) for a in archs])
    rt = p.runtime
    print(f"\nPart 3: profile {path} ({rt.get('backend')}, {rt.get('clock')} clock, {rt.get('protocol')} protocol, "
          f"LUT at r {lut_resolutions(p.lut)}): {len(archs)} calibration nets, "
          f"{int(exact.sum())} at a measured resolution")
    for name, x in (("own LUT-sum", own), ("i7 LUT-sum", i7), ("MACs", macs)):
        sp, kt = _corr(x, measured)
        print(f"  {name:12s} vs measured: Spearman {sp:.3f}, Kendall {kt:.3f}")
    ratio = measured / own
    print(f"  measured / own LUT-sum: median {np.median(ratio):.2f}, range {ratio.min():.2f}..{ratio.max():.2f}")
    m = p.latency_model or {}
    if m.get("cv_relative_errors"):
        e = np.array(m["cv_relative_errors"])
        print(f"  fitted model ({m.get('form', m.get('kind'))}): leave-one-out relative error median "
              f"{100 * np.median(e):.1f}%, 90% quantile {100 * m['relative_error']:.1f}% (the budget margin)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", type=int, default=12, help="random nets to time on this CPU (0: skip part 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds on this CPU")
    p.add_argument("--runs", type=int, default=4, help="runs per net per round")
    p.add_argument("--profile", default=None, help="an mbv3 profile file: also rank its own LUT-sum (part 3)")
    args = p.parse_args(argv)
    t0 = time.time()
    coverage()
    shipped_tables()
    print(f"  ({time.time() - t0:.0f} s)")
    if args.nets:
        this_cpu(args.nets, args.seed, args.rounds, args.runs)
    if args.profile:
        own_profile(args.profile)


if __name__ == "__main__":
    main()
