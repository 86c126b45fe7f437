"""Timing shared by the benchmarks: round-robin repeats on a shared, noisy machine."""
from __future__ import annotations

import statistics
import time


def time_round_robin(fns: dict, repeats: int, warmup: int = 2, before: dict | None = None):
    """Times every callable of ``fns`` ``repeats`` times, one of each per round, after
    ``warmup`` untimed calls each, so that load from other processes hits all alike.
    The order rotates every round: a method must not always run right after the same one
    (right after float32's big output is freed, the next large allocation comes back as
    fresh pages, and page faults, from the C allocator).  Returns (medians, minima) in
    seconds, keyed like ``fns``; the minimum is the least disturbed repeat.  ``before[k]``,
    if given, runs untimed before every call of ``fns[k]`` (e.g. a kernel setting)."""
    before = before or {}
    nothing = lambda: None  # noqa: E731
    for k, fn in fns.items():
        for _ in range(warmup):
            before.get(k, nothing)()
            fn()
    samples = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            before.get(k, nothing)()
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}, {k: min(v) for k, v in samples.items()}
