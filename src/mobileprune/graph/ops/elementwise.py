"""Elementwise arithmetic: ``+ - * /`` (operators, ``torch`` functions, methods, in
place), ``//`` of sizes, ``-x`` and ``x ** 2`` written as ``torch.square``."""

from __future__ import annotations

import math
import operator
from typing import Any, ClassVar

import torch
from torch import Tensor, fx

from mobileprune.graph.ops.activation import pointwise
from mobileprune.graph.passes.channels import nan, nodes_in
from mobileprune.graph.registry import OpHandler, args_of, register

_SCALAR = (int, float, bool)


def combine(key: str, ca: Tensor, cb: Tensor, alpha: float) -> Tensor:
    """Constants of ``a + alpha b`` / ``a - alpha b`` / ``a * b`` per channel (NaN where
    either is not constant; ``0 * anything == 0``)."""
    ok = torch.isfinite(ca) & torch.isfinite(cb)
    c = {"add": lambda: ca + alpha * cb, "sub": lambda: ca - alpha * cb,
         "mul": lambda: ca * cb}[key]()
    c = torch.where(ok, c, nan(c.numel()))
    if key == "mul":
        c = torch.where((ca == 0) | (cb == 0), torch.zeros_like(c), c)
    return c


def _number(v: Any) -> float | None:
    """A finite Python number or 0-d tensor as a float, else None."""
    if isinstance(v, torch.Tensor) and v.dim() == 0:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


class Binary(OpHandler):
    """``input <op> other``: sizes and numbers (static: computed here), a tensor and a
    number (``attrs`` ``scalar`` / ``scalar_first``), or two tensors of the same rank that
    broadcast per sample (a static tensor operand becomes a ``constant`` op)."""

    py: ClassVar[Any] = None  # the Python operator
    any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        """A tensor and a number: per channel (constants mapped); two tensors with the
        same channels (``add`` / ``sub`` / ``mul``: residuals, squeeze-excitation
        gates): their slots are coupled; numbers / sizes: nothing to track."""
        a = args_of(node)
        x, y, alpha = a["input"], a["other"], a.get("alpha", 1)
        tx, ty = flow.tracked(x), flow.tracked(y)
        if not (tx or ty):
            return None
        if nodes_in(alpha):
            return "alpha is a tensor of the graph"
        if tx and isinstance(y, _SCALAR):
            return flow.elementwise(node, x, lambda t: self.py(t, y * alpha))
        if ty and isinstance(x, _SCALAR):
            return flow.elementwise(node, y, lambda t: self.py(x, t * alpha))
        if not (tx and ty):
            return "an operand is a tensor without channel slots (a parameter or buffer)"
        return self.couple(node, flow, x, y, float(alpha))

    def couple(self, node: fx.Node, flow, x: fx.Node, y: fx.Node, alpha: float) -> str | None:
        if self.key not in ("add", "sub", "mul"):
            return f"{self.key} of two tensors"
        sx, sy, so = flow.shape(x), flow.shape(y), flow.shape(node)
        ax = flow.axis_of(x)
        if flow.axis_of(y) != ax:
            return (f"its operands carry their channels on different axes ({ax} and "
                    f"{flow.axis_of(y)})")
        if so is None or not (len(sx) == len(sy) == len(so) and sx[ax] == sy[ax] == so[ax]):
            return f"operands {sx} and {sy} do not share the channel dimension"
        flow.union(flow.slots[x], flow.slots[y])
        flow.slots[node] = flow.slots[x]
        flow.set_axis(node, ax)
        flow.const[node] = combine(self.key, flow.const[x], flow.const[y], alpha)
        return None

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        x, y = a["input"], a["other"]
        if a.get("alpha", 1) != 1:
            raise emit.fail(node, f"{self.key} with alpha={a['alpha']!r}")
        if emit.is_static(x) and emit.is_static(y):
            emit.set_static(node, self.py(emit.static(node, x), emit.static(node, y)))
            return
        if a.get("inplace"):
            emit.check_inplace(node, x)
        self.tensors(node, emit, x, y)

    def tensors(self, node: fx.Node, emit, x: Any, y: Any) -> None:
        kind = self.key
        nx, ny = (_number(emit.static(node, v)) if emit.is_static(v) else None for v in (x, y))
        if nx is not None or ny is not None:
            t, num = (y, nx) if nx is not None else (x, ny)
            emit.op(node, kind, [emit.value(node, t)],
                    {"scalar": num, "scalar_first": nx is not None})
            return
        rank = len(emit.shape(node))
        names = [emit.operand(node, v, rank, f"operand{i}") for i, v in enumerate((x, y))]
        sx, sy = (emit.shape(node, v) if emit.is_tensor(v) else None for v in (x, y))
        if sx is not None and sy is not None and len(sx) != len(sy):
            raise emit.fail(node, f"{kind} of shapes {sx} and {sy} (they must have the same "
                                  f"rank and broadcast)")
        emit.op(node, kind, names)


@register
class Add(Binary):
    key, py = "add", operator.add


@register
class Sub(Binary):
    key, py = "sub", operator.sub


@register
class Mul(Binary):
    key, py = "mul", operator.mul


@register
class Div(Binary):
    key, py = "div", operator.truediv

    def tensors(self, node: fx.Node, emit, x: Any, y: Any) -> None:
        """``x / c`` is ``x * (1 / c)`` (within one rounding); else the ``div`` op."""
        c = _number(emit.static(node, y)) if emit.is_static(y) else None
        if c is not None and c != 0.0:
            emit.op(node, "mul", [emit.value(node, x)], {"scalar": 1.0 / c,
                                                         "scalar_first": False})
            return
        super().tensors(node, emit, x, y)


@register
class FloorDiv(Binary):
    key, py = "floordiv", operator.floordiv

    def tensors(self, node: fx.Node, emit, x: Any, y: Any) -> None:
        raise emit.fail(node, "floor division of tensor values (sizes only)")


@register
class Neg(OpHandler):
    key = "neg"
    any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        return pointwise(node, flow, self.key)

    def lower(self, node: fx.Node, emit) -> None:
        """``-x`` is ``x * -1``."""
        a = args_of(node)
        if emit.is_static(a["input"]):
            emit.set_static(node, -emit.static(node, a["input"]))
            return
        emit.op(node, "mul", [emit.value(node, a["input"])], {"scalar": -1.0,
                                                              "scalar_first": False})


@register
class Square(OpHandler):
    key = "square"
    any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        return pointwise(node, flow, self.key)

    def lower(self, node: fx.Node, emit) -> None:
        """``x ** 2`` is ``x * x``."""
        x = emit.value(node, args_of(node)["input"])
        emit.op(node, "mul", [x, x])


class Compare(Binary):
    """A comparison of sizes or numbers (static); of tensor values it is refused (the
    runtime computes float32 tensors, not booleans)."""

    def tensors(self, node: fx.Node, emit, x: Any, y: Any) -> None:
        raise emit.fail(node, "a comparison of tensor values (the runtime has no boolean "
                              "tensors)")


for _k in ("eq", "ne", "lt", "le", "gt", "ge"):
    register(type(_k.title(), (Compare,), {"key": _k, "py": getattr(operator, _k),
                                           "__module__": __name__}))
