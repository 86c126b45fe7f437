"""The op schemas and which kernel serves each (op, device).

The schemas are declared in C++ (csrc/irnet.cpp).  When the extension is missing they
are declared here from ``SCHEMAS`` (a test checks both lists agree), and wherever the
compiled extension has no kernel for an (op, device) the pure-PyTorch reference
(irnet/reference.py) is registered for it, so the rest of irnet always calls
``torch.ops.irnet.<op>`` and never needs to know which kernel runs.
"""
from __future__ import annotations

import torch

from .. import _ext
from .. import reference as ref

WORD_BITS = ref.WORD_BITS

SCHEMAS = {
    "sign_ede": "sign_ede(Tensor x, Tensor k, Tensor t) -> Tensor",
    "sign_ede_backward": "sign_ede_backward(Tensor grad, Tensor x, Tensor k, Tensor t) -> Tensor",
    "libra_pb": "libra_pb(Tensor w, Tensor k, Tensor t) -> (Tensor, Tensor, Tensor, Tensor)",
    "libra_pb_backward": "libra_pb_backward(Tensor grad_wb, Tensor v, Tensor inv_sigma, Tensor scale, Tensor k, Tensor t) -> Tensor",
    "pack_bits": "pack_bits(Tensor x) -> Tensor",
    "libra_pb_pack": "libra_pb_pack(Tensor w) -> (Tensor, Tensor)",
    "xnor_conv2d": "xnor_conv2d(Tensor x_bits, Tensor w_bits, Tensor? scale, int in_channels, int[2] stride, int[2] padding, int[2] dilation, bool channels_last=False) -> Tensor",
    "xnor_conv2d_fused": "xnor_conv2d_fused(Tensor x_bits, Tensor w_bits, Tensor? scale, int in_channels, int[2] stride, int[2] padding, int[2] dilation, bool channels_last, Tensor alpha, Tensor beta, Tensor? residual, float act_min, float act_max) -> Tensor",
    "xnor_linear": "xnor_linear(Tensor x_bits, Tensor w_bits, Tensor? scale, int in_features) -> Tensor",
}

DEVICE_KEYS = ("CPU", "CUDA")

if not _ext.LOADED:
    _def_lib = torch.library.Library("irnet", "DEF")  # noqa: F841 (kept alive: owns the schemas)
    for _schema in SCHEMAS.values():
        _def_lib.define(_schema)


def _contiguous(out):
    if isinstance(out, tuple):
        return tuple(o.contiguous() for o in out)
    return out.contiguous()


def _conv_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format



def _bits(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A conv op's x_bits: packed bits as they are, float activations (N, C, H, W) packed."""
    if not x.is_floating_point():
        return x
    if x.dim() != 4 or x.shape[1] != channels:
        raise RuntimeError(f"irnet::xnor_conv2d: expected float x_bits as the activations (N, C, H, W) with "
                           f"in_channels = {channels} channels, got shape {tuple(x.shape)}")
    return ref.pack_bits(x)


_REFERENCE_KERNELS = {
    "sign_ede": lambda x, k, t: ref.sign(x).contiguous(),
    "sign_ede_backward": lambda grad, x, k, t: ref.ede_grad(grad, x, k, t).contiguous(),
    "libra_pb": lambda w, k, t: _contiguous(ref.libra_pb_parts(w)),
    "libra_pb_backward": lambda g, v, inv_sigma, scale, k, t: ref.libra_pb_backward(g, v, inv_sigma, scale, k, t).contiguous(),
    "pack_bits": lambda x: ref.pack_bits(x).contiguous(),
    "libra_pb_pack": lambda w: _contiguous(ref.libra_pb_pack(w)),
    "xnor_conv2d": lambda xb, wb, scale, c, stride, padding, dilation, channels_last=False: ref.xnor_conv2d_bits(
        _bits(xb, c), wb, scale, c, stride, padding, dilation).contiguous(memory_format=_conv_format(channels_last)),
    "xnor_linear": lambda xb, wb, scale, n: ref.xnor_linear_bits(xb, wb, scale, n).contiguous(),
    # for a device without a compiled fused kernel (CUDA has one wherever irnet's CUDA
    # kernels are built): the device's xnor_conv2d, then the epilogue as PyTorch ops
    "xnor_conv2d_fused": lambda xb, wb, scale, c, stride, padding, dilation, channels_last, alpha, beta, residual, lo, hi:
        ref.fused_epilogue(torch.ops.irnet.xnor_conv2d(xb, wb, scale, c, stride, padding, dilation, channels_last),
                           alpha, beta, residual, lo, hi).contiguous(memory_format=_conv_format(channels_last)),
}


def has_compiled_kernel(op: str, device_type: str = "cpu") -> bool:
    """True if ``torch.ops.irnet.<op>`` runs a compiled kernel on ``device_type``."""
    return _COMPILED.get((op, device_type.upper()), False)


_COMPILED = {}
_impl_lib = torch.library.Library("irnet", "IMPL")
for _name in SCHEMAS:
    for _key in DEVICE_KEYS:
        _has = bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"irnet::{_name}", _key))
        _COMPILED[(_name, _key)] = _has
        if not _has:
            _impl_lib.impl(_name, _REFERENCE_KERNELS[_name], _key)


def backend_report() -> dict:
    """Which kernel each op runs on each device: 'compiled' or 'reference'."""
    return {f"{n}/{k.lower()}": ("compiled" if _COMPILED[(n, k)] else "reference") for n, k in sorted(_COMPILED)}
