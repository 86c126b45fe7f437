"""The fused binary conv (torch.ops.irnet.xnor_conv2d_fused: conv + folded BatchNorm +
residual + clamping activation in one kernel) against the reference, bit for bit, on
every SIMD level, and the fused deployment (irnet.deploy.convert(model, fuse=True))."""
import math

import pytest
import torch

import irnet
from irnet import ops
from irnet import reference as ref
from test_xnor_cpu import CONV_CASES, case_id, level, needs_kernels, pow2_scale, rand_pm  # noqa: F401 (level: fixture)

INF = math.inf
ACTS = [(-1.0, 1.0), (0.0, INF), (-INF, INF), (-0.25, 0.5)]


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def fused_args(o, shape, act, residual_kind):
    """alpha (some negative, one zero), beta, a residual (None / NCHW / channels_last /
    with NaN and Inf sprinkled in) and the activation bounds."""
    alpha = torch.randn(o) * 2
    alpha[0] = 0.0
    beta = torch.randn(o)
    residual = None
    if residual_kind != "none":
        residual = torch.randn(shape)
        if residual_kind == "nonfinite" and residual.numel() >= 3:
            flat = residual.view(-1)
            flat[0], flat[flat.numel() // 2], flat[-1] = math.nan, INF, -INF
        if residual_kind == "channels_last":
            residual = residual.contiguous(memory_format=torch.channels_last)
    return alpha, beta, residual, act[0], act[1]


@needs_kernels
@pytest.mark.parametrize("case", CONV_CASES, ids=[case_id(c) for c in CONV_CASES])
def test_fused_conv_matches_reference(level, case):  # noqa: F811 (level: the imported fixture)
    n, c, h, w, o, k, s, p, d = case
    xb, wb = ref.pack_bits(rand_pm(n, c, h, w)), ref.pack_bits(rand_pm(o, c, *k))
    shape = (n, o, out_size(h, k[0], s[0], p[0], d[0]), out_size(w, k[1], s[1], p[1], d[1]))
    for i, residual_kind in enumerate(("none", "nchw", "channels_last", "nonfinite")):
        act = ACTS[i % len(ACTS)]
        scale = (None, pow2_scale(o), torch.rand(o) * 3)[i % 3]
        alpha, beta, residual, lo, hi = fused_args(o, shape, act, residual_kind)
        want = ref.xnor_conv2d_fused_bits(xb, wb, scale, c, s, p, d, alpha, beta, residual, lo, hi)
        for cl in (False, True):
            got = torch.ops.irnet.xnor_conv2d_fused(xb, wb, scale, c, list(s), list(p), list(d), cl, alpha, beta,
                                                    residual, lo, hi)
            fmt = torch.channels_last if cl else torch.contiguous_format
            assert got.dtype == torch.float32 and got.is_contiguous(memory_format=fmt)
            # equal_nan: a NaN in the residual must come out as NaN where the reference has one
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True,
                                       msg=f"level={level} case={case} residual={residual_kind} act={act} cl={cl}")


@needs_kernels
@pytest.mark.parametrize("case", CONV_CASES[1::3], ids=[case_id(c) for c in CONV_CASES[1::3]])
def test_fused_float_input_equals_packed(level, case):  # noqa: F811 (level: the imported fixture)
    """x_bits given as the float activations (NCHW or channels_last): the same bits as the
    packed input, residual and epilogue included."""
    n, c, h, w, o, k, s, p, d = case
    x, wb = rand_pm(n, c, h, w), ref.pack_bits(rand_pm(o, c, *k))
    shape = (n, o, out_size(h, k[0], s[0], p[0], d[0]), out_size(w, k[1], s[1], p[1], d[1]))
    alpha, beta, residual, lo, hi = fused_args(o, shape, (-1.0, 1.0), "nchw")
    for cl in (False, True):
        args = (wb, pow2_scale(o), c, list(s), list(p), list(d), cl, alpha, beta, residual, lo, hi)
        want = torch.ops.irnet.xnor_conv2d_fused(ref.pack_bits(x), *args)
        for xin in (x, x.contiguous(memory_format=torch.channels_last)):
            assert torch.equal(torch.ops.irnet.xnor_conv2d_fused(xin, *args), want), f"level={level} case={case} cl={cl}"


@needs_kernels
def test_fused_float_api_and_fallback_path():
    """ops.xnor_conv2d_fused packs a float input; the fallback registered for devices
    without a fused kernel (CUDA: that device's xnor_conv2d, then PyTorch ops) gives the
    same bits as the fused CPU kernel."""
    x, wt = rand_pm(2, 70, 9, 7), rand_pm(12, 70, 3, 3)
    pw = ops.pack_conv_weight(wt, pow2_scale(12))
    alpha, beta, residual, lo, hi = fused_args(12, (2, 12, 5, 4), (-1.0, 1.0), "nchw")
    got = ops.xnor_conv2d_fused(x, pw, alpha, beta, residual, stride=2, padding=1, act_min=lo, act_max=hi)
    want = ref.fused_epilogue(ops.xnor_conv2d(x, pw, 2, 1), alpha, beta, residual, lo, hi)
    assert torch.equal(got, want)
    fallback = ops._REFERENCE_KERNELS["xnor_conv2d_fused"]
    xb = torch.ops.irnet.pack_bits(x)
    for cl in (False, True):
        for xin in (xb, x):
            args = (xin, pw.bits, pw.scale, 70, [2, 2], [1, 1], [1, 1], cl, alpha, beta, residual, lo, hi)
            assert torch.equal(fallback(*args), torch.ops.irnet.xnor_conv2d_fused(*args))
    # channels_last input -> channels_last output, as for xnor_conv2d
    got_cl = ops.xnor_conv2d_fused(x.contiguous(memory_format=torch.channels_last), pw, alpha, beta, residual, 2, 1,
                                   act_min=lo, act_max=hi)
    assert got_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(got_cl, want)


@needs_kernels
def test_fused_empty_batch_and_opcheck():
    xb, wb = ref.pack_bits(rand_pm(2, 70, 5, 4)), ref.pack_bits(rand_pm(6, 70, 3, 3))
    alpha, beta = torch.randn(6), torch.randn(6)
    one = [1, 1]
    y = torch.ops.irnet.xnor_conv2d_fused(xb[:0], wb, None, 70, one, one, one, False, alpha, beta,
                                          torch.empty(0, 6, 5, 4), -1.0, 1.0)
    assert y.shape == (0, 6, 5, 4)
    op = torch.ops.irnet.xnor_conv2d_fused.default
    torch.library.opcheck(op, (xb, wb, pow2_scale(6), 70, one, one, one, False, alpha, beta, None, -1.0, 1.0))
    torch.library.opcheck(op, (xb, wb, None, 70, [2, 1], [0, 2], [1, 2], True, alpha, beta,
                               torch.randn(2, 6, 2, 4), 0.0, INF))
    x16 = rand_pm(2, 16, 9, 8)  # float activations, on the LUT kernel's path
    torch.library.opcheck(op, (x16, ref.pack_bits(rand_pm(6, 16, 3, 3)), None, 16, one, one, one, False, alpha,
                               beta, torch.randn(2, 6, 9, 8), -1.0, 1.0))


@needs_kernels
def test_fused_bad_inputs_raise_useful_errors():
    fused = torch.ops.irnet.xnor_conv2d_fused
    xb, wb = ref.pack_bits(rand_pm(1, 70, 5, 5)), ref.pack_bits(rand_pm(3, 70, 3, 3))
    one = [1, 1]
    a, b = torch.ones(3), torch.zeros(3)
    with pytest.raises(RuntimeError, match="alpha and beta as float32"):
        fused(xb, wb, None, 70, one, one, one, False, torch.ones(4), b, None, -1.0, 1.0)
    with pytest.raises(RuntimeError, match="alpha and beta as float32"):
        fused(xb, wb, None, 70, one, one, one, False, a, b.double(), None, -1.0, 1.0)
    with pytest.raises(RuntimeError, match="residual as a float32"):
        fused(xb, wb, None, 70, one, one, one, False, a, b, torch.zeros(1, 3, 4, 5), -1.0, 1.0)
    with pytest.raises(RuntimeError, match="residual as a float32"):
        fused(xb, wb, None, 70, one, one, one, False, a, b, torch.zeros(1, 3, 5, 5, dtype=torch.float64), -1.0, 1.0)
    with pytest.raises(RuntimeError, match="act_min <= act_max"):
        fused(xb, wb, None, 70, one, one, one, False, a, b, None, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="words per pixel"):  # the conv's own checks still apply
        fused(xb, wb, None, 200, one, one, one, False, a, b, None, -1.0, 1.0)
    x, wt = rand_pm(1, 70, 5, 5), rand_pm(3, 70, 3, 3)
    with pytest.raises(ValueError, match="one entry per output channel"):
        ops.xnor_conv2d_fused(x, wt, torch.ones(2), b)
    with pytest.raises(ValueError, match="4 dimensions"):
        ops.xnor_conv2d_fused(x, wt, a, b, residual=torch.zeros(3, 3))


def trained_like(name, **kw):
    """A zoo model with non-trivial BatchNorm statistics and EDE state, in eval mode."""
    model = irnet.models.create(name, **kw)
    irnet.set_ede(model, 2.0, 0.5)
    size = 224 if name.startswith("resnet18_1w") or name.startswith("resnet34") else 32
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size))
        for m in model.modules():  # a BatchNorm with affine parameters away from (1, 0)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval(), size


def binarized_inputs_and_output(model, x):
    """model(x), and the float input of every binary layer in call order (what it binarizes)."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().float().contiguous()))
             for m in irnet.deploy.packed_layers(model)]
    try:
        y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen, y


def assert_equal_to_rounding(model, want_model, x, want_x=None):
    """model(x) equals want_model(want_x or x) to float rounding, for two models that differ
    only in rounding (a BatchNorm folded to y * alpha + beta).  Each binary layer's input must
    match to rounding; where a value within rounding of zero gets the other sign, the layer's
    bits differ by that one sign and everything downstream legitimately differs by more than
    rounding, so the comparison stops there, after checking that every sign that differs
    belongs to such a value.  Returns whether the outputs were compared (no sign differed)."""
    got_in, got = binarized_inputs_and_output(model, x)
    want_in, want = binarized_inputs_and_output(want_model, x if want_x is None else want_x)
    assert len(got_in) == len(want_in) > 0
    for i, (a, b) in enumerate(zip(got_in, want_in)):
        assert a.shape == b.shape, i
        flipped = (a < 0) != (b < 0)  # the kernels' sign: -1 for x < 0, +1 otherwise
        if flipped.any():
            tol = 1e-4 * max(1.0, b.abs().max().item())
            assert a[flipped].abs().max() <= tol and b[flipped].abs().max() <= tol, (
                f"binary layer {i}: {int(flipped.sum())} signs differ, up to |x| = "
                f"{max(a[flipped].abs().max().item(), b[flipped].abs().max().item())} (rounding: <= {tol})")
            return False
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    return True


@pytest.mark.parametrize("name,kw", [("resnet20_1w1a", {}), ("resnet20_1w1a", {"structure": "normal", "act": "relu"}),
                                     ("resnet18_cifar_1w1a", {"act": "identity"})],
                         ids=["resnet20-bireal-hardtanh", "resnet20-normal-relu", "resnet18cifar-identity"])
def test_deploy_fuse_matches_unfused_model(name, kw):
    model, size = trained_like(name, **kw)
    packed = irnet.deploy.convert(model)
    fused = irnet.deploy.convert(model, fuse=True)
    blocks = [m for m in model.modules() if isinstance(m, irnet.models.blocks.BasicBlock)]
    assert len([m for m in fused.modules() if isinstance(m, irnet.deploy.FusedBasicBlock)]) == len(blocks) > 0
    assert len(irnet.deploy.packed_layers(fused)) == len(irnet.deploy.packed_layers(packed))
    x = torch.randn(6, 3, size, size)
    with torch.no_grad():
        # BatchNorm folded to alpha, beta: equal to float rounding, not bit for bit (a
        # pre-activation within rounding of 0 may binarize the other way downstream; about
        # 1 in 20 random inputs of the ResNet-18 case has one)
        assert_equal_to_rounding(fused, packed, x)
        # channels_last end to end
        fused_cl = irnet.deploy.convert(model, fuse=True).to(memory_format=torch.channels_last)
        assert_equal_to_rounding(fused_cl, packed, x.contiguous(memory_format=torch.channels_last), x)


def test_equal_to_rounding_check_fails_on_a_wrong_model():
    """The check above is not vacuous: a fused model with one folded BatchNorm off by 1% fails it."""
    model, _ = trained_like("resnet20_1w1a")
    packed = irnet.deploy.convert(model)
    fused = irnet.deploy.convert(model, fuse=True)
    conv = [m for m in fused.modules() if isinstance(m, irnet.deploy.FusedPackedConv2d)][0]
    conv.alpha.mul_(1.01)
    with torch.no_grad(), pytest.raises(AssertionError):
        assert_equal_to_rounding(fused, packed, torch.randn(4, 3, 32, 32))


def test_deploy_fuse_state_dict_and_compile():
    model, _ = trained_like("resnet20_1w1a")
    fused = irnet.deploy.convert(model, fuse=True)
    again = irnet.deploy.convert(irnet.models.create("resnet20_1w1a").eval(), fuse=True)
    again.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = fused(x)
        assert torch.equal(again(x), want)
        compiled = torch.compile(fused, fullgraph=True)
        torch.testing.assert_close(compiled(x), want, rtol=1e-5, atol=1e-6)


def test_deploy_fuse_in_float64():
    """A fused model moved to float64 (buffers included) still runs: the kernel works in
    float32 and the result comes back in the input's dtype, as for PackedConv2d."""
    model, _ = trained_like("resnet20_1w1a")
    fused = irnet.deploy.convert(model, fuse=True).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        y = fused(x)
        want = irnet.deploy.convert(model).double()(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, want, rtol=1e-3, atol=1e-4)


def test_deploy_fuse_vgg_small_and_1w32a():
    """VGG-Small: each binary conv -> max pool -> BatchNorm -> hardtanh becomes one
    FusedPackedConvPool, conv -> BatchNorm -> hardtanh a fused conv, and the stem's
    BatchNorm folds into the stem conv; a 1w32a ResNet (no packed convs) gets its
    BatchNorms folded into its float convs.  Both equal the unfused model to float rounding."""
    model, _ = trained_like("vgg_small_1w1a")
    fused = irnet.deploy.convert(model, fuse=True)
    kinds = [type(m) for m in fused.modules()]
    assert kinds.count(irnet.deploy.FusedPackedConvPool) == 3
    assert kinds.count(irnet.deploy.FusedPackedConv2d) == 2
    assert torch.nn.BatchNorm2d not in kinds
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_equal_to_rounding(fused, irnet.deploy.convert(model), x)

    model, _ = trained_like("resnet20_1w32a")
    fused = irnet.deploy.convert(model, fuse=True)
    assert not any(isinstance(m, (irnet.deploy.FusedBasicBlock, torch.nn.BatchNorm2d)) for m in fused.modules())
    with torch.no_grad():
        got, want = fused(x), irnet.deploy.convert(model)(x)
    # float-only logits of this 1w32a model reach ~1e4: a tolerance relative to their scale
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
