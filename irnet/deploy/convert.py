"""irnet.deploy.convert: a trained model to its bit-packed inference copy."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..nn import IRConv2d, IRLinear
from .layers import FusedBasicBlock, PackedConv2d, PackedLinear

__all__ = ["convert", "packed_layers", "model_bytes"]


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


def convert(model: nn.Module, fuse: bool = False) -> nn.Module:
    """A bit-packed inference copy of ``model`` (the original is left untouched).

    The copy is in eval mode: BatchNorm uses its running statistics.  It runs on the
    device the model is on; ``.to(device)`` moves the packed buffers too.  With
    ``fuse=True`` every residual block of the zoo with 1w1a convs becomes a
    :class:`FusedBasicBlock` (conv + BatchNorm + residual + activation in one kernel; equal
    to the unfused model to float rounding, see the module docstring)."""
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

    def fuse_blocks(module: nn.Module):
        for name, child in module.named_children():
            if FusedBasicBlock.fusable(child):
                setattr(module, name, FusedBasicBlock(child))
            else:
                fuse_blocks(child)

    replace(packed)
    if fuse:
        fuse_blocks(packed)
    packed.irnet_convert_options = {"fuse": bool(fuse)}  # irnet.deploy.load calls convert with these again
    return packed


def packed_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (PackedConv2d, PackedLinear))]  # fused convs included


def model_bytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)
