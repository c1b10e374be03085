"""ctypes binding of the native engine's C API (``native/include/mobileprune.h``).

One entry per function of the header in :data:`SIGNATURES` (``restype, argtypes``); a test
parses the header and checks that every prototype is bound with the same number of
arguments. The library is the shared object built from ``native/src`` by ``setup.py``
(``mobileprune/runtime/_mpnative*.so``; ``pip install -e .`` or
``python setup.py build_ext --inplace``), or the file named by the environment variable
``MOBILEPRUNE_NATIVE_LIB`` (a sanitizer build, for instance). It is loaded on first use.

Status codes become exceptions carrying ``mp_last_error()``'s one-line message
(:func:`check`): ``MP_INVALID_MODEL`` / ``MP_SHAPE_MISMATCH`` ->
:class:`~mobileprune.runtime.SparseFormatError`, ``MP_UNSUPPORTED_OP`` ->
:class:`~mobileprune.runtime.UnsupportedOpError` (a subclass of it),
``MP_INVALID_ARGUMENT`` -> ``ValueError``, ``MP_OUT_OF_MEMORY`` -> ``MemoryError``,
anything else -> :class:`~mobileprune.runtime.NativeError`.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from ctypes import POINTER, c_char_p, c_double, c_int, c_int64, c_size_t, c_uint32, c_void_p

from . import NativeError, SparseFormatError, UnsupportedOpError

__all__ = ["lib", "check", "SIGNATURES", "STATUS", "PLAN_DEFAULT", "PLAN_FORCE_DENSE",
           "PLAN_FORCE_SPARSE", "PLAN_NO_TUNE", "PLAN_PORTABLE", "MAX_DIMS", "library_path"]

# mp_status (mobileprune.h)
MP_OK = 0
STATUS = {0: "MP_OK", 1: "MP_INVALID_ARGUMENT", 2: "MP_INVALID_MODEL", 3: "MP_UNSUPPORTED_OP",
          4: "MP_SHAPE_MISMATCH", 5: "MP_OUT_OF_MEMORY", 6: "MP_UNSUPPORTED_HARDWARE",
          7: "MP_IO_ERROR"}
# flags of mp_plan_create
PLAN_DEFAULT = 0
PLAN_FORCE_DENSE = 1
PLAN_FORCE_SPARSE = 2
PLAN_NO_TUNE = 4
PLAN_PORTABLE = 8
PLAN_PROFILE = 16
MAX_DIMS = 8

_status = c_int
_handle = c_void_p  # mp_model* / mp_plan* (opaque)
_out_handle = POINTER(c_void_p)

#: name -> (restype, argtypes): every function of mobileprune.h
SIGNATURES: dict[str, tuple] = {
    "mp_status_string": (c_char_p, [_status]),
    "mp_version": (c_char_p, []),
    "mp_format_version": (c_uint32, []),
    "mp_cpu_isa": (c_char_p, []),
    "mp_last_error": (c_char_p, []),
    "mp_model_load": (_status, [c_void_p, c_size_t, _out_handle]),
    "mp_model_load_file": (_status, [c_char_p, _out_handle]),
    "mp_model_free": (None, [_handle]),
    "mp_model_num_inputs": (c_size_t, [_handle]),
    "mp_model_num_outputs": (c_size_t, [_handle]),
    "mp_model_input_shape": (_status, [_handle, c_size_t, POINTER(c_int64), c_size_t,
                                       POINTER(c_size_t)]),
    "mp_model_output_shape": (_status, [_handle, c_size_t, POINTER(c_int64), c_size_t,
                                        POINTER(c_size_t)]),
    "mp_plan_create": (_status, [_handle, c_size_t, c_size_t, c_uint32, _out_handle]),
    "mp_plan_workspace_size": (c_size_t, [_handle]),
    "mp_plan_set_workspace": (_status, [_handle, c_void_p, c_size_t]),
    "mp_plan_run": (_status, [_handle, POINTER(c_void_p), POINTER(c_void_p)]),
    "mp_plan_describe": (_status, [_handle, c_void_p, c_size_t, POINTER(c_size_t)]),
    "mp_plan_profile": (_status, [_handle, POINTER(c_double), c_size_t, POINTER(c_size_t)]),
    "mp_plan_free": (None, [_handle]),
}

_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def library_path() -> str:
    """The shared library to load: ``$MOBILEPRUNE_NATIVE_LIB`` or the one built in the
    package directory. Raises :class:`NativeError` (saying how to build it) if none."""
    env = os.environ.get("MOBILEPRUNE_NATIVE_LIB")
    if env:
        if not os.path.isfile(env):
            raise NativeError(f"MOBILEPRUNE_NATIVE_LIB={env!r} is not a file")
        return env
    found = sorted(p for pat in ("_mpnative*.so", "_mpnative*.dylib", "_mpnative*.pyd")
                   for p in glob.glob(os.path.join(glob.escape(_HERE), pat)))
    if not found:
        raise NativeError("the native engine is not built (no mobileprune/runtime/_mpnative*.so): "
                          "run `pip install -e .` or `python setup.py build_ext --inplace` in the "
                          "source tree (needs a C compiler), or set MOBILEPRUNE_NATIVE_LIB")
    return found[-1]


def lib() -> ctypes.CDLL:
    """The loaded library with every function of :data:`SIGNATURES` typed (loaded once)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            path = library_path()
            try:
                dll = ctypes.CDLL(path)
            except OSError as exc:
                raise NativeError(f"cannot load the native engine {path}: {exc}") from exc
            for name, (res, args) in SIGNATURES.items():
                try:
                    fn = getattr(dll, name)
                except AttributeError as exc:
                    raise NativeError(f"{path} has no function {name} (an old or foreign "
                                      f"build: rebuild it)") from exc
                fn.restype = res
                fn.argtypes = args
            if dll.mp_format_version() != 3:
                raise NativeError(f"{path} reads model format {dll.mp_format_version()}, this "
                                  f"package writes 3: rebuild the library")
            _lib = dll
    return _lib


def last_error() -> str:
    msg = lib().mp_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def check(status: int, what: str = "") -> None:
    """Raise the exception of a failed call's status (with ``mp_last_error``'s text,
    prefixed by ``what`` when given); return quietly on MP_OK."""
    if status == MP_OK:
        return
    msg = last_error() or STATUS.get(status, f"status {status}")
    if what:
        msg = f"{what}: {msg}"
    if status in (2, 4):  # invalid model, shape mismatch
        raise SparseFormatError(msg)
    if status == 3:
        raise UnsupportedOpError(msg)
    if status == 1:
        raise ValueError(msg)
    if status == 5:
        raise MemoryError(msg)
    raise NativeError(f"{msg} ({STATUS.get(status, status)})")


def isa() -> str:
    """The kernels this CPU runs (``mp_cpu_isa``: avx512f / avx2 / neon / scalar)."""
    return lib().mp_cpu_isa().decode()


def version() -> str:
    return lib().mp_version().decode()


def shape(fn, handle, index: int) -> tuple[int, ...]:
    """``mp_model_input_shape`` / ``mp_model_output_shape`` as a tuple."""
    dims = (c_int64 * MAX_DIMS)()
    nd = c_size_t()
    check(fn(handle, index, dims, MAX_DIMS, ctypes.byref(nd)))
    return tuple(int(d) for d in dims[:nd.value])


def profile(plan) -> list[float]:
    """``mp_plan_profile``: seconds per op of the plan's last run (a plan created with
    :data:`PLAN_PROFILE`), in the order of the lines of :func:`describe`."""
    L = lib()
    count = c_size_t()
    check(L.mp_plan_profile(plan, None, 0, ctypes.byref(count)))
    secs = (c_double * max(count.value, 1))()
    check(L.mp_plan_profile(plan, secs, count.value, ctypes.byref(count)))
    return list(secs[:count.value])


def describe(plan) -> str:
    """``mp_plan_describe`` of a plan handle as text."""
    L = lib()
    need = c_size_t()
    size = 8192
    while True:
        buf = ctypes.create_string_buffer(size)
        check(L.mp_plan_describe(plan, buf, size, ctypes.byref(need)))
        if need.value < size:
            return buf.value.decode("utf-8", "replace")
        size = need.value + 1
