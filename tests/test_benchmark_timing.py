"""The benchmarks' shared timing helper (benchmarks/timing.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import time  # noqa: E402

from timing import time_round_robin  # noqa: E402


def test_round_robin_varies_each_methods_predecessor():
    """Every method runs once per round, and no method always follows the same one (what
    ran just before changes a call's time: see time_round_robin)."""
    calls = []
    names = ["float32", "xnor", "packed", "probe"]
    fns = {k: (lambda k=k: calls.append(k)) for k in names}
    before = {"xnor": lambda: calls.append("setting")}
    medians, minima = time_round_robin(fns, repeats=15, warmup=1, before=before)
    assert set(medians) == set(minima) == set(names) and all(v >= 0 for v in medians.values())
    timed = [k for k in calls if k != "setting"][len(names):]  # after the warmup calls
    rounds = [timed[i:i + len(names)] for i in range(0, len(timed), len(names))]
    assert len(rounds) == 15 and all(sorted(r) == sorted(names) for r in rounds)
    for k in names:  # (a rotation of one order gives each method the same predecessor 3 times in 4)
        preds = [timed[i - 1] for i in range(1, len(timed)) if timed[i] == k]
        top = max(preds.count(p) for p in set(preds))
        assert top <= 0.6 * len(preds), (k, preds)
    # the `before` hook runs right before every call of its method, untimed
    assert all(calls[i + 1] == "xnor" for i, c in enumerate(calls) if c == "setting")
    assert calls.count("setting") == 16


def test_bursts_time_calls_after_the_first():
    calls = []

    def slow_first():
        calls.append(time.perf_counter())
        if len(calls) % 4 == 1:  # the first call of each burst of 4 pays a cost
            time.sleep(0.02)

    med, mn = time_round_robin({"a": slow_first}, repeats=3, warmup=0, burst=4)
    assert len(calls) == 12 and med["a"] < 0.01 and mn["a"] < 0.01
    med1, _ = time_round_robin({"a": lambda: time.sleep(0.002)}, repeats=3, warmup=0, burst=1)
    assert med1["a"] >= 0.002
