"""Deployment exports, one module per format (this module re-exports their public names):

* :func:`export_torchscript_lite` (``.ptl``): :mod:`mobileprune.deploy.torchscript`;
* :func:`export_onnx` (``.onnx``): :mod:`mobileprune.deploy.onnx`;
* :func:`export_executorch` (``.pte``): :mod:`mobileprune.deploy.executorch`;
* :func:`export_native` (sparse model file + the C engine's sources):
  :mod:`mobileprune.deploy.native`.

Each exporter works on an eval-mode copy (the caller's model is not modified), writes
the file **atomically** (a failed export leaves no partial file and never overwrites an
existing one) and accepts it by the **numerical check against torch**
(:mod:`mobileprune.deploy.numerics`): the written file, run in its runtime on
``example_input`` and on a seeded random input of the same shape (and, where the batch
axis is dynamic, on another batch size), must match the eager outputs within
``1e-4 * (1 + max|output|)`` (float32). Tracer warnings never refuse a model.

Every exporter returns a dict::

    {"path": Path, "bytes": int, "max_abs_diff": float | None, "verified": bool,
     "format": "ptl" | "torchscript" | "onnx" | "pte", "dynamic_batch": bool, ...}

``verified`` is ``False`` (and ``max_abs_diff`` ``None``) only when the runtime needed for
the check is not installed (``onnxruntime`` / ``executorch.runtime``); the reason is in
``"note"``.

Pruned models and file size
---------------------------
These formats store every weight tensor **densely**: the zeros that unstructured or
group pruning leaves inside full-size tensors are written like any other value, so a
pruned model's ``.onnx`` / ``.ptl`` / ``.pte`` file is as large as the dense one (and runs
as fast). To get a genuinely smaller and faster file, first remove whole dead units with
:func:`mobileprune.surgery.compact.compact`, which returns a smaller dense model, and export that;
to keep unstructured sparsity, use :func:`mobileprune.deploy.sparse.export_sparse` (CSR
weights, :mod:`mobileprune.runtime`). The result's ``"zero_fraction"`` (share of exactly
zero parameters that the file stores) flags a model that was pruned but not compacted.

Install the optional packages with ``pip install -c constraints.txt 'mobileprune[export]'``
(onnx, onnxscript, onnxruntime, executorch).
"""

from __future__ import annotations

from typing import Callable

from mobileprune.deploy.executorch import export_executorch
from mobileprune.deploy.native import BUNDLE_FILES, BUNDLE_MARK, export_native
from mobileprune.deploy.onnx import export_onnx
from mobileprune.deploy.torchscript import export_torchscript_lite
from mobileprune.errors import ExportDependencyError

__all__ = ["export_torchscript_lite", "export_onnx", "export_executorch", "export_native",
           "ExportDependencyError", "FORMATS", "BUNDLE_MARK", "BUNDLE_FILES"]

#: Format name -> (exporter, usual file suffix).
FORMATS: dict[str, tuple[Callable[..., dict], str]] = {
    "ptl": (export_torchscript_lite, ".ptl"), "onnx": (export_onnx, ".onnx"),
    "pte": (export_executorch, ".pte"), "native": (export_native, "")}
