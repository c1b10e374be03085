"""Normalisation: batch norm (modules and ``F.batch_norm``), layer norm, group norm."""

from __future__ import annotations

import numpy as np
from torch import fx

from mobileprune.graph.passes.lower import as_float64
from mobileprune.graph.registry import OpHandler, args_of, register


def _affine(emit, node: fx.Node, a: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The static ``weight`` / ``bias`` of a norm as float64 arrays (None when absent)."""
    w, b = (emit.static(node, a[k], f"the {k}") for k in ("weight", "bias"))
    return (None if w is None else as_float64(w)), (None if b is None else as_float64(b))


def _fold(emit, node: fx.Node, inp, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Fold ``y = x * scale + shift`` (per channel) into the Conv / Linear that produced
    ``inp``, when only this node reads it: ``W' = W * scale``, ``b' = b * scale + shift``
    (zeros stay zeros). True when folded."""
    if not (emit.fold_bn and emit.is_tensor(inp) and len(inp.users) == 1):
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

    def lower(self, node: fx.Node, emit) -> None:
        """Channels in ``num_groups`` groups, each normalised over its channels and
        positions, then ``* weight[c] + bias[c]``: one ``group_norm`` op."""
        a = args_of(node)
        w, b = _affine(emit, node, a)
        emit.op(node, "group_norm", [emit.value(node, a["input"])],
                {"num_groups": int(emit.static(node, a["num_groups"])), "eps": float(a["eps"])},
                scale=w, shift=b, module=a.get("module_name"))
