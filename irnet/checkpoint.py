"""Training checkpoints: atomic writes, and loads that say clearly what is wrong.

A checkpoint is a dict with ``format`` = :data:`FORMAT`, ``version``, ``model_name`` and
the training state (see ``irnet.train``).  :func:`save` writes it to a temporary file in
the destination's folder, flushes it to disk and ``os.replace``-s it over the old file, so
a process killed at any moment leaves either the old checkpoint or the new one, never a
torn file.  :func:`load` reads with ``weights_only=True`` (no arbitrary code runs) and
raises :class:`CheckpointError` for a truncated/corrupt file, a file that is not an irnet
training checkpoint, or a checkpoint of another model.
"""
from __future__ import annotations

import os

import torch

from ._files import atomic_write

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save", "load", "check_model_state"]

FORMAT = "irnet-train-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason."""


def save(state: dict, path: str) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    atomic_write(path, lambda f: torch.save(dict(state, format=FORMAT, version=VERSION), f))


def load(path: str, model_name: str | None = None, map_location="cpu") -> dict:
    """Read a training checkpoint; with ``model_name``, also check it is that model's."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} ({size} bytes) cannot be read: it is truncated or corrupt "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an irnet training checkpoint (no format={FORMAT!r} marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}, this irnet reads version {VERSION}")
    for key in ("model_name", "model", "epoch"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}; it is incomplete")
    if model_name is not None and state["model_name"] != model_name:
        raise CheckpointError(f"{path} is a checkpoint of model {state['model_name']!r}, "
                              f"but this run trains {model_name!r}")
    return state


def check_model_state(model: torch.nn.Module, state_dict: dict, path: str) -> None:
    """Raise :class:`CheckpointError` naming the first mismatches between a model and saved weights."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of other shape (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(f"{path} does not fit this model: " + ", ".join(parts)
                              + " -- was it saved for another model, class count or input channels?")
