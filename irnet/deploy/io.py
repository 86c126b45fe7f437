"""Packed model files: ``save(packed, path)`` and ``load(path)``.

A file is one safetensors file (no pickle: loading runs no code from it) holding

* the packed model's ``state_dict()`` tensors -- packed bits, scales, folded BatchNorm
  factors, float layers -- the binary ones at one bit per weight (:mod:`.encoding`);
* one metadata entry ``"irnet"`` (canonical JSON): ``format``, ``format_version``, the irnet
  and torch versions that wrote it, the zoo model (``name`` and the keywords of
  ``irnet.models.create``), the options ``convert`` was called with, the memory format of
  the 4-d tensors, how each encoded tensor decodes, and ``sha256``: a SHA-256 over the rest
  of the metadata and every stored tensor's name, dtype, shape and bytes, so that a changed
  byte which still parses is caught too.

``load`` rebuilds the module from the metadata alone -- ``irnet.models.create(name,
**kwargs)`` then ``convert(model, **options)``, from a freshly initialised model whose
float weights are dropped by ``convert`` -- and copies the file's tensors into it after a
strict check of names, shapes and dtypes.  It therefore works for whatever layer types
``convert`` produces, as long as every tensor the packed model needs is a registered
(persistent) parameter or buffer and nothing in its structure depends on weight values;
``save`` checks both (it rebuilds the skeleton and refuses a model that would not load).

Every problem with a file raises :class:`PackedModelError` (a ``ValueError``) naming the
file and the problem; ``load`` returns a complete model or nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import torch
import torch.nn as nn

from .._files import atomic_write_bytes
from . import encoding

__all__ = ["save", "load", "PackedModelError", "FORMAT", "FORMAT_VERSION", "read_metadata"]

FORMAT = "irnet-packed-model"
FORMAT_VERSION = 1
_META_KEY = "irnet"   # the one safetensors metadata entry: canonical JSON (one key, so files are reproducible)

# the safetensors dtype names a packed model file may use
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class PackedModelError(ValueError):
    """A packed model file that cannot be loaded; the message names the file and the problem."""


# --------------------------------------------------------------------------- shared helpers
def _canonical(info: dict) -> str:
    return json.dumps(info, sort_keys=True, separators=(",", ":"))


def _checksum(info: dict, stored: dict) -> str:
    """SHA-256 over the canonical JSON of the metadata (without ``sha256``) and each stored
    tensor (sorted by name): a JSON line ``[name, dtype, shape]`` then the tensor's bytes
    (their count follows from that line)."""
    h = hashlib.sha256()
    h.update(FORMAT.encode() + b"\n" + _canonical(info).encode() + b"\n")
    for name in sorted(stored):
        t = stored[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\n")
        h.update(encoding.raw_bytes(t).data)
    return h.hexdigest()


def _memory_format(state: dict) -> str:
    """"contiguous" or "channels_last": the layout of the model's 4-d float tensors (those for
    which the two differ); a mixture cannot be restored by one ``.to(memory_format=...)``.
    (Packed bits are integer tensors, which the packed layers keep contiguous in either
    layout: they do not count.)"""
    formats = set()
    for name, t in state.items():
        if t.dim() != 4 or not t.is_floating_point():
            continue
        plain, last = t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
        if plain and last:
            continue
        formats.add("contiguous" if plain else "channels_last" if last else f"other ({name})")
    if len(formats) > 1 or any(f.startswith("other") for f in formats):
        raise ValueError(f"irnet.deploy.save: the model's 4-d tensors are in several memory formats ({sorted(formats)}); "
                         f"call .to(memory_format=torch.contiguous_format) or torch.channels_last first")
    return formats.pop() if formats else "contiguous"


def _build_skeleton(name: str, kwargs: dict, options: dict) -> nn.Module:
    """The packed module that ``convert(create(name, **kwargs), **options)`` gives for a freshly
    initialised model (on the CPU, global RNG untouched); the caller loads the real tensors."""
    from .. import models
    from .convert import convert
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.create(name, **kwargs)
    return convert(model.eval(), **options)


def _unregistered_tensors(model: nn.Module) -> list:
    """Attributes of the model's modules that hold tensors outside ``state_dict()`` (a
    non-persistent buffer, or a plain tensor attribute): a file could not restore them."""
    found = []
    for mod_name, module in model.named_modules():
        prefix = mod_name + "." if mod_name else ""
        for buf_name in getattr(module, "_non_persistent_buffers_set", ()):
            if getattr(module, buf_name, None) is not None:
                found.append(prefix + buf_name + " (non-persistent buffer)")
        for attr, value in vars(module).items():
            if attr.startswith("_"):  # nn.Module's own slots (_parameters, _buffers, ...)
                continue
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
            if any(isinstance(v, torch.Tensor) for v in items):
                found.append(prefix + attr + " (tensor attribute)")
    return found


def _compare(expected: dict, found: dict) -> list:
    """Differences in names, shapes and dtypes, as sentences (empty if none)."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({', '.join(unexpected[:4])}"
                        f"{', ...' if len(unexpected) > 4 else ''})")
    for k, want in expected.items():
        got = found.get(k)
        if got is not None and (tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype):
            problems.append(f"tensor {k} is {str(got.dtype).removeprefix('torch.')} {list(got.shape)}, the model needs "
                            f"{str(want.dtype).removeprefix('torch.')} {list(want.shape)}")
    return problems


def _json_plain(value) -> bool:
    """JSON types that round-trip exactly (no floats: nothing the zoo or convert needs)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_json_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_plain(v) for k, v in value.items())
    return False


# --------------------------------------------------------------------------- save
def save(packed: nn.Module, path: str, *, model_name: str | None = None, model_kwargs: dict | None = None,
         memory_format: str | None = None) -> None:
    """Write a packed model (the output of :func:`irnet.deploy.convert` of a zoo model) to
    ``path`` as one safetensors file, atomically.

    ``memory_format`` ("contiguous" or "channels_last"), the layout ``load`` gives the model,
    defaults to the layout of the model's 4-d float tensors (where none tells, e.g. only a
    1-input-channel stem whose weight is both, "contiguous": the same memory either way).

    ``model_name`` / ``model_kwargs`` default to what ``irnet.models.create`` recorded on the
    model (``irnet_name``, ``irnet_kwargs``).  The file is checked to load before it is
    written: a model that could not be rebuilt from it raises ``ValueError`` here."""
    import safetensors.torch

    from .. import __version__
    if not isinstance(packed, nn.Module):
        raise TypeError(f"irnet.deploy.save: expected a packed nn.Module, got {type(packed).__name__}")
    options = getattr(packed, "irnet_convert_options", None)
    if not isinstance(options, dict):
        raise ValueError("irnet.deploy.save: this is not a packed model (no irnet_convert_options); "
                         "save the output of irnet.deploy.convert(model)")
    name = model_name if model_name is not None else getattr(packed, "irnet_name", None)
    kwargs = model_kwargs if model_kwargs is not None else getattr(packed, "irnet_kwargs", None)
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise ValueError("irnet.deploy.save: the model does not say which zoo model it is (irnet_name / irnet_kwargs, "
                         "set by irnet.models.create); pass model_name= and model_kwargs=")
    if not (_json_plain(kwargs) and _json_plain(options)):
        raise ValueError(f"irnet.deploy.save: model keywords {kwargs!r} and convert options {options!r} must be plain "
                         f"JSON values (None, bool, int, str, lists, dicts)")
    loose = _unregistered_tensors(packed)
    if loose:
        raise ValueError(f"irnet.deploy.save: tensors outside state_dict() cannot be saved: {', '.join(loose[:4])}")

    state = {k: v.detach() for k, v in packed.state_dict().items()}
    layout = _memory_format(state)
    if memory_format is not None:
        if memory_format not in ("contiguous", "channels_last"):
            raise ValueError(f"irnet.deploy.save: memory_format must be 'contiguous' or 'channels_last', got {memory_format!r}")
        fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        wrong = [k for k, t in state.items() if t.dim() == 4 and t.is_floating_point() and not t.is_contiguous(memory_format=fmt)]
        if wrong:
            raise ValueError(f"irnet.deploy.save: memory_format={memory_format!r} but {wrong[0]} is not in that layout")
        layout = memory_format
    skeleton = _build_skeleton(name, dict(kwargs), dict(options))
    problems = _compare(skeleton.state_dict(), state)
    if problems:
        raise ValueError(f"irnet.deploy.save: the model differs from what {name} with {kwargs} and convert options "
                         f"{options} rebuild ({'; '.join(problems)}); the file would not load")
    del skeleton

    stored, encodings = {}, {}
    for key, tensor in state.items():
        parts, entry = encoding.encode(key, tensor)
        for stored_name, t in parts.items():
            if stored_name in stored or (stored_name != key and stored_name in state):
                raise ValueError(f"irnet.deploy.save: stored tensor name {stored_name!r} is taken twice")
            stored[stored_name] = t
        if entry is not None:
            encodings[key] = entry
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "irnet_version": __version__,
            "torch_version": torch.__version__, "model": {"name": name, "kwargs": kwargs}, "convert": options,
            "memory_format": layout, "encodings": encodings}
    data = safetensors.torch.save(stored, metadata=_signed_metadata(meta, stored))
    atomic_write_bytes(os.fspath(path), data)


def _signed_metadata(info: dict, stored: dict) -> dict:
    """The safetensors metadata of a file: ``info`` with its checksum, as canonical JSON."""
    return {_META_KEY: _canonical(dict(info, sha256=_checksum(info, stored)))}


# --------------------------------------------------------------------------- load
def _no_duplicate_keys(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _parse_header(data: bytes, where: str):
    """The metadata dict of a safetensors file's bytes, after checking everything the reader
    relies on: sizes, JSON, dtypes, and offsets that tile the data section exactly."""
    def bad(problem):
        return PackedModelError(f"{where}: {problem}")

    if len(data) < 8:
        raise bad(f"only {len(data)} bytes: not a packed model file (truncated?)")
    n = int.from_bytes(data[:8], "little")
    if not 2 <= n <= len(data) - 8:
        raise bad(f"the header length field says {n} bytes but {len(data) - 8} follow it: the file is truncated or corrupt")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"the header is not valid JSON ({type(exc).__name__}: {exc}): the file is corrupt") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object: the file is corrupt")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("the header's metadata is not a map of strings: the file is corrupt")
    spans = []
    for name, entry in header.items():
        if (not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}
                or entry["dtype"] not in _DTYPES or not isinstance(entry["shape"], list)
                or not all(type(s) is int and s >= 0 for s in entry["shape"])
                or not isinstance(entry["data_offsets"], list) or len(entry["data_offsets"]) != 2
                or not all(type(o) is int for o in entry["data_offsets"])):
            raise bad(f"the header entry of tensor {name!r} is malformed ({str(entry)[:120]}): the file is corrupt")
        dtype, shape = _DTYPES[entry["dtype"]], entry["shape"]
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end or end - begin != math.prod(shape) * dtype.itemsize:
            raise bad(f"tensor {name!r}: offsets {begin}..{end} do not hold a {entry['dtype']} tensor of shape {shape}: "
                      f"the file is corrupt")
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise bad(f"tensor {name!r} starts at byte {begin} of the data, expected {position}: the file is corrupt")
        position = end
    available = len(data) - 8 - n
    if position != available:
        what = "truncated" if position > available else "longer than its header says"
        raise bad(f"the header promises {position} bytes of tensor data, the file holds {available}: it is {what}")
    return meta


def _irnet_metadata(meta: dict, where: str) -> tuple[dict, str]:
    if _META_KEY not in meta:
        raise PackedModelError(f"{where}: a safetensors file without irnet metadata, not an irnet packed model")
    try:
        info = json.loads(meta[_META_KEY], object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        raise PackedModelError(f"{where}: the irnet metadata is not valid JSON ({exc}): the file is corrupt") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise PackedModelError(f"{where}: not an irnet packed model file (its format is {found!r}, not {FORMAT!r})")
    version = info.get("format_version")
    if type(version) is not int or version < 1:
        raise PackedModelError(f"{where}: bad format version {version!r}: the file is corrupt")
    if version > FORMAT_VERSION:
        from .. import __version__
        raise PackedModelError(f"{where}: written by irnet {info.get('irnet_version')!r} in file format version "
                               f"{version}; this irnet ({__version__}) reads format version {FORMAT_VERSION} and older: "
                               f"upgrade irnet to load it")
    return info, info.pop("sha256", None)


def _check_fields(info: dict, where: str):
    model = info.get("model")
    fields_ok = (isinstance(model, dict) and isinstance(model.get("name"), str) and isinstance(model.get("kwargs"), dict)
                 and isinstance(info.get("convert"), dict) and info.get("memory_format") in ("contiguous", "channels_last")
                 and isinstance(info.get("encodings"), dict))
    if not fields_ok:
        raise PackedModelError(f"{where}: the irnet metadata lacks or garbles model / convert / memory_format / "
                               f"encodings: the file is corrupt")


def read_metadata(path: str) -> dict:
    """The irnet metadata of a packed model file (format, versions, model, convert options,
    memory format, encodings), checked like :func:`load` checks it, without building the model."""
    data = _read(path)
    meta = _parse_header(data, path)
    info, _ = _irnet_metadata(meta, path)
    _check_fields(info, path)
    return info


def _read(path) -> bytes:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PackedModelError(f"{path}: no such file") from None
    except OSError as exc:
        raise PackedModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def load(path: str, map_location="cpu") -> nn.Module:
    """The packed model saved at ``path``, in eval mode, on ``map_location``.

    Raises :class:`PackedModelError` for a missing, truncated or corrupt file, one written
    by a newer irnet, one of a model this irnet does not know, or tensors that do not fit
    the model (missing, unexpected, wrong shape or dtype)."""
    import safetensors.torch

    from .. import models
    where = os.fspath(path)
    data = _read(where)
    meta = _parse_header(data, where)
    info, digest = _irnet_metadata(meta, where)
    try:
        stored = safetensors.torch.load(data)
    except Exception as exc:  # the header was checked above; anything else the reader finds is corruption
        raise PackedModelError(f"{where}: the tensors cannot be read ({type(exc).__name__}: {exc})") from None
    del data
    if digest != _checksum(info, stored):
        raise PackedModelError(f"{where}: the contents do not match the checksum saved with them: the file is corrupt")
    _check_fields(info, where)

    encodings = info["encodings"]
    tensors = {}
    try:
        for key, entry in encodings.items():
            tensors[key] = encoding.decode(key, entry, stored)
    except encoding.EncodingError as exc:
        raise PackedModelError(f"{where}: {exc}") from None
    used = {n for key, entry in encodings.items() for n in encoding.stored_names(key, entry)}
    for stored_name, t in stored.items():
        if stored_name not in used:
            tensors[stored_name] = t

    name, kwargs = info["model"]["name"], info["model"]["kwargs"]
    if name not in models.names():
        raise PackedModelError(f"{where}: model {name!r} is not in this irnet's zoo ({', '.join(models.names())}); "
                               f"was the file written by a newer irnet?")
    try:
        skeleton = _build_skeleton(name, kwargs, info["convert"])
    except Exception as exc:  # noqa: BLE001  (any failure to build is this file's problem, reported as one)
        raise PackedModelError(f"{where}: this irnet cannot build model {name!r} with {kwargs} and convert options "
                               f"{info['convert']} ({exc})") from None
    problems = _compare(skeleton.state_dict(), tensors)
    if problems:
        raise PackedModelError(f"{where}: the tensors do not fit model {name!r} {kwargs}: {'; '.join(problems)}")
    skeleton.load_state_dict(tensors, strict=True)
    # the saved layout, also where convert chose another one (a fused model's layout is the one
    # it runs in: irnet.deploy.PackedModel)
    skeleton = skeleton.to(memory_format=torch.channels_last if info["memory_format"] == "channels_last"
                           else torch.contiguous_format)
    return skeleton.to(map_location).eval()
