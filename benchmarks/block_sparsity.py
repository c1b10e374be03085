"""Benchmark: 4x1 block sparsity against unstructured sparsity on the native engine.

The same model (random initialisation; latency does not depend on the values) is pruned
twice at the same per-layer sparsity, by the ADMM projection of
:mod:`mobileprune.sparsity.admm` with ``structure: unstructured`` (the largest weights)
and ``structure: block`` (the largest 4x1 tiles: 4 filters at one GEMM column), exported
to two sparse files and timed **in one process, interleaved**
(:func:`mobileprune.measure.latency.compare_latency`), with the engine's dense kernels on
the dense model as a third column. Pin the process to one core (``taskset -c 1``) and
one thread. Per layer, the engine's own profile (``SparseModel.profile``) of each file
and the kernel it chose (``describe``) show where the difference comes from.

    taskset -c 1 .venv/bin/python benchmarks/block_sparsity.py [--models fernet,resnet20]

Results: ``docs/benchmarks/block_sparsity_speed.{md,json}``. The accuracy side (what a
tile costs against single weights when the model is trained) is in
``docs/benchmarks/block_sparsity.md`` with the commands that produced it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobileprune.checkpoint import atomic_write_text
from mobileprune.deploy.sparse import export_sparse
from mobileprune.measure.latency import compare_latency, speedup, torch_threads
from mobileprune.models import build_model
from mobileprune.runtime import load
from mobileprune.sparsity.admm import project_layer
from mobileprune.sparsity.targets import resolve_targets

from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "block_sparsity_speed"
#: model -> (build_model kwargs, input shape)
MODELS = {"fernet": ({}, (1, 48, 48)), "resnet20": ({}, (3, 32, 32)), "lenet5": ({}, (1, 28, 28))}


def pruned(model: nn.Module, structure: str, sparsity: float) -> nn.Module:
    """``model`` with every Conv2d / Linear weight projected onto ``structure`` at
    ``sparsity`` (the ADMM projection), survivors scaled by 1 / sqrt(density) so the
    activations keep their size and the output check compares real numbers."""
    cfg = {"types": ["Conv2d", "Linear"], "default": {"structure": structure, "sparsity": sparsity}}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for t in resolve_targets(model, cfg):
            w = params[t.param_name]
            proj, mask = project_layer(t, w.detach())
            w.copy_(proj * (mask.numel() / max(1, int(mask.sum()))) ** 0.5)
    return model.eval()


def measure(arch: str, sparsity: float, batch: int, repeats: int, work: Path) -> dict:
    kwargs, shape = MODELS[arch]
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    models, engines = {}, {}
    for structure in ("dense", "unstructured", "block"):
        torch.manual_seed(0)
        m = build_model(arch, **kwargs).eval()
        models[structure] = m if structure == "dense" else pruned(m, structure, sparsity)
        path = work / f"{arch}_{structure}.mps"
        export_sparse(models[structure], x[:1], path)
        engines[structure] = load(path, threads=1, mode="dense" if structure == "dense" else "auto")
        with torch.no_grad():
            ref = models[structure](x).numpy()
        err = float(np.abs(engines[structure](x.numpy()) - ref).max() / np.abs(ref).max())
        assert err < 1e-4, f"{arch} {structure}: engine output differs from torch by {err:.2e}"
    xn = x.numpy()
    times = compare_latency(engines, xn, repeats=repeats, warmup=5, threads=1, inner=5 if batch == 1 else 1)
    layers = {s: [(lt.name, lt.seconds * 1e3, lt.describe) for lt in engines[s].profile(xn, repeats=repeats)
                  if lt.seconds > 0] for s in ("unstructured", "block")}
    return {"model": arch, "sparsity": sparsity, "batch": batch, "times_ms": times,
            "block_vs_unstructured": speedup(times["block"], times["unstructured"]),
            "ratio_median": times["unstructured"]["median_ms"] / times["block"]["median_ms"],
            "ratio_min": times["unstructured"]["min_ms"] / times["block"]["min_ms"],
            "layers": layers}


def _ms(t: dict) -> str:
    return f"{t['median_ms']:.3f} [{t['min_ms']:.3f}-{t['max_ms']:.3f}]"


def report(results: list[dict], command: str) -> str:
    lines = ["# Block (4x1) against unstructured sparsity on the native engine", "",
             f"Command: `{command}`. CPU: {cpu_model()}, "
             f"torch {torch.__version__}, 1 thread. Times in ms: median [min-max] of interleaved "
             "runs in one process; the ratio is unstructured / block (median, and min / min); "
             "\"within noise\" when the p10-p90 ranges overlap.", "",
             "| model | sparsity | batch | engine dense | unstructured | block | block vs unstructured (median) | (min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        t = r["times_ms"]
        sp = r["block_vs_unstructured"]
        lines.append(f"| {r['model']} | {r['sparsity']:.0%} | {r['batch']} | {_ms(t['dense'])} | "
                     f"{_ms(t['unstructured'])} | {_ms(t['block'])} | "
                     f"{'within noise' if sp is None else f'{sp:.2f}x'} ({r['ratio_median']:.2f}x) | "
                     f"{r['ratio_min']:.2f}x |")
    lines += ["", "Per layer (median ms of the engine's profile; kernel and storage the engine chose for the block file):", ""]
    for r in results:
        lines += [f"**{r['model']}, batch {r['batch']}**", "", "| layer | unstructured | block | block kernel |",
                  "|---|---:|---:|---|"]
        un = {n: s for n, s, _ in r["layers"]["unstructured"]}
        for name, sec, desc in r["layers"]["block"]:
            kernel = " ".join(desc.split()[2:4])
            lines.append(f"| {name} | {un.get(name, float('nan')):.3f} | {sec:.3f} | {kernel} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fernet,resnet20")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    bad = [m for m in args.models.split(",") if m not in MODELS]
    if bad:
        print(f"error: unknown model(s) {bad}; choose from {sorted(MODELS)}", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp, torch_threads(1):
        for arch in args.models.split(","):
            for b in (int(v) for v in args.batches.split(",")):
                print(f"== {arch} batch {b}", flush=True)
                results.append(measure(arch, args.sparsity, b, args.repeats, Path(tmp)))
    command = "taskset -c 1 .venv/bin/python benchmarks/block_sparsity.py " + " ".join(sys.argv[1:])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT.with_suffix(".json"), json.dumps({"command": command, "results": results}, indent=1))
    text = report(results, command.strip())
    atomic_write_text(OUT.with_suffix(".md"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
