"""MobilePrune optimisation: PALM and the practical proximal variant (seed ``000_659fe8f6b4e48b5b``).

Problem (``docs/methods.md`` section 2)::

    min_W  F(W) = H(W) + sum_i r_i(W_i),   r_i = lam ||.||_{2,groups} + eta ||.||_0 (+ ...)

with ``H`` the training loss and ``r_i`` the :class:`~mobileprune.sparsity.regularizers.Regularizer`
of layer ``i``'s weight (biases and unselected layers are not regularised).

Two ways to optimise it:

* :func:`palm_step` / :func:`palm_epoch` -- PALM (methods.md section 2.3): the blocks
  (one per module owning parameters: a layer's weight *and* bias) are visited in order
  on the same minibatch (Gauss-Seidel); for each block the gradient ``g`` of the loss at
  the current point, a Lipschitz estimate ``L`` by backtracking and the step
  ``s = 1 / (gamma L)`` give ``x+ = prox_{s r}(x - s g)``.  No momentum.  Full-batch
  PALM decreases ``F`` monotonically; with minibatches it is a heuristic.
* :meth:`ProximalPruner.prox_step` / :func:`proximal_epoch` -- the *practical proximal
  variant*: an ordinary optimizer step (SGD, Adam...) on the loss, then
  ``W_i <- prox_{lr r_i}(W_i)`` with the optimizer's learning rate as the step.

:func:`run_rounds` chains them into the round schedule of the public MobilePrune code:
prox epochs, masked retraining with Adam (:class:`~mobileprune.sparsity.masks.MaskEnforcer`), and
``lam`` / ``eta`` raised every few rounds.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mobileprune.errors import ConfigError
from mobileprune.sparsity.regularizers import Regularizer, _check_weight_param
from mobileprune.sparsity.targets import WeightSlot, load_yaml, parse_selection, select
from mobileprune.pipeline.retrain import masked_retrain
from mobileprune.pipeline.train import _progress, evaluate, forward, make_optimizer, train_epoch

__all__ = [
    "ProximalPruner",
    "palm_step",
    "palm_epoch",
    "proximal_epoch",
    "run_rounds",
    "check_finite",
]

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
        lipschitz: ``{block (module) name: last accepted L}`` kept by :func:`palm_step`.
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
