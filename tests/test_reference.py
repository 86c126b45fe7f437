"""The reference (irnet/reference.py) against hand-computed cases of DESIGN.md section 1."""
import math

import pytest
import torch

from irnet import EDESchedule, reference as ref


def test_sign_at_zero_nan_inf():
    x = torch.tensor([-1.0, -0.0, 0.0, 1.0, float("nan"), -float("inf"), float("inf"), -1e-30])
    assert torch.equal(ref.sign(x), torch.tensor([-1.0, 1, 1, 1, 1, -1, 1, -1]))


def test_sign_ede_backward_hand_computed():
    x = torch.tensor([0.0, 0.3, -0.3, 50.0], requires_grad=True)
    k, t = 0.5, 2.0
    ref.sign_ede(x, k, t).backward(torch.ones(4))
    expected = [k * t, k * t * (1 - math.tanh(0.6) ** 2), k * t * (1 - math.tanh(0.6) ** 2), 0.0]
    assert torch.allclose(x.grad, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_libra_pb_hand_computed():
    # mean 2.5, unbiased std sqrt(5/3): v = +-1.1619, +-0.3873, mean|v| = 0.7746 -> s = 2^0 = 1
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    wb, v, inv_sigma, scale = ref.libra_pb_parts(w)
    assert torch.equal(wb, torch.tensor([[-1.0, -1.0, 1.0, 1.0]]))
    assert torch.allclose(v, (w - 2.5) / math.sqrt(5 / 3))
    assert torch.allclose(inv_sigma, torch.tensor([1 / math.sqrt(5 / 3)]))
    assert torch.equal(scale, torch.tensor([1.0]))
    # 99 zeros and a one: mu = 0.01, sigma = 0.1, v = -0.1 (x99) and 9.9, mean|v| = 0.198
    # log2(0.198) = -2.34 -> round -2 -> s = 0.25
    w = torch.zeros(1, 100)
    w[0, -1] = 1.0
    wb, v, inv_sigma, scale = ref.libra_pb_parts(w.double())
    assert torch.allclose(inv_sigma, torch.tensor([10.0], dtype=torch.float64))
    assert scale.item() == 0.25
    assert torch.equal(wb[0, :-1], torch.full((99,), -0.25, dtype=torch.float64)) and wb[0, -1] == 0.25


def test_libra_pb_sigma_zero_and_n_one():
    w = torch.tensor([[3.0, 3.0, 3.0, 3.0], [1.0, -1.0, 1.0, -1.0]], requires_grad=True)
    wb, v, inv_sigma, scale = ref.libra_pb_parts(w)
    assert torch.equal(v[0], torch.zeros(4)) and inv_sigma[0] == 0 and scale[0] == 0
    assert torch.equal(wb[0], torch.zeros(4))
    assert torch.isfinite(wb).all()
    out = ref.libra_pb(w, 1.0, 1.0)
    out.sum().backward()
    assert torch.isfinite(w.grad).all() and torch.equal(w.grad[0], torch.zeros(4))
    # n == 1: v = 0
    w1 = torch.randn(5, 1, requires_grad=True)
    wb1, v1, _, s1 = ref.libra_pb_parts(w1)
    assert torch.equal(v1, torch.zeros(5, 1)) and torch.equal(s1, torch.zeros(5))
    ref.libra_pb(w1, 1.0, 1.0).sum().backward()
    assert torch.equal(w1.grad, torch.zeros(5, 1))


def test_pow2_round_half_to_even():
    # float32 log2 of these is exactly -2.5, -1.5, -0.5, 1.5, 2.5: round half to even
    m = torch.tensor([2 ** -2.5, 2 ** -1.5, 2 ** -0.5, 2 ** 1.5, 2 ** 2.5, 0.0, 1.0, 0.7], dtype=torch.float32)
    assert torch.equal(torch.log2(m[:5]), torch.tensor([-2.5, -1.5, -0.5, 1.5, 2.5]))
    expected = torch.tensor([2 ** -2, 2 ** -2, 1.0, 4.0, 4.0, 0.0, 1.0, 0.5])  # log2(0.7) = -0.51
    assert torch.equal(ref.pow2_round(m), expected)


def test_schedule_first_and_last():
    s = EDESchedule(0.1, 10.0, 5)
    assert s.at(0) == (10.0, 0.1)
    k, t = s.at(4)
    assert math.isclose(t, 0.1 * 10 ** 1.6, rel_tol=1e-12) and k == 1.0
    k, t = EDESchedule(1e-3, 10.0, 400).at(0)
    assert t == 1e-3 and math.isclose(k, 1000.0)
    assert ref.ede_schedule(0.1, 10.0, 5, 2) == s.at(2)
    with pytest.raises(ValueError, match="epoch"):
        s.at(5)
    with pytest.raises(ValueError):
        EDESchedule(0.0, 10.0, 5)


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (7, 5), (3, 17, 1, 1), (2, 2, 5, 5)])
def test_libra_pb_backward_closed_form_matches_autograd(shape):
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    k, t = torch.tensor(1.7, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    g = torch.randn(shape, dtype=torch.float64)
    ref.libra_pb(w, k, t).backward(g)
    _, v, inv_sigma, scale = ref.libra_pb_parts(w.detach())
    closed = ref.libra_pb_backward(g, v, inv_sigma, scale, k, t)
    assert torch.allclose(closed, w.grad, rtol=1e-10, atol=1e-12)


def test_libra_pb_backward_gradcheck_float64():
    """EDE's backward is the exact derivative of the smooth k*tanh(t v), so
    gradcheck that surrogate through the plain standardization formula in float64,
    and check the closed form against its analytic gradient."""
    shape = (3, 4, 2, 2)
    k, t = 1.3, 0.8
    w0 = torch.randn(shape, dtype=torch.float64)
    _, _, _, scale = ref.libra_pb_parts(w0)

    def surrogate(w):
        flat = w.reshape(shape[0], -1)
        v = (flat - flat.mean(1, keepdim=True)) / flat.std(1, unbiased=True, keepdim=True)
        return (k * torch.tanh(t * v) * scale[:, None]).reshape(shape)

    w = w0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(surrogate, (w,), eps=1e-6, atol=1e-7)
    g = torch.randn(shape, dtype=torch.float64)
    (analytic,) = torch.autograd.grad(surrogate(w), w, g)
    _, v, inv_sigma, _ = ref.libra_pb_parts(w0)
    closed = ref.libra_pb_backward(g, v, inv_sigma, scale, torch.tensor(k, dtype=torch.float64),
                                   torch.tensor(t, dtype=torch.float64))
    assert torch.allclose(closed, analytic, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("length", [1, 5, 63, 64, 65, 127, 128, 129, 1000])
def test_xnor_dot_equals_float_dot(length):
    a = torch.randn(6, length)
    b = torch.randn(6, length)
    a[0, 0] = -0.0  # packs as +1
    pa = ref.pack_bits(a.unsqueeze(-1)).squeeze(1)  # (6, words)
    pb = ref.pack_bits(b.unsqueeze(-1)).squeeze(1)
    dot = ref.xnor_dot(pa, pb, length)
    expected = (ref.sign(a) * ref.sign(b)).sum(1).to(torch.int64)
    assert torch.equal(dot, expected)


def test_pack_unpack_round_trip_and_tail_bits():
    x = torch.randn(3, 70, 4, 5)
    bits = ref.pack_bits(x)
    assert bits.shape == (3, 4, 5, 2) and bits.dtype == torch.int64
    assert torch.equal(ref.unpack_bits(bits, 70), ref.sign(x))
    assert torch.equal(bits[..., 1] >> 6, torch.zeros_like(bits[..., 1]))  # tail bits 70..127 are 0
    neg = torch.full((1, 64), -1.0)
    assert ref.pack_bits(neg).item() == -1  # all 64 bits set, bit 63 is the sign bit


def test_popcount64_edges():
    x = torch.tensor([0, -1, 1, -(2 ** 63), 0x5555555555555555, 0x0F0F0F0F0F0F0F0F], dtype=torch.int64)
    assert ref.popcount64(x).tolist() == [0, 64, 1, 1, 32, 32]


def test_binary_conv_padding_is_zero_not_plus_one():
    x = -torch.ones(1, 1, 3, 3)
    w = torch.ones(1, 1, 3, 3)
    y = ref.binary_conv2d(x, w.double().float(), 1.0, 1.0, padding=1)
    # w is constant: sigma == 0 -> wb = 0; use a non-constant weight instead
    assert torch.equal(y, torch.zeros(1, 1, 3, 3))
    w = torch.tensor([[[[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]]]])
    dot = ref.xnor_conv2d_bits(ref.pack_bits(x), ref.pack_bits(w), None, 1, (1, 1), (1, 1), (1, 1))
    # corner output sees 4 in-frame taps: x = -1 everywhere, signs of w there (1,-1,-1,1) -> 0
    full = torch.nn.functional.conv2d(ref.sign(x), ref.sign(w), padding=1)
    assert torch.equal(dot, full)
    assert dot[0, 0, 1, 1].item() == -1.0  # centre: -(5 - 4)
