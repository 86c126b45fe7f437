"""The IR-Net numerics contract in plain PyTorch: slow, obvious, and the yardstick
every kernel in ``csrc/`` is compared with (see DESIGN.md section 1).

Nothing here is fast on purpose.  Each function states the maths it computes.

Bit layout (shared with every kernel): a tensor ``x`` of shape ``(N, C, *S)`` packs
to int64 words of shape ``(N, *S, ceil(C / 64))``; channel ``c`` lives in word
``c // 64``, bit ``c % 64``; the bit is 1 iff ``x < 0`` (it stands for -1), so
``-0.0`` and NaN pack to 0 (+1); tail bits past ``C`` are 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WORD_BITS = 64

__all__ = [
    "WORD_BITS", "sign", "sign_ede", "ede_grad", "SignEDE", "libra_pb", "libra_pb_parts",
    "libra_pb_backward", "pow2_round", "binary_conv2d", "binary_linear", "pack_bits",
    "unpack_bits", "popcount64", "xnor_dot", "xnor_linear_bits", "xnor_conv2d_bits",
    "libra_pb_pack", "ede_schedule",
]


# --------------------------------------------------------------------------- sign / EDE
def sign(x: torch.Tensor) -> torch.Tensor:
    """sign(v) = -1 if v < 0 else +1 (so -0.0 -> +1 and NaN -> +1)."""
    return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))


def ede_grad(grad: torch.Tensor, x: torch.Tensor, k, t) -> torch.Tensor:
    """EDE backward: grad * k * t * (1 - tanh(t * x)^2)."""
    return grad * k * t * (1 - torch.tanh(x * t) ** 2)


class SignEDE(torch.autograd.Function):
    """Forward sign(x); backward the error decay estimator.  k, t get no gradient."""

    @staticmethod
    def forward(ctx, x, k, t):
        ctx.save_for_backward(x, k, t)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        x, k, t = ctx.saved_tensors
        return ede_grad(grad, x, k, t), None, None


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(value), device=like.device, dtype=like.dtype)


def sign_ede(x: torch.Tensor, k, t) -> torch.Tensor:
    """sign(x) in the forward pass, EDE gradient in the backward pass."""
    return SignEDE.apply(x, _as_tensor(k, x).detach(), _as_tensor(t, x).detach())


# --------------------------------------------------------------------------- Libra-PB
def pow2_round(m: torch.Tensor) -> torch.Tensor:
    """2 ** round(log2(m)), round half to even (torch.round), 0 where m == 0."""
    s = torch.pow(2.0, torch.round(torch.log2(m))).to(m.dtype)
    return torch.where(m == 0, torch.zeros_like(m), s)


def _standardize(w: torch.Tensor):
    """Per output channel o over n = w[o].numel() weights:
    mu = mean, sigma = unbiased std (divides by n - 1), v = (w - mu) / sigma,
    with v = 0 where sigma == 0 or n <= 1.  Gradients flow through mu and sigma."""
    flat = w.reshape(w.shape[0], -1)
    n = flat.shape[1]
    mu = flat.mean(dim=1, keepdim=True)
    centred = flat - mu
    if n > 1:
        var = centred.pow(2).sum(dim=1, keepdim=True) / (n - 1)
    else:
        var = torch.zeros_like(mu)
    degenerate = var == 0
    # safe values so that the branch not taken never makes a NaN gradient
    # (d sqrt(var) / d var is infinite at 0, and 0 * inf = NaN)
    safe_sigma = torch.where(degenerate, torch.ones_like(var), var).sqrt()
    v = torch.where(degenerate, torch.zeros_like(centred), centred / safe_sigma)
    inv_sigma = torch.where(degenerate, torch.zeros_like(var), 1.0 / safe_sigma)
    return v, inv_sigma.reshape(-1)


def _mean_abs(v: torch.Tensor) -> torch.Tensor:
    """mean |v| per channel of the (O, n) v; 0 for empty channels (n == 0), which are
    degenerate like constant ones (an empty mean would be NaN)."""
    if v.shape[1] == 0:
        return torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    return v.abs().mean(dim=1)


def libra_pb_parts(w: torch.Tensor):
    """(wb, v, inv_sigma, scale): the tensors of the ``irnet::libra_pb`` op.

    v = standardized weight (shape of w), inv_sigma = 1/sigma per channel (0 where
    sigma == 0), scale s = 2**round(log2(mean|v|)) per channel (detached),
    wb = sign(v) * s."""
    if w.dim() < 2:
        raise ValueError(f"libra_pb expects a weight of rank >= 2 (C_out, ...), got shape {tuple(w.shape)}")
    v, inv_sigma = _standardize(w)
    scale = pow2_round(_mean_abs(v.detach()))
    wb = sign(v) * scale[:, None]
    shape = w.shape
    return wb.reshape(shape), v.reshape(shape), inv_sigma, scale


def libra_pb(w: torch.Tensor, k, t) -> torch.Tensor:
    """Libra-PB binarized weight wb = sign_EDE(v) * s, differentiable through v
    (mean and unbiased std are not detached), s detached."""
    if w.dim() < 2:
        raise ValueError(f"libra_pb expects a weight of rank >= 2 (C_out, ...), got shape {tuple(w.shape)}")
    v, _ = _standardize(w)
    scale = pow2_round(_mean_abs(v.detach()))[:, None]
    return (sign_ede(v, k, t) * scale).reshape(w.shape)


def libra_pb_backward(grad_wb, v, inv_sigma, scale, k, t):
    """Closed form of d(libra_pb)/dw, per channel over its n weights:

        g_i    = grad_wb_i * s * k * t * (1 - tanh(t v_i)^2)      (EDE through sign)
        grad_w = inv_sigma * (g - mean(g) - v * sum(g * v) / (n - 1))

    (the Jacobian of v = (w - mean) / std_unbiased).  inv_sigma = 0 gives 0."""
    shape = grad_wb.shape
    o = shape[0]
    g = ede_grad(grad_wb.reshape(o, -1) * scale.reshape(o, 1), v.reshape(o, -1), k, t)
    vf = v.reshape(o, -1)
    n = vf.shape[1]
    denom = max(n - 1, 1)
    gw = (g - g.mean(dim=1, keepdim=True) - vf * (g * vf).sum(dim=1, keepdim=True) / denom)
    return (gw * inv_sigma.reshape(o, 1)).reshape(shape)


# --------------------------------------------------------------------------- layers
def binary_conv2d(x, w, k, t, stride=1, padding=0, dilation=1, binary_act=True, bias=None):
    """y = conv2d(sign(x), libra_pb(w), stride, padding, dilation) with zero padding;
    in 1w32a (binary_act=False) x is not binarized."""
    xb = sign_ede(x, k, t) if binary_act else x
    return F.conv2d(xb, libra_pb(w, k, t), bias, stride, padding, dilation)


def binary_linear(x, w, k, t, binary_act=True, bias=None):
    """y = linear(sign(x), libra_pb(w))."""
    xb = sign_ede(x, k, t) if binary_act else x
    return F.linear(xb, libra_pb(w, k, t), bias)


# --------------------------------------------------------------------------- bit packing
def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *S) float -> (N, *S, ceil(C/64)) int64 words, bit = (x < 0)."""
    if x.dim() < 2:
        raise ValueError(f"pack_bits expects a tensor of rank >= 2 (N, C, ...), got shape {tuple(x.shape)}")
    c = x.shape[1]
    words = (c + WORD_BITS - 1) // WORD_BITS
    bits = (x < 0).to(torch.int64).movedim(1, -1)  # (N, *S, C)
    bits = F.pad(bits, (0, words * WORD_BITS - c))
    bits = bits.reshape(*bits.shape[:-1], words, WORD_BITS)
    shifts = torch.arange(WORD_BITS, device=x.device, dtype=torch.int64)
    # distinct powers of two: the sum is the bitwise OR (bit 63 gives the sign)
    return (bits << shifts).sum(dim=-1)


def unpack_bits(bits: torch.Tensor, channels: int, dtype=torch.float32) -> torch.Tensor:
    """Inverse of pack_bits: (N, *S, words) int64 -> (N, channels, *S) of +-1."""
    shifts = torch.arange(WORD_BITS, device=bits.device, dtype=torch.int64)
    b = (bits.unsqueeze(-1) >> shifts) & 1  # (N, *S, words, 64)
    b = b.reshape(*bits.shape[:-1], bits.shape[-1] * WORD_BITS)[..., :channels]
    return (1 - 2 * b).to(dtype).movedim(-1, 1)


_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Population count of each int64 word, in torch integer ops (SWAR).  The
    arithmetic right shift smears the sign bit, which the masks then clear."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return ((x * _H01) >> 56) & 0xFF


def xnor_dot(a_bits: torch.Tensor, b_bits: torch.Tensor, length: int) -> torch.Tensor:
    """dot(unpack(a), unpack(b)) = length - 2 * popcount(a XOR b), over the last dim."""
    return length - 2 * popcount64(a_bits ^ b_bits).sum(dim=-1)


def _valid_bits_mask(words: int, length: int, device) -> torch.Tensor:
    """Per word, the mask of the bits that stand for real positions (< length)."""
    idx = torch.arange(words * WORD_BITS, device=device).reshape(words, WORD_BITS)
    return ((idx < length).to(torch.int64) << torch.arange(WORD_BITS, device=device)).sum(dim=-1)


def xnor_linear_bits(x_bits, w_bits, scale, in_features: int) -> torch.Tensor:
    """y[n, o] = scale[o] * (in_features - 2 popcount(x_bits[n] ^ w_bits[o])), float32.
    Bits past in_features are ignored (as unpack_bits does for the conv)."""
    mask = _valid_bits_mask(x_bits.shape[-1], in_features, x_bits.device)
    dot = xnor_dot((x_bits & mask)[:, None, :], (w_bits & mask)[None, :, :], in_features).to(torch.float32)
    return dot if scale is None else dot * scale.to(torch.float32)


def xnor_conv2d_bits(x_bits, w_bits, scale, in_channels: int, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """The packed conv, computed the obvious way: unpack to +-1, conv2d with zero
    padding in float64 (exact on integers), times the per-channel scale, float32."""
    x = unpack_bits(x_bits, in_channels, torch.float64)
    w = unpack_bits(w_bits, in_channels, torch.float64)
    dot = F.conv2d(x, w, None, tuple(stride), tuple(padding), tuple(dilation)).to(torch.float32)
    return dot if scale is None else dot * scale.to(torch.float32).reshape(1, -1, 1, 1)


def fused_epilogue(y, alpha, beta, residual, act_min: float, act_max: float):
    """The epilogue of xnor_conv2d_fused on a conv output y (N, O, H, W): a BatchNorm
    folded to y * alpha + beta, the residual add, the clamping activation, each one
    PyTorch op (one rounding each, in this order; NaN propagates through the clamp)."""
    y = y * alpha.to(torch.float32).reshape(1, -1, 1, 1) + beta.to(torch.float32).reshape(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    return torch.clamp(y, float(act_min), float(act_max))


def xnor_conv2d_fused_bits(x_bits, w_bits, scale, in_channels: int, stride, padding, dilation, alpha, beta,
                           residual, act_min: float, act_max: float):
    """xnor_conv2d_bits followed by fused_epilogue."""
    y = xnor_conv2d_bits(x_bits, w_bits, scale, in_channels, stride, padding, dilation)
    return fused_epilogue(y, alpha, beta, residual, act_min, act_max)


def libra_pb_pack(w: torch.Tensor):
    """(bits of sign(v), scale): what a deployed Libra-PB layer keeps."""
    _, v, _, scale = libra_pb_parts(w.detach())
    return pack_bits(v), scale


# --------------------------------------------------------------------------- schedule
def ede_schedule(t_min: float, t_max: float, epochs: int, epoch: int):
    """t = T_min * (T_max / T_min) ** (e / E), k = max(1 / t, 1)."""
    t = t_min * (t_max / t_min) ** (epoch / epochs)
    return max(1.0 / t, 1.0), t
