"""The shared Libra-PB rule (csrc/core/libra_pb.h, csrc/core/pow2.h) on the CPU: the
power-of-two threshold tables against their generator, and the CPU kernel on the edge
cases of issue #14 against irnet.reference.  (The CUDA kernel runs the same rule: its
host emulation is the ctest test_libra_pb_emulation, tests/test_ctest.py; on a GPU,
tests/test_cuda_libra_pb.py compares it with this CPU kernel bit for bit.)"""
from __future__ import annotations

import importlib.util

import pytest
import torch

import irnet
from irnet import ops
from irnet import reference as ref
from conftest import ROOT
from test_training_ops_cpu import ALL_FLOATS

OPS = torch.ops.irnet

needs_cpu_kernel = pytest.mark.skipif(
    not ops.has_compiled_kernel("libra_pb", "cpu"),
    reason="the compiled CPU libra_pb kernel is not built (irnet._C: %s)" % (irnet._ext.ERROR,))


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_pow2_table", ROOT / "tools" / "gen_pow2_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pow2_tables_are_the_generated_ones(capsys):
    """csrc/core/pow2.h's threshold tables == tools/gen_pow2_table.py's 80-digit output."""
    assert _load_generator().main(["--check"]) == 0, capsys.readouterr().out


def test_pow2_thresholds_are_where_float32_log2_rounds():
    """Spot check of the float32 tables against torch: the float nearest 2^(e + 1/2) for a
    few e, and its neighbours, give torch.round(torch.log2(m)) as the table rule does."""
    gen = _load_generator()
    for e in (-3, -1, 0, 1, 5, 100):
        h = e + 0.5
        # the gap below / above h in float32, as powers of two 2^-j
        hf = torch.tensor(h, dtype=torch.float32)
        below = (hf - torch.nextafter(hf, torch.tensor(-1e9))).item()
        above = (torch.nextafter(hf, torch.tensor(1e9)) - hf).item()
        fa, _ = gen.thresholds(23, -int(round(torch.log2(torch.tensor(below, dtype=torch.float64)).item())))
        _, fb = gen.thresholds(23, -int(round(torch.log2(torch.tensor(above, dtype=torch.float64)).item())))
        for grid in range(fa - 3, fb + 4):
            m = torch.tensor(grid * 2.0 ** (e - 23), dtype=torch.float32)
            r = torch.round(torch.log2(m)).item()
            want = e + 1 if grid >= fb else (e + (e & 1) if grid >= fa else e)
            assert r == want, (e, hex(grid), r, want)


@needs_cpu_kernel
def test_constant_float64_channel_is_degenerate():
    """27 weights of 0.3 (an inexact sum / n): the shifted mean is exactly 0.3, sigma 0."""
    w = torch.randn(3, 27, dtype=torch.float64)
    w[1] = 0.3
    one = torch.tensor(1.0, dtype=torch.float64)
    parts = OPS.libra_pb(w, one, one)
    for p in parts:
        assert not p[1].any()
    for a, r in zip(parts, ref.libra_pb_parts(w)):
        assert torch.equal(a[1], r[1])


@needs_cpu_kernel
def test_mean_is_rounded_before_it_is_subtracted():
    """float32 [1, 1, 1 + 2^-23]: mu rounds to 1.0f, v = [0, 0, +], every wb = +scale."""
    w = torch.tensor([[1.0, 1.0, 1.0 + 2.0 ** -23]], dtype=torch.float32)
    one = torch.tensor(1.0)
    wb, v, inv_sigma, scale = OPS.libra_pb(w, one, one)
    rwb, rv, rinv, rscale = ref.libra_pb_parts(w)
    assert torch.equal(wb, rwb) and torch.equal(v, rv) and torch.equal(scale, rscale)
    assert (wb > 0).all() and not torch.signbit(v).any()


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=str)
@needs_cpu_kernel
def test_empty_channels(dtype):
    """An (O, 0, ...) weight: inv_sigma = scale = 0 per channel, in the kernel and the reference."""
    for shape in ((4, 0), (3, 0, 3, 3)):
        w = torch.zeros(shape, dtype=dtype)
        one = torch.tensor(1.0, dtype=dtype)
        wb, v, inv_sigma, scale = OPS.libra_pb(w, one, one)
        assert wb.shape == v.shape == w.shape and inv_sigma.shape == scale.shape == (shape[0],)
        assert torch.equal(inv_sigma, torch.zeros(shape[0], dtype=dtype))
        assert torch.equal(scale, torch.zeros(shape[0], dtype=dtype))
        _, _, rinv, rscale = ref.libra_pb_parts(w)
        assert torch.equal(rinv, inv_sigma) and torch.equal(rscale, scale)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@needs_cpu_kernel
def test_reduced_precision_n2_tie_is_decided_in_float32(dtype):
    """n == 2: float32 mean|v| is the float nearest 2^-1/2, whose float32 log2 is the tie
    -1/2 (to even: scale 1).  Rounding mean|v| to 16 bits first (the old CUDA kernel)
    would move it below the tie and give 1/2."""
    a = torch.rand(64, dtype=torch.float64) + 0.01            # two different weights per channel
    w = torch.stack([a, -2.0 ** torch.randint(-3, 3, (64,)) * a], dim=1).to(dtype)
    assert (w[:, 0] != w[:, 1]).all()
    one = torch.tensor(1.0, dtype=dtype)
    _, _, _, scale = OPS.libra_pb(w, one, one)
    _, _, _, fscale = OPS.libra_pb(w.float(), torch.tensor(1.0), torch.tensor(1.0))
    assert torch.equal(scale, fscale.to(dtype))
    assert set(scale.float().tolist()) == {1.0}
