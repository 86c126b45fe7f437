"""The data feeds of a run: batches of this rank's slice of every global batch, already on the
training device and normalized, in an order that is a pure function of (seed, epoch, step), so
that a run resumed mid-epoch sees exactly the batches it would have seen (:class:`irnet.data.EpochPlan`).

* :class:`MemoryFeed`: the in-memory datasets (cifar, npz, builtin), augmented on the device;
* :class:`FolderFeed`: ImageFolder trees (imagenet), decoded in DataLoader workers.
"""
from __future__ import annotations

import os

import torch

from ..data import (ArrayDataset, EpochPlan, ImageFolderDataset, IMAGENET_MEAN, IMAGENET_STD, Normalizer, crop_flip,
                    derive_seed, load_arrays)
from ..recipes import Recipe
from .distributed import Dist


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
        """``(step, x, y)`` of this rank for the steps ``start_step ..`` of ``epoch``."""
        plan = self.plan(epoch)
        r = self.recipe
        for s in range(start_step, plan.steps):
            idx = plan.indices(s).to(self.train.x.device)
            x = crop_flip(self.train.x[idx], r.crop_pad, r.hflip, plan.generator(s), plan.local_slice(), plan.batch)
            yield s, self.norm(x), self.train.y[idx]

    def test_batches(self):
        """``(x, y)`` of this rank's test shard, in order."""
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
