"""python -m irnet.deploy: a checkpoint of a tiny real training run converted, saved,
summarised and checked; clear errors for missing and corrupt checkpoints."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import irnet
from irnet import checkpoint
from irnet.deploy import cli

from conftest import ROOT, cli_env


def run_module(module, args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """last.pt of one short epoch of ResNet-20 1w1a on the built-in MNIST subset (1 x 28 x 28)."""
    out = tmp_path_factory.mktemp("run")
    r = run_module("irnet.train", ["--preset", "demo", "--threads", "1", "--no-progress", "--no-plots", "--epochs", "1",
                                   "--train-limit", "64", "--batch-size", "32", "--test-limit", "32",
                                   "--no-deploy-check", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "last.pt"


def trained_model(path):
    state = checkpoint.load(str(path))
    model = irnet.models.create(state["model_name"], num_classes=state["num_classes"], in_channels=state["in_channels"])
    model.load_state_dict(state["model"])
    return model.eval()


def test_cli_converts_a_training_checkpoint(trained, tmp_path):
    out = tmp_path / "model.safetensors"
    r = run_module("irnet.deploy", [str(trained), str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout
    assert "resnet20_1w1a, input [1, 1, 28, 28]" in text and "layers.2.2.conv2" in text and "% binary" in text
    assert f"packed file  {out}: {out.stat().st_size:,} bytes" in text
    assert "64/64 predictions identical to the trained model's; logits identical bit for bit" in text
    # the file holds the trained model: same logits as the checkpoint's weights, run here independently
    model, shipped = trained_model(trained), irnet.deploy.load(out)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(shipped(x), model(x))
    assert irnet.deploy.read_metadata(out)["model"] == {
        "name": "resnet20_1w1a", "kwargs": {"num_classes": 10, "in_channels": 1, "structure": "bireal", "act": "hardtanh"}}


def test_cli_fused_and_channels_last(trained, tmp_path, capsys):
    out = tmp_path / "fused.safetensors"
    assert cli.main([str(trained), str(out), "--fuse", "--channels-last", "--check-batch", "16"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "16/16 predictions identical" in text and "fused" in text
    info = irnet.deploy.read_metadata(out)
    assert info["convert"] == {"fuse": True} and info["memory_format"] == "channels_last"
    assert any(type(m).__name__ == "FusedPackedConv2d" for m in irnet.deploy.load(out).modules())


def test_cli_reports_a_failed_check(trained, tmp_path, capsys, monkeypatch):
    """The check really compares: a packed model that predicts otherwise makes the command fail."""
    from irnet.deploy import io as dio   # cli.run imports load from here when it runs
    original = dio.load

    def load_and_break(path, map_location="cpu"):
        model = original(path, map_location)
        with torch.no_grad():
            model.fc.bias.add_(torch.arange(10.0) * 100)   # every prediction becomes class 9
        return model

    monkeypatch.setattr(dio, "load", load_and_break)
    assert cli.main([str(trained), str(tmp_path / "m.safetensors")]) == cli.EXIT_MISMATCH
    assert "CHECK FAILED" in capsys.readouterr().err


def test_cli_errors_for_missing_and_corrupt_checkpoints(trained, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    r = run_module("irnet.deploy", [str(tmp_path / "absent.pt"), str(out)])
    assert r.returncode == cli.EXIT_ERROR and "checkpoint not found" in r.stderr and "Traceback" not in r.stderr
    blob = trained.read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    assert cli.main([str(tmp_path / "cut.pt"), str(out)]) == cli.EXIT_ERROR
    assert "truncated or corrupt" in capsys.readouterr().err
    assert cli.main([str(tmp_path), str(out)]) == cli.EXIT_ERROR
    assert "is a folder" in capsys.readouterr().err
    # a checkpoint whose weights do not fit its model
    state = torch.load(trained, weights_only=True)
    state["model"]["fc.weight"] = torch.zeros(10, 3)
    checkpoint.save(state, str(tmp_path / "odd.pt"))
    assert cli.main([str(tmp_path / "odd.pt"), str(out)]) == cli.EXIT_ERROR
    assert "fc.weight: checkpoint (10, 3) vs model (10, 64)" in capsys.readouterr().err
    assert not out.exists()
