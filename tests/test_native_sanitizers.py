"""The native engine's C tests and the model-file fuzzer under ASan + UBSan.

Runs ``make -C tests/native check``: the library sources, tests/native/test_engine.c,
test_kernels.c and fuzz_load.c built with ``-fsanitize=address,undefined
-fno-sanitize-recover=all -Wall -Wextra -Werror``; every test program, mobileprune_run on the
seed models of tests/native/data/ against torch's outputs, then the fuzzer (bounded to
about 45 s). Skipped with a one-line reason when there is no C compiler, make, or sanitizer
runtime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "native"
NATIVE_SRC = ROOT / "src" / "mobileprune" / "runtime" / "native" / "src"


def _skip_reason() -> str | None:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    if shutil.which("make") is None:
        return "no make"
    if not any(NATIVE_SRC.rglob("*.c")):
        return "the native engine's C sources are not there yet"
    probe = subprocess.run([cc, "-x", "c", "-fsanitize=address,undefined", "-o", os.devnull, "-"],
                           input="int main(void) { return 0; }\n", capture_output=True,
                           text=True)
    if probe.returncode != 0:
        return f"{cc} cannot link -fsanitize=address,undefined (no sanitizer runtime)"
    return None


def test_native_check_under_sanitizers():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # the objects first, two compilers at a time (the CI machine has 2 cores), then the
    # checks one after the other as `make check` runs them
    out = ""
    for args in (["-j", "2", "build"], ["check"]):
        r = subprocess.run(["make", "-C", str(TESTS), *args], capture_output=True, text=True,
                           timeout=900)
        out += r.stdout + r.stderr
        if r.returncode != 0:
            break
    assert r.returncode == 0, f"make -C tests/native check failed:\n{out[-8000:]}"
    assert "fuzz_load:" in out and "FAIL" not in out, out[-4000:]
