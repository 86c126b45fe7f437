"""Lossless compact encodings of a packed model's tensors, for its file (irnet.deploy.io).

A packed model holds its binary weights in two forms, and neither is dense in memory:

* ``bits`` buffers of the 1w1a layers: int64 words, each row of ``C`` input channels padded
  to a multiple of 64 bits (a 16-channel layer uses 16 of each word's 64 bits);
* the plain float weights of the 1w32a layers, ``sign(v) * s_o``: 32 bits per binary weight.

The codecs below store either at one bit per binary weight, without knowing which layer a
tensor belongs to (so that any layer type ``convert`` produces is covered):

``"bits"``  an integer tensor, viewed as ``R = prod(shape[:-1])`` rows of ``B`` bits (its last
            dimension's elements in memory order, each little-endian, bit 0 first).  When every
            row is zero above its first ``L`` bits, only those ``R * L`` bits are stored,
            one after the other, 8 to a byte (padding channels cost nothing; ``B <= 64 L``).
``"sign"``  a float tensor of rank >= 2 whose every slice along dim 0 holds one magnitude
            ``m_o > 0`` with signs, ``w[o, ...] = +-m_o``: stored as one sign bit per value
            (1 = negative) and the ``m_o``.

Each codec is used only where it is smaller than the raw tensor, and only after decoding its
output was checked to give the tensor's exact bytes back.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

__all__ = ["constant_magnitude_rows", "encode", "decode", "EncodingError", "MAGNITUDE_SUFFIX"]

MAGNITUDE_SUFFIX = "#magnitude"   # the "sign" codec's second tensor: name + this suffix
# "bits" keeps at least 1 of every MAX_EXPANSION bits of a row (a 64-bit word holds >= 1 channel), so
# no file can make decoding allocate more than 64 times the bytes it stores.
MAX_EXPANSION = 64

_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class EncodingError(ValueError):
    """A stored tensor that does not decode (wrong size, dtype or parameters)."""


def raw_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's values as uint8, in row-major order (little-endian elements on this host)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def constant_magnitude_rows(w: torch.Tensor) -> torch.Tensor | None:
    """``m`` with ``|w[o, ...]| == m[o] > 0`` for every ``o`` (a binary-valued weight
    ``sign * m_o``, e.g. a 1w32a layer's), or None.  Rows of one value do not count."""
    if not w.is_floating_point() or w.dim() < 2 or w.shape[0] == 0 or w[0].numel() < 2 or w.device.type == "meta":
        return None
    a = w.detach().reshape(w.shape[0], -1).abs()
    m = a[:, 0]
    if not bool(torch.isfinite(m).all()) or not bool((m > 0).all()) or not bool((a == m[:, None]).all()):
        return None
    return m.clone()


def _check_little_endian():
    if sys.byteorder != "little":
        raise EncodingError("irnet's bit encodings are defined on little-endian hosts only")


# --------------------------------------------------------------------------- "bits"
def _encode_bits(t: torch.Tensor):
    if t.dtype not in _INTEGER_DTYPES or t.dim() == 0 or t.numel() == 0:
        return None
    rows = raw_bytes(t).reshape(-1, t.shape[-1] * t.element_size())
    bits = np.unpackbits(rows, axis=1, bitorder="little")                   # (R, B)
    used = np.flatnonzero(bits.any(axis=0))
    row_bits = int(used[-1]) + 1 if used.size else 0
    if row_bits == bits.shape[1] or bits.shape[1] > MAX_EXPANSION * row_bits:
        return None        # nothing to drop, or (all-zero rows) more than a bounded expansion on decoding
    stored = np.packbits(bits[:, :row_bits].reshape(-1), bitorder="little")
    return torch.from_numpy(stored.copy()), {"row_bits": row_bits}


def _decode_bits(stored: torch.Tensor, dtype: torch.dtype, shape: list, params: dict) -> torch.Tensor:
    if dtype not in _INTEGER_DTYPES or not shape:
        raise EncodingError(f"codec 'bits' applies to integer tensors of rank >= 1, not {dtype} of shape {shape}")
    row_bits = params.get("row_bits")
    full_bits = shape[-1] * dtype.itemsize * 8
    if (not isinstance(row_bits, int) or isinstance(row_bits, bool) or not 0 < row_bits <= full_bits
            or full_bits > MAX_EXPANSION * row_bits):
        raise EncodingError(f"codec 'bits': row_bits={row_bits!r} does not fit rows of {full_bits} bits")
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    expected = (rows * row_bits + 7) // 8
    if stored.dtype != torch.uint8 or stored.dim() != 1 or stored.numel() != expected:
        raise EncodingError(f"codec 'bits': expected {expected} bytes (uint8, 1-d), found {stored.dtype} "
                            f"of shape {tuple(stored.shape)}")
    kept = np.unpackbits(stored.numpy(), count=rows * row_bits, bitorder="little").reshape(rows, row_bits)
    bits = np.zeros((rows, full_bits), dtype=np.uint8)
    bits[:, :row_bits] = kept
    data = np.packbits(bits, axis=1, bitorder="little")
    return torch.from_numpy(data.reshape(-1).copy()).view(dtype).reshape(shape)


# --------------------------------------------------------------------------- "sign"
def _encode_sign(t: torch.Tensor):
    m = constant_magnitude_rows(t)
    if m is None:
        return None
    negative = (t.detach().cpu().reshape(-1) < 0).numpy()
    stored = np.packbits(negative, bitorder="little")
    return torch.from_numpy(stored.copy()), {}, m.cpu().contiguous()


def _decode_sign(stored: torch.Tensor, magnitude: torch.Tensor | None, dtype: torch.dtype, shape: list) -> torch.Tensor:
    if not dtype.is_floating_point or len(shape) < 2:
        raise EncodingError(f"codec 'sign' applies to float tensors of rank >= 2, not {dtype} of shape {shape}")
    numel = int(np.prod(shape, dtype=np.int64))
    expected = (numel + 7) // 8
    if stored.dtype != torch.uint8 or stored.dim() != 1 or stored.numel() != expected:
        raise EncodingError(f"codec 'sign': expected {expected} bytes of signs (uint8, 1-d), found {stored.dtype} "
                            f"of shape {tuple(stored.shape)}")
    if magnitude is None or magnitude.dtype != dtype or tuple(magnitude.shape) != (shape[0],):
        found = "none" if magnitude is None else f"{magnitude.dtype} of shape {tuple(magnitude.shape)}"
        raise EncodingError(f"codec 'sign': expected magnitudes {dtype} of shape ({shape[0]},), found {found}")
    negative = torch.from_numpy(np.unpackbits(stored.numpy(), count=numel, bitorder="little").astype(bool))
    m = magnitude.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    return torch.where(negative.reshape(shape), -m, m).contiguous()


# --------------------------------------------------------------------------- public
def encode(name: str, t: torch.Tensor):
    """``({stored name: tensor}, encoding entry or None)`` for one tensor of the model.

    The entry (None: stored as is) says how :func:`decode` rebuilds the tensor.  An encoding
    is kept only if it is smaller and decodes to exactly the same bytes."""
    t = t.detach().cpu().contiguous()
    raw = {name: t}
    if sys.byteorder != "little":
        return raw, None
    attempt = _encode_bits(t)
    if attempt is not None:
        codec, (stored, params) = "bits", attempt
        candidate = {name: stored}
    else:
        attempt = _encode_sign(t)
        if attempt is None:
            return raw, None
        codec, (stored, params, magnitude) = "sign", attempt
        candidate = {name: stored, name + MAGNITUDE_SUFFIX: magnitude}
    entry = {"codec": codec, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), **params}
    if sum(v.numel() * v.element_size() for v in candidate.values()) >= t.numel() * t.element_size():
        return raw, None
    back = decode(name, entry, candidate)
    if back.dtype != t.dtype or back.shape != t.shape or not np.array_equal(raw_bytes(back), raw_bytes(t)):
        return raw, None  # cannot happen for the codecs above; never store what does not round-trip
    return candidate, entry


def stored_names(name: str, entry: dict | None) -> list:
    """The names under which :func:`encode` stored the tensor ``name``."""
    if entry is not None and entry.get("codec") == "sign":
        return [name, name + MAGNITUDE_SUFFIX]
    return [name]


def decode(name: str, entry: dict, stored: dict) -> torch.Tensor:
    """The tensor ``name`` from its stored tensors and encoding entry; EncodingError if they do not fit."""
    _check_little_endian()
    if not isinstance(entry, dict):
        raise EncodingError(f"encoding of {name!r} is not an object")
    codec, dtype_name, shape = entry.get("codec"), entry.get("dtype"), entry.get("shape")
    dtype = getattr(torch, dtype_name, None) if isinstance(dtype_name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise EncodingError(f"encoding of {name!r}: unknown dtype {dtype_name!r}")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2 ** 40 for s in shape)):
        raise EncodingError(f"encoding of {name!r}: bad shape {shape!r}")
    if name not in stored:
        raise EncodingError(f"encoded tensor {name!r} is missing")
    if codec == "bits":
        return _decode_bits(stored[name], dtype, shape, entry)
    if codec == "sign":
        return _decode_sign(stored[name], stored.get(name + MAGNITUDE_SUFFIX), dtype, shape)
    raise EncodingError(f"encoding of {name!r}: unknown codec {codec!r}")
