"""Masks that keep pruned weights exactly zero (seed 003, masked retraining).

After masked mapping (seed 003, section 2.3) the support of every pruned layer is
fixed. Retraining must not revive pruned weights; with plain masking of gradients,
momentum buffers, Adam moments and weight decay would still move them. mobileprune
therefore does both:

1. a gradient hook multiplies ``grad`` by the mask (no gradient reaches a pruned
   weight, so optimizer state built from gradients stays zero there), and
2. an optimizer step post-hook re-applies the mask to the weights and zeroes the
   optimizer state (momentum, ``exp_avg``, ``exp_avg_sq``...) at pruned positions
   after every ``optimizer.step()``.

Unlike :mod:`torch.nn.utils.prune`, the model keeps its plain parameters: the
``state_dict`` keys and shapes do not change, ``deepcopy``, pickling, DDP and
``torch.save`` work as for the dense model; masks are stored beside the weights.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

Masks = dict[str, Tensor]


def _params(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    missing = [n for n in masks if n not in params]
    if missing:
        raise KeyError(f"masks name parameters the model does not have: {missing}")
    for n, m in masks.items():
        if m.shape != params[n].shape:
            raise ValueError(
                f"mask for {n!r} has shape {tuple(m.shape)} but the parameter has {tuple(params[n].shape)}"
            )
    return {n: params[n] for n in masks}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero, in place, every weight outside its mask."""
    for n, p in _params(model, masks).items():
        p.mul_(masks[n].to(device=p.device, dtype=p.dtype))


@torch.no_grad()
def masks_from_weights(model: nn.Module, names: Iterable[str]) -> Masks:
    """Masks ``weight != 0`` for the named parameters."""
    params = dict(model.named_parameters())
    return {n: params[n].detach() != 0 for n in names}


def _warn_idle(masks: Mapping[str, Tensor]) -> None:
    """Warn when masks hold nothing at zero: none given, or every entry ``True``."""
    if not masks:
        warnings.warn("MaskEnforcer got no masks: no weight is held at zero (pass the masks of "
                      "ADMMPruner.finalize() or ProximalPruner.masks())", UserWarning, stacklevel=3)
    elif all(bool(m.all()) for m in masks.values()):
        warnings.warn(f"MaskEnforcer: the masks of all {len(masks)} weights keep every entry, so no "
                      "weight is held at zero (prune before masked retraining)", UserWarning, stacklevel=3)


class MaskEnforcer:
    """Keep the weights of ``model`` inside ``masks`` during training.

    Use it around any training loop (yours or mobileprune's)::

        enforcer = MaskEnforcer(model, masks, optimizer)
        ...  # train as usual: loss.backward(); optimizer.step()
        enforcer.remove()

    Works on any parameter: recurrent weights (an ``nn.LSTM`` reads the same
    ``Parameter`` objects through ``_flat_weights``, which are masked in place) and
    attention ``in_proj_weight`` included. Masks that hold nothing at zero (none, or all
    ``True``) raise a ``UserWarning``.

    Args:
        model: the model whose parameters are masked.
        masks: ``{parameter name: bool tensor}``; ``True`` marks weights that may be
            nonzero.
        optimizers: an optimizer or a list of them; a step post-hook is registered
            on each to re-apply the masks and clear their state at pruned positions.
            Optimizers created later can be added with :meth:`attach`.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor],
                 optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None) -> None:
        self.model = model
        self._params = _params(model, masks)
        _warn_idle(masks)
        self.masks: Masks = {
            n: masks[n].to(device=p.device).bool() for n, p in self._params.items()
        }
        self._handles: list = []
        for n, p in self._params.items():
            self._handles.append(p.register_hook(self._grad_hook(n)))
        apply_masks(model, self.masks)
        if optimizers is not None:
            if isinstance(optimizers, torch.optim.Optimizer):
                optimizers = [optimizers]
            for opt in optimizers:
                self.attach(opt)

    def _grad_hook(self, name: str):
        mask = self.masks[name]  # (updated in place by subclasses: the hook sees the change)
        return lambda g: g * mask.to(g.dtype)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-apply the masks after every ``optimizer.step()`` and clear its state now."""
        self._clear_state(optimizer)
        self._handles.append(optimizer.register_step_post_hook(self._after_step))

    @torch.no_grad()
    def _clear_state(self, optimizer: torch.optim.Optimizer) -> None:
        for n, p in self._params.items():
            state = optimizer.state.get(p)
            if not state:
                continue
            m = self.masks[n]
            for v in state.values():
                if isinstance(v, Tensor) and v.shape == p.shape:
                    v.mul_(m.to(v.dtype))

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, *args, **kwargs) -> None:
        apply_masks(self.model, self.masks)
        self._clear_state(optimizer)

    def remove(self) -> None:
        """Remove all hooks; the weights stay as they are (pruned entries are 0.0)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "MaskEnforcer":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def live_structure(mask: Tensor) -> Tensor:
    """Entries of ``mask``'s shape whose output unit (index 0: row, filter) and input unit
    (index 1: column, input channel) both have an active entry: where a weight may grow
    without bringing back a removed unit. 0-d and 1-d masks: all True if any is."""
    if mask.dim() < 2:
        return torch.full_like(mask, bool(mask.any()), dtype=torch.bool)
    rows = mask.flatten(1).any(1)
    cols = mask.transpose(0, 1).flatten(1).any(1)
    view = (-1,) + (1,) * (mask.dim() - 1)
    return rows.view(view) & cols.view((1, -1) + (1,) * (mask.dim() - 2)).expand_as(mask)


@torch.no_grad()
def regrow(mask: Tensor, weight: Tensor, score: Tensor, allowed: Tensor, k: int) -> Tensor:
    """One drop-and-grow update of a mask at a constant count (RigL, Evci et al. 2020,
    "Rigging the Lottery", eq. 1-2): the ``k`` active entries of smallest ``|weight|``
    leave the mask and the ``k`` entries of largest ``score`` (e.g. ``|gradient|``) among
    ``allowed & ~mask`` join it. ``k`` is clipped to what both sides offer, so the count
    never changes. Returns a new bool mask (ties broken either way)."""
    if not (mask.shape == weight.shape == score.shape == allowed.shape):
        raise ValueError("regrow: mask, weight, score and allowed must have one shape, got "
                         f"{[tuple(t.shape) for t in (mask, weight, score, allowed)]}")
    m = mask.bool().flatten()
    cand = (allowed.bool().flatten() & ~m)
    k = min(int(k), int(m.sum()), int(cand.sum()))
    if k <= 0:
        return mask.bool().clone()
    inf = torch.tensor(float("inf"), dtype=weight.dtype, device=weight.device)
    drop = torch.where(m, weight.detach().abs().flatten(), inf).topk(k, largest=False).indices
    grow = torch.where(cand, score.flatten().to(weight.dtype), -inf).topk(k).indices
    new = m.clone()
    new[drop] = False
    new[grow] = True
    return new.view_as(mask)


class RegrowingMaskEnforcer(MaskEnforcer):
    """A :class:`MaskEnforcer` whose masks move during training at a constant number of
    weights per layer: dynamic sparse training (RigL, Evci et al. 2020).

    Every ``every`` optimizer steps until step ``end_step``, each masked weight with ``n``
    active entries drops its ``k = floor(f n)`` active entries of smallest magnitude and
    activates the ``k`` inactive entries inside ``allowed`` whose gradient (of that
    step's minibatch, before masking) is largest in magnitude (:func:`regrow`), with
    ``f = alpha / 2 * (1 + cos(pi * step / end_step))``. Grown weights start at 0 with
    zero optimizer state. The count of every layer never changes, so an exact per-layer
    target still holds. Nothing grows outside ``allowed`` (default:
    :func:`live_structure` of each mask as given, so removed filters, neurons and inputs
    stay removed). Under ``torch.distributed`` (DDP) the gradients of an update step are
    summed over the processes first (every process must train the model), so every
    process makes the same choice, the one a single process on the whole batch makes.

    Use it like :class:`MaskEnforcer` (steps are counted on the first optimizer
    attached); ``step`` continues a resumed run, and :attr:`masks` holds the current
    masks (save them with the run).
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor],
                 optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
                 *, end_step: int, alpha: float = 0.3, every: int = 100,
                 allowed: Mapping[str, Tensor] | None = None, step: int = 0) -> None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha (fraction of each layer's weights moved) must be in [0, 1], got {alpha!r}")
        for key, v in (("every", every), ("end_step", end_step), ("step", step)):
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "every" else 0):
                raise ValueError(f"{key} must be an integer >= {1 if key == 'every' else 0}, got {v!r}")
        self.alpha, self.every, self.end_step, self.step = float(alpha), every, end_step, step
        self._scores: dict[str, Tensor] = {}
        self._counter: torch.optim.Optimizer | None = None
        self.updates = 0  # mask updates made (by this object)
        # own copies: the masks change in place during training, the caller's do not
        super().__init__(model, {n: m.detach().clone().bool() for n, m in masks.items()}, None)
        given = allowed if allowed is not None else {n: live_structure(m) for n, m in self.masks.items()}
        missing = [n for n in self.masks if n not in given]
        if missing:
            raise KeyError(f"allowed has no entry for {missing}")
        self.allowed = {n: given[n].to(self.masks[n].device).bool() for n in self.masks}
        for n in self.masks:
            if self.allowed[n].shape != self.masks[n].shape:
                raise ValueError(f"allowed[{n!r}] has shape {tuple(self.allowed[n].shape)}, "
                                 f"the mask {tuple(self.masks[n].shape)}")
        if optimizers is not None:
            for opt in ([optimizers] if isinstance(optimizers, torch.optim.Optimizer) else optimizers):
                self.attach(opt)

    def _due(self) -> bool:
        """Whether the coming optimizer step ends with a mask update."""
        nxt = self.step + 1
        return self.alpha > 0 and nxt < self.end_step and nxt % self.every == 0

    def _grad_hook(self, name: str):
        mask = self.masks[name]

        def hook(g):
            if self._due():  # the step's gradient (summed over backward passes), signed
                s = g.detach().clone()
                self._scores[name] = s if name not in self._scores else self._scores[name] + s
            return g * mask.to(g.dtype)
        return hook

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        if self._counter is None:
            self._counter = optimizer
        super().attach(optimizer)

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, *args, **kwargs) -> None:
        super()._after_step(optimizer)
        if optimizer is not self._counter:
            return
        due = self._due()
        self.step += 1
        if not due:
            return
        scores, self._scores = self._scores, {}
        f = self.alpha / 2 * (1 + math.cos(math.pi * self.step / self.end_step))
        dist = torch.distributed
        for n, p in self._params.items():
            s = scores.get(n)
            if s is None:  # no gradient reached this weight on that step
                continue
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(s)  # the gradient of the whole batch, as DDP computes it
            m = self.masks[n]
            self.masks[n].copy_(regrow(m, p, s.abs(), self.allowed[n], int(f * int(m.sum()))))
        self.updates += 1
        apply_masks(self.model, self.masks)
        self._clear_state(optimizer)


@torch.no_grad()
def refill(masks: Mapping[str, Tensor], scores: Mapping[str, Tensor], allowed: Mapping[str, Tensor],
           count: int) -> Masks:
    """Activate ``count`` more entries over all masks together: the inactive entries
    inside ``allowed`` with the largest ``scores`` (e.g. accumulated ``|gradient|``, the
    growth criterion of RigL, Evci et al. 2020). Fewer if fewer are allowed; returns new
    masks (ties broken either way)."""
    names = list(masks)
    for n in names:
        if not (masks[n].shape == scores[n].shape == allowed[n].shape):
            raise ValueError(f"refill: mask, score and allowed of {n!r} differ in shape")
    cand = [torch.where(allowed[n].bool() & ~masks[n].bool(), scores[n].double(),
                        torch.tensor(float("-inf"), dtype=torch.float64, device=scores[n].device)).flatten()
            for n in names]
    flat = torch.cat(cand) if cand else torch.zeros(0, dtype=torch.float64)
    count = min(int(count), int(torch.isfinite(flat).sum()))
    out = {n: masks[n].bool().clone() for n in names}
    if count <= 0:
        return out
    idx = flat.topk(count).indices
    offs = 0
    for n, c in zip(names, cand):
        sel = idx[(idx >= offs) & (idx < offs + c.numel())] - offs
        out[n].view(-1)[sel] = True
        offs += c.numel()
    return out
