"""Proximal operators of the MobilePrune penalties (seed ``000_659fe8f6b4e48b5b.txt``).

Every function returns ``prox_{s r}(v) = argmin_x 1/2 ||x - v||^2 + s r(x)`` for one of
the regularisers ``r`` of ``docs/methods.md`` section 2.  **The penalty weights passed
in (``lam``, ``eta``, ``beta``, ``gamma``, ``delta``, ``alpha``) are already multiplied
by the step size ``s``**: to take a PALM step with step ``s`` on
``lam * sum_g ||W_g||_2 + eta * ||W||_0`` call ``l0_group_lasso(W - s * grad, s * lam,
s * eta)``.

Conventions shared by all functions:

* Pure functions: inputs are never modified in place; the result is a new tensor of the
  same dtype (float32 or float64, any floating dtype really) and device as ``v``.
* Fully vectorised (sort / cumsum / argmax / scatter / gather); no Python loop over
  groups.  The tree prox loops over the (few) child columns of its dynamic programme
  and over chunks of roots bounded by memory, never over single roots.
* "Row-wise" functions take a 2-D ``v`` of shape ``(G, n)``: one group per row.
* Parameters may be Python numbers, 0-d tensors, or 1-D tensors with one value per
  group (per row, or per root for the tree prox), broadcast along the row.  Negative or
  NaN values raise :class:`~mobileprune.errors.ConfigError` naming the parameter.
  ``+inf`` is allowed (it zeroes everything it touches).
* Overflow safety: group norms and the closed-form scores are computed after dividing
  each group by its largest magnitude (all these proxes are scale-equivariant:
  ``prox_{lam, eta}(v) = m * prox_{lam/m, eta/m^2}(v/m)``), and ``eta`` enters only via
  the hard-threshold level ``tau = sqrt(2 eta)``, so 1e30-scale float32 weights (with
  ``eta`` ~ 1e60 given as a Python float) produce finite, correct results.
"""

from __future__ import annotations

import math
import numbers
from typing import Union

import torch
from torch import Tensor

from mobileprune.errors import ConfigError

__all__ = [
    "hard_threshold",
    "soft_threshold",
    "l2_shrink",
    "group_lasso",
    "sparse_group_lasso",
    "l0_group_lasso",
    "l0_l1_group_lasso",
    "tree_l0_group_lasso",
    "tree_prox_composition",
    "objective_l0_group_lasso",
    "objective_tree",
]

ParamLike = Union[float, Tensor]  # a number, or one value per group / root

# Upper bound on the number of elements of the (roots, K, n + 1) temporary of the tree
# dynamic programme; roots are processed in chunks that respect it.
_TREE_DP_MAX_ELEMS = 1 << 24


# --------------------------------------------------------------------------- helpers
def _check_tensor(v: object, name: str = "v") -> Tensor:
    if not isinstance(v, Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if not v.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
    return v


def _check_2d(v: object, func: str) -> Tensor:
    v = _check_tensor(v)
    if v.dim() != 2:
        raise ConfigError(
            f"{func} works row-wise on a 2-D tensor of shape (groups, n); got shape "
            f"{tuple(v.shape)} (use mobileprune.math.groups.to_groups to build the rows)"
        )
    return v


def _param(value: object, name: str, v: Tensor, n_groups: int | None, ndim: int,
           transform=None) -> Tensor:
    """Validate a penalty weight and return it as a tensor broadcastable against ``v``.

    ``value`` is a real number or a 0-d / 1-D tensor with ``n_groups`` entries (one per
    group along dim 0 of ``v``); the result has ``v``'s dtype and device and shape
    ``()`` or ``(n_groups, 1, ..., 1)`` (``ndim`` dims).  ``transform`` (e.g. ``x ->
    sqrt(2 x)``) is applied *before* the cast to ``v.dtype`` so a value that only
    overflows in the target dtype before the transform still works.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a non-negative number, got a bool ({value!r})")
    if isinstance(value, Tensor):
        t = value.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise ConfigError(f"{name} must be a real tensor, got dtype {t.dtype}")
        if t.dim() > 1:
            raise ConfigError(
                f"{name} must be a number or a 1-D tensor with one value per group; "
                f"got shape {tuple(t.shape)}"
            )
        if t.dim() == 1 and (n_groups is None or t.numel() != n_groups):
            if n_groups is None:
                raise ConfigError(f"{name} must be a scalar here; got shape {tuple(t.shape)}")
            raise ConfigError(
                f"{name} has {t.numel()} values but there are {n_groups} groups "
                f"(dim 0 of v); pass a scalar or one value per group"
            )
        if not t.is_floating_point():
            t = t.to(torch.float64 if v.dtype == torch.float64 else torch.float32)
        if t.numel() and bool(torch.isnan(t).any()):
            raise ConfigError(f"{name} must not be NaN")
        if t.numel() and bool((t < 0).any()):
            raise ConfigError(f"{name} must be non-negative; got min {float(t.min())}")
        t = t.to(device=v.device)
        if transform is not None:
            t = transform(t)
        t = t.to(dtype=v.dtype)
        if t.dim() == 1:
            t = t.reshape((n_groups,) + (1,) * (ndim - 1))
        return t
    if isinstance(value, numbers.Real):
        x = float(value)
        if math.isnan(x):
            raise ConfigError(f"{name} must not be NaN")
        if x < 0:
            raise ConfigError(f"{name} must be non-negative; got {x}")
        if transform is not None:
            x = float(transform(torch.tensor(x, dtype=torch.float64)))
        return torch.tensor(x, dtype=v.dtype, device=v.device)
    raise ConfigError(
        f"{name} must be a non-negative number or a tensor, got {type(value).__name__}"
    )


def _tau(eta: Tensor) -> Tensor:
    """Hard-threshold level sqrt(2 eta), computed as sqrt(2)*sqrt(eta) (no overflow)."""
    return math.sqrt(2.0) * torch.sqrt(eta)


def _rowmax_scale(a: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Largest magnitude over ``dims`` (keepdim), with 0 replaced by 1 (safe divisor)."""
    m = a.amax(dim=dims, keepdim=True) if a.numel() else a.new_ones(())
    return torch.where(m > 0, m, torch.ones_like(m))


def _safe_norm(v: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Euclidean norm over ``dims`` (keepdim) without overflow / underflow of squares."""
    a = v.abs()
    m = _rowmax_scale(a, dims)
    return m * torch.sqrt(((a / m) ** 2).sum(dim=dims, keepdim=True))


def _shrink_factor(norm: Tensor, lam: Tensor) -> Tensor:
    """(1 - lam / norm)_+ with the 0/0 and inf/inf cases mapped to 0."""
    pos = norm > lam
    safe = torch.where(pos, norm, torch.ones_like(norm))
    return torch.where(pos, 1.0 - lam / safe, torch.zeros_like(norm))


# ---------------------------------------------------------------- element-wise proxes
def hard_threshold(v: Tensor, eta: ParamLike) -> Tensor:
    """Prox of ``eta * ||x||_0`` (methods.md section 2.3, l0 baseline; section 2.1 with lam=0).

    Keeps the entries with ``|v| > sqrt(2 eta)`` and zeroes the rest (at ``|v| ==
    sqrt(2 eta)`` both choices are optimal; the sparser one is returned).  ``eta`` is
    already multiplied by the step ``s``.  Element-wise, so ``v`` may have any shape; a
    1-D ``eta`` tensor gives one value per index of dim 0 of ``v``.
    """
    v = _check_tensor(v)
    tau = _param(eta, "eta", v, v.shape[0] if v.dim() else None, max(v.dim(), 1), _tau)
    return torch.where(v.abs() > tau, v, torch.zeros_like(v))


def soft_threshold(v: Tensor, beta: ParamLike) -> Tensor:
    """Prox of ``beta * ||x||_1``: ``sign(v) * max(|v| - beta, 0)`` (methods.md section 2.3, l1).

    ``beta`` is already multiplied by the step ``s``.  Element-wise, any shape; a 1-D
    ``beta`` tensor gives one value per index of dim 0 of ``v``.
    """
    v = _check_tensor(v)
    b = _param(beta, "beta", v, v.shape[0] if v.dim() else None, max(v.dim(), 1))
    return torch.sign(v) * torch.clamp(v.abs() - b, min=0)


def l2_shrink(v: Tensor, lam: ParamLike) -> Tensor:
    """Prox of ``lam * ||V||_2`` on the whole tensor (methods.md section 2.3, l2 baseline).

    ``V * (1 - lam / ||V||)_+`` where ``||V||`` is the Euclidean (Frobenius) norm of the
    whole tensor, of any shape.  ``lam`` (a scalar) is already multiplied by the step
    ``s``.
    """
    v = _check_tensor(v)
    lam_t = _param(lam, "lam", v, None, 1)
    if v.numel() == 0:
        return v.clone()
    dims = tuple(range(v.dim()))
    norm = _safe_norm(v, dims) if dims else v.abs()
    return v * _shrink_factor(norm, lam_t)


# ------------------------------------------------------------------- row-wise proxes
def group_lasso(v: Tensor, lam: ParamLike) -> Tensor:
    """Row-wise group soft threshold, prox of ``lam * sum_g ||x_g||_2`` (methods.md 2.3).

    Each row ``v_g`` of the 2-D ``v`` becomes ``(1 - lam / ||v_g||)_+ v_g``.  ``lam`` is
    already multiplied by the step ``s``; scalar or one value per row.
    """
    v = _check_2d(v, "group_lasso")
    lam_t = _param(lam, "lam", v, v.shape[0], 2)
    if v.numel() == 0:
        return v.clone()
    return v * _shrink_factor(_safe_norm(v, (1,)), lam_t)


def sparse_group_lasso(v: Tensor, lam: ParamLike, beta: ParamLike) -> Tensor:
    """Prox of ``lam * sum_g ||x_g||_2 + beta * ||x||_1`` (l1 sparse group lasso, methods.md 2.3).

    Exact closed form: soft threshold at ``beta``, then row-wise group shrink at ``lam``.
    ``lam`` and ``beta`` are already multiplied by the step ``s``; scalars or one value
    per row of the 2-D ``v``.
    """
    v = _check_2d(v, "sparse_group_lasso")
    _param(lam, "lam", v, v.shape[0], 2)  # validate before doing any work
    return group_lasso(soft_threshold(v, beta), lam)


def l0_group_lasso(v: Tensor, lam: ParamLike, eta: ParamLike) -> Tensor:
    """Exact prox of l0 + group lasso, row by row (methods.md section 2.1, closed form).

    For every row ``v_g`` of the 2-D ``v`` (shape ``(G, n)``) returns the minimiser of
    ``1/2 ||x - v_g||^2 + lam ||x||_2 + eta ||x||_0``; ``lam`` and ``eta`` are already
    multiplied by the step ``s`` (scalars or one value per row).  Algorithm (vectorised
    over rows): sort ``|v_g|`` descending; ``y_k`` = norm of the ``k`` largest entries;
    ``score_k = 1/2 (y_k - lam)^2 - k eta`` if ``y_k > lam`` else 0, ``score_0 = 0``;
    ``k* = argmax_k score_k`` over all ``k = 0..n`` (not unimodal; ties go to the
    smallest ``k``); keep the ``k*`` largest entries and multiply them by
    ``(1 - lam / y_k*)``.  ``eta = 0`` gives :func:`group_lasso`, ``lam = 0`` gives
    :func:`hard_threshold`, and a singleton survives iff ``|v| > lam + sqrt(2 eta)``.
    Among entries of equal magnitude at the cut, the earlier ones in the sort are kept
    (the objective value is the same either way).  Only entries with
    ``|v| >= tau = sqrt(2 eta)`` are sorted: with ``g(y) = ((y - lam)_+)^2``, adding an
    entry ``a`` to the support raises ``g`` by at most ``a^2``, so an entry below ``tau``
    always lowers the score and every larger ``k`` is dominated.
    """
    v = _check_2d(v, "l0_group_lasso")
    G = v.shape[0]
    return _l0_group_lasso_core(v, _param(lam, "lam", v, G, 2), _param(eta, "eta", v, G, 2, _tau))


def _l0_group_lasso_core(v: Tensor, lam_t: Tensor, tau_t: Tensor) -> Tensor:
    """:func:`l0_group_lasso` on validated inputs: ``lam_t`` and ``tau_t = sqrt(2 eta)``
    are ``()`` or ``(G, 1)`` tensors of ``v``'s dtype and device."""
    G, n = v.shape
    if v.numel() == 0:
        return v.clone()
    a = v.abs()
    m = _rowmax_scale(a, (1,))  # (G, 1): work in units of the row's largest magnitude
    # Only entries with |v| >= tau can be kept: adding an entry of magnitude a < tau to
    # the support changes 2 * score by at most a^2 - tau^2 < 0 (see the docstring), so
    # sorting the top K = max_g #{|v_g,i| >= tau} per row is enough (sparse rows: K << n).
    K = int((a >= tau_t).sum(dim=1).max()) if bool((tau_t > 0).all()) else n
    K = max(1, min(n, K))
    if K < n:
        srt, order = torch.topk(a / m, K, dim=1, largest=True, sorted=True)
    else:
        srt, order = torch.sort(a / m, dim=1, descending=True)
    y = torch.sqrt(torch.cumsum(srt * srt, dim=1))  # (G, K), y[:, k-1] = y_k / m
    lam_s = lam_t / m
    tau_s = tau_t / m
    n = K
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    # 2 * score_k / m^2; where y_k <= lam the group is zero (same value as k = 0)
    raw = (y - lam_s) ** 2 - k * tau_s * tau_s
    score = torch.where(y > lam_s, raw, torch.zeros_like(raw))
    score = torch.cat([torch.zeros_like(score[:, :1]), score], dim=1)  # (G, n + 1)
    kstar = torch.argmax(score, dim=1, keepdim=True)  # first maximum -> smallest k
    y0 = torch.cat([torch.zeros_like(y[:, :1]), y], dim=1)
    ystar = torch.gather(y0, 1, kstar)  # (G, 1)
    factor = _shrink_factor(ystar, lam_s)
    keep_sorted = torch.arange(n, device=v.device).unsqueeze(0) < kstar
    keep = torch.zeros(v.shape, dtype=torch.bool, device=v.device).scatter(1, order, keep_sorted)
    return torch.where(keep, v * factor, torch.zeros_like(v))


def l0_l1_group_lasso(v: Tensor, lam: ParamLike, eta: ParamLike, beta: ParamLike) -> Tensor:
    """Exact prox of ``lam ||x||_2 + eta ||x||_0 + beta ||x||_1`` per row (methods.md end of 2.1).

    Equals ``l0_group_lasso(soft_threshold(v, beta), lam, eta)``.  All weights are already
    multiplied by the step ``s``; scalars or one value per row of the 2-D ``v``.
    """
    v = _check_2d(v, "l0_l1_group_lasso")
    _param(lam, "lam", v, v.shape[0], 2)
    _param(eta, "eta", v, v.shape[0], 2)
    return l0_group_lasso(soft_threshold(v, beta), lam, eta)


# ----------------------------------------------------------------------- tree proxes
def _check_tree(v: object, func: str) -> Tensor:
    v = _check_tensor(v)
    if v.dim() != 3:
        raise ConfigError(
            f"{func} expects v of shape (roots, columns, n); got shape {tuple(v.shape)} "
            f"(use mobileprune.math.groups.tree_view for a conv weight)"
        )
    return v


def _tree_params(v: Tensor, gamma, delta, alpha, transform_alpha: bool):
    R = v.shape[0]
    g = _param(gamma, "gamma", v, R, 3)
    d = _param(delta, "delta", v, R, 3)
    a = _param(alpha, "alpha", v, R, 3, _tau if transform_alpha else None)
    return g, d, a


def _tree_dp_chunk(v: Tensor, gamma: Tensor, delta: Tensor, tau: Tensor) -> Tensor:
    """Exact tree prox for a chunk of roots; parameters already shaped (R,1,1) or ()."""
    R, C, n = v.shape
    a = v.abs()
    m = _rowmax_scale(a, (1, 2))  # (R, 1, 1)
    srt, order = torch.sort(a / m, dim=2, descending=True)
    u = torch.sqrt(torch.cumsum(srt * srt, dim=2))
    u = torch.cat([torch.zeros_like(u[..., :1]), u], dim=2)  # (R, C, n+1): u_c(k)/m
    g_s = gamma / m
    d_s = (delta / m).reshape(R, 1)
    t_s = (tau / m).reshape(R, 1)
    A = torch.clamp(u - g_s, min=0) ** 2  # (R, C, n+1): A_c(k), A_c(0) = 0
    neg_inf = torch.full((R, n), -math.inf, dtype=v.dtype, device=v.device)
    best = A[:, 0, :]  # (R, n+1): best over column 0 alone, K = k_0
    choices = []
    for c in range(1, C):
        # cand[r, K, k] = best_prev[r, K - k] (or -inf), K = 0..K_prev + n, k = 0..n
        padded = torch.cat([neg_inf, best, neg_inf], dim=1)
        cand = padded.unfold(1, n + 1, 1).flip(-1)  # (R, K_new + 1, n + 1)
        tot = cand + A[:, c, :].unsqueeze(1)
        best, arg = tot.max(dim=2)
        choices.append(arg)
    K = torch.arange(best.shape[1], device=v.device, dtype=v.dtype)
    Z = torch.sqrt(best)  # (R, C n + 1)
    score = torch.clamp(Z - d_s, min=0) ** 2 - K * t_s * t_s  # 2 * objective gain / m^2
    Kstar = torch.argmax(score, dim=1, keepdim=True)  # (R, 1), first max -> smallest K
    Zstar = torch.gather(Z, 1, Kstar)
    root_factor = _shrink_factor(Zstar, d_s)
    # backtrack the per-column support sizes
    ks = [None] * C
    rem = Kstar
    for c in range(C - 1, 0, -1):
        kc = torch.gather(choices[c - 1], 1, rem)
        ks[c] = kc
        rem = rem - kc
    ks[0] = rem
    kc = torch.cat(ks, dim=1).unsqueeze(2)  # (R, C, 1)
    uc = torch.gather(u, 2, kc)
    col_factor = _shrink_factor(uc, g_s)
    keep_sorted = torch.arange(n, device=v.device).reshape(1, 1, n) < kc
    keep = torch.zeros_like(keep_sorted).scatter(2, order, keep_sorted)
    factor = col_factor * root_factor.unsqueeze(2)
    return torch.where(keep, v * factor, torch.zeros_like(v))


def tree_l0_group_lasso(v: Tensor, gamma: ParamLike, delta: ParamLike, alpha: ParamLike) -> Tensor:
    """Exact prox of the 2-level tree penalty with element l0 (methods.md section 2.2).

    ``v`` has shape ``(R, C, n)``: ``R`` independent roots, each with ``C`` child columns
    ``v[r, c]`` of ``n`` entries.  For every root returns the minimiser of
    ``1/2 ||x - v||^2 + delta ||x||_2 + gamma sum_c ||x_c||_2 + alpha ||x||_0``
    (``gamma``, ``delta``, ``alpha`` already multiplied by the step ``s``; scalars or one
    value per root).

    Method: for fixed supports the convex tree prox is the leaf-to-root composition, whose
    optimal value is ``1/2||v||^2 - 1/2 (Z - delta)_+^2 + alpha K`` with ``Z^2 = sum_c
    A_c(k_c)``, ``A_c(k) = ((u_c(k) - gamma)_+)^2`` and ``u_c(k)`` the norm of the ``k``
    largest entries of column ``c``.  A knapsack dynamic programme (max-plus convolution
    over the columns, vectorised over roots) gives ``best[K] = max sum_c A_c(k_c)`` s.t.
    ``sum_c k_c = K``; then ``K* = argmax_K 1/2 (sqrt(best[K]) - delta)_+^2 - alpha K``
    (ties to the smallest ``K``) and ``x_c = (1 - delta/Z)_+ (1 - gamma/u_c)_+ v_c`` on the
    ``k_c`` largest entries of each column, ``Z = sqrt(best[K*])``.

    Cost ``O(R C^2 n^2)`` time; roots are processed in chunks so that the ``(roots, C n,
    n)`` temporary stays below ~16M elements.
    """
    v = _check_tree(v, "tree_l0_group_lasso")
    g, d, tau = _tree_params(v, gamma, delta, alpha, True)
    R, C, n = v.shape
    if v.numel() == 0:
        return v.clone()
    per_root = max(1, C * n * (n + 1))
    chunk = max(1, _TREE_DP_MAX_ELEMS // per_root)
    if chunk >= R:
        return _tree_dp_chunk(v, g, d, tau)
    outs = []
    for s in range(0, R, chunk):  # memory-bounded chunks of roots, not single roots
        sl = slice(s, s + chunk)
        outs.append(_tree_dp_chunk(v[sl], *(p[sl] if p.dim() else p for p in (g, d, tau))))
    return torch.cat(outs, dim=0)


def tree_prox_composition(v: Tensor, gamma: ParamLike, delta: ParamLike, alpha: ParamLike) -> Tensor:
    """Leaf-to-root composition for the tree penalty of methods.md section 2.2 -- NOT exact.

    Hard threshold at ``sqrt(2 alpha)`` (element l0), then column group shrink at
    ``gamma``, then root group shrink at ``delta``, for ``v`` of shape ``(R, C, n)``.
    For purely convex tree norms this composition is the exact prox (Jenatton et al.
    2011), but with the l0 term it is only a heuristic: its objective is never better and
    sometimes strictly worse than :func:`tree_l0_group_lasso`.  Cheaper: ``O(R C n)``.
    Weights are already multiplied by the step ``s``; scalars or one value per root.
    """
    v = _check_tree(v, "tree_prox_composition")
    g, d, tau = _tree_params(v, gamma, delta, alpha, True)
    if v.numel() == 0:
        return v.clone()
    x = torch.where(v.abs() > tau, v, torch.zeros_like(v))
    x = x * _shrink_factor(_safe_norm(x, (2,)), g)
    return x * _shrink_factor(_safe_norm(x, (1, 2)), d)


# ---------------------------------------------------------------------- objectives
def objective_l0_group_lasso(x: Tensor, v: Tensor, lam: ParamLike, eta: ParamLike,
                             beta: ParamLike = 0.0) -> Tensor:
    """Row-wise prox objective of methods.md section 2.1 (plus optional l1 term).

    Returns the ``(G,)`` tensor ``1/2 ||x_g - v_g||^2 + lam ||x_g||_2 + eta ||x_g||_0 +
    beta ||x_g||_1`` for 2-D ``x`` and ``v`` of equal shape, in their dtype (plain
    arithmetic: 1e30-scale entries overflow in float32).
    """
    x = _check_2d(x, "objective_l0_group_lasso")
    v = _check_2d(v, "objective_l0_group_lasso")
    if x.shape != v.shape:
        raise ConfigError(f"x and v must have the same shape; got {tuple(x.shape)} and {tuple(v.shape)}")
    G = v.shape[0]
    lam_t = _param(lam, "lam", v, G, 1)
    eta_t = _param(eta, "eta", v, G, 1)
    beta_t = _param(beta, "beta", v, G, 1)
    return (0.5 * ((x - v) ** 2).sum(1) + lam_t * torch.linalg.vector_norm(x, dim=1)
            + eta_t * (x != 0).sum(1).to(v.dtype) + beta_t * x.abs().sum(1))


def objective_tree(x: Tensor, v: Tensor, gamma: ParamLike, delta: ParamLike,
                   alpha: ParamLike) -> Tensor:
    """Per-root objective of the tree prox of methods.md section 2.2.

    Returns the ``(R,)`` tensor ``1/2 ||x - v||^2 + delta ||x||_2 + gamma sum_c ||x_c||_2
    + alpha ||x||_0`` for ``x`` and ``v`` of equal shape ``(R, C, n)``.
    """
    x = _check_tree(x, "objective_tree")
    v = _check_tree(v, "objective_tree")
    if x.shape != v.shape:
        raise ConfigError(f"x and v must have the same shape; got {tuple(x.shape)} and {tuple(v.shape)}")
    R = v.shape[0]
    g = _param(gamma, "gamma", v, R, 1)
    d = _param(delta, "delta", v, R, 1)
    a = _param(alpha, "alpha", v, R, 1)
    return (0.5 * ((x - v) ** 2).sum((1, 2)) + d * torch.linalg.vector_norm(x, dim=(1, 2))
            + g * torch.linalg.vector_norm(x, dim=2).sum(1)
            + a * (x != 0).sum((1, 2)).to(v.dtype))
