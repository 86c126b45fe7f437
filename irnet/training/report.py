"""What a run tells its user (rank 0 only): the start lines, a tqdm bar per epoch, one line per
epoch, ``metrics.jsonl`` (one JSON line per epoch), ``curves.png`` (loss, accuracy, EDE t and
k), and at the end the summary lines and ``summary.json``."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing

import torch

from ..schedule import binary_layers
from .distributed import Dist

if typing.TYPE_CHECKING:
    from .prepare import Run
    from .state import Progress


def log(d: Dist, *msg):
    if d.main:
        print(*msg, flush=True)


def announce(run: "Run", progress: "Progress") -> None:
    """Create the output folder (only once data and model are ready: a failed start leaves
    nothing), rewrite metrics.jsonl from the resumed history, and say what this run does."""
    d, recipe, args, feed = run.dist, run.recipe, run.args, run.feed
    if not d.main:
        return
    os.makedirs(run.out, exist_ok=True)
    write_metrics(run.path("metrics.jsonl"), progress.history)
    n_params = sum(p.numel() for p in run.model.parameters())
    log(d, f"irnet.train: {recipe.model} ({n_params / 1e6:.3f} M parameters, {len(binary_layers(run.model))} binary "
           f"layers) on {recipe.dataset} ({feed.n_train} train / {len(feed.test)} test images, "
           f"{run.num_classes} classes)")
    log(d, f"recipe: {run.origin}")
    log(d, "  " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(recipe).items()))
    log(d, f"device: {d.device}" + (f" x {d.world} processes ({d.backend})" if d.enabled else "")
        + f", threads {torch.get_num_threads()}"
        + (", amp " + str(run.precision.dtype).replace("torch.", "") if args.amp else "")
        + (", channels-last" if args.channels_last else "") + (", sync-bn" if args.sync_bn and d.enabled else ""))
    log(d, run.ops_line)
    log(d, f"output: {run.out}")
    if run.resumed is not None:
        log(d, f"resuming from {run.resume_path}: epoch {progress.start_epoch + 1}, step {progress.start_step} "
               f"of {run.steps}")
    elif args.resume == "auto":
        log(d, "--resume auto: no checkpoint found, starting fresh")


class EpochBar:
    """The tqdm bar of one epoch (rank 0, unless --no-progress); its running loss, accuracy and
    speed are refreshed every ``every`` steps and at the last (reading them waits for the device)."""

    def __init__(self, run: "Run", epoch: int, first_step: int, every: int):
        from tqdm import tqdm
        self.steps, self.every = run.steps, every
        self.shown = run.dist.main and not run.args.no_progress
        self.bar = tqdm(total=run.steps, initial=first_step, desc=f"epoch {epoch + 1}/{run.recipe.epochs}",
                        unit="step", disable=not self.shown, dynamic_ncols=True, leave=True, file=sys.stdout)

    def due(self, step: int) -> bool:
        return self.shown and ((step + 1) % self.every == 0 or step + 1 == self.steps)

    def show(self, sums: list, images_per_s: float, k: float, t: float) -> None:
        """``sums``: [loss sum, correct, seen] of the epoch so far."""
        loss, acc = sums[0] / max(sums[2], 1), 100 * sums[1] / max(sums[2], 1)
        self.bar.set_postfix_str(f"loss {loss:.4f} acc {acc:.2f}% {images_per_s:.0f} img/s t {t:.3g} k {k:.3g}",
                                 refresh=False)

    def update(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def report_epoch(run: "Run", history: list) -> None:
    """After an epoch: metrics.jsonl, curves.png and the epoch's line."""
    d, row = run.dist, history[-1]
    if not d.main:
        return
    write_metrics(run.path("metrics.jsonl"), history)
    if not run.args.no_plots:
        plot(run.path("curves.png"), history)
    top5 = f", top-5 {row['test_top5']:.2f}%" if "test_top5" in row else ""
    log(d, f"epoch {row['epoch']}/{run.recipe.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
           f"test loss {row['test_loss']:.4f} top-1 {row['test_top1']:.2f}%{top5} | "
           f"{row['images_per_s']:.0f} img/s, {row['epoch_time_s']:.1f} s")


def summarize(run: "Run", progress: "Progress", train_time_s: float) -> dict:
    """The run's summary: what was trained where, and the last and best test accuracy."""
    recipe, d, history, best = run.recipe, run.dist, progress.history, progress.best
    summary = {"model": recipe.model, "dataset": recipe.dataset, "out": run.out, "epochs": recipe.epochs,
               "world_size": d.world, "device": str(d.device), "train_time_s": train_time_s,
               "recipe": dataclasses.asdict(recipe)}
    if history:
        last = history[-1]
        summary.update(last_top1=last["test_top1"], best_top1=best["top1"], best_epoch=best["epoch"],
                       test_images=last["test_n"])
        if "test_top5" in last:
            summary.update(last_top5=last["test_top5"], best_top5=best.get("top5"))
    return summary


def write_summary(run: "Run", summary: dict, epochs_done: int) -> None:
    """The closing lines and summary.json."""
    d = run.dist
    if not d.main:
        return
    if "last_top1" in summary:
        n = summary["test_images"]
        t5 = (f"; top-5 last {summary['last_top5']:.2f}%, best {summary['best_top5']:.2f}%"
              if "last_top5" in summary else "")
        log(d, f"test top-1 on the full test set ({n} images): last {summary['last_top1']:.2f}% "
               f"(epoch {epochs_done}), best {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}){t5}")
    if "deploy" in summary:
        r = summary["deploy"]
        verdict = "the same" if r["identical"] == r["n"] else "DIFFERENT"
        log(d, f"packed model (irnet.deploy.convert): {r['identical']}/{r['n']} test predictions identical to the "
               f"trained model -> {verdict}")
        shard = " (rank 0's shard)" if d.enabled else ""
        log(d, f"inference over the test set{shard}: "
               f"packed fused {r['fused_s']:.2f} s vs {r['float_twin_s']:.2f} s for the same network as a plain "
               f"float model ({r['float_twin_s'] / max(r['fused_s'], 1e-9):.1f}x; eval batches of the test feed); "
               f"packed unfused {r['packed_s']:.2f} s, the trained model {r['float_s']:.2f} s (it re-binarizes "
               f"its weights every call)")
    if "ranks_identical" in summary:
        log(d, f"weights identical on all {d.world} processes: {summary['ranks_identical']}")
    with open(run.path("summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(d, f"wrote {run.out}/: last.pt, best.pt, metrics.jsonl, summary.json" + ("" if run.args.no_plots else ", curves.png"))


def write_metrics(path: str, history: list) -> None:
    """metrics.jsonl, replaced atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def plot(path: str, history: list) -> None:
    """curves.png: loss, accuracy, EDE t and k per epoch, replaced atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    ax[0, 0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax[0, 0].plot(ep, [h["test_loss"] for h in history], "o-", label="test")
    ax[0, 0].set_title("loss")
    ax[0, 1].plot(ep, [h["train_acc"] for h in history], "o-", label="train top-1")
    ax[0, 1].plot(ep, [h["test_top1"] for h in history], "o-", label="test top-1")
    if history and "test_top5" in history[0]:
        ax[0, 1].plot(ep, [h["test_top5"] for h in history], "o-", label="test top-5")
    ax[0, 1].set_title("accuracy (%)")
    ax[1, 0].semilogy(ep, [h["t"] for h in history], "o-")
    ax[1, 0].set_title("EDE t")
    ax[1, 1].semilogy(ep, [h["k"] for h in history], "o-")
    ax[1, 1].set_title("EDE k")
    for a in ax.flat:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    ax[0, 0].legend()
    ax[0, 1].legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
