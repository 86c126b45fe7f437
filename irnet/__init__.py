"""irnet: fast IR-Net binary neural networks for PyTorch.

* ``irnet.ops``        fused Libra-PB / EDE training ops, bit-packing, XNOR-popcount conv/linear
* ``irnet.nn``         ``IRConv2d``, ``IRLinear``
* ``irnet.models``     the paper's model zoo (``irnet.models.create(name)``)
* ``irnet.reference``  the numerics contract in plain PyTorch
* ``irnet.deploy``     bit-packed inference models: convert, save / load, export
* ``irnet.summary``    per-layer kinds, sizes and binary / float MACs of a model
"""
from . import _ext, ops, reference  # noqa: F401  (ops registers torch.ops.irnet.*)
from . import nn  # noqa: F401
from .schedule import EDESchedule, binary_layers, set_ede
from . import models  # noqa: F401
from . import deploy  # noqa: F401
from .deploy.summary import summary

__version__ = "0.1.0"

__all__ = ["ops", "nn", "models", "deploy", "reference", "EDESchedule", "set_ede", "binary_layers", "extension_status",
           "summary"]


def extension_status() -> dict:
    """Whether the compiled extension loaded, and which kernel each op runs per device."""
    return {"loaded": _ext.LOADED, "error": _ext.ERROR, "kernels": ops.backend_report()}
