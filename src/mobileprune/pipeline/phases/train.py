"""Phases that train or measure, shared by every pipeline: :class:`Evaluate`,
:class:`DenseTrain` and :class:`Retrain`, the only masked-retraining phase."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from mobileprune.pipeline.runner import Context, StateDict
from mobileprune.pipeline.runstate import _fmt_metric
from mobileprune.pipeline.train import cosine_lr, make_optimizer

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
    into every epoch's record."""

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
        opt = optimizer_for(ctx.model, s)
        steps = s.epochs * len(ctx.loader)
        masks = self.state.get("masks") or (self.masks(ctx) if self.masks is not None else ctx.masks)
        keep = None
        if s.regrow:
            masks = self._regrowing(ctx, masks, opt, steps)
            keep = lambda: {"masks": dict(masks.masks), "allowed": dict(masks.allowed)}  # noqa: E731
        ctx.epochs(self, s.epochs, opt, masks=masks, scheduler=cosine_lr(opt, steps) if s.cosine else None,
                   train={"shift": s.shift, **ctx.distill(s.distill, s.temperature)}, keep=keep,
                   tags=self.tags)

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
