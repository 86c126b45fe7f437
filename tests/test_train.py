"""irnet.train, irnet.data, irnet.recipes, irnet.checkpoint: short real runs on the built-in
MNIST subset (tiny slices of it, a few steps), the data pipeline against hand-written
loops, exact resume after SIGKILL mid-epoch, the non-finite-loss stop, bad checkpoints."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import irnet
from irnet import checkpoint, data, recipes
from irnet import train as T

from conftest import ROOT, cli_env

# A tiny, quick configuration: ResNet-20 1w1a (1 input channel) on slices of the built-in MNIST.
TINY = ["--preset", "demo", "--threads", "1", "--no-progress", "--no-plots"]


def run_cli(args, timeout=300, **kw):
    env = cli_env()
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "irnet.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def load_model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- recipes / CLI
def test_help_lists_every_preset_and_flag():
    text = T.build_parser().format_help()
    for name in recipes.PRESETS:
        assert name in text
    for flag in ("--resume", "--ckpt-every", "--amp", "--channels-last", "--ops", "--sync-bn", "--t-min", "--lr"):
        assert flag in text


def test_recipe_precedence_preset_config_flags(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text('preset = "cifar10_vgg_small_1w1a"\nepochs = 7\nlr = 0.5\n')
    args = T.build_parser().parse_args(["--config", str(cfg), "--lr", "0.25", "--no-hflip"])
    r, origin = T.resolve_recipe(args)
    assert (r.model, r.epochs, r.lr, r.t_min, r.hflip) == ("vgg_small_1w1a", 7, 0.25, 0.1, False)
    assert "cifar10_vgg_small_1w1a" in origin
    # model + dataset without a preset pick the paper's row for them
    r, origin = T.resolve_recipe(T.build_parser().parse_args(["--model", "resnet20_1w1a", "--dataset", "cifar10"]))
    assert (r.lr, r.epochs, r.t_min, r.t_max, r.batch_size) == (0.1, 400, 1e-3, 10.0, 128)
    js = tmp_path / "r.json"
    js.write_text(json.dumps({"model": "resnet20_1w32a", "dataset": "cifar10", "bogus": 1}))
    with pytest.raises(ValueError, match="unknown settings.*bogus"):
        T.resolve_recipe(T.build_parser().parse_args(["--config", str(js)]))


def test_paper_presets_match_design():
    P = recipes.PRESETS
    assert (P["cifar10_resnet20_1w1a"].recipe["t_min"], P["cifar10_resnet20_1w1a"].recipe["epochs"]) == (1e-3, 400)
    assert P["cifar10_resnet20_1w32a"].recipe["t_min"] == 0.1
    v = P["cifar10_vgg_small_1w1a"].recipe
    assert (v["lr"], v["epochs"], v["t_min"], v["t_max"]) == (0.007, 300, 0.1, 10.0)
    for name in ("imagenet_resnet18_1w1a", "imagenet_resnet18_1w32a", "imagenet_resnet34_1w1a", "imagenet_resnet34_1w32a"):
        assert P[name].assumed and P[name].paper
        irnet.models.spec(P[name].recipe["model"])  # a zoo model


def test_lr_schedule_cosine_per_epoch_and_warmup_steps():
    f = T.LRSchedule("cosine", epochs=4, steps_per_epoch=3)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 4, eta_min=0)
    for e in range(4):
        for s in range(3):
            assert f(e * 3 + s) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        cos.step()
    g = T.LRSchedule("step", epochs=100, steps_per_epoch=10, milestones=[30, 60, 90], gamma=0.1, warmup_steps=40,
                     warmup_ratio=0.25)
    assert g(0) == 0.25 and g(20) == pytest.approx(0.625) and g(40) == 1.0
    assert g(299) == 1.0 and g(300) == pytest.approx(0.1) and g(900) == pytest.approx(1e-3)


# --------------------------------------------------------------------------- data
def test_crop_flip_matches_a_per_image_loop():
    x = torch.randint(0, 256, (37, 3, 9, 11), dtype=torch.uint8)
    for pad, flip in ((4, True), (2, False), (0, True)):
        out = data.crop_flip(x, pad, flip, torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        oy, ox = torch.randint(0, 2 * pad + 1, (37,), generator=g), torch.randint(0, 2 * pad + 1, (37,), generator=g)
        fl = torch.rand(37, generator=g) < 0.5
        xp = torch.nn.functional.pad(x, (pad,) * 4)
        for i in range(37):
            ref = xp[i, :, oy[i]:oy[i] + 9, ox[i]:ox[i] + 11]
            assert torch.equal(out[i], ref.flip(-1) if (flip and fl[i]) else ref), (pad, flip, i)


def test_epoch_plan_ranks_partition_the_single_process_batch():
    x = torch.randint(0, 256, (103, 1, 6, 6), dtype=torch.uint8)
    single = data.EpochPlan(103, 24, seed=3, epoch=2)
    assert single.steps == 4 and sorted(single.perm.tolist()) == list(range(103))
    assert not torch.equal(single.perm, data.EpochPlan(103, 24, seed=3, epoch=1).perm)
    for step in range(single.steps):
        whole = data.crop_flip(x[single.indices(step)], 4, True, single.generator(step))
        parts, idx = [], []
        for r in range(3):
            p = data.EpochPlan(103, 24, seed=3, epoch=2, rank=r, world=3)
            idx.append(p.indices(step))
            parts.append(data.crop_flip(x[p.indices(step)], 4, True, p.generator(step), p.local_slice(), p.batch))
        assert torch.equal(torch.cat(idx), single.indices(step))
        assert torch.equal(torch.cat(parts), whole)


def _write_cifar(root, name, n_train_batches, per_batch, label_key, files_train, files_test, classes):
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    want = {}
    for split, files in (("train", files_train), ("test", files_test)):
        xs, ys = [], []
        for f in files:
            x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            y = rng.integers(0, classes, per_batch).tolist()
            with open(folder / f, "wb") as fh:
                pickle.dump({b"data": x, label_key: y, b"batch_label": b"x"}, fh)
            xs.append(x.reshape(-1, 3, 32, 32))
            ys += y
        want[split] = (np.concatenate(xs), np.array(ys))
    return want


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_reader(tmp_path, name):
    if name == "cifar10":
        want = _write_cifar(tmp_path, "cifar-10-batches-py", 5, 7, b"labels", [f"data_batch_{i}" for i in range(1, 6)],
                            ["test_batch"], 10)
    else:
        want = _write_cifar(tmp_path, "cifar-100-python", 1, 9, b"fine_labels", ["train"], ["test"], 100)
    train, test = data.load_arrays(name, str(tmp_path))
    for ds, split in ((train, "train"), (test, "test")):
        assert torch.equal(ds.x, torch.from_numpy(want[split][0]))
        assert torch.equal(ds.y, torch.from_numpy(want[split][1]))
    assert train.num_classes == (10 if name == "cifar10" else 100)
    with pytest.raises(FileNotFoundError, match="--download"):
        data.load_arrays(name, str(tmp_path / "nowhere"))


def test_builtin_dataset_is_the_documented_subset():
    train, test = data.load_arrays("builtin")
    assert (len(train), len(test), train.channels, train.image_size, train.num_classes) == (12000, 2000, 1, 28, 10)
    assert torch.bincount(train.y).tolist() == [1200] * 10 and torch.bincount(test.y).tolist() == [200] * 10
    assert os.path.getsize(data.builtin_path()) < 3e6


def test_builtin_and_npz_datasets_match_the_shared_files(shared_data):
    train, test = data.load_arrays("builtin")
    for split, ds, per in (("train", train, 1200), ("test", test, 200)):
        with np.load(shared_data / f"mnist_{split}.npz") as d:   # the first `per` real images of each digit
            for c in (0, 3, 9):
                assert torch.equal(ds.x[ds.y == c][:, 0], torch.from_numpy(d["x"][d["y"] == c][:per]))
    tr, te = data.load_arrays("npz", train_file=str(shared_data / "cifar10_train_5k.npz"),
                              test_file=str(shared_data / "cifar10_test_lossless1k.npz"))
    assert tuple(tr.x.shape) == (5000, 3, 32, 32) and tuple(te.x.shape) == (1000, 3, 32, 32) and tr.num_classes == 10


# --------------------------------------------------------------------------- short real runs
def test_short_run_learns_writes_outputs_and_packed_model_agrees(tmp_path):
    out = tmp_path / "run"
    rc = T.main(TINY[:-1] + ["--train-limit", "512", "--test-limit", "200", "--batch-size", "32",
                             "--epochs", "3", "--weight-decay", "0", "--crop-pad", "0", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(r["test_n"] == 200 for r in rows)
    # EDE per epoch: t = 0.1 * 100 ** (e / 3), k = max(1 / t, 1)
    for r, t in zip(rows, (0.1, 0.1 * 100 ** (1 / 3), 0.1 * 100 ** (2 / 3))):
        assert r["t"] == pytest.approx(t) and r["k"] == pytest.approx(max(1 / t, 1.0))
    assert (out / "curves.png").stat().st_size > 1000 and (out / "best.pt").exists()
    # 48 SGD steps on real digits: chance is 10 % (+-2.1 % on 200 images); a binary net that learns is far above
    assert summary["last_top1"] > 20.0 and rows[-1]["train_loss"] < rows[0]["train_loss"], rows
    state = checkpoint.load(str(out / "last.pt"), model_name="resnet20_1w1a")
    assert state["epoch"] == 3 and state["step_in_epoch"] == 0
    model = irnet.models.create("resnet20_1w1a", in_channels=1)
    model.load_state_dict(state["model"])
    t = {float(layer.t) for layer in irnet.binary_layers(model)}
    assert t == {float(torch.tensor(0.1 * 100 ** (2 / 3)))}  # the last epoch's t, in every binary layer
    try:
        from irnet import deploy  # noqa: F401
    except ImportError:
        pytest.skip("irnet.deploy not present: packed-model check not run")
    assert summary["deploy"]["n"] == 200 and summary["deploy"]["identical"] == 200
    assert all(summary["deploy"][k] > 0 for k in ("float_s", "float_twin_s", "packed_s", "fused_s"))


def test_ops_reference_restarts_without_the_extension(tmp_path):
    r = run_cli(TINY + ["--ops", "reference", "--epochs", "1", "--train-limit", "64", "--batch-size", "32",
                        "--test-limit", "32", "--no-deploy-check", "--out", str(tmp_path / "ref")])
    assert r.returncode == 0, r.stderr
    assert "ops: reference" in r.stdout and "IRNET_DISABLE_EXTENSION" in r.stdout


RESUME_ARGS = TINY + ["--epochs", "2", "--train-limit", "192", "--batch-size", "32", "--test-limit", "64",
                      "--deterministic", "--no-deploy-check", "--ckpt-every", "2", "--seed", "11"]


def test_resume_after_sigkill_mid_epoch_is_exact(tmp_path):
    full = run_cli(RESUME_ARGS + ["--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    # The same run, killed with SIGKILL once it has written a checkpoint inside epoch 2 ...
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "irnet.train", *RESUME_ARGS, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "last.pt").exists():
            st = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
            if st["epoch"] == 1 and st["step_in_epoch"] > 0:
                proc.send_signal(signal.SIGKILL)
                killed_at = (st["epoch"], st["step_in_epoch"])
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None, f"the run ended before a mid-epoch checkpoint of epoch 2 was seen: {proc.stderr.read()}"
    assert proc.returncode == -signal.SIGKILL
    # ... and resumed ('auto' finds --out's last.pt), ends with exactly the same weights.
    res = run_cli(RESUME_ARGS + ["--out", str(out), "--resume", "auto"])
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stdout and "epoch 2, step" in res.stdout
    a, b = load_model_state(tmp_path / "full" / "last.pt"), load_model_state(out / "last.pt")
    assert a["global_step"] == b["global_step"] == 2 * 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_nonfinite_loss_stops_and_leaves_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    rc = T.main(TINY + ["--epochs", "2", "--train-limit", "256", "--batch-size", "32", "--test-limit", "32",
                        "--no-deploy-check", "--ckpt-every", "2", "--debug-nan-at-step", "13", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == T.EXIT_NONFINITE
    assert "non-finite at epoch 2 of 2, step 6 of 8 (global step 13)" in err and "left untouched" in err
    st = checkpoint.load(str(out / "last.pt"), model_name="resnet20_1w1a")
    assert (st["epoch"], st["step_in_epoch"], st["global_step"]) == (1, 4, 12)
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())


def test_lr_overflow_is_caught_as_nonfinite(tmp_path, capsys):
    rc = T.main(TINY + ["--epochs", "1", "--train-limit", "128", "--batch-size", "32", "--test-limit", "32",
                        "--no-deploy-check", "--lr", "1e30", "--out", str(tmp_path / "big")])
    assert rc == T.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert re.search(r"non-finite.* at epoch 1 of 1, step \d of 4", err), err


@pytest.fixture(scope="module")
def one_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck")
    rc = T.main(TINY + ["--epochs", "1", "--train-limit", "64", "--batch-size", "32", "--test-limit", "32",
                        "--no-deploy-check", "--out", str(out)])
    assert rc == 0
    return out / "last.pt"


def test_truncated_checkpoint_is_a_clear_error(one_checkpoint, tmp_path, capsys):
    bad = tmp_path / "trunc.pt"
    blob = one_checkpoint.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(str(bad))
    rc = T.main(TINY + ["--resume", str(bad), "--out", str(tmp_path / "o")])
    assert rc == T.EXIT_ERROR and "truncated or corrupt" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(str(tmp_path / "junk.pt"))


def test_checkpoint_of_another_model_is_a_clear_error(one_checkpoint, tmp_path, capsys):
    rc = T.main(TINY + ["--model", "resnet20_1w32a", "--resume", str(one_checkpoint), "--out", str(tmp_path / "o")])
    assert rc == T.EXIT_ERROR
    assert "checkpoint of model 'resnet20_1w1a', but this run trains 'resnet20_1w32a'" in capsys.readouterr().err
    st = checkpoint.load(str(one_checkpoint))
    other = irnet.models.create("resnet20_1w1a", num_classes=7, in_channels=1)
    with pytest.raises(checkpoint.CheckpointError, match=r"fc.weight: checkpoint \(10, 64\) vs model \(7, 64\)"):
        checkpoint.check_model_state(other, st["model"], "x.pt")


def test_imagefolder_pipeline(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (int(rng.integers(30, 50)), int(rng.integers(30, 50)), 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / split / c / f"{i}.png")
    ds = data.ImageFolderDataset(str(tmp_path / "train"), True, size=24, jitter=(0.2, 0.2, 0.2, 0.1))
    a, b = ds[(3, (7, 3))], ds[(3, (7, 3))]
    assert a[0].shape == (3, 24, 24) and a[0].dtype == torch.uint8 and torch.equal(a[0], b[0]) and a[1] == 0
    rc = T.main(["--model", "resnet18_1w1a", "--dataset", "imagenet", "--data-dir", str(tmp_path), "--epochs", "1",
                 "--batch-size", "4", "--image-size", "24", "--test-resize", "28", "--workers", "1", "--threads", "1",
                 "--no-progress", "--no-plots", "--out", str(tmp_path / "run")])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_images"] == 4 and summary["recipe"]["lr_schedule"] == "step"


def test_amp_bf16_and_channels_last_short_run(tmp_path):
    out = tmp_path / "amp"
    rc = T.main(TINY + ["--amp", "--channels-last", "--epochs", "1", "--train-limit", "64", "--batch-size", "32",
                        "--test-limit", "64", "--no-deploy-check", "--out", str(out)])
    assert rc == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(row["train_loss"]) and row["test_n"] == 64
