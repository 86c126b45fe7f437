"""Timing shared by the benchmarks: round-robin repeats on a shared, noisy machine."""
from __future__ import annotations

import random
import statistics
import time


def time_round_robin(fns: dict, repeats: int, warmup: int = 2, before: dict | None = None):
    """Times every callable of ``fns`` ``repeats`` times, one of each per round, after
    ``warmup`` untimed calls each, so that load from other processes hits all alike.
    Each round runs the methods in a fresh random order (seeded: the same orders every run),
    so that no method always runs right after the same one: what ran just before changes a
    call's time (right after float32's big output is freed, the next large allocation comes
    back as fresh pages from the C allocator; right after a 2 ms float32 conv, a 0.3 ms
    binary conv finds its caches cold: +0.05-0.1 ms on the 64@56 batch-1 layer here).  A
    rotation of one fixed order is not enough: it keeps every method's predecessor.  Returns
    (medians, minima) in seconds, keyed like ``fns``; the minimum is the least disturbed
    repeat.  ``before[k]``, if given, runs untimed before every call of ``fns[k]`` (e.g. a
    kernel setting)."""
    before = before or {}
    nothing = lambda: None  # noqa: E731
    for k, fn in fns.items():
        for _ in range(warmup):
            before.get(k, nothing)()
            fn()
    samples = {k: [] for k in fns}
    names = list(fns)
    order = random.Random(0)
    for _ in range(repeats):
        order.shuffle(names)
        for k in names:
            before.get(k, nothing)()
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}, {k: min(v) for k, v in samples.items()}
