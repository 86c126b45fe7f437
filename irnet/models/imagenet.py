"""ImageNet architectures of the paper: ResNet-18 and ResNet-34 (7x7 full-precision stem,
Bi-Real blocks by default, full-precision 1x1 strided conv + BN downsample)."""
from __future__ import annotations

import torch.nn as nn

from .blocks import ResNet, make_act


def _imagenet_stem(in_channels: int, act: str) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                         make_act(act), nn.MaxPool2d(3, stride=2, padding=1))


def _resnet(depths, num_classes, binary_act, structure, act, in_channels):
    return ResNet(_imagenet_stem(in_channels, act), 64, (64, 128, 256, 512), depths, (1, 2, 2, 2), num_classes,
                  structure=structure, act=act, shortcut="B", binary_act=binary_act)


def resnet18(num_classes=1000, *, binary_act=True, structure="bireal", act="hardtanh", in_channels=3):
    """ResNet-18, [2, 2, 2, 2] (~11.7 M parameters at 1000 classes)."""
    return _resnet((2, 2, 2, 2), num_classes, binary_act, structure, act, in_channels)


def resnet34(num_classes=1000, *, binary_act=True, structure="bireal", act="hardtanh", in_channels=3):
    """ResNet-34, [3, 4, 6, 3] (~21.8 M parameters at 1000 classes)."""
    return _resnet((3, 4, 6, 3), num_classes, binary_act, structure, act, in_channels)
