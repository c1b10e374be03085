"""MobilePrune's regularisers on a model: which weights, which prox (seed ``000_659fe8f6b4e48b5b``).

Problem (``docs/methods.md`` section 2)::

    min_W  F(W) = H(W) + sum_i r_i(W_i),   r_i = lam ||.||_{2,groups} + eta ||.||_0 (+ ...)

with ``H`` the training loss and ``r_i`` the :class:`~mobileprune.sparsity.regularizers.Regularizer`
of layer ``i``'s weight (biases and unselected layers are not regularised).
:class:`ProximalPruner` selects the weights and holds one regulariser per weight: its
:meth:`~ProximalPruner.prox_step` is the proximal step of the *practical proximal
variant* (an ordinary optimizer step on the loss, then ``W_i <- prox_{lr r_i}(W_i)``
with the optimizer's learning rate as the step), :meth:`~ProximalPruner.masks` the
supports for masked retraining. The training loops that use it, PALM
(:func:`~mobileprune.pipeline.palm.palm_step`, methods.md section 2.3), the proximal
epoch and the round schedule of the public MobilePrune code, are in
:mod:`mobileprune.pipeline.palm`.

Use it inside your own training loop::

    pruner = ProximalPruner(model, {"method": "l0_group_lasso", "lam": 1e-4, "eta": 1e-6})
    for x, y in loader:
        loss = criterion(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        pruner.prox_step(optimizer=opt)          # or pruner.prox_step(lr)
    masks = pruner.masks()                      # for MaskEnforcer during retraining

Config of :class:`ProximalPruner` (a dict or a YAML file)::

    method: l0_group_lasso     # regulariser of every prunable layer (omit: only `layers`)
    lam: 1.0e-4                # group-norm weight
    eta: 1.0e-6                # l0 weight
    beta: 0.0                  # l1 weight (l1, sparse_group_lasso, l0_l1_group_lasso)
    grouping: null             # default: linear_in for a 2-D weight, filter for conv;
                               # unit: whole output units (hidden units of an RNN
                               # weight across its gate blocks, attention heads...)
    types: [Linear, Conv2d]    # prunable layer types (default: all supported types)
    exclude: [fc3]             # names / "re:" / "type:" patterns never regularised
    layers:                    # per-layer overrides, exact names first, then patterns
      fc1: {lam: 2.0e-4}       # no 'method': overrides the top-level values
      "re:conv.*": {method: tree_l0_group_lasso, lam: 1.0e-4, eta: 1.0e-6}
                               # own 'method': a complete spec, inherits nothing

The selection follows :mod:`mobileprune.sparsity.targets` (:func:`~mobileprune.sparsity.targets.select`):
every prunable weight (Linear, Conv, ConvTranspose, RNN / LSTM / GRU ``weight_ih_l*`` /
``weight_hh_l*``, MultiheadAttention ``in_proj_weight`` or ``q/k/v_proj_weight``,
Embedding) named as there (``conv1``, ``lstm.weight_hh_l0``, ``attn.out_proj``); keys
are exact names, module names of multi-weight modules, ``re:<regex>`` (full match),
globs or ``type:<ClassName>``; an unknown exact name, an exclude name that is not a
prunable weight, or a pattern matching nothing raises
:class:`~mobileprune.errors.ConfigError`. Groupings act on the weight tensor as
:mod:`mobileprune.math.groups` defines them (a 2-D weight defaults to ``linear_in``, its
columns; a ConvTranspose weight ``(C_in, C_out, *k)`` to ``filter``, its dim 0).
``grouping: unit`` groups by output unit as :mod:`mobileprune.sparsity.targets` defines it
per weight (:func:`unit_spec`): one hidden unit of a ``weight_ih_l*`` / ``weight_hh_l*``
(its rows in every gate block: 4 for LSTM, 3 for GRU), one attention head, one filter;
each weight is regularised on its own (a head goes from the model when it goes from each
of its weights).
"""

from __future__ import annotations

import math
import numbers
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mobileprune.errors import ConfigError
from mobileprune.sparsity.regularizers import Regularizer, _check_weight_param
from mobileprune.sparsity.targets import WeightSlot, load_yaml, parse_selection, select

__all__ = ["ProximalPruner", "check_finite", "unit_spec"]

#: names that lived here before the training loops moved to mobileprune.pipeline.palm
_MOVED_TO_PALM = frozenset({"palm_step", "palm_epoch", "proximal_epoch", "run_rounds"})


def __getattr__(name: str) -> Any:
    """``sparsity.proximal.palm_step`` & co. keep working (with a DeprecationWarning): they
    are imported from :mod:`mobileprune.pipeline.palm` on first use, which keeps this
    module free of imports from the pipeline layer."""
    if name in _MOVED_TO_PALM:
        import importlib

        warnings.warn(f"mobileprune.sparsity.proximal.{name} moved to mobileprune.pipeline.palm."
                      f"{name} (or use mobileprune.{name})", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("mobileprune.pipeline.palm"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_REG_KEYS = frozenset({"method", "lam", "eta", "beta", "lam_root", "grouping"})
_TOP_KEYS = _REG_KEYS | {"types", "exclude", "layers", "name"}


# ----------------------------------------------------------------------- helpers
def check_finite(model: nn.Module, where: str = "") -> None:
    """Raise ``FloatingPointError`` naming the first parameter with NaN / inf entries."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise FloatingPointError(
                    f"parameter {name!r} has NaN/inf values{' ' + where if where else ''}; "
                    "training diverged (lower the learning rate, or raise L0 / gamma for PALM)"
                )


def _positive(value: Any, name: str, *, strict: bool = True, above: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    x = float(value)
    if (x <= above) if strict else (x < above):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {above:g}, got {x}")
    return x


def _nonneg_int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _parse_config(config: Any) -> dict[str, Any]:
    if isinstance(config, Regularizer):
        config = config.to_dict()
    if isinstance(config, (str, Path)):
        config = load_yaml(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"a proximal pruning config must be a mapping, got {type(config).__name__}")
    unknown = set(config) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in proximal pruning config; allowed: {sorted(_TOP_KEYS)}")
    return dict(config)


#: ``grouping: unit``: one group per output unit as the targets define it (below)
UNIT = "unit"


def unit_spec(spec: Mapping[str, Any], slot: WeightSlot) -> dict[str, Any]:
    """``spec`` with ``grouping: unit`` replaced by the output-unit groups of ``slot``
    (:class:`~mobileprune.sparsity.targets.WeightSlot`): a head of an attention weight
    (its q, k, v rows of ``in_proj_weight``, its rows of ``q/k/v_proj_weight``, its columns
    of ``out_proj``), else the ``filter`` structure: a hidden unit of an RNN weight (its
    row in every gate block), a filter / Linear row, a ConvTranspose output channel, an
    embedding dimension. Other specs are returned as they are."""
    if spec.get("grouping") != UNIT:
        return dict(spec)
    layout = slot.structures.get("head") or slot.structures.get("filter")
    if layout is None:
        raise ConfigError(f"grouping 'unit' is not defined for {slot.name!r} ({slot.type_name}): "
                          f"{slot.notes.get('filter', 'it has no output-unit groups')}")
    return {**spec, "grouping": layout[0], "blocks": layout[1], "unit": layout[2]}


def _warn_zero_weights(regs: Mapping[str, Regularizer], names: Mapping[str, str]) -> None:
    """Warn naming the weights whose regulariser has every penalty weight 0 (its prox is
    the identity: :meth:`ProximalPruner.prox_step` leaves them as they are)."""
    from mobileprune.sparsity.regularizers import METHOD_PARAMS

    idle = [names[p] for p, r in regs.items()
            if not any(getattr(r, k) for k in METHOD_PARAMS[r.method] if k != "lam_root")
            and not (r.method == "tree_l0_group_lasso" and r.root_weight)]
    if idle:
        warnings.warn(f"the regulariser of {len(idle)} weight(s) has every penalty weight 0, so "
                      f"prox_step prunes nothing there: {', '.join(idle)}; give lam / eta / beta > 0",
                      UserWarning, stacklevel=3)


# ------------------------------------------------------------------------ pruner
class ProximalPruner:
    """Layer selection + one :class:`Regularizer` per selected weight (methods.md 2, seed 000).

    Args:
        model: any ``nn.Module``.
        config: dict, YAML path, or a single :class:`Regularizer` (applied to every
            prunable layer); see the module docstring.
        optimizer: optional default optimizer whose learning rates :meth:`prox_step`
            uses as steps when called without ``step``.

    Attributes:
        regularizers: ``{weight parameter name: Regularizer}`` in model order.
        layer_names: ``{weight parameter name: weight name}`` (``conv1``, ``lstm.weight_hh_l0``).
        dense: ``{weight name: why it is not regularised}`` for the other prunable weights.
        lipschitz: ``{block (module) name: last accepted L}`` kept by :func:`~mobileprune.pipeline.palm.palm_step`.
    """

    def __init__(self, model: nn.Module, config: Mapping[str, Any] | Regularizer | str | Path,
                 *, optimizer: torch.optim.Optimizer | None = None) -> None:
        cfg = _parse_config(config)
        types, exclude, layers = parse_selection(cfg, "regulariser spec")
        for key, spec in layers.items():
            if not isinstance(spec, Mapping):
                raise ConfigError(f"spec of layer {key!r} must be a mapping, got {spec!r}")
            bad = set(spec) - _REG_KEYS
            if bad:
                raise ConfigError(f"unknown key(s) {sorted(bad)} for layer {key!r}; allowed: {sorted(_REG_KEYS)}")
        base = {k: cfg[k] for k in _REG_KEYS if k in cfg and cfg[k] is not None}
        if "method" in base:  # validate the top-level spec once, without a layer name
            Regularizer.from_dict({**base, "grouping": None} if base.get("grouping") == UNIT else base)
        else:  # parameters without a method: validate their values now for a clear message
            for k in ("lam", "eta", "beta", "lam_root"):
                if k in base:
                    _check_weight_param(base[k], k)

        self.model = model
        self.regularizers: dict[str, Regularizer] = {}
        self.layer_names: dict[str, str] = {}  # param name -> weight name (targets)
        self._params: dict[str, nn.Parameter] = {}
        chosen, self.dense = select(model, layers, exclude, "method" in base, types, "'layers'")
        for name, (slot, key) in chosen.items():
            spec = None if key is None else layers[key]
            merged = dict(base) if spec is None else dict(spec) if "method" in spec else {**base, **spec}
            if "method" not in merged:
                raise ConfigError(
                    f"layer {name!r} has no regulariser 'method' (give one at the top level or in its entry)"
                )
            w = slot.weight
            try:
                reg = Regularizer.from_dict(unit_spec(merged, slot))
                reg.check(w)
            except ConfigError as exc:
                raise ConfigError(f"layer {name!r} (weight shape {tuple(w.shape)}): {exc}") from None
            self.regularizers[slot.param_name] = reg
            self.layer_names[slot.param_name] = name
            self._params[slot.param_name] = w
        if not self.regularizers:
            raise ConfigError("the proximal pruning config selects no layer of this model")
        _warn_zero_weights(self.regularizers, self.layer_names)
        self.optimizer = optimizer
        self.lipschitz: dict[str, float] = {}
        self.steps = 0
        self.increases = 0

    # -------------------------------------------------------------- penalties
    def penalty_value(self) -> Tensor:
        """``sum_i r_i(W_i)`` over the selected weights (a detached 0-d tensor, float64)."""
        total = torch.zeros((), dtype=torch.float64)
        for pname, reg in self.regularizers.items():
            total = total + reg.value(self._params[pname]).detach().to("cpu", torch.float64)
        return total

    def _lr_map(self, optimizer: torch.optim.Optimizer) -> dict[int, float]:
        out = {}
        for group in optimizer.param_groups:
            lr = group["lr"]
            lr = float(lr.item() if isinstance(lr, Tensor) else lr)
            for p in group["params"]:
                out[id(p)] = lr
        return out

    @torch.no_grad()
    def prox_step(self, step: float | None = None, *, optimizer: torch.optim.Optimizer | None = None) -> None:
        """The practical proximal variant: ``W_i <- prox_{s r_i}(W_i)`` in place.

        Call after ``optimizer.step()``.  ``s`` is ``step`` if given, else the current
        learning rate of the parameter group holding ``W_i`` in ``optimizer`` (or in the
        optimizer given at construction).  With Adam this is a heuristic (Adam's
        effective step is per coordinate).  Raises ``FloatingPointError`` if a weight
        holds NaN/inf before the prox (which would otherwise hide it).
        """
        lrs = None
        if step is None:
            opt = optimizer if optimizer is not None else self.optimizer
            if opt is None:
                raise ConfigError("prox_step needs a step (learning rate) or an optimizer")
            lrs = self._lr_map(opt)
        for pname, reg in self.regularizers.items():
            p = self._params[pname]
            if not bool(torch.isfinite(p).all()):
                raise FloatingPointError(
                    f"weight {pname!r} has NaN/inf values before the proximal step; training "
                    "diverged (lower the learning rate)"
                )
            if lrs is not None:
                if id(p) not in lrs:
                    raise ConfigError(f"weight {pname!r} is not optimised by the given optimizer")
                s = lrs[id(p)]
            else:
                s = step
            p.copy_(reg.prox(p, s))
        self.steps += 1

    # ------------------------------------------------------------------ masks
    @torch.no_grad()
    def masks(self) -> dict[str, Tensor]:
        """``{weight name: W != 0}`` for the selected weights (for :class:`MaskEnforcer`)."""
        return {pname: self._params[pname].detach() != 0 for pname in self.regularizers}

    @torch.no_grad()
    def nonzero(self) -> dict[str, int]:
        """Number of nonzero entries of every selected weight."""
        return {pname: int((self._params[pname] != 0).sum()) for pname in self.regularizers}

    @torch.no_grad()
    def project_nonzero(self, budget: int) -> bool:
        """Trim the selected weights to at most ``budget`` nonzeros in all: each weight is
        projected onto ``{nnz <= k}`` (its ``k`` largest magnitudes, seed 003 Eq. 6) with
        ``k`` proportional to its current count
        (:func:`~mobileprune.math.projection.proportional_counts`). Returns False (and changes
        nothing) if the weights are already within the budget."""
        from mobileprune.math.projection import project_topk, proportional_counts

        nnz = self.nonzero()
        if sum(nnz.values()) <= budget:
            return False
        for (pname, _), k in zip(nnz.items(), proportional_counts(list(nnz.values()), budget)):
            p = self._params[pname]
            p.copy_(project_topk(p, k)[0])
        return True

    # --------------------------------------------------------------- schedule
    def increase(self, lam_factor: float = 1.0, eta_factor: float = 1.0,
                 beta_factor: float | None = None) -> None:
        """Multiply every layer's ``lam`` (and ``lam_root``) by ``lam_factor``, ``eta`` by
        ``eta_factor`` and ``beta`` by ``beta_factor`` (default ``lam_factor``)."""
        new = {k: r.scaled(lam_factor, eta_factor, beta_factor) for k, r in self.regularizers.items()}
        self.regularizers = new
        self.increases += 1

    def hyperparameters(self) -> dict[str, dict[str, Any]]:
        """``{weight name: regulariser spec}`` (plain dicts)."""
        return {k: r.to_dict() for k, r in self.regularizers.items()}

    # --------------------------------------------------------------- state io
    def state_dict(self) -> dict[str, Any]:
        """Regularisers (after any :meth:`increase`), PALM Lipschitz estimates, counters."""
        return {"regularizers": self.hyperparameters(), "lipschitz": dict(self.lipschitz),
                "steps": self.steps, "increases": self.increases}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the selected weights must be the same."""
        try:
            regs = state["regularizers"]
        except (KeyError, TypeError):
            raise ConfigError("proximal pruner state has no 'regularizers'") from None
        if set(regs) != set(self.regularizers):
            raise ConfigError(
                f"proximal pruner state names {sorted(regs)}, this pruner has {sorted(self.regularizers)}"
            )
        new = {}
        for pname in self.regularizers:  # keep model order
            reg = Regularizer.from_dict(regs[pname])
            reg.check(self._params[pname])
            new[pname] = reg
        self.regularizers = new
        self.lipschitz = {str(k): float(v) for k, v in dict(state.get("lipschitz", {})).items()}
        self.steps = int(state.get("steps", 0))
        self.increases = int(state.get("increases", 0))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {r!r}" for k, r in self.regularizers.items())
        return f"ProximalPruner({inner})"
