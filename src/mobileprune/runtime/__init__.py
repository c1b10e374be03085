"""Torch-free inference runtime for mobileprune sparse model files.

Only numpy is required; numba (``pip install mobileprune[runtime]``) makes the kernels
fast (set ``MOBILEPRUNE_NO_NUMBA=1`` to force the numpy fallback). Nothing here imports
torch, so a device only needs numpy (+ numba) to run a pruned model::

    from mobileprune.runtime import load
    model = load("fernet.mpsparse")          # SparseFormatError if the file is bad
    logits = model(images)                   # float32 (N, 1, 48, 48) -> (N, 6)
    print(model.summary())                   # per layer: density and kernel used

Files are written by :func:`mobileprune.sparse_format.export_sparse` (which needs
torch). The file format, the kernels and the dense/sparse choice are documented in
:mod:`mobileprune.runtime.model` and :mod:`mobileprune.runtime.kernels`.
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


from .kernels import HAVE_NUMBA, backend  # noqa: E402
from .model import (  # noqa: E402
    DENSITY_THRESHOLDS, FORMAT_VERSION, MAGIC, READ_VERSIONS, TUNE_BAND, LayerPlan, SparseModel, load,
    read_container, write_container,
)

__all__ = ["SparseFormatError", "SparseModel", "LayerPlan", "load", "read_container",
           "write_container", "MAGIC", "FORMAT_VERSION", "READ_VERSIONS", "DENSITY_THRESHOLDS", "TUNE_BAND", "HAVE_NUMBA",
           "backend"]
