"""One runner for every pipeline: a list of phases and the loop around them (issue 20,
item 1; ``docs/style.md`` section 3).

A run is a list of phases (:mod:`mobileprune.pipeline.phases`), each a small object with
a ``name`` (unique in the run: its key in the run state and its progress label), a
``clock`` (the key of its wall time in the report's ``seconds``; phases of one step of a
method share it, ``None``: not timed), ``run(ctx)``, ``state_dict()`` and
``load_state_dict()``. :class:`Runner` owns everything around them, written once:

- the one run-state file, a ``run-state`` checkpoint written atomically
  (:func:`~mobileprune.checkpoint.save_checkpoint`, i.e. :func:`mobileprune.files.atomic_write`)
  after every epoch (or other unit, :meth:`Context.checkpoint`) and every phase: the
  model, the masks, the names of the finished phases, every phase's state, the history,
  the shared values, the wall time per phase and the RNG states;
- the resume check: the settings' fingerprint, and the weights and data the run started
  from (:func:`~mobileprune.pipeline.runstate.check_resume`);
- the distillation teacher kept in the run directory;
- timing (:class:`~mobileprune.pipeline.runstate.PhaseClock`) and logging.

Interrupted work follows one rule: finished phases are skipped on resume, and in the
unfinished one the last unfinished unit (epoch, round) is redone from the state saved
after the unit before it, RNG and data order included, so that a resumed run ends with
the weights of an uninterrupted one. A state written before this runner is read into
its layout by the preset's ``upgrade`` and resumes where it stopped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mobileprune.checkpoint import load_checkpoint, restore_model, save_checkpoint
from mobileprune.errors import CheckpointError
from mobileprune.pipeline.retrain import masked_retrain
from mobileprune.pipeline.runstate import PhaseClock, _fmt_metric, _teacher, check_resume
from mobileprune.pipeline.train import evaluate

__all__ = ["Phase", "StateDict", "Context", "Runner", "epoch_line"]


class Phase(Protocol):
    """One step of a pipeline (see the module docstring)."""

    name: str
    clock: str | None

    def run(self, ctx: "Context") -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class StateDict:
    """``state_dict()`` / ``load_state_dict()`` of a phase whose saved state is its ``state``
    dict (epochs done, optimizer state, what it computed once): a mixin written once, not a
    phase (no phase subclasses another)."""

    state: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)


def epoch_line(name: str, rec: Mapping[str, Any], total: int) -> str:
    """The log line of one epoch: ``"stage1 retrain 2/3: loss 0.1234, test acc 98.10%"``
    (every ``val_*`` and ``test_*`` metric, and ADMM's residual and rho when the record has them)."""
    parts = [f"{name} {rec['epoch']}/{total}: loss {rec['loss']:.4f}"]
    for key, value in rec.items():
        split, _, metric = key.partition("_")
        if split in ("val", "test") and isinstance(value, float):
            parts.append(f"{split} {'acc' if metric == 'accuracy' else metric} {_fmt_metric(metric, value)}")
    if "primal_residual" in rec:
        parts.append(f"||W-Z|| {rec['primal_residual']:.3g} rho {rec['rho']:.3g}")
    return ", ".join(parts)


@dataclass
class Context:
    """What the phases of one run share; the :class:`Runner` saves it with the phases'
    states.

    ``masks`` (the run state's masks) and ``values`` (saved at the top level of the run
    state's ``extra``; a preset declares its keys with their start values, e.g.
    ``accuracy_before``) are handed from phase to phase; ``parts`` are shared objects with
    ``state_dict()`` / ``load_state_dict()`` (e.g. the proximal pruner), saved under their
    key. ``keep_epochs``: whether every epoch's record goes into ``history``."""

    model: nn.Module
    loader: DataLoader
    eval_loader: DataLoader | None = None
    log: Callable[[str], None] = print
    progress: bool | None = None
    model_name: str | None = None
    model_kwargs: Mapping[str, Any] | None = None
    run_dir: Path | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy
    metric: Callable[[nn.Module, DataLoader], float] = evaluate
    metric_name: str = "accuracy"
    keep_epochs: bool = True
    teacher: nn.Module | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, Tensor] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # the report's, when the run ends
    save: Callable[[], None] = lambda: None  # set by the Runner

    @property
    def test_key(self) -> str:
        return f"test_{self.metric_name}"

    def evaluate(self) -> float | None:
        """The test metric of the model now (``None`` without test data)."""
        return self.metric(self.model, self.eval_loader) if self.eval_loader is not None else None

    def distill(self, weight: float, temperature: float) -> dict[str, Any]:
        """``train_epoch``'s distillation arguments: from the teacher when ``weight > 0``."""
        if weight <= 0:
            return {}
        return {"teacher": self.teacher, "distill": weight, "temperature": temperature}

    def checkpoint(self, record: dict[str, Any] | None = None, line: str | None = None) -> None:
        """A unit of work is done: keep its ``record``, save the run, then log ``line``
        (what the log says is done is saved)."""
        if record is not None:
            self.history.append(record)
        self.save()
        if line is not None:
            self.log(line)

    def epochs(self, phase: Phase, total: int, optimizer, *, masks=None, scheduler=None,
               train: Mapping[str, Any] | None = None, after: Callable[[], dict] | None = None,
               keep: Callable[[], dict] | None = None, tags: Mapping[str, Any] | None = None,
               loader: DataLoader | None = None) -> None:
        """``phase``'s epochs ``phase.state["epochs"]`` to ``total`` in the one masked-training
        loop (:func:`~mobileprune.pipeline.retrain.masked_retrain`, under ``masks`` or an
        enforcer; the saved optimizer and scheduler states on resume) on ``loader``
        (default: the run's training loader). After every epoch
        ``after()`` and the test metric go into its record (with ``tags``), ``phase.state``
        takes the loop's state and ``keep()``, and the run is saved (:meth:`checkpoint`).
        A finished phase keeps no optimizer state."""
        state = phase.state

        def measure() -> dict[str, Any]:
            return {**(after() if after is not None else {}), self.test_key: self.evaluate()}

        def checkpoint(st: dict[str, Any], rec: dict[str, Any]) -> None:
            state.update(st, **(keep() if keep is not None else {}))
            rec.update(tags or {})
            self.checkpoint(rec if self.keep_epochs else None, epoch_line(phase.name, rec, total))

        masked_retrain(self.model, loader or self.loader, optimizer, total, masks=masks, scheduler=scheduler,
                       resume=state, train={"loss_fn": self.loss_fn, **(train or {})},
                       evaluate=measure, checkpoint=checkpoint, progress=self.progress,
                       desc=phase.name)
        state.pop("optimizer", None)
        state.pop("scheduler", None)


class Runner:
    """Run ``phases`` on ``ctx`` with one resumable state file (see the module docstring).

    Args:
        state_path: the run-state file (``None``: nothing is saved, nothing resumed); the
            teacher is kept beside it (``teacher.pt``).
        fingerprint: what determines the result besides the inputs (the settings); a saved
            state with another one is refused, unless ``accepts(state)`` (e.g. a state
            written by an older version, whose fingerprint covered other keys).
        inputs: :func:`~mobileprune.pipeline.runstate.run_inputs` (the weights and data the
            run starts from), checked on resume (``None``: not checked).
        config: saved as the run state's config.
        resume: continue from ``state_path`` when it exists; ``False``: start over.
        teacher: snapshot this model (frozen, kept in the run directory) as ``ctx.teacher``.
        status: a few words on the run's progress for the resume line (e.g. rounds done).
        upgrade: reads a state written before this runner (no list of finished phases):
            returns the name of the phase to run next (``None``: finished), the phases'
            states and ``ctx.masks``; without it such a state is refused.
    """

    def __init__(self, phases: Sequence[Phase], ctx: Context, *, state_path: str | Path | None = None,
                 fingerprint: str = "", accepts: Callable[[Mapping[str, Any]], bool] | None = None,
                 inputs: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 resume: bool = True, teacher: nn.Module | None = None,
                 status: Callable[[], str] | None = None,
                 upgrade: Callable[[Mapping[str, Any]], tuple[str | None, dict, dict]] | None = None) -> None:
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        self.phases, self.ctx = list(phases), ctx
        self.state_path = Path(state_path) if state_path is not None else None
        self.fingerprint, self.accepts, self.inputs = fingerprint, accepts, inputs
        self.config, self.resume, self.teacher, self.status = config, resume, teacher, status
        self.upgrade = upgrade
        self.done: list[str] = []
        self.clock = PhaseClock()
        ctx.save = self.save

    def run(self) -> Context:
        """Run the phases not finished yet, saving after each; returns the context with
        ``seconds`` (wall time per clock key and ``"total"``, summed over resumes)."""
        saved = self._load() if self.resume else None
        if self.teacher is not None:  # the model as given, before a resume overwrites it
            self.ctx.teacher = _teacher(self.teacher, self._teacher_dir(), resumed=saved is not None)
        if saved is not None:
            self._restore(saved)
        for phase in self.phases:
            if phase.name in self.done:
                continue
            with self.clock(phase.clock) if phase.clock else contextlib.nullcontext():
                phase.run(self.ctx)
            self.done.append(phase.name)
            self.save()
        self.ctx.seconds = self.clock.report()
        return self.ctx

    def _teacher_dir(self) -> Path | None:
        return self.state_path.parent if self.state_path is not None else None

    def _load(self) -> dict[str, Any] | None:
        """The saved state, checked: same settings, weights and data (``None``: none)."""
        path = self.state_path
        if path is None or not path.exists():
            return None
        st = load_checkpoint(path)
        extra = st.get("extra") or {}
        if extra.get("fingerprint") != self.fingerprint and not (self.accepts and self.accepts(st)):
            raise CheckpointError(
                f"{path} belongs to a run with a different config (other settings); pass "
                "--fresh (resume=False) or delete it to start over, or use another run directory")
        if self.inputs is not None:
            check_resume(path, extra, self.inputs)
        if "done" in extra:
            return st
        if self.upgrade is None:
            raise CheckpointError(f"{path} was written by an older mobileprune (no list of finished "
                                  "phases); pass --fresh (resume=False) or delete it to start over")
        return self._upgraded(st)

    def _upgraded(self, st: Mapping[str, Any]) -> dict[str, Any]:
        """A state written before this runner in today's layout: the phases before the one
        ``upgrade`` names are finished; the phases' states and the masks are those it read."""
        nxt, states, masks = self.upgrade(st)
        names = [p.name for p in self.phases]
        done = names if nxt is None else names[:names.index(nxt)]
        return {**st, "masks": masks, "extra": {**st["extra"], "done": done, "phases": states}}

    def _restore(self, st: Mapping[str, Any]) -> None:
        """Put the saved state back: model (layers resized if compacted), masks, history,
        shared values and parts, every phase's state, the clock and the RNG states."""
        ctx, extra = self.ctx, st["extra"]
        restore_model(st, ctx.model, str(self.state_path))
        ctx.masks = {k: v.bool() for k, v in st["masks"].items()}
        ctx.history = list(extra["history"])
        ctx.values.update({k: extra[k] for k in ctx.values if k in extra})
        for key, part in ctx.parts.items():
            if extra.get(key) is not None:
                part.load_state_dict(extra[key])
        states = extra.get("phases") or {}
        for phase in self.phases:
            if phase.name in states:
                phase.load_state_dict(states[phase.name])
        self.done = list(extra["done"])
        self.clock = PhaseClock(extra.get("phase_seconds"))
        if extra.get("rng") is not None:  # (not in the proximal pipeline's states before the runner)
            torch.set_rng_state(extra["rng"])
        gen = getattr(ctx.loader, "generator", None)
        if gen is not None and extra.get("loader_rng") is not None:
            gen.set_state(extra["loader_rng"])
        ctx.log(f"resuming from {self.state_path}: {self._where()}")

    def _where(self) -> str:
        """The resume line's account: the next phase and its epochs done, or "finished"."""
        nxt = next((p for p in self.phases if p.name not in self.done), None)
        epochs = nxt.state_dict().get("epochs") if nxt is not None else None
        where = "finished" if nxt is None else nxt.name + (f" after epoch {epochs}" if epochs else "")
        return where + (f"; {self.status()}" if self.status is not None else "")

    def save(self) -> None:
        """Write the run state (atomically; nothing without a state path)."""
        if self.state_path is None:
            return
        ctx = self.ctx
        gen = getattr(ctx.loader, "generator", None)
        extra = {**(self.inputs or {}), **ctx.values,
                 **{key: part.state_dict() for key, part in ctx.parts.items()},
                 "fingerprint": self.fingerprint, "done": list(self.done),
                 "phases": {p.name: p.state_dict() for p in self.phases},
                 "history": ctx.history, "phase_seconds": self.clock.state(),
                 "rng": torch.get_rng_state(),
                 "loader_rng": gen.get_state() if gen is not None else None}
        save_checkpoint(self.state_path, ctx.model, kind="run-state", model_name=ctx.model_name,
                        model_kwargs=ctx.model_kwargs, masks=ctx.masks, config=self.config,
                        extra=extra)

