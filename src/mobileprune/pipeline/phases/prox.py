"""The phases of MobilePrune's pipeline (seed 000), around :class:`ProxMethod` (what they
share): :class:`ProxPrepare` (fold / compact before the first round), :class:`ProxStructure`
(the unit caps), :class:`ProxRounds`, :class:`ProxProject` and :class:`ProxRefill`; the
final retraining is a :class:`~mobileprune.pipeline.phases.train.Retrain`. Also
:func:`cap_units`, the caps themselves."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mobileprune.errors import ConfigError
from mobileprune import distributed
from mobileprune.pipeline.phases.train import Retrain
from mobileprune.pipeline.runner import Context, StateDict


class ProxMethod:
    """What the proximal phases share: the pruner config and ``sched``
    (:class:`~mobileprune.pipeline.prune.ProxSchedule`), the example input of fold / compact,
    and the :class:`~mobileprune.sparsity.proximal.ProximalPruner`, built on the model as
    it is when first used (after a resume has given a compacted model its smaller
    layers) and rebuilt when layers shrink. Saved with the run as the pruner's state."""

    def __init__(self, model: nn.Module, cfg: Mapping[str, Any], sched, example: Any = None) -> None:
        self.model, self.cfg, self.sched, self.example = model, dict(cfg), sched, example
        self._pruner = None
        self._saved: Mapping[str, Any] | None = None

    @property
    def pruner(self):
        from mobileprune.sparsity.proximal import ProximalPruner

        if self._pruner is None:
            self._pruner = ProximalPruner(self.model, self.cfg)
            if self._saved is not None:
                self._pruner.load_state_dict(self._saved)
        return self._pruner

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pruner, self._saved = None, state

    def kd(self, ctx: Context, weight: float) -> dict[str, Any]:
        return ctx.distill(weight, self.sched.temperature)

    def fold(self, ctx: Context) -> int | None:
        """schedule.fold_dead: zero the weights that cannot change the output."""
        if not self.sched.fold_dead:
            return None
        from mobileprune.surgery.compact import fold_dead_weights

        return sum(fold_dead_weights(ctx.model, self.example).values())

    def shrink(self, ctx: Context) -> dict[str, Any]:
        """schedule.compact: remove dead units in place and rebuild the pruner on the
        smaller layers (same regularisers, lam/eta and counters)."""
        from mobileprune.surgery.compact import CompactionWarning, compact_in_place

        with warnings.catch_warnings():  # a round with no dead unit is normal here: the
            warnings.simplefilter("ignore", CompactionWarning)  # round's record says {}
            changed = compact_in_place(ctx.model, self.example)
        if changed:
            self.load_state_dict(self.pruner.state_dict())
            try:
                self.pruner
            except ConfigError as exc:
                raise ConfigError(f"schedule.compact: the regularisers do not fit the compacted "
                                  f"layers ({exc}); use shape-independent groupings") from None
            ctx.values["compacted"] = True
            ctx.log("compacted: " + ", ".join(f"{k} {tuple(a)} -> {tuple(b)}"
                                              for k, (a, b) in changed.items()))
        return {k: [list(a), list(b)] for k, (a, b) in changed.items()}

    def record(self, ctx: Context, rec: dict[str, Any], message: str) -> dict[str, Any]:
        """Add the nonzero counts and the test accuracy to ``rec``, keep and log it."""
        nnz = self.pruner.nonzero()
        rec.update(nonzero=nnz, nonzero_total=sum(nnz.values()))
        if ctx.eval_loader is not None:
            rec["accuracy"] = ctx.evaluate()
        ctx.history.append(rec)
        ctx.log(message + (f", test acc {100 * rec['accuracy']:.2f}%" if "accuracy" in rec else ""))
        return rec


@dataclass
class ProxPrepare(StateDict):
    """schedule.fold_dead / compact before the first round: zero what cannot change the
    output and (compact) remove the dead units."""

    prox: ProxMethod
    name: str = "prepare"
    clock: str | None = None  # not a step of the method
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: Context) -> None:
        self.prox.fold(ctx)
        if self.prox.sched.compact:
            self.prox.shrink(ctx)


@dataclass
class ProxStructure(StateDict):
    """schedule.max_units / max_inputs: the first cut (:func:`cap_units`, layer by layer in
    model order, outputs before inputs, with fold_dead after each, so that a layer's cut
    reaches its consumers before their own cut), then ``structure_epochs`` of masked
    retraining (``retrain``), then the record of the capped network."""

    prox: ProxMethod
    retrain: Retrain
    name: str = "structure"
    clock: str | None = "structure"
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: Context) -> None:
        if "units" not in self.state:  # a resumed run has the cut in its state
            units = self._first_cut(ctx)
            ctx.log("capped units: " + ", ".join(f"{k} {v['out']} out / {v['in']} in"
                                                 for k, v in units.items()))
            if self.prox.sched.compact:
                self.prox.shrink(ctx)
            self.state["units"] = units
            ctx.save()
        self.retrain.run(ctx)
        self.prox.record(ctx, {"round": 0, "capped": self.state["units"]}, "structure cut")

    def _first_cut(self, ctx: Context) -> dict[str, dict[str, int]]:
        from mobileprune.sparsity.targets import GEMM_TYPES, prunable_layers

        units, ins = self.prox.sched.max_units or {}, self.prox.sched.max_inputs or {}
        layers = prunable_layers(ctx.model, GEMM_TYPES)
        for name in layers:
            for caps in ({"max_units": {name: units[name]}} if name in units else None,
                         {"max_inputs": {name: ins[name]}} if name in ins else None):
                if caps:
                    cap_units(ctx.model, **caps)
                    self.prox.fold(ctx)
        return {name: _unit_counts(layers[name].weight) for name in layers if name in units or name in ins}

    def state_dict(self) -> dict[str, Any]:  # the retraining's epochs beside the cut
        return {**self.state, **self.retrain.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = {"units": state["units"]} if "units" in state else {}
        self.retrain.load_state_dict({k: v for k, v in state.items() if k != "units"})


@dataclass
class ProxRounds(StateDict):
    """The rounds of seed 000, one at a time (the unit of resume): prox epochs, masked
    retraining, lam / eta increase every ``increase_every`` rounds; until
    ``schedule.rounds`` or ``target_nonzero`` (within ``project_margin``). The rounds
    done are ``values["rounds_done"]``."""

    prox: ProxMethod
    name: str = "rounds"
    clock: str | None = "rounds"
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: Context) -> None:
        from mobileprune.pipeline.palm import run_rounds

        s, prox = self.prox.sched, self.prox
        t0 = time.perf_counter()
        while ctx.values["rounds_done"] < s.rounds and not self._reached(ctx):
            done = ctx.values["rounds_done"] + 1
            rec = run_rounds(ctx.model, ctx.loader, prox.pruner, 1, s.prox_epochs, s.retrain_epochs,
                             increase_every=None, retrain_lr=s.retrain_lr,
                             retrain_weight_decay=s.retrain_weight_decay, mode=s.mode,
                             eval_loader=ctx.eval_loader, log=None, prox_optimizer=s.prox_optimizer,
                             prox_lr=s.prox_lr, progress=ctx.progress, after_prox=self._after_prox(ctx),
                             shift=s.shift, first_round=done, **prox.kd(ctx, s.distill))[0]
            ctx.values["rounds_done"] = done
            rec.update(round=done, seconds=time.perf_counter() - t0)
            if s.increase_every and done % s.increase_every == 0 and done < s.rounds:
                prox.pruner.increase(s.lam_factor, s.eta_factor)
                rec["increased"] = True
            if s.compact:
                rec["compacted"] = prox.shrink(ctx)
            acc = f", test acc {100 * rec['accuracy']:.2f}%" if "accuracy" in rec else ""
            ctx.checkpoint(rec, f"round {done}/{s.rounds}: nonzero weights {rec['nonzero_total']:,}{acc}")

    def _after_prox(self, ctx: Context):
        """After every prox phase: a cut unit must not grow back; fold_dead."""
        s = self.prox.sched
        capped = bool(s.max_units or s.max_inputs)
        if not (capped or s.fold_dead):
            return None

        def after():
            if capped:
                cap_units(ctx.model, s.max_units, s.max_inputs, strict=False)
            return self.prox.fold(ctx)
        return after

    def _reached(self, ctx: Context) -> bool:
        s = self.prox.sched
        return s.target_nonzero is not None and bool(ctx.history) and \
            ctx.history[-1]["nonzero_total"] <= s.target_nonzero * (1 + s.project_margin)


@dataclass
class ProxProject(StateDict):
    """schedule.final_project: trim onto ``target_nonzero`` (seed 003 Eq. 6, per layer in
    proportion to what the rounds left), fold_dead around it."""

    prox: ProxMethod
    name: str = "project"
    clock: str | None = "project"
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: Context) -> None:
        prox, target = self.prox, self.prox.sched.target_nonzero
        prox.fold(ctx)  # the trim below then only keeps weights that matter
        if prox.pruner.project_nonzero(target):
            prox.fold(ctx)
            rec = prox.record(ctx, {"round": ctx.values["rounds_done"], "projected": True},
                              f"projected onto {target:,} nonzero weights")
            if prox.sched.compact:
                rec["compacted"] = prox.shrink(ctx)


@dataclass
class ProxRefill(StateDict):
    """schedule.final_refill: when the model has fewer nonzeros than ``target_nonzero``,
    fill the budget with the inactive weights inside the live units whose gradient
    magnitude (with the final retraining's distillation) is largest
    (:func:`~mobileprune.sparsity.masks.refill`); the result is ``ctx.masks``."""

    prox: ProxMethod
    name: str = "refill"
    clock: str | None = "refill"
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: Context) -> None:
        from mobileprune.sparsity.masks import live_structure, refill

        target = self.prox.sched.target_nonzero
        masks = self.prox.pruner.masks()
        have = sum(int(m.sum()) for m in masks.values())
        if have >= target:
            return
        kd = self.prox.kd(ctx, self.prox.sched.final_distill_weight)  # (it needs the final retraining)
        scores = _grad_magnitudes(ctx.model, ctx.loader, masks, kd, batches=50)
        ctx.masks = refill(masks, scores, {n: live_structure(m) for n, m in masks.items()},
                           target - have)
        now = sum(int(m.sum()) for m in ctx.masks.values())
        ctx.log(f"refilled to {now:,} weights (+{now - have:,} by gradient magnitude)")


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
