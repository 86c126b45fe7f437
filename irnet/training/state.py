"""What a checkpoint holds and how a run continues from it: where the run's folder is, which
checkpoint ``--resume`` means, the RNG state, :class:`Progress` (where the run stands), the
restore of a run from a checkpoint (:func:`resume`) and the writing of one (:class:`Checkpointer`).

The format is :mod:`irnet.checkpoint`'s (tensors and plain values only, loaded with
``weights_only=True``); the keys are those :meth:`Checkpointer.save` writes."""
from __future__ import annotations

import dataclasses
import glob
import os
import random
import time
import typing

import numpy as np
import torch

from .. import checkpoint
from ..data import derive_seed
from ..recipes import Recipe, recipe_fields
from ..schedule import binary_layers
from .optim import follow_schedule

if typing.TYPE_CHECKING:
    from .prepare import Run


# --------------------------------------------------------------------------- where
def run_folder(args, recipe: Recipe, resume_path: str | None) -> str:
    """``--out``; else the resumed checkpoint's folder; else ``runs/<model>-<dataset>-<time>``."""
    if resume_path:
        return os.path.dirname(os.path.abspath(resume_path)) if not args.out else args.out
    return args.out or os.path.join("runs", f"{recipe.model}-{recipe.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


def find_resume(args, recipe: Recipe) -> str | None:
    """The checkpoint ``--resume`` names: a file, a run folder's last.pt, or for 'auto' the --out
    folder's last.pt, else the newest ``runs/<model>-<dataset>-*/last.pt`` (None: start fresh)."""
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


def load_for_resume(path: str, recipe: Recipe) -> dict:
    """The checkpoint at ``path``. A model/dataset named by the preset, config or flags must be
    the checkpoint's; with none named (just ``--resume PATH``) the checkpoint says what is trained."""
    state = checkpoint.load(path, model_name=recipe.model)
    saved = state["recipe"]
    if recipe.dataset is not None and saved.get("dataset") != recipe.dataset:
        raise checkpoint.CheckpointError(f"{path} was trained on {saved.get('dataset')!r}, "
                                         f"this run uses {recipe.dataset!r}")
    return state


# --------------------------------------------------------------------------- random state
def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


def rng_state(device: torch.device) -> dict:
    """torch (and CUDA), Python and NumPy generator states, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- progress
@dataclasses.dataclass
class Progress:
    """Where the run stands: the epoch and step it starts at, the metrics of the finished epochs,
    the best test top-1 so far, and ``accum``: [loss sum, correct, seen] of the steps of
    ``start_epoch`` before ``start_step`` (all ranks' sums, carried on rank 0; zero elsewhere)."""
    accum: torch.Tensor
    start_epoch: int = 0
    start_step: int = 0
    history: list = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {"top1": -1.0, "epoch": 0})


def resume(run: "Run") -> Progress:
    """Fresh progress, or the model, optimizer, schedule, scaler, RNG and progress of
    ``run.resumed`` (the checkpoint prepare() loaded), checked against this run first."""
    progress = Progress(accum=torch.zeros(3, dtype=torch.float64, device=run.dist.device))
    state, path, steps = run.resumed, run.resume_path, run.steps
    if state is None:
        return progress
    checkpoint.check_model_state(run.model, state["model"], path)
    if state.get("steps_per_epoch") != steps and state.get("step_in_epoch", 0):
        raise checkpoint.CheckpointError(
            f"{path} stopped mid-epoch with {state.get('steps_per_epoch')} steps per epoch; this run has "
            f"{steps} (other data size or batch size): it cannot continue that epoch exactly")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    follow_schedule(run.scheduler, run.optimizer, run.lr_schedule, run.recipe.lr)  # the recipe may have changed
    if run.precision.scaler is not None and state.get("scaler"):
        run.precision.scaler.load_state_dict(state["scaler"])
    progress.start_epoch, progress.start_step = int(state["epoch"]), int(state.get("step_in_epoch", 0))
    progress.history, progress.best = list(state.get("history", [])), dict(state.get("best", progress.best))
    if run.dist.main and progress.start_step:
        progress.accum += torch.tensor(state["accum"], dtype=torch.float64, device=run.dist.device)
    if progress.start_step and state.get("epoch_seed") != derive_seed(run.recipe.seed, progress.start_epoch):
        raise checkpoint.CheckpointError(f"{path}: the data order of epoch {progress.start_epoch + 1} came from "
                                         f"another seed; resume with the checkpoint's --seed")
    set_rng_state(state["rng"], run.dist.device)
    return progress


class Checkpointer:
    """Writes the run's checkpoints (rank 0 only; atomically, by :func:`irnet.checkpoint.save`)."""

    def __init__(self, run: "Run", progress: Progress):
        self.run, self.progress = run, progress
        self.layers = binary_layers(run.model)

    def save(self, path: str, epoch: int, step_in_epoch: int, accum: list) -> None:
        """The state after ``step_in_epoch`` steps of ``epoch`` (0-based; ``(e + 1, 0)``: after
        epoch ``e``); ``accum``: that epoch's [loss sum, correct, seen] so far, over all ranks."""
        run, layers = self.run, self.layers
        if not run.dist.main:
            return
        scaler, ede = run.precision.scaler, run.ede
        checkpoint.save({
            "model_name": run.recipe.model, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "ede": {"t_min": ede.t_min, "t_max": ede.t_max, "epochs": ede.epochs,
                    "k": float(layers[0].k) if layers else None, "t": float(layers[0].t) if layers else None},
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": epoch * run.steps + step_in_epoch,
            "steps_per_epoch": run.steps, "epoch_seed": derive_seed(run.recipe.seed, epoch),
            "accum": accum, "history": self.progress.history, "best": self.progress.best,
            "rng": rng_state(run.dist.device), "recipe": dataclasses.asdict(run.recipe),
            "num_classes": run.num_classes, "in_channels": run.in_channels, "world_size": run.dist.world,
            "args": {k: v for k, v in vars(run.args).items() if k not in recipe_fields()},
        }, path)
