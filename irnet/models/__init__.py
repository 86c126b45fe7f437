"""The IR-Net model zoo (DESIGN.md section 2), one registry.

    >>> import irnet
    >>> irnet.models.names()
    >>> model = irnet.models.create("resnet20_1w1a")                    # Bi-Real structure
    >>> model = irnet.models.create("resnet20_1w1a", structure="normal")
    >>> model = irnet.models.create("resnet18_1w1a", num_classes=100)
    >>> baseline = irnet.models.float_twin(model)  # the same net as a plain float32 model

First conv and last linear stay full precision; every other conv is an
:class:`irnet.nn.IRConv2d`.  ``1w1a`` binarizes weights and activations, ``1w32a``
weights only.  Keywords: ``structure`` ("bireal" / "normal"), ``act`` ("hardtanh" /
"relu"), ``in_channels`` (e.g. 1 for MNIST).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from . import cifar, imagenet
from .twin import float_twin

__all__ = ["create", "names", "spec", "ModelSpec", "float_twin"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    dataset: str          # "cifar" or "imagenet": what the architecture was designed for
    num_classes: int      # default
    binary_act: bool      # 1w1a (True) or 1w32a (False)
    defaults: dict        # default keywords (structure, act)
    params_m: float       # reference parameter count (DESIGN.md section 2), millions


_REGISTRY: dict[str, ModelSpec] = {}


def _register(name, builder, dataset, num_classes, binary_act, params_m, **defaults):
    _REGISTRY[name] = ModelSpec(name, builder, dataset, num_classes, binary_act, defaults, params_m)


# ResNet-20 (CIFAR): 1w1a in the Bi-Real structure with hardtanh; 1w32a the standard block with ReLU.
_register("resnet20_1w1a", cifar.resnet20, "cifar", 10, True, 0.27, structure="bireal", act="hardtanh")
_register("resnet20_1w32a", cifar.resnet20, "cifar", 10, False, 0.27, structure="normal", act="relu")
_register("resnet18_cifar_1w1a", cifar.resnet18_cifar, "cifar", 10, True, 11.2, structure="bireal", act="hardtanh")
_register("resnet18_cifar_1w32a", cifar.resnet18_cifar, "cifar", 10, False, 11.2, structure="bireal", act="hardtanh")
_register("vgg_small_1w1a", cifar.vgg_small, "cifar", 10, True, 4.66)
_register("vgg_small_1w32a", cifar.vgg_small, "cifar", 10, False, 4.66)
_register("resnet18_1w1a", imagenet.resnet18, "imagenet", 1000, True, 11.7, structure="bireal", act="hardtanh")
_register("resnet18_1w32a", imagenet.resnet18, "imagenet", 1000, False, 11.7, structure="bireal", act="hardtanh")
_register("resnet34_1w1a", imagenet.resnet34, "imagenet", 1000, True, 21.8, structure="bireal", act="hardtanh")
_register("resnet34_1w32a", imagenet.resnet34, "imagenet", 1000, False, 21.8, structure="bireal", act="hardtanh")


def names() -> list[str]:
    """Every model name the zoo knows."""
    return sorted(_REGISTRY)


def spec(name: str) -> ModelSpec:
    """The registry entry of a model (dataset family, default classes, 1w1a or 1w32a)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; irnet.models.names() lists: {', '.join(names())}")
    return _REGISTRY[name]


def create(name: str, num_classes: int | None = None, **kw) -> nn.Module:
    """Build a zoo model.  ``num_classes`` defaults to 10 (CIFAR) or 1000 (ImageNet)."""
    s = spec(name)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    options = dict(s.defaults)
    options.update(kw)
    if s.builder is cifar.vgg_small and ("structure" in kw):
        raise ValueError("VGG-Small has no residual structure; 'structure' does not apply")
    model = s.builder(num_classes=num_classes or s.num_classes, binary_act=s.binary_act, **options)
    model.irnet_name = name                                           # what create() was asked for, so that
    model.irnet_kwargs = {"num_classes": num_classes or s.num_classes, **options}   # a saved model can be rebuilt
    return model
