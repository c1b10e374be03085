"""Benchmark: whole-model latency and storage of pruned models, every deployment path.

Runs `mobileprune.bench.benchmark_model` (dense torch, pruned torch, compacted torch,
the sparse runtime, ONNX Runtime and ExecuTorch of the dense and compacted models, all
in one interleaved run) on:

* the FER-2013 CNN of seed 003 Table 3 at the seed's per-layer sparsities (78.33%
  overall) and at a uniform 90%;
* LeNet-5 at 71x from the ADMM benchmark (runs/bench/lenet5/admm/stage1-71x.pt) when
  it exists.

Latency does not depend on the weight values, so the FER-2013 CNN uses its random
initialisation pruned by magnitude to the sparsities (unstructured, as in the seed).
Results: docs/benchmarks/whole_model/<case>/bench.{md,json,png} and a summary
docs/benchmarks/whole_model.md.

    .venv/bin/python benchmarks/whole_model.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mobileprune.bench import benchmark_model
from mobileprune.checkpoint import atomic_write_text, load_checkpoint, restore_model
from mobileprune.masks import apply_masks
from mobileprune.models import build_model
from mobileprune.projection import topk_mask

ROOT = Path(__file__).resolve().parents[1]
TABLE3 = {"conv1": 0.20, "conv2": 0.60, "conv3": 0.70, "conv4": 0.80, "conv5": 0.80, "conv6": 0.85,
          "conv7": 0.85, "conv8": 0.85, "conv9": 0.85, "fc1": 0.70, "fc2": 0.60, "fc3": 0.60}


def magnitude_prune(model, sparsity: dict[str, float]):
    pruned = build_model("fernet")
    pruned.load_state_dict(model.state_dict())
    masks = {}
    for name, s in sparsity.items():
        w = getattr(pruned, name).weight
        keep = int(w.numel() * (1 - s) + 1e-9)
        masks[f"{name}.weight"] = topk_mask(w.detach().abs(), keep)
    apply_masks(pruned, masks)
    return pruned.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    threads = tuple(int(t) for t in args.threads.split(","))
    out_root = ROOT / "docs" / "benchmarks" / "whole_model"
    torch.manual_seed(0)
    dense = build_model("fernet").eval()
    cases = {
        "fer2013_table3": (magnitude_prune(dense, TABLE3), dense, torch.randn(1, 1, 48, 48)),
        "fer2013_uniform90": (magnitude_prune(dense, {k: 0.9 for k in TABLE3}), dense, torch.randn(1, 1, 48, 48)),
    }
    lenet = ROOT / "runs" / "bench" / "lenet5" / "admm" / "stage1-71x.pt"
    if lenet.exists():
        cases["lenet5_71x"] = (restore_model(load_checkpoint(lenet)).eval(),
                               restore_model(load_checkpoint(ROOT / "runs/bench/lenet5/dense.pt")).eval(),
                               torch.randn(1, 1, 28, 28))
    summary = {}
    for name, (model, dense_model, example) in cases.items():
        print(f"== {name}", flush=True)
        res = benchmark_model(model, example, out_root / name, dense_model=dense_model,
                              batch_sizes=(1, 8), threads=threads, repeats=args.repeats,
                              pte_batch_sizes=(1,), title=name)
        summary[name] = res
    lines = ["# Whole-model latency and storage", "",
             f"Command: `.venv/bin/python benchmarks/whole_model.py --repeats {args.repeats} --threads {args.threads}` (details per case in "
             "`whole_model/<case>/bench.md`). Batch 1, 1 thread, median of interleaved runs.", "",
             "| case | dense torch (ms) | fastest dense runtime | sparse runtime (ms) | vs dense torch "
             "| vs fastest dense | compacted ORT (ms) | sparse file vs dense float32 |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, r in summary.items():
        b = r["backends"]
        key = "b1_t1"
        sp = b["sparse_runtime"]["latency"][key]
        fd = r["fastest_dense"][key]
        ort_c = b.get("onnx_compacted", {}).get("latency", {}).get(key, {}).get("median_ms")
        size = r["sizes"]["sparse"]["vs_dense_state"]
        lines.append(f"| {name} | {b['torch_dense']['latency'][key]['median_ms']:.3f} | "
                     f"{fd['backend']} {fd['median_ms']:.3f} | {sp['median_ms']:.3f} | "
                     f"{sp['speedup_vs_dense_torch']:.2f}x | {sp['speedup_vs_fastest_dense']:.2f}x | "
                     f"{'' if ort_c is None else f'{ort_c:.3f}'} | {size:.1f}x smaller |")
    lines += ["", "Targets (issue 5): FER-2013 CNN at 78.33% >= 2x and uniform 90% >= 3x vs dense "
              "torch, uniform 90% >= 2x vs the fastest dense runtime; LeNet-5 at 71x >= 4x vs dense "
              "torch and a sparse file >= 20x smaller than the dense float32 file."]
    atomic_write_text(ROOT / "docs" / "benchmarks" / "whole_model.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
