"""Benchmark: one dense LeNet-5 (full MNIST) pruned by the peers and by mobileprune, side by side.

Methods (issue 21, item 4), each from the same dense checkpoint, at the same epoch budget
(every epoch of every phase counts) and to the same compression of the prunable weights
(conv1, conv2, fc1, fc2: 430,500 weights):

* ``torch_oneshot``: ``torch.nn.utils.prune.global_unstructured`` (L1), one shot, then
  ``budget`` epochs of fine-tuning through torch's masks;
* ``torch_iterative``: the same pruning done gradually (Zhu & Gupta 2017 cubic schedule
  ``s_t = s (1 - (1 - t / T)^3)``, a step every quarter epoch over the first 3/4 of the
  budget, then fine-tuning at the final sparsity);
* ``torch_pruning``: Torch-Pruning 1.6 channel pruning (``MagnitudePruner`` with
  ``GroupMagnitudeImportance(p=2)``, the group-norm importance; fc2's outputs kept), one
  uniform ratio searched so that the compacted model's weight count is as close to the
  target as whole channels allow, then ``budget`` epochs of fine-tuning;
* ``admm``: :func:`mobileprune.admm_prune` (seed 003), per-layer ``keep`` targets: the
  library's ``lenet5-71x`` allocation scaled to the target, ceil(budget / 2) ADMM epochs
  then masked retraining, the config's optimizer settings and distillation, with two
  changes for budgets shorter than the config's 15 + 20 epochs: ``rho_final`` = the
  config's ``rho_max`` (rho ends where the long schedule ends, whatever the ADMM epochs)
  and retraining at Adam 1e-3 (``ADMM_RETRAIN_LR``; the config's 3e-4 suits 20 epochs);
* ``l0_group_lasso``: :func:`mobileprune.proximal_prune` (seed 000, l0 sparse group lasso),
  max(1, budget // 2) rounds of one prox epoch with a geometric eta ramp up to the eta
  whose threshold leaves the target's count of the dense weights, trimmed / refilled to
  the target, the rest of the budget as masked retraining with distillation.

Each finished cell (method, budget, target) is written to the JSON at once (atomically);
a re-run skips finished cells, so the grid resumes across sessions. The markdown is
generated from the JSON. Batch-1 latency: the mobileprune sparse runtime
(:func:`mobileprune.export_sparse`) for unstructured models, torch for the compacted
channel-pruned model, both timed with :func:`mobileprune.measure.latency.compare_latency`.

    OMP_NUM_THREADS=1 MOBILEPRUNE_DATA=../shared/data taskset -c 0 .venv/bin/python \
        benchmarks/peers.py --budgets 4,10 --targets 10,71,250
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from mobileprune.checkpoint import atomic_write_text, load_checkpoint, restore_model
from mobileprune.math.projection import proportional_counts
from mobileprune.measure.latency import compare_latency
from mobileprune.pipeline.prune import admm_prune, proximal_prune
from mobileprune.pipeline.train import cosine_lr, evaluate, make_optimizer, train_epoch
from mobileprune.sparsity.report import layer_report
from mobileprune.sparsity.targets import load_yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import cpu_model  # noqa: E402

LAYERS = ("conv1", "conv2", "fc1", "fc2")
MOBILEPRUNE = ("admm", "l0_group_lasso")
# masked retraining of `admm` at these short budgets (4-10 epochs): at the lenet5-71x
# config's 3e-4, 2 epochs of retraining after masked mapping left 96.9 % at 71x / 4
# epochs, at 1e-3 98.3 % (runs of this session, the same dense model)
ADMM_RETRAIN_LR = 1e-3
# a method's settings version: a saved cell of an older version is run again (cells
# without one are version 1); admm 2 = rho_final and ADMM_RETRAIN_LR
METHOD_VERSION = {"admm": 2}
GRID_BUDGETS, GRID_TARGETS = (4, 10), (10.0, 71.0, 250.0)  # issue 21's grid
#: fine-tuning of the peers: Adam with cosine decay to 0 over the fine-tuning epochs
FINETUNE_LR = 5e-4
#: a step of the gradual schedule every this fraction of an epoch; pruning ends at 3/4
ITERATIVE_STEP, ITERATIVE_END = 0.25, 0.75
#: l0 sparse group lasso: prox step size, group lasso weight, first eta of the ramp as a
#: fraction of the last (l0_eta)
L0_PROX_LR, L0_LAM, L0_ETA_START = 1e-3, 0.05, 0.25


@dataclass
class Data:
    train: object
    test: object
    example: torch.Tensor
    dense: nn.Module


# ----------------------------------------------------------------------------- counting
def weights(model: nn.Module) -> list[torch.Tensor]:
    """The prunable weights (LAYERS), whatever their current size."""
    mods = dict(model.named_modules())
    return [mods[n].weight for n in LAYERS]


def nonzero(model: nn.Module) -> int:
    """Nonzero prunable weights (a compacted model counts what it still has)."""
    return sum(int(torch.count_nonzero(w)) for w in weights(model))


def target_keep(dense_weights: int, rate: float) -> int:
    """Weights kept at ``rate``x compression of ``dense_weights``."""
    return max(1, round(dense_weights / rate))


# ----------------------------------------------------------------------------- training
def finetune(model: nn.Module, loader, epochs: int, after_step=None) -> None:
    """``epochs`` of Adam (FINETUNE_LR, cosine to 0): the peers' fine-tuning."""
    if epochs <= 0:
        return
    opt = make_optimizer("adam", [p for p in model.parameters() if p.requires_grad], FINETUNE_LR)
    sched = cosine_lr(opt, epochs * len(loader))
    for _ in range(epochs):
        train_epoch(model, loader, opt, scheduler=sched, progress=False, after_step=after_step)


def _torch_params(model: nn.Module):
    mods = dict(model.named_modules())
    return [(mods[n], "weight") for n in LAYERS]


def _global_l1(model: nn.Module, keep: int) -> None:
    """torch.prune global L1 down to ``keep`` unmasked weights (masks compose). Called
    inside training too, where the weights may be channels_last (torch.prune flattens
    them with ``view``): the model goes back to the standard layout first."""
    have = nonzero_mask_count(model)
    if have > keep:
        model.to(memory_format=torch.contiguous_format)
        params = _torch_params(model)
        scores = {(m, n): getattr(m, n).detach().contiguous() for m, n in params}  # masked weights
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured,
                                        importance_scores=scores, amount=have - keep)


def nonzero_mask_count(model: nn.Module) -> int:
    """Weights torch.prune still lets through (all of them before the first prune)."""
    mods = dict(model.named_modules())
    return sum(int(mods[n].weight_mask.sum()) if hasattr(mods[n], "weight_mask") else mods[n].weight.numel()
               for n in LAYERS)


def _remove_reparam(model: nn.Module) -> nn.Module:
    for module, name in _torch_params(model):
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, name)
    return model


def run_torch_oneshot(model: nn.Module, data: Data, keep: int, budget: int) -> tuple[nn.Module, dict]:
    """torch.prune global L1 in one shot, then ``budget`` epochs of fine-tuning."""
    _global_l1(model, keep)
    finetune(model, data.train, budget)
    return _remove_reparam(model), {"engine": "mobileprune runtime"}


def cubic_keep(total: int, keep: int, t: float) -> int:
    """Weights kept at fraction ``t`` of the pruning window (Zhu & Gupta 2017: sparsity
    ``s (1 - (1 - t)^3)`` with ``s = 1 - keep / total``; ``t >= 1``: ``keep``)."""
    s = (1 - keep / total) * (1 - (1 - min(max(t, 0.0), 1.0)) ** 3)
    return max(keep, round(total * (1 - s)))


def run_torch_iterative(model: nn.Module, data: Data, keep: int, budget: int) -> tuple[nn.Module, dict]:
    """torch.prune global L1, gradually: a cubic schedule step every ITERATIVE_STEP epochs
    over the first ITERATIVE_END of the budget, fine-tuning all along."""
    total = sum(w.numel() for w in weights(model))
    steps = budget * len(data.train)
    window = max(1, round(ITERATIVE_END * steps))
    every = max(1, round(ITERATIVE_STEP * len(data.train)))
    count = [0]

    def after_step():
        count[0] += 1
        if count[0] % every == 0 or count[0] == window:
            _global_l1(model, cubic_keep(total, keep, count[0] / window))

    _global_l1(model, cubic_keep(total, keep, 0.0))
    finetune(model, data.train, budget, after_step=after_step)
    _global_l1(model, keep)  # a budget too short for the window still ends on the target
    return _remove_reparam(model), {"engine": "mobileprune runtime", "prune_every_steps": every,
                                    "window_steps": window}


def _tp_prune(model: nn.Module, example: torch.Tensor, ratio: float):
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[model.fc2])
    pruner.step()
    return model


def tp_ratio(model: nn.Module, example: torch.Tensor, keep: int, iters: int = 30) -> float:
    """The uniform channel pruning ratio whose compacted model has the weight count
    closest to ``keep`` (bisection on the monotone count; whole channels only)."""
    lo, hi = 0.0, 0.999
    best = (math.inf, 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        n = sum(w.numel() for w in weights(_tp_prune(copy.deepcopy(model), example, mid)))
        best = min(best, (abs(n - keep), mid))
        lo, hi = (mid, hi) if n > keep else (lo, mid)
    return best[1]


def run_torch_pruning(model: nn.Module, data: Data, keep: int, budget: int) -> tuple[nn.Module, dict]:
    """Torch-Pruning channel pruning to about ``keep`` weights, then fine-tuning."""
    ratio = tp_ratio(model, data.example, keep)
    model = _tp_prune(model, data.example, ratio)
    finetune(model, data.train, budget)
    return model, {"engine": "torch (compacted)", "channel_ratio": ratio,
                   "units": [getattr(m, "out_channels", getattr(m, "out_features", None))
                             for m in (dict(model.named_modules())[n] for n in LAYERS)]}


# ----------------------------------------------------------------------------- mobileprune
def layer_keeps(sizes: list[int], template: list[int], total: int) -> list[int]:
    """Split ``total`` over layers in proportion to ``template``, no layer above its size
    (a clipped layer's share goes to the others, again in proportion)."""
    keeps = [0] * len(sizes)
    free = list(range(len(sizes)))
    left = min(total, sum(sizes))
    while free:
        # (counts scaled by ``left``: proportional_counts only ever shrinks counts)
        share = proportional_counts([template[i] * left for i in free], left)
        over = [i for i, s in zip(free, share) if s >= sizes[i]]
        if not over:
            for i, s in zip(free, share):
                keeps[i] = s
            break
        for i in over:
            keeps[i] = sizes[i]
            left -= sizes[i]
            free.remove(i)
    return keeps


def run_admm(model: nn.Module, data: Data, keep: int, budget: int) -> tuple[nn.Module, dict]:
    """mobileprune ADMM: the lenet5-71x config's settings and allocation, scaled to ``keep``."""
    cfg = load_yaml(ROOT / "src" / "mobileprune" / "configs" / "lenet5-71x.yaml")
    template = [cfg["stages"][0]["layers"][n]["keep"] for n in LAYERS]
    keeps = layer_keeps([w.numel() for w in weights(model)], template, keep)
    admm_epochs = math.ceil(budget / 2)
    config = {"admm": {**cfg["admm"], "epochs": admm_epochs, "rho_final": cfg["admm"]["rho_max"]},
              "retrain": {**cfg["retrain"], "epochs": budget - admm_epochs, "lr": ADMM_RETRAIN_LR},
              "layers": {n: {"keep": k} for n, k in zip(LAYERS, keeps)}}
    admm_prune(model, data.train, config, progress=False, teacher=data.dense, log=lambda s: None)
    return model, {"engine": "mobileprune runtime", "keeps": keeps, "admm_epochs": admm_epochs}


def l0_eta(dense: nn.Module, keep: int, prox_lr: float) -> float:
    """The l0 weight whose prox leaves about ``keep`` weights of ``dense``: a prox step of
    size ``s`` zeroes ``|w| < sqrt(2 s eta)`` (seed 000, the l0 prox), so ``eta = t^2 / (2 s)``
    with ``t`` the ``keep``-th largest magnitude of the dense prunable weights."""
    mags = torch.cat([w.detach().abs().flatten() for w in weights(dense)])
    t = float(torch.topk(mags, min(keep, mags.numel())).values[-1])
    return t * t / (2 * prox_lr)


def l0_config(keep: int, rounds: int, dense: nn.Module) -> dict:
    """The proximal rounds of ``l0_group_lasso``: one prox epoch a round, eta ramped
    geometrically from L0_ETA_START of :func:`l0_eta` (the threshold at half) to it in
    the last round, trimmed to ``keep`` (the rounds stop within 10 % of it)."""
    eta_end = l0_eta(dense, keep, L0_PROX_LR)
    factor = (1 / L0_ETA_START) ** (1 / (rounds - 1)) if rounds > 1 else 1.0
    return {"method": "l0_group_lasso", "lam": L0_LAM, "eta": eta_end / factor ** (rounds - 1),
            "schedule": {"rounds": rounds, "prox_epochs": 1, "retrain_epochs": 0, "prox_lr": L0_PROX_LR,
                         "eta_factor": factor, "distill": 0.5, "target_nonzero": keep,
                         "final_project": True, "project_margin": 0.1, "fold_dead": True,
                         "compact": True}}


def run_l0(model: nn.Module, data: Data, keep: int, budget: int) -> tuple[nn.Module, dict]:
    """mobileprune l0 sparse group lasso: prox rounds, trim, then masked retraining with
    distillation (refilled by gradient to ``keep`` if the rounds went below it) for
    whatever the rounds left of the budget."""
    rounds = max(1, budget // 2)
    res = proximal_prune(model, data.train, l0_config(keep, rounds, data.dense),
                         progress=False, teacher=data.dense, log=lambda s: None)
    used = sum(1 for r in res.history if not r.get("projected"))  # prox rounds (1 epoch each)
    rest = budget - used
    if rest > 0:
        then = {"method": "l0", "eta": 0.0,
                "schedule": {"rounds": 0, "target_nonzero": keep, "final_refill": True, "fold_dead": True,
                             "final_retrain_epochs": rest, "final_retrain_lr": 1e-3, "final_distill": 0.5}}
        with warnings.catch_warnings():  # eta 0 on purpose: this call only retrains
            warnings.simplefilter("ignore", UserWarning)
            proximal_prune(model, data.train, then, progress=False, teacher=data.dense, log=lambda s: None)
    return model, {"engine": "mobileprune runtime", "rounds_run": used, "retrain_epochs": rest}


METHODS = {"torch_oneshot": run_torch_oneshot, "torch_iterative": run_torch_iterative,
           "torch_pruning": run_torch_pruning, "admm": run_admm, "l0_group_lasso": run_l0}


# ----------------------------------------------------------------------------- one cell
def latency_call(model: nn.Module, example: torch.Tensor, engine: str):
    """What is timed for ``engine``: the model exported by :func:`mobileprune.export_sparse`
    and run by the mobileprune sparse runtime, or the torch model itself."""
    model = model.eval()
    if engine != "mobileprune runtime":
        return model
    from mobileprune import export_sparse, runtime

    with tempfile.TemporaryDirectory() as tmp:
        export_sparse(model, example, Path(tmp) / "m.mpsparse")
        sm = runtime.load(Path(tmp) / "m.mpsparse", threads=1)
    x = example.numpy()
    return lambda *_: sm(x)


def batch1_latency(model: nn.Module, example: torch.Tensor, engine: str) -> dict:
    """Batch-1 latency (median / p10 / p90 ms, one thread) of ``model`` on ``engine``."""
    return compare_latency({engine: latency_call(model, example, engine)}, example,
                           repeats=30, warmup=5, threads=1, inner=20)[engine]


def retime(results: dict, models: Path, data: Data) -> int:
    """Time every cell whose model was saved in ``models``, and the dense model on both
    engines, in ONE interleaved run (:func:`compare_latency`: the rounds rotate over all
    of them, so load on the shared core hits every model alike); returns how many."""
    calls = {"dense/torch": data.dense, "dense/runtime": latency_call(data.dense, data.example,
                                                                       "mobileprune runtime")}
    for key, row in results["cells"].items():
        path = model_path(models, key)
        if path.exists():
            calls[key] = latency_call(torch.load(path, weights_only=False), data.example, row["engine"])
    lat = compare_latency(calls, data.example, repeats=30, warmup=5, threads=1, inner=20)
    for key, r in lat.items():
        row = results["dense"] if key.startswith("dense/") else results["cells"][key]
        if key == "dense/runtime":
            row["latency_runtime_ms"] = r["median_ms"]
            continue
        row.update(latency_ms=r["median_ms"], latency_p10_ms=r["p10_ms"], latency_p90_ms=r["p90_ms"],
                   latency_timing="interleaved")
    return len(calls) - 2


def measure(model: nn.Module, data: Data, seconds: float, engine: str, dense_weights: int) -> dict:
    """Accuracy, nonzeros, compression, MACs and latency of a finished model."""
    with warnings.catch_warnings():  # a compacted (channel-pruned) model has no zeros
        warnings.simplefilter("ignore", UserWarning)
        rep = layer_report(model, example_input=data.example)["totals"]
    nz = nonzero(model)
    structured = engine.startswith("torch")
    lat = batch1_latency(model, data.example, engine)
    return {"test_accuracy": evaluate(model, data.test), "nonzero": nz, "compression": dense_weights / nz,
            "macs": rep["macs"] if structured else rep["nonzero_macs"],
            "macs_kind": "dense MACs of the compacted model" if structured else "nonzero MACs",
            "seconds": seconds, "engine": engine, "latency_ms": lat["median_ms"],
            "latency_p10_ms": lat["p10_ms"], "latency_p90_ms": lat["p90_ms"]}


def prune_cell(method: str, budget: int, target: float, data: Data, seed: int = 0):
    """``(model, info, seconds, keep)``: a copy of the dense model pruned by ``method`` to
    ``target``x (``keep`` prunable weights) in ``budget`` epochs, timed (wall clock; the
    process CPU time and the load average go into ``info``: the machine is shared)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(data.dense).train()
    keep = target_keep(sum(w.numel() for w in weights(model)), target)
    t0, c0 = time.perf_counter(), time.process_time()
    model, info = METHODS[method](model, data, keep, budget)
    info.update(cpu_seconds=time.process_time() - c0, loadavg=list(os.getloadavg()))
    return model, info, time.perf_counter() - t0, keep


def run_cell(method: str, budget: int, target: float, data: Data, seed: int = 0,
             save: Path | None = None) -> dict:
    """One row of the table (:func:`prune_cell`, then :func:`measure`); the pruned model
    is kept in ``save`` (whole module: a channel-pruned one has its own shapes)."""
    model, info, seconds, keep = prune_cell(method, budget, target, data, seed)
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model, save)
    row = measure(model, data, seconds, info.pop("engine"), sum(w.numel() for w in weights(data.dense)))
    return {"method": method, "budget": budget, "target": target, "target_nonzero": keep, **row, "info": info,
            "version": METHOD_VERSION.get(method, 1)}


def dense_row(data: Data) -> dict:
    """The dense model's own figures (the reference of every cell)."""
    n = sum(w.numel() for w in weights(data.dense))
    row = measure(data.dense, data, 0.0, "torch", n)
    row["latency_runtime_ms"] = batch1_latency(data.dense, data.example, "mobileprune runtime")["median_ms"]
    return row


# ----------------------------------------------------------------------------- results
def cell_key(method: str, budget: int, target: float) -> str:
    return f"{method}/{budget}/{target:g}"


def model_path(models: Path, key: str) -> Path:
    """Where the pruned model of the cell ``key`` is kept (``--models``)."""
    return models / (key.replace("/", "_") + ".pt")


def load_results(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"cells": {}}


def save_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def machine() -> dict:
    """CPU model (from /proc/cpuinfo), cores, torch and Torch-Pruning versions."""
    cpu = cpu_model()
    try:
        from importlib.metadata import version
        tp = version("torch-pruning")
    except Exception:  # noqa: BLE001
        tp = None
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "affinity": affinity, "torch": torch.__version__,
            "torch_pruning": tp, "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


#: columns compared between methods: (key, title, True when larger is better); time is
#: compared as the process CPU time (the wall time depends on what else the core runs)
COLUMNS = (("test_accuracy", "test accuracy", True), ("compression", "compression", True),
           ("macs", "MACs", False), ("cpu_seconds", "CPU time", False), ("latency_ms", "batch-1 latency", False))


def _value(r: dict, key: str) -> float:
    return r["info"][key] if key == "cpu_seconds" else r[key]


def _fmt(key: str, v: float) -> str:
    return {"test_accuracy": f"{100 * v:.2f} %", "compression": f"{v:.1f}x", "macs": f"{v:,.0f}",
            "cpu_seconds": f"{v:.0f} s", "latency_ms": f"{1000 * v:.1f} us"}[key]


def leads(rows: list[dict]) -> list[str]:
    """For one (budget, target): each column mobileprune does not lead, with its leader
    (ties go to mobileprune; accuracy within 0.005 points is a tie)."""
    ours = [r for r in rows if r["method"] in MOBILEPRUNE]
    if not ours:
        return ["no mobileprune row yet"]
    out = []
    for key, title, larger in COLUMNS:
        sign = 1 if larger else -1
        best = max(rows, key=lambda r: sign * _value(r, key))
        mine = max(ours, key=lambda r: sign * _value(r, key))
        slack = 5e-5 if key == "test_accuracy" else 0.0
        if best["method"] not in MOBILEPRUNE and sign * (_value(best, key) - _value(mine, key)) > slack:
            out.append(f"{title}: **{best['method']}** leads ({_fmt(key, _value(best, key))}; best "
                       f"mobileprune {mine['method']} {_fmt(key, _value(mine, key))})")
    return out


def _row_md(r: dict) -> str:
    tag = " (mobileprune)" if r["method"] in MOBILEPRUNE else ""
    return (f"| {r['method']}{tag} | {r['budget']} | {r['target']:g}x | {r['nonzero']:,} ({r['compression']:.1f}x) "
            f"| {100 * r['test_accuracy']:.2f} % | {r['macs']:,} | {r['seconds']:.0f} s "
            f"| {r['info']['cpu_seconds']:.0f} s | {r['info']['loadavg'][0]:.1f} "
            f"| {1000 * r['latency_ms']:.1f} us (p10 {1000 * r['latency_p10_ms']:.1f}) {r['engine']}"
            f"{'' if r.get('latency_timing') == 'interleaved' else ' *'} |")


def render(results: dict) -> str:
    """The markdown report, from the JSON alone."""
    m, d = results.get("machine", {}), results.get("dense")
    md = ["# Peers side by side: LeNet-5 on full MNIST (issue 21, item 4)", "",
          "Generated by `benchmarks/peers.py` from `docs/benchmarks/peers.json`; do not edit by hand.", "",
          f"Command: `{results.get('command', '')}`", "",
          f"Machine: {m.get('cpu')} ({m.get('cpus')} CPUs, pinned to {m.get('affinity')}), "
          f"torch {m.get('torch')}, Torch-Pruning {m.get('torch_pruning') or 'not installed'}, "
          f"Python {m.get('python')}, OMP_NUM_THREADS={m.get('omp_num_threads')}.", ""]
    if d:
        md += [f"Dense checkpoint ({results.get('dense_command', '')}): {100 * d['test_accuracy']:.2f} % test accuracy, "
               f"{d['nonzero']:,} prunable weights, {d['macs']:,} MACs, batch-1 latency {1000 * d['latency_ms']:.1f} us "
               f"(torch), {1000 * d['latency_runtime_ms']:.1f} us (mobileprune runtime).", ""]
    md += [NOTES, ""]
    cells = list(results["cells"].values())
    for budget in sorted({c["budget"] for c in cells}):
        for target in sorted({c["target"] for c in cells if c["budget"] == budget}):
            rows = [c for c in cells if c["budget"] == budget and c["target"] == target]
            rows.sort(key=lambda r: list(METHODS).index(r["method"]))
            md += [f"## {budget} epochs, {target:g}x", "",
                   "| method | epochs | target | achieved (nonzero weights) | test accuracy | MACs "
                   "| wall time | CPU time | load | batch-1 latency: median (p10), engine |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                   *map(_row_md, rows), ""]
            missing = [n for n in METHODS if n not in {r["method"] for r in rows}]
            if missing:
                md += [f"Not run (yet) in this cell: {', '.join(missing)}.", ""]
            lost = leads(rows)
            md += (["Where mobileprune does NOT lead at this budget and target:", "",
                    *[f"- {x}" for x in lost], ""] if lost else
                   ["mobileprune leads every column here.", ""])
    done = {(c["budget"], c["target"]) for c in cells}
    todo = [f"{b} epochs at {t:g}x" for b in GRID_BUDGETS for t in GRID_TARGETS if (b, t) not in done]
    if todo:
        md += ["Not run yet (the command above resumes the grid and skips finished cells): "
               + "; ".join(todo) + ".", ""]
    return "\n".join(md) + "\n"


NOTES = """\
Every method starts from the same dense checkpoint and gets the same number of training
epochs (each epoch of each phase counts: ADMM + masked retraining, prox rounds +
retraining, fine-tuning). Compression counts the prunable weights (conv1, conv2, fc1,
fc2; 430,500 in the dense model) against their nonzeros. MACs: nonzero MACs (every
multiply by a nonzero weight) for the unstructured methods, dense MACs of the
compacted model for Torch-Pruning (whole channels removed), both per image. Wall time:
pruning plus fine-tuning, no evaluation inside, pinned to core 0; this machine is
shared with other jobs, so the CPU time of the process is given beside it (and the
1-minute load average at the end of the cell) and the time comparison uses the CPU
time. Batch-1 latency: median (and 10th
percentile: under load the median includes time the core ran other jobs) of 30 rounds
of 20 calls, one thread, all saved models and the dense one timed together, interleaved
(`--latency`); a latency marked * was timed alone at the end of its cell (its model was
not kept, so it could not be re-timed with the others) and depends on the load then; the unstructured models on the mobileprune sparse runtime
(`export_sparse`), the channel-pruned one on torch (eager, compacted model; at
LeNet-5's size torch eager's per-call overhead dominates, so that column compares engines
as much as models).

Methods: `torch_oneshot` = torch.nn.utils.prune global L1 once, then fine-tuning;
`torch_iterative` = the same with a cubic gradual schedule (a step every quarter epoch
over the first 3/4 of the budget); `torch_pruning` = Torch-Pruning `MagnitudePruner` with
`GroupMagnitudeImportance(p=2)` (the group-norm importance; 1.6 has no class named
GroupNormImportance), one uniform channel ratio chosen so the compacted weight count is
closest to the target; `admm` = `mobileprune.admm_prune` with the lenet5-71x config's
settings and per-layer allocation scaled to the target, half the budget ADMM, half masked
retraining, distillation from the dense model, rho growing to the config's cap by the end
of the ADMM epochs (`rho_final`) and retraining at Adam 1e-3; `l0_group_lasso` = `mobileprune.proximal_prune`
(l0 sparse group lasso), budget/2 prox rounds (eta ramped 4x up to the eta whose
threshold leaves the target's count of the dense weights), trimmed or refilled to the target, the rest
masked retraining with distillation. Peers fine-tune with Adam, lr 5e-4, cosine to 0.

Reference figures measured here earlier (other scripts, not this table): at 71x / 10
epochs torch.prune iterative 98.72 %, NNI 2.10 ADMM (penalty patched) 98.86 %; at 250x /
10 epochs torch.prune iterative 96.01 %."""


def load_data(data_dir: str | None, batch_size: int = 128, seed: int = 0):
    """``(train_loader, test_loader, example)`` of full MNIST, or ``None`` with a message."""
    from mobileprune.data.registry import load_dataset, make_loaders
    from mobileprune.errors import DataError

    try:
        bundle = load_dataset("mnist", data_dir)
    except DataError as exc:
        print(f"peers benchmark: full MNIST is not available ({exc}); set MOBILEPRUNE_DATA or "
              "--data-dir to the folder holding mnist.tgz", file=sys.stderr)
        return None
    train, test = make_loaders(bundle, batch_size=batch_size, seed=seed)
    return train, test, bundle.train[0][0].unsqueeze(0)


def dense_model(path: Path, data_dir: str | None) -> nn.Module:
    """The cached dense checkpoint; trained once with `mobileprune train`'s defaults."""
    if not path.exists():
        from mobileprune.cli import main as cli

        path.parent.mkdir(parents=True, exist_ok=True)
        args = ["train", "--model", "lenet5", "--dataset", "mnist", "--out", str(path), "--quiet"]
        if cli(args + (["--data-dir", data_dir] if data_dir else [])) != 0:
            raise SystemExit("peers benchmark: training the dense model failed")
    return restore_model(load_checkpoint(path)).eval()


def _list(kind, text: str, allowed=None):
    try:
        items = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    bad = [x for x in items if (allowed is not None and x not in allowed) or (allowed is None and x <= 0)]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"bad value(s) {bad or text!r}" + (f"; choose from {', '.join(allowed)}"
                                                                          if allowed else "; must be > 0"))
    return items


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=lambda s: _list(int, s), default=list(GRID_BUDGETS),
                    help="epoch budgets (4,10)")
    ap.add_argument("--targets", type=lambda s: _list(float, s), default=list(GRID_TARGETS),
                    help="compression rates (10,71,250)")
    ap.add_argument("--methods", type=lambda s: _list(str, s, tuple(METHODS)), default=list(METHODS),
                    help=f"subset of {','.join(METHODS)}")
    ap.add_argument("--data-dir")
    ap.add_argument("--dense", default=str(ROOT / "runs" / "peers" / "dense.pt"),
                    help="dense checkpoint (trained with `mobileprune train` defaults if absent)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "peers"),
                    help="writes OUT.json and OUT.md")
    ap.add_argument("--models", default=str(ROOT / "runs" / "peers" / "models"),
                    help="where each cell's pruned model is kept (for --latency)")
    ap.add_argument("--redo-unsaved", action="store_true",
                    help="also run again the finished cells whose pruned model is not in --models "
                         "(so that --latency can time every cell together)")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    ap.add_argument("--latency", action="store_true",
                    help="only re-time the saved models and the dense one, interleaved in one run")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    results = load_results(out.with_suffix(".json"))
    if not args.render:
        loaded = load_data(args.data_dir)
        if loaded is None:
            return 2
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            if "torch_pruning" in args.methods:
                print("peers benchmark: torch_pruning is not installed (pip install --no-deps "
                      "'torch-pruning>=1.6,<1.7', extra 'peers'); skipping that method", file=sys.stderr)
                args.methods = [m for m in args.methods if m != "torch_pruning"]
        data = Data(*loaded, dense=dense_model(Path(args.dense), args.data_dir))
        if args.latency:
            print(f"re-timed {retime(results, Path(args.models), data)} saved cell model(s)")
            save_results(out.with_suffix(".json"), results)
        else:
            run_grid(args, data, results, out)
    atomic_write_text(out.with_suffix(".md"), render(results))
    return 0


def run_grid(args, data: Data, results: dict, out: Path) -> None:
    """Every missing cell of the grid, the 4-epoch budget first; saved after each."""
    results.pop("notes", None)  # (the notes are the script's NOTES, not data)
    results.update(machine=machine(),
                   command="OMP_NUM_THREADS=1 MOBILEPRUNE_DATA=../shared/data taskset -c 0 .venv/bin/python "
                           "benchmarks/peers.py --budgets 4,10 --targets 10,71,250",
                   dense_command="`mobileprune train --model lenet5 --dataset mnist` defaults: 10 epochs, "
                                 "Adam 1e-3, cosine, batch 128, seed 0")
    if "dense" not in results:
        results["dense"] = dense_row(data)
        save_results(out.with_suffix(".json"), results)
    for budget in sorted(args.budgets):
        for target in args.targets:
            for method in args.methods:
                key = cell_key(method, budget, target)
                done = results["cells"].get(key)
                saved = model_path(Path(args.models), key)
                if (done is not None and done.get("version", 1) == METHOD_VERSION.get(method, 1)
                        and (saved.exists() or not getattr(args, "redo_unsaved", False))):
                    continue  # done with the method's current settings (and saved if asked)
                print(f"[peers] {key} ...", flush=True)
                row = run_cell(method, budget, target, data, save=saved)
                print(f"[peers] {key}: {100 * row['test_accuracy']:.2f} %, {row['nonzero']:,} nonzero "
                      f"({row['compression']:.1f}x), {row['seconds']:.0f} s", flush=True)
                results["cells"][key] = row
                save_results(out.with_suffix(".json"), results)
                atomic_write_text(out.with_suffix(".md"), render(results))


if __name__ == "__main__":
    sys.exit(main())
