"""How a packed model runs: layer by layer through its modules, or (where available) as
one whole-network plan.

``layer_by_layer()`` makes every packed model run through its modules' own forwards, as
forward hooks, profilers and :func:`irnet.summary` need."""
from __future__ import annotations

import contextlib
import threading

__all__ = ["layer_by_layer", "running_layer_by_layer"]

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
