"""Whole-network CPU inference: the packed binary network as a user gets it, against the
best float32 PyTorch run and OpenVINO on the same architecture, with a per-layer profile.

Reproduce the results in benchmarks/results/ (the README's figures; ~15 min on 2 cores):

    pip install -r benchmarks/requirements.txt     # OpenVINO, for this benchmark only
    python benchmarks/bench_cpu_model.py           # -> benchmarks/results/cpu_model.json, cpu_model.png

    python benchmarks/bench_cpu_model.py --quick   # smoke test: batch 1, few repeats -> cpu_model_quick.*
    python benchmarks/bench_cpu_model.py --nets resnet20_1w1a --batches 1 128 --out /tmp/r20
    python benchmarks/profile_layers.py resnet20_1w1a --batch 1     # the per-layer profile alone

Networks (random weights; BatchNorm statistics from one train-mode pass over random
inputs): ResNet-18 and ResNet-34 1w1a at 224x224, batch 1 and 16; VGG-Small 1w1a and
ResNet-20 1w1a at 32x32, batch 1 and 128.  For each network and batch, timed in the same
rounds (eval mode, torch.no_grad(), the same thread count everywhere):

  float/nchw, float/channels_last, float/compiled
              the same architecture as a plain float32 model (float_twin: every binary
              conv an nn.Conv2d, every binary linear an nn.Linear, holding the latent
              weights) in NCHW, in channels_last, and torch.compile'd (inductor, static
              shapes) in channels_last; "best float32 PyTorch" = the fastest of the three;
  openvino    that float model converted by openvino.convert_model and compiled for "CPU"
              with OpenVINO's default settings except INFERENCE_NUM_THREADS = the threads
              used here (the precision it then runs in, INFERENCE_PRECISION_HINT, is
              recorded: bf16 by default on CPUs with AMX/AVX512-BF16); with --openvino-f32
              also "openvino_f32" (precision hint f32).  Skipped, with a note, where
              openvino is not importable;
  fused/nchw, fused/channels_last
              the packed model a user gets by default, irnet.deploy.convert(model,
              fuse=True), with an NCHW input, and with the model and input in
              channels_last; "packed" = the faster of the two;
  unfused/nchw, unfused/channels_last
              irnet.deploy.convert(model), for reference;
  fused/compiled (--compile-packed)
              torch.compile of the fused channels_last model.

Ratios (from medians): packed over best float32 PyTorch, packed over OpenVINO, printed
beside issue #16's targets (met / not met).  Before timing, every packed variant's logits
are compared with the binary model's (the IR-Net model in eval mode) on the row's input
(topped up to 8 samples at batch < 8): argmax agreement is reported, and the run stops if
a sample's logits differ by more than 1e-3 of their norm (a broken model; float rounding in
the fused BatchNorm gives ~1e-7), so no broken model is ever timed.  The fused models are
allowed such a sample in 50 (at least one): their folded BatchNorm rounds differently, and
where a pre-activation sits within that rounding of zero its sign, a binary activation,
flips, and the logits of that one sample move by more than rounding (seen: 1 of 128
VGG-Small samples; tests/test_fused.py checks that such flips are the only differences).
The unfused models must match on every sample (they give the binary model's logits bit for
bit).  OpenVINO's
agreement with the float model is reported, not enforced (it may run in bf16).

Timing (benchmarks/timing.py): round-robin repeats after warmup, each round in a fresh
seeded random order, so that load from other processes hits all variants alike and no
variant always follows the same one; medians and the fastest repeat are recorded.  A sample
is a burst of back-to-back calls of one variant, the first untimed (--burst; default 5 at
batch 1, 2 above): what a deployed model runs, a loop of calls, without the first call after
another variant, which pays for that one's leftovers (OpenVINO's worker threads still
spinning, other caches: 1.1-1.6x the back-to-back time of VGG-Small at batch 1 here, both
ways).  Repeats are chosen per row from one timed round (about 35 s of rounds per row, 7-40 repeats;
--quick: ~3 s, 3-10) unless --repeats is given.  Memory: --malloc keep (the default) makes
glibc keep freed memory, as jemalloc and tcmalloc do, for all variants alike (see
machine.keep_freed_memory).  Machine, versions, load average at start and end, the
command and the git commit go into the JSON.

Profile (benchmarks/profile_layers.py): the fused model in both layouts, run inside
irnet.deploy.layer_by_layer(): time per kind of op (binary convs, float convs,
BatchNorm, pooling, copies / layout changes, the fc, ...) and Python / dispatch overhead
(the forward's time minus the sum of its ops), and the slowest layers.

Writes <out>.json and <out>.png (speedups over best float32 and over OpenVINO per
network and batch, the targets as markers).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import subprocess
import sys
import time
import warnings

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import irnet  # noqa: E402
from irnet import deploy  # noqa: E402
from irnet.models import float_twin  # noqa: E402
from machine import cpu_name, keep_freed_memory, loadavg  # noqa: E402
from profile_layers import calibrated_model, format_profile, input_size, profile_model  # noqa: E402
from timing import time_round_robin  # noqa: E402

# network -> batch sizes (input size: profile_layers.input_size)
NETS = {"resnet18_1w1a": (1, 16), "resnet34_1w1a": (1, 16), "vgg_small_1w1a": (1, 128), "resnet20_1w1a": (1, 128)}

# issue #16: (network, batch) -> minimum speedup of the packed model (best layout) over
# the best float32 PyTorch run and over OpenVINO
TARGETS = {
    ("resnet18_1w1a", 1): {"best_float32": 6.0, "openvino": 5.0},
    ("vgg_small_1w1a", 1): {"best_float32": 8.0},
    ("vgg_small_1w1a", 128): {"best_float32": 8.0},
    ("resnet20_1w1a", 1): {"best_float32": 4.0, "openvino": 2.0},
    ("resnet20_1w1a", 128): {"best_float32": 4.0, "openvino": 2.0},
}

CHECK_SAMPLES = 8        # predictions compared on at least this many samples
CHECK_REL_TOL = 1e-3     # logits of a packed model within this fraction of their norm
CHECK_FUSED_FLIPS = 50   # fused models: one sample in this many may be further off (a sign flip)

_T0 = time.perf_counter()


def log(msg: str):
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", flush=True)


def compare_logits(reference: torch.Tensor, logits: torch.Tensor) -> dict:
    """Argmax agreement and the largest per-sample relative L2 difference of two (N, classes) logits."""
    rel = (logits.float() - reference.float()).norm(dim=1) / reference.float().norm(dim=1).clamp_min(1e-30)
    return {"agree": int((logits.argmax(1) == reference.argmax(1)).sum()), "of": int(reference.shape[0]),
            "max_rel_diff": float(rel.max()) if rel.numel() else 0.0,
            "beyond_tolerance": int((rel > CHECK_REL_TOL).sum())}


def allowed_beyond_tolerance(label: str, samples: int) -> int:
    """How many samples of a variant may differ by more than CHECK_REL_TOL (see the module
    docstring): none for the unfused (bit-exact) models, one in CHECK_FUSED_FLIPS for fused ones."""
    return 0 if label.startswith("unfused") else max(1, samples // CHECK_FUSED_FLIPS)


# --- OpenVINO ---------------------------------------------------------------------------

def openvino_info() -> dict:
    try:
        import openvino as ov
    except ImportError as e:
        return {"available": False, "error": f"{type(e).__name__}: {e}"}
    return {"available": True, "version": ov.get_version()}


def openvino_runner(float_model: nn.Module, x: torch.Tensor, threads: int, f32: bool = False):
    """(callable running float_model on x in OpenVINO, its settings).  Default CPU settings
    except INFERENCE_NUM_THREADS (and INFERENCE_PRECISION_HINT = f32 with f32=True)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    with warnings.catch_warnings():  # tracing warnings of the converter
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(float_model, example_input=x)
    config = {props.inference_num_threads: threads}
    if f32:
        config[hints.inference_precision] = ov.Type.f32
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    x_np = x.numpy()

    def run():
        request.infer({0: x_np}, share_inputs=True, share_outputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data)

    settings = {}
    for key in ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS",
                "ENABLE_CPU_PINNING", "EXECUTION_MODE_HINT"):
        try:
            value = compiled.get_property(key)
        except Exception as e:  # a property this version lacks
            settings[key] = f"unavailable ({type(e).__name__})"
            continue
        settings[key] = value.to_string() if isinstance(value, ov.Type) else str(value)
    return run, settings


# --- one network ---------------------------------------------------------------------

def check_packed(name: str, binary: nn.Module, variants: dict, x: torch.Tensor) -> dict:
    """Each packed variant's logits against the binary model's (see the module docstring);
    stops the run on a broken one.  variants: label -> (model, wants_channels_last, fixed_batch)."""
    extra = max(0, CHECK_SAMPLES - x.shape[0])
    x_check = torch.cat([x, torch.randn(extra, *x.shape[1:])]) if extra else x
    with torch.no_grad():
        reference = binary(x_check)
        checks = {}
        for label, (model, channels_last, fixed_batch) in variants.items():
            inp = x if fixed_batch else x_check
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            checks[label] = compare_logits(reference[: inp.shape[0]], model(inp))
    broken = {k: c for k, c in checks.items()
              if not c["beyond_tolerance"] <= allowed_beyond_tolerance(k, c["of"])
              or (c["max_rel_diff"] != c["max_rel_diff"])}  # (NaN)
    if broken:
        sys.exit(f"{name}: packed model(s) disagree with the binary model, not timing them: {broken}")
    return checks


def burst_for(batch: int, args) -> int:
    """Calls per sample (timing.time_round_robin's burst): --burst, else 5 at batch 1 (a
    sub-millisecond call is most disturbed by what ran just before it) and 2 above."""
    return args.burst if args.burst else (5 if batch == 1 else 2)


def time_row(fns: dict, args, before: dict, burst: int = 1) -> tuple[dict, dict, int]:
    """Repeats from one timed round (unless --repeats), then the round-robin timing, each
    sample a burst of back-to-back calls (the first untimed)."""
    repeats = args.repeats
    if repeats is None:
        t0 = time.perf_counter()
        for k, fn in fns.items():
            before.get(k, lambda: None)()
            fn()
        round_s = (time.perf_counter() - t0) * burst
        target, lo, hi = (3.0, 3, 10) if args.quick else (35.0, 7, 40)
        repeats = max(lo, min(hi, int(target / max(round_s, 1e-9))))
    med, best = time_round_robin(fns, repeats, warmup=1, before=before, burst=burst)
    return med, best, repeats


def bench_network(name: str, batches, args, ov_available: bool) -> list[dict]:
    size = input_size(name)
    log(f"{name}: building the binary, float, packed models")
    binary = calibrated_model(name)
    float_nchw = float_twin(binary)
    fused = deploy.convert(binary, fuse=True)
    unfused = deploy.convert(binary)
    cl = torch.channels_last
    models = {"float/nchw": float_nchw, "float/channels_last": copy.deepcopy(float_nchw).to(memory_format=cl),
              "fused/nchw": fused, "fused/channels_last": copy.deepcopy(fused).to(memory_format=cl),
              "unfused/nchw": unfused, "unfused/channels_last": copy.deepcopy(unfused).to(memory_format=cl)}
    compiled = {}
    if not args.no_compile:
        compiled["float/compiled"] = torch.compile(models["float/channels_last"], dynamic=False)
    if args.compile_packed:
        compiled["fused/compiled"] = torch.compile(models["fused/channels_last"], dynamic=False)
    rows = []
    for batch in batches:
        torch.manual_seed(batch)
        x = torch.randn(batch, 3, size, size)
        x_cl = x.contiguous(memory_format=cl)
        row = {"model": name, "batch": batch, "input": [batch, 3, size, size]}
        fns = {k: (lambda m=m, inp=(x_cl if k.endswith("channels_last") else x): m(inp)) for k, m in models.items()}
        with torch.no_grad():
            compile_s = {}
            for k, m in compiled.items():
                log(f"{name} b{batch}: torch.compile {k.split('/')[0]} (channels_last)")
                t0 = time.perf_counter()
                m(x_cl)
                compile_s[k] = time.perf_counter() - t0
                fns[k] = lambda m=m: m(x_cl)
            row["compile_s"] = compile_s

            log(f"{name} b{batch}: checking the packed models' predictions")
            variants = {k: (m, k.endswith("channels_last"), False) for k, m in models.items() if not k.startswith("float")}
            if "fused/compiled" in compiled:
                variants["fused/compiled"] = (compiled["fused/compiled"], True, True)
            row["check"] = check_packed(name, binary, variants, x)

            if ov_available and not args.no_openvino:
                row["openvino"] = {}
                for key, f32 in (("openvino", False),) + ((("openvino_f32", True),) if args.openvino_f32 else ()):
                    log(f"{name} b{batch}: OpenVINO convert + compile ({key})")
                    t0 = time.perf_counter()
                    run, settings = openvino_runner(float_nchw, x, args.threads, f32=f32)
                    fns[key] = run
                    row["openvino"][key] = {"settings": settings, "convert_compile_s": time.perf_counter() - t0,
                                            "vs_float_model": compare_logits(float_nchw(x), run())}

            before = {}
            if args.compare_algorithm:
                algo = args.compare_algorithm
                for k in ("fused/nchw", "fused/channels_last", "unfused/nchw", "unfused/channels_last"):
                    fns[f"{k}@{algo}"] = fns[k]
                    before[f"{k}@{algo}"] = lambda: irnet.ops.set_cpu_conv_algorithm(algo)
                for k in fns:
                    before.setdefault(k, lambda: irnet.ops.set_cpu_conv_algorithm("auto"))
            burst = burst_for(batch, args)
            log(f"{name} b{batch}: timing {len(fns)} variants (bursts of {burst} calls)")
            med, best, repeats = time_row(fns, args, before, burst)
            irnet.ops.set_cpu_conv_algorithm("auto")
        row.update(repeats=repeats, burst=burst, time_s=med, time_min_s=best)
        summarize(row)
        print(format_row(row), flush=True)

        if not args.no_profile:
            log(f"{name} b{batch}: per-layer profile of the fused model")
            row["profile"] = {"nchw": profile_model(models["fused/nchw"], x),
                              "channels_last": profile_model(models["fused/channels_last"], x_cl)}
            layout = row["packed"].split("/")[1]
            print(f"  profile of fused/{layout} (the faster layout):\n" + format_profile(row["profile"][layout], top=5))
            other = "nchw" if layout == "channels_last" else "channels_last"
            p = row["profile"][other]
            print(f"  fused/{other}: " + ", ".join(f"{k} {v / p['total_s']:.0%}" for k, v in
                                                   list(p["kinds_s"].items())[:5]), flush=True)
        rows.append(row)
    del models, compiled
    torch._dynamo.reset()
    gc.collect()
    return rows


def summarize(row: dict):
    """Best variants, speedups and targets of a timed row (in place)."""
    med = row["time_s"]
    floats = {k: v for k, v in med.items() if k.startswith("float/")}
    row["best_float32"] = min(floats, key=floats.get)
    row["packed"] = min(("fused/nchw", "fused/channels_last"), key=med.get)
    row["unfused_best"] = min(("unfused/nchw", "unfused/channels_last"), key=med.get)
    packed = med[row["packed"]]
    sp = {"over_best_float32": floats[row["best_float32"]] / packed,
          "unfused_over_best_float32": floats[row["best_float32"]] / med[row["unfused_best"]],
          "fused_over_unfused": med[row["unfused_best"]] / packed}
    for k in ("float/nchw", "float/channels_last", "float/compiled", "openvino", "openvino_f32"):
        if k in med:
            sp[f"over_{k}"] = med[k] / packed
    if "fused/compiled" in med:
        sp["compiled_fused_over_best_float32"] = floats[row["best_float32"]] / med["fused/compiled"]
    row["speedup"] = sp
    mins = row["time_min_s"]
    packed_min = min(mins["fused/nchw"], mins["fused/channels_last"])
    row["speedup_from_minima"] = {"over_best_float32": min(v for k, v in mins.items() if k.startswith("float/"))
                                  / packed_min}
    if "openvino" in mins:
        row["speedup_from_minima"]["over_openvino"] = mins["openvino"] / packed_min
    row["targets"] = {}
    for baseline, target in TARGETS.get((row["model"], row["batch"]), {}).items():
        value = sp.get(f"over_{baseline}")
        row["targets"][f"over_{baseline}"] = {"target": target, "speedup": value,
                                              "met": None if value is None else bool(value >= target)}


def _verdict(t: dict) -> str:
    return "not measured" if t["met"] is None else ("met" if t["met"] else "NOT MET")


def _target_text(row: dict, key: str) -> str:
    t = row["targets"].get(key)
    if t is None:
        return ""
    return f" (target {t['target']:g}x: {_verdict(t)})"


def format_row(row: dict) -> str:
    med, sp = row["time_s"], row["speedup"]
    ms = lambda k: f"{med[k] * 1e3:.2f}"  # noqa: E731
    floats = " / ".join(ms(k) for k in ("float/nchw", "float/channels_last", "float/compiled") if k in med)
    lines = [f"{row['model']} b{row['batch']} ({row['repeats']} repeats, medians in ms):",
             f"  float32 nchw / channels_last{' / compiled' if 'float/compiled' in med else ''}: {floats}"
             f"   best: {row['best_float32']}"]
    if "openvino" in med:
        prec = row.get("openvino", {}).get("openvino", {}).get("settings", {}).get("INFERENCE_PRECISION_HINT", "?")
        ov = f"  OpenVINO ({prec}): {ms('openvino')}"
        if "openvino_f32" in med:
            ov += f"   OpenVINO f32: {ms('openvino_f32')}"
        lines.append(ov)
    else:
        lines.append("  OpenVINO: not run")
    packed = (f"  packed fused nchw / channels_last: {ms('fused/nchw')} / {ms('fused/channels_last')}"
              f"   unfused: {ms('unfused/nchw')} / {ms('unfused/channels_last')}")
    if "fused/compiled" in med:
        packed += f"   fused compiled: {ms('fused/compiled')}"
    lines.append(packed)
    checks = ", ".join(f"{k} {c['agree']}/{c['of']}" for k, c in row["check"].items())
    lines.append(f"  argmax agreement with the binary model: {checks}")
    ratio = (f"  packed ({row['packed'].split('/')[1]}) over best float32 {sp['over_best_float32']:.2f}x"
             + _target_text(row, "over_best_float32"))
    if "over_openvino" in sp:
        ratio += f";  over OpenVINO {sp['over_openvino']:.2f}x" + _target_text(row, "over_openvino")
    elif "over_openvino" in row["targets"]:
        ratio += ";  over OpenVINO: not measured" + _target_text(row, "over_openvino")
    lines.append(ratio)
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    lines = ["", f"{'network':<16s}{'batch':>6s}{'best fp32':>11s}{'OpenVINO':>10s}{'packed':>10s}"
                 f"{'/fp32':>8s}{'/OV':>8s}  targets"]
    for r in rows:
        med, sp = r["time_s"], r["speedup"]
        ov = f"{med['openvino'] * 1e3:.2f}" if "openvino" in med else "-"
        over_ov = f"{sp['over_openvino']:.2f}x" if "over_openvino" in sp else "-"
        targets = "; ".join(f"{k.replace('over_', '')} {t['target']:g}x {_verdict(t)}"
                            for k, t in r["targets"].items())
        lines.append(f"{r['model']:<16s}{r['batch']:>6d}{med[r['best_float32']] * 1e3:>11.2f}{ov:>10s}"
                     f"{med[r['packed']] * 1e3:>10.2f}{sp['over_best_float32']:>7.2f}x{over_ov:>8s}  {targets}")
    lines.append("(times: medians in ms; packed = irnet.deploy.convert(model, fuse=True), faster layout)")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart")
        return False
    labels = [f"{r['model'].replace('_1w1a', '')}\nbatch {r['batch']}" for r in rows]
    precisions = sorted({r["openvino"]["openvino"]["settings"].get("INFERENCE_PRECISION_HINT", "?")
                         for r in rows if "openvino" in r.get("openvino", {})})
    series = [("over_best_float32", "over best float32 PyTorch", "tab:blue"),
              ("over_openvino", f"over OpenVINO (default settings: {'/'.join(precisions) or '-'})", "tab:orange")]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(rows) + 2.5), 4.8))
    w = 0.38
    for j, (key, label, color) in enumerate(series):
        xs = [i + (j - 0.5) * w for i in range(len(rows))]
        vals = [r["speedup"].get(key, 0.0) for r in rows]
        ax.bar(xs, vals, w, label=label, color=color)
        for xi, v in zip(xs, vals):
            if v:
                ax.text(xi, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        tx = [xi for xi, r in zip(xs, rows) if key in r["targets"]]
        ty = [r["targets"][key]["target"] for r in rows if key in r["targets"]]
        ax.scatter(tx, ty, marker="_", s=400, linewidths=2.5, color="black", zorder=3,
                   label="target (issue #16)" if j == 0 else None)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("speedup of the packed model (fused, faster layout)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: the first batch size of each network only, few repeats, output *_quick")
    ap.add_argument("--nets", nargs="+", choices=list(NETS), default=None, help="only these networks")
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="these batch sizes instead of each net's")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=None, help="fixed repeats per row (default: from a timed round)")
    ap.add_argument("--burst", type=int, default=None,
                    help="calls per sample, the first untimed (default: 5 at batch 1, 2 above; 1: every call "
                         "timed alone, right after another variant's)")
    ap.add_argument("--malloc", choices=["default", "keep"], default="keep",
                    help="keep (default): glibc malloc keeps freed memory (as jemalloc/tcmalloc do), for every "
                         "variant alike; default: glibc's own settings (see machine.keep_freed_memory)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the float model")
    ap.add_argument("--compile-packed", action="store_true", help="also time torch.compile of the fused packed model")
    ap.add_argument("--no-openvino", action="store_true", help="skip OpenVINO")
    ap.add_argument("--openvino-f32", action="store_true", help="also time OpenVINO with its precision hint f32")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-layer profile")
    ap.add_argument("--compare-algorithm", choices=["popcount", "lut"], default=None,
                    help="also time the packed models (eager) with this CPU conv algorithm forced, in the same rounds")
    ap.add_argument("--out", default=None,
                    help="output path prefix (default benchmarks/results/cpu_model, with --quick cpu_model_quick)")
    args = ap.parse_args()
    out = args.out or os.path.join("benchmarks", "results", "cpu_model_quick" if args.quick else "cpu_model")
    torch.set_num_threads(args.threads)
    if args.malloc == "keep" and not keep_freed_memory():
        sys.exit("--malloc keep needs glibc's mallopt")
    # every ResNet here shares ResNet.forward: one code object, compiled per model and batch
    # size; the default limit of 8 would silently leave the last ones in eager mode
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    load_start = loadavg()
    if load_start and load_start[0] >= 0.5:
        print(f"note: load average {load_start[0]:.2f} at start: other processes are running, timings are noisy"
              + (f" (with {args.threads} threads a parallel region waits for any descheduled thread)"
                 if args.threads > 1 else ""))
    ov = openvino_info()
    if args.no_openvino:
        ov = {"available": False, "error": "--no-openvino"}
    elif not ov["available"]:
        print(f"OpenVINO not importable ({ov['error']}): no OpenVINO column (pip install -r benchmarks/requirements.txt)")
    else:
        print(f"OpenVINO {ov['version']}")
    print(f"{cpu_name()}, torch {torch.__version__}, irnet SIMD {irnet.ops.cpu_simd_level()}, "
          f"{args.threads} thread(s), malloc {args.malloc}", flush=True)

    rows = []
    for name in args.nets or list(NETS):
        batches = args.batches or NETS[name]
        if args.quick and not args.batches:
            batches = batches[:1]
        rows += bench_network(name, batches, args, ov["available"])
    print(summary_table(rows))

    result = {
        "benchmark": "cpu_model",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "git_commit": git_commit(),
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "irnet_simd": irnet.ops.cpu_simd_level(), "threads": args.threads, "malloc": args.malloc,
                    "conv_algorithm": "auto", "compared_with": args.compare_algorithm},
        "openvino": ov,
        "quick": args.quick,
        "targets": [{"model": m, "batch": b, **t} for (m, b), t in TARGETS.items()],
        "check": {"samples": CHECK_SAMPLES, "max_rel_diff": CHECK_REL_TOL},
        "load_average": {"start": load_start, "end": loadavg()},
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": time.perf_counter() - _T0,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    title = (f"packed 1w1a networks (irnet.deploy.convert(model, fuse=True)), {args.threads} thread(s)\n{cpu_name()}, "
             f"torch {torch.__version__}" + (f", OpenVINO {ov['version'].split('-')[0]}" if ov.get("available") else ""))
    drew = plot(rows, out + ".png", title) if rows else False
    print(f"wrote {out}.json" + (f" and {out}.png" if drew else "") + f" ({time.perf_counter() - _T0:.0f} s)")


if __name__ == "__main__":
    main()
