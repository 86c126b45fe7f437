"""Train an IR-Net model: ``python -m irnet.train`` (see ``--help``).

    python -m irnet.train --preset demo                              # a few minutes on a CPU
    python -m irnet.train --model resnet20_1w1a --dataset cifar10 --data-dir ~/data
    python -m irnet.train --preset cifar10_vgg_small_1w1a --data-dir ~/data --epochs 10
    torchrun --nproc-per-node 8 -m irnet.train --preset imagenet_resnet18_1w1a --data-dir /imagenet

What a run does:

* the EDE schedule sets ``k`` and ``t`` of every binary layer at the start of each epoch
  (:func:`irnet.set_ede`); SGD with momentum and a per-step learning-rate schedule
  (cosine annealing to 0 per epoch as in the paper's code, or warm-up + steps);
* a tqdm bar per epoch, ``metrics.jsonl`` (one JSON line per epoch), ``curves.png``
  (loss, accuracy, t, k) and ``summary.json`` in ``--out``;
* ``last.pt`` after every epoch and every ``--ckpt-every`` steps, ``best.pt`` at the best
  test top-1, all written atomically; ``--resume PATH|auto`` continues exactly where the
  run stopped, even mid-epoch (the data order is a pure function of seed, epoch and step);
* a non-finite loss stops the run naming the epoch and step, the last checkpoint untouched;
* under ``torchrun`` it trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs):
  every rank takes its slice of each global batch, and only rank 0 writes or prints;
* at the end, if :mod:`irnet.deploy` is there, it converts the model to the bit-packed
  inference model and checks that both predict the same classes on the test set.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import hashlib
import json
import math
import os
import random
import sys
import time
import typing
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _ext, checkpoint, models, ops
from .data import (DATASETS, ArrayDataset, EpochPlan, ImageFolderDataset, Normalizer, crop_flip, derive_seed,
                   load_arrays, IMAGENET_MEAN, IMAGENET_STD)
from .recipes import PRESETS, Recipe, load_config, preset, preset_for, recipe_fields
from .schedule import EDESchedule, binary_layers, set_ede

__all__ = ["main", "build_parser", "LRSchedule", "NonFiniteLoss"]

TRAINING_OPS = ("sign_ede", "sign_ede_backward", "libra_pb", "libra_pb_backward")
EXIT_NONFINITE = 3
EXIT_ERROR = 2


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class UsageError(RuntimeError):
    """A run that cannot start as asked (the message says why and what to do)."""


# --------------------------------------------------------------------------- command line
_RECIPE_HELP = {
    "model": "zoo model: " + ", ".join(models.names()),
    "dataset": "cifar10 | cifar100 (torchvision's on-disk format in --data-dir) | imagenet (ImageFolder tree "
               "--data-dir/{train,val}) | npz (--train-file/--test-file with x, y) | builtin (the shipped MNIST subset)",
    "epochs": "epochs to train",
    "batch_size": "GLOBAL batch size (a distributed run splits it evenly over its processes)",
    "lr": "peak learning rate (after warm-up)",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "nesterov": "Nesterov momentum",
    "lr_schedule": "cosine (annealed to 0, per epoch, as the paper's code) | step (x lr_gamma at each milestone)",
    "lr_milestones": "comma-separated epochs of the step schedule, e.g. 30,60,90",
    "lr_gamma": "factor of the step schedule",
    "warmup_epochs": "linear warm-up (per step) from --warmup-lr to --lr over this many epochs",
    "warmup_lr": "learning rate at the start of the warm-up",
    "t_min": "EDE: t = t_min * (t_max/t_min)**(epoch/epochs), k = max(1/t, 1)",
    "t_max": "EDE: final t",
    "label_smoothing": "cross-entropy label smoothing",
    "crop_pad": "in-memory datasets: zero padding of the random crop (0: no crop)",
    "hflip": "in-memory datasets: random horizontal flip",
    "image_size": "imagenet: train random-resized crop and test centre crop size",
    "test_resize": "imagenet: short side before the test centre crop",
    "color_jitter": "imagenet: brightness,contrast,saturation,hue jitter, e.g. 0.2,0.2,0.2,0.1",
    "structure": "residual structure: bireal | normal (default: the zoo's)",
    "act": "activation: hardtanh | relu (default: the zoo's)",
    "train_limit": "train on the first N training samples only (quick runs)",
    "test_limit": "evaluate on the first N test samples only (default: the full test set)",
    "eval_batch_size": "evaluation batch size (per process)",
    "seed": "seed of the model init and of the data order/augmentation",
}


_CHOICES = {"lr_schedule": ("cosine", "step"), "structure": ("bireal", "normal"), "act": ("hardtanh", "relu")}


def _list_type(item):
    def parse(text):
        try:
            return [item(v) for v in str(text).split(",") if v.strip() != ""]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__}s, got {text!r}") from exc
    return parse


def _optional_int(text):
    return None if str(text).lower() in ("none", "") else int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m irnet.train",
        description="Train an IR-Net binary neural network (Qin et al., CVPR 2020) with irnet's fused ops.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets (one per row of the paper's tables, and a CPU demo):\n" + "\n".join(
            f"  {n:26s} {p.description}" + (f"  [paper: {p.paper}]" if p.paper else "") for n, p in PRESETS.items())
        + "\n\nSettings resolve as: preset (--preset, or the paper's preset of --model + --dataset) < --config < flags."
          "\nExamples:\n  python -m irnet.train --preset demo\n"
          "  python -m irnet.train --model resnet20_1w1a --dataset cifar10 --data-dir ~/data\n"
          "  torchrun --nproc-per-node 8 -m irnet.train --preset imagenet_resnet18_1w1a --data-dir /imagenet")
    run = p.add_argument_group("run")
    run.add_argument("--preset", help="a named recipe (listed below)")
    run.add_argument("--config", help="a JSON (.json) or TOML file of recipe settings (the flag names with _)")
    run.add_argument("--data-dir", help="dataset folder (cifar: the folder holding cifar-10-batches-py/; "
                                        "imagenet: the folder holding train/ and val/)")
    run.add_argument("--train-file", help="npz dataset: training file with x (uint8 images) and y (labels)")
    run.add_argument("--test-file", help="npz dataset: test file with x and y")
    run.add_argument("--download", action="store_true", help="cifar: download the official archive into --data-dir "
                                                             "if it is not there")
    run.add_argument("--out", help="output folder (default: runs/<model>-<dataset>-<timestamp>)")
    run.add_argument("--resume", help="checkpoint to continue from: a .pt file, a run folder, or 'auto' (the --out "
                                      "folder's last.pt, else the newest runs/<model>-<dataset>-*/last.pt; starts "
                                      "fresh when there is none)")
    run.add_argument("--ckpt-every", type=int, default=0, metavar="N",
                     help="also write last.pt every N steps inside an epoch (exact resume after a crash mid-epoch)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda (default: cuda when available)")
    run.add_argument("--ops", choices=("auto", "fused", "reference"), default="auto",
                     help="irnet ops: fused (compiled kernels; error if irnet._C is not built), reference "
                          "(pure PyTorch; sets IRNET_DISABLE_EXTENSION=1 and restarts), auto (fused where built)")
    run.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA")
    run.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="weights and compute; float64 is for numerical cross-checks (slow; the fused kernels "
                          "may be float32-only: use it with --ops reference)")
    run.add_argument("--sync-bn", action="store_true",
                     help="distributed: BatchNorm statistics over the global batch (makes a multi-process run compute "
                          "what one process with the same global batch computes)")
    run.add_argument("--workers", type=int, default=None, help="imagenet: DataLoader worker processes per rank")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms, no cudnn benchmark")
    run.add_argument("--no-progress", action="store_true", help="no tqdm bars (one line per epoch instead)")
    run.add_argument("--no-plots", action="store_true", help="do not write curves.png")
    run.add_argument("--no-deploy-check", action="store_true",
                     help="skip converting the trained model with irnet.deploy and comparing predictions")
    run.add_argument("--debug-nan-at-step", type=int, default=None, metavar="G",
                     help="testing aid: make the loss NaN at global step G (0-based) to exercise the non-finite stop")
    run.add_argument("--list-presets", action="store_true", help="print the presets with their settings and exit")

    rec = p.add_argument_group("recipe (each overrides the preset/config)")
    hints = typing.get_type_hints(Recipe)
    for name, f in recipe_fields().items():
        flag = "--" + name.replace("_", "-")
        kind = hints[name]
        kw = dict(dest=name, default=argparse.SUPPRESS, help=_RECIPE_HELP.get(name, ""))
        if kind is bool:
            rec.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif name == "lr_milestones":
            rec.add_argument(flag, type=_list_type(float), metavar="E1,E2,..", **kw)
        elif name == "color_jitter":
            rec.add_argument(flag, type=_list_type(float), metavar="B,C,S,H", **kw)
        elif kind in (int, float):
            rec.add_argument(flag, type=kind, **kw)
        elif kind == typing.Optional[int]:
            rec.add_argument(flag, type=_optional_int, metavar="N", **kw)
        elif name == "model":
            rec.add_argument(flag, choices=models.names(), metavar="NAME", **kw)
        elif name == "dataset":
            rec.add_argument(flag, choices=DATASETS, **kw)
        elif name in _CHOICES:
            rec.add_argument(flag, choices=_CHOICES[name], **kw)
        else:
            rec.add_argument(flag, type=str, **kw)
    return p


def _explicit(args) -> dict:
    return {k: getattr(args, k) for k in recipe_fields() if hasattr(args, k)}


def resolve_recipe(args) -> tuple[Recipe, str]:
    """Preset < config < flags; returns the recipe and a line saying where it came from."""
    config = load_config(args.config) if args.config else {}
    flags = _explicit(args)
    name = args.preset or config.pop("preset", None)
    config.pop("preset", None)
    base, origin = {}, "defaults (DESIGN.md section 3)"
    if name:
        base, origin = dict(preset(name).recipe), f"preset {name}"
    else:
        merged = {**config, **flags}
        found = preset_for(merged.get("model"), merged.get("dataset"))
        if found:
            base, origin = dict(found.recipe), f"preset {found.name} (the paper's recipe for this model and dataset)"
    values = {**base, **config, **flags}
    if config:
        origin += f" + {args.config}"
    if flags:
        origin += " + flags (" + ", ".join(sorted(flags)) + ")"
    recipe = Recipe(**values)
    return recipe, origin


# --------------------------------------------------------------------------- learning rate
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

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        if self.kind == "cosine":
            e = step // self.steps_per_epoch
            return 0.5 * (1.0 + math.cos(math.pi * e / self.epochs))
        e = step / self.steps_per_epoch
        return self.gamma ** sum(1 for m in self.milestones if e >= m)


# --------------------------------------------------------------------------- distributed
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    elif device_arg in ("cpu", "cuda"):
        device_type = device_arg
    else:
        raise ValueError(f"--device must be auto, cpu or cuda, got {device_arg!r}")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but torch sees no CUDA GPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _broadcast_object(obj, d: Dist):
    if not d.enabled:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _AllReduceSum(torch.autograd.Function):
    """Sum over all processes; its gradient is the sum of every process's gradient."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all processes, on any
    backend (torch's SyncBatchNorm is GPU-only; this one also runs under gloo on CPUs).

    Two differentiable all-reduces per layer: ``[sum x, count]`` gives the global mean ``m``,
    then ``sum (x - m)^2`` the biased variance ``v`` (two passes, no ``E[x^2] - m^2``
    cancellation).  The backward of each all-reduce sums the gradients of every rank's loss,
    so with DDP's gradient averaging the update is that of one process seeing the whole
    batch.  Running statistics use the unbiased ``v * n/(n-1)``, as ``nn.BatchNorm2d``."""

    def forward(self, x):
        import torch.distributed as dist
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        count = torch.full((1,), xf.numel() / c, device=x.device, dtype=xf.dtype)
        s1 = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = s1[-1]
        mean = s1[:c] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d -> torch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm2d` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            like = child.weight if child.weight is not None else child.running_mean
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(device=device, dtype=like.dtype if like is not None else None)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_bn(child, device)
    return module


# --------------------------------------------------------------------------- data feeds
class _Feed:
    """What both feeds share: the epoch plan of this rank and its contiguous test shard."""

    def __init__(self, train, test, recipe: Recipe, d: Dist, norm: Normalizer):
        self.train, self.test, self.recipe, self.d, self.norm = train, test, recipe, d, norm
        self.n_train = len(train)
        self.steps_per_epoch = self.n_train // recipe.batch_size

    def plan(self, epoch: int) -> EpochPlan:
        return EpochPlan(self.n_train, self.recipe.batch_size, self.recipe.seed, epoch, self.d.rank, self.d.world)

    def test_shard(self) -> tuple[int, int]:
        n = len(self.test)
        return n * self.d.rank // self.d.world, n * (self.d.rank + 1) // self.d.world


class MemoryFeed(_Feed):
    """An in-memory dataset on the training device: gather, augment and normalize a batch at a time."""

    def batches(self, epoch: int, start_step: int):
        plan = self.plan(epoch)
        r = self.recipe
        for s in range(start_step, plan.steps):
            idx = plan.indices(s).to(self.train.x.device)
            x = crop_flip(self.train.x[idx], r.crop_pad, r.hflip, plan.generator(s), plan.local_slice(), plan.batch)
            yield s, self.norm(x), self.train.y[idx]

    def test_batches(self):
        lo, hi = self.test_shard()
        bs = self.recipe.eval_batch_size
        for i in range(lo, hi, bs):
            j = min(i + bs, hi)
            yield self.norm(self.test.x[i:j]), self.test.y[i:j]


class _SeededBatches:
    """Batch sampler of an ImageFolder epoch: rank-local ``(index, (step_seed, index))`` lists."""

    def __init__(self, plan: EpochPlan, start_step: int):
        self.plan, self.start = plan, start_step

    def __len__(self):
        return self.plan.steps - self.start

    def __iter__(self):
        for s in range(self.start, self.plan.steps):
            step_seed = derive_seed(self.plan.seed, self.plan.epoch, s, 2)
            yield [(int(i), (step_seed, int(i))) for i in self.plan.indices(s)]


class FolderFeed(_Feed):
    """ImageFolder train/val trees decoded in DataLoader workers; the same plan as MemoryFeed."""

    def __init__(self, train, test, recipe: Recipe, d: Dist, norm: Normalizer, workers: int):
        super().__init__(train, test, recipe, d, norm)
        self.workers = workers
        self.pin = d.device.type == "cuda"

    def _loader(self, ds, **kw):
        return torch.utils.data.DataLoader(ds, num_workers=self.workers, pin_memory=self.pin,
                                           persistent_workers=False, **kw)

    def batches(self, epoch: int, start_step: int):
        plan = self.plan(epoch)
        loader = self._loader(self.train, batch_sampler=_SeededBatches(plan, start_step))
        for s, (x, y) in zip(range(start_step, plan.steps), loader):
            yield s, self.norm(x.to(self.d.device, non_blocking=True)), y.to(self.d.device, non_blocking=True)

    def test_batches(self):
        sub = torch.utils.data.Subset(self.test, range(*self.test_shard()))
        for x, y in self._loader(sub, batch_size=self.recipe.eval_batch_size, shuffle=False):
            yield self.norm(x.to(self.d.device, non_blocking=True)), y.to(self.d.device, non_blocking=True)


def _limit(ds: ArrayDataset, n):
    if n is None or n >= len(ds):
        return ds
    return ArrayDataset(ds.x[:n], ds.y[:n], ds.num_classes, ds.mean, ds.std, ds.name)


def build_data(recipe: Recipe, args, d: Dist, channels_last: bool, dtype=torch.float32):
    """(feed, num_classes, in_channels, image_size)."""
    if recipe.dataset == "imagenet":
        if not args.data_dir:
            raise ValueError("--dataset imagenet needs --data-dir (the folder holding train/ and val/)")
        train = ImageFolderDataset(os.path.join(args.data_dir, "train"), True, recipe.image_size, recipe.test_resize,
                                   recipe.color_jitter)
        test = ImageFolderDataset(os.path.join(args.data_dir, "val"), False, recipe.image_size, recipe.test_resize)
        if train.classes != test.classes:
            raise ValueError(f"train/ has {len(train.classes)} classes and val/ {len(test.classes)}: they must match")
        for ds, lim in ((train, recipe.train_limit), (test, recipe.test_limit)):
            if lim is not None:
                ds.samples = ds.samples[:lim]
        norm = Normalizer(IMAGENET_MEAN, IMAGENET_STD, d.device, dtype, channels_last)
        workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
        return FolderFeed(train, test, recipe, d, norm, workers), train.num_classes, 3, recipe.image_size
    train, test = load_arrays(recipe.dataset, args.data_dir, args.train_file, args.test_file, args.download)
    train, test = _limit(train, recipe.train_limit), _limit(test, recipe.test_limit)
    norm = Normalizer(train.mean, train.std, d.device, dtype, channels_last)
    feed = MemoryFeed(train.to(d.device), test.to(d.device), recipe, d, norm)
    return feed, train.num_classes, train.channels, train.image_size


# --------------------------------------------------------------------------- model
def build_model(recipe: Recipe, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    import inspect
    spec = models.spec(recipe.model)
    kw = {"in_channels": in_channels}
    accepted = inspect.signature(spec.builder).parameters
    if "image_size" in accepted:
        kw["image_size"] = image_size
    if recipe.structure is not None:
        kw["structure"] = recipe.structure
    if recipe.act is not None:
        kw["act"] = recipe.act
    return models.create(recipe.model, num_classes=num_classes, **kw)


# --------------------------------------------------------------------------- checkpoint state
def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- output
def _write_metrics(path: str, history: list) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def _plot(path: str, history: list) -> None:
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


def _log(d: Dist, *msg):
    if d.main:
        print(*msg, flush=True)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, feed, num_classes: int, amp_ctx) -> dict:
    model.eval()
    dev = feed.d.device
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1, top5, n
    for x, y in feed.test_batches():
        with amp_ctx():
            out = model(x)
        out = out.float()
        sums[0] += F.cross_entropy(out, y, reduction="sum").double()
        top = out.topk(min(5, num_classes), 1).indices
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(1).sum()
        sums[3] += y.numel()
    _all_reduce(sums)
    n = max(float(sums[3]), 1.0)
    res = {"test_loss": float(sums[0]) / n, "test_top1": 100.0 * float(sums[1]) / n, "test_n": int(sums[3])}
    if num_classes > 10:
        res["test_top5"] = 100.0 * float(sums[2]) / n
    return res


@torch.no_grad()
def predict(model: nn.Module, feed) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x).argmax(1).cpu() for x, _ in feed.test_batches()])


def deploy_check(model: nn.Module, feed, d: Dist) -> dict | None:
    """Convert with irnet.deploy (when present) and compare predictions on this rank's test shard."""
    try:
        from . import deploy
    except ImportError as exc:
        _log(d, f"irnet.deploy is not available ({exc}); skipping the packed-model check")
        return None
    model = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    fmt = feed.norm.memory_format
    feed.norm.memory_format = torch.contiguous_format
    try:
        t0 = time.perf_counter()
        float_pred = predict(model, feed)
        t_float = time.perf_counter() - t0
        packed = deploy.convert(model)
        t0 = time.perf_counter()
        packed_pred = predict(packed, feed)
        t_packed = time.perf_counter() - t0
    finally:
        feed.norm.memory_format = fmt
    same = int((float_pred == packed_pred).sum())
    res = {"n": int(float_pred.numel()), "identical": same, "float_s": t_float, "packed_s": t_packed}
    counts = torch.tensor([res["n"], same], dtype=torch.float64, device=d.device)
    _all_reduce(counts)
    res["n"], res["identical"] = int(counts[0]), int(counts[1])
    return res


# --------------------------------------------------------------------------- the run
def _find_resume(args, recipe: Recipe) -> str | None:
    if args.resume is None:
        return None
    if args.resume != "auto":
        path = os.path.join(args.resume, "last.pt") if os.path.isdir(args.resume) else args.resume
        if not os.path.isfile(path):
            raise checkpoint.CheckpointError(f"--resume {args.resume}: no checkpoint at {path}")
        return path
    if args.out:
        path = os.path.join(args.out, "last.pt")
        return path if os.path.isfile(path) else None
    found = sorted(glob.glob(os.path.join("runs", f"{recipe.model}-{recipe.dataset}-*", "last.pt")),
                   key=os.path.getmtime)
    return found[-1] if found else None


def _check_ops(args, d: Dist) -> str:
    """A line saying which kernels run; error if fused was asked for and is not built."""
    if args.ops == "reference" or not _ext.LOADED:
        if args.ops == "fused":
            raise UsageError(f"--ops fused: the compiled extension irnet._C is not loaded ({_ext.ERROR}). Build it "
                               "with `pip install --no-build-isolation -e .` (or setup.py build_ext --inplace), "
                               "or pass --ops reference")
        return f"ops: reference (pure PyTorch; {_ext.ERROR or 'extension not loaded'})"
    dev = d.device.type
    fused = [o for o in TRAINING_OPS if ops.has_compiled_kernel(o, dev)]
    missing = [o for o in TRAINING_OPS if o not in fused]
    if not missing:
        return f"ops: fused ({', '.join(fused)} compiled for {dev})"
    line = (f"ops: fused where built -- compiled for {dev}: {', '.join(fused) or 'none'}; "
            f"reference fallback: {', '.join(missing)}")
    if args.ops == "fused":
        line += "  [--ops fused asked for, but these training ops have no compiled kernel yet]"
    return line


def train(args) -> dict:
    """Run training as parsed from the command line; returns the summary (rank 0: written to summary.json)."""
    d = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    recipe, origin = resolve_recipe(args)
    ops_line = _check_ops(args, d)

    resume_path = _find_resume(args, recipe)
    state = None
    if resume_path:
        # A model/dataset named by the preset, config or flags must be the checkpoint's; with
        # none named (just --resume PATH) the checkpoint says what is trained.
        state = checkpoint.load(resume_path, model_name=recipe.model)
        saved = dict(state["recipe"])
        if recipe.dataset is not None and saved.get("dataset") != recipe.dataset:
            raise checkpoint.CheckpointError(f"{resume_path} was trained on {saved.get('dataset')!r}, "
                                             f"this run uses {recipe.dataset!r}")
        explicit = {**(load_config(args.config) if args.config else {}), **_explicit(args)}
        explicit.pop("preset", None)
        changed = {k: (saved.get(k), v) for k, v in explicit.items() if saved.get(k) != v}
        recipe = Recipe(**{**saved, **explicit})
        origin = f"checkpoint {resume_path}" + (f" with changes {changed}" if changed else "")
        out = os.path.dirname(os.path.abspath(resume_path)) if not args.out else args.out
    else:
        out = args.out or os.path.join("runs", f"{recipe.model}-{recipe.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not recipe.model or not recipe.dataset:
        raise ValueError("say what to train: --preset NAME, or --model and --dataset (see --help)")
    recipe.validate()
    out = _broadcast_object(out, d)

    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed % (2 ** 32))
    random.seed(recipe.seed)

    dtype = getattr(torch, args.dtype)
    if args.amp and dtype != torch.float32:
        raise UsageError("--amp works on float32 weights; drop --dtype float64 or --amp")
    feed, num_classes, in_channels, image_size = build_data(recipe, args, d, args.channels_last, dtype)
    steps = feed.steps_per_epoch
    if steps < 1:
        raise ValueError(f"{feed.n_train} training samples make no full batch of {recipe.batch_size}")

    model = build_model(recipe, num_classes, in_channels, image_size).to(device=d.device, dtype=dtype)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_bn and d.enabled:
        model = convert_sync_bn(model, d.device)
    net = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    warmup_steps = int(round(recipe.warmup_epochs * steps))
    lr_fn = LRSchedule(recipe.lr_schedule, recipe.epochs, steps, recipe.lr_milestones, recipe.lr_gamma, warmup_steps,
                       recipe.warmup_lr / recipe.lr if recipe.lr else 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_fn)
    use_scaler = args.amp and d.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    amp_dtype = torch.float16 if d.device.type == "cuda" else torch.bfloat16

    def amp_ctx():
        return torch.autocast(d.device.type, dtype=amp_dtype) if args.amp else nullcontext()

    ede = EDESchedule(recipe.t_min, recipe.t_max, recipe.epochs)
    start_epoch, start_step, history = 0, 0, []
    best = {"top1": -1.0, "epoch": 0}
    accum = torch.zeros(3, dtype=torch.float64, device=d.device)  # loss sum, correct, seen (global at resume)
    if state is not None:
        checkpoint.check_model_state(model, state["model"], resume_path)
        if state.get("steps_per_epoch") != steps and state.get("step_in_epoch", 0):
            raise checkpoint.CheckpointError(
                f"{resume_path} stopped mid-epoch with {state.get('steps_per_epoch')} steps per epoch; this run has "
                f"{steps} (other data size or batch size): it cannot continue that epoch exactly")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.lr_lambdas[0] = lr_fn   # the schedule follows the (possibly changed) recipe
        scheduler.base_lrs = [recipe.lr for _ in optimizer.param_groups]
        for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
            g["lr"] = base * lr_fn(scheduler.last_epoch)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = int(state["epoch"]), int(state.get("step_in_epoch", 0))
        history, best = list(state.get("history", [])), dict(state.get("best", best))
        if d.main and start_step:
            accum += torch.tensor(state["accum"], dtype=torch.float64, device=d.device)
        if start_step and state.get("epoch_seed") != derive_seed(recipe.seed, start_epoch):
            raise checkpoint.CheckpointError(f"{resume_path}: the data order of epoch {start_epoch + 1} came from "
                                             f"another seed; resume with the checkpoint's --seed")
        _set_rng_state(state["rng"], d.device)

    ckpt_path, best_path = os.path.join(out, "last.pt"), os.path.join(out, "best.pt")
    metrics_path = os.path.join(out, "metrics.jsonl")
    if d.main:
        os.makedirs(out, exist_ok=True)   # only once data and model are ready: a failed start leaves nothing
        _write_metrics(metrics_path, history)
        n_params = sum(p.numel() for p in model.parameters())
        _log(d, f"irnet.train: {recipe.model} ({n_params / 1e6:.3f} M parameters, {len(binary_layers(model))} binary "
                f"layers) on {recipe.dataset} ({feed.n_train} train / {len(feed.test)} test images, "
                f"{num_classes} classes)")
        _log(d, f"recipe: {origin}")
        _log(d, "  " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(recipe).items()))
        _log(d, f"device: {d.device}" + (f" x {d.world} processes ({'nccl' if d.device.type == 'cuda' else 'gloo'})"
                                         if d.enabled else "") + f", threads {torch.get_num_threads()}"
             + (", amp " + str(amp_dtype).replace("torch.", "") if args.amp else "")
             + (", channels-last" if args.channels_last else "") + (", sync-bn" if args.sync_bn and d.enabled else ""))
        _log(d, ops_line)
        _log(d, f"output: {out}")
        if state is not None:
            _log(d, f"resuming from {resume_path}: epoch {start_epoch + 1}, step {start_step} of {steps}")
        elif args.resume == "auto":
            _log(d, "--resume auto: no checkpoint found, starting fresh")

    layers = binary_layers(model)

    def save(path, epoch, step_in_epoch, accum_global):
        if not d.main:
            return
        checkpoint.save({
            "model_name": recipe.model, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "ede": {"t_min": ede.t_min, "t_max": ede.t_max, "epochs": ede.epochs,
                    "k": float(layers[0].k) if layers else None, "t": float(layers[0].t) if layers else None},
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": epoch * steps + step_in_epoch,
            "steps_per_epoch": steps, "epoch_seed": derive_seed(recipe.seed, epoch),
            "accum": accum_global, "history": history, "best": best, "rng": _rng_state(d.device),
            "recipe": dataclasses.asdict(recipe), "num_classes": num_classes, "in_channels": in_channels,
            "world_size": d.world, "args": {k: v for k, v in vars(args).items() if k not in recipe_fields()},
        }, path)

    # first_bad = [first step with a non-finite loss, first step whose update left non-finite
    # weights] (int64 max: none), kept on the device so that no step waits for the GPU; read
    # (and, distributed, MIN-reduced) every `check_every` steps, before every checkpoint and at
    # the end of each epoch, so no checkpoint is ever written after the first bad step.
    big = torch.iinfo(torch.int64).max
    first_bad = torch.full((2,), big, dtype=torch.int64, device=d.device)
    check_every = 1 if d.device.type == "cpu" else 25
    params = [p for p in model.parameters()]

    def flag(i, finite, g):
        first_bad[i] = torch.where(finite, first_bad[i], torch.clamp(first_bad[i], max=g))

    def check_finite():
        import torch.distributed as dist
        v = first_bad.clone()
        if d.enabled:
            dist.all_reduce(v, op=dist.ReduceOp.MIN)
        bad_loss, bad_weights = v.tolist()
        if min(bad_loss, bad_weights) == big:
            return
        g = min(bad_loss, bad_weights)
        e, s = divmod(g, steps)
        what = ("the training loss became non-finite" if bad_loss <= bad_weights else
                "the weights became non-finite (the loss was finite: the update overflowed)")
        raise NonFiniteLoss(
            f"{what} at epoch {e + 1} of {recipe.epochs}, step {s + 1} of {steps} (global step {g}); the run "
            "stopped. The last good checkpoint"
            + (f" {ckpt_path} is left untouched" if os.path.exists(ckpt_path) else " (none was written yet)")
            + ". Try a lower --lr, or check the data.")

    from tqdm import tqdm
    t_run = time.perf_counter()
    for epoch in range(start_epoch, recipe.epochs):
        k, t = ede.at(epoch)
        set_ede(model, k, t)
        net.train()
        lr_epoch = optimizer.param_groups[0]["lr"]
        first_step = start_step if epoch == start_epoch else 0
        if epoch != start_epoch:
            accum.zero_()
        bar = tqdm(total=steps, initial=first_step, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="step",
                   disable=not d.main or args.no_progress, dynamic_ncols=True, leave=True, file=sys.stdout)
        t0, seen0 = time.perf_counter(), 0
        local = torch.zeros(3, dtype=torch.float64, device=d.device)
        for s, x, y in feed.batches(epoch, first_step):
            g = epoch * steps + s
            try:
                with amp_ctx():
                    out_logits = net(x)
                    logits = out_logits if out_logits.dtype in (torch.float32, torch.float64) else out_logits.float()
                    loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            except RuntimeError:
                check_finite()   # irnet's ops refuse non-finite weights: report the step that made them
                raise
            if args.debug_nan_at_step is not None and g == args.debug_nan_at_step:
                loss = loss * float("nan")
            lossd = loss.detach()
            flag(0, torch.isfinite(lossd), g)
            if (s + 1) % check_every == 0:
                check_finite()
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            flag(1, torch.isfinite(torch.stack(torch._foreach_norm(params, float("inf"))).max()), g)
            if (s + 1) % check_every == 0:
                check_finite()
            local += torch.stack([lossd.double() * y.numel(), (out_logits.detach().argmax(1) == y).sum().double(),
                                  torch.tensor(float(y.numel()), dtype=torch.float64, device=d.device)])
            seen0 += y.numel()
            if args.ckpt_every and (s + 1) % args.ckpt_every == 0 and s + 1 < steps:
                check_finite()
                total = _all_reduce(local.clone()) + accum
                save(ckpt_path, epoch, s + 1, total.tolist())
            if d.main and not args.no_progress and ((s + 1) % check_every == 0 or s + 1 == steps):
                v = (local + accum).tolist() if d.world == 1 else local.tolist()
                rate = seen0 * d.world / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"loss {v[0] / max(v[2], 1):.4f} acc {100 * v[1] / max(v[2], 1):.2f}% "
                                    f"{rate:.0f} img/s t {t:.3g} k {k:.3g}", refresh=False)
            bar.update(1)
        bar.close()
        check_finite()
        epoch_time = time.perf_counter() - t0
        total = (_all_reduce(local.clone()) + accum).tolist()
        ev = evaluate(model, feed, num_classes, amp_ctx)
        row = {"epoch": epoch + 1, "train_loss": total[0] / max(total[2], 1), "train_acc": 100 * total[1] / max(total[2], 1),
               **ev, "lr": lr_epoch, "k": k, "t": t,
               "images_per_s": seen0 * d.world / max(epoch_time, 1e-9), "epoch_time_s": epoch_time}
        history.append(row)
        is_best = row["test_top1"] > best["top1"]
        if is_best:
            best = {"top1": row["test_top1"], "epoch": epoch + 1, **({"top5": row["test_top5"]} if "test_top5" in row else {})}
        save(ckpt_path, epoch + 1, 0, [0.0, 0.0, 0.0])
        if is_best and d.main:
            save(best_path, epoch + 1, 0, [0.0, 0.0, 0.0])
        if d.main:
            _write_metrics(metrics_path, history)
            if not args.no_plots:
                _plot(os.path.join(out, "curves.png"), history)
            top5 = f", top-5 {row['test_top5']:.2f}%" if "test_top5" in row else ""
            _log(d, f"epoch {epoch + 1}/{recipe.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
                    f"test loss {row['test_loss']:.4f} top-1 {row['test_top1']:.2f}%{top5} | "
                    f"{row['images_per_s']:.0f} img/s, {epoch_time:.1f} s")

    summary = {"model": recipe.model, "dataset": recipe.dataset, "out": out, "epochs": recipe.epochs,
               "world_size": d.world, "device": str(d.device), "train_time_s": time.perf_counter() - t_run,
               "recipe": dataclasses.asdict(recipe)}
    if history:
        last = history[-1]
        summary.update(last_top1=last["test_top1"], best_top1=best["top1"], best_epoch=best["epoch"],
                       test_images=last["test_n"])
        if "test_top5" in last:
            summary.update(last_top5=last["test_top5"], best_top5=best.get("top5"))
    if d.enabled:
        import torch.distributed as dist
        prints = [None] * d.world
        dist.all_gather_object(prints, _fingerprint(model))
        summary["rank_fingerprints"] = prints
        summary["ranks_identical"] = len(set(prints)) == 1
        if not summary["ranks_identical"]:
            _log(d, "WARNING: the processes ended with different weights: " + ", ".join(prints))
    if not args.no_deploy_check and isinstance(feed, MemoryFeed) and dtype == torch.float32:
        res = deploy_check(model, feed, d)
        if res is not None:
            summary["deploy"] = res
    if d.main:
        if history:
            n = summary["test_images"]
            t5 = (f"; top-5 last {summary['last_top5']:.2f}%, best {summary['best_top5']:.2f}%"
                  if "last_top5" in summary else "")
            _log(d, f"test top-1 on the full test set ({n} images): last {summary['last_top1']:.2f}% "
                    f"(epoch {len(history)}), best {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}){t5}")
        if "deploy" in summary:
            r = summary["deploy"]
            verdict = "the same" if r["identical"] == r["n"] else "DIFFERENT"
            _log(d, f"packed model (irnet.deploy.convert): {r['identical']}/{r['n']} test predictions identical to the "
                    f"float model -> {verdict}; inference {r['float_s']:.2f} s float vs {r['packed_s']:.2f} s packed"
                    + (" (rank 0's shard timed)" if d.enabled else ""))
        if "ranks_identical" in summary:
            _log(d, f"weights identical on all {d.world} processes: {summary['ranks_identical']}")
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        _log(d, f"wrote {out}/: last.pt, best.pt, metrics.jsonl, summary.json" + ("" if args.no_plots else ", curves.png"))
    return summary


def _print_presets():
    for name, p in PRESETS.items():
        print(f"{name}: {p.description}" + (f" [paper: {p.paper}]" if p.paper else ""))
        print(f"    source: {p.source}")
        if p.assumed:
            print(f"    ASSUMED: {p.assumed}")
        print("    " + ", ".join(f"{k}={v}" for k, v in p.recipe.items()))


def main(argv=None, allow_reexec: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list_presets:
        _print_presets()
        return 0
    if args.ops == "reference" and _ext.LOADED:
        # irnet (and with it irnet._C) was imported before main() ran; the reference ops need a
        # process in which the extension never loaded, so start this command again without it.
        if not allow_reexec:
            raise SystemExit("--ops reference: set IRNET_DISABLE_EXTENSION=1 before importing irnet")
        env = dict(os.environ, IRNET_DISABLE_EXTENSION="1")
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "irnet.train", *argv], env)
    try:
        train(args)
    except NonFiniteLoss as exc:
        print(f"irnet.train: stopped: {exc}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    except (checkpoint.CheckpointError, UsageError, ValueError, OSError, ImportError) as exc:
        print(f"irnet.train: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(allow_reexec=True))
