"""Elementwise activations and softmax: one handler per key, lowered to the runtime's
``relu`` or ``activation`` op (function and numbers in ``attrs``)."""

from __future__ import annotations

from typing import ClassVar

from torch import fx

from mobileprune.graph.canonical import BY_KEY
from mobileprune.graph.passes.channels import nan, norm_dims
from mobileprune.graph.registry import OpHandler, args_of, register


def pointwise(node: fx.Node, flow, key: str) -> str | None:
    """Channel rule of an elementwise op: the input's slots, each constant mapped through
    the op's function form (``SPECS[key].functions[0]``) with the node's arguments."""
    spec = BY_KEY[key]
    a = args_of(node)
    params = {p: a[p] for p in spec.params[1:] if p != "inplace" and p in a}
    fn = spec.functions[0]
    return flow.elementwise(node, a["input"], lambda t: fn(t, **params), params)


class Activation(OpHandler):
    """``activation`` with function ``fn`` (default: the key) and the numbers ``params``
    (the bound arguments of those names; ``fixed`` are set, e.g. ReLU6's bounds)."""

    any_axis = True  # elementwise: the slots stay on their axis
    fn: ClassVar[str | None] = None
    params: ClassVar[tuple[str, ...]] = ()
    fixed: ClassVar[dict] = {}

    def channels(self, node: fx.Node, flow) -> str | None:
        return pointwise(node, flow, self.key)

    def attrs(self, node: fx.Node, emit, a: dict) -> dict:
        vals = emit.static(node, {k: a[k] for k in self.params}, "a parameter")
        bad = [k for k, v in vals.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise emit.fail(node, f"parameter(s) {bad} are not numbers")
        return {"fn": self.fn or self.key, **{k: float(v) for k, v in vals.items()},
                **self.fixed}

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        if a.get("inplace"):
            emit.check_inplace(node, a["input"])
        attrs = self.attrs(node, emit, a)
        emit.op(node, "activation", [emit.value(node, a["input"])], attrs)


def _activation(key: str, fn: str | None = None, params: tuple = (), fixed: dict | None = None):
    cls = type(key.title().replace("_", ""), (Activation,),
               {"key": key, "fn": fn, "params": params, "fixed": fixed or {},
                "__module__": __name__})
    return register(cls)


@register
class Relu(Activation):
    key = "relu"

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        if a.get("inplace"):
            emit.check_inplace(node, a["input"])
        emit.op(node, "relu", [emit.value(node, a["input"])])


Relu6 = _activation("relu6", "hardtanh", fixed={"min_val": 0.0, "max_val": 6.0})
Hardtanh = _activation("hardtanh", params=("min_val", "max_val"))
LeakyRelu = _activation("leaky_relu", params=("negative_slope",))
Elu = _activation("elu", params=("alpha",))
Sigmoid = _activation("sigmoid")
Tanh = _activation("tanh")
Hardsigmoid = _activation("hardsigmoid")
Hardswish = _activation("hardswish")
Silu = _activation("silu")
# functions the runtime has no code for yet: refused by name (``emit.op``) until it does
Selu = _activation("selu")
Celu = _activation("celu", params=("alpha",))
Mish = _activation("mish")
Softplus = _activation("softplus", params=("beta", "threshold"))
Abs = _activation("abs")
Exp = _activation("exp")
Sqrt = _activation("sqrt")


@register
class Gelu(Activation):
    key = "gelu"

    def attrs(self, node: fx.Node, emit, a: dict) -> dict:
        approx = emit.static(node, a["approximate"])
        if approx not in ("none", "tanh"):
            raise emit.fail(node, f"gelu approximate={approx!r}")
        return {"fn": "gelu", "approximate": approx}


@register
class Softmax(Activation):
    key = "softmax"
    any_axis = False

    def channels(self, node: fx.Node, flow) -> str | None:
        """Over an axis after the channel dim: per channel (constants not kept); over the
        channels: kept (a removed channel changes the normaliser)."""
        a = args_of(node)
        x = a["input"]
        if not flow.tracked(x):
            return None if flow.shape(node) is None else "its input carries no channel slots"
        dims = norm_dims(a["dim"], len(flow.shape(x)))
        if dims is None or dims[0] < 2:
            return f"a {self.key} over dim {a['dim']!r} (the batch or channel dimension)"
        return flow.same(node, x, nan(flow.shape(x)[1]))

    def attrs(self, node: fx.Node, emit, a: dict) -> dict:
        """Softmax over one per-sample axis, given explicitly (``dim=None`` is torch's
        deprecated implicit choice)."""
        if a["dtype"] is not None:
            raise emit.fail(node, f"{self.key} with a dtype")
        nd = len(emit.shape(node, a["input"]))
        dim = emit.static(node, a["dim"])
        if not isinstance(dim, int) or not -nd <= dim < nd or dim % nd == 0:
            raise emit.fail(node, f"{self.key} over dim {dim!r} (must be one non-batch "
                                  f"dimension, given explicitly)")
        return {"fn": self.key, "axis": dim % nd - 1}


@register
class LogSoftmax(Softmax):
    key = "log_softmax"


@register
class Clamp(Activation):
    key = "clamp"

    def lower(self, node: fx.Node, emit) -> None:
        """``clamp(min=0)``: ``relu``; both bounds: ``hardtanh``."""
        a = args_of(node)
        lo, hi = emit.static(node, a["min"], "min"), emit.static(node, a["max"], "max")
        if a.get("inplace"):
            emit.check_inplace(node, a["input"])
        x = emit.value(node, a["input"])
        if hi is None and lo is not None and float(lo) == 0.0:
            emit.op(node, "relu", [x])
        elif lo is not None and hi is not None:
            emit.op(node, "activation", [x], {"fn": "hardtanh", "min_val": float(lo),
                                              "max_val": float(hi)})
        else:
            raise emit.fail(node, f"clamp with one bound {lo if hi is None else hi!r} "
                                  f"(the runtime clamps to [min, max] or at 0)")
