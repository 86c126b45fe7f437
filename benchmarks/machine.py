"""What every benchmark records about the machine it ran on (these machines are shared
and noisy, so the load average goes into every result file)."""
from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg():
    """[1, 5, 15]-minute load averages, or None where the OS has none."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory in the process (no mmap for big blocks, no
    trimming of the heap top), as jemalloc or tcmalloc would: a big tensor freed and
    allocated again then comes back without page faults.  With glibc's defaults an 800 KB
    output allocated right after another op freed its memory is fresh pages: ~200 page
    faults, +0.2-0.4 ms for a 0.3 ms ResNet-18 layer on the 2-core VM we measured (and the
    same absolute cost for float32, which takes longer).  Process-wide, for the benchmarks'
    --malloc keep; returns False where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))
