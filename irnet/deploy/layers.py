"""The inference layers of a packed model (see irnet.deploy): bit-packed binary convs and
linears, and the fused conv + BatchNorm + residual + clamp of the zoo's residual blocks."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..models.blocks import BasicBlock
from ..nn import IRConv2d, IRLinear

__all__ = ["PackedConv2d", "PackedLinear", "FusedPackedConv2d", "FusedPackedConvPool", "FusedBasicBlock",
           "fold_conv_batchnorm"]


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

    def _apply(self, fn, *args, **kwargs):
        # .to(memory_format=torch.channels_last) converts every 4-d buffer, the packed bits
        # (O, kh, kw, words) too; the kernels want them contiguous (a strided copy would be
        # made, and its weight layout rebuilt, at every call)
        out = super()._apply(fn, *args, **kwargs)
        if not self.bits.is_contiguous():
            self.bits = self.bits.contiguous()
        return out

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
    alpha, beta = _fold_batchnorm64(bn, conv_bias)
    return alpha.float(), beta.float()


def _fold_batchnorm64(bn: nn.BatchNorm2d, conv_bias):
    """_fold_batchnorm's (alpha, beta) in float64, unrounded."""
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    alpha = gamma / torch.sqrt(var + bn.eps)
    bias = conv_bias.detach().double() if conv_bias is not None else torch.zeros_like(var)
    beta = shift + (bias - mean) * alpha
    return alpha, beta


def _clamp_bounds(act: nn.Module):
    """(min, max) of a clamping activation, or None if it is not one."""
    if isinstance(act, nn.Hardtanh):  # (ReLU6 is a Hardtanh)
        return float(act.min_val), float(act.max_val)
    if isinstance(act, nn.ReLU):
        return 0.0, float("inf")
    if isinstance(act, nn.Identity):
        return -float("inf"), float("inf")
    return None


class FusedPackedConvPool(PackedConv2d):
    """A PackedConv2d followed by a max pool, a BatchNorm and a clamping activation (the
    VGG-Small pattern conv -> pool -> BN -> hardtanh):
    ``clamp(max_pool2d(conv(x)) * alpha + beta, act_min, act_max)`` with the BatchNorm
    folded to ``alpha``, ``beta`` (applied after the pool, as in the model: a negative
    BatchNorm scale does not commute with max)."""

    def __init__(self, conv: PackedConv2d, pool: nn.MaxPool2d, bn: nn.BatchNorm2d, act_min: float, act_max: float):
        super().__init__(conv.bits, conv.scale, conv.weight_shape, conv.stride, conv.padding, conv.dilation)
        alpha, beta = _fold_batchnorm(bn, conv.bias)
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.act_min, self.act_max = float(act_min), float(act_max)
        self.pool_kernel, self.pool_stride, self.pool_padding = (list(_pair(pool.kernel_size)),
                                                                 list(_pair(pool.stride or pool.kernel_size)),
                                                                 list(_pair(pool.padding)))

    @staticmethod
    def poolable(pool: nn.Module) -> bool:
        return (type(pool) is nn.MaxPool2d and _pair(pool.dilation) == (1, 1) and not pool.ceil_mode
                and not pool.return_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        y = torch.ops.irnet.xnor_conv2d(x, self.bits, ops._float32(self.scale), self.in_channels, self.stride,
                                        self.padding, self.dilation, ops.wants_channels_last(x))
        y = F.max_pool2d(y, self.pool_kernel, self.pool_stride, self.pool_padding)
        # a separate multiply and add, each rounded (as the whole-network plan rounds them)
        y = y * ops._float32(self.alpha).reshape(1, -1, 1, 1) + ops._float32(self.beta).reshape(1, -1, 1, 1)
        return _as_dtype(torch.clamp(y, self.act_min, self.act_max), x.dtype)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", pool={self.pool_kernel}/{self.pool_stride}/{self.pool_padding}"
                f", act=[{self.act_min}, {self.act_max}]")


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def fold_conv_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A float conv with the eval-mode BatchNorm after it folded in:
    ``conv'(x) = conv(x) * alpha + beta`` with ``w' = w * alpha`` per output channel and
    ``b' = beta + (b - mean) * alpha`` (computed in float64, rounded once; equal to
    bn(conv(x)) to float rounding)."""
    alpha, beta = _fold_batchnorm64(bn, conv.bias)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=True, padding_mode=conv.padding_mode)
    new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        w = conv.weight.detach().double() * alpha.reshape(-1, 1, 1, 1)
        new.weight.copy_(w.to(conv.weight.dtype))
        new.bias.copy_(beta.to(conv.weight.dtype))
    new.requires_grad_(False)
    return new


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
