"""What both pruning pipelines share: the fingerprint of a run's inputs and the resume
check, the result type, the distillation teacher kept in the run directory, the
example input and metric formatting."""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor, nn
from torch.utils.data import DataLoader

from mobileprune.checkpoint import (load_checkpoint, restore_model,
                                   save_checkpoint, state_digest)
from mobileprune.errors import CheckpointError


def run_inputs(model: nn.Module, loader: DataLoader) -> dict[str, Any]:
    """What a run starts from besides its config (issue 20, item 3): the digest of the
    model's weights, the training data (type and size) and the package version."""
    from mobileprune import __version__

    data = getattr(loader, "dataset", None)
    size = len(data) if hasattr(data, "__len__") else None
    return {"input_digest": state_digest(model),
            "data": f"{type(data).__name__}[{size}]" if data is not None else None,
            "version": __version__}


def check_resume(state_path: Path, stored: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse to resume the run in ``state_path`` when it started from other weights or
    data than ``now`` (:func:`run_inputs`); a state of another package version resumes
    with a warning. Keys missing from an older state are not compared."""
    what = {"input_digest": "model weights", "data": "training data"}
    for key, name in what.items():
        if stored.get(key) is not None and stored[key] != now[key]:
            raise CheckpointError(
                f"{state_path} belongs to a run started from other {name} ({stored[key]} vs "
                f"{now[key]}); pass --fresh (resume=False) to start over or --run-dir DIR "
                "to keep both runs")
    if stored.get("version") not in (None, now["version"]):
        warnings.warn(f"{state_path} was written by mobileprune {stored['version']}; resuming it "
                      f"with {now['version']}", stacklevel=3)


@dataclass
class PipelineResult:
    model: nn.Module
    masks: dict[str, Tensor]
    report: dict[str, Any]
    history: list[dict[str, Any]]
    compacted: bool = False  # dead units were removed in place (the layers are smaller)


STATE_FILE = "state.pt"


TEACHER_FILE = "teacher.pt"


def _teacher(model: nn.Module, run_dir: Path | None, resumed: bool) -> nn.Module:
    """A frozen copy of the model as given (the dense model) for distillation; kept in
    ``run_dir`` so that a resumed run distills from the same teacher."""
    import copy

    teacher = copy.deepcopy(model).eval()
    path = run_dir / TEACHER_FILE if run_dir is not None else None
    if path is not None and path.exists() and resumed:
        restore_model(load_checkpoint(path), teacher, str(path))
    elif path is not None:
        save_checkpoint(path, teacher, kind="dense")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _example_input(loader: DataLoader):
    """One training sample with a batch dimension, read without touching any RNG."""
    try:
        x = loader.dataset[0][0]
    except Exception:  # iterable datasets etc.: no MAC columns
        return None
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, Tensor) for t in x):
        return tuple(t.unsqueeze(0) for t in x)  # a model with several inputs
    return x.unsqueeze(0) if isinstance(x, Tensor) else None


def _fmt_metric(name: str, value: float) -> str:
    return f"{100 * value:.2f}%" if name == "accuracy" else f"{value:.4g}"


class PhaseClock:
    """Wall time per phase of a run, summed over resumes: :meth:`state` (saved with the
    run state) counts the running phase up to now, and a resumed run starts from it, so
    only the time between the last save and an interruption is lost (that work is
    redone). ``with clock("stage1 retrain"): ...`` times one phase."""

    def __init__(self, saved: Mapping[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {k: float(v) for k, v in (saved or {}).items()}
        self._running: tuple[str, float] | None = None

    @contextlib.contextmanager
    def __call__(self, phase: str):
        self._running = (phase, time.perf_counter())
        try:
            yield
        finally:
            self.seconds = self.state()
            self._running = None

    def state(self) -> dict[str, float]:
        """``{phase: seconds}``, the running phase included."""
        out = dict(self.seconds)
        if self._running is not None:
            name, t0 = self._running
            out[name] = out.get(name, 0.0) + time.perf_counter() - t0
        return out

    def report(self) -> dict[str, float]:
        """:meth:`state` plus ``"total"``, rounded to milliseconds (the run report's
        ``seconds``)."""
        out = {k: round(v, 3) for k, v in self.state().items()}
        return {**out, "total": round(sum(out.values()), 3)}
