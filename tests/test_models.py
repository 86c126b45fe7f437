"""Every zoo model: forward, output shape, parameter count, which layers are binary,
state_dict round trip with k/t, .to(dtype), both residual structures."""
import pytest
import torch
import torch.nn as nn

import irnet
from irnet.nn import IRConv2d, IRLinear

# name -> (number of binary convs, input side)
EXPECTED = {
    "resnet20_1w1a": (18, 32), "resnet20_1w32a": (18, 32),
    "resnet18_cifar_1w1a": (16, 32), "resnet18_cifar_1w32a": (16, 32),
    "vgg_small_1w1a": (5, 32), "vgg_small_1w32a": (5, 32),
    "resnet18_1w1a": (16, 64), "resnet18_1w32a": (16, 64),
    "resnet34_1w1a": (32, 64), "resnet34_1w32a": (32, 64),
}


def test_registry_covers_the_paper():
    assert set(EXPECTED) <= set(irnet.models.names())
    with pytest.raises(ValueError, match="unknown model"):
        irnet.models.create("resnet1000_1w1a")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model(name):
    n_binary, side = EXPECTED[name]
    spec = irnet.models.spec(name)
    model = irnet.models.create(name)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 / spec.params_m - 1) < 0.01, (name, params)
    binary = [m for m in model.modules() if isinstance(m, (IRConv2d, IRLinear))]
    assert len(binary) == n_binary
    assert all(m.binary_act == name.endswith("1w1a") for m in binary)
    # the first conv and the last linear stay full precision
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert type(convs[0]) is nn.Conv2d and type(linears[-1]) is nn.Linear
    # binary convs are exactly the 3x3 ones past the stem (1x1 downsamples stay fp)
    assert all(m.kernel_size == (3, 3) for m in binary)
    assert all(type(m) is nn.Conv2d for m in convs if m.kernel_size == (1, 1))
    x = torch.randn(2, 3, side, side)
    y = model(x)
    assert y.shape == (2, spec.num_classes) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(m.weight.grad is not None and torch.isfinite(m.weight.grad).all() for m in binary)


@pytest.mark.parametrize("name", ["resnet20_1w1a", "resnet18_cifar_1w32a"])
def test_state_dict_round_trip_with_ede(name):
    model = irnet.models.create(name)
    assert irnet.set_ede(model, 3.0, 0.25) == EXPECTED[name][0]
    clone = irnet.models.create(name)
    clone.load_state_dict(model.state_dict())
    for a, b in zip(irnet.binary_layers(model), irnet.binary_layers(clone)):
        assert a.k.item() == 3.0 and b.k.item() == 3.0 and b.t.item() == 0.25
    model.eval(), clone.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), clone(x))


def test_to_dtype_moves_ede_buffers():
    model = irnet.models.create("resnet20_1w1a").to(torch.float64)
    layer = irnet.binary_layers(model)[0]
    assert layer.k.dtype == torch.float64 and layer.weight.dtype == torch.float64
    y = model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert y.dtype == torch.float64


@pytest.mark.parametrize("name", ["resnet20_1w1a", "resnet18_1w1a", "resnet20_1w32a"])
@pytest.mark.parametrize("structure", ["normal", "bireal"])
def test_both_structures(name, structure):
    model = irnet.models.create(name, structure=structure, num_classes=7)
    side = EXPECTED[name][1]
    assert model(torch.randn(1, 3, side, side)).shape == (1, 7)
    with pytest.raises(ValueError, match="structure"):
        irnet.models.create(name, structure="dense")


def test_bireal_and_normal_differ_in_shortcuts():
    torch.manual_seed(0)
    a = irnet.models.create("resnet20_1w1a", structure="bireal").eval()
    b = irnet.models.create("resnet20_1w1a", structure="normal").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(a(x), b(x))


def test_in_channels_keyword_for_mnist():
    model = irnet.models.create("resnet20_1w1a", in_channels=1)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_layer_bad_input_messages():
    conv = IRConv2d(3, 8, 3, padding=1)
    with pytest.raises(ValueError, match="expected 3 input channels, got 5"):
        conv(torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="4-d input"):
        conv(torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        conv(torch.ones(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match="float64"):
        conv(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    lin = IRLinear(10, 4)
    with pytest.raises(ValueError, match="expected 10 input features, got 9"):
        lin(torch.randn(2, 9))


@pytest.mark.parametrize("name", ["resnet20_1w1a", "vgg_small_1w32a", "resnet18_1w1a"])
def test_float_twin_replaces_every_binary_layer_with_its_latent_weight(name):
    """irnet.models.float_twin: the speed baseline, the same architecture as a plain float
    model (every binary conv an nn.Conv2d, every binary linear an nn.Linear, latent weights)."""
    torch.manual_seed(0)
    model = irnet.models.create(name)
    twin = irnet.models.float_twin(model)
    assert not any(isinstance(m, (IRConv2d, IRLinear)) for m in twin.modules())
    twin_modules = dict(twin.named_modules())
    binary = [(n, m) for n, m in model.named_modules() if isinstance(m, IRConv2d)]
    assert len(binary) == EXPECTED[name][0] and not twin.training and model.training  # the original untouched
    for n, m in binary:
        t = twin_modules[n]
        assert type(t) is nn.Conv2d and torch.equal(t.weight, m.weight) and t.weight.data_ptr() != m.weight.data_ptr()
        assert (t.stride, t.padding, t.dilation, t.groups) == (m.stride, m.padding, m.dilation, m.groups)
    side = EXPECTED[name][1]
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():  # a different function from the binary model (real-valued activations)
        assert twin(x).shape == model.eval()(x).shape
        assert not torch.allclose(twin(x), model(x))
