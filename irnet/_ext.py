"""Loads the compiled extension ``irnet._C`` once.  If it cannot be loaded (or
``IRNET_DISABLE_EXTENSION=1`` asks not to), irnet says so once, clearly, and every op
falls back to the pure-PyTorch reference (irnet/reference.py)."""
from __future__ import annotations

import os
import warnings

import torch  # noqa: F401  (loads libtorch before the extension)

LOADED = False
ERROR: str | None = None

if os.environ.get("IRNET_DISABLE_EXTENSION", "") not in ("", "0"):
    ERROR = "disabled by IRNET_DISABLE_EXTENSION"
else:
    try:
        from . import _C  # noqa: F401  (registers torch.ops.irnet.*)

        LOADED = True
    except Exception as exc:  # ImportError, OSError (undefined symbol), ...
        ERROR = f"{type(exc).__name__}: {exc}"

if not LOADED:
    warnings.warn(
        "irnet: the compiled extension irnet._C is not in use (" + str(ERROR) + "); "
        "irnet runs on its pure-PyTorch reference ops, which are correct but slow. "
        "Build it with `pip install --no-build-isolation -e .` from the source tree.",
        RuntimeWarning,
        stacklevel=2,
    )
