"""mobileprune: compress PyTorch networks so they run fast on phones and edge devices.

Public API (import from here):

* :class:`ADMMPruner`, :func:`admm_prune` -- ADMM weight pruning (seed 003).
* :class:`MaskEnforcer`, :func:`apply_masks` -- keep pruned weights exactly zero.
* :class:`PruneConfig`, :func:`resolve_targets` -- per-layer targets.
* :func:`layer_report` -- per-layer report.
* :func:`compact` -- physically remove zero filters/channels/neurons (a smaller dense model).
* :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`restore_model`.
* :class:`ProximalPruner`, :class:`Regularizer`, :func:`proximal_prune`,
  :func:`palm_step` -- MobilePrune, l0 sparse group lasso and baselines (seed 000).
* :mod:`mobileprune.prox`, :mod:`mobileprune.groups` -- proximal operators and groupings.
"""

from .admm import ADMMPruner
from .checkpoint import load_checkpoint, restore_model, save_checkpoint
from .compact import compact, dead_units
from .errors import CheckpointError, CompactionError, ConfigError, DataError, MobilePruneError, UnsupportedModelError
from .masks import MaskEnforcer, apply_masks
from .palm import ProximalPruner, palm_epoch, palm_step, proximal_epoch, run_rounds
from .pipeline import PipelineConfig, admm_prune, proximal_prune
from .regularizers import Regularizer
from .report import layer_report
from .targets import LayerTarget, PruneConfig, resolve_targets

__version__ = "0.1.0"

__all__ = [
    "ADMMPruner", "admm_prune", "PipelineConfig", "MaskEnforcer", "apply_masks",
    "ProximalPruner", "Regularizer", "proximal_prune", "palm_step", "palm_epoch",
    "proximal_epoch", "run_rounds",
    "PruneConfig", "LayerTarget", "resolve_targets", "layer_report",
    "save_checkpoint", "load_checkpoint", "restore_model",
    "compact", "dead_units", "CompactionError",
    "MobilePruneError", "ConfigError", "CheckpointError", "DataError", "UnsupportedModelError",
]
