"""Whole-network plans (irnet/deploy/plan.py, csrc/cpu/net_plan.cpp): a packed model run
as one C++ call gives exactly what its modules give, run one by one."""
import copy

import pytest
import torch
import torch.nn as nn

import irnet
from irnet.deploy import PackedModel, layer_by_layer
from irnet.deploy.plan import NetPlan, PlanUnsupported, plans_available
from irnet.models.blocks import OptionAShortcut

pytestmark = pytest.mark.skipif(not plans_available(), reason="the compiled extension (plan ops) is not built")


def trained_like(name, size, **kw):
    """A zoo model with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = irnet.models.create(name, **kw)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, size, size))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def module_by_module(model, x):
    with torch.no_grad(), layer_by_layer():
        return model(x)


def run_plan(model, x):
    assert model.plan_status() in ("plan", "not built yet")
    with torch.no_grad():
        y = model(x)
    assert model.plan_status() == "plan"
    return y


# (zoo name, input size, keywords): every structure the zoo has
ZOO = [
    ("resnet20_1w1a", 32, {}),
    ("resnet20_1w1a", 32, {"structure": "normal"}),
    ("resnet20_1w32a", 32, {}),
    ("vgg_small_1w1a", 32, {}),
    ("vgg_small_1w32a", 32, {}),
    ("resnet18_cifar_1w1a", 32, {}),
    ("resnet18_1w1a", 64, {}),  # the ImageNet stem (7x7 stride 2, max pool) on a small image
    ("resnet34_1w32a", 64, {"structure": "normal", "act": "relu"}),
]


@pytest.mark.parametrize("name,size,kw", ZOO, ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}" for n, _, k in ZOO])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_zoo_plan_equals_module_by_module(name, size, kw, layout):
    model = trained_like(name, size, **kw)
    fused = irnet.deploy.convert(model, fuse=True)
    assert isinstance(fused, PackedModel)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    fused = fused.to(memory_format=fmt)
    for batch in (1, 3, 0, 3, 1):  # the repeats run on the buffers the plan kept
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
        got = run_plan(fused, x)
        want = module_by_module(fused, x)
        assert got.shape == want.shape == (batch, fused.fc.out_features)
        assert torch.equal(got, want), (name, layout, batch, (got - want).abs().max())


def test_plan_is_the_default_and_predicts_like_the_trained_model():
    model = trained_like("resnet20_1w1a", 32)
    fused = irnet.deploy.convert(model, fuse=True)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        got, want = fused(x), model(x)
    assert fused.plan_status() == "plan"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_plan_same_result_on_one_and_two_threads():
    model = irnet.deploy.convert(trained_like("resnet18_cifar_1w1a", 32), fuse=True)
    x = torch.randn(2, 3, 32, 32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_plan(model, x)
        torch.set_num_threads(2)
        two = run_plan(model, x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_plan_follows_in_place_changes_and_rebuilds_after_replacement():
    a = irnet.deploy.convert(trained_like("resnet20_1w1a", 32), fuse=True)
    torch.manual_seed(1)
    other = irnet.models.create("resnet20_1w1a").eval()
    b = irnet.deploy.convert(other, fuse=True)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(run_plan(a, x), run_plan(b, x))
    a.load_state_dict(b.state_dict())  # copies into the same tensors: the plan reads them
    assert torch.equal(run_plan(a, x), run_plan(b, x))
    # a buffer replaced by assignment: the plan notices and is rebuilt
    conv = a.layers[0][0].conv1
    conv.bits = conv.bits.clone()
    conv.bits[0].bitwise_not_()
    assert torch.equal(run_plan(a, x), module_by_module(a, x))
    assert not torch.equal(run_plan(a, x), run_plan(b, x))


def test_plan_after_to_and_deepcopy():
    fused = irnet.deploy.convert(trained_like("resnet20_1w1a", 32), fuse=True)
    x = torch.randn(2, 3, 32, 32)
    want = run_plan(fused, x)
    twin = copy.deepcopy(fused)
    assert torch.equal(run_plan(twin, x), want)
    del twin  # releases the copy's own plan, not the original's
    assert torch.equal(run_plan(fused, x), want)
    double = copy.deepcopy(fused).double()  # float64: module by module
    with torch.no_grad():
        y = double(x.double())
    assert y.dtype == torch.float64 and double.plan_status() == "not built yet"
    torch.testing.assert_close(y.float(), want, rtol=1e-4, atol=1e-4)


def test_module_by_module_where_a_plan_does_not_apply():
    fused = irnet.deploy.convert(trained_like("resnet20_1w1a", 32), fuse=True)
    x = torch.randn(2, 3, 32, 32)
    want = module_by_module(fused, x)
    seen = []
    h = fused.layers[1][0].conv2.register_forward_hook(lambda m, a, y: seen.append(y.shape))
    try:
        with torch.no_grad():
            assert torch.equal(fused(x), want)  # a hook: the modules run (and the hook is called)
        assert len(seen) == 1
    finally:
        h.remove()
    xg = x.clone().requires_grad_(True)
    assert torch.equal(fused(xg).detach(), want)


class Custom(nn.Module):
    def forward(self, x):
        return x.sin()


def test_unknown_parts_run_module_by_module_and_say_why():
    model = PackedModel(nn.Sequential(nn.Conv2d(3, 4, 3), Custom(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model.model(x))
    assert "module by module" in model.plan_status() and "sin" in model.plan_status()


# ---------------------------------------------------------------- single steps, exactly
def plan_of(*modules):
    model = PackedModel(nn.Sequential(*modules).eval())
    model.requires_grad_(False)
    return model


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 1, 0), ((3, 2), (2, 1), (1, 0)), (5, 3, 2)])
def test_max_pool_step(layout, k, s, p):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for shape in [(1, 3, 7, 9), (2, 16, 12, 12), (3, 5, 5, 6), (0, 4, 6, 6), (1, 17, 33, 31)]:
        x = torch.randn(shape)
        if x.numel():
            x.view(-1)[torch.randperm(x.numel())[:2]] = float("nan")  # NaN wins its windows, as in PyTorch
            x.view(-1)[torch.randperm(x.numel())[:2]] = -float("inf")
        x = x.contiguous(memory_format=fmt)
        pool = nn.MaxPool2d(k, s, p)
        for tail in ([], [nn.Hardtanh(-0.5, 0.5)], [nn.ReLU()]):
            model = plan_of(pool, *tail)
            got = run_plan(model, x)
            want = nn.Sequential(pool, *tail)(x)
            assert got.is_contiguous(memory_format=fmt) or got.numel() == 0
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.nan_to_num(), want.nan_to_num()), (shape, k, s, p)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_option_a_shortcut_step(layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for c_in, c_out, stride, hw in [(16, 32, 2, 8), (5, 12, 2, 7), (4, 4, 3, 10), (3, 8, 1, 5)]:
        x = torch.randn(2, c_in, hw, hw).contiguous(memory_format=fmt)
        sc = OptionAShortcut(c_in, c_out, stride)
        got = run_plan(plan_of(sc, nn.Identity()), x)
        assert torch.equal(got, sc(x))


def test_pooled_binary_conv_step_equals_its_module():
    """VGG-Small's fused conv -> pool -> BN -> hardtanh, in both layouts, a negative
    BatchNorm scale included (pool before the affine)."""
    torch.manual_seed(3)
    model = irnet.models.create("vgg_small_1w1a").eval()
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bn:
            m.weight.uniform_(-1.5, 1.5)
            m.running_mean.uniform_(-50, 50)
            m.running_var.uniform_(10, 500)
    fused = irnet.deploy.convert(model, fuse=True)
    for fmt in (torch.contiguous_format, torch.channels_last):
        f = copy.deepcopy(fused).to(memory_format=fmt)
        x = torch.randn(3, 3, 32, 32).contiguous(memory_format=fmt)
        assert torch.equal(run_plan(f, x), module_by_module(f, x))


def test_malformed_programs_are_refused():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="tensor index"):
        torch.ops.irnet.plan_create([w], torch.tensor([3, 1, 1, 14, 0, 1, 5, -1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="fields"):
        torch.ops.irnet.plan_create([w], torch.tensor([3, 1, 1, 3, 0, 1, 0]))
    with pytest.raises(RuntimeError, match="unknown step"):
        torch.ops.irnet.plan_create([w], torch.tensor([3, 1, 99, 0]))
    with pytest.raises(RuntimeError, match="no plan"):
        torch.ops.irnet.plan_run(10 ** 9, torch.randn(1, 3, 4, 4))
    plan = NetPlan(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(RuntimeError, match="float32"):
        plan.run(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(PlanUnsupported):
        NetPlan(nn.Sequential(Custom()))


def test_packed_bits_stay_contiguous_in_channels_last():
    """.to(memory_format=torch.channels_last) converts every 4-d buffer; the packed bits
    (O, kh, kw, words) must stay contiguous (else every call copied them and rebuilt the
    kernels' weight layout)."""
    for fuse in (False, True):
        packed = irnet.deploy.convert(trained_like("resnet18_cifar_1w1a", 32), fuse=fuse)
        packed = packed.to(memory_format=torch.channels_last)
        layers = irnet.deploy.packed_layers(packed)
        assert layers and all(m.bits.is_contiguous() for m in layers)


def test_fused_model_runs_in_its_preferred_layout_whatever_the_input():
    """convert(fuse=True) picks the layout the network runs fastest in (channels_last for
    VGG-Small / ResNet-18, NCHW for ResNet-20) and copies an input in the other layout into
    it first, on every path, so the logits do not depend on the input's layout."""
    from irnet.deploy.convert import preferred_memory_format
    for name, want in (("resnet20_1w1a", torch.contiguous_format), ("vgg_small_1w1a", torch.channels_last)):
        fused = irnet.deploy.convert(trained_like(name, 32), fuse=True)
        assert fused.input_format == want == preferred_memory_format(fused.model)
        x = torch.randn(2, 3, 32, 32)
        other = x.contiguous(memory_format=torch.channels_last if want == torch.contiguous_format else torch.contiguous_format)
        y = run_plan(fused, x.contiguous(memory_format=want))
        assert torch.equal(run_plan(fused, other), y)
        assert torch.equal(module_by_module(fused, other), y)
        # .to(memory_format=...) chooses another layout
        flipped = copy.deepcopy(fused).to(memory_format=torch.channels_last if want == torch.contiguous_format
                                          else torch.contiguous_format)
        assert flipped.input_format != want
        torch.testing.assert_close(run_plan(flipped, x), y, rtol=1e-4, atol=1e-4)


def test_plan_keeps_activation_memory_for_the_next_call_and_bounds_it():
    """A plan hands the buffers one call freed to the next call (no fresh pages per forward
    under glibc's defaults); what it keeps is at most one call's worth (a call at another batch
    size releases the rest); the outputs it returned are never reused, and every result stays
    equal to the module-by-module run."""
    model = irnet.deploy.convert(trained_like("resnet20_1w1a", 32), fuse=True)
    torch.manual_seed(1)
    small, large = torch.randn(2, 3, 32, 32), torch.randn(8, 3, 32, 32)
    want_small, want_large = module_by_module(model, small), module_by_module(model, large)
    y_small = run_plan(model, small)
    plan = model._plan
    kept_small = plan.kept_bytes()
    # ResNet-20 keeps a few of its 16x32x32 float activations (32 KB each per sample)
    assert 2 * 16 * 32 * 32 * 4 <= kept_small <= 8 * 2 * 16 * 32 * 32 * 4
    y_large = run_plan(model, large)
    kept_large = plan.kept_bytes()
    assert kept_large == kept_small * 4  # batch 8's buffers; batch 2's released
    kept = []
    for _ in range(3):
        again = run_plan(model, small)
        assert torch.equal(again, want_small)
        kept.append(plan.kept_bytes())
    # batch 2 may run on batch 8's buffers (at most 4x larger), never on more than one call's
    assert kept_small <= kept[0] <= kept_large and kept[1] == kept[2]
    assert torch.equal(y_small, want_small) and torch.equal(y_large, want_large)  # untouched by later calls


def test_plan_calls_from_several_threads_at_once():
    """Calls of one plan on several Python threads at once (each holds its buffers until it
    gives them back) give what module-by-module runs give."""
    import threading

    model = irnet.deploy.convert(trained_like("resnet20_1w1a", 32), fuse=True)
    torch.manual_seed(2)
    inputs = [torch.randn(1 + i % 3, 3, 32, 32) for i in range(12)]
    want = [module_by_module(model, x) for x in inputs]
    run_plan(model, inputs[0])
    got = [None] * len(inputs)
    errors = []

    def worker(k):
        try:
            with torch.no_grad():
                for _ in range(5):
                    for i in range(k, len(inputs), 4):
                        got[i] = model(inputs[i])
                        assert torch.equal(got[i], want[i]), i
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert model.plan_status() == "plan"


def test_plan_never_reuses_the_output_it_returned():
    """Two max pools of one size: the first one's buffer is kept for the next call, the
    second one's (the result) is the caller's and must stay as returned."""
    model = plan_of(nn.MaxPool2d(3, 1, 1), nn.MaxPool2d(3, 1, 1))
    torch.manual_seed(4)
    xs = [torch.randn(2, 5, 9, 9) for _ in range(4)]
    want = [module_by_module(model, x) for x in xs]
    got = [run_plan(model, x) for x in xs]
    assert model._plan.kept_bytes() == 2 * 5 * 9 * 9 * 4  # the first pool's output
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert len({g.data_ptr() for g in got}) == len(got)


def test_plan_without_kept_buffers(monkeypatch):
    """IRNET_PLAN_KEEP_BUFFERS=0 (read when a plan is made): nothing kept, same results."""
    monkeypatch.setenv("IRNET_PLAN_KEEP_BUFFERS", "0")
    model = irnet.deploy.convert(trained_like("resnet20_1w1a", 32), fuse=True)
    x = torch.randn(3, 3, 32, 32)
    for _ in range(2):
        assert torch.equal(run_plan(model, x), module_by_module(model, x))
        assert model._plan.kept_bytes() == 0
