"""How a run stops: the exceptions of :mod:`irnet.training` and the exit codes of ``python -m irnet.train``."""
from __future__ import annotations

EXIT_ERROR = 2       # the run could not start or continue as asked (bad flags, data, checkpoint)
EXIT_NONFINITE = 3   # the loss or the weights became NaN/inf; the last checkpoint is left untouched


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class UsageError(RuntimeError):
    """A run that cannot start as asked (the message says why and what to do)."""
