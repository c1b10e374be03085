"""The one masked-retraining loop (issue 20, item 1).

:func:`masked_retrain` is every epoch loop under masks in both pipelines: the masked
retraining of seed 003 (Algorithm 1, step 4: after masked mapping ``W_i <- Pi_{S_i}(W_i)``,
the Eq. 6 projection, train with the masks ``M_i`` fixed) and its ADMM W-steps (Eq. 5;
with nested stages under the previous stage's masks), and MobilePrune's (seed 000)
retraining in every proximal round (:func:`~mobileprune.pipeline.palm.run_rounds`), after
the unit caps and after the last round (:func:`~mobileprune.pipeline.proximal_run.proximal_prune`);
also dense training (:func:`~mobileprune.pipeline.fit.fit`, no masks).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Mapping

from torch import Tensor, nn
from torch.utils.data import DataLoader

from mobileprune.pipeline.train import train_epoch
from mobileprune.sparsity.masks import MaskEnforcer

#: ``checkpoint(state, record)``: ``state`` is what ``resume=`` takes back
Checkpoint = Callable[[dict[str, Any], dict[str, Any]], None]


def masked_retrain(model: nn.Module, loader: DataLoader, optimizer, epochs: int, *,
                   masks: Mapping[str, Tensor] | MaskEnforcer | None = None, scheduler=None,
                   resume: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                   evaluate: Callable[[], Mapping[str, Any]] | None = None,
                   checkpoint: Checkpoint | None = None, progress: bool | None = None,
                   desc: str = "retrain") -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` epochs of :func:`~mobileprune.pipeline.train.train_epoch`
    with pruned weights held at exactly 0.0, resumable after every epoch.

    Args:
        masks: ``{parameter name: bool tensor}`` (``True``: may be nonzero): a
            :class:`~mobileprune.sparsity.masks.MaskEnforcer` masks the gradients and, after
            every ``optimizer.step()``, re-applies the masks to the weights and the
            optimizer's state, so no pruned weight comes back; it is removed at the end.
            Or an enforcer already attached to ``optimizer`` (e.g. a
            :class:`~mobileprune.sparsity.masks.RegrowingMaskEnforcer`, whose masks move),
            also removed at the end; or ``None``: no mask (the first ADMM stage's W-steps).
        scheduler: stepped after every optimizer step (e.g. cosine decay).
        resume: a ``state`` given to ``checkpoint`` before (``{"epochs": epochs done,
            "optimizer": ..., "scheduler": ...}``): the optimizer and scheduler states are
            loaded and training continues after epoch ``state["epochs"]``; ``None``: from 0.
        train: keyword arguments of ``train_epoch``: ``loss_fn``, ``teacher``, ``distill``
            and ``temperature`` (distillation), ``shift``, ``penalty``, ``after_step``.
        evaluate: called after every epoch; what it returns goes into the epoch's record
            (e.g. ``{"test_accuracy": ...}``).
        checkpoint: called after every epoch with ``(state, record)`` to save and log.
        progress, desc: the progress bar / lines (``desc`` plus ``" i/epochs"``).

    Returns one record per epoch run here: ``train_epoch``'s stats, ``epoch`` (1-based),
    ``seconds`` (the wall time of its training; a phase's whole time is in the run report,
    :class:`~mobileprune.pipeline.runstate.PhaseClock`) and ``evaluate()``'s entries. Raises
    ``FloatingPointError`` when the loss or a weight becomes NaN / inf.
    """
    from mobileprune.sparsity.proximal import check_finite

    resume = resume or {}
    if resume.get("optimizer") is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume.get("scheduler") is not None:
            scheduler.load_state_dict(resume["scheduler"])
    done, records = int(resume.get("epochs", 0)), []
    if masks is None:
        enforcer = contextlib.nullcontext()
    else:
        enforcer = masks if isinstance(masks, MaskEnforcer) else MaskEnforcer(model, masks, optimizer)
    with enforcer:
        while done < epochs:
            t0 = time.perf_counter()
            stats = train_epoch(model, loader, optimizer, scheduler=scheduler, progress=progress,
                                desc=f"{desc} {done + 1}/{epochs}", **(train or {}))
            seconds = time.perf_counter() - t0
            check_finite(model, f"after {desc} epoch {done + 1}")
            done += 1
            stats.update(evaluate() if evaluate is not None else {})
            stats.update(epoch=done, seconds=seconds)
            records.append(stats)
            if checkpoint is not None:
                checkpoint({"epochs": done, "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None},
                           stats)
    return records
