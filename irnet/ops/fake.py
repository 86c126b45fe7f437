"""Fake (meta) kernels of every torch.ops.irnet op: output shapes, dtypes and memory
formats without computing anything, for torch.compile, torch.export and FakeTensor."""
from __future__ import annotations

import torch

from .checks import _conv_out
from .registry import WORD_BITS, _conv_format


@torch.library.register_fake("irnet::sign_ede")
def _(x, k, t):
    return x.new_empty(x.shape)


@torch.library.register_fake("irnet::sign_ede_backward")
def _(grad, x, k, t):
    return grad.new_empty(grad.shape)


@torch.library.register_fake("irnet::libra_pb")
def _(w, k, t):
    o = w.shape[0]
    return w.new_empty(w.shape), w.new_empty(w.shape), w.new_empty((o,)), w.new_empty((o,))


@torch.library.register_fake("irnet::libra_pb_backward")
def _(grad_wb, v, inv_sigma, scale, k, t):
    return grad_wb.new_empty(grad_wb.shape)


def _packed_shape(shape):
    words = (shape[1] + WORD_BITS - 1) // WORD_BITS
    return (shape[0], *shape[2:], words)


@torch.library.register_fake("irnet::pack_bits")
def _(x):
    return x.new_empty(_packed_shape(x.shape), dtype=torch.int64)


@torch.library.register_fake("irnet::libra_pb_pack")
def _(w):
    return w.new_empty(_packed_shape(w.shape), dtype=torch.int64), w.new_empty((w.shape[0],))


def _fake_conv_output(x_bits, w_bits, stride, padding, dilation, channels_last):
    # x_bits: packed (N, H, W, words), or the float activations (N, C, H, W)
    n, h, w_ = (x_bits.shape[0], *x_bits.shape[2:]) if x_bits.is_floating_point() else x_bits.shape[:3]
    o, kh, kw, _ = w_bits.shape
    ho = _conv_out(h, kh, stride[0], padding[0], dilation[0])
    wo = _conv_out(w_, kw, stride[1], padding[1], dilation[1])
    return torch.empty((n, o, ho, wo), dtype=torch.float32, device=x_bits.device,
                       memory_format=_conv_format(channels_last))


@torch.library.register_fake("irnet::xnor_conv2d")
def _(x_bits, w_bits, scale, in_channels, stride, padding, dilation, channels_last=False):
    return _fake_conv_output(x_bits, w_bits, stride, padding, dilation, channels_last)


@torch.library.register_fake("irnet::xnor_conv2d_fused")
def _(x_bits, w_bits, scale, in_channels, stride, padding, dilation, channels_last, alpha, beta, residual, act_min,
      act_max):
    return _fake_conv_output(x_bits, w_bits, stride, padding, dilation, channels_last)


@torch.library.register_fake("irnet::xnor_linear")
def _(x_bits, w_bits, scale, in_features):
    return x_bits.new_empty((x_bits.shape[0], w_bits.shape[0]), dtype=torch.float32)
