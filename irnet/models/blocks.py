"""Building blocks shared by the zoo: the two residual structures of the paper.

* ``normal``: the standard basic block, ``act(bn2(conv2(act(bn1(conv1(x))))) + sc(x))``.
* ``bireal``: every binary conv has its own shortcut (Bi-Real), so the real-valued
  signal survives each binarization: ``h = act(bn1(conv1(x)) + sc(x))``,
  ``out = act(bn2(conv2(h)) + h)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import IRConv2d

STRUCTURES = ("normal", "bireal")
ACTIVATIONS = {"hardtanh": nn.Hardtanh, "relu": nn.ReLU, "identity": nn.Identity}


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class OptionAShortcut(nn.Module):
    """CIFAR ResNet option A: stride-2 subsample plus zero channel padding (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = planes - in_planes
        if self.extra < 0:
            raise ValueError("option-A shortcut cannot reduce channels")

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            half = self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra - half))
        return x


def make_shortcut(kind: str, in_planes: int, planes: int, stride: int) -> nn.Module:
    """'A': parameter-free (CIFAR ResNet-20); 'B': full-precision 1x1 strided conv + BN."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "A":
        return OptionAShortcut(in_planes, planes, stride)
    if kind == "B":
        return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    raise ValueError(f"unknown shortcut kind {kind!r}")


class BasicBlock(nn.Module):
    """Two binary 3x3 convs in the 'normal' or 'bireal' structure."""

    def __init__(self, in_planes, planes, stride=1, *, structure="bireal", act="hardtanh",
                 shortcut="A", binary_act=True):
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"unknown structure {structure!r}; expected one of {STRUCTURES}")
        self.structure = structure
        self.conv1 = IRConv2d(in_planes, planes, 3, stride=stride, padding=1, binary_act=binary_act)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_act(act)
        self.conv2 = IRConv2d(planes, planes, 3, stride=1, padding=1, binary_act=binary_act)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_act(act)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)

    def forward(self, x):
        if self.structure == "bireal":
            h = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
            return self.act2(self.bn2(self.conv2(h)) + h)
        h = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(h)) + self.shortcut(x))


def init_weights(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class ResNet(nn.Module):
    """A ResNet of BasicBlocks: a full-precision stem, binary stages, a full-precision fc."""

    def __init__(self, stem: nn.Module, stem_channels: int, widths, depths, strides, num_classes,
                 *, structure, act, shortcut, binary_act):
        super().__init__()
        self.stem = stem
        layers, in_planes = [], stem_channels
        for width, depth, stride in zip(widths, depths, strides):
            blocks = []
            for i in range(depth):
                blocks.append(BasicBlock(in_planes, width, stride if i == 0 else 1, structure=structure, act=act,
                                         shortcut=shortcut, binary_act=binary_act))
                in_planes = width
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))
