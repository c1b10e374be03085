"""The engine's ops for transformers, recurrent nets and shuffles (docs/native_format.md),
each run from a file written directly with ``format3.encode`` (not through the exporter)
and compared with PyTorch's own function on the same numbers: gelu (both forms) and the
other activations, layer_norm, group_norm, permute (channel shuffle), linear on an N-D
input (dense and CSR), matmul with broadcast leading dims, softmax over any axis, mean,
div and number operands, slice, adaptive average pooling, constant, lstm / gru (one and
two directions) and a whole multi-head attention block; odd sizes, batch 1 and 3, 1 and
2 threads, within 1e-4 relative. Bad attributes get the loader's one-line message.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileprune.runtime import SparseFormatError, SparseModel, format3

REL_TOL = 1e-4
F32 = np.float32


def _rel_err(got, ref) -> float:
    ref = np.asarray(ref, F32)
    scale = float(np.abs(ref).max())
    assert scale > 0, "degenerate reference output"
    return float(np.abs(np.asarray(got) - ref).max()) / scale


class _Graph:
    """A format-3 description built op by op (the dicts the exporter produces)."""

    def __init__(self, **inputs: tuple[int, ...]) -> None:
        self.inputs = [{"name": n, "shape": list(s)} for n, s in inputs.items()]
        self.ops: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}

    def op(self, kind: str, inputs: list[str], shape, attrs=None, **extra) -> str:
        name = f"v{len(self.ops)}"
        self.ops.append({"name": name, "op": kind, "inputs": inputs, "shape": list(shape),
                         "attrs": attrs or {}, **extra})
        return name

    def array(self, a: np.ndarray) -> str:
        name = f"a{len(self.arrays)}"
        self.arrays[name] = a
        return name

    def weight(self, w: np.ndarray, storage: str) -> dict:
        """A weight record of the matrix ``w`` (rows x cols)."""
        w = np.asarray(w, F32)
        rec = {"storage": storage, "rows": w.shape[0], "cols": w.shape[1],
               "nnz": int(np.count_nonzero(w))}
        if storage == "dense":
            rec["arrays"] = {"values": self.array(w.ravel())}
            return rec
        rows, cols = np.nonzero(w)
        indptr = np.searchsorted(rows, np.arange(w.shape[0] + 1)).astype(np.uint32)
        idx = cols.astype(np.uint16 if w.shape[1] < 65536 else np.uint32)
        rec["arrays"] = {"values": self.array(w[rows, cols]), "indptr": self.array(indptr),
                         "indices": self.array(idx)}
        return rec

    def bytes(self, *outputs: str) -> bytes:
        return format3.encode({"inputs": self.inputs, "ops": self.ops, "outputs": list(outputs)},
                              self.arrays)


def _run(raw: bytes, *xs: np.ndarray, threads: int = 1, mode: str = "auto"):
    return SparseModel(raw, threads=threads, mode=mode, tune=False)(*[np.asarray(x, F32) for x in xs])


def _check(raw: bytes, ref_fn, *shapes, batches=(1, 3), threads=(1, 2), seed=0, scale=1.0):
    """Run ``raw`` on random inputs of the per-sample ``shapes`` at each batch size and
    thread count; compare with ``ref_fn(*torch inputs)``."""
    g = torch.Generator().manual_seed(seed)
    for n, t in itertools.product(batches, threads):
        xs = [torch.randn(n, *s, generator=g) * scale for s in shapes]
        ref = ref_fn(*xs)
        got = _run(raw, *[x.numpy() for x in xs], threads=t)
        refs, gots = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
        for r, o in zip(refs, gots):
            assert o.shape == tuple(r.shape), (o.shape, r.shape)
            assert _rel_err(o, r.detach().numpy()) <= REL_TOL, (n, t)


def _sparse(shape, g: torch.Generator, keep: float = 0.5) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * (torch.rand(*shape, generator=g) < keep)


# ---------------------------------------------------------------------------------------
# activations

@pytest.mark.parametrize("fn,kwargs,ref", [
    ("gelu", {}, F.gelu),
    ("gelu", {"approximate": "none"}, F.gelu),
    ("gelu", {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    ("hardswish", {}, F.hardswish),
    ("hardsigmoid", {}, F.hardsigmoid),
    ("silu", {}, F.silu),
])
def test_activations_match_torch(fn, kwargs, ref):
    g = _Graph(x=(5, 37))
    y = g.op("activation", ["x"], (5, 37), {"fn": fn, **kwargs})
    _check(g.bytes(y), ref, (5, 37), scale=4.0)


def test_softmax_over_every_axis():
    shape = (3, 5, 7)
    for axis in range(3):
        g = _Graph(x=shape)
        y = g.op("activation", ["x"], shape, {"fn": "softmax", "axis": axis})
        _check(g.bytes(y), lambda x, a=axis: F.softmax(x, dim=a + 1), shape, scale=3.0, seed=axis)


# ---------------------------------------------------------------------------------------
# normalisation

@pytest.mark.parametrize("shape,k,affine", [((7, 33), 1, "both"), ((4, 5, 6), 2, "scale"),
                                           ((9,), 1, "none"), ((3, 4, 5), 3, "shift")])
def test_layer_norm(shape, k, affine):
    gen = torch.Generator().manual_seed(1)
    norm = shape[len(shape) - k:]
    w = torch.randn(*norm, generator=gen) if affine in ("both", "scale") else None
    b = torch.randn(*norm, generator=gen) if affine in ("both", "shift") else None
    g = _Graph(x=shape)
    extra = {"scale": g.array(w.numpy().ravel()) if w is not None else None,
             "shift": g.array(b.numpy().ravel()) if b is not None else None}
    y = g.op("layer_norm", ["x"], shape, {"normalized_ndim": k, "eps": 1e-5}, **extra)
    _check(g.bytes(y), lambda x: F.layer_norm(x, norm, w, b, 1e-5), shape)


@pytest.mark.parametrize("shape,groups,affine", [((6, 5, 7), 3, True), ((8, 11), 4, False),
                                                 ((10,), 5, True), ((4, 3, 3), 1, True)])
def test_group_norm(shape, groups, affine):
    gen = torch.Generator().manual_seed(2)
    C = shape[0]
    w = torch.randn(C, generator=gen) if affine else None
    b = torch.randn(C, generator=gen) if affine else None
    g = _Graph(x=shape)
    extra = {"scale": g.array(w.numpy()), "shift": g.array(b.numpy())} if affine else {}
    y = g.op("group_norm", ["x"], shape, {"num_groups": groups, "eps": 1e-3}, **extra)
    _check(g.bytes(y), lambda x: F.group_norm(x, groups, w, b, 1e-3), shape)


# ---------------------------------------------------------------------------------------
# layout

def test_permute_random_ranks_and_orders():
    rng = np.random.default_rng(3)
    for rank in range(1, 6):
        shape = tuple(int(s) for s in rng.integers(1, 6, size=rank))
        perm = [int(p) for p in rng.permutation(rank)]
        g = _Graph(x=shape)
        y = g.op("permute", ["x"], [shape[p] for p in perm], {"perm": perm})
        _check(g.bytes(y), lambda x, p=perm: x.permute(0, *[q + 1 for q in p]), shape, seed=rank)


def test_channel_shuffle_is_reshape_permute_reshape():
    C, G, H, W = 12, 3, 5, 7
    g = _Graph(x=(C, H, W))
    a = g.op("reshape", ["x"], (G, C // G, H, W))
    b = g.op("permute", [a], (C // G, G, H, W), {"perm": [1, 0, 2, 3]})
    y = g.op("reshape", [b], (C, H, W))
    _check(g.bytes(y), lambda x: F.channel_shuffle(x, G), (C, H, W))


def test_slice_with_steps():
    shape = (6, 10, 3)
    for axis, start, end, step in [(0, 1, 5, 1), (1, 0, 10, 3), (1, 9, 10, 1), (2, 1, 3, 2)]:
        g = _Graph(x=shape)
        out = list(shape)
        out[axis] = len(range(start, end, step))
        y = g.op("slice", ["x"], out, {"axis": axis, "start": start, "end": end, "step": step})
        idx = [slice(None)] * 4
        idx[axis + 1] = slice(start, end, step)
        _check(g.bytes(y), lambda x, i=tuple(idx): x[i], shape, threads=(1,))


def test_constant_concat_and_add_like_a_vit():
    """The class token (concat) and position embedding (add) of a ViT."""
    gen = torch.Generator().manual_seed(4)
    T, E = 5, 8
    cls, pos = torch.randn(1, E, generator=gen), torch.randn(T + 1, E, generator=gen)
    g = _Graph(x=(T, E))
    c = g.op("constant", [], (1, E), value=g.array(cls.numpy().ravel()))
    p = g.op("constant", [], (T + 1, E), value=g.array(pos.numpy().ravel()))
    cat = g.op("concat", [c, "x"], (T + 1, E), {"axis": 0})
    y = g.op("add", [cat, p], (T + 1, E))
    _check(g.bytes(y), lambda x: torch.cat([cls.expand(len(x), 1, E), x], 1) + pos, (T, E))


# ---------------------------------------------------------------------------------------
# linear, matmul, arithmetic, reductions, pooling

@pytest.mark.parametrize("storage", ["dense", "csr"])
@pytest.mark.parametrize("shape", [(13,), (7, 13), (2, 3, 13)])
def test_linear_on_nd_input(storage, shape):
    gen = torch.Generator().manual_seed(5)
    w, b = _sparse((11, 13), gen), torch.randn(11, generator=gen)
    g = _Graph(x=shape)
    y = g.op("linear", ["x"], shape[:-1] + (11,), weight=g.weight(w.numpy(), storage),
             bias=g.array(b.numpy()))
    _check(g.bytes(y), lambda x: F.linear(x, w, b), shape, batches=(1, 3, 9))


@pytest.mark.parametrize("sa,sb", [((5, 7), (7, 3)), ((2, 5, 7), (2, 7, 9)),
                                   ((1, 5, 4), (3, 4, 6)), ((3, 1, 17, 4), (1, 2, 4, 19)),
                                   ((2, 3, 9, 4), (2, 3, 4, 1))])
def test_matmul_broadcasts_leading_dims(sa, sb):
    out = tuple(torch.broadcast_shapes(sa[:-2], sb[:-2])) + (sa[-2], sb[-1])
    g = _Graph(a=sa, b=sb)
    y = g.op("matmul", ["a", "b"], out)
    _check(g.bytes(y), torch.matmul, sa, sb)


def test_div_and_numbers():
    g = _Graph(a=(4, 5), b=(1, 5))
    d = g.op("div", ["a", "b"], (4, 5))
    r = g.op("div", [d], (4, 5), {"scalar": 3.0, "scalar_first": True})
    q = g.op("div", [r], (4, 5), {"scalar": 0.5})
    m = g.op("mul", [q], (4, 5), {"scalar": 0.125})
    y = g.op("add", [m], (4, 5), {"scalar": -1.5})
    gen = torch.Generator().manual_seed(6)
    raw = g.bytes(y)
    for n, t in itertools.product((1, 3), (1, 2)):  # operands away from 0: no huge quotients
        a = torch.randn(n, 4, 5, generator=gen).sign() * (torch.rand(n, 4, 5, generator=gen) + 0.5)
        b = torch.rand(n, 1, 5, generator=gen) + 0.5
        got = _run(raw, a.numpy(), b.numpy(), threads=t)
        assert _rel_err(got, ((3.0 / (a / b)) / 0.5 * 0.125 - 1.5).numpy()) <= REL_TOL


@pytest.mark.parametrize("axes,keepdim", [([0], False), ([1, 2], True), ([0, 2], False),
                                          ([0, 1, 2], False), ([2], True)])
def test_mean(axes, keepdim):
    shape = (3, 4, 5)
    out = list(torch.zeros(shape).mean([a for a in axes], keepdim=keepdim).shape) or [1]
    g = _Graph(x=shape)
    y = g.op("mean", ["x"], out, {"axes": axes, "keepdim": keepdim})
    _check(g.bytes(y), lambda x: x.mean([a + 1 for a in axes], keepdim=keepdim).reshape(
        len(x), *out), shape)


@pytest.mark.parametrize("shape,size", [((3, 10), [4]), ((3, 5), [7]), ((2, 9, 11), [4, 3]),
                                        ((2, 5, 6), [5, 6]), ((1, 4, 4), [6, 1])])
def test_adaptive_avgpool(shape, size):
    kind = "adaptive_avgpool1d" if len(size) == 1 else "adaptive_avgpool2d"
    ref = F.adaptive_avg_pool1d if len(size) == 1 else F.adaptive_avg_pool2d
    g = _Graph(x=shape)
    y = g.op(kind, ["x"], [shape[0], *size], {"output_size": size})
    _check(g.bytes(y), lambda x: ref(x, size), shape)


# ---------------------------------------------------------------------------------------
# recurrent layers

def _rnn_graph(rnn: nn.Module, T: int, storage: str, bias: bool) -> tuple[_Graph, str]:
    kind = "lstm" if isinstance(rnn, nn.LSTM) else "gru"
    dirs = 2 if rnn.bidirectional else 1
    g = _Graph(x=(T, rnn.input_size))
    h = "x"
    for layer in range(rnn.num_layers):
        sfx = [f"_l{layer}", f"_l{layer}_reverse"][:dirs]
        p = {k: torch.cat([getattr(rnn, f"{k}{s}") for s in sfx]).detach().numpy()
             for k in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())}
        h = g.op(kind, [h], (T, dirs * rnn.hidden_size),
                 {"hidden_size": rnn.hidden_size, "bidirectional": rnn.bidirectional},
                 weight_ih=g.weight(p["weight_ih"], storage),
                 weight_hh=g.weight(p["weight_hh"], storage),
                 bias_ih=g.array(p["bias_ih"]) if bias else None,
                 bias_hh=g.array(p["bias_hh"]) if bias else None)
    return g, h


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("bidirectional,layers,storage,bias", [
    (False, 1, "dense", True), (True, 1, "csr", True), (True, 2, "dense", False),
    (False, 2, "csr", True)])
def test_rnn_matches_torch(cls, bidirectional, layers, storage, bias):
    torch.manual_seed(7)
    rnn = cls(5, 7, num_layers=layers, bidirectional=bidirectional, bias=bias,
              batch_first=True).eval()
    if storage == "csr":
        with torch.no_grad():
            for name, p in rnn.named_parameters():
                if name.startswith("weight"):
                    p.mul_((torch.rand(p.shape) < 0.5).float())
    T = 6
    g, out = _rnn_graph(rnn, T, storage, bias)
    with torch.no_grad():
        _check(g.bytes(out), lambda x: rnn(x)[0], (T, 5), batches=(1, 3, 10))


def test_lstm_classifier_last_step_is_a_slice():
    """The common classifier: output[:, -1] of the last layer, then a linear layer."""
    torch.manual_seed(8)
    rnn, fc = nn.LSTM(4, 6, batch_first=True).eval(), nn.Linear(6, 3).eval()
    T = 9
    g, out = _rnn_graph(rnn, T, "dense", True)
    last = g.op("slice", [out], (1, 6), {"axis": 0, "start": T - 1, "end": T})
    flat = g.op("reshape", [last], (6,))
    y = g.op("linear", [flat], (3,), weight=g.weight(fc.weight.detach().numpy(), "dense"),
             bias=g.array(fc.bias.detach().numpy()))
    with torch.no_grad():
        _check(g.bytes(y), lambda x: fc(rnn(x)[0][:, -1]), (T, 4))


# ---------------------------------------------------------------------------------------
# a whole attention block, as the exporter lowers nn.MultiheadAttention

def test_multihead_attention_block():
    torch.manual_seed(9)
    T, E, heads = 7, 12, 3
    d = E // heads
    mha = nn.MultiheadAttention(E, heads, batch_first=True).eval()
    g = _Graph(x=(T, E))
    qkv = g.op("linear", ["x"], (T, 3 * E), weight=g.weight(mha.in_proj_weight.detach().numpy(), "dense"),
               bias=g.array(mha.in_proj_bias.detach().numpy()))
    parts = []
    for k in range(3):
        s = g.op("slice", [qkv], (T, E), {"axis": 1, "start": k * E, "end": (k + 1) * E})
        r = g.op("reshape", [s], (T, heads, d))
        parts.append(g.op("permute", [r], (heads, T, d), {"perm": [1, 0, 2]}))
    q, k_, v = parts
    kt = g.op("permute", [k_], (heads, d, T), {"perm": [0, 2, 1]})
    qs = g.op("mul", [q], (heads, T, d), {"scalar": float(d) ** -0.5})
    att = g.op("activation", [g.op("matmul", [qs, kt], (heads, T, T))], (heads, T, T),
               {"fn": "softmax", "axis": 2})
    o = g.op("permute", [g.op("matmul", [att, v], (heads, T, d))], (T, heads, d), {"perm": [1, 0, 2]})
    o = g.op("reshape", [o], (T, E))
    y = g.op("linear", [o], (T, E), weight=g.weight(mha.out_proj.weight.detach().numpy(), "csr"),
             bias=g.array(mha.out_proj.bias.detach().numpy()))
    with torch.no_grad():
        _check(g.bytes(y), lambda x: mha(x, x, x, need_weights=False)[0], (T, E))


# ---------------------------------------------------------------------------------------
# the records: round trip and hostile attributes

def test_new_records_decode_to_what_was_encoded():
    g = _Graph(x=(4, 6))
    g.op("permute", ["x"], (6, 4), {"perm": [1, 0]})
    g.op("mean", ["x"], (4, 1), {"axes": [1], "keepdim": True})
    g.op("slice", ["x"], (4, 2), {"axis": 1, "start": 1, "end": 5, "step": 2})
    g.op("matmul", ["x", g.op("permute", ["x"], (6, 4), {"perm": [1, 0]})], (4, 4))
    g.op("layer_norm", ["x"], (4, 6), {"normalized_ndim": 1, "eps": 0.5}, scale=None,
         shift=g.array(np.ones(6, F32)))
    g.op("activation", ["x"], (4, 6), {"fn": "gelu", "approximate": "tanh"})
    g.op("adaptive_avgpool1d", ["x"], (4, 3), {"output_size": [3]})
    g.op("div", ["x"], (4, 6), {"scalar": 2.0, "scalar_first": True})
    head, _ = format3.decode(g.bytes("v0"))
    for want, got in zip(g.ops, head["ops"]):
        assert got["op"] == want["op"] and got["shape"] == want["shape"]
        assert got["attrs"] == want["attrs"]  # the numbers here are exact in float32
    ln = next(op for op in head["ops"] if op["op"] == "layer_norm")
    assert ln["scale"] is None and ln["shift"] is not None


@pytest.mark.parametrize("kind,shape,attrs,msg", [
    ("permute", (3, 4), {"perm": [0, 0]}, "perm must hold each axis"),
    ("slice", (3, 4), {"axis": 1, "start": 2, "end": 9}, "end <= 4"),
    ("slice", (3, 4), {"axis": 2, "start": 0, "end": 1}, "axis 2"),
    ("group_norm", (6, 4), {"num_groups": 4, "eps": 1e-5}, "num_groups 4 does not divide"),
    ("layer_norm", (6, 4), {"normalized_ndim": 3, "eps": 1e-5}, "normalized_ndim 3"),
    ("layer_norm", (6, 4), {"normalized_ndim": 1, "eps": -1.0}, "eps must be >= 0"),
    ("mean", (6, 4), {"axes": [2]}, "axes mask"),
    ("adaptive_avgpool1d", (6, 4, 2), {"output_size": [2]}, "input must be (C, L)"),
])
def test_bad_attributes_are_refused_by_name(kind, shape, attrs, msg):
    g = _Graph(x=shape)
    y = g.op(kind, ["x"], shape, attrs)
    with pytest.raises(SparseFormatError) as e:
        SparseModel(g.bytes(y))
    text = str(e.value)
    assert msg in text and "'v0'" in text and "\n" not in text


def test_matmul_and_rnn_shape_errors():
    g = _Graph(a=(3, 4), b=(5, 2))
    y = g.op("matmul", ["a", "b"], (3, 2))
    with pytest.raises(SparseFormatError, match="inner sizes differ"):
        SparseModel(g.bytes(y))
    g = _Graph(a=(3, 4), b=(2, 4, 2))
    y = g.op("matmul", ["a", "b"], (2, 3, 2))
    with pytest.raises(SparseFormatError, match="same rank"):
        SparseModel(g.bytes(y))
    g = _Graph(x=(3, 4, 5))
    w = np.ones((8, 5), F32)
    y = g.op("lstm", ["x"], (3, 2), {"hidden_size": 2}, weight_ih=g.weight(w, "dense"),
             weight_hh=g.weight(np.ones((8, 2), F32), "dense"))
    with pytest.raises(SparseFormatError, match=r"lstm|\(T, input_size\)"):
        SparseModel(g.bytes(y))
