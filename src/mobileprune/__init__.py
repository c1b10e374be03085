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
* :mod:`mobileprune.prox`, :mod:`mobileprune.groups` -- proximal operators and groupings.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (CheckpointError, CompactionError, ConfigError, DataError, MobilePruneError,
                     UnsupportedModelError)

# The public names live in submodules that import torch. They are loaded on first
# access (PEP 562), so torch-free parts such as ``mobileprune.runtime`` can be imported
# on a device without torch.
_LAZY = {
    "ADMMPruner": "admm", "load_checkpoint": "checkpoint", "restore_model": "checkpoint",
    "save_checkpoint": "checkpoint", "compact": "compact", "dead_units": "compact",
    "fold_dead_weights": "compact", "compact_in_place": "compact",
    "MaskEnforcer": "masks", "apply_masks": "masks", "RegrowingMaskEnforcer": "masks",
    "ProximalPruner": "palm",
    "palm_epoch": "palm", "palm_step": "palm", "proximal_epoch": "palm", "run_rounds": "palm",
    "PipelineConfig": "pipeline", "admm_prune": "pipeline", "proximal_prune": "pipeline",
    "cap_units": "pipeline",
    "export_native": "export",
    "Regularizer": "regularizers", "layer_report": "report", "LayerTarget": "targets",
    "PruneConfig": "targets", "resolve_targets": "targets", "load_config": "targets",
    "explain": "targets", "weight_slots": "targets",
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
    "export_native",
    "MobilePruneError", "ConfigError", "CheckpointError", "DataError", "UnsupportedModelError",
]
