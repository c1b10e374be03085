"""ADMM weight pruning (seed ``003_7028caa2f3347c85``, section 2.3, Algorithm 1).

The problem ``min f(W) s.t. W_i in S_i`` is split with auxiliary variables ``Z_i`` and
scaled dual variables ``U_i``:

* W-step (Eq. 5): train on ``f(W) + sum_i rho_i / 2 * ||W_i - Z_i + U_i||_F^2``;
  :meth:`ADMMPruner.penalty` returns the second term, add it to your loss.
* Z-step (Eq. 6): ``Z_i = Proj_{S_i}(W_i + U_i)`` (:mod:`mobileprune.projection`).
* dual update (Eq. 7): ``U_i = U_i + W_i - Z_i``.

Steps 2-3 run every ``update_every`` optimizer steps (:meth:`ADMMPruner.step`) or when
you call :meth:`ADMMPruner.update` (for example once per epoch). ``rho`` follows a
schedule: multiplied by ``rho_multiplier`` after every update, capped at ``rho_max``.
Because ``U`` is the *scaled* dual (``y / rho``), it is divided by the same factor when
rho grows, so the unscaled dual ``y`` is unchanged (Boyd et al. 2011, section 3.4.1).

After the ADMM phase, :meth:`ADMMPruner.finalize` performs masked mapping
(``W_i = Proj_{S_i}(W_i)``) and returns the masks for masked retraining
(:class:`mobileprune.masks.MaskEnforcer`). Every layer then has at most ``keep``
nonzero weights: the result is feasible by construction.

Use it inside your own training loop::

    pruner = ADMMPruner(model, {"default": 0.9}, rho=1e-3, update_every=500)
    for x, y in loader:
        loss = criterion(model(x), y) + pruner.penalty()
        opt.zero_grad(); loss.backward(); opt.step()
        pruner.step()
    masks = pruner.finalize()
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .groups import from_groups, to_groups
from .projection import project_top_groups, project_topk
from .targets import LayerTarget, PruneConfig, resolve_targets


def project_layer(target: LayerTarget, w: Tensor, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Project ``w`` onto the constraint set of ``target`` (seed 003, Eq. 6).

    Unstructured: keep the ``keep`` largest magnitudes. Structured (section 2.4): keep
    the ``keep`` groups (filters, channels or GEMM columns) of largest l2 norm. Returns
    ``(projection, element mask)``. ``allowed`` (element mask) restricts the choice;
    for structured sets a group is allowed when any of its elements is.
    """
    if target.structure == "unstructured":
        return project_topk(w, target.keep, allowed)
    g = to_groups(w, target.structure)
    allowed_rows = None
    if allowed is not None:
        allowed_rows = to_groups(allowed, target.structure).any(dim=1)
    proj, rows = project_top_groups(g, target.keep, allowed_rows)
    mask = from_groups(rows[:, None].expand_as(g), target.structure, w.shape)
    return from_groups(proj, target.structure, w.shape), mask


class ADMMPruner:
    """ADMM regularisation towards per-layer sparsity targets (seed 003, Algorithm 1).

    Args:
        model: any ``nn.Module``.
        config: pruning config (dict, :class:`~mobileprune.targets.PruneConfig` or YAML
            path); see :mod:`mobileprune.targets`.
        rho: initial penalty parameter ``rho`` (the same for every layer).
        rho_multiplier: factor applied to ``rho`` after every Z/U update (>= 1).
        rho_max: cap on ``rho``.
        update_every: when set, :meth:`step` performs a Z/U update every
            ``update_every`` calls; otherwise call :meth:`update` yourself.
        allowed: optional ``{parameter name: bool mask}``; positions outside it are
            never selected by the projections (used by progressive pruning so that a
            later stage only prunes further).
    """

    def __init__(self, model: nn.Module, config: Mapping[str, Any] | PruneConfig | str | Path,
                 *, rho: float = 1e-3, rho_multiplier: float = 1.0, rho_max: float = math.inf,
                 update_every: int | None = None,
                 allowed: Mapping[str, Tensor] | None = None) -> None:
        if not (rho > 0 and math.isfinite(rho)):
            raise ConfigError(f"rho must be a positive finite number, got {rho!r}")
        if not rho_multiplier >= 1.0:
            raise ConfigError(f"rho_multiplier must be >= 1, got {rho_multiplier!r}")
        if not rho_max >= rho:
            raise ConfigError(f"rho_max ({rho_max!r}) must be >= rho ({rho!r})")
        if update_every is not None and (not isinstance(update_every, int) or update_every < 1):
            raise ConfigError(f"update_every must be a positive int or None, got {update_every!r}")
        self.model = model
        self.targets: list[LayerTarget] = resolve_targets(model, config)
        self.rho = float(rho)
        self.rho_multiplier = float(rho_multiplier)
        self.rho_max = float(rho_max)
        self.update_every = update_every
        params = dict(model.named_parameters())
        self._params = {t.param_name: params[t.param_name] for t in self.targets}
        # One (Z, U) pair per constraint set; a layer with several sets (e.g. filter and
        # channel) has several pairs, keyed by the parameter name for unstructured sets
        # and "param_name:structure" for structured ones.
        self._keys = {self._key(t): t for t in self.targets}
        self.allowed = {k: v.bool() for k, v in (allowed or {}).items() if k in self._params}
        self.steps = 0
        self.updates = 0
        self.Z: dict[str, Tensor] = {}
        self.U: dict[str, Tensor] = {}
        with torch.no_grad():
            for key, t in self._keys.items():
                w = self._params[t.param_name].detach()
                self.Z[key] = project_layer(t, w, self.allowed.get(t.param_name))[0].clone()
                self.U[key] = torch.zeros_like(w)

    @staticmethod
    def _key(t: LayerTarget) -> str:
        return t.param_name if t.structure == "unstructured" else f"{t.param_name}:{t.structure}"

    def penalty(self) -> Tensor:
        """``sum_i rho / 2 * ||W_i - Z_i + U_i||_F^2``, the ADMM term of Eq. 5."""
        total = None
        for key, t in self._keys.items():
            term = (self._params[t.param_name] - self.Z[key] + self.U[key]).pow(2).sum()
            total = term if total is None else total + term
        return 0.5 * self.rho * total

    def step(self) -> bool:
        """Count one optimizer step; run :meth:`update` every ``update_every`` steps.

        Returns ``True`` when an update was performed.
        """
        self.steps += 1
        if self.update_every is not None and self.steps % self.update_every == 0:
            self.update()
            return True
        return False

    @torch.no_grad()
    def update(self) -> dict[str, float]:
        """One Z-step (Eq. 6) and dual update (Eq. 7), then the rho schedule.

        Returns the primal residual ``||W - Z||`` and the change of ``Z`` (dual residual
        up to the factor rho), summed in quadrature over layers.
        """
        primal = 0.0
        dual = 0.0
        for name, t in self._keys.items():
            w = self._params[t.param_name].detach()
            z_new = project_layer(t, w + self.U[name], self.allowed.get(t.param_name))[0]
            dual += float((z_new - self.Z[name]).pow(2).sum())
            self.Z[name] = z_new
            self.U[name] = self.U[name] + w - z_new
            primal += float((w - z_new).pow(2).sum())
        self.updates += 1
        new_rho = min(self.rho * self.rho_multiplier, self.rho_max)
        if new_rho != self.rho:
            scale = self.rho / new_rho
            for name in self.U:
                self.U[name] = self.U[name] * scale
            self.rho = new_rho
        return {"primal_residual": math.sqrt(primal), "dual_residual": math.sqrt(dual), "rho": self.rho}

    @torch.no_grad()
    def finalize(self) -> dict[str, Tensor]:
        """Masked mapping: ``W_i = Proj_{S_i}(W_i)`` in place; returns the masks.

        Each mask marks the positions that may stay nonzero during masked retraining;
        afterwards every layer has at most ``keep`` nonzero weights (or groups). A layer
        with several sets is projected onto each in turn (structured first): zeroing
        more entries never adds a nonzero group, so the result satisfies every set.
        """
        masks: dict[str, Tensor] = {}
        order = sorted(self.targets, key=lambda t: t.structure == "unstructured")
        for t in order:
            p = self._params[t.param_name]
            allowed = masks.get(t.param_name, self.allowed.get(t.param_name))
            proj, mask = project_layer(t, p.detach(), allowed)
            p.copy_(proj)
            masks[t.param_name] = mask if t.param_name not in masks else mask & masks[t.param_name]
        return masks

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume ADMM: Z, U, rho and counters (tensors only)."""
        return {"Z": {k: v.clone() for k, v in self.Z.items()},
                "U": {k: v.clone() for k, v in self.U.items()},
                "rho": self.rho, "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (names and shapes checked)."""
        for key in ("Z", "U"):
            got = set(state[key])
            if got != set(self._keys):
                raise ConfigError(f"ADMM state {key} names {sorted(got)}, pruner has {sorted(self._keys)}")
            for name, v in state[key].items():
                want = self._params[self._keys[name].param_name].shape
                if v.shape != want:
                    raise ConfigError(f"ADMM state {key}[{name!r}] has shape {tuple(v.shape)}, "
                                      f"expected {tuple(want)}")
        dev = {k: self._params[t.param_name].device for k, t in self._keys.items()}
        self.Z = {k: v.to(dev[k]).clone() for k, v in state["Z"].items()}
        self.U = {k: v.to(dev[k]).clone() for k, v in state["U"].items()}
        self.rho = float(state["rho"])
        self.steps = int(state["steps"])
        self.updates = int(state["updates"])
