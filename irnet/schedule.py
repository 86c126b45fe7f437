"""The EDE schedule (DESIGN.md section 1) and the one call that applies it."""
from __future__ import annotations

import math

import torch.nn as nn

from .nn import BinaryLayer

__all__ = ["EDESchedule", "set_ede", "binary_layers"]


class EDESchedule:
    """Epoch e of E (e = 0..E-1): t = T_min * (T_max / T_min) ** (e / E), k = max(1/t, 1).

    Paper defaults T_min = 0.1, T_max = 10; the ResNet-20 1w1a recipe used T_min = 1e-3."""

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0, epochs: int = 1):
        if not (t_min > 0 and t_max > 0 and math.isfinite(t_min) and math.isfinite(t_max)):
            raise ValueError(f"EDESchedule: t_min and t_max must be finite and > 0, got {t_min}, {t_max}")
        if int(epochs) < 1:
            raise ValueError(f"EDESchedule: epochs must be >= 1, got {epochs}")
        self.t_min, self.t_max, self.epochs = float(t_min), float(t_max), int(epochs)

    def at(self, epoch: int):
        """(k, t) for the given epoch."""
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"EDESchedule: epoch must be in [0, {self.epochs}), got {epoch}")
        t = self.t_min * (self.t_max / self.t_min) ** (epoch / self.epochs)
        return max(1.0 / t, 1.0), t

    def __repr__(self):
        return f"EDESchedule(t_min={self.t_min}, t_max={self.t_max}, epochs={self.epochs})"


def binary_layers(model: nn.Module):
    """Every IR-Net binary layer of a model (IRConv2d, IRLinear, ...)."""
    return [m for m in model.modules() if isinstance(m, BinaryLayer)]


def set_ede(model: nn.Module, k: float, t: float) -> int:
    """Set k and t of every binary layer of ``model``; returns how many were set."""
    layers = binary_layers(model)
    for layer in layers:
        layer.set_ede(k, t)
    return len(layers)
