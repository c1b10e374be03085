"""Benchmark: how the native engine scales from 1 to 2 threads (issue 18: >= 1.7x at batch 16).

One process pinned to CPUs 0-1 runs one case of ``benchmarks/engines.py`` (the same
model and weights) on two plans of the native engine, 1 thread and 2 threads, in
alternating blocks of back-to-back calls (ABAB..., after warm-up): within a block the
engine runs as a serving loop does, so its worker threads stay awake; alternating blocks
spreads the machine's drift over both settings. ``engines.py`` interleaves single calls of
every runtime instead, so there each call starts after another runtime's threads have run
(its cold-start figure). Reports the median and min of the per-call times and the ratio,
and ONNX Runtime's scaling measured the same way when ``--ort`` is given.

    taskset -c 0,1 .venv/bin/python benchmarks/thread_scaling.py [--case fer2013_uniform90] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402
from engines import CASES, build_case  # noqa: E402

import mobileprune  # noqa: E402
from mobileprune.runtime import load  # noqa: E402


def _blocks(calls: dict, blocks: int, per_block: int) -> dict[str, list[float]]:
    """Per-call seconds of each callable, in alternating blocks of back-to-back calls."""
    times = {k: [] for k in calls}
    for k, fn in calls.items():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(blocks):
        for k, fn in calls.items():
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return times


def _ort_calls(model, x: torch.Tensor, tmp: Path) -> dict:
    import onnxruntime as ort
    path = tmp / "m.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}})
    calls = {}
    for t in (1, 2):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = t, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        calls[f"onnxruntime {t}t"] = lambda s=sess: s.run(None, {"x": xn})
    return calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="fer2013_uniform90", choices=sorted(CASES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--per-block", type=int, default=10)
    ap.add_argument("--ort", action="store_true", help="also ONNX Runtime, measured the same way")
    args = ap.parse_args()
    model, shape = build_case(args.case)
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        mobileprune.export_native(model, x[:1], Path(tmp) / "native")
        path = next((Path(tmp) / "native").glob("*.mps"))
        calls = {}
        for t in (1, 2):
            sm = load(path)
            sm.threads = t
            calls[f"mobileprune {t}t"] = lambda m=sm: m(xn)
        if args.ort:
            calls.update(_ort_calls(model, x, Path(tmp)))
        times = _blocks(calls, args.blocks, args.per_block)
    print(f"{args.case}, batch {args.batch}, {cpu_model()}; {args.blocks} alternating blocks of "
          f"{args.per_block} back-to-back calls; ms per call, median [min]\n")
    print("| runtime | 1 thread | 2 threads | 2 threads vs 1 (median / min) |\n|---|---:|---:|---:|")
    for name in dict.fromkeys(k.rsplit(" ", 1)[0] for k in times):
        a, b = np.asarray(times[f"{name} 1t"]), np.asarray(times[f"{name} 2t"])
        print(f"| {name} | {np.median(a) * 1e3:.2f} [{a.min() * 1e3:.2f}] | "
              f"{np.median(b) * 1e3:.2f} [{b.min() * 1e3:.2f}] | "
              f"{np.median(a) / np.median(b):.2f}x / {a.min() / b.min():.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
