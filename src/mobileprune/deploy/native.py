"""Native bundle (:func:`export_native`): the sparse model file with the C engine's
sources, for a phone or any C toolchain; checked in the Python runtime (the same engine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mobileprune.deploy.common import as_args, prepare_with_reference, zero_fraction
from mobileprune.deploy.numerics import Check, verify
from mobileprune.errors import ConfigError, ExportDependencyError

__all__ = ["export_native", "BUNDLE_MARK", "BUNDLE_FILES"]


#: first line of a bundle's README.txt: how export_native recognises a previous bundle
BUNDLE_MARK = "mobileprune native bundle"
#: what a bundle holds besides the C sources
BUNDLE_FILES = ("model.mps", "input.bin", "expected.bin", "README.txt")
_NATIVE_PARTS = ("include", "src", "examples", "CMakeLists.txt")

_README = """{mark}: {arch}

model.mps      the model (mobileprune model file, format version 3; docs/native_format.md)
include/       the engine's public C API: mobileprune.h (usage example at its top)
src/           the engine's C sources (C11, no dependency but libm and pthreads)
CMakeLists.txt builds the static library libmobileprune and the example mobileprune_run
examples/      mobileprune_run.c: runs a model file on raw float32 data
input.bin      an example input: raw little-endian float32, C order, {inputs}
expected.bin   PyTorch's output for it, the same way: {outputs}

Build and run on this machine (needs cmake and a C compiler; no Python, no torch):

    cmake -S . -B build && cmake --build build
    ./build/mobileprune_run model.mps input.bin output.bin --batch {batch}

output.bin then matches expected.bin to float32 rounding (within 1e-4 of the largest
output). Several inputs or outputs are stored one after the other, in order.

Linux arm64 (cross-compiled, run under qemu):

    cmake -S . -B build-arm64 -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \\
        -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc && cmake --build build-arm64
    qemu-aarch64 -L /usr/aarch64-linux-gnu ./build-arm64/mobileprune_run model.mps input.bin \\
        output.bin --batch {batch}

Android (NDK): add -DCMAKE_TOOLCHAIN_FILE=$ANDROID_NDK/build/cmake/android.toolchain.cmake
-DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-24 to the first cmake command and link
libmobileprune.a into your JNI library (mp_model_load_file / mp_plan_create / mp_plan_run).
"""


def _native_dir() -> Path:
    from mobileprune import runtime
    return Path(runtime.__file__).resolve().parent / "native"


def _is_bundle(d: Path) -> bool:
    readme = d / "README.txt"
    try:
        return readme.is_file() and readme.read_text(errors="replace").startswith(BUNDLE_MARK)
    except OSError:
        return False


def _bundle_target(out_dir: str | os.PathLike, fn: str) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{fn}: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_bundle(out):
        raise ConfigError(f"{fn}: {out} is a non-empty directory that is not a previous bundle "
                          f"(no README.txt starting with {BUNDLE_MARK!r}); choose another --out")
    return out


def _copy_native(dst: Path) -> list[str]:
    """Copy the engine's sources (include/, src/, examples/, CMakeLists.txt) into ``dst``."""
    import shutil

    src = _native_dir()
    if not (src / "include" / "mobileprune.h").is_file():
        raise ExportDependencyError(f"export_native: the engine's sources are missing from {src}")
    keep = (".c", ".h", ".inc", ".txt", ".md", ".cmake")
    copied = []
    for part in _NATIVE_PARTS:
        p = src / part
        if p.is_file():
            shutil.copy2(p, dst / part)
            copied.append(part)
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and (f.suffix in keep or f.name == "CMakeLists.txt"):
                    rel = f.relative_to(src)
                    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dst / rel)
                    copied.append(rel.as_posix())
    return copied


def _float32_bytes(tensors) -> bytes:
    import numpy as np

    return b"".join(np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4").tobytes()
                    for t in tensors)


def _check_bundle_model(path: Path, args: tuple, ref: list[Tensor], name: str) -> tuple:
    """Run ``model.mps`` in the Python runtime (the same engine): ``(max diff, verified,
    note)``; not verified when the engine is not built here."""
    from mobileprune import runtime

    try:
        sm = runtime.load(path)
    except runtime.NativeError as exc:
        return None, False, f"not verified: {exc}"
    got = sm(*[a.numpy() for a in args])
    got = list(got) if isinstance(got, tuple) else [got]
    diff = verify(lambda a: got, [Check("example_input", args, ref)],
                  f"export_native: the model file of {name}")
    return diff, True, None


def export_native(model: nn.Module, example_input: Any, out_dir: str | os.PathLike, *,
                  value_dtype: str = "float32", fold_bn: bool = True) -> dict:
    """Write a self-contained native bundle of ``model`` to the directory ``out_dir``.

    The bundle (no Python or torch needed to use it): ``model.mps`` (the sparse model
    file, :func:`mobileprune.deploy.sparse.export_sparse`), the engine's public header
    (``include/mobileprune.h``) and C sources (``src/``), ``CMakeLists.txt`` (a static
    library and the example program ``mobileprune_run``, ``examples/``), ``input.bin`` /
    ``expected.bin`` (``example_input`` and the model's output on it, raw little-endian
    float32, several inputs / outputs one after the other) and ``README.txt`` with the
    build and run commands (host, Linux arm64, Android).

    ``out_dir`` must not exist, be empty, or hold a previous bundle, which is replaced
    atomically (the new bundle is written to a temporary directory beside it, then
    renamed). The model file is checked against the model in the Python runtime
    (``"verified"``; ``False`` with a ``"note"`` when the engine is not built here).

    Returns ``{"path", "format": "native", "files", "bytes" (of model.mps),
    "max_abs_diff", "verified", "zero_fraction", "size_report"}``.

    Raises:
        ConfigError: bad ``example_input`` or ``out_dir``.
        UnsupportedModelError: the model has an op the runtime cannot run, or its file does
            not reproduce it.
    """
    import shutil
    import tempfile

    from mobileprune.deploy.sparse import export_sparse

    fn = "export_native"
    args = as_args(example_input, fn)
    if not all(a.is_floating_point() for a in args):
        raise ConfigError(f"{fn}: every example input must be a floating point tensor (the "
                          f"engine runs float32)")
    out = _bundle_target(out_dir, fn)
    work, ref = prepare_with_reference(model, args, fn)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        rep = export_sparse(work, args if len(args) > 1 else args[0], tmp / "model.mps",
                            value_dtype=value_dtype, fold_bn=fold_bn)
        diff, verified, note = _check_bundle_model(tmp / "model.mps", args, ref, type(model).__name__)
        files = _copy_native(tmp)
        (tmp / "input.bin").write_bytes(_float32_bytes(args))
        (tmp / "expected.bin").write_bytes(_float32_bytes(ref))
        shapes = lambda ts: ", ".join(str(tuple(t.shape)) for t in ts)  # noqa: E731
        (tmp / "README.txt").write_text(_README.format(
            mark=BUNDLE_MARK, arch=rep.get("architecture"), inputs=shapes(args),
            outputs=shapes(ref), batch=int(args[0].shape[0])))
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res = {"path": out, "format": "native", "files": sorted(list(BUNDLE_FILES) + files),
           "bytes": (out / "model.mps").stat().st_size, "max_abs_diff": diff,
           "verified": verified, "zero_fraction": zero_fraction(work), "size_report": rep}
    if note:
        res["note"] = note
    return res


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
