"""Export targets of packed models: torch.export (export, save, load -- in this process and
in a fresh one that only imports irnet) and TorchScript tracing (inside layer_by_layer()),
each giving the eager packed model's logits bit for bit."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import irnet
from conftest import cli_env
from test_deploy_io import inputs, trained_like


@pytest.fixture(scope="module")
def models():
    model = trained_like("resnet20_1w1a")
    return {"packed": irnet.deploy.convert(model), "fused": irnet.deploy.convert(model, fuse=True)}


@pytest.mark.parametrize("which", ["packed", "fused"])
def test_torch_export_save_load_gives_the_same_logits(models, which, tmp_path):
    packed = models[which]
    x = inputs((2, 3, 32, 32))
    program = torch.export.export(packed, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert ("irnet.xnor_conv2d_fused.default" if which == "fused" else "irnet.xnor_conv2d.default") in ops
    path = tmp_path / f"{which}.pt2"
    torch.export.save(program, path)
    reloaded = torch.export.load(path).module()
    with torch.no_grad():
        expected = packed(x)
        assert torch.equal(program.module()(x), expected)
        assert torch.equal(reloaded(x), expected)
        y = inputs((2, 3, 32, 32), seed=7)          # not the example input
        assert torch.equal(reloaded(y), packed(y))


def test_exported_program_loads_in_a_fresh_process_after_import_irnet(models, tmp_path):
    """A model loaded from its irnet file, exported; another Python process that imports
    only irnet and torch loads the .pt2 and reproduces the logits."""
    irnet.deploy.save(models["fused"], tmp_path / "m.safetensors")
    shipped = irnet.deploy.load(tmp_path / "m.safetensors")
    x = inputs((3, 3, 32, 32), seed=3)
    torch.export.save(torch.export.export(shipped, (x,)), tmp_path / "m.pt2")
    with torch.no_grad():
        torch.save({"x": x, "logits": shipped(x)}, tmp_path / "io.pt")
    script = ("import sys, torch, irnet\n"
              "d = torch.load(sys.argv[2], weights_only=True)\n"
              "m = torch.export.load(sys.argv[1]).module()\n"
              "assert torch.equal(m(d['x']), d['logits']), 'logits differ'\n"
              "print('same logits')\n")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.pt2"), str(tmp_path / "io.pt")], cwd=tmp_path,
                       env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "same logits" in r.stdout, r.stderr[-2000:]


def test_torchscript_trace_save_load(models, tmp_path):
    """Traced inside layer_by_layer(): a whole-network plan (an opaque C++ call returning a
    handle) cannot be traced, the modules' ops can."""
    packed = models["fused"]
    x = inputs((2, 3, 32, 32))
    with torch.no_grad(), irnet.deploy.layer_by_layer(), pytest.warns(torch.jit.TracerWarning):  # (shape checks
        traced = torch.jit.trace(packed, (x,))                                                   # become constants)
    torch.jit.save(traced, tmp_path / "m.ts")
    loaded = torch.jit.load(tmp_path / "m.ts")
    with torch.no_grad():
        assert torch.equal(loaded(x), packed(x))
        y = inputs((2, 3, 32, 32), seed=5)
        assert torch.equal(loaded(y), packed(y))
