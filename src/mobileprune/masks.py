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


class MaskEnforcer:
    """Keep the weights of ``model`` inside ``masks`` during training.

    Use it around any training loop (yours or mobileprune's)::

        enforcer = MaskEnforcer(model, masks, optimizer)
        ...  # train as usual: loss.backward(); optimizer.step()
        enforcer.remove()

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
        self.masks: Masks = {
            n: masks[n].to(device=p.device).bool() for n, p in self._params.items()
        }
        self._handles: list = []
        for n, p in self._params.items():
            fmask = self.masks[n]
            self._handles.append(p.register_hook(lambda g, m=fmask: g * m.to(g.dtype)))
        apply_masks(model, self.masks)
        if optimizers is not None:
            if isinstance(optimizers, torch.optim.Optimizer):
                optimizers = [optimizers]
            for opt in optimizers:
                self.attach(opt)

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
