"""IR-Net binary layers: ``IRConv2d`` and ``IRLinear``.

Forward (training and eval): ``y = conv2d(sign(x), libra_pb(w), ...)`` with zero
padding (``x`` is not binarized when ``binary_act=False``, the 1w32a setting).  The
EDE parameters ``k`` and ``t`` are registered buffers: they follow ``.to()``, DDP and
``state_dict``, and are set for a whole model by :func:`irnet.set_ede`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops

__all__ = ["IRConv2d", "IRLinear", "BinaryLayer"]

# The original IR-Net code starts from t = 0.1, k = 10 (= max(1/t, 1)).
_T0 = 0.1
_K0 = 10.0


def _autocast_on(x: torch.Tensor) -> bool:
    """Under autocast, activations may be bf16/fp16 while the weight stays fp32 (F.conv2d
    casts both; sign and Libra-PB values are exact in either)."""
    return torch.is_autocast_enabled(x.device.type)


class BinaryLayer:
    """Mixin of every IR-Net binary layer: k/t buffers and the binarizers."""

    binary_act: bool

    def _init_ede(self, binary_act: bool):
        self.binary_act = bool(binary_act)
        self.register_buffer("k", torch.tensor(_K0))
        self.register_buffer("t", torch.tensor(_T0))

    def set_ede(self, k: float, t: float) -> None:
        self.k.fill_(float(k))
        self.t.fill_(float(t))

    def binary_weight(self) -> torch.Tensor:
        """Libra-PB binarized weight sign(v) * 2**round(log2 mean|v|)."""
        return ops.libra_pb(self.weight, self.k, self.t)

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        return ops.sign_ede(x, self.k, self.t) if self.binary_act else x

    def _check_input(self, x: torch.Tensor, dims: int, channels: int, what: str):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != dims:
            raise ValueError(f"{type(self).__name__}: expected a {dims}-d input, got shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"{type(self).__name__}: expected {channels} input {what}, got {x.shape[1]} (input shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__}: expected a floating-point input, got {x.dtype}")
        if x.device != self.weight.device or (x.dtype != self.weight.dtype and not _autocast_on(x)):
            raise TypeError(f"{type(self).__name__}: input is {x.dtype} on {x.device} but the layer is "
                            f"{self.weight.dtype} on {self.weight.device}")


class IRConv2d(BinaryLayer, nn.Conv2d):
    """Binary conv2d with Libra-PB weights and EDE (1w1a, or 1w32a with binary_act=False)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=False, binary_act=True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=bias)
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("IRConv2d supports groups=1 and zero padding only")
        self._init_ede(binary_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, 4, self.in_channels, "channels")
        return F.conv2d(self.binary_input(x), self.binary_weight(), self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binary_act={self.binary_act}"


class IRLinear(BinaryLayer, nn.Linear):
    """Binary linear layer with Libra-PB weights and EDE."""

    def __init__(self, in_features, out_features, bias=False, binary_act=True):
        super().__init__(in_features, out_features, bias=bias)
        self._init_ede(binary_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, 2, self.in_features, "features")
        return F.linear(self.binary_input(x), self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binary_act={self.binary_act}"


def plain_layer(layer: "IRConv2d | IRLinear", weight: torch.Tensor) -> nn.Module:
    """An ordinary ``nn.Conv2d`` / ``nn.Linear`` of ``layer``'s shape and bias holding
    ``weight``, on ``weight``'s device and dtype (the 1w32a layers of a packed model, and
    the float twin's layers)."""
    if isinstance(layer, IRConv2d):
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, bias=layer.bias is not None)
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def replace_layers(module: nn.Module, replacement) -> None:
    """In place, through the whole tree: each child for which ``replacement(child)`` returns
    another module is replaced by it (and not descended into)."""
    for name, child in module.named_children():
        new = replacement(child)
        if new is not child:
            setattr(module, name, new)
        else:
            replace_layers(child, replacement)
