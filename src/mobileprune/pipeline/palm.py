"""MobilePrune training (seed ``000_659fe8f6b4e48b5b``, ``docs/methods.md`` section 2.3): PALM,
the practical proximal variant and the round schedule, over a
:class:`~mobileprune.sparsity.proximal.ProximalPruner`.

* :func:`palm_step` / :func:`palm_epoch` -- PALM: the blocks (one per module owning
  parameters: a layer's weight *and* bias) are visited in order on the same minibatch
  (Gauss-Seidel); for each block the gradient ``g`` of the loss at the current point, a
  Lipschitz estimate ``L`` by backtracking and the step ``s = 1 / (gamma L)`` give
  ``x+ = prox_{s r}(x - s g)``.  No momentum.  Full-batch PALM decreases ``F``
  monotonically; with minibatches it is a heuristic.
* :func:`proximal_epoch` -- the *practical proximal variant*: an ordinary optimizer step
  (SGD, Adam...) on the loss, then :meth:`ProximalPruner.prox_step
  <mobileprune.sparsity.proximal.ProximalPruner.prox_step>` with the optimizer's
  learning rate as the step.
* :func:`run_rounds` chains them into the round schedule of the public MobilePrune code:
  prox epochs, masked retraining with Adam (:func:`~mobileprune.pipeline.retrain.masked_retrain`),
  and ``lam`` / ``eta`` raised every few rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mobileprune.errors import ConfigError
from mobileprune.pipeline.retrain import masked_retrain
from mobileprune.pipeline.train import _progress, evaluate, forward, make_optimizer, train_epoch
from mobileprune.sparsity.proximal import ProximalPruner, _nonneg_int, _positive, check_finite

__all__ = ["palm_step", "palm_epoch", "proximal_epoch", "run_rounds"]


# -------------------------------------------------------------------------- PALM
def _blocks(model: nn.Module, pruner: ProximalPruner):
    """PALM blocks: one per module owning trainable parameters, in module order.

    Each block is ``(module name, [(param name, param, Regularizer or None), ...])``.
    """
    reg_by_id = {id(pruner._params[k]): r for k, r in pruner.regularizers.items()}
    seen: set[int] = set()
    blocks = []
    for mname, module in model.named_modules():
        items = []
        for lname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            items.append((f"{mname}.{lname}" if mname else lname, p, reg_by_id.get(id(p))))
        if items:
            blocks.append((mname, items))
    missing = set(reg_by_id) - seen
    if missing:
        raise ConfigError("the pruner's weights are not trainable parameters of this model "
                          "(was the pruner built for another model, or are weights frozen?)")
    return blocks


def palm_step(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Sequence[Any],
              pruner: ProximalPruner, gamma: float = 1.1, L0: float = 1.0, eta_L: float = 1.1,
              max_backtracks: int = 50, *, L_min: float = 1e-12) -> dict[str, Any]:
    """One PALM pass over all blocks on one minibatch (methods.md section 2.3, seed 000).

    ``batch = (x, y)`` and the loss is ``f = loss_fn(model(x), y)``.  Blocks are the
    modules owning trainable parameters (a layer's weight and bias together), visited
    in ``model.named_modules()`` order, each at the current point (Gauss-Seidel).  For a
    block ``x`` with gradient ``g = grad_x f``:

    * ``L`` starts at ``L0`` (first visit) or at the block's last accepted ``L``
      divided by ``eta_L`` (at least ``L_min``), and is multiplied by ``eta_L`` until
      ``f(x+) <= f(x) + <g, x+ - x> + L/2 ||x+ - x||^2`` (plus a rounding allowance of
      ``8 eps max(1, |f(x)|)``; a NaN/inf ``f(x+)`` counts as a failure);
    * ``s = 1 / (gamma L)`` and ``x+ = prox_{s r}(x - s g)``: the regularised weight
      uses its :class:`Regularizer`'s prox, every other parameter (biases, unselected
      layers, BatchNorm...) the plain gradient step ``x - s g``.  No momentum.

    With ``gamma > 1`` each accepted block update decreases ``F = f + sum r`` by at
    least ``(gamma - 1) L / 2 ||x+ - x||^2`` (prox optimality + the backtracking
    inequality), so full-batch PALM is monotone.  If ``max_backtracks`` increases of
    ``L`` do not satisfy the inequality, the block is left unchanged (listed in
    ``failed``) and its raised ``L`` is kept for the next call.

    Every evaluation of ``f`` in one call uses the same RNG seed (identical dropout
    masks), and buffers (BatchNorm running statistics) are updated by the first forward
    only, so ``f`` is one deterministic function during the backtracking.

    Returns ``{"loss": f before, "loss_after": f after, "L": {block: L}, "step":
    {block: s}, "backtracks": total increases of L, "failed": [blocks]}``; the accepted
    ``L`` are also stored in ``pruner.lipschitz``.  Raises ``FloatingPointError`` when a
    parameter or the loss at the starting point is NaN/inf.
    """
    gamma = _positive(gamma, "gamma", above=1.0)
    L0 = _positive(L0, "L0")
    eta_L = _positive(eta_L, "eta_L", above=1.0)
    L_min = _positive(L_min, "L_min")
    max_backtracks = _nonneg_int(max_backtracks, "max_backtracks")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError("batch must be a pair (inputs, targets)")
    check_finite(model, "at the start of a PALM step")
    blocks = _blocks(model, pruner)
    f = _FixedLoss(model, loss_fn, *batch)
    loss = f(True)
    f_start = float(loss.detach())
    if not math.isfinite(f_start):
        raise FloatingPointError(f"loss is {f_start} at the start of a PALM step; training diverged")
    eps = torch.finfo(loss.dtype).eps if loss.is_floating_point() else 1e-7
    stats: dict[str, Any] = {"loss": f_start, "L": {}, "step": {}, "backtracks": 0, "failed": []}
    for i, (bname, items) in enumerate(blocks):
        last = pruner.lipschitz.get(bname)
        L = L0 if last is None else max(last / eta_L, L_min)
        L, loss, backtracks, accepted = _palm_block(items, loss, f, L, gamma=gamma, eta_L=eta_L,
                                                    max_backtracks=max_backtracks, eps=eps,
                                                    need_grad=i < len(blocks) - 1)
        stats["backtracks"] += backtracks
        if not accepted:
            stats["failed"].append(bname)
        pruner.lipschitz[bname] = L
        stats["L"][bname] = L
        stats["step"][bname] = 1.0 / (gamma * L)
    f.restore_buffers()
    pruner.steps += 1
    stats["loss_after"] = float(loss.detach())
    return stats


class _FixedLoss:
    """``f(need_grad)``: the loss ``loss_fn(model(x), y)`` on one minibatch as one
    deterministic function for :func:`palm_step`'s backtracking: every evaluation under
    the same RNG seed (identical dropout masks, drawn once here), and the buffers
    (BatchNorm running statistics) updated by the first forward only."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Any, y: Any) -> None:
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.seed = int(torch.randint(0, 2**62, (1,)).item())
        self.cuda_dev = [x.device] if isinstance(x, Tensor) and x.device.type == "cuda" else []
        self.buffers = list(model.buffers())
        self.snapshot: list[Tensor] | None = None

    def restore_buffers(self) -> None:
        """Undo the buffer update of the forwards after the first. Called before a forward
        (never between a forward and the backward of its graph, which may have saved the
        buffers)."""
        if self.snapshot is not None:
            with torch.no_grad():
                for b, s in zip(self.buffers, self.snapshot):
                    b.copy_(s)

    def __call__(self, need_grad: bool) -> Tensor:
        self.restore_buffers()
        with torch.random.fork_rng(devices=self.cuda_dev), torch.set_grad_enabled(need_grad):
            torch.default_generator.manual_seed(self.seed)  # (torch.manual_seed is slow: lazy CUDA seeding)
            if self.cuda_dev:
                torch.cuda.manual_seed(self.seed)
            loss = self.loss_fn(forward(self.model, self.x), self.y)
        if self.buffers and self.snapshot is None:  # first forward: keep its buffer update
            self.snapshot = [b.detach().clone() for b in self.buffers]
        return loss


def _palm_block(items, loss: Tensor, f: _FixedLoss, L: float, *, gamma: float, eta_L: float,
                max_backtracks: int, eps: float, need_grad: bool) -> tuple[float, Tensor, int, bool]:
    """One block of :func:`palm_step` at the current point, where ``f`` is ``loss``: the
    step ``x+ = prox_{s r}(x - s g)``, ``s = 1 / (gamma L)``, with ``L`` multiplied by
    ``eta_L`` until the descent inequality holds (at most ``max_backtracks`` times; else
    the block is put back). Returns ``(L, f at the new point, backtracks, accepted)``."""
    params = [p for _, p, _ in items]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    f_x = float(loss.detach())
    x0 = [p.detach().clone() for p in params]
    tol = 8.0 * eps * max(1.0, abs(f_x))
    backtracks = 0
    for k in range(max_backtracks + 1):
        s = 1.0 / (gamma * L)
        lin = 0.0
        quad = 0.0
        with torch.no_grad():
            for (_, p, reg), x, g in zip(items, x0, grads):
                v = x - s * g
                new = reg.prox(v, s) if reg is not None else v
                p.copy_(new)
                d = new - x
                lin += float((g * d).sum())
                quad += float((d * d).sum())
        new_loss = f(need_grad)
        fn = float(new_loss.detach())
        if math.isfinite(fn) and fn <= f_x + lin + 0.5 * L * quad + tol:
            return L, new_loss, backtracks, True
        if k < max_backtracks:
            L *= eta_L
            backtracks += 1
    with torch.no_grad():
        for p, x in zip(params, x0):
            p.copy_(x)
    return L, (f(need_grad) if need_grad else loss.detach()), backtracks, False


def palm_epoch(model: nn.Module, loader: Iterable, pruner: ProximalPruner, *,
               loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
               gamma: float = 1.1, L0: float = 1.0, eta_L: float = 1.1, max_backtracks: int = 50,
               progress: bool | None = None, desc: str = "palm") -> dict[str, Any]:
    """One epoch of minibatch PALM (:func:`palm_step` on every batch; methods.md 2.3).

    Puts the model in train mode.  Returns the mean loss before the steps (weighted by
    batch size), the penalty ``sum r`` and the objective at the end, the total number
    of backtracks, failed block updates, and the last ``L`` per block.
    """
    model.train()
    total, n, backtracks, failed, steps = 0.0, 0, 0, 0, 0
    last: dict[str, Any] = {}
    for batch in _progress(loader, progress, desc, total=len(loader) if hasattr(loader, "__len__") else None):
        last = palm_step(model, loss_fn, batch, pruner, gamma, L0, eta_L, max_backtracks)
        b = int(batch[1].shape[0]) if isinstance(batch[1], Tensor) and batch[1].dim() else 1
        total += last["loss"] * b
        n += b
        backtracks += last["backtracks"]
        failed += len(last["failed"])
        steps += 1
    if steps == 0:
        raise ValueError("training data is empty")
    penalty = float(pruner.penalty_value())
    loss = total / max(n, 1)
    return {"loss": loss, "penalty": penalty, "objective": loss + penalty, "backtracks": backtracks,
            "failed_blocks": failed, "steps": steps, "L": dict(last.get("L", {}))}


def proximal_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                   pruner: ProximalPruner, *,
                   loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                   step: float | None = None, scheduler=None, progress: bool | None = None,
                   desc: str = "prox", teacher: nn.Module | None = None, distill: float = 0.0,
                   temperature: float = 4.0, shift: int = 0) -> dict[str, Any]:
    """One epoch of the practical proximal variant (methods.md 2.3): after every
    ``optimizer.step()``, :meth:`ProximalPruner.prox_step` with ``step`` (default: the
    optimizer's current learning rate).  ``teacher`` / ``distill`` / ``temperature``: the
    smooth loss distills from ``teacher`` (:func:`mobileprune.pipeline.train.train_epoch`);
    ``shift``: random translations of the inputs (:func:`mobileprune.pipeline.train.random_shift`).
    Returns :func:`mobileprune.pipeline.train.train_epoch`'s stats plus ``penalty`` and
    ``objective``; raises ``FloatingPointError`` on NaN/inf."""
    stats = train_epoch(model, loader, optimizer, loss_fn=loss_fn,
                        after_step=lambda: pruner.prox_step(step, optimizer=optimizer),
                        scheduler=scheduler, progress=progress, desc=desc, teacher=teacher,
                        distill=distill, temperature=temperature, shift=shift)
    penalty = float(pruner.penalty_value())
    return {**stats, "penalty": penalty, "objective": stats["loss"] + penalty}


# ------------------------------------------------------------------------ rounds
def _distillation(teacher: nn.Module | None, distill: float, temperature: float) -> dict[str, Any]:
    """The distillation keywords of ``train_epoch`` (none with ``distill == 0``), checked."""
    _positive(distill, "distill", strict=False)
    if distill > 1:
        raise ConfigError(f"distill must be in [0, 1], got {distill}")
    if distill > 0 and teacher is None:
        raise ConfigError("distill > 0 needs a teacher model")
    return {"teacher": teacher, "distill": distill, "temperature": temperature} if distill > 0 else {}


def _prox_phase(model: nn.Module, loader: Iterable, pruner: ProximalPruner, opt, epochs: int,
                desc: str, palm_options: Mapping[str, Any], **train) -> dict[str, Any]:
    """The prox phase of one round: ``epochs`` of :func:`palm_epoch` (``opt is None``, with
    ``palm_options``) or of :func:`proximal_epoch` with ``opt`` (``train``: ``loss_fn``,
    ``progress``, ``shift``, distillation); the last epoch's stats (``{}`` for none)."""
    stats: dict[str, Any] = {}
    for e in range(epochs):
        where = f"{desc} {e + 1}/{epochs}"
        if opt is None:
            stats = palm_epoch(model, loader, pruner, loss_fn=train["loss_fn"],
                               progress=train["progress"], desc=where, **palm_options)
        else:
            stats = proximal_epoch(model, loader, opt, pruner, desc=where, **train)
        check_finite(model, f"after {where}")
    return stats


def run_rounds(model: nn.Module, train_loader: Iterable, pruner: ProximalPruner, rounds: int,
               prox_epochs: int, retrain_epochs: int, lam_factor: float = 1.0, eta_factor: float = 1.0,
               increase_every: int | None = 1, retrain_lr: float = 1e-3, retrain_weight_decay: float = 1e-5,
               mode: str = "palm", eval_loader: Iterable | None = None,
               log: Callable[[str], object] | None = print, *,
               loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
               prox_optimizer: str = "adam", prox_lr: float = 1e-3,
               palm_options: Mapping[str, Any] | None = None,
               progress: bool | None = False, teacher: nn.Module | None = None,
               distill: float = 0.0, temperature: float = 4.0,
               after_prox: Callable[[], Any] | None = None, shift: int = 0,
               first_round: int = 1) -> list[dict[str, Any]]:
    """The round schedule of the public MobilePrune code (methods.md end of 2.3, seed 000).

    Every round: ``prox_epochs`` epochs of :func:`palm_epoch` (``mode="palm"``, options
    ``palm_options`` such as ``gamma``) or :func:`proximal_epoch` (``mode="proximal"``,
    a fresh ``prox_optimizer`` with ``prox_lr`` each round); then ``retrain_epochs``
    epochs of masked retraining with a fresh Adam (``retrain_lr``,
    ``retrain_weight_decay``) under the masks :meth:`ProximalPruner.masks` in the one
    masked-retraining loop, :func:`mobileprune.pipeline.retrain.masked_retrain` (pruned
    weights stay exactly zero); then, after rounds ``increase_every``,
    ``2 increase_every``, ... (``None``: never), :meth:`ProximalPruner.increase` with
    ``lam_factor`` / ``eta_factor``.  (The public code used 10 prox + 30 retrain epochs
    and raised ``lam``/``eta`` additively every ``stride`` rounds.)

    With ``teacher`` and ``distill > 0`` the smooth loss of both phases distills from
    ``teacher`` (the PALM phase keeps ``loss_fn``). ``shift > 0`` augments the batches of
    the proximal and retraining phases with random translations of up to ``shift``
    pixels (:func:`mobileprune.pipeline.train.random_shift`; not with ``mode="palm"``, whose
    backtracking compares losses on one fixed minibatch).

    ``first_round`` numbers the rounds in records, progress and log lines (a caller that
    runs the schedule one round at a time passes its own count).
    ``after_prox`` (optional) is called after the prox phase of every round, before the
    retraining masks are taken (e.g. :func:`mobileprune.surgery.compact.fold_dead_weights`); its
    return value is stored in the round's record under ``"after_prox"``.

    Returns one dict per round: hyper-parameters used, prox / retrain stats, nonzero
    counts after each phase, the penalty, and the accuracy on ``eval_loader`` after each
    phase (when given).  ``log`` receives one line per round (``None``: silent).
    Raises ``FloatingPointError`` when the loss or the weights become NaN/inf.
    """
    rounds, prox_epochs, retrain_epochs = (_nonneg_int(v, k, low) for v, k, low in (
        (rounds, "rounds", 1), (prox_epochs, "prox_epochs", 0), (retrain_epochs, "retrain_epochs", 0)))
    if increase_every is not None:
        increase_every = _nonneg_int(increase_every, "increase_every", 1)
    for value, name in ((lam_factor, "lam_factor"), (eta_factor, "eta_factor"), (retrain_lr, "retrain_lr")):
        _positive(value, name)
    _positive(retrain_weight_decay, "retrain_weight_decay", strict=False)
    if mode not in ("palm", "proximal"):
        raise ConfigError(f"mode must be 'palm' or 'proximal', got {mode!r}")
    shift = _nonneg_int(shift, "shift")
    first_round = _nonneg_int(first_round, "first_round", 1)
    if shift and mode == "palm" and prox_epochs:
        raise ConfigError("shift (random translations) needs mode 'proximal': PALM's backtracking "
                          "compares losses on one fixed minibatch")
    opts = dict(palm_options or {})
    bad = set(opts) - {"gamma", "L0", "eta_L", "max_backtracks"}
    if bad:
        raise ConfigError(f"unknown palm_options {sorted(bad)}; allowed: gamma, L0, eta_L, max_backtracks")
    plan = _RoundPlan(mode, prox_epochs, retrain_epochs, prox_optimizer, prox_lr, retrain_lr,
                      retrain_weight_decay, opts, after_prox, eval_loader, progress,
                      {"loss_fn": loss_fn, "shift": shift, **_distillation(teacher, distill, temperature)})
    history: list[dict[str, Any]] = []
    for r in range(rounds):
        label = f"round {r + first_round}"
        rec: dict[str, Any] = {"round": r + first_round, "regularizers": pruner.hyperparameters()}
        rec.update(plan.run(model, train_loader, pruner, label))
        rec["increased"] = bool(increase_every) and (r + 1) % increase_every == 0
        if rec["increased"]:
            pruner.increase(lam_factor, eta_factor)
        history.append(rec)
        if log is not None:
            acc = f", accuracy {rec['accuracy']:.4f}" if "accuracy" in rec else ""
            loss = rec["prox"].get("loss", rec["retrain"].get("loss", float("nan")))
            log(f"{label}/{rounds + first_round - 1}: loss {loss:.4f}, penalty {rec['penalty']:.4g}, "
                f"nonzero {rec['nonzero_total']}{acc}" + (" (lam/eta raised)" if rec["increased"] else ""))
    return history


@dataclass(frozen=True)
class _RoundPlan:
    """One round of :func:`run_rounds` with its checked settings: the prox phase, then
    ``after_prox``, masked retraining under the pruner's masks, and the measurements
    (``train``: ``train_epoch``'s ``loss_fn``, ``shift`` and distillation keywords)."""

    mode: str
    prox_epochs: int
    retrain_epochs: int
    prox_optimizer: str
    prox_lr: float
    retrain_lr: float
    retrain_weight_decay: float
    palm_options: Mapping[str, Any]
    after_prox: Callable[[], Any] | None
    eval_loader: Iterable | None
    progress: bool | None
    train: Mapping[str, Any]

    def run(self, model: nn.Module, loader: Iterable, pruner: ProximalPruner, label: str) -> dict[str, Any]:
        """The round's record without its number, hyper-parameters and increase."""
        rec: dict[str, Any] = {}
        opt = None if self.mode == "palm" or not self.prox_epochs else \
            make_optimizer(self.prox_optimizer, model.parameters(), self.prox_lr)
        rec["prox"] = _prox_phase(model, loader, pruner, opt, self.prox_epochs, f"{label} {self.mode}",
                                  self.palm_options, progress=self.progress, **self.train)
        if self.after_prox is not None:
            rec["after_prox"] = self.after_prox()
        rec["nonzero_after_prox"] = sum(pruner.nonzero().values())
        if self.eval_loader is not None:
            rec["accuracy_after_prox"] = evaluate(model, self.eval_loader)
        rec["retrain"] = {}
        if self.retrain_epochs:
            opt = torch.optim.Adam(model.parameters(), lr=self.retrain_lr,
                                   weight_decay=self.retrain_weight_decay)
            rec["retrain"] = masked_retrain(model, loader, opt, self.retrain_epochs, masks=pruner.masks(),
                                            train=self.train, progress=self.progress,
                                            desc=f"{label} retrain")[-1]
        rec["nonzero"] = pruner.nonzero()
        rec["nonzero_total"] = sum(rec["nonzero"].values())
        rec["penalty"] = float(pruner.penalty_value())
        if self.eval_loader is not None:
            rec["accuracy"] = evaluate(model, self.eval_loader)
        return rec
