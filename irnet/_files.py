"""File helpers shared by irnet's writers."""
from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write", "atomic_write_bytes"]


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str, write) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` so that a reader (or a crash)
    sees the old file or the new one, never a torn one: a temporary file in the same folder,
    flushed to disk, then ``os.replace``-d over ``path`` (and the folder synced so the rename
    lasts)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
