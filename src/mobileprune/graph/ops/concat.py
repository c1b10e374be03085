"""Concatenation: ``torch.cat`` / ``concat`` / ``concatenate`` on a non-batch axis."""

from __future__ import annotations

import torch
from torch import fx

from mobileprune.graph.passes.channels import nan, norm_dims
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
