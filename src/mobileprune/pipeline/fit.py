"""Dense training with cosine decay, resumable after every epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from mobileprune.checkpoint import (load_checkpoint, restore_model,
                                   save_checkpoint)
from mobileprune.errors import CheckpointError
from mobileprune.pipeline.retrain import masked_retrain
from mobileprune.pipeline.train import cosine_lr, evaluate, make_optimizer
from mobileprune.pipeline.admm_run import _TrainSettings, _fmt_epoch, _non_default, _settings


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
    in the pipelines' one training loop (:func:`~mobileprune.pipeline.retrain.masked_retrain`,
    here without masks). Returns ``{"test_accuracy", "train_seconds", "history"}``.
    """
    settings = _settings(_TrainSettings, {"epochs": epochs, "optimizer": optimizer, "lr": lr,
                                          "weight_decay": weight_decay, "momentum": momentum,
                                          "shift": shift},
                         "fit")
    opt = make_optimizer(settings.optimizer, model.parameters(), settings.lr,
                         momentum=settings.momentum, weight_decay=settings.weight_decay)
    sched = cosine_lr(opt, settings.epochs * len(train_loader))
    fingerprint = json.dumps(_non_default(settings), sort_keys=True)
    history: list[dict[str, Any]] = []
    seconds = 0.0
    path = Path(state_path) if state_path is not None else None
    gen = getattr(train_loader, "generator", None)
    if path is not None and path.exists():
        st = load_checkpoint(path)
        extra = st.get("extra") or {}
        if extra.get("fingerprint") != fingerprint:
            raise CheckpointError(f"{path} belongs to a training run with other settings "
                                  f"({extra.get('fingerprint')}); delete it or use another path")
        restore_model(st, model, str(path))
        opt.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        history, seconds = list(extra["history"]), float(extra["seconds"])
        torch.set_rng_state(extra["rng"])
        if gen is not None and extra.get("loader_rng") is not None:
            gen.set_state(extra["loader_rng"])
        log(f"resuming training from {path} after epoch {len(history)}")

    def checkpoint(state: dict[str, Any], rec: dict[str, Any]) -> None:
        nonlocal seconds
        seconds += rec["seconds"]
        history.append(rec)
        log(_fmt_epoch({**rec, "stage": "dense", "phase": "train"}))
        if path is not None:
            save_checkpoint(path, model, kind="run-state", model_name=model_name,
                            model_kwargs=model_kwargs,
                            extra={"fingerprint": fingerprint, "optimizer": state["optimizer"],
                                   "scheduler": state["scheduler"], "history": history,
                                   "seconds": seconds, "rng": torch.get_rng_state(),
                                   "loader_rng": gen.get_state() if gen is not None else None})

    masked_retrain(model, train_loader, opt, settings.epochs, scheduler=sched,
                   resume={"epochs": len(history)}, train={"shift": settings.shift},
                   evaluate=lambda: {"test_accuracy": evaluate(model, eval_loader)
                                     if eval_loader is not None else None},
                   checkpoint=checkpoint, progress=progress, desc="train")
    acc = history[-1]["test_accuracy"] if history else (
        evaluate(model, eval_loader) if eval_loader is not None else None)
    return {"test_accuracy": acc, "train_seconds": seconds, "history": history}
