"""The fused CPU training kernels (csrc/cpu/libra_pb_cpu.cpp, csrc/cpu/sign_ede_cpu.cpp)
against the contract in irnet/reference.py: libra_pb, libra_pb_backward, libra_pb_pack,
sign_ede, sign_ede_backward, the autograd path through IRConv2d / IRLinear, and
torch.compile.  Fresh random data every run; the seed is in the failure messages."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn as tnn

import irnet
from irnet import ops
from irnet import reference as ref

pytestmark = pytest.mark.skipif(
    not all(ops.has_compiled_kernel(op, "cpu") for op in
            ("libra_pb", "libra_pb_backward", "libra_pb_pack", "sign_ede", "sign_ede_backward")),
    reason="the compiled CPU training kernels are not built (irnet._C: %s)" % (irnet._ext.ERROR,))

OPS = torch.ops.irnet
FLOATS = (torch.float32, torch.float64)
ALL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _seeded():
    """A fresh seed for this test (Python's and torch's generators), printed in the
    assertion messages: the failing case can be replayed with it."""
    seed = random.SystemRandom().randrange(2**31)
    random.seed(seed)
    torch.manual_seed(seed)
    return seed


def _ede_kt():
    """A random point of the EDE schedule: t in [1e-3, 10], k = max(1/t, 1)."""
    t = 10 ** random.uniform(-3, 1)
    return max(1.0 / t, 1.0), t


def _scalars(k, t, dtype):
    return torch.tensor(k, dtype=dtype), torch.tensor(t, dtype=dtype)


def _random_weight(shape, dtype):
    """randn weights with a random per-tensor spread and offset (as trained weights)."""
    spread = 10 ** random.uniform(-3, 0)
    offset = random.uniform(-1, 1) * spread
    return (torch.randn(shape, dtype=torch.float64) * spread + offset).to(dtype)


CONV_SHAPES = [(c, kk) for c in (1, 3, 17, 64, 65) for kk in (1, 3, 5, 7)]
LINEAR_IN = (3, 5, 64, 65, 257)


def _shapes():
    for c, kk in CONV_SHAPES:
        yield pytest.param((c, kk, kk), id=f"conv-C{c}-{kk}x{kk}")
    for c in LINEAR_IN:
        yield pytest.param((c,), id=f"linear-C{c}")


def _tolerances(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- libra_pb forward
def _check_forward(w, parts, ref_parts, seed, exact_scale=True):
    wb, v, inv_sigma, scale = parts
    rwb, rv, rinv, rscale = ref_parts
    info = f"seed={seed} shape={tuple(w.shape)} dtype={w.dtype}"
    for a, r in zip(parts, ref_parts):
        assert a.dtype == r.dtype and a.shape == r.shape and a.is_contiguous(), info
    assert torch.equal(v < 0, rv < 0), f"sign(v) differs: {info}"
    if exact_scale:
        assert torch.equal(scale, rscale), f"scale differs: {info}\n{scale}\n{rscale}"
        assert torch.equal(wb, rwb), f"wb differs: {info}"
    torch.testing.assert_close(v, rv, **_tolerances(w.dtype), msg=lambda m: f"{info}: {m}")
    torch.testing.assert_close(inv_sigma, rinv, rtol=_tolerances(w.dtype)["rtol"], atol=0,
                               msg=lambda m: f"{info}: {m}")
    # wb is sign(v) * scale, channel by channel
    bshape = (-1,) + (1,) * (w.dim() - 1)
    assert torch.equal(wb, torch.where(v < 0, -scale.reshape(bshape), scale.reshape(bshape))), info


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("tail", list(_shapes()))
def test_libra_pb_forward(tail, dtype):
    seed = _seeded()
    o = random.randint(1, 24)
    w = _random_weight((o,) + tail, dtype)
    k, t = _scalars(*_ede_kt(), dtype)
    parts = OPS.libra_pb(w, k, t)
    _check_forward(w, parts, ref.libra_pb_parts(w), seed)
    if w[0].numel() == 1:  # n == 1: every channel is degenerate
        assert not parts[1].any() and not parts[2].any() and not parts[3].any()


def test_libra_pb_n2_is_a_tie():
    """n == 2 gives |v| = 1/sqrt(2) exactly: log2 mean|v| = -0.5 is a tie of the rounding
    rule, which float rounding of v decides either way (in the reference as well), so
    only sign(v), v and the consistency of wb with the scale are compared there."""
    seed = _seeded()
    w = _random_weight((200, 2), torch.float32)
    parts = OPS.libra_pb(w, *_scalars(1.0, 1.0, torch.float32))
    _check_forward(w, parts, ref.libra_pb_parts(w), seed, exact_scale=False)
    assert set(parts[3].tolist()) <= {0.5, 1.0}


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_libra_pb_constant_channels(dtype):
    seed = _seeded()
    w = _random_weight((6, 5, 3, 3), dtype)
    w[1] = random.uniform(-2, 2)      # any constant: sigma == 0 exactly in the kernel
    w[4] = 0.0
    parts = OPS.libra_pb(w, *_scalars(1.0, 1.0, dtype))
    for j in (1, 4):
        for out in parts:
            assert not out[j].any(), f"seed={seed}: constant channel {j} gave a nonzero output"
    # with a constant that the reference's float mean reproduces exactly, all of it matches
    w[1] = 0.25
    _check_forward(w, OPS.libra_pb(w, *_scalars(1.0, 1.0, dtype)), ref.libra_pb_parts(w), seed)
    # gradient of a degenerate channel is 0
    g = torch.randn_like(w)
    _, v, inv_sigma, scale = OPS.libra_pb(w, *_scalars(1.0, 1.0, dtype))
    gw = OPS.libra_pb_backward(g, v, inv_sigma, scale, *_scalars(2.0, 0.5, dtype))
    assert not gw[1].any() and not gw[4].any() and gw[0].abs().sum() > 0


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_libra_pb_non_contiguous(dtype):
    w = _random_weight((17, 12, 3, 3), dtype).transpose(0, 1)  # (12, 17, 3, 3), non-contiguous
    assert not w.is_contiguous()
    k, t = _scalars(1.0, 1.0, dtype)
    for a, b in zip(OPS.libra_pb(w, k, t), OPS.libra_pb(w.contiguous(), k, t)):
        assert torch.equal(a, b) and a.is_contiguous()


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_libra_pb_reduced_precision(dtype):
    """float16/bfloat16 weights: computed in float32, outputs rounded to the input dtype;
    wb follows the sign of the rounded v."""
    _seeded()
    w = _random_weight((8, 17, 3, 3), dtype)
    k, t = _scalars(1.0, 1.0, dtype)
    wb, v, inv_sigma, scale = OPS.libra_pb(w, k, t)
    fwb, fv, finv, fscale = OPS.libra_pb(w.float(), *_scalars(1.0, 1.0, torch.float32))
    assert wb.dtype == v.dtype == inv_sigma.dtype == scale.dtype == dtype
    assert torch.equal(v, fv.to(dtype)) and torch.equal(scale, fscale.to(dtype))
    assert torch.equal(inv_sigma, finv.to(dtype))
    assert torch.equal(wb, torch.where(v < 0, -scale[:, None, None, None], scale[:, None, None, None]))
    g = torch.randn_like(w)
    gw = OPS.libra_pb_backward(g, v, inv_sigma, scale, k, t)
    assert gw.dtype == dtype
    ref_gw = OPS.libra_pb_backward(g.float(), v.float(), inv_sigma.float(), scale.float(), k.float(), t.float())
    assert torch.equal(gw, ref_gw.to(dtype))


# --------------------------------------------------------------------------- libra_pb backward
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("tail", [(1, 1, 1), (3, 3, 3), (17, 5, 5), (64, 3, 3), (65, 7, 7), (3,), (65,), (1000,)],
                         ids=lambda s: "x".join(map(str, s)))
def test_libra_pb_backward(tail, dtype):
    seed = _seeded()
    o = random.randint(1, 16)
    w = _random_weight((o,) + tail, dtype)
    k, t = _scalars(*_ede_kt(), dtype)
    _, v, inv_sigma, scale = ref.libra_pb_parts(w)
    g = torch.randn_like(w)
    out = OPS.libra_pb_backward(g, v, inv_sigma, scale, k, t)
    expect = ref.libra_pb_backward(g, v, inv_sigma, scale, k, t)
    assert out.dtype == dtype and out.shape == w.shape and out.is_contiguous()
    # grad_w = inv_sigma * (g - mean g - v sum(g v)/(n-1)): the rounding error is relative
    # to the size of the terms, inv_sigma * max|g|, not to grad_w (which cancels)
    size = (inv_sigma.abs().max() * scale.abs().max() * k * t * g.abs().max()).item()
    if dtype == torch.float32:
        # the reference sums in float32 too: both are compared with the float64 truth
        truth = ref.libra_pb_backward(*(x.double() for x in (g, v, inv_sigma, scale, k, t)))
        err_kernel = (out.double() - truth).abs().max().item()
        err_ref = (expect.double() - truth).abs().max().item()
        assert err_kernel <= 2e-6 * size, f"seed={seed}: kernel error {err_kernel} vs size {size}"
        assert err_kernel <= max(2 * err_ref, 4e-7 * size), f"seed={seed}: {err_kernel} > reference's {err_ref}"
        torch.testing.assert_close(out, expect, rtol=1e-5, atol=2e-6 * size, msg=lambda m: f"seed={seed}: {m}")
    else:
        torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-13 * size, msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (16, 65, 1, 1), (5, 33), (4, 2, 5, 5)], ids=str)
def test_libra_pb_autograd_matches_reference(shape, dtype):
    """irnet.ops.libra_pb(w, k, t).backward(g) vs autograd through the plain formula."""
    seed = _seeded()
    # k, t as tensors of the weight's dtype (ops._ede_params makes a Python float a float32
    # tensor first, which would round them for float64 weights)
    k, t = _scalars(*_ede_kt(), dtype)
    w0 = _random_weight(shape, dtype)
    g = torch.randn(shape, dtype=dtype)
    w1 = w0.clone().requires_grad_(True)
    w2 = w0.clone().requires_grad_(True)
    y1 = ops.libra_pb(w1, k, t)
    y1.backward(g)
    y2 = ref.libra_pb(w2, k, t)
    y2.backward(g)
    if shape[1:] != (2,):
        assert torch.equal(y1.detach(), y2.detach()), f"seed={seed}"
    size = (w1.grad.abs().max() + w2.grad.abs().max()).item()
    tol = dict(rtol=1e-4, atol=1e-5 * size) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12 * size)
    torch.testing.assert_close(w1.grad, w2.grad, **tol, msg=lambda m: f"seed={seed}: {m}")


class _EDESurrogate(torch.autograd.Function):
    """f(w) = s * k * tanh(t * v(w)), v from the kernel's forward, s held fixed, and the
    kernel's libra_pb_backward as its backward.  d/dv [k tanh(t v)] = k t (1 - tanh^2(t v))
    is exactly the EDE factor, so the kernel's closed form must equal the true derivative
    of this smooth function (sign itself has derivative 0 almost everywhere)."""

    @staticmethod
    def forward(ctx, w, scale, k, t):
        _, v, inv_sigma, _ = OPS.libra_pb(w, k, t)
        ctx.save_for_backward(v, inv_sigma, scale, k, t)
        bshape = (-1,) + (1,) * (w.dim() - 1)
        return scale.reshape(bshape) * k * torch.tanh(t * v)

    @staticmethod
    def backward(ctx, grad):
        v, inv_sigma, scale, k, t = ctx.saved_tensors
        return OPS.libra_pb_backward(grad.contiguous(), v, inv_sigma, scale, k, t), None, None, None


@pytest.mark.parametrize("shape", [(3, 4, 3, 3), (4, 7), (2, 1, 5, 5)], ids=str)
def test_libra_pb_backward_gradcheck(shape):
    seed = _seeded()
    # weights of spread ~1: the finite-difference step (1e-6) stays small against sigma,
    # so the truncation error of the numerical derivative (~ eps^2 / sigma^3) is negligible
    w = (torch.randn(shape, dtype=torch.float64) * random.uniform(0.3, 1.0) + random.uniform(-0.5, 0.5))
    w.requires_grad_(True)
    t_val = random.uniform(0.2, 3.0)  # keep tanh away from saturation so the check has teeth
    k, t = _scalars(max(1.0 / t_val, 1.0), t_val, torch.float64)
    scale = OPS.libra_pb(w.detach(), k, t)[3]
    try:
        torch.autograd.gradcheck(_EDESurrogate.apply, (w, scale, k, t), eps=1e-6, atol=1e-7, rtol=1e-5)
    except torch.autograd.gradcheck.GradcheckError as exc:
        raise AssertionError(f"seed={seed}: {exc}") from None

    # the same through the reference standardization (plain autograd, no kernel involved)
    def smooth(w_):
        v, _ = ref._standardize(w_)
        return (scale[:, None] * k * torch.tanh(t * v)).reshape(w_.shape)

    try:
        torch.autograd.gradcheck(smooth, (w,), eps=1e-6, atol=1e-7, rtol=1e-5)
    except torch.autograd.gradcheck.GradcheckError as exc:
        raise AssertionError(f"seed={seed}: {exc}") from None
    g = torch.randn(shape, dtype=torch.float64)
    (expect,) = torch.autograd.grad(smooth(w), w, g)
    _, v, inv_sigma, _ = OPS.libra_pb(w.detach(), k, t)
    got = OPS.libra_pb_backward(g, v, inv_sigma, scale, k, t)
    torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-12 * expect.abs().max().item(),
                               msg=lambda m: f"seed={seed}: {m}")


# --------------------------------------------------------------------------- libra_pb_pack
@pytest.mark.parametrize("shape", [(7, 3, 3, 3), (5, 64, 1, 1), (4, 65, 5, 5), (3, 130, 3, 3), (9, 65), (2, 1, 7, 7)],
                         ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_libra_pb_pack(shape, dtype):
    seed = _seeded()
    w = _random_weight(shape, dtype)
    bits, scale = OPS.libra_pb_pack(w)
    rbits, rscale = ref.libra_pb_pack(w)
    assert bits.dtype == torch.int64 and bits.shape == rbits.shape, f"seed={seed}"
    assert torch.equal(bits, rbits), f"seed={seed}"
    assert torch.equal(scale, rscale), f"seed={seed}"


# --------------------------------------------------------------------------- sign_ede
def _special_values(dtype):
    info = torch.finfo(dtype)
    vals = [-0.0, 0.0, float("nan"), float("inf"), float("-inf"), info.tiny, -info.tiny,
            info.tiny / 4, -info.tiny / 4, info.max, -info.max, 1.0, -1.0, 0.5, -3.0]
    x = torch.tensor(vals, dtype=dtype)
    return torch.cat([x, -torch.tensor([float("nan")], dtype=dtype)])  # a NaN with the sign bit set


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
def test_sign_ede_forward(dtype):
    k, t = _scalars(1.0, 1.0, dtype)
    x = _special_values(dtype)
    y = OPS.sign_ede(x, k, t)
    expect = [1, 1, 1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1]
    if torch.signbit(x[-1]):  # -nan keeps its sign bit: still +1 (NaN < 0 is false)
        assert y[-1] == 1
    assert y.dtype == dtype and y.tolist() == expect, y.tolist()
    assert torch.equal(y, ref.sign(x))
    # random data, over the parallel grain size, strided input
    x = torch.randn(3, 70001, dtype=torch.float32).to(dtype)
    y = OPS.sign_ede(x, k, t)
    assert torch.equal(y, ref.sign(x))
    xt = x.t()
    yt = OPS.sign_ede(xt, k, t)
    assert yt.is_contiguous() and torch.equal(yt, ref.sign(xt))
    assert OPS.sign_ede(x[:, :0], k, t).shape == (3, 0)
    assert torch.equal(OPS.sign_ede(torch.tensor(-2.0, dtype=dtype), k, t), torch.tensor(-1.0, dtype=dtype))


def _ede_bound(g, x, k, t, dtype):
    """Rounding bound: a few ulp of |g k t| (1 - tanh^2 is computed as the reference does,
    with its cancellation near |tanh| = 1, so the error is absolute, not relative)."""
    eps = torch.finfo(dtype).eps
    return 8 * eps * (g * k * t).abs().double()


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_sign_ede_backward(dtype):
    seed = _seeded()
    for _ in range(3):
        k, t = _ede_kt()
        n = random.randint(1, 3 * 32768 + 7)
        x = torch.randn(n, dtype=dtype) * 10 ** random.uniform(-2, 1)
        g = torch.randn(n, dtype=dtype)
        kk, tt = _scalars(k, t, dtype)
        out = OPS.sign_ede_backward(g, x, kk, tt)
        expect = ref.ede_grad(g, x, kk, tt)
        err = (out.double() - expect.double()).abs()
        bound = _ede_bound(g, x, kk, tt, dtype)
        assert out.dtype == dtype and bool((err <= bound).all()), \
            f"seed={seed} n={n} k={k} t={t}: max err/bound {(err / bound.clamp_min(1e-300)).max().item()}"
    # non-contiguous operands and the tail of every vector length
    x = torch.randn(9, 13, dtype=dtype).t()
    g = torch.randn(13, 9, dtype=dtype)
    kk, tt = _scalars(1.5, 0.8, dtype)
    out = OPS.sign_ede_backward(g, x, kk, tt)
    assert out.is_contiguous()
    torch.testing.assert_close(out, OPS.sign_ede_backward(g.contiguous(), x.contiguous(), kk, tt), rtol=0, atol=0)
    assert bool(((out - ref.ede_grad(g, x, kk, tt)).abs() <= _ede_bound(g, x, kk, tt, dtype).to(dtype)).all())


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_sign_ede_backward_reduced_precision(dtype):
    """half / bfloat16: computed in float32, rounded once (the reference rounds after
    every op, so it is the less accurate of the two)."""
    k, t = 1.7, 0.6
    x = torch.randn(5000).to(dtype)
    g = torch.randn(5000).to(dtype)
    out = OPS.sign_ede_backward(g, x, *_scalars(k, t, dtype))
    kk, tt = _scalars(k, t, dtype)
    exact = ref.ede_grad(g.float(), x.float(), kk.float(), tt.float())
    eps = torch.finfo(dtype).eps
    assert bool(((out.float() - exact).abs() <= eps * exact.abs() + 1e-3 * eps).all())
    assert bool(((out.float() - ref.ede_grad(g, x, kk, tt).float()).abs()
                 <= 4 * eps * (g.float() * k * t).abs() + 1e-3 * eps).all())


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_sign_ede_autograd(dtype):
    _seeded()
    k, t = _scalars(*_ede_kt(), dtype)
    x = torch.randn(4, 5, 6, dtype=dtype, requires_grad=True)
    g = torch.randn(4, 5, 6, dtype=dtype)
    y = ops.sign_ede(x, k, t)
    y.backward(g)
    assert torch.equal(y.detach(), ref.sign(x.detach()))
    kk, tt = k, t
    assert torch.equal(x.grad, OPS.sign_ede_backward(g, x.detach(), kk, tt))
    x2 = x.detach().clone().requires_grad_(True)
    ref.sign_ede(x2, k, t).backward(g)
    assert bool(((x.grad - x2.grad).abs() <= _ede_bound(g, x2, kk, tt, dtype).to(dtype)).all())


_PORTABLE_CHECK = r"""
import random, torch, irnet
from irnet import reference as ref
OPS = torch.ops.irnet
for dtype in (torch.float32, torch.float64):
    eps = torch.finfo(dtype).eps
    for n in (1, 7, 8, 9, 1000, 70001):
        k, t = torch.tensor(2.5, dtype=dtype), torch.tensor(0.4, dtype=dtype)
        x, g = torch.randn(n, dtype=dtype) * 3, torch.randn(n, dtype=dtype)
        err = (OPS.sign_ede_backward(g, x, k, t) - ref.ede_grad(g, x, k, t)).abs()
        assert bool((err <= 8 * eps * (g * k * t).abs()).all()), (dtype, n)
    w = torch.randn(6, 17, 3, 3, dtype=dtype)
    _, v, inv_sigma, scale = ref.libra_pb_parts(w)
    g = torch.randn_like(w)
    out = OPS.libra_pb_backward(g, v, inv_sigma, scale, k, t)
    expect = ref.libra_pb_backward(g, v, inv_sigma, scale, k, t)
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5 * expect.abs().max().item())
print("portable-ok")
"""


def test_portable_path_without_avx2():
    """IRNET_SIMD=scalar makes the EDE kernels take the portable std::tanh loop (the path
    of CPUs without AVX2/FMA); it must meet the same bounds."""
    env = dict(os.environ, IRNET_SIMD="scalar")
    out = subprocess.run([sys.executable, "-c", _PORTABLE_CHECK], env=env, capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "portable-ok" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------- opcheck
def _opcheck_cases():
    kt = lambda dt: _scalars(1.3, 0.7, dt)  # noqa: E731
    w = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    wr = w.clone().requires_grad_(True)
    _, v, inv_sigma, scale = ref.libra_pb_parts(w)
    x = torch.randn(3, 4, 5)
    return [
        ("libra_pb", (wr, *kt(torch.float64))),
        ("libra_pb", (torch.randn(4, 9), *kt(torch.float32))),
        ("libra_pb_backward", (torch.randn_like(w), v, inv_sigma, scale, *kt(torch.float64))),
        ("libra_pb_pack", (torch.randn(5, 70, 3, 3),)),
        ("sign_ede", (x.clone().requires_grad_(True), *kt(torch.float32))),
        ("sign_ede_backward", (torch.randn_like(x), x, *kt(torch.float32))),
    ]


@pytest.mark.parametrize("case", range(len(_opcheck_cases())), ids=[c[0] for c in _opcheck_cases()])
def test_opcheck(case):
    name, args = _opcheck_cases()[case]
    torch.library.opcheck(getattr(OPS, name).default, args)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_libra_pb_rejects_non_finite(bad, dtype):
    w = torch.randn(5, 3, 3, 3, dtype=dtype)
    w[3, 1, 2, 0] = bad
    k, t = _scalars(1.0, 1.0, dtype)
    with pytest.raises(RuntimeError, match=r"channel 3 contains NaN or Inf"):
        OPS.libra_pb(w, k, t)
    with pytest.raises(RuntimeError, match=r"NaN or Inf"):
        ops.libra_pb(w.requires_grad_(True), k, t)
    with pytest.raises(RuntimeError, match=r"NaN or Inf"):
        OPS.libra_pb_pack(w.detach())


def test_bad_arguments():
    one = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match=r"irnet::libra_pb: expected w to be float32.*got Int"):
        OPS.libra_pb(torch.ones(3, 4, dtype=torch.int32), one, one)
    with pytest.raises(RuntimeError, match=r"irnet::libra_pb: expected a weight of rank >= 2.*\[7\]"):
        OPS.libra_pb(torch.randn(7), one, one)
    with pytest.raises(RuntimeError, match=r"irnet::libra_pb_pack: expected a weight of rank >= 2"):
        OPS.libra_pb_pack(torch.randn(7))
    with pytest.raises(RuntimeError, match=r"irnet::sign_ede: expected x to be float32.*got Long"):
        OPS.sign_ede(torch.ones(3, dtype=torch.int64), one, one)
    with pytest.raises(RuntimeError, match=r"irnet::sign_ede_backward: expected x and grad of one shape"):
        OPS.sign_ede_backward(torch.randn(3), torch.randn(4), one, one)
    with pytest.raises(RuntimeError, match=r"irnet::sign_ede_backward: expected x to have grad's dtype"):
        OPS.sign_ede_backward(torch.randn(3), torch.randn(3, dtype=torch.float64), one, one)
    with pytest.raises(RuntimeError, match=r"irnet::sign_ede_backward: expected k to be a one-element"):
        OPS.sign_ede_backward(torch.randn(3), torch.randn(3), torch.ones(2), one)
    w = torch.randn(4, 3)
    _, v, inv_sigma, scale = OPS.libra_pb(w, one, one)
    with pytest.raises(RuntimeError, match=r"irnet::libra_pb_backward: expected inv_sigma and scale of shape \(4\)"):
        OPS.libra_pb_backward(torch.randn(4, 3), v, inv_sigma[:3], scale, one, one)
    with pytest.raises(RuntimeError, match=r"irnet::libra_pb_backward: expected v of grad_wb's shape"):
        OPS.libra_pb_backward(torch.randn(4, 2), v, inv_sigma, scale, one, one)
    with pytest.raises(RuntimeError, match=r"irnet::libra_pb_backward: expected v, inv_sigma and scale of grad_wb's"):
        OPS.libra_pb_backward(torch.randn(4, 3, dtype=torch.float64), v.double(), inv_sigma, scale.double(), one, one)


# --------------------------------------------------------------------------- layers
def _layer_reference(layer, x):
    if isinstance(layer, irnet.nn.IRConv2d):
        return ref.binary_conv2d(x, layer.weight, layer.k, layer.t, layer.stride, layer.padding, layer.dilation,
                                 binary_act=layer.binary_act, bias=layer.bias)
    return ref.binary_linear(x, layer.weight, layer.k, layer.t, binary_act=layer.binary_act, bias=layer.bias)


LAYERS = [
    ("conv3x3-s2", lambda: irnet.nn.IRConv2d(3, 5, 3, stride=2, padding=1), (4, 3, 11, 11)),
    ("conv5x5-d2", lambda: irnet.nn.IRConv2d(17, 8, 5, padding=2, dilation=2, bias=True), (2, 17, 9, 9)),
    ("conv1x1-1w32a", lambda: irnet.nn.IRConv2d(65, 7, 1, binary_act=False), (3, 65, 4, 4)),
    ("linear", lambda: irnet.nn.IRLinear(65, 10), (6, 65)),
    ("linear-1w32a", lambda: irnet.nn.IRLinear(64, 3, bias=True, binary_act=False), (5, 64)),
]


@pytest.mark.parametrize("case", range(len(LAYERS)), ids=[c[0] for c in LAYERS])
def test_layers_match_reference(case):
    seed = _seeded()
    _, make, xshape = LAYERS[case]
    layer = make()
    k, t = _ede_kt()
    layer.set_ede(k, t)
    x1 = torch.randn(xshape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1 = layer(x1)
    y2 = _layer_reference(layer, x2)
    assert torch.equal(y1, y2), f"seed={seed}: fused and reference layer outputs differ"
    g = torch.randn_like(y1)
    params = [p for p in layer.parameters()]
    g1 = torch.autograd.grad(y1, [x1] + params, g)
    g2 = torch.autograd.grad(y2, [x2] + params, g)
    for a, b in zip(g1, g2):
        size = b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * size, msg=lambda m: f"seed={seed}: {m}")


class _Tiny(tnn.Module):
    """Two binary convs (1w1a and 1w32a) and a binary fc: the graph is almost all irnet
    ops and convolutions, so inductor has little C++ to compile (bounded test time)."""

    def __init__(self):
        super().__init__()
        self.conv1 = irnet.nn.IRConv2d(3, 8, 3, padding=1, binary_act=False)
        self.conv2 = irnet.nn.IRConv2d(8, 8, 3, stride=2, padding=1)
        self.fc = irnet.nn.IRLinear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        return self.fc(x.flatten(1))


def test_torch_compile_fullgraph():
    _seeded()
    torch._dynamo.reset()
    model = _Tiny()
    irnet.set_ede(model, *_ede_kt())
    x = torch.randn(4, 3, 8, 8)
    y_eager = model(x)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    y_comp = compiled(x)
    grads_comp = torch.autograd.grad(y_comp.square().sum(), list(model.parameters()))
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_comp, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * max(b.abs().max().item(), 1e-6))
