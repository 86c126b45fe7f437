"""The training loop: :func:`train` runs the steps of a run -- prepare, resume, the epochs,
finish -- each a function below or in the module named for it."""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from ..schedule import set_ede
from .distributed import all_reduce, rank_fingerprints
from .errors import NonFiniteLoss
from .evaluation import deploy_check, evaluate
from .feeds import MemoryFeed
from .prepare import Run, prepare
from .report import EpochBar, announce, log, report_epoch, summarize, write_summary
from .state import Checkpointer, Progress, resume


def train(args) -> dict:
    """Run training as parsed from the command line; returns the summary (rank 0: written to summary.json)."""
    run = prepare(args)                      # device, recipe, data, model, optimizer
    progress = resume(run)                   # from the checkpoint, or fresh
    announce(run, progress)                  # output folder and start lines
    watch, saver = NonFiniteWatch(run), Checkpointer(run, progress)
    started = time.perf_counter()
    for epoch in range(progress.start_epoch, run.recipe.epochs):
        row = train_epoch(run, progress, epoch, watch, saver)
        end_epoch(run, progress, row, saver)
    return finish(run, progress, time.perf_counter() - started)


class NonFiniteWatch:
    """Stops the run at the first non-finite loss or weights, before any checkpoint holds them.

    ``first_bad`` = [first global step with a non-finite loss, first step whose update left
    non-finite weights] (int64 max: none) stays on the device, so that no step waits for the
    GPU; :meth:`check` reads it (MIN-reduced over the ranks) every ``every`` steps, before every
    checkpoint and at the end of each epoch, and raises :class:`NonFiniteLoss` naming the step."""

    NONE = torch.iinfo(torch.int64).max

    def __init__(self, run: Run):
        self.run = run
        self.first_bad = torch.full((2,), self.NONE, dtype=torch.int64, device=run.dist.device)
        self.every = 1 if run.dist.device.type == "cpu" else 25
        self.params = list(run.model.parameters())

    def due(self, step: int) -> bool:
        return (step + 1) % self.every == 0

    def note_loss(self, loss: torch.Tensor, global_step: int) -> None:
        self._note(0, torch.isfinite(loss), global_step)

    def note_weights(self, global_step: int) -> None:
        self._note(1, torch.isfinite(torch.stack(torch._foreach_norm(self.params, float("inf"))).max()), global_step)

    def _note(self, i: int, finite: torch.Tensor, global_step: int) -> None:
        self.first_bad[i] = torch.where(finite, self.first_bad[i], torch.clamp(self.first_bad[i], max=global_step))

    def check(self) -> None:
        import torch.distributed as dist
        run = self.run
        v = self.first_bad.clone()
        if run.dist.enabled:
            dist.all_reduce(v, op=dist.ReduceOp.MIN)
        bad_loss, bad_weights = v.tolist()
        g = min(bad_loss, bad_weights)
        if g == self.NONE:
            return
        e, s = divmod(g, run.steps)
        what = ("the training loss became non-finite" if bad_loss <= bad_weights else
                "the weights became non-finite (the loss was finite: the update overflowed)")
        last = run.path("last.pt")
        raise NonFiniteLoss(
            f"{what} at epoch {e + 1} of {run.recipe.epochs}, step {s + 1} of {run.steps} (global step {g}); the run "
            "stopped. The last good checkpoint"
            + (f" {last} is left untouched" if os.path.exists(last) else " (none was written yet)")
            + ". Try a lower --lr, or check the data.")


def train_epoch(run: Run, progress: Progress, epoch: int, watch: NonFiniteWatch, saver: Checkpointer) -> dict:
    """The steps of ``epoch`` not yet done, then the test set; returns the epoch's metrics row."""
    d, args = run.dist, run.args
    k, t = run.ede.at(epoch)
    set_ede(run.model, k, t)
    run.net.train()
    lr = run.optimizer.param_groups[0]["lr"]
    first_step = progress.start_step if epoch == progress.start_epoch else 0
    if epoch != progress.start_epoch:
        progress.accum.zero_()
    bar = EpochBar(run, epoch, first_step, watch.every)
    t0, seen = time.perf_counter(), 0
    local = torch.zeros(3, dtype=torch.float64, device=d.device)  # this rank's loss sum, correct, seen
    for s, x, y in run.feed.batches(epoch, first_step):
        loss, logits = train_step(run, watch, x, y, s, epoch * run.steps + s)
        local += torch.stack([loss.double() * y.numel(), (logits.argmax(1) == y).sum().double(),
                              torch.tensor(float(y.numel()), dtype=torch.float64, device=d.device)])
        seen += y.numel()
        if args.ckpt_every and (s + 1) % args.ckpt_every == 0 and s + 1 < run.steps:
            watch.check()
            saver.save(run.path("last.pt"), epoch, s + 1, (all_reduce(local.clone()) + progress.accum).tolist())
        if bar.due(s):
            sums = (local + progress.accum).tolist() if d.world == 1 else local.tolist()
            bar.show(sums, seen * d.world / max(time.perf_counter() - t0, 1e-9), k, t)
        bar.update()
    bar.close()
    watch.check()
    epoch_time = time.perf_counter() - t0
    total = (all_reduce(local.clone()) + progress.accum).tolist()
    test = evaluate(run.model, run.feed, run.num_classes, run.precision.autocast)
    return {"epoch": epoch + 1, "train_loss": total[0] / max(total[2], 1), "train_acc": 100 * total[1] / max(total[2], 1),
            **test, "lr": lr, "k": k, "t": t,
            "images_per_s": seen * d.world / max(epoch_time, 1e-9), "epoch_time_s": epoch_time}


def train_step(run: Run, watch: NonFiniteWatch, x, y, step: int, global_step: int):
    """Forward, backward, optimizer and lr step on one batch; returns the loss and the logits (detached)."""
    try:
        with run.precision.autocast():
            logits = run.net(x)
            loss = F.cross_entropy(logits if logits.dtype in (torch.float32, torch.float64) else logits.float(), y,
                                   label_smoothing=run.recipe.label_smoothing)
    except RuntimeError:
        watch.check()   # irnet's ops refuse non-finite weights: report the step that made them
        raise
    if run.args.debug_nan_at_step is not None and global_step == run.args.debug_nan_at_step:
        loss = loss * float("nan")
    loss_value = loss.detach()
    watch.note_loss(loss_value, global_step)
    if watch.due(step):
        watch.check()
    run.optimizer.zero_grad(set_to_none=True)
    run.precision.backward_and_step(loss, run.optimizer)
    run.scheduler.step()
    watch.note_weights(global_step)
    if watch.due(step):
        watch.check()
    return loss_value, logits.detach()


def end_epoch(run: Run, progress: Progress, row: dict, saver: Checkpointer) -> None:
    """Record the epoch: history and best, last.pt (and best.pt), metrics, curves, the epoch's line."""
    progress.history.append(row)
    is_best = row["test_top1"] > progress.best["top1"]
    if is_best:
        progress.best = {"top1": row["test_top1"], "epoch": row["epoch"],
                         **({"top5": row["test_top5"]} if "test_top5" in row else {})}
    saver.save(run.path("last.pt"), row["epoch"], 0, [0.0, 0.0, 0.0])
    if is_best and run.dist.main:
        saver.save(run.path("best.pt"), row["epoch"], 0, [0.0, 0.0, 0.0])
    report_epoch(run, progress.history)


def finish(run: Run, progress: Progress, train_time_s: float) -> dict:
    """The summary: accuracy, whether all ranks ended with the same weights, the deploy check."""
    d = run.dist
    summary = summarize(run, progress, train_time_s)
    if d.enabled:
        prints = rank_fingerprints(run.model, d)
        summary["rank_fingerprints"] = prints
        summary["ranks_identical"] = len(set(prints)) == 1
        if not summary["ranks_identical"]:
            log(d, "WARNING: the processes ended with different weights: " + ", ".join(prints))
    if not run.args.no_deploy_check and isinstance(run.feed, MemoryFeed) and run.dtype == torch.float32:
        res = deploy_check(run.model, run.feed, d)
        if res is not None:
            summary["deploy"] = res
    write_summary(run, summary, len(progress.history))
    return summary
