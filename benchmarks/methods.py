"""Benchmark: MobilePrune (l0 group lasso) and its baselines on one suite, side by side.

A suite (benchmarks/suites/<name>.yaml) names a model, a data set, how to train the
dense model, and a list of methods (proximal configs of seed 000, or ADMM configs of
seed 003), each run from the same dense checkpoint. For every method the table gives
test accuracy, nonzero weights, compression, active units per layer, and the
parameters and MACs of the model after `compact` physically removes dead units. A suite
with a `goal` (MobilePrune's HAR numbers) also gets a conv-layer table: nonzero conv
weights, conv parameters after `compact` and channels kept in `goal.channel_layers`, with
the goal as its first row; `notes` are printed below the tables.
Results go to docs/benchmarks/methods_<suite>.{md,json}; the published rows of the
suite are printed beside them. Resumable: finished methods are reused; with `--methods`,
the rows not named are kept from the published JSON while their config is unchanged.

    MOBILEPRUNE_DATA=../shared/data .venv/bin/python benchmarks/methods.py lenet5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mobileprune.checkpoint import atomic_write_text, load_checkpoint, restore_model, save_checkpoint
from mobileprune.surgery.compact import compact
from mobileprune.models import build_model
from mobileprune.pipeline.prune import admm_prune, fit, proximal_prune
from mobileprune.sparsity.report import layer_report, size_of
from mobileprune.pipeline.train import evaluate

from _common import prepare

ROOT = Path(__file__).resolve().parents[1]


def dense_tag(settings) -> str:
    """Name of a row's own dense model (``dense:`` in a method entry), e.g. ``epochs30_shift2``."""
    return "_".join(f"{k}{v}" for k, v in sorted(settings.items()))


def dense_model(suite, name, train_loader, test_loader, work: Path, settings=None):
    """The suite's dense model: trained once (resumable per epoch), then reused.
    ``settings`` (a method's ``dense:`` entry) override the suite's ``dense:`` keys for a
    row that starts from (and distills from) its own dense model, e.g. one trained
    longer with random shifts; it is cached under its own name."""
    stem = "dense" if not settings else f"dense_{dense_tag(settings)}"
    path = work / f"{stem}.pt"
    if path.exists():
        ck = load_checkpoint(path)
        return restore_model(ck), ck["metrics"]
    d = {**suite["dense"], **(settings or {})}
    kwargs = suite.get("model_kwargs", {})
    model = build_model(suite["model"], **kwargs)
    res = fit(model, train_loader, epochs=d["epochs"], optimizer=d.get("optimizer", "adam"),
              lr=d.get("lr", 1e-3), weight_decay=d.get("weight_decay", 0.0), shift=d.get("shift", 0),
              eval_loader=test_loader, state_path=work / f"{stem}.state.pt",
              model_name=suite["model"], model_kwargs=kwargs,
              log=lambda s: print(f"[{name}] {s}", flush=True))
    metrics = {"test_accuracy": res["test_accuracy"], "train_seconds": res["train_seconds"]}
    save_checkpoint(path, model, model_name=suite["model"], model_kwargs=kwargs, metrics=metrics)
    return model, metrics


def conv_summary(model, small, dense, channel_layers=None):
    """The conv-layer numbers MobilePrune reports for its HAR CNNs: nonzero conv weights,
    conv parameters of the compacted model (dead channels removed) and output channels
    kept in ``channel_layers`` (default: every conv layer but the last, whose channels
    are the classifier's inputs), each as a count and a fraction of the dense model
    (``model`` may already have smaller layers: pruned with ``schedule.compact``)."""
    convs = {n: m for n, m in dense.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    if not convs:
        return None
    cut = dict(small.named_modules())
    pruned = dict(model.named_modules())
    channel_layers = list(channel_layers or list(convs)[:-1] or convs)
    weights = sum(m.weight.numel() for m in convs.values())
    nonzero = sum(int(torch.count_nonzero(pruned[n].weight)) for n in convs)
    params = sum(p.numel() for m in convs.values() for p in m.parameters())
    kept = sum(p.numel() for n in convs for p in cut[n].parameters())
    channels = sum(convs[n].out_channels for n in channel_layers)
    active = sum(cut[n].out_channels for n in channel_layers)
    return {"nonzero_weights": nonzero, "weights": weights, "nonzero_fraction": nonzero / weights,
            "compacted_parameters": kept, "parameters": params, "compacted_param_fraction": kept / params,
            "channel_layers": channel_layers, "channels_kept": active, "channels": channels,
            "channel_fraction": active / channels}


def summarise(model, example, acc, dense, seconds, channel_layers=None):
    """One row: counts of ``model`` against the ``dense`` model it was pruned from (the
    compressions, fractions and dense MACs stay honest when the pruning already removed
    dead units, ``schedule.compact``)."""
    rep = layer_report(model, example_input=example, original=size_of(dense))
    small = compact(model.eval(), example)
    srep = layer_report(small, example_input=example)
    t = rep["totals"]
    dense_params = sum(p.numel() for p in dense.parameters())
    return {"test_accuracy": acc, "conv": conv_summary(model, small, dense, channel_layers),
            "nonzero_weights": t["nonzero"], "weights": t["original_weights"],
            "weight_compression": t["weight_compression"],
            "nonzero_parameters": t["nonzero_parameters"], "param_compression": t["param_compression"],
            "active_units": {r["layer"]: [r["active_out"], r["active_in"]] for r in rep["layers"]},
            "compacted_parameters": srep["totals"]["parameters"],
            "compacted_param_fraction": srep["totals"]["parameters"] / dense_params,
            "compacted_macs": srep["totals"]["macs"],
            "dense_macs": layer_report(dense, example_input=example)["totals"]["macs"],
            "nonzero_macs": t["nonzero_macs"], "seconds": seconds}


GOAL_KEYS = (("conv_nonzero", "nonzero_fraction"), ("conv_params", "compacted_param_fraction"),
             ("channels", "channel_fraction"))


def goal_table(goal, results):
    """Markdown lines: the conv-layer quantities of the suite's ``goal`` for every method,
    the goal itself as the first row, and whether each method meets it (every fraction
    below the goal's, accuracy at least the goal's)."""
    ch = "channels kept (" + ", ".join(next(iter(results.values()))["conv"]["channel_layers"]) + ")"
    label = goal.get("label", "goal")
    lines = [f"Conv layers ({label} for {goal['method']}: below every fraction at >= "
             f"{100 * goal['test_accuracy']:.2f}% accuracy; params and channels counted after `compact` "
             "removes dead channels):", "",
             f"| method | test acc | nonzero conv weights | conv params after compact | {ch} | meets {label} |",
             "|---|---:|---:|---:|---:|:---:|",
             f"| **{label} ({goal['method']})** | >= {100 * goal['test_accuracy']:.2f}% | "
             + " | ".join(f"< {100 * goal[g]:.2f}%" for g, _ in GOAL_KEYS) + " | |"]
    for name, r in results.items():
        c = r["conv"]
        met = r["test_accuracy"] >= goal["test_accuracy"] and all(c[k] < goal[g] for g, k in GOAL_KEYS)
        lines.append(f"| {name} | {100 * r['test_accuracy']:.2f}% | {100 * c['nonzero_fraction']:.2f}% "
                     f"({c['nonzero_weights']:,}) | {100 * c['compacted_param_fraction']:.2f}% "
                     f"({c['compacted_parameters']:,}) | {100 * c['channel_fraction']:.2f}% "
                     f"({c['channels_kept']}/{c['channels']}) | {'yes' if met else 'no'} |")
    return lines


def whole_table(goal, results):
    """Markdown lines: nonzero parameters over the whole model (every layer, biases too)
    for every method, against the goal's ``whole_nonzero`` fraction at its accuracy."""
    acc, frac = goal["test_accuracy"], goal["whole_nonzero"]
    lines = [f"Whole model (every layer counted; goal: < {100 * frac:.0f}% nonzero parameters at "
             f">= {100 * acc:.2f}% accuracy):", "",
             "| method | test acc | nonzero parameters | of the dense model | meets |",
             "|---|---:|---:|---:|:---:|"]
    for name, r in results.items():
        f = 1.0 / r["param_compression"]
        met = r["test_accuracy"] >= acc and f < frac
        lines.append(f"| {name} | {100 * r['test_accuracy']:.2f}% | {r['nonzero_parameters']:,} | "
                     f"{100 * f:.2f}% | {'yes' if met else 'no'} |")
    return lines


def suite_file(suite: str) -> Path:
    """``benchmarks/suites/<suite>.yaml`` for a suite name, or ``suite`` itself when it is
    the path of a ``.yaml`` file."""
    if suite.endswith((".yaml", ".yml")):
        return Path(suite)
    return ROOT / "benchmarks" / "suites" / f"{suite}.yaml"


def earlier_rows(path: Path) -> dict:
    """The rows of a suite's published JSON, so that ``--methods`` re-runs some rows and
    keeps the others (each only while its config is unchanged: ``main`` compares)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("results", {})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="a suite name (benchmarks/suites/<name>.yaml) or a suite file")
    ap.add_argument("--data-dir")
    ap.add_argument("--methods", nargs="*", help="subset of the suite's method names")
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out-dir", default=str(ROOT / "docs" / "benchmarks"),
                    help="where methods_<suite>.{md,json} are written")
    args = ap.parse_args(argv)
    path = suite_file(args.suite)
    suite_name = path.stem
    ready = prepare(path, args.data_dir, Path(args.work_dir) / suite_name)
    if ready is None:
        return 0
    suite, bundle, train_loader, test_loader, work = ready
    unknown = sorted(set(args.methods or ()) - {m["name"] for m in suite["methods"]})
    if unknown:
        ap.error(f"unknown method name(s) {unknown}; {path} has {[m['name'] for m in suite['methods']]}")
    dense, dmetrics = dense_model(suite, suite_name, train_loader, test_loader, work)
    example = bundle.train[0][0].unsqueeze(0)
    goal = suite.get("goal") or {}
    channel_layers = goal.get("channel_layers")
    results = {"dense": summarise(dense, example, evaluate(dense, test_loader), dense,
                                  dmetrics.get("train_seconds", 0.0), channel_layers)}
    out = Path(args.out_dir) / f"methods_{suite_name}"
    earlier = earlier_rows(out.with_suffix(".json"))
    for method in suite["methods"]:
        name = method["name"]
        if args.methods and name not in args.methods:
            if earlier.get(name, {}).get("config") == method:  # kept from the published table
                results[name] = earlier[name]
            continue
        cfg = {k: v for k, v in method.items() if k not in ("name", "dense")}
        start = dense
        if method.get("dense"):  # the row's own dense model (a row of the table too)
            start, m = dense_model(suite, suite_name, train_loader, test_loader, work, method["dense"])
            key = f"dense_{dense_tag(method['dense'])}"
            if key not in results:
                results[key] = summarise(start, example, evaluate(start, test_loader), start,
                                         m.get("train_seconds", 0.0), channel_layers)
        done = work / f"{name}.json"
        if done.exists():
            results[name] = json.loads(done.read_text())
            continue
        model = copy.deepcopy(start)
        t0 = time.perf_counter()
        then = cfg.pop("then", None)
        run = admm_prune if cfg.pop("algorithm", "proximal") == "admm" else proximal_prune
        run(model, train_loader, cfg, eval_loader=test_loader, run_dir=work / f"{name}.run",
            progress=False, model_name=suite["model"], log=lambda s, n=name: print(f"[{n}] {s}", flush=True))
        if then:  # a second proximal stage on the result, distilling from the dense start
            proximal_prune(model, train_loader, then, eval_loader=test_loader,
                           run_dir=work / f"{name}.then.run", progress=False, model_name=suite["model"],
                           teacher=start, log=lambda s, n=name: print(f"[{n} then] {s}", flush=True))
        res = summarise(model, example, evaluate(model, test_loader), start, time.perf_counter() - t0,
                        channel_layers)
        res["config"] = method
        atomic_write_text(done, json.dumps(res, indent=2) + "\n")
        results[name] = res
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    cmd = f"{threads}MOBILEPRUNE_DATA=../shared/data .venv/bin/python benchmarks/methods.py {args.suite}"
    if args.methods:
        cmd += " --methods " + " ".join(args.methods)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"command": cmd, "suite": suite, "machine": platform.machine(), "results": results}, indent=2) + "\n")
    layers = list(results["dense"]["active_units"])
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    md = [f"# {suite['title']}", "", f"Command: `{cmd}` (suite `{shown}`).", "",
          "| method | test acc | nonzero weights | compression | active units (out/in) "
          "| params after compact | MACs after compact | time |",
          "|---|---:|---:|---:|---|---:|---:|---:|"]
    for name, r in results.items():
        units = " ".join(f"{r['active_units'][l][0]}/{r['active_units'][l][1]}" for l in layers)
        md.append(f"| {name} | {100 * r['test_accuracy']:.2f}% | {r['nonzero_weights']:,} | "
                  f"{r['weight_compression']:.1f}x | {units} | {r['compacted_parameters']:,} "
                  f"({100 * r['compacted_param_fraction']:.1f}%) | {r['compacted_macs']:,} | {r['seconds']:.0f} s |")
    if goal:
        md += ["", *goal_table(goal, results)]
    if goal.get("whole_nonzero"):
        md += ["", *whole_table(goal, results)]
    if suite.get("notes"):
        md += ["", suite["notes"].strip()]
    md += ["", f"Layers: {', '.join(layers)}.", "", "Published (for comparison):", "",
           suite.get("published", "").strip(), ""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
