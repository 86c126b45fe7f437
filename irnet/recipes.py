"""Training recipes: one preset per row of the IR-Net paper's tables, plus a demo.

A :class:`Recipe` holds every setting of a run; each field is also a flag of
``python -m irnet.train`` (``lr_milestones`` -> ``--lr-milestones``), and a ``--config``
file (JSON or TOML) holds the same names.  Precedence: preset < config file < flags.

Sources
-------
CIFAR-10 rows: the paper's released code (github.com/htqin/IR-Net, ``CIFAR-10/ResNet20/
1w1a/trainer.py``, ``1w32a/trainer.py``, ``VGG-Small/main.py``): SGD momentum 0.9, weight
decay 1e-4, batch 128, cosine annealing to 0 stepped per epoch, random crop 32 pad 4 +
horizontal flip, ImageNet mean/std normalization, last partial batch dropped;
ResNet-20: lr 0.1, 400 epochs, T_min 1e-3 (1w1a) / 0.1 (1w32a), T_max 10; VGG-Small: lr
0.007, 300 epochs, T_min 0.1, T_max 10.  The released code has no CIFAR ResNet-18 trainer:
that preset is ASSUMED (see its ``assumed`` field).

ImageNet rows: the released ``ImageNet/ResNet18/1w1a/config.yaml`` (same for 1w32a and
ResNet-34 1w32a): 64 images per GPU on the paper's 32 GPUs (global batch 2048), SGD
momentum 0.9, Nesterov, weight decay 1e-4, base lr 0.2 warmed up linearly to 0.8 over 2500
iterations, then x0.1 at iterations 18750 / 37500 / 56250, 62500 iterations in all; train
crop 224, test resize 256, colour jitter (0.2, 0.2, 0.2, 0.1).  irnet expresses this in
epochs of ImageNet-1k (1,281,167 images, 625 steps of 2048): warm-up 4 epochs (2500
steps), milestones 30 / 60 / 90, 100 epochs (62,500 steps).  ASSUMED there: the random-
resized-crop scale (0.08-1, torchvision's default), the EDE range T_min 0.1 / T_max 10
(the paper's default; the released ImageNet code does not show its schedule), and
per-rank BatchNorm statistics (the config's ``bn_group_size: 1``); the 1w1a config lists
weight decay 1e-5 inside the optimizer kwargs but 1e-4 at the top level -- irnet uses 1e-4.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["Recipe", "Preset", "PRESETS", "preset", "preset_for", "load_config", "recipe_fields"]


@dataclass
class Recipe:
    """Every setting of a training run (defaults: DESIGN.md section 3, the CIFAR recipe)."""

    model: Optional[str] = None
    dataset: Optional[str] = None
    epochs: int = 400
    batch_size: int = 128              # GLOBAL batch: split evenly over the processes of a distributed run
    lr: float = 0.1                    # peak learning rate (after any warm-up)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    lr_schedule: str = "cosine"        # "cosine" (to 0, per epoch, as the paper's code) or "step"
    lr_milestones: list = field(default_factory=list)   # epochs where a "step" schedule multiplies lr by lr_gamma
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0         # linear warm-up (per step) from warmup_lr to lr
    warmup_lr: float = 0.0
    t_min: float = 0.1                 # EDE: t = t_min * (t_max / t_min) ** (epoch / epochs), k = max(1/t, 1)
    t_max: float = 10.0
    label_smoothing: float = 0.0
    crop_pad: int = 4                  # in-memory datasets: random crop with this zero padding (0: none)
    hflip: bool = True                 # in-memory datasets: random horizontal flip
    image_size: int = 224              # imagenet: train crop / test centre crop
    test_resize: int = 256             # imagenet: short side before the test centre crop
    color_jitter: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # imagenet: brightness, contrast, saturation, hue
    structure: Optional[str] = None    # "bireal" / "normal" (default: the zoo's)
    act: Optional[str] = None          # "hardtanh" / "relu" (default: the zoo's)
    train_limit: Optional[int] = None  # use only the first N training samples (quick runs)
    test_limit: Optional[int] = None   # evaluate on the first N test samples only (default: the full test set)
    eval_batch_size: int = 500
    seed: int = 0                      # model init, data order and augmentation

    def validate(self) -> "Recipe":
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr_schedule not in ("cosine", "step"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'step', got {self.lr_schedule!r}")
        if not (self.t_min > 0 and self.t_max > 0):
            raise ValueError(f"t_min and t_max must be > 0, got {self.t_min}, {self.t_max}")
        if len(self.color_jitter) != 4:
            raise ValueError(f"color_jitter takes 4 numbers (brightness, contrast, saturation, hue), got {self.color_jitter}")
        if self.crop_pad < 0:
            raise ValueError(f"crop_pad must be >= 0, got {self.crop_pad}")
        return self


def recipe_fields() -> dict:
    return {f.name: f for f in dataclasses.fields(Recipe)}


@dataclass(frozen=True)
class Preset:
    name: str
    recipe: dict                 # the Recipe fields this preset sets
    description: str
    paper: str                   # the paper's figure for this row ("" for non-paper presets)
    source: str
    assumed: str = ""            # what is not from the paper/its code


_CIFAR = dict(dataset="cifar10", batch_size=128, momentum=0.9, weight_decay=1e-4, lr_schedule="cosine",
              t_max=10.0, crop_pad=4, hflip=True)
_CIFAR_SRC = "IR-Net released code, CIFAR-10 trainer (see irnet/recipes.py)"
_IMAGENET = dict(dataset="imagenet", batch_size=2048, lr=0.8, momentum=0.9, weight_decay=1e-4, nesterov=True,
                 lr_schedule="step", lr_milestones=[30, 60, 90], lr_gamma=0.1, warmup_epochs=4.0, warmup_lr=0.2,
                 epochs=100, t_min=0.1, t_max=10.0, image_size=224, test_resize=256,
                 color_jitter=[0.2, 0.2, 0.2, 0.1])
_IMAGENET_SRC = "IR-Net released ImageNet config.yaml (64/GPU x 32 GPUs, warm-up 0.2->0.8, steps x0.1)"
_IMAGENET_ASSUMED = ("EDE T_min 0.1 / T_max 10 (paper default; not in the released ImageNet code); "
                     "random-resized-crop scale 0.08-1; schedule converted from iterations to epochs of "
                     "ImageNet-1k; global batch 2048 assumes 32 processes x 64 (scale lr with the batch)")

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("cifar10_resnet20_1w1a", dict(_CIFAR, model="resnet20_1w1a", lr=0.1, epochs=400, t_min=1e-3),
           "CIFAR-10 ResNet-20 1w1a (Bi-Real structure)", "86.5", _CIFAR_SRC),
    Preset("cifar10_resnet20_1w32a", dict(_CIFAR, model="resnet20_1w32a", lr=0.1, epochs=400, t_min=0.1),
           "CIFAR-10 ResNet-20 1w32a", "90.8", _CIFAR_SRC),
    Preset("cifar10_vgg_small_1w1a", dict(_CIFAR, model="vgg_small_1w1a", lr=0.007, epochs=300, t_min=0.1),
           "CIFAR-10 VGG-Small 1w1a", "90.4", _CIFAR_SRC),
    Preset("cifar10_resnet18_1w1a", dict(_CIFAR, model="resnet18_cifar_1w1a", lr=0.1, epochs=400, t_min=0.1),
           "CIFAR-10 ResNet-18 1w1a", "91.5", "DESIGN.md section 3 defaults",
           assumed="the whole recipe: the released code has no CIFAR ResNet-18 trainer; lr 0.1, 400 epochs, "
                   "T_min 0.1 follow the ResNet-20 recipe and the paper's default EDE range"),
    Preset("imagenet_resnet18_1w1a", dict(_IMAGENET, model="resnet18_1w1a"),
           "ImageNet ResNet-18 1w1a", "58.1 / 80.0", _IMAGENET_SRC, _IMAGENET_ASSUMED),
    Preset("imagenet_resnet18_1w32a", dict(_IMAGENET, model="resnet18_1w32a"),
           "ImageNet ResNet-18 1w32a", "66.5 / 86.8", _IMAGENET_SRC, _IMAGENET_ASSUMED),
    Preset("imagenet_resnet34_1w1a", dict(_IMAGENET, model="resnet34_1w1a"),
           "ImageNet ResNet-34 1w1a", "62.9 / 84.1", _IMAGENET_SRC + " (ResNet-34 1w1a config not released: "
           "the ResNet-18/34 1w32a configs are identical, so the same is used)", _IMAGENET_ASSUMED),
    Preset("imagenet_resnet34_1w32a", dict(_IMAGENET, model="resnet34_1w32a"),
           "ImageNet ResNet-34 1w32a", "70.4 / 89.5", _IMAGENET_SRC, _IMAGENET_ASSUMED),
    # A few minutes on 2 CPU cores: ResNet-20 1w1a (1 input channel) on the built-in MNIST subset.
    # Not a paper row: crop pad 2 and no flip (digits are not mirror-symmetric).
    Preset("demo", dict(model="resnet20_1w1a", dataset="builtin", epochs=3, batch_size=32, lr=0.1,
                        lr_schedule="cosine", t_min=0.1, t_max=10.0, crop_pad=2, hflip=False, train_limit=8192),
           "demo: ResNet-20 1w1a on irnet's built-in MNIST subset, ~1.5 minutes on 2 idle CPU cores", "",
           "irnet's own choice for a quick demonstration"),
]}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_for(model: Optional[str], dataset: Optional[str]) -> Optional[Preset]:
    """The paper's preset for exactly this model and dataset, if there is one."""
    for p in PRESETS.values():
        if p.name != "demo" and p.recipe.get("model") == model and p.recipe.get("dataset") == dataset:
            return p
    return None


def load_config(path: str) -> dict:
    """A JSON (``.json``) or TOML (anything else) file of Recipe fields; unknown keys are errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
        else:
            try:
                import tomllib
            except ImportError as exc:  # Python < 3.11
                raise ValueError(f"{path}: TOML needs Python >= 3.11 (tomllib); use a .json config") from exc
            data = tomllib.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ValueError(f"cannot parse config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a table/object of settings, got {type(data).__name__}")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(recipe_fields()) - {"preset"})
    if unknown:
        raise ValueError(f"config {path}: unknown settings {unknown}; known: {sorted(recipe_fields())}")
    return data
