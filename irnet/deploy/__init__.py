"""Turn a trained IR-Net model into a bit-packed inference model.

``convert(model)`` returns a copy of ``model`` (in eval mode) in which

* every 1w1a layer (``IRConv2d`` / ``IRLinear`` with ``binary_act=True``) becomes a
  :class:`PackedConv2d` / :class:`PackedLinear`: the Libra-PB weight is packed once
  (one bit per weight, ``sign(v)``) with its power-of-two scale ``s_o``, and the forward
  is ``s_o * (K - 2 popcount(pack(x) XOR w))`` by the XNOR-popcount kernels;
* every 1w32a layer (``binary_act=False``; its input is real-valued, so there is no
  XNOR to do) becomes a plain conv/linear holding the fixed binarized weight
  ``sign(v) * s_o``.

Because ``s_o`` is a power of two and the dot an integer, the packed layers give the
float layers' outputs bit for bit, so the converted model predicts exactly what the
trained one does in eval mode.  The packed weight takes 1/32 of the float32 memory.

``convert(model, fuse=True)`` goes one step further for the residual blocks of the zoo
(:class:`irnet.models.blocks.BasicBlock` with packed convolutions): each binary conv
and the BatchNorm, residual add and clamping activation after it run as one kernel
(:class:`FusedPackedConv2d`, ``torch.ops.irnet.xnor_conv2d_fused``), one pass over the
output instead of four.  The BatchNorm is folded into a per-channel ``alpha``, ``beta``,
so the outputs equal the unfused model's to float rounding only (not bit for bit);
predictions agree except where two logits are within rounding of each other.

Shipping it: ``save(packed, "model.safetensors")`` writes one safetensors file (the binary
weights at one bit each, no pickle); ``load(path)`` rebuilds the packed model from it alone
(:mod:`irnet.deploy.io`); ``summary(model, input_size)`` tabulates each layer's kind, size
and binary / float MACs (:mod:`irnet.deploy.summary`); ``python -m irnet.deploy CHECKPOINT
OUT.safetensors`` does all of it for a training checkpoint.
"""
from .convert import convert, model_bytes, packed_layers
from .io import PackedModelError, load, read_metadata, save
from .layers import FusedBasicBlock, FusedPackedConv2d, FusedPackedConvPool, PackedConv2d, PackedLinear
from .runtime import PackedModel, layer_by_layer
from .summary import ModelSummary, summary

__all__ = ["convert", "PackedModel", "PackedConv2d", "PackedLinear", "FusedPackedConv2d", "FusedPackedConvPool",
           "FusedBasicBlock", "packed_layers", "model_bytes", "layer_by_layer", "save", "load", "read_metadata",
           "PackedModelError", "summary", "ModelSummary"]
