"""One training step (forward + backward + SGD step) of a zoo model: the fused irnet
kernels against the pure-PyTorch reference ops (and, with ``--modes``, against
``torch.compile`` of the reference ops).

Each side runs in its own subprocess with the same thread count; the reference side has
``IRNET_DISABLE_EXTENSION=1``, so every ``torch.ops.irnet.*`` op runs irnet/reference.py
(the package as it is without the compiled extension).  The ``compiled`` side also runs
without the extension, its binary layers calling ``irnet.reference.libra_pb`` /
``sign_ede`` (plain PyTorch autograd functions that Dynamo can trace; the ``torch.ops.irnet``
ops would be opaque calls to it), and the whole model goes through ``torch.compile``: what
a user would get from Inductor's fused kernels without irnet's.  Same seed, same model,
same data; the first step's loss of every side is printed as a check that they compute the
same thing.  Reported: median over the timed steps (after warmup: the compiled side's
first warmup step includes the compilation) of the step, and of its forward and backward
parts; the sides are run alternately (``--rounds``) to spread machine drift.  On
``--device cuda`` the parts are timed with CUDA events (device time) and the batch lives on
the GPU; ``cpu ms`` is then the host's CPU time.  benchmarks/bench_cuda_conv.py runs this
file's sides on the GPU (its training-step section).

    python benchmarks/bench_train_step.py                 # resnet20_1w1a, batch 128
    python benchmarks/bench_train_step.py --steps 20 --rounds 3 --threads 2
    python benchmarks/bench_train_step.py --modes reference fused compiled
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from machine import cpu_name, loadavg  # noqa: E402
ROOT = os.path.dirname(HERE)


# --------------------------------------------------------------------------- worker
MODES = ("reference", "fused", "compiled")
TRAINING_OPS = ("libra_pb", "libra_pb_backward", "sign_ede", "sign_ede_backward")


def _use_reference_binarizers():
    """Makes irnet's binary layers call irnet.reference.libra_pb / sign_ede (plain PyTorch
    autograd functions) in place of the torch.ops.irnet wrappers, for torch.compile to see
    the maths: irnet.nn looks the binarizers up as ``ops.<name>`` at every call."""
    import types

    import irnet.nn
    from irnet import reference as ref

    irnet.nn.ops = types.SimpleNamespace(libra_pb=ref.libra_pb, sign_ede=ref.sign_ede)


class _StepTimer:
    """Marks inside a training step; seconds between them.  CPU: the host clock.  CUDA:
    events on the current stream (device time), read once the step's last event is done."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"

    def start(self):
        self.marks = []
        self.mark()

    def mark(self):
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def spans(self):
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def worker(args) -> dict:
    import torch

    sys.path.insert(0, ROOT)
    import irnet
    from irnet import ops

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_train_step: --device cuda, but torch sees no CUDA device")
        torch.backends.cudnn.benchmark = True  # as irnet.train does on CUDA
    fused = all(ops.has_compiled_kernel(op, device.type) for op in TRAINING_OPS)
    expect_fused = args.mode == "fused"
    if fused != expect_fused:
        raise SystemExit(f"bench_train_step: mode {args.mode} but the compiled training kernels for {device.type} are "
                         f"{'present' if fused else 'absent'} ({irnet.extension_status()['error']})")
    if args.mode == "compiled":
        _use_reference_binarizers()

    torch.manual_seed(args.seed)
    model = irnet.models.create(args.model).to(device)
    model.train()
    k, t = irnet.EDESchedule(1e-3, 10.0, 400).at(200)  # mid-training EDE point of the 1w1a recipe
    irnet.set_ede(model, k, t)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, 32, 32).to(device)
    y = torch.randint(0, 10, (args.batch,)).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    net = torch.compile(model) if args.mode == "compiled" else model
    timer = _StepTimer(device)

    steps, fwd, bwd, sgd, cpu, losses, warm = [], [], [], [], [], [], []
    for i in range(args.warmup + args.steps):
        c0 = time.process_time()
        w0 = time.perf_counter()
        timer.start()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        timer.mark()
        loss.backward()
        timer.mark()
        opt.step()
        timer.mark()
        f, b, s = timer.spans()
        c3 = time.process_time()
        losses.append(loss.item())
        if i >= args.warmup:
            steps.append(f + b + s)
            cpu.append(c3 - c0)
            fwd.append(f)
            bwd.append(b)
            sgd.append(s)
        else:
            warm.append(time.perf_counter() - w0)
    return {"mode": args.mode, "device": str(device), "threads": torch.get_num_threads(), "step_s": steps,
            "forward_s": fwd, "backward_s": bwd, "optimizer_s": sgd, "cpu_s": cpu, "warmup_wall_s": warm,
            "first_loss": losses[0], "torch": torch.__version__,
            "kernels": ({op: "reference (irnet.reference, torch.compile)" for op in TRAINING_OPS}
                        if args.mode == "compiled" else
                        {op: ("compiled" if ops.has_compiled_kernel(op, device.type) else "reference")
                         for op in TRAINING_OPS})}


def run_side(args, mode: str, timeout=None) -> dict:
    """Runs one side (``mode`` in MODES) in a subprocess; returns its worker's result.
    ``args`` needs model, batch, steps, warmup, threads, seed and device; ``timeout`` in
    seconds (raises subprocess.TimeoutExpired past it)."""
    env = dict(os.environ)
    env.pop("IRNET_DISABLE_EXTENSION", None)
    if mode in ("reference", "compiled"):
        env["IRNET_DISABLE_EXTENSION"] = "1"
    env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode, "--model", args.model,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--seed", str(args.seed), "--device", getattr(args, "device", "cpu")]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"bench_train_step: the {mode} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


PARTS = ("step_s", "forward_s", "backward_s", "optimizer_s", "cpu_s")


def summarize(samples: dict, batch: int) -> tuple[dict, dict]:
    """Medians per mode over every round's timed steps ({mode: [worker results]}), and the
    speedup of "fused" over each other mode (other's time / fused's time; > 1: fused faster)."""
    summary = {}
    for mode, results in samples.items():
        summary[mode] = {key: statistics.median(v for res in results for v in res[key]) for key in PARTS}
        summary[mode]["min_step_s"] = min(v for res in results for v in res["step_s"])
        summary[mode]["images_per_s"] = batch / summary[mode]["step_s"]
    speedup = {}
    if "fused" in summary:
        for mode in summary:
            if mode != "fused":
                speedup[mode] = {key: summary[mode][key] / summary["fused"][key]
                                 for key in ("step_s", "forward_s", "backward_s", "cpu_s", "min_step_s")}
    return summary, speedup


def print_table(summary: dict, speedup: dict, time_label: str = "wall-clock") -> None:
    print(f"({time_label} medians per step and per part; 'cpu ms' is the median process CPU time of a")
    print(" step, all threads; 'best ms' the fastest step seen; 'fused vs X' = X's time / fused's)")
    print(f"{'':14s} {'step ms':>10s} {'forward ms':>11s} {'backward ms':>12s} {'sgd ms':>8s} {'img/s':>8s} "
          f"{'cpu ms':>9s} {'best ms':>9s}")
    for mode, s in summary.items():
        print(f"{mode:14s} {s['step_s'] * 1e3:10.2f} {s['forward_s'] * 1e3:11.2f} {s['backward_s'] * 1e3:12.2f} "
              f"{s['optimizer_s'] * 1e3:8.2f} {s['images_per_s']:8.1f} {s['cpu_s'] * 1e3:9.1f} "
              f"{s['min_step_s'] * 1e3:9.2f}")
    for mode, sp in speedup.items():
        print(f"{'fused vs ' + mode:14s} {sp['step_s']:9.2f}x {sp['forward_s']:10.2f}x {sp['backward_s']:11.2f}x "
              f"{'':8s} {'':8s} {sp['cpu_s']:8.2f}x {sp['min_step_s']:8.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20_1w1a")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of the modes")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["reference", "fused"],
                   help="sides to run (default: reference fused; 'compiled' = torch.compile of the reference ops)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="default: torch.get_num_threads()")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(HERE, "results", "train_step.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    load_start = loadavg()
    samples = {mode: [] for mode in args.modes}
    for r in range(args.rounds):
        for mode in args.modes:
            res = run_side(args, mode)
            samples[mode].append(res)
            print(f"round {r + 1}/{args.rounds} {mode:9s}: median step "
                  f"{statistics.median(res['step_s']) * 1e3:8.1f} ms  (first loss {res['first_loss']:.6f})",
                  flush=True)

    summary, speedup = summarize(samples, args.batch)
    losses = {mode: samples[mode][0]["first_loss"] for mode in samples}

    print()
    print(f"{args.model}, batch {args.batch}, device {args.device}, {args.threads} thread(s), {cpu_name()} "
          f"({os.cpu_count()} logical CPUs)")
    print(f"median over {args.rounds} x {args.steps} steps after {args.warmup} warmup steps each; "
          f"1-min load average {load_start[0] if load_start else float('nan'):.2f} at start, "
          f"{(loadavg() or [float('nan')])[0]:.2f} at end")
    print_table(summary, speedup, "CUDA-event" if args.device.startswith("cuda") else "wall-clock")
    print("first-step loss: " + ", ".join(f"{m} {v:.7f}" for m, v in losses.items())
          + f" (max |diff| {max(losses.values()) - min(losses.values()):.2e})")

    result = {
        "benchmark": "train_step",
        "model": args.model, "batch": args.batch, "device": args.device, "threads": args.threads,
        "steps_per_round": args.steps, "warmup": args.warmup, "rounds": args.rounds, "seed": args.seed,
        "modes": list(args.modes),
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": samples[args.modes[0]][0]["torch"]},
        "kernels": {mode: samples[mode][0]["kernels"] for mode in samples},
        "median_s": summary,
        # reference / fused, as before --modes existed; every mode's in speedup_vs
        "speedup": speedup.get("reference"), "speedup_vs": speedup,
        "first_loss": losses,
        "samples_step_s": {mode: [v for res in samples[mode] for v in res["step_s"]] for mode in samples},
        "load_average": {"start": load_start, "end": loadavg()},
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
