"""mobileprune.measure.latency: interleaved timing, timers that time themselves, honest speedups."""

from __future__ import annotations

import time

import pytest

from mobileprune.measure.latency import compare_latency, speedup


class _Timer:
    """Claims fixed times without running anything: what compare_latency reports must be
    exactly these numbers (it must not time the call itself)."""

    def __init__(self, ms):
        self.ms, self.calls = list(ms), []

    def measure_ms(self, inner):
        self.calls.append(inner)
        return self.ms.pop(0)


def test_timers_report_their_own_times_with_min_median_max():
    t = _Timer([9.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # first value is the warm-up
    res = compare_latency({"t": t, "sleep": lambda: time.sleep(0.002)}, (), repeats=5, warmup=1,
                          threads=None, inner=3)
    assert t.calls == [1, 3, 3, 3, 3, 3]
    assert res["t"] | {} == {"median_ms": 3.0, "p10_ms": pytest.approx(1.4), "p90_ms": pytest.approx(4.6),
                             "min_ms": 1.0, "max_ms": 5.0, "runs": 5}
    assert res["sleep"]["min_ms"] >= 2.0 - 1e-6


def test_speedup_only_when_the_ranges_do_not_overlap():
    fast = {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1}
    slow = {"median_ms": 2.0, "p10_ms": 1.8, "p90_ms": 2.4}
    assert speedup(fast, slow) == pytest.approx(2.0)
    assert speedup(slow, fast) == pytest.approx(0.5)  # slower, clearly
    noisy = {"median_ms": 1.2, "p10_ms": 1.05, "p90_ms": 1.5}
    assert speedup(fast, noisy) is None


def test_rewarm_times_each_model_after_its_own_untimed_calls():
    """A model that is slow only right after another model ran (a cold cache): with
    rewarm=1 its timed calls follow its own warm-up call; with rewarm=0 they follow the
    other model's, so most of them are slow (the rotating order lets one round start with
    the model that ended the round before)."""
    last = []

    def cold_after_other():
        if last and last[-1] != "a":
            time.sleep(0.01)
        last.append("a")

    def other():
        last.append("b")

    models = {"a": cold_after_other, "b": other}
    cold = compare_latency(models, (), repeats=4, warmup=1, threads=None)
    assert cold["a"]["median_ms"] >= 10.0 - 1e-6
    last.clear()
    warm = compare_latency(models, (), repeats=4, warmup=1, threads=None, rewarm=1)
    assert warm["a"]["max_ms"] < 5.0
    assert last.count("a") == 1 + 4 * 2 and last.count("b") == 1 + 4 * 2


def test_rewarm_is_passed_to_timers():
    t = _Timer([1.0] * 4)
    t.measure_ms = lambda inner, warm=0: (t.calls.append((inner, warm)), t.ms.pop(0))[1]
    compare_latency({"t": t}, (), repeats=3, warmup=1, threads=None, inner=2, rewarm=1)
    assert t.calls == [(1, 0), (2, 1), (2, 1), (2, 1)]
    with pytest.raises(ValueError, match="rewarm"):
        compare_latency({"t": t}, (), repeats=1, rewarm=-1)
