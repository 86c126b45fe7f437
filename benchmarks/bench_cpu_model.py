"""Whole-network CPU inference: the packed model of irnet.deploy.convert against the
float network of the same architecture, in NCHW and in channels_last.

    python benchmarks/bench_cpu_model.py [--quick] [--threads N] [--out benchmarks/results/cpu_model]

For each network and batch it times (eval mode, torch.no_grad(), same thread count):
  * float     the same architecture with real-valued weights and activations: every
              IRConv2d / IRLinear replaced by nn.Conv2d / nn.Linear holding its latent
              weight (what a user would deploy without binarization);
  * packed    irnet.deploy.convert(model): XNOR-popcount layers on bit-packed weights,
              BatchNorm / activations / the float stem and shortcuts as in the model;
  * fused     irnet.deploy.convert(model, fuse=True): each residual block's binary conv,
              BatchNorm, residual add and activation in one kernel (equal to packed to
              float rounding: tests/test_fused.py);
each once with an NCHW input and once with the model and input in channels_last (the
layout in which PyTorch's CPU pooling and oneDNN's convolutions are fastest, and in
which irnet's packing needs no transpose and its conv writes NHWC directly), and, unless
--no-compile, the channels_last models once more under torch.compile (inductor fuses
the BatchNorm / residual add / hardtanh passes around the convolutions; irnet's ops are
opaque custom ops with fake kernels, so the packed model compiles as a whole graph).
Medians over round-robin repeats after warmup (one of each variant per round, in a
fresh random order every round, so that load from other processes hits all alike and no
variant always follows the same one: benchmarks/timing.py); the
fastest repeat is reported too.  The packed and float models get the same random input;
their predictions are not compared here (the float network is a different function:
tests/test_api.py checks packed == binary model, tests/test_fused.py fused ~ packed).
Memory: --malloc keep (the default) makes glibc keep freed memory, as jemalloc and
tcmalloc do, for all models alike (see bench_cpu_conv.py); --malloc default keeps glibc's
settings, under which every large activation comes back as fresh pages.
With --compare-algorithm popcount (or lut), the packed and fused models also run (eager,
NCHW and channels_last) with that CPU conv algorithm forced, in the same rounds as the
default 'auto', and the row gets auto's speedup over it (--nets limits the networks).
Writes <out>.json and <out>.png.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import irnet  # noqa: E402
from irnet import deploy, models  # noqa: E402
from irnet.nn import IRConv2d, IRLinear  # noqa: E402
from machine import cpu_name, keep_freed_memory, loadavg  # noqa: E402
from timing import time_round_robin  # noqa: E402

# (model, input size, batches)
NETS = [("resnet18_1w1a", 224, (1, 16)), ("resnet20_1w1a", 32, (1, 128))]
QUICK_NETS = [("resnet18_1w1a", 224, (1,)), ("resnet20_1w1a", 32, (1,))]


def float_twin(model: nn.Module) -> nn.Module:
    """The model with each binary layer replaced by a float layer of the same shape and
    latent weight: the full-precision network of the same architecture."""
    twin = copy.deepcopy(model).eval()

    def replace(module: nn.Module):
        for name, child in module.named_children():
            if isinstance(child, IRConv2d):
                new = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                child.dilation, child.groups, bias=child.bias is not None)
            elif isinstance(child, IRLinear):
                new = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            else:
                replace(child)
                continue
            new.weight.data.copy_(child.weight.data)
            if child.bias is not None:
                new.bias.data.copy_(child.bias.data)
            setattr(module, name, new)

    replace(twin)
    return twin


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 1 only, fewer repeats")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--malloc", choices=["default", "keep"], default="keep",
                    help="keep (default): glibc malloc keeps freed memory (as jemalloc/tcmalloc do), so "
                         "big outputs come back without page faults, for every method alike; default: "
                         "glibc's own settings (see machine.keep_freed_memory)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "cpu_model"), help="output path prefix")
    ap.add_argument("--nets", nargs="+", default=None, help="only these networks (names as in NETS)")
    ap.add_argument("--compare-algorithm", choices=["popcount", "lut"], default=None,
                    help="also time the packed and fused models (eager) with this CPU conv algorithm forced, "
                         "against the default 'auto' in the same rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.malloc == "keep" and not keep_freed_memory():
        sys.exit("--malloc keep needs glibc's mallopt")
    torch.manual_seed(0)
    # every model here shares ResNet.forward: one code object, recompiled per model and
    # batch size (3 models x 2 batches x 2 networks); the default limit of 8 would silently
    # leave the last ones in eager mode
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    repeats = args.repeats or (3 if args.quick else 7)
    load_start = loadavg()

    rows = []
    algo = args.compare_algorithm
    for name, size, batches in (QUICK_NETS if args.quick else NETS):
        if args.nets and name not in args.nets:
            continue
        model = models.create(name).eval()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            model.train()(torch.randn(8, 3, size, size))
        model.eval()
        nets = {"float": float_twin(model), "packed": deploy.convert(model), "fused": deploy.convert(model, fuse=True)}
        nets_cl = {k: copy.deepcopy(m).to(memory_format=torch.channels_last) for k, m in nets.items()}
        nets_compiled = {} if args.no_compile else {k: torch.compile(m) for k, m in nets_cl.items()}
        for batch in batches:
            x = torch.randn(batch, 3, size, size)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            fns = {}
            for k in nets:
                fns[f"{k}/nchw"] = (lambda m=nets[k]: m(x))
                fns[f"{k}/channels_last"] = (lambda m=nets_cl[k]: m(x_cl))
                if nets_compiled:
                    fns[f"{k}/compiled"] = (lambda m=nets_compiled[k]: m(x_cl))
            # every variant runs with its conv algorithm set just before it (untimed)
            before = {key: (lambda: irnet.ops.set_cpu_conv_algorithm("auto")) for key in fns}
            if algo:
                for k in ("packed", "fused"):
                    for fmt in ("nchw", "channels_last"):
                        fns[f"{k}@{algo}/{fmt}"] = fns[f"{k}/{fmt}"]
                        before[f"{k}@{algo}/{fmt}"] = lambda: irnet.ops.set_cpu_conv_algorithm(algo)
            with torch.no_grad():
                if nets_compiled:  # compile (per batch size) before timing
                    t0 = time.perf_counter()
                    for k in nets_compiled:
                        fns[f"{k}/compiled"]()
                    print(f"  (torch.compile of the {name} models for batch {batch}: {time.perf_counter() - t0:.0f} s)",
                          flush=True)
                med, best = time_round_robin(fns, repeats, before=before)
            irnet.ops.set_cpu_conv_algorithm("auto")
            row = {"model": name, "input": [batch, 3, size, size], "time_s": med, "time_min_s": best}
            if algo:  # > 1: the default 'auto' is faster than the forced algorithm
                row["auto_speedup_over_" + algo] = {f"{k}/{fmt}": med[f"{k}@{algo}/{fmt}"] / med[f"{k}/{fmt}"]
                                                    for k in ("packed", "fused") for fmt in ("nchw", "channels_last")}
            fmts = ("nchw", "channels_last") + (("compiled",) if nets_compiled else ())
            for fmt in fmts:
                row[f"speedup_{fmt}"] = med[f"float/{fmt}"] / med[f"packed/{fmt}"]
                row[f"speedup_fused_{fmt}"] = med[f"float/{fmt}"] / med[f"fused/{fmt}"]
            # the packed (fused) model in its faster layout against the float model in its faster one
            row["speedup_best_vs_best"] = min(med[f"float/{f}"] for f in fmts) / min(med[f"packed/{f}"] for f in fmts)
            row["speedup_fused_best_vs_best"] = (min(med[f"float/{f}"] for f in fmts) /
                                                 min(med[f"fused/{f}"] for f in fmts))
            rows.append(row)
            print(f"{name} b{batch}: " + "   ".join(
                f"{fmt}: float {med[f'float/{fmt}']*1e3:.1f} ms, packed {med[f'packed/{fmt}']*1e3:.1f} ms "
                f"({row[f'speedup_{fmt}']:.2f}x), fused {med[f'fused/{fmt}']*1e3:.1f} ms ({row[f'speedup_fused_{fmt}']:.2f}x)"
                for fmt in fmts) + f"   | fastest vs fastest {row['speedup_best_vs_best']:.2f}x, "
                f"fused {row['speedup_fused_best_vs_best']:.2f}x", flush=True)
            if algo:
                print(f"  auto over {algo} forced: " + ", ".join(
                    f"{key} {v:.2f}x" for key, v in row["auto_speedup_over_" + algo].items()), flush=True)

    result = {
        "benchmark": "cpu_model",
        "machine": {"cpu": cpu_name(), "platform": platform.platform(), "torch": torch.__version__,
                    "irnet_simd": irnet.ops.cpu_simd_level(), "threads": args.threads, "malloc": args.malloc,
                    "conv_algorithm": "auto", "compared_with": algo},
        "repeats": repeats,
        "load_average": {"start": load_start, "end": loadavg()},
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {args.out}.json (matplotlib missing: no chart)")
        return
    labels = [f"{r['model'].split('_')[0]}\nbatch {r['input'][0]}" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(2.6 * len(rows) + 2, 4.5))
    variants = [("nchw", "NCHW"), ("channels_last", "channels_last"), ("compiled", "channels_last + torch.compile")]
    variants = [v for v in variants if f"speedup_{v[0]}" in rows[0]]
    variants = [(k, f"packed, {lab}") for k, lab in variants] + [(f"fused_{k}", f"fused, {lab}") for k, lab in variants]
    w = 0.8 / len(variants)
    for j, (key, label) in enumerate(variants):
        ax.bar([i + (j - (len(variants) - 1) / 2) * w for i in xs], [r[f"speedup_{key}"] for r in rows], w, label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("packed speedup over the float network")
    ax.set_title(f"whole-network CPU inference, {args.threads} thread(s), {cpu_name()}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
