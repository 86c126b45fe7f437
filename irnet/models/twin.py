"""The plain float twin of a binary network: the baseline every speed comparison uses.

An IR-Net model in eval mode still re-binarizes its weights (Libra-PB) and signs its
activations on every forward, so timing it against a packed model flatters the packed one.
The fair baseline is the same architecture as an ordinary float32 network: every
:class:`irnet.nn.IRConv2d` / :class:`irnet.nn.IRLinear` an ``nn.Conv2d`` / ``nn.Linear`` of
the same shape holding the latent weight (a different function: real-valued activations)."""
from __future__ import annotations

import copy

import torch.nn as nn

from ..nn import IRConv2d, IRLinear, plain_layer, replace_layers

__all__ = ["float_twin"]


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with each binary layer replaced by a float layer of the
    same shape and latent weight."""
    twin = copy.deepcopy(model)
    replace_layers(twin, _float_layer)
    return twin.eval()


def _float_layer(layer: nn.Module) -> nn.Module:
    if isinstance(layer, (IRConv2d, IRLinear)):
        return plain_layer(layer, layer.weight.detach())
    return layer
