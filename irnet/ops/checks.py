"""Argument checks of the public wrappers: one clear error for a wrong type, dtype,
rank, device or NaN, before any kernel runs."""
from __future__ import annotations

import torch


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _float32(t: torch.Tensor) -> torch.Tensor:
    # (a dtype test in Python is cheaper than the no-op .to() call it saves: ~1 us a call,
    # several per binary layer, which shows in a small network at batch 1)
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _check_tensor(name: str, x, *, dims=None, min_dim=None, floating=True):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"irnet: {name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"irnet: {name} must be a floating-point tensor (float32/float64/float16/bfloat16), got {x.dtype}")
    if dims is not None and x.dim() not in dims:
        raise ValueError(f"irnet: {name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(x.shape)}")
    if min_dim is not None and x.dim() < min_dim:
        raise ValueError(f"irnet: {name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}")


def _check_same_device(**tensors):
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"irnet: all tensors must be on one device, got {desc}")


def _check_finite(name: str, x: torch.Tensor):
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"irnet: {name} contains NaN or Inf; refusing to binarize it into a silently wrong model")


def _ede_params(k, t, like: torch.Tensor):
    def param(v):
        if isinstance(v, torch.Tensor):
            return v.detach().to(device=like.device, dtype=like.dtype)
        return torch.tensor(float(v), device=like.device, dtype=like.dtype)

    return param(k), param(t)


def _pair(v, name):
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"irnet: {name} must be an int or a pair of ints, got {v!r}")
    return v
