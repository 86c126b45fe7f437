"""irnet.deploy.convert: a trained model to its bit-packed inference copy."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..models.blocks import BasicBlock
from ..nn import IRConv2d, IRLinear, plain_layer, replace_layers
from .layers import (FusedBasicBlock, FusedPackedConv2d, FusedPackedConvPool, PackedConv2d, PackedLinear,
                     _clamp_bounds, fold_conv_batchnorm)
from .runtime import PackedModel

__all__ = ["convert", "packed_layers", "model_bytes"]


def _frozen_real_layer(layer: nn.Module) -> nn.Module:
    """A 1w32a layer: a plain conv/linear holding the fixed Libra-PB weight sign(v)*s."""
    with torch.no_grad():
        wb = layer.binary_weight().detach().clone()
    return plain_layer(layer, wb).requires_grad_(False)


def _convert_layer(layer: nn.Module) -> nn.Module:
    if isinstance(layer, IRConv2d):
        return PackedConv2d.from_layer(layer) if layer.binary_act else _frozen_real_layer(layer)
    if isinstance(layer, IRLinear):
        return PackedLinear.from_layer(layer) if layer.binary_act else _frozen_real_layer(layer)
    return layer


def convert(model: nn.Module, fuse: bool = False) -> nn.Module:
    """A bit-packed inference copy of ``model`` (the original is left untouched).

    The copy is in eval mode: BatchNorm uses its running statistics.  It runs on the
    device the model is on; ``.to(device)`` moves the packed buffers too.

    ``fuse=False``: every binary layer packed, everything else as it was; the logits equal
    the trained model's (eval mode) bit for bit.

    ``fuse=True`` (the fast form, see :class:`irnet.deploy.PackedModel`): also

    * each residual block of the zoo with 1w1a convs becomes a :class:`FusedBasicBlock`
      (binary conv + BatchNorm + residual + activation in one kernel);
    * conv -> max pool -> BatchNorm -> clamp (VGG-Small) becomes a
      :class:`FusedPackedConvPool`, and conv -> BatchNorm -> clamp a fused conv;
    * every BatchNorm right after a float conv (the stem, the downsample shortcuts, the
      1w32a layers) is folded into that conv's weight and bias;
    * the result is wrapped in a :class:`PackedModel`, which on the CPU runs the whole
      network as one C++ plan, in the memory layout it runs fastest in
      (:func:`preferred_memory_format`; a 4-d input in the other one is copied first, and
      ``.to(memory_format=...)`` chooses another).

    Folding rounds differently from the separate BatchNorm, so the fused model's logits
    equal the unfused model's to float rounding, not bit for bit (predictions agree except
    where two logits are within rounding of each other)."""
    if isinstance(model, (IRConv2d, IRLinear)):
        return _convert_layer(model.eval())
    packed = copy.deepcopy(model).eval()
    replace_layers(packed, _convert_layer)
    if fuse:
        _fuse(packed)
        packed.requires_grad_(False)
        fmt = preferred_memory_format(packed)
        packed = PackedModel(packed.to(memory_format=fmt), input_format=fmt)
    packed.irnet_convert_options = {"fuse": bool(fuse)}  # irnet.deploy.load calls convert with these again
    return packed


def preferred_memory_format(model: nn.Module) -> torch.memory_format:
    """The layout a fused packed network runs fastest in on the CPU: channels_last when every
    binary conv has at least 64 input channels (ResNet-18/34, VGG-Small: the XNOR-popcount
    tile fills whole 64-bit words and packs channels_last input without a transpose, and
    oneDNN's float convs and PyTorch's pooling are fastest there), NCHW otherwise (the CIFAR
    ResNet-20's 16/32-channel layers: the AVX-512 planes kernel reads and writes NCHW rows).
    Measured, whole fused networks, 1 thread, CPU time, Sapphire Rapids Xeon (AVX-512),
    NCHW / channels_last: ResNet-20 batch 1 0.133 / 0.259 ms, batch 128 15.4 / 23.7 ms;
    VGG-Small batch 1 0.92 / 0.80 ms, batch 128 132 / 104 ms; ResNet-18 batch 1 4.52 / 3.99
    ms, batch 16 80 / 68 ms; CIFAR ResNet-18 batch 1 1.13 / 1.13 ms."""
    widths = [m.in_channels for m in model.modules() if isinstance(m, PackedConv2d)]
    return torch.channels_last if widths and min(widths) >= 64 else torch.contiguous_format


def _fusable_bn(bn: nn.Module) -> bool:
    return type(bn) is nn.BatchNorm2d and bn.running_mean is not None


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and _fusable_bn(bn) and conv.out_channels == bn.num_features


def _fuse_sequence(children: list) -> list:
    """The fusions of a Sequential's layers, in order (see convert)."""
    out, i = [], 0
    while i < len(children):
        a = children[i]
        b, c, d = (children[i + 1:i + 4] + [None, None, None])[:3]
        if type(a) is PackedConv2d and FusedPackedConvPool.poolable(b) and _fusable_bn(c) and _clamp_bounds(d):
            out.append(FusedPackedConvPool(a, b, c, *_clamp_bounds(d)))
            i += 4
        elif type(a) is PackedConv2d and _fusable_bn(b) and c is not None and _clamp_bounds(c):
            out.append(FusedPackedConv2d(a, b, *_clamp_bounds(c)))
            i += 3
        elif _foldable(a, b):
            out.append(fold_conv_batchnorm(a, b))
            i += 2
        else:
            out.append(a)
            i += 1
    return out


def _fuse(module: nn.Module) -> None:
    for name, child in module.named_children():
        if FusedBasicBlock.fusable(child):
            child = FusedBasicBlock(child)
            setattr(module, name, child)
        elif isinstance(child, BasicBlock):  # 1w32a: fold each BatchNorm into its (float) conv
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                if _foldable(getattr(child, conv), getattr(child, bn)):
                    setattr(child, conv, fold_conv_batchnorm(getattr(child, conv), getattr(child, bn)))
                    setattr(child, bn, nn.Identity())
        elif type(child) is nn.Sequential:
            fused = _fuse_sequence(list(child))
            if len(fused) != len(child):
                child = nn.Sequential(*fused)
                setattr(module, name, child)
        _fuse(child)


def packed_layers(model: nn.Module):
    """Every packed binary layer of a model (fused ones included)."""
    return [m for m in model.modules() if isinstance(m, (PackedConv2d, PackedLinear))]


def model_bytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)
