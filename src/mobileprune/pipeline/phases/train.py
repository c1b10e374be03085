"""Phases that train or measure, shared by every pipeline: :class:`Evaluate`,
:class:`DenseTrain` and :class:`Retrain`, the only masked-retraining phase."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from mobileprune.data.registry import holdout_split
from mobileprune.errors import ConfigError
from mobileprune.pipeline.runner import Context, StateDict
from mobileprune.pipeline.runstate import _fmt_metric
from mobileprune.pipeline.train import cosine_lr, evaluate, make_optimizer

Masks = dict[str, Tensor]


def optimizer_for(model: nn.Module, s: Any):
    """The optimizer of a phase's settings (``optimizer``, ``lr``, ``momentum``,
    ``weight_decay``)."""
    return make_optimizer(s.optimizer, model.parameters(), s.lr, momentum=s.momentum,
                          weight_decay=s.weight_decay)


@dataclass
class Evaluate(StateDict):
    """The test metric of the model as given (``values["accuracy_before"]``), logged."""

    name: str = "before"
    clock: str | None = None  # not a step of the method
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: Context) -> None:
        if ctx.eval_loader is None:
            return
        value = ctx.values["accuracy_before"] = ctx.evaluate()
        ctx.log(f"{ctx.metric_name} before pruning: {_fmt_metric(ctx.metric_name, value)}")


@dataclass
class DenseTrain(StateDict):
    """Dense training (``fit``): ``settings.epochs`` epochs with cosine learning-rate decay
    and random shifts, resumable per epoch; no masks."""

    settings: Any  # epochs, optimizer, lr, momentum, weight_decay, shift
    name: str = "train"
    clock: str | None = "train"
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: Context) -> None:
        s = self.settings
        opt = optimizer_for(ctx.model, s)
        ctx.epochs(self, s.epochs, opt, scheduler=cosine_lr(opt, s.epochs * len(ctx.loader)),
                   train={"shift": s.shift})


@dataclass
class Retrain(StateDict):
    """Masked retraining: seed 003's after masked mapping (Algorithm 1 step 4, the masks
    fixed, pruned weights exactly 0.0) and seed 000's after the unit caps and the last
    round; ``settings`` is a :class:`~mobileprune.pipeline.prune.RetrainSettings`.

    The masks are ``masks(ctx)`` (default ``ctx.masks``). With ``settings.regrow = a > 0``
    they move at a constant count (RigL, :class:`~mobileprune.sparsity.masks.RegrowingMaskEnforcer`
    over the first 75% of the steps) inside ``allowed(masks)`` (default: the live units)
    and become ``ctx.masks``; the moved masks are part of the phase's state. ``tags`` go
    into every epoch's record.

    ``settings.val_fraction = f > 0``: early stopping by validation, the model selection of
    Prechelt (1998): a fixed random ``f`` of the training samples is held out
    (:func:`~mobileprune.data.registry.holdout_split`), the phase trains on the rest and
    measures the validation accuracy after every epoch (``val_accuracy`` in the epoch's
    record, the list in ``state["val_history"]``); the weights of the first epoch with
    the highest one are kept in the phase's state and put back when the epochs are done,
    so the masks hold exactly (every epoch's weights satisfy them) and a resumed run
    keeps the same choice. The test data never take part. A record ``{"validation": name,
    "best_epoch", "val_accuracy", "val_history"}`` goes into the run's history."""

    name: str
    settings: Any
    clock: str | None = None  # default: the name
    masks: Callable[[Context], Masks] | None = None
    allowed: Callable[[Masks], Masks] | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clock = self.clock or self.name

    def run(self, ctx: Context) -> None:
        s = self.settings
        loader, after = ctx.loader, None
        if s.val_fraction:
            loader, val = holdout_split(ctx.loader, s.val_fraction)
            after = self._validation(ctx, val)
        opt = optimizer_for(ctx.model, s)
        steps = s.epochs * len(loader)
        masks = self.state.get("masks") or (self.masks(ctx) if self.masks is not None else ctx.masks)
        keep = None
        if s.regrow:
            masks = self._regrowing(ctx, masks, opt, steps)
            keep = lambda: {"masks": dict(masks.masks), "allowed": dict(masks.allowed)}  # noqa: E731
        ctx.epochs(self, s.epochs, opt, masks=masks, scheduler=cosine_lr(opt, steps) if s.cosine else None,
                   train={"shift": s.shift, **ctx.distill(s.distill, s.temperature)}, keep=keep,
                   tags=self.tags, loader=loader, after=after)
        if s.val_fraction:
            self._keep_best(ctx)

    def _validation(self, ctx: Context, val) -> Callable[[], dict]:
        """After every epoch: the validation accuracy into the record and the history, and
        a copy of the weights when it is the best so far (the first best on ties)."""
        if ctx.metric_name != "accuracy":
            raise ConfigError(f"{self.name}: a validation split selects by accuracy; this run "
                              f"measures {ctx.metric_name}")

        def after() -> dict[str, Any]:
            acc = evaluate(ctx.model, val)
            history = self.state.setdefault("val_history", [])
            history.append(acc)
            if acc > max(history[:-1], default=-1.0):
                self.state["best"] = {"epoch": len(history), "weights": {
                    k: v.detach().clone() for k, v in ctx.model.state_dict().items()}}
            return {"val_accuracy": acc}
        return after

    def _keep_best(self, ctx: Context) -> None:
        """Put back the weights of the best validation epoch and record the choice."""
        best, history = self.state.get("best"), self.state.get("val_history", [])
        if best is None:  # no epoch ran (epochs: 0)
            return
        ctx.model.load_state_dict(best["weights"])
        self.state["best"] = {"epoch": best["epoch"]}  # (the run state need not carry the copy)
        rec = {"validation": self.name, "best_epoch": best["epoch"], "val_accuracy": history[best["epoch"] - 1],
               "val_history": list(history)}
        ctx.history.append(rec)
        ctx.log(f"{self.name}: kept epoch {best['epoch']} of {len(history)} (val acc "
                f"{100 * rec['val_accuracy']:.2f}%, last {100 * history[-1]:.2f}%)")

    def _regrowing(self, ctx: Context, masks: Masks, opt, steps: int):
        from mobileprune.sparsity.masks import RegrowingMaskEnforcer

        s = self.settings
        allowed = self.state.get("allowed")
        if allowed is None and self.allowed is not None:
            allowed = self.allowed(masks)
        enforcer = RegrowingMaskEnforcer(ctx.model, masks, opt, end_step=int(0.75 * steps),
                                         alpha=s.regrow, every=s.regrow_every, allowed=allowed,
                                         step=int(self.state.get("epochs", 0)) * len(ctx.loader))
        ctx.masks = enforcer.masks  # they move; saved with the run
        return enforcer
