"""The ADMM pipeline (seed 003, section 2.3, Algorithm 1): for every stage of a
progressive schedule (e.g. 90% -> 98% -> 99.5%, each stage starting from the last):

1. ADMM regularisation (Eqs. 5-7) for ``admm.epochs`` epochs, with the rho schedule;
   weights pruned by an earlier stage stay at zero;
2. masked mapping: hard projection onto each layer's target set;
3. masked retraining for ``retrain.epochs`` epochs; pruned weights stay exactly 0.0.

With a ``run_dir`` the pipeline writes its state after every epoch (atomically) and
a pruned checkpoint after every stage; calling it again with the same ``run_dir`` and
config resumes after the last finished epoch. This module holds the settings
(:class:`PipelineConfig`) and the preset :func:`admm_prune`, which builds the list of
phases (:mod:`mobileprune.pipeline.phases.admm`) and runs it in the one
:class:`~mobileprune.pipeline.runner.Runner`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import Tensor, nn
from torch.utils.data import DataLoader

from mobileprune.errors import ConfigError
from mobileprune.pipeline.phases.admm import (ADMM, Harden, Stage, StageDone, regrow_allowed,
                                              stage_label)
from mobileprune.pipeline.phases.train import Evaluate, Retrain
from mobileprune.pipeline.runner import Context, Runner
from mobileprune.pipeline.runstate import STATE_FILE, PipelineResult, _example_input, run_inputs
from mobileprune.pipeline.train import OPTIMIZERS, evaluate
from mobileprune.sparsity.report import layer_report
from mobileprune.sparsity.targets import PruneConfig, resolve_targets


@dataclass
class _TrainSettings:
    epochs: int = 10
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    distill: float = 0.0        # weight of distillation from the model as given (dense)
    temperature: float = 4.0
    shift: int = 0              # random translation of inputs by up to this many pixels


@dataclass
class ADMMSettings(_TrainSettings):
    """Settings of the ADMM phase of each stage (optimizer of the W-step, Eq. 5)."""

    rho: float = 1e-3
    rho_multiplier: float = 1.3
    rho_max: float = 1.0
    rho_final: float | None = None  # rho at the phase's last Z/U update (derives the multiplier)
    update_every: int | None = None  # optimizer steps between Z/U updates; None: once per epoch
    nested: bool = True  # a stage may only prune further what the previous stage kept
    reallocate_dead: bool = False  # masked mapping gives dead weights' budget to live ones


@dataclass
class RetrainSettings(_TrainSettings):
    """Settings of masked retraining after each stage's masked mapping.

    ``regrow = a > 0``: the masks of unstructured layers move at their exact count
    (RigL, :class:`~mobileprune.sparsity.masks.RegrowingMaskEnforcer`): every ``regrow_every``
    steps of the first 75% of the retraining, each such layer swaps its
    ``a/2 (1 + cos(pi t / T))`` fraction of smallest weights for the inactive weights
    with the largest gradients, inside its live filters/neurons and inputs. Layers with
    a structured target keep their masks.

    ``val_fraction = f`` in (0, 1) (0: off; needs fixed masks, no ``regrow``): hold out a
    fixed random ``f`` of the training data, train on the rest and end with the weights
    of the epoch of best accuracy on it (:class:`~mobileprune.pipeline.phases.train.Retrain`)."""

    cosine: bool = True
    regrow: float = 0.0
    regrow_every: int = 100
    val_fraction: float = 0.0


# numeric settings whose null means "not set" (update_every: once per epoch; rho_final: use
# rho_multiplier)
_OPTIONAL_NUMBERS = ("update_every", "rho_final")


def _settings(cls, raw: Mapping[str, Any] | None, section: str):
    raw = dict(raw or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in '{section}'; allowed: {sorted(names)}")
    obj = cls(**raw)
    if obj.optimizer not in OPTIMIZERS:
        raise ConfigError(f"'{section}.optimizer' must be one of {', '.join(OPTIMIZERS)}, got "
                          f"{obj.optimizer!r}")
    for key in ("nested", "reallocate_dead", "cosine"):
        if not isinstance(getattr(obj, key, True), bool):
            raise ConfigError(f"'{section}.{key}' must be true or false, got {getattr(obj, key)!r}")
    for key in ("epochs", "shift", "regrow_every"):
        if not hasattr(obj, key):
            continue
        v, low = getattr(obj, key), (1 if key == "regrow_every" else 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            what = "a non-negative integer" if low == 0 else f"an integer >= {low}"
            raise ConfigError(f"'{section}.{key}' must be {what}, got {v!r}")
    # Every other numeric field: a real number (YAML may hand us a string such as "1e-3").
    for f in dataclasses.fields(cls):
        v = getattr(obj, f.name)
        if f.name in ("epochs", "shift", "regrow_every") or not (
                f.type in ("float", float) or f.name in _OPTIONAL_NUMBERS):
            continue
        if f.name in _OPTIONAL_NUMBERS and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ConfigError(f"'{section}.{f.name}' must be a number, got {v!r}")
        positive = f.name in ("lr", "rho", "rho_max", "rho_final", "temperature", "update_every",
                              "rho_multiplier")
        if (v <= 0 if positive else v < 0):
            raise ConfigError(f"'{section}.{f.name}' must be {'> 0' if positive else '>= 0'}, got {v!r}")
    final = getattr(obj, "rho_final", None)
    if final is not None and not obj.rho <= final <= obj.rho_max:
        raise ConfigError(f"'{section}.rho_final' must lie between '{section}.rho' ({obj.rho!r}) "
                          f"and '{section}.rho_max' ({obj.rho_max!r}), got {final!r}")
    if obj.distill > 1:
        raise ConfigError(f"'{section}.distill' is a weight in [0, 1], got {obj.distill!r}")
    if getattr(obj, "regrow", 0) > 1:
        raise ConfigError(f"'{section}.regrow' is a fraction in [0, 1], got {obj.regrow!r}")
    if getattr(obj, "val_fraction", 0) >= 1 or (getattr(obj, "val_fraction", 0) and obj.regrow):
        raise ConfigError(f"'{section}.val_fraction' is a fraction in [0, 1) of the training data "
                          f"and needs fixed masks (regrow 0), got {obj.val_fraction!r}")
    return obj


@dataclass
class PipelineConfig:
    """Stages of pruning targets plus the ADMM and retraining settings.

    From a dict/YAML: ``{"stages": [<prune config>, ...], "admm": {...},
    "retrain": {...}}``, or a single stage given by the prune-config keys at top level
    (``default``, ``layers``...). A stage may override some ADMM or retraining settings
    for itself: ``{"name": "246x", "layers": {...}, "retrain": {"epochs": 30}}``.
    """

    stages: list[PruneConfig]
    admm: ADMMSettings = field(default_factory=ADMMSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    overrides: list[dict[str, dict[str, Any]]] = field(default_factory=list)

    def settings(self, i: int) -> tuple[ADMMSettings, RetrainSettings]:
        """ADMM and retraining settings of stage ``i`` (global ones plus its overrides)."""
        o = self.overrides[i] if i < len(self.overrides) else {}
        return (dataclasses.replace(self.admm, **o.get("admm", {})),
                dataclasses.replace(self.retrain, **o.get("retrain", {})))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "PipelineConfig":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a pipeline config must be a mapping, got {type(raw).__name__}")
        raw = dict(raw)
        admm = _settings(ADMMSettings, raw.pop("admm", None), "admm")
        retrain = _settings(RetrainSettings, raw.pop("retrain", None), "retrain")
        raw.pop("model", None)
        raw.pop("dataset", None)
        if "stages" in raw:
            stages_raw = raw.pop("stages")
            if raw:
                raise ConfigError(f"keys {sorted(raw)} are not allowed beside 'stages'; put them in a stage")
            if not isinstance(stages_raw, list) or not stages_raw:
                raise ConfigError("'stages' must be a non-empty list of pruning configs")
            stages, overrides = [], []
            for st in stages_raw:
                st = dict(st) if isinstance(st, Mapping) else st
                ov = {}
                if isinstance(st, dict):
                    for sec, kind in (("admm", ADMMSettings), ("retrain", RetrainSettings)):
                        if sec in st:
                            ov[sec] = dict(st.pop(sec) or {})
                            _settings(kind, {**dataclasses.asdict(admm if sec == "admm" else retrain),
                                             **ov[sec]}, f"stage {len(stages) + 1} {sec}")
                stages.append(PruneConfig.from_dict(st))
                overrides.append(ov)
        else:
            stages, overrides = [PruneConfig.from_dict(raw)], [{}]
        return cls(stages=stages, admm=admm, retrain=retrain, overrides=overrides)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineConfig":
        from mobileprune.sparsity.targets import load_yaml

        return cls.from_dict(load_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        stages = [s.to_dict() for s in self.stages]
        for st, ov in zip(stages, self.overrides):
            st.update({k: dict(v) for k, v in ov.items() if v})
        return {"stages": stages,
                "admm": dataclasses.asdict(self.admm),
                "retrain": dataclasses.asdict(self.retrain)}

    def fingerprint(self) -> str:
        """Hash of the config with settings at their default values left out, so that
        a run directory stays resumable when a later version adds a setting."""
        d = self.to_dict()
        d["admm"], d["retrain"] = _non_default(self.admm), _non_default(self.retrain)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _non_default(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if getattr(obj, f.name) != f.default}


def _same_run(extra: Mapping[str, Any], stored_config: Any, cfg: "PipelineConfig") -> bool:
    """Whether a saved run state belongs to ``cfg`` (also for states written by an
    older version, whose fingerprint covered every setting: their stored config is
    parsed again with today's defaults)."""
    if extra.get("fingerprint") == cfg.fingerprint():
        return True
    try:
        return PipelineConfig.from_dict(stored_config).fingerprint() == cfg.fingerprint()
    except (ConfigError, TypeError, KeyError, AttributeError):
        return False



def admm_prune(model: nn.Module, train_loader: DataLoader, config: PipelineConfig | Mapping[str, Any],
               *, eval_loader: DataLoader | None = None, run_dir: str | Path | None = None,
               resume: bool = True, progress: bool | None = None,
               model_name: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
               teacher: nn.Module | None = None,
               log: Callable[[str], None] = print,
               loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
               metric: Callable[[nn.Module, DataLoader], float] | None = None,
               metric_name: str | None = None) -> PipelineResult:
    """Run every stage of ``config`` on ``model`` (modified in place) and report.

    Args:
        model: the (usually pre-trained dense) model.
        train_loader: training data for ADMM and retraining.
        config: a :class:`PipelineConfig` or its dict form.
        eval_loader: test data; accuracy is measured before pruning and after every
            epoch.
        run_dir: directory for the resumable state and per-stage checkpoints.
        resume: continue from ``run_dir/state.pt`` if it exists (the config must be the
            same; otherwise :class:`CheckpointError`).
        model_name, model_kwargs: zoo name of the model, stored in checkpoints.
        teacher: model to distill from when a stage sets ``distill > 0``; by default a
            frozen copy of ``model`` as given. Pass the original dense model when
            ``model`` is already pruned (continuing a progressive schedule). Distillation
            compares softmax outputs: it is meant for classifiers.
        loss_fn: training loss ``loss_fn(output, target)`` (default: cross-entropy), e.g.
            ``torch.nn.functional.mse_loss`` for a regression model such as the eye
            tracker :class:`~mobileprune.models.ITrackerMobile` (batches may hold several
            inputs: ``((x1, x2, ...), target)``).
        metric: ``metric(model, eval_loader) -> float`` measured on ``eval_loader``
            (default: :func:`~mobileprune.pipeline.train.evaluate`, top-1 accuracy), e.g.
            :func:`~mobileprune.pipeline.train.mean_distance` (lower is better).
        metric_name: its name in the history (``test_<name>``), the report's metrics
            (``<name>_before``, ``<name>_after``) and the log; default ``"accuracy"``
            for the default metric, else the function's ``__name__``.
    """
    cfg = config if isinstance(config, PipelineConfig) else PipelineConfig.from_dict(config)
    if metric is None:
        metric, metric_name = evaluate, metric_name or "accuracy"
    # Validate every stage against the model before any training.
    stage_targets = [resolve_targets(model, s) for s in cfg.stages]
    run_dir = Path(run_dir) if run_dir is not None else None
    ctx = Context(model, train_loader, eval_loader, log=log, progress=progress, model_name=model_name,
                  model_kwargs=model_kwargs, run_dir=run_dir,
                  loss_fn=loss_fn or nn.functional.cross_entropy, metric=metric,
                  metric_name=metric_name or getattr(metric, "__name__", "metric"),
                  values={"accuracy_before": None})
    distilled = any(a.distill > 0 or r.distill > 0 for a, r in map(cfg.settings, range(len(cfg.stages))))
    Runner(_phases(cfg, stage_targets), ctx, state_path=run_dir / STATE_FILE if run_dir else None,
           fingerprint=cfg.fingerprint(), accepts=lambda st: _same_run(st["extra"], st.get("config"), cfg),
           inputs=run_inputs(model, train_loader), config=cfg.to_dict(), resume=resume,
           teacher=(teacher if teacher is not None else model) if distilled else None,
           upgrade=lambda st: _before_runner(st, cfg)).run()
    name = ctx.metric_name
    report = layer_report(model, stage_targets[-1], example_input=_example_input(train_loader),
                          metrics={f"{name}_before": ctx.values["accuracy_before"],
                                   f"{name}_after": ctx.evaluate()})
    report["seconds"] = ctx.seconds
    return PipelineResult(model=model, masks=ctx.masks, report=report, history=ctx.history)


def _phases(cfg: PipelineConfig, stage_targets: list) -> list:
    """The phases of seed 003's Algorithm 1 for every stage: ADMM, masked mapping, masked
    retraining, the stage's report and checkpoint; the metric before them."""
    phases: list = [Evaluate()]
    for i, (config, targets) in enumerate(zip(cfg.stages, stage_targets)):
        a, r = cfg.settings(i)
        stage = Stage.of(i, config, targets, a)
        phases += [ADMM(stage), Harden(stage),
                   Retrain(f"{stage.label} retrain", r, allowed=regrow_allowed(targets),
                           tags={"stage": stage.label, "phase": "retrain"}),
                   StageDone(stage)]
    return phases


def _before_runner(st: Mapping[str, Any], cfg: PipelineConfig) -> tuple[str | None, dict, dict]:
    """A state of ``admm_prune`` written before the runner: a position (stage, phase
    ``admm`` / ``retrain``, epochs done), the ADMM, optimizer and scheduler states and
    (``retrain.regrow``) where the moving masks may grow."""
    extra = st["extra"]
    pos = extra["position"]
    if pos["stage"] >= len(cfg.stages):
        return None, {}, st["masks"]
    name = f"{stage_label(pos['stage'], cfg.stages[pos['stage']])} {pos['phase']}"
    state = {"epochs": pos["epoch"], "optimizer": extra.get("optimizer"),
             "scheduler": extra.get("scheduler")}
    if pos["phase"] == "admm":
        state["admm"] = extra.get("admm")
    elif extra.get("allowed") is not None:  # masks moving since the retraining began
        state.update(masks=dict(st["masks"]), allowed=extra["allowed"])
    return name, {name: state}, st["masks"]
