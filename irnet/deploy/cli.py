"""``python -m irnet.deploy CHECKPOINT OUT.safetensors [--fuse]``: ship a trained model.

Reads a checkpoint of ``python -m irnet.train`` (``weights_only``: no code from it runs),
rebuilds the trained model, converts it to the bit-packed inference model, writes that with
:func:`irnet.deploy.save`, loads the file back, prints its :func:`irnet.summary` and the
file sizes, and checks on random input that the model loaded from the file predicts what
the trained model predicts (unfused: logits equal bit for bit; ``--fuse``: predictions
equal, logits to float rounding).  Exit status: 0 done, 1 the check failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import inspect
import io
import math
import os
import sys

import torch
import torch.nn as nn

__all__ = ["main", "model_from_checkpoint", "input_size_of"]

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2
_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "builtin": 28}   # the in-memory datasets of irnet.train


class DeployError(Exception):
    """A problem with the command's input, reported as one line."""


def _builder_takes(name: str, keyword: str) -> bool:
    from .. import models
    return keyword in inspect.signature(models.spec(name).builder).parameters


def input_size_of(state: dict) -> int:
    """The image side the checkpoint's model was trained on: from its dataset, else (VGG-Small
    on an .npz dataset) from its classifier's width, else 32."""
    recipe = state.get("recipe") or {}
    dataset = recipe.get("dataset")
    if dataset == "imagenet":
        return int(recipe.get("image_size") or 224)
    if dataset in _IMAGE_SIZE:
        return _IMAGE_SIZE[dataset]
    fc = state["model"].get("fc.weight")
    if _builder_takes(state["model_name"], "image_size") and fc is not None and fc.dim() == 2:
        side = math.isqrt(fc.shape[1] // 512)            # VGG-Small: fc in = 512 * (image_size // 8) ** 2
        return 8 * max(side, 1)
    return 32


def model_from_checkpoint(state: dict, path: str) -> nn.Module:
    """The trained zoo model of a training checkpoint (float32, eval mode, on the CPU)."""
    from .. import checkpoint, models
    name = state["model_name"]
    if name not in models.names():
        raise DeployError(f"{path}: model {name!r} is not in this irnet's zoo")
    recipe = state.get("recipe") or {}
    kwargs = {"num_classes": state.get("num_classes"), "in_channels": state.get("in_channels", 3)}
    if kwargs["num_classes"] is None:
        kwargs.pop("num_classes")
    for key in ("structure", "act"):
        if recipe.get(key) is not None:
            kwargs[key] = recipe[key]
    if _builder_takes(name, "image_size"):
        kwargs["image_size"] = input_size_of(state)
    try:
        model = models.create(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise DeployError(f"{path}: cannot build {name} with {kwargs}: {exc}") from None
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    checkpoint.check_model_state(model, weights, path)
    model.load_state_dict(weights)
    return model.eval()


def _serialized_size(state_dict: dict) -> int:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.tell()


def _compare_predictions(reference: torch.Tensor, got: torch.Tensor) -> tuple[int, int, int]:
    """(identical predictions, mismatches at near-ties, other mismatches).  A near-tie: the
    reference's top two logits within float rounding of each other (1e-4 of the largest)."""
    same = reference.argmax(1) == got.argmax(1)
    top2 = reference.topk(2, dim=1).values if reference.shape[1] > 1 else reference.repeat(1, 2)
    tie = (top2[:, 0] - top2[:, 1]) <= 1e-4 * reference.abs().amax(1).clamp_min(1.0)
    return int(same.sum()), int((~same & tie).sum()), int((~same & ~tie).sum())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m irnet.deploy", description="Convert a training checkpoint to a packed model file, "
                                "print its summary and sizes, and check its predictions.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint of python -m irnet.train (last.pt / best.pt)")
    p.add_argument("out", help="the packed model file to write (.safetensors)")
    p.add_argument("--fuse", action="store_true", help="fold each residual block's BatchNorm, residual add and "
                   "activation into its binary convs (faster; logits equal to float rounding)")
    p.add_argument("--channels-last", action="store_true", help="save the model in channels_last memory format")
    p.add_argument("--check-batch", type=int, default=64, help="random inputs for the prediction check (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    return p


def run(args) -> int:
    from .. import checkpoint, summary
    from .convert import convert
    from .io import PackedModelError, load, save

    if os.path.isdir(args.checkpoint):
        raise DeployError(f"{args.checkpoint} is a folder; name the checkpoint file in it (best.pt or last.pt)")
    if args.check_batch < 1:
        raise DeployError(f"--check-batch must be >= 1, got {args.check_batch}")
    state = checkpoint.load(args.checkpoint)   # a CheckpointError is reported by main
    model = model_from_checkpoint(state, args.checkpoint)
    side = input_size_of(state)
    in_channels = int(state.get("in_channels", 3))

    with torch.no_grad():
        packed = convert(model, fuse=args.fuse)
        if args.channels_last:
            packed = packed.to(memory_format=torch.channels_last)
        save(packed, args.out, memory_format="channels_last" if args.channels_last else "contiguous")
        try:
            shipped = load(args.out)
        except PackedModelError as exc:   # just written: this would be a bug, say so plainly
            raise DeployError(f"the file just written does not load back: {exc}") from None

        print(summary(shipped, (1, in_channels, side, side)))
        ckpt_bytes = os.path.getsize(args.checkpoint)
        float_bytes = _serialized_size(model.state_dict())
        file_bytes = os.path.getsize(args.out)
        print(f"\ncheckpoint   {args.checkpoint}: {ckpt_bytes:,} bytes (weights, optimizer and training state)")
        print(f"float32 model (torch.save of its state_dict): {float_bytes:,} bytes")
        print(f"packed file  {args.out}: {file_bytes:,} bytes ({float_bytes / file_bytes:.1f}x smaller than the "
              f"float32 state_dict{', fused' if args.fuse else ''})")

        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.check_batch, in_channels, side, side, generator=g)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        reference, got = model(x), shipped(x)
    same, ties, wrong = _compare_predictions(reference, got)
    exact = torch.equal(reference, got)
    detail = ("logits identical bit for bit" if exact else
              f"logits differ by at most {float((reference - got).abs().max()):.3g}")
    print(f"check on {args.check_batch} random inputs {[in_channels, side, side]}: {same}/{args.check_batch} "
          f"predictions identical to the trained model's; {detail}")
    if ties:
        print(f"  {ties} differ at near-ties (top two logits within float rounding): allowed")
    inexact = not args.fuse and not args.channels_last and not exact   # the unfused model must be bit-exact
    if wrong or inexact:
        print(f"irnet.deploy: CHECK FAILED: {wrong} prediction(s) differ"
              + ("; the unfused model must give identical logits" if inexact else ""), file=sys.stderr)
        return EXIT_MISMATCH
    return EXIT_OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .. import checkpoint
    from .io import PackedModelError
    try:
        return run(args)
    except (DeployError, checkpoint.CheckpointError, PackedModelError) as exc:
        print(f"irnet.deploy: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"irnet.deploy: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
