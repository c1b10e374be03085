"""Attention, lowered onto primitive runtime ops (``linear``, ``reshape``, ``permute``,
``matmul``, ``mul``, ``add``, ``activation`` softmax, ``layer_norm``):
``F.scaled_dot_product_attention`` (key ``"sdpa"``), ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from mobileprune.graph.ops.linear import linear
from mobileprune.graph.ops.norm import layer_norm
from mobileprune.graph.passes.lower import Ref
from mobileprune.graph.registry import OpHandler, args_of, register


def attend(node: fx.Node, emit, q: str, k: str, v: str, shapes: tuple, scale: float,
           mask: np.ndarray | None, tag: str) -> tuple[str, str]:
    """``softmax(q k^T * scale + mask) v`` on per-sample ``(..., L, E)``, ``(..., S, E)``,
    ``(..., S, Ev)`` values; returns (output ``(..., L, Ev)``, probabilities
    ``(..., L, S)``)."""
    qs, ks, vs = shapes
    r = len(qs)
    perm = list(range(r - 2)) + [r - 1, r - 2]
    kt = emit.op(node, "permute", [k], {"perm": perm}, shape=ks[:-2] + ks[::-1][:2],
                 name=f"{tag}.kt")
    qm = emit.op(node, "mul", [q], {"scalar": scale, "scalar_first": False}, shape=qs,
                 name=f"{tag}.qs")
    sshape = qs[:-1] + [ks[-2]]
    s = emit.op(node, "matmul", [qm, kt], shape=sshape, name=f"{tag}.scores")
    if mask is not None:
        c = emit.op(node, "constant", [], shape=[1] * (r - mask.ndim) + list(mask.shape),
                    name=f"{tag}.mask", value=mask.astype(np.float64).reshape(-1))
        s = emit.op(node, "add", [s, c], shape=sshape, name=f"{tag}.masked")
    p = emit.op(node, "activation", [s], {"fn": "softmax", "axis": r - 1}, shape=sshape,
                name=f"{tag}.p")
    o = emit.op(node, "matmul", [p, v], shape=qs[:-1] + [vs[-1]], name=f"{tag}.o")
    return o, p


def _mask(emit, node: fx.Node, attn_mask, is_causal: bool, L: int, S: int):
    """An additive float mask (``(L, S)`` or broadcastable), or None. Causal: a large
    negative number above the diagonal (softmax gives it weight 0, as torch's -inf)."""
    m = emit.static(node, attn_mask, "attn_mask")
    if m is not None and (not isinstance(m, torch.Tensor) or not m.is_floating_point()):
        raise emit.fail(node, "a boolean or non-tensor attn_mask (only additive float masks)")
    out = None if m is None else m.detach().double().numpy()
    if out is not None and out.ndim > 2:
        if out.shape[0] != 1:
            raise emit.fail(node, "an attn_mask per batch element")
        out = out[0]
    if is_causal:
        causal = np.triu(np.full((L, S), -1e30), 1)
        out = causal if out is None else out + causal
    if out is not None and not np.all(np.isfinite(np.maximum(out, -1e30))):
        raise emit.fail(node, "an attn_mask with NaN")
    return None if out is None else np.maximum(out, -1e30)


@register
class ScaledDotProductAttention(OpHandler):
    key = "sdpa"

    def channels(self, node: fx.Node, flow) -> str | None:
        return "attention: whole heads are not removed yet (its channels are kept)"

    def check(self, node: fx.Node, ctx) -> str | None:
        p = args_of(node)["dropout_p"]
        return None if p == 0 or p == 0.0 else f"dropout_p={p!r} (dropout at inference)"

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        q, k, v = (a[n] for n in ("query", "key", "value"))
        shapes = tuple(emit.sample(node, t) for t in (q, k, v))
        if not len(shapes[0]) == len(shapes[1]) == len(shapes[2]) >= 2:
            raise emit.fail(node, f"query / key / value of per-sample shapes {shapes}")
        scale = emit.static(node, a["scale"])
        scale = 1.0 / math.sqrt(shapes[0][-1]) if scale is None else float(scale)
        mask = _mask(emit, node, a["attn_mask"], bool(emit.static(node, a["is_causal"])),
                     shapes[0][-2], shapes[1][-2])
        o, _ = attend(node, emit, *(emit.value(node, t) for t in (q, k, v)), shapes, scale,
                      mask, node.name)
        emit.bind(node, o)


def _heads(node, emit, x: str, shape: list[int], w, b, h: int, tag: str) -> tuple[str, list]:
    """``x (L, E)`` projected by ``w, b`` and split in ``h`` heads: ``(h, L, E / h)``."""
    y = linear(node, emit, x, shape, w, b, name=f"{tag}.proj")
    L, E = shape[0], int(w.shape[0])
    y = emit.op(node, "reshape", [y], shape=[L, h, E // h], name=f"{tag}.split")
    return emit.op(node, "permute", [y], {"perm": [1, 0, 2]}, shape=[h, L, E // h],
                   name=f"{tag}.heads"), [h, L, E // h]


def self_attention(node: fx.Node, emit, m: nn.MultiheadAttention, xs: list[str],
                   shapes: list[list[int]], mask, tag: str) -> tuple[str, str, list[int]]:
    """``nn.MultiheadAttention`` on runtime values ``xs`` = query, key, value
    (per-sample ``(L, E)``, ``(S, Ek)``, ``(S, Ev)``): (output ``(L, E)``,
    probabilities ``(h, L, S)``, output shape)."""
    if m.bias_k is not None or m.add_zero_attn:
        raise emit.fail(node, "MultiheadAttention with add_bias_kv / add_zero_attn")
    E, h = m.embed_dim, m.num_heads
    if m._qkv_same_embed_dim:
        ws = m.in_proj_weight.chunk(3)
    else:
        ws = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    bs = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3
    heads = [_heads(node, emit, x, s, w, b, h, f"{tag}.{n}")
             for x, s, w, b, n in zip(xs, shapes, ws, bs, "qkv")]
    o, p = attend(node, emit, *(t[0] for t in heads), tuple(t[1] for t in heads),
                  1.0 / math.sqrt(E // h), mask, tag)
    L = shapes[0][0]
    o = emit.op(node, "permute", [o], {"perm": [1, 0, 2]}, shape=[L, h, E // h],
                name=f"{tag}.merge")
    o = emit.op(node, "reshape", [o], shape=[L, E], name=f"{tag}.cat")
    out = linear(node, emit, o, [L, E], m.out_proj.weight, m.out_proj.bias, name=f"{tag}.out")
    return out, p, [L, E]


@register
class MultiheadAttention(OpHandler):
    key = "multihead_attention"

    def channels(self, node: fx.Node, flow) -> str | None:
        return "multi-head attention: whole heads are not removed yet (its channels are kept)"

    def check(self, node: fx.Node, ctx) -> str | None:
        if args_of(node)["key_padding_mask"] is not None:
            return "a key_padding_mask (per-sample masks are not supported)"
        return None

    def lower(self, node: fx.Node, emit) -> None:
        """The result ``(output, weights)``: the output with the batch where the input
        has it (``batch_first``), the weights ``(N, L, S)`` averaged over heads (or
        ``(N, h, L, S)``), None unless ``need_weights``."""
        a = args_of(node)
        m = a["module"]
        bdim = 0 if m.batch_first else 1
        ins = [a[n] for n in ("query", "key", "value")]
        shapes = [emit.sample(node, t, bdim=bdim) for t in ins]
        mask = _mask(emit, node, a["attn_mask"], False, shapes[0][0], shapes[1][0])
        out, p, shape = self_attention(node, emit, m, [emit.value(node, t, bdim) for t in ins],
                                       shapes, mask, node.name)
        w = None
        if a["need_weights"]:
            w = Ref(p) if not a["average_attn_weights"] else Ref(emit.op(
                node, "mean", [p], {"axes": [0], "keepdim": False}, shape=shapes[0][:1]
                + shapes[1][:1], name=f"{node.name}.weights"))
        emit.set_static(node, (Ref(out, bdim), w))


def _activation(node: fx.Node, emit, act, x: str, shape: list[int], tag: str) -> str:
    """The feed-forward activation of a transformer layer (ReLU or GELU)."""
    if act is F.relu or isinstance(act, nn.ReLU):
        return emit.op(node, "relu", [x], shape=shape, name=tag)
    if act is F.gelu or isinstance(act, nn.GELU):
        return emit.op(node, "activation", [x], {"fn": "gelu", "approximate": getattr(
            act, "approximate", "none")}, shape=shape, name=tag)
    raise emit.fail(node, f"transformer activation {act!r} (ReLU or GELU)")


def encoder_layer(node: fx.Node, emit, m: nn.TransformerEncoderLayer, x: str,
                  shape: list[int], mask, t: str) -> str:
    """One ``nn.TransformerEncoderLayer`` on runtime value ``x`` (per-sample ``(S, E)``):
    ``x + SA(LN1(x))``, ``+ FF(LN2(.))`` (``norm_first``), else ``LN1(x + SA(x))``,
    ``LN2(. + FF(.))``; ``FF(x) = linear2(act(linear1(x)))``; dropout is the identity."""
    hidden = shape[:-1] + [m.linear1.out_features]

    def norm(x, ln, tag):
        return layer_norm(node, emit, x, shape, 1, ln.eps, ln.weight, ln.bias, name=f"{t}.{tag}")

    def sa(x):
        return self_attention(node, emit, m.self_attn, [x] * 3, [shape] * 3, mask, f"{t}.sa")[0]

    def ff(x):
        h = linear(node, emit, x, shape, m.linear1.weight, m.linear1.bias, name=f"{t}.ff1")
        h = _activation(node, emit, m.activation, h, hidden, f"{t}.act")
        return linear(node, emit, h, hidden, m.linear2.weight, m.linear2.bias, name=f"{t}.ff2")

    def add(x, y, tag):
        return emit.op(node, "add", [x, y], shape=shape, name=f"{t}.{tag}")

    if m.norm_first:
        x = add(x, sa(norm(x, m.norm1, "n1")), "r1")
        return add(x, ff(norm(x, m.norm2, "n2")), "r2")
    x = norm(add(x, sa(x), "r1"), m.norm1, "n1")
    return norm(add(x, ff(x), "r2"), m.norm2, "n2")


@register
class TransformerEncoderLayer(OpHandler):
    key = "transformer_layer"

    def channels(self, node: fx.Node, flow) -> str | None:
        return "a transformer layer: whole heads and feed-forward units are not removed yet (its channels are kept)"
    mask_arg = "src_mask"

    def check(self, node: fx.Node, ctx) -> str | None:
        if args_of(node)["src_key_padding_mask"] is not None:
            return "a src_key_padding_mask (per-sample masks are not supported)"
        return None

    def layers(self, m: nn.Module) -> tuple[list, nn.Module | None]:
        """The encoder layers and the final norm (None) of the module."""
        return [m], None

    def lower(self, node: fx.Node, emit) -> None:
        """Each layer by :func:`encoder_layer`, then the final norm if any."""
        a = args_of(node)
        layers, final = self.layers(a["module"])
        bdim = 0 if layers[0].self_attn.batch_first else 1
        shape = emit.sample(node, a["src"], bdim=bdim)
        # is_causal is a hint that the mask is causal (torch needs the mask with it)
        mask = _mask(emit, node, a[self.mask_arg], False, shape[0], shape[0])
        x = emit.value(node, a["src"], bdim)
        for i, layer in enumerate(layers):
            x = encoder_layer(node, emit, layer, x, shape, mask, f"{node.name}.{i}")
        if final is not None:
            x = layer_norm(node, emit, x, shape, 1, final.eps, final.weight, final.bias,
                           name=f"{node.name}.norm")
        emit.bind(node, Ref(x, bdim))


@register
class TransformerEncoder(TransformerEncoderLayer):
    key = "transformer_encoder"
    mask_arg = "mask"

    def layers(self, m: nn.Module) -> tuple[list, nn.Module | None]:
        return list(m.layers), m.norm

    def check(self, node: fx.Node, ctx) -> str | None:
        m = args_of(node)["module"]
        if m.norm is not None and not isinstance(m.norm, nn.LayerNorm):
            return f"a final norm {type(m.norm).__name__} (LayerNorm only)"
        if not all(isinstance(x, nn.TransformerEncoderLayer) for x in m.layers):
            return "layers other than nn.TransformerEncoderLayer"
        return super().check(node, ctx)
