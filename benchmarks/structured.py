"""Benchmark: structured ADMM pruning + compaction, a smaller dense model that is faster.

A case (benchmarks/structured/<case>.yaml) names a model, a data set, how to train the
dense model, and a list of ADMM pipeline configs (seed 003, section 2.4: filter /
channel sets; coupled channels are pruned together). For each run the table gives the
test accuracy of the dense, pruned and compacted models, parameters and MACs before and
after `compact`, and the batch-1 latency of the dense and compacted models measured in
one run (interleaved, median of repeated runs after warm-up, 1 and 2 threads).
Results go to docs/benchmarks/structured_<case>.{md,json}. Resumable: the dense
training resumes per epoch, each pruning run per epoch, finished runs are reused. A
stage longer than a working session carries over in the repository: every file under
benchmarks/state/<case>/ (the dense run state dense.pt, a finished run's <run>.json) is
copied into a fresh work directory, where the run resumes or is reused.

    MOBILEPRUNE_DATA=../shared/data .venv/bin/python benchmarks/structured.py resnet20
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from mobileprune.checkpoint import atomic_write_text
from mobileprune.surgery.compact import compact
from mobileprune.measure.latency import compare_latency
from mobileprune.models import build_model
from mobileprune.pipeline.prune import PipelineConfig, admm_prune, fit
from mobileprune.sparsity.report import layer_report
from mobileprune.pipeline.train import evaluate

from _common import prepare

ROOT = Path(__file__).resolve().parents[1]


def _count(model, example):
    rep = layer_report(model, example_input=example)
    t = rep["totals"]
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "macs": t.get("macs"), "nonzero_weights": t["nonzero"], "weights": t["weights"]}


def _run(case, run, dense, train_loader, test_loader, example, work: Path, log,
         latency_threads=(1, 2)) -> dict:
    done = work / f"{run['name']}.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = PipelineConfig.from_dict(run["config"])
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    res = admm_prune(model, train_loader, cfg, eval_loader=test_loader, run_dir=work / run["name"],
                     progress=False, model_name=case["model"], model_kwargs=case.get("model_kwargs"),
                     log=lambda s: log(f"[{run['name']}] {s}"))
    seconds = time.perf_counter() - t0
    model.eval()
    small = compact(model, example)
    with torch.no_grad():
        diff = float((model(example) - small(example)).abs().max())
    out = {"name": run["name"], "start": run.get("from", "dense"),
           "accuracy_pruned": evaluate(model, test_loader),
           "accuracy_compacted": evaluate(small, test_loader),
           "compacted_max_abs_diff": diff, "prune_seconds": seconds,
           "targets_met": res.report["totals"]["all_targets_met"],
           "pruned": _count(model, example), "compacted": _count(small, example),
           "config": run["config"]}
    lat = {}
    for threads in latency_threads:
        lat[str(threads)] = compare_latency({"dense": dense.eval(), "compacted": small}, example,
                                            repeats=30, warmup=5, threads=threads)
    out["latency"] = lat
    torch.save(small, work / f"{run['name']}.compacted.pt")  # whole module: not weights-only
    atomic_write_text(done, json.dumps(out, indent=2) + "\n")
    return out


def carry_over(carried: Path, work: Path, log) -> None:
    """Copy every file under ``carried`` (a committed dense run state, a finished run's
    JSON) into ``work`` where the work directory lacks it: an earlier session's progress."""
    for f in sorted(carried.rglob("*")) if carried.is_dir() else []:
        dest = work / f.relative_to(carried)
        if f.is_file() and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
            log(f"[carried] {f.relative_to(ROOT)} -> {dest}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", help="benchmarks/structured/<case>.yaml")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench" / "structured"))
    ap.add_argument("--runs", nargs="*", help="subset of the case's run names")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for training")
    ap.add_argument("--latency-threads", type=int, nargs="+", default=[1, 2],
                    help="thread counts of the latency comparison")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ready = prepare(ROOT / "benchmarks" / "structured" / f"{args.case}.yaml", args.data_dir,
                    Path(args.work_dir) / args.case)
    if ready is None:
        return 0
    case, bundle, train_loader, test_loader, work = ready

    def log(s):
        print(s, flush=True)

    kwargs = case.get("model_kwargs") or {}
    carry_over(ROOT / "benchmarks" / "state" / args.case, work, log)
    dense = build_model(case["model"], **kwargs)
    d = case["dense"]
    dmetrics = fit(dense, train_loader, epochs=d["epochs"], optimizer=d.get("optimizer", "adam"),
                   lr=d.get("lr", 1e-3), weight_decay=d.get("weight_decay", 0.0),
                   momentum=d.get("momentum", 0.9), shift=d.get("shift", 0), eval_loader=test_loader,
                   state_path=work / "dense.pt", model_name=case["model"], model_kwargs=kwargs,
                   log=lambda s: log(f"[dense] {s}"))
    dense.eval()
    control = None
    if case.get("control"):  # the dense model trained on for the pruning runs' extra epochs
        c = case["control"]
        ctl = copy.deepcopy(dense)
        cm = fit(ctl, train_loader, epochs=c["epochs"], optimizer=c.get("optimizer", "adam"),
                 lr=c.get("lr", 1e-3), weight_decay=c.get("weight_decay", 0.0),
                 momentum=c.get("momentum", 0.9), shift=c.get("shift", 0), eval_loader=test_loader,
                 state_path=work / "dense-control.pt", model_name=case["model"], model_kwargs=kwargs,
                 log=lambda s: log(f"[control] {s}"))
        control = {"test_accuracy": cm["test_accuracy"], "train_seconds": cm["train_seconds"],
                   "settings": c}
    example = bundle.train[0][0].unsqueeze(0)
    results = []
    for run in case["runs"]:
        if args.runs and run["name"] not in args.runs:
            continue
        start = run.get("from", "dense")  # "control": prune the longer-trained dense model
        if start not in ("dense", "control") or (start == "control" and control is None):
            raise SystemExit(f"run {run['name']}: 'from' must be 'dense' or 'control' "
                             f"(with a 'control' section), got {start!r}")
        base = ctl.eval() if start == "control" else dense
        results.append(_run(case, run, base, train_loader, test_loader, example, work, log,
                            args.latency_threads))

    dense_counts = _count(dense, example)
    cmd = f"MOBILEPRUNE_DATA=../shared/data .venv/bin/python benchmarks/structured.py {args.case}"
    result = {"command": cmd, "case": case, "machine": f"{platform.machine()}, torch {torch.__version__}",
              "dense": {**dense_counts, "test_accuracy": dmetrics["test_accuracy"],
                        "train_seconds": dmetrics["train_seconds"], "epochs": d["epochs"]},
              "control": control, "runs": results}
    out = ROOT / "docs" / "benchmarks" / f"structured_{args.case}"
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    md = [f"# {case['title']}", "", f"Command: `{cmd}` (case `benchmarks/structured/{args.case}.yaml`). "
          f"Machine: {result['machine']}, 2 cores shared with other jobs.", "",
          f"Dense {case['model']}: **{100 * dmetrics['test_accuracy']:.2f}%** test accuracy after "
          f"{d['epochs']} epochs ({dmetrics['train_seconds'] / 60:.0f} min); "
          f"{dense_counts['parameters']:,} parameters, {dense_counts['macs']:,} MACs.", ""]
    if control is not None:
        c = control["settings"]
        md += [f"Control: the same dense model trained {c['epochs']} more epochs "
               f"({c.get('optimizer', 'adam')}, lr {c.get('lr', 1e-3)} with cosine decay"
               + (f", shifts of up to {c['shift']} pixels" if c.get("shift") else "")
               + "): "
               f"**{100 * control['test_accuracy']:.2f}%**.", ""]
    md += [
          "| run | pruned from | accuracy pruned / compacted | change vs that model | parameters (compacted) | MACs (compacted) "
          "| MAC reduction | latency b1 1 thread dense / compacted (ms) | speedup 1 thr | speedup 2 thr "
          "| max abs diff pruned vs compacted |",
          "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    start_acc = {"dense": dmetrics["test_accuracy"],
                 "control": control["test_accuracy"] if control else None}
    for r in results:
        r0 = r.get("start", "dense")
        l1 = r["latency"]["1"]
        l2 = r["latency"].get("2")
        md.append(
            f"| {r['name']} | {r0} ({100 * start_acc[r0]:.2f}%) "
            f"| {100 * r['accuracy_pruned']:.2f}% / {100 * r['accuracy_compacted']:.2f}% "
            f"| {100 * (r['accuracy_compacted'] - start_acc[r0]):+.2f} "
            f"| {r['compacted']['parameters']:,} | {r['compacted']['macs']:,} "
            f"| {dense_counts['macs'] / r['compacted']['macs']:.2f}x "
            f"| {l1['dense']['median_ms']:.3f} / {l1['compacted']['median_ms']:.3f} "
            f"| {l1['dense']['median_ms'] / l1['compacted']['median_ms']:.2f}x "
            + (f"| {l2['dense']['median_ms'] / l2['compacted']['median_ms']:.2f}x " if l2 else "| - ")
            + f"| {r['compacted_max_abs_diff']:.1e} |")
    if control is not None:
        md += [""] + [f"- {r['name']} against the control: "
                      f"{100 * (r['accuracy_compacted'] - control['test_accuracy']):+.2f} points"
                      for r in results if r.get("start", "dense") == "dense"]
    md += ["", case.get("published", "").strip(), ""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
