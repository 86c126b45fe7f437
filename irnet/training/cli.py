"""The command line of ``python -m irnet.train``: the parser (run options, and one flag per
recipe setting), ``--list-presets``, and :func:`main`, which maps how a run ends to an exit code."""
from __future__ import annotations

import argparse
import os
import sys
import typing

from .. import _ext, checkpoint, models
from ..data import DATASETS
from ..recipes import PRESETS, Recipe, recipe_fields
from .distributed import teardown_distributed
from .errors import EXIT_ERROR, EXIT_NONFINITE, NonFiniteLoss, UsageError
from .loop import train

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


def print_presets() -> None:
    for name, p in PRESETS.items():
        print(f"{name}: {p.description}" + (f" [paper: {p.paper}]" if p.paper else ""))
        print(f"    source: {p.source}")
        if p.assumed:
            print(f"    ASSUMED: {p.assumed}")
        print("    " + ", ".join(f"{k}={v}" for k, v in p.recipe.items()))


def main(argv=None, allow_reexec: bool = False) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and train; 0, or EXIT_ERROR / EXIT_NONFINITE with
    the reason on stderr.  ``allow_reexec``: ``--ops reference`` may restart this command
    without the compiled extension (``python -m irnet.train`` allows it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print_presets()
        return 0
    if args.ops == "reference" and _ext.LOADED:
        # irnet (and with it irnet._C) was imported before main() ran; the reference ops need a
        # process in which the extension never loaded, so start this command again without it.
        if not allow_reexec:
            raise SystemExit("--ops reference: set IRNET_DISABLE_EXTENSION=1 before importing irnet")
        env = dict(os.environ, IRNET_DISABLE_EXTENSION="1")
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "irnet.train", *argv], env)
    finished = False
    try:
        train(args)
        finished = True
    except NonFiniteLoss as exc:
        print(f"irnet.train: stopped: {exc}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    except (checkpoint.CheckpointError, UsageError, ValueError, OSError, ImportError) as exc:
        print(f"irnet.train: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    finally:
        teardown_distributed(finished)
    return 0
