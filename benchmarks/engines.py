"""Benchmark: mobileprune's native sparse engine beside every runtime a user could ship.

One case (a model at a sparsity) and one setting (batch, threads) run in a fresh process
pinned with ``taskset`` (1 thread: CPU 1; 2 threads: CPUs 0-1), so every engine's threads
live on the same cores. In that process every engine is loaded, its output checked
against torch, then all are timed **interleaved** (:func:`mobileprune.measure.latency.
compare_latency`: warm-up, then rounds in rotating order; min / p10 / median / p90 / max).
By default (``--rewarm 0``) every timed call comes right after the other engines' calls
(cold caches, sleeping threads); with ``--rewarm 1`` each engine first runs one untimed
call at its turn of every round, so its timed call finds its own weights in cache and its
threads awake (steady-state serving, what each peer's own benchmark tool reports), while
the rounds still interleave the engines. The protocol is saved with each result.
The reference for "peak" is measured in the same process: a dense fp32 1024x1024 matrix
product in torch at one thread (GMAC/s) and the raw FMA peak of the core
(``benchmarks/fma_peak.c``: register-only FMA chains on the widest vector unit).

Engines
    ``mobileprune``   the native engine (``mobileprune.runtime.load(path, threads=t)``)
    ``torch``         eager PyTorch, the pruned model with zeros in dense tensors
    ``onnxruntime``   ONNX Runtime (CPU provider) on the ONNX export
    ``executorch``    ExecuTorch with the XNNPACK delegate (``.pte`` per batch size; 1 thread)
    ``openvino_f32``  OpenVINO with ``INFERENCE_PRECISION_HINT=f32``
    ``openvino``      OpenVINO at its default precision (bf16 on CPUs with AMX / AVX512-BF16)
    ``deepsparse``    DeepSparse 1.8 (Neural Magic's sparse CPU engine) on the ONNX export
The dense fp32 runtimes are torch, onnxruntime, executorch and openvino_f32. OpenVINO and
DeepSparse run in ``.venv-peers`` (``make peers``; DeepSparse needs onnx < 1.15) through
``benchmarks/peer_worker.py``; without that environment they are reported as skipped.

A speedup is printed only when the two engines' p10-p90 ranges do not overlap
(:func:`mobileprune.measure.latency.speedup`), else "within noise". Results are saved per case and
setting under ``docs/benchmarks/engines/`` (a finished pair is not re-run: an interrupted
run resumes; ``--fresh`` re-runs everything; each protocol has its own files) and summarised
in ``docs/benchmarks/engines.md``.

    .venv/bin/python benchmarks/engines.py [--cases fer2013_uniform90,...] [--repeats 30]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from whole_model import LENET5_71X, TABLE3, magnitude_prune  # noqa: E402
from _machine import cpu_model  # noqa: E402

from mobileprune.checkpoint import atomic_write_text  # noqa: E402
from mobileprune.measure.latency import compare_latency, speedup  # noqa: E402
from mobileprune.models import build_model  # noqa: E402

#: saved runs, one directory per vector ISA (``avx512f``, ``avx2+fma``, ``neon``): a run on one
#: kind of core never replaces another's, and engines.md shows each in its own section
OUT = ROOT / "docs" / "benchmarks" / "engines"
PEERS_PY = ROOT / ".venv-peers" / "bin" / "python"
#: LeNet-5 at 246x: the per-layer counts of the last stage of the built-in lenet5-246x
LENET5_246X = {"conv1": 125, "conv2": 625, "fc1": 800, "fc2": 200}
#: case -> (architecture, per-layer targets, input shape[, structure of the magnitude pruning])
CASES = {
    "fer2013_uniform90": ("fernet", {k: 0.9 for k in TABLE3}, (1, 48, 48)),
    "fer2013_block90": ("fernet", {k: 0.9 for k in TABLE3}, (1, 48, 48), "block"),
    "fer2013_table3": ("fernet", TABLE3, (1, 48, 48)),
    "lenet5_71x": ("lenet5", LENET5_71X, (1, 28, 28)),
    "lenet5_246x": ("lenet5", LENET5_246X, (1, 28, 28)),
}
SETTINGS = {"b1_t1": (1, 1), "b16_t1": (16, 1), "b16_t2": (16, 2)}
DENSE_FP32 = ("torch", "onnxruntime", "executorch", "openvino_f32")
PEERS = ("deepsparse", "openvino")


# ---------------------------------------------------------------------------------------
# the reference peaks

def fma_peak_gmacs() -> tuple[float | None, str]:
    """Raw FMA peak of one core in G multiply-adds/s, and the vector unit used."""
    src = ROOT / "benchmarks" / "fma_peak.c"
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / "fma.so"
        r = subprocess.run(["cc", "-std=c11", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)],
                           capture_output=True, text=True)
        if r.returncode:
            return None, f"no C compiler ({r.stderr.strip()[:80]})"
        f = ctypes.CDLL(str(lib)).mp_fma_peak
        f.restype, f.argtypes = ctypes.c_double, [ctypes.c_int, ctypes.c_int64]
        isa = vector_isa()
        best = max(f({"avx512f": 512, "avx2+fma": 256}.get(isa, 128), 20_000_000) for _ in range(5))
        return (best / 1e9 if best > 0 else None), isa


def vector_isa() -> str:
    """The widest FMA vector unit of this core: ``avx512f``, ``avx2+fma`` or ``neon``."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512f" if " avx512f" in flags else "avx2+fma" if " fma" in flags else "neon"


def gemm_peak_gmacs() -> float:
    """Dense fp32 1024x1024 matrix product in torch at one thread (best of 10)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    with torch.inference_mode():
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b)) for _ in range(10))
    return 1024 ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# one case, one setting (in a pinned child process)

def build_case(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The case's model: random initialisation pruned by magnitude (latency does not
    depend on the values), each layer rescaled by 1 / sqrt(density) so that activations
    keep their size through the network and the output check compares real numbers."""
    arch, keep, shape, *structure = CASES[name]
    torch.manual_seed(0)
    model = magnitude_prune(build_model(arch).eval(), arch, keep, *structure)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_((m.weight.numel() / max(1, int((m.weight != 0).sum()))) ** 0.5)
    return model, shape


def nonzero_macs(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(nonzero, dense) multiply-adds per sample of the Conv / Linear layers."""
    counts = [0, 0]

    def hook(mod, _inp, out):
        per_out = out[0].numel() // mod.weight.shape[0]  # output positions per channel
        w = mod.weight
        counts[0] += int((w != 0).sum()) * per_out
        counts[1] += w.numel() * per_out
    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model(x[:1])
    for h in hs:
        h.remove()
    return counts[0], counts[1]


class PeerTimer:
    """An engine in ``.venv-peers`` (peer_worker.py), timed inside its own process."""

    def __init__(self, engine: str, onnx: Path, x_path: Path, batch: int, threads: int):
        self.proc = subprocess.Popen([str(PEERS_PY), str(ROOT / "benchmarks" / "peer_worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        reply = self._ask({"cmd": "load", "engine": engine, "onnx": str(onnx), "batch": batch,
                           "threads": threads, "input": str(x_path)})
        self.output = np.load(reply["output"])
        self.info = reply["info"]

    def _ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline() or '{"ok": false, "error": "worker died"}')
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply

    def measure_ms(self, inner: int, warm: int = 0) -> float:
        return self._ask({"cmd": "time", "inner": inner, "warm": warm})["ms"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _in_process_engines(model, x, b, t, d: Path, skipped: dict) -> dict:
    """name -> (callable, output) for the engines of this interpreter."""
    from mobileprune.deploy.export import export_executorch, export_onnx
    from mobileprune.runtime import load
    from mobileprune.deploy.sparse import export_sparse
    xn = x.numpy()
    engines = {"torch": (lambda: model(x), model(x).detach().numpy())}
    export_sparse(model, x, d / "m.mps")
    sm = load(d / "m.mps", threads=t)
    engines["mobileprune"] = (lambda: sm(xn), sm(xn))
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = t, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    export_onnx(model, x, d / "m.onnx", opset=17)
    sess = ort.InferenceSession(str(d / "m.onnx"), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: xn}
    engines["onnxruntime"] = (lambda: sess.run(None, feed), sess.run(None, feed)[0])
    if t == 1:
        try:
            from executorch.runtime import Runtime
            export_executorch(model, x, d / "m.pte")
            method = Runtime.get().load_program(str(d / "m.pte")).load_method("forward")
            engines["executorch"] = (lambda: method.execute([x]), method.execute([x])[0].numpy())
        except Exception as e:  # noqa: BLE001 - reported in the results
            skipped["executorch"] = f"{type(e).__name__}: {e}"[:200]
    else:
        skipped["executorch"] = "timed at 1 thread only (its XNNPACK pool is process-global)"
    return engines


def run_one(case: str, setting: str, repeats: int, rewarm: int) -> dict:
    b, t = SETTINGS[setting]
    model, shape = build_case(case)
    torch.manual_seed(1)
    x = torch.randn(b, *shape)
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        engines = _in_process_engines(model, x, b, t, d, skipped)
        np.save(d / "x.npy", x.numpy())
        peers = {}
        for eng in ("openvino_f32", "openvino", "deepsparse"):
            if not PEERS_PY.exists():
                skipped[eng] = ".venv-peers is absent (make peers)"
                continue
            try:
                peers[eng] = PeerTimer(eng, d / "m.onnx", d / "x.npy", b, t)
            except Exception as e:  # noqa: BLE001
                skipped[eng] = str(e)[:200]
        try:
            return _measure(case, setting, model, x, engines, peers, skipped, repeats, rewarm)
        finally:
            for p in peers.values():
                p.close()


def _measure(case, setting, model, x, engines, peers, skipped, repeats, rewarm) -> dict:
    b, t = SETTINGS[setting]
    want = engines["torch"][1]
    check = {k: float(np.abs(np.asarray(out).reshape(want.shape) - want).max() / (np.abs(want).max() + 1e-12))
             for k, (_, out) in engines.items()}
    check.update({k: float(np.abs(p.output.reshape(want.shape) - want).max() / (np.abs(want).max() + 1e-12))
                  for k, p in peers.items()})
    calls = {k: fn for k, (fn, _) in engines.items()}
    calls.update(peers)
    peak_before = gemm_peak_gmacs()
    lat = compare_latency(calls, (), repeats=repeats, warmup=5, threads=t,
                          inner=max(1, int(2e-3 // max(1e-5, _timed(lambda: model(x))))), rewarm=rewarm)
    fma, isa = fma_peak_gmacs()
    nz, dense = nonzero_macs(model, x)
    return {"case": case, "setting": setting, "batch": b, "threads": t,
            "cpus": sorted(os.sched_getaffinity(0)), "rewarm": rewarm, "latency": lat, "rel_error": check,
            "skipped": skipped, "info": {k: p.info for k, p in peers.items()},
            "nonzero_macs_per_sample": nz, "dense_macs_per_sample": dense,
            "gemm_peak_gmacs": max(peak_before, gemm_peak_gmacs()), "fma_peak_gmacs": fma,
            "fma_isa": isa, "cpu": cpu_model()}


# ---------------------------------------------------------------------------------------
# driver and summary

def summarise(r: dict) -> dict:
    """Speedups of the native engine (None = within noise) and its throughput."""
    lat = r["latency"]
    mine = lat["mobileprune"]
    dense = [k for k in DENSE_FP32 if k in lat]
    fastest = min(dense, key=lambda k: lat[k]["median_ms"])
    gmacs = r["nonzero_macs_per_sample"] * r["batch"] / (mine["median_ms"] * 1e6)
    return {"fastest_dense": fastest, "vs_fastest_dense": speedup(mine, lat[fastest]),
            "vs": {k: speedup(mine, lat[k]) for k in lat if k != "mobileprune"},
            "nonzero_gmacs": gmacs, "of_gemm_peak": gmacs / r["gemm_peak_gmacs"]}


def _x(v: float | None) -> str:
    return "within noise" if v is None else f"{v:.2f}x"


def write_summary(results: list[dict], command: str, isa: str) -> str:
    """One machine's section of engines.md: its saved runs as one table."""
    lines = [f"## {isa} ({results[0]['cpu']})", "",
             f"Command: `{command}` (one pinned process per case and setting; details in "
             f"`engines/{isa}/<case>_<setting>.json`). Times in ms: median [min-max] of interleaved runs. "
             "A speedup is shown only when the p10-p90 ranges do not overlap.", ""]
    protocols = sorted({r.get("rewarm", 0) for r in results})
    lines += ["Protocol: " + "; ".join(
        f"rewarm {w}: " + ("each engine runs one untimed call at its turn of every round, then the timed "
                           "ones (warm: its weights in cache, its threads awake)" if w else
                           "each timed call comes right after the other engines' (cold)")
        for w in protocols) + ("" if len(protocols) == 1 else " (per row in the setting column)"), ""]
    if results:
        r0 = results[0]
        one = [r for r in results if r["threads"] == 1] or results
        lines += [f"CPU: {r0['cpu']}; peak references measured in each run: dense fp32 1024x1024 "
                  f"GEMM in torch {min(r['gemm_peak_gmacs'] for r in one):.1f}-"
                  f"{max(r['gemm_peak_gmacs'] for r in one):.1f} GMAC/s at 1 thread (the last column "
                  "divides by the peak measured in the same process at the row's thread count); raw "
                  f"FMA peak of one core ({r0['fma_isa']}) {r0['fma_peak_gmacs'] or float('nan'):.1f} GMAC/s.", ""]
    engines = ["mobileprune", "torch", "onnxruntime", "executorch", "openvino_f32", "openvino", "deepsparse"]
    lines += ["| case | setting | " + " | ".join(engines) + " | vs fastest dense fp32 | vs DeepSparse | "
              "vs OpenVINO default | nonzero GMAC/s (% of GEMM peak) |",
              "|---|---|" + "---:|" * (len(engines) + 4)]
    for r in results:
        s, lat = summarise(r), r["latency"]
        cells = [f"{lat[e]['median_ms']:.3f} [{lat[e]['min_ms']:.3f}-{lat[e]['max_ms']:.3f}]" if e in lat
                 else "skipped" for e in engines]
        tag = f" (rewarm {r.get('rewarm', 0)})" if len(protocols) > 1 else ""
        lines.append(f"| {r['case']} | {r['setting']}{tag} | " + " | ".join(cells) +
                     f" | {_x(s['vs_fastest_dense'])} ({s['fastest_dense']}) | "
                     f"{_x(s['vs'].get('deepsparse')) if 'deepsparse' in lat else 'skipped'} | "
                     f"{_x(s['vs'].get('openvino')) if 'openvino' in lat else 'skipped'} | "
                     f"{s['nonzero_gmacs']:.1f} ({100 * s['of_gemm_peak']:.0f} %) |")
    skipped = {(r["case"], r["setting"], k): v for r in results for k, v in r["skipped"].items()}
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{c} {s} {k}: {v}" for (c, s, k), v in skipped.items())]
    worst = max((max(r["rel_error"].items(), key=lambda kv: kv[1]) + (r["case"],) for r in results),
                key=lambda v: v[1], default=None)
    if worst:
        lines += ["", f"Outputs checked against torch: largest relative error {worst[1]:.1e} "
                      f"({worst[0]}, {worst[2]}; OpenVINO's default precision is bf16 where the CPU has it)."]
    return "\n".join(lines) + "\n"


def write_report(command: str) -> str:
    """engines.md: one section per vector ISA with saved runs (this core's first)."""
    here = vector_isa()
    isas = sorted((d.name for d in OUT.iterdir() if d.is_dir()), key=lambda i: (i != here, i))
    parts = []
    for isa in isas:
        results = [json.loads(p.read_text()) for case in CASES for setting in SETTINGS for w in (0, 1)
                   if (p := result_path(case, setting, w, isa)).exists()]
        if results:
            parts.append(write_summary(results, command, isa))
    return "# The native engine beside every runtime\n\n" + "\n".join(parts)


def result_path(case: str, setting: str, rewarm: int, isa: str) -> Path:
    """Where one case / setting / protocol is saved on cores of one vector ISA: cold runs
    (rewarm 0) keep the original names, warm ones get ``_rewarm<k>``, so both protocols
    stay side by side."""
    return OUT / isa / (f"{case}_{setting}.json" if rewarm == 0 else f"{case}_{setting}_rewarm{rewarm}.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rewarm", type=int, default=0, choices=(0, 1),
                    help="untimed calls of each engine at its turn of every round (0: cold)")
    ap.add_argument("--fresh", action="store_true", help="re-run finished pairs too")
    ap.add_argument("--summary", action="store_true", help="only rewrite engines.md from the saved runs")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "SETTING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        case, setting = args.one
        res = run_one(case, setting, args.repeats, args.rewarm)
        atomic_write_text(result_path(case, setting, args.rewarm, res["fma_isa"]), json.dumps(res, indent=1))
        return 0
    isa = vector_isa()
    (OUT / isa).mkdir(parents=True, exist_ok=True)
    for case in args.cases.split(","):
        for setting in args.settings.split(","):
            path = result_path(case, setting, args.rewarm, isa)
            if not args.summary and (args.fresh or not path.exists()):
                cpus = "1" if SETTINGS[setting][1] == 1 else "0,1"
                print(f"== {case} {setting} (CPUs {cpus})", flush=True)
                env = dict(os.environ, OMP_NUM_THREADS=str(SETTINGS[setting][1]))
                subprocess.run(["taskset", "-c", cpus, sys.executable, __file__, "--one", case, setting,
                                "--repeats", str(args.repeats), "--rewarm", str(args.rewarm)], check=True, env=env)
    # the summary shows every saved pair, whichever cases / settings this call ran
    command = f".venv/bin/python benchmarks/engines.py --repeats {args.repeats} [--rewarm 1]"
    text = write_report(command)
    atomic_write_text(ROOT / "docs" / "benchmarks" / "engines.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
