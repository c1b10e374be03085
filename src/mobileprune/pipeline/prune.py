"""The pruning pipelines, one call each: :func:`admm_prune` (seed 003: ADMM, masked
mapping, masked retraining; :mod:`.admm_run`) and :func:`proximal_prune` (seed 000:
MobilePrune's rounds; :mod:`.proximal_run`), with :func:`fit` for dense training
(:mod:`.fit`). What both share (resume checks, the teacher, the result type) is in
:mod:`.runstate`. This module is their public face; import from here.
"""

from __future__ import annotations

from mobileprune.pipeline.admm_run import (ADMMSettings, PipelineConfig, RetrainSettings,
                                           _settings, admm_prune)
from mobileprune.pipeline.fit import fit
from mobileprune.pipeline.proximal_run import (ProxSchedule, cap_units, proximal_prune,
                                               split_prox_config)
from mobileprune.pipeline.runstate import STATE_FILE, PipelineResult, check_resume, run_inputs

__all__ = ["admm_prune", "proximal_prune", "fit", "PipelineConfig", "ADMMSettings",
           "RetrainSettings", "ProxSchedule", "PipelineResult", "split_prox_config", "cap_units",
           "run_inputs", "check_resume", "STATE_FILE", "_settings"]
