"""The optimizer side of a run: SGD, the per-step learning-rate schedule, mixed precision."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn

from ..recipes import Recipe


class LRSchedule:
    """Multiplier of the peak lr at optimizer step ``s`` (for ``LambdaLR``, stepped every step).

    cosine: ``0.5 (1 + cos(pi e / E))`` with ``e = s // steps_per_epoch`` (annealed per epoch
    to 0, as ``CosineAnnealingLR`` stepped once an epoch in the paper's code);
    step: ``gamma ** #{milestones <= e}`` with ``e = s / steps_per_epoch``;
    warm-up: for ``s < W`` steps, linear from ``warmup_lr / lr`` to 1 (then the schedule)."""

    def __init__(self, kind, epochs, steps_per_epoch, milestones=(), gamma=0.1, warmup_steps=0, warmup_ratio=0.0):
        self.kind, self.epochs, self.steps_per_epoch = kind, int(epochs), int(steps_per_epoch)
        self.milestones, self.gamma = [float(m) for m in milestones], float(gamma)
        self.warmup_steps, self.warmup_ratio = int(warmup_steps), float(warmup_ratio)

    @classmethod
    def of(cls, recipe: Recipe, steps_per_epoch: int) -> "LRSchedule":
        """The schedule a recipe asks for."""
        return cls(recipe.lr_schedule, recipe.epochs, steps_per_epoch, recipe.lr_milestones, recipe.lr_gamma,
                   int(round(recipe.warmup_epochs * steps_per_epoch)),
                   recipe.warmup_lr / recipe.lr if recipe.lr else 0.0)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        if self.kind == "cosine":
            e = step // self.steps_per_epoch
            return 0.5 * (1.0 + math.cos(math.pi * e / self.epochs))
        e = step / self.steps_per_epoch
        return self.gamma ** sum(1 for m in self.milestones if e >= m)


def build_optimizer(model: nn.Module, recipe: Recipe, steps_per_epoch: int):
    """SGD and its ``LambdaLR`` over :class:`LRSchedule`: ``(optimizer, scheduler, schedule)``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    schedule = LRSchedule.of(recipe, steps_per_epoch)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), schedule


def follow_schedule(scheduler, optimizer, schedule: LRSchedule, peak_lr: float) -> None:
    """After loading a scheduler's state: continue at its step on ``schedule`` and ``peak_lr``
    (a resumed run may change the recipe; the saved state keeps only the step count)."""
    scheduler.lr_lambdas[0] = schedule
    scheduler.base_lrs = [peak_lr for _ in optimizer.param_groups]
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * schedule(scheduler.last_epoch)


class Precision:
    """``--amp``: bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA; without it, the weights' dtype."""

    def __init__(self, amp: bool, device: torch.device):
        self.amp, self.device_type = amp, device.type
        self.dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None

    def autocast(self):
        """The context of every forward pass (train and test)."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.amp else nullcontext()

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()
