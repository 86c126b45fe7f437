"""File sizes of every zoo model: the float32 state_dict (torch.save) against the packed
file of irnet.deploy.save (unfused and fused), and the bytes the binary weights take in it.

    python tools/model_sizes.py            # a Markdown table, as in the README
    python tools/model_sizes.py --check    # also fail unless every binary weight takes 1 bit (both files)

Sizes depend only on the architecture (not on the weights' values, not on the machine):
the models are freshly initialised (seed 0), with each zoo entry's default classes.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile

import numpy as np
import safetensors
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import irnet  # noqa: E402
from irnet.deploy.encoding import constant_magnitude_rows  # noqa: E402
from irnet.deploy.summary import _packed_weight_shape  # noqa: E402

_ITEM = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def binary_weight_tensors(packed: nn.Module) -> dict:
    """{state_dict key: number of binary weights} of a packed model: the bits of its 1w1a
    layers and the sign(v) * s_o weights of its 1w32a layers."""
    found = {}
    for name, m in packed.named_modules():
        prefix = name + "." if name else ""
        shape = _packed_weight_shape(m)
        if shape is not None:
            found[prefix + "bits"] = int(np.prod(shape))
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and constant_magnitude_rows(m.weight) is not None:
            found[prefix + "weight"] = m.weight.numel()
    return found


def stored_bytes(path: str) -> dict:
    """{stored tensor name: bytes of its data} of a safetensors file."""
    sizes = {}
    with safetensors.safe_open(path, "pt") as f:
        for k in f.keys():
            t = f.get_slice(k)
            sizes[k] = int(np.prod(t.get_shape(), dtype=np.int64)) * _ITEM[t.get_dtype()]
    return sizes


def measure(name: str, folder: str) -> dict:
    torch.manual_seed(0)
    model = irnet.models.create(name).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()), "float32": buf.tell()}
    for fuse in (False, True):
        packed = irnet.deploy.convert(model, fuse=fuse)
        path = os.path.join(folder, f"{name}-{fuse}.safetensors")
        irnet.deploy.save(packed, path)
        kind = "fused" if fuse else "packed"
        row[kind] = os.path.getsize(path)
        weights = binary_weight_tensors(packed)
        sizes = stored_bytes(path)
        row[kind + "_binary_weights"] = sum(weights.values())
        row[kind + "_binary_in_file"] = sum(sizes[k] for k in weights)
        row[kind + "_one_bit_each"] = sum((n + 7) // 8 for n in weights.values())   # bytes rounded up per tensor
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=irnet.models.names())
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless the binary weights take one bit each in every file (unfused and fused)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            rows.append(measure(name, folder))
    print("| model | parameters | float32 `state_dict` (torch.save) | packed file | ratio | packed file, `fuse=True` "
          "| binary weights: as float32 → in the file |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        w, in_file = r["packed_binary_weights"], r["packed_binary_in_file"]
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['float32']:,} B | {r['packed']:,} B | "
              f"{r['float32'] / r['packed']:.1f}x | {r['fused']:,} B | {4 * w:,} B → {in_file:,} B "
              f"(1/{4 * w / in_file:.1f}) |")
    bad = [f"{r['model']} ({kind})" for r in rows for kind in ("packed", "fused")
           if r[kind + "_binary_in_file"] != r[kind + "_one_bit_each"] or r[kind + "_binary_weights"] == 0]
    if args.check and bad:
        print(f"binary weights take more than one bit in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
