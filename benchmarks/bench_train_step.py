"""One CPU training step (forward + backward + SGD step) of a zoo model, the fused irnet
CPU kernels against the pure-PyTorch reference ops.

Each side runs in its own subprocess with the same thread count; the reference side has
``IRNET_DISABLE_EXTENSION=1``, so every ``torch.ops.irnet.*`` op runs irnet/reference.py
(the package as it is without the compiled extension).  Same seed, same model, same data;
the first step's loss of both sides is printed as a check that they compute the same thing.
Reported: median over the timed steps (after warmup) of the step, and of its forward and
backward parts; the sides are run alternately (``--rounds``) to spread machine drift.

    python benchmarks/bench_train_step.py                 # resnet20_1w1a, batch 128
    python benchmarks/bench_train_step.py --steps 20 --rounds 3 --threads 2
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
def worker(args) -> dict:
    import torch

    sys.path.insert(0, ROOT)
    import irnet
    from irnet import ops

    torch.set_num_threads(args.threads)
    fused = all(ops.has_compiled_kernel(op, "cpu") for op in ("libra_pb", "libra_pb_backward", "sign_ede",
                                                               "sign_ede_backward"))
    expect_fused = args.mode == "fused"
    if fused != expect_fused:
        raise SystemExit(f"bench_train_step: mode {args.mode} but the compiled training kernels are "
                         f"{'present' if fused else 'absent'} ({irnet.extension_status()['error']})")

    torch.manual_seed(args.seed)
    model = irnet.models.create(args.model)
    model.train()
    k, t = irnet.EDESchedule(1e-3, 10.0, 400).at(200)  # mid-training EDE point of the 1w1a recipe
    irnet.set_ede(model, k, t)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    steps, fwd, bwd, sgd, cpu, losses = [], [], [], [], [], []
    for i in range(args.warmup + args.steps):
        c0 = time.process_time()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        c3 = time.process_time()
        losses.append(loss.item())
        if i >= args.warmup:
            steps.append(t3 - t0)
            cpu.append(c3 - c0)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            sgd.append(t3 - t2)
    return {"mode": args.mode, "threads": torch.get_num_threads(), "step_s": steps, "forward_s": fwd,
            "backward_s": bwd, "optimizer_s": sgd, "cpu_s": cpu, "first_loss": losses[0], "torch": torch.__version__,
            "kernels": {op: ("compiled" if ops.has_compiled_kernel(op, "cpu") else "reference")
                        for op in ("libra_pb", "libra_pb_backward", "sign_ede", "sign_ede_backward")}}


def run_side(args, mode: str) -> dict:
    env = dict(os.environ)
    env.pop("IRNET_DISABLE_EXTENSION", None)
    if mode == "reference":
        env["IRNET_DISABLE_EXTENSION"] = "1"
    env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode, "--model", args.model,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--seed", str(args.seed)]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_train_step: the {mode} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20_1w1a")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternating reference/fused runs")
    p.add_argument("--threads", type=int, default=None, help="default: torch.get_num_threads()")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(HERE, "results", "train_step.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("fused", "reference"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    load_start = loadavg()
    samples = {"reference": [], "fused": []}
    for r in range(args.rounds):
        for mode in ("reference", "fused"):
            res = run_side(args, mode)
            samples[mode].append(res)
            print(f"round {r + 1}/{args.rounds} {mode:9s}: median step "
                  f"{statistics.median(res['step_s']) * 1e3:8.1f} ms  (first loss {res['first_loss']:.6f})",
                  flush=True)

    def med(mode, key):
        return statistics.median(v for res in samples[mode] for v in res[key])

    summary = {}
    for mode in ("reference", "fused"):
        summary[mode] = {key: med(mode, key) for key in ("step_s", "forward_s", "backward_s", "optimizer_s", "cpu_s")}
        summary[mode]["min_step_s"] = min(v for res in samples[mode] for v in res["step_s"])
        summary[mode]["images_per_s"] = args.batch / summary[mode]["step_s"]
    speedup = {key: summary["reference"][key] / summary["fused"][key]
               for key in ("step_s", "forward_s", "backward_s", "cpu_s", "min_step_s")}
    loss_ref, loss_fused = samples["reference"][0]["first_loss"], samples["fused"][0]["first_loss"]

    print()
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s), {cpu_name()} ({os.cpu_count()} logical CPUs)")
    print(f"median over {args.rounds} x {args.steps} steps after {args.warmup} warmup steps each; "
          f"1-min load average {load_start[0] if load_start else float('nan'):.2f} at start, "
          f"{(loadavg() or [float('nan')])[0]:.2f} at end")
    print("(medians of wall-clock times per step and per part; 'cpu ms' is the median process CPU")
    print(" time of a step, all threads; 'best ms' the fastest step seen, the least disturbed by")
    print(" other load on the machine)")
    print(f"{'':10s} {'step ms':>10s} {'forward ms':>11s} {'backward ms':>12s} {'sgd ms':>8s} {'img/s':>8s} "
          f"{'cpu ms':>9s} {'best ms':>9s}")
    for mode in ("reference", "fused"):
        s = summary[mode]
        print(f"{mode:10s} {s['step_s'] * 1e3:10.1f} {s['forward_s'] * 1e3:11.1f} {s['backward_s'] * 1e3:12.1f} "
              f"{s['optimizer_s'] * 1e3:8.1f} {s['images_per_s']:8.1f} {s['cpu_s'] * 1e3:9.1f} "
              f"{s['min_step_s'] * 1e3:9.1f}")
    print(f"{'speedup':10s} {speedup['step_s']:9.2f}x {speedup['forward_s']:10.2f}x {speedup['backward_s']:11.2f}x "
          f"{'':8s} {'':8s} {speedup['cpu_s']:8.2f}x {speedup['min_step_s']:8.2f}x")
    print(f"first-step loss: reference {loss_ref:.7f}, fused {loss_fused:.7f} (|diff| {abs(loss_ref - loss_fused):.2e})")

    result = {
        "benchmark": "train_step",
        "model": args.model, "batch": args.batch, "threads": args.threads, "steps_per_round": args.steps,
        "warmup": args.warmup, "rounds": args.rounds, "seed": args.seed,
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": samples["fused"][0]["torch"]},
        "kernels": {mode: samples[mode][0]["kernels"] for mode in samples},
        "median_s": summary, "speedup": speedup,
        "first_loss": {"reference": loss_ref, "fused": loss_fused},
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
