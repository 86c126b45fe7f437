"""irnet.train under torchrun: 2 CPU processes (gloo) against 1 process with the same global batch.

What is exact and what is not:
* the 2 ranks end with bit-identical weights (DDP all-reduces the gradients, so both apply
  the same update): checked with a SHA-256 of every rank's state_dict;
* each rank takes its half of exactly the global batch one process would use (same shuffle,
  same augmentation draws: irnet.data.EpochPlan), and with --sync-bn the BatchNorm statistics
  cover the global batch, so the 2-process run computes the same function as the 1-process
  run -- but its sums run in another order (per-rank sums + all-reduce).  A binary network
  turns such rounding differences into sign flips of activations that sit near 0, and those
  grow layer by layer (seen here in float32: 1e-7 at the stem, 1e-2 three blocks down after a
  single step), so the comparison runs in float64 (--dtype float64, reference ops), where the
  rounding is ~1e-16 and a flip is practically impossible: the weights then agree to 1e-9.
* without --sync-bn each rank normalizes with its own half-batch statistics (standard DDP):
  a different computation, which this test also shows.
"""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from conftest import ROOT, cli_env

COMMON = ["--preset", "demo", "--epochs", "1", "--train-limit", "64", "--batch-size", "16", "--test-limit", "64",
          "--seed", "5", "--lr", "0.02", "--no-progress", "--no-plots", "--no-deploy-check", "--deterministic", "--dtype", "float64",
          "--ops", "reference"]


def _torchrun(args, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "irnet.train", *args, "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _weights(out):
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]


def _max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_two_gloo_processes_equal_each_other_and_one_process(tmp_path):
    single = subprocess.run([sys.executable, "-m", "irnet.train", *COMMON, "--threads", "1", "--out",
                             str(tmp_path / "one")], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    r = _torchrun(COMMON + ["--sync-bn"], tmp_path / "two")
    assert "x 2 processes (gloo)" in r.stdout and r.stdout.count("irnet.train:") == 1  # only rank 0 prints

    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["rank_fingerprints"]) == 2
    assert summary["ranks_identical"], summary["rank_fingerprints"]

    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    diff = _max_diff(one, two)
    print(f"max |weight difference|, 1 process vs 2 with --sync-bn (float64): {diff:.3g}")
    for k in one:
        if one[k].is_floating_point():
            assert torch.allclose(one[k], two[k], rtol=1e-9, atol=1e-10), (k, diff)
        else:
            assert torch.equal(one[k], two[k]), k

    # Standard DDP BatchNorm (per-rank statistics) is a different computation: visibly further off.
    _torchrun(COMMON, tmp_path / "per_rank_bn")
    per_rank = _max_diff(one, _weights(tmp_path / "per_rank_bn"))
    print(f"max |weight difference|, 1 process vs 2 with per-rank BatchNorm: {per_rank:.3g}")
    assert per_rank > 1e3 * max(diff, 1e-12)
