"""Convolutions: ``nn.Conv1d/2d/3d`` (key ``"conv"``) and transposed convolutions."""

from __future__ import annotations

from torch import fx

from mobileprune.graph.passes.lower import as_float64
from mobileprune.graph.registry import OpHandler, args_of, register


def _ints(v, n: int) -> list[int]:
    """An int or a sequence of ints as ``n`` ints."""
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    v = v * n if len(v) == 1 else v
    return [int(t) for t in v]


def _padding(m, nd: int, kernel: list[int], dilation: list[int]) -> list[list[int]]:
    """``[[before, after]] * nd`` of a conv's ``padding`` (numbers, ``"valid"`` or
    ``"same"``: torch puts the odd extra zero after)."""
    if m.padding == "valid":
        return [[0, 0] for _ in range(nd)]
    if m.padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [[t // 2, t - t // 2] for t in total]
    return [[p, p] for p in _ints(m.padding, nd)]


@register
class Conv(OpHandler):
    key = "conv"

    def lower(self, node: fx.Node, emit) -> None:
        """``conv1d`` / ``conv2d`` with the weight as the GEMM view ``(out, in/groups*k)``."""
        a = args_of(node)
        m = a["module"]
        nd = m.weight.dim() - 2
        if nd not in (1, 2):
            raise emit.fail(node, f"{nd}-D convolution (the runtime has conv1d and conv2d)")
        if m.padding_mode != "zeros":
            raise emit.fail(node, f"padding_mode={m.padding_mode!r} (only 'zeros')")
        k, st, dl = (_ints(v, nd) for v in (m.kernel_size, m.stride, m.dilation))
        attrs = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel": k,
                 "stride": st, "padding": _padding(m, nd, k, dl), "dilation": dl,
                 "groups": m.groups}
        w = as_float64(m.weight).reshape(m.out_channels, -1)
        b = as_float64(m.bias) if m.bias is not None else None
        emit.op(node, f"conv{nd}d", [emit.value(node, a["input"])], attrs, weight=w, bias=b,
                module=a["module_name"])


@register
class ConvTranspose(OpHandler):
    key = "conv_transpose"

    def lower(self, node: fx.Node, emit) -> None:
        raise emit.fail(node, "the runtime has no transposed convolution")
