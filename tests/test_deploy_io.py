"""irnet.deploy.save / load: packed model files.  Round trips bit for bit (fused and unfused,
NCHW and channels_last, 1w1a and 1w32a), the dense bit encodings, and one clear
PackedModelError for every kind of bad file -- truncated, flipped bytes, wrong shape or
dtype, missing tensors, unknown model, newer format, pickles -- plus a fuzz test."""
from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
import torch.nn as nn

import irnet
from irnet.deploy import PackedModelError, encoding
from irnet.deploy import io as dio

SIZE = {"cifar": 32, "imagenet": 64}


def trained_like(name, seed=0, **kw):
    """A zoo model in eval mode whose BatchNorms have non-trivial statistics and affine
    factors (a fresh model's are 0/1, which would hide folding and loading mistakes)."""
    torch.manual_seed(seed)
    model = irnet.models.create(name, **kw).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def inputs(shape, seed=0, channels_last=False):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.fixture(scope="module")
def resnet20():
    return trained_like("resnet20_1w1a")


@pytest.fixture(scope="module")
def saved(resnet20, tmp_path_factory):
    """(packed model, path of its file): ResNet-20 1w1a, unfused."""
    packed = irnet.deploy.convert(resnet20)
    path = tmp_path_factory.mktemp("saved") / "resnet20.safetensors"
    irnet.deploy.save(packed, path)
    return packed, path


def assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert np.array_equal(encoding.raw_bytes(sa[k]), encoding.raw_bytes(sb[k])), k


# --------------------------------------------------------------------------- round trips
ROUND_TRIPS = [  # (model, keywords, fuse, channels_last)
    *[("resnet20_1w1a", {}, fuse, cl) for fuse in (False, True) for cl in (False, True)],
    *[("resnet20_1w32a", {}, fuse, False) for fuse in (False, True)],
    *[("resnet20_1w1a", {"structure": "normal", "act": "relu", "num_classes": 7}, fuse, False) for fuse in (False, True)],
    *[("vgg_small_1w1a", {"image_size": 16}, fuse, False) for fuse in (False, True)],
    ("vgg_small_1w32a", {"image_size": 16}, False, True),
    ("vgg_small_1w1a", {"image_size": 16}, True, "nchw"),  # fused, moved out of the layout convert chose
]


@pytest.mark.parametrize("name,kw,fuse,channels_last", ROUND_TRIPS)
def test_loaded_model_gives_the_saved_models_logits_bit_for_bit(tmp_path, name, kw, fuse, channels_last):
    model = trained_like(name, **kw)
    packed = irnet.deploy.convert(model, fuse=fuse)
    if channels_last == "nchw":
        packed, channels_last = packed.to(memory_format=torch.contiguous_format), False
    elif channels_last:
        packed = packed.to(memory_format=torch.channels_last)
    path = tmp_path / "m.safetensors"
    irnet.deploy.save(packed, path)
    loaded = irnet.deploy.load(path)
    assert not loaded.training
    assert not any(isinstance(m, (irnet.nn.IRConv2d, irnet.nn.IRLinear)) for m in loaded.modules())
    assert_same_state(loaded, packed)
    assert all(t.stride() == packed.state_dict()[k].stride() for k, t in loaded.state_dict().items())  # layout too
    assert irnet.deploy.model_bytes(loaded) == irnet.deploy.model_bytes(packed)  # no float training weights kept
    side = kw.get("image_size", 32)
    for batch in (1, 3):
        x = inputs((batch, 3, side, side), seed=batch, channels_last=channels_last)
        with torch.no_grad():
            assert torch.equal(loaded(x), packed(x))
    if not fuse and not channels_last:  # and the packed model is still the trained one
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    info = irnet.deploy.read_metadata(path)
    assert info["model"] == {"name": name, "kwargs": model.irnet_kwargs} and info["convert"] == {"fuse": fuse}
    # the layout the model was in: fused models start in the one they run fastest in
    layout = torch.channels_last if channels_last else getattr(packed, "input_format", torch.contiguous_format)
    assert info["memory_format"] == ("channels_last" if layout == torch.channels_last else "contiguous")


@pytest.mark.slow  # every zoo model, up to ResNet-34 (2-16 s each on 2 busy cores)
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("name", irnet.models.names())
def test_every_zoo_model_round_trips(tmp_path, name, fuse):
    spec = irnet.models.spec(name)
    model = trained_like(name, num_classes=10)
    packed = irnet.deploy.convert(model, fuse=fuse)
    path = tmp_path / "m.safetensors"
    irnet.deploy.save(packed, path)
    loaded = irnet.deploy.load(path)
    side = SIZE[spec.dataset]
    x = inputs((2, 3, side, side))
    with torch.no_grad():
        assert torch.equal(loaded(x), packed(x))
    # the binary weights take one bit each in the file (dense, no padding channels)
    summary = irnet.summary(packed, (1, 3, side, side))
    with safetensors.safe_open(str(path), "pt") as f:
        stored = sum(_nbytes(f.get_slice(k)) for k in f.keys())
    integer_buffers = sum(t.numel() * t.element_size() for k, t in packed.state_dict().items()
                          if k.endswith("num_batches_tracked"))
    assert stored == summary.deployed_bytes + integer_buffers


def _nbytes(tensor_slice) -> int:
    """Bytes a tensor takes in a safetensors file (from its header entry)."""
    return int(np.prod(tensor_slice.get_shape(), dtype=np.int64)) * {"F32": 4, "I64": 8, "U8": 1}[tensor_slice.get_dtype()]


def test_bits_are_stored_densely_and_1w32a_weights_as_signs(saved, tmp_path):
    packed, path = saved
    info = irnet.deploy.read_metadata(path)
    enc = info["encodings"]
    # a 16-channel layer packs 16 bits into each 64-bit word: the file keeps only those 16
    assert enc["layers.0.0.conv1.bits"] == {"codec": "bits", "dtype": "int64", "row_bits": 16, "shape": [16, 3, 3, 1]}
    assert "layers.2.0.conv2.bits" not in enc  # 64 channels fill the words: stored as they are
    with safetensors.safe_open(str(path), "pt") as f:
        assert f.get_slice("layers.0.0.conv1.bits").get_shape() == [16 * 9 * 16 // 8]
    # 1w32a: a plain conv holding sign(v) * s_o -> one sign bit per weight and 16 magnitudes
    p32 = irnet.deploy.convert(trained_like("resnet20_1w32a"))
    irnet.deploy.save(p32, tmp_path / "w32.safetensors")
    e32 = irnet.deploy.read_metadata(tmp_path / "w32.safetensors")["encodings"]
    assert e32["layers.0.0.conv1.weight"]["codec"] == "sign"
    assert "stem.0.weight" not in e32 and "fc.weight" not in e32  # real float weights stay float32
    with safetensors.safe_open(str(tmp_path / "w32.safetensors"), "pt") as f:
        assert f.get_slice("layers.0.0.conv1.weight").get_shape() == [16 * 16 * 9 // 8]
        assert f.get_slice("layers.0.0.conv1.weight" + encoding.MAGNITUDE_SUFFIX).get_shape() == [16]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("shape,used", [((5, 3, 3, 1), 7), ((4, 2, 3), 33), ((9, 2), 1), ((3, 1, 1, 2), 64)])
def test_bits_codec_round_trips_random_words(dtype, shape, used):
    """Random words with only the low `used` bits of each row set (a row: the last dim)."""
    g = torch.Generator().manual_seed(used)
    size = torch.empty((), dtype=dtype).element_size() * 8
    row = shape[-1] * size
    bits = torch.randint(0, 2, (int(np.prod(shape[:-1])), row), generator=g, dtype=torch.uint8)
    bits[:, min(used, row):] = 0
    packed = np.packbits(bits.numpy(), axis=1, bitorder="little")
    t = torch.from_numpy(packed.reshape(-1).copy()).view(dtype).reshape(shape)
    parts, entry = encoding.encode("w", t)
    highest = int(np.flatnonzero(bits.numpy().any(axis=0))[-1]) + 1   # the row bits the codec must keep
    if highest == row or row > encoding.MAX_EXPANSION * highest:
        # nothing to drop, or so little kept that decoding would expand > 64x: stored as is
        assert entry is None and parts["w"].dtype == t.dtype and torch.equal(parts["w"], t)
        return
    assert entry == {"codec": "bits", "dtype": str(dtype).removeprefix("torch."), "shape": list(shape),
                     "row_bits": highest}
    assert parts["w"].dtype == torch.uint8 and parts["w"].numel() == (bits.shape[0] * highest + 7) // 8
    back = encoding.decode("w", entry, parts)
    assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sign_codec_round_trips_and_refuses_non_binary_weights(dtype):
    g = torch.Generator().manual_seed(0)
    m = torch.rand(6, generator=g).to(dtype) + 0.1
    w = torch.where(torch.rand(6, 5, 3, 3, generator=g) < 0.5, -1.0, 1.0).to(dtype) * m.reshape(-1, 1, 1, 1)
    parts, entry = encoding.encode("w", w)
    assert entry["codec"] == "sign"
    back = encoding.decode("w", entry, parts)
    assert back.dtype == dtype and np.array_equal(encoding.raw_bytes(back), encoding.raw_bytes(w))
    for other in (w + 1e-3 * (w > 0), torch.zeros_like(w), w.reshape(6, -1)[:, :1].contiguous()):
        assert encoding.encode("w", other)[1] is None   # not +-m_o with m_o > 0, or one value per row


def test_save_load_save_gives_the_same_bytes_and_load_keeps_the_rng(saved, tmp_path):
    _, path = saved
    state = torch.get_rng_state()
    loaded = irnet.deploy.load(path)
    assert torch.equal(torch.get_rng_state(), state)  # the skeleton's random init does not touch the caller's RNG
    irnet.deploy.save(loaded, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_save_refuses_models_it_could_not_load_back(resnet20, tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="not a packed model"):
        irnet.deploy.save(resnet20, out)   # the training model, not converted
    packed = irnet.deploy.convert(resnet20)
    custom = irnet.deploy.convert(nn.Sequential(irnet.nn.IRConv2d(3, 8, 3)))
    with pytest.raises(ValueError, match="which zoo model"):
        irnet.deploy.save(custom, out)
    extra = irnet.deploy.convert(resnet20)
    extra.fc.register_buffer("cache", torch.zeros(3), persistent=False)
    with pytest.raises(ValueError, match=r"fc.cache \(non-persistent buffer\)"):
        irnet.deploy.save(extra, out)
    with pytest.raises(ValueError, match="would not load"):
        irnet.deploy.save(packed, out, model_kwargs={"num_classes": 7})
    mixed = irnet.deploy.convert(trained_like("resnet20_1w32a"))  # float convs everywhere (1w32a)
    mixed.stem[0].weight.data = mixed.stem[0].weight.data.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="several memory formats"):
        irnet.deploy.save(mixed, out)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# --------------------------------------------------------------------------- bad files
def rewrite(src, dst, edit):
    """Copy a saved file with ``edit(stored, info)`` applied, re-signed with a valid checksum:
    files that are well-formed but wrong, as a newer or a hostile writer could make them."""
    with safetensors.safe_open(str(src), "pt") as f:
        meta = f.metadata()
        stored = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["irnet"])
    del info["sha256"]
    edit(stored, info)
    data = safetensors.torch.save(stored, metadata=dio._signed_metadata(info, stored))
    dst.write_bytes(data)
    return dst


def load_error(path) -> str:
    with pytest.raises(PackedModelError) as exc:
        irnet.deploy.load(path)
    assert str(path) in str(exc.value)
    return str(exc.value)


def test_rewrite_helper_makes_loadable_files(saved, tmp_path):
    packed, path = saved
    same = rewrite(path, tmp_path / "same.safetensors", lambda s, i: None)
    assert_same_state(irnet.deploy.load(same), packed)  # so the failures below come from the edits alone


def test_missing_and_unreadable_files(tmp_path):
    assert "no such file" in load_error(tmp_path / "absent.safetensors")
    assert "cannot be read" in load_error(tmp_path)  # a folder


@pytest.mark.parametrize("cut", [0, 5, 8, 100, "header-1", "data/2", "-1"])
def test_truncated_file(saved, tmp_path, cut):
    _, path = saved
    blob = path.read_bytes()
    header_end = 8 + int.from_bytes(blob[:8], "little")
    n = {"header-1": header_end - 1, "data/2": (header_end + len(blob)) // 2, "-1": len(blob) - 1}.get(cut, cut)
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(blob[:n])
    msg = load_error(bad)
    assert "truncated" in msg


def test_appended_bytes(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "long.safetensors"
    bad.write_bytes(path.read_bytes() + b"\0")
    assert "longer than its header says" in load_error(bad)


@pytest.mark.parametrize("target,offset", [  # the byte `offset` after the start of `target` in the header
    (b'"layers.0.0.conv1.bits"', 5),        # a tensor name
    (b'"shape":[16', 9),                     # a shape
    (b'"data_offsets":[', 16),               # an offset
    (b'\\"fuse\\":false', 10),           # a conversion option
    (b'resnet20_1w1a', 7),                   # the model name
    (b'\\"sha256\\":\\"', 14),         # the checksum itself
    (b'{"__metadata__"', 0),                 # the JSON structure
])
def test_flipped_header_byte(saved, tmp_path, target, offset):
    _, path = saved
    blob = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(blob[:8], "little")
    at = blob.index(target, 8, header_end) + offset
    for bit in (0, 3, 6):
        corrupt = bytearray(blob)
        corrupt[at] ^= 1 << bit
        bad = tmp_path / "flip.safetensors"
        bad.write_bytes(bytes(corrupt))
        load_error(bad)


def test_flipped_data_byte_fails_the_checksum(saved, tmp_path):
    _, path = saved
    blob = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(blob[:8], "little")
    for at in (header_end, (header_end + len(blob)) // 2, len(blob) - 1):
        corrupt = bytearray(blob)
        corrupt[at] ^= 0x10
        bad = tmp_path / "flip.safetensors"
        bad.write_bytes(bytes(corrupt))
        assert "do not match the checksum" in load_error(bad)


def test_wrong_shape_dtype_missing_and_extra_tensors(saved, tmp_path):
    _, path = saved

    def shape(s, i):
        s["fc.weight"] = torch.zeros(10, 63)

    def dtype(s, i):
        s["fc.bias"] = s["fc.bias"].double()

    def missing(s, i):
        del s["layers.1.0.bn1.running_var"]

    def missing_encoded(s, i):
        del s["layers.0.0.conv1.bits"]

    def extra(s, i):
        s["fc.extra"] = torch.zeros(3)

    def raw_bits_of_wrong_size(s, i):  # an encoded tensor whose entry no longer fits its bytes
        i["encodings"]["layers.0.0.conv1.bits"]["row_bits"] = 17

    def bad_codec(s, i):
        i["encodings"]["layers.0.0.conv1.bits"]["codec"] = "zip"

    cases = {shape: r"tensor fc.weight is float32 \[10, 63\], the model needs float32 \[10, 64\]",
             dtype: r"tensor fc.bias is float64 \[10\], the model needs float32 \[10\]",
             missing: r"1 tensor\(s\) missing \(layers.1.0.bn1.running_var\)",
             missing_encoded: r"encoded tensor 'layers.0.0.conv1.bits' is missing",
             extra: r"1 unexpected tensor\(s\) \(fc.extra\)",
             raw_bits_of_wrong_size: r"codec 'bits': expected 306 bytes",
             bad_codec: r"unknown codec 'zip'"}
    for edit, pattern in cases.items():
        msg = load_error(rewrite(path, tmp_path / f"{edit.__name__}.safetensors", edit))
        assert __import__("re").search(pattern, msg), (edit.__name__, msg)


def test_unknown_model_newer_format_and_bad_options(saved, tmp_path):
    _, path = saved

    def unknown(s, i):
        i["model"]["name"] = "resnet99_1w1a"

    def newer(s, i):
        i["format_version"] = dio.FORMAT_VERSION + 1
        i["irnet_version"] = "9.0.0"

    def kwargs(s, i):
        i["model"]["kwargs"]["depth"] = 7

    def options(s, i):
        i["convert"]["plan"] = "whole"

    assert "model 'resnet99_1w1a' is not in this irnet's zoo" in load_error(rewrite(path, tmp_path / "u.safetensors", unknown))
    msg = load_error(rewrite(path, tmp_path / "n.safetensors", newer))
    assert "format version 2" in msg and "upgrade irnet" in msg and "'9.0.0'" in msg
    assert "cannot build model 'resnet20_1w1a'" in load_error(rewrite(path, tmp_path / "k.safetensors", kwargs))
    assert "convert options" in load_error(rewrite(path, tmp_path / "o.safetensors", options))


def test_files_that_are_not_packed_models(tmp_path):
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, str(plain))
    assert "without irnet metadata" in load_error(plain)
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, str(other), metadata={"irnet": json.dumps({"format": "x"})})
    assert "not an irnet packed model" in load_error(other)
    # a pickle whose loading would run code: load reads it as bytes only and refuses it
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload()))
    load_error(evil)
    evil_pt = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, evil_pt)
    load_error(evil_pt)
    assert not marker.exists()


def test_fuzz_random_corruption_raises_or_loads_the_identical_model(saved, tmp_path):
    """Random bytes of a saved file replaced (1 to 4 at a time) or the file cut short, 600
    times: every load either raises PackedModelError or gives exactly the saved tensors --
    which can only happen where a change leaves the parsed file the same (e.g. JSON
    whitespace); no other exception, no partial model."""
    packed, path = saved
    blob = path.read_bytes()
    header_end = 8 + int.from_bytes(blob[:8], "little")
    rng = random.Random(1234)
    bad = tmp_path / "fuzz.safetensors"
    outcomes = {"error": 0, "identical": 0}
    for trial in range(600):
        corrupt = bytearray(blob)
        if trial % 10 == 9:
            corrupt = corrupt[:rng.randrange(len(blob))]
        else:
            for _ in range(rng.randint(1, 4)):
                # half the time in the header (the part a parser reads), else anywhere
                at = rng.randrange(header_end) if rng.random() < 0.5 else rng.randrange(len(blob))
                corrupt[at] = (corrupt[at] + rng.randrange(1, 256)) % 256
        bad.write_bytes(bytes(corrupt))
        try:
            loaded = irnet.deploy.load(bad)
        except PackedModelError as exc:
            assert str(bad) in str(exc)
            outcomes["error"] += 1
            continue
        assert_same_state(loaded, packed)
        outcomes["identical"] += 1
    assert outcomes["error"] >= 550, outcomes
