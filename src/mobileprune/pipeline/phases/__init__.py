"""The phases of the pipelines, one small class each, run by
:class:`~mobileprune.pipeline.runner.Runner` (issue 20; ``docs/style.md`` section 3).

- :mod:`.train`: :class:`Evaluate` (the metric before pruning), :class:`DenseTrain`
  (``fit``), :class:`Retrain` (masked retraining: the only one);
- :mod:`.admm`: :class:`ADMM`, :class:`Harden` (masked mapping), :class:`StageDone`
  (seed 003);
- :mod:`.prox`: :class:`ProxPrepare`, :class:`ProxStructure`, :class:`ProxRounds`,
  :class:`ProxProject`, :class:`ProxRefill` around the shared :class:`ProxMethod`
  (seed 000).
"""

from mobileprune.pipeline.phases.admm import ADMM, Harden, Stage, StageDone
from mobileprune.pipeline.phases.prox import (ProxMethod, ProxPrepare, ProxProject, ProxRefill,
                                              ProxRounds, ProxStructure)
from mobileprune.pipeline.phases.train import DenseTrain, Evaluate, Retrain

__all__ = ["Evaluate", "DenseTrain", "Retrain", "Stage", "ADMM", "Harden", "StageDone", "ProxMethod",
           "ProxPrepare", "ProxStructure", "ProxRounds", "ProxProject", "ProxRefill"]
