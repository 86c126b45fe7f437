"""``irnet.summary(model, input_size)``: what each layer of a binary network costs.

One row per layer that runs (forward hooks on every module that holds tensors of its own or
has no children; the model runs once, in eval mode, without gradients and inside
:func:`irnet.deploy.layer_by_layer`, on random input of ``input_size``), in the spirit of
larq's ``lq.models.summary``:

``kind``      ``1w1a`` (binary weights and activations: XNOR-popcount), ``1w32a`` (binary
              weights, real activations), ``float`` (a float conv / linear), or blank (any
              other layer: BatchNorm, pooling, activations, unknown modules).
``params``    values the layer holds for inference, of which ``1-bit`` are binary weights.
              The other (32-bit) values: biases, BatchNorm statistics or folded factors, float
              weights, and one scale per output channel of each binary layer -- the training
              layers (``IRConv2d``, ``IRLinear``) are counted as they deploy, so a model and its
              unfused packed form give the same figures.  Training-only state (EDE ``k``, ``t``)
              and integer bookkeeping (BatchNorm's ``num_batches_tracked``) are not counted.
``float32``   bytes with every value as float32: ``4 * params``.
``deployed``  bytes as ``irnet.deploy.save`` stores them: one bit per binary weight (rounded
              up to a byte per layer), 4 bytes per other value.
``MACs``      multiply-accumulates of convs and linears for the whole ``input_size`` batch:
              ``binary`` for 1w1a layers, ``float`` for the rest (a 1w32a layer runs as a float
              conv).  Element-wise work (BatchNorm, activations, residual adds) is not counted.

Which layer is which is decided without a list of classes where possible: a module with a
``weight_shape`` and an integer ``bits`` buffer is a packed 1w1a layer; an ``nn.Conv2d`` /
``nn.Linear`` whose weight is ``+-m_o`` in every output channel is a deployed 1w32a layer,
any other one is float (a conv with a folded BatchNorm included).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..nn import BinaryLayer
from ..ops import _conv_out
from .encoding import constant_magnitude_rows
from .layers import _pair
from .runtime import layer_by_layer

__all__ = ["summary", "ModelSummary", "LayerRow"]


@dataclass
class LayerRow:
    name: str
    type: str
    kind: str                     # "1w1a", "1w32a", "float" or ""
    output_shape: tuple | None    # None: the layer did not run
    params: int
    binary_params: int
    binary_macs: int = 0
    float_macs: int = 0
    calls: int = 0

    @property
    def float32_bytes(self) -> int:
        return 4 * self.params

    @property
    def deployed_bytes(self) -> int:
        return (self.binary_params + 7) // 8 + 4 * (self.params - self.binary_params)


def _own_tensors(module: nn.Module) -> list:
    """A module's own parameters and buffers (not its children's; None entries are skipped)."""
    return list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))


def _float_values(module: nn.Module) -> int:
    """Floating values of a module's own parameters and buffers."""
    return sum(t.numel() for t in _own_tensors(module) if t.is_floating_point())


def _packed_weight_shape(module: nn.Module):
    """The weight shape a packed binary layer stands for, or None if it is not one."""
    bits = getattr(module, "bits", None)
    shape = getattr(module, "weight_shape", None)
    if isinstance(bits, torch.Tensor) and not bits.is_floating_point() and isinstance(shape, (tuple, list)):
        return tuple(int(s) for s in shape)
    return None


def _classify(module: nn.Module):
    """(kind, weight shape or None, params, binary params)."""
    if isinstance(module, BinaryLayer):
        w = module.weight
        scales = w.shape[0]
        bias = module.bias.numel() if module.bias is not None else 0
        return ("1w1a" if module.binary_act else "1w32a"), tuple(w.shape), w.numel() + scales + bias, w.numel()
    shape = _packed_weight_shape(module)
    if shape is not None:
        binary = math.prod(shape)
        return "1w1a", shape, binary + _float_values(module), binary
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        w = module.weight
        own = _float_values(module)
        if constant_magnitude_rows(w) is not None:   # sign(v) * s_o: stored as bits + one scale per row
            return "1w32a", tuple(w.shape), own + w.shape[0], w.numel()
        return "float", tuple(w.shape), own, 0
    return "", None, _float_values(module), 0


def _macs(module: nn.Module, weight_shape, x, out) -> int:
    """Multiply-accumulates of one call: output positions x weights per output."""
    if weight_shape is None or not isinstance(x, torch.Tensor):
        return 0
    if len(weight_shape) == 2:                                 # linear: (..., in) -> (..., out)
        rows = x.numel() // max(weight_shape[1], 1)
        return rows * weight_shape[0] * weight_shape[1]
    if len(weight_shape) != 4 or x.dim() != 4:
        return 0
    o, c, kh, kw = weight_shape
    stride, padding, dilation = (getattr(module, a, None) for a in ("stride", "padding", "dilation"))
    if stride is not None and dilation is not None and padding is not None and not isinstance(padding, str):
        # positions from the input and the conv's geometry (a layer that also pools has a smaller output)
        (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
        ho, wo = _conv_out(x.shape[2], kh, sh, ph, dh), _conv_out(x.shape[3], kw, sw, pw, dw)
    elif isinstance(out, torch.Tensor) and out.dim() == 4:
        ho, wo = out.shape[2], out.shape[3]
    else:
        return 0
    return x.shape[0] * max(ho, 0) * max(wo, 0) * o * c * kh * kw


@dataclass
class ModelSummary:
    """The table :func:`summary` returns; ``str()`` of it is the printed table."""

    model_name: str
    input_size: tuple
    rows: list = field(default_factory=list)

    def _total(self, attr) -> int:
        return sum(getattr(r, attr) for r in self.rows)

    params = property(lambda self: self._total("params"))
    binary_params = property(lambda self: self._total("binary_params"))
    float32_bytes = property(lambda self: self._total("float32_bytes"))
    deployed_bytes = property(lambda self: self._total("deployed_bytes"))
    binary_macs = property(lambda self: self._total("binary_macs"))
    float_macs = property(lambda self: self._total("float_macs"))

    @property
    def binary_mac_share(self) -> float:
        """binary MACs / all MACs (0 for a model without MACs)."""
        total = self.binary_macs + self.float_macs
        return self.binary_macs / total if total else 0.0

    def __str__(self) -> str:
        head = ("layer", "type", "kind", "output", "params", "1-bit", "float32 B", "deployed B", "binary MACs",
                "float MACs")
        body = [(r.name or "(model)", r.type, r.kind, "not run" if r.output_shape is None else str(list(r.output_shape)),
                 f"{r.params:,}", f"{r.binary_params:,}", f"{r.float32_bytes:,}", f"{r.deployed_bytes:,}",
                 f"{r.binary_macs:,}", f"{r.float_macs:,}") for r in self.rows]
        total = ("total", "", "", "", f"{self.params:,}", f"{self.binary_params:,}", f"{self.float32_bytes:,}",
                 f"{self.deployed_bytes:,}", f"{self.binary_macs:,}", f"{self.float_macs:,}")
        widths = [max(len(row[i]) for row in [head, *body, total]) for i in range(len(head))]
        right = set(range(4, len(head)))

        def line(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(line(head))
        ratio = self.float32_bytes / self.deployed_bytes if self.deployed_bytes else float("nan")
        lines = [f"{self.model_name}, input {list(self.input_size)}", rule, line(head), rule, *map(line, body), rule,
                 line(total), rule,
                 f"params: {self.params:,} ({self.binary_params:,} binary weights, 1 bit each when deployed)",
                 f"size: {_human(self.float32_bytes)} as float32, {_human(self.deployed_bytes)} deployed "
                 f"({ratio:.1f}x smaller)",
                 f"MACs: {self.binary_macs:,} binary (1w1a) + {self.float_macs:,} float; "
                 f"{100 * self.binary_mac_share:.2f} % binary"]
        return "\n".join(lines)

    __repr__ = __str__


def _human(n: int) -> str:
    for unit, size in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n:,} B ({n / size:.2f} {unit})"
    return f"{n:,} B"


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def summary(model: nn.Module, input_size, *, dtype: torch.dtype = torch.float32, device=None) -> ModelSummary:
    """Per-layer kinds, sizes and MACs of ``model`` (a training model or its packed form) on a
    random input of ``input_size`` -- the full shape, batch included, e.g. ``(1, 3, 32, 32)``
    (MACs are for that batch).  The model is left as it was (mode, statistics, RNG state)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"irnet.summary: expected an nn.Module, got {type(model).__name__}")
    if (not isinstance(input_size, (tuple, list, torch.Size)) or not input_size
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_size)):
        raise ValueError(f"irnet.summary: input_size must be the input's full shape, batch included, as positive ints "
                         f"(e.g. (1, 3, 32, 32)), got {input_size!r}")
    if device is None:
        first = next(iter(list(model.parameters()) + list(model.buffers())), None)
        device = first.device if first is not None else torch.device("cpu")
    x = torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)

    rows, by_module, handles = [], {}, []   # by_module: module -> (its row, its weight shape or None)

    def hook(module, args, output):
        row, weight_shape = by_module[module]
        out = _first_tensor(output)
        if row.calls == 0:   # rows in the order the layers first run
            row.output_shape = tuple(out.shape) if out is not None else ()
            rows.append(row)
        row.calls += 1
        macs = _macs(module, weight_shape, _first_tensor(args), out)
        if row.kind == "1w1a":
            row.binary_macs += macs
        else:
            row.float_macs += macs

    for name, module in model.named_modules():   # (named_modules lists a shared module once)
        has_children = next(module.children(), None) is not None
        if has_children and not _own_tensors(module):   # a container: its layers have their own rows
            continue
        kind, weight_shape, params, binary = _classify(module)
        by_module[module] = LayerRow(name, type(module).__name__, kind, None, params, binary), weight_shape
        handles.append(module.register_forward_hook(hook))

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), layer_by_layer():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    not_run = [r for r, _ in by_module.values() if r.calls == 0 and r.params]
    name = getattr(model, "irnet_name", None) or type(model).__name__
    return ModelSummary(name, tuple(input_size), rows + not_run)
