"""The phases of one stage of the ADMM pipeline (seed 003, section 2.3, Algorithm 1):
:class:`ADMM` regularisation, :class:`Harden` (masked mapping) and, after the stage's
:class:`~mobileprune.pipeline.phases.train.Retrain`, :class:`StageDone`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch.utils.data import DataLoader

from mobileprune.checkpoint import save_checkpoint
from mobileprune.errors import ConfigError, UnsupportedModelError
from mobileprune.pipeline.phases.train import Masks, optimizer_for
from mobileprune.pipeline.runner import Context, StateDict
from mobileprune.pipeline.runstate import _example_input, _fmt_metric
from mobileprune.sparsity.admm import ADMMPruner, rho_multiplier_for
from mobileprune.sparsity.report import layer_report
from mobileprune.sparsity.targets import PruneConfig


@dataclass(frozen=True)
class Stage:
    """One stage of a progressive schedule, as its phases see it: ``label`` (``stage1``,
    ``stage2-<name>``), its pruning ``config`` and resolved ``targets``, and its ADMM
    settings ``admm`` (:class:`~mobileprune.pipeline.prune.ADMMSettings`)."""

    label: str
    config: PruneConfig
    targets: list
    admm: Any

    @classmethod
    def of(cls, i: int, config: PruneConfig, targets: list, admm: Any) -> "Stage":
        return cls(stage_label(i, config), config, targets, admm)


def stage_label(i: int, config: PruneConfig) -> str:
    return f"stage{i + 1}" + (f"-{config.name}" if config.name else "")


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


def admm_updates(a, loader) -> int:
    """Z/U updates in an ADMM phase of ``a.epochs`` epochs over ``loader``: one per epoch,
    or one every ``a.update_every`` optimizer steps (the step count runs across epochs)."""
    if a.update_every is None:
        return a.epochs
    try:
        steps = len(loader)
    except TypeError:
        raise ConfigError("admm.rho_final with update_every needs a data loader with a length "
                          "(steps per epoch); give update_every: null (once per epoch) or "
                          "rho_multiplier instead") from None
    return a.epochs * steps // a.update_every


def admm_pruner(ctx: Context, stage: Stage, *, warn: bool) -> ADMMPruner:
    """The stage's :class:`~mobileprune.sparsity.admm.ADMMPruner`, choosing
    only inside the previous stage's masks when ``a.nested``; structured targets are
    coupled through the traced graph, or projected layer by layer (with a warning when
    ``warn``) for a model that cannot be traced."""
    a = stage.admm
    multiplier = a.rho_multiplier if a.rho_final is None else rho_multiplier_for(
        a.rho, a.rho_final, admm_updates(a, ctx.loader))

    def make(example):
        return ADMMPruner(ctx.model, stage.config, rho=a.rho, rho_multiplier=multiplier,
                          rho_max=max(a.rho_max, a.rho), update_every=a.update_every,
                          allowed=(ctx.masks or None) if a.nested else None, example_input=example)

    example = _coupling_input(stage.targets, ctx.loader, needed=a.reallocate_dead)
    try:
        return make(example)
    except UnsupportedModelError as exc:
        if example is None or a.reallocate_dead:
            raise
        if warn:
            ctx.log(f"warning: structured targets are projected layer by layer, channel coupling "
                    f"unknown: {exc}")
        return make(None)


def regrow_allowed(targets) -> Callable[[Masks], Masks]:
    """Where ``retrain.regrow`` may grow weights: the live units of layers with only
    unstructured targets; a layer with a structured target keeps its mask."""
    from mobileprune.sparsity.masks import live_structure

    kinds: dict[str, set] = {}
    for t in targets:
        kinds.setdefault(t.param_name, set()).add(t.structure)
    return lambda masks: {n: live_structure(m) if kinds.get(n) == {"unstructured"} else m.clone()
                          for n, m in masks.items()}


@dataclass
class ADMM(StateDict):
    """ADMM regularisation of one stage (seed 003, Eqs. 5-7) for ``settings.epochs`` epochs:
    the W-step is training with the penalty ``rho/2 ||W - Z + U||^2``; Z/U are updated
    once per epoch (or every ``update_every`` steps) and rho grows by its multiplier.
    Weights pruned by an earlier stage stay at zero (``nested``). Resumable per epoch
    (the ADMM state is saved with each)."""

    stage: Stage
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.clock = f"{self.stage.label} admm"

    def run(self, ctx: Context) -> None:
        a = self.stage.admm
        pruner = admm_pruner(ctx, self.stage, warn=True)
        opt = optimizer_for(ctx.model, a)
        if self.state.get("admm") is not None:
            pruner.load_state_dict(self.state["admm"])
        ctx.epochs(self, a.epochs, opt, masks=ctx.masks if ctx.masks and a.nested else None,
                   train={**ctx.distill(a.distill, a.temperature), "shift": a.shift,
                          "penalty": pruner.penalty, "after_step": pruner.step},
                   after=pruner.update if a.update_every is None else None,
                   keep=lambda: {"admm": pruner.state_dict()},
                   tags={"stage": self.stage.label, "phase": "admm"})
        self.state.pop("admm", None)


@dataclass
class Harden(StateDict):
    """Masked mapping (seed 003, Algorithm 1 step 3, Eq. 6): ``W_i <- Pi_{S_i}(W_i)``, the
    hard projection of every layer onto its target set; its masks become ``ctx.masks``.
    With ``reallocate_dead`` the budget of weights that cannot affect the output goes to
    live ones. Timed with the stage's ADMM."""

    stage: Stage
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name, self.clock = f"{self.stage.label} masked-mapping", f"{self.stage.label} admm"

    def run(self, ctx: Context) -> None:
        label, reallocate = self.stage.label, self.stage.admm.reallocate_dead
        pruner = admm_pruner(ctx, self.stage, warn=False)
        ctx.masks = pruner.finalize(reallocate_dead=reallocate)
        if reallocate:
            ctx.log(f"{label}: dead weights reallocated in {pruner.reallocation_rounds} round(s)")
        value = ctx.evaluate()
        ctx.history.append({"stage": label, "phase": "masked-mapping", ctx.test_key: value})
        if value is not None:
            ctx.log(f"{label}: {ctx.metric_name} right after masked mapping: "
                    f"{_fmt_metric(ctx.metric_name, value)}")


@dataclass
class StageDone(StateDict):
    """The end of a stage: its report in the history and its pruned checkpoint
    (``RUN_DIR/<label>.pt``). Timed with the stage's retraining."""

    stage: Stage
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name, self.clock = f"{self.stage.label} done", f"{self.stage.label} retrain"

    def run(self, ctx: Context) -> None:
        name, label = ctx.metric_name, self.stage.label
        rep = layer_report(ctx.model, self.stage.targets, metrics={
            f"{name}_before": ctx.values["accuracy_before"], f"{name}_after": ctx.evaluate()})
        ctx.history.append({"stage": label, "phase": "done", "report": rep["totals"],
                            ctx.test_key: rep["metrics"][f"{name}_after"]})
        if ctx.run_dir is not None:
            save_checkpoint(ctx.run_dir / f"{label}.pt", ctx.model, kind="pruned",
                            model_name=ctx.model_name, model_kwargs=ctx.model_kwargs,
                            masks=ctx.masks, config=self.stage.config.to_dict(), metrics=rep["metrics"])
