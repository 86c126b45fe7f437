"""irnet on a GPU: the binary conv against cuDNN and int8, the fused training ops against
the reference ops and torch.compile, and one training step.

NOTE: written on a machine without a GPU.  This script has NEVER RUN on a GPU; its first
run there is also its first test.  Without a CUDA device (or without irnet's compiled
CUDA kernels) it exits with a clear message and measures nothing.  ``--plumbing-cpu`` runs
every section on tiny shapes on the CPU to check the script itself: those numbers are CPU
numbers, labelled so everywhere (table, JSON, PNG), and never a GPU figure.

Sections (``--sections``; each written to the JSON as soon as it is measured):

conv        ImageNet ResNet-18's 3x3 layers (64@56, 128@28, 256@14, 512@7; stride 1,
            padding 1) at batch 64 and 256.  Timed per layer:
              irnet_<algo>   torch.ops.irnet.xnor_conv2d on packed input, float32 NCHW out,
                             once per CUDA conv algorithm the build offers
                             (irnet.ops.cuda_conv_algorithms(): e.g. auto, popc, mma, each
                             forced with irnet.ops.set_cuda_conv_algorithm);
              irnet_fp16in   irnet.ops.xnor_conv2d on float16 channels_last input: pack +
                             conv, float32 channels_last out (what a deployed layer runs);
              pack_fp16      the packing of that input alone;
              cudnn_fp16, cudnn_bf16, cudnn_fp32   F.conv2d, channels_last activations and
                             weights, cudnn.benchmark on (fp32: TF32 as torch's default);
              int8_gemm      torch._int_mm of the layer's im2col size, (M, K) x (K, N) with
                             M = batch*Ho*Wo, K = C*9, N = C_out (padded to multiples of 8):
                             the GEMM only, its im2col and quantization not counted.
            Before any timing every irnet result (each algorithm, packed and float input) is
            compared bit for bit (torch.equal) with the reference
            round(F.conv2d(sign(x), sign(w))) * scale (float32 conv of +-1 values, TF32 off:
            every partial sum is an integer below 2^24, so exact; the round() removes any
            Winograd/FFT rounding); a path that differs is reported and not timed.  The
            int8 GEMM's result is compared with the same integer dot products.
train_ops   Libra-PB (weights C x C x 3 x 3) and sign/EDE (activations 128 x C x HW x HW)
            of CIFAR ResNet-18's four stages, forward + backward (torch.autograd.grad),
            float32: irnet's fused ops (irnet.ops.libra_pb / sign_ede), the reference ops
            (irnet.reference, eager PyTorch) and torch.compile of the reference ops
            (Inductor's fused Triton kernels: what a user would otherwise get).  Forward
            results compared with torch.equal, gradients by max |diff| / max |reference|.
train_step  one training step (forward + backward + SGD) of CIFAR ResNet-18 1w1a at batch
            128: fused vs reference vs compiled reference, each side in its own process
            (benchmarks/bench_train_step.py's run_side: the reference sides without the
            extension), CUDA-event medians.

Timing: CUDA-event medians over --repeats samples after a warmup sample, methods in a
seeded random order each round (benchmarks/timing.py); one sample is --calls back-to-back
calls cycling over --rotate copies of the input (so that repeated calls do not just hit
the L2 cache), replayed from a CUDA graph where the capture works (launch gaps removed; the
table says which), eagerly otherwise.  Ratios are baseline time / irnet time (> 1: irnet
faster).  Targets for the first GPU run, PASS/FAIL beside the measured ratios:
  * tensor-core binary conv (irnet_mma, packed input) >= 4x cuDNN float16 at batch 256 on
    the 256- and 512-channel layers;
  * fused training ops >= 1.5x torch.compile of the reference ops (sum over the shapes,
    Libra-PB and sign/EDE together, forward + backward).

    python benchmarks/bench_cuda_conv.py                       # ~3 minutes on an H100
    python benchmarks/bench_cuda_conv.py --sections conv --json out.json --png out.png
    python benchmarks/bench_cuda_conv.py --plumbing-cpu --no-compile   # checks this script
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from timing import time_round_robin_device  # noqa: E402

RESNET18_LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]           # (channels, height = width)
CIFAR_RESNET18_STAGES = [(64, 32), (128, 16), (256, 8), (512, 4)]
PLUMBING_LAYERS = [(16, 8), (64, 4)]
PLUMBING_STAGES = [(16, 8), (32, 4)]
CONV_TARGET = 4.0          # irnet_mma vs cudnn_fp16, batch 256, 256/512 channels
TRAIN_OPS_TARGET = 1.5     # fused vs torch.compile(reference), fwd + bwd
CONV_TARGET_NAME = f"mma conv >= {CONV_TARGET}x cuDNN fp16 at b256, 256/512 ch"
TRAIN_OPS_TARGET_NAME = f"fused training ops >= {TRAIN_OPS_TARGET}x torch.compile(reference)"
BANNER_PLUMBING = "CPU PLUMBING RUN: NOT GPU FIGURES (the script's own check on a machine without a GPU)"


class Deadline:
    """The time left of --budget-s; sections skip what no longer fits, and say so."""

    def __init__(self, seconds):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self):
        return float("inf") if self.end is None else self.end - time.monotonic()

    def passed(self, reserve=0.0):
        return self.left() <= reserve


# --------------------------------------------------------------------------- results
class Results:
    """The JSON record, rewritten after every measured row (a kill keeps what was measured)."""

    def __init__(self, path, meta):
        self.path = path
        self.data = dict(meta=meta, conv=[], train_ops=[], train_step=None, targets=[], skipped=[], errors=[])

    def add(self, section, row):
        self.data[section].append(row)
        self.write()

    def write(self):
        if not self.path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)


def _error(results, where, exc):
    msg = f"{where}: {type(exc).__name__}: {exc}"
    print(f"ERROR {msg}", flush=True)
    traceback.print_exc(limit=6)
    results.data["errors"].append(msg)
    results.write()


# --------------------------------------------------------------------------- timing
def timed_methods(torch, methods: dict, args, device):
    """methods: {name: (call, copies)} where call(i) runs the method once on input copy i.
    Builds one sample per method (--calls calls cycling over the copies), as a CUDA graph
    replay where capture works; returns ({name: ms per call}, {name: "graph"|"eager"|error})."""
    cuda = device.type == "cuda"
    fns, how = {}, {}
    for name, (call, copies) in methods.items():
        order = [i % copies for i in range(args.calls)]

        def sample(call=call, order=order):
            for i in order:
                call(i)
        how[name] = "eager"
        if cuda and not args.no_graphs:
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    sample()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    sample()
                fns[name] = graph.replay
                how[name] = "graph"
                continue
            except Exception as exc:  # not capturable: time it eagerly, and say why
                torch.cuda.synchronize()
                how[name] = f"eager (graph capture failed: {type(exc).__name__}: {str(exc)[:120]})"
        fns[name] = sample
    medians, _ = time_round_robin_device(fns, repeats=args.repeats, iters=1, warmup=1, device=device.type)
    return {k: v / args.calls for k, v in medians.items()}, how


# --------------------------------------------------------------------------- conv section
def conv_algorithms(ops, cuda):
    """(names to time, a line saying what the build offers)."""
    if not cuda:
        return [None], "CPU plumbing run: the CPU conv (default algorithm) stands in for the CUDA algorithms"
    names = list(ops.cuda_conv_algorithms())
    return names, f"CUDA conv algorithms offered by this build: {names} (each timed, forced)"


def _pad_cols(t, multiple):
    pad = (-t.shape[1]) % multiple
    if pad == 0:
        return t
    import torch.nn.functional as F
    return F.pad(t, (0, pad))


def bench_conv_layer(torch, F, ops, ref, device, c, hw, batch, algorithms, args):
    """One layer: checks, then timings.  Returns the row."""
    gen = torch.Generator(device="cpu").manual_seed(1000 * c + batch)
    # values exactly representable in float16: every dtype below sees the same signs
    x = torch.randn(batch, c, hw, hw, generator=gen).half().float().to(device)
    w = torch.randn(c, c, 3, 3, generator=gen).to(device)
    pw = ops.libra_pb_pack(w)
    wsign = ref.unpack_bits(pw.bits, c, torch.float32)
    row = dict(channels=c, hw=hw, batch=batch, exact={}, ms={}, timing={}, errors={})

    # exact reference: the integer dot products, then the float32 multiply by the scale
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        dot = F.conv2d(ref.sign(x), wsign, None, 1, 1).round()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    expect = dot * pw.scale.reshape(1, -1, 1, 1)

    copies = max(1, args.rotate)
    xs = [x] + [torch.randn(batch, c, hw, hw, generator=gen).half().float().to(device) for _ in range(copies - 1)]
    bits = [ops.pack_bits(t) for t in xs]
    half_cl = [t.half().contiguous(memory_format=torch.channels_last) for t in xs]
    methods = {}
    args3 = ([1, 1], [1, 1], [1, 1])

    def set_algo(name):
        if name is not None:
            ops.set_cuda_conv_algorithm(name)

    restore = ops.cuda_conv_algorithm() if algorithms != [None] else None
    try:
        for algo in algorithms:
            key = f"irnet_{algo or 'default'}"
            try:
                set_algo(algo)
                y = torch.ops.irnet.xnor_conv2d(bits[0], pw.bits, pw.scale, c, *args3, False)
                row["exact"][key] = bool(torch.equal(y, expect))
                del y
                if row["exact"][key]:
                    # the setting is global: each call sets it (a host-side store) before running
                    methods[key] = (lambda i, algo=algo: (set_algo(algo), torch.ops.irnet.xnor_conv2d(
                        bits[i], pw.bits, pw.scale, c, *args3, False)), copies)
            except Exception as exc:
                row["errors"][key] = f"{type(exc).__name__}: {exc}"
        default = "auto" if "auto" in algorithms else algorithms[0]
        try:
            set_algo(default)
            y = ops.xnor_conv2d(half_cl[0], pw, 1, 1, 1)
            row["exact"]["irnet_fp16in"] = bool(torch.equal(y.contiguous(), expect))
            del y
            if row["exact"]["irnet_fp16in"]:
                methods["irnet_fp16in"] = (lambda i: (set_algo(default), ops.xnor_conv2d(half_cl[i], pw, 1, 1, 1)),
                                           copies)
                methods["pack_fp16"] = (lambda i: ops.pack_bits(half_cl[i]), copies)
        except Exception as exc:
            row["errors"]["irnet_fp16in"] = f"{type(exc).__name__}: {exc}"

        baselines = (("cudnn_fp16", torch.float16), ("cudnn_bf16", torch.bfloat16), ("cudnn_fp32", torch.float32))
        for name, dtype in baselines:
            try:
                xin = [t.to(dtype).contiguous(memory_format=torch.channels_last) for t in xs]
                wt = w.to(dtype).contiguous(memory_format=torch.channels_last)
                F.conv2d(xin[0], wt, None, 1, 1)  # a first call (cudnn.benchmark picks its algorithm here)
                methods[name] = (lambda i, xin=xin, wt=wt: F.conv2d(xin[i], wt, None, 1, 1), copies)
            except Exception as exc:
                row["errors"][name] = f"{type(exc).__name__}: {exc}"

        # int8 GEMM of the im2col size, checked against the same integer dot products
        try:
            m, k = batch * hw * hw, 9 * c
            b_rows = _pad_cols(wsign.reshape(c, k).to(torch.int8), 8)               # (N, Kp)
            b_rows = torch.cat([b_rows, b_rows.new_zeros((-c) % 8, b_rows.shape[1])]) if c % 8 else b_rows
            mat2 = b_rows.t()                                                        # (Kp, Np), column-major

            def im2col(t):
                cols = F.unfold(ref.sign(t).half(), 3, padding=1)                  # (batch, 9C, hw*hw)
                return _pad_cols(cols.transpose(1, 2).reshape(m, k).to(torch.int8), 8).contiguous()
            a = [im2col(xs[0])]
            try:
                got = torch._int_mm(a[0], mat2)
            except RuntimeError:                                                     # layout it may refuse
                mat2 = mat2.contiguous()
                got = torch._int_mm(a[0], mat2)
            want = dot.to(torch.int32).permute(0, 2, 3, 1).reshape(m, c)
            row["exact"]["int8_gemm"] = bool(torch.equal(got[:, :c], want))
            del got, want
            a += [im2col(t) for t in xs[1:]]
            methods["int8_gemm"] = (lambda i: torch._int_mm(a[i], mat2), copies)
        except Exception as exc:
            row["errors"]["int8_gemm"] = f"{type(exc).__name__}: {exc}"
        del dot, expect

        ms, how = timed_methods(torch, methods, args, device)
        row["ms"], row["timing"] = ms, how
    finally:
        if restore is not None:
            ops.set_cuda_conv_algorithm(restore)
    # baseline time / irnet time
    row["ratios"] = {f"{base}/{irn}": ms[base] / ms[irn] for irn in ms if irn.startswith("irnet_")
                     for base in ("cudnn_fp16", "cudnn_bf16", "cudnn_fp32", "int8_gemm") if base in ms}
    # binary multiply-accumulates per second of the packed path (each algorithm)
    macs = batch * hw * hw * c * c * 9
    row["tera_binary_macs_per_s"] = {k: macs / (v * 1e-3) / 1e12 for k, v in ms.items() if k.startswith("irnet_")}
    return row


def run_conv(torch, F, ops, ref, device, args, results, deadline, plumbing):
    algorithms, line = conv_algorithms(ops, device.type == "cuda")
    print(line, flush=True)
    results.data["meta"]["conv_algorithms"] = [a or "default" for a in algorithms]
    results.data["meta"]["conv_algorithms_note"] = line
    layers = PLUMBING_LAYERS if plumbing else RESNET18_LAYERS
    batches = args.batches
    keys = [f"irnet_{a or 'default'}" for a in algorithms] + ["irnet_fp16in", "pack_fp16", "cudnn_fp16", "cudnn_bf16",
                                                             "cudnn_fp32", "int8_gemm"]
    short = {k: k.replace("irnet_", "").replace("cudnn_", "") for k in keys}
    short.update(int8_gemm="int8", pack_fp16="pack")
    header = f"{'layer':<16}{'exact':>7}" + "".join(f"{short[k]:>9}" for k in keys) + "   fp16/irnet (each algo)"
    print("\nconv: ms per call (median); exact = every irnet path bit-exact; fp16/X = cuDNN fp16 time / X's")
    print(header + "\n" + "-" * len(header), flush=True)
    for batch in batches:
        for c, hw in layers:
            name = f"{c}@{hw} b{batch}"
            if deadline.passed(reserve=args.reserve_s):
                results.data["skipped"].append(f"conv {name}: out of time (--budget-s)")
                print(f"{name:<16} skipped: out of time", flush=True)
                continue
            try:
                row = bench_conv_layer(torch, F, ops, ref, device, c, hw, batch, algorithms, args)
            except Exception as exc:
                _error(results, f"conv {name}", exc)
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results.add("conv", row)
            ms = row["ms"]
            irnet_exact = all(v for k, v in row["exact"].items() if k.startswith("irnet"))
            cells = "".join(f"{ms[k]:>9.4f}" if k in ms else f"{'-':>9}" for k in keys)
            ratios = " ".join(f"{k[6:]} {ms['cudnn_fp16'] / ms[k]:.2f}x" for k in ms
                              if k.startswith("irnet_") and k != "irnet_fp16in" and "cudnn_fp16" in ms)
            print(f"{name:<16}{'yes' if irnet_exact else 'NO':>7}{cells}   {ratios}", flush=True)
            for k, v in row["exact"].items():
                if not v:
                    print(f"    {k}: NOT bit-exact against the reference: not timed", flush=True)
            for k, v in row["errors"].items():
                print(f"    {k}: error: {v}", flush=True)
            graphs = {k: v for k, v in row["timing"].items() if v != "graph"}
            if graphs and device.type == "cuda":
                print(f"    timed eagerly: {graphs}", flush=True)


# --------------------------------------------------------------------------- training ops
def run_train_ops(torch, ops, ref, device, args, results, deadline, plumbing):
    from irnet import EDESchedule

    k_val, t_val = EDESchedule(1e-3, 10.0, 400).at(200)  # mid-training EDE point of the 1w1a recipe
    stages = PLUMBING_STAGES if plumbing else CIFAR_RESNET18_STAGES
    batch = 4 if plumbing else 128
    compile_ok = not args.no_compile
    if compile_ok:
        import torch._dynamo as dynamo
        for knob in ("cache_size_limit", "recompile_limit"):  # one compiled graph per shape, no eager fallback
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, max(64, getattr(dynamo.config, knob)))
    k = torch.tensor(k_val, device=device)
    t = torch.tensor(t_val, device=device)
    print(f"\ntrain_ops: forward + backward, float32, EDE k={k_val:.4g} t={t_val:.4g}; ms per call (median)")
    header = (f"{'op':<10}{'shape':<20}{'check':>7}{'fused':>10}{'reference':>11}{'compiled':>10}"
              f"{'ref/fused':>11}{'comp/fused':>11}{'compile s':>10}")
    print(header + "\n" + "-" * len(header), flush=True)
    cases = []
    for c, hw in stages:
        cases.append(("libra_pb", (c, c, 3, 3), ops.libra_pb, ref.libra_pb))
        cases.append(("sign_ede", (batch, c, hw, hw), ops.sign_ede, ref.sign_ede))
    for op, shape, fused_fn, ref_fn in cases:
        name = f"{op} {shape}"
        if deadline.passed(reserve=args.reserve_s):
            results.data["skipped"].append(f"train_ops {name}: out of time (--budget-s)")
            print(f"{op:<10}{str(shape):<20} skipped: out of time", flush=True)
            continue
        try:
            row = bench_train_op(torch, ref, device, op, shape, fused_fn, ref_fn, k, t, compile_ok, args)
        except Exception as exc:
            _error(results, f"train_ops {name}", exc)
            continue
        results.add("train_ops", row)
        ms = row["ms"]
        cell = {key: f"{ms[key]:.4f}" if key in ms else "-" for key in ("fused", "reference", "compiled")}
        r1 = f"{ms['reference'] / ms['fused']:.2f}x" if {"reference", "fused"} <= set(ms) else "-"
        r2 = f"{ms['compiled'] / ms['fused']:.2f}x" if {"compiled", "fused"} <= set(ms) else "-"
        print(f"{op:<10}{str(shape):<20}{'ok' if row['ok'] else 'NO':>7}{cell['fused']:>10}{cell['reference']:>11}"
              f"{cell['compiled']:>10}{r1:>11}{r2:>11}{row.get('compile_s', float('nan')):>10.1f}", flush=True)
        for key, v in row["errors"].items():
            print(f"    {key}: error: {v}", flush=True)
        if not row["ok"]:
            print(f"    check failed: {row['checks']}", flush=True)
        elif row["checks"].get("compiled", {}).get("forward_mismatches"):
            print(f"    (the compiled reference differs from the eager one: {row['checks']['compiled']})", flush=True)


def bench_train_op(torch, ref, device, op, shape, fused_fn, ref_fn, k, t, compile_ok, args):
    gen = torch.Generator(device="cpu").manual_seed(hash(shape) % (2 ** 31))
    copies = max(1, args.rotate)
    xs = [(torch.randn(*shape, generator=gen) * (0.05 if op == "libra_pb" else 1.0)).to(device).requires_grad_()
          for _ in range(copies)]
    grads = [torch.randn(*shape, generator=gen).to(device) for _ in range(copies)]
    fns = {"fused": fused_fn, "reference": ref_fn}
    row = dict(op=op, shape=list(shape), dtype="float32", ms={}, timing={}, errors={}, checks={})
    if compile_ok:
        fns["compiled"] = torch.compile(ref_fn, dynamic=False)

    def fwd_bwd(fn, i):
        y = fn(xs[i], k, t)
        return y, torch.autograd.grad(y, xs[i], grads[i])[0]

    outs = {}
    for key, fn in fns.items():
        try:
            t0 = time.perf_counter()
            y, g = fwd_bwd(fn, 0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if key == "compiled":
                row["compile_s"] = time.perf_counter() - t0  # the first call compiles forward and backward
            outs[key] = (y.detach(), g)
        except Exception as exc:
            row["errors"][key] = f"{type(exc).__name__}: {exc}"
    # The fused op must compute the reference's function: the same forward values, except
    # that a Libra-PB sign may flip where the standardized weight v is within rounding of 0
    # (the per-channel mean is a reduction: its last bit depends on the summation order, and
    # the kernel's order is not torch's); gradients to 1e-4 of their largest magnitude.  The
    # compiled reference is a baseline: its agreement is recorded, not required.
    ok = "fused" in outs and "reference" in outs and "fused" not in row["errors"]
    if "reference" in outs:
        y_ref, g_ref = outs["reference"]
        near_zero = (ref.libra_pb_parts(xs[0].detach())[1].abs() < 1e-4 if op == "libra_pb"
                     else torch.zeros_like(y_ref, dtype=torch.bool))
        scale = float(g_ref.abs().max()) or 1.0
        for key in ("fused", "compiled"):
            if key in outs:
                y, g = outs[key]
                differ = y != y_ref
                check = dict(forward_mismatches=int(differ.sum()),
                             forward_mismatches_away_from_zero=int((differ & ~near_zero).sum()),
                             grad_max_rel_err=float((g - g_ref).abs().max()) / scale)
                row["checks"][key] = check
                if key == "fused":
                    ok = ok and check["forward_mismatches_away_from_zero"] == 0 and check["grad_max_rel_err"] <= 1e-4
    row["ok"] = ok
    methods = {key: (lambda i, fn=fn: fwd_bwd(fn, i), copies) for key, fn in fns.items() if key in outs}
    ms, how = timed_methods(torch, methods, args, device)
    row["ms"], row["timing"] = ms, how
    return row


# --------------------------------------------------------------------------- training step
def run_train_step(device, args, results, deadline, plumbing):
    import bench_train_step as bts

    side = argparse.Namespace(model="resnet20_1w1a" if plumbing else "resnet18_cifar_1w1a",
                              batch=8 if plumbing else args.train_batch, steps=2 if plumbing else args.train_steps,
                              warmup=1 if plumbing else 3, threads=1 if plumbing else min(8, os.cpu_count() or 1),
                              seed=0, device=device.type)
    modes = ["fused", "reference"] + ([] if args.no_compile else ["compiled"])
    print(f"\ntrain_step: {side.model}, batch {side.batch}, {side.steps} timed steps after {side.warmup} warmup "
          f"steps (the compiled side's first step compiles); modes {modes}", flush=True)
    samples = {}
    for mode in modes:
        left = deadline.left() - args.reserve_s
        if left < 20:
            results.data["skipped"].append(f"train_step {mode}: out of time (--budget-s)")
            print(f"train_step {mode}: skipped: out of time", flush=True)
            continue
        try:
            t0 = time.perf_counter()
            res = bts.run_side(side, mode, timeout=None if left == float("inf") else left)
            res["wall_s"] = time.perf_counter() - t0
            samples[mode] = [res]
            print(f"train_step {mode:9s}: median step {sorted(res['step_s'])[len(res['step_s']) // 2] * 1e3:9.2f} ms "
                  f"(first loss {res['first_loss']:.6f}; side took {res['wall_s']:.0f} s)", flush=True)
        except subprocess.TimeoutExpired:
            results.data["skipped"].append(f"train_step {mode}: stopped at the --budget-s limit after {left:.0f} s")
            print(f"train_step {mode}: stopped at the --budget-s limit ({left:.0f} s)", flush=True)
        except (Exception, SystemExit) as exc:
            _error(results, f"train_step {mode}", exc)
    if not samples:
        return
    summary, speedup = bts.summarize(samples, side.batch)
    bts.print_table(summary, speedup, "CUDA-event" if device.type == "cuda" else "wall-clock")
    losses = {m: s[0]["first_loss"] for m, s in samples.items()}
    results.data["train_step"] = dict(model=side.model, batch=side.batch, steps=side.steps, warmup=side.warmup,
                                      modes=list(samples), median_s=summary, speedup_of_fused=speedup,
                                      first_loss=losses, kernels={m: s[0]["kernels"] for m, s in samples.items()},
                                      wall_s={m: s[0]["wall_s"] for m, s in samples.items()},
                                      samples_step_s={m: s[0]["step_s"] for m, s in samples.items()})
    results.write()


# --------------------------------------------------------------------------- targets, PNG
def evaluate_targets(results, plumbing):
    data = results.data
    targets = []
    algos = data["meta"].get("conv_algorithms", [])
    big = [r for r in data["conv"] if r["batch"] == 256 and r["channels"] in (256, 512)]
    if "mma" not in algos:
        targets.append(dict(name=CONV_TARGET_NAME,
                            measured=None, status="NOT MEASURED",
                            why="no 'mma' CUDA conv algorithm in this build (irnet.ops.cuda_conv_algorithms(): "
                                f"{algos})"))
    else:
        ratios = {f"{r['channels']}@{r['hw']}": r["ms"]["cudnn_fp16"] / r["ms"]["irnet_mma"]
                  for r in big if "irnet_mma" in r["ms"] and "cudnn_fp16" in r["ms"]}
        status = ("NOT MEASURED" if len(ratios) < 2 else
                  "PASS" if all(v >= CONV_TARGET for v in ratios.values()) else "FAIL")
        targets.append(dict(name=CONV_TARGET_NAME,
                            measured=ratios, status=status,
                            why="" if len(ratios) == 2 else "a layer was not timed (not exact, error or out of time)"))
    timed = [r["ms"] for r in data["train_ops"] if {"fused", "compiled"} <= set(r["ms"])]
    n_ops = len(timed)
    totals = {}
    for ms in timed:
        for key in ("fused", "compiled"):
            totals[key] = totals.get(key, 0.0) + ms[key]
    if n_ops < 8:
        targets.append(dict(name=TRAIN_OPS_TARGET_NAME,
                            measured=totals and totals["compiled"] / totals["fused"], status="NOT MEASURED",
                            why=f"{n_ops} of 8 op/shape rows have both fused and compiled times"))
    else:
        ratio = totals["compiled"] / totals["fused"]
        targets.append(dict(name=TRAIN_OPS_TARGET_NAME,
                            measured=ratio, status="PASS" if ratio >= TRAIN_OPS_TARGET else "FAIL", why=""))
    if plumbing:
        for tg in targets:
            tg["status"] = "n/a (CPU plumbing run)"
    data["targets"] = targets
    results.write()
    return targets


def write_png(data, path, plumbing):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_cuda_conv: matplotlib is not installed; no PNG written")
        return False
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    conv = data["conv"]
    ax = axes[0]
    if conv:
        labels = [f"{r['channels']}@{r['hw']} b{r['batch']}" for r in conv]
        keys = sorted({k for r in conv for k in r["ms"] if k.startswith("irnet_") or k == "int8_gemm"})
        width = 0.8 / max(1, len(keys))
        for i, key in enumerate(keys):
            vals = [r["ms"]["cudnn_fp16"] / r["ms"][key] if key in r["ms"] and "cudnn_fp16" in r["ms"] else 0
                    for r in conv]
            ax.bar([j + i * width for j in range(len(conv))], vals, width, label=key)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(CONV_TARGET, color="red", linewidth=0.8, linestyle="--", label=f"target {CONV_TARGET}x (mma, b256)")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(conv))])
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("cuDNN fp16 time / method's time")
        ax.legend(fontsize=7)
    ax.set_title("ResNet-18 3x3 conv vs cuDNN fp16 (channels_last)", fontsize=9)
    ax = axes[1]
    ops_rows = data["train_ops"]
    if ops_rows:
        labels = [f"{r['op']} {tuple(r['shape'])}" for r in ops_rows]
        keys = ["fused", "reference", "compiled"]
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            ax.bar([j + i * width for j in range(len(ops_rows))], [r["ms"].get(key, 0) for r in ops_rows], width,
                   label=key)
        ax.set_yscale("log")
        ax.set_xticks([j + width for j in range(len(ops_rows))])
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("ms, forward + backward")
        ax.legend(fontsize=7)
    ax.set_title("training ops: fused vs reference vs torch.compile", fontsize=9)
    ax = axes[2]
    step = data.get("train_step")
    if step:
        modes = list(step["median_s"])
        ax.bar(modes, [step["median_s"][m]["step_s"] * 1e3 for m in modes])
        ax.set_ylabel("ms per training step")
        ax.set_title(f"{step['model']} batch {step['batch']}: one step", fontsize=9)
    meta = data["meta"]
    title = f"irnet on {meta.get('device')} (torch {meta.get('torch')}, CUDA {meta.get('cuda')})"
    if plumbing:
        title = BANNER_PLUMBING + "\n" + title
    fig.suptitle(title, fontsize=10, color="red" if plumbing else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main
def _meta(torch, device, args, plumbing):
    meta = dict(plumbing_cpu=plumbing, torch=torch.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), platform=platform.platform(),
                calls=args.calls, repeats=args.repeats, rotate=args.rotate, graphs=not args.no_graphs,
                timestamp_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        meta["irnet_commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        meta["irnet_commit"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                    multiprocessors=props.multi_processor_count, memory_gib=props.total_memory / 2**30,
                    l2_bytes=getattr(props, "L2_cache_size", None), cudnn=torch.backends.cudnn.version(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
        try:
            meta["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            meta["driver"] = None
    else:
        import machine

        meta.update(device=f"CPU: {machine.cpu_name()} (plumbing run, not a GPU)")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", choices=("conv", "train_ops", "train_step"),
                   default=["conv", "train_ops", "train_step"])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="conv section batch sizes")
    p.add_argument("--calls", type=int, default=12, help="calls per timed sample (cycling over --rotate copies)")
    p.add_argument("--repeats", type=int, default=7, help="timed samples per method (median)")
    p.add_argument("--rotate", type=int, default=3, help="input copies cycled through (against L2 reuse)")
    p.add_argument("--no-graphs", action="store_true", help="time eagerly, no CUDA graph capture")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new measurements after this many seconds (what is left is listed as skipped)")
    p.add_argument("--reserve-s", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--plumbing-cpu", action="store_true",
                   help="no GPU: run every section on tiny shapes on the CPU to check this script (NOT GPU figures)")
    p.add_argument("--json", default=None, help="default: benchmarks/results/cuda_conv.json "
                                                "(plumbing: benchmarks/out/cuda_conv_plumbing.json)")
    p.add_argument("--png", default=None, help="default: beside the JSON, .png; '' for none")
    args = p.parse_args(argv)
    plumbing = args.plumbing_cpu
    if args.json is None:
        args.json = (os.path.join(HERE, "out", "cuda_conv_plumbing.json") if plumbing
                     else os.path.join(HERE, "results", "cuda_conv.json"))
    if args.png is None:
        args.png = os.path.splitext(args.json)[0] + ".png"
    deadline = Deadline(args.budget_s)

    import torch
    import torch.nn.functional as F

    if not plumbing and not torch.cuda.is_available():
        print("bench_cuda_conv: no CUDA device available (torch.cuda.is_available() is False); this benchmark only "
              "runs on a GPU (--plumbing-cpu checks the script on the CPU). Nothing was measured.")
        return 2
    sys.path.insert(0, ROOT)
    import irnet
    from irnet import ops
    from irnet import reference as ref

    device = torch.device("cpu" if plumbing else "cuda")
    needed = ("pack_bits", "xnor_conv2d", "libra_pb_pack", "libra_pb", "libra_pb_backward", "sign_ede",
              "sign_ede_backward")
    missing = [op for op in needed if not ops.has_compiled_kernel(op, device.type)]
    if missing and not plumbing:
        print(f"bench_cuda_conv: irnet has no compiled CUDA kernel for {missing} (irnet._C: "
              f"{irnet._ext.ERROR or 'loaded, built without CUDA'}); rebuild with IRNET_CUDA=1. Nothing was measured.")
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if plumbing:
        print(BANNER_PLUMBING)
        args.batches = [2]
        torch.set_num_threads(1)  # tiny shapes: threads only add noise (and Inductor's CPU code oversubscribes)
    meta = _meta(torch, device, args, plumbing)
    meta["irnet_kernels"] = {op: ("compiled" if ops.has_compiled_kernel(op, device.type) else "reference")
                             for op in needed + ("xnor_conv2d_fused",)}
    results = Results(args.json, meta)
    print(f"bench_cuda_conv on {meta['device']} (torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN "
          f"{meta.get('cudnn')}, driver {meta.get('driver')}); TF32 for fp32 convs: {meta.get('cudnn_allow_tf32')}; "
          f"{args.calls} calls x {args.repeats} samples, {args.rotate} input copies, "
          f"{'CUDA graphs where capturable' if not args.no_graphs and not plumbing else 'eager'}", flush=True)

    if "conv" in args.sections:
        run_conv(torch, F, ops, ref, device, args, results, deadline, plumbing)
    if "train_ops" in args.sections:
        run_train_ops(torch, ops, ref, device, args, results, deadline, plumbing)
    if "train_step" in args.sections:
        run_train_step(device, args, results, deadline, plumbing)

    targets = evaluate_targets(results, plumbing)
    data = results.data
    bad_exact = [f"{r['channels']}@{r['hw']} b{r['batch']} {k}" for r in data["conv"] for k, v in r["exact"].items()
                 if not v]
    bad_ops = [f"{r['op']} {tuple(r['shape'])}" for r in data["train_ops"] if not r["ok"]]
    # an irnet path that raised is a problem; a baseline that raised only leaves its ratio out
    irnet_errors = [f"{r['channels']}@{r['hw']} b{r['batch']} {k}" for r in data["conv"] for k in r["errors"]
                    if k.startswith(("irnet", "pack"))]
    data["summary"] = dict(conv_not_exact=bad_exact, conv_irnet_errors=irnet_errors, train_ops_failed_checks=bad_ops,
                           errors=len(data["errors"]), skipped=len(data["skipped"]))
    results.write()
    print(f"\nwrote {args.json}")
    if args.png and write_png(data, args.png, plumbing):
        print(f"wrote {args.png}")
    if plumbing:
        print(BANNER_PLUMBING)
    for line in data["skipped"]:
        print(f"skipped: {line}")
    for tg in targets:
        measured = tg["measured"]
        if isinstance(measured, dict):
            measured = ", ".join(f"{k} {v:.2f}x" for k, v in measured.items()) or "-"
        elif isinstance(measured, float):
            measured = f"{measured:.2f}x"
        elif measured is None:
            measured = "-"
        print(f"TARGET {tg['status']}: {tg['name']}: measured {measured}" + (f" ({tg['why']})" if tg["why"] else ""))
    problems = bad_exact + irnet_errors + bad_ops + data["errors"]
    print(f"bench_cuda_conv: {'OK' if not problems else 'PROBLEMS'}: {len(bad_exact)} conv paths not bit-exact, "
          f"{len(irnet_errors)} raising; {len(bad_ops)} training-op rows failing; {len(data['errors'])} errors; "
          f"{len(data['skipped'])} skipped" + (" (CPU plumbing run)" if plumbing else ""))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
