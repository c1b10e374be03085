"""Torch-free inference runtime for mobileprune sparse model files.

The arithmetic runs in mobileprune's native engine, a C library (``runtime/native/``, public
header ``native/include/mobileprune.h``) built when the package is installed and called
through ctypes; besides it only numpy is required. Nothing here imports torch, so a device
only needs numpy and the library to run a pruned model::

    from mobileprune.runtime import load
    model = load("fernet.mps")                # SparseFormatError if the file is bad
    logits = model(images)                   # float32 (N, 1, 48, 48) -> (N, 6)
    print(model.summary())                   # per layer: kernel, storage, density, reason

Files are written by :func:`mobileprune.deploy.sparse.export_sparse` (which needs
torch); the same file runs on a phone through the C API (:func:`mobileprune.export_native`
writes a self-contained bundle). The file format and the execution are documented in
:mod:`mobileprune.runtime.model` and ``docs/native_format.md``.
"""

from __future__ import annotations

try:  # mobileprune.errors is torch-free; keep the runtime usable on its own as well
    from ..errors import MobilePruneError as _Base
except ImportError:  # pragma: no cover - runtime copied without the rest of the package
    class _Base(Exception):  # type: ignore[no-redef]
        pass


class SparseFormatError(_Base, ValueError):
    """A sparse model file is not valid: wrong magic, unknown version, truncated or
    corrupt data, or arrays/shapes that do not match the ops they belong to."""


class UnsupportedOpError(SparseFormatError):
    """A valid model file holds an op or attribute this build of the engine cannot run
    (``MP_UNSUPPORTED_OP``)."""


class NativeError(_Base, RuntimeError):
    """The native engine is missing, cannot be loaded, or failed for a reason other than
    the model or the arguments (``MP_UNSUPPORTED_HARDWARE``, ``MP_IO_ERROR``)."""


from .model import (  # noqa: E402
    FORMAT_VERSION, MAGIC, READ_VERSIONS, LayerPlan, LayerTime, SparseModel, backend, check_model,
    convert, load, model_bytes, read_container, write_bytes, write_container,
)

__all__ = ["SparseFormatError", "UnsupportedOpError", "NativeError", "SparseModel", "LayerPlan",
           "LayerTime", "load", "read_container", "write_container", "model_bytes", "write_bytes", "check_model",
           "convert", "MAGIC", "FORMAT_VERSION", "READ_VERSIONS", "backend"]
