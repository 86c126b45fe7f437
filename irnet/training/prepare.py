"""Everything a run is built from, made once before its first step: :func:`prepare` turns the
parsed command line into a :class:`Run` (device and process group, recipe, the checkpoint to
resume from, data feed, model, optimizer, precision), failing early with a clear message."""
from __future__ import annotations

import dataclasses
import inspect
import os

import torch
import torch.nn as nn

from .. import _ext, models, ops
from ..recipes import Recipe
from ..schedule import EDESchedule
from .distributed import Dist, broadcast_object, convert_sync_bn, setup_distributed, wrap_ddp
from .errors import UsageError
from .feeds import build_data
from .optim import LRSchedule, Precision, build_optimizer
from .settings import resolve_recipe, resumed_recipe
from .state import find_resume, load_for_resume, run_folder, seed_everything

TRAINING_OPS = ("sign_ede", "sign_ede_backward", "libra_pb", "libra_pb_backward")


@dataclasses.dataclass
class Run:
    """A prepared run. ``model`` is the module whose weights are saved; ``net`` the one the
    training step calls (``model``, or DDP around it)."""
    args: object
    dist: Dist
    recipe: Recipe
    origin: str              # where the recipe came from (a line of the start log)
    ops_line: str            # which kernels run (a line of the start log)
    out: str                 # the output folder (the same on every rank)
    resume_path: str | None
    resumed: dict | None     # the checkpoint at resume_path, loaded
    dtype: torch.dtype
    feed: object             # feeds.MemoryFeed | feeds.FolderFeed
    num_classes: int
    in_channels: int
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    lr_schedule: LRSchedule
    precision: Precision
    ede: EDESchedule

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return self.feed.steps_per_epoch

    def path(self, name: str) -> str:
        """A file of the output folder: last.pt, best.pt, metrics.jsonl, curves.png, summary.json."""
        return os.path.join(self.out, name)


def prepare(args) -> Run:
    d = setup_distributed(args.device)
    configure_torch(args, d)
    recipe, origin = resolve_recipe(args)
    ops_line = describe_ops(args, d)

    resume_path = find_resume(args, recipe)
    resumed = None
    if resume_path:
        resumed = load_for_resume(resume_path, recipe)
        recipe, origin = resumed_recipe(args, dict(resumed["recipe"]), resume_path)
    out = run_folder(args, recipe, resume_path)
    if not recipe.model or not recipe.dataset:
        raise ValueError("say what to train: --preset NAME, or --model and --dataset (see --help)")
    recipe.validate()
    out = broadcast_object(out, d)
    seed_everything(recipe.seed)

    dtype = getattr(torch, args.dtype)
    if args.amp and dtype != torch.float32:
        raise UsageError("--amp works on float32 weights; drop --dtype float64 or --amp")
    feed, num_classes, in_channels, image_size = build_data(recipe, args, d, args.channels_last, dtype)
    if feed.steps_per_epoch < 1:
        raise ValueError(f"{feed.n_train} training samples make no full batch of {recipe.batch_size}")

    model = build_model(recipe, num_classes, in_channels, image_size).to(device=d.device, dtype=dtype)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_bn and d.enabled:
        model = convert_sync_bn(model, d.device)
    net = wrap_ddp(model, d)
    optimizer, scheduler, lr_schedule = build_optimizer(model, recipe, feed.steps_per_epoch)
    return Run(args=args, dist=d, recipe=recipe, origin=origin, ops_line=ops_line, out=out,
               resume_path=resume_path, resumed=resumed, dtype=dtype, feed=feed, num_classes=num_classes,
               in_channels=in_channels, model=model, net=net, optimizer=optimizer,
               scheduler=scheduler, lr_schedule=lr_schedule, precision=Precision(args.amp, d.device),
               ede=EDESchedule(recipe.t_min, recipe.t_max, recipe.epochs))


def configure_torch(args, d: Dist) -> None:
    """``--threads``, ``--deterministic`` (else cuDNN autotuning on CUDA)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def describe_ops(args, d: Dist) -> str:
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


def build_model(recipe: Recipe, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """The zoo model of the recipe, for this dataset's classes, channels and image size."""
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

