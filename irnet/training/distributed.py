"""Distributed data parallel: process-group set-up from ``torchrun``'s environment, the all-reduce
helpers every rank calls, and BatchNorm over the global batch (``--sync-bn``) on any backend."""
from __future__ import annotations

import dataclasses
import hashlib
import os

import torch
import torch.nn as nn

from .errors import UsageError


@dataclasses.dataclass
class Dist:
    """This process's place in the run (a single process: rank 0 of 1)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def setup_distributed(device_arg: str) -> Dist:
    """The device of this rank (``--device auto|cpu|cuda``) and, under torchrun, the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    elif device_arg in ("cpu", "cuda"):
        device_type = device_arg
    else:
        raise ValueError(f"--device must be auto, cpu or cuda, got {device_arg!r}")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but torch sees no CUDA GPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    d = Dist(rank, world, local_rank, device)
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend=d.backend)
    return d


def teardown_distributed(finished: bool = False) -> None:
    """Ends the process group.  ``finished``: the run completed on this rank, so wait for the
    others first (a rank that tore gloo down while another was still in its last collective
    made that one abort with "terminate called without an active exception", seen once on a
    loaded machine)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    """The module the training step calls: ``model`` itself, or DDP around it in a distributed run."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """In place: the SUM (or ``op``) over all processes; a no-op in a single process."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, d: Dist):
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fingerprint(module: nn.Module) -> str:
    """SHA-256 of every tensor of the state_dict, bit for bit (names included)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rank_fingerprints(module: nn.Module, d: Dist) -> list[str]:
    """Every rank's :func:`fingerprint`, gathered on all ranks (a collective: every rank calls it)."""
    import torch.distributed as dist
    prints = [None] * d.world
    dist.all_gather_object(prints, fingerprint(module))
    return prints


class _AllReduceSum(torch.autograd.Function):
    """Sum over all processes; its gradient is the sum of every process's gradient."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all processes, on any
    backend (torch's SyncBatchNorm is GPU-only; this one also runs under gloo on CPUs).

    Two differentiable all-reduces per layer: ``[sum x, count]`` gives the global mean ``m``,
    then ``sum (x - m)^2`` the biased variance ``v`` (two passes, no ``E[x^2] - m^2``
    cancellation).  The backward of each all-reduce sums the gradients of every rank's loss,
    so with DDP's gradient averaging the update is that of one process seeing the whole
    batch.  Running statistics use the unbiased ``v * n/(n-1)``, as ``nn.BatchNorm2d``."""

    def forward(self, x):
        import torch.distributed as dist
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        count = torch.full((1,), xf.numel() / c, device=x.device, dtype=xf.dtype)
        s1 = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = s1[-1]
        mean = s1[:c] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d -> torch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm2d` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            like = child.weight if child.weight is not None else child.running_mean
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(device=device, dtype=like.dtype if like is not None else None)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_bn(child, device)
    return module
