"""The ADMM pipeline (seed 003, section 2.3, Algorithm 1): for every stage of a
progressive schedule (e.g. 90% -> 98% -> 99.5%, each stage starting from the last):

1. ADMM regularisation (Eqs. 5-7) for ``admm.epochs`` epochs, with the rho schedule;
   weights pruned by an earlier stage stay at zero;
2. masked mapping: hard projection onto each layer's target set;
3. masked retraining for ``retrain.epochs`` epochs; pruned weights stay exactly 0.0.

With a ``run_dir`` the pipeline writes its state after every epoch (atomically) and
a pruned checkpoint after every stage; calling it again with the same ``run_dir`` and
config resumes after the last finished epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mobileprune.sparsity.admm import ADMMPruner
from mobileprune.checkpoint import (load_checkpoint, restore_model,
                                   save_checkpoint)
from mobileprune.errors import CheckpointError, ConfigError, UnsupportedModelError
from mobileprune.sparsity.report import layer_report
from mobileprune.sparsity.targets import PruneConfig, resolve_targets
from mobileprune.pipeline.retrain import masked_retrain
from mobileprune.pipeline.train import OPTIMIZERS, cosine_lr, evaluate, make_optimizer
from mobileprune.pipeline.runstate import (STATE_FILE, PhaseClock, PipelineResult, _example_input,
                                          _fmt_metric, _teacher, check_resume, run_inputs)


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
    a structured target keep their masks."""

    cosine: bool = True
    regrow: float = 0.0
    regrow_every: int = 100


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
        if f.name in ("epochs", "shift", "regrow_every") or not (f.type in ("float", float) or f.name == "update_every"):
            continue
        if f.name == "update_every" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ConfigError(f"'{section}.{f.name}' must be a number, got {v!r}")
        positive = f.name in ("lr", "rho", "rho_max", "temperature", "update_every", "rho_multiplier")
        if (v <= 0 if positive else v < 0):
            raise ConfigError(f"'{section}.{f.name}' must be {'> 0' if positive else '>= 0'}, got {v!r}")
    if obj.distill > 1:
        raise ConfigError(f"'{section}.distill' is a weight in [0, 1], got {obj.distill!r}")
    if getattr(obj, "regrow", 0) > 1:
        raise ConfigError(f"'{section}.regrow' is a fraction in [0, 1], got {obj.regrow!r}")
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


def _stage_label(i: int, cfg: PruneConfig) -> str:
    return f"stage{i + 1}" + (f"-{cfg.name}" if cfg.name else "")


@dataclass
class _ADMMRun:
    """The state of one :func:`admm_prune` run, shared by its phases (ADMM, masked
    mapping, masked retraining) and saved after every epoch and phase: the runner's
    part of issue 20's phase design (one resume path, one epoch loop)."""

    model: nn.Module
    loader: DataLoader
    cfg: PipelineConfig
    eval_loader: DataLoader | None
    state_path: Path | None
    progress: bool | None
    log: Callable[[str], None]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    metric: Callable[[nn.Module, DataLoader], float]
    metric_name: str
    model_name: str | None
    model_kwargs: Mapping[str, Any] | None
    inputs: dict[str, Any]
    teacher: nn.Module | None = None
    pos: dict[str, Any] = field(default_factory=lambda: {"stage": 0, "phase": "admm", "epoch": 0})
    history: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, Tensor] = field(default_factory=dict)
    saved: dict[str, Any] = field(default_factory=dict)  # optimizer / ADMM / scheduler states to restore
    allowed: dict[str, Tensor] | None = None  # where retrain.regrow may grow weights
    acc_before: float | None = None
    clock: PhaseClock = field(default_factory=PhaseClock)  # wall time per phase

    @property
    def test_key(self) -> str:
        return f"test_{self.metric_name}"

    def ev(self) -> float | None:
        return self.metric(self.model, self.eval_loader) if self.eval_loader is not None else None

    def restore(self) -> bool:
        """Load the saved state of this run (``True``), refusing one of another run."""
        if self.state_path is None or not self.state_path.exists():
            return False
        st = load_checkpoint(self.state_path)
        extra = st["extra"]
        if not _same_run(extra, st.get("config"), self.cfg):
            raise CheckpointError(
                f"{self.state_path} belongs to a run with a different config; use another run "
                "directory or pass resume=False (--fresh) to start over")
        check_resume(self.state_path, extra, self.inputs)
        restore_model(st, self.model, str(self.state_path))
        self.pos, self.history = dict(extra["position"]), list(extra["history"])
        self.masks = {k: v.bool() for k, v in st["masks"].items()}
        self.saved = {k: extra.get(k) for k in ("admm", "optimizer", "scheduler")}
        self.allowed, self.acc_before = extra.get("allowed"), extra.get("accuracy_before")
        self.clock = PhaseClock(extra.get("phase_seconds"))
        if "rng" in extra:
            torch.set_rng_state(extra["rng"])
        gen = getattr(self.loader, "generator", None)
        if gen is not None and extra.get("loader_rng") is not None:
            gen.set_state(extra["loader_rng"])
        si = self.pos["stage"]
        where = _stage_label(si, self.cfg.stages[si]) if si < len(self.cfg.stages) else "done"
        self.log(f"resuming from {self.state_path}: {where}, {self.pos['phase']} epoch {self.pos['epoch']}")
        return True

    def save(self, pruner=None, opt=None, sched=None) -> None:
        if self.state_path is None:
            return
        gen = getattr(self.loader, "generator", None)
        save_checkpoint(self.state_path, self.model, kind="run-state", model_name=self.model_name,
                        model_kwargs=self.model_kwargs, masks=self.masks, config=self.cfg.to_dict(),
                        extra={**self.inputs, "fingerprint": self.cfg.fingerprint(),
                               "position": self.pos, "history": self.history,
                               "admm": pruner.state_dict() if pruner else None,
                               "optimizer": opt.state_dict() if opt else None,
                               "scheduler": sched.state_dict() if sched else None,
                               "accuracy_before": self.acc_before, "rng": torch.get_rng_state(),
                               "allowed": self.allowed, "phase_seconds": self.clock.state(),
                               "loader_rng": gen.get_state() if gen is not None else None})

    def take(self, key: str) -> Any:
        """A saved optimizer / ADMM / scheduler state, once (``None`` on a fresh start)."""
        return self.saved.pop(key, None)

    def epochs(self, phase: str, total: int, opt, masks, train: Mapping[str, Any], *, sched=None,
               pruner=None, after=None) -> None:
        """The phase's epochs ``pos["epoch"]`` to ``total`` in the one masked-training loop
        (:func:`~mobileprune.pipeline.retrain.masked_retrain`, under ``masks`` or an enforcer;
        the saved optimizer / scheduler states on resume); every epoch is measured (``after()``,
        then the test metric), recorded, logged and saved with the run."""
        label = _stage_label(self.pos["stage"], self.cfg.stages[self.pos["stage"]])

        def measure() -> dict[str, Any]:
            return {**(after() if after is not None else {}), self.test_key: self.ev()}

        def checkpoint(state: dict[str, Any], rec: dict[str, Any]) -> None:
            rec.update(stage=label, phase=phase)
            self.history.append(rec)
            self.log(_fmt_epoch(rec))
            self.pos["epoch"] = state["epochs"]
            self.save(pruner, opt, sched)

        resume = {"epochs": self.pos["epoch"], "optimizer": self.take("optimizer"),
                  "scheduler": self.take("scheduler")}
        masked_retrain(self.model, self.loader, opt, total, masks=masks, scheduler=sched,
                       resume=resume, train={"teacher": self.teacher, "loss_fn": self.loss_fn, **train},
                       evaluate=measure, checkpoint=checkpoint, progress=self.progress,
                       desc=f"{label} {phase}")


def _train_kwargs(s: _TrainSettings) -> dict[str, Any]:
    return {"distill": s.distill, "temperature": s.temperature, "shift": s.shift}


def _admm_phase(run: _ADMMRun, targets) -> None:
    """ADMM regularisation (seed 003, Eqs. 5-7), then masked mapping (Eq. 6)."""
    si = run.pos["stage"]
    stage, a = run.cfg.stages[si], run.cfg.settings(si)[0]
    label = _stage_label(si, stage)

    def make_pruner(example):
        return ADMMPruner(run.model, stage, rho=a.rho, rho_multiplier=a.rho_multiplier,
                          rho_max=max(a.rho_max, a.rho), update_every=a.update_every,
                          allowed=(run.masks or None) if a.nested else None, example_input=example)

    example = _coupling_input(targets, run.loader, needed=a.reallocate_dead)
    try:
        pruner = make_pruner(example)
    except UnsupportedModelError as exc:
        if example is None or a.reallocate_dead:
            raise
        run.log(f"warning: structured targets are projected layer by layer, channel coupling "
                f"unknown: {exc}")
        pruner = make_pruner(None)
    opt = make_optimizer(a.optimizer, run.model.parameters(), a.lr, momentum=a.momentum,
                         weight_decay=a.weight_decay)
    admm_state = run.take("admm")
    if admm_state is not None:
        pruner.load_state_dict(admm_state)
    run.epochs("admm", a.epochs, opt, run.masks if run.masks and a.nested else None,
               {**_train_kwargs(a), "penalty": pruner.penalty, "after_step": pruner.step},
               pruner=pruner, after=pruner.update if a.update_every is None else None)
    run.masks = pruner.finalize(reallocate_dead=a.reallocate_dead)
    if a.reallocate_dead:
        run.log(f"{label}: dead weights reallocated in {pruner.reallocation_rounds} round(s)")
    acc_mapped = run.ev()
    run.history.append({"stage": label, "phase": "masked-mapping", run.test_key: acc_mapped})
    if acc_mapped is not None:
        run.log(f"{label}: {run.metric_name} right after masked mapping: "
                f"{_fmt_metric(run.metric_name, acc_mapped)}")
    run.pos.update(phase="retrain", epoch=0)
    run.save()


def _retrain_enforcer(run: _ADMMRun, r: RetrainSettings, targets, opt):
    """The masks of masked retraining: fixed (``run.masks``), or an enforcer moving them at a
    constant count (RigL) inside the live units of unstructured layers with ``retrain.regrow``."""
    if not r.regrow:
        return run.masks
    from mobileprune.sparsity.masks import RegrowingMaskEnforcer, live_structure

    if run.allowed is None:
        kinds: dict[str, set] = {}
        for t in targets:
            kinds.setdefault(t.param_name, set()).add(t.structure)
        run.allowed = {n: live_structure(m) if kinds.get(n) == {"unstructured"} else m.clone()
                       for n, m in run.masks.items()}
    steps = r.epochs * len(run.loader)
    enforcer = RegrowingMaskEnforcer(run.model, run.masks, opt, end_step=int(0.75 * steps),
                                     alpha=r.regrow, every=r.regrow_every, allowed=run.allowed,
                                     step=run.pos["epoch"] * len(run.loader))
    run.masks = enforcer.masks  # they move; saved with the run state
    return enforcer


def _retrain_phase(run: _ADMMRun, targets, run_dir: Path | None) -> None:
    """Masked retraining of the stage (seed 003, Algorithm 1 step 4: the masks of masked
    mapping fixed, pruned weights exactly 0.0), its report and checkpoint."""
    si = run.pos["stage"]
    stage, r = run.cfg.stages[si], run.cfg.settings(si)[1]
    opt = make_optimizer(r.optimizer, run.model.parameters(), r.lr, momentum=r.momentum,
                         weight_decay=r.weight_decay)
    sched = cosine_lr(opt, r.epochs * len(run.loader)) if r.cosine else None
    run.epochs("retrain", r.epochs, opt, _retrain_enforcer(run, r, targets, opt),
               _train_kwargs(r), sched=sched)
    name = run.metric_name
    rep = layer_report(run.model, targets, metrics={f"{name}_before": run.acc_before,
                                                    f"{name}_after": run.ev()})
    label = _stage_label(si, stage)
    run.history.append({"stage": label, "phase": "done", "report": rep["totals"],
                        run.test_key: rep["metrics"][f"{name}_after"]})
    if run_dir is not None:
        save_checkpoint(run_dir / f"{label}.pt", run.model, kind="pruned", model_name=run.model_name,
                        model_kwargs=run.model_kwargs, masks=run.masks, config=stage.to_dict(),
                        metrics=rep["metrics"])
    run.pos.update(stage=si + 1, phase="admm", epoch=0)
    run.allowed = None
    run.save()


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
    run = _ADMMRun(model, train_loader, cfg, eval_loader, run_dir / STATE_FILE if run_dir else None,
                   progress, log, loss_fn or nn.functional.cross_entropy, metric,
                   metric_name or getattr(metric, "__name__", "metric"), model_name, model_kwargs,
                   run_inputs(model, train_loader))
    if not (resume and run.restore()) and eval_loader is not None:
        run.acc_before = run.ev()
        log(f"{run.metric_name} before pruning: {_fmt_metric(run.metric_name, run.acc_before)}")
    if any(a.distill > 0 or r.distill > 0 for a, r in map(cfg.settings, range(len(cfg.stages)))):
        started = bool(run.history) or run.pos != {"stage": 0, "phase": "admm", "epoch": 0}
        run.teacher = _teacher(teacher if teacher is not None else model, run_dir, resumed=started)
    while run.pos["stage"] < len(cfg.stages):
        si = run.pos["stage"]
        targets, label = stage_targets[si], _stage_label(si, cfg.stages[si])
        if run.pos["phase"] == "admm":
            with run.clock(f"{label} admm"):
                _admm_phase(run, targets)
        if run.pos["phase"] == "retrain":
            with run.clock(f"{label} retrain"):
                _retrain_phase(run, targets, run_dir)
    name = run.metric_name
    report = layer_report(model, stage_targets[-1], example_input=_example_input(train_loader),
                          metrics={f"{name}_before": run.acc_before, f"{name}_after": run.ev()})
    report["seconds"] = run.clock.report()
    return PipelineResult(model=model, masks=run.masks, report=report, history=run.history)


def _coupling_input(targets, loader: DataLoader, needed: bool = False):
    """Example input for coupled structured pruning, or None when no target is
    structured. With ``needed`` (dead-weight reallocation) a missing input is an error."""
    if not needed and not any(t.structure in ("filter", "channel") for t in targets):
        return None
    x = _example_input(loader)
    if x is None and needed:
        raise ConfigError("reallocate_dead needs an example input: the training data set "
                          "must be indexable")
    return x


def _fmt_epoch(s: Mapping[str, Any]) -> str:
    parts = [f"{s['stage']} {s['phase']} epoch {s['epoch']}", f"loss {s['loss']:.4f}"]
    if s.get("test_accuracy") is not None:
        parts.append(f"test acc {100 * s['test_accuracy']:.2f}%")
    for k, v in s.items():  # another metric (admm_prune(metric=...))
        if k.startswith("test_") and k != "test_accuracy" and isinstance(v, float):
            parts.append(f"test {k[5:]} {v:.4g}")
    if "primal_residual" in s:
        parts.append(f"||W-Z|| {s['primal_residual']:.3g} rho {s['rho']:.3g}")
    return " | ".join(parts)
