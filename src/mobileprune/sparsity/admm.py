"""ADMM weight pruning (seed ``003_7028caa2f3347c85``, section 2.3, Algorithm 1).

The problem ``min f(W) s.t. W_i in S_i`` is split with auxiliary variables ``Z_i`` and
scaled dual variables ``U_i``:

* W-step (Eq. 5): train on ``f(W) + sum_i rho_i / 2 * ||W_i - Z_i + U_i||_F^2``;
  :meth:`ADMMPruner.penalty` returns the second term, add it to your loss.
* Z-step (Eq. 6): ``Z_i = Proj_{S_i}(W_i + U_i)`` (:mod:`mobileprune.math.projection`).
* dual update (Eq. 7): ``U_i = U_i + W_i - Z_i``.

Steps 2-3 run every ``update_every`` optimizer steps (:meth:`ADMMPruner.step`) or when
you call :meth:`ADMMPruner.update` (for example once per epoch). ``rho`` follows a
schedule: multiplied by ``rho_multiplier`` after every update, capped at ``rho_max``.
Because ``U`` is the *scaled* dual (``y / rho``), it is divided by the same factor when
rho grows, so the unscaled dual ``y`` is unchanged (Boyd et al. 2011, section 3.4.1).

After the ADMM phase, :meth:`ADMMPruner.finalize` performs masked mapping
(``W_i = Proj_{S_i}(W_i)``) and returns the masks for masked retraining
(:class:`mobileprune.sparsity.masks.MaskEnforcer`). Every layer then has at most ``keep``
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
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mobileprune.errors import ConfigError, UnsupportedModelError
from mobileprune.math.groups import to_groups
from mobileprune.math.projection import project_top_groups, project_topk, top_coupled_groups
from mobileprune.sparsity.targets import LayerTarget, PruneConfig, resolve_targets


def project_layer(target: LayerTarget, w: Tensor, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Project ``w`` onto the constraint set of ``target`` (seed 003, Eq. 6).

    Unstructured: keep the ``keep`` largest magnitudes. Structured (section 2.4): keep
    the ``keep`` groups (filters, channels, GEMM columns, hidden units, heads:
    :meth:`LayerTarget.to_groups`) of largest l2 norm. Returns
    ``(projection, element mask)``. ``allowed`` (element mask) restricts the support:
    the projection onto the set intersected with "zero outside ``allowed``" (for
    structured sets: the ``keep`` groups of largest norm over their allowed elements,
    each keeping only those; a group with no allowed element is never chosen).
    """
    if target.structure == "unstructured":
        return project_topk(w, target.keep, allowed)
    allowed_rows = None
    if allowed is not None:
        allowed = allowed.to(torch.bool)
        w = torch.where(allowed, w, torch.zeros_like(w))
        allowed_rows = target.to_groups(allowed).any(dim=1)
    g = target.to_groups(w)
    proj, rows = project_top_groups(g, target.keep, allowed_rows)
    mask = target.from_groups(rows[:, None].expand_as(g))
    if allowed is not None:
        mask = mask & allowed
    return target.from_groups(proj), mask


def _dead_outputs(t: LayerTarget, mask: Tensor) -> tuple[str | None, Tensor] | None:
    """``(bias name, rows)`` of a target whose groups are output units (filters, hidden
    units, ConvTranspose output channels, heads of ``in_proj_weight``): ``rows`` marks
    the outputs (rows of the bias) ``mask`` keeps no weight of; the bias is ``None``
    when the layer has no bias of that shape to name. ``None`` for other targets."""
    if t.structure == "filter":
        grouping = t.grouping or "filter"  # ConvTranspose: "channel" (its dim 1)
    elif t.structure == "head" and t.grouping == "filter" and t.name.endswith("in_proj_weight"):
        grouping = "filter"
    else:
        return None
    rows = ~to_groups(mask, grouping).any(dim=1)
    mod, _, attr = t.param_name.rpartition(".")
    bias = {"weight": "bias", "in_proj_weight": "in_proj_bias"}.get(attr)
    if bias is None and attr.startswith("weight_"):
        bias = "bias_" + attr[len("weight_"):]
    return (None if bias is None else f"{mod}.{bias}" if mod else bias), rows


def rho_multiplier_for(rho: float, rho_final: float, updates: int) -> float:
    """The factor that takes ``rho`` to ``rho_final`` in ``updates`` Z/U updates (seed 003,
    Eqs. 6-7: rho grows after each): ``(rho_final / rho) ** (1 / updates)``, 1 when there
    is no update. A schedule that ends at a given rho whatever the phase's length, so that
    a short ADMM phase pulls the weights as close to their projection as a long one."""
    if not (0 < rho <= rho_final and math.isfinite(rho_final)):
        raise ConfigError(f"rho_final ({rho_final!r}) must be finite and >= rho ({rho!r})")
    return (rho_final / rho) ** (1.0 / updates) if updates > 0 else 1.0


class ADMMPruner:
    """ADMM regularisation towards per-layer sparsity targets (seed 003, Algorithm 1).

    Args:
        model: any ``nn.Module``.
        config: pruning config (dict, :class:`~mobileprune.sparsity.targets.PruneConfig` or YAML
            path); see :mod:`mobileprune.sparsity.targets`.
        rho: initial penalty parameter ``rho`` (the same for every layer).
        rho_multiplier: factor applied to ``rho`` after every Z/U update (>= 1).
        rho_max: cap on ``rho``.
        update_every: when set, :meth:`step` performs a Z/U update every
            ``update_every`` calls; otherwise call :meth:`update` yourself.
        allowed: optional ``{parameter name: bool mask}``; positions outside it are
            never selected by the projections (used by progressive pruning so that a
            later stage only prunes further).
        example_input: optional model input (batch included). When given, structured
            (filter / channel) targets whose units are coupled in the traced graph
            (residual adds, concatenations, depthwise convs, a producer's filters and
            the next layer's input channels; :func:`mobileprune.graph.passes.units.channel_ids`)
            are projected *jointly* (:func:`~mobileprune.math.projection.top_coupled_groups`):
            the same channels are zeroed in every coupled layer, so
            :func:`~mobileprune.surgery.compact.compact` can physically remove them. Each
            layer still keeps at most its own ``keep`` groups. Without it, every layer
            is projected on its own; so is every layer of a model that neither torch.fx
            nor the torch.export fallback can trace (:func:`mobileprune.graph.trace`),
            with a warning that names the structured targets whose coupling is lost.
    """

    def __init__(self, model: nn.Module, config: Mapping[str, Any] | PruneConfig | str | Path,
                 *, rho: float = 1e-3, rho_multiplier: float = 1.0, rho_max: float = math.inf,
                 update_every: int | None = None,
                 allowed: Mapping[str, Tensor] | None = None,
                 example_input: Any = None) -> None:
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
        # masks of other parameters (biases / BatchNorm of pruned filters, earlier stage)
        self._allowed_other = {k: v.bool() for k, v in (allowed or {}).items() if k not in self._params}
        self.steps = 0
        self.updates = 0
        # Coupled structured targets: lists of keys projected together, channel ids.
        self.coupled: list[list[str]] = []
        self._ids: dict[str, Tensor] = {}
        self._all_ids: dict[str, dict[str, Tensor]] = {}
        self._n_ids = 0
        self._example = example_input
        self.reallocation_rounds = 0
        self._couple(example_input)
        self.Z: dict[str, Tensor] = {}
        self.U: dict[str, Tensor] = {}
        with torch.no_grad():
            w = {key: self._params[t.param_name].detach() for key, t in self._keys.items()}
            for key, (z, _) in self._project(w).items():
                self.Z[key] = z.clone()
                self.U[key] = torch.zeros_like(w[key])

    @staticmethod
    def _key(t: LayerTarget) -> str:
        return t.param_name if t.structure == "unstructured" else f"{t.param_name}:{t.structure}"

    def _couple(self, example_input: Any) -> None:
        """Find the structured targets whose groups share ids (joint sets): channels
        coupled in the traced graph (with ``example_input``) and the heads of one
        MultiheadAttention (always)."""
        members = self._graph_members(example_input) if example_input is not None else {}
        base = 1 + max((int(v.max()) for v in members.values() if v.numel()), default=-1)
        labels: dict[str, int] = {}
        for key, t in self._keys.items():
            if t.joint is None:
                continue
            if t.joint not in labels:  # the heads of one attention: ids base .. base + heads - 1
                labels[t.joint], base = base, base + t.units
            members[key] = torch.arange(labels[t.joint], labels[t.joint] + t.units)
        # union-find over members through shared ids
        parent = {k: k for k in members}

        def find(k: str) -> str:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        owner: dict[int, str] = {}
        for key, got in members.items():
            for i in got.unique().tolist():
                if i in owner:
                    parent[find(key)] = find(owner[i])
                else:
                    owner[i] = key
        comps: dict[str, list[str]] = {}
        for key in members:
            comps.setdefault(find(key), []).append(key)
        self.coupled = [c for c in comps.values() if len(c) > 1]
        self._ids = {k: members[k] for c in self.coupled for k in c}
        self._n_ids = 1 + max((int(v.max()) for v in self._ids.values() if v.numel()), default=-1)

    def _graph_members(self, example_input: Any) -> dict[str, Tensor]:
        """Channel ids of the Linear / Conv filter and channel targets in the traced graph
        (:func:`mobileprune.graph.passes.units.channel_ids`)."""
        from mobileprune.graph.passes.units import channel_ids

        structured = {k: t for k, t in self._keys.items()
                      if t.structure in ("filter", "channel") and t.plain}
        if not structured:
            return {}
        try:
            ids = channel_ids(self.model, example_input)
        except UnsupportedModelError as exc:
            names = sorted({t.name for t in structured.values()})
            warnings.warn(
                f"ADMMPruner: the graph of {type(self.model).__name__} cannot be traced, so "
                f"the structured targets {names} are projected per layer: the coupling of "
                f"their channels through residual adds, concatenations, depthwise convs and "
                f"consumer layers is lost (compact may not remove their zero units) "
                f"({str(exc).splitlines()[0]})", UserWarning, stacklevel=4)
            return {}
        self._all_ids = ids
        members = {}
        for key, t in structured.items():
            got = ids.get(t.name, {}).get(t.structure)
            if got is not None and got.numel() == t.units and t.param_name.endswith("weight"):
                members[key] = got
        return members

    def _project(self, values: Mapping[str, Tensor],
                 allowed: Mapping[str, Tensor] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Project ``values[key]`` onto each key's set (coupled sets jointly), Eq. 6.

        ``allowed`` maps parameter names to element masks (default: ``self.allowed``).
        Returns ``{key: (projection, element mask)}``.
        """
        allowed = self.allowed if allowed is None else allowed
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for comp in self.coupled:
            comp = [k for k in comp if k in values]
            if not comp:
                continue
            grouped, group_ok = {}, {}
            # a channel stays selectable only if every coupled layer still allows it
            ok_ids = torch.ones(self._n_ids, dtype=torch.bool)
            for key in comp:
                t = self._keys[key]
                grouped[key] = t.to_groups(values[key])
                a = allowed.get(t.param_name)
                group_ok[key] = (t.to_groups(a).any(dim=1).cpu() if a is not None
                                 else torch.ones(grouped[key].shape[0], dtype=torch.bool))
                ok_ids[self._ids[key][~group_ok[key]]] = False
            kept = top_coupled_groups(
                [grouped[k].detach().pow(2).sum(dim=1) for k in comp], [self._ids[k] for k in comp],
                [self._keys[k].keep for k in comp], self._n_ids, ok_ids)
            for key in comp:
                t = self._keys[key]
                rows = (kept[self._ids[key]] & group_ok[key]).to(grouped[key].device)
                g = grouped[key]
                proj = torch.where(rows[:, None], g, torch.zeros_like(g))
                mask = t.from_groups(rows[:, None].expand_as(g))
                out[key] = (t.from_groups(proj), mask)
        for key, v in values.items():
            if key not in out:
                t = self._keys[key]
                out[key] = project_layer(t, v, allowed.get(t.param_name))
        return out

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
        proj = self._project({k: self._params[t.param_name].detach() + self.U[k]
                              for k, t in self._keys.items()})
        for name, t in self._keys.items():
            w = self._params[t.param_name].detach()
            z_new = proj[name][0]
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
    def finalize(self, *, reallocate_dead: bool = False, max_rounds: int = 8) -> dict[str, Tensor]:
        """Masked mapping: ``W_i = Proj_{S_i}(W_i)`` in place; returns the masks.

        Each mask marks the positions that may stay nonzero during masked retraining;
        afterwards every layer has at most ``keep`` nonzero weights (or groups). A layer
        with several sets is projected onto each in turn (structured first): zeroing
        more entries never adds a nonzero group, so the result satisfies every set.
        Coupled structured sets (see ``example_input``) are projected jointly first.

        ``reallocate_dead=True`` (needs ``example_input``): the projection can keep
        weights that cannot affect the output, e.g. the incoming weights of a hidden
        neuron all of whose outgoing weights were pruned
        (:func:`mobileprune.graph.passes.units.dead_weights`). The dead units are excluded and the
        layers projected again, so their budget goes to live units instead; repeated
        until no kept weight is dead (at most ``max_rounds`` times; a unit excluded once
        stays excluded).
        """
        if reallocate_dead and self._example is None:
            raise ConfigError("reallocate_dead=True needs the pruner's example_input")
        start = {n: p.detach().clone() for n, p in self._params.items()}
        allowed = dict(self.allowed)
        masks = self._map(allowed)
        rounds = 0
        while reallocate_dead and rounds < max_rounds:
            from mobileprune.graph.passes.units import dead_weights

            units = {k: v.to(masks[k].device) for k, v in
                     dead_weights(self.model, self._example, nonzero_only=False).items()
                     if k in self._params}
            if not any(bool((v & masks[k]).any()) for k, v in units.items()):
                break
            dead = units  # block every position of a dead unit, not only the kept ones
            rounds += 1
            for k, v in dead.items():
                base = allowed.get(k, torch.ones_like(v))
                allowed[k] = base & ~v
            for n, p in self._params.items():
                p.copy_(start[n])
            masks = self._map(allowed)
        self.reallocation_rounds = rounds
        masks.update(self._companion_masks(masks))
        return masks

    def _map(self, allowed: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Project the weights in place (coupled sets jointly, then structured, then
        unstructured) choosing only positions in ``allowed``; return the masks."""
        masks: dict[str, Tensor] = {}
        joint = [k for comp in self.coupled for k in comp]
        if joint:
            proj = self._project({k: self._params[self._keys[k].param_name].detach() for k in joint},
                                 allowed)
            for key in joint:  # keep what every joint projection of the parameter keeps
                t = self._keys[key]
                m = proj[key][1]
                masks[t.param_name] = m if t.param_name not in masks else masks[t.param_name] & m
            for name, m in masks.items():
                self._params[name].mul_(m.to(self._params[name].dtype))
        order = sorted((t for k, t in self._keys.items() if k not in joint),
                       key=lambda t: t.structure == "unstructured")
        for t in order:
            p = self._params[t.param_name]
            allow = masks.get(t.param_name, allowed.get(t.param_name))
            if t.param_name in masks and t.param_name in allowed:
                allow = allow & allowed[t.param_name]
            proj, mask = project_layer(t, p.detach(), allow)
            p.copy_(proj)
            masks[t.param_name] = mask if t.param_name not in masks else mask & masks[t.param_name]
        return masks

    @torch.no_grad()
    def _companion_masks(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Remove the per-channel parameters of pruned filters with them (in place).

        A filter pruned to zero still outputs its bias, and a following BatchNorm
        turns even a zero channel into the constant ``beta - gamma * mean / std``: the
        channel is not really gone, and :func:`~mobileprune.surgery.compact.compact` cannot
        remove it in front of a zero-padded conv. So masked mapping also zeros the bias
        of every all-zero filter of a filter-pruned layer and, when the graph is known
        (``example_input``), the BatchNorm ``weight``/``bias`` of every channel whose
        producers' filters are all zero. The returned masks keep them at zero during
        masked retraining. The same holds for the other weights whose groups are output
        units: the biases of a pruned hidden unit (``bias_ih_l*`` / ``bias_hh_l*`` rows
        of ``weight_ih_l*`` / ``weight_hh_l*``), of a pruned ConvTranspose output
        channel, and the ``in_proj_bias`` rows of a pruned head of ``in_proj_weight``.
        """
        modules = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        out: dict[str, Tensor] = {}

        def zero(name: str, keep: Tensor) -> None:
            if name not in params or params[name].shape != keep.shape:
                return
            keep = keep.to(params[name].device)
            prev = out.get(name, self._allowed_other.get(name))
            keep = keep if prev is None else keep & prev.to(keep.device)
            params[name].mul_(keep.to(params[name].dtype))
            out[name] = keep

        dead_rows: dict[str, Tensor] = {}
        for t in self.targets:
            found = _dead_outputs(t, masks[t.param_name]) if t.param_name in masks else None
            if found is None:
                continue
            bias, rows = found
            if t.plain:
                dead_rows[t.name] = rows
            if bias is not None:
                zero(bias, ~rows)
        if not self._all_ids or not dead_rows:
            return out
        # a channel id is dead when every layer producing it has it pruned
        alive = torch.zeros(1 + max(int(d["filter"].max()) for d in self._all_ids.values()
                                    if d["filter"].numel()), dtype=torch.bool)
        for name, d in self._all_ids.items():
            if isinstance(modules.get(name), nn.modules.batchnorm._BatchNorm):
                continue
            rows = dead_rows.get(name)
            alive[d["filter"][~rows] if rows is not None else d["filter"]] = True
        for name, d in self._all_ids.items():
            m = modules.get(name)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                keep = alive[d["filter"]]
                if not bool(keep.all()):
                    zero(f"{name}.weight", keep)
                    zero(f"{name}.bias", keep)
        return out

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
