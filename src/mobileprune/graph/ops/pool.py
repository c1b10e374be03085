"""Pooling and reductions: max / average pooling, adaptive average pooling, ``mean``."""

from __future__ import annotations

import math

from torch import fx

import torch
from torch import Tensor

from mobileprune.graph.ops.conv import _ints
from mobileprune.graph.passes.channels import nan, norm_dims, zero_padding
from mobileprune.graph.registry import OpHandler, args_of, register


def _others(a: dict) -> dict:
    return {k: v for k, v in a.items() if k not in ("input", "module", "module_name")}


def keep_channels(node: fx.Node, flow) -> str | None:
    """Channel rule of an op that maps a constant channel to the same constant (max and
    adaptive pooling: the padding is -inf or absent; resampling)."""
    a = args_of(node)
    if a.get("return_indices"):
        return "pooling with return_indices=True"
    return flow.keep(node, a["input"], _others(a))


def avg_const(c: Tensor, padding, count_include_pad: bool, divisor_override) -> Tensor:
    """Average pooling keeps a constant unless zero padding is counted or the divisor is
    overridden; then only ``0`` stays constant."""
    if divisor_override is None and (not count_include_pad or zero_padding(padding)):
        return c.clone()
    return torch.where(c == 0, c, nan(c.numel()))


def _spatial(emit, node: fx.Node, inp) -> tuple[list[int], int]:
    """The per-sample shape ``(C, *spatial)`` of a pooling input and its 1 or 2 spatial
    dims."""
    s = emit.sample(node, inp)
    if len(s) not in (2, 3):
        raise emit.fail(node, f"pooling on input {emit.shape(node, inp)} (needs (N, C, L) or "
                              f"(N, C, H, W))")
    return s, len(s) - 1


def _pool_attrs(emit, node: fx.Node, a: dict, nd: int) -> dict:
    a = emit.static(node, {k: v for k, v in a.items() if k not in ("input", "module")},
                    "a pooling parameter")
    stride = a["stride"] if a["stride"] not in (None, [], ()) else a["kernel_size"]
    return {"kernel": _ints(a["kernel_size"], nd), "stride": _ints(stride, nd),
            "padding": _ints(a["padding"], nd), "ceil_mode": bool(a["ceil_mode"])}


@register
class MaxPool(OpHandler):
    key = "max_pool"

    def channels(self, node: fx.Node, flow) -> str | None:
        return keep_channels(node, flow)

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        if a["return_indices"]:
            raise emit.fail(node, "return_indices=True")
        _, nd = _spatial(emit, node, a["input"])
        attrs = _pool_attrs(emit, node, a, nd)
        attrs["dilation"] = _ints(emit.static(node, a["dilation"]), nd)
        emit.op(node, f"maxpool{nd}d", [emit.value(node, a["input"])], attrs)


@register
class AvgPool(OpHandler):
    key = "avg_pool"

    def channels(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        x = a["input"]
        c = avg_const(flow.const[x], a["padding"], a["count_include_pad"],
                      a["divisor_override"]) if flow.tracked(x) else None
        return flow.keep(node, x, _others(a), const=c)

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        _, nd = _spatial(emit, node, a["input"])
        attrs = _pool_attrs(emit, node, a, nd)
        div = a.get("divisor_override")
        attrs.update(count_include_pad=bool(a["count_include_pad"]),
                     divisor_override=int(div) if div else None)
        emit.op(node, f"avgpool{nd}d", [emit.value(node, a["input"])], attrs)


@register
class AdaptiveAvgPool(OpHandler):
    key = "adaptive_avg_pool"

    def channels(self, node: fx.Node, flow) -> str | None:
        return keep_channels(node, flow)

    def lower(self, node: fx.Node, emit) -> None:
        """To size 1: ``global_avgpool``; to a size dividing the input: ``avgpool``
        (kernel = stride = L / O); else ``adaptive_avgpool`` (PyTorch's bins)."""
        a = args_of(node)
        s, nd = _spatial(emit, node, a["input"])
        outs = emit.sample(node)[1:]
        x = emit.value(node, a["input"])
        if all(o == 1 for o in outs):
            emit.op(node, "global_avgpool", [x], {"keepdim": True})
        elif all(L % o == 0 for L, o in zip(s[1:], outs)):
            k = [L // o for L, o in zip(s[1:], outs)]
            emit.op(node, f"avgpool{nd}d", [x], {
                "kernel": k, "stride": k, "padding": [0] * nd, "ceil_mode": False,
                "count_include_pad": True, "divisor_override": None})
        else:
            emit.op(node, f"adaptive_avgpool{nd}d", [x], {"output_size": outs})


@register
class AdaptiveMaxPool(OpHandler):
    key = "adaptive_max_pool"

    def channels(self, node: fx.Node, flow) -> str | None:
        return keep_channels(node, flow)

    def lower(self, node: fx.Node, emit) -> None:
        raise emit.fail(node, "the runtime has no adaptive max pooling")


def _axes(emit, node: fx.Node, dim, rank: int) -> list[int]:
    """Reduction axes as sorted per-sample axes (the batch axis refused)."""
    dims = emit.static(node, dim, "the dims")
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    if dims == [] or dims == [None]:
        raise emit.fail(node, "a reduction over every axis (the batch too)")
    axes = sorted({int(d) % rank for d in dims})
    if 0 in axes:
        raise emit.fail(node, "a reduction over the batch axis")
    return [d - 1 for d in axes]


@register
class Mean(OpHandler):
    key = "mean"

    def channels(self, node: fx.Node, flow) -> str | None:
        """A reduction over axes after the channel dim: per channel (a sum scales the
        constants by the number of elements summed)."""
        a = args_of(node)
        x = a["input"]
        if not flow.tracked(x):
            return None if flow.shape(node) is None else "its input carries no channel slots"
        si = flow.shape(x)
        dims = norm_dims(a["dim"], len(si))
        if dims is None or 0 in dims or 1 in dims:
            return f"a {self.key} over dim {a['dim']!r} (the batch or channel dimension)"
        c = flow.const[x]
        if self.key == "sum":
            c = c * math.prod(si[d] for d in set(dims))
        return flow.keep(node, x, const=c.clone())

    def reduce(self, node: fx.Node, emit, name: str | None) -> tuple[str, int]:
        """The mean (over every spatial axis: ``global_avgpool``; over other axes:
        ``mean``) and the number of elements averaged."""
        a = args_of(node)
        if a["dtype"] is not None:
            raise emit.fail(node, f"{self.key} with a dtype")
        s = emit.sample(node, a["input"])
        axes = _axes(emit, node, a["dim"], len(s) + 1)
        x, keep = emit.value(node, a["input"]), bool(a["keepdim"])
        count = math.prod(s[d] for d in axes)
        shape = emit.sample(node)
        if len(s) >= 2 and axes == list(range(1, len(s))):
            return emit.op(node, "global_avgpool", [x], {"keepdim": keep}, shape=shape,
                           name=name), count
        return emit.op(node, "mean", [x], {"axes": axes, "keepdim": keep}, shape=shape,
                       name=name), count

    def lower(self, node: fx.Node, emit) -> None:
        self.reduce(node, emit, None)


@register
class Sum(Mean):
    key = "sum"

    def lower(self, node: fx.Node, emit) -> None:
        """The mean times the number of elements summed."""
        m, count = self.reduce(node, emit, f"{node.name}.mean")
        emit.op(node, "mul", [m], {"scalar": float(count), "scalar_first": False})


@register
class Amax(Mean):
    key = "amax"

    def lower(self, node: fx.Node, emit) -> None:
        raise emit.fail(node, "the runtime has no max reduction")


@register
class Interpolate(OpHandler):
    key = "interpolate"

    def channels(self, node: fx.Node, flow) -> str | None:
        return keep_channels(node, flow)

    def lower(self, node: fx.Node, emit) -> None:
        raise emit.fail(node, "the runtime has no resampling (interpolate / Upsample) op")
