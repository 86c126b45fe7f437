"""CPU XNOR-popcount convolution vs float32 F.conv2d on the 3x3 layers of ImageNet
ResNet-18, CIFAR ResNet-20 and VGG-Small.

    python benchmarks/bench_cpu_conv.py [--quick] [--out benchmarks/results/cpu_conv]
                                        [--threads N] [--level avx2|scalar|avx512]

For every layer (batch 1 and 16; --quick: batch 1 only, fewer repeats) it times
  * xnor        irnet.ops.xnor_conv2d(x, packed_w): float32 in, float32 out, the
                activation sign-and-pack included, the weight packed once beforehand
                (what a deployed layer runs);
  * xnor+wpack  irnet.ops.xnor_conv2d(x, w) with the float weight: packs it every call;
  * packed      torch.ops.irnet.xnor_conv2d on pre-packed activations and weights;
  * pop, lut, pla  the packed path with each CPU conv algorithm of the level forced (AVX2:
                popcount and lut; AVX-512: popcount and planes), to show which one "auto"
                (used by all the rows above) should pick (irnet.ops.set_cpu_conv_algorithm);
(the kernels keep the inner-loop layout of a weight between calls, verified equal to
the weight bits each call, so xnor and packed time a deployed layer's steady state);
  * float32     torch.nn.functional.conv2d, same input, same thread count;
  * reference   irnet.reference.xnor_conv2d_bits (small layers only: it is slow).
Timings are medians over repeats taken round-robin (one of each method per round, so
that load from other processes hits all methods alike; a fresh random order every round,
seeded, so that no method always runs right after the same one: benchmarks/timing.py),
after warmup; the targets use the medians, and the same figures from each method's
fastest repeat are reported too
(the machine is shared: other processes can only slow a repeat down).

Memory: by default (--malloc keep) glibc's malloc keeps freed memory in the process, as
jemalloc and tcmalloc do, for float32 and irnet alike.  With glibc's own settings a
freed multi-MB tensor goes back to the OS and the next allocation of that size comes
back as fresh pages: thousands of page faults (~6 ms for the 12.8 MB output of the
64@56 batch-16 layer on our VM), charged to whichever method happens to allocate next,
which measures the allocator's history rather than the kernels.  --malloc default
measures that situation.

Binary MAC/s counts C_in*kh*kw*C_out*Ho*Wo*N multiply-accumulates of +-1 values.  The
binary peak is measured by probes of the convolution's inner loops on L1-resident
operands, on all threads: torch.ops.irnet.cpu_popcount_peak_bench (the current SIMD
level's XNOR-popcount register tile) and the level's other tile: where the table-lookup
kernel exists (AVX2) torch.ops.irnet.cpu_lut_peak_bench, where the planes kernel exists
(AVX-512) torch.ops.irnet.cpu_planes_peak_bench; the machine's binary peak is the faster.  This machine's speed drifts within a run (by 1.4x in one run), so each
layer's probe runs in the same round-robin rounds as its methods (one short probe per
round, the median like the times), and "% peak" is the packed path's binary MAC/s over
that; longer probes at the start and end of the run are reported too.  Writes
<out>.json and <out>.png (speedups).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import irnet  # noqa: E402
from irnet import ops, reference as ref  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_name, keep_freed_memory  # noqa: E402
from timing import time_round_robin  # noqa: E402

# (network, channels, spatial size): every 3x3 stride-1 pad-1 C->C layer of the nets
LAYERS = [
    ("resnet18", 64, 56), ("resnet18", 128, 28), ("resnet18", 256, 14), ("resnet18", 512, 7),
    ("resnet20", 16, 32), ("resnet20", 32, 16), ("resnet20", 64, 8),
    ("vgg_small", 128, 32), ("vgg_small", 256, 16), ("vgg_small", 512, 8),
]
REFERENCE_MAX_MACS = 60e6  # the reference runs only below this many MACs


def peak_probes(scale: int = 4) -> dict:
    """Each kernel's peak probe (binary MAC/s, all threads; ~0.5 ms x scale each): the
    popcount tile at 64 words (4096 channels) per dot, the LUT tile at 576 steps (256
    channels x 3x3) per dot, the planes tile at 144 steps of 64-bit lanes (1024 channels x
    3x3) per dot."""
    probes = {"popcount": lambda: torch.ops.irnet.cpu_popcount_peak_bench(64, 5000 * scale)}
    algos = ops.cpu_conv_algorithms()
    if "lut" in algos:
        probes["lut"] = lambda: torch.ops.irnet.cpu_lut_peak_bench(576, 500 * scale)
    if "planes" in algos:
        probes["planes"] = lambda: torch.ops.irnet.cpu_planes_peak_bench(144, 1000 * scale, 64)
    return probes


def level_algorithms() -> list:
    """The conv algorithms of the current level that run different code ([] where only one)."""
    algos = [a for a in ops.cpu_conv_algorithms() if a != "auto"]
    return algos if len(algos) > 1 else []


def measure_peaks(tries: int = 7) -> dict:
    """Best of `tries` runs of each kernel's peak probe."""
    probes = peak_probes()
    best = dict.fromkeys(probes, 0.0)
    for _ in range(tries):
        for name, probe in probes.items():
            best[name] = max(best[name], probe())
    return best


def geomean(v):
    return math.exp(sum(math.log(x) for x in v) / len(v)) if v else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1 only, fewer repeats")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "cpu_conv"), help="output path prefix")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--malloc", choices=["default", "keep"], default="keep",
                    help="keep (default): glibc malloc keeps freed memory (as jemalloc/tcmalloc do), so "
                         "big outputs come back without page faults, for every method alike; default: "
                         "glibc's own settings (see machine.keep_freed_memory)")
    ap.add_argument("--level", default=None, help="SIMD level (default: the best this CPU runs)")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)

    if not ops.has_compiled_kernel("xnor_conv2d", "cpu"):
        sys.exit("irnet's compiled CPU kernels are not built: nothing to benchmark")
    torch.set_num_threads(args.threads)
    if args.malloc == "keep" and not keep_freed_memory():
        sys.exit("--malloc keep needs glibc's mallopt")
    if args.level:
        ops.set_cpu_simd_level(args.level)
    level = ops.cpu_simd_level()
    repeats = args.repeats or (5 if args.quick else 15)
    batches = [1] if args.quick else [1, 16]

    load_start = os.getloadavg()[0]
    peaks_start = measure_peaks()
    peak_start = max(peaks_start.values())
    print(f"irnet CPU XNOR conv benchmark: {cpu_name()}, {args.threads} threads, SIMD level {level}, "
          f"torch {torch.__version__}, malloc {args.malloc}, load average {load_start:.2f}")
    print("binary peak at start (register tiles, L1-resident, all threads): "
          + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks_start.items()) + " GMAC/s\n")
    algos = level_algorithms()
    hdr = (f"{'layer':<22}{'float32':>10}{'xnor':>10}{'+wpack':>10}{'packed':>10}"
           + "".join(f"{a[:3]:>8}" for a in algos) + f"{'ref':>10}"
           f"{'bin GMAC/s':>12}{'% peak':>8}{'speedup':>9}{'packed x':>9}")
    print(hdr + "\n" + "-" * len(hdr))
    rows = []
    for batch in batches:
        for net, c, hw in LAYERS:
            x = torch.randn(batch, c, hw, hw)
            w = torch.randn(c, c, 3, 3)
            pw = ops.pack_conv_weight(w)
            xb = ops.pack_bits(x)
            args_ = (pw.bits, None, c, [1, 1], [1, 1], [1, 1])
            # correctness of what is being timed: exact against float32 on +-1 values
            assert torch.equal(ops.xnor_conv2d(x, pw, 1, 1), F.conv2d(ref.sign(x), ref.sign(w), None, 1, 1))
            fns = {
                "float32": lambda: F.conv2d(x, w, None, 1, 1),
                "xnor": lambda: ops.xnor_conv2d(x, pw, 1, 1),
                "xnor_wpack": lambda: ops.xnor_conv2d(x, w, 1, 1),
                "packed": lambda: torch.ops.irnet.xnor_conv2d(xb, *args_),
            }
            macs = batch * c * c * 9 * hw * hw
            if macs <= REFERENCE_MAX_MACS:
                fns["reference"] = lambda: ref.xnor_conv2d_bits(xb, pw.bits, None, c, (1, 1), (1, 1), (1, 1))
            # the binary peak in the same rounds: one short probe of each kernel per round
            probe_rates = []
            short = peak_probes(scale=1)
            fns["peak_probe"] = lambda: probe_rates.append(max(p() for p in short.values()))
            # every method runs with its algorithm setting made just before it (untimed)
            before = {k: (lambda: ops.set_cpu_conv_algorithm("auto")) for k in fns}
            for a in algos:
                fns["packed_" + a] = fns["packed"]
                before["packed_" + a] = (lambda a=a: ops.set_cpu_conv_algorithm(a))
            t, tmin = time_round_robin(fns, repeats if macs > 1e6 else 3 * repeats, before=before)
            ops.set_cpu_conv_algorithm("auto")
            del t["peak_probe"], tmin["peak_probe"]
            probe_rates = probe_rates[2:]  # the warmup calls
            layer_peak = statistics.median(probe_rates)
            row = {
                "net": net, "channels": c, "size": hw, "batch": batch, "macs": macs,
                "time_s": t,
                "time_min_s": tmin,
                "speedup_xnor_min": tmin["float32"] / tmin["xnor"],
                "binary_gmacs_packed": macs / t["packed"] / 1e9,
                "binary_gmacs_xnor": macs / t["xnor"] / 1e9,
                "peak_binary_macs_per_s": layer_peak,
                "peak_binary_macs_per_s_max": max(probe_rates),
                "fraction_of_peak": macs / t["packed"] / layer_peak,
                "speedup_xnor": t["float32"] / t["xnor"],
                "speedup_xnor_wpack": t["float32"] / t["xnor_wpack"],
                "speedup_packed": t["float32"] / t["packed"],
                "speedup_vs_reference": (t["reference"] / t["xnor"]) if "reference" in t else None,
                # > 1: the algorithm is faster than popcount on this layer
                "algorithm_speed_over_popcount": {a: t["packed_popcount"] / t["packed_" + a] for a in algos},
            }
            rows.append(row)
            name = f"{net} {c}@{hw} b{batch}"
            ms = lambda k: f"{t[k] * 1e3:10.3f}" if k in t else f"{'-':>10}"  # noqa: E731
            ms8 = lambda k: f"{t[k] * 1e3:8.3f}"  # noqa: E731
            print(f"{name:<22}{ms('float32')}{ms('xnor')}{ms('xnor_wpack')}{ms('packed')}"
                  + "".join(ms8("packed_" + a) for a in algos) + f"{ms('reference')}"
                  f"{row['binary_gmacs_packed']:12.0f}{row['fraction_of_peak'] * 100:7.0f}%"
                  f"{row['speedup_xnor']:8.1f}x{row['speedup_packed']:8.1f}x")
    print("(times in ms; speedup = float32 / xnor, packed x = float32 / packed"
          + (f"; {', '.join(a[:3] for a in algos)}: packed with that algorithm forced" if algos else "") + ")\n")
    # other processes can only slow a probe down: take the best of the start and end probes
    peaks_end = measure_peaks()
    peak_end = max(peaks_end.values())
    peaks = {k: max(peaks_start[k], peaks_end[k]) for k in peaks_start}
    peak = max(peaks.values())
    layer_peaks = [r["peak_binary_macs_per_s"] for r in rows]
    print("binary peak probes (best of 7 at the start / at the end, GMAC/s): "
          + ", ".join(f"{k} {peaks_start[k] / 1e9:.0f} / {peaks_end[k] / 1e9:.0f}" for k in peaks)
          + f"; in the layers' rounds (the '% peak' above): {min(layer_peaks) / 1e9:.0f}-"
          f"{max(layer_peaks) / 1e9:.0f} GMAC/s")

    r18 = [r for r in rows if r["net"] == "resnet18"]
    g = geomean([r["speedup_xnor"] for r in r18])
    mn = min(r["speedup_xnor"] for r in r18)
    gp = geomean([r["speedup_packed"] for r in r18])
    deep = [r for r in r18 if r["channels"] >= 256]
    deep_frac = min(r["fraction_of_peak"] for r in deep)
    targets = {
        "geomean_speedup_resnet18": {"value": g, "target": 12.0, "met": g >= 12.0},
        "min_speedup_resnet18": {"value": mn, "target": 6.0, "met": mn >= 6.0},
        "min_fraction_of_peak_256_512": {"value": deep_frac, "target": 0.40, "met": deep_frac >= 0.40},
    }
    print(f"ResNet-18 3x3 layers: geomean speedup over float32 {g:.1f}x (target >= 12x: "
          f"{'met' if g >= 12 else 'NOT met'}), min {mn:.1f}x (target >= 6x: {'met' if mn >= 6 else 'NOT met'}); "
          f"packed-input path geomean {gp:.1f}x")
    print(f"256/512-channel layers: min {deep_frac * 100:.0f}% of the binary peak (target >= 40%: "
          f"{'met' if deep_frac >= 0.4 else 'NOT met'})")
    # the same from each method's fastest repeat: less sensitive to other processes on a
    # shared machine (the targets above use the medians)
    g_min = geomean([r["speedup_xnor_min"] for r in r18])
    mn_min = min(r["speedup_xnor_min"] for r in r18)
    deep_min = min(r["macs"] / r["time_min_s"]["packed"] / r["peak_binary_macs_per_s_max"] for r in deep)
    print(f"from the fastest repeats: ResNet-18 geomean {g_min:.1f}x, min {mn_min:.1f}x; 256/512-channel layers "
          f"min {deep_min * 100:.0f}% of the binary peak (load average now {os.getloadavg()[0]:.2f})")

    result = {
        "machine": {"cpu": cpu_name(), "threads": args.threads, "malloc": args.malloc, "simd_level": level, "simd_levels": ops.cpu_simd_levels(),
                    "conv_algorithm": "auto", "algorithms_compared": algos,
                    "torch": torch.__version__, "load_average_start": load_start, "python": platform.python_version()},
        "peak_binary_macs_per_s": peak,
        "peak_binary_macs_per_s_start_end": [peak_start, peak_end],
        "peak_binary_macs_per_s_by_kernel": peaks,
        "peak_method": "the fastest of torch.ops.irnet.cpu_popcount_peak_bench(64, 5000 k) (the SIMD level's "
                       "XNOR-popcount register tile) and, with AVX2, torch.ops.irnet.cpu_lut_peak_bench(576, 500 k) "
                       "(the table-lookup register tile), with AVX-512 BITALG torch.ops.irnet.cpu_planes_peak_bench("
                       "144, 1000 k, 64) (the planes register tile), on L1-resident operands, all threads; per layer (rows' "
                       "peak_binary_macs_per_s, fraction_of_peak): k = 1, one probe per round-robin round of the "
                       "layer's methods, median; the run's peak_binary_macs_per_s*: k = 4, best of 7 at the start "
                       "and 7 at the end",
        "load_average_end": os.getloadavg()[0],
        "repeats": repeats, "quick": args.quick, "rows": rows, "targets": targets,
        "resnet18_geomean_speedup_packed": gp,
        "from_fastest_repeats": {"geomean_speedup_resnet18": g_min, "min_speedup_resnet18": mn_min,
                                 "min_fraction_of_peak_256_512": deep_min},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"{r['net']}\n{r['channels']}@{r['size']} b{r['batch']}" for r in rows]
        xs = range(len(rows))
        fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(rows)), 4.8))
        wd = 0.4
        ax.bar([i - wd / 2 for i in xs], [r["speedup_xnor"] for r in rows], wd, label="xnor (float in/out, act. packing)")
        ax.bar([i + wd / 2 for i in xs], [r["speedup_packed"] for r in rows], wd, label="packed in, float out")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup over float32 F.conv2d")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_title(f"irnet XNOR conv on {cpu_name()} ({args.threads} threads, {level}); "
                     f"ResNet-18 geomean {g:.1f}x", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out + ".png", dpi=120)
        print(f"wrote {args.out}.json and {args.out}.png")
    except ImportError:
        print(f"wrote {args.out}.json (matplotlib missing: no chart)")
    return result


if __name__ == "__main__":
    main()
