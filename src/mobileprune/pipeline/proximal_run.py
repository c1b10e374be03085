"""The MobilePrune pipeline (seed 000): rounds of PALM / proximal steps and masked
retraining, with the schedule's additions (distillation, target budget and projection,
unit caps, dead-weight folding, compaction between rounds, regrowth)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mobileprune.checkpoint import (architecture_of, load_checkpoint, restore_model,
                                   save_checkpoint)
from mobileprune.errors import CheckpointError, ConfigError
from mobileprune.sparsity.report import layer_report
from mobileprune.pipeline import distributed
from mobileprune.pipeline.retrain import masked_retrain
from mobileprune.pipeline.train import OPTIMIZERS, cosine_lr, evaluate
from mobileprune.pipeline.runstate import (STATE_FILE, PhaseClock, PipelineResult, _example_input,
                                          _teacher, check_resume, run_inputs)


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

    def __post_init__(self) -> None:
        from mobileprune.sparsity.proximal import _nonneg_int, _positive

        for key in ("distill", "final_distill"):  # weights in [0, 1]; final_distill may be None
            v = getattr(self, key)
            if v is None:
                continue
            _positive(v, f"schedule.{key}", strict=False)
            if v > 1:
                raise ConfigError(f"schedule.{key} must be in [0, 1], got {v}")
        _positive(self.temperature, "schedule.temperature")
        for key, low in (("rounds", 0), ("prox_epochs", 0), ("retrain_epochs", 0),
                         ("increase_every", 1), ("regrow_every", 1)):
            _nonneg_int(getattr(self, key), f"schedule.{key}", minimum=low)
        for key in ("lam_factor", "eta_factor", "prox_lr", "retrain_lr"):
            _positive(getattr(self, key), f"schedule.{key}")
        _positive(self.retrain_weight_decay, "schedule.retrain_weight_decay", strict=False)
        for key, allowed in (("mode", ("palm", "proximal")), ("prox_optimizer", OPTIMIZERS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"schedule.{key} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, key)!r}")
        if self.target_nonzero is not None:
            _nonneg_int(self.target_nonzero, "schedule.target_nonzero")
        _nonneg_int(self.final_retrain_epochs, "schedule.final_retrain_epochs")
        _nonneg_int(self.shift, "schedule.shift")
        if self.shift and self.mode == "palm":
            raise ConfigError("schedule.shift needs mode 'proximal' (PALM's backtracking compares "
                              "losses on one fixed minibatch)")
        if self.final_retrain_lr is not None:
            self.final_retrain_lr = _positive(self.final_retrain_lr, "schedule.final_retrain_lr")
        for key in ("final_project", "fold_dead", "compact"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"schedule.{key} must be true or false, got {getattr(self, key)!r}")
        _positive(self.project_margin, "schedule.project_margin", strict=False)
        if self.project_margin and not self.final_project:
            raise ConfigError("schedule.project_margin needs schedule.final_project: true")
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
        _nonneg_int(self.structure_epochs, "schedule.structure_epochs")
        if self.structure_epochs and not (self.max_units or self.max_inputs):
            raise ConfigError("schedule.structure_epochs needs schedule.max_units or schedule.max_inputs "
                              "(it retrains the network after their cut)")
        if self.structure_lr is not None:
            self.structure_lr = _positive(self.structure_lr, "schedule.structure_lr")
        if self.final_project and self.target_nonzero is None:
            raise ConfigError("schedule.final_project needs schedule.target_nonzero (the budget "
                              "to project onto)")
        _positive(self.final_regrow, "schedule.final_regrow", strict=False)
        if self.final_regrow > 1:
            raise ConfigError(f"schedule.final_regrow is a fraction in [0, 1], got {self.final_regrow}")
        if self.final_regrow and not self.final_retrain_epochs:
            raise ConfigError("schedule.final_regrow needs schedule.final_retrain_epochs (it moves "
                              "weights during the final retraining)")
        _nonneg_int(self.regrow_every, "schedule.regrow_every", minimum=1)
        if not isinstance(self.final_refill, bool):
            raise ConfigError(f"schedule.final_refill must be true or false, got {self.final_refill!r}")
        if self.final_refill and (self.target_nonzero is None or not self.final_retrain_epochs):
            raise ConfigError("schedule.final_refill needs schedule.target_nonzero (the budget to "
                              "fill) and schedule.final_retrain_epochs")
        if self.final_shift is not None:
            _nonneg_int(self.final_shift, "schedule.final_shift")

    @property
    def final_distill_weight(self) -> float:
        """Distillation weight of the final retraining (``final_distill``, else ``distill``)."""
        return self.distill if self.final_distill is None else float(self.final_distill)


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


def _masked_retrain(run: "_ProxRun", epochs: int, lr: float, state: dict, distill: float,
                    save: Callable[[dict], None], label: str, regrow: float = 0.0,
                    shift: int | None = None) -> None:
    """``epochs`` of MobilePrune's masked retraining (seed 000) after the unit caps
    (``structure_epochs``) or the last round (``final_retrain_epochs``): Adam with cosine
    decay from ``lr`` in the one masked-retraining loop
    (:func:`~mobileprune.pipeline.retrain.masked_retrain`), under the pruner's masks (or
    ``state["masks"]``). Resumable per epoch: ``state`` holds the epochs done and the
    optimizer / scheduler states, and ``save(state)`` runs after every epoch. ``regrow > 0``:
    the masks move (:class:`RegrowingMaskEnforcer` with ``alpha = regrow`` over the first
    75% of the steps); they are part of ``state``."""
    from mobileprune.sparsity.masks import RegrowingMaskEnforcer

    opt = torch.optim.Adam(run.model.parameters(), lr=lr, weight_decay=run.sched.retrain_weight_decay)
    steps = epochs * len(run.loader)
    masks = state.get("masks") or run.pruner.masks()
    if regrow:
        masks = RegrowingMaskEnforcer(run.model, masks, opt, end_step=int(0.75 * steps), alpha=regrow,
                                      every=run.sched.regrow_every, allowed=state.get("allowed"),
                                      step=int(state.get("epochs", 0)) * len(run.loader))

    def checkpoint(st: dict[str, Any], rec: dict[str, Any]) -> None:
        if regrow:
            st.update(masks=dict(masks.masks), allowed=dict(masks.allowed))
        save(st)
        acc = rec.get("test_accuracy")
        run.log(f"{label} {rec['epoch']}/{epochs}: loss {rec['loss']:.4f}"
                + (f", test acc {100 * acc:.2f}%" if acc is not None else ""))

    measure = (lambda: {"test_accuracy": evaluate(run.model, run.eval_loader)}) \
        if run.eval_loader is not None else None
    masked_retrain(run.model, run.loader, opt, epochs, masks=masks, scheduler=cosine_lr(opt, steps),
                   resume=state, evaluate=measure, checkpoint=checkpoint, progress=run.progress,
                   desc=label, train={"shift": run.sched.shift if shift is None else shift,
                                      **run.kd(distill)})


def _grad_magnitudes(model: nn.Module, loader, masks: Mapping[str, Tensor], kd: Mapping[str, Any],
                     batches: int) -> dict[str, Tensor]:
    """``|gradient|`` of the training loss (with distillation when ``kd`` has a teacher)
    of the masked weights, summed over the first ``batches`` minibatches, in eval mode
    (BatchNorm statistics untouched, no dropout); the model is left unchanged (its
    gradients are cleared)."""
    from mobileprune.pipeline.train import training_loss

    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(params[n]) for n in masks}
    was = model.training
    model.eval()
    for i, (x, y) in enumerate(loader):
        if i == batches:
            break
        model.zero_grad(set_to_none=True)
        training_loss(model, x, y, **kd)[0].backward()
        if distributed.active():
            distributed.average_gradients(model)
        for n in masks:
            if params[n].grad is not None:
                acc[n] += params[n].grad.abs()
    model.zero_grad(set_to_none=True)
    model.train(was)
    return acc


def cap_units(model: nn.Module, max_units: Mapping[str, int] | None = None,
              max_inputs: Mapping[str, int] | None = None, *,
              strict: bool = True) -> dict[str, dict[str, int]]:
    """Keep at most ``max_units[name]`` output units and ``max_inputs[name]`` input units of
    the named layers: the units of largest l2 norm (filters or neurons: rows of the
    weight; input channels or a Linear's columns), the others zeroed in place. The exact
    projection onto ``{at most k nonzero groups}`` (seed 003 sec. 2.4,
    :func:`~mobileprune.math.projection.project_top_groups`). Biases are left alone (a cut
    unit with a bias is a constant; :func:`~mobileprune.surgery.compact.fold_dead_weights` or
    :func:`~mobileprune.surgery.compact.compact` folds it into the next layer).

    Returns ``{name: {"out": active output units, "in": active input units}}`` after the
    cut. Raises :class:`ConfigError` for a name that is not a Conv/Linear layer of
    ``model`` or (``strict``) a count larger than the layer; with ``strict=False`` such a
    layer is left as it is (a layer already made smaller by :func:`compact`).
    """
    from mobileprune.math.groups import from_groups, to_groups
    from mobileprune.math.projection import project_top_groups
    from mobileprune.sparsity.targets import GEMM_TYPES, prunable_layers

    layers = prunable_layers(model, GEMM_TYPES)
    caps = [(name, k, "filter", "max_units") for name, k in (max_units or {}).items()] + \
           [(name, k, "channel", "max_inputs") for name, k in (max_inputs or {}).items()]
    for name, k, grouping, key in caps:
        if name not in layers:
            raise ConfigError(f"schedule.{key}: {name!r} is not a Conv/Linear layer of the model; "
                              f"layers: {sorted(layers)}")
        n = to_groups(layers[name].weight.detach(), grouping).shape[0]
        if k > n and strict:
            raise ConfigError(f"schedule.{key}[{name!r}] = {k} is larger than the layer ({n} units)")
    with torch.no_grad():
        for name, k, grouping, _ in caps:
            w = layers[name].weight
            g = to_groups(w, grouping)
            if k < g.shape[0]:
                w.copy_(from_groups(project_top_groups(g, k)[0], grouping, w.shape))
    return {name: _unit_counts(layers[name].weight) for name in dict.fromkeys(name for name, *_ in caps)}


def _unit_counts(weight: Tensor) -> dict[str, int]:
    """Active output units (nonzero rows / filters) and input units (nonzero columns /
    input channels) of a Conv/Linear weight."""
    from mobileprune.math.groups import count_nonzero_groups

    w = weight.detach()
    return {"out": count_nonzero_groups(w, "filter"), "in": count_nonzero_groups(w, "channel")}


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


@dataclass
class _ProxRun:
    """The state of one :func:`proximal_prune` run, shared by its phases (the structure
    cut, the rounds, the final projection, refill and retraining) and saved after each:
    one resume path, one place that rebuilds the pruner when layers shrink."""

    model: nn.Module
    loader: DataLoader
    pruner_cfg: dict[str, Any]
    sched: ProxSchedule
    eval_loader: DataLoader | None
    state_path: Path | None
    progress: bool | None
    log: Callable[[str], None]
    model_name: str | None
    model_kwargs: Mapping[str, Any] | None
    inputs: dict[str, Any]
    fingerprint: str
    given_arch: dict[str, list[int]]
    pruner: Any = None
    teacher: nn.Module | None = None
    example: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0
    acc_before: float | None = None
    final: dict[str, Any] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)  # the max_units / max_inputs phase
    compacted: bool = False
    clock: PhaseClock = field(default_factory=PhaseClock)  # wall time per phase

    def load(self) -> dict | None:
        """The saved state of this run (checked: same config, weights and data), or None."""
        if self.state_path is None or not self.state_path.exists():
            return None
        st = load_checkpoint(self.state_path)
        extra = st["extra"]
        if extra.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"{self.state_path} belongs to a run with a different config; use "
                                  "another run directory or pass resume=False (--fresh)")
        check_resume(self.state_path, extra, self.inputs)
        if extra.get("given_architecture", self.given_arch) != self.given_arch:
            raise CheckpointError(f"{self.state_path} was started from a different model than the "
                                  "one given (parameter shapes differ); pass the model as given to "
                                  "the first run")
        self.history, self.done = list(extra["history"]), int(extra["rounds_done"])
        return st

    def restore(self, st: dict) -> None:
        extra = st["extra"]
        restore_model(st, self.model, str(self.state_path))  # resizes a compacted run's layers
        self.acc_before = extra.get("accuracy_before")
        self.final = dict(extra.get("final") or {})
        self.structure = dict(extra.get("structure") or {})
        self.compacted = bool(extra.get("compacted"))
        self.clock = PhaseClock(extra.get("phase_seconds"))
        self.log(f"resuming from {self.state_path}: {self.done} of {self.sched.rounds} rounds done")

    def save(self, final_state=None) -> None:
        if self.state_path is None:
            return
        save_checkpoint(self.state_path, self.model, kind="run-state", model_name=self.model_name,
                        model_kwargs=self.model_kwargs, masks=self.pruner.masks(),
                        config={"pruner": self.pruner_cfg, "schedule": dataclasses.asdict(self.sched)},
                        extra={**self.inputs, "fingerprint": self.fingerprint,
                               "pruner": self.pruner.state_dict(), "history": self.history,
                               "rounds_done": self.done, "accuracy_before": self.acc_before,
                               "final": final_state, "given_architecture": self.given_arch,
                               "compacted": self.compacted, "structure": self.structure,
                               "phase_seconds": self.clock.state()})

    def kd(self, weight: float) -> dict[str, Any]:
        return ({"teacher": self.teacher, "distill": weight, "temperature": self.sched.temperature}
                if weight > 0 else {})

    def fold(self) -> int | None:
        """schedule.fold_dead: zero the weights that cannot change the output."""
        if not self.sched.fold_dead:
            return None
        from mobileprune.surgery.compact import fold_dead_weights

        return sum(fold_dead_weights(self.model, self.example).values())

    def shrink(self) -> dict[str, Any]:
        """schedule.compact: remove dead units in place and rebuild the pruner on the
        smaller layers (same regularisers, lam/eta and counters)."""
        from mobileprune.sparsity.proximal import ProximalPruner
        from mobileprune.surgery.compact import CompactionWarning, compact_in_place

        with warnings.catch_warnings():  # a round with no dead unit is normal here: the
            warnings.simplefilter("ignore", CompactionWarning)  # round's record says {}
            changed = compact_in_place(self.model, self.example)
        if changed:
            state = self.pruner.state_dict()
            try:
                self.pruner = ProximalPruner(self.model, self.pruner_cfg)
                self.pruner.load_state_dict(state)
            except ConfigError as exc:
                raise ConfigError(f"schedule.compact: the regularisers do not fit the compacted "
                                  f"layers ({exc}); use shape-independent groupings") from None
            self.compacted = True
            self.log("compacted: " + ", ".join(f"{k} {tuple(a)} -> {tuple(b)}"
                                               for k, (a, b) in changed.items()))
        return {k: [list(a), list(b)] for k, (a, b) in changed.items()}

    def record(self, rec: dict[str, Any], message: str) -> dict[str, Any]:
        """Add the nonzero counts and the test accuracy to ``rec``, keep and log it."""
        nnz = self.pruner.nonzero()
        rec.update(nonzero=nnz, nonzero_total=sum(nnz.values()))
        if self.eval_loader is not None:
            rec["accuracy"] = evaluate(self.model, self.eval_loader)
        self.history.append(rec)
        self.log(message + (f", test acc {100 * rec['accuracy']:.2f}%" if "accuracy" in rec else ""))
        return rec


def _first_cut(run: _ProxRun) -> dict[str, dict[str, int]]:
    """The caps layer by layer in model order, outputs before inputs, with fold_dead after
    each, so that a layer's cut reaches its consumers before their own cut (an input cap
    then chooses among the live inputs)."""
    from mobileprune.sparsity.targets import GEMM_TYPES, prunable_layers

    units, ins = run.sched.max_units or {}, run.sched.max_inputs or {}
    layers = prunable_layers(run.model, GEMM_TYPES)
    for name in layers:
        for caps in ({"max_units": {name: units[name]}} if name in units else None,
                     {"max_inputs": {name: ins[name]}} if name in ins else None):
            if caps:
                cap_units(run.model, **caps)
                run.fold()
    return {name: _unit_counts(layers[name].weight) for name in layers if name in units or name in ins}


def _structure_phase(run: _ProxRun) -> None:
    """max_units / max_inputs: the first cut, then ``structure_epochs`` of retraining."""
    sched, structure = run.sched, run.structure
    if structure.get("done"):
        return
    if not structure:  # the first cut (a resumed run has it in its state)
        units = _first_cut(run)
        run.log("capped units: " + ", ".join(f"{k} {v['out']} out / {v['in']} in" for k, v in units.items()))
        if sched.compact:
            run.shrink()
        structure.update(units=units, epochs=0)
        run.save()
    if sched.structure_epochs:
        def save_structure(state):
            structure.update(state)
            run.save()
        lr = sched.structure_lr if sched.structure_lr is not None else sched.retrain_lr
        _masked_retrain(run, sched.structure_epochs, lr, structure, sched.distill, save_structure,
                        "structure retrain")
    run.record({"round": 0, "capped": structure["units"]}, "structure cut")
    for key in ("optimizer", "scheduler"):
        structure.pop(key, None)
    structure["done"] = True
    run.save()


def _rounds_phase(run: _ProxRun) -> None:
    """The rounds of seed 000: prox epochs, masked retraining, lam / eta increase."""
    from mobileprune.sparsity.proximal import run_rounds

    sched = run.sched
    capped = bool(sched.max_units or sched.max_inputs)

    def after_prox():  # a cut unit must not grow back during the prox phase
        if capped:
            cap_units(run.model, sched.max_units, sched.max_inputs, strict=False)
        return run.fold()

    def reached() -> bool:
        return sched.target_nonzero is not None and bool(run.history) and \
            run.history[-1]["nonzero_total"] <= sched.target_nonzero * (1 + sched.project_margin)

    t0 = time.perf_counter()
    while run.done < sched.rounds and not reached():
        rec = run_rounds(run.model, run.loader, run.pruner, 1, sched.prox_epochs, sched.retrain_epochs,
                         increase_every=None, retrain_lr=sched.retrain_lr,
                         retrain_weight_decay=sched.retrain_weight_decay, mode=sched.mode,
                         eval_loader=run.eval_loader, log=None, prox_optimizer=sched.prox_optimizer,
                         prox_lr=sched.prox_lr, progress=run.progress,
                         after_prox=after_prox if capped or sched.fold_dead else None,
                         shift=sched.shift, first_round=run.done + 1, **run.kd(sched.distill))[0]
        run.done += 1
        rec.update(round=run.done, seconds=time.perf_counter() - t0)
        if sched.increase_every and run.done % sched.increase_every == 0 and run.done < sched.rounds:
            run.pruner.increase(sched.lam_factor, sched.eta_factor)
            rec["increased"] = True
        run.history.append(rec)
        acc = f", test acc {100 * rec['accuracy']:.2f}%" if "accuracy" in rec else ""
        run.log(f"round {run.done}/{sched.rounds}: nonzero weights {rec['nonzero_total']:,}{acc}")
        if sched.compact:
            rec["compacted"] = run.shrink()
        run.save()


def _project_phase(run: _ProxRun) -> None:
    """schedule.final_project: trim onto target_nonzero (seed 003 Eq. 6, per layer in
    proportion to what the rounds left)."""
    if not run.sched.final_project or run.final:
        return
    run.fold()  # the trim below then only keeps weights that matter
    if run.pruner.project_nonzero(run.sched.target_nonzero):
        run.fold()
        rec = run.record({"round": run.done, "projected": True},
                         f"projected onto {run.sched.target_nonzero:,} nonzero weights")
        if run.sched.compact:
            rec["compacted"] = run.shrink()
        run.save({"epochs": 0, "projected": True})


def _refill_phase(run: _ProxRun, final_kd: float) -> None:
    """schedule.final_refill: fill the budget with the largest-gradient inactive weights."""
    if not run.sched.final_refill or "masks" in run.final:
        return
    masks = run.pruner.masks()
    have = sum(int(m.sum()) for m in masks.values())
    if have >= run.sched.target_nonzero:
        return
    from mobileprune.sparsity.masks import live_structure, refill

    scores = _grad_magnitudes(run.model, run.loader, masks, run.kd(final_kd), batches=50)
    masks = refill(masks, scores, {n: live_structure(m) for n, m in masks.items()},
                   run.sched.target_nonzero - have)
    run.final.update(masks=masks, epochs=0)
    now = sum(int(m.sum()) for m in masks.values())
    run.log(f"refilled to {now:,} weights (+{now - have:,} by gradient magnitude)")
    run.save(run.final)


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
    the state is saved after every round and an interrupted run resumes from the last
    finished round (pass the model as it was given to the first call).

    ``teacher``: the model to distill from when ``schedule.distill`` (or
    ``final_distill``) is positive; by default a frozen copy of ``model`` as given.
    """
    from mobileprune.sparsity.proximal import ProximalPruner

    pruner_cfg, sched = split_prox_config(config)
    ProximalPruner(model, pruner_cfg)  # validate the config against the model first
    if sched.max_units or sched.max_inputs:  # validate the caps against the model as given
        cap_units(copy.deepcopy(model), sched.max_units, sched.max_inputs)
    run_dir = Path(run_dir) if run_dir is not None else None
    run = _ProxRun(model, train_loader, pruner_cfg, sched, eval_loader,
                   run_dir / STATE_FILE if run_dir else None, progress, log, model_name, model_kwargs,
                   run_inputs(model, train_loader), _prox_fingerprint(pruner_cfg, sched),
                   architecture_of(model))
    st = run.load() if resume else None
    final_kd = sched.final_distill_weight if sched.final_retrain_epochs else 0.0
    if sched.distill > 0 or final_kd > 0:  # the model as given (a resumed run reloads it)
        run.teacher = _teacher(teacher if teacher is not None else model, run_dir, resumed=st is not None)
    if st is not None:
        run.restore(st)
    elif eval_loader is not None:
        run.acc_before = evaluate(model, eval_loader)
        log(f"accuracy before pruning: {100 * run.acc_before:.2f}%")
    run.pruner = ProximalPruner(model, pruner_cfg)
    if st is not None:
        run.pruner.load_state_dict(st["extra"]["pruner"])
    _prepare_surgery(run)
    if sched.max_units or sched.max_inputs:
        with run.clock("structure"):
            _structure_phase(run)
    with run.clock("rounds"):
        _rounds_phase(run)
    if sched.final_project:
        with run.clock("project"):
            _project_phase(run)
    if sched.final_refill:
        with run.clock("refill"):
            _refill_phase(run, final_kd)
    if sched.final_retrain_epochs:
        lr = sched.final_retrain_lr if sched.final_retrain_lr is not None else sched.retrain_lr
        with run.clock("final retrain"):
            _masked_retrain(run, sched.final_retrain_epochs, lr, run.final, final_kd, run.save,
                            "final retrain", regrow=sched.final_regrow, shift=sched.final_shift)
    # (a compacted model carries the size it started as: compressions against the model as given)
    report = layer_report(model, example_input=_example_input(train_loader),
                          metrics={"accuracy_before": run.acc_before,
                                   "accuracy_after": evaluate(model, eval_loader) if eval_loader else None,
                                   "method": pruner_cfg.get("method")})
    report["seconds"] = run.clock.report()
    return PipelineResult(model=model, masks=run.pruner.masks(), report=report, history=run.history,
                          compacted=run.compacted)


def _prepare_surgery(run: _ProxRun) -> None:
    """fold_dead / compact need an example input and a model torch.fx traces: fail early."""
    if not (run.sched.fold_dead or run.sched.compact):
        return
    run.example = _example_input(run.loader)
    if run.example is None:
        raise ConfigError("schedule.fold_dead and schedule.compact need a map-style dataset "
                          "(loader.dataset[0] gives the example input that torch.fx traces)")
    run.fold()
    if run.sched.compact and run.done == 0:
        run.shrink()
