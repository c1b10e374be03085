"""Dense training with cosine decay, resumable after every epoch: the preset of one
:class:`~mobileprune.pipeline.phases.train.DenseTrain` phase."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn
from torch.utils.data import DataLoader

from mobileprune.pipeline.admm_run import _TrainSettings, _non_default, _settings
from mobileprune.pipeline.phases.train import DenseTrain
from mobileprune.pipeline.runner import Context, Runner
from mobileprune.pipeline.train import evaluate


def fit(model: nn.Module, train_loader: DataLoader, *, epochs: int, optimizer: str = "adam",
        lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.9, shift: int = 0,
        eval_loader: DataLoader | None = None, state_path: str | Path | None = None,
        progress: bool | None = None, model_name: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a dense model with cosine learning-rate decay, resumable after every epoch
    (``shift``: random translations of the inputs by up to that many pixels).

    With ``state_path``, the model, optimizer, scheduler, RNG states and history are
    written there (atomically) after every epoch; calling ``fit`` again with the same
    arguments continues where it stopped (a finished run returns at once). The epochs run
    in the pipelines' one runner and training loop (:class:`~mobileprune.pipeline.runner.Runner`,
    :func:`~mobileprune.pipeline.retrain.masked_retrain`, here without masks). Returns
    ``{"test_accuracy", "train_seconds", "history"}``.
    """
    settings = _settings(_TrainSettings, {"epochs": epochs, "optimizer": optimizer, "lr": lr,
                                          "weight_decay": weight_decay, "momentum": momentum,
                                          "shift": shift},
                         "fit")
    ctx = Context(model, train_loader, eval_loader, log=log, progress=progress,
                  model_name=model_name, model_kwargs=model_kwargs)
    Runner([DenseTrain(settings)], ctx, state_path=state_path,
           fingerprint=json.dumps(_non_default(settings), sort_keys=True),
           upgrade=lambda st: _before_runner(st, settings.epochs)).run()
    history = ctx.history
    acc = history[-1]["test_accuracy"] if history else (
        evaluate(model, eval_loader) if eval_loader is not None else None)
    return {"test_accuracy": acc, "train_seconds": sum(h["seconds"] for h in history),
            "history": history}


def _before_runner(st: Mapping[str, Any], epochs: int) -> tuple[str | None, dict, dict]:
    """A state of ``fit`` written before the runner: the epochs done (its history), the
    optimizer and scheduler at the top level."""
    extra = st["extra"]
    done = len(extra["history"])
    state = {"epochs": done, "optimizer": extra["optimizer"], "scheduler": extra["scheduler"]}
    return (None if done >= epochs else "train"), {"train": state}, {}
