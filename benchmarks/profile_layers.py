"""Where a packed network's time goes: a per-kind and per-layer profile of one forward.

    python benchmarks/profile_layers.py resnet20_1w1a --batch 1 [--layout both] [--unfused] [--json out.json]

The model runs inside ``irnet.deploy.layer_by_layer()`` (packed models then run module by
module, as hooks need; a whole-network execution plan honours it), three ways, each
repeated and reduced to medians (robust to the odd forward another process interrupts):

1. plain: the forward's wall time, ``total_s`` (and ``default_s``, outside
   ``layer_by_layer()``: the model's default way to run);
2. under torch.profiler: each *top-level* op of a forward (the outermost op the Python
   code called: ``aten::conv2d``, not the ``aten::mkldnn_convolution`` inside it) is
   charged to a kind by its name (``irnet::*`` = binary conv or linear, ``aten::conv2d`` =
   float conv, ``aten::batch_norm``, pooling, the fc's ``aten::linear``, clamps, residual
   ``aten::add``, the option-A shortcut's slice and pad), except the time of the copies
   anywhere inside it (``aten::copy_``, ``aten::clone``, ``aten::_to_copy``: layout
   changes, dtype casts, ``.contiguous()``), which goes to "copies / layout changes"
   (copies made inside irnet's C++ kernels are invisible to the profiler and stay with the
   binary convs).  "Python / dispatch overhead" = ``total_s`` minus the sum of the
   top-level ops: module calls, Python between ops, the dispatcher's work outside the ops.
   The profiler makes every op a little slower (each nested op it records costs about a
   microsecond), so the ops' sum is a little high and the overhead an underestimate; it
   can come out negative when the ops are many and small, or the machine is noisy;
3. with a perf_counter forward pre-hook / hook pair on every leaf module (no profiler):
   each leaf module's time, for the table of the slowest layers; the sum over the leaves
   against ``total_s`` shows the time spent outside them (containers' Python, residual adds
   in a block's forward).

4. the model's default way to run, when that is a whole-network plan
   (``irnet.deploy.convert(model, fuse=True)`` on the CPU): under torch.profiler, the time of
   each plan step (the C++ plan marks them ``irnet.plan.<step>``) per kind, the plan's own
   cost between its steps, and the Python and dispatch cost outside ``irnet::plan_run``.

Only the calling thread's ops are recorded; time in OpenMP worker threads is inside the op
that started them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from irnet import deploy, models  # noqa: E402

ITERATION = "profile_layers::forward"
COPY_OPS = frozenset({"aten::copy_", "aten::clone", "aten::_to_copy"})
COPIES = "copies / layout changes"
OVERHEAD = "Python / dispatch overhead"
OTHER = "other ops"

# kind of a top-level op from its name: (kind, exact names, name prefixes)
OP_KINDS = (
    ("binary conv / linear (irnet ops)", (), ("irnet::",)),
    ("float conv (stem, downsample)", ("aten::conv2d", "aten::convolution", "aten::_convolution",
                                       "aten::mkldnn_convolution", "aten::_slow_conv2d_forward"), ()),
    ("batchnorm", ("aten::batch_norm", "aten::native_batch_norm", "aten::_native_batch_norm_legit_no_training"), ()),
    ("pooling", (), ("aten::max_pool", "aten::avg_pool", "aten::adaptive_avg_pool", "aten::adaptive_max_pool",
                     "aten::mean")),
    ("fc", ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul"), ()),
    ("activation (clamp)", ("aten::hardtanh", "aten::hardtanh_", "aten::relu", "aten::relu_", "aten::clamp",
                            "aten::clamp_"), ()),
    ("residual adds", ("aten::add", "aten::add_"), ()),
    ("shortcut (option A: subsample + zero pad)", ("aten::slice", "aten::constant_pad_nd", "aten::pad"), ()),
)


def op_kind(op_name: str) -> str:
    for kind, names, prefixes in OP_KINDS:
        if op_name in names or op_name.startswith(prefixes):
            return kind
    return OTHER


def input_size(name: str) -> int:
    """The input side of a zoo network: 32 for CIFAR, 224 for ImageNet."""
    return 224 if models.spec(name).dataset == "imagenet" else 32


def calibrated_model(name: str, seed: int = 0) -> nn.Module:
    """A zoo network in eval mode with non-trivial BatchNorm statistics (one train-mode
    pass over random inputs), so the packed model's BatchNorms are not identities."""
    torch.manual_seed(seed)
    model = models.create(name)
    size = input_size(name)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size))
    return model.eval()


@contextlib.contextmanager
def leaf_module_timers(model: nn.Module, samples: dict):
    """Times every leaf module's forward (from its forward pre-hook to its forward hook,
    perf_counter; a hook costs about a microsecond): appends seconds to samples[name]."""
    starts, handles = {}, []

    def start(name):
        def hook(module, args):
            starts[name] = time.perf_counter()
        return hook

    def stop(name):
        def hook(module, args, output):
            samples.setdefault(name, []).append(time.perf_counter() - starts.pop(name))
        return hook

    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            handles.append(module.register_forward_pre_hook(start(name)))
            handles.append(module.register_forward_hook(stop(name)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# plan steps (csrc/cpu/net_plan.cpp's step names) by kind
PLAN_STEP_KINDS = {
    "irnet.plan.binary_conv2d": "binary conv (fused epilogue)",
    "irnet.plan.binary_conv2d_pool": "binary conv + max pool + BatchNorm + clamp",
    "irnet.plan.conv2d": "float conv (stem, downsample; BatchNorm folded)",
    "irnet.plan.batch_norm": "batchnorm",
    "irnet.plan.max_pool2d": "pooling",
    "irnet.plan.global_avg_pool": "pooling",
    "irnet.plan.linear": "fc",
    "irnet.plan.clamp": "activation (clamp)",
    "irnet.plan.add": "residual adds",
    "irnet.plan.option_a_shortcut": "shortcut (option A: subsample + zero pad)",
    "irnet.plan.flatten": "other ops",
}
PLAN_OWN = "plan: between its steps"
PLAN_CALL = "Python / dispatch outside the plan"


def plan_profile(model: nn.Module, x: torch.Tensor, iters: int, default_s: float) -> dict | None:
    """Seconds per forward of each plan step kind, the plan's own cost and the cost outside
    it, for a model that runs as a whole-network plan (None for one that does not)."""
    if getattr(model, "plan_status", lambda: None)() != "plan":
        return None
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            model(x)
    runs, steps = {}, {}
    for event in prof.events():
        if event.name == "irnet::plan_run":
            runs[event.id] = event.time_range.elapsed_us() * 1e-6
        elif event.name in PLAN_STEP_KINDS and event.cpu_parent is not None and event.cpu_parent.name == "irnet::plan_run":
            acc = steps.setdefault(event.cpu_parent.id, {})
            kind = PLAN_STEP_KINDS[event.name]
            acc[kind] = acc.get(kind, 0.0) + event.time_range.elapsed_us() * 1e-6
    if not runs:
        return None
    kinds = _medians(list(steps.values()))
    run_s = statistics.median(runs.values())  # (a little longer than unprofiled: ~1 us per step)
    kinds[PLAN_OWN] = run_s - sum(kinds.values())
    plan = model._current_plan()
    with torch.no_grad():
        direct_s = _median_time(lambda: plan.run(x), max(3, iters))  # the op alone, unprofiled
    kinds[PLAN_CALL] = default_s - direct_s
    return {"plan_run_s": run_s, "plan_run_unprofiled_s": direct_s,
            "kinds_s": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}


def _median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _copy_time_us(event) -> float:
    """Time of the outermost copy ops inside ``event`` (itself included)."""
    if event.name in COPY_OPS:
        return event.time_range.elapsed_us()
    return sum(_copy_time_us(child) for child in event.cpu_children)


def attribute(events) -> list[dict]:
    """Per profiled forward: {"wall_s", "kinds": seconds per kind, "ops": per top-level op
    name, "copies_in": copy seconds per top-level op name that made them} (see the module
    docstring)."""
    forwards = defaultdict(lambda: {"kinds": {}, "ops": {}, "copies_in": {}})
    for event in events:
        if event.name == ITERATION:
            forwards[event.id]["wall_s"] = event.time_range.elapsed_us() * 1e-6
            continue
        parent = event.cpu_parent
        if parent is None or parent.name != ITERATION:
            continue  # not a top-level op: its time is in its parent's
        acc = forwards[parent.id]
        total_s = event.time_range.elapsed_us() * 1e-6
        copy_s = _copy_time_us(event) * 1e-6
        kind = COPIES if event.name in COPY_OPS else op_kind(event.name)
        for key, sec in ((kind, total_s - copy_s), (COPIES, copy_s)):
            if sec > 0:
                acc["kinds"][key] = acc["kinds"].get(key, 0.0) + sec
        acc["ops"][event.name] = acc["ops"].get(event.name, 0.0) + total_s
        if copy_s > 0:
            acc["copies_in"][event.name] = acc["copies_in"].get(event.name, 0.0) + copy_s
    return list(forwards.values())


def _medians(dicts: list[dict]) -> dict:
    """Per key, the median over ``dicts`` (a key missing from one counts 0 there), largest first."""
    keys = {k for d in dicts for k in d}
    med = {k: statistics.median(d.get(k, 0.0) for d in dicts) for k in keys}
    return dict(sorted(med.items(), key=lambda kv: -kv[1]))


def profile_model(model: nn.Module, x: torch.Tensor, iters: int | None = None, repeats: int | None = None) -> dict:
    """The per-layer profile of ``model(x)`` (seconds per forward; see the module docstring).
    ``repeats``: plain timed forwards per median (default: ~1 s worth, 3-10); ``iters``:
    profiled and hooked forwards (default: ~0.5 s worth, 5-50)."""
    model.eval()
    modules_by_name = dict(model.named_modules())
    with torch.no_grad():
        once = _median_time(lambda: model(x), 2)  # (warms up)
        repeats = repeats or max(3, min(10, int(1.0 / max(once, 1e-6))))
        default_s = _median_time(lambda: model(x), repeats)
        with deploy.layer_by_layer():
            total_s = _median_time(lambda: model(x), repeats)
            iters = iters or max(5, min(50, int(0.5 / max(total_s, 1e-6))))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(iters):
                    with record_function(ITERATION):
                        model(x)
            module_samples = {}
            with leaf_module_timers(model, module_samples):
                for _ in range(iters):
                    model(x)
    plan = plan_profile(model, x, iters, default_s)
    forwards = attribute(prof.events())
    if len(forwards) != iters or any("wall_s" not in f for f in forwards):
        raise RuntimeError(f"profile_layers: {len(forwards)} forwards in the profile, expected {iters}")
    profiled_s = statistics.median(f["wall_s"] for f in forwards)
    kinds = _medians([f["kinds"] for f in forwards])
    ops_s = sum(kinds.values())
    kinds[OVERHEAD] = total_s - ops_s
    kinds = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
    modules = sorted(({"module": name, "type": type(modules_by_name[name]).__name__,
                       "calls": len(times) // iters, "time_s": statistics.median(times) * (len(times) // iters)}
                      for name, times in module_samples.items()), key=lambda m: -m["time_s"])
    return {
        "input": list(x.shape),
        "layout": "channels_last" if x.dim() == 4 and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last) else "nchw",
        "threads": torch.get_num_threads(),
        "iterations": iters,
        "total_s": total_s,
        "default_s": default_s,
        "profiled_s": profiled_s,
        "ops_s": ops_s,
        "kinds_s": kinds,
        "kinds_fraction": {k: v / total_s for k, v in kinds.items()},
        "ops": [{"op": name, "time_s": sec} for name, sec in _medians([f["ops"] for f in forwards]).items()],
        "copies_in": _medians([f["copies_in"] for f in forwards]),
        "leaf_modules_s": sum(m["time_s"] for m in modules),
        "modules": modules,
        "plan": plan,
    }


def format_profile(result: dict, top: int = 6) -> str:
    """A short text table: time per kind, then the slowest leaf modules (shares of the
    unprofiled layer-by-layer forward)."""
    total = result["total_s"]
    lines = [f"  forward {total * 1e3:.3f} ms layer by layer (default mode {result['default_s'] * 1e3:.3f} ms, "
             f"under the profiler {result['profiled_s'] * 1e3:.3f} ms; medians, {result['iterations']} profiled)"]
    for kind, sec in result["kinds_s"].items():
        where = ""
        if kind == COPIES and result["copies_in"]:
            where = "  in " + ", ".join(f"{op} {t * 1e3:.3f}" for op, t in list(result["copies_in"].items())[:3])
        lines.append(f"    {kind:<42s} {sec * 1e3:8.3f} ms  {sec / total:6.1%}{where}")
    if result["kinds_s"][OVERHEAD] < -0.1 * total:
        lines.append("    (the ops under the profiler took longer than the plain forward: the machine's speed changed "
                     "between the phases, so these shares are unreliable; rerun on a quiet machine)")
    if result.get("plan"):
        plan = result["plan"]
        lines.append(f"  default mode: whole-network plan, {result['default_s'] * 1e3:.3f} ms (the plan op alone "
                     f"{plan['plan_run_unprofiled_s'] * 1e3:.3f} ms, under the profiler {plan['plan_run_s'] * 1e3:.3f} "
                     f"ms; shares of the profiled op):")
        for kind, sec in plan["kinds_s"].items():
            lines.append(f"    {kind:<48s} {sec * 1e3:8.3f} ms  {sec / plan['plan_run_s']:6.1%}")
    lines.append(f"  slowest leaf modules (hook to hook; all leaves {result['leaf_modules_s'] * 1e3:.3f} ms):")
    for m in result["modules"][:top]:
        lines.append(f"    {m['module']:<30s} {m['type']:<20s} {m['time_s'] * 1e3:8.3f} ms  {m['time_s'] / total:6.1%}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a zoo network, e.g. resnet20_1w1a (irnet.models.names())")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layout", choices=["nchw", "channels_last", "both"], default="both")
    ap.add_argument("--unfused", action="store_true", help="profile deploy.convert(model) instead of fuse=True")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--iters", type=int, default=None, help="profiled forwards (default: ~0.5 s worth, 3-50)")
    ap.add_argument("--top", type=int, default=8, help="modules listed")
    ap.add_argument("--json", default=None, help="also write the profiles here")
    ap.add_argument("--malloc", choices=["default", "keep"], default="keep",
                    help="keep (default, as bench_cpu_model.py): glibc keeps freed memory, so big activations "
                         "come back without page faults; default: glibc's own settings")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.malloc == "keep":
        from machine import keep_freed_memory

        if not keep_freed_memory():
            sys.exit("--malloc keep needs glibc's mallopt")
    model = calibrated_model(args.model)
    packed = deploy.convert(model, fuse=not args.unfused)
    size = input_size(args.model)
    x = torch.randn(args.batch, 3, size, size)
    layouts = ("nchw", "channels_last") if args.layout == "both" else (args.layout,)
    out = {}
    for layout in layouts:
        if layout == "channels_last":
            net, inp = packed.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        else:
            net, inp = packed, x
        out[layout] = profile_model(net, inp, iters=args.iters)
        print(f"{args.model} batch {args.batch}, {'unfused' if args.unfused else 'fused'}, {layout}, "
              f"{args.threads} thread(s):")
        print(format_profile(out[layout], args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "fused": not args.unfused, "profiles": out}, f, indent=1)


if __name__ == "__main__":
    main()
