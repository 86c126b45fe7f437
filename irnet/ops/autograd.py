"""Autograd formulas of the differentiable training ops: the EDE backward of sign_ede
and the Libra-PB backward (through v, mean and unbiased std), each one fused op."""
from __future__ import annotations

import torch


def _sign_ede_setup(ctx, inputs, output):
    x, k, t = inputs
    ctx.save_for_backward(x, k, t)


def _sign_ede_backward(ctx, grad):
    x, k, t = ctx.saved_tensors
    return torch.ops.irnet.sign_ede_backward(grad.contiguous(), x, k, t), None, None


torch.library.register_autograd("irnet::sign_ede", _sign_ede_backward, setup_context=_sign_ede_setup)


def _libra_pb_setup(ctx, inputs, output):
    _, k, t = inputs
    _, v, inv_sigma, scale = output
    ctx.save_for_backward(v, inv_sigma, scale, k, t)


def _libra_pb_backward(ctx, grad_wb, grad_v, grad_inv_sigma, grad_scale):
    v, inv_sigma, scale, k, t = ctx.saved_tensors
    if grad_wb is None:
        return None, None, None
    return torch.ops.irnet.libra_pb_backward(grad_wb.contiguous(), v, inv_sigma, scale, k, t), None, None


torch.library.register_autograd("irnet::libra_pb", _libra_pb_backward, setup_context=_libra_pb_setup)
