"""What the channel analysis (:class:`~mobileprune.graph.passes.channels.ChannelFlow`)
says about a model's units, without changing it: the dead units and weights that
:func:`~mobileprune.surgery.compact.compact` would remove, and the coupled channel ids
that structured ADMM must zero together (:class:`mobileprune.sparsity.admm.ADMMPruner`).
One analysis behind compaction and pruning alike (seed 003, section 2.4: filter / channel
sets; coupled channels are pruned together).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, fx, nn

from mobileprune.errors import ConfigError
from mobileprune.graph import trace
from mobileprune.graph.passes.channels import ChannelFlow, Decision, Layer
from mobileprune.graph.registry import args_of, op_of
from mobileprune.graph.trace import Traced

__all__ = ["dead_units", "channel_ids", "dead_weights"]


def check_atol(atol: float) -> float:
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) \
            or atol < 0:
        raise ConfigError(f"atol must be a finite number >= 0, got {atol!r}")
    return float(atol)


def analyze(model: nn.Module, example_input: Any, atol: float,
             who: str) -> tuple[Traced, ChannelFlow, dict[str, bool]]:
    """The traced eval-mode copy of ``model``, its :class:`ChannelFlow` and the
    ``training`` flags of ``model``'s modules."""
    atol = check_atol(atol)
    flags = {n: m.training for n, m in model.named_modules()}
    t = trace(model, example_input, who=who)
    return t, ChannelFlow(t.gm, atol, t.work), flags


def weight_nodes(flow: ChannelFlow) -> list[tuple[fx.Node, str, nn.Module]]:
    """Every Conv / Linear module call of the graph: (node, name, module)."""
    out = []
    for node in flow.gm.graph.nodes:
        a = args_of(node)
        if op_of(node) in ("conv", "linear") and a.get("module") is not None:
            out.append((node, a["module_name"], a["module"]))
    return out


def dead_mask(flow: ChannelFlow, dec: Decision, lay: Layer, w: Tensor,
               cols: Tensor | None = None) -> Tensor:
    """Bool like ``w``: the weights of removed rows, and of the columns ``cols`` (default:
    a producer's removed inputs)."""
    rows = flow.removed_out(dec, lay)
    dead = rows.view(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone()
    if cols is None and lay.kind in ("conv", "linear"):
        cols = flow.removed_in(dec, lay)
    if cols is not None:
        dead |= cols.view(1, -1, *([1] * (w.dim() - 2))).expand(w.shape)
    return dead


def dead_units(model: nn.Module, example_input: Any, *, atol: float = 0.0) -> dict[str, dict]:
    """Dry run of :func:`~mobileprune.surgery.compact.compact`: which output units of each producer layer are removed.

    Returns ``{layer_name: {"out_units": int, "removable": [indices], "kept": int,
    "zero": [indices]}}`` for every Conv/Linear layer of the traced graph, in graph order:
    ``removable`` are the output units (filters / neurons) :func:`~mobileprune.surgery.compact.compact` removes,
    ``zero`` the units whose weights are all zero (``|w| <= atol``), removable or not (a
    zero unit can be kept, e.g. when its constant bias feeds a zero-padded conv). Layers
    compaction cannot resize (called several times, parametrised, grouped convs...) are
    listed with ``removable == []``. ``model`` is not modified.
    """
    _, flow, _ = analyze(model, example_input, atol, "dead_units")
    dec = flow.decide()
    resized = {lay.node for lay in flow.layers if lay.kind != "norm"}
    report: dict[str, dict] = {}
    for node, name, m in weight_nodes(flow):
        if name in report:
            continue
        zero = flow.zero(m.weight).all(1)
        rem = flow.removed_pos(dec, node).nonzero().flatten().tolist() if node in resized else []
        report[name] = {"out_units": int(zero.numel()), "removable": rem,
                        "kept": int(zero.numel()) - len(rem),
                        "zero": zero.nonzero().flatten().tolist()}
    return report


def channel_ids(model: nn.Module, example_input: Any) -> dict[str, dict[str, Tensor]]:
    """Coupled channel ids of every Conv/Linear layer, as :func:`~mobileprune.surgery.compact.compact` sees them.

    Returns ``{layer_name: {"filter": ids, "channel": ids}}``: ``ids["filter"]`` has one
    entry per output unit (filter / neuron), ``ids["channel"]`` one per input position
    (input channel of a conv, input feature of a Linear). Two units carry the same id
    when they are the same channel slot of the traced graph: the output channels that a
    residual ``add`` merges, a depthwise conv's input and output channels, a producer's
    filters and the consumer's input channels they feed, the ``H*W`` features a
    ``flatten`` makes from one channel. Compaction can remove such units only all
    together, so structured pruning that wants a physical speed-up must zero them
    together (:class:`mobileprune.sparsity.admm.ADMMPruner` does, given ``example_input``).
    BatchNorm layers are listed too (the same ids under both keys). Ids are ``0..n-1``
    over the whole model; ``model`` is not modified. Layers compaction cannot resize
    (grouped convs, modules called twice, ...) are absent.

    Raises :class:`UnsupportedModelError` (message starting ``channel_ids:``) when the
    model cannot be traced.
    """
    _, flow, _ = analyze(model, example_input, 0.0, "channel_ids")
    root = flow.roots()
    raw: dict[str, dict[str, Tensor]] = {}
    for lay in flow.layers:
        if lay.name not in raw and lay.kind in ("conv", "linear", "dw", "norm"):
            raw[lay.name] = {"filter": root[flow.out_ids(lay)],
                             "channel": root[flow.in_ids(lay)]}
    if not raw:
        return {}
    flat = torch.cat([t for d in raw.values() for t in d.values()])
    _, inverse = torch.unique(flat, return_inverse=True)
    out: dict[str, dict[str, Tensor]] = {}
    pos = 0
    for name, d in raw.items():
        out[name] = {}
        for k, t in d.items():
            out[name][k] = inverse[pos:pos + t.numel()].clone()
            pos += t.numel()
    return out


def dead_weights(model: nn.Module, example_input: Any, *, atol: float = 0.0,
                 nonzero_only: bool = True) -> dict[str, Tensor]:
    """Nonzero weights that cannot change the model's output (the ones :func:`~mobileprune.surgery.compact.compact`
    drops): ``{weight parameter name: bool mask}`` for every Conv/Linear layer it can cut.

    A weight is dead when it belongs to an output unit that compaction removes (e.g. a
    hidden neuron all of whose outgoing weights are zero) or reads an input channel /
    feature that compaction removes (e.g. a zero filter's constant output, folded into
    the consumer's bias). With ``nonzero_only=False`` every position of a dead unit is
    marked, zero or not. ``model`` is not modified.
    """
    _, flow, _ = analyze(model, example_input, atol, "dead_weights")
    dec = flow.decide()
    result: dict[str, Tensor] = {}
    for lay in flow.layers:
        if lay.kind not in ("conv", "linear", "dw"):
            continue
        w = lay.module.weight.detach()
        dead = dead_mask(flow, dec, lay, w)
        key = f"{lay.name}.weight" if lay.name else "weight"
        if nonzero_only:
            dead = dead & (w.abs().cpu() > atol)
        result[key] = dead if key not in result else result[key] | dead
    return result
