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
