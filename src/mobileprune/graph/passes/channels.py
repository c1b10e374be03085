"""``ChannelFlow``: which channels of a traced model can be removed, and what constant
each channel carries (``compact``, ``dead_units`` / ``fold_dead_weights``, ADMM coupling).

Every tensor of shape ``(N, C, ...)`` of the canonical graph
(:func:`mobileprune.graph.trace`) has a *channel dimension*, dim 1 unless a handler puts
it elsewhere (``flow.axis``: a Linear on ``(N, L, E)`` tokens makes its units the last
axis; elementwise ops, residual adds and indexing keep or move it; a handler that does not
declare ``any_axis`` is refused such inputs); each position of it carries a *slot*, and
slots are tied together with a union-find: they are removed only all together. The pass is one loop over the nodes: inputs, ``get_attr`` tensors and the
output *block* their slots (never removed); every other node goes to its handler's
``channels(node, flow)`` (:mod:`mobileprune.graph.ops`), which keeps its input's slots
(per-channel ops), couples inputs (residual ``add``, ``mul``), concatenates them
(``cat``), maps them (flatten), or makes new ones (a Conv / Linear *producer*; the
internal units of a leaf module -- LSTM / GRU hidden units, attention heads, a
transformer layer's feed-forward units -- as layers whose rows and columns carry their
own slots, ``Layer.in_ids`` / ``out_ids``), and maps
the *constants* (``flow.const``: the value a channel has at every sample and position,
NaN when it is not constant). A handler returns ``None`` when it handled the node, else
the reason it cannot: the node's input channels are then blocked, the reason recorded
(op, node, source line), and its outputs get new blocked slots.

:meth:`ChannelFlow.decide` then removes a slot when, at every Conv / Linear consumer,
its weights are zero among the kept output units or its constant folds into the
consumer's bias (exact for Linear and unpadded convs; only ``0`` through zero padding and
into recurrent weights); removing output units frees more input columns, so it iterates
to a fixed point. At least one channel of every tensor (one unit of every recurrent
layer, one head of every attention) is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, fx, nn
from torch.fx.node import map_arg

from mobileprune.graph.canonical import describe, source_line
from mobileprune.graph.registry import args_of, handler, op_of
from mobileprune.graph.trace import shape_of, tensor_meta

__all__ = ["ChannelFlow", "Layer", "Block", "Decision", "nan", "map_const", "nodes_in",
           "norm_dims", "zero_padding", "positions", "where"]


# --------------------------------------------------------------------------- pure helpers

def nan(n: int) -> Tensor:
    """``n`` NaNs (float64): "not a constant"."""
    return torch.full((n,), float("nan"), dtype=torch.float64)


def map_const(fn: Callable[[Tensor], Tensor], const: Tensor, dtype: torch.dtype) -> Tensor:
    """An elementwise ``fn`` applied to a vector of constants (NaN: not constant),
    computed in the tensor's ``dtype``; NaN where ``fn`` fails or is not finite."""
    ok = torch.isfinite(const)
    if not bool(ok.any()):
        return nan(const.numel())
    try:
        with torch.no_grad():
            r = fn(torch.where(ok, const, torch.zeros_like(const)).to(dtype))
        if not isinstance(r, Tensor) or r.shape != const.shape:
            return nan(const.numel())
        r = r.detach().to("cpu", torch.float64)
    except Exception:  # noqa: BLE001 - any failure just means "not a known constant"
        return nan(const.numel())
    return torch.where(ok & torch.isfinite(r), r, nan(const.numel()))


def nodes_in(*objs: Any) -> list[fx.Node]:
    """The graph nodes inside (nested) arguments."""
    found: list[fx.Node] = []
    for o in objs:
        map_arg(o, lambda n: found.append(n) or n)
    return found


def norm_dims(dim: Any, ndim: int) -> list[int] | None:
    """An int or a sequence of ints as non-negative dims of an ``ndim`` tensor (None when
    it is not one)."""
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (tuple, list)) \
        else None
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim
                       for d in dims):
        return None
    return [d % ndim for d in dims]


def zero_padding(padding: Any) -> bool:
    """No padding (``0``, ``(0, 0)``, ``"valid"``)."""
    if isinstance(padding, str):
        return padding == "valid"
    if isinstance(padding, int):
        return padding == 0
    return all(p == 0 for p in padding)


# --------------------------------------------------------------------------- records

@dataclass
class Layer:
    """A call site compaction resizes: ``kind`` ``"conv"`` / ``"linear"`` (producers:
    rows and columns), ``"dw"`` (depthwise conv: rows follow its input channels) or
    ``"norm"`` (per-channel parameters), ``"rnn"`` / ``"heads"`` (hidden units of a
    recurrent layer, heads of an attention layer: resized by their handler) or
    ``"reader"`` (weights that read slots and decide with the others, resized as part of
    another layer). ``module`` is the module holding the tensors, ``name`` its qualified
    name; ``zero`` the ``(rows, in)`` all-zero kernel map, ``zero_row`` the all-zero
    rows (output units). ``in_ids`` / ``in_const`` are the slots and constants of its
    input columns (default: those of ``inp``), ``out_ids`` the slot of each row
    (default: those of ``node``; a recurrent layer's gate rows repeat its unit slots)."""

    node: fx.Node
    name: str
    module: nn.Module
    kind: str
    inp: fx.Node | None
    zero: Tensor | None = None
    zero_row: Tensor | None = None
    no_pad: bool = True
    in_ids: Tensor | None = None
    in_const: Tensor | None = None
    out_ids: Tensor | None = None


@dataclass
class Block:
    """Slots never removed: ``kind`` ``input`` / ``attr`` / ``output`` / ``unknown_in`` /
    ``unknown_out``; ``why`` the reason (for messages and the compaction record)."""

    ids: Tensor
    kind: str
    node: fx.Node
    why: str = ""


@dataclass
class Decision:
    """``removed_root``: bool over slot ids (meaningful at roots); ``root``: slot id ->
    root id; ``why``: root id -> why it is kept (its first blocker)."""

    removed_root: Tensor
    root: Tensor
    iterations: int = 1
    why: dict[int, str] = field(default_factory=dict)


def where(node: fx.Node) -> str:
    """``op 'transpose', node 'x' (method .transpose()) (source: m.py:3: code)``."""
    line = source_line(node)
    return (f"op {op_of(node)!r}, {describe(node)}" + (f" (source: {line})" if line else ""))


# --------------------------------------------------------------------------- the pass

class ChannelFlow:
    """The channel slots, constants and resizable layers of a canonical graph; ``root``
    is the model ``gm`` was traced from (the owner of the tensors a functional call reads
    by ``get_attr``: ``gm`` holds copies of those modules)."""

    def __init__(self, gm: fx.GraphModule, atol: float = 0.0, root: nn.Module | None = None
                 ) -> None:
        self.gm = gm
        self.root = root if root is not None else gm  # the model gm was traced from
        self.atol = atol
        self.parent: list[int] = []
        self.slots: dict[fx.Node, Tensor] = {}
        self.axis: dict[fx.Node, int] = {}  # the dim its slots index, when not 1
        self.groups: list[tuple[Tensor, str]] = []  # internal units: at least one stays
        self.const: dict[fx.Node, Tensor] = {}
        self.pieces: dict[fx.Node, list[tuple[Tensor, Tensor]]] = {}
        self.blocks: list[Block] = []
        self.layers: list[Layer] = []
        self.flat_views: list[fx.Node] = []
        self.refused: list[tuple[fx.Node, str]] = []
        self.calls: dict[str, int] = {}
        self.attrs: dict[str, int] = {}
        for n in gm.graph.nodes:
            a = args_of(n)
            if op_of(n) == "get_attr":
                self.attrs[a["target"]] = self.attrs.get(a["target"], 0) + len(n.users)
            elif a.get("module_name") is not None:
                self.calls[a["module_name"]] = self.calls.get(a["module_name"], 0) + 1
        for n in gm.graph.nodes:
            self.visit(n)

    # ---- the node loop
    def visit(self, node: fx.Node) -> None:
        key = op_of(node)
        if key == "input":
            self.fresh(node, "input", "a model input (the input signature never changes)")
        elif key == "get_attr":
            self.fresh(node, "attr", "a tensor read by get_attr")
        elif key == "output":
            self.block_inputs(node, "output", "reaches the model output (its size never "
                                              "changes)")
        else:
            why = self._aliased(node) or self._axes(node) or handler(node).channels(node, self)
            if why is not None:
                self.refuse(node, why)
            elif node not in self.slots and node not in self.pieces:
                self.fresh(node, "unknown_out", f"the output of {where(node)}")

    def refuse(self, node: fx.Node, why: str) -> None:
        """Block ``node``'s input channels and give its outputs new blocked slots."""
        if op_of(node) == "unknown":
            why = node.meta.get("mp_why", why)
        self.refused.append((node, why))
        text = f"{where(node)}: {why}"
        self.block_inputs(node, "unknown_in", text)
        self.slots.pop(node, None)
        self.pieces.pop(node, None)
        self.fresh(node, "unknown_out", text)

    def _axes(self, node: fx.Node) -> str | None:
        """Why ``node``'s handler cannot take its inputs: one carries its channels on an
        axis other than 1 (features last) and the handler only knows dim 1."""
        if handler(node).any_axis:
            return None
        for n in nodes_in(node.args, node.kwargs):
            if n in self.slots and self.axis_of(n) != 1:
                return (f"its input {n.name!r} carries its features on axis "
                        f"{self.axis_of(n)} (this op is only understood with channels on dim 1)")
        return None

    def _aliased(self, node: fx.Node) -> str | None:
        a = args_of(node)
        x = a.get("input")
        if a.get("inplace") and isinstance(x, fx.Node) and len(x.users) > 1:
            return "an in-place op on a tensor that other ops read too"
        return None

    # ---- union-find
    def new(self, n: int) -> Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: Tensor, b: Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def roots(self) -> Tensor:
        return torch.tensor([self.find(i) for i in range(len(self.parent))], dtype=torch.long)

    # ---- what handlers call
    def tracked(self, x: Any) -> bool:
        """``x`` is a node whose channel slots are known."""
        return isinstance(x, fx.Node) and x in self.slots

    shape = staticmethod(shape_of)

    @staticmethod
    def dtype(node: fx.Node) -> torch.dtype:
        tm = tensor_meta(node)
        return tm.dtype if tm is not None else torch.float32

    def axis_of(self, node: fx.Node) -> int:
        """The dim of ``node``'s tensor that its slots index (1 unless a handler said)."""
        return self.axis.get(node, 1)

    def fresh(self, node: fx.Node, kind: str | None, why: str = "") -> None:
        """New slots for ``node``'s channels (dim 1; blocked unless ``kind`` is None)."""
        shape = shape_of(node)
        self.axis.pop(node, None)
        if shape is None or len(shape) < 2:
            return
        self.slots[node] = self.new(shape[1])
        self.const[node] = nan(shape[1])
        if kind is not None:
            self.blocks.append(Block(self.slots[node], kind, node, why))

    def block_inputs(self, node: fx.Node, kind: str, why: str) -> None:
        for n in nodes_in(node.args, node.kwargs):
            if n in self.slots:
                self.blocks.append(Block(self.slots[n], kind, node, why))
            for s, _ in self.pieces.get(n, ()):
                self.blocks.append(Block(s, kind, node, why))

    def same(self, node: fx.Node, inp: fx.Node, const: Tensor, axis: int | None = None
             ) -> str | None:
        """``node`` keeps the channel positions of ``inp``: a per-channel op (the same
        axis, the batch kept), or an index (``axis``: where the channel axis lands once
        the other axes are cut or removed)."""
        si, so = shape_of(inp), shape_of(node)
        ai = self.axis_of(inp)
        ao = ai if axis is None else axis
        keeps = so is not None and si is not None and len(so) > ao and so[ao] == si[ai]
        if keeps and axis is None:
            keeps = so[0] == si[0] and (ai == 1 or len(so) == len(si))
        if not keeps:
            return f"output shape {so} does not keep the channels of input shape {si}"
        self.slots[node] = self.slots[inp]
        self.const[node] = const
        self.set_axis(node, ao)
        return None

    def set_axis(self, node: fx.Node, axis: int) -> None:
        if axis == 1:
            self.axis.pop(node, None)
        else:
            self.axis[node] = axis

    def _unfit(self, node: fx.Node, inp: Any, others: tuple) -> str | None:
        """Why ``node`` cannot keep ``inp``'s slots as a per-channel op (None: it can, or
        ``inp`` is no channel tensor and neither is ``node``: nothing to do)."""
        if not self.tracked(inp):
            return "" if shape_of(node) is None or len(shape_of(node)) < 2 \
                else "its input carries no channel slots"
        if nodes_in(others):
            return "an argument other than the input is a tensor of the graph"
        return None

    def elementwise(self, node: fx.Node, inp: Any, fn: Callable[[Tensor], Tensor],
                    *others: Any) -> str | None:
        """A per-channel op whose constant is ``fn(constant)``; ``others`` (its other
        arguments) must not be tensors of the graph."""
        why = self._unfit(node, inp, others)
        if why is not None:
            return why or None
        return self.same(node, inp, map_const(fn, self.const[inp], self.dtype(node)))

    def keep(self, node: fx.Node, inp: Any, *others: Any, const: Tensor | None = None
             ) -> str | None:
        """A per-channel op that keeps constants (or sets ``const``)."""
        why = self._unfit(node, inp, others)
        if why is not None:
            return why or None
        return self.same(node, inp, self.const[inp].clone() if const is None else const)

    def expand(self, node: fx.Node, inp: fx.Node, factor: int) -> str | None:
        """Every channel of ``inp`` becomes ``factor`` consecutive positions of ``node``."""
        si, so = shape_of(inp), shape_of(node)
        if so is None or len(so) < 2 or so[0] != si[0] or so[1] != si[1] * factor:
            return f"a view {si} -> {so} that is not a flatten of the channels"
        self.slots[node] = self.slots[inp].repeat_interleave(factor)
        self.const[node] = self.const[inp].repeat_interleave(factor)
        return None

    def produce(self, layer: Layer, const: Tensor, axis: int = 1) -> None:
        """A producer's output units: new slots carrying ``const`` (on dim ``axis`` of
        its output)."""
        self.layers.append(layer)
        self.slots[layer.node] = self.new(layer.zero_row.numel())
        self.const[layer.node] = const
        self.set_axis(layer.node, axis)

    def block(self, ids: Tensor, node: fx.Node, why: str) -> None:
        """Keep the slots ``ids`` (kind ``unknown_in``, reason ``why``)."""
        self.blocks.append(Block(ids, "unknown_in", node, why))

    def blocked(self, n: int, node: fx.Node, why: str) -> Tensor:
        """``n`` new slots, blocked with the reason ``why``."""
        ids = self.new(n)
        self.block(ids, node, why)
        return ids

    def report_units(self, node: fx.Node, name: str, m: nn.Module, kind: str, zero_row: Tensor,
                     why: str) -> None:
        """Internal units of a module ``node`` runs that its handler cannot remove: a
        ``kind`` layer whose units are all kept with the reason ``why``, so that its zero
        units (``zero_row``) are listed in the compaction record."""
        ids = self.blocked(zero_row.numel(), node, f"{where(node)}: {why}")
        self.layers.append(Layer(node, name, m, kind, None, zero_row=zero_row, out_ids=ids,
                                 in_ids=torch.zeros(0, dtype=torch.long), in_const=nan(0)))

    def in_ids(self, lay: Layer) -> Tensor:
        """The slot of each input column of ``lay``."""
        return self.slots[lay.inp] if lay.in_ids is None else lay.in_ids

    def in_const(self, lay: Layer) -> Tensor:
        """The constant of each input column of ``lay`` (NaN: not constant)."""
        return self.const[lay.inp] if lay.in_const is None else lay.in_const

    def out_ids(self, lay: Layer) -> Tensor:
        """The slot of each output row of ``lay``."""
        return self.slots[lay.node] if lay.out_ids is None else lay.out_ids

    def frozen(self, name: str, m: nn.Module) -> str | None:
        """Why layer ``name`` must not be resized (None: it may)."""
        if self.calls.get(name, 0) != 1:
            return f"module {name!r} is called {self.calls.get(name, 0)} times"
        if any(t == name or t.startswith(name + ".") for t in self.attrs):
            return f"the parameters of {name!r} are also read directly"
        from torch.nn.utils import parametrize
        if any(parametrize.is_parametrized(x) or hasattr(x, "weight_orig") for x in m.modules()):
            return f"module {name!r} is parametrised (pruning reparametrisation)"
        return None

    def owner(self, node: fx.Node, names: tuple[str, ...]) -> tuple[Any, str, str | None]:
        """``(module, name, why)`` of the module whose attributes ``names`` a functional
        call reads as its arguments of those names (``F.batch_norm(x, self.running_mean,
        ...)``); ``why`` says why it is not one such module used only here."""
        a = args_of(node)
        targets = {k: args_of(a[k]).get("target") for k in names
                   if isinstance(a.get(k), fx.Node)}
        owners = {t.rpartition(".")[0] for t in targets.values()}
        if any(op_of(a[k]) != "get_attr" for k in targets) or len(owners) != 1 \
                or any(t.rpartition(".")[2] != k for k, t in targets.items()):
            return None, "", "its per-channel tensors are not the attributes of one module"
        name = owners.pop()
        if self.calls.get(name) or any(self.attrs[t] != 1 for t in targets.values()) or \
                any(t.startswith(name + ".") and t not in targets.values() for t in self.attrs):
            return None, name, f"module {name!r} is also used elsewhere"
        return self.root.get_submodule(name), name, None

    def value(self, arg: Any) -> Any:
        """A tensor argument read by ``get_attr`` (its value), or the argument itself."""
        if op_of(arg) == "get_attr":
            mod, _, attr = args_of(arg)["target"].rpartition(".")
            return getattr(self.gm.get_submodule(mod), attr)
        return arg

    def zero(self, w: Tensor) -> Tensor:
        """(out, in) bool: every kernel weight of (out o, in c) is zero (``|w| <= atol``)."""
        z = w.detach().abs() <= self.atol
        return z.reshape(z.shape[0], z.shape[1], -1).all(2).cpu()

    # ---- decision
    def decide(self) -> Decision:
        """Which slots are removed (see the module doc), and why each kept one is kept."""
        root = self.roots()
        why = self._structural(root)
        removed, decisions = None, []
        for it in range(1, len(self.layers) + 3):
            reasons = dict(why)
            new = ~self._blocked(root, removed, reasons)
            self._keep_one(new, root, reasons)
            if removed is not None and torch.equal(new, removed):
                return Decision(new, root, it, reasons)
            decisions.append((new, reasons))
            if removed is not None and bool((removed & ~new).any()):
                break  # not monotone (keep-one interplay): use the first, sound decision
            removed = new
        return Decision(decisions[0][0], root, -1, decisions[0][1])

    def _structural(self, root: Tensor) -> dict[int, str]:
        why: dict[int, str] = {}
        for b in self.blocks:
            for r in root[b.ids].tolist():
                why.setdefault(r, b.why)
        return why

    def _blocked(self, root: Tensor, removed: Tensor | None, why: dict[int, str]) -> Tensor:
        """Slots kept by a block or by a Conv / Linear consumer that cannot drop them."""
        blocked = torch.zeros(len(self.parent), dtype=torch.bool)
        blocked[list(why)] = True
        for lay in self.layers:
            if lay.kind not in ("conv", "linear", "reader"):
                continue
            zero = lay.zero
            if removed is not None:  # only the rows that survive matter
                zero = zero[~removed[root[self.out_ids(lay)]]]
            c = self.in_const(lay)
            ok = torch.isfinite(c) if lay.no_pad else c == 0
            pos = ~(zero.all(0) | ok)
            ids = root[self.in_ids(lay)[pos]]
            blocked[ids] = True
            for r, v in zip(ids.tolist(), c[pos].tolist()):
                why.setdefault(r, f"layer {lay.name!r} reads it with nonzero weights and its "
                               + (f"constant {v:.4g} cannot fold through zero padding"
                                  if math.isfinite(v) else "values are not a constant"))
        return blocked

    def _keep_one(self, removed: Tensor, root: Tensor, why: dict[int, str]) -> None:
        sets = [(s, node) for node, s in self.slots.items()] + self.groups
        for s, label in sets:
            r = root[s]
            if s.numel() and bool(removed[r].all()):
                removed[r[0]] = False
                label = label if isinstance(label, str) else f"the last channel of {describe(label)}"
                why.setdefault(int(r[0]), f"{label} (no zero-width layers)")

    def removed_pos(self, dec: Decision, node: fx.Node) -> Tensor:
        """Bool per channel position of ``node``: removed."""
        return dec.removed_root[dec.root[self.slots[node]]]

    def removed_in(self, dec: Decision, lay: Layer) -> Tensor:
        """Bool per input column of ``lay``: removed."""
        return dec.removed_root[dec.root[self.in_ids(lay)]]

    def removed_out(self, dec: Decision, lay: Layer) -> Tensor:
        """Bool per output row of ``lay``: removed."""
        return dec.removed_root[dec.root[self.out_ids(lay)]]

    def fold(self, lay: Layer, rows: Tensor, removed_in: Tensor) -> Tensor:
        """Bias increment (float64, per row of ``rows``) of a Conv / Linear whose inputs
        ``removed_in`` go: ``sum_c W[r, c] * v_c`` over those carrying a finite constant
        (a conv's weights summed over the kernel)."""
        fold = torch.zeros(rows.numel(), dtype=torch.float64)
        if not removed_in.numel():
            return fold
        c = self.in_const(lay)[removed_in]
        use = torch.isfinite(c)
        w = lay.module.weight.detach()
        w64 = w.index_select(0, rows.to(w.device)).to("cpu", torch.float64)
        w64 = w64.reshape(w64.shape[0], w64.shape[1], -1).sum(2)
        return (w64[:, removed_in][:, use] * c[use]).sum(1)


def positions(node: fx.Node, units: int) -> int:
    """Output positions per sample of a layer with ``units`` output units."""
    s = shape_of(node)
    return math.prod(s[1:]) // units if s else 1
