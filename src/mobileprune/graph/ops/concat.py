"""Concatenation: ``torch.cat`` / ``concat`` / ``concatenate`` on a non-batch axis; and
constant padding (``F.pad(x, pads, value=v)``), which lowers to concatenation with
``constant`` ops."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import fx

from mobileprune.graph.passes.channels import nan, norm_dims
from mobileprune.graph.passes.lower import Ref
from mobileprune.graph.registry import OpHandler, args_of, register


def _operands(ts, flow) -> list[tuple] | None:
    """``[(slots, constants, shape)]`` of a cat's operands (a list of tracked tensors, or
    a split's tuple of pieces), None when one carries no slots."""
    if isinstance(ts, fx.Node) and ts in flow.pieces:
        metas = ts.meta.get("tensor_meta")
        return [(sl, c, tuple(int(d) for d in m.shape))
                for (sl, c), m in zip(flow.pieces[ts], metas)]
    if not isinstance(ts, (list, tuple)) or not ts or not all(flow.tracked(t) for t in ts):
        return None
    return [(flow.slots[t], flow.const[t], flow.shape(t)) for t in ts]


@register
class Cat(OpHandler):
    key = "cat"

    def channels(self, node: fx.Node, flow) -> str | None:
        """Along the channels: the slots (and constants) concatenated; along another
        axis: the operands' channels coupled (a constant only where all agree). The
        operands may be a split's tuple of pieces."""
        ops = _operands(args_of(node)["tensors"], flow)
        so = flow.shape(node)
        if not ops or so is None:
            return "an operand carries no channel slots"
        shapes = [s for _, _, s in ops]
        dim = norm_dims(args_of(node)["dim"], len(so))
        if dim is None or any(len(s) != len(so) for s in shapes) or dim[0] == 0:
            return f"a cat of {shapes} along dim {args_of(node)['dim']!r}"
        if dim[0] == 1:
            flow.slots[node] = torch.cat([sl for sl, _, _ in ops])
            flow.const[node] = torch.cat([c for _, c, _ in ops])
            return None
        if any(s[1] != so[1] for s in shapes):
            return f"a cat of {shapes} with different channel counts"
        c = ops[0][1].clone()
        for sl, ct, _ in ops[1:]:
            flow.union(ops[0][0], sl)
            c = torch.where(ct == c, c, nan(c.numel()))
        flow.slots[node], flow.const[node] = ops[0][0], c
        return None

    def lower(self, node: fx.Node, emit) -> None:
        """``concat`` on the per-sample axis; a static operand (a ViT's class token)
        becomes a ``constant`` op."""
        a = args_of(node)
        ts = a["tensors"]
        if not isinstance(ts, (list, tuple)) or not ts:
            raise emit.fail(node, "cat of a non-list")
        rank = len(emit.shape(node))
        dim = emit.static(node, a["dim"])
        if not isinstance(dim, int) or not -rank <= dim < rank or dim % rank == 0:
            raise emit.fail(node, f"cat along dim {dim!r} (must be a non-batch dimension)")
        names = [emit.operand(node, t, rank, f"c{i}") for i, t in enumerate(ts)]
        emit.op(node, "concat", names, {"axis": dim % rank - 1})


def _pad_axes(pads: list, rank: int) -> list[tuple[int, int, int]]:
    """``[(torch axis, before, after)]`` of ``F.pad``'s list (last axis first), the axes
    actually padded."""
    return [(rank - 1 - i // 2, int(pads[i]), int(pads[i + 1])) for i in range(0, len(pads), 2)
            if pads[i] or pads[i + 1]]


@register
class Pad(OpHandler):
    key = "pad"

    def channels(self, node: fx.Node, flow) -> str | None:
        """A constant pad of the axes after the channels: slots kept, a channel stays
        constant only when its constant is the pad value."""
        a = args_of(node)
        x = a["input"]
        if not flow.tracked(x):
            return None if flow.shape(node) is None else "its input carries no channel slots"
        if a["mode"] != "constant" or not all(isinstance(p, int) for p in a["pad"]):
            return f"a {a['mode']!r} pad"
        if any(axis < 2 for axis, _, _ in _pad_axes(list(a["pad"]), len(flow.shape(x)))):
            return "a pad of the batch or channel dimension"
        c, value = flow.const[x], float(a["value"] or 0.0)
        return flow.keep(node, x, const=torch.where(c == value, c, nan(c.numel())))

    def lower(self, node: fx.Node, emit) -> None:
        """Each padded axis: ``concat`` of a ``constant`` op of the pad value, the input
        and another constant (no op for a zero-width side)."""
        a = args_of(node)
        if emit.static(node, a["mode"]) != "constant":
            raise emit.fail(node, f"a {a['mode']!r} pad (the runtime pads with a constant only)")
        pads = [int(p) for p in emit.static(node, a["pad"], "the padding")]
        if any(p < 0 for p in pads):
            raise emit.fail(node, "a negative pad (a crop)")
        value = float(emit.static(node, a["value"]) or 0.0)
        cur, shape = emit.value(node, a["input"]), emit.sample(node, a["input"])
        for k, (axis, lo, hi) in enumerate(_pad_axes(pads, len(shape) + 1)):
            if axis == 0:
                raise emit.fail(node, "a pad of the batch axis")
            parts = []
            for side, n in (("lo", lo), ("x", 0), ("hi", hi)):
                if side == "x":
                    parts.append(cur)
                elif n:
                    cs = shape[:axis - 1] + [n] + shape[axis:]
                    parts.append(emit.op(node, "constant", [], shape=cs,
                                         name=f"{node.name}.{side}{k}",
                                         value=np.full(math.prod(cs), value)))
            shape = shape[:axis - 1] + [shape[axis - 1] + lo + hi] + shape[axis:]
            cur = emit.op(node, "concat", parts, {"axis": axis - 1}, shape=shape,
                          name=f"{node.name}.p{k}")
        emit.bind(node, Ref(cur))
