"""Concatenation: ``torch.cat`` / ``concat`` / ``concatenate`` on a non-batch axis."""

from __future__ import annotations

from torch import fx

from mobileprune.graph.registry import OpHandler, args_of, register


@register
class Cat(OpHandler):
    key = "cat"

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
