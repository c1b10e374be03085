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
