"""The GPU scripts' plumbing, on a machine without a GPU (CI): benchmarks/gpu_check.sh,
benchmarks/gpu_sanitize_cases.py and benchmarks/bench_cuda_conv.py.

What a GPU run would measure cannot be tested here; what can: the no-GPU exit, the step
runner (PASS / FAIL / SKIP, timeouts, the time budget, the summary and its JSON, with a
stand-in compute-sanitizer), the sanitizer driver's cases and its comparison with the
reference (on the CPU kernels), and the benchmark's sections, checks and JSON in its CPU
plumbing mode.  Each test takes seconds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import irnet

import bench_cuda_conv
from conftest import BENCH, ROOT

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="gpu_check.sh needs bash and coreutils' timeout")


def _gpu_check(tmp_path, *args, env_extra=None, timeout=120):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    env.update(env_extra or {})
    (tmp_path / "out").mkdir(exist_ok=True)
    return subprocess.run(["bash", str(BENCH / "gpu_check.sh"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _fake_sanitizer(tmp_path):
    """A stand-in compute-sanitizer on PATH: memcheck reports 0 errors, racecheck 2 hazards
    (exit 86, as --error-exitcode asks), and with FAKE_SANITIZER_SLEEP it hangs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "compute-sanitizer"
    fake.write_text("""#!/usr/bin/env bash
[ "$1" = --version ] && { echo "Version 0.0 (stand-in)"; exit 0; }
[ -n "${FAKE_SANITIZER_SLEEP:-}" ] && sleep "$FAKE_SANITIZER_SLEEP"
echo "gpu_sanitize_cases: 49 cases run on cuda, 0 failed"
if [ "$2" = memcheck ]; then echo "========= ERROR SUMMARY: 0 errors"; exit 0; fi
echo "========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)"; exit 86
""")
    fake.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def _steps(tmp_path):
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    return {s["step"]: s for s in data["steps"]}


@needs_bash
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: gpu_check.sh would run")
def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path):
    res = _gpu_check(tmp_path)
    assert res.returncode == 2
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU visible"), res.stdout
    assert not any((tmp_path / "out").iterdir())  # nothing was run


@needs_bash
def test_gpu_check_runner_pass_fail_and_summary(tmp_path):
    res = _gpu_check(tmp_path, "--no-gpu-ok", "--only", "memcheck,racecheck", env_extra=_fake_sanitizer(tmp_path))
    steps = _steps(tmp_path)
    assert steps["memcheck"]["status"] == "PASS", steps["memcheck"]
    assert "ERROR SUMMARY: 0 errors" in steps["memcheck"]["note"]
    assert steps["racecheck"]["status"] == "FAIL", steps["racecheck"]
    assert "2 hazards" in steps["racecheck"]["note"]
    assert steps["build"]["status"] == "-"  # not selected
    assert res.returncode == 1  # a step failed
    # the summary table is the last thing printed
    tail = res.stdout.strip().splitlines()
    assert tail[-1] == "gpu_check: 1 passed, 1 failed, 0 skipped -> exit 1", tail[-3:]
    assert any(line.startswith("racecheck  FAIL") for line in tail[-12:])
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "step memcheck: PASS" in log and "step racecheck: FAIL" in log


@needs_bash
def test_gpu_check_step_timeout_and_budget(tmp_path):
    env = _fake_sanitizer(tmp_path)
    env.update(FAKE_SANITIZER_SLEEP="60", GPU_CHECK_MIN_STEP_S="2")
    res = _gpu_check(tmp_path, "--no-gpu-ok", "--only", "memcheck,racecheck", "--budget", "4", env_extra=env)
    steps = _steps(tmp_path)
    assert steps["memcheck"]["status"] == "FAIL" and "TIMED OUT" in steps["memcheck"]["note"], steps["memcheck"]
    assert steps["memcheck"]["seconds"] < 30  # killed at the budget, not after the stand-in's 60 s
    assert steps["racecheck"]["status"] == "SKIP" and "out of time" in steps["racecheck"]["note"]
    assert res.returncode == 1


def test_sanitize_cases_on_cpu_pass_and_catch_a_wrong_result(capsys, monkeypatch):
    import gpu_sanitize_cases

    from irnet import reference as ref

    assert gpu_sanitize_cases.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out
    # a reference that disagrees must make the driver fail (so a wrong kernel would)
    real = ref.xnor_conv2d_bits
    monkeypatch.setattr(ref, "xnor_conv2d_bits", lambda *a, **k: real(*a, **k) + 2)
    assert gpu_sanitize_cases.main(["--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "case xnor_conv2d [default] packed" in out and "values differ from irnet.reference" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_bench_cuda_conv_without_a_gpu_measures_nothing(tmp_path, capsys):
    assert bench_cuda_conv.main(["--json", str(tmp_path / "r.json")]) == 2
    assert "Nothing was measured" in capsys.readouterr().out
    assert not (tmp_path / "r.json").exists()


def test_bench_cuda_conv_plumbing_run_is_labelled_and_checked(tmp_path, capsys):
    path = tmp_path / "plumbing.json"
    rc = bench_cuda_conv.main(["--plumbing-cpu", "--no-compile", "--sections", "conv", "train_ops", "--calls", "2",
                               "--repeats", "2", "--rotate", "2", "--json", str(path), "--png", ""])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("NOT GPU FIGURES") >= 2
    data = json.loads(path.read_text())
    assert data["meta"]["plumbing_cpu"] is True and "not a GPU" in data["meta"]["device"]
    assert len(data["conv"]) == 2 and all(all(r["exact"].values()) for r in data["conv"])
    assert all("irnet_default" in r["ms"] and "int8_gemm" in r["exact"] for r in data["conv"])
    assert len(data["train_ops"]) == 4 and all(r["ok"] for r in data["train_ops"])
    assert all(t["status"].startswith("n/a") for t in data["targets"])


def test_bench_cuda_conv_reports_a_path_that_is_not_exact(tmp_path, capsys, monkeypatch):
    namespace = torch.ops.irnet
    real = namespace.xnor_conv2d

    class WrongOps:  # torch.ops.irnet with an xnor_conv2d that is off by one everywhere
        def __getattr__(self, name):
            return getattr(namespace, name) if name != "xnor_conv2d" else (lambda *a: real(*a) + 1)

    monkeypatch.setattr(torch.ops, "irnet", WrongOps())
    path = tmp_path / "wrong.json"
    rc = bench_cuda_conv.main(["--plumbing-cpu", "--sections", "conv", "--calls", "1", "--repeats", "1",
                               "--rotate", "1", "--json", str(path), "--png", ""])
    assert rc == 1
    data = json.loads(path.read_text())
    assert all(r["exact"]["irnet_default"] is False and "irnet_default" not in r["ms"] for r in data["conv"])
    assert "NOT bit-exact" in capsys.readouterr().out


def test_bench_cuda_conv_reports_a_wrong_training_op(tmp_path, capsys, monkeypatch):
    from irnet import ops

    real = ops.sign_ede
    monkeypatch.setattr(ops, "sign_ede", lambda x, k, t: real(x, k, t) * 2)  # wrong forward values
    path = tmp_path / "wrong_ops.json"
    rc = bench_cuda_conv.main(["--plumbing-cpu", "--no-compile", "--sections", "train_ops", "--calls", "1",
                               "--repeats", "1", "--rotate", "1", "--json", str(path), "--png", ""])
    assert rc == 1
    rows = json.loads(path.read_text())["train_ops"]
    assert [r["ok"] for r in rows] == [True, False, True, False]  # libra_pb, sign_ede per stage
    assert all(r["checks"]["fused"]["forward_mismatches_away_from_zero"] > 0 for r in rows if r["op"] == "sign_ede")
    assert "check failed" in capsys.readouterr().out


def test_bench_conv_layer_times_every_algorithm_and_restores_the_setting():
    """The path a GPU run takes when the build offers CUDA conv algorithms, driven on the CPU
    kernels through a stand-in of the algorithm control."""
    import argparse
    import types

    import torch.nn.functional as F

    from irnet import ops
    from irnet import reference as ref

    state, log = {"algo": "auto"}, []
    fake_ops = types.SimpleNamespace(libra_pb_pack=ops.libra_pb_pack, pack_bits=ops.pack_bits,
                                     xnor_conv2d=ops.xnor_conv2d, cuda_conv_algorithm=lambda: state["algo"],
                                     set_cuda_conv_algorithm=lambda a: (log.append(a), state.update(algo=a)))
    args = argparse.Namespace(rotate=2, calls=2, repeats=1, no_graphs=True)
    row = bench_cuda_conv.bench_conv_layer(torch, F, fake_ops, ref, torch.device("cpu"), 16, 6, 2,
                                           ["auto", "popc", "mma"], args)
    assert row["exact"] == {k: True for k in ("irnet_auto", "irnet_popc", "irnet_mma", "irnet_fp16in", "int8_gemm")}
    assert {"irnet_auto", "irnet_popc", "irnet_mma", "irnet_fp16in", "pack_fp16", "int8_gemm"} <= set(row["ms"])
    assert {"popc", "mma"} <= set(log) and state["algo"] == "auto"  # each forced, the setting restored
    assert row["ratios"]["int8_gemm/irnet_mma"] == row["ms"]["int8_gemm"] / row["ms"]["irnet_mma"]


def test_bench_targets_pass_fail_and_not_measured():
    def conv_row(c, hw, fp16, mma):
        return dict(channels=c, hw=hw, batch=256, ms={"cudnn_fp16": fp16, "irnet_mma": mma}, exact={})

    def ops_rows(fused, compiled):
        return [dict(op="sign_ede", shape=[1], ok=True, ms={"fused": fused, "compiled": compiled})] * 8

    res = bench_cuda_conv.Results(None, dict(conv_algorithms=["auto", "popc", "mma"]))
    res.data["conv"] = [conv_row(256, 14, 4.2, 1.0), conv_row(512, 7, 4.0, 0.9)]
    res.data["train_ops"] = ops_rows(1.0, 1.6)
    conv, train = bench_cuda_conv.evaluate_targets(res, plumbing=False)
    assert conv["status"] == "PASS" and train["status"] == "PASS" and train["measured"] == pytest.approx(1.6)
    res.data["conv"][1]["ms"]["irnet_mma"] = 1.1  # 3.6x on 512@7
    res.data["train_ops"] = ops_rows(1.0, 1.4)
    conv, train = bench_cuda_conv.evaluate_targets(res, plumbing=False)
    assert conv["status"] == "FAIL" and conv["measured"]["512@7"] == pytest.approx(4.0 / 1.1)
    assert train["status"] == "FAIL"
    res.data["meta"]["conv_algorithms"] = ["auto", "popc"]  # a build without the tensor-core path
    res.data["train_ops"] = res.data["train_ops"][:5]
    conv, train = bench_cuda_conv.evaluate_targets(res, plumbing=False)
    assert conv["status"] == train["status"] == "NOT MEASURED"


@needs_bash
@pytest.mark.skipif(not irnet._ext.LOADED, reason="the train step's check wants the compiled training ops")
def test_gpu_check_train_step_reads_the_training_log(tmp_path):
    """The train step's checks (epoch line, packed-model check, 'ops: fused') against the real
    output of irnet.train, on the CPU: a tiny run through GPU_CHECK_TRAIN_ARGS (the slowest
    test here, ~10-25 s: a real training run, so that a change of the log's wording shows)."""
    res = _gpu_check(tmp_path, "--no-gpu-ok", "--only", "train",
                     env_extra={"GPU_CHECK_TRAIN_ARGS": "--device cpu --train-limit 64 --test-limit 64"}, timeout=300)
    step = _steps(tmp_path)["train"]
    assert step["status"] == "PASS", (step, res.stdout[-3000:])
    assert "epoch 1/1: test loss" in step["note"]
    assert "packed 64/64 test predictions identical to the trained model -> the same" in step["note"]
    assert "s for the same network as a plain float model (" in step["note"]
    assert "ops: fused" in step["note"] and res.returncode == 0


@needs_bash
def test_gpu_check_bench_step_reads_the_benchmark_output(tmp_path):
    """The bench step's notes (targets, the OK line) and tables from the benchmark's real
    output, in its CPU plumbing mode through GPU_CHECK_BENCH_ARGS."""
    args = "--plumbing-cpu --no-compile --sections conv train_ops --calls 1 --repeats 1 --rotate 1"
    res = _gpu_check(tmp_path, "--no-gpu-ok", "--only", "bench", env_extra={"GPU_CHECK_BENCH_ARGS": args})
    step = _steps(tmp_path)["bench"]
    assert step["status"] == "PASS", (step, res.stdout[-3000:])
    assert "n/a (CPU plumbing run): mma conv >= 4.0x cuDNN fp16 at b256, 256/512 ch: measured" in step["note"]
    assert "n/a (CPU plumbing run): fused training ops >= 1.5x torch.compile(reference)" in step["note"]
    assert "bench_cuda_conv: OK: 0 conv paths not bit-exact" in step["note"]
    assert "---- benchmark tables" in res.stdout and "16@8 b2" in res.stdout
    data = json.loads((tmp_path / "out" / "bench_cuda_conv.json").read_text())
    assert data["meta"]["plumbing_cpu"] is True
