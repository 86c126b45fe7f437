"""irnet.summary: per-layer kinds, sizes and MACs, on training models and their packed and
fused forms, checked against figures computed by hand from the architectures."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import irnet
from irnet.deploy import runtime


def rows_by_name(s):
    return {r.name: r for r in s.rows}


def conv_macs(out_hw, out_c, in_c, k=3):
    return out_hw * out_hw * out_c * in_c * k * k


# ResNet-20 on 32x32, by hand: 16 binary 3x3 convs at full width (2,359,296 MACs each: 16x16 at
# 32x32, 32x32 at 16x16, 64x64 at 8x8) and the two stride-2 convs (16->32, 32->64) at half that.
RESNET20_BINARY_MACS = 16 * conv_macs(32, 16, 16) + conv_macs(16, 32, 16) + conv_macs(8, 64, 32)
RESNET20_FLOAT_MACS = conv_macs(32, 16, 3) + 64 * 10   # the stem conv and the classifier
RESNET20_BINARY_WEIGHTS = (6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64) * 9


def test_resnet20_figures_by_hand():
    model = irnet.models.create("resnet20_1w1a")
    s = irnet.summary(model, (1, 3, 32, 32))
    binary_convs = [m for m in model.modules() if isinstance(m, irnet.nn.IRConv2d)]
    assert len(binary_convs) == 18
    assert s.binary_params == sum(m.weight.numel() for m in binary_convs) == RESNET20_BINARY_WEIGHTS
    assert s.binary_macs == RESNET20_BINARY_MACS == 40_108_032
    assert s.float_macs == RESNET20_FLOAT_MACS
    assert s.binary_mac_share == pytest.approx(RESNET20_BINARY_MACS / (RESNET20_BINARY_MACS + RESNET20_FLOAT_MACS))
    r = rows_by_name(s)
    conv = r["layers.1.0.conv1"]   # 16 -> 32, stride 2
    assert (conv.kind, conv.output_shape, conv.binary_params, conv.params) == ("1w1a", (1, 32, 16, 16), 4608, 4608 + 32)
    assert conv.deployed_bytes == 4608 // 8 + 4 * 32 and conv.float32_bytes == 4 * (4608 + 32)
    assert (r["stem.0"].kind, r["fc"].kind, r["stem.1"].kind) == ("float", "float", "")
    assert r["stem.1"].params == 4 * 16   # BatchNorm: weight, bias, running mean and variance
    assert r["layers.1.0.shortcut"].output_shape == (1, 32, 16, 16)   # an irnet module without parameters: listed
    # every value counted once: the whole model's float values + binary weights + one scale per binary conv
    floats = sum(t.numel() for n, t in model.state_dict().items()
                 if t.is_floating_point() and not n.endswith((".k", ".t")))
    assert s.params == floats + sum(m.out_channels for m in binary_convs)
    # the batch multiplies the MACs, nothing else
    s4 = irnet.summary(model, (4, 3, 32, 32))
    assert (s4.binary_macs, s4.float_macs, s4.params) == (4 * s.binary_macs, 4 * s.float_macs, s.params)
    text = str(s)
    assert "layers.1.0.conv1" in text and "40,108,032" in text and "% binary" in text


@pytest.mark.parametrize("name", ["resnet20_1w1a", "resnet20_1w32a", "vgg_small_1w1a", "vgg_small_1w32a"])
def test_training_model_and_packed_model_agree(name):
    model = irnet.models.create(name).eval()
    train_s = irnet.summary(model, (1, 3, 32, 32))
    packed_s = irnet.summary(irnet.deploy.convert(model), (1, 3, 32, 32))
    a, b = rows_by_name(train_s), rows_by_name(packed_s)
    assert list(a) == list(b)
    for layer in a:
        ra, rb = a[layer], b[layer]
        assert (ra.kind, ra.output_shape, ra.params, ra.binary_params, ra.binary_macs, ra.float_macs) == \
               (rb.kind, rb.output_shape, rb.params, rb.binary_params, rb.binary_macs, rb.float_macs), layer
    binary_kind = "1w1a" if name.endswith("1w1a") else "1w32a"
    assert {r.kind for r in train_s.rows if r.binary_params} == {binary_kind}
    if binary_kind == "1w32a":   # weights binary, activations real: the convs run as float convs
        assert train_s.binary_macs == 0 and train_s.binary_mac_share == 0.0 and train_s.binary_params > 0
        assert {type(m).__name__ for m in irnet.deploy.convert(model).modules() if isinstance(m, nn.Conv2d)} == {"Conv2d"}
    else:
        assert train_s.binary_mac_share > 0.98


def test_vgg_small_macs_by_hand():
    s = irnet.summary(irnet.models.create("vgg_small_1w1a"), (1, 3, 32, 32))
    # binary convs 128-128 @32, 128-256 @16, 256-256 @16, 256-512 @8, 512-512 @8 (pooling after 1, 3, 5)
    expected = (conv_macs(32, 128, 128) + conv_macs(16, 256, 128) + conv_macs(16, 256, 256) + conv_macs(8, 512, 256)
                + conv_macs(8, 512, 512))
    assert s.binary_macs == expected
    assert s.float_macs == conv_macs(32, 128, 3) + 512 * 4 * 4 * 10


def row(s, name):
    """The row of layer ``name``, also where the packed network sits inside a wrapper module
    (e.g. ``model.layers.0.0.conv1``)."""
    found = [r for r in s.rows if r.name == name or r.name.endswith("." + name)]
    assert len(found) == 1, (name, [r.name for r in s.rows])
    return found[0]


def float_values(module):
    return sum(t.numel() for t in module.state_dict().values() if t.is_floating_point())


def test_fused_model_counts_the_folded_batchnorm():
    model = irnet.models.create("resnet20_1w1a").eval()
    packed, fused_model = irnet.deploy.convert(model), irnet.deploy.convert(model, fuse=True)
    unfused = irnet.summary(packed, (1, 3, 32, 32))
    fused = irnet.summary(fused_model, (1, 3, 32, 32))
    conv = row(fused, "layers.0.0.conv1")
    assert conv.type == "FusedPackedConv2d" and conv.kind == "1w1a"
    assert conv.params == 16 * 16 * 9 + 3 * 16   # bits, scale, alpha, beta
    assert not [r for r in fused.rows if r.name.endswith(("bn1", "bn2"))]   # folded into the convs
    assert (fused.binary_macs, fused.float_macs, fused.binary_params) == \
           (unfused.binary_macs, unfused.float_macs, unfused.binary_params)
    # every stored value counted once: the binary weights plus every float the packed models hold
    for s, m in ((unfused, packed), (fused, fused_model)):
        assert s.params == s.binary_params + float_values(m)
    # each of the blocks' 18 BatchNorms (4 values per channel) became alpha and beta (2 per channel)
    bn_channels = 6 * 16 + 6 * 32 + 6 * 64
    assert unfused.params - fused.params >= 2 * bn_channels


def test_unknown_modules_run_inside_layer_by_layer_and_nothing_changes():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(5))

        def forward(self, x):
            seen.append(runtime.running_layer_by_layer())
            return x * self.gain

    class Holder(nn.Module):   # tensors of its own besides children
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", torch.zeros(5))
            self.lin = nn.Linear(8, 5)

        def forward(self, x):
            return self.lin(x) + self.offset

    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), Holder(), Probe(), nn.Linear(5, 3), nn.Identity())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = irnet.summary(model, (2, 4))
    assert seen == [True]
    r = rows_by_name(s)
    assert (r["3"].type, r["3"].output_shape, r["3"].params, r["3"].kind) == ("Probe", (2, 5), 5, "")
    assert (r["2"].type, r["2"].params, r["2"].output_shape) == ("Holder", 5, (2, 5))
    assert (r["2.lin"].kind, r["2.lin"].float_macs) == ("float", 2 * 8 * 5)
    assert s.float_macs == 2 * (4 * 8 + 8 * 5 + 5 * 3) and s.binary_macs == 0
    assert model.training and all(m.training for m in model.modules())   # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # BN statistics untouched
    assert not runtime.running_layer_by_layer()


def test_layer_that_never_runs_is_listed():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 100)

        def forward(self, x):
            return self.used(x)

    s = irnet.summary(Skips(), (1, 3))
    unused = rows_by_name(s)["unused"]
    assert unused.output_shape is None and unused.params == 400 and "not run" in str(s)


@pytest.mark.parametrize("bad", [(3, 32, 32.0), (), (0, 3, 8, 8), "1,3,32,32", (1, True, 8, 8)])
def test_bad_input_size_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="input_size must be"):
        irnet.summary(irnet.models.create("resnet20_1w1a"), bad)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        irnet.summary("resnet20_1w1a", (1, 3, 32, 32))
