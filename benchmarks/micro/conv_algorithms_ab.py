"""Interleaved A/B timing of the CPU binary conv algorithms on single layers (a small,
shared-machine-friendly measurement, not the full benchmark of bench_cpu_conv.py).

    python benchmarks/micro/conv_algorithms_ab.py [--threads 2] [--batch 1 16] [--rounds 30]
        [--algos popcount planes] [--input packed float] [--layers resnet20 vgg resnet18]
        [--level avx512] [--channels-last]

Every round runs every (layer, batch, input, algorithm) call once, in a fresh seeded random
order; each call is timed alone (a few calls per sample for sub-20-us layers).  Prints the
median per call and the spread (25th-75th percentile) in microseconds, and each
algorithm's median over the first one's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from irnet import ops, reference as ref  # noqa: E402
from timing import round_robin  # noqa: E402

# (name, C_in, C_out, size, stride)
LAYERS = {
    "resnet20": [("16@32", 16, 16, 32, 1), ("32@16", 32, 32, 16, 1), ("64@8", 64, 64, 8, 1),
                 ("16->32@32 s2", 16, 32, 32, 2), ("32->64@16 s2", 32, 64, 16, 2)],
    "vgg": [("128@32", 128, 128, 32, 1), ("256@16", 256, 256, 16, 1), ("512@8", 512, 512, 8, 1),
            ("512@4", 512, 512, 4, 1)],
    "resnet18": [("64@56", 64, 64, 56, 1), ("128@28", 128, 128, 28, 1), ("256@14", 256, 256, 14, 1),
                 ("512@7", 512, 512, 7, 1), ("64->128@56 s2", 64, 128, 56, 2)],
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--algos", nargs="+", default=["popcount", "planes"],
                    help="conv algorithms, each optionally at a SIMD level: popcount, planes, avx2:lut, ...")
    ap.add_argument("--input", nargs="+", default=["packed"], choices=["packed", "float"])
    ap.add_argument("--layers", nargs="+", default=["resnet20"])
    ap.add_argument("--only", nargs="*", default=None, help="layer names to keep")
    ap.add_argument("--level", default=None)
    ap.add_argument("--channels-last", action="store_true", help="channels_last output (and float input)")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="thread: this thread's CPU time (1 thread only: robust to other processes' load)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.clock == "thread" and args.threads != 1:
        ap.error("--clock thread measures only the calling thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    if args.level:
        ops.set_cpu_simd_level(args.level)
    default_level = ops.cpu_simd_level()

    def use(algo):  # "[level:]algorithm"
        level, _, name = algo.rpartition(":")
        ops.set_cpu_simd_level(level or default_level)
        ops.set_cpu_conv_algorithm(name)
    torch.manual_seed(0)
    calls = {}
    for net in args.layers:
        for name, c, o, size, s in LAYERS[net]:
            if args.only and name not in args.only:
                continue
            w = torch.randn(o, c, 3, 3)
            wb = ref.pack_bits(w)
            scale = torch.pow(2.0, torch.randint(-3, 3, (o,)).float())
            for n in args.batch:
                x = torch.randn(n, c, size, size)
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                xb = ref.pack_bits(x)
                for kind in args.input:
                    xin = xb if kind == "packed" else x
                    fn = (lambda xin=xin, wb=wb, scale=scale, c=c, s=s: torch.ops.irnet.xnor_conv2d(
                        xin, wb, scale, c, [s, s], [1, 1], [1, 1], args.channels_last))
                    for algo in args.algos:
                        calls[(name, n, kind, algo)] = fn
    # calls per sample: enough for ~100 us (~1 ms with the thread clock, whose resolution is coarser)
    target = 1e-3 if args.clock == "thread" else 1e-4
    reps = {}
    for key, fn in calls.items():
        use(key[3])
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        fn()
        reps[key] = max(1, min(200, int(target / max(1e-7, time.perf_counter() - t0))))

    def burst(fn, r):  # one sample: r calls back to back
        def run():
            for _ in range(r):
                fn()
        return run

    def measure(run):
        t0 = clock()
        run()
        return clock() - t0

    # no warmup here (done above); the algorithm is set untimed before each sample
    times = round_robin({key: burst(fn, reps[key]) for key, fn in calls.items()}, args.rounds, 0,
                        {key: (lambda algo=key[3]: use(algo)) for key in calls}, measure)
    samples = {key: [t / reps[key] * 1e6 for t in v] for key, v in times.items()}
    use("auto")
    print(f"level {ops.cpu_simd_level()}, {args.threads} threads, {args.clock} clock, {args.rounds} rounds, "
          f"{'channels_last' if args.channels_last else 'NCHW'} output; median us [p25-p75]")
    groups = {}
    for (name, n, kind, algo), v in samples.items():
        groups.setdefault((name, n, kind), {})[algo] = v
    for (name, n, kind), by_algo in groups.items():
        base = statistics.median(by_algo[args.algos[0]])
        parts = []
        for algo, v in by_algo.items():
            q = statistics.quantiles(v, n=4)
            med = statistics.median(v)
            parts.append(f"{algo} {med:8.1f} [{q[0]:.1f}-{q[2]:.1f}] x{base / med:4.2f}")
        print(f"{name:>14} b{n:<3} {kind:6} | " + " | ".join(parts))


if __name__ == "__main__":
    main()
