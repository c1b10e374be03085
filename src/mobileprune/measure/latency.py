"""Honest latency measurement: several models timed in the same run, interleaved.

Timings on a shared machine are noisy, so :func:`compare_latency` warms every model
up, then runs ``repeats`` rounds in which each model is timed once (in rotating order,
so a burst of load hits all of them alike), and reports the minimum, 10th percentile,
median, 90th percentile and maximum in milliseconds. Speedups are ratios of medians
measured in one run; :func:`speedup` calls a ratio a speedup only when the two ranges do
not overlap.

With ``rewarm=k`` every model first runs ``k`` untimed calls at the start of its turn
in each round: the timed calls then find the model's own weights in cache and its
threads awake, as in back-to-back serving, while the rounds still interleave the models
(``rewarm=0`` times each model right after the others' calls evicted it).

An entry of ``models`` may also be a *timer*: an object with a method
``measure_ms(inner, warm=0) -> float`` that runs its model ``warm`` times untimed, then
``inner`` times, and returns the mean milliseconds of those ``inner`` calls, timed by
itself (an engine in another process, whose round trip must not count).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Mapping

import torch


@contextmanager
def torch_threads(n: int | None):
    """Temporarily set ``torch.set_num_threads(n)`` (``None``: unchanged)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _as_call(fn: Any, example: Any) -> Callable[[], Any]:
    args = example if isinstance(example, tuple) else (example,)
    if isinstance(fn, torch.nn.Module):
        fn.eval()

    def call():
        with torch.inference_mode():
            return fn(*args)
    return call


def _as_timer(fn: Any, example: Any) -> Callable[..., float]:
    if hasattr(fn, "measure_ms"):
        return fn.measure_ms
    call = _as_call(fn, example)

    def timer(inner: int, warm: int = 0) -> float:
        for _ in range(warm):
            call()
        t0 = time.perf_counter()
        for _ in range(inner):
            call()
        return (time.perf_counter() - t0) * 1000 / inner
    return timer


def speedup(fast: Mapping[str, float], slow: Mapping[str, float]) -> float | None:
    """``slow`` median / ``fast`` median when ``fast``'s slowest run (p90) is faster than
    ``slow``'s fastest (p10); ``None`` ("within noise") when the two ranges overlap."""
    if fast["p90_ms"] < slow["p10_ms"] or slow["p90_ms"] < fast["p10_ms"]:
        return slow["median_ms"] / fast["median_ms"]
    return None


def compare_latency(models: Mapping[str, Any], example: Any, *, repeats: int = 30, warmup: int = 5,
                    threads: int | None = 1, inner: int = 1,
                    rewarm: int = 0) -> dict[str, dict[str, float]]:
    """Median / p10 / p90 latency in ms of each callable in ``models`` on ``example``.

    ``inner`` calls are timed together and divided (use > 1 for sub-millisecond models);
    ``rewarm`` untimed calls precede them in every round (see the module's docstring).
    """
    if repeats < 1 or warmup < 0 or inner < 1 or rewarm < 0:
        raise ValueError("repeats and inner must be >= 1, warmup and rewarm >= 0")
    timers = {k: _as_timer(m, example) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in timers}
    names = list(timers)
    with torch_threads(threads):
        for _ in range(warmup):
            for k in names:
                timers[k](1)
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                times[k].append(timers[k](inner, rewarm) if rewarm else timers[k](inner))
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) >= 2 else [ts[0]] * 9
        out[k] = {"median_ms": statistics.median(ts), "p10_ms": q[0], "p90_ms": q[-1],
                  "min_ms": min(ts), "max_ms": max(ts), "runs": len(ts)}
    return out
