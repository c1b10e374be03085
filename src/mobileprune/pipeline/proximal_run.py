"""The MobilePrune pipeline (seed 000): rounds of PALM / proximal steps and masked
retraining, with the schedule's additions (distillation, target budget and projection,
unit caps, dead-weight folding, compaction between rounds, regrowth). Its settings
(:class:`ProxSchedule`) and its preset: :func:`proximal_prune` builds the list of
phases (:mod:`mobileprune.pipeline.phases.prox`) and runs it."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn
from torch.utils.data import DataLoader

from mobileprune.errors import ConfigError
from mobileprune.pipeline.phases.prox import (ProxMethod, ProxPrepare, ProxProject, ProxRefill,
                                              ProxRounds, ProxStructure, cap_units)
from mobileprune.pipeline.phases.train import Evaluate, Retrain
from mobileprune.pipeline.runner import Context, Runner
from mobileprune.pipeline.runstate import STATE_FILE, PipelineResult, _example_input, run_inputs
from mobileprune.pipeline.train import OPTIMIZERS, evaluate
from mobileprune.sparsity.report import layer_report

__all__ = ["ProxSchedule", "split_prox_config", "proximal_prune", "cap_units"]


# ---------------------------------------------------------------------------------------
# MobilePrune (seed 000): proximal pruning with the round schedule
# ---------------------------------------------------------------------------------------
@dataclass
class ProxSchedule:
    """Round schedule of MobilePrune (methods.md 2.3): ``rounds`` of (``prox_epochs`` of
    PALM or proximal steps, then ``retrain_epochs`` of masked retraining), lam/eta
    multiplied by ``lam_factor``/``eta_factor`` after every ``increase_every`` rounds.

    Additions to the seed's schedule: ``distill`` (weight ``a`` in [0, 1] of distillation
    from the model as given, temperature ``temperature``, in both phases), ``target_nonzero``
    (stop the rounds once the model has at most that many nonzero weights) and
    ``final_retrain_epochs`` of masked retraining after the last round, with cosine
    learning-rate decay from ``final_retrain_lr`` (default ``retrain_lr``) and
    distillation weight ``final_distill`` (default ``distill``). ``final_regrow = a > 0``
    makes the final retraining dynamic at a constant count per layer (RigL, Evci et al.
    2020; :class:`~mobileprune.sparsity.masks.RegrowingMaskEnforcer`): every ``regrow_every``
    steps during its first 75%, each layer swaps its ``a/2 (1 + cos(pi t / T))`` fraction
    of smallest weights for the same number of inactive weights with the largest
    gradients, inside the units still alive (a cut unit stays cut, ``max_units`` and the
    target still hold). On LeNet-5 at 1,722 nonzeros in MobilePrune's structure it gave
    99.06% where plain masked retraining of the same start gave 98.91% (99.14% with
    ``final_shift: 1``; the suite row ``l0_late_cap_regrow``: 99.10% at 250x).
    ``final_refill`` (needs ``target_nonzero``): if the model has fewer nonzeros than the
    target when the final retraining starts (a late cap removed some), the budget is
    filled first with the inactive weights inside the live units whose gradient,
    accumulated in magnitude over up to 50 minibatches, is largest
    (:func:`~mobileprune.sparsity.masks.refill`; they start at 0). ``final_shift``: random
    translations of the inputs in the final retraining only (default ``shift``).
    ``final_val_fraction = f`` in (0, 1): the final retraining holds out a fixed random
    ``f`` of the training samples (the rounds still see them all), trains on the rest and
    ends with the weights of its epoch of best accuracy on them (early stopping,
    Prechelt 1998; :class:`~mobileprune.pipeline.phases.train.Retrain`): the test data
    never choose the epoch.

    ``final_project`` (needs ``target_nonzero``): if the rounds end with more than
    ``target_nonzero`` nonzero weights, project the model onto that budget before the
    final retraining, so it lands on the target instead of wherever the last round
    stopped: the exact projection onto ``{nnz <= k}`` (top-k magnitudes, seed 003 Eq. 6)
    of every layer, with ``k`` per layer proportional to what the rounds left in it
    (:func:`~mobileprune.math.projection.proportional_counts`): the rounds decide where the
    weights go, the projection only trims. ``project_margin`` (with ``final_project``):
    stop the rounds as soon as the model is within ``target_nonzero * (1 +
    project_margin)`` nonzeros and let the projection trim the rest, instead of running
    one more round that may overshoot the target by far.

    ``fold_dead`` (needs a model :func:`torch.fx` can trace): after every prox phase and
    around the final projection, zero the weights that cannot change the output and fold
    the constants they carried into the consumers' biases
    (:func:`~mobileprune.surgery.compact.fold_dead_weights`), e.g. the outgoing weights of a hidden
    neuron whose incoming weights are all zero. The budget then goes to weights that
    matter, and the nonzero counts only count those.

    ``compact`` (needs a model :func:`torch.fx` can trace and whose ``forward`` runs with
    smaller layers): after every round and after the final projection, remove the dead
    filters/channels/neurons from the model in place
    (:func:`~mobileprune.surgery.compact.compact_in_place`), so that the following rounds and the
    final retraining train the smaller network (LeNet-5 with 9 of 50 conv2 filters and
    60 of 500 hidden units: an epoch takes a third of the time). The outputs do not
    change; the regularisers must not depend on the layer sizes (explicit group index
    lists do). The distillation teacher stays the model as given.

    ``max_units`` / ``max_inputs`` (``{layer name: k}``): hard limits on the structure, e.g.
    "at most 8 filters" for a target device. Before the first round, and again after
    every prox phase (so that a cut unit cannot grow back), each listed layer keeps only
    its ``k`` output units (filters, neurons: rows of the weight) / input units (input
    channels, a Linear's columns) of largest l2 norm: the exact projection onto ``{at
    most k nonzero groups}`` (seed 003 sec. 2.4,
    :func:`~mobileprune.math.projection.project_top_groups`), layer by layer in the model's
    layer order, outputs before inputs; with ``fold_dead`` (recommended) each cut
    reaches the consumers before their own cut, so e.g. fc1's input cap chooses among the
    inputs of the conv2 filters that were kept. ``structure_epochs``: epochs of masked
    retraining right after that first cut
    (cosine decay from ``structure_lr``, default ``retrain_lr``, with ``distill``),
    before the rounds, so that the rounds start from a recovered network; resumable per
    epoch."""

    rounds: int = 3
    prox_epochs: int = 2
    retrain_epochs: int = 2
    lam_factor: float = 1.0
    eta_factor: float = 1.0
    increase_every: int = 1
    mode: str = "proximal"           # "palm" (exact PALM, backtracking) or "proximal"
    prox_optimizer: str = "adam"
    prox_lr: float = 1e-3
    retrain_lr: float = 1e-3
    retrain_weight_decay: float = 1e-5
    distill: float = 0.0
    temperature: float = 4.0
    target_nonzero: int | None = None
    final_retrain_epochs: int = 0
    final_retrain_lr: float | None = None
    final_distill: float | None = None
    final_project: bool = False
    project_margin: float = 0.0
    fold_dead: bool = False
    compact: bool = False
    shift: int = 0
    max_units: dict[str, int] | None = None
    max_inputs: dict[str, int] | None = None
    structure_epochs: int = 0
    structure_lr: float | None = None
    final_regrow: float = 0.0
    regrow_every: int = 100
    final_refill: bool = False
    final_shift: int | None = None
    final_val_fraction: float | None = None

    def __post_init__(self) -> None:
        self._check_values()
        self._check_caps()
        for needs, message in _schedule_dependencies(self):
            if needs:
                raise ConfigError(message)
        self._check_val_fraction()

    def _check_values(self) -> None:
        """Each key on its own: counts, positive and non-negative reals, fractions in
        [0, 1], true / false flags and choices (None: the key's "not set" default)."""
        from mobileprune.sparsity.proximal import _nonneg_int, _positive

        def given(key: str) -> bool:  # None means "not set" for the optional keys only
            return getattr(self, key) is not None or key not in _OPTIONAL

        for key, low in _COUNTS.items():
            if given(key):
                _nonneg_int(getattr(self, key), f"schedule.{key}", minimum=low)
        for key in _POSITIVE:
            if given(key):
                _positive(getattr(self, key), f"schedule.{key}")
        for key in ("final_retrain_lr", "structure_lr"):  # optional rates are kept as floats
            if getattr(self, key) is not None:
                setattr(self, key, float(getattr(self, key)))
        for key in _NONNEGATIVE + _FRACTIONS:
            if given(key):
                _positive(getattr(self, key), f"schedule.{key}", strict=False)
        for key in _FRACTIONS:
            if getattr(self, key) is not None and getattr(self, key) > 1:
                raise ConfigError(f"schedule.{key} is a fraction in [0, 1], got {getattr(self, key)}")
        for key in _FLAGS:
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"schedule.{key} must be true or false, got {getattr(self, key)!r}")
        for key, allowed in (("mode", ("palm", "proximal")), ("prox_optimizer", OPTIMIZERS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"schedule.{key} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, key)!r}")

    def _check_caps(self) -> None:
        """``max_units`` / ``max_inputs``: non-empty mappings of layer name -> count >= 1."""
        from mobileprune.sparsity.proximal import _nonneg_int

        for key in ("max_units", "max_inputs"):
            caps = getattr(self, key)
            if caps is None:
                continue
            if not isinstance(caps, Mapping) or not caps:
                raise ConfigError(f"schedule.{key} must be a non-empty mapping {{layer name: count}}, "
                                  f"got {caps!r}")
            for name, k in caps.items():
                _nonneg_int(k, f"schedule.{key}[{name!r}]", minimum=1)
            setattr(self, key, dict(caps))

    def _check_val_fraction(self) -> None:
        from mobileprune.sparsity.proximal import _positive

        f = self.final_val_fraction
        if f is None:
            return
        if _positive(f, "schedule.final_val_fraction") >= 1:
            raise ConfigError(f"schedule.final_val_fraction is a fraction in (0, 1), got {f}")
        if not self.final_retrain_epochs or self.final_regrow:
            raise ConfigError("schedule.final_val_fraction needs schedule.final_retrain_epochs (the "
                              "epochs it chooses from) and fixed masks (no final_regrow)")

    @property
    def final_distill_weight(self) -> float:
        """Distillation weight of the final retraining (``final_distill``, else ``distill``)."""
        return self.distill if self.final_distill is None else float(self.final_distill)


#: value checks of ProxSchedule's keys: counts (with their least value), reals > 0,
#: reals >= 0, fractions in [0, 1], true / false
_COUNTS = {"rounds": 0, "prox_epochs": 0, "retrain_epochs": 0, "increase_every": 1,
           "regrow_every": 1, "target_nonzero": 0, "final_retrain_epochs": 0, "shift": 0,
           "structure_epochs": 0, "final_shift": 0}
_POSITIVE = ("temperature", "lam_factor", "eta_factor", "prox_lr", "retrain_lr",
             "final_retrain_lr", "structure_lr")
_NONNEGATIVE = ("retrain_weight_decay", "project_margin")
_FRACTIONS = ("distill", "final_distill", "final_regrow")
_FLAGS = ("final_project", "fold_dead", "compact", "final_refill")
#: the keys whose None means "not set"; every other key must have a value
_OPTIONAL = frozenset({"target_nonzero", "final_shift", "final_retrain_lr", "structure_lr",
                       "distill", "final_distill"})


def _schedule_dependencies(s: ProxSchedule) -> list[tuple[bool, str]]:
    """``(violated, message)`` of every key that needs another one."""
    return [
        (bool(s.shift) and s.mode == "palm", "schedule.shift needs mode 'proximal' (PALM's "
         "backtracking compares losses on one fixed minibatch)"),
        (bool(s.project_margin) and not s.final_project,
         "schedule.project_margin needs schedule.final_project: true"),
        (bool(s.structure_epochs) and not (s.max_units or s.max_inputs),
         "schedule.structure_epochs needs schedule.max_units or schedule.max_inputs (it retrains "
         "the network after their cut)"),
        (s.final_project and s.target_nonzero is None,
         "schedule.final_project needs schedule.target_nonzero (the budget to project onto)"),
        (bool(s.final_regrow) and not s.final_retrain_epochs,
         "schedule.final_regrow needs schedule.final_retrain_epochs (it moves weights during the "
         "final retraining)"),
        (s.final_refill and (s.target_nonzero is None or not s.final_retrain_epochs),
         "schedule.final_refill needs schedule.target_nonzero (the budget to fill) and "
         "schedule.final_retrain_epochs"),
    ]


# the schedule keys of the first version (always part of the fingerprint)
_PROX_SCHEDULE_V1 = ("rounds", "prox_epochs", "retrain_epochs", "lam_factor", "eta_factor",
                     "increase_every", "mode", "prox_optimizer", "prox_lr", "retrain_lr",
                     "retrain_weight_decay")


def _prox_fingerprint(pruner_cfg: Mapping[str, Any], sched: ProxSchedule) -> str:
    """Hash of a proximal run's settings; schedule keys at their default value are left
    out, so that run directories of earlier versions (without those keys) still resume."""
    default = ProxSchedule()
    sch = {k: v for k, v in dataclasses.asdict(sched).items()
           if k in _PROX_SCHEDULE_V1 or v != getattr(default, k)}
    return hashlib.sha256(json.dumps({"pruner": pruner_cfg, "schedule": sch}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]



def split_prox_config(raw: Mapping[str, Any]) -> tuple[dict[str, Any], ProxSchedule]:
    """Split a proximal-pruning config into the :class:`ProximalPruner` part and the
    ``schedule:`` part (``model``/``dataset`` keys are ignored)."""
    raw = dict(raw)
    sched = raw.pop("schedule", None) or {}
    if not isinstance(sched, Mapping):
        raise ConfigError("'schedule' must be a mapping")
    names = {f.name for f in dataclasses.fields(ProxSchedule)}
    unknown = set(sched) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in 'schedule'; allowed: {sorted(names)}")
    raw.pop("model", None)
    raw.pop("dataset", None)
    return raw, ProxSchedule(**sched)


def _surgery_input(sched: ProxSchedule, loader: DataLoader):
    """fold_dead / compact need an example input (and a model torch.fx traces): fail early."""
    if not (sched.fold_dead or sched.compact):
        return None
    example = _example_input(loader)
    if example is None:
        raise ConfigError("schedule.fold_dead and schedule.compact need a map-style dataset "
                          "(loader.dataset[0] gives the example input that torch.fx traces)")
    return example


def _phases(prox: ProxMethod, sched: ProxSchedule, final_kd: float) -> list:
    """The phases of a MobilePrune run (seed 000) for ``sched``."""
    from mobileprune.pipeline.admm_run import RetrainSettings

    def masks(ctx: Context):  # refill's, else the support the rounds left
        return ctx.masks or prox.pruner.masks()

    def retraining(epochs: int, lr: float | None, distill: float, shift: int | None, **kw):
        return RetrainSettings(epochs=epochs, lr=lr if lr is not None else sched.retrain_lr,
                               weight_decay=sched.retrain_weight_decay, distill=distill,
                               temperature=sched.temperature,
                               shift=sched.shift if shift is None else shift, **kw)

    phases: list = [Evaluate()]
    if sched.fold_dead or sched.compact:
        phases.append(ProxPrepare(prox))
    if sched.max_units or sched.max_inputs:
        settings = retraining(sched.structure_epochs, sched.structure_lr, sched.distill, None)
        phases.append(ProxStructure(prox, Retrain("structure retrain", settings, masks=masks)))
    phases.append(ProxRounds(prox))
    if sched.final_project:
        phases.append(ProxProject(prox))
    if sched.final_refill:
        phases.append(ProxRefill(prox))
    if sched.final_retrain_epochs:
        settings = retraining(sched.final_retrain_epochs, sched.final_retrain_lr, final_kd,
                              sched.final_shift, regrow=sched.final_regrow,
                              regrow_every=sched.regrow_every,
                              val_fraction=sched.final_val_fraction or 0.0)
        phases.append(Retrain("final retrain", settings, masks=masks))
    return phases


def proximal_prune(model: nn.Module, train_loader: DataLoader, config: Mapping[str, Any], *,
                   eval_loader: DataLoader | None = None, run_dir: str | Path | None = None,
                   resume: bool = True, progress: bool | None = None,
                   model_name: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                   teacher: nn.Module | None = None,
                   log: Callable[[str], None] = print) -> PipelineResult:
    """MobilePrune pruning (seed 000): a regulariser's exact prox inside training.

    ``config`` holds the :class:`~mobileprune.sparsity.proximal.ProximalPruner` keys (``method``,
    ``lam``, ``eta``, ``beta``, ``layers``...) and a ``schedule:`` mapping
    (:class:`ProxSchedule`). ``model`` is pruned in place (with ``schedule.compact`` its
    dead units are also removed in place, so its layers get smaller). With ``run_dir``
    the state is saved after every round and epoch and an interrupted run resumes from
    there (pass the model as it was given to the first call); the phases
    (:mod:`mobileprune.pipeline.phases.prox`) run in the one
    :class:`~mobileprune.pipeline.runner.Runner`.

    ``teacher``: the model to distill from when ``schedule.distill`` (or
    ``final_distill``) is positive; by default a frozen copy of ``model`` as given.
    """
    from mobileprune.sparsity.proximal import ProximalPruner

    pruner_cfg, sched = split_prox_config(config)
    ProximalPruner(model, pruner_cfg)  # validate the config against the model first
    if sched.max_units or sched.max_inputs:  # validate the caps against the model as given
        cap_units(copy.deepcopy(model), sched.max_units, sched.max_inputs)
    prox = ProxMethod(model, pruner_cfg, sched, _surgery_input(sched, train_loader))
    run_dir = Path(run_dir) if run_dir is not None else None
    ctx = Context(model, train_loader, eval_loader, log=log, progress=progress, model_name=model_name,
                  model_kwargs=model_kwargs, run_dir=run_dir, keep_epochs=False,
                  values={"accuracy_before": None, "rounds_done": 0, "compacted": False},
                  parts={"pruner": prox})
    final_kd = sched.final_distill_weight if sched.final_retrain_epochs else 0.0
    distilled = sched.distill > 0 or final_kd > 0
    Runner(_phases(prox, sched, final_kd), ctx, state_path=run_dir / STATE_FILE if run_dir else None,
           fingerprint=_prox_fingerprint(pruner_cfg, sched), inputs=run_inputs(model, train_loader),
           config={"pruner": pruner_cfg, "schedule": dataclasses.asdict(sched)}, resume=resume,
           teacher=(teacher if teacher is not None else model) if distilled else None,
           status=lambda: f"{ctx.values['rounds_done']} of {sched.rounds} rounds done",
           upgrade=lambda st: _before_runner(st, sched)).run()
    # (a compacted model carries the size it started as: compressions against the model as given)
    report = layer_report(model, example_input=_example_input(train_loader),
                          metrics={"accuracy_before": ctx.values["accuracy_before"],
                                   "accuracy_after": evaluate(model, eval_loader) if eval_loader else None,
                                   "method": pruner_cfg.get("method")})
    report["seconds"] = ctx.seconds
    return PipelineResult(model=model, masks=prox.pruner.masks(), report=report, history=ctx.history,
                          compacted=ctx.values["compacted"])


def _before_runner(st: Mapping[str, Any], sched: ProxSchedule) -> tuple[str | None, dict, dict]:
    """A state of ``proximal_prune`` written before the runner: the rounds done, the state
    of the unit caps (``structure``: the cut, epochs done, ``done``) and of everything
    after the rounds (``final``: projected, refilled masks, the final retraining's epochs,
    optimizer, scheduler and moving masks). Its masks were the pruner's, which the phases
    take from the pruner itself (``ctx.masks`` holds only refilled ones)."""
    extra = st["extra"]
    structure, final = dict(extra.get("structure") or {}), dict(extra.get("final") or {})
    states = {"structure": {k: v for k, v in structure.items() if k != "done"}, "final retrain": final}
    if (sched.max_units or sched.max_inputs) and not structure.get("done"):
        return "structure", states, {}
    if not final:  # (rounds that were all done stop at once)
        return "rounds", states, {}
    if sched.final_refill and "masks" not in final and not final.get("epochs"):
        return "refill", states, {}
    return ("final retrain" if sched.final_retrain_epochs else None), states, {}
