"""Training throughput per phase, fp32 vs bf16 autocast vs bf16 + channels_last
(issue 21, item 1), and the accuracy of a short LeNet-5 run in each precision.

    .venv/bin/python benchmarks/training_speed.py [--threads N] [--steps N]

Throughput: images/s of dense training, an ADMM epoch (penalty + Z/U step) and masked
retraining, the last two with distillation from a dense teacher as the pipelines' configs
run them (``distill: 0.5``; the teacher's forward pass is part of the step), on
in-memory batches of the model's input shape (the data's content does not change the
arithmetic), median of 3 timed windows after warm-up. Accuracy: LeNet-5,
3 epochs on the embedded MNIST sample, in fp32 and in bf16. Writes
docs/benchmarks/training_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mobileprune import ADMMPruner, MaskEnforcer  # noqa: E402
from mobileprune.models import FERNet, LeNet5, resnet20  # noqa: E402
from mobileprune.checkpoint import atomic_write_text  # noqa: E402
from mobileprune.pipeline import train as T  # noqa: E402
from _machine import cpu_model  # noqa: E402

MODELS = {"lenet5": (LeNet5, (1, 28, 28), 10), "fernet": (FERNet, (1, 48, 48), 6),
          "resnet20": (resnet20, (3, 32, 32), 10)}
MODES = {"fp32": ("fp32", False), "fp32+channels_last": ("fp32", True), "bf16": ("bf16", False),
         "bf16+channels_last": ("bf16", True), "fp32+channels_last+compile": ("fp32", True)}
# a CPU without native bf16 emulates it (slower than fp32): only the fp32 modes are timed
FP32_MODES = ("fp32", "fp32+channels_last")
COMPILED = "fp32+channels_last+compile"  # --compile: torch.compile'd model, dense phase only


def _batches(shape, classes, n=8, batch=64):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def _phase_kwargs(phase, model, opt, teacher):
    if phase == "dense":
        return {}
    kw = {"teacher": teacher, "distill": 0.5}
    if phase == "admm":
        pruner = ADMMPruner(model, {"default": 0.9}, rho=1e-3)
        return {**kw, "penalty": pruner.penalty, "after_step": pruner.step}
    MaskEnforcer(model, {n: p.detach().abs() > 0.01 for n, p in model.named_parameters()
                         if p.dim() > 1}).attach(opt)
    return kw


def throughput(name, phase, mode, steps):
    build, shape, classes = MODELS[name]
    T.set_training_speed(*MODES[mode])
    torch.manual_seed(0)
    model = build(num_classes=classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if mode.endswith("+compile"):  # compiled in the warm-up below (forward and backward)
        model = torch.compile(model)
    kw = _phase_kwargs(phase, model, opt, build(num_classes=classes))
    data = _batches(shape, classes, n=steps)
    T.train_epoch(model, data[:2], opt, progress=False, **kw)  # warm-up
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        T.train_epoch(model, data, opt, progress=False, **kw)
        rates.append(64 * len(data) / (time.perf_counter() - t0))
    return statistics.median(rates)


def accuracy(precision):
    from mobileprune.data.registry import load_dataset, make_loaders

    T.set_training_speed(precision, precision == "bf16")
    torch.manual_seed(0)
    tr, te = make_loaders(load_dataset("mnist-sample"), batch_size=64)
    m = LeNet5()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(3):
        T.train_epoch(m, tr, opt, progress=False)
    return {"accuracy": T.evaluate(m, te), "seconds": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of "
                    + ", ".join(MODELS))
    ap.add_argument("--compile", action="store_true", help="CPU without bf16: also time the "
                    "torch.compile'd model (fp32 + channels_last) in the dense phase (about a "
                    "minute of compilation per window)")
    args = ap.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown} in --models; choose among {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    if not T.bf16_supported():
        return fp32_only(args)
    timed = [m for m in MODES if m != COMPILED]
    rows = [{"model": n, "phase": ph, **{m: round(throughput(n, ph, m, args.steps), 1) for m in timed}}
            for n in args.models.split(",") for ph in ("dense", "admm", "retrain")]
    acc = {p: accuracy(p) for p in ("fp32", "bf16")}
    res = {"command": f"python benchmarks/training_speed.py --threads {args.threads} --steps {args.steps}",
           "cpu": cpu_model(), "bf16_native": T.bf16_supported(),
           "threads": args.threads, "torch": torch.__version__, "rows": rows, "lenet5_accuracy": acc}
    out = ROOT / "docs" / "benchmarks"
    atomic_write_text(out / "training_speed.json", json.dumps(res, indent=2) + "\n")
    lines = ["# Training speed (issue 21, item 1)", "", f"`{res['command']}`; torch {torch.__version__}, "
             f"{args.threads} thread(s), CPU with native bf16: {res['bf16_native']}. Images/s, batch 64, "
             "median of 3 windows after warm-up; the machine was shared, compare within a row.", "",
             "| model | phase | fp32 | bf16 | bf16 + channels_last | speedup |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        best = max(r["bf16"], r["bf16+channels_last"])
        lines.append(f"| {r['model']} | {r['phase']} | {r['fp32']:.0f} | {r['bf16']:.0f} | "
                     f"{r['bf16+channels_last']:.0f} | {best / r['fp32']:.2f}x |")
    ups = [max(r["bf16"], r["bf16+channels_last"]) / r["fp32"] for r in rows]
    lines += ["", f"Speedup over fp32: {min(ups):.2f}x to {max(ups):.2f}x. Issue 21's goal is >= 3x for the "
              "FER CNN on a CPU with bf16 support" + (" (met)." if min(
                  u for r, u in zip(rows, ups) if r["model"] == "fernet") >= 3 else
              " (short here: this CPU has AVX512-BF16 but no AMX tiles; the issue's 3.7x was "
              "measured with AMX).")]
    lines += ["", "LeNet-5, 3 epochs on the embedded MNIST sample (5,000 / 1,000 images), same seed:", "",
              "| precision | test accuracy | seconds |", "|---|---:|---:|"]
    lines += [f"| {p} | {100 * a['accuracy']:.2f}% | {a['seconds']:.1f} |" for p, a in acc.items()]
    atomic_write_text(out / "training_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def fp32_only(args) -> int:
    """A CPU without native bf16 (issue 21's goal there: >= 1.3x for the FER CNN): fp32
    against fp32 + channels_last, the modes interleaved window by window; writes
    docs/benchmarks/training_speed_fp32.{json,md} (the bf16 host's files stay)."""
    rows = []
    for n in args.models.split(","):
        for ph in ("dense", "admm", "retrain"):
            modes = FP32_MODES + ((COMPILED,) if args.compile and ph == "dense" else ())
            rates = {m: [] for m in modes}
            for _ in range(3):  # rounds of one window per mode: a busy moment hits both
                for m in modes:
                    rates[m].append(throughput(n, ph, m, args.steps))
            rows.append({"model": n, "phase": ph, **{m: round(statistics.median(v), 1)
                                                     for m, v in rates.items()}})
    cmd = (f"python benchmarks/training_speed.py --threads {args.threads} --steps {args.steps} "
           f"--models {args.models}" + (" --compile" if args.compile else ""))
    res = {"command": cmd, "cpu": cpu_model(), "bf16_native": False, "threads": args.threads,
           "torch": torch.__version__, "rows": rows}
    out = ROOT / "docs" / "benchmarks"
    atomic_write_text(out / "training_speed_fp32.json", json.dumps(res, indent=2) + "\n")
    lines = ["# Training speed on a CPU without native bf16 (issue 21, item 1)", "",
             f"`{cmd}`; {res['cpu']}, torch {torch.__version__}, {args.threads} thread(s). Images/s, "
             "batch 64, median of 3 rounds (each round times every mode once, after warm-up).", "",
             "| model | phase | fp32 | fp32 + channels_last | speedup | + torch.compile | speedup |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r.get(COMPILED)
        lines.append(f"| {r['model']} | {r['phase']} | {r['fp32']:.0f} | {r['fp32+channels_last']:.0f} | "
                     f"{r['fp32+channels_last'] / r['fp32']:.2f}x | "
                     + (f"{c:.0f} | {c / r['fp32']:.2f}x |" if c else "- | - |"))
    fer = [r["fp32+channels_last"] / r["fp32"] for r in rows if r["model"] == "fernet"]
    if fer:
        lines += ["", f"FER CNN: {min(fer):.2f}x to {max(fer):.2f}x over fp32; issue 21's goal on a CPU "
                  f"without bf16 is >= 1.3x ({'met' if min(fer) >= 1.3 else 'short'})."]
    atomic_write_text(out / "training_speed_fp32.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
