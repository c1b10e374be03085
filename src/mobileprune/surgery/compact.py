"""Physically remove dead filters, channels and neurons: a smaller dense model that is
really faster.

Pruning leaves zeros inside full-size tensors; :func:`compact` turns whole zero units into
*smaller* layers (fewer conv filters / input channels, fewer Linear rows / columns, smaller
BatchNorms) and cuts every consumer to match, so dense kernels do less work. The model's
outputs do not change (up to float rounding of folded biases, typically ~1e-7).

API
---
* :func:`compact(model, example_input, *, atol=0.0, strict=False, return_record=False)
  <compact>` returns a **new** module; ``model`` is never modified (it is
  ``copy.deepcopy``-ed first). ``return_record=True`` returns ``(model, record)``
  (:class:`CompactionRecord`: units removed per layer, the zero units kept and the op or
  layer that keeps them, parameters and MACs before / after, the resize history). When
  nothing can be removed it warns (:class:`CompactionWarning`); never silent.
* :func:`channel_ids` / :func:`dead_weights`: the coupled channel ids (ADMM structured
  coupling) and the weights ``compact`` drops, from the same analysis (defined with
  :func:`dead_units` in :mod:`mobileprune.graph.passes.units`, the graph layer, and
  re-exported here).
* :func:`dead_units(model, example_input, *, atol=0.0) <dead_units>` is the dry run: per
  producer layer (Conv/Linear, by qualified name), which output units ``compact`` removes.
* :func:`compact_in_place(model, example_input) <compact_in_place>` does the same to
  ``model`` itself (its resized layers are swapped in), e.g. between pruning rounds.
* :func:`fold_dead_weights(model, example_input) <fold_dead_weights>` zeroes in place the
  weights ``compact`` would drop (folding constants into biases), shapes unchanged: used
  during pruning so the nonzero budget goes to weights that matter.

``example_input`` is a tensor, or a tuple/list of tensors for a model with several
positional inputs (batch dimension included). It is run once through the traced graph
(``torch.fx`` ``ShapeProp``) to learn shapes, e.g. how many features of a Linear come from
one channel of a flattened ``(C, H, W)`` map.

Semantics
---------
The analysis is the graph layer's: the model is traced by :func:`mobileprune.graph.trace`
(torch.fx, every spelling canonicalised) and the :class:`~mobileprune.graph.passes.channels.
ChannelFlow` pass asks each op's handler (:mod:`mobileprune.graph.ops`) how channels and
constants flow through it; layers are resized by their handler's ``resize`` (model in
**eval mode**: BatchNorm
uses its running statistics, Dropout is the identity; equivalence is guaranteed in eval
mode). Every tensor of shape ``(N, C, ...)`` has a *channel dimension* (dim 1, or the last
axis of the tokens a Linear makes from ``(N, L, E)``); every position of it carries a
*slot*. Slots are tied together with a union-find: an elementwise
or per-channel op (activation, BatchNorm, pooling, Dropout, Identity, ``contiguous``...)
keeps its input's slots; a residual ``add``/``sub``/``mul`` of two tensors **couples** the
channels of its inputs (channel ``c`` of every operand is one slot, so it is removed only
if it is removable in every branch); ``torch.cat`` along dim 1 concatenates the index
spaces; ``flatten`` / ``view(N, -1)`` maps channel ``c`` of ``(C, H, W)`` to its ``H*W``
consecutive features; a depthwise conv (``groups == in_channels``) couples input channel
``c`` with its output channels ``c*m .. c*m+m-1`` (they are removed together). Conv
(``groups == 1``) and Linear layers (on any rank: a transformer's MLP hidden units) are
*producers*: their output positions are new slots. Inside leaf modules: an LSTM / GRU /
RNN hidden unit is one slot for every layer and direction (the module has one
``hidden_size``), removed when in each of them it is dead (all its gate rows zero and the
zero state a fixed point: output exactly 0) or not read; a ``MultiheadAttention`` head
(also inside ``nn.TransformerEncoder`` / ``EncoderLayer``; or of timm's ``Attention``)
is removed when its value
rows are zero (its output is the value bias, folded into ``out_proj``) or ``out_proj``'s
columns of it are zero (the module becomes a
:class:`~mobileprune.graph.ops.attention.PrunedMultiheadAttention`); a transformer
layer's feed-forward units as any Linear's. The embedding width of attention and
transformer modules is kept.

Every position also carries a *constant*: the value it has at every sample and spatial
position, when it is one, found by constant propagation. A producer's output unit whose
weights are all zero (``|w| <= atol``) is the constant ``b_c`` (``0`` without bias); an
elementwise op maps a constant through the function (computed in the tensor's dtype);
eval-mode BatchNorm maps ``v`` to ``(v - mean) / sqrt(var + eps) * gamma + beta``; max
pooling (implicit ``-inf`` padding), adaptive pooling and interpolation keep constants;
average pooling keeps them unless zero padding is counted (``count_include_pad`` with
``padding > 0``) or ``divisor_override`` is set (then only ``0`` stays constant); the sum
of an ``add`` is the sum of the constants; ``mean``/``amax``/``sum`` over spatial dims keep
(resp. scale) them.

A slot is **removed** when, at every place it is used, dropping it is exact:

* at a Conv (``groups == 1``) or Linear consumer, the consumer's weights for that input
  position are all zero among the output units that are kept (the "zero outgoing weights"
  case of input-channel group lasso), **or** the position carries a finite constant ``v``
  that can be folded into the consumer's bias: always for Linear (``bias += W[:, j] * v``)
  and for a conv with no padding, or with non-``zeros`` ``padding_mode``
  (``bias += v * W[:, c].sum()``, exact because every receptive field lies inside the
  input); with zero padding the border outputs would see ``0`` instead of ``v``, so the
  position is removable only if ``v == 0``. When a fold is needed and the consumer has no
  bias, a bias is created (``out`` extra parameters).
* at a pass-through op (elementwise, BatchNorm as a module or ``F.batch_norm``, a
  one-channel-per-group GroupNorm, LayerNorm over axes after the channels, pooling, add,
  a squeeze-excitation ``mul``, cat, ``chunk`` of the channels (its pieces coupled
  position by position), flatten, depthwise conv) it is always exact: the same slot is
  removed on the other side too.
* never when it reaches a graph output (the model's output size never changes), a graph
  input (the input signature never changes), a ``get_attr`` tensor, or any op that is not
  recognised (transpose of the channels, softmax over channels, LayerNorm over the
  channels, GroupNorm over groups of channels, ConvTranspose, the embedding width of an
  attention / transformer module, the final state ``h_n`` of an LSTM / GRU read by the
  model, a read of the channel count ``x.size(1)`` (e.g. a channel shuffle),
  grouped conv with ``groups`` not in ``{1, in_channels}``, a Linear over the last axis
  of a tensor whose channels are traced on another axis, a layer
  called at several places, a view that is not a flatten, an in-place op on a tensor that
  has other users, ...): all channels of that op's inputs are kept intact, so its inputs and
  outputs are bit-for-bit what they were (conservative, never a wrong model); the op, the
  user's source line and the reason are recorded. With ``strict=True`` an
  :class:`~mobileprune.errors.UnsupportedModelError` is raised instead when any zero unit
  is kept (naming the op or layer that keeps it) or nothing can be removed.

Removing output units of a producer can make more input columns of that producer
"zero among kept rows", which can free more units upstream; the decision is iterated to a
fixed point. At least one channel of every tensor is kept (no zero-width layers).
Non-finite inputs are not considered (``0 * inf``).

Rebuild and return type
-----------------------
Layers are cut with ``index_select`` on the weights in place of the deep copy's modules
(same module class, dtype, device and ``requires_grad``; ``in_channels`` /
``out_channels`` / ``groups`` / ``in_features`` / ``out_features`` / ``num_features`` and
BatchNorm running statistics updated). The result is then checked against the original
on ``example_input`` and on a random input of the same shape:

* normally the returned module is the deep copy itself, **same class** as ``model``, with
  smaller layers (its own ``forward`` is kept; scriptable if the original was);
* if that check fails -- typically ``forward`` hard-codes a size, e.g. ``x.view(-1, 800)``
  -- the returned module is the :class:`torch.fx.GraphModule` of the traced graph (such
  views rewritten to ``torch.flatten(x, 1)``), which is picklable, deep-copyable,
  ``torch.jit.script``-able and traceable; its ``forward`` is the graph traced in eval mode
  (Python branches on ``self.training`` are frozen to eval).

The returned model has the input model's ``training`` flags. Its ``state_dict`` shapes
differ from a freshly constructed instance of its class: save it whole (``torch.save`` of
the module, pickle) or re-create the layer sizes before ``load_state_dict``. Forward hooks
and parametrizations of the original are not adapted (parametrized layers are kept
intact).

``atol > 0`` treats weights with ``|w| <= atol`` as zero: those weights are dropped, so
outputs then differ from the original by their contribution (the result check is skipped).

Raises :class:`~mobileprune.errors.UnsupportedModelError` when the model cannot be traced by
``torch.fx`` or ``example_input`` does not run through the traced graph, and
:class:`CompactionError` if the compacted model disagrees with the original (a bug; never
silently returns a wrong model).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from mobileprune.errors import CompactionError, UnsupportedModelError
from mobileprune.graph.passes.channels import ChannelFlow, Decision, Layer, positions
from mobileprune.graph.passes.units import (analyze, channel_ids, dead_mask, dead_units,
                                            dead_weights, weight_nodes)
from mobileprune.graph.registry import args_of, handler, module_handler
from mobileprune.graph.trace import Traced, as_args, flat_tensors, random_like
from mobileprune.sparsity.report import ORIGINAL_SIZE, size_of

__all__ = ["compact", "dead_units", "channel_ids", "dead_weights", "fold_dead_weights",
           "compact_in_place", "CompactionError", "CompactionRecord", "CompactionWarning",
           "KeptUnits"]


class CompactionWarning(UserWarning):
    """:func:`compact` removed nothing (the warning says why the zero units stay)."""


@dataclass
class KeptUnits:
    """Zero output units of ``layer`` that could not be removed, and why (the op that
    blocks them, with its source line, or the consumer that needs them)."""

    layer: str
    units: list[int]
    reason: str


@dataclass
class CompactionRecord:
    """What :func:`compact` did.

    ``history``: ``[(layer, "out" | "in", kept indices)]`` for every resized layer, in
    graph order (replayable); ``removed``: ``{layer: {"out": n, "in": n}}`` units removed;
    ``kept_zero``: the zero units that stay, with the reason; ``params_*``: all
    parameters of the model; ``macs_*``: multiply-accumulates per sample of its Conv /
    Linear layers (weights x output positions, as :func:`~mobileprune.sparsity.report.
    layer_report` counts them), before and after.
    """

    history: list[tuple[str, str, list[int]]] = field(default_factory=list)
    removed: dict[str, dict[str, int]] = field(default_factory=dict)
    kept_zero: list[KeptUnits] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0

    def summary(self) -> str:
        """One line per fact, for messages and logs."""
        lines = [f"parameters {self.params_before:,} -> {self.params_after:,}, MACs "
                 f"{self.macs_before:,} -> {self.macs_after:,}"]
        lines += [f"{k}: -{v['out']} out, -{v['in']} in" for k, v in self.removed.items()]
        lines += [f"kept zero units {k.units} of {k.layer!r}: {k.reason}" for k in self.kept_zero]
        return "\n".join(lines)


# --------------------------------------------------------------------------- analysis

def _set_training(model: nn.Module, flags: dict[str, bool]) -> None:
    for name, mod in model.named_modules():
        if name in flags:
            mod.training = flags[name]


def _producers(flow: ChannelFlow) -> list[Layer]:
    """The Conv / Linear layers compaction resizes (rows and columns)."""
    return [lay for lay in flow.layers if lay.kind in ("conv", "linear")]


def _kept_zero(flow: ChannelFlow, dec: Decision) -> list[KeptUnits]:
    """The zero output units that stay, grouped by layer and reason."""
    refused = dict(flow.refused)
    resized = {lay.node: lay for lay in _producers(flow)}
    out: list[KeptUnits] = []
    for node, name, m in weight_nodes(flow):
        lay = resized.get(node)
        if lay is None:
            zero = flow.zero(m.weight).all(1)
            why = refused.get(node, "the layer is not resized")
            units = {why: zero.nonzero().flatten().tolist()} if bool(zero.any()) else {}
        else:
            units = _kept_units(flow, dec, lay)
        out += [KeptUnits(name, us, why) for why, us in units.items()]
    seen = {node for node, _, _ in weight_nodes(flow)}
    for lay in flow.layers:  # the units inside leaf modules: recurrent, attention
        if lay.kind in ("conv", "linear", "rnn", "heads") and lay.node not in seen:
            out += [KeptUnits(lay.name, us, why) for why, us in _kept_units(flow, dec, lay).items()]
    return out


def _kept_units(flow: ChannelFlow, dec: Decision, lay: Layer) -> dict[str, list[int]]:
    """``{why: [units]}``: the zero output units of ``lay`` (``lay.zero_row``) that stay."""
    kept = lay.zero_row & ~flow.removed_out(dec, lay)
    roots = dec.root[flow.out_ids(lay)]
    units: dict[str, list[int]] = {}
    for u in kept.nonzero().flatten().tolist():
        units.setdefault(dec.why.get(int(roots[u]), "kept"), []).append(u)
    return units


def _macs(flow: ChannelFlow, pos: dict[fx.Node, int]) -> int:
    return sum(m.weight.numel() * pos[node] for node, _, m in weight_nodes(flow))


def _record(t: Traced, flow: ChannelFlow, dec: Decision) -> tuple[CompactionRecord, dict]:
    """The record before resizing (removed units, kept zero units, sizes before) and the
    output positions per unit of every Conv / Linear node."""
    pos = {node: positions(node, m.weight.shape[0]) for node, _, m in weight_nodes(flow)}
    rec = CompactionRecord(kept_zero=_kept_zero(flow, dec))
    rec.params_before = rec.params_after = sum(p.numel() for p in t.work.parameters())
    rec.macs_before = rec.macs_after = _macs(flow, pos)
    for lay in flow.layers:
        if lay.kind not in ("conv", "linear", "rnn", "heads"):
            continue
        n_out = int(flow.removed_out(dec, lay).sum())
        n_in = int(flow.removed_in(dec, lay).sum())
        if n_out or n_in:
            rec.removed[lay.name] = {"out": n_out, "in": n_in}
    return rec, pos


def _refusal(rec: CompactionRecord, model: nn.Module) -> str:
    """Why nothing (or not everything) can be removed, in one message."""
    if not rec.kept_zero:
        return f"compact: {type(model).__name__} has no zero filters, channels or neurons"
    parts = "; ".join(f"layer {k.layer!r} units {k.units[:8]}{'...' if len(k.units) > 8 else ''}"
                      f": {k.reason}" for k in rec.kept_zero)
    return f"compact: zero units of {type(model).__name__} cannot be removed: {parts}"


# --------------------------------------------------------------------------- rebuild

@torch.no_grad()
def _rebuild(flow: ChannelFlow, dec: Decision) -> list[tuple[str, str, list[int]]]:
    """Resize every layer through its handler (constants of removed inputs folded into
    the biases); returns the history ``[(layer, "out" | "in", kept indices)]``."""
    history = []
    for lay in flow.layers:
        if lay.kind == "reader":
            continue
        rem_in, rem_out = flow.removed_in(dec, lay), flow.removed_out(dec, lay)
        if not bool(rem_in.any()) and not bool(rem_out.any()):
            continue
        keep_in, keep_out = (~rem_in).nonzero().flatten(), (~rem_out).nonzero().flatten()
        shift = flow.fold(lay, keep_out, rem_in.nonzero().flatten()) \
            if lay.kind in ("conv", "linear") else None
        (module_handler(lay.module) or handler(lay.node)).resize(lay.module, keep_in, keep_out,
                                                                 shift)
        _mirror(flow.gm, lay)
        if bool(rem_out.any()):
            history.append((lay.name, "out", keep_out.tolist()))
        if lay.kind in ("conv", "linear", "rnn") and bool(rem_in.any()):
            history.append((lay.name, "in", keep_in.tolist()))
    return history


def _mirror(gm: fx.GraphModule, lay: Layer) -> None:
    """The graph module's copy of a layer read by ``get_attr`` gets the resized tensors."""
    copy_ = gm.get_submodule(lay.name)
    if copy_ is lay.module:
        return
    for name, _ in list(copy_.named_parameters(recurse=False)) + \
            list(copy_.named_buffers(recurse=False)):
        setattr(copy_, name, getattr(lay.module, name))


def _rewrite_views(flow: ChannelFlow, dec: Decision) -> None:
    """Views that flatten removed channels become ``torch.flatten(x, 1)`` (their sizes
    may be hard-coded)."""
    changed = False
    for node in flow.flat_views:
        if bool(flow.removed_pos(dec, node).any()):
            node.op, node.target = "call_function", torch.flatten
            node.args, node.kwargs = (args_of(node)["input"], 1), {}
            changed = True
    if changed:
        flow.gm.graph.lint()
        flow.gm.recompile()


def _tol(ref: Tensor) -> float:
    scale = 1.0 + (float(ref.abs().max()) if ref.numel() else 0.0)
    if ref.dtype == torch.float64:
        return 1e-8 * scale
    if ref.dtype in (torch.float16, torch.bfloat16):
        return 1e-2 * scale
    return 1e-4 * scale


def _agrees(candidate: nn.Module, inputs: list[tuple], refs: list[Any], exact: bool) -> str | None:
    """None when ``candidate`` reproduces ``refs``; else the reason."""
    try:
        with torch.no_grad():
            for args, ref in zip(inputs, refs):
                got, want = flat_tensors(candidate(*args)), flat_tensors(ref)
                if len(got) != len(want):
                    return "different number of outputs"
                for g, w in zip(got, want):
                    if g.shape != w.shape:
                        return f"output shape {tuple(g.shape)} != {tuple(w.shape)}"
                    if exact and w.is_floating_point():
                        diff = float((g - w).abs().max()) if w.numel() else 0.0
                        if not diff <= _tol(w):
                            return f"max abs difference {diff:.3g}"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- public API

def compact(model: nn.Module, example_input: Any, *, atol: float = 0.0, strict: bool = False,
            return_record: bool = False) -> nn.Module | tuple[nn.Module, CompactionRecord]:
    """Return a new, smaller model in which dead filters/channels/neurons are removed.

    Args:
        model: the (pruned) model; not modified.
        example_input: a tensor, or a tuple/list of tensors (one per positional input),
            batch dimension included; used to trace shapes.
        atol: weights with ``|w| <= atol`` count as zero (``0.0``: exact zeros only; with
            ``atol > 0`` outputs differ by the dropped weights' contribution).
        strict: raise :class:`UnsupportedModelError` when zero units cannot be removed
            (naming the op or layer that keeps them) or when nothing can be removed.
        return_record: also return the :class:`CompactionRecord` (units removed per
            layer, zero units kept and why, parameters and MACs before / after).

    Returns:
        The compacted model (``(model, record)`` with ``return_record``): normally a deep
        copy of ``model`` (same class) with smaller layers; a :class:`torch.fx.GraphModule`
        if the class's own ``forward`` cannot run with the smaller layers (hard-coded
        sizes). See the module docstring. When units were removed it records the
        :func:`~mobileprune.sparsity.report.size_of` of the model it started as (attribute
        :data:`mobileprune.sparsity.report.ORIGINAL_SIZE`), which
        :func:`~mobileprune.sparsity.report.layer_report` uses. When nothing can be
        removed it warns (:class:`CompactionWarning`, saying why) and returns the copy.

    Raises:
        UnsupportedModelError: the model cannot be traced by ``torch.fx`` nor captured
            by the ``torch.export`` fallback (a branch on tensor values), ``example_input``
            does not run through it, or (``strict``) zero units cannot be removed.
        CompactionError: the compacted model does not reproduce the original (a bug).
    """
    t, flow, flags = analyze(model, example_input, atol, "compact")
    dec = flow.decide()
    rec, pos = _record(t, flow, dec)
    if strict and (rec.kept_zero or not rec.removed):
        raise UnsupportedModelError(_refusal(rec, model) + " (strict=True)")
    if not rec.removed:
        warnings.warn(_refusal(rec, model) + "; the model is returned unchanged",
                      CompactionWarning, stacklevel=2)
        _set_training(t.work, flags)
        return (t.work, rec) if return_record else t.work
    small, rec.history = _shrink(model, t, flow, dec, atol)
    _set_training(small, flags)
    rec.params_after = sum(p.numel() for p in small.parameters())
    rec.macs_after = _macs(flow, pos)
    return (small, rec) if return_record else small


def _shrink(model: nn.Module, t: Traced, flow: ChannelFlow, dec: Decision,
            atol: float) -> tuple[nn.Module, list]:
    """Resize the layers of ``t.work``; return it (or the rewritten graph module when the
    class's forward cannot run with the smaller layers) and the resize history."""
    rnd = random_like(t.args)
    with torch.no_grad():
        refs = [t.out, t.gm(*rnd)]
    inputs = [t.args, rnd]
    history = _rebuild(flow, dec)
    setattr(t.work, ORIGINAL_SIZE, getattr(model, ORIGINAL_SIZE, None) or size_of(model))
    exact = atol == 0.0
    reason = _agrees(t.work, inputs, refs, exact)
    if reason is None:
        return t.work, history
    if t.via == "export":  # its graph holds the example's sizes: never returned instead
        raise UnsupportedModelError(
            f"compact: the compacted {type(model).__name__} does not reproduce the original "
            f"with its own forward ({reason}; sizes written in the forward?), and the "
            f"torch.export graph it was traced with only runs at example_input's sizes")
    _rewrite_views(flow, dec)
    reason_gm = _agrees(t.gm, inputs, refs, exact)
    if reason_gm is None:
        t.gm.train(model.training)  # gm shares its leaf modules (and their names) with work
        setattr(t.gm, ORIGINAL_SIZE, getattr(t.work, ORIGINAL_SIZE))
        return t.gm, history
    raise CompactionError(
        f"compact: the compacted {type(model).__name__} does not reproduce the original "
        f"(class forward: {reason}; traced graph: {reason_gm}); please report this model")


def _foldable_inputs(flow: ChannelFlow, lay: Layer, m: nn.Module, keep_rows: Tensor,
                     removed_in: Tensor) -> Tensor:
    """The removed inputs of ``m`` whose weights can be zeroed in place: without a bias,
    a nonzero constant read by a kept row would need one, so it stays."""
    if m.bias is not None or not removed_in.numel():
        return removed_in
    c = flow.in_const(lay)[removed_in]
    kept = m.weight.detach().index_select(0, keep_rows).cpu()
    used = (kept.reshape(kept.shape[0], kept.shape[1], -1) != 0).any(2).any(0)
    return removed_in[~(torch.isfinite(c) & (c != 0) & used[removed_in])]


@torch.no_grad()
def fold_dead_weights(model: nn.Module, example_input: Any) -> dict[str, int]:
    """Zero, **in place**, the nonzero weights that cannot change the model's output, and
    fold the constants they carried into the consumers' biases; shapes do not change.

    The weights are the ones :func:`dead_weights` marks (what :func:`compact` would drop):
    the incoming weights of a unit whose output is unused, and the outgoing weights of a
    unit whose output is a constant ``v`` (e.g. a hidden neuron with all-zero incoming
    weights emits ``relu(b)``), whose contribution ``W[:, j] * v`` moves into the
    consumer's bias (``W[:, c].sum() * v`` for a conv). Pruning then spends its nonzero
    budget on weights that matter, and nonzero counts and active units stop counting
    columns that only ever added a constant. A consumer without a bias keeps the
    columns that would need a fold (no parameter is added in place), and depthwise
    convs and BatchNorms are left as they are.

    Returns ``{weight parameter name: number of nonzero weights zeroed}`` for every
    Conv/Linear layer that :func:`compact` can cut. The outputs in eval mode do not change
    (up to float rounding of the folded biases); this is checked on ``example_input`` and
    on a random input of the same shape, and the weights are restored and
    :class:`CompactionError` raised if they would. In training mode a BatchNorm between a
    constant unit and its consumer normalises with batch statistics, so the folded
    constant is the eval-mode one. Call it outside the optimizer step (the optimizer's
    moment estimates of the zeroed weights are not reset; keep them zero with a mask,
    e.g. :class:`mobileprune.sparsity.masks.MaskEnforcer`).
    """
    t, flow, _ = analyze(model, example_input, 0.0, "fold_dead_weights")
    dec = flow.decide()
    rnd = random_like(t.args)
    refs = [t.out, t.gm(*rnd)]
    backup: list[tuple[Tensor, Tensor]] = []
    counts: dict[str, int] = {}
    for lay in _producers(flow):
        m = model.get_submodule(lay.name)
        w = m.weight
        keep_rows = (~flow.removed_out(dec, lay)).nonzero().flatten()
        removed_in = _foldable_inputs(flow, lay, m, keep_rows.to(w.device),
                                      flow.removed_in(dec, lay).nonzero().flatten())
        fold = flow.fold(lay, keep_rows, removed_in)
        cols = torch.zeros(w.shape[1], dtype=torch.bool)
        cols[removed_in] = True
        dead = dead_mask(flow, dec, lay, w, cols).to(w.device)
        n = int((w[dead] != 0).sum())
        counts[f"{lay.name}.weight" if lay.name else "weight"] = n
        if n == 0 and not bool((fold != 0).any()):
            continue
        backup.append((w, w.detach().clone()))
        if bool((fold != 0).any()):
            backup.append((m.bias, m.bias.detach().clone()))
            b, idx = m.bias.detach(), keep_rows.to(m.bias.device)
            b[idx] = (b[idx].to(torch.float64) + fold.to(b.device)).to(b.dtype)
        w.masked_fill_(dead, 0)
    _check_fold(model, t, rnd, refs, backup)
    return counts


def _check_fold(model: nn.Module, t: Traced, rnd: tuple, refs: list,
                backup: list[tuple[Tensor, Tensor]]) -> None:
    """Restore the weights and raise when the folded model's eval outputs changed."""
    if not backup:
        return
    flags = {n: mod.training for n, mod in model.named_modules()}
    model.eval()
    reason = _agrees(model, [t.args, rnd], refs, exact=True)
    _set_training(model, flags)
    if reason is not None:
        for tensor, saved in backup:
            tensor.detach().copy_(saved)
        raise CompactionError(
            f"fold_dead_weights: zeroing the dead weights of {type(model).__name__} would "
            f"change its output ({reason}); the weights are restored; please report this model")


def compact_in_place(model: nn.Module, example_input: Any) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Remove dead filters/channels/neurons from ``model`` **in place**: the same object,
    with smaller layers, computes what :func:`compact` returns.

    :func:`compact` builds the smaller model; every submodule whose parameters or buffers
    change shape (or gain a bias for a folded constant) is then swapped into ``model`` at
    the same qualified name, and the remaining values (e.g. biases that received a folded
    constant) are copied over. Used between pruning rounds, so that training continues
    on the smaller network; hooks, parametrizations and optimizer state attached to the
    replaced layers do not carry over (build optimizers and
    :class:`~mobileprune.sparsity.masks.MaskEnforcer` after this call).

    Returns ``{module name: (old weight shape, new weight shape)}`` of the replaced
    layers (empty when nothing is dead: ``model`` is then untouched and
    :func:`compact`'s :class:`CompactionWarning` says why). As with :func:`compact`, the
    model remembers the size it started as (:data:`mobileprune.sparsity.report.ORIGINAL_SIZE`),
    so :func:`~mobileprune.sparsity.report.layer_report` counts its compression against that.

    Raises:
        UnsupportedModelError: as :func:`compact`, or the class's ``forward`` cannot run
            with smaller layers (hard-coded sizes): use :func:`compact`, which returns a
            rewritten :class:`torch.fx.GraphModule` for such models.
        CompactionError: the model does not reproduce its outputs after the swap.
    """
    before = getattr(model, ORIGINAL_SIZE, None) or size_of(model)
    small = compact(model, example_input)
    if small is model:
        return {}
    if type(small) is not type(model):
        raise UnsupportedModelError(
            f"compact_in_place: the forward of {type(model).__name__} cannot run with smaller "
            "layers (hard-coded sizes); use compact(), which returns a rewritten GraphModule")
    swap = _changed_modules(model, small)
    if not swap:
        return {}
    if "" in swap:
        raise UnsupportedModelError(
            f"compact_in_place: {type(model).__name__} is itself the layer to resize; use compact()")
    args = as_args(example_input)
    with torch.no_grad():
        flags = {n: m.training for n, m in model.named_modules()}
        small.eval()
        ref = small(*args)
    changed = _swap(model, swap)
    setattr(model, ORIGINAL_SIZE, before)
    new_sd = small.state_dict()
    with torch.no_grad():
        for key, t in model.state_dict().items():
            t.copy_(new_sd[key])
    model.eval()
    reason = _agrees(model, [args], [ref], exact=True)
    _set_training(model, flags)
    if reason is not None:
        raise CompactionError(f"compact_in_place: {type(model).__name__} does not reproduce the "
                              f"compacted model after the swap ({reason}); please report this model")
    return changed


def _changed_modules(model: nn.Module, small: nn.Module) -> dict[str, nn.Module]:
    """The submodules of ``small`` whose tensors differ in shape (or are new)."""
    old_sd, new_sd = model.state_dict(), small.state_dict()
    swap: dict[str, nn.Module] = {}
    for key, t in new_sd.items():
        if key not in old_sd or old_sd[key].shape != t.shape:
            name = key.rpartition(".")[0]
            swap[name] = small.get_submodule(name)
    return swap


def _swap(model: nn.Module, swap: dict[str, nn.Module]) -> dict[str, tuple]:
    """Put the modules ``swap`` into ``model``; returns their old and new weight shapes."""
    old_mods = dict(model.named_modules())
    changed = {}
    for name, new in swap.items():
        old_w = getattr(old_mods[name], "weight", None)
        new_w = getattr(new, "weight", None)
        changed[name] = (tuple(old_w.shape) if old_w is not None else (),
                         tuple(new_w.shape) if new_w is not None else ())
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return changed
