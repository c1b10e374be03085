"""Attention, lowered onto primitive runtime ops (``linear``, ``reshape``, ``permute``,
``matmul``, ``mul``, ``add``, ``activation`` softmax, ``layer_norm``):
``F.scaled_dot_product_attention`` (key ``"sdpa"``), ``nn.MultiheadAttention``, timm's
``Attention`` (key ``"timm_attention"``) and ``nn.TransformerEncoderLayer`` /
``nn.TransformerEncoder``.

Compaction (:func:`attention_units`, :func:`feed_forward_units`): a head of a
``MultiheadAttention`` or of timm's ``Attention`` is removed when its value rows are all
zero (its output is then the constant value bias: the attention probabilities sum to 1;
folded into ``out_proj`` / ``proj``'s bias) or the output projection's columns of the
head are all zero (its output is not read); its q, k and v rows go and ``num_heads``
drops (a ``MultiheadAttention`` becomes a :class:`PrunedMultiheadAttention`; timm's
``attn_dim`` drops). Heads keep one ``head_dim`` (single dims of a head stay). A head whose only q / k rows are zero is kept (it
attends uniformly: its output still depends on the input). The feed-forward hidden units
of a transformer layer are removed as those of any ``Linear -> activation -> Linear``.
The embedding width (the residual stream, read by the layer norms) is kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from mobileprune.graph.ops.conv import out_const
from mobileprune.graph.ops.linear import linear
from mobileprune.graph.ops.norm import layer_norm
from mobileprune.graph.passes.channels import Layer, map_const, nan, where
from mobileprune.graph.passes.lower import Ref
from mobileprune.graph.registry import OpHandler, args_of, register
from mobileprune.graph.resize import as_param, cut, resize_dense
from mobileprune.graph.trace import defaulted


def qkv(m: nn.MultiheadAttention) -> tuple[tuple, tuple]:
    """``((w_q, w_k, w_v), (b_q, b_k, b_v))`` of an attention module (packed
    ``in_proj_weight`` or ``q/k/v_proj_weight`` of ``nn.MultiheadAttention``, the
    ``qkv`` Linear of timm's ``Attention``; biases None without)."""
    n = m.num_heads * m.head_dim
    if not isinstance(m, nn.MultiheadAttention):
        w, b = m.qkv.weight, m.qkv.bias
    elif m.in_proj_weight is not None:
        w, b = m.in_proj_weight, m.in_proj_bias
    else:
        w, b = None, m.in_proj_bias
    ws = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight) if w is None else w.split(n)
    bs = b.split(n) if b is not None else (None,) * 3
    return tuple(ws), tuple(bs)


def out_proj(m: nn.Module) -> tuple[nn.Linear, str]:
    """The output projection of an attention module and its attribute name
    (``out_proj`` of ``nn.MultiheadAttention``, ``proj`` of timm's ``Attention``)."""
    return (m.out_proj, "out_proj") if isinstance(m, nn.MultiheadAttention) else (m.proj, "proj")


def _additive_mask(attn_mask, key_padding_mask, n: int, h: int, dtype) -> torch.Tensor | None:
    """One additive float mask broadcastable to ``(n * h, L, S)`` from an ``attn_mask``
    (``(L, S)`` or ``(n * h, L, S)``) and a ``key_padding_mask`` ``(n, S)`` (boolean:
    True is masked, as in ``nn.MultiheadAttention``; float: added)."""
    def additive(m):
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    out = None if attn_mask is None else additive(attn_mask)
    if key_padding_mask is not None:
        kp = additive(key_padding_mask).view(n, 1, 1, -1).expand(n, h, 1, -1)
        kp = kp.reshape(n * h, 1, -1)
        out = kp if out is None else out + kp
    return out


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose heads :func:`mobileprune.compact` cut:
    ``num_heads`` heads of ``head_dim`` each, ``num_heads * head_dim`` possibly less than
    ``embed_dim`` (which stays the width of the inputs and of the output). Its forward
    is the reference computation of ``nn.MultiheadAttention`` (projections, softmax of
    the scaled dot products plus the masks, weighted values, ``out_proj``) on batched
    inputs; ``_qkv_same_embed_dim`` is False so that torch's fused transformer paths,
    which assume ``num_heads * head_dim == embed_dim``, are not taken."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        """As ``nn.MultiheadAttention.forward`` (``is_causal`` is a hint: ``attn_mask``
        must hold the causal mask)."""
        if query.dim() != 3:
            raise ValueError(f"{type(self).__name__} takes batched 3-D inputs")
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        (ws, bs), h, d = qkv(self), self.num_heads, self.head_dim
        L, n, S = query.shape[0], query.shape[1], key.shape[0]
        q, k, v = (F.linear(t, w, b).reshape(t.shape[0], n * h, d).transpose(0, 1)
                   for t, w, b in zip((query, key, value), ws, bs))
        scores = torch.bmm(q * (1.0 / math.sqrt(d)), k.transpose(1, 2))
        mask = _additive_mask(attn_mask, key_padding_mask, n, h, scores.dtype)
        p = torch.softmax(scores if mask is None else scores + mask, dim=-1)
        o = torch.bmm(F.dropout(p, self.dropout, self.training), v)
        out = self.out_proj(o.transpose(0, 1).reshape(L, n, h * d))
        if self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        p = p.view(n, h, L, S)
        return out, (p.mean(1) if average_attn_weights else p)


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
        return ("a functional scaled_dot_product_attention (heads are removed in "
                "nn.MultiheadAttention and timm's Attention modules; its channels are kept)")

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
    """``nn.MultiheadAttention`` (or timm's ``Attention``) on runtime values ``xs`` =
    query, key, value (per-sample ``(L, E)``, ``(S, Ek)``, ``(S, Ev)``): (output
    ``(L, E)``, probabilities ``(h, L, S)``, output shape)."""
    why = _heads_unfit(m)
    if why is not None:
        raise emit.fail(node, why)
    (ws, bs), h, d = qkv(m), m.num_heads, m.head_dim
    heads = [_heads(node, emit, x, s, w, b, h, f"{tag}.{n}")
             for x, s, w, b, n in zip(xs, shapes, ws, bs, "qkv")]
    o, p = attend(node, emit, *(t[0] for t in heads), tuple(t[1] for t in heads),
                  1.0 / math.sqrt(d), mask, tag)
    L = shapes[0][0]
    o = emit.op(node, "permute", [o], {"perm": [1, 0, 2]}, shape=[L, h, d],
                name=f"{tag}.merge")
    o = emit.op(node, "reshape", [o], shape=[L, h * d], name=f"{tag}.cat")
    proj = out_proj(m)[0]
    out = linear(node, emit, o, [L, h * d], proj.weight, proj.bias, name=f"{tag}.out")
    return out, p, [L, proj.out_features]


def _heads_unfit(m: nn.Module) -> str | None:
    """Why the heads of attention module ``m`` are not the plain computation
    (:class:`PrunedMultiheadAttention`'s, timm's fused or not) this module handles."""
    if isinstance(m, nn.MultiheadAttention):
        if m.bias_k is not None or m.add_zero_attn:
            return "attention with add_bias_kv / add_zero_attn (its heads are kept)"
        return None
    extra = [n for n in ("q_norm", "k_norm", "norm") if not isinstance(getattr(m, n, None),
                                                                     nn.Identity)]
    if extra or getattr(m, "gate", None) is not None:
        return f"timm attention with {', '.join(extra) or 'a gate'} (its heads are kept)"
    return None


def _zero_dims(flow, m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool per inner dim: (one of its q / k / v rows is zero; its v row is zero): the
    zero units the record lists, and the dims whose output is constant."""
    zq, zk, zv = (flow.zero(w).all(1) for w in qkv(m)[0])
    return zq | zk | zv, zv


def attention_units(node: fx.Node, flow, m: nn.Module, name: str) -> None:
    """Register the heads of ``m`` (qualified ``name``, run by ``node``) with ``flow``
    (module doc): one slot per inner dim, the dims of a head tied (a head goes whole),
    a ``"heads"`` layer for the q / k / v rows, and ``out_proj`` as a ``"linear"`` layer
    whose columns read those slots, a head with all-zero value rows carrying its value
    bias as constant (folded into ``out_proj``'s bias); ``out_proj``'s rows are kept."""
    (ws, bs), d = qkv(m), m.head_dim
    n = int(ws[0].shape[0])
    dims = flow.new(n)
    flow.union(dims[::d].repeat_interleave(d), dims)
    flow.groups.append((dims, f"the last head of {name!r}"))
    zero, zv = _zero_dims(flow, m)
    empty = torch.zeros(0, dtype=torch.long)
    flow.layers.append(Layer(node, name, m, "heads", None, zero_row=zero,
                             in_ids=empty, in_const=nan(0), out_ids=dims))
    bv = torch.zeros(n, dtype=torch.float64) if bs[2] is None \
        else bs[2].detach().to("cpu", torch.float64)
    proj, attr = out_proj(m)
    zo = flow.zero(proj.weight)
    kept = flow.blocked(zo.shape[0], node, f"{where(node)}: the embedding width of {name!r} "
                                           f"(the output of its {attr}) is kept")
    flow.layers.append(Layer(node, f"{name}.{attr}", proj, "linear", None, zo,
                             zo.all(1), in_ids=dims, in_const=torch.where(zv, bv, nan(n)),
                             out_ids=kept))


def feed_forward_units(node: fx.Node, flow, lin1: nn.Linear, lin2: nn.Linear, act,
                       names: tuple[str, str]) -> None:
    """Register the hidden units of ``lin2(act(lin1(x)))`` inside the module run by
    ``node`` (qualified ``names``): two ``"linear"`` layers, ``lin1``'s columns and
    ``lin2``'s rows kept (the embedding width), ``lin2``'s columns reading ``lin1``'s
    units with the constant ``act(bias)`` of an all-zero row (folded into ``lin2``'s
    bias)."""
    z1, z2 = flow.zero(lin1.weight), flow.zero(lin2.weight)
    hidden = flow.new(z1.shape[0])
    flow.groups.append((hidden, f"the last hidden unit of {names[0]!r}"))
    why = f"{where(node)}: the embedding width of a transformer layer is kept"
    c1 = map_const(act, out_const(lin1, z1.all(1)), lin1.weight.dtype)
    flow.layers += [
        Layer(node, names[0], lin1, "linear", None, z1, z1.all(1), out_ids=hidden,
              in_ids=flow.blocked(z1.shape[1], node, why), in_const=nan(z1.shape[1])),
        Layer(node, names[1], lin2, "linear", None, z2, z2.all(1), in_ids=hidden,
              in_const=c1, out_ids=flow.blocked(z2.shape[0], node, why))]


def _outputs_kept(node: fx.Node, flow, width: int, name: str, tuple_result: bool) -> None:
    """The inputs of an attention / transformer module keep their channels, and its
    output (``result[0]`` of a tuple result) gets ``width`` blocked slots on its last
    axis: the embedding width stays."""
    why = f"{where(node)}: the embedding width of {name!r} is kept"
    flow.block_inputs(node, "unknown_in", why)
    ids = flow.blocked(width, node, why)
    if tuple_result:
        flow.pieces[node] = [(ids, nan(width))]
    else:
        flow.slots[node], flow.const[node] = ids, nan(width)
    flow.set_axis(node, 2)


def _batched(flow, x) -> str | None:
    shape = flow.shape(x)
    return None if shape is not None and len(shape) == 3 else \
        f"an input of shape {shape} (heads are removed on batched 3-D inputs)"


def heads_channels(node: fx.Node, flow, x: fx.Node, unfit: str | None, tuple_result: bool
                   ) -> str | None:
    """The channel rule of an attention module run by ``node`` on tokens ``x``: its whole
    heads (:func:`attention_units`), unless it is called twice, ``x`` is not batched 3-D
    or ``unfit`` says why not (its zero units are then listed with that reason); the
    embedding width (its inputs and its output, ``result[0]`` of a tuple) is kept."""
    a = args_of(node)
    m, name = a["module"], a["module_name"]
    why = flow.frozen(name, m) or _batched(flow, x) or unfit
    if why is not None:
        flow.report_units(node, name, m, "heads", _zero_dims(flow, m)[0], why)
        return why
    attention_units(node, flow, m, name)
    _outputs_kept(node, flow, out_proj(m)[0].out_features, name, tuple_result)
    return None


@register
class MultiheadAttention(OpHandler):
    key = "multihead_attention"
    any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        return heads_channels(node, flow, a["query"], _heads_unfit(a["module"]), True)

    def resize(self, module: nn.Module, keep_in, keep_out, shift=None) -> None:
        """Keep the heads whose inner dims are ``keep_out`` (whole heads): their rows of
        q, k, v and of the biases; ``num_heads`` drops and the module becomes a
        :class:`PrunedMultiheadAttention`. ``out_proj`` is its own layer (its columns are
        cut there); ``keep_in`` and ``shift`` are not used."""
        m, d = module, module.head_dim
        if keep_out is None or keep_out.numel() % d:
            raise ValueError(f"keep_out must list whole heads of {d} dims")
        (ws, bs) = qkv(m)
        with torch.no_grad():
            if m.in_proj_weight is not None:
                m.in_proj_weight = as_param(m.in_proj_weight, torch.cat(
                    [cut(w.detach(), 0, keep_out) for w in ws]))
            else:
                for attr, w in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), ws):
                    setattr(m, attr, as_param(w, cut(w.detach(), 0, keep_out)))
            if m.in_proj_bias is not None:
                m.in_proj_bias = as_param(m.in_proj_bias, torch.cat(
                    [cut(b.detach(), 0, keep_out) for b in bs]))
        m.num_heads = int(keep_out.numel()) // d
        m.__class__ = PrunedMultiheadAttention
        m._qkv_same_embed_dim = False

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


@register
class TimmAttention(OpHandler):
    """timm's ``Attention`` (ViT / DeiT blocks), a leaf of the tracer: a packed ``qkv``
    Linear, ``num_heads`` heads of ``head_dim``, softmax attention, ``proj``."""

    key = "timm_attention"
    any_axis = True

    def check(self, node: fx.Node, ctx) -> str | None:
        a = args_of(node)
        if defaulted(a["attn_mask"]) is not None or defaulted(a["is_causal"]) is not False:
            return "an attn_mask / is_causal (self-attention without masks only)"
        return _heads_unfit(a["module"])

    def channels(self, node: fx.Node, flow) -> str | None:
        return heads_channels(node, flow, args_of(node)["x"], self.check(node, flow), False)

    def resize(self, module: nn.Module, keep_in, keep_out, shift=None) -> None:
        """Keep the heads whose inner dims are ``keep_out`` (whole heads): their rows of
        ``qkv`` (q, k and v blocks); ``num_heads`` and ``attn_dim`` drop. ``proj`` is its
        own layer; ``keep_in`` and ``shift`` are not used."""
        m, d = module, module.head_dim
        if keep_out is None or keep_out.numel() % d:
            raise ValueError(f"keep_out must list whole heads of {d} dims")
        rows = torch.cat([keep_out + i * m.attn_dim for i in range(3)])
        m.qkv.in_features, m.qkv.out_features = resize_dense(m.qkv, None, rows)
        m.num_heads, m.attn_dim = int(keep_out.numel()) // d, int(keep_out.numel())

    def lower(self, node: fx.Node, emit) -> None:
        """:func:`self_attention` of the tokens ``(N, L, C)`` (batch first)."""
        a = args_of(node)
        shape = emit.sample(node, a["x"])
        x = emit.value(node, a["x"])
        out, _, _ = self_attention(node, emit, a["module"], [x] * 3, [shape] * 3, None,
                                   node.name)
        emit.bind(node, out)


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

    mask_arg = "src_mask"
    any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        """Per encoder layer, whole heads of its ``self_attn`` (:func:`attention_units`)
        and the hidden units of its feed-forward block (:func:`feed_forward_units`); the
        embedding width is kept."""
        a = args_of(node)
        m, name = a["module"], a["module_name"]
        layers, _ = self.layers(m)
        if not all(isinstance(x, nn.TransformerEncoderLayer) for x in layers):
            return "layers other than nn.TransformerEncoderLayer"
        why = flow.frozen(name, m) or _batched(flow, a["src"])
        for x in layers:
            why = why or _heads_unfit(x.self_attn)
        if why is not None:
            return why
        for i, x in enumerate(layers):
            pre = name if x is m else f"{name}.layers.{i}"
            attention_units(node, flow, x.self_attn, f"{pre}.self_attn")
            feed_forward_units(node, flow, x.linear1, x.linear2, x.activation,
                               (f"{pre}.linear1", f"{pre}.linear2"))
        _outputs_kept(node, flow, flow.shape(node)[-1], name, False)
        return None

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
