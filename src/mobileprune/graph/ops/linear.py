"""Linear layers and products: ``nn.Linear`` / ``F.linear`` (key ``"linear"``) and
``matmul`` (``@``, ``torch.matmul``, ``torch.bmm``)."""

from __future__ import annotations

from torch import fx, nn

from mobileprune.graph.ops.conv import out_const
from mobileprune.graph.passes.channels import Layer, nan, where
from mobileprune.graph.passes.lower import as_float64
from mobileprune.graph.registry import OpHandler, args_of, register
from mobileprune.graph.resize import resize_dense


def linear(node: fx.Node, emit, x: str, shape: list[int], w, b, name: str | None = None,
           bdim: int = 0, module: str | None = None) -> str:
    """A ``linear`` op ``y = x W^T + b`` over the last axis of runtime value ``x``
    (per-sample ``shape``); ``w`` / ``b`` static parameters (``b`` may be None)."""
    if shape[-1] != w.shape[1]:
        raise emit.fail(node, f"linear of {shape[-1]} features with a {tuple(w.shape)} weight")
    return emit.op(node, "linear", [x], {"in_features": int(w.shape[1]),
                                         "out_features": int(w.shape[0])},
                   shape=shape[:-1] + [int(w.shape[0])], name=name, bdim=bdim,
                   weight=as_float64(w), bias=None if b is None else as_float64(b),
                   module=module)


@register
class Linear(OpHandler):
    key = "linear"
    any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        """An ``nn.Linear``: a producer (new slots for its outputs, on the last axis). On
        ``(N, in)`` its columns read the input's slots; on ``(N, ..., in)`` they do when
        the input carries its slots on the last axis, else both its columns and the
        input's traced channels are kept (blocked)."""
        a = args_of(node)
        m, inp = a.get("module"), a["input"]
        if m is None:
            return "a functional linear (its weight is not a layer to resize)"
        if not flow.tracked(inp):
            return "its input carries no channel slots"
        si, so = flow.shape(inp), flow.shape(node)
        if so is None or len(so) != len(si):
            return f"a Linear from shape {si} to {so}"
        why = flow.frozen(a["module_name"], m)
        if why is not None:
            return why
        zero = flow.zero(m.weight)
        lay = Layer(node, a["module_name"], m, "linear", inp, zero, zero.all(1))
        last = len(si) - 1
        if flow.axis_of(inp) != last:  # its features are not the traced channels: both kept
            why = (f"{where(node)}: a Linear over the last axis of an input whose traced "
                   f"channels are on axis {flow.axis_of(inp)}")
            flow.block_inputs(node, "unknown_in", why)
            lay.in_ids, lay.in_const = flow.blocked(si[-1], node, why), nan(si[-1])
        flow.produce(lay, out_const(m, zero.all(1)), axis=last)
        return None

    def resize(self, module: nn.Module, keep_in, keep_out, shift=None) -> None:
        module.in_features, module.out_features = resize_dense(module, keep_in, keep_out,
                                                               shift)

    def lower(self, node: fx.Node, emit) -> None:
        """``linear`` over the last axis (``(..., in) -> (..., out)``, any rank; the batch
        may be on any axis but the last); the weight and bias are the module's or
        ``F.linear``'s parameters (static)."""
        a = args_of(node)
        r = emit.ref(node, a["input"])
        w = emit.static(node, a["weight"], "the weight")
        b = emit.static(node, a["bias"], "the bias")
        if r.bdim == len(emit.shape(node)) - 1:
            raise emit.fail(node, "linear over the batch axis")
        linear(node, emit, r.name, emit.sample(node, a["input"], bdim=r.bdim), w, b,
               bdim=r.bdim, module=a.get("module_name"))


@register
class Matmul(OpHandler):
    key = "matmul"

    def channels(self, node: fx.Node, flow) -> str | None:
        return "a matrix product (attention scores / values): its channels are kept"

    def lower(self, node: fx.Node, emit) -> None:
        """Two activations: ``matmul``; an activation times a static 2-D matrix ``W``:
        ``linear`` with the weight ``W^T`` (``x @ W``)."""
        a = args_of(node)
        x, y = a["input"], a["other"]
        if emit.is_tensor(x) and emit.is_static(y):
            w = emit.static(node, y, "the right operand")
            if getattr(w, "dim", lambda: 0)() != 2:
                raise emit.fail(node, "a product with a constant that is not a matrix")
            linear(node, emit, emit.value(node, x), emit.sample(node, x), w.t(), None)
            return
        sx, sy = emit.shape(node, x), emit.shape(node, y)
        if len(sx) != len(sy) or len(sx) < 3:
            raise emit.fail(node, f"matmul of shapes {sx} and {sy} (two activations of the same "
                                  f"rank >= 3, batch first)")
        emit.op(node, "matmul", [emit.value(node, x), emit.value(node, y)])


@register
class Embedding(OpHandler):
    key = "embedding"

    def channels(self, node: fx.Node, flow) -> str | None:
        return "embedding vectors are not resized (their features are kept)"

    def lower(self, node: fx.Node, emit) -> None:
        raise emit.fail(node, "an embedding looks up integer indices (the runtime computes "
                              "float32 tensors and has no gather op)")
