"""Build of mobileprune's native engine (the rest of the metadata is in pyproject.toml).

The engine is plain C (src/mobileprune/runtime/native/), compiled with the system C compiler
into one shared library, ``mobileprune/runtime/_mpnative*.so``, that
:mod:`mobileprune.runtime._native` loads with ctypes (no Python C API: the library has no
``PyInit`` function, the same file a C or JNI program links). ``pip install -e .`` builds it
in place; ``python setup.py build_ext --inplace`` rebuilds it after a change to a .c/.h file
(the Makefile does that before the tests).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE = Path("src", "mobileprune", "runtime", "native")
FLAGS = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Werror", "-pthread"]


def native_sources() -> list[str]:
    """Every .c file under native/src (recursively), sorted, relative to this file."""
    src = ROOT / NATIVE / "src"
    return sorted(p.relative_to(ROOT).as_posix() for p in src.rglob("*.c"))


class BuildNative(build_ext):
    """build_ext for a plain C shared library: no Python exports, and one clear line when
    there is no working C compiler."""

    def get_export_symbols(self, ext):  # no PyInit_* function: the library is C only
        return []

    def run(self):
        try:
            super().run()
        except Exception as exc:  # distutils' CompileError / LinkError / CCompilerError
            name = type(exc).__name__
            if name in ("CompileError", "LinkError", "CCompilerError", "DistutilsExecError",
                        "DistutilsPlatformError") or isinstance(exc, OSError):
                cc = os.environ.get("CC", "cc")
                sys.exit(f"error: building mobileprune's native engine failed ({name}: {exc}); "
                         f"it needs a C11 compiler ({cc!r}, e.g. apt-get install gcc / "
                         f"xcode-select --install)")
            raise


def extensions() -> list[Extension]:
    sources = native_sources()
    if not sources:  # the engine's sources are not there (a partial checkout)
        print("warning: no C sources under " + NATIVE.as_posix() + "/src: the native engine "
              "is not built", file=sys.stderr)
        return []
    return [Extension(
        "mobileprune.runtime._mpnative", sources=sources,
        include_dirs=[(NATIVE / "include").as_posix(), (NATIVE / "src").as_posix()],
        extra_compile_args=FLAGS, extra_link_args=["-pthread"], libraries=["m", "pthread"],
        depends=sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / NATIVE).rglob("*")
                       if p.suffix in (".h", ".inc")),
        language="c")]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildNative})
