"""``torch.ops.irnet.*`` for users: checked Python wrappers of every op.

The rest of the op layer lives beside this file, one concern each:

* ``registry.py``  the schemas, and the pure-PyTorch reference registered for every
  (op, device) the compiled extension does not cover (``backend_report``);
* ``fake.py``      fake (meta) kernels, for torch.compile / torch.export;
* ``autograd.py``  the EDE and Libra-PB backward formulas;
* ``checks.py``    argument checks shared by the wrappers;
* ``controls.py``  the kernels' run-time settings (CPU SIMD level and conv algorithm, CUDA
  conv algorithm).
"""
from __future__ import annotations

import torch

from .. import reference as ref
from . import registry as _registry  # noqa: F401  (first: declares the schemas where the extension is missing)
from . import autograd as _autograd  # noqa: F401  (registers the backward formulas)
from . import fake as _fake  # noqa: F401  (registers the fake kernels)
from .checks import _check_finite, _check_same_device, _check_tensor, _conv_out, _ede_params, _float32, _pair  # noqa: F401
from .controls import (cpu_conv_algorithm, cpu_conv_algorithms, cpu_simd_level, cpu_simd_levels,  # noqa: F401
                       cuda_conv_algorithm, cuda_conv_algorithms, set_cpu_conv_algorithm, set_cpu_simd_level,
                       set_cuda_conv_algorithm)
from .registry import DEVICE_KEYS, SCHEMAS, WORD_BITS, _REFERENCE_KERNELS, backend_report, has_compiled_kernel  # noqa: F401

def sign_ede(x: torch.Tensor, k, t) -> torch.Tensor:
    """sign(x) (+1 at 0) forward; EDE backward grad * k * t * (1 - tanh(t x)^2)."""
    _check_tensor("x", x)
    k, t = _ede_params(k, t, x)
    return torch.ops.irnet.sign_ede(x, k, t)


def libra_pb(w: torch.Tensor, k, t) -> torch.Tensor:
    """Libra-PB binarized weight sign(v) * 2**round(log2(mean|v|)), v standardized per
    output channel; EDE backward through v, mean and unbiased std."""
    _check_tensor("w", w, min_dim=2)
    k, t = _ede_params(k, t, w)
    return torch.ops.irnet.libra_pb(w, k, t)[0]


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Sign-and-pack (N, C, *S) -> int64 (N, *S, ceil(C/64)); bit 1 means -1."""
    _check_tensor("x", x, min_dim=2)
    return torch.ops.irnet.pack_bits(x)


class PackedWeight:
    """A bit-packed binary weight: ``bits`` (C_out, *kernel, words) int64, optional
    per-output-channel ``scale`` (float32), and the logical float ``shape``."""

    def __init__(self, bits: torch.Tensor, scale, shape):
        self.bits = bits
        self.scale = scale
        self.shape = torch.Size(shape)

    @property
    def in_channels(self) -> int:
        return self.shape[1]

    @property
    def device(self):
        return self.bits.device

    def to(self, device):
        scale = None if self.scale is None else self.scale.to(device)
        return PackedWeight(self.bits.to(device), scale, self.shape)

    def unpack(self) -> torch.Tensor:
        """The float weight it stands for: +-1 (times scale)."""
        w = ref.unpack_bits(self.bits, self.shape[1])
        if self.scale is not None:
            w = w * self.scale.reshape(-1, *([1] * (w.dim() - 1)))
        return w

    def __repr__(self):
        return f"PackedWeight(shape={tuple(self.shape)}, scaled={self.scale is not None}, device={self.device})"


def _pack_weight(w: torch.Tensor, scale, dims) -> PackedWeight:
    _check_tensor("w", w, dims=dims)
    _check_finite("w", w)
    if scale is not None:
        _check_tensor("scale", scale, dims=(1,))
        if scale.shape[0] != w.shape[0]:
            raise ValueError(f"irnet: scale must have one entry per output channel ({w.shape[0]}), got {tuple(scale.shape)}")
        scale = scale.detach().to(device=w.device, dtype=torch.float32).contiguous()
    return PackedWeight(torch.ops.irnet.pack_bits(w.detach()), scale, w.shape)


def pack_conv_weight(w: torch.Tensor, scale=None) -> PackedWeight:
    """Pre-pack sign(w) of a (C_out, C_in, kh, kw) weight, once, for xnor_conv2d."""
    return _pack_weight(w, scale, (4,))


def pack_linear_weight(w: torch.Tensor, scale=None) -> PackedWeight:
    """Pre-pack sign(w) of a (C_out, C_in) weight, once, for xnor_linear."""
    return _pack_weight(w, scale, (2,))


def libra_pb_pack(w: torch.Tensor) -> PackedWeight:
    """Deployable Libra-PB weight: packed sign(v) with its power-of-two scale."""
    _check_tensor("w", w, dims=(2, 4))
    _check_finite("w", w)
    bits, scale = torch.ops.irnet.libra_pb_pack(w.detach())
    return PackedWeight(bits, scale.to(torch.float32), w.shape)


def _as_packed(w, dims, pack) -> PackedWeight:
    if isinstance(w, PackedWeight):
        if len(w.shape) not in dims:
            raise ValueError(f"irnet: packed weight must stand for a {dims[0]}-d weight, got shape {tuple(w.shape)}")
        return w
    return pack(w)


def wants_channels_last(x: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` should return a channels_last tensor: as for
    F.conv2d, when ``x`` itself is channels_last (and not also plain contiguous)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _conv_args(x: torch.Tensor, w, stride, padding, dilation):
    """Checks a binary conv's operands; returns (packed weight, stride, padding, dilation)."""
    _check_tensor("x", x, dims=(4,))
    pw = _as_packed(w, (4,), pack_conv_weight)
    _check_same_device(x=x, w=pw.bits)
    if x.shape[1] != pw.in_channels:
        raise ValueError(f"irnet: x has {x.shape[1]} channels but the weight expects {pw.in_channels} (weight shape {tuple(pw.shape)})")
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"irnet: need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    h, w_ = x.shape[2], x.shape[3]
    kh, kw = pw.shape[2], pw.shape[3]
    if _conv_out(h, kh, stride[0], padding[0], dilation[0]) < 1 or _conv_out(w_, kw, stride[1], padding[1], dilation[1]) < 1:
        raise ValueError(f"irnet: kernel {kh}x{kw} (dilation {dilation}) does not fit input {h}x{w_} padded by {padding}")
    return pw, stride, padding, dilation


def xnor_conv2d(x: torch.Tensor, w, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """F.conv2d(sign(x), sign(w) [* scale], stride, padding, dilation) with zero padding,
    computed on bit-packed operands (XNOR-popcount, or on the CPU table lookups, on CUDA
    1-bit tensor cores: see :func:`set_cpu_conv_algorithm`, :func:`set_cuda_conv_algorithm`);
    float32 result, exact.

    ``w`` is a float (C_out, C_in, kh, kw) weight or a :class:`PackedWeight`.  The result
    is channels_last when ``x`` is (as F.conv2d's would be), NCHW-contiguous otherwise."""
    pw, stride, padding, dilation = _conv_args(x, w, stride, padding, dilation)
    # the op takes the float activations and packs them itself (one op call, not two)
    return torch.ops.irnet.xnor_conv2d(x, pw.bits, pw.scale, pw.in_channels, stride, padding, dilation,
                                       wants_channels_last(x))


def xnor_conv2d_fused(x: torch.Tensor, w, alpha: torch.Tensor, beta: torch.Tensor, residual=None, stride=1,
                      padding=0, dilation=1, act_min: float = -float("inf"), act_max: float = float("inf")):
    """``clamp(xnor_conv2d(x, w) * alpha + beta + residual, act_min, act_max)`` in one pass
    over the output: a BatchNorm folded to a per-channel ``alpha``, ``beta`` (float32,
    (C_out,)), an optional ``residual`` of the output's shape, and a clamping activation
    (hardtanh: -1, 1; ReLU: 0, inf; none: the default infinities).  Each operation rounds
    as the separate PyTorch ops would, in this order (torch.equal to
    irnet.reference.xnor_conv2d_fused_bits)."""
    pw, stride, padding, dilation = _conv_args(x, w, stride, padding, dilation)
    for name, t in (("alpha", alpha), ("beta", beta)):
        _check_tensor(name, t, dims=(1,))
        if t.shape[0] != pw.shape[0]:
            raise ValueError(f"irnet: {name} must have one entry per output channel ({pw.shape[0]}), got {tuple(t.shape)}")
    if residual is not None:
        _check_tensor("residual", residual, dims=(4,))
    _check_same_device(x=x, alpha=alpha, beta=beta, residual=residual)
    cl = wants_channels_last(x)
    return torch.ops.irnet.xnor_conv2d_fused(
        x, pw.bits, pw.scale, pw.in_channels, stride, padding, dilation, cl,
        _float32(alpha), _float32(beta), None if residual is None else _float32(residual),
        float(act_min), float(act_max))


def xnor_linear(x: torch.Tensor, w) -> torch.Tensor:
    """F.linear(sign(x), sign(w) [* scale]) by XNOR-popcount; float32 result, exact."""
    _check_tensor("x", x, dims=(2,))
    pw = _as_packed(w, (2,), pack_linear_weight)
    _check_same_device(x=x, w=pw.bits)
    if x.shape[1] != pw.in_channels:
        raise ValueError(f"irnet: x has {x.shape[1]} features but the weight expects {pw.in_channels} (weight shape {tuple(pw.shape)})")
    return torch.ops.irnet.xnor_linear(torch.ops.irnet.pack_bits(x), pw.bits, pw.scale, pw.in_channels)

