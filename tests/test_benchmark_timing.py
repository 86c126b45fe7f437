"""The benchmarks' shared timing helpers (benchmarks/timing.py)."""
import time

from timing import time_round_robin, time_round_robin_device


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


def test_time_round_robin_device_counts_calls_per_sample():
    calls = {"a": 0, "b": 0}
    fns = {k: (lambda k=k: calls.__setitem__(k, calls[k] + 1)) for k in calls}
    medians, minima = time_round_robin_device(fns, repeats=3, iters=4, warmup=2, device="cpu")
    assert calls == {"a": 2 + 3 * 4, "b": 2 + 3 * 4}
    assert set(medians) == {"a", "b"} and all(0 <= minima[k] <= medians[k] for k in calls)
