"""Benchmark: one Linear layer in 4x1 tiles (BSR) against the same layer unstructured (CSR).

The FER-2013 CNN's fc1 (4608 -> 64 by default) pruned to the same sparsity both ways by the
ADMM projection (``structure: block`` and unstructured), exported with
``mobileprune.export_native`` and run by the native engine in one process, one thread,
calls interleaved (median and min after warm-up). Prints each plan line (the kernel the
engine chose and its own create-time timing) and a Markdown table.

    taskset -c 1 .venv/bin/python benchmarks/block_linear.py [--in 4608 --out 64 --sparsity 0.9]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import mobileprune
from mobileprune.runtime import load
from mobileprune.sparsity.admm import project_layer
from mobileprune.sparsity.targets import resolve_targets


def pruned_layer(n_in: int, n_out: int, sparsity: float, structure: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(n_in, n_out)).eval()
    spec = {"structure": structure, "sparsity": sparsity}
    with torch.no_grad():
        params = dict(model.named_parameters())
        for t in resolve_targets(model, {"types": ["Linear"], "default": spec}):
            proj, _ = project_layer(t, params[t.param_name])
            params[t.param_name].copy_(proj)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in", dest="n_in", type=int, default=4608)
    ap.add_argument("--out", dest="n_out", type=int, default=64)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for structure in ("unstructured", "block"):
            model = pruned_layer(args.n_in, args.n_out, args.sparsity, structure)
            out = Path(tmp) / structure
            mobileprune.export_native(model, torch.randn(1, args.n_in), out)
            engines[structure] = load(next(out.glob("*.mps")))
    rows = []
    for n in (int(b) for b in args.batches.split(",")):
        x = np.random.default_rng(0).standard_normal((n, args.n_in)).astype(np.float32)
        times = {k: [] for k in engines}
        for r in range(args.calls):
            for k, sm in engines.items():
                t0 = time.perf_counter()
                sm(x)
                if r >= args.calls // 10:
                    times[k].append(time.perf_counter() - t0)
        for k, sm in engines.items():
            print(f"batch {n} {k}: {sm.describe(n).splitlines()[0]}")
        med = {k: float(np.median(v)) * 1e6 for k, v in times.items()}
        mins = {k: min(v) * 1e6 for k, v in times.items()}
        rows.append(f"| {n} | {med['unstructured']:.1f} [{mins['unstructured']:.1f}] | "
                    f"{med['block']:.1f} [{mins['block']:.1f}] | "
                    f"{med['unstructured'] / med['block']:.2f}x |")
    print(f"\nLinear {args.n_in} -> {args.n_out} at {args.sparsity:.0%}, one thread, "
          f"{args.calls} interleaved calls (us: median [min], Python call included)\n")
    print("| batch | unstructured (CSR) | block (BSR) | block speedup |\n|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
