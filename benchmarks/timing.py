"""Timing shared by the benchmarks: round-robin repeats on a shared, noisy machine."""
from __future__ import annotations

import random
import statistics
import time


def round_robin(fns: dict, repeats: int, warmup: int, before: dict | None, measure):
    """The shared loop: ``warmup`` untimed calls of each method, then ``repeats`` rounds,
    each in a fresh seeded random order, ``before[k]`` untimed right before each sample of
    method k; ``measure(fn)`` runs and times one sample.  Returns {method: [samples]}."""
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
            samples[k].append(measure(fns[k]))
    return samples


def _medians_minima(fns: dict, repeats: int, warmup: int, before: dict | None, measure):
    """:func:`round_robin`'s samples reduced to (medians, minima), keyed like ``fns``."""
    samples = round_robin(fns, repeats, warmup, before, measure)
    return {k: statistics.median(v) for k, v in samples.items()}, {k: min(v) for k, v in samples.items()}


def time_round_robin(fns: dict, repeats: int, warmup: int = 2, before: dict | None = None, burst: int = 1):
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
    kernel setting).

    ``burst`` > 1: a sample of a method is ``burst`` calls back to back, the first untimed
    and the sample the median of the others: the steady state of a model called in a loop
    (as a deployed network is), without the first call after another method's work, which
    pays for that method's leftovers (another library's worker threads still spinning,
    caches holding its data: OpenVINO right after a torch model, or a torch model right
    after OpenVINO, took 1.1-1.6x their back-to-back time here)."""
    def measure(fn):
        if burst > 1:
            fn()
            times = []
            for _ in range(burst - 1):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return _medians_minima(fns, repeats, warmup, before, measure)


def time_round_robin_device(fns: dict, repeats: int, iters: int, warmup: int = 2, before: dict | None = None,
                            device: str = "cuda"):
    """Like :func:`time_round_robin`, for device work: one sample of a method is ``iters``
    back-to-back calls, timed with CUDA events recorded on the current stream around them
    (device time, not launch time; the host waits for the end event before the next sample),
    divided by ``iters``.  ``device="cpu"`` times the same loop with the host clock (for
    checking a GPU script's plumbing on a machine without a GPU: such numbers are CPU
    numbers).  Returns (medians, minima) in milliseconds per call."""
    import torch

    cuda = torch.device(device).type == "cuda"

    def measure(fn):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e3 / iters

    if cuda:
        torch.cuda.synchronize()
    return _medians_minima(fns, repeats, warmup, before, measure)
