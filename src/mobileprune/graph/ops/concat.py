"""Concatenation: ``torch.cat`` / ``concat`` / ``concatenate`` on a non-batch axis."""

from __future__ import annotations

import torch
from torch import fx

from mobileprune.graph.passes.channels import nan, norm_dims
from mobileprune.graph.registry import OpHandler, args_of, register


@register
class Cat(OpHandler):
    key = "cat"

    def channels(self, node: fx.Node, flow) -> str | None:
        """Along the channels: the slots (and constants) concatenated; along another
        axis: the operands' channels coupled (a constant only where all agree)."""
        a = args_of(node)
        ts, so = a["tensors"], flow.shape(node)
        if not isinstance(ts, (list, tuple)) or not ts or not all(flow.tracked(t) for t in ts):
            return "an operand carries no channel slots"
        shapes = [flow.shape(t) for t in ts]
        dim = norm_dims(a["dim"], len(shapes[0])) if so is not None else None
        if dim is None or any(len(s) != len(so) for s in shapes) or dim[0] == 0:
            return f"a cat of {shapes} along dim {a['dim']!r}"
        if dim[0] == 1:
            flow.slots[node] = torch.cat([flow.slots[t] for t in ts])
            flow.const[node] = torch.cat([flow.const[t] for t in ts])
            return None
        if any(s[1] != so[1] for s in shapes):
            return f"a cat of {shapes} with different channel counts"
        c = flow.const[ts[0]].clone()
        for t in ts[1:]:
            flow.union(flow.slots[ts[0]], flow.slots[t])
            c = torch.where(flow.const[t] == c, c, nan(c.numel()))
        flow.slots[node], flow.const[node] = flow.slots[ts[0]], c
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
