"""Cutting a layer's tensors to kept units: the primitives of the handlers' ``resize``
(:meth:`mobileprune.graph.registry.OpHandler.resize`), the one place a layer is resized
(``compact`` and checkpoint restore both call the handlers).

``keep_in`` / ``keep_out`` are 1-D index tensors of the kept input / output units, or
``None`` (all kept). ``shift`` (float64, one per kept output) is added to the bias; a bias
is created when the layer has none and ``shift`` is not all zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["as_param", "cut", "resize_dense", "resize_per_channel"]


def as_param(old: Tensor | None, new: Tensor) -> nn.Parameter:
    """``new`` as a parameter with ``old``'s ``requires_grad`` (True without ``old``)."""
    rg = old.requires_grad if old is not None else True
    return nn.Parameter(new.detach().clone(), requires_grad=rg)


def cut(t: Tensor, dim: int, keep: Tensor | None) -> Tensor:
    """``t`` restricted to the indices ``keep`` along ``dim`` (``t`` itself for None)."""
    return t if keep is None else t.index_select(dim, keep.to(t.device))


def _shifted_bias(m: nn.Module, keep_out: Tensor | None, shift: Tensor | None,
                  n_out: int) -> nn.Parameter | None:
    """The kept rows of ``m.bias`` plus ``shift`` (created from ``shift`` when absent)."""
    w, b = m.weight, m.bias
    moved = shift is not None and bool((shift != 0).any())
    if b is None:
        if not moved:
            return None
        if shift.numel() != n_out:
            raise ValueError(f"bias shift of {shift.numel()} values for {n_out} outputs")
        return as_param(w, shift.to(device=w.device, dtype=w.dtype))
    nb = cut(b.detach(), 0, keep_out)
    if moved:
        nb = (nb.to(torch.float64) + shift.to(nb.device)).to(b.dtype)
    return as_param(b, nb)


@torch.no_grad()
def resize_dense(m: nn.Module, keep_in: Tensor | None, keep_out: Tensor | None,
                 shift: Tensor | None = None, *, in_dim: bool = True) -> tuple[int, int]:
    """Cut a ``(out, in, *k)`` weight (rows ``keep_out``; columns ``keep_in`` when
    ``in_dim``, else the columns stay: a depthwise conv) and its bias; returns the new
    ``(n_in, n_out)`` (``n_in`` counts ``keep_in`` even when the columns stay)."""
    w = m.weight
    new_w = cut(w.detach(), 0, keep_out)
    if in_dim:
        new_w = cut(new_w, 1, keep_in)
    n_out = int(new_w.shape[0])
    bias = _shifted_bias(m, keep_out, shift, n_out)
    m.weight = as_param(w, new_w)
    if bias is not None or m.bias is not None:
        m.bias = bias
    n_in = int(w.shape[1]) if keep_in is None else int(keep_in.numel())
    return n_in, n_out


@torch.no_grad()
def resize_per_channel(m: nn.Module, names: tuple[str, ...], keep: Tensor | None) -> int:
    """Cut the per-channel tensors ``names`` of ``m`` (parameters stay parameters,
    buffers buffers; absent or None ones are skipped); returns the new channel count."""
    n = None
    for name in names:
        t = getattr(m, name, None)
        if t is None:
            continue
        new = cut(t.detach(), 0, keep)
        n = int(new.shape[0])
        if isinstance(t, nn.Parameter):
            setattr(m, name, as_param(t, new))
        else:
            setattr(m, name, new.clone())
    if n is None:
        raise ValueError(f"{type(m).__name__} has none of {names} to resize")
    return n
