"""Linear layers and products: ``nn.Linear`` / ``F.linear`` (key ``"linear"``) and
``matmul`` (``@``, ``torch.matmul``, ``torch.bmm``)."""

from __future__ import annotations

from torch import fx

from mobileprune.graph.passes.lower import as_float64
from mobileprune.graph.registry import OpHandler, args_of, register


@register
class Linear(OpHandler):
    key = "linear"

    def lower(self, node: fx.Node, emit) -> None:
        """``linear`` over the last axis (``(..., in) -> (..., out)``); the weight and bias
        are the module's or ``F.linear``'s parameters (static)."""
        a = args_of(node)
        w = emit.static(node, a["weight"], "the weight")
        b = emit.static(node, a["bias"], "the bias")
        emit.op(node, "linear", [emit.value(node, a["input"])],
                {"in_features": int(w.shape[1]), "out_features": int(w.shape[0])},
                weight=as_float64(w), bias=None if b is None else as_float64(b),
                module=a.get("module_name"))


@register
class Matmul(OpHandler):
    key = "matmul"

    def lower(self, node: fx.Node, emit) -> None:
        """Two activations: ``matmul``; an activation times a static 2-D matrix ``W``:
        ``linear`` with the weight ``W^T`` (``x @ W``)."""
        a = args_of(node)
        x, y = a["input"], a["other"]
        if emit.is_tensor(x) and emit.is_static(y):
            w = emit.static(node, y, "the right operand")
            if getattr(w, "dim", lambda: 0)() != 2:
                raise emit.fail(node, "a product with a constant that is not a matrix")
            emit.op(node, "linear", [emit.value(node, x)],
                    {"in_features": int(w.shape[0]), "out_features": int(w.shape[1])},
                    weight=as_float64(w).T.copy(), bias=None)
            return
        sx, sy = emit.shape(node, x), emit.shape(node, y)
        if len(sx) != len(sy) or len(sx) < 3:
            raise emit.fail(node, f"matmul of shapes {sx} and {sy} (two activations of the same "
                                  f"rank >= 3, batch first)")
        emit.op(node, "matmul", [emit.value(node, x), emit.value(node, y)])
