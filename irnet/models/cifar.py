"""CIFAR-10 architectures of the paper: ResNet-20, ResNet-18 (CIFAR variant), VGG-Small."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..nn import IRConv2d
from .blocks import ResNet, init_weights, make_act


def _cifar_stem(in_channels: int, width: int, act: str) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), make_act(act))


def resnet20(num_classes=10, *, binary_act=True, structure="bireal", act="hardtanh", in_channels=3):
    """ResNet-20: widths 16/32/64, [3, 3, 3] blocks, option-A shortcut (~0.27 M parameters)."""
    return ResNet(_cifar_stem(in_channels, 16, act), 16, (16, 32, 64), (3, 3, 3), (1, 2, 2), num_classes,
                  structure=structure, act=act, shortcut="A", binary_act=binary_act)


def resnet18_cifar(num_classes=10, *, binary_act=True, structure="bireal", act="hardtanh", in_channels=3):
    """CIFAR ResNet-18: 64..512, [2, 2, 2, 2], full-precision 1x1 conv + BN downsample (~11.2 M)."""
    return ResNet(_cifar_stem(in_channels, 64, act), 64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2),
                  num_classes, structure=structure, act=act, shortcut="B", binary_act=binary_act)


class VGGSmall(nn.Module):
    """conv(3->128) fp, then binary 128-128 (pool), 128-256, 256-256 (pool), 256-512,
    512-512 (pool); each conv -> (pool) -> BN -> hardtanh; fp linear 512*4*4 -> classes."""

    CFG = ((128, True), (256, False), (256, True), (512, False), (512, True))

    def __init__(self, num_classes=10, *, binary_act=True, act="hardtanh", in_channels=3, image_size=32):
        super().__init__()
        layers = [nn.Conv2d(in_channels, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), make_act(act)]
        c = 128
        for width, pool in self.CFG:
            layers.append(IRConv2d(c, width, 3, padding=1, binary_act=binary_act))
            if pool:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(width), make_act(act)]
            c = width
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        self.fc = nn.Linear(c * side * side, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def vgg_small(num_classes=10, *, binary_act=True, act="hardtanh", in_channels=3, image_size=32):
    return VGGSmall(num_classes, binary_act=binary_act, act=act, in_channels=in_channels, image_size=image_size)
