"""How a packed model runs: layer by layer through its modules, or (where available) as
one whole-network plan.

``layer_by_layer()`` makes every packed model run through its modules' own forwards, as
forward hooks, profilers and :func:`irnet.summary` need."""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn as nn

__all__ = ["layer_by_layer", "running_layer_by_layer", "PackedModel"]

_state = threading.local()


def running_layer_by_layer() -> bool:
    """True inside ``layer_by_layer()`` (in this thread)."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def layer_by_layer():
    """Within this block (this thread), packed models run module by module."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


class PackedModel(nn.Module):
    """The fast form of a packed network (``irnet.deploy.convert(model, fuse=True)``).

    ``model`` is the packed module tree; its forward is the reference for what this
    computes.  On the CPU, for a float32 input that needs no gradient, the whole network
    runs as one C++ plan (:class:`irnet.deploy.plan.NetPlan`: no Python or dispatcher
    cost per layer), which gives the module tree's output bit for bit.  Everywhere else
    (another device or dtype, autograd, ``torch.compile`` / ``torch.export`` / ``torch.jit``
    tracing,
    inside :func:`layer_by_layer`, while any of its modules has a forward hook, or a model
    with a part the planner does not know: ``plan_status()`` says why) it runs module by
    module.

    The plan holds the model's own tensors, so in-place changes of them (``load_state_dict``
    copies in place) need nothing; ``.to()`` / ``.float()`` & co. drop the plan (it is built
    again at the next call), and so does a tensor replaced by assignment (checked at every
    call).  Attribute access falls through to ``model`` (``packed.fc`` is ``packed.model.fc``).

    ``input_format`` (``torch.channels_last``, ``torch.contiguous_format``, or None: the
    input's own) is the memory layout the network runs in: a 4-d input in another layout is
    copied into it first (the logits have no layout).  ``convert`` picks the faster one for
    the network (see ``irnet.deploy.convert``); set it to None to run in the input's layout."""

    def __init__(self, model: nn.Module, input_format: torch.memory_format | None = None):
        super().__init__()
        self.model = model
        # the layout the network runs in, whatever the input's (None: the input's own); the
        # input is made so first, on every path, so the plan and the modules see one tensor
        self.input_format = input_format
        self._plan = None
        self._plan_error = None  # why there is no plan, once building one failed

    def plan_status(self) -> str:
        """'plan' (the next CPU float32 call runs the whole-network plan), 'not built yet',
        or the reason this model runs module by module."""
        if self._plan is not None and self._plan.valid():
            return "plan"
        return self._plan_error or "not built yet"

    def _current_plan(self):
        plan = self._plan
        if plan is not None and plan.valid():
            return plan
        if self._plan_error is not None:
            return None
        from .plan import NetPlan, PlanUnsupported

        try:
            self._plan = NetPlan(self.model)
        except PlanUnsupported as exc:
            self._plan, self._plan_error = None, f"module by module: {exc}"
        return self._plan

    def forward(self, x):
        fmt = self.input_format
        if fmt is not None and type(x) is torch.Tensor and x.dim() == 4 and not x.is_contiguous(memory_format=fmt):
            x = x.contiguous(memory_format=fmt)
        if (type(x) is torch.Tensor and x.dtype is torch.float32 and x.is_cpu and x.dim() == 4
                and not (x.requires_grad and torch.is_grad_enabled()) and not getattr(_state, "depth", 0)
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing()):
            plan = self._current_plan()
            if plan is not None and not plan.hooked():
                return plan.run(x)
        return self.model(x)

    def _apply(self, fn, *args, **kwargs):
        self._plan, self._plan_error = None, None
        return super()._apply(fn, *args, **kwargs)

    def to(self, *args, **kwargs):
        """As ``nn.Module.to``; a ``memory_format`` also becomes the layout the network runs in
        (``input_format``)."""
        fmt = torch._C._nn._parse_to(*args, **kwargs)[3]
        out = super().to(*args, **kwargs)
        if fmt is not None:
            self.input_format = fmt
        return out

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_plan"] = None  # deep copies and pickles build their own plan
        return state

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self._modules["model"], name)
