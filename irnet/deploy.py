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

``convert(model, fuse=True)`` goes one step further for the residual blocks of the zoo
(:class:`irnet.models.blocks.BasicBlock` with packed convolutions): each binary conv
and the BatchNorm, residual add and clamping activation after it run as one kernel
(:class:`FusedPackedConv2d`, ``torch.ops.irnet.xnor_conv2d_fused``), one pass over the
output instead of four.  The BatchNorm is folded into a per-channel ``alpha``, ``beta``,
so the outputs equal the unfused model's to float rounding only (not bit for bit);
predictions agree except where two logits are within rounding of each other.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from . import ops
from .models.blocks import BasicBlock
from .nn import IRConv2d, IRLinear

__all__ = ["convert", "PackedConv2d", "PackedLinear", "FusedPackedConv2d", "FusedBasicBlock", "packed_layers",
           "model_bytes"]


def _as_dtype(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return y if y.dtype == dtype else y.to(dtype)


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

    def _check_input(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        y = torch.ops.irnet.xnor_conv2d(x, self.bits, ops._float32(self.scale), self.in_channels,
                                        self.stride, self.padding, self.dilation, ops.wants_channels_last(x))
        y = _as_dtype(y, x.dtype)
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
        y = torch.ops.irnet.xnor_linear(torch.ops.irnet.pack_bits(x), self.bits, ops._float32(self.scale),
                                        self.weight_shape[1])
        y = _as_dtype(y, x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"weight_shape={self.weight_shape}, packed_bytes={self.bits.numel() * 8}"


class FusedPackedConv2d(PackedConv2d):
    """A PackedConv2d with the BatchNorm, residual add and clamping activation that
    follow it in one kernel: ``clamp(conv(x) * alpha + beta + residual, act_min, act_max)``
    (``alpha``, ``beta``: the BatchNorm, and the conv's bias if any, folded per channel)."""

    def __init__(self, conv: PackedConv2d, bn: nn.BatchNorm2d, act_min: float, act_max: float):
        super().__init__(conv.bits, conv.scale, conv.weight_shape, conv.stride, conv.padding, conv.dilation)
        alpha, beta = _fold_batchnorm(bn, conv.bias)
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.act_min, self.act_max = float(act_min), float(act_max)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        y = torch.ops.irnet.xnor_conv2d_fused(
            x, self.bits, ops._float32(self.scale), self.in_channels, self.stride, self.padding,
            self.dilation, ops.wants_channels_last(x), ops._float32(self.alpha), ops._float32(self.beta),
            None if residual is None else ops._float32(residual), self.act_min, self.act_max)
        return _as_dtype(y, x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act=[{self.act_min}, {self.act_max}]"


def _fold_batchnorm(bn: nn.BatchNorm2d, conv_bias):
    """(alpha, beta) float32 with bn(y + bias) = y * alpha + beta in eval mode (computed
    in float64, rounded once)."""
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    alpha = gamma / torch.sqrt(var + bn.eps)
    bias = conv_bias.detach().double() if conv_bias is not None else torch.zeros_like(var)
    beta = shift + (bias - mean) * alpha
    return alpha.float(), beta.float()


def _clamp_bounds(act: nn.Module):
    """(min, max) of a clamping activation, or None if it is not one."""
    if isinstance(act, nn.Hardtanh):  # (ReLU6 is a Hardtanh)
        return float(act.min_val), float(act.max_val)
    if isinstance(act, nn.ReLU):
        return 0.0, float("inf")
    if isinstance(act, nn.Identity):
        return -float("inf"), float("inf")
    return None


class FusedBasicBlock(nn.Module):
    """A BasicBlock whose two packed convs carry their BatchNorm, residual and activation."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.structure = block.structure
        self.conv1 = FusedPackedConv2d(block.conv1, block.bn1, *_clamp_bounds(block.act1))
        self.conv2 = FusedPackedConv2d(block.conv2, block.bn2, *_clamp_bounds(block.act2))
        self.shortcut = block.shortcut

    @staticmethod
    def fusable(block: nn.Module) -> bool:
        if not isinstance(block, BasicBlock):
            return False
        convs = (block.conv1, block.conv2)
        bns = (block.bn1, block.bn2)
        return (all(type(c) is PackedConv2d for c in convs)
                and all(type(b) is nn.BatchNorm2d and b.running_mean is not None for b in bns)
                and all(_clamp_bounds(a) is not None for a in (block.act1, block.act2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.structure == "bireal":
            h = self.conv1(x, self.shortcut(x))
            return self.conv2(h, h)
        return self.conv2(self.conv1(x), self.shortcut(x))


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
    return packed


def packed_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (PackedConv2d, PackedLinear))]  # fused convs included


def model_bytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)
