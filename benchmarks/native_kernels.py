"""Kernel benchmark of the native engine on the FER-2013 CNN layers (GMAC/s on nonzeros).

Builds ``benchmarks/native_kernels.c`` with the engine's conv / linear sources into a
shared library (the system C compiler, ``-O3`` as setup.py builds the engine), then for each layer of
``mobileprune.models.FERNet`` (input 1x48x48) at a random unstructured mask of the given
density, batch 1, one thread: the native operator's time (prepare + compute; auto choice,
forced sparse, forced dense), torch's dense layer (conv2d / linear, 1 thread) and torch's
dense fp32 1024x1024 matmul peak, all in this one process, the peak re-measured beside each
layer. Times are medians of the thread's CPU time (native and torch alike: other processes on a
shared core do not count). Pin the process: ``taskset -c 1``.

    taskset -c 1 python benchmarks/native_kernels.py [--density 0.1] [--out docs/benchmarks/native_kernels.md]
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from _machine import cpu_model  # noqa: E402
SRC = os.path.join(ROOT, "src", "mobileprune", "runtime", "native", "src")
CONV = [(1, 32, 48), (32, 32, 48), (32, 32, 48), (32, 64, 24), (64, 64, 24), (64, 64, 24),
        (64, 128, 12), (128, 128, 12), (128, 128, 12)]
FC = [(4608, 64), (64, 64), (64, 6)]
CHOICES = ("auto", "sparse", "dense")
NOTES = """What limits the sparse kernel (measured with micro-benchmarks of the kernel on this core,
thread CPU time, random offsets, 16 vectors of 16 pixels per nonzero): one 64-byte input load
per 16-lane FMA is inherent to unstructured 1-row blocks, and with shifted 3x3 taps 15 of 16
of those loads straddle a cache line. With the input slice in L1 that ceiling is about 35%
of the core's register FMA peak (27-31 GMAC/s here); the same loop with every load aligned
reaches about 60% (46-49 GMAC/s); from L2 it drops to 18-20%. Rows with ~10 nonzeros per
block lose another quarter to the per-block bias / store / loop exit. Aligned loads rebuilt
from two aligned loads and a permute ran slower (22 vs 27-31 GMAC/s: the permute competes
with the FMA on port 5); shifted aligned copies of the input multiply the L1 footprint by the
number of taps. The dense kernel (4-row blocks of every column, one load per 4 FMAs) runs at
about 60-75% of the matmul peak, about as fast as torch's dense conv2d or faster.

On an AVX2-only AMD EPYC (Zen 3, register FMA peak 47 GMAC/s at 8 lanes) the same loop of
12 vectors of 8 pixels per nonzero reaches 30 GMAC/s with unaligned loads from L1, 41 with
aligned ones, 18-20 from L2, and 20-24 with rows of 29 nonzeros (the FER layers' count per
row) from L1: the per-row start, stores and loop exit cost about a fifth. Between channel
chunks the partial sums are whole vectors in a scratch of their own (the 12x12 layers with
2-4 chunks went 20-25% faster than with partial sums in the masked output lanes); a
permute-compress of the masked output vectors and vmaskmovps stores both measured slower
than the scalar lane loop there, and so did an 8-lane gather kernel for CSR linear rows.

Other input layouts, same core, the kernel's loop alone on a random 90 % layer
(`benchmarks/spconv_layouts.c`, minimum of 300 interleaved runs, useful multiply-adds):
against the engine's flat padded rows (19.5-21.5 GMAC/s at 32-64 channels, 13.4 at 128),
re-reading one block's input from L1 gains 1.00-1.06x (so the cache is not what limits
it), prefetching the next block's slice 0.96-1.08x, three copies shifted by kx so that
every load is aligned 0.89-1.02x (the footprint triples), and 8 tiles of the image as the
8 lanes, each stored with its halo so that every load is aligned, 1.09-1.16x, before the
cost of writing that layout (halo rows twice, outputs scattered at the layout's edges).
None of them is worth a second layout on this core; the loop runs near its issue limit
(one broadcast, one offset and 12 loads per 12 FMAs, half the loads straddling a line).
"""


def build(tmp: str) -> ctypes.CDLL:
    """Compile the benchmark harness and the operators into a shared library."""
    out = os.path.join(tmp, "libmp_bench.so")
    srcs = [os.path.join(ROOT, "benchmarks", "native_kernels.c")]
    srcs += [os.path.join(SRC, f) for f in ("conv.c", "linear.c", "cpu.c")]
    srcs += sorted(glob.glob(os.path.join(SRC, "kernels", "*.c")))
    cmd = [os.environ.get("CC", "cc"), "-std=c11", "-O3", "-fPIC", "-shared",
           "-DMP_BENCH_NO_MAIN", *srcs, "-lm", "-o", out]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(out)
    dbl3, buf = ctypes.c_double * 3, ctypes.c_char * 480
    lib.mp_bench_conv.argtypes = [ctypes.c_int] * 5 + [ctypes.c_double, ctypes.c_int,
                                                         ctypes.c_int, dbl3, buf]
    lib.mp_bench_conv.restype = ctypes.c_int64
    lib.mp_bench_linear.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_int,
                                    ctypes.c_int, ctypes.c_int, dbl3, buf]
    lib.mp_bench_linear.restype = ctypes.c_int64
    lib.mp_bench_fma_peak.restype = ctypes.c_double
    return lib


def torch_median(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        ts.append(time.thread_time() - t0)
    return statistics.median(ts)


def matmul_peak(torch) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 1024 ** 3 / torch_median(lambda: a @ b, 9) * 1e-9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=201)
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    ap.add_argument("--append", action="store_true",
                    help="append the table to --out as a new section (another ISA: set "
                         "MOBILEPRUNE_ISA=avx2 / scalar)")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    rows, tot, macs_tot, peaks = [], {c: 0.0 for c in CHOICES}, 0.0, []
    tdense_tot = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(tmp)
        fma = lib.mp_bench_fma_peak()
        layers = [("conv%d" % (i + 1), "conv", c) for i, c in enumerate(CONV)]
        layers += [("fc%d" % (i + 1), "fc", c) for i, c in enumerate(FC)]
        for name, kind, shape in layers:
            t = (ctypes.c_double * 3)()
            desc = (ctypes.c_char * 480)()
            if kind == "conv":
                cin, cout, hw = shape
                dens = 1.0 if cin == 1 else args.density
                nnz = lib.mp_bench_conv(cin, cout, hw, hw, 3, dens, args.reps, -1, t, desc)
                macs = nnz * hw * hw
                conv = torch.nn.Conv2d(cin, cout, 3, padding=1).eval()
                x = torch.randn(1, cin, hw, hw)
                with torch.no_grad():
                    td = torch_median(lambda: torch.relu(conv(x)), 51)
            else:
                fin, fout = shape
                nnz = lib.mp_bench_linear(fin, fout, args.density, 1, args.reps, -1, t, desc)
                macs = nnz
                lin = torch.nn.Linear(fin, fout).eval()
                x = torch.randn(1, fin)
                with torch.no_grad():
                    td = torch_median(lambda: torch.relu(lin(x)), 51)
            peak = matmul_peak(torch)
            peaks.append(peak)
            d = desc.raw.decode(errors="replace")
            auto_desc = d[:160].split("\0")[0]
            for i, c in enumerate(CHOICES):
                tot[c] += t[i]
            tdense_tot += td
            macs_tot += macs
            g = macs / t[0] * 1e-9
            rows.append((name, t[0] * 1e6, t[1] * 1e6, t[2] * 1e6, td * 1e6, g, 100 * g / peak,
                         td / t[0], auto_desc))
            print("%-5s %8.1f %8.1f %8.1f  torch %8.1f  %5.1f GMAC/s %4.0f%% of peak %5.1f  %s"
                  % (name, t[0] * 1e6, t[1] * 1e6, t[2] * 1e6, td * 1e6, g, 100 * g / peak,
                     peak, auto_desc), flush=True)
    peak = statistics.median(peaks)
    g = macs_tot / tot["auto"] * 1e-9
    print("total %8.1f %8.1f %8.1f  torch %8.1f  %5.1f GMAC/s %4.0f%% of peak %.1f (fma %.1f)"
          % (tot["auto"] * 1e6, tot["sparse"] * 1e6, tot["dense"] * 1e6, tdense_tot * 1e6, g,
             100 * g / peak, peak, fma))
    if args.out:
        write_md(args, rows, tot, tdense_tot, macs_tot, peak, fma)
    return 0


def write_md(args, rows, tot, tdense_tot, macs_tot, peak, fma) -> None:
    g = macs_tot / tot["auto"] * 1e-9
    isa = os.environ.get("MOBILEPRUNE_ISA", "")
    lines = [] if args.append else ["# Native kernels on the FER-2013 CNN layers", "", NOTES]
    lines += [
        "## %s (%s)" % ("kernels capped at MOBILEPRUNE_ISA=" + isa if isa else "best kernels of this CPU",
                        cpu_model()),
        "",
        "Command: `%staskset -c 1 python benchmarks/native_kernels.py --density %g --out %s%s`"
        % ("MOBILEPRUNE_ISA=%s " % isa if isa else "", args.density, args.out,
           " --append" if args.append else ""),
        "",
        "Machine: %s, %s; %d repetitions per layer (median). Layers of"
        " `mobileprune.models.FERNet` (input 1x48x48, 3x3 convs with padding 1, ReLU fused),"
        " random unstructured masks at density %g (conv1 dense: 288 weights), batch 1, one"
        " thread. Native time: prepare + compute of the operator, thread CPU time; torch: its"
        " dense layer, thread CPU time too (torch runs one thread in the caller's), same process. Peak: torch's dense fp32 1024x1024 matmul at one"
        " thread, measured beside every layer (median %.1f GMAC/s in this run); raw register"
        " FMA peak of the core %s."
        % (cpu_model(), sys.platform, args.reps, args.density,
           peak, "%.1f GMAC/s" % fma if fma else "not measured (AVX-512 cores only)"),
        "",
        "| layer | auto us | sparse us | dense us | torch dense us | GMAC/s (nonzeros, auto) |"
        " % of matmul peak | vs torch | kernel, storage, choice |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, ta, ts, tdn, td, gm, pct, sp, desc in rows:
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f%% | %.1fx | `%s` |"
                     % (name, ta, ts, tdn, td, gm, pct, sp, desc))
    lines.append("| **total** | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f%% | %.1fx | |"
                 % (tot["auto"] * 1e6, tot["sparse"] * 1e6, tot["dense"] * 1e6,
                    tdense_tot * 1e6, g, 100 * g / peak, tdense_tot / tot["auto"]))
    lines += ["", ""]
    with open(os.path.join(ROOT, args.out) if not os.path.isabs(args.out) else args.out,
              "a" if args.append else "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
