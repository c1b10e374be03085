"""Benchmark: ADMM pruning of LeNet-5 on full MNIST (seed 003, Table 1).

Trains a dense LeNet-5 (or reuses runs/bench/lenet5-dense.pt), then runs the
progressive ADMM schedule of benchmarks/lenet5_admm.yaml (71x -> 140x -> 246x)
and writes docs/benchmarks/lenet5_admm.{md,json} with accuracy, nonzeros, compression
and wall time per stage. Resumable: rerun after an interruption.

    MOBILEPRUNE_DATA=../shared/data .venv/bin/python benchmarks/lenet5_admm.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from mobileprune.checkpoint import atomic_write_text, load_checkpoint, restore_model, save_checkpoint
from mobileprune.surgery.compact import compact
from mobileprune.data.registry import load_dataset, make_loaders
from mobileprune.errors import DataError
from mobileprune.models import build_model
from mobileprune.pipeline.prune import PipelineConfig, admm_prune
from mobileprune.sparsity.report import layer_report, to_markdown
from mobileprune.sparsity.targets import resolve_targets
from mobileprune.pipeline.train import cosine_lr, evaluate, make_optimizer, train_epoch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(ROOT / "benchmarks" / "lenet5_admm.yaml")
DEFAULT_WORK = str(ROOT / "runs" / "bench" / "lenet5")
DEFAULT_OUT = str(ROOT / "docs" / "benchmarks" / "lenet5_admm")


def _rel(path: str) -> str:
    """``path`` relative to the repository when it is inside it (for the docs)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--work-dir", default=DEFAULT_WORK)
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--dense-epochs", type=int, default=20)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    try:
        bundle = load_dataset("mnist", args.data_dir)
    except DataError as exc:
        print(f"skipping benchmark: {exc}", file=sys.stderr)
        return 0
    train_loader, test_loader = make_loaders(bundle, batch_size=128, seed=args.seed)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    dense_path = work / "dense.pt"
    if dense_path.exists():
        model = restore_model(load_checkpoint(dense_path))
        dense_seconds = load_checkpoint(dense_path)["metrics"]["train_seconds"]
    else:
        model = build_model("lenet5")
        opt = make_optimizer("adam", model.parameters(), 1e-3)
        sched = cosine_lr(opt, args.dense_epochs * len(train_loader))
        t0 = time.perf_counter()
        for ep in range(args.dense_epochs):
            s = train_epoch(model, train_loader, opt, scheduler=sched, progress=False)
            print(f"dense epoch {ep + 1}: loss {s['loss']:.4f} test {100 * evaluate(model, test_loader):.2f}%",
                  flush=True)
        dense_seconds = time.perf_counter() - t0
        save_checkpoint(dense_path, model, model_name="lenet5",
                        metrics={"test_accuracy": evaluate(model, test_loader),
                                 "train_seconds": dense_seconds})
    dense_acc = evaluate(model, test_loader)
    print(f"dense LeNet-5: {100 * dense_acc:.2f}%", flush=True)

    cfg = PipelineConfig.from_yaml(args.config)
    t0 = time.perf_counter()
    res = admm_prune(model, train_loader, cfg, eval_loader=test_loader, run_dir=work / "admm",
                     progress=False, model_name="lenet5", log=lambda s: print(s, flush=True))
    rows = []
    for i, stage in enumerate(cfg.stages):
        label = f"stage{i + 1}" + (f"-{stage.name}" if stage.name else "")
        ck = load_checkpoint(work / "admm" / f"{label}.pt")
        m = restore_model(ck)
        rep = layer_report(m, resolve_targets(m, stage))
        secs = sum(res.report["seconds"].get(f"{label} {phase}", 0) for phase in ("admm", "retrain"))
        t = rep["totals"]
        # weights of units that cannot affect the output (compaction removes them exactly)
        small = compact(m.eval(), torch.zeros(1, 1, 28, 28))
        small_rep = layer_report(small)
        live = small_rep["totals"]["nonzero"]
        u = {r["layer"]: r for r in small_rep["layers"]}
        # MobilePrune's convention (seed 000): conv1, conv2 filters; fc1, fc2 inputs
        units = (f"{u['conv1']['active_out']}-{u['conv2']['active_out']}-"
                 f"{u['fc1']['active_in']}-{u['fc2']['active_in']}")
        rows.append({"stage": label, "live_nonzero_weights": live, "active_units": units,
                     "live_weight_compression": t["weights"] / max(live, 1), "test_accuracy": ck["metrics"]["accuracy_after"],
                     "accuracy_change_points": 100 * (ck["metrics"]["accuracy_after"] - dense_acc),
                     "nonzero_weights": t["nonzero"], "weight_compression": t["weight_compression"],
                     "nonzero_parameters": t["nonzero_parameters"],
                     "param_compression": t["param_compression"],
                     "all_targets_met": t["all_targets_met"], "wall_seconds": secs,
                     "layers": {r["layer"]: r["nonzero"] for r in rep["layers"]}})
    command = "MOBILEPRUNE_DATA=../shared/data .venv/bin/python benchmarks/lenet5_admm.py"
    for flag, value, default in (("--config", args.config, DEFAULT_CONFIG),
                                 ("--work-dir", args.work_dir, DEFAULT_WORK),
                                 ("--out", args.out, DEFAULT_OUT)):
        if Path(value).resolve() != Path(default).resolve():
            command += f" {flag} {_rel(value)}"
    result = {"command": command,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "dense_test_accuracy": dense_acc, "dense_train_seconds": dense_seconds,
              "config": cfg.to_dict(), "stages": rows, "history": res.history}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    md = ["# LeNet-5 on full MNIST: progressive ADMM pruning", "",
          f"Command: `{result['command']}` (config `{_rel(args.config)}`).",
          f"Machine: {result['machine']}. Dense LeNet-5 (431,080 parameters): "
          f"**{100 * dense_acc:.2f}%** test accuracy after {args.dense_epochs} epochs "
          f"({dense_seconds:.0f} s).", "",
          "| stage | nonzero weights | weight compression | param. compression (with biases) "
          "| test accuracy | change vs dense | conv1/conv2/fc1/fc2 nonzeros | stage wall time "
          "| live weights after `compact` (compression) | active units |",
          "|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        L = r["layers"]
        md.append(f"| {r['stage']} | {r['nonzero_weights']:,} | {r['weight_compression']:.1f}x | "
                  f"{r['param_compression']:.1f}x | {100 * r['test_accuracy']:.2f}% | "
                  f"{r['accuracy_change_points']:+.2f} | {L['conv1']}/{L['conv2']}/{L['fc1']}/{L['fc2']} | "
                  f"{r['wall_seconds']:.0f} s | {r['live_nonzero_weights']:,} "
                  f"({r['live_weight_compression']:.0f}x) | {r['active_units']} |")
    md += ["", "Live weights: nonzeros left after `mobileprune.surgery.compact` removes the units that cannot "
           "affect the output (a hidden neuron whose outgoing weights were all pruned, a filter "
           "nothing reads); the outputs are unchanged, so the model really needs only these. "
           "Active units: conv1 and conv2 filters, fc1 and fc2 inputs of that compacted model "
           "(MobilePrune's convention, e.g. 14-8-82-39).",
           "", "Seed 003 (Table 1): 71.2x with no loss; 246x (1.75K weights) with 0.2 points "
           "loss from 99.2%. Peers measured on this machine (landscape.md): torch.nn.utils.prune "
           "iterative 71x 98.72%, 250x 96.01%; NNI ADMMPruner 71x 98.86%, 250x 95.39% (10 epochs).",
           "", "Final per-layer report:", "", to_markdown(res.report)]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
