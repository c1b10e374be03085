"""The native engine on arm64: cross-built with aarch64-linux-gnu-gcc, run under qemu-user.

The library and ``mobileprune_run`` are built once per source version with the bundle's
CMakeLists.txt (``-Werror``; a direct compiler call when CMake is absent) into pytest's cache
directory and run under ``qemu-aarch64 -L /usr/aarch64-linux-gnu`` (NEON kernels).
Equivalence: LeNet-5, the FER-2013 CNN (seed 003 Table 3), the HAR 1-D CNN and CIFAR
ResNet-20 at 0 %, 90 % unstructured and a seed / repository config, exported as format 3,
must match torch (eval mode, the same float32 weights) to max abs error <= 1e-4 x max
|output| on random inputs of batch 2, with the engine's kernel choice and with every layer
forced onto the dense, sparse and portable kernels. Plus the program's contract: wrong input size -> exit
2 with the expected size, a corrupt model -> exit 1 with the loader's message.

Skipped with a one-line reason when the cross compiler or qemu is absent (``make
cross-test`` installs them); ``MOBILEPRUNE_REQUIRE_CROSS=1`` turns the skip into a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileprune.sparsity.admm import ADMMPruner
from mobileprune.models import build_model
from mobileprune.runtime import format3
from mobileprune.runtime.model import read_container
from mobileprune.deploy.sparse import export_sparse
from mobileprune.sparsity.targets import load_config

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "src" / "mobileprune" / "runtime" / "native"
CROSS_CC = os.environ.get("CROSS_CC", "aarch64-linux-gnu-gcc")
QEMU = os.environ.get("QEMU_AARCH64", "qemu-aarch64")
SYSROOT = os.environ.get("AARCH64_SYSROOT", "/usr/aarch64-linux-gnu")
REL_TOL = 1e-4
BATCH = 2

#: seed 003, Table 3: the FER-2013 CNN's per-layer sparsities (benchmarks/whole_model.py)
FER_TABLE3 = {"conv1": 0.20, "conv2": 0.60, "conv3": 0.70, "conv4": 0.80, "conv5": 0.80,
              "conv6": 0.85, "conv7": 0.85, "conv8": 0.85, "conv9": 0.85, "fc1": 0.70,
              "fc2": 0.60, "fc3": 0.60}

#: model -> (build_model kwargs, per-sample input shape, seed / repository config)
MODELS = {
    "lenet5": ({}, (1, 28, 28), lambda: {"layers": load_config("lenet5-71x")["stages"][0]["layers"]}),
    "fernet": ({}, (1, 48, 48), lambda: {"layers": FER_TABLE3}),
    # UCI-HAR's shape; filter-structured + unstructured (empty CSR rows, as the group
    # lasso methods of benchmarks/suites/ucihar.yaml leave)
    "harcnn": ({"in_channels": 9, "num_classes": 6, "window": 128}, (9, 128),
               lambda: {"types": ["Conv1d", "Linear"], "exclude": ["fc2"],
                        "default": [{"structure": "filter", "sparsity": 0.3}, {"sparsity": 0.8}]}),
    # benchmarks/structured/resnet20.yaml, run "filters-35"
    "resnet20": ({}, (3, 32, 32), lambda: {"types": ["Conv2d"],
                                           "default": {"sparsity": 0.35, "structure": "filter"}}),
}


def _missing_tools() -> str | None:
    for tool in (CROSS_CC, QEMU):
        if shutil.which(tool) is None:
            return (f"{tool} not found (make cross-test installs gcc-aarch64-linux-gnu and "
                    "qemu-user)")
    if not Path(SYSROOT).is_dir():
        return f"{SYSROOT} (the arm64 C library for qemu -L) not found"
    return None


def _source_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(NATIVE.rglob("*")):
        if p.is_file() and p.suffix in (".c", ".h", ".inc", ".txt"):
            h.update(str(p.relative_to(NATIVE)).encode() + b"\0" + p.read_bytes())
    h.update(subprocess.run([CROSS_CC, "--version"], capture_output=True).stdout)
    return h.hexdigest()[:20]


def _build(out: Path) -> None:
    """Cross-build mobileprune_run into ``out`` (a fresh directory)."""
    if shutil.which("cmake"):
        build = out / "cmake"
        cfg = ["cmake", "-S", str(NATIVE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
               "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
               f"-DCMAKE_C_COMPILER={CROSS_CC}", "-DMOBILEPRUNE_WERROR=ON"]
        for cmd in (cfg, ["cmake", "--build", str(build), "-j", "2"]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        shutil.copy2(build / "mobileprune_run", out / "mobileprune_run")
        return
    sources = sorted(str(p) for p in (NATIVE / "src").rglob("*.c"))
    cmd = [CROSS_CC, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{NATIVE / 'include'}",
           f"-I{NATIVE / 'src'}", *sources, str(NATIVE / "examples" / "mobileprune_run.c"),
           "-o", str(out / "mobileprune_run"), "-lpthread", "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"cross build failed:\n{r.stderr[-4000:]}"


@pytest.fixture(scope="session")
def arm64_run(request):
    """A function running the arm64 ``mobileprune_run`` under qemu with the given arguments."""
    reason = _missing_tools()
    if reason is None and not any((NATIVE / "src").rglob("*.c")):
        reason = "the native engine's C sources are not there yet"
    if reason is not None:
        if os.environ.get("MOBILEPRUNE_REQUIRE_CROSS"):
            pytest.fail(reason)
        pytest.skip(reason)
    cache_plugin = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = Path(cache_plugin.mkdir("native-cross")) if cache_plugin else Path(tempfile.mkdtemp())
    exe = cache / _source_digest() / "mobileprune_run"
    if not exe.exists():
        tmp = Path(tempfile.mkdtemp(dir=cache))
        _build(tmp)
        exe.parent.mkdir(exist_ok=True)
        os.replace(tmp / "mobileprune_run", exe)
        shutil.rmtree(tmp, ignore_errors=True)

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([QEMU, "-L", SYSROOT, str(exe), *args], capture_output=True,
                              text=True, timeout=timeout)

    return run


def _export_format3(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    old = path.with_suffix(".export")
    export_sparse(model, x, old)
    raw = old.read_bytes()
    if not format3.is_format3(raw):  # until export_sparse writes version 3 itself
        raw = format3.encode(*read_container(raw))
    path.write_bytes(raw)


def _pruned(name: str, level: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    kwargs, shape, seed_config = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics (folded by the exporter)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    if level == "90":
        ADMMPruner(model, {"default": 0.9}).finalize()
    elif level == "seed":
        ADMMPruner(model, seed_config()).finalize()
    return model.eval(), shape


def _density(model: torch.nn.Module) -> float:
    ws = [m.weight for m in model.modules()
          if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))]
    return float(sum(int((w != 0).sum()) for w in ws) / sum(w.numel() for w in ws))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A function ``(name, level) -> (model file, input file, torch's output)``: each model
    is pruned, run by torch and exported once for the module (the forced-kernel tests reuse
    the seed-config files of the first test)."""
    root = tmp_path_factory.mktemp("cross")
    done: dict[tuple[str, str], tuple[Path, Path, np.ndarray]] = {}

    def get(name: str, level: str) -> tuple[Path, Path, np.ndarray]:
        if (name, level) not in done:
            model, shape = _pruned(name, level)
            density = _density(model)
            assert (density > 0.99) if level == "0" else (density < 0.9)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(BATCH, *shape, generator=g)
            with torch.no_grad():
                ref = model(x).numpy()
            mps, inp = root / f"{name}-{level}.mps", root / f"{name}-{level}.in.bin"
            _export_format3(model, x, mps)
            x.numpy().astype("<f4").tofile(inp)
            done[(name, level)] = (mps, inp, ref)
        return done[(name, level)]

    return get


def _check_against_torch(arm64_run, exported, tmp_path: Path, name: str, level: str,
                         *flags: str) -> None:
    mps, inp, ref = exported(name, level)
    r = arm64_run(str(mps), str(inp), str(tmp_path / "out.bin"), "--batch", str(BATCH), *flags)
    assert r.returncode == 0, f"mobileprune_run failed ({r.returncode}): {r.stderr}"
    y = np.fromfile(tmp_path / "out.bin", dtype="<f4")
    assert y.size == ref.size, f"{y.size} floats written, torch gives {ref.shape}"
    err = np.abs(y.reshape(ref.shape) - ref).max()
    assert err <= REL_TOL * np.abs(ref).max(), \
        f"{name} at {level} {flags}: max abs error {err:.3g} vs max |y| {np.abs(ref).max():.3g}"


@pytest.mark.parametrize("level", ["0", "90", "seed"])
@pytest.mark.parametrize("name", list(MODELS))
def test_arm64_matches_torch(arm64_run, exported, tmp_path, name, level):
    """The engine's own kernel choice (cost model, no timing under qemu); two threads on
    the largest model (the work split on arm64)."""
    threads = "2" if name == "fernet" else "1"
    _check_against_torch(arm64_run, exported, tmp_path, name, level, "--threads", threads,
                         "--no-tune")


@pytest.mark.parametrize("kernels", ["--dense", "--sparse", "--portable"])
@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_arm64_forced_kernels_match_torch(arm64_run, exported, tmp_path, name, kernels):
    """Every layer on the dense, the sparse or the portable C kernels (the NEON paths the
    cost model did not pick above), at the seed / repository config."""
    _check_against_torch(arm64_run, exported, tmp_path, name, "seed", kernels, "--no-tune")


def test_arm64_refuses_bad_input_and_model(arm64_run, tmp_path):
    model, shape = _pruned("lenet5", "90")
    x = torch.randn(1, *shape)
    _export_format3(model, x, tmp_path / "m.mps")
    (tmp_path / "short.bin").write_bytes(b"\0" * (4 * 784 - 4))
    r = arm64_run(str(tmp_path / "m.mps"), str(tmp_path / "short.bin"), str(tmp_path / "o.bin"))
    assert r.returncode == 2 and "(1, 28, 28)" in r.stderr and "3136 bytes" in r.stderr, r.stderr
    raw = bytearray((tmp_path / "m.mps").read_bytes())
    raw[8] = 9  # format version 9
    (tmp_path / "bad.mps").write_bytes(bytes(raw))
    (tmp_path / "in.bin").write_bytes(b"\0" * (4 * 784))
    r = arm64_run(str(tmp_path / "bad.mps"), str(tmp_path / "in.bin"), str(tmp_path / "o.bin"))
    assert r.returncode == 1 and "version" in r.stderr, r.stderr
    r = arm64_run(str(tmp_path / "m.mps"), str(tmp_path / "in.bin"), str(tmp_path / "o.bin"),
                  "--describe")
    assert r.returncode == 0 and "conv1" in r.stdout and "fc1" in r.stdout, r.stdout + r.stderr
