"""Regularisers of MobilePrune and their proxes on a layer weight (seed ``000_659fe8f6b4e48b5b``).

A :class:`Regularizer` bundles one penalty ``r`` of ``docs/methods.md`` section 2 with
the grouping of the layer weight it acts on.  It knows its value ``r(W)``
(:meth:`Regularizer.value`, used for logging the objective ``H(W) + sum_i r_i(W_i)``)
and the proximal map ``prox_{s r}(V) = argmin_X 1/2 ||X - V||^2 + s r(X)``
(:meth:`Regularizer.prox`): the weight is cut into groups with
:func:`mobileprune.math.groups.to_groups`, the exact prox of :mod:`mobileprune.math.prox` is
applied with every penalty weight multiplied by the step ``s``, and the result is put
back with :func:`mobileprune.math.groups.from_groups`.

Penalty weights (all non-negative finite numbers): ``lam`` weighs the (plain,
non-squared) l2 norms of groups (or of the whole layer for ``l2``), ``eta`` the l0 norm
(number of nonzeros), ``beta`` the l1 norm, ``lam_root`` the root groups of the tree.
A method accepts only the weights of its own terms; a nonzero weight it does not use
raises :class:`~mobileprune.errors.ConfigError` (so ``Regularizer("l1", lam=1e-4)`` is an
error rather than a silent no-op):

* ``l0``: ``eta ||W||_0``; prox = hard threshold at ``sqrt(2 eta s)`` (2.3).
* ``l1``: ``beta ||W||_1``; soft threshold (2.3).
* ``l2``: ``lam ||W||_2`` on the whole layer (Frobenius); ``W (1 - lam s/||W||)_+`` (2.3).
* ``group_lasso``: ``lam sum_g ||W_g||_2``; group shrink (2.3).
* ``sparse_group_lasso``: ``lam sum_g ||W_g||_2 + beta ||W||_1``; soft threshold, then
  group shrink (2.3).
* ``l0_group_lasso``: ``lam sum_g ||W_g||_2 + eta ||W||_0``; exact closed form (2.1).
* ``l0_l1_group_lasso``: ``lam sum_g ||W_g||_2 + eta ||W||_0 + beta ||W||_1``; soft
  threshold, then the closed form of 2.1 (end of 2.1).
* ``tree_l0_group_lasso``: ``lam_root sum_r ||W_r||_2 + lam sum_{r,c} ||W_rc||_2 + eta
  ||W||_0`` (roots ``r``, child columns ``c``); exact tree dynamic programme (2.2).

Groupings (``grouping=None`` picks the default of the public MobilePrune code): a 2-D
(Linear ``(out, in)``) weight uses ``"linear_in"`` (one group per column = all outgoing
weights of one input neuron), a conv weight ``(F, C, *k)`` uses ``"filter"``.  Any
grouping of :mod:`mobileprune.math.groups` can be given instead (``"linear_out"``,
``"channel"``, ``"shape"``, ``"weight"``...); one that does not fit the weight (e.g.
``"linear_in"`` on a conv weight) raises :class:`ConfigError`.  The tree method uses
:func:`mobileprune.math.groups.tree_view` (root = input channel, child columns = GEMM
columns, leaves = single weights; for a Linear weight the degenerate tree with one
column per input neuron); its grouping is ``None`` or ``"tree"``.  ``l0``, ``l1`` and
``l2`` do not use a grouping (a valid grouping name given to them is ignored).

``lam_root=None`` (the default) makes the tree's root weight equal to ``lam``.

``blocks`` / ``unit`` (default 1) make each group a *unit* of several rows of the
``filter`` (or ``channel``) grouping, :func:`mobileprune.math.groups.to_unit_groups`: with
``blocks=4`` the groups of an LSTM weight ``(4H, C)`` are its hidden units (row ``h`` of
every gate block), with ``blocks=3, unit=E // heads`` those of an attention
``in_proj_weight`` its heads. ``ProximalPruner``'s ``grouping: unit`` sets them per weight.

Biases are not regularised: a :class:`Regularizer` is meant for a layer's ``weight``
(:class:`mobileprune.sparsity.proximal.ProximalPruner` applies it to weights only; biases take plain
gradient steps).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mobileprune.math import prox as P
from mobileprune.errors import ConfigError
from mobileprune.math.groups import (Grouping, from_tree_view, from_unit_groups, group_norms, to_unit_groups,
                                     tree_view, unit_group_shape)

__all__ = ["METHODS", "METHOD_PARAMS", "Regularizer", "default_grouping"]

METHODS: tuple[str, ...] = (
    "l0",
    "l1",
    "l2",
    "group_lasso",
    "sparse_group_lasso",
    "l0_group_lasso",
    "l0_l1_group_lasso",
    "tree_l0_group_lasso",
)

#: The penalty weights each method uses (any other weight must be 0 / unset).
METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "l0": ("eta",),
    "l1": ("beta",),
    "l2": ("lam",),
    "group_lasso": ("lam",),
    "sparse_group_lasso": ("lam", "beta"),
    "l0_group_lasso": ("lam", "eta"),
    "l0_l1_group_lasso": ("lam", "eta", "beta"),
    "tree_l0_group_lasso": ("lam", "eta", "lam_root"),
}

_UNGROUPED = frozenset({"l0", "l1", "l2"})
_TREE = "tree_l0_group_lasso"
_GROUPING_NAMES = tuple(g.value for g in Grouping) + ("tree",)


def _check_weight_param(value: Any, name: str) -> float:
    """A non-negative finite real number, as a float (ConfigError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise ConfigError(f"{name} must be a non-negative finite number, got {value!r}")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ConfigError(f"{name} must be a non-negative finite number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    x = float(value)
    if math.isnan(x) or math.isinf(x):
        raise ConfigError(f"{name} must be a non-negative finite number, got {x}")
    if x < 0:
        raise ConfigError(f"{name} must be non-negative, got {x}")
    return x


def _check_step(step: Any) -> float:
    if isinstance(step, bool) or not isinstance(step, (numbers.Real, Tensor)):
        raise ConfigError(f"step must be a non-negative finite number, got {step!r}")
    x = float(step.item() if isinstance(step, Tensor) else step)
    if not math.isfinite(x) or x < 0:
        raise ConfigError(f"step must be a non-negative finite number, got {x}")
    return x


def _check_layout(blocks: Any, unit: Any, method: str, grouping: str | None) -> tuple[int, int]:
    """Validate the unit layout of :func:`mobileprune.math.groups.to_unit_groups`: positive
    ints, other than ``(1, 1)`` only for a grouped method with grouping ``filter`` (blocks
    and unit) or ``channel`` (unit)."""
    for name, v in (("blocks", blocks), ("unit", unit)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if (blocks, unit) != (1, 1) and (method in _UNGROUPED or method == _TREE
                                     or grouping not in ("filter", "channel")):
        raise ConfigError(f"blocks={blocks}, unit={unit} (unit groups) need a group method and the "
                          f"'filter' or 'channel' grouping, got {method!r} with grouping {grouping!r}")
    return int(blocks), int(unit)


def default_grouping(layer: nn.Module | Tensor | Sequence[int]) -> str:
    """Grouping of the public MobilePrune code for a layer (or its weight / weight shape).

    ``nn.Linear`` or a 2-D weight -> ``"linear_in"`` (one group per input neuron);
    a conv layer or a weight with >= 3 dims -> ``"filter"``.  Anything else raises
    :class:`ConfigError`.
    """
    if isinstance(layer, nn.Linear):
        return Grouping.LINEAR_IN.value
    if isinstance(layer, nn.modules.conv._ConvNd):
        return Grouping.FILTER.value
    if isinstance(layer, nn.Module):
        w = getattr(layer, "weight", None)
        if not isinstance(w, Tensor):
            raise ConfigError(f"{type(layer).__name__} has no weight tensor to group")
        shape = tuple(w.shape)
    elif isinstance(layer, Tensor):
        shape = tuple(layer.shape)
    else:
        shape = tuple(int(s) for s in layer)
    if len(shape) == 2:
        return Grouping.LINEAR_IN.value
    if len(shape) >= 3:
        return Grouping.FILTER.value
    raise ConfigError(
        f"a weight of shape {shape} has no default grouping (Linear (out, in) or conv "
        f"(F, C, *k) expected); pass grouping='weight' or use 'l0' / 'l1' / 'l2'"
    )


class Regularizer:
    """One MobilePrune penalty on a layer weight (methods.md section 2, seed 000).

    Args:
        method: one of :data:`METHODS`.
        lam: weight of the (non-squared) group l2 norms (whole-layer norm for ``l2``;
            child-column groups for the tree).
        eta: weight of the l0 norm.
        beta: weight of the l1 norm.
        grouping: a grouping name of :mod:`mobileprune.math.groups`, ``"tree"`` for the tree
            method, or ``None`` for the default (``linear_in`` for Linear, ``filter`` for
            conv).
        lam_root: weight of the root (input-channel) groups of the tree; ``None`` means
            ``lam``.  Only for ``tree_l0_group_lasso``.

    Raises :class:`ConfigError` for an unknown method or grouping, a negative / NaN /
    infinite weight (naming it), or a nonzero weight the method does not use.
    """

    __slots__ = ("method", "lam", "eta", "beta", "lam_root", "grouping", "blocks", "unit")

    def __init__(self, method: str, lam: float = 0.0, eta: float = 0.0, beta: float = 0.0,
                 grouping: str | Grouping | None = None, *, lam_root: float | None = None,
                 blocks: int = 1, unit: int = 1) -> None:
        if not isinstance(method, str) or method.lower() not in METHODS:
            raise ConfigError(f"unknown regulariser method {method!r}; expected one of {', '.join(METHODS)}")
        method = method.lower()
        self.method = method
        self.lam = _check_weight_param(lam, "lam")
        self.eta = _check_weight_param(eta, "eta")
        self.beta = _check_weight_param(beta, "beta")
        self.lam_root = None if lam_root is None else _check_weight_param(lam_root, "lam_root")
        used = METHOD_PARAMS[method]
        for name in ("lam", "eta", "beta", "lam_root"):
            val = getattr(self, name)
            if name not in used and val:
                raise ConfigError(
                    f"method {method!r} does not use {name!r} (got {name}={val}); it takes "
                    f"{', '.join(repr(u) for u in used)}"
                )
        if grouping is not None:
            if isinstance(grouping, Grouping):
                grouping = grouping.value
            if not isinstance(grouping, str) or grouping.lower() not in _GROUPING_NAMES:
                raise ConfigError(f"unknown grouping {grouping!r}; expected one of {', '.join(_GROUPING_NAMES)}")
            grouping = grouping.lower()
            if method == _TREE and grouping != "tree":
                raise ConfigError(
                    f"method {_TREE!r} uses the tree of groups.tree_view; grouping must be None or "
                    f"'tree', got {grouping!r}"
                )
            if grouping == "tree" and method != _TREE:
                raise ConfigError(f"grouping 'tree' is only for method {_TREE!r}, not {method!r}")
        self.grouping = grouping
        self.blocks, self.unit = _check_layout(blocks, unit, method, grouping)

    # ------------------------------------------------------------------ helpers
    @property
    def root_weight(self) -> float:
        """Effective root weight of the tree (``lam_root``, or ``lam`` when unset)."""
        return self.lam if self.lam_root is None else self.lam_root

    def resolve_grouping(self, weight: Tensor | Sequence[int]) -> str | None:
        """The grouping used on ``weight`` (``None`` for l0 / l1 / l2, ``"tree"`` for the tree).

        Raises :class:`ConfigError` when the grouping does not fit the weight's shape.
        """
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else tuple(int(s) for s in weight)
        if self.method in _UNGROUPED:
            return None
        if self.method == _TREE:
            if len(shape) < 2:
                raise ConfigError(
                    f"method {_TREE!r} needs a Linear (out, in) or conv (F, C, *k) weight; got shape {shape}"
                )
            return "tree"
        g = self.grouping if self.grouping is not None else default_grouping(shape)
        unit_group_shape(shape, g, self.blocks, self.unit)  # ConfigError if it does not fit
        return g

    def check(self, weight: Tensor | Sequence[int]) -> None:
        """Raise :class:`ConfigError` if this regulariser cannot act on ``weight``."""
        self.resolve_grouping(weight)

    # ---------------------------------------------------------------- value / prox
    def value(self, w: Tensor) -> Tensor:
        """``r(w)`` as a 0-d tensor (w's dtype and device), see the table of the module.

        Group norms are plain (non-squared) Euclidean norms; ``||w||_0`` counts nonzeros.
        """
        if not isinstance(w, Tensor) or not w.is_floating_point():
            raise ConfigError("value() needs a floating-point tensor")
        w = w.detach()
        g = self.resolve_grouping(w)
        total = w.new_zeros(())
        if self.eta:
            total = total + self.eta * (w != 0).sum().to(w.dtype)
        if self.beta:
            total = total + self.beta * w.abs().sum()
        if self.method == "l2":
            if self.lam:
                total = total + self.lam * torch.linalg.vector_norm(w)
        elif self.method == _TREE:
            t = tree_view(w)
            if self.lam:
                total = total + self.lam * torch.linalg.vector_norm(t, dim=2).sum()
            root = self.root_weight
            if root:
                total = total + root * torch.linalg.vector_norm(t, dim=(1, 2)).sum()
        elif g is not None and self.lam:
            total = total + self.lam * group_norms(w, g, self.blocks, self.unit).sum()
        return total

    def prox(self, w: Tensor, step: float) -> Tensor:
        """``prox_{step * r}(w)``: a new tensor of ``w``'s shape, dtype and device.

        Every penalty weight is multiplied by ``step`` (>= 0) before calling the exact
        prox of :mod:`mobileprune.math.prox` on the groups of ``w``; ``w`` is not modified and
        no autograd graph is recorded.
        """
        if not isinstance(w, Tensor) or not w.is_floating_point():
            raise ConfigError("prox() needs a floating-point tensor")
        s = _check_step(step)
        g = self.resolve_grouping(w)
        with torch.no_grad():
            v = w.detach()
            m = self.method
            if m == "l0":
                return P.hard_threshold(v, self.eta * s)
            if m == "l1":
                return P.soft_threshold(v, self.beta * s)
            if m == "l2":
                return P.l2_shrink(v, self.lam * s)
            if m == _TREE:
                out = P.tree_l0_group_lasso(tree_view(v), self.lam * s, self.root_weight * s, self.eta * s)
                return from_tree_view(out, v.shape)
            rows = to_unit_groups(v, g, self.blocks, self.unit)
            if m == "group_lasso":
                out = P.group_lasso(rows, self.lam * s)
            elif m == "sparse_group_lasso":
                out = P.sparse_group_lasso(rows, self.lam * s, self.beta * s)
            elif m == "l0_group_lasso":
                out = P.l0_group_lasso(rows, self.lam * s, self.eta * s)
            else:  # l0_l1_group_lasso
                out = P.l0_l1_group_lasso(rows, self.lam * s, self.eta * s, self.beta * s)
            return from_unit_groups(out, g, v.shape, self.blocks, self.unit)

    # ------------------------------------------------------------ schedule / io
    def scaled(self, lam_factor: float = 1.0, eta_factor: float = 1.0,
               beta_factor: float | None = None) -> "Regularizer":
        """A copy with ``lam`` (and ``lam_root``) times ``lam_factor``, ``eta`` times
        ``eta_factor`` and ``beta`` times ``beta_factor`` (default: ``lam_factor``)."""
        lf = _check_weight_param(lam_factor, "lam_factor")
        ef = _check_weight_param(eta_factor, "eta_factor")
        bf = lf if beta_factor is None else _check_weight_param(beta_factor, "beta_factor")
        return Regularizer(self.method, self.lam * lf, self.eta * ef, self.beta * bf, self.grouping,
                           lam_root=None if self.lam_root is None else self.lam_root * lf,
                           blocks=self.blocks, unit=self.unit)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-serialisable) that :meth:`from_dict` reads back."""
        d: dict[str, Any] = {"method": self.method, "lam": self.lam, "eta": self.eta,
                             "beta": self.beta, "grouping": self.grouping}
        if self.lam_root is not None:
            d["lam_root"] = self.lam_root
        if (self.blocks, self.unit) != (1, 1):
            d.update(blocks=self.blocks, unit=self.unit)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Regularizer":
        """Build from a mapping with keys ``method`` and optionally ``lam``, ``eta``,
        ``beta``, ``grouping``, ``lam_root`` (unknown keys raise :class:`ConfigError`)."""
        if isinstance(d, Regularizer):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"a regulariser spec must be a mapping, got {type(d).__name__}")
        allowed = {"method", "lam", "eta", "beta", "grouping", "lam_root", "blocks", "unit"}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in regulariser spec; allowed: {sorted(allowed)}")
        if "method" not in d:
            raise ConfigError(f"regulariser spec needs a 'method' (one of {', '.join(METHODS)})")
        return cls(d["method"], d.get("lam", 0.0), d.get("eta", 0.0), d.get("beta", 0.0),
                   d.get("grouping"), lam_root=d.get("lam_root"), blocks=d.get("blocks", 1),
                   unit=d.get("unit", 1))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Regularizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        parts = [repr(self.method)]
        for name in METHOD_PARAMS[self.method]:
            val = getattr(self, name)
            if val is not None:
                parts.append(f"{name}={val:g}")
        if self.grouping is not None:
            parts.append(f"grouping={self.grouping!r}")
        if (self.blocks, self.unit) != (1, 1):
            parts.append(f"blocks={self.blocks}, unit={self.unit}")
        return f"Regularizer({', '.join(parts)})"
