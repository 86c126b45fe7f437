"""The plain float twin of a binary network: the baseline every speed comparison uses.

An IR-Net model in eval mode still re-binarizes its weights (Libra-PB) and signs its
activations on every forward, so timing it against a packed model flatters the packed one.
The fair baseline is the same architecture as an ordinary float32 network: every
:class:`irnet.nn.IRConv2d` / :class:`irnet.nn.IRLinear` an ``nn.Conv2d`` / ``nn.Linear`` of
the same shape holding the latent weight (a different function: real-valued activations)."""
from __future__ import annotations

import copy

import torch.nn as nn

from ..nn import IRConv2d, IRLinear

__all__ = ["float_twin"]


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with each binary layer replaced by a float layer of the
    same shape and latent weight."""
    twin = copy.deepcopy(model).eval()
    _replace_binary_layers(twin)
    return twin


def _replace_binary_layers(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, IRConv2d):
            new = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                            child.dilation, child.groups, bias=child.bias is not None)
        elif isinstance(child, IRLinear):
            new = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
        else:
            _replace_binary_layers(child)
            continue
        new = new.to(device=child.weight.device, dtype=child.weight.dtype)
        new.weight.data.copy_(child.weight.data)
        if child.bias is not None:
            new.bias.data.copy_(child.bias.data)
        setattr(module, name, new.eval())
