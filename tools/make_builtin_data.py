"""Regenerate irnet's built-in dataset ``irnet/data/mnist_builtin.npz`` from the MNIST
training and test files in the ``.npz`` format (``x``: uint8 N x 28 x 28, ``y``: labels).

    python tools/make_builtin_data.py /path/to/mnist_train.npz /path/to/mnist_test.npz

Takes, in file order, the first ``--train-per-class`` images of each digit from the
training file and the first ``--test-per-class`` of each digit from the test file
(class-balanced; the order within the subset is the file order), and writes one
compressed npz with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8).
"""
from __future__ import annotations

import argparse
import os

import numpy as np


def first_per_class(x: np.ndarray, y: np.ndarray, per_class: int):
    y = y.astype(np.int64)
    keep = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            raise SystemExit(f"class {c} has {len(idx)} images, fewer than the {per_class} asked for")
        keep[idx[:per_class]] = True
    return x[keep], y[keep].astype(np.uint8)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train", help="MNIST training set .npz (x, y)")
    p.add_argument("test", help="MNIST test set .npz (x, y)")
    p.add_argument("--train-per-class", type=int, default=1200)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--out", default=os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "irnet",
                                                                  "data", "mnist_builtin.npz")))
    a = p.parse_args()
    with np.load(a.train) as d:
        x_train, y_train = first_per_class(d["x"], d["y"], a.train_per_class)
    with np.load(a.test) as d:
        x_test, y_test = first_per_class(d["x"], d["y"], a.test_per_class)
    if x_train.dtype != np.uint8 or x_train.ndim != 3:
        raise SystemExit(f"expected uint8 N x H x W images, got {x_train.dtype} {x_train.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    np.savez_compressed(a.out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"wrote {a.out}: train {x_train.shape} test {x_test.shape}, {os.path.getsize(a.out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
