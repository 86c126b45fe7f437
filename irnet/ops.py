"""``torch.ops.irnet.*``: Python wrappers, fake (meta) kernels, autograd formulas, and
the reference fallback for every (op, device) the compiled extension does not cover.

The schemas are declared in C++ (csrc/irnet.cpp).  When the extension is missing they
are declared here from ``SCHEMAS`` (a test checks both lists agree), so the rest of
irnet always calls ``torch.ops.irnet.<op>`` and never needs to know which kernel runs.
"""
from __future__ import annotations

import torch

from . import _ext
from . import reference as ref

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


# --------------------------------------------------------------------------- reference kernels
def _contiguous(out):
    if isinstance(out, tuple):
        return tuple(o.contiguous() for o in out)
    return out.contiguous()


def _conv_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _float32(t: torch.Tensor) -> torch.Tensor:
    # (a dtype test in Python is cheaper than the no-op .to() call it saves: ~1 us a call,
    # several per binary layer, which shows in a small network at batch 1)
    return t if t.dtype == torch.float32 else t.to(torch.float32)


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
    # no fused kernel for this device (CUDA): the device's xnor_conv2d (compiled where it
    # exists), then the epilogue as PyTorch ops
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


# --------------------------------------------------------------------------- fake kernels
def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


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


# --------------------------------------------------------------------------- autograd
def _sign_ede_setup(ctx, inputs, output):
    x, k, t = inputs
    ctx.save_for_backward(x, k, t)


def _sign_ede_backward(ctx, grad):
    x, k, t = ctx.saved_tensors
    return torch.ops.irnet.sign_ede_backward(grad.contiguous(), x, k, t), None, None


torch.library.register_autograd("irnet::sign_ede", _sign_ede_backward, setup_context=_sign_ede_setup)


def _libra_pb_setup(ctx, inputs, output):
    _, k, t = inputs
    _, v, inv_sigma, scale = output
    ctx.save_for_backward(v, inv_sigma, scale, k, t)


def _libra_pb_backward(ctx, grad_wb, grad_v, grad_inv_sigma, grad_scale):
    v, inv_sigma, scale, k, t = ctx.saved_tensors
    if grad_wb is None:
        return None, None, None
    return torch.ops.irnet.libra_pb_backward(grad_wb.contiguous(), v, inv_sigma, scale, k, t), None, None


torch.library.register_autograd("irnet::libra_pb", _libra_pb_backward, setup_context=_libra_pb_setup)


# --------------------------------------------------------------------------- checks
def _check_tensor(name: str, x, *, dims=None, min_dim=None, floating=True):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"irnet: {name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"irnet: {name} must be a floating-point tensor (float32/float64/float16/bfloat16), got {x.dtype}")
    if dims is not None and x.dim() not in dims:
        raise ValueError(f"irnet: {name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(x.shape)}")
    if min_dim is not None and x.dim() < min_dim:
        raise ValueError(f"irnet: {name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}")


def _check_same_device(**tensors):
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"irnet: all tensors must be on one device, got {desc}")


def _check_finite(name: str, x: torch.Tensor):
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"irnet: {name} contains NaN or Inf; refusing to binarize it into a silently wrong model")


def _ede_params(k, t, like: torch.Tensor):
    def param(v):
        if isinstance(v, torch.Tensor):
            return v.detach().to(device=like.device, dtype=like.dtype)
        return torch.tensor(float(v), device=like.device, dtype=like.dtype)

    return param(k), param(t)


def _pair(v, name):
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"irnet: {name} must be an int or a pair of ints, got {v!r}")
    return v


# --------------------------------------------------------------------------- public API
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
    computed on bit-packed operands (XNOR-popcount, or on the CPU table lookups: see
    :func:`set_cpu_conv_algorithm`); float32 result, exact.

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


# --------------------------------------------------------------------------- CPU kernel controls
# The CPU XNOR kernels (csrc/cpu/xnor_cpu.cpp) pick a SIMD level at load time (the best
# the CPU supports, or IRNET_SIMD=scalar|avx2|avx512), and the binary convolution has two
# algorithms: "popcount" (the XNOR-popcount register tile, every level) and "lut" (table
# lookups on 4-channel nibbles, AVX2 level only: faster for layers with few input channels
# on large images, see csrc/cpu/xnor_lut.h); "auto" (the default, or
# IRNET_CPU_CONV=auto|popcount|lut at load) picks per layer.  Both are exact: the choice
# changes speed, never a result.  These functions read or change the settings.
def _cpu_control(name: str):
    """The compiled control op torch.ops.irnet.<name>, or None without the extension."""
    return getattr(torch.ops.irnet, name) if _ext.LOADED and hasattr(torch.ops.irnet, name) else None


def _read_cpu_control(name: str, convert=lambda v: v, fallback="reference"):
    op = _cpu_control(name)
    return convert(op()) if op is not None else fallback


def _set_cpu_control(name: str, value: str) -> None:
    op = _cpu_control(name)
    if op is not None:
        op(str(value))
    elif value != "reference":
        import warnings

        warnings.warn(f"irnet: the compiled CPU kernels are not loaded; {name}({value!r}) does nothing",
                      RuntimeWarning, stacklevel=3)


def cpu_simd_level() -> str:
    """The SIMD level the CPU XNOR kernels use now ('avx512', 'avx2', 'scalar'), or
    'reference' when the compiled CPU kernels are not available."""
    return _read_cpu_control("cpu_simd_level")


def cpu_simd_levels() -> list:
    """The SIMD levels this CPU (and build) can run, best first; ['reference'] without the extension."""
    return _read_cpu_control("cpu_simd_levels", list, ["reference"])


def set_cpu_simd_level(level: str) -> None:
    """Make the CPU XNOR kernels use ``level`` (one of :func:`cpu_simd_levels`).  Raises
    RuntimeError for a level this CPU cannot run; a no-op on the reference path."""
    _set_cpu_control("set_cpu_simd_level", level)


def cpu_conv_algorithm() -> str:
    """The CPU convolution algorithm setting: 'auto', 'popcount' or 'lut' ('reference'
    without the compiled kernels)."""
    return _read_cpu_control("cpu_conv_algorithm")


def cpu_conv_algorithms() -> list:
    """The settings that make a difference at the current SIMD level: ['auto', 'popcount',
    'lut'] at 'avx2', ['auto', 'popcount'] elsewhere (there 'lut' runs popcount)."""
    return _read_cpu_control("cpu_conv_algorithms", list, ["reference"])


def set_cpu_conv_algorithm(algorithm: str) -> None:
    """Set the CPU convolution algorithm: 'auto' (per layer), 'popcount', or 'lut' (wherever
    the LUT kernel applies: AVX2 level, padding not much larger than the image).  Raises
    RuntimeError for another name; a no-op on the reference path."""
    _set_cpu_control("set_cpu_conv_algorithm", algorithm)
