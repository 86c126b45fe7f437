"""The whole-network benchmark's helpers (benchmarks/bench_cpu_model.py, profile_layers.py):
the check that refuses to time a broken packed model, the ratios against the targets, and
the profile's attribution of op time.  A few seconds in all."""
from types import SimpleNamespace

import pytest
import torch

from irnet import deploy

import bench_cpu_model as bench
import profile_layers


@pytest.fixture(scope="module")
def resnet20():
    return profile_layers.calibrated_model("resnet20_1w1a")


def test_check_passes_packed_models_and_stops_on_a_broken_one(resnet20):
    fused = deploy.convert(resnet20, fuse=True)
    variants = {"fused/nchw": (fused, False, False), "unfused/nchw": (deploy.convert(resnet20), False, False),
                "fused/channels_last": (fused, True, False)}
    x = torch.randn(1, 3, 32, 32)
    checks = bench.check_packed("resnet20_1w1a", resnet20, variants, x)
    assert all(c["of"] == bench.CHECK_SAMPLES and c["agree"] == c["of"] for c in checks.values())
    assert all(c["max_rel_diff"] <= bench.CHECK_REL_TOL and c["beyond_tolerance"] == 0 for c in checks.values())
    assert bench.allowed_beyond_tolerance("unfused/nchw", 128) == 0
    assert bench.allowed_beyond_tolerance("fused/nchw", 128) == 2 and bench.allowed_beyond_tolerance("fused/nchw", 8) == 1
    broken = deploy.convert(resnet20, fuse=True)
    with torch.no_grad():  # every weight bit of one conv flipped: that conv's output negated
        broken.layers[1][0].conv1.bits.bitwise_not_()
    with pytest.raises(SystemExit, match="disagree"):
        bench.check_packed("resnet20_1w1a", resnet20, {"fused/nchw": (broken, False, False)}, x)


def _row(model, batch, times):
    row = {"model": model, "batch": batch, "time_s": times, "time_min_s": dict(times)}
    bench.summarize(row)
    return row


def test_speedups_and_targets_from_the_same_rounds():
    times = {"float/nchw": 30e-3, "float/channels_last": 24e-3, "float/compiled": 27e-3, "openvino": 20e-3,
             "fused/nchw": 8e-3, "fused/channels_last": 4e-3, "unfused/nchw": 9e-3, "unfused/channels_last": 6e-3}
    row = _row("resnet18_1w1a", 1, times)
    assert row["best_float32"] == "float/channels_last" and row["packed"] == "fused/channels_last"
    assert row["speedup"]["over_best_float32"] == pytest.approx(6.0)
    assert row["speedup"]["over_openvino"] == pytest.approx(5.0)
    assert row["speedup"]["fused_over_unfused"] == pytest.approx(1.5)
    assert row["targets"]["over_best_float32"]["met"] and row["targets"]["over_openvino"]["met"]
    slower = _row("resnet18_1w1a", 1, {**times, "fused/channels_last": 4.1e-3})
    assert not slower["targets"]["over_best_float32"]["met"] and not slower["targets"]["over_openvino"]["met"]
    assert "NOT MET" in bench.format_row({**slower, "repeats": 3, "check": {}})
    no_ov = _row("resnet20_1w1a", 128, {k: v for k, v in times.items() if k != "openvino"})
    assert no_ov["targets"]["over_openvino"]["met"] is None and "over_openvino" not in no_ov["speedup"]
    assert _row("resnet34_1w1a", 16, times)["targets"] == {}  # no target for this row


class _Event(SimpleNamespace):
    """A stand-in for torch.profiler's FunctionEvent: name, duration, parent and children."""

    def __init__(self, name, us, children=(), id=0):
        super().__init__(name=name, id=id, cpu_children=list(children), cpu_parent=None,
                         time_range=SimpleNamespace(elapsed_us=lambda: us))
        for c in self.cpu_children:
            c.cpu_parent = self


def test_profile_attribution_charges_top_level_ops_and_splits_out_copies():
    copy_in_conv = _Event("aten::copy_", 30)
    conv = _Event("irnet::xnor_conv2d_fused", 100, [_Event("aten::empty", 2), copy_in_conv])
    stem = _Event("aten::conv2d", 50, [_Event("aten::convolution", 48, [_Event("aten::mkldnn_convolution", 45)])])
    contiguous = _Event("aten::contiguous", 12, [_Event("aten::clone", 11, [_Event("aten::copy_", 10)])])
    bn = _Event("aten::batch_norm", 7)
    forward = _Event(profile_layers.ITERATION, 250, [stem, conv, contiguous, bn], id=1)
    events = [forward, stem, *stem.cpu_children, conv, *conv.cpu_children, contiguous, bn]
    (f,) = profile_layers.attribute(events)
    assert f["wall_s"] == pytest.approx(250e-6)
    kinds = {k: v * 1e6 for k, v in f["kinds"].items()}
    assert kinds == pytest.approx({"binary conv / linear (irnet ops)": 70, profile_layers.COPIES: 41,
                                   "float conv (stem, downsample)": 50, "batchnorm": 7, profile_layers.OTHER: 1})
    assert f["copies_in"] == pytest.approx({"irnet::xnor_conv2d_fused": 30e-6, "aten::contiguous": 11e-6})
    assert profile_layers.op_kind("aten::max_pool2d_with_indices") == "pooling"
    assert profile_layers.op_kind("aten::flatten") == profile_layers.OTHER


def test_profile_of_a_packed_resnet20(resnet20):
    packed = deploy.convert(resnet20, fuse=True)
    result = profile_layers.profile_model(packed, torch.randn(1, 3, 32, 32), iters=3, repeats=3)
    kinds = result["kinds_s"]
    assert kinds["binary conv / linear (irnet ops)"] > 0 and kinds["float conv (stem, downsample)"] > 0
    assert sum(kinds.values()) == pytest.approx(result["total_s"])  # overhead = total - the ops
    leaves = [n for n, m in packed.named_modules() if next(m.children(), None) is None]
    assert {m["module"] for m in result["modules"]} <= set(leaves)
    assert sum(m["type"] == "FusedPackedConv2d" for m in result["modules"]) == 18
    assert "Python / dispatch overhead" in profile_layers.format_profile(result)
