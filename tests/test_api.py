"""The public API: schemas, fallback to the reference, bad input, deployment."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import irnet
from irnet import ops, reference as ref

from conftest import ROOT


@pytest.mark.skipif(not irnet._ext.LOADED, reason="compiled extension not built")
def test_python_schema_table_matches_cpp():
    for name, schema in ops.SCHEMAS.items():
        assert str(getattr(torch.ops.irnet, name).default._schema) == "irnet::" + schema


def test_extension_status_reports_every_op():
    status = irnet.extension_status()
    assert set(status["kernels"]) == {f"{n}/{d}" for n in ops.SCHEMAS for d in ("cpu", "cuda")}
    if os.environ.get("IRNET_REQUIRE_EXTENSION"):
        assert status["loaded"], status["error"]


def test_reference_fallback_in_a_fresh_process():
    """With the extension disabled irnet warns once and every op still works (reference)."""
    code = textwrap.dedent("""
        import warnings, torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import irnet
        msgs = [str(w.message) for w in caught if "irnet" in str(w.message)]
        assert len(msgs) == 1 and "reference" in msgs[0], msgs
        from irnet import ops, reference as ref
        assert not irnet.extension_status()["loaded"]
        x, w = torch.randn(2, 67, 6, 5), torch.randn(4, 67, 3, 3)
        y = ops.xnor_conv2d(x, w, stride=2, padding=1)
        assert torch.equal(y, torch.nn.functional.conv2d(ref.sign(x), ref.sign(w), stride=2, padding=1))
        y_cl = ops.xnor_conv2d(x.contiguous(memory_format=torch.channels_last), w, stride=2, padding=1)
        assert torch.equal(y_cl, y) and y_cl.is_contiguous(memory_format=torch.channels_last)
        m = irnet.models.create("resnet20_1w1a").eval()
        assert irnet.deploy.convert(m)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        xi = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(irnet.deploy.convert(m, fuse=True)(xi), irnet.deploy.convert(m)(xi),
                                   rtol=1e-3, atol=1e-4)
        for name in ops.SCHEMAS:
            assert not ops.has_compiled_kernel(name, "cpu")
        print("fallback ok")
    """)
    env = dict(os.environ, IRNET_DISABLE_EXTENSION="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fallback ok" in out.stdout


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), ((2, 1), (1, 0), (1, 2))])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_xnor_conv2d_equals_float_conv(stride, padding, dilation, batch):
    x = torch.randn(batch, 67, 9, 8)
    w = torch.randn(5, 67, 3, 3)
    expected = F.conv2d(ref.sign(x), ref.sign(w), None, stride, padding, dilation)
    assert torch.equal(ops.xnor_conv2d(x, w, stride, padding, dilation), expected)
    assert torch.equal(ops.xnor_conv2d(x, ops.pack_conv_weight(w), stride, padding, dilation), expected)


def test_xnor_linear_equals_float_linear():
    x, w = torch.randn(4, 130), torch.randn(7, 130)
    expected = F.linear(ref.sign(x), ref.sign(w))
    assert torch.equal(ops.xnor_linear(x, w), expected)
    scale = torch.tensor([0.5, 1, 2, 4, 0.25, 0, 8.0])
    assert torch.equal(ops.xnor_linear(x, ops.pack_linear_weight(w, scale)), expected * scale)


def test_op_bad_input_messages():
    x, w = torch.randn(1, 8, 5, 5), torch.randn(4, 8, 3, 3)
    with pytest.raises(TypeError, match="floating-point"):
        ops.xnor_conv2d(x.to(torch.int32), w)
    with pytest.raises(ValueError, match="4 dimensions"):
        ops.xnor_conv2d(x[0], w)
    with pytest.raises(ValueError, match="x has 8 channels but the weight expects 9"):
        ops.xnor_conv2d(x, torch.randn(4, 9, 3, 3))
    with pytest.raises(ValueError, match="does not fit"):
        ops.xnor_conv2d(x, torch.randn(4, 8, 7, 7))
    with pytest.raises(ValueError, match="stride"):
        ops.xnor_conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.pack_conv_weight(torch.full((4, 8, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.libra_pb_pack(torch.full((4, 8), float("inf")))
    with pytest.raises(ValueError, match="one entry per output channel"):
        ops.pack_linear_weight(torch.randn(4, 8), torch.ones(3))
    with pytest.raises(ValueError, match="2 dimensions"):
        ops.xnor_linear(torch.randn(2, 3, 4), torch.randn(4, 12))
    with pytest.raises(ValueError, match="x has 3 features"):
        ops.xnor_linear(torch.randn(2, 3), torch.randn(4, 12))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ops.libra_pb(torch.randn(5), 1.0, 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.sign_ede([1.0, 2.0], 1.0, 1.0)


@pytest.mark.parametrize("name", ["resnet20_1w1a", "resnet20_1w32a", "vgg_small_1w1a", "resnet18_cifar_1w1a"])
def test_deploy_convert_predicts_exactly_the_same(name):
    model = irnet.models.create(name)
    irnet.set_ede(model, 2.0, 0.5)
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model.train()(torch.randn(16, 3, 32, 32))
    model.eval()
    packed = irnet.deploy.convert(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))
        # channels_last end to end (the fast layout on the CPU): the same predictions; the
        # logits agree to float rounding only, because the float layers (the global
        # average pool; every conv of a 1w32a model) sum in another order over NHWC
        # tensors (the binary layers are exact: see test_xnor_cpu's channels_last output).
        # Rounding relative to the logits' scale: a 1w32a model's float convs reach logits of
        # ~1e4 here, and one of them, a difference of large sums, once missed rtol=1e-3 by 2%.
        x_cl = x.contiguous(memory_format=torch.channels_last)
        packed_cl = irnet.deploy.convert(model).to(memory_format=torch.channels_last)
        y_cl, y = packed_cl(x_cl), model(x)
        torch.testing.assert_close(y_cl, y, rtol=1e-3, atol=1e-3 * y.abs().max().item())
        top2 = y.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-2 * top2[:, 0].abs()  # no near-tie
        assert torch.equal(y_cl.argmax(1)[clear], y.argmax(1)[clear])
    n_packed = len(irnet.deploy.packed_layers(packed))
    assert n_packed == (len(irnet.binary_layers(model)) if name.endswith("1w1a") else 0)
    assert not irnet.binary_layers(packed)
    if name.endswith("1w1a"):
        assert irnet.deploy.model_bytes(packed) < irnet.deploy.model_bytes(model) / 4
    # the original is untouched and still trainable
    assert irnet.binary_layers(model) and model.training is False


def test_deploy_packed_model_state_dict_round_trip():
    model = irnet.models.create("resnet20_1w1a").eval()
    packed = irnet.deploy.convert(model)
    again = irnet.deploy.convert(irnet.models.create("resnet20_1w1a").eval())
    again.load_state_dict(packed.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), packed(x))
