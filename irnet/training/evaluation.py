"""Evaluation on the test set (every rank its shard, sums all-reduced) and the deploy check: the
packed model made by :mod:`irnet.deploy` must predict the same classes as the trained model."""
from __future__ import annotations

import copy
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import Dist, all_reduce
from .report import log


@torch.no_grad()
def evaluate(model: nn.Module, feed, num_classes: int, autocast=nullcontext) -> dict:
    """Test loss and top-1 (top-5 with more than 10 classes) in %, over all ranks' shards."""
    model.eval()
    dev = feed.d.device
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1, top5, n
    for x, y in feed.test_batches():
        with autocast():
            out = model(x)
        out = out.float()
        sums[0] += F.cross_entropy(out, y, reduction="sum").double()
        top = out.topk(min(5, num_classes), 1).indices
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(1).sum()
        sums[3] += y.numel()
    all_reduce(sums)
    n = max(float(sums[3]), 1.0)
    res = {"test_loss": float(sums[0]) / n, "test_top1": 100.0 * float(sums[1]) / n, "test_n": int(sums[3])}
    if num_classes > 10:
        res["test_top5"] = 100.0 * float(sums[2]) / n
    return res


@torch.no_grad()
def predict(model: nn.Module, feed) -> torch.Tensor:
    """The predicted class of every image of this rank's test shard."""
    model.eval()
    return torch.cat([model(x).argmax(1).cpu() for x, _ in feed.test_batches()])


def deploy_check(model: nn.Module, feed, d: Dist) -> dict | None:
    """Convert with irnet.deploy (when present) and compare predictions on this rank's test shard
    (``convert(model)``, bit-exact to the trained model); the counts are summed over all ranks.

    Timings, this rank's, over its test shard: the trained model (``float_s``: it re-binarizes
    its weights on every call), its plain float twin (``float_twin_s``: the same architecture
    with every binary layer an ``nn.Conv2d`` / ``nn.Linear``, the fair baseline), the packed
    model (``packed_s``) and the fast form ``convert(model, fuse=True)`` (``fused_s``)."""
    try:
        from .. import deploy
    except ImportError as exc:
        log(d, f"irnet.deploy is not available ({exc}); skipping the packed-model check")
        return None
    from ..models import float_twin

    model = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    fmt = feed.norm.memory_format
    feed.norm.memory_format = torch.contiguous_format

    def timed_predict(m: nn.Module):
        t0 = time.perf_counter()
        pred = predict(m, feed)
        return pred, time.perf_counter() - t0

    try:
        float_pred, t_float = timed_predict(model)
        packed_pred, t_packed = timed_predict(deploy.convert(model))
        _, t_twin = timed_predict(float_twin(model))
        _, t_fused = timed_predict(deploy.convert(model, fuse=True))
    finally:
        feed.norm.memory_format = fmt
    same = int((float_pred == packed_pred).sum())
    res = {"n": int(float_pred.numel()), "identical": same, "float_s": t_float, "packed_s": t_packed,
           "float_twin_s": t_twin, "fused_s": t_fused}
    counts = torch.tensor([res["n"], same], dtype=torch.float64, device=d.device)
    all_reduce(counts)
    res["n"], res["identical"] = int(counts[0]), int(counts[1])
    return res
