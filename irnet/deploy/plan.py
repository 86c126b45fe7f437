"""Whole-network plans: a packed model's forward as one C++ call.

Run module by module, a packed network pays Python and dispatcher costs at every layer;
for a small network at batch 1 (the CIFAR ResNet-20: 19 binary convs of 2.4M MACs each)
those costs are as large as the binary arithmetic itself.  A plan traces the packed model
once with ``torch.fx`` into a list of steps (binary conv with its fused epilogue, float
conv, BatchNorm, max pool with the clamp or BatchNorm after it, option-A shortcut, add,
global average pool, flatten, linear), and ``torch.ops.irnet.plan_run`` runs the list in
C++ (csrc/cpu/net_plan.cpp).  Every step computes what its module computes, with the same
kernels or the same ATen functions, so a plan's output equals the module-by-module output
bit for bit (tests/test_plan.py).

A model with a module or function the planner does not know gets no plan (``reason``
says why) and runs module by module, as it would without plans.
"""
from __future__ import annotations

import operator
import struct
from collections import OrderedDict

import torch
import torch.fx as fx
import torch.nn as nn

from ..models.blocks import OptionAShortcut
from .layers import FusedPackedConv2d, FusedPackedConvPool, PackedConv2d, _clamp_bounds, _pair

__all__ = ["NetPlan", "PlanUnsupported", "plans_available"]

# step kinds and field counts: csrc/cpu/net_plan.cpp's StepKind
CONV, BATCHNORM, CLAMP, MAXPOOL, ADD, OPTION_A, BINCONV, BINCONV_POOL, GLOBAL_AVG_POOL, FLATTEN, LINEAR = range(1, 12)
_FIELDS = {CONV: 14, BATCHNORM: 10, CLAMP: 4, MAXPOOL: 11, ADD: 6, OPTION_A: 5, BINCONV: 18, BINCONV_POOL: 21,
           GLOBAL_AVG_POOL: 2, FLATTEN: 4, LINEAR: 4}
# kinds whose last three fields are (clamp, lo, hi): a clamp after them folds in
_CLAMPABLE = {CONV: 11, BATCHNORM: 7, MAXPOOL: 8, ADD: 3}


class PlanUnsupported(Exception):
    """The model has a part the whole-network planner does not know."""


def plans_available() -> bool:
    """Whether the compiled extension has the plan ops (CPU)."""
    from .. import _ext

    return _ext.LOADED and hasattr(torch.ops.irnet, "plan_run")


def _bits(v: float) -> int:
    """A float field: the int64 bit pattern of the double."""
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


# PyTorch's registries of global module hooks (dicts, mutated in place)
_GLOBAL_FORWARD_HOOKS = torch.nn.modules.module._global_forward_hooks
_GLOBAL_FORWARD_PRE_HOOKS = torch.nn.modules.module._global_forward_pre_hooks

# How many times a watched dict (below) changed, in any model: a plan re-checks its
# tensors and hooks only when this moved since its last check (O(1) per call otherwise).
_changes = [0]


class _Watched(OrderedDict):
    """A module's ``_parameters``, ``_buffers`` or forward (pre-)hook dict that counts its
    changes in ``_changes``: a tensor replaced by assignment (``module.bits = ...``,
    ``.to()``, ``load_state_dict(assign=True)``) or a hook added or removed."""

    def __setitem__(self, key, value):
        _changes[0] += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        _changes[0] += 1
        super().__delitem__(key)

    def pop(self, *args):
        _changes[0] += 1
        return super().pop(*args)

    def popitem(self, *args, **kwargs):
        _changes[0] += 1
        return super().popitem(*args, **kwargs)

    def clear(self):
        _changes[0] += 1
        super().clear()

    def update(self, *args, **kwargs):
        _changes[0] += 1
        super().update(*args, **kwargs)

    def setdefault(self, *args):
        _changes[0] += 1
        return super().setdefault(*args)


def _watch(model: nn.Module) -> None:
    for m in model.modules():
        for attr in ("_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks"):
            d = m.__dict__.get(attr)
            if d is not None and type(d) is not _Watched:
                object.__setattr__(m, attr, _Watched(d))


class _Tracer(fx.Tracer):
    LEAVES = (PackedConv2d, OptionAShortcut)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.LEAVES) or super().is_leaf_module(m, qualname)


class _Builder:
    """Turns an fx graph into steps over numbered activation slots."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.tensors: list[torch.Tensor] = []
        self.refs: list[tuple[dict, str, torch.Tensor]] = []  # (module._buffers/_parameters, name, tensor)
        self._index: dict[int, int] = {}
        self.steps: list[list] = []  # [kind, fields...]
        self.slot_of: dict[fx.Node, int] = {}
        self.nslots = 1

    # -- tensors and slots
    def tensor(self, module: nn.Module, name: str) -> int:
        t = getattr(module, name)
        if t is None:
            return -1
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32):
            raise PlanUnsupported(f"{type(module).__name__}.{name}: expected a float32 CPU tensor")
        container = module._parameters if name in module._parameters else module._buffers
        self.refs.append((container, name, container[name]))
        t = t.detach()
        if id(container[name]) not in self._index:
            self._index[id(container[name])] = len(self.tensors)
            self.tensors.append(t)
        return self._index[id(container[name])]

    def new_slot(self) -> int:
        self.nslots += 1
        return self.nslots - 1

    def emit(self, kind: int, fields: list) -> None:
        assert len(fields) == _FIELDS[kind], (kind, len(fields))
        self.steps.append([kind, *fields])

    # -- the graph
    def build(self, graph: fx.Graph) -> "tuple[list, int]":
        """Every value a slot of its own (the C++ side drops a slot's tensor after its
        last reader, so memory is reused through the allocator); identity modules alias
        their input's slot."""
        for n in graph.nodes:
            if n.op == "placeholder":
                if self.slot_of:
                    raise PlanUnsupported("more than one input")
                self.slot_of[n] = 0
            elif n.op == "output":
                arg = n.args[0]
                if not isinstance(arg, fx.Node):
                    raise PlanUnsupported("the output is not a single tensor")
                return self.steps, self.slot_of[arg]
            else:
                alias = self.node(n)
                if alias is not None:  # identity: the node is its input's slot
                    self.slot_of[n] = alias
        raise PlanUnsupported("no output")

    def _readers(self, slot: int) -> int:
        """Readers so far and to come of a slot: the users of every node held in it."""
        return sum(len(m.users) for m, s in self.slot_of.items() if s == slot)

    def _out(self, n: fx.Node) -> int:
        s = self.new_slot()
        self.slot_of[n] = s
        return s

    def node(self, n: fx.Node) -> "int | None":
        if n.op == "call_module":
            return self.module(n, self.model.get_submodule(n.target))
        if n.op == "call_function" and n.target in (torch.flatten,):
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            self.emit(FLATTEN, [self.slot_of[n.args[0]], self._out(n), int(start), int(end)])
            return None
        if n.op == "call_function" and n.target in (operator.add, torch.add) and len(n.args) == 2 and not n.kwargs \
                and all(isinstance(a, fx.Node) for a in n.args):
            self.emit(ADD, [self.slot_of[n.args[0]], self.slot_of[n.args[1]], self._out(n), 0, 0, 0])
            return None
        raise PlanUnsupported(f"{n.op} {n.target}")

    def _clamp_into_producer(self, src: int, lo: float, hi: float) -> bool:
        """Folds clamp(lo, hi) into the step that just wrote `src`, if that step was the
        last one and can clamp (its output has no other reader: the clamp node follows it
        directly and the caller checks the fx users)."""
        if not self.steps:
            return False
        step = self.steps[-1]
        kind = step[0]
        if kind not in _CLAMPABLE or step[1 + (2 if kind == ADD else 1)] != src:
            return False
        at = 1 + _CLAMPABLE[kind]
        if step[at]:
            return False
        step[at:at + 3] = [1, _bits(lo), _bits(hi)]
        return True

    def module(self, n: fx.Node, m: nn.Module) -> "int | None":
        args = n.args
        x = self.slot_of[args[0]]
        if isinstance(m, (nn.Identity, nn.Dropout)) or (isinstance(m, nn.Hardtanh) and m.min_val == -float("inf")
                                                        and m.max_val == float("inf")):
            return x
        if type(m) is nn.Conv2d:
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise PlanUnsupported("Conv2d with non-zero padding mode or string padding")
            self.emit(CONV, [x, self._out(n), self.tensor(m, "weight"), self.tensor(m, "bias"), *m.stride, *m.padding,
                             *m.dilation, m.groups, 0, 0, 0])
            return None
        if type(m) is nn.BatchNorm2d:
            if m.training or m.running_mean is None:
                raise PlanUnsupported("BatchNorm2d in training mode or without running statistics")
            self.emit(BATCHNORM, [x, self._out(n), self.tensor(m, "weight"), self.tensor(m, "bias"),
                                  self.tensor(m, "running_mean"), self.tensor(m, "running_var"), _bits(m.eps), 0, 0, 0])
            return None
        bounds = _clamp_bounds(m)
        if bounds is not None:
            if x != 0 and self._readers(x) == 1 and self._clamp_into_producer(x, *bounds):
                return x
            self.emit(CLAMP, [x, self._out(n), _bits(bounds[0]), _bits(bounds[1])])
            return None
        if type(m) is nn.MaxPool2d:
            if not FusedPackedConvPool.poolable(m):
                raise PlanUnsupported("MaxPool2d with dilation, ceil_mode or indices")
            k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
            self.emit(MAXPOOL, [x, self._out(n), *k, *s, *p, 0, 0, 0])
            return None
        if type(m) is nn.AdaptiveAvgPool2d and _pair(m.output_size) == (1, 1):
            self.emit(GLOBAL_AVG_POOL, [x, self._out(n)])
            return None
        if type(m) is nn.Flatten:
            self.emit(FLATTEN, [x, self._out(n), m.start_dim, m.end_dim])
            return None
        if type(m) is nn.Linear:
            self.emit(LINEAR, [x, self._out(n), self.tensor(m, "weight"), self.tensor(m, "bias")])
            return None
        if type(m) is OptionAShortcut:
            half = m.extra // 2
            self.emit(OPTION_A, [x, self._out(n), m.stride, half, m.extra - half])
            return None
        if type(m) in (PackedConv2d, FusedPackedConv2d):
            conv = [self.tensor(m, "bits"), self.tensor(m, "scale"), m.in_channels, *m.stride, *m.padding, *m.dilation]
            if type(m) is PackedConv2d:
                self.emit(BINCONV, [x, self._out(n), *conv, self.tensor(m, "bias"), 0, -1, -1, -1, 0, 0])
                return None
            res = -1
            if len(args) > 1 and args[1] is not None:
                res = self.slot_of[args[1]]
            elif "residual" in n.kwargs and n.kwargs["residual"] is not None:
                res = self.slot_of[n.kwargs["residual"]]
            self.emit(BINCONV, [x, self._out(n), *conv, -1, 1, self.tensor(m, "alpha"), self.tensor(m, "beta"), res,
                                _bits(m.act_min), _bits(m.act_max)])
            return None
        if type(m) is FusedPackedConvPool:
            self.emit(BINCONV_POOL, [x, self._out(n), self.tensor(m, "bits"), self.tensor(m, "scale"), m.in_channels,
                                     *m.stride, *m.padding, *m.dilation, *m.pool_kernel, *m.pool_stride,
                                     *m.pool_padding, self.tensor(m, "alpha"), self.tensor(m, "beta"),
                                     _bits(m.act_min), _bits(m.act_max)])
            return None
        raise PlanUnsupported(f"module {type(m).__name__}")


class NetPlan:
    """A compiled plan of ``model`` (a packed model on the CPU); see the module docstring.

    ``run(x)`` runs it; ``valid()`` says whether the model still holds the tensors the
    plan was built from (a buffer replaced by assignment, ``.to()``, ``load_state_dict(...,
    assign=True)`` make it stale: the owner rebuilds it then).  In-place changes of the
    tensors need nothing: the plan reads the tensors themselves."""

    def __init__(self, model: nn.Module):
        if not plans_available():
            raise PlanUnsupported("the compiled extension (with its plan ops) is not loaded")
        _watch(model)  # first: the plan keeps references to these dicts
        try:
            graph = _Tracer().trace(model)
        except Exception as exc:  # noqa: BLE001 (any trace failure means: no plan)
            raise PlanUnsupported(f"torch.fx could not trace the model: {type(exc).__name__}: {exc}") from None
        builder = _Builder(model)
        steps, out_slot = builder.build(graph)
        program = [builder.nslots, out_slot]
        for kind, *fields in steps:
            program += [kind, len(fields), *[int(f) for f in fields]]
        self.steps = len(steps)
        self._refs = builder.refs
        self._modules = list(model.modules())
        self._seen = -1  # _changes[0] at the last check of the tensors and hooks
        self._fresh = self._hooked = False
        self._handle = torch.ops.irnet.plan_create(builder.tensors, torch.tensor(program, dtype=torch.int64))
        self._release = torch.ops.irnet.plan_release
        self._run = torch.ops.irnet.plan_run.default  # (the overload itself: a little less to resolve per call)

    def _check(self) -> None:
        if self._seen != _changes[0]:
            self._fresh = all(container.get(name) is t for container, name, t in self._refs)
            self._hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self._modules)
            self._seen = _changes[0]

    def valid(self) -> bool:
        """Whether the model still holds every tensor the plan was built from."""
        self._check()
        return self._fresh

    def hooked(self) -> bool:
        """Whether a module of the model (or a global hook) has a forward (pre-)hook, which
        only the module-by-module run calls."""
        self._check()
        return self._hooked or bool(_GLOBAL_FORWARD_HOOKS or _GLOBAL_FORWARD_PRE_HOOKS)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._handle, x)

    def kept_bytes(self) -> int:
        """Bytes of activation memory the plan keeps between calls (the buffers its last
        call freed, handed to the next call's steps that fit in them; see net_plan.cpp)."""
        return int(torch.ops.irnet.plan_kept_bytes(self._handle))

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            try:
                self._release(handle)
            except Exception:  # noqa: BLE001 (interpreter shutdown)
                pass

    def __deepcopy__(self, memo):
        return None  # a copy of the model builds its own plan

    def __reduce__(self):
        return (type(None), ())  # never pickled: rebuilt from the model
