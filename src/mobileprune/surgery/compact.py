"""Physically remove dead filters, channels and neurons: a smaller dense model that is
really faster.

Pruning leaves zeros inside full-size tensors; :func:`compact` turns whole zero units into
*smaller* layers (fewer conv filters / input channels, fewer Linear rows / columns, smaller
BatchNorms) and cuts every consumer to match, so dense kernels do less work. The model's
outputs do not change (up to float rounding of folded biases, typically ~1e-7).

API
---
* :func:`compact(model, example_input, *, atol=0.0, strict=False) <compact>` returns a
  **new** module; ``model`` is never modified (it is ``copy.deepcopy``-ed first).
* :func:`dead_units(model, example_input, *, atol=0.0) <dead_units>` is the dry run: per
  producer layer (Conv/Linear, by qualified name), which output units ``compact`` removes.
* :func:`compact_in_place(model, example_input) <compact_in_place>` does the same to
  ``model`` itself (its resized layers are swapped in), e.g. between pruning rounds.
* :func:`fold_dead_weights(model, example_input) <fold_dead_weights>` zeroes in place the
  weights ``compact`` would drop (folding constants into biases), shapes unchanged: used
  during pruning so the nonzero budget goes to weights that matter.

``example_input`` is a tensor, or a tuple/list of tensors for a model with several
positional inputs (batch dimension included). It is run once through the traced graph
(``torch.fx`` ``ShapeProp``) to learn shapes, e.g. how many features of a Linear come from
one channel of a flattened ``(C, H, W)`` map.

Semantics
---------
The graph is traced with :func:`torch.fx.symbolic_trace` (model in **eval mode**: BatchNorm
uses its running statistics, Dropout is the identity; equivalence is guaranteed in eval
mode). Every tensor of shape ``(N, C, ...)`` has a *channel dimension* (dim 1); every
position of it carries a *slot*. Slots are tied together with a union-find: an elementwise
or per-channel op (activation, BatchNorm, pooling, Dropout, Identity, ``contiguous``...)
keeps its input's slots; a residual ``add``/``sub``/``mul`` of two tensors **couples** the
channels of its inputs (channel ``c`` of every operand is one slot, so it is removed only
if it is removable in every branch); ``torch.cat`` along dim 1 concatenates the index
spaces; ``flatten`` / ``view(N, -1)`` maps channel ``c`` of ``(C, H, W)`` to its ``H*W``
consecutive features; a depthwise conv (``groups == in_channels``) couples input channel
``c`` with its output channels ``c*m .. c*m+m-1`` (they are removed together). Conv
(``groups == 1``) and Linear layers are *producers*: their output positions are new slots.

Every position also carries a *constant*: the value it has at every sample and spatial
position, when it is one, found by constant propagation. A producer's output unit whose
weights are all zero (``|w| <= atol``) is the constant ``b_c`` (``0`` without bias); an
elementwise op maps a constant through the function (computed in the tensor's dtype);
eval-mode BatchNorm maps ``v`` to ``(v - mean) / sqrt(var + eps) * gamma + beta``; max
pooling (implicit ``-inf`` padding), adaptive pooling and interpolation keep constants;
average pooling keeps them unless zero padding is counted (``count_include_pad`` with
``padding > 0``) or ``divisor_override`` is set (then only ``0`` stays constant); the sum
of an ``add`` is the sum of the constants; ``mean``/``amax``/``sum`` over spatial dims keep
(resp. scale) them.

A slot is **removed** when, at every place it is used, dropping it is exact:

* at a Conv (``groups == 1``) or Linear consumer, the consumer's weights for that input
  position are all zero among the output units that are kept (the "zero outgoing weights"
  case of input-channel group lasso), **or** the position carries a finite constant ``v``
  that can be folded into the consumer's bias: always for Linear (``bias += W[:, j] * v``)
  and for a conv with no padding, or with non-``zeros`` ``padding_mode``
  (``bias += v * W[:, c].sum()``, exact because every receptive field lies inside the
  input); with zero padding the border outputs would see ``0`` instead of ``v``, so the
  position is removable only if ``v == 0``. When a fold is needed and the consumer has no
  bias, a bias is created (``out`` extra parameters).
* at a pass-through op (elementwise, BatchNorm, pooling, add, cat, flatten, depthwise conv)
  it is always exact: the same slot is removed on the other side too.
* never when it reaches a graph output (the model's output size never changes), a graph
  input (the input signature never changes), a ``get_attr`` tensor, or any op that is not
  recognised (transpose, softmax over channels, LayerNorm/GroupNorm, ConvTranspose,
  grouped conv with ``groups`` not in ``{1, in_channels}``, Linear on a 3-D input, a layer
  called at several places, a view that is not a flatten, an in-place op on a tensor that
  has other users, ...): all channels of that op's inputs are kept intact, so its inputs and
  outputs are bit-for-bit what they were (conservative, never a wrong model). With
  ``strict=True`` an :class:`~mobileprune.errors.UnsupportedModelError` naming the op is
  raised instead when it keeps a channel that would otherwise be removed.

Removing output units of a producer can make more input columns of that producer
"zero among kept rows", which can free more units upstream; the decision is iterated to a
fixed point. At least one channel of every tensor is kept (no zero-width layers).
Non-finite inputs are not considered (``0 * inf``).

Rebuild and return type
-----------------------
Layers are cut with ``index_select`` on the weights in place of the deep copy's modules
(same module class, dtype, device and ``requires_grad``; ``in_channels`` /
``out_channels`` / ``groups`` / ``in_features`` / ``out_features`` / ``num_features`` and
BatchNorm running statistics updated). The result is then checked against the original
on ``example_input`` and on a random input of the same shape:

* normally the returned module is the deep copy itself, **same class** as ``model``, with
  smaller layers (its own ``forward`` is kept; scriptable if the original was);
* if that check fails -- typically ``forward`` hard-codes a size, e.g. ``x.view(-1, 800)``
  -- the returned module is the :class:`torch.fx.GraphModule` of the traced graph (such
  views rewritten to ``torch.flatten(x, 1)``), which is picklable, deep-copyable,
  ``torch.jit.script``-able and traceable; its ``forward`` is the graph traced in eval mode
  (Python branches on ``self.training`` are frozen to eval).

The returned model has the input model's ``training`` flags. Its ``state_dict`` shapes
differ from a freshly constructed instance of its class: save it whole (``torch.save`` of
the module, pickle) or re-create the layer sizes before ``load_state_dict``. Forward hooks
and parametrizations of the original are not adapted (parametrized layers are kept
intact).

``atol > 0`` treats weights with ``|w| <= atol`` as zero: those weights are dropped, so
outputs then differ from the original by their contribution (the result check is skipped).

Raises :class:`~mobileprune.errors.UnsupportedModelError` when the model cannot be traced by
``torch.fx`` or ``example_input`` does not run through the traced graph, and
:class:`CompactionError` if the compacted model disagrees with the original (a bug; never
silently returns a wrong model).
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.node import Node, map_arg
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from mobileprune.errors import CompactionError, ConfigError, UnsupportedModelError
from mobileprune.sparsity.report import ORIGINAL_SIZE, size_of

__all__ = ["compact", "dead_units", "CompactionError"]


# --------------------------------------------------------------------------- op tables

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_BN_NDIM = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}

# elementwise modules without parameters: constants are mapped through the module itself
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.CELU,
    nn.SELU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Mish, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.Hardshrink, nn.Softshrink,
)
# per-channel modules that keep a constant channel constant (eval mode)
_KEEP_CONST_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)
_AVG_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)

_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu,
    F.elu_, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh, F.hardtanh_, F.hardswish,
    F.hardsigmoid, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid, torch.sigmoid,
    F.sigmoid, torch.tanh, F.tanh, torch.clamp, torch.clip, torch.abs, torch.neg,
    operator.neg, torch.exp, torch.square, torch.sqrt, operator.pos,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip",
    "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "abs", "abs_", "neg",
    "neg_", "exp", "exp_", "square", "sqrt",
}
_KEEP_CONST_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.interpolate, F.upsample,
}
_IDENTITY_METHODS = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16",
                     "to", "cpu", "cuda"}
_IDENTITY_FUNCTIONS = {torch.clone, torch.detach}
_AVG_POOL_PARAMS = ("input", "kernel_size", "stride", "padding", "ceil_mode",
                    "count_include_pad", "divisor_override")
_AVG_POOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d}
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}
_ALPHA_DROPOUT_FUNCTIONS = {F.alpha_dropout, F.feature_alpha_dropout}

_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_BINARY_METHODS = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul",
                   "mul_": "mul", "div": "div", "div_": "div"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax"}
_REDUCE_METHODS = {"mean": "mean", "sum": "sum", "amax": "amax"}
_FLATTEN_FUNCTIONS = {torch.flatten}
_VIEW_METHODS = {"view", "reshape"}
_VIEW_FUNCTIONS = {torch.reshape}


# --------------------------------------------------------------------------- helpers

def _tm(node: Any) -> TensorMetadata | None:
    if not isinstance(node, Node):
        return None
    tm = node.meta.get("tensor_meta")
    return tm if isinstance(tm, TensorMetadata) else None


def _shape(node: Any) -> tuple[int, ...] | None:
    tm = _tm(node)
    return tuple(int(s) for s in tm.shape) if tm is not None else None


def _nodes_in(*objs: Any) -> list[Node]:
    found: list[Node] = []
    for o in objs:
        map_arg(o, lambda n: found.append(n) or n)
    return found


def _has_node(*objs: Any) -> bool:
    return bool(_nodes_in(*objs))


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict) -> dict | None:
    if len(args) > len(names):
        return None
    out = dict(defaults)
    out.update(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            return None
        out[k] = v
    return out


def _norm_dims(dim: Any, ndim: int) -> list[int] | None:
    if isinstance(dim, int) and not isinstance(dim, bool):
        dims = [dim]
    elif isinstance(dim, (tuple, list)) and dim and all(
            isinstance(d, int) and not isinstance(d, bool) for d in dim):
        dims = list(dim)
    else:
        return None
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            return None
        out.append(d % ndim)
    return out


def _zero_padding(padding: Any) -> bool:
    if isinstance(padding, str):
        return padding == "valid"
    if isinstance(padding, int):
        return padding == 0
    return all(p == 0 for p in padding)


def _conv_no_pad(m: nn.Module) -> bool:
    """True when a constant input channel gives a constant contribution everywhere."""
    if m.padding_mode != "zeros":
        return True  # reflect/replicate/circular padding of a constant is that constant
    if m.padding == "same":
        return all(k == 1 for k in m.kernel_size)
    return _zero_padding(m.padding)


def _nan(n: int) -> Tensor:
    return torch.full((n,), float("nan"), dtype=torch.float64)


def _map_const(fn: Callable[[Tensor], Tensor], const: Tensor, dtype: torch.dtype) -> Tensor:
    """Apply an elementwise function to a vector of constants (NaN = not constant)."""
    ok = torch.isfinite(const)
    if not bool(ok.any()):
        return _nan(const.numel())
    try:
        with torch.no_grad():
            t = torch.where(ok, const, torch.zeros_like(const)).to(dtype)
            r = fn(t)
        if not isinstance(r, Tensor) or r.shape != const.shape:
            return _nan(const.numel())
        r = r.detach().to("cpu", torch.float64)
    except Exception:  # noqa: BLE001 - any failure just means "not a known constant"
        return _nan(const.numel())
    return torch.where(ok & torch.isfinite(r), r, _nan(const.numel()))


@dataclass
class _Layer:
    """A Conv/Linear/BatchNorm call site that compaction cuts."""

    node: Node
    name: str
    module: nn.Module
    kind: str  # "conv" | "linear" | "dw" | "bn"
    inp: Node
    zero: Tensor | None = None  # (O, C) bool: |w| <= atol reduced over kernel dims
    zero_row: Tensor | None = None
    no_pad: bool = True


@dataclass
class _Block:
    ids: Tensor
    kind: str  # "input" | "attr" | "output" | "unknown_in" | "unknown_out"
    node: Node


@dataclass
class _Decision:
    removed_root: Tensor  # bool over slot ids (meaningful at roots)
    root: Tensor  # slot id -> root id
    iterations: int = 1  # -1: no fixed point, the first (full-column) decision is used


# --------------------------------------------------------------------------- analysis

class _Analysis:
    def __init__(self, gm: fx.GraphModule, atol: float) -> None:
        self.gm = gm
        self.atol = atol
        self.modules = dict(gm.named_modules())
        self.parent: list[int] = []
        self.slots: dict[Node, Tensor] = {}
        self.const: dict[Node, Tensor] = {}
        self.blocks: list[_Block] = []
        self.layers: list[_Layer] = []
        self.flat_views: list[Node] = []
        self.unknown: list[Node] = []
        calls: dict[str, int] = {}
        attrs: list[str] = []
        for n in gm.graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
            elif n.op == "get_attr":
                attrs.append(n.target)
        self.calls = calls
        self.attr_targets = attrs
        for n in gm.graph.nodes:
            self._visit(n)

    # ---- union-find
    def _new(self, n: int) -> Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long)

    def _find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def _union(self, a: Tensor, b: Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self._find(x), self._find(y)
            if rx != ry:
                self.parent[ry] = rx

    def roots(self) -> Tensor:
        return torch.tensor([self._find(i) for i in range(len(self.parent))], dtype=torch.long)

    # ---- bookkeeping
    def _tracked(self, node: Any) -> bool:
        return isinstance(node, Node) and node in self.slots

    def _fresh(self, node: Node, kind: str | None) -> None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return
        self.slots[node] = self._new(shape[1])
        self.const[node] = _nan(shape[1])
        if kind is not None:
            self.blocks.append(_Block(self.slots[node], kind, node))

    def _block_inputs(self, node: Node, kind: str) -> None:
        for n in _nodes_in(node.args, node.kwargs):
            if n in self.slots:
                self.blocks.append(_Block(self.slots[n], kind, node))

    def _visit(self, node: Node) -> None:
        if node.op == "placeholder":
            self._fresh(node, "input")
        elif node.op == "get_attr":
            self._fresh(node, "attr")
        elif node.op == "output":
            self._block_inputs(node, "output")
        elif self._aliased_inplace(node) or not self._handle(node):
            self.unknown.append(node)
            self._block_inputs(node, "unknown_in")
            self._fresh(node, "unknown_out")

    def _aliased_inplace(self, node: Node) -> bool:
        """An in-place op on a tensor that is used elsewhere too: the other users may see
        the mutated values, so the op is treated as unknown (its channels are kept)."""
        x = node.args[0] if node.args else None
        if not isinstance(x, Node) or len(x.users) <= 1:
            return False
        t = node.target
        if node.op == "call_module":
            return bool(getattr(self.modules.get(t), "inplace", False))
        if node.op == "call_method":
            return t.endswith("_") and not t.endswith("__")
        if t in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
            return True
        if getattr(t, "__name__", "").endswith("_") or node.kwargs.get("inplace"):
            return True
        try:
            bound = inspect.signature(t).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            return False
        return bool(bound.arguments.get("inplace", False))

    def _same(self, node: Node, inp: Node, const: Tensor) -> bool:
        """``node`` keeps the channel positions of ``inp`` (per-channel op)."""
        si, so = _shape(inp), _shape(node)
        if so is None or si is None or len(so) < 2 or so[1] != si[1] or so[0] != si[0]:
            return False
        self.slots[node] = self.slots[inp]
        self.const[node] = const
        return True

    def _dtype(self, node: Node) -> torch.dtype:
        tm = _tm(node)
        return tm.dtype if tm is not None else torch.float32

    # ---- dispatch
    def _handle(self, node: Node) -> bool:
        if node.op == "call_module":
            return self._module(node)
        if node.op == "call_function":
            return self._function(node)
        if node.op == "call_method":
            return self._method(node)
        return False

    def _single_input(self, node: Node) -> Node | None:
        if len(node.args) != 1 or node.kwargs or not self._tracked(node.args[0]):
            return None
        return node.args[0]

    def _frozen(self, name: str, m: nn.Module) -> bool:
        """A parametrised layer compaction must not resize."""
        if self.calls.get(name, 0) != 1:
            return True
        if any(t == name or t.startswith(name + ".") for t in self.attr_targets):
            return True
        try:
            from torch.nn.utils import parametrize
            if parametrize.is_parametrized(m):
                return True
        except ImportError:  # pragma: no cover
            pass
        return hasattr(m, "weight_orig")

    def _module(self, node: Node) -> bool:
        m = self.modules.get(node.target)
        inp = self._single_input(node)
        if m is None or inp is None:
            return False
        t = type(m)
        c_in = self.const[inp]
        if t in _CONV:
            return self._conv(node, m, inp)
        if t is nn.Linear:
            return self._linear(node, m, inp)
        if t in _BN:
            return self._bn(node, m, inp)
        if t in _ELEMENTWISE_MODULES:
            # m.forward, not m(...): the user's forward hooks must not see constants
            return self._same(node, inp, _map_const(m.forward, c_in, self._dtype(node)))
        if t in _KEEP_CONST_MODULES:
            return self._same(node, inp, c_in.clone())
        if t in _AVG_POOL_MODULES:
            return self._same(node, inp, self._avg_const(
                c_in, m.padding, m.count_include_pad, getattr(m, "divisor_override", None)))
        if t is nn.Flatten:
            return self._flatten(node, inp, m.start_dim, m.end_dim)
        return False

    def _function(self, node: Node) -> bool:
        f = node.target
        args, kwargs = node.args, node.kwargs
        if f is getattr:
            return self._shape_access(node)
        if f in _ADD or f in _SUB or f in _MUL or f in _DIV:
            kind = "add" if f in _ADD else "sub" if f in _SUB else "mul" if f in _MUL else "div"
            return self._binary(node, kind, f)
        if f in _CAT:
            return self._cat(node)
        if not args or not self._tracked(args[0]):
            return False
        inp = args[0]
        c_in = self.const[inp]
        if f in _ELEMENTWISE_FUNCTIONS or f in _IDENTITY_FUNCTIONS:
            if _has_node(args[1:], kwargs):
                return False
            return self._same(node, inp, _map_const(
                lambda t: f(t, *args[1:], **kwargs), c_in, self._dtype(node)))
        if f in _KEEP_CONST_FUNCTIONS:
            if _has_node(args[1:], kwargs):
                return False
            return self._same(node, inp, c_in.clone())
        if f in _AVG_POOL_FUNCTIONS:
            b = _bind(args, kwargs, _AVG_POOL_PARAMS,
                      {"stride": None, "padding": 0, "ceil_mode": False,
                       "count_include_pad": True, "divisor_override": None})
            if b is None or _has_node(args[1:], kwargs):
                return False
            return self._same(node, inp, self._avg_const(
                c_in, b["padding"], b["count_include_pad"], b["divisor_override"]))
        if f in _DROPOUT_FUNCTIONS or f in _ALPHA_DROPOUT_FUNCTIONS:
            b = _bind(args, kwargs, ("input", "p", "training", "inplace"),
                      {"p": 0.5, "training": True, "inplace": False})
            if b is None or _has_node(args[1:], kwargs) or not isinstance(b["training"], bool):
                return False
            if not b["training"]:
                return self._same(node, inp, c_in.clone())
            if f in _ALPHA_DROPOUT_FUNCTIONS:
                return False
            # random per-element mask: only an exact 0 stays constant
            return self._same(node, inp, torch.where(c_in == 0, c_in, _nan(c_in.numel())))
        if f in _FLATTEN_FUNCTIONS:
            b = _bind(args, kwargs, ("input", "start_dim", "end_dim"),
                      {"start_dim": 0, "end_dim": -1})
            if b is None or _has_node(args[1:], kwargs):
                return False
            return self._flatten(node, inp, b["start_dim"], b["end_dim"])
        if f in _VIEW_FUNCTIONS:
            return self._view(node, inp)
        if f in _REDUCE_FUNCTIONS:
            b = _bind(args, kwargs, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
            if b is None or _has_node(args[1:], kwargs):
                return False
            return self._reduce(node, inp, _REDUCE_FUNCTIONS[f], b["dim"])
        if f in (torch.squeeze, torch.unsqueeze):
            b = _bind(args, kwargs, ("input", "dim"), {"dim": None})
            if b is None or _has_node(args[1:], kwargs):
                return False
            return self._squeeze(node, inp, b["dim"], unsqueeze=f is torch.unsqueeze)
        return False

    def _method(self, node: Node) -> bool:
        name = node.target
        args, kwargs = node.args, node.kwargs
        if name in ("size", "dim", "ndimension"):
            return self._shape_access(node)
        if name in _BINARY_METHODS:
            return self._binary(node, _BINARY_METHODS[name], name)
        if not args or not self._tracked(args[0]):
            return False
        inp = args[0]
        c_in = self.const[inp]
        if name == "type_as":  # dtype cast to another tensor's dtype
            return len(args) == 2 and not kwargs and self._same(node, inp, c_in.clone())
        if name in _ELEMENTWISE_METHODS or name in _IDENTITY_METHODS:
            if _has_node(args[1:], kwargs):
                return False
            return self._same(node, inp, _map_const(
                lambda t: getattr(t, name)(*args[1:], **kwargs), c_in, self._dtype(node)))
        if name == "flatten":
            b = _bind(args, kwargs, ("input", "start_dim", "end_dim"),
                      {"start_dim": 0, "end_dim": -1})
            if b is None or _has_node(args[1:], kwargs):
                return False
            return self._flatten(node, inp, b["start_dim"], b["end_dim"])
        if name in _VIEW_METHODS:
            return self._view(node, inp)
        if name in _REDUCE_METHODS:
            b = _bind(args, kwargs, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
            if b is None or _has_node(args[1:], kwargs):
                return False
            return self._reduce(node, inp, _REDUCE_METHODS[name], b["dim"])
        if name in ("squeeze", "unsqueeze"):
            b = _bind(args, kwargs, ("input", "dim"), {"dim": None})
            if b is None or _has_node(args[1:], kwargs):
                return False
            return self._squeeze(node, inp, b["dim"], unsqueeze=name == "unsqueeze")
        return False

    # ---- pattern handlers
    def _shape_access(self, node: Node) -> bool:
        """``x.size(0)``, ``x.shape[0]``, ``x.dim()``: harmless; other sizes pin ``x``."""
        args = node.args
        if not args or not self._tracked(args[0]):
            return False
        x = args[0]
        if node.op == "call_function":  # getattr(x, attr)
            attr = args[1] if len(args) > 1 else None
            if attr in ("ndim", "dtype", "device", "is_cuda", "requires_grad"):
                return True
            if attr != "shape":
                return False
            return self._batch_only_users(node)
        if node.target in ("dim", "ndimension"):
            return True
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim")
        if dim is None:
            return self._batch_only_users(node)
        ndim = len(_shape(x))
        return isinstance(dim, int) and -ndim <= dim < ndim and dim % ndim == 0

    @staticmethod
    def _batch_only_users(node: Node) -> bool:
        return all(u.op == "call_function" and u.target is operator.getitem
                   and len(u.args) == 2 and u.args[1] == 0 for u in node.users)

    def _avg_const(self, c: Tensor, padding: Any, count_include_pad: bool,
                   divisor_override: Any) -> Tensor:
        keeps = divisor_override is None and (not count_include_pad or _zero_padding(padding))
        if keeps:
            return c.clone()
        return torch.where(c == 0, c, _nan(c.numel()))

    def _flatten(self, node: Node, inp: Node, start: Any, end: Any) -> bool:
        si, so = _shape(inp), _shape(node)
        if si is None or so is None or not isinstance(start, int) or not isinstance(end, int):
            return False
        nd = len(si)
        if not (-nd <= start < nd and -nd <= end < nd):
            return False
        start, end = start % nd, end % nd
        if start == 0 or end < start:
            return False  # merges the batch dimension: unknown
        if start >= 2:
            return self._same(node, inp, self.const[inp].clone())
        factor = math.prod(si[2:end + 1])
        return self._expand(node, inp, factor)

    def _expand(self, node: Node, inp: Node, factor: int) -> bool:
        si, so = _shape(inp), _shape(node)
        if so is None or len(so) < 2 or so[0] != si[0] or so[1] != si[1] * factor:
            return False
        self.slots[node] = self.slots[inp].repeat_interleave(factor)
        self.const[node] = self.const[inp].repeat_interleave(factor)
        return True

    def _view(self, node: Node, inp: Node) -> bool:
        si, so = _shape(inp), _shape(node)
        if si is None or so is None:
            return False
        # only a flatten from dim 1 is understood: (N, C, *S) -> (N, C*prod(S))
        if len(so) != 2 or so[0] != si[0] or so[1] != math.prod(si[1:]):
            return False
        if not self._expand(node, inp, math.prod(si[2:])):
            return False
        self.flat_views.append(node)
        return True

    def _reduce(self, node: Node, inp: Node, kind: str, dim: Any) -> bool:
        si = _shape(inp)
        dims = _norm_dims(dim, len(si))
        if dims is None or 0 in dims or 1 in dims:
            return False
        c = self.const[inp]
        if kind == "sum":
            c = c * math.prod(si[d] for d in set(dims))
        return self._same(node, inp, c.clone())

    def _squeeze(self, node: Node, inp: Node, dim: Any, unsqueeze: bool) -> bool:
        so = _shape(node)
        if so is None:
            return False
        ref = len(so) if unsqueeze else len(_shape(inp))
        dims = _norm_dims(dim, ref)
        if dims is None or any(d < 2 for d in dims):
            return False
        return self._same(node, inp, self.const[inp].clone())

    def _binary(self, node: Node, kind: str, op: Any) -> bool:
        args, kwargs = node.args, dict(node.kwargs)
        if len(args) != 2:
            return False
        a, b = args
        ta, tb = self._tracked(a), self._tracked(b)
        so = _shape(node)
        if so is None or len(so) < 2:
            return False
        if isinstance(op, str):
            def fn(x, y, _n=op, _k=kwargs):
                return getattr(x, _n)(y, **_k)
        else:
            def fn(x, y, _f=op, _k=kwargs):
                return _f(x, y, **_k)
        if _has_node(kwargs):
            return False
        scalar = (int, float, bool)
        if ta and isinstance(b, scalar):
            return self._same(node, a, _map_const(lambda t: fn(t, b), self.const[a],
                                                  self._dtype(node)))
        if tb and isinstance(a, scalar) and not isinstance(op, str):
            return self._same(node, b, _map_const(lambda t: fn(a, t), self.const[b],
                                                  self._dtype(node)))
        if not (ta and tb) or kind == "div":
            return False
        sa, sb = _shape(a), _shape(b)
        if not (len(sa) == len(sb) == len(so) and sa[1] == sb[1] == so[1]):
            return False
        if set(kwargs) - ({"alpha"} if kind in ("add", "sub") else set()):
            return False
        self._union(self.slots[a], self.slots[b])
        ca, cb = self.const[a], self.const[b]
        ok = torch.isfinite(ca) & torch.isfinite(cb)
        alpha = float(kwargs.get("alpha", 1))
        if kind == "add":
            c = ca + alpha * cb
        elif kind == "sub":
            c = ca - alpha * cb
        else:
            c = ca * cb
        c = torch.where(ok, c, _nan(c.numel()))
        if kind == "mul":  # 0 * (finite anything) == 0
            c = torch.where((ca == 0) | (cb == 0), torch.zeros_like(c), c)
        self.slots[node] = self.slots[a]
        self.const[node] = c
        return True

    def _cat(self, node: Node) -> bool:
        b = _bind(node.args, node.kwargs, ("tensors", "dim"), {"dim": 0})
        if b is None or not isinstance(b["tensors"], (list, tuple)) or not b["tensors"]:
            return False
        ts = b["tensors"]
        if not all(self._tracked(t) for t in ts):
            return False
        shapes = [_shape(t) for t in ts]
        so = _shape(node)
        nd = len(shapes[0])
        dim = b["dim"]
        if so is None or not isinstance(dim, int) or any(len(s) != nd for s in shapes) \
                or not -nd <= dim < nd:
            return False
        dim %= nd
        if dim == 1:
            if so[1] != sum(s[1] for s in shapes):
                return False
            self.slots[node] = torch.cat([self.slots[t] for t in ts])
            self.const[node] = torch.cat([self.const[t] for t in ts])
            return True
        if any(s[1] != so[1] for s in shapes):
            return False
        for t in ts[1:]:
            self._union(self.slots[ts[0]], self.slots[t])
        c = self.const[ts[0]].clone()
        for t in ts[1:]:
            c = torch.where(self.const[t] == c, c, _nan(c.numel()))
        self.slots[node] = self.slots[ts[0]]
        self.const[node] = c
        return True

    def _zero(self, w: Tensor) -> Tensor:
        """(O, C) bool: every kernel weight of (out o, in c) is zero (|w| <= atol)."""
        z = w.detach().abs() <= self.atol
        return z.reshape(z.shape[0], z.shape[1], -1).all(2).cpu()

    def _out_const(self, m: nn.Module, zero_row: Tensor) -> Tensor:
        bias = m.bias.detach().to("cpu", torch.float64) if m.bias is not None \
            else torch.zeros(zero_row.numel(), dtype=torch.float64)
        return torch.where(zero_row, bias, _nan(zero_row.numel()))

    def _conv(self, node: Node, m: nn.Module, inp: Node) -> bool:
        si, so = _shape(inp), _shape(node)
        if self._frozen(node.target, m) or so is None or len(si) != m.weight.dim() \
                or si[1] != m.in_channels or len(so) != len(si) or so[1] != m.out_channels:
            return False
        zero = self._zero(m.weight)
        zero_row = zero.all(1)
        no_pad = _conv_no_pad(m)
        if m.groups == 1:
            self.layers.append(_Layer(node, node.target, m, "conv", inp, zero, zero_row, no_pad))
            self.slots[node] = self._new(m.out_channels)
            self.const[node] = self._out_const(m, zero_row)
            return True
        if m.groups == m.in_channels and m.out_channels % m.in_channels == 0:
            mult = m.out_channels // m.in_channels
            self.layers.append(_Layer(node, node.target, m, "dw", inp, zero, zero_row, no_pad))
            # sharing slot ids couples input channel c with output channels c*mult+j
            self.slots[node] = self.slots[inp].repeat_interleave(mult)
            c_in = self.const[inp].repeat_interleave(mult)
            w = m.weight.detach().to("cpu", torch.float64).reshape(m.out_channels, -1).sum(1)
            bias = m.bias.detach().to("cpu", torch.float64) if m.bias is not None \
                else torch.zeros(m.out_channels, dtype=torch.float64)
            ok = torch.isfinite(c_in)
            if not no_pad:  # zero padding: only a 0 input stays constant at the borders
                ok &= c_in == 0
            c = torch.where(ok, c_in * w + bias, _nan(m.out_channels))
            self.const[node] = torch.where(zero_row, bias, c)
            return True
        return False

    def _linear(self, node: Node, m: nn.Linear, inp: Node) -> bool:
        si, so = _shape(inp), _shape(node)
        if self._frozen(node.target, m) or so is None or len(si) != 2 or len(so) != 2 \
                or si[1] != m.in_features or so[1] != m.out_features:
            return False
        zero = self._zero(m.weight)
        zero_row = zero.all(1)
        self.layers.append(_Layer(node, node.target, m, "linear", inp, zero, zero_row, True))
        self.slots[node] = self._new(m.out_features)
        self.const[node] = self._out_const(m, zero_row)
        return True

    def _bn(self, node: Node, m: nn.Module, inp: Node) -> bool:
        si = _shape(inp)
        if self._frozen(node.target, m) or len(si) not in _BN_NDIM[type(m)] \
                or si[1] != m.num_features:
            return False
        c = self.const[inp]
        if m.track_running_stats and m.running_mean is not None and m.running_var is not None:
            mean = m.running_mean.detach().to("cpu", torch.float64)
            var = m.running_var.detach().to("cpu", torch.float64)
            c = (c - mean) / torch.sqrt(var + m.eps)
            if m.weight is not None:
                c = c * m.weight.detach().to("cpu", torch.float64)
            if m.bias is not None:
                c = c + m.bias.detach().to("cpu", torch.float64)
        else:  # batch statistics: not a known constant
            c = _nan(c.numel())
        if not self._same(node, inp, c):
            return False
        self.layers.append(_Layer(node, node.target, m, "bn", inp))
        return True

    # ---- decision
    def decide(self, *, ignore_unknown: bool = False) -> _Decision:
        root = self.roots()
        n = len(self.parent)
        structural = torch.zeros(n, dtype=torch.bool)
        for b in self.blocks:
            if ignore_unknown and b.kind == "unknown_in":
                continue
            structural[root[b.ids]] = True
        removed = None
        decisions: list[Tensor] = []
        for it in range(1, len(self.layers) + 3):
            blocked = structural.clone()
            for lay in self.layers:
                if lay.kind not in ("conv", "linear"):
                    continue
                zero = lay.zero
                if removed is not None:  # only the rows that survive matter
                    kept_rows = ~removed[root[self.slots[lay.node]]]
                    zero = zero[kept_rows]
                zero_col = zero.all(0)
                c = self.const[lay.inp]
                fold_ok = torch.isfinite(c)
                if not lay.no_pad:
                    fold_ok &= c == 0
                tol = zero_col | fold_ok
                blocked[root[self.slots[lay.inp][~tol]]] = True
            new = ~blocked
            self._keep_one(new, root)
            if removed is not None and torch.equal(new, removed):
                return _Decision(new, root, it)
            decisions.append(new)
            if removed is not None and bool((removed & ~new).any()):
                break  # not monotone (keep-one interplay): use the first, sound decision
            removed = new
        return _Decision(decisions[0], root, -1)

    def _keep_one(self, removed: Tensor, root: Tensor) -> None:
        for node, s in self.slots.items():
            r = root[s]
            if s.numel() and bool(removed[r].all()):
                removed[r[0]] = False

    def removed_pos(self, dec: _Decision, node: Node) -> Tensor:
        return dec.removed_root[dec.root[self.slots[node]]]


# --------------------------------------------------------------------------- rebuild

def _param(old: Tensor | None, new: Tensor) -> nn.Parameter:
    rg = old.requires_grad if old is not None else True
    return nn.Parameter(new.detach().clone(), requires_grad=rg)


def _fold(an: _Analysis, lay: _Layer, rows: Tensor, removed_in: Tensor) -> Tensor:
    """Bias increment (float64, one per row of ``rows``) of a conv/linear consumer whose
    input positions ``removed_in`` are dropped: ``sum_c W[r, c] * v_c`` over the removed
    positions that carry a finite constant ``v_c`` (a conv's weights summed over the kernel;
    exact for the convs whose constants may be folded, see :meth:`_Analysis.decide`). The
    removed positions without a constant have all-zero weights among ``rows``."""
    w = lay.module.weight.detach()
    fold = torch.zeros(rows.numel(), dtype=torch.float64)
    if not removed_in.numel():
        return fold
    c = an.const[lay.inp][removed_in]
    use = torch.isfinite(c)
    w64 = w.index_select(0, rows.to(w.device)).to("cpu", torch.float64)
    w64 = w64.reshape(w64.shape[0], w64.shape[1], -1).sum(2)  # (rows, C)
    return (w64[:, removed_in][:, use] * c[use]).sum(1)


@torch.no_grad()
def _rebuild(an: _Analysis, dec: _Decision) -> None:
    for lay in an.layers:
        m = lay.module
        keep_in = ~an.removed_pos(dec, lay.inp)
        keep_out = ~an.removed_pos(dec, lay.node)
        if bool(keep_in.all()) and bool(keep_out.all()):
            continue
        w = m.weight
        dev = w.device if w is not None else None
        idx_out = keep_out.nonzero().flatten()
        if lay.kind == "bn":
            def cut(t: Tensor) -> Tensor:
                return t.index_select(0, idx_out.to(t.device))
            if m.weight is not None:
                m.weight = _param(m.weight, cut(m.weight))
            if m.bias is not None:
                m.bias = _param(m.bias, cut(m.bias))
            if m.running_mean is not None:
                m.running_mean = cut(m.running_mean).clone()
            if m.running_var is not None:
                m.running_var = cut(m.running_var).clone()
            m.num_features = int(idx_out.numel())
            continue
        idx_in = keep_in.nonzero().flatten()
        if lay.kind == "dw":
            mult = m.out_channels // m.in_channels
            m.weight = _param(w, w.index_select(0, idx_out.to(dev)))
            if m.bias is not None:
                m.bias = _param(m.bias, m.bias.index_select(0, idx_out.to(dev)))
            m.in_channels = int(idx_in.numel())
            m.groups = int(idx_in.numel())
            m.out_channels = int(idx_in.numel()) * mult
            assert m.out_channels == idx_out.numel()
            continue
        # conv (groups == 1) / linear: fold the constants of removed inputs into the bias
        fold = _fold(an, lay, idx_out, (~keep_in).nonzero().flatten())
        new_w = w.index_select(0, idx_out.to(dev)).index_select(1, idx_in.to(dev))
        m.weight = _param(w, new_w)
        if m.bias is not None:
            b = m.bias.detach().index_select(0, idx_out.to(dev))
            if bool((fold != 0).any()):
                b = (b.to(torch.float64) + fold.to(b.device)).to(m.bias.dtype)
            m.bias = _param(m.bias, b)
        elif bool((fold != 0).any()):
            m.bias = _param(w, fold.to(device=dev, dtype=w.dtype))
        if lay.kind == "linear":
            m.in_features, m.out_features = int(idx_in.numel()), int(idx_out.numel())
        else:
            m.in_channels, m.out_channels = int(idx_in.numel()), int(idx_out.numel())


def _rewrite_views(an: _Analysis, dec: _Decision) -> bool:
    changed = False
    for node in an.flat_views:
        if not bool(an.removed_pos(dec, node).any()):
            continue
        x = node.args[0]
        if node.op == "call_method":
            node.target = "flatten"
        else:
            node.target = torch.flatten
        node.args, node.kwargs = (x, 1), {}
        changed = True
    if changed:
        an.gm.graph.lint()
        an.gm.recompile()
    return changed


# --------------------------------------------------------------------------- driver

def _as_args(example_input: Any) -> tuple:
    if isinstance(example_input, Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    raise ConfigError(
        f"example_input must be a tensor or a tuple/list of tensors, got {type(example_input).__name__}")


def _check_atol(atol: float) -> float:
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) \
            or atol < 0:
        raise ConfigError(f"atol must be a finite number >= 0, got {atol!r}")
    return float(atol)


def _set_training(model: nn.Module, flags: dict[str, bool]) -> None:
    for name, mod in model.named_modules():
        if name in flags:
            mod.training = flags[name]


def _trace(work: nn.Module, args: tuple) -> tuple[fx.GraphModule, Any]:
    name = type(work).__name__
    try:
        gm = fx.symbolic_trace(work)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"compact: torch.fx.symbolic_trace cannot trace {name} ({type(exc).__name__}: "
            f"{exc}); compaction needs a traceable forward (no data-dependent control flow)"
        ) from exc
    try:
        with torch.no_grad():
            out = ShapeProp(gm).propagate(*args)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"compact: example_input does not run through the traced graph of {name} "
            f"({type(exc).__name__}: {exc})") from exc
    return gm, out


def _analyze(model: nn.Module, example_input: Any, atol: float):
    atol = _check_atol(atol)
    args = _as_args(example_input)
    work = copy.deepcopy(model)
    flags = {n: m.training for n, m in model.named_modules()}
    work.eval()
    gm, out = _trace(work, args)
    an = _Analysis(gm, atol)
    return work, gm, an, args, out, flags


def _describe(node: Node) -> str:
    t = node.target
    what = t if isinstance(t, str) else getattr(t, "__name__", repr(t))
    return f"node {node.name!r} ({node.op} {what})"


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    return []


def _random_like(args: tuple) -> tuple:
    g = torch.Generator().manual_seed(1234)
    out = []
    for a in args:
        if isinstance(a, Tensor) and a.is_floating_point():
            out.append(torch.randn(a.shape, generator=g, dtype=a.dtype).to(a.device))
        else:
            out.append(a)
    return tuple(out)


def _tol(ref: Tensor) -> float:
    scale = 1.0 + (float(ref.abs().max()) if ref.numel() else 0.0)
    if ref.dtype == torch.float64:
        return 1e-8 * scale
    if ref.dtype in (torch.float16, torch.bfloat16):
        return 1e-2 * scale
    return 1e-4 * scale


def _agrees(candidate: nn.Module, inputs: list[tuple], refs: list[Any], exact: bool) -> str | None:
    """None when ``candidate`` reproduces ``refs``; else the reason."""
    try:
        with torch.no_grad():
            for args, ref in zip(inputs, refs):
                got = _tensors(candidate(*args))
                want = _tensors(ref)
                if len(got) != len(want):
                    return "different number of outputs"
                for g, w in zip(got, want):
                    if g.shape != w.shape:
                        return f"output shape {tuple(g.shape)} != {tuple(w.shape)}"
                    if exact and w.is_floating_point():
                        diff = float((g - w).abs().max()) if w.numel() else 0.0
                        if not diff <= _tol(w):
                            return f"max abs difference {diff:.3g}"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def compact(model: nn.Module, example_input: Any, *, atol: float = 0.0,
            strict: bool = False) -> nn.Module:
    """Return a new, smaller model in which dead filters/channels/neurons are removed.

    Args:
        model: the (pruned) model; not modified.
        example_input: a tensor, or a tuple/list of tensors (one per positional input),
            batch dimension included; used to trace shapes.
        atol: weights with ``|w| <= atol`` count as zero (``0.0``: exact zeros only; with
            ``atol > 0`` outputs differ by the dropped weights' contribution).
        strict: raise :class:`UnsupportedModelError` naming the op when an unsupported op
            keeps a channel that would otherwise be removed (default: keep it silently).

    Returns:
        The compacted model: normally a deep copy of ``model`` (same class) with smaller
        layers; a :class:`torch.fx.GraphModule` if the class's own ``forward`` cannot run
        with the smaller layers (hard-coded sizes). See the module docstring. When units
        were removed it records the :func:`~mobileprune.sparsity.report.size_of` of the model it
        started as (attribute :data:`mobileprune.sparsity.report.ORIGINAL_SIZE`; kept through
        repeated compactions), which :func:`~mobileprune.sparsity.report.layer_report` uses.

    Raises:
        UnsupportedModelError: the model cannot be traced by ``torch.fx``, ``example_input``
            does not run through it, or (``strict``) an unsupported op blocks a dead channel.
        CompactionError: the compacted model does not reproduce the original (a bug).
    """
    work, gm, an, args, ref_out, flags = _analyze(model, example_input, atol)
    dec = an.decide()
    if strict:
        _strict_check(an, dec)
    n_removed = sum(int(an.removed_pos(dec, lay.node).sum()) for lay in an.layers
                    if lay.kind in ("conv", "linear"))
    if n_removed == 0:
        _set_training(work, flags)
        return work
    rnd = _random_like(args)
    with torch.no_grad():
        refs = [ref_out, gm(*rnd)]
    inputs = [args, rnd]
    _rebuild(an, dec)
    setattr(work, ORIGINAL_SIZE, getattr(model, ORIGINAL_SIZE, None) or size_of(model))
    exact = atol == 0.0
    reason = _agrees(work, inputs, refs, exact)
    if reason is None:
        _set_training(work, flags)
        return work
    _rewrite_views(an, dec)
    reason_gm = _agrees(gm, inputs, refs, exact)
    if reason_gm is None:
        gm.train(model.training)  # gm shares its leaf modules (and their names) with work
        setattr(gm, ORIGINAL_SIZE, getattr(work, ORIGINAL_SIZE))
        _set_training(gm, flags)
        return gm
    raise CompactionError(
        f"compact: the compacted {type(model).__name__} does not reproduce the original "
        f"(class forward: {reason}; traced graph: {reason_gm}); please report this model")


def _strict_check(an: _Analysis, dec: _Decision) -> None:
    loose = an.decide(ignore_unknown=True)
    extra = loose.removed_root & ~dec.removed_root
    if not bool(extra.any()):
        return
    culprits = []
    for b in an.blocks:
        if b.kind == "unknown_in" and bool(extra[dec.root[b.ids]].any()):
            if b.node not in culprits:
                culprits.append(b.node)
    if culprits:
        names = ", ".join(_describe(n) for n in culprits)
        raise UnsupportedModelError(
            f"compact: dead channels cannot be removed through unsupported op(s): {names}; "
            f"they are kept with strict=False")


def dead_units(model: nn.Module, example_input: Any, *, atol: float = 0.0) -> dict[str, dict]:
    """Dry run of :func:`compact`: which output units of each producer layer are removed.

    Returns ``{layer_name: {"out_units": int, "removable": [indices], "kept": int,
    "zero": [indices]}}`` for every Conv/Linear layer of the traced graph, in graph order:
    ``removable`` are the output units (filters / neurons) :func:`compact` removes,
    ``zero`` the units whose weights are all zero (``|w| <= atol``), removable or not (a
    zero unit can be kept, e.g. when its constant bias feeds a zero-padded conv). Layers
    compaction cannot resize (called several times, parametrised, grouped convs...) are
    listed with ``removable == []``. ``model`` is not modified.
    """
    work, gm, an, args, out, flags = _analyze(model, example_input, atol)
    dec = an.decide()
    report: dict[str, dict] = {}
    seen = set()
    for lay in an.layers:
        if lay.kind == "bn":
            continue
        rem = an.removed_pos(dec, lay.node).nonzero().flatten().tolist()
        report[lay.name] = {"out_units": int(lay.zero_row.numel()), "removable": rem,
                            "kept": int(lay.zero_row.numel()) - len(rem),
                            "zero": lay.zero_row.nonzero().flatten().tolist()}
        seen.add(lay.name)
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in seen:
            continue
        m = an.modules.get(node.target)
        if type(m) in _CONV or type(m) is nn.Linear:
            z = an._zero(m.weight).all(1)
            report[node.target] = {"out_units": int(z.numel()), "removable": [],
                                   "kept": int(z.numel()), "zero": z.nonzero().flatten().tolist()}
            seen.add(node.target)
    return report


def channel_ids(model: nn.Module, example_input: Any) -> dict[str, dict[str, Tensor]]:
    """Coupled channel ids of every Conv/Linear layer, as :func:`compact` sees them.

    Returns ``{layer_name: {"filter": ids, "channel": ids}}``: ``ids["filter"]`` has one
    entry per output unit (filter / neuron), ``ids["channel"]`` one per input position
    (input channel of a conv, input feature of a Linear). Two units carry the same id
    when they are the same channel slot of the traced graph: the output channels that a
    residual ``add`` merges, a depthwise conv's input and output channels, a producer's
    filters and the consumer's input channels they feed, the ``H*W`` features a
    ``flatten`` makes from one channel. Compaction can remove such units only all
    together, so structured pruning that wants a physical speed-up must zero them
    together (:class:`mobileprune.sparsity.admm.ADMMPruner` does, given ``example_input``).
    BatchNorm layers are listed too (the same ids under both keys). Ids are ``0..n-1``
    over the whole model; ``model`` is not modified. Layers compaction cannot resize (grouped convs, modules called twice, ...) are absent.
    """
    _, _, an, _, _, _ = _analyze(model, example_input, 0.0)
    root = an.roots()
    raw: dict[str, dict[str, Tensor]] = {}
    for lay in an.layers:
        if lay.name in raw:
            continue
        raw[lay.name] = {"filter": root[an.slots[lay.node]], "channel": root[an.slots[lay.inp]]}
    if not raw:
        return {}
    flat = torch.cat([t for d in raw.values() for t in d.values()])
    _, inverse = torch.unique(flat, return_inverse=True)
    out: dict[str, dict[str, Tensor]] = {}
    pos = 0
    for name, d in raw.items():
        out[name] = {}
        for k, t in d.items():
            out[name][k] = inverse[pos:pos + t.numel()].clone()
            pos += t.numel()
    return out


def dead_weights(model: nn.Module, example_input: Any, *, atol: float = 0.0,
                 nonzero_only: bool = True) -> dict[str, Tensor]:
    """Nonzero weights that cannot change the model's output (the ones :func:`compact`
    drops): ``{weight parameter name: bool mask}`` for every Conv/Linear layer it can cut.

    A weight is dead when it belongs to an output unit that compaction removes (e.g. a
    hidden neuron all of whose outgoing weights are zero) or reads an input channel /
    feature that compaction removes (e.g. a zero filter's constant output, folded into
    the consumer's bias). With ``nonzero_only=False`` every position of a dead unit is
    marked, zero or not. ``model`` is not modified.
    """
    work, gm, an, args, out, flags = _analyze(model, example_input, atol)
    dec = an.decide()
    result: dict[str, Tensor] = {}
    for lay in an.layers:
        if lay.kind == "bn":
            continue
        w = lay.module.weight.detach()
        rows = an.removed_pos(dec, lay.node)
        dead = rows.view(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone()
        if lay.kind in ("conv", "linear"):
            cols = an.removed_pos(dec, lay.inp)
            dead |= cols.view(1, -1, *([1] * (w.dim() - 2))).expand(w.shape)
        key = f"{lay.name}.weight" if lay.name else "weight"
        if nonzero_only:
            dead = dead & (w.abs().cpu() > atol)
        result[key] = dead if key not in result else result[key] | dead
    return result


@torch.no_grad()
def fold_dead_weights(model: nn.Module, example_input: Any) -> dict[str, int]:
    """Zero, **in place**, the nonzero weights that cannot change the model's output, and
    fold the constants they carried into the consumers' biases; shapes do not change.

    The weights are the ones :func:`dead_weights` marks (what :func:`compact` would drop):
    the incoming weights of a unit whose output is unused, and the outgoing weights of a
    unit whose output is a constant ``v`` (e.g. a hidden neuron with all-zero incoming
    weights emits ``relu(b)``), whose contribution ``W[:, j] * v`` moves into the
    consumer's bias (``W[:, c].sum() * v`` for a conv). Pruning then spends its nonzero
    budget on weights that matter, and nonzero counts and active units stop counting
    columns that only ever added a constant. A consumer without a bias keeps the
    columns that would need a fold (no parameter is added in place), and depthwise
    convs and BatchNorms are left as they are.

    Returns ``{weight parameter name: number of nonzero weights zeroed}`` for every
    Conv/Linear layer that :func:`compact` can cut. The outputs in eval mode do not change
    (up to float rounding of the folded biases); this is checked on ``example_input`` and
    on a random input of the same shape, and the weights are restored and
    :class:`CompactionError` raised if they would. In training mode a BatchNorm between a
    constant unit and its consumer normalises with batch statistics, so the folded
    constant is the eval-mode one. Call it outside the optimizer step (the optimizer's
    moment estimates of the zeroed weights are not reset; keep them zero with a mask,
    e.g. :class:`mobileprune.sparsity.masks.MaskEnforcer`).
    """
    work, gm, an, args, ref_out, flags = _analyze(model, example_input, 0.0)
    dec = an.decide()
    rnd = _random_like(args)
    refs = [ref_out, gm(*rnd)]
    backup: list[tuple[Tensor, Tensor]] = []
    counts: dict[str, int] = {}
    for lay in an.layers:
        if lay.kind not in ("conv", "linear"):
            continue
        m = model.get_submodule(lay.name)
        w = m.weight
        dead_rows = an.removed_pos(dec, lay.node).to(w.device)
        keep_rows = (~dead_rows).nonzero().flatten()
        removed_in = an.removed_pos(dec, lay.inp).nonzero().flatten()
        if m.bias is None and removed_in.numel():
            # a constant that would need a bias stays where it is
            c = an.const[lay.inp][removed_in]
            kept = w.detach().index_select(0, keep_rows).cpu()
            used = (kept.reshape(kept.shape[0], kept.shape[1], -1) != 0).any(2).any(0)
            removed_in = removed_in[~(torch.isfinite(c) & (c != 0) & used[removed_in])]
        fold = _fold(an, lay, keep_rows, removed_in)
        dead = dead_rows.view(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone()
        dead[:, removed_in.to(w.device)] = True
        n = int((w[dead] != 0).sum())
        counts[f"{lay.name}.weight" if lay.name else "weight"] = n
        if n == 0 and not bool((fold != 0).any()):
            continue
        backup.append((w, w.detach().clone()))
        if bool((fold != 0).any()):
            backup.append((m.bias, m.bias.detach().clone()))
            b = m.bias.detach()
            idx = keep_rows.to(b.device)
            b[idx] = (b[idx].to(torch.float64) + fold.to(b.device)).to(b.dtype)
        w.masked_fill_(dead, 0)
    if backup:
        model_flags = {n: mod.training for n, mod in model.named_modules()}
        model.eval()
        reason = _agrees(model, [args, rnd], refs, exact=True)
        _set_training(model, model_flags)
        if reason is not None:
            for t, saved in backup:
                t.detach().copy_(saved)
            raise CompactionError(
                f"fold_dead_weights: zeroing the dead weights of {type(model).__name__} would "
                f"change its output ({reason}); the weights are restored; please report this model")
    return counts


def compact_in_place(model: nn.Module, example_input: Any) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Remove dead filters/channels/neurons from ``model`` **in place**: the same object,
    with smaller layers, computes what :func:`compact` returns.

    :func:`compact` builds the smaller model; every submodule whose parameters or buffers
    change shape (or gain a bias for a folded constant) is then swapped into ``model`` at
    the same qualified name, and the remaining values (e.g. biases that received a folded
    constant) are copied over. Used between pruning rounds, so that training continues
    on the smaller network; hooks, parametrizations and optimizer state attached to the
    replaced layers do not carry over (build optimizers and
    :class:`~mobileprune.sparsity.masks.MaskEnforcer` after this call).

    Returns ``{module name: (old weight shape, new weight shape)}`` of the replaced
    layers (empty when nothing is dead; ``model`` is then untouched). As with
    :func:`compact`, the model remembers the size it started as
    (:data:`mobileprune.sparsity.report.ORIGINAL_SIZE`), so :func:`~mobileprune.sparsity.report.layer_report`
    counts its compression against that.

    Raises:
        UnsupportedModelError: as :func:`compact`, or the class's ``forward`` cannot run
            with smaller layers (hard-coded sizes): use :func:`compact`, which returns a
            rewritten :class:`torch.fx.GraphModule` for such models.
        CompactionError: the model does not reproduce its outputs after the swap.
    """
    before = getattr(model, ORIGINAL_SIZE, None) or size_of(model)
    small = compact(model, example_input)
    if small is model:
        return {}
    if type(small) is not type(model):
        raise UnsupportedModelError(
            f"compact_in_place: the forward of {type(model).__name__} cannot run with smaller "
            "layers (hard-coded sizes); use compact(), which returns a rewritten GraphModule")
    old_sd, new_sd = model.state_dict(), small.state_dict()
    old_mods = dict(model.named_modules())
    swap: dict[str, nn.Module] = {}
    for key, t in new_sd.items():
        if key not in old_sd or old_sd[key].shape != t.shape:
            name = key.rpartition(".")[0]
            swap[name] = small.get_submodule(name)
    if not swap:
        return {}
    if "" in swap:
        raise UnsupportedModelError(
            f"compact_in_place: {type(model).__name__} is itself the layer to resize; use compact()")
    args = _as_args(example_input)
    with torch.no_grad():
        flags = {n: m.training for n, m in model.named_modules()}
        small.eval()
        ref = small(*args)
    changed = {}
    for name, new in swap.items():
        old_w = getattr(old_mods[name], "weight", None)
        new_w = getattr(new, "weight", None)
        changed[name] = (tuple(old_w.shape) if old_w is not None else (),
                         tuple(new_w.shape) if new_w is not None else ())
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    setattr(model, ORIGINAL_SIZE, before)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            t.copy_(new_sd[key])
    model.eval()
    reason = _agrees(model, [args], [ref], exact=True)
    _set_training(model, flags)
    if reason is not None:
        raise CompactionError(f"compact_in_place: {type(model).__name__} does not reproduce the "
                              f"compacted model after the swap ({reason}); please report this model")
    return changed
