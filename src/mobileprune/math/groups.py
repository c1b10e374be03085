"""Groupings of a layer's weight tensor for the MobilePrune penalties (methods.md section 2).

A grouping is a pair of pure functions: :func:`to_groups` views a weight as a 2-D
``(G, n)`` tensor with one group per row (the layout every row-wise prox of
:mod:`mobileprune.math.prox` expects) and :func:`from_groups` is its exact inverse (a
permutation of entries, no arithmetic).  Supported weights: Linear ``(out, in)``,
Conv1d ``(F, C, k)``, Conv2d ``(F, C, kh, kw)`` (and generally ``(F, C, *k)``).

With ``w`` of shape ``(F, C, *k)`` (a Linear weight ``(out, in)`` has ``F = out``,
``C = in`` and no ``k``) and ``K = prod(k)``, one group (one row) is:

* ``linear_in`` (Linear only): column ``w[:, j]``, all outgoing weights of input neuron
  ``j`` (the public code's choice); ``(G, n) = (in, out)``.
* ``linear_out`` (Linear only): row ``w[i, :]``, all incoming weights of output neuron
  ``i``; ``(out, in)``.
* ``filter``: one filter ``w[f].reshape(-1)``; ``(F, C*K)``.  On a Linear weight a row
  (an output neuron is its own "filter"), i.e. the same as ``linear_out``.
* ``channel``: one input channel ``w[:, c].reshape(-1)`` (``F*K`` entries in ``(f, *k)``
  order); ``(C, F*K)``.  On a Linear weight a column, the same as ``linear_in``.
* ``shape``: one GEMM column, position ``(c, *k)`` across all filters, e.g. ``w[:, c, i,
  j]`` is row ``c*K + i*kw + j``; ``(C*K, F)``.  On a Linear weight a column, the same
  as ``linear_in``.
* ``block``: a tile of :data:`BLOCK_ROWS` = 4 consecutive filters at one GEMM column,
  ``w[4b:4b+4, c, *k]`` is row ``b*C*K + c*K + p`` (``p`` the flat ``*k`` position);
  ``(ceil(F/4)*C*K, 4)``.  When ``F`` is not a multiple of 4 the last tile of every
  column is zero-padded (the padding carries no weight and :func:`from_groups` drops
  it).  The sparse engine runs a conv pruned in such tiles with a blocked kernel that
  loads one input value for four outputs (the 4x1 blocks of DeepSparse-style engines;
  the structure favours speed over the fewest nonzeros; its Linear kernels do not use
  tiles yet).  On a Linear weight a tile is 4 consecutive output neurons at one input.
* ``weight``: singletons, any ndim; ``(numel, 1)``.

``linear_in`` / ``linear_out`` on a conv weight raise
:class:`~mobileprune.errors.ConfigError` pointing at ``channel`` / ``filter``.

Also here: :func:`tree_view` (the input channel > GEMM column > weight tree of methods.md
section 2.2 as the ``(R, C, n)`` tensor of :func:`mobileprune.math.prox.tree_l0_group_lasso`)
and :func:`overlapping_group_prox` (latent duplicated variables for overlapping groups).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mobileprune.errors import ConfigError
from mobileprune.math.prox import _l0_group_lasso_core, _param, _safe_norm, _tau

__all__ = [
    "Grouping",
    "BLOCK_ROWS",
    "to_groups",
    "from_groups",
    "group_shape",
    "group_norms",
    "count_nonzero_groups",
    "tree_view",
    "from_tree_view",
    "overlapping_group_prox",
    "unit_group_shape",
    "to_unit_groups",
    "from_unit_groups",
]


class Grouping(str, enum.Enum):
    """Names of the supported groupings (a ``str`` enum: ``Grouping("filter")`` works)."""

    LINEAR_IN = "linear_in"
    LINEAR_OUT = "linear_out"
    FILTER = "filter"
    CHANNEL = "channel"
    SHAPE = "shape"
    BLOCK = "block"
    WEIGHT = "weight"


#: Filters (GEMM rows) in one tile of the ``block`` grouping.
BLOCK_ROWS = 4


_NAMES = ", ".join(repr(g.value) for g in Grouping)


def _grouping(grouping: object) -> Grouping:
    if isinstance(grouping, Grouping):
        return grouping
    if isinstance(grouping, str):
        try:
            return Grouping(grouping.lower())
        except ValueError:
            pass
    raise ConfigError(f"unknown grouping {grouping!r}; expected one of {_NAMES}")


def _check_shape(shape: Sequence[int], g: Grouping) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if g is Grouping.WEIGHT:
        return shape
    if g in (Grouping.LINEAR_IN, Grouping.LINEAR_OUT):
        if nd != 2:
            alt = "channel" if g is Grouping.LINEAR_IN else "filter"
            raise ConfigError(
                f"grouping {g.value!r} needs a 2-D Linear weight (out, in); got shape "
                f"{shape} (for a conv weight use {alt!r})"
            )
        return shape
    if nd < 2:
        raise ConfigError(
            f"grouping {g.value!r} needs a weight with at least 2 dims (Linear (out, in) or "
            f"conv (F, C, *k)); got shape {shape} (use 'weight' for biases)"
        )
    return shape


def group_shape(shape: Sequence[int], grouping: Grouping | str) -> tuple[int, int]:
    """``(G, n)``: number of groups and group size of ``grouping`` on a weight of ``shape``."""
    g = _grouping(grouping)
    shape = _check_shape(shape, g)
    numel = math.prod(shape)
    if g is Grouping.WEIGHT:
        return numel, 1
    F, C = shape[0], shape[1]
    K = math.prod(shape[2:])
    if g in (Grouping.LINEAR_OUT, Grouping.FILTER):
        return F, C * K
    if g in (Grouping.LINEAR_IN, Grouping.CHANNEL):
        return C, F * K
    if g is Grouping.BLOCK:
        return -(-F // BLOCK_ROWS) * C * K, BLOCK_ROWS
    return C * K, F  # SHAPE


def to_groups(w: Tensor, grouping: Grouping | str) -> Tensor:
    """View ``w`` as a ``(G, n)`` tensor with one group per row (see the module table).

    Pure: never modifies ``w``, but like ``reshape`` it may return a view sharing ``w``'s
    memory (clone before editing in place); row order is
    group index order (filter ``f``, channel ``c``, flat GEMM column ``c*K + p``...), and
    inside a row the entries follow ``w``'s memory order of the remaining dims (``block``:
    the tile's four filters in order, padding last).
    """
    if not isinstance(w, Tensor):
        raise ConfigError(f"w must be a torch.Tensor, got {type(w).__name__}")
    g = _grouping(grouping)
    shape = _check_shape(w.shape, g)
    if g is Grouping.WEIGHT:
        return w.reshape(-1, 1)
    F, C = shape[0], shape[1]
    if g in (Grouping.LINEAR_OUT, Grouping.FILTER):
        return w.reshape(F, -1)
    if g in (Grouping.LINEAR_IN, Grouping.CHANNEL):
        return w.transpose(0, 1).reshape(C, -1)
    if g is Grouping.BLOCK:  # (B, 4, C*K) tiles of the zero-padded GEMM rows, one per column
        rows = torch.nn.functional.pad(w.reshape(F, -1), (0, 0, 0, (-F) % BLOCK_ROWS))
        return rows.reshape(-1, BLOCK_ROWS, rows.shape[1]).transpose(1, 2).reshape(-1, BLOCK_ROWS)
    return w.reshape(F, -1).t()  # SHAPE: GEMM columns


def from_groups(g: Tensor, grouping: Grouping | str, shape: Sequence[int]) -> Tensor:
    """Exact inverse of :func:`to_groups`: rebuild a weight of ``shape`` from its groups.

    Never modifies ``g``; may return a view sharing ``g``'s memory (like ``reshape``).
    """
    if not isinstance(g, Tensor):
        raise ConfigError(f"g must be a torch.Tensor, got {type(g).__name__}")
    kind = _grouping(grouping)
    shape = _check_shape(shape, kind)
    expected = group_shape(shape, kind)
    if tuple(g.shape) != expected:
        raise ConfigError(
            f"groups of shape {tuple(g.shape)} do not match grouping {kind.value!r} of a "
            f"weight of shape {shape}: expected {expected}"
        )
    if kind is Grouping.WEIGHT:
        return g.reshape(shape)
    F, C = shape[0], shape[1]
    rest = shape[2:]
    if kind in (Grouping.LINEAR_OUT, Grouping.FILTER):
        return g.reshape(shape)
    if kind in (Grouping.LINEAR_IN, Grouping.CHANNEL):
        return g.reshape((C, F) + rest).transpose(0, 1).contiguous()
    if kind is Grouping.BLOCK:  # undo the tiling, drop the padded rows
        cols = C * math.prod(rest)
        rows = g.reshape(-1, cols, BLOCK_ROWS).transpose(1, 2).reshape(-1, cols)
        return rows[:F].reshape(shape).contiguous()
    return g.t().reshape(shape).contiguous()  # SHAPE


def group_norms(w: Tensor, grouping: Grouping | str, blocks: int = 1, unit: int = 1) -> Tensor:
    """Euclidean norm of every group, shape ``(G,)`` (overflow-safe); with ``blocks`` /
    ``unit`` of every unit group of :func:`to_unit_groups`."""
    rows = to_unit_groups(w, grouping, blocks, unit)
    if rows.numel() == 0:
        return rows.new_zeros(rows.shape[0])
    if not rows.is_floating_point():
        rows = rows.to(torch.get_default_dtype())
    return _safe_norm(rows, (1,)).reshape(-1)


def count_nonzero_groups(w: Tensor, grouping: Grouping | str) -> int:
    """Number of groups with at least one nonzero entry."""
    rows = to_groups(w, grouping)
    return int((rows != 0).any(dim=1).sum()) if rows.shape[1] else 0


# ------------------------------------------------------------------ units of several rows
def _unit_layout(shape: Sequence[int], grouping: Grouping | str, blocks: int, unit: int) -> tuple[int, int, int]:
    """``(G, R, n)``: units, rows of :func:`to_groups` and their size, checked."""
    kind = _grouping(grouping)
    R, n = group_shape(shape, kind)
    if kind is not Grouping.FILTER and blocks != 1:
        raise ConfigError(f"blocks={blocks} is only defined for the 'filter' grouping, not {kind.value!r}")
    if kind not in (Grouping.FILTER, Grouping.CHANNEL) and unit != 1:
        raise ConfigError(f"unit={unit} is only defined for 'filter' and 'channel', not {kind.value!r}")
    if blocks < 1 or unit < 1 or R % (blocks * unit):
        raise ConfigError(f"{R} {kind.value} groups of a weight of shape {tuple(shape)} do not split "
                          f"into {blocks} blocks of units of {unit}")
    return R // (blocks * unit), R, n


def unit_group_shape(shape: Sequence[int], grouping: Grouping | str, blocks: int = 1,
                     unit: int = 1) -> tuple[int, int]:
    """``(G, n)`` of :func:`to_unit_groups`."""
    G, R, n = _unit_layout(shape, grouping, blocks, unit)
    return G, R * n // G


def to_unit_groups(w: Tensor, grouping: Grouping | str, blocks: int = 1, unit: int = 1) -> Tensor:
    """Like :func:`to_groups`, with one group per *unit* of several rows of it.

    The ``R`` rows of ``to_groups(w, grouping)`` are read as ``blocks`` stacked blocks
    (``filter`` only) of ``G`` units of ``unit`` consecutive rows each, and group ``u``
    joins rows ``b * G * unit + u * unit + j`` over every block ``b`` and ``j < unit``
    (in that order).  Examples: an LSTM ``weight_ih`` ``(4H, C)`` with ``blocks=4``: one
    group per hidden unit, its rows in the four gates; a packed attention
    ``in_proj_weight`` ``(3E, E)`` with ``blocks=3, unit=E // heads``: one group per
    head, its rows of q, k and v; an ``out_proj`` weight with ``("channel", unit=E //
    heads)``: the columns of one head.  ``blocks = unit = 1`` is :func:`to_groups`.
    Inverse: :func:`from_unit_groups`.
    """
    G, R, n = _unit_layout(w.shape, grouping, blocks, unit)
    rows = to_groups(w, grouping)
    return rows.reshape(blocks, G, unit * n).transpose(0, 1).reshape(G, -1)


def from_unit_groups(g: Tensor, grouping: Grouping | str, shape: Sequence[int], blocks: int = 1,
                     unit: int = 1) -> Tensor:
    """Exact inverse of :func:`to_unit_groups` for a weight of ``shape``."""
    G, R, n = _unit_layout(shape, grouping, blocks, unit)
    if tuple(g.shape) != (G, R * n // G):
        raise ConfigError(f"unit groups of shape {tuple(g.shape)} do not match a weight of shape "
                          f"{tuple(shape)}: expected {(G, R * n // G)}")
    rows = g.reshape(G, blocks, unit * n).transpose(0, 1).reshape(R, n)
    return from_groups(rows, grouping, shape)


# ------------------------------------------------------------------------------ tree
def tree_view(w: Tensor) -> Tensor:
    """The conv tree of methods.md section 2.2 as an ``(R, C, n)`` tensor.

    For a conv weight ``(F, C_in, *k)``: ``R = C_in`` roots (input channels), each with
    ``prod(k)`` child columns (GEMM columns = one ``(c, *k)`` position) of ``F`` entries
    (one per filter): ``t[c, p, f] = w[f, c].reshape(-1)[p]``.  A Linear weight ``(out,
    in)`` gives the degenerate tree with one child column per input neuron.  Inverse:
    :func:`from_tree_view`.
    """
    if not isinstance(w, Tensor):
        raise ConfigError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() < 2:
        raise ConfigError(f"tree_view needs a conv (F, C, *k) or Linear weight; got shape {tuple(w.shape)}")
    F, C = w.shape[0], w.shape[1]
    return w.reshape(F, C, -1).permute(1, 2, 0).contiguous()


def from_tree_view(t: Tensor, shape: Sequence[int]) -> Tensor:
    """Exact inverse of :func:`tree_view` for a weight of ``shape``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ConfigError(f"from_tree_view needs a weight shape with >= 2 dims; got {shape}")
    F, C = shape[0], shape[1]
    K = math.prod(shape[2:])
    if not isinstance(t, Tensor) or tuple(t.shape) != (C, K, F):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ConfigError(f"tree view of a weight of shape {shape} must have shape {(C, K, F)}; got {got}")
    return t.permute(2, 0, 1).reshape(shape).contiguous()


# ------------------------------------------------------------------ overlapping groups
def overlapping_group_prox(
    v: Tensor,
    groups: Sequence[Tensor | Sequence[int]],
    lam,
    eta,
    n_iter: int = 500,
    *,
    tol: float = 0.0,
    return_copies: bool = False,
):
    """Prox of l0 + group lasso for overlapping groups via latent duplicated variables.

    ``groups`` is a list of index tensors (flat indices into ``v.reshape(-1)``, no
    repeats within a group; groups may overlap).  Each group ``g`` gets its own latent
    copy ``z_g`` supported on ``g``, and the function minimises (methods.md 2.2, last
    paragraph; Jacob, Obozinski & Vert 2009 with an l0 term on the copies)

        F(z) = 1/2 ||v - sum_g z_g - w||^2 + sum_g (lam_g ||z_g||_2 + eta_g ||z_g||_0)

    over the copies, where ``w`` is free on the coordinates covered by no group (so those
    are returned unchanged, unpenalised), and returns ``x = sum_g z_g + w``.  ``lam`` and
    ``eta`` are already multiplied by the outer step ``s`` (scalars or one per group).
    Note ``eta`` counts an entry once per copy that uses it.

    Inner iterative scheme: proximal gradient on the copies with step ``t = 1/L``, ``L =``
    the largest number of groups covering one coordinate (the Lipschitz constant of the
    smooth part); every step applies the exact per-copy prox :func:`l0_group_lasso` with
    ``(t lam, t eta)`` to all copies at once (padded ``(G, n_max)`` tensor, vectorised).
    ``F`` is non-increasing along the iterations.  With ``eta = 0`` the problem is convex
    (latent group lasso) and the iterates converge to its unique ``x``; with ``eta > 0``
    they converge to a fixed point (a critical point), not necessarily the global
    minimiser.  Disjoint groups give ``L = 1`` and the exact prox after one iteration.
    Stops after ``n_iter`` iterations or once the largest change of a copy is ``<= tol``
    times the largest ``|v|``.

    Returns ``x`` (shape of ``v``), or ``(x, copies)`` if ``return_copies``, with
    ``copies`` of shape ``(G, n_max)``: row ``g`` holds ``z_g`` in the order of
    ``groups[g]``, zero-padded.
    """
    if not isinstance(v, Tensor) or not v.is_floating_point():
        raise ConfigError("v must be a floating-point torch.Tensor")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ConfigError(f"n_iter must be a positive int, got {n_iter!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ConfigError(f"tol must be a non-negative number, got {tol!r}")
    G = len(groups)
    lam_t = _param(lam, "lam", v, G, 2)
    tau_t = _param(eta, "eta", v, G, 2, _tau)  # hard-threshold level sqrt(2 eta)
    if G == 0:
        x = v.clone()
        return (x, v.new_zeros((0, 0))) if return_copies else x
    vflat = v.reshape(-1).detach().clone()
    idx, valid = _padded_groups(groups, vflat.numel(), v.device)
    flat_idx = idx[valid]
    mult = torch.zeros_like(vflat).index_add_(0, flat_idx, torch.ones_like(flat_idx, dtype=v.dtype))
    L = max(float(mult.max()), 1.0) if vflat.numel() else 1.0  # most copies of one coordinate
    scale = float(vflat.abs().max()) if vflat.numel() else 0.0
    z = _latent_copies(vflat, idx, valid, lam_t, tau_t, L, n_iter, tol * scale)
    x = torch.zeros_like(vflat).index_add_(0, flat_idx, z[valid])
    x = torch.where(mult > 0, x, vflat).reshape(v.shape)
    return (x, z) if return_copies else x


def _padded_groups(groups: Sequence[Tensor | Sequence[int]], n: int, device) -> tuple[Tensor, Tensor]:
    """``(idx, valid)``: the groups as one zero-padded ``(G, n_max)`` index tensor and the
    mask of its real entries; refuses indices outside ``[0, n)`` and repeats in a group."""
    idx_list = []
    for i, g in enumerate(groups):
        t = torch.as_tensor(g, device=device)
        if t.dim() > 1 or t.dtype == torch.bool or (t.is_floating_point() and t.numel()):
            raise ConfigError(f"group {i} must be a 1-D tensor / sequence of integer indices")
        idx_list.append(t.reshape(-1).to(torch.long))
    lengths = torch.tensor([len(t) for t in idx_list], device=device)
    n_max = int(lengths.max())
    idx = torch.nn.utils.rnn.pad_sequence(idx_list, batch_first=True, padding_value=0) \
        if n_max else torch.zeros((len(idx_list), 0), dtype=torch.long, device=device)
    valid = torch.arange(n_max, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    flat_idx = idx[valid]
    if flat_idx.numel():
        if int(flat_idx.min()) < 0 or int(flat_idx.max()) >= n:
            raise ConfigError(f"group indices must lie in [0, {n}) (flat indices into v)")
        # duplicates inside a group: sort each row (padding pushed to the end)
        srt = torch.sort(torch.where(valid, idx, torch.full_like(idx, n)), dim=1).values
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] < n)
        if bool(dup.any()):
            raise ConfigError(f"group {int(dup.any(dim=1).nonzero()[0])} contains a repeated index")
    return idx, valid


def _latent_copies(vflat: Tensor, idx: Tensor, valid: Tensor, lam: Tensor, tau: Tensor, L: float,
                   n_iter: int, thresh: float) -> Tensor:
    """The copies ``z`` (``(G, n_max)``) after proximal-gradient steps ``t = 1/L`` on
    ``1/2 ||v - sum_g z_g||^2`` (restricted to covered coordinates), each followed by the
    exact per-copy prox with ``(t lam, t eta)``; stops after ``n_iter`` steps or once no
    copy moves by more than ``thresh``."""
    step = 1.0 / L
    lam_step, tau_step = lam * step, tau * math.sqrt(step)  # tau: sqrt(2 * step * eta)
    flat_idx = idx[valid]
    z = vflat.new_zeros(idx.shape)
    zero = vflat.new_zeros(())
    for _ in range(n_iter):
        resid = vflat - torch.zeros_like(vflat).index_add_(0, flat_idx, z[valid])
        w = torch.where(valid, z + step * resid[idx], zero)
        z_new = torch.where(valid, _l0_group_lasso_core(w, lam_step, tau_step), zero)
        change = float((z_new - z).abs().max()) if z.numel() else 0.0
        z = z_new
        if change <= thresh:
            break
    return z
