"""Turn a trained IR-Net model into a bit-packed inference model.

``convert(model)`` returns a copy of ``model`` (in eval mode) in which

* every 1w1a layer (``IRConv2d`` / ``IRLinear`` with ``binary_act=True``) becomes a
  :class:`PackedConv2d` / :class:`PackedLinear`: the Libra-PB weight is packed once
  (one bit per weight, ``sign(v)``) with its power-of-two scale ``s_o``, and the forward
  is ``s_o * (K - 2 popcount(pack(x) XOR w))`` by the XNOR-popcount kernels;
* every 1w32a layer (``binary_act=False``; its input is real-valued, so there is no
  XNOR to do) becomes a plain conv/linear holding the fixed binarized weight
  ``sign(v) * s_o``.

Because ``s_o`` is a power of two and the dot an integer, the packed layers give the
float layers' outputs bit for bit, so the converted model predicts exactly what the
trained one does in eval mode.  The packed weight takes 1/32 of the float32 memory.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from . import ops
from .nn import IRConv2d, IRLinear

__all__ = ["convert", "PackedConv2d", "PackedLinear", "packed_layers", "model_bytes"]


class PackedConv2d(nn.Module):
    """Inference-only binary conv: y = conv2d(sign(x), s * sign(v)) by XNOR-popcount."""

    def __init__(self, bits: torch.Tensor, scale: torch.Tensor, weight_shape, stride, padding, dilation, bias=None):
        super().__init__()
        self.register_buffer("bits", bits)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)

    @classmethod
    def from_layer(cls, layer: IRConv2d) -> "PackedConv2d":
        pw = ops.libra_pb_pack(layer.weight)
        return cls(pw.bits, pw.scale, layer.weight.shape, layer.stride, layer.padding, layer.dilation, layer.bias)

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PackedConv2d: expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        y = torch.ops.irnet.xnor_conv2d(torch.ops.irnet.pack_bits(x), self.bits, self.scale.float(), self.in_channels,
                                        self.stride, self.padding, self.dilation, ops.wants_channels_last(x))
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return (f"weight_shape={self.weight_shape}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, packed_bytes={self.bits.numel() * 8}")


class PackedLinear(nn.Module):
    """Inference-only binary linear: y = linear(sign(x), s * sign(v)) by XNOR-popcount."""

    def __init__(self, bits: torch.Tensor, scale: torch.Tensor, weight_shape, bias=None):
        super().__init__()
        self.register_buffer("bits", bits)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.weight_shape = tuple(int(s) for s in weight_shape)

    @classmethod
    def from_layer(cls, layer: IRLinear) -> "PackedLinear":
        pw = ops.libra_pb_pack(layer.weight)
        return cls(pw.bits, pw.scale, layer.weight.shape, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.weight_shape[1]:
            raise ValueError(f"PackedLinear: expected input (N, {self.weight_shape[1]}), got {tuple(x.shape)}")
        y = torch.ops.irnet.xnor_linear(torch.ops.irnet.pack_bits(x), self.bits, self.scale.float(), self.weight_shape[1])
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"weight_shape={self.weight_shape}, packed_bytes={self.bits.numel() * 8}"


def _frozen_real_layer(layer: nn.Module) -> nn.Module:
    """A 1w32a layer: a plain conv/linear holding the fixed Libra-PB weight sign(v)*s."""
    with torch.no_grad():
        wb = layer.binary_weight().detach().clone()
    if isinstance(layer, IRConv2d):
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, bias=layer.bias is not None)
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    new = new.to(device=wb.device, dtype=wb.dtype)
    with torch.no_grad():
        new.weight.copy_(wb)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    new.requires_grad_(False)
    return new


def _convert_layer(layer: nn.Module) -> nn.Module:
    if isinstance(layer, IRConv2d):
        return PackedConv2d.from_layer(layer) if layer.binary_act else _frozen_real_layer(layer)
    if isinstance(layer, IRLinear):
        return PackedLinear.from_layer(layer) if layer.binary_act else _frozen_real_layer(layer)
    return layer


def convert(model: nn.Module) -> nn.Module:
    """A bit-packed inference copy of ``model`` (the original is left untouched).

    The copy is in eval mode: BatchNorm uses its running statistics.  It runs on the
    device the model is on; ``.to(device)`` moves the packed buffers too."""
    if isinstance(model, (IRConv2d, IRLinear)):
        return _convert_layer(model.eval())
    packed = copy.deepcopy(model).eval()

    def replace(module: nn.Module):
        for name, child in module.named_children():
            new = _convert_layer(child)
            if new is not child:
                setattr(module, name, new)
            else:
                replace(child)

    replace(packed)
    return packed


def packed_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (PackedConv2d, PackedLinear))]


def model_bytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)
