"""mobileprune: compress PyTorch networks so they run fast on phones and edge devices.

Public API (import from here):

* :class:`ADMMPruner`, :func:`admm_prune` -- ADMM weight pruning (seed 003).
* :class:`MaskEnforcer`, :func:`apply_masks` -- keep pruned weights exactly zero;
  :class:`RegrowingMaskEnforcer` -- masks that move at a constant count (RigL).
* :class:`PruneConfig`, :func:`resolve_targets` -- per-weight targets (every Linear,
  Conv, ConvTranspose, RNN / LSTM / GRU, attention and Embedding weight);
  :func:`weight_slots`, :func:`explain` -- the prunable weights, and what a config does
  with every parameter.
* :func:`layer_report` -- per-layer report.
* :func:`compact` -- physically remove zero filters/channels/neurons (a smaller dense model).
* :func:`export_native` -- a self-contained bundle (sparse model file + the C engine's
  sources + CMakeLists.txt) that runs the pruned model on a phone.
* :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`restore_model`.
* :class:`ProximalPruner`, :class:`Regularizer`, :func:`proximal_prune`,
  :func:`palm_step` -- MobilePrune, l0 sparse group lasso and baselines (seed 000).
* :mod:`mobileprune.math.prox`, :mod:`mobileprune.math.groups` -- proximal operators and groupings.
"""

from __future__ import annotations

import importlib
from typing import Any

from mobileprune.errors import (CheckpointError, CompactionError, ConfigError, DataError, MobilePruneError,
                                UnsupportedModelError)

# The public names live in submodules that import torch. They are loaded on first
# access (PEP 562), so torch-free parts such as ``mobileprune.runtime`` can be imported
# on a device without torch.
_LAZY = {
    "ADMMPruner": "sparsity.admm", "load_checkpoint": "checkpoint", "restore_model": "checkpoint",
    "save_checkpoint": "checkpoint", "compact": "surgery.compact", "dead_units": "graph.passes.units",
    "fold_dead_weights": "surgery.compact", "compact_in_place": "surgery.compact",
    "MaskEnforcer": "sparsity.masks", "apply_masks": "sparsity.masks", "RegrowingMaskEnforcer": "sparsity.masks",
    "ProximalPruner": "sparsity.proximal",
    "palm_epoch": "pipeline.palm", "palm_step": "pipeline.palm", "proximal_epoch": "pipeline.palm", "run_rounds": "pipeline.palm",
    "PipelineConfig": "pipeline.prune", "admm_prune": "pipeline.prune", "proximal_prune": "pipeline.prune",
    "cap_units": "pipeline.prune",
    "export_native": "deploy.export", "export_onnx": "deploy.export",
    "export_torchscript_lite": "deploy.export", "export_executorch": "deploy.export",
    "export_sparse": "deploy.sparse", "size_report": "deploy.sparse",
    "Regularizer": "sparsity.regularizers", "layer_report": "sparsity.report", "LayerTarget": "sparsity.targets",
    "PruneConfig": "sparsity.targets", "resolve_targets": "sparsity.targets", "load_config": "sparsity.targets",
    "explain": "sparsity.targets", "weight_slots": "sparsity.targets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mobileprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "ADMMPruner", "admm_prune", "PipelineConfig", "MaskEnforcer", "apply_masks",
    "RegrowingMaskEnforcer",
    "ProximalPruner", "Regularizer", "proximal_prune", "palm_step", "palm_epoch",
    "proximal_epoch", "run_rounds", "cap_units",
    "PruneConfig", "LayerTarget", "resolve_targets", "load_config", "layer_report",
    "explain", "weight_slots",
    "save_checkpoint", "load_checkpoint", "restore_model",
    "compact", "compact_in_place", "dead_units", "fold_dead_weights", "CompactionError",
    "export_native", "export_sparse", "export_onnx", "export_torchscript_lite", "export_executorch",
    "size_report",
    "MobilePruneError", "ConfigError", "CheckpointError", "DataError", "UnsupportedModelError",
]
