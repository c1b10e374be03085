"""Convolutions: ``nn.Conv1d/2d/3d`` (key ``"conv"``) and transposed convolutions."""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from mobileprune.graph.passes.channels import Layer, nan, zero_padding
from mobileprune.graph.passes.lower import as_float64
from mobileprune.graph.registry import OpHandler, args_of, register
from mobileprune.graph.resize import resize_dense


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


def no_pad(m: nn.Module) -> bool:
    """A constant input channel gives a constant contribution at every output position
    (no zero padding: every receptive field lies inside the input, or the padding
    repeats the input)."""
    if m.padding_mode != "zeros":
        return True
    if m.padding == "same":
        return all(k == 1 for k in m.kernel_size)
    return zero_padding(m.padding)


def out_const(m: nn.Module, zero_row: Tensor) -> Tensor:
    """The constant of each output unit of a producer: its bias (0 without) where all
    its weights are zero, else NaN."""
    bias = m.bias.detach().to("cpu", torch.float64) if m.bias is not None \
        else torch.zeros(zero_row.numel(), dtype=torch.float64)
    return torch.where(zero_row, bias, nan(zero_row.numel()))


def depthwise_const(m: nn.Module, c_in: Tensor, zero_row: Tensor, unpadded: bool) -> Tensor:
    """Output constants of a depthwise conv (multiplier ``out / in``) from its input
    constants ``c_in``: ``v * sum(w) + b`` (through zero padding only ``v == 0``)."""
    mult = m.out_channels // m.in_channels
    c = c_in.repeat_interleave(mult)
    w = m.weight.detach().to("cpu", torch.float64).reshape(m.out_channels, -1).sum(1)
    bias = m.bias.detach().to("cpu", torch.float64) if m.bias is not None \
        else torch.zeros(m.out_channels, dtype=torch.float64)
    ok = torch.isfinite(c) if unpadded else torch.isfinite(c) & (c == 0)
    return torch.where(zero_row, bias, torch.where(ok, c * w + bias, nan(m.out_channels)))


@register
class Conv(OpHandler):
    key = "conv"

    def channels(self, node: fx.Node, flow) -> str | None:
        """``groups == 1``: a producer (new slots); depthwise (``groups == in``): input
        channel ``c`` and its outputs ``c*m .. c*m+m-1`` are one slot; other groupings
        keep their channels."""
        a = args_of(node)
        m, inp = a["module"], a["input"]
        if not flow.tracked(inp):
            return "its input carries no channel slots"
        why = flow.frozen(a["module_name"], m)
        si, so = flow.shape(inp), flow.shape(node)
        if why is None and (so is None or len(si) != m.weight.dim() or len(so) != len(si)
                            or si[1] != m.in_channels or so[1] != m.out_channels):
            why = f"input {si} / output {so} do not match the layer"
        if why is not None:
            return why
        zero = flow.zero(m.weight)
        lay = Layer(node, a["module_name"], m, "conv", inp, zero, zero.all(1), no_pad(m))
        if m.groups == 1:
            flow.produce(lay, out_const(m, lay.zero_row))
            return None
        if m.groups != m.in_channels or m.out_channels % m.in_channels:
            return f"a grouped conv (groups={m.groups}, not 1 or in_channels)"
        lay.kind = "dw"
        flow.layers.append(lay)
        flow.slots[node] = flow.slots[inp].repeat_interleave(m.out_channels // m.in_channels)
        flow.const[node] = depthwise_const(m, flow.const[inp], lay.zero_row, lay.no_pad)
        return None

    def resize(self, module: nn.Module, keep_in, keep_out, shift=None) -> None:
        """``groups == 1``: rows and columns; depthwise: rows (``keep_out`` must be the
        outputs of the kept inputs ``keep_in``), ``groups = in_channels``."""
        m = module
        if m.groups == 1:
            m.in_channels, m.out_channels = resize_dense(m, keep_in, keep_out, shift)
            return
        if m.groups != m.in_channels:
            raise ValueError(f"cannot resize a grouped conv with groups={m.groups}")
        mult = m.out_channels // m.in_channels
        n_in, n_out = resize_dense(m, keep_in, keep_out, shift, in_dim=False)
        if n_out != n_in * mult:
            raise ValueError(f"depthwise conv: {n_out} outputs for {n_in} inputs x {mult}")
        m.in_channels = m.groups = n_in
        m.out_channels = n_out

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

    def channels(self, node: fx.Node, flow) -> str | None:
        return "transposed convolutions are not resized (their channels are kept)"

    def lower(self, node: fx.Node, emit) -> None:
        raise emit.fail(node, "the runtime has no transposed convolution")
