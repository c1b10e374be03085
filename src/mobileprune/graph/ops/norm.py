"""Normalisation: batch norm (modules and ``F.batch_norm``), layer norm, group norm."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, fx, nn

from mobileprune.graph.passes.channels import Layer, nan
from mobileprune.graph.passes.lower import as_float64
from mobileprune.graph.registry import OpHandler, args_of, op_of, register
from mobileprune.graph.resize import resize_per_channel

_BN_TENSORS = ("running_mean", "running_var", "weight", "bias")


def _f64(t) -> Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float64)


def bn_const(c: Tensor, mean: Tensor | None, var: Tensor | None, eps: float,
             weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Eval-mode batch norm of per-channel constants ``c``: ``(c - mean) / sqrt(var +
    eps) * weight + bias``; NaN without running statistics (batch statistics)."""
    if mean is None or var is None:
        return nan(c.numel())
    c = (c - _f64(mean)) / torch.sqrt(_f64(var) + eps)
    c = c * _f64(weight) if weight is not None else c
    return c + _f64(bias) if bias is not None else c


def _norm_layer(node: fx.Node, flow, names: tuple[str, ...]) -> tuple[nn.Module | None, str,
                                                                        str | None]:
    """``(module, name, why)`` holding a norm's per-channel tensors: the module of a
    module call, else the one whose attributes the functional call reads."""
    a = args_of(node)
    if a.get("module") is not None:
        return a["module"], a["module_name"], flow.frozen(a["module_name"], a["module"])
    return flow.owner(node, names)


def _affine(emit, node: fx.Node, a: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The static ``weight`` / ``bias`` of a norm as float64 arrays (None when absent)."""
    w, b = (emit.static(node, a[k], f"the {k}") for k in ("weight", "bias"))
    return (None if w is None else as_float64(w)), (None if b is None else as_float64(b))


#: ops that read a tensor's metadata (its sizes), not its values
_METADATA = ("size", "ndim", "getattr")


def _only_reader(node: fx.Node, inp: fx.Node) -> bool:
    """Whether ``node`` is the only reader of ``inp``'s values: other users may read its
    sizes (timm's ``BatchNormAct2d`` asserts ``x.ndim == 4`` before ``F.batch_norm``)."""
    return all(u is node or op_of(u) in _METADATA for u in inp.users)


def _fold(emit, node: fx.Node, inp, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Fold ``y = x * scale + shift`` (per channel) into the Conv / Linear that produced
    ``inp``, when only this node reads its values: ``W' = W * scale``, ``b' = b * scale +
    shift`` (zeros stay zeros). True when folded."""
    if not (emit.fold_bn and emit.is_tensor(inp) and _only_reader(node, inp)):
        return False
    op = emit.producer.get(emit.refs[inp].name)
    if op is None or op["name"] != inp.name or op["op"] not in ("conv1d", "conv2d", "linear"):
        return False
    if (op["op"] == "linear" and len(op["shape"]) != 1) or op["shape"][0] != scale.size:
        return False
    op["weight"] = op["weight"] * scale[:, None]
    b = op["bias"] if op["bias"] is not None else np.zeros_like(scale)
    op["bias"] = b * scale + shift
    emit.bind(node, emit.refs[inp])
    return True


@register
class BatchNorm(OpHandler):
    key = "batch_norm"

    def channels(self, node: fx.Node, flow) -> str | None:
        """Per channel (module or ``F.batch_norm``, e.g. timm's ``BatchNormAct2d``): the
        channels keep their slots, constants go through the eval-mode affine map; its
        per-channel tensors are resized with them."""
        a = args_of(node)
        inp = a["input"]
        if not flow.tracked(inp):
            return "its input carries no channel slots"
        if a["training"] is not False:
            return "batch norm with batch statistics (training=True)"
        m, name, why = _norm_layer(node, flow, _BN_TENSORS)
        t = {k: flow.value(a[k]) for k in _BN_TENSORS}
        n = next((v.numel() for v in t.values() if v is not None), None)
        if why is None and n is not None and flow.shape(inp)[1] != n:
            why = f"{n} channels of statistics for input {flow.shape(inp)}"
        if why is not None:
            return why
        c = bn_const(flow.const[inp], t["running_mean"], t["running_var"], float(a["eps"]),
                     t["weight"], t["bias"])
        why = flow.same(node, inp, c)
        if why is None and n is not None:
            flow.layers.append(Layer(node, name, m, "norm", inp))
        return why

    def resize(self, module: nn.Module, keep_in, keep_out, shift=None) -> None:
        """Cut weight, bias and running statistics to the kept channels."""
        keep = keep_out if keep_out is not None else keep_in
        n = resize_per_channel(module, _BN_TENSORS, keep)
        if hasattr(module, "num_features"):
            module.num_features = n

    def lower(self, node: fx.Node, emit) -> None:
        """Eval-mode batch norm ``y = (x - mean) / sqrt(var + eps) * gamma + beta``:
        folded into the preceding Conv / Linear (``emit.fold_bn``), else a per-channel
        ``batchnorm`` op (``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean
        scale``)."""
        a = args_of(node)
        if a["training"] is not False:
            raise emit.fail(node, "batch norm with training=True (batch statistics)")
        mean, var = (emit.static(node, a[k], f"the {k}") for k in ("running_mean", "running_var"))
        if mean is None or var is None:
            raise emit.fail(node, "BatchNorm without running statistics "
                                  "(track_running_stats=False)")
        gamma, beta = _affine(emit, node, a)
        scale = 1.0 / np.sqrt(as_float64(var) + float(a["eps"]))
        scale = scale * gamma if gamma is not None else scale
        shift = -as_float64(mean) * scale + (beta if beta is not None else 0.0)
        inp = a["input"]
        if _fold(emit, node, inp, scale, shift):
            return
        s = emit.sample(node)
        if s[0] != scale.size:
            raise emit.fail(node, f"BatchNorm over {scale.size} channels on input "
                                  f"{emit.shape(node, inp)}")
        emit.op(node, "batchnorm", [emit.value(node, inp)], scale=scale.astype(np.float32),
                shift=shift.astype(np.float32), module=a.get("module_name"))


def layer_norm(node: fx.Node, emit, x: str, shape: list[int], k: int, eps: float, w, b,
               name: str | None = None, bdim: int = 0) -> str:
    """A ``layer_norm`` op over the last ``k`` axes of runtime value ``x`` (per-sample
    ``shape``); ``w`` / ``b`` the static affine parameters (or None)."""
    if not 1 <= k <= len(shape):
        raise emit.fail(node, f"layer norm over {k} axes of a per-sample shape {shape}")
    return emit.op(node, "layer_norm", [x], {"normalized_ndim": k, "eps": float(eps)},
                   shape=shape, name=name, bdim=bdim,
                   scale=None if w is None else as_float64(w).reshape(-1),
                   shift=None if b is None else as_float64(b).reshape(-1))


@register
class LayerNorm(OpHandler):
    key = "layer_norm"
    any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        """Over axes after the channel axis: per channel (constants are not kept: the
        affine parameters vary over those axes); over the channel axis (a transformer's
        features): kept (a removed channel would change the statistics)."""
        a = args_of(node)
        inp = a["input"]
        if not flow.tracked(inp):
            return None if flow.shape(node) is None else "its input carries no channel slots"
        ns = a["normalized_shape"]
        k = len(ns) if isinstance(ns, (list, tuple)) else 1
        if len(flow.shape(inp)) - k <= flow.axis_of(inp):
            return "a layer norm over the channel dimension (removing a channel changes " \
                   "its statistics)"
        return flow.same(node, inp, nan(len(flow.slots[inp])))

    def lower(self, node: fx.Node, emit) -> None:
        """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last
        ``len(normalized_shape)`` axes (biased variance): one ``layer_norm`` op."""
        a = args_of(node)
        r = emit.ref(node, a["input"])
        ns = emit.static(node, a["normalized_shape"], "normalized_shape")
        k = len(ns) if isinstance(ns, (list, tuple)) else 1
        if r.bdim >= len(emit.shape(node)) - k:
            raise emit.fail(node, "layer norm over the batch axis")
        w, b = (emit.static(node, a[n], f"the {n}") for n in ("weight", "bias"))
        layer_norm(node, emit, r.name, emit.sample(node, bdim=r.bdim), k, a["eps"], w, b,
                   bdim=r.bdim)
        emit.out.ops[-1]["module"] = a.get("module_name")


@register
class GroupNorm(OpHandler):
    key = "group_norm"

    def channels(self, node: fx.Node, flow) -> str | None:
        """One channel per group (an ``nn.GroupNorm``): per channel, resized with its
        channels; larger groups: kept (a removed channel changes its group's
        statistics)."""
        a = args_of(node)
        inp, m = a["input"], a.get("module")
        if not flow.tracked(inp):
            return "its input carries no channel slots"
        if m is None or m.num_groups != m.num_channels:
            return f"a group norm over groups of several channels (num_groups=" \
                   f"{a['num_groups']}): a removed channel changes its group's statistics"
        why = flow.frozen(a["module_name"], m) or flow.same(node, inp, nan(m.num_channels))
        if why is None:
            flow.layers.append(Layer(node, a["module_name"], m, "norm", inp))
        return why

    def resize(self, module: nn.Module, keep_in, keep_out, shift=None) -> None:
        keep = keep_out if keep_out is not None else keep_in
        n = module.num_channels if keep is None else int(keep.numel())
        if module.weight is not None:
            n = resize_per_channel(module, ("weight", "bias"), keep)
        module.num_channels = module.num_groups = n

    def lower(self, node: fx.Node, emit) -> None:
        """Channels in ``num_groups`` groups, each normalised over its channels and
        positions, then ``* weight[c] + bias[c]``: one ``group_norm`` op."""
        a = args_of(node)
        w, b = _affine(emit, node, a)
        emit.op(node, "group_norm", [emit.value(node, a["input"])],
                {"num_groups": int(emit.static(node, a["num_groups"])), "eps": float(a["eps"])},
                scale=w, shift=b, module=a.get("module_name"))
