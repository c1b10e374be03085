"""Honest latency measurement: several models timed in the same run, interleaved.

Timings on a shared machine are noisy, so :func:`compare_latency` warms every model
up, then runs ``repeats`` rounds in which each model is timed once (in rotating order,
so a burst of load hits all of them alike), and reports the median and the 10th/90th
percentiles in milliseconds. Speedups are ratios of medians measured in one run.
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


def compare_latency(models: Mapping[str, Any], example: Any, *, repeats: int = 30, warmup: int = 5,
                    threads: int | None = 1, inner: int = 1) -> dict[str, dict[str, float]]:
    """Median / p10 / p90 latency in ms of each callable in ``models`` on ``example``.

    ``inner`` calls are timed together and divided (use > 1 for sub-millisecond models).
    """
    if repeats < 1 or warmup < 0 or inner < 1:
        raise ValueError("repeats and inner must be >= 1 and warmup >= 0")
    calls = {k: _as_call(m, example) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in calls}
    names = list(calls)
    with torch_threads(threads):
        for _ in range(warmup):
            for k in names:
                calls[k]()
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                t0 = time.perf_counter()
                for _ in range(inner):
                    calls[k]()
                times[k].append((time.perf_counter() - t0) * 1000 / inner)
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) >= 2 else [ts[0]] * 9
        out[k] = {"median_ms": statistics.median(ts), "p10_ms": q[0], "p90_ms": q[-1], "runs": len(ts)}
    return out
