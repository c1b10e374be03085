"""Eval-mode no-ops: the output is the input (Identity, Dropout in eval, StochasticDepth
in eval, casts to the same dtype); ``torch._assert`` produces no tensor."""

from __future__ import annotations

from torch import fx

from mobileprune.graph.registry import OpHandler, args_of, register


def _keep(node: fx.Node, flow) -> str | None:
    """The output is the input: slots and constants kept."""
    return flow.keep(node, args_of(node)["input"])


@register
class Identity(OpHandler):
    key = "identity"
    eval_noop = any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        return _keep(node, flow)


@register
class Dropout(OpHandler):
    key = "dropout"
    eval_noop = any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        if args_of(node).get("training") is not False:
            return "dropout in training mode (random) in the traced (eval-mode) graph"
        return _keep(node, flow)

    def check(self, node: fx.Node, ctx) -> str | None:
        if args_of(node).get("training") is not False:
            return "dropout with training=True in the traced (eval-mode) graph"
        return None


@register
class StochasticDepth(Dropout):
    key = "stochastic_depth"


@register
class Assert(OpHandler):
    key = "assert"
    eval_noop = any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        return None  # a check of sizes: no tensor comes out


@register
class To(OpHandler):
    key = "to"
    eval_noop = any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        """A cast: slots kept, constants rounded to the new dtype."""
        return flow.elementwise(node, args_of(node)["input"], lambda t: t)

    def check(self, node: fx.Node, ctx) -> str | None:
        tm = node.meta.get("tensor_meta")
        dtype = getattr(tm, "dtype", None)
        if dtype is not None and str(dtype) != "torch.float32":
            return f"a cast to {dtype} (the runtime computes float32)"
        return None
