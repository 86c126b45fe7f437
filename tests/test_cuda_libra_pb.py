"""The CUDA Libra-PB kernels (csrc/cuda/libra_pb_kernels.cuh) against the CPU kernel,
BIT FOR BIT: both run the rule of csrc/core/libra_pb.h (the same arithmetic, sums in the
same canonical order), so wb, v, inv_sigma and scale must have identical bits for
float32, float64, float16 and bfloat16 -- random weights of many shapes and the cases of
issue #14 (16-bit scales, NaN/Inf, empty and constant channels, the rounded mean).  Also:
what a NaN/Inf weight does on CUDA (NaN outputs at once, the CPU kernel's RuntimeError at
the next libra_pb call, no host synchronisation), the current stream, the backward.

Every test needs a CUDA device and the compiled CUDA kernels; without them they are
skipped with the reason.  NOTE: written on a machine without a GPU; these tests have never
run (their kernels ran on the host only, in the ctest test_libra_pb_emulation).
"""
from __future__ import annotations

import pytest
import torch

import irnet
from irnet import nn as inn
from irnet import ops
from test_training_ops_cpu import ALL_FLOATS, _random_weight, _seeded

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA kernels cannot run here"),
    pytest.mark.skipif(
        not all(ops.has_compiled_kernel(op, dev) for op in ("libra_pb", "libra_pb_backward", "libra_pb_pack")
                for dev in ("cuda", "cpu")),
        reason="irnet was built without its CUDA (or CPU) Libra-PB kernels (irnet._C: %s)" % (irnet._ext.ERROR,)),
]

OPS = torch.ops.irnet
DEV = "cuda"
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def _kt(dtype, device):
    return torch.tensor(1.3, dtype=dtype, device=device), torch.tensor(0.7, dtype=dtype, device=device)


def _same_bits(a, b):
    """Equal bit patterns (so -0.0 != +0.0 and a NaN equals only the same NaN)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(_BITS[a.dtype]), b.view(_BITS[b.dtype]))


def _drain_report():
    """Clears a non-finite report an earlier test may have left (it raises once)."""
    torch.cuda.synchronize()
    try:
        OPS.libra_pb(torch.ones(1, 2, device=DEV), *_kt(torch.float32, DEV))
    except RuntimeError:
        pass


def _check_equal_to_cpu(w, info):
    """libra_pb of w on CUDA == on the CPU, every output bit for bit."""
    cpu = OPS.libra_pb(w, *_kt(w.dtype, "cpu"))
    gpu = [p.cpu() for p in OPS.libra_pb(w.to(DEV), *_kt(w.dtype, DEV))]
    for name, c, g in zip(("wb", "v", "inv_sigma", "scale"), cpu, gpu):
        assert g.is_contiguous() and g.dtype == w.dtype, f"{name}: {info}"
        assert _same_bits(c, g), f"{name} differs from the CPU: {info}\nCPU  {c}\nCUDA {g}"
    return gpu


SHAPES = [(5, 1), (7, 2), (3, 3), (16, 3, 3, 3), (9, 64, 3, 3), (4, 65, 7, 7), (3, 512, 3, 3), (2, 1000), (64, 27),
          (6, 257), (12, 1, 1, 1), (4, 0), (3, 0, 3, 3), (0, 5, 3, 3), (2, 100000)]


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_libra_pb_equals_cpu_bit_for_bit(shape, dtype):
    seed = _seeded()
    _check_equal_to_cpu(_random_weight(shape, dtype), f"seed={seed} shape={shape} dtype={dtype}")


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (9, 65, 3, 3), (33, 200), (5, 1, 1, 1), (4, 0, 3, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_libra_pb_pack_equals_cpu(shape, dtype):
    seed = _seeded()
    w = _random_weight(shape, dtype)
    bits, scale = OPS.libra_pb_pack(w)
    gbits, gscale = OPS.libra_pb_pack(w.to(DEV))
    info = f"seed={seed} shape={shape} dtype={dtype}"
    assert torch.equal(gbits.cpu(), bits), info
    assert _same_bits(gscale.cpu(), scale), info


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_reduced_precision_scales(dtype):
    """Defect 1: v, mean|v| and the power of two in float32, rounded once.  n == 2 is the
    tie case the old kernel always got wrong; the rest are random channels."""
    seed = _seeded()
    for shape in ((16, 2), (400, 27), (400, 64), (64, 64, 3, 3)):
        _check_equal_to_cpu(_random_weight(shape, dtype), f"seed={seed} shape={shape} dtype={dtype}")


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
def test_degenerate_and_rounded_mean_cases(dtype):
    """Defect 3: a float64 channel of 27 x 0.3 is constant (zeros everywhere); defect 4:
    float32 [1, 1, 1 + 2^-23] has v = [0, 0, +]; empty channels give scale 0."""
    seed = _seeded()
    w = _random_weight((5, 27), dtype)
    w[1] = 0.3
    w[3] = -1.7e-3
    gpu = _check_equal_to_cpu(w, f"seed={seed} dtype={dtype}")
    for p in gpu:
        assert not p[1].any() and not p[3].any(), f"a constant channel is not degenerate: seed={seed}"
    w = torch.tensor([[1.0, 1.0, 1.0 + 2.0 ** -23]], dtype=torch.float32)
    wb, v, _, scale = _check_equal_to_cpu(w, "[1, 1, 1 + 2^-23]")
    assert (wb == scale).all() and not torch.signbit(v).any()
    _, _, inv_sigma, scale = _check_equal_to_cpu(torch.zeros(3, 0, dtype=dtype), "(3, 0)")
    assert not inv_sigma.any() and not scale.any()


@pytest.mark.parametrize("op", ("libra_pb", "libra_pb_pack"))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
def test_nonfinite_weight_gives_nan_then_raises(dtype, bad, op):
    """Defect 2 and item 3 of #14: a NaN/Inf weight gives NaN outputs for its channel
    (never scale 1), without a host synchronisation; the next libra_pb call raises the CPU
    kernel's error naming the channel, once; the other channels are the CPU's."""
    seed = _seeded()
    _drain_report()
    w = _random_weight((5, 3, 3, 3), dtype)
    w[3, 1, 2, 0] = bad
    wd = w.to(DEV)
    k, t = _kt(dtype, DEV)
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = OPS.libra_pb(wd, k, t) if op == "libra_pb" else OPS.libra_pb_pack(wd)
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    torch.cuda.synchronize()
    info = f"seed={seed} dtype={dtype} bad={bad} op={op}"
    scale = out[-1].cpu()
    assert scale[3].isnan(), f"scale of the non-finite channel is {scale[3]}, expected NaN: {info}"
    good = torch.randn(2, 4, device=DEV)
    with pytest.raises(RuntimeError, match=r"channel 3 contains NaN or Inf"):
        OPS.libra_pb(good, *_kt(torch.float32, DEV))
    OPS.libra_pb(good, *_kt(torch.float32, DEV))  # reported once: the next call runs
    if op == "libra_pb":
        wb, v, inv_sigma, _ = (p.cpu() for p in out)
        assert wb[3].isnan().all() and v[3].isnan().all() and inv_sigma[3].isnan(), info
        finite = w.clone()
        finite[3] = 0.5
        for p, q in zip(out, OPS.libra_pb(finite, *_kt(dtype, "cpu"))):  # the other channels: the CPU's
            assert _same_bits(p.cpu()[[0, 1, 2, 4]], q[[0, 1, 2, 4]]), info


def test_training_forward_reports_nonfinite_weight():
    """The path of irnet.train: a layer whose weight went NaN returns NaN at once (not a
    valid +-scale model), and a later forward raises RuntimeError (the loop then names the
    step that made the weights non-finite)."""
    _drain_report()
    layer = inn.IRConv2d(4, 6, 3, padding=1).to(DEV)
    with torch.no_grad():
        layer.weight[2, 0, 0, 0] = float("nan")
    x = torch.randn(2, 4, 5, 5, device=DEV)
    y = layer(x)
    torch.cuda.synchronize()
    assert y[:, 2].isnan().all()
    with pytest.raises(RuntimeError, match=r"channel 2 contains NaN or Inf"):
        layer(x)


def test_python_pack_rejects_nonfinite_at_once():
    """ops.libra_pb_pack (deployment, not a hot path) checks in Python on every device."""
    w = torch.randn(4, 3, 3, 3, device=DEV)
    w[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.libra_pb_pack(w)


def test_libra_pb_runs_on_the_current_stream():
    """On a side stream, a weight written after a long device sleep is the one the
    kernels read (a kernel on another stream would read the old, negated weight)."""
    _drain_report()
    w_new = _random_weight((8, 16, 3, 3), torch.float32)
    buf = (-w_new).to(DEV)
    new_d = w_new.to(DEV)
    g = torch.randn(8, 16, 3, 3)
    k, t = _kt(torch.float32, DEV)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        buf.copy_(new_d)
        parts = OPS.libra_pb(buf, k, t)
        bits, scale = OPS.libra_pb_pack(buf)
        gw = OPS.libra_pb_backward(g.to(DEV), parts[1], parts[2], parts[3], k, t)
    torch.cuda.synchronize()
    cpu = OPS.libra_pb(w_new, *_kt(torch.float32, "cpu"))
    for c, d in zip(cpu, parts):
        assert _same_bits(c, d.cpu())
    assert torch.equal(bits.cpu(), OPS.libra_pb_pack(w_new)[0])
    cgw = OPS.libra_pb_backward(g, *cpu[1:], *_kt(torch.float32, "cpu"))
    torch.testing.assert_close(gw.cpu(), cgw, rtol=1e-4, atol=1e-5 * cgw.abs().max().item())


def test_no_host_sync():
    """libra_pb, libra_pb_pack and libra_pb_backward never synchronise with the host (the
    first call, which allocates the pinned report flag, is made before)."""
    _drain_report()
    w = torch.randn(8, 16, 3, 3, device=DEV)
    g = torch.randn_like(w)
    k, t = _kt(torch.float32, DEV)
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for dtype in ALL_FLOATS:
            wd, gd = w.to(dtype), g.to(dtype)
            kd, td = k.to(dtype), t.to(dtype)
            _, v, inv_sigma, scale = OPS.libra_pb(wd, kd, td)
            OPS.libra_pb_backward(gd, v, inv_sigma, scale, kd, td)
            OPS.libra_pb_pack(wd)
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(3, 3, 3, 3), (8, 64, 3, 3), (5, 1000), (4, 1), (3, 0)], ids=str)
def test_backward_close_to_cpu(shape, dtype):
    """The backward uses the device's tanh: equal to the CPU's to rounding, not to the bit."""
    seed = _seeded()
    w = _random_weight(shape, dtype)
    g = torch.randn(shape, dtype=torch.float64).to(dtype)
    _, v, inv_sigma, scale = OPS.libra_pb(w, *_kt(dtype, "cpu"))
    cpu = OPS.libra_pb_backward(g, v, inv_sigma, scale, *_kt(dtype, "cpu"))
    gpu = OPS.libra_pb_backward(g.to(DEV), v.to(DEV), inv_sigma.to(DEV), scale.to(DEV), *_kt(dtype, DEV)).cpu()
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    size = cpu.double().abs().max().item() if cpu.numel() else 0.0
    torch.testing.assert_close(gpu.double(), cpu.double(), rtol=tol, atol=tol * size,
                               msg=lambda m: f"seed={seed} shape={shape} dtype={dtype}: {m}")
