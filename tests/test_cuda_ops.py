"""The CUDA kernels (csrc/cuda/*.cu) against the contract in irnet/reference.py.

Every test here needs a CUDA device AND the compiled CUDA kernels; without them the
tests are skipped with the reason (they are never reported as passing).  The reference
side is always computed on the CPU, in float64 where it is a float computation, so a
CUDA result is never compared with itself.

Packed / XNOR results are compared with ``torch.equal``; the float training ops with
tolerances derived from the precision of the output dtype.  Fresh random data every
run; the seed and the shape are in every assertion message.

The conv, fused conv and linear tests run once per CUDA conv kernel (fixture `algo`:
"popc" on CUDA cores, "mma" on 1-bit tensor cores), with the cases of the CPU kernels' tests
(tests/test_xnor_cpu.py) among them.

NOTE: written on a machine without a GPU.  These tests have never run.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import irnet
from irnet import ops
from irnet import reference as ref
from test_fused import ACTS as FUSED_ACTS
from test_fused import fused_args as _fused_args
from test_fused import out_size
from test_xnor_cpu import CONV_CASES as _CPU_CONV_CASES
from test_xnor_cpu import pow2_scale

CUDA_OPS = ("pack_bits", "xnor_conv2d", "xnor_linear", "libra_pb", "libra_pb_backward", "libra_pb_pack",
            "sign_ede", "sign_ede_backward")

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA kernels cannot run here"),
    pytest.mark.skipif(
        not all(ops.has_compiled_kernel(op, "cuda") for op in CUDA_OPS),
        reason="irnet was built without its CUDA kernels (IRNET_CUDA=0, CPU-only torch, or irnet._C "
               "failed to load: %s); the CUDA ops would run the reference itself" % (irnet._ext.ERROR,)),
]

OPS = torch.ops.irnet
DEV = "cuda"
ALL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _seeded():
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    return seed


def _random_bits(shape):
    """Random int64 words over the whole range: tail bits past C are set too, so the
    kernels' masking of the last word is exercised (the reference ignores them)."""
    return torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64)


def _tail_masked(bits, channels):
    """Valid packed words: the bits past `channels` in the last word cleared (the layout's
    invariant; ref.xnor_linear_bits counts them, ref.xnor_conv2d_bits ignores them)."""
    rem = channels % 64
    if rem == 0 or bits.shape[-1] == 0:
        return bits
    out = bits.clone()
    out[..., -1] &= (1 << rem) - 1
    return out


def _special_values(dtype):
    return torch.tensor([-1.0, -0.0, 0.0, 1.0, float("nan"), -float("inf"), float("inf"), -1e-3, 1e-3],
                        dtype=torch.float64).to(dtype)


def _random_weight(shape, dtype):
    """randn weights with a random spread and offset, as trained weights are."""
    spread = 10 ** random.uniform(-3, 0)
    offset = random.uniform(-1, 1) * spread
    return (torch.randn(shape, dtype=torch.float64) * spread + offset).to(dtype)


def _kt(dtype=torch.float32, device=DEV):
    t = 10 ** random.uniform(-3, 1)
    k = max(1.0 / t, 1.0)
    return torch.tensor(k, dtype=dtype, device=device), torch.tensor(t, dtype=dtype, device=device)


# --------------------------------------------------------------------------- pack_bits
PACK_SHAPES = [(3, 1), (2, 63), (5, 64), (4, 65), (1, 200), (0, 7), (3, 0), (2, 1, 5), (2, 3, 7), (1, 64, 1, 1),
               (2, 65, 3, 5), (3, 130, 7, 7), (0, 64, 4, 4), (2, 17, 0, 3), (2, 5, 2, 3, 4), (1, 1, 9, 9)]


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", PACK_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pack_bits(shape, dtype):
    seed = _seeded()
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    if x.numel():
        flat = x.view(-1)
        sp = _special_values(dtype)
        idx = torch.randint(0, x.numel(), (min(x.numel(), 4 * sp.numel()),))
        flat[idx] = sp.repeat(4)[: idx.numel()]
    expect = ref.pack_bits(x)
    out = OPS.pack_bits(x.to(DEV))
    info = f"seed={seed} shape={shape} dtype={dtype}"
    assert out.device.type == DEV and out.dtype == torch.int64 and out.is_contiguous(), info
    assert torch.equal(out.cpu(), expect), info


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded"])
def test_pack_bits_layouts(layout, dtype):
    """Non-contiguous inputs: channels-last goes to the ballot kernel directly, the others
    through .contiguous(); all must give the reference's words."""
    seed = _seeded()
    base = torch.randn(3, 70, 6, 5, dtype=dtype)
    if layout == "channels_last":
        x = base.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = base.transpose(2, 3)
    elif layout == "sliced":
        x = base[:, 3:69:2, ::2]
    else:
        x = base[:, :, :1].expand(3, 70, 4, 5)
    expect = ref.pack_bits(x)
    out = OPS.pack_bits(x.to(DEV))
    assert torch.equal(out.cpu(), expect), f"seed={seed} layout={layout}"
    # a (N, C) matrix stored transposed
    m = torch.randn(130, 9, dtype=dtype).t()
    assert torch.equal(OPS.pack_bits(m.to(DEV)).cpu(), ref.pack_bits(m)), f"seed={seed} transposed matrix"


def test_pack_bits_double_tiny_negative():
    """A negative double below float32's range packs as negative (no flush to -0.0)."""
    x = torch.tensor([[-1e-300, 1e-300, -5e-324, -0.0]], dtype=torch.float64)
    out = OPS.pack_bits(x.t().contiguous().t().to(DEV))  # (1, 4)
    assert out.item() == 0b0101


# --------------------------------------------------------------------------- xnor_conv2d
# Every conv / linear test runs once per CUDA conv kernel (fixture `algo`): "popc" (CUDA
# cores) and "mma" (1-bit tensor cores), forced with ops.set_cuda_conv_algorithm, so that
# the first GPU run checks both paths bit for bit against the reference.
def _algo_params():
    if not torch.cuda.is_available():
        return ["popc", "mma"]  # skipped with the module's reason
    major = torch.cuda.get_device_capability()[0]
    return ["popc", pytest.param("mma", marks=pytest.mark.skipif(
        major < 8, reason=f"the tensor-core kernel needs compute capability >= 8.0 (this GPU: {major}.x)"))]


@pytest.fixture(params=_algo_params())
def algo(request):
    before = ops.cuda_conv_algorithm()
    ops.set_cuda_conv_algorithm(request.param)
    assert ops.cuda_conv_algorithm() == request.param
    yield request.param
    ops.set_cuda_conv_algorithm(before)


# (N, C, H, W, O, kh, kw, stride, padding, dilation)
CONV_CASES = [
    (1, 1, 5, 5, 1, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 3, 7, 6, 5, 3, 3, (1, 1), (0, 0), (1, 1)),
    (2, 63, 9, 9, 17, 3, 3, (2, 2), (1, 1), (1, 1)),
    (1, 64, 8, 8, 16, 3, 3, (1, 1), (1, 1), (1, 1)),
    (3, 65, 9, 9, 33, 3, 3, (1, 1), (1, 1), (1, 1)),      # > 128 pixels, O % 16 != 0
    (2, 130, 7, 7, 20, 3, 3, (2, 1), (2, 1), (2, 1)),
    (1, 100, 10, 11, 8, 5, 3, (1, 2), (2, 1), (1, 2)),
    (2, 64, 6, 6, 8, 1, 1, (2, 2), (0, 0), (1, 1)),
    (1, 70, 4, 4, 9, 3, 3, (1, 1), (3, 3), (1, 1)),       # padding beyond the kernel: all-zero rows
    (1, 7, 3, 3, 4, 3, 3, (1, 1), (2, 2), (2, 2)),
    (0, 64, 8, 8, 16, 3, 3, (1, 1), (1, 1), (1, 1)),      # batch 0
    (1, 1920, 6, 6, 20, 3, 3, (1, 1), (1, 1), (1, 1)),    # K = 270 words: 3 chunks, chunk starts mid-tap
    (2, 12800, 3, 3, 18, 1, 1, (1, 1), (0, 0), (1, 1)),   # K = 200 words in one tap: chunk starts at word 128
    (1, 5, 1, 1, 3, 7, 7, (1, 1), (3, 3), (1, 1)),        # 1x1 input, only the centre tap in frame
]
# ResNet-18 3x3 layers at small batch (the tensor-core tiles' target; "auto" takes mma for
# these on sm_80/90): fewer variants each, their float64 reference convs take a while
RESNET18_CASES = [
    (2, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 128, 28, 28, 128, 3, 3, (1, 1), (1, 1), (1, 1)),
    (3, 256, 14, 14, 256, 3, 3, (1, 1), (1, 1), (1, 1)),
    (4, 512, 7, 7, 512, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 256, 14, 14, 512, 3, 3, (2, 2), (1, 1), (1, 1)),  # stage transition, stride 2
]


def _from_cpu_case(c):
    n, ch, h, w, o, k, s, p, d = c
    return (n, ch, h, w, o, k[0], k[1], s, p, d)


# ... and the cases of the CPU kernels' tests (tests/test_xnor_cpu.py)
CONV_CASES += [_from_cpu_case(c) for c in _CPU_CONV_CASES if _from_cpu_case(c) not in CONV_CASES]


def _conv_id(c):
    n, ch, h, w, o, kh, kw, s, p, d = c
    return f"N{n}-C{ch}-{h}x{w}-O{o}-k{kh}x{kw}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}"


def _out_shape(case):
    n, c, h, w, o, kh, kw, s, p, d = case
    return (n, o, out_size(h, kh, s[0], p[0], d[0]), out_size(w, kw, s[1], p[1], d[1]))


@pytest.mark.parametrize("scale_kind", ["none", "pow2", "float32", "float64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_id)
def test_xnor_conv2d_bits(case, scale_kind, algo):
    seed = _seeded()
    n, c, h, w, o, kh, kw, stride, padding, dilation = case
    words = (c + 63) // 64
    xb = _random_bits((n, h, w, words))
    wb = _random_bits((o, kh, kw, words))
    if scale_kind == "none":
        scale = None
    elif scale_kind == "pow2":
        scale = 2.0 ** torch.randint(-6, 3, (o,)).float()
    else:
        scale = torch.randn(o, dtype=getattr(torch, scale_kind))
    expect = ref.xnor_conv2d_bits(xb, wb, scale, c, stride, padding, dilation)
    out = OPS.xnor_conv2d(xb.to(DEV), wb.to(DEV), None if scale is None else scale.to(DEV), c, list(stride),
                          list(padding), list(dilation))
    info = f"seed={seed} case={_conv_id(case)} scale={scale_kind} algo={algo}"
    assert out.dtype == torch.float32 and out.shape == expect.shape and out.is_contiguous(), info
    assert torch.equal(out.cpu(), expect), info
    out_cl = OPS.xnor_conv2d(xb.to(DEV), wb.to(DEV), None if scale is None else scale.to(DEV), c, list(stride),
                             list(padding), list(dilation), True)
    assert out_cl.is_contiguous(memory_format=torch.channels_last), info
    assert torch.equal(out_cl.cpu(), expect), info


@pytest.mark.parametrize("case", RESNET18_CASES, ids=_conv_id)
def test_xnor_conv2d_resnet18_layers(case, algo):
    seed = _seeded()
    n, c, h, w, o, kh, kw, stride, padding, dilation = case
    xb, wb = _random_bits((n, h, w, c // 64)), _random_bits((o, kh, kw, c // 64))
    scale = torch.rand(o)
    expect = ref.xnor_conv2d_bits(xb, wb, scale, c, stride, padding, dilation)
    for cl in (False, True):
        out = OPS.xnor_conv2d(xb.to(DEV), wb.to(DEV), scale.to(DEV), c, list(stride), list(padding), list(dilation), cl)
        assert torch.equal(out.cpu(), expect), f"seed={seed} case={_conv_id(case)} cl={cl} algo={algo}"


def test_conv_algorithms_agree():
    """auto, popc and mma give the same bits on a call big enough for auto to take mma."""
    seed = _seeded()
    case = (2, 128, 28, 28, 128, 3, 3, (1, 1), (1, 1), (1, 1))
    n, c, h, w, o, kh, kw, s, p, d = case
    xb, wb = _random_bits((n, h, w, 2)).to(DEV), _random_bits((o, kh, kw, 2)).to(DEV)
    before = ops.cuda_conv_algorithm()
    outs = {}
    try:
        for a in ops.cuda_conv_algorithms():
            if a == "mma" and torch.cuda.get_device_capability()[0] < 8:
                continue
            ops.set_cuda_conv_algorithm(a)
            outs[a] = OPS.xnor_conv2d(xb, wb, None, c, list(s), list(p), list(d))
    finally:
        ops.set_cuda_conv_algorithm(before)
    expect = ref.xnor_conv2d_bits(xb.cpu(), wb.cpu(), None, c, s, p, d)
    for a, out in outs.items():
        assert torch.equal(out.cpu(), expect), f"seed={seed} algo={a}"


@pytest.mark.parametrize("case", CONV_CASES[:10], ids=_conv_id)
def test_xnor_conv2d_float_end_to_end(case, algo):
    """irnet.ops.xnor_conv2d(x, w) == F.conv2d(sign(x), sign(w) * scale) in float64, exactly."""
    seed = _seeded()
    n, c, h, w, o, kh, kw, stride, padding, dilation = case
    x = torch.randn(n, c, h, w)
    wt = torch.randn(o, c, kh, kw)
    pw = ops.libra_pb_pack(wt.to(DEV))
    out = ops.xnor_conv2d(x.to(DEV), pw, stride, padding, dilation)
    _, _, _, scale = ref.libra_pb_parts(wt.double())
    wsign = ref.sign(ref.libra_pb_parts(wt.double())[1])
    expect = F.conv2d(ref.sign(x.double()), wsign, None, stride, padding, dilation).float() \
        * scale.float().reshape(1, -1, 1, 1)
    assert torch.equal(out.cpu(), expect), f"seed={seed} case={_conv_id(case)} algo={algo}"


@pytest.mark.parametrize("case", CONV_CASES[:8], ids=_conv_id)
def test_xnor_conv2d_float_x_bits(case, algo):
    """The float activations in place of x_bits: packed by the op, the same bits as
    pack_bits then the packed op (NCHW and channels_last input)."""
    seed = _seeded()
    n, c, h, w, o, kh, kw, stride, padding, dilation = case
    x = torch.randn(n, c, h, w, device=DEV)
    wb = _random_bits((o, kh, kw, (c + 63) // 64)).to(DEV)
    args = (wb, None, c, list(stride), list(padding), list(dilation))
    expect = OPS.xnor_conv2d(OPS.pack_bits(x), *args)
    for xin in (x, x.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(OPS.xnor_conv2d(xin, *args), expect), f"seed={seed} case={_conv_id(case)} algo={algo}"


# --------------------------------------------------------------------------- xnor_conv2d_fused
@pytest.mark.parametrize("case", CONV_CASES + RESNET18_CASES, ids=_conv_id)
def test_xnor_conv2d_fused(case, algo):
    """The fused kernel (conv + folded BatchNorm + residual + clamp in the conv's epilogue)
    against reference.xnor_conv2d_fused_bits on the CPU, bit for bit; a NaN in the
    residual stays NaN; every residual layout, activation, scale kind and output layout."""
    seed = _seeded()
    n, c, h, w, o, kh, kw, stride, padding, dilation = case
    words = (c + 63) // 64
    xb, wb = _random_bits((n, h, w, words)), _random_bits((o, kh, kw, words))
    shape = _out_shape(case)
    # reference.xnor_conv2d_fused_bits, with its conv computed once: dot (* scale) then the epilogue
    dot = ref.xnor_conv2d_bits(xb, wb, None, c, stride, padding, dilation)
    for i, residual_kind in enumerate(("none", "nchw", "channels_last", "nonfinite")):
        act = FUSED_ACTS[i % len(FUSED_ACTS)]
        scale = (None, pow2_scale(o), torch.rand(o) * 3)[i % 3]
        alpha, beta, residual, lo, hi = _fused_args(o, shape, act, residual_kind)
        conv = dot if scale is None else dot * scale.reshape(1, -1, 1, 1)
        expect = ref.fused_epilogue(conv, alpha, beta, residual, lo, hi)
        for cl in (False, True):
            out = OPS.xnor_conv2d_fused(xb.to(DEV), wb.to(DEV), None if scale is None else scale.to(DEV), c,
                                        list(stride), list(padding), list(dilation), cl, alpha.to(DEV), beta.to(DEV),
                                        None if residual is None else residual.to(DEV), lo, hi)
            fmt = torch.channels_last if cl else torch.contiguous_format
            info = f"seed={seed} case={_conv_id(case)} residual={residual_kind} act={act} cl={cl} algo={algo}"
            assert out.dtype == torch.float32 and out.is_contiguous(memory_format=fmt), info
            torch.testing.assert_close(out.cpu(), expect, rtol=0, atol=0, equal_nan=True, msg=info)


@pytest.mark.parametrize("case", CONV_CASES[1:12:3], ids=_conv_id)
def test_xnor_conv2d_fused_float_input(case, algo):
    """Float activations in place of x_bits (NCHW or channels_last): the same bits as the
    packed input, residual and epilogue included."""
    seed = _seeded()
    n, c, h, w, o, kh, kw, stride, padding, dilation = case
    x = torch.randn(n, c, h, w, device=DEV)
    wb = _random_bits((o, kh, kw, (c + 63) // 64)).to(DEV)
    alpha, beta, residual, lo, hi = _fused_args(o, _out_shape(case), (-1.0, 1.0), "nchw")
    for cl in (False, True):
        args = (wb, None, c, list(stride), list(padding), list(dilation), cl, alpha.to(DEV), beta.to(DEV),
                residual.to(DEV), lo, hi)
        expect = OPS.xnor_conv2d_fused(OPS.pack_bits(x), *args)
        for xin in (x, x.contiguous(memory_format=torch.channels_last)):
            assert torch.equal(OPS.xnor_conv2d_fused(xin, *args), expect), f"seed={seed} {_conv_id(case)} cl={cl}"


# --------------------------------------------------------------------------- xnor_linear
@pytest.mark.parametrize("scale_kind", ["none", "float32"])
@pytest.mark.parametrize("n,features,o", [(1, 1, 1), (7, 63, 17), (0, 64, 5), (300, 65, 40), (3, 1000, 16),
                                          (5, 9600, 20), (2, 128, 0), (256, 4096, 512)])
def test_xnor_linear_bits(n, features, o, scale_kind, algo):
    seed = _seeded()
    words = (features + 63) // 64
    xb = _random_bits((n, words))
    wb = _random_bits((o, words))
    scale = None if scale_kind == "none" else torch.randn(o)
    expect = ref.xnor_linear_bits(_tail_masked(xb, features), _tail_masked(wb, features), scale, features)
    info = f"seed={seed} n={n} features={features} o={o} scale={scale_kind} algo={algo}"
    sc = None if scale is None else scale.to(DEV)
    out = OPS.xnor_linear(_tail_masked(xb, features).to(DEV), _tail_masked(wb, features).to(DEV), sc, features)
    assert out.dtype == torch.float32 and out.shape == (n, o) and out.is_contiguous(), info
    assert torch.equal(out.cpu(), expect), info
    # garbage past in_features in the last word is ignored (the kernel masks it)
    assert torch.equal(OPS.xnor_linear(xb.to(DEV), wb.to(DEV), sc, features).cpu(), expect), info


def test_xnor_linear_float_end_to_end(algo):
    seed = _seeded()
    x = torch.randn(9, 300)
    w = torch.randn(11, 300)
    out = ops.xnor_linear(x.to(DEV), w.to(DEV))
    expect = F.linear(ref.sign(x.double()), ref.sign(w.double())).float()
    assert torch.equal(out.cpu(), expect), f"seed={seed} algo={algo}"


# --------------------------------------------------------------------------- sign_ede
@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(0,), (1,), (1000,), (3, 5, 7, 9), (2, 0, 3)], ids=str)
def test_sign_ede(shape, dtype):
    seed = _seeded()
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    if x.numel() >= 9:
        x.view(-1)[:9] = _special_values(dtype)
    k, t = _kt(dtype)
    out = OPS.sign_ede(x.to(DEV), k, t)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out.cpu(), ref.sign(x)), f"seed={seed}"


# bound on |kernel - float64 truth| relative to |truth| + the size of the terms
_EDE_TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(0,), (5,), (4096,), (3, 7, 11, 13)], ids=str)
def test_sign_ede_backward(shape, dtype):
    seed = _seeded()
    x = (torch.randn(shape, dtype=torch.float64) * 2).to(dtype)
    g = torch.randn(shape, dtype=torch.float64).to(dtype)
    k, t = _kt(dtype)
    out = OPS.sign_ede_backward(g.to(DEV), x.to(DEV), k, t)
    truth = ref.ede_grad(g.double(), x.double(), k.double().cpu(), t.double().cpu())
    tol = _EDE_TOL[dtype]
    size = (k * t).abs().item() * g.abs().max().item() if g.numel() else 0.0
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.cpu().double(), truth, rtol=tol, atol=tol * size,
                               msg=lambda m: f"seed={seed} dtype={dtype}: {m}")


def test_sign_ede_autograd():
    seed = _seeded()
    x = torch.randn(4, 33, 5, 5)
    k, t = 1.7, 0.6
    xc = x.to(DEV, copy=True).requires_grad_(True)
    y = ops.sign_ede(xc, k, t)
    g = torch.randn_like(x)
    y.backward(g.to(DEV))
    x64 = x.double().requires_grad_(True)
    ref.sign_ede(x64, k, t).backward(g.double())
    torch.testing.assert_close(xc.grad.cpu().double(), x64.grad, rtol=1e-5, atol=1e-6,
                               msg=lambda m: f"seed={seed}: {m}")


def test_non_contiguous_training_inputs():
    x = torch.randn(8, 6, 5, device=DEV).transpose(0, 2)
    g = torch.randn(8, 6, 5, device=DEV).transpose(0, 2)
    k, t = _kt()
    assert torch.equal(OPS.sign_ede(x, k, t), OPS.sign_ede(x.contiguous(), k, t))
    assert torch.equal(OPS.sign_ede_backward(g, x, k, t), OPS.sign_ede_backward(g.contiguous(), x.contiguous(), k, t))
    w = torch.randn(7, 9, 3, 3, device=DEV).transpose(0, 1)
    for a, b in zip(OPS.libra_pb(w, k, t), OPS.libra_pb(w.contiguous(), k, t)):
        assert torch.equal(a, b) and a.is_contiguous()


# --------------------------------------------------------------------------- libra_pb
# float64 truth vs the kernel's rounded outputs: v and inv_sigma to the dtype's precision
_LIBRA_TOL = {torch.float32: 2e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 8e-3}
LIBRA_SHAPES = [(1, 3), (5, 1), (7, 64), (16, 3, 3, 3), (9, 64, 3, 3), (4, 65, 7, 7), (3, 512, 3, 3), (2, 1000),
                (0, 5, 3, 3), (12, 1, 1, 1), (6, 5)]


def _check_libra(w, parts, seed):
    wb, v, inv_sigma, scale = (p.cpu() for p in parts)
    dtype = w.dtype
    info = f"seed={seed} shape={tuple(w.shape)} dtype={dtype}"
    if w.shape[0] == 0:  # no channel (the reference cannot reshape (0, -1)): shapes only
        assert wb.shape == v.shape == w.shape and inv_sigma.shape == scale.shape == (0,), info
        assert all(p.dtype == dtype for p in (wb, v, inv_sigma, scale)), info
        return
    rwb, rv, rinv, rscale = ref.libra_pb_parts(w.double())
    for a, r in zip((wb, v, inv_sigma, scale), (rwb, rv, rinv, rscale)):
        assert a.dtype == dtype and a.shape == r.shape and a.is_contiguous(), info
    tol = _LIBRA_TOL[dtype]
    torch.testing.assert_close(v.double(), rv, rtol=tol, atol=tol, msg=lambda m: f"v: {info}: {m}")
    torch.testing.assert_close(inv_sigma.double(), rinv, rtol=tol, atol=0, msg=lambda m: f"inv_sigma: {info}: {m}")
    assert torch.equal(v < 0, rv < 0), f"sign(v) differs: {info}"
    # scale: exactly the CPU kernel's (both run csrc/core/libra_pb.h; for float16/bfloat16
    # mean|v| and the power of two are float32 values of the unrounded v, rounded once)
    cpu_scale = OPS.libra_pb(w, torch.tensor(1.0, dtype=dtype), torch.tensor(1.0, dtype=dtype))[3]
    assert torch.equal(scale, cpu_scale), f"scale differs from the CPU kernel's: {info}\n{scale}\n{cpu_scale}"
    if dtype in (torch.float32, torch.float64):
        # v is within an ulp of the float64 truth: a tie is then vanishingly unlikely
        assert torch.equal(scale.double(), rscale), f"scale differs from float64: {info}\n{scale}\n{rscale}"
    bshape = (-1,) + (1,) * (w.dim() - 1)
    assert torch.equal(wb, torch.where(v < 0, -scale.reshape(bshape), scale.reshape(bshape))), info


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", LIBRA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_libra_pb_forward(shape, dtype):
    seed = _seeded()
    w = _random_weight(shape, dtype)
    k, t = _kt(dtype)
    parts = OPS.libra_pb(w.to(DEV), k, t)
    _check_libra(w, parts, seed)
    if w.dim() >= 2 and w.numel() and w[0].numel() == 1:  # n == 1: every channel degenerate
        assert not parts[1].any() and not parts[2].any() and not parts[3].any()


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
def test_libra_pb_constant_channels(dtype):
    """sigma == 0 (a constant channel, exactly representable so that the float64 mean
    reproduces it): v = inv_sigma = scale = wb = 0, and a zero gradient."""
    seed = _seeded()
    w = _random_weight((6, 5, 3, 3), dtype)
    w[1] = 0.25
    w[4] = 0.0
    k, t = _kt(dtype)
    parts = OPS.libra_pb(w.to(DEV), k, t)
    for j in (1, 4):
        for p in parts:
            assert not p[j].any(), f"seed={seed}: constant channel {j} gave a nonzero output"
    _check_libra(w, parts, seed)
    _, v, inv_sigma, scale = parts
    g = torch.randn(w.shape, device=DEV).to(dtype)
    gw = OPS.libra_pb_backward(g, v, inv_sigma, scale, k, t)
    assert not gw[1].any() and not gw[4].any() and gw[0].abs().sum() > 0, f"seed={seed}"


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 3, 3, 3), (16, 17, 5, 5), (8, 64, 3, 3), (4, 65, 7, 7),
                                   (6, 3), (5, 65), (3, 5000)], ids=lambda s: "x".join(map(str, s)))
def test_libra_pb_backward(shape, dtype):
    seed = _seeded()
    w = _random_weight(shape, dtype)
    _, v, inv_sigma, scale = ref.libra_pb_parts(w.double())
    v, inv_sigma, scale = v.to(dtype), inv_sigma.to(dtype), scale.to(dtype)
    g = torch.randn(shape, dtype=torch.float64).to(dtype)
    k, t = _kt(dtype)
    out = OPS.libra_pb_backward(g.to(DEV), v.to(DEV), inv_sigma.to(DEV), scale.to(DEV), k, t)
    truth = ref.libra_pb_backward(g.double(), v.double(), inv_sigma.double(), scale.double(), k.double().cpu(),
                                  t.double().cpu())
    assert out.dtype == dtype and out.shape == w.shape and out.is_contiguous()
    # the rounding error is relative to the size of the terms, not to grad_w (which cancels)
    size = (inv_sigma.double().abs().max() * scale.double().abs().max() * (k * t).double().abs().cpu()
            * g.double().abs().max()).item()
    tol = _LIBRA_TOL[dtype] * 4
    torch.testing.assert_close(out.cpu().double(), truth, rtol=tol, atol=tol * size + 1e-300,
                               msg=lambda m: f"seed={seed} shape={shape} dtype={dtype}: {m}")


@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (16, 65, 1, 1), (5, 33), (4, 2, 5, 5)], ids=str)
def test_libra_pb_autograd(shape):
    """ops.libra_pb(w).backward(g) on CUDA vs autograd through the plain formula (float64, CPU)."""
    seed = _seeded()
    w0 = _random_weight(shape, torch.float64)
    g = torch.randn(shape, dtype=torch.float64)
    k, t = 1.0 / 0.3, 0.3
    w1 = w0.to(DEV, copy=True).requires_grad_(True)
    ops.libra_pb(w1, torch.tensor(k, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)).backward(g.to(DEV))
    w2 = w0.clone().requires_grad_(True)
    ref.libra_pb(w2, torch.tensor(k, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)).backward(g)
    torch.testing.assert_close(w1.grad.cpu(), w2.grad, rtol=1e-9, atol=1e-12 * w2.grad.abs().max().item(),
                               msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (9, 65, 3, 3), (33, 200), (5, 1, 1, 1), (0, 4, 3, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_libra_pb_pack(shape, dtype):
    seed = _seeded()
    w = _random_weight(shape, dtype)
    wd = w.to(DEV)
    bits, scale = OPS.libra_pb_pack(wd)
    info = f"seed={seed} shape={shape} dtype={dtype}"
    assert bits.dtype == torch.int64 and scale.dtype == dtype and bits.is_contiguous(), info
    assert bits.shape == ref.pack_bits(w).shape and scale.shape == (shape[0],), info
    if shape[0] == 0:
        return
    _, v, _, full_scale = OPS.libra_pb(wd, *_kt(dtype))
    _, rv, _, _ = ref.libra_pb_parts(w.double())
    assert torch.equal(bits.cpu(), ref.pack_bits(v.cpu())), info   # packs its own v
    assert torch.equal(bits.cpu(), ref.pack_bits(rv)), info        # whose signs are the truth's
    assert torch.equal(scale, full_scale), info
    _check_libra(w, OPS.libra_pb(wd, *_kt(dtype)), seed)


# --------------------------------------------------------------------------- opcheck
def _opcheck_cases():
    kt = (torch.tensor(1.3, device=DEV), torch.tensor(0.7, device=DEV))
    w = torch.randn(6, 5, 3, 3, device=DEV)
    _, v, inv_sigma, scale = OPS.libra_pb(w, *kt)
    x = torch.randn(3, 70, 5, device=DEV)
    return [
        ("pack_bits", (x,)),
        ("pack_bits", (torch.randn(4, 130, device=DEV, dtype=torch.float16),)),
        ("xnor_conv2d", (_random_bits((2, 6, 5, 2)).to(DEV), _random_bits((7, 3, 3, 2)).to(DEV),
                         torch.rand(7, device=DEV), 100, [2, 1], [1, 1], [1, 2])),
        ("xnor_conv2d", (_random_bits((1, 4, 4, 1)).to(DEV), _random_bits((3, 1, 1, 1)).to(DEV), None, 5,
                         [1, 1], [0, 0], [1, 1], True)),
        ("xnor_linear", (_random_bits((5, 3)).to(DEV), _random_bits((9, 3)).to(DEV), torch.rand(9, device=DEV), 150)),
        ("xnor_linear", (_random_bits((5, 1)).to(DEV), _random_bits((2, 1)).to(DEV), None, 64)),
        ("libra_pb", (w.clone().requires_grad_(True), *kt)),
        ("libra_pb", (torch.randn(4, 9, device=DEV, dtype=torch.float64), *(p.double() for p in kt))),
        ("libra_pb_backward", (torch.randn_like(w), v, inv_sigma, scale, *kt)),
        ("libra_pb_pack", (w,)),
        ("sign_ede", (x.clone().requires_grad_(True), *kt)),
        ("sign_ede_backward", (torch.randn_like(x), x, *kt)),
    ]


_OPCHECK_IDS = ["pack_bits-f32", "pack_bits-f16", "xnor_conv2d-scale", "xnor_conv2d-noscale-channels_last", "xnor_linear-scale",
                "xnor_linear-noscale", "libra_pb-grad", "libra_pb-f64", "libra_pb_backward", "libra_pb_pack",
                "sign_ede", "sign_ede_backward"]


@pytest.mark.parametrize("case", range(len(_OPCHECK_IDS)), ids=_OPCHECK_IDS)
def test_opcheck(case):
    name, args = _opcheck_cases()[case]
    torch.library.opcheck(getattr(OPS, name).default, args)


def test_opcheck_conv_kernels(algo):
    """torch.library.opcheck of the conv ops (schema, fake kernel, no aliasing) on each kernel."""
    xb, wb = _random_bits((2, 6, 5, 2)).to(DEV), _random_bits((7, 3, 3, 2)).to(DEV)
    alpha, beta = torch.randn(7, device=DEV), torch.randn(7, device=DEV)
    one = [1, 1]
    torch.library.opcheck(OPS.xnor_conv2d.default, (xb, wb, torch.rand(7, device=DEV), 100, [2, 1], one, [1, 2]))
    torch.library.opcheck(OPS.xnor_conv2d.default, (xb, wb, None, 100, one, one, one, True))
    torch.library.opcheck(OPS.xnor_conv2d_fused.default,
                          (xb, wb, None, 100, one, one, one, False, alpha, beta, torch.randn(2, 7, 6, 5, device=DEV),
                           -1.0, 1.0))
    torch.library.opcheck(OPS.xnor_conv2d_fused.default,
                          (torch.randn(2, 100, 6, 5, device=DEV), wb, torch.rand(7, device=DEV), 100, [2, 1], [0, 2],
                           one, True, alpha, beta, None, 0.0, float("inf")))
    torch.library.opcheck(OPS.xnor_linear.default, (_random_bits((5, 3)).to(DEV), _random_bits((9, 3)).to(DEV),
                                                    torch.rand(9, device=DEV), 150))


# --------------------------------------------------------------------------- streams, syncs
def test_kernels_run_on_the_current_stream(algo):
    """On a side stream, an input written after a long device sleep must be what the
    kernel reads: a kernel launched on another (non-waiting) stream would read the old
    values, whose signs are all flipped."""
    x_new = torch.randn(4, 130, 6, 6)
    w = _random_bits((9, 3, 3, 3))
    alpha, beta = torch.randn(9), torch.randn(9)
    buf = (-x_new).to(DEV)
    wd = w.to(DEV)
    new_d = x_new.to(DEV)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of device time before the copy
        buf.copy_(new_d)
        bits = OPS.pack_bits(buf)
        y = OPS.xnor_conv2d(bits, wd, None, 130, [1, 1], [1, 1], [1, 1])
        yf = OPS.xnor_conv2d_fused(buf, wd, None, 130, [1, 1], [1, 1], [1, 1], True, alpha.to(DEV), beta.to(DEV),
                                   None, -1.0, 1.0)
        s = OPS.sign_ede(buf, torch.tensor(1.0, device=DEV), torch.tensor(1.0, device=DEV))
    torch.cuda.synchronize()
    xb = ref.pack_bits(x_new)
    assert torch.equal(bits.cpu(), xb)
    assert torch.equal(y.cpu(), ref.xnor_conv2d_bits(xb, w, None, 130, (1, 1), (1, 1), (1, 1)))
    assert torch.equal(yf.cpu(), ref.xnor_conv2d_fused_bits(xb, w, None, 130, (1, 1), (1, 1), (1, 1), alpha, beta,
                                                             None, -1.0, 1.0))
    assert torch.equal(s.cpu(), ref.sign(x_new))


def test_no_host_sync(algo):
    """No op synchronises with the host (k, t, scale are read on the device)."""
    k, t = _kt()
    w = torch.randn(8, 16, 3, 3, device=DEV)
    x = torch.randn(2, 16, 6, 6, device=DEV)
    g = torch.randn_like(w)
    xb = _random_bits((2, 6, 6, 1)).to(DEV)
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        wb, v, inv_sigma, scale = OPS.libra_pb(w, k, t)
        OPS.libra_pb_backward(g, v, inv_sigma, scale, k, t)
        bits, sc = OPS.libra_pb_pack(w)
        OPS.sign_ede(x, k, t)
        OPS.sign_ede_backward(x, x, k, t)
        OPS.xnor_conv2d(xb, bits, sc, 16, [1, 1], [1, 1], [1, 1])
        OPS.xnor_conv2d_fused(x, bits, sc, 16, [1, 1], [1, 1], [1, 1], True, sc, sc, torch.randn(2, 8, 6, 6,
                              device=DEV), -1.0, 1.0)
        OPS.xnor_linear(OPS.pack_bits(x.reshape(2, -1)), OPS.pack_bits(torch.randn(3, 576, device=DEV)), None, 576)
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    torch.cuda.synchronize()


# --------------------------------------------------------------------------- 64-bit indexing
def test_more_than_2_31_elements():
    """pack_bits (both kernels) and sign_ede on a float16 tensor of more than 2^31
    elements: the marked values past index 2^31 land in the right bits."""
    free, _ = torch.cuda.mem_get_info()
    if free < 16 * 2**30:
        pytest.skip(f"needs ~16 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    s = 2**25 + 3  # 64 * s > 2^31
    x = torch.zeros(1, 64, s, dtype=torch.float16, device=DEV)
    x[0, 63, s - 1] = -1
    x[0, 0, s - 1] = -1
    x[0, 5, 7] = -1
    bits = OPS.pack_bits(x)  # planar kernel
    assert bits.shape == (1, s, 1)
    assert bits[0, s - 1, 0].item() == -(2**63) + 1 and bits[0, 7, 0].item() == 1 << 5
    assert torch.count_nonzero(bits).item() == 2
    y = OPS.sign_ede(x, torch.tensor(1.0, device=DEV), torch.tensor(1.0, device=DEV))
    assert y[0, 63, s - 1].item() == -1 and y[0, 62, s - 1].item() == 1 and (y < 0).sum().item() == 3
    del y, bits
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # channels innermost: ballot kernel
    del x
    bits = OPS.pack_bits(xt)
    assert bits[0, s - 1, 0].item() == -(2**63) + 1 and bits[0, 7, 0].item() == 1 << 5
    assert torch.count_nonzero(bits).item() == 2


# --------------------------------------------------------------------------- bad input
def _bits(shape, device=DEV):
    return _random_bits(shape).to(device)


@pytest.mark.parametrize("call,match", [
    (lambda: OPS.xnor_conv2d(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1), "cpu"), None, 64, [1, 1], [1, 1], [1, 1]),
     "w_bits to be a CUDA tensor"),
    (lambda: OPS.xnor_conv2d(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1)), torch.ones(2), 64, [1, 1], [1, 1], [1, 1]),
     "scale to be a CUDA tensor"),
    (lambda: OPS.xnor_conv2d(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1)), torch.ones(3, device=DEV), 64, [1, 1], [1, 1],
                             [1, 1]), "scale of shape"),
    (lambda: OPS.xnor_conv2d(_bits((1, 4, 4, 2)), _bits((2, 3, 3, 2)), None, 64, [1, 1], [1, 1], [1, 1]),
     "words per position"),
    (lambda: OPS.xnor_conv2d(_bits((1, 4, 4, 1)).int(), _bits((2, 3, 3, 1)).int(), None, 64, [1, 1], [1, 1], [1, 1]),
     "dtype"),
    (lambda: OPS.xnor_conv2d(_bits((1, 2, 2, 1)), _bits((2, 3, 3, 1)), None, 64, [1, 1], [0, 0], [1, 1]),
     "does not fit"),
    (lambda: OPS.xnor_conv2d(_bits((1, 2, 2, 1)), _bits((2, 3, 3, 1)), None, 64, [2, 2], [0, 0], [1, 1]),
     "does not fit"),  # (2 - 3) // 2 + 1 = 0 rows, although C++'s (2 - 3) / 2 + 1 is 1
    (lambda: OPS.xnor_conv2d(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1)), None, 64, [0, 1], [0, 0], [1, 1]),
     "stride >= 1"),
    (lambda: OPS.xnor_conv2d_fused(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1)), None, 64, [1, 1], [1, 1], [1, 1],
                                   False, torch.ones(2, device=DEV), torch.ones(3, device=DEV), None, -1.0, 1.0),
     "alpha and beta as float32 tensors of shape"),
    (lambda: OPS.xnor_conv2d_fused(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1)), None, 64, [1, 1], [1, 1], [1, 1],
                                   False, torch.ones(2, device=DEV).double(), torch.ones(2, device=DEV), None, -1.0,
                                   1.0), "alpha and beta as float32"),
    (lambda: OPS.xnor_conv2d_fused(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1)), None, 64, [1, 1], [1, 1], [1, 1],
                                   False, torch.ones(2), torch.ones(2, device=DEV), None, -1.0, 1.0),
     "alpha to be a CUDA tensor"),
    (lambda: OPS.xnor_conv2d_fused(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1)), None, 64, [1, 1], [1, 1], [1, 1],
                                   False, torch.ones(2, device=DEV), torch.ones(2, device=DEV),
                                   torch.ones(1, 2, 3, 4, device=DEV), -1.0, 1.0), "residual as a float32 tensor"),
    (lambda: OPS.xnor_conv2d_fused(_bits((1, 4, 4, 1)), _bits((2, 3, 3, 1)), None, 64, [1, 1], [1, 1], [1, 1],
                                   False, torch.ones(2, device=DEV), torch.ones(2, device=DEV), None, 1.0, -1.0),
     "act_min <= act_max"),
    (lambda: OPS.xnor_linear(_bits((3, 1)), _bits((2, 1), "cpu"), None, 64), "w_bits to be a CUDA tensor"),
    (lambda: OPS.xnor_linear(_bits((3, 2)), _bits((2, 1)), None, 64), "words per row"),
    # in_channels / in_features 0: rejected, as on the CPU
    (lambda: OPS.xnor_conv2d(_bits((1, 4, 4, 0)), _bits((2, 3, 3, 0)), None, 0, [1, 1], [1, 1], [1, 1]),
     "in_channels >= 1"),
    (lambda: OPS.xnor_linear(_bits((3, 0)), _bits((2, 0)), None, 0), "in_features >= 1"),
    (lambda: OPS.pack_bits(torch.ones(3, 4, dtype=torch.int32, device=DEV)), "float32, float64"),
    (lambda: OPS.pack_bits(torch.ones(3, device=DEV)), "rank >= 2"),
    (lambda: OPS.sign_ede(torch.ones(3, device=DEV), torch.tensor(1.0), torch.tensor(1.0, device=DEV)),
     "k to be a CUDA tensor"),
    (lambda: OPS.sign_ede_backward(torch.ones(3, device=DEV), torch.ones(3), torch.tensor(1.0, device=DEV),
                                   torch.tensor(1.0, device=DEV)), "x to be a CUDA tensor"),
    (lambda: OPS.sign_ede_backward(torch.ones(3, device=DEV), torch.ones(3, device=DEV), torch.ones(2, device=DEV),
                                   torch.tensor(1.0, device=DEV)), "one-element"),
    (lambda: OPS.libra_pb(torch.ones(3, device=DEV), torch.tensor(1.0, device=DEV), torch.tensor(1.0, device=DEV)),
     "rank >= 2"),
    (lambda: OPS.libra_pb_backward(torch.ones(2, 3, device=DEV), torch.ones(2, 3, device=DEV), torch.ones(2),
                                   torch.ones(2, device=DEV), torch.tensor(1.0, device=DEV),
                                   torch.tensor(1.0, device=DEV)), "inv_sigma to be a CUDA tensor"),
    (lambda: OPS.libra_pb_backward(torch.ones(2, 3, device=DEV), torch.ones(2, 4, device=DEV),
                                   torch.ones(2, device=DEV), torch.ones(2, device=DEV),
                                   torch.tensor(1.0, device=DEV), torch.tensor(1.0, device=DEV)), "shape of grad_wb"),
])
def test_bad_input(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_python_api_rejects_mixed_devices():
    with pytest.raises(ValueError, match="one device"):
        ops.xnor_conv2d(torch.randn(1, 8, 5, 5, device=DEV), torch.randn(4, 8, 3, 3))
