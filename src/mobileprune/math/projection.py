"""Euclidean projections onto the ADMM constraint sets (seed 003, Eq. 6).

These are small pure tensor functions: they never modify their input and return new
tensors. The ADMM Z-step (seed ``003_7028caa2f3347c85``, Algorithm 1, Eq. 6) is
``Z = Proj_S(W + U)``; masked mapping (section 2.3) is ``W = Proj_S(W)``.

* Unstructured set ``S = {W : nnz(W) <= k}``: the projection keeps the ``k`` entries
  of largest magnitude and zeros the rest (:func:`topk_mask`, :func:`project_topk`).
* Structured sets (seed 003, section 2.4): with the weight viewed as groups (rows of a
  2-D tensor, e.g. filters or GEMM columns), ``S = {at most k nonzero groups}``; the
  projection keeps the ``k`` groups of largest l2 norm (:func:`project_top_groups`).

Ties are broken deterministically in favour of the lower flat index, so the result has
exactly ``min(k, allowed)`` selected entries and never more than ``k`` nonzeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0 or k > n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    return k


def topk_mask(scores: Tensor, k: int, allowed: Tensor | None = None) -> Tensor:
    """Boolean mask of the ``k`` largest entries of ``scores`` (any shape).

    Args:
        scores: non-negative scores (e.g. ``|W|``); NaN is not allowed.
        k: number of entries to select, ``0 <= k <= scores.numel()``.
        allowed: optional boolean mask of the same shape; entries outside it are
            never selected (at most ``allowed.sum()`` entries are then selected).

    Ties are broken by lower flat index (a stable sort), so the result is reproducible.
    """
    k = _check_k(k, scores.numel())
    flat = scores.detach().reshape(-1)
    if not torch.isfinite(flat).all():
        raise ValueError("scores contain NaN or inf: cannot project a tensor with non-finite values")
    if allowed is not None:
        if allowed.shape != scores.shape:
            raise ValueError(
                f"allowed mask shape {tuple(allowed.shape)} != scores shape {tuple(scores.shape)}"
            )
        allowed_flat = allowed.reshape(-1).bool()
        flat = torch.where(allowed_flat, flat, torch.full_like(flat, -1.0))
        k = min(k, int(allowed_flat.sum()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.argsort(flat, descending=True, stable=True)
        mask[order[:k]] = True
    return mask.reshape(scores.shape)


def project_topk(w: Tensor, k: int, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Project ``w`` onto ``{X : nnz(X) <= k}`` (seed 003, Eq. 6, unstructured).

    Returns ``(projection, mask)`` where ``mask`` marks the ``k`` kept positions (its
    entries may include positions whose value is already zero) and
    ``projection = w * mask``. This is the exact Euclidean projection: no other
    ``k``-sparse tensor is closer to ``w``.
    """
    mask = topk_mask(w.detach().abs(), k, allowed)
    return torch.where(mask, w, torch.zeros_like(w)), mask


def project_top_groups(
    groups: Tensor, k: int, allowed: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Project a grouped tensor onto ``{at most k nonzero rows}`` (seed 003, sec. 2.4).

    Args:
        groups: a 2-D tensor with one group per row (see :mod:`mobileprune.math.groups`).
        k: number of groups to keep.
        allowed: optional 1-D boolean mask of rows that may be kept.

    Returns ``(projection, row_mask)``: the ``k`` rows of largest l2 norm kept intact,
    the others zeroed. Exact Euclidean projection onto the group-sparse set.
    """
    if groups.dim() != 2:
        raise ValueError(f"groups must be 2-D (one group per row), got shape {tuple(groups.shape)}")
    norms = torch.linalg.vector_norm(groups.detach(), dim=1)
    row_mask = topk_mask(norms, k, allowed)
    return torch.where(row_mask[:, None], groups, torch.zeros_like(groups)), row_mask


def top_coupled_groups(
    sq_norms: list[Tensor], ids: list[Tensor], keeps: list[int], n_ids: int,
    allowed: Tensor | None = None,
) -> Tensor:
    """Choose the coupled channels to keep across several layers (seed 003, sec. 2.4).

    Channels tied by a residual addition, a concatenation or a flatten (see
    :func:`mobileprune.graph.passes.units.channel_ids`) can only be removed from the network
    together, so structured pruning must zero them together. Member ``i`` (one layer's
    filter or input-channel groups) has groups with squared l2 norms ``sq_norms[i]``
    (shape ``(G_i,)``); group ``g`` belongs to coupled channel ``ids[i][g]`` (in
    ``[0, n_ids)``); at most ``keeps[i]`` of the member's groups may stay nonzero.

    Channels are taken in decreasing order of their total squared norm (over all
    members) and kept while every member stays within its budget; a channel that
    would overflow some budget is skipped. The result minimises the total squared norm
    removed (the Euclidean projection onto the joint constraint set) whenever the
    members' channel sets are equal, nested or disjoint and each member has the same
    number of groups per channel it touches: residual adds, concatenations and
    flattens. Ties go to the lower channel id.

    Args:
        allowed: optional ``(n_ids,)`` bool; channels outside it are never kept.

    Returns:
        ``(n_ids,)`` bool mask of the kept channels.
    """
    if not (len(sq_norms) == len(ids) == len(keeps)):
        raise ValueError("sq_norms, ids and keeps must have the same length")
    total = torch.zeros(n_ids, dtype=torch.float64)
    cost = torch.zeros(len(ids), n_ids, dtype=torch.long)
    for i, (s, g) in enumerate(zip(sq_norms, ids)):
        if s.shape != g.shape or s.dim() != 1:
            raise ValueError(f"member {i}: sq_norms shape {tuple(s.shape)} != ids shape {tuple(g.shape)}")
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= n_ids):
            raise ValueError(f"member {i}: channel ids outside [0, {n_ids})")
        if not torch.isfinite(s).all():
            raise ValueError(f"member {i}: non-finite group norms")
        total.index_add_(0, g.cpu(), s.detach().to("cpu", torch.float64))
        cost[i].index_add_(0, g.cpu(), torch.ones_like(g.cpu()))
    budget = torch.tensor([int(k) for k in keeps], dtype=torch.long)
    kept = torch.zeros(n_ids, dtype=torch.bool)
    if allowed is not None:
        if allowed.shape != (n_ids,):
            raise ValueError(f"allowed must have shape ({n_ids},), got {tuple(allowed.shape)}")
        total = torch.where(allowed.cpu().bool(), total, torch.full_like(total, -1.0))
    order = torch.argsort(total, descending=True, stable=True)
    used = torch.zeros(len(ids), dtype=torch.long)
    for r in order.tolist():
        if total[r] < 0:
            break
        c = cost[:, r]
        if not bool(c.any()):
            continue
        if bool((used + c <= budget).all()):
            used += c
            kept[r] = True
    return kept


def proportional_counts(counts: Sequence[int], total: int) -> list[int]:
    """Split ``total`` into integers proportional to ``counts`` (largest remainder).

    ``result[i] <= counts[i]``, ``sum(result) == min(total, sum(counts))``; remainders are
    handed out by decreasing fractional part, ties to the lower index. Used to shrink
    several layers' nonzero counts to one budget while keeping their ratios.
    """
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"counts must be non-negative, got {counts}")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be a non-negative int, got {total!r}")
    n = sum(counts)
    if total >= n:
        return list(counts)
    exact = [c * total / n for c in counts]
    out = [int(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:total - sum(out)]:
        out[i] += 1
    return out
