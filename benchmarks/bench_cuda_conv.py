"""irnet's CUDA XNOR-popcount conv against cuDNN, layer by layer.

NOTE: written on a machine without a GPU.  This script has NEVER RUN; its first run on a
GPU is also its first test.  It exits with a clear message when no CUDA device (or no
compiled irnet CUDA kernel) is available; it never times the reference fallback.

Layers (3x3, stride 1, padding 1, no bias), as in the CPU benchmark:
  ImageNet ResNet-18: 64@56, 128@28, 256@14, 512@7 at batch 1 / 16 / 64;
  CIFAR ResNet-20: 16@32, 32@16, 64@8 and VGG-Small: 128@32, 128->256@16, 256@16,
  256->512@8, 512@8 at batch 1 / 128.
Timed, per layer, with CUDA events (median over --repeats runs of --iters calls each,
after --warmup calls):
  * irnet_float   irnet.ops.xnor_conv2d(x float32, prepacked weight): pack_bits(x) +
                  xnor_conv2d, float32 NCHW in and out (what a deployed layer runs);
  * irnet_packed  torch.ops.irnet.xnor_conv2d on an already packed input;
  * cudnn_fp32    F.conv2d float32 NCHW (torch's default: TF32 allowed for convs, recorded);
  * cudnn_fp16    F.conv2d float16 NCHW;
  * cudnn_fp16_cl F.conv2d float16 channels-last (cuDNN's fastest layout for tensor cores).
Ratios are baseline time / irnet time (> 1: irnet faster), from the same run.  Each
layer's irnet result is checked bit for bit against F.conv2d(sign(x), sign(w)) * scale in
float64 before it is timed.

    python benchmarks/bench_cuda_conv.py
    python benchmarks/bench_cuda_conv.py --iters 50 --repeats 7 --json out.json --png out.png
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

IMAGENET = [("resnet18", 64, 64, 56), ("resnet18", 128, 128, 28), ("resnet18", 256, 256, 14),
            ("resnet18", 512, 512, 7)]
CIFAR = [("resnet20", 16, 16, 32), ("resnet20", 32, 32, 16), ("resnet20", 64, 64, 8),
         ("vgg_small", 128, 128, 32), ("vgg_small", 128, 256, 16), ("vgg_small", 256, 256, 16),
         ("vgg_small", 256, 512, 8), ("vgg_small", 512, 512, 8)]


def layer_list(imagenet_batches, cifar_batches):
    out = []
    for model, cin, cout, hw in IMAGENET:
        for b in imagenet_batches:
            out.append(dict(model=model, cin=cin, cout=cout, hw=hw, batch=b))
    for model, cin, cout, hw in CIFAR:
        for b in cifar_batches:
            out.append(dict(model=model, cin=cin, cout=cout, hw=hw, batch=b))
    return out


def time_cuda(fn, warmup, iters, repeats):
    """Median milliseconds per call of fn(), CUDA events around `iters` back-to-back calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / iters)
    return statistics.median(per_call)


def bench_layer(spec, args):
    import torch
    import torch.nn.functional as F

    from irnet import ops
    from irnet import reference as ref

    dev = "cuda"
    n, cin, cout, hw = spec["batch"], spec["cin"], spec["cout"], spec["hw"]
    stride, padding, dilation = (1, 1), (1, 1), (1, 1)
    x = torch.randn(n, cin, hw, hw, device=dev)
    w = torch.randn(cout, cin, 3, 3, device=dev)
    pw = ops.libra_pb_pack(w)  # packed sign(v) + power-of-two scale, once
    xbits = ops.pack_bits(x)

    # exactness check first: F.conv2d in float64 on +-1 values, times the scale
    y = ops.xnor_conv2d(x, pw, stride, padding, dilation)
    wsign = ref.unpack_bits(pw.bits, cin, torch.float64)
    expect = F.conv2d(ref.sign(x.double()), wsign, None, stride, padding, dilation).float() \
        * pw.scale.reshape(1, -1, 1, 1)
    exact = bool(torch.equal(y, expect))
    del expect, wsign

    ms = {}
    ms["irnet_float"] = time_cuda(lambda: ops.xnor_conv2d(x, pw, stride, padding, dilation), args.warmup,
                                  args.iters, args.repeats)
    ms["irnet_packed"] = time_cuda(
        lambda: torch.ops.irnet.xnor_conv2d(xbits, pw.bits, pw.scale, cin, list(stride), list(padding),
                                            list(dilation)), args.warmup, args.iters, args.repeats)
    ms["pack_bits"] = time_cuda(lambda: ops.pack_bits(x), args.warmup, args.iters, args.repeats)
    ms["cudnn_fp32"] = time_cuda(lambda: F.conv2d(x, w, None, stride, padding), args.warmup, args.iters,
                                 args.repeats)
    xh, wh = x.half(), w.half()
    ms["cudnn_fp16"] = time_cuda(lambda: F.conv2d(xh, wh, None, stride, padding), args.warmup, args.iters,
                                 args.repeats)
    xcl = xh.to(memory_format=torch.channels_last)
    wcl = wh.to(memory_format=torch.channels_last)
    ms["cudnn_fp16_cl"] = time_cuda(lambda: F.conv2d(xcl, wcl, None, stride, padding), args.warmup, args.iters,
                                    args.repeats)
    # xor-popcount work of the packed conv: N*Ho*Wo*O*9 taps * ceil(C/64) 64-bit words
    words = (cin + 63) // 64
    word_ops = n * hw * hw * cout * 9 * words
    row = dict(spec)
    row.update(exact=exact, ms=ms,
               ratio_vs_fp32=ms["cudnn_fp32"] / ms["irnet_float"],
               ratio_vs_fp16=ms["cudnn_fp16"] / ms["irnet_float"],
               ratio_vs_fp16_cl=ms["cudnn_fp16_cl"] / ms["irnet_float"],
               packed_ratio_vs_fp16_cl=ms["cudnn_fp16_cl"] / ms["irnet_packed"],
               gword_ops_per_s_packed=word_ops / (ms["irnet_packed"] * 1e-3) / 1e9)
    return row


def write_png(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_cuda_conv: matplotlib is not installed; no PNG written")
        return False
    labels = [f"{r['model']} {r['cin']}->{r['cout']}@{r['hw']} b{r['batch']}" for r in rows]
    keys = [("ratio_vs_fp32", "vs cuDNN fp32"), ("ratio_vs_fp16", "vs cuDNN fp16"),
            ("ratio_vs_fp16_cl", "vs cuDNN fp16 channels-last")]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 5))
    width = 0.8 / len(keys)
    for i, (key, name) in enumerate(keys):
        ax.bar([j + i * width for j in range(len(rows))], [r[key] for r in rows], width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up of irnet xnor_conv2d (float in/out)")
    ax.set_xticks([j + width for j in range(len(rows))])
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    ax.legend()
    ax.set_title(rows[0].get("device", "") if rows else "")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--imagenet-batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--cifar-batches", type=int, nargs="+", default=[1, 128])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="calls per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "cuda_conv.json"))
    p.add_argument("--png", default=os.path.join(HERE, "results", "cuda_conv.png"))
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda_conv: no CUDA device available (torch.cuda.is_available() is False); "
                         "this benchmark only runs on a GPU. Nothing was measured.")
    sys.path.insert(0, ROOT)
    import irnet
    from irnet import ops

    missing = [op for op in ("pack_bits", "xnor_conv2d", "libra_pb_pack") if not ops.has_compiled_kernel(op, "cuda")]
    if missing:
        raise SystemExit(f"bench_cuda_conv: irnet has no compiled CUDA kernel for {missing} (irnet._C: "
                         f"{irnet._ext.ERROR or 'loaded, built without CUDA'}); rebuild with IRNET_CUDA=1. "
                         "Nothing was measured.")

    device = torch.cuda.get_device_name(0)
    meta = dict(device=device, capability=list(torch.cuda.get_device_capability(0)), torch=torch.__version__,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark,
                python=platform.python_version(), warmup=args.warmup, iters=args.iters, repeats=args.repeats)
    print(f"bench_cuda_conv on {device} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {meta['cudnn']}, TF32 for fp32 convs: {meta['cudnn_allow_tf32']})")
    header = (f"{'layer':<28}{'exact':>6}{'irnet':>9}{'packed':>9}{'pack':>8}{'fp32':>9}{'fp16':>9}{'fp16cl':>9}"
              f"{'x fp32':>8}{'x fp16':>8}{'x f16cl':>8}")
    print(header + "\n" + "-" * len(header))
    rows = []
    for spec in layer_list(args.imagenet_batches, args.cifar_batches):
        row = bench_layer(spec, args)
        row["device"] = device
        rows.append(row)
        ms = row["ms"]
        name = f"{row['model']} {row['cin']}->{row['cout']}@{row['hw']} b{row['batch']}"
        print(f"{name:<28}{'yes' if row['exact'] else 'NO':>6}{ms['irnet_float']:>9.4f}{ms['irnet_packed']:>9.4f}"
              f"{ms['pack_bits']:>8.4f}{ms['cudnn_fp32']:>9.4f}{ms['cudnn_fp16']:>9.4f}{ms['cudnn_fp16_cl']:>9.4f}"
              f"{row['ratio_vs_fp32']:>8.2f}{row['ratio_vs_fp16']:>8.2f}{row['ratio_vs_fp16_cl']:>8.2f}")
    print("(times in ms per call; 'x ...' = baseline time / irnet float-path time, > 1 means irnet is faster)")
    if not all(r["exact"] for r in rows):
        print("bench_cuda_conv: WARNING: some irnet results were NOT bit-exact (column 'exact')")

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    print(f"wrote {args.json}")
    if args.png:
        os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
        if write_png(rows, args.png):
            print(f"wrote {args.png}")
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
