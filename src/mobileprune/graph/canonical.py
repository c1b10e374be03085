"""One table of op spellings, and the pass that writes each node's canonical op.

Every way a user's model can spell an op (a module class, a ``torch`` / ``F`` function,
an ``operator`` function, a tensor method, in place or not) is one row of
:data:`SPECS`, keyed by an op name such as ``"relu"``. :func:`canonicalize` writes, for
every node of a traced graph:

* ``node.meta["mp_op"]``: the key (``"input"``, ``"output"``, ``"get_attr"`` for the
  three structural node kinds, ``"unknown"`` for a spelling that is in no row);
* ``node.meta["mp_args"]``: the arguments bound by name with defaults filled, the same
  names for every spelling (the function form's parameter names; a module spelling
  also fills them from the module's attributes and adds ``"module"`` (the module) and
  ``"module_name"`` (its qualified name)); ``"inplace": True`` for an in-place spelling;
* ``node.meta["mp_why"]``: for ``"unknown"``, why it is not known.

After this pass no op handler looks at ``node.op`` or ``node.target``
(``../shared/docs/style.md`` section 1; ``docs/methods.md`` section 4).
"""

from __future__ import annotations

import inspect
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["Spec", "SPECS", "canonicalize", "describe", "module_spec", "source_line"]


@dataclass(frozen=True)
class Spec:
    """One op, every spelling.

    ``params`` are the function form's parameter names in positional order (the first
    is the tensor a method is called on), ``defaults`` their defaults.
    ``module_attrs`` maps a parameter to the module attribute that holds it.
    ``inplace`` lists the spellings (functions or method names) that write their input.
    ``reverse`` lists the method names whose two operands come swapped (``__rsub__``).
    """

    key: str
    params: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    modules: tuple[type, ...] = ()
    functions: tuple[Any, ...] = ()
    methods: tuple[str, ...] = ()
    module_attrs: Mapping[str, str] = field(default_factory=dict)
    inplace: tuple[Any, ...] = ()
    reverse: tuple[str, ...] = ()
    variadic: str | None = None  # a method whose trailing positional args form one tuple
    loose: bool = False  # extra arguments (memory_format, dtype, ...) are ignored


def _attrs(*names: str) -> dict[str, str]:
    return {n: n for n in names}


_X = ("input",)
_IP = {"inplace": False}
_POOL = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_POOL_D = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
_AVG = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
        "divisor_override")
_AVG_D = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
          "divisor_override": None}
_REDUCE = ("input", "dim", "keepdim", "dtype")
_REDUCE_D = {"dim": None, "keepdim": False, "dtype": None}
_IDENT_METHODS = ("contiguous", "clone", "detach", "float", "cpu", "requires_grad_")


def _act(key: str, modules: tuple, functions: tuple, methods: tuple = (), params: tuple = (),
         defaults: dict | None = None, inplace: tuple = ()) -> Spec:
    """An elementwise activation: (input, *params, inplace)."""
    ps = ("input",) + params + ("inplace",)
    return Spec(key, ps, {**(defaults or {}), **_IP}, modules, functions, methods,
                _attrs(*params, "inplace"), inplace)


SPECS: tuple[Spec, ...] = (
    # ---- weight-bearing layers (module spellings; the module is in mp_args)
    Spec("conv", _X, modules=(nn.Conv1d, nn.Conv2d, nn.Conv3d)),
    Spec("conv_transpose", ("input", "output_size"), {"output_size": None},
         modules=(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)),
    Spec("linear", ("input", "weight", "bias"), {"bias": None}, modules=(nn.Linear,),
         functions=(F.linear,), module_attrs=_attrs("weight", "bias")),
    Spec("batch_norm", ("input", "running_mean", "running_var", "weight", "bias", "training",
                        "momentum", "eps"),
         {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5},
         modules=(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), functions=(F.batch_norm,),
         module_attrs=_attrs("running_mean", "running_var", "weight", "bias", "training",
                             "momentum", "eps")),
    Spec("layer_norm", ("input", "normalized_shape", "weight", "bias", "eps"),
         {"weight": None, "bias": None, "eps": 1e-5}, modules=(nn.LayerNorm,),
         functions=(F.layer_norm,), module_attrs=_attrs("normalized_shape", "weight", "bias",
                                                         "eps")),
    Spec("group_norm", ("input", "num_groups", "weight", "bias", "eps"),
         {"weight": None, "bias": None, "eps": 1e-5}, modules=(nn.GroupNorm,),
         functions=(F.group_norm,), module_attrs=_attrs("num_groups", "weight", "bias", "eps")),
    Spec("embedding", _X, modules=(nn.Embedding,)),
    Spec("multihead_attention", ("query", "key", "value", "key_padding_mask", "need_weights",
                                 "attn_mask", "average_attn_weights", "is_causal"),
         {"key_padding_mask": None, "need_weights": True, "attn_mask": None,
          "average_attn_weights": True, "is_causal": False}, modules=(nn.MultiheadAttention,)),
    Spec("timm_attention", ("x", "attn_mask", "is_causal"), {"attn_mask": None,
                                                             "is_causal": False}),
    Spec("rnn", ("input", "hx"), {"hx": None}, modules=(nn.LSTM, nn.GRU, nn.RNN)),
    Spec("transformer_layer", ("src", "src_mask", "src_key_padding_mask", "is_causal"),
         {"src_mask": None, "src_key_padding_mask": None, "is_causal": False},
         modules=(nn.TransformerEncoderLayer,)),
    Spec("transformer_encoder", ("src", "mask", "src_key_padding_mask", "is_causal"),
         {"mask": None, "src_key_padding_mask": None, "is_causal": None},
         modules=(nn.TransformerEncoder,)),
    # ---- activations (elementwise)
    _act("relu", (nn.ReLU,), (F.relu, torch.relu, F.relu_, torch.relu_), ("relu", "relu_"),
         inplace=(F.relu_, torch.relu_, "relu_")),
    _act("relu6", (nn.ReLU6,), (F.relu6,)),
    _act("hardtanh", (nn.Hardtanh,), (F.hardtanh, F.hardtanh_), (), ("min_val", "max_val"),
         {"min_val": -1.0, "max_val": 1.0}, (F.hardtanh_,)),
    _act("leaky_relu", (nn.LeakyReLU,), (F.leaky_relu, F.leaky_relu_), (), ("negative_slope",),
         {"negative_slope": 0.01}, (F.leaky_relu_,)),
    _act("elu", (nn.ELU,), (F.elu, F.elu_), (), ("alpha",), {"alpha": 1.0}, (F.elu_,)),
    _act("selu", (nn.SELU,), (F.selu,)),
    _act("celu", (nn.CELU,), (F.celu,), (), ("alpha",), {"alpha": 1.0}),
    _act("silu", (nn.SiLU,), (F.silu,)),
    _act("mish", (nn.Mish,), (F.mish,)),
    _act("hardswish", (nn.Hardswish,), (F.hardswish,)),
    _act("hardsigmoid", (nn.Hardsigmoid,), (F.hardsigmoid,)),
    Spec("gelu", ("input", "approximate"), {"approximate": "none"}, (nn.GELU,), (F.gelu,),
         module_attrs=_attrs("approximate")),
    Spec("sigmoid", _X, modules=(nn.Sigmoid,), functions=(torch.sigmoid, F.sigmoid),
         methods=("sigmoid", "sigmoid_"), inplace=("sigmoid_",)),
    Spec("tanh", _X, modules=(nn.Tanh,), functions=(torch.tanh, F.tanh),
         methods=("tanh", "tanh_"), inplace=("tanh_",)),
    Spec("softplus", ("input", "beta", "threshold"), {"beta": 1.0, "threshold": 20.0},
         (nn.Softplus,), (F.softplus,), module_attrs=_attrs("beta", "threshold")),
    # loose: F.softmax's ``_stacklevel`` keyword is dropped
    Spec("softmax", ("input", "dim", "dtype"), {"dim": None, "dtype": None}, (nn.Softmax,),
         (F.softmax, torch.softmax), ("softmax",), module_attrs=_attrs("dim"), loose=True),
    Spec("log_softmax", ("input", "dim", "dtype"), {"dim": None, "dtype": None},
         (nn.LogSoftmax,), (F.log_softmax, torch.log_softmax), ("log_softmax",),
         module_attrs=_attrs("dim"), loose=True),
    Spec("clamp", ("input", "min", "max"), {"min": None, "max": None}, (),
         (torch.clamp, torch.clip), ("clamp", "clamp_", "clip", "clip_"),
         inplace=("clamp_", "clip_")),
    Spec("abs", _X, functions=(torch.abs,), methods=("abs", "abs_"), inplace=("abs_",)),
    Spec("neg", _X, functions=(torch.neg, operator.neg), methods=("neg", "neg_", "__neg__"),
         inplace=("neg_",)),
    Spec("exp", _X, functions=(torch.exp,), methods=("exp", "exp_"), inplace=("exp_",)),
    Spec("sqrt", _X, functions=(torch.sqrt,), methods=("sqrt", "sqrt_"), inplace=("sqrt_",)),
    Spec("square", _X, functions=(torch.square,), methods=("square",)),
    # ---- pooling and resampling
    Spec("max_pool", _POOL, _POOL_D, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
         (F.max_pool1d, F.max_pool2d, F.max_pool3d), module_attrs=_attrs(*_POOL[1:])),
    Spec("avg_pool", _AVG, _AVG_D, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
         (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d), module_attrs=_attrs(*_AVG[1:])),
    Spec("adaptive_avg_pool", ("input", "output_size"), {},
         (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
         (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
         module_attrs=_attrs("output_size")),
    Spec("adaptive_max_pool", ("input", "output_size", "return_indices"),
         {"return_indices": False},
         (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
         (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d),
         module_attrs=_attrs("output_size", "return_indices")),
    Spec("interpolate", ("input", "size", "scale_factor", "mode", "align_corners"),
         {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None},
         (nn.Upsample,), (F.interpolate,),
         module_attrs={"size": "size", "scale_factor": "scale_factor", "mode": "mode",
                       "align_corners": "align_corners"}),
    # ---- eval-mode no-ops
    Spec("identity", _X, modules=(nn.Identity,), functions=(torch.clone, torch.detach),
         methods=_IDENT_METHODS, loose=True),
    Spec("dropout", ("input", "p", "training", "inplace"),
         {"p": 0.5, "training": True, "inplace": False},
         (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
          nn.FeatureAlphaDropout),
         (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
          F.feature_alpha_dropout), module_attrs=_attrs("p", "inplace", "training")),
    Spec("stochastic_depth", ("input", "p", "mode", "training"), {"training": True},
         module_attrs=_attrs("p", "mode", "training")),
    Spec("assert", ("condition", "message"), {"message": None}, functions=(torch._assert,)),
    Spec("to", ("input",), methods=("to", "type_as", "double", "half", "bfloat16"), loose=True),
    # ---- elementwise binary
    Spec("add", ("input", "other", "alpha"), {"alpha": 1},
         functions=(operator.add, operator.iadd, torch.add),
         methods=("add", "add_", "__add__", "__iadd__", "__radd__"),
         inplace=(operator.iadd, "add_", "__iadd__"), reverse=("__radd__",)),
    Spec("sub", ("input", "other", "alpha"), {"alpha": 1},
         functions=(operator.sub, operator.isub, torch.sub),
         methods=("sub", "sub_", "__sub__", "__isub__", "__rsub__"),
         inplace=(operator.isub, "sub_", "__isub__"), reverse=("__rsub__",)),
    Spec("mul", ("input", "other"), functions=(operator.mul, operator.imul, torch.mul),
         methods=("mul", "mul_", "__mul__", "__imul__", "__rmul__"),
         inplace=(operator.imul, "mul_", "__imul__"), reverse=("__rmul__",)),
    Spec("div", ("input", "other"), functions=(operator.truediv, operator.itruediv, torch.div),
         methods=("div", "div_", "__truediv__", "__itruediv__", "__rtruediv__"),
         inplace=(operator.itruediv, "div_", "__itruediv__"), reverse=("__rtruediv__",)),
    Spec("floordiv", ("input", "other"), functions=(operator.floordiv,),
         methods=("__floordiv__",)),
    # comparisons: of sizes (``torch._assert(x.shape[1] == 3)``)
    *(Spec(k, ("input", "other"), functions=(f, getattr(torch, k)), methods=(k, f"__{k}__"))
      for k, f in (("eq", operator.eq), ("ne", operator.ne), ("lt", operator.lt),
                   ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge))),
    Spec("matmul", ("input", "other"), functions=(torch.matmul, operator.matmul, torch.bmm),
         methods=("matmul", "__matmul__", "bmm")),
    Spec("sdpa", ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"),
         {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None},
         functions=(F.scaled_dot_product_attention,)),
    # ---- shape ops
    Spec("cat", ("tensors", "dim"), {"dim": 0}, functions=(torch.cat, torch.concat,
                                                           torch.concatenate)),
    Spec("pad", ("input", "pad", "mode", "value"), {"mode": "constant", "value": None},
         functions=(F.pad,)),
    Spec("flatten", ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1},
         (nn.Flatten,), (torch.flatten,), ("flatten",), _attrs("start_dim", "end_dim")),
    Spec("reshape", ("input", "shape"), functions=(torch.reshape,), methods=("view", "reshape"),
         variadic="shape"),
    Spec("permute", ("input", "dims"), functions=(torch.permute,), methods=("permute",),
         variadic="dims"),
    Spec("transpose", ("input", "dim0", "dim1"), functions=(torch.transpose,),
         methods=("transpose",)),
    Spec("squeeze", ("input", "dim"), {"dim": None}, functions=(torch.squeeze,),
         methods=("squeeze",)),
    Spec("unsqueeze", ("input", "dim"), functions=(torch.unsqueeze,), methods=("unsqueeze",)),
    Spec("chunk", ("input", "chunks", "dim"), {"dim": 0}, functions=(torch.chunk,),
         methods=("chunk",)),
    Spec("split", ("input", "split_size_or_sections", "dim"), {"dim": 0},
         functions=(torch.split,), methods=("split",)),
    Spec("unbind", ("input", "dim"), {"dim": 0}, functions=(torch.unbind,), methods=("unbind",)),
    Spec("expand", ("input", "size"), methods=("expand",), variadic="size"),
    Spec("getitem", ("input", "index"), functions=(operator.getitem,)),
    Spec("mean", _REDUCE, _REDUCE_D, functions=(torch.mean,), methods=("mean",)),
    Spec("sum", _REDUCE, _REDUCE_D, functions=(torch.sum,), methods=("sum",)),
    Spec("amax", ("input", "dim", "keepdim"), {"dim": (), "keepdim": False},
         functions=(torch.amax,), methods=("amax",)),
    # ---- tensor metadata (sizes, not values)
    Spec("size", ("input", "dim"), {"dim": None}, methods=("size",)),
    Spec("ndim", _X, methods=("dim", "ndimension")),
    Spec("getattr", ("input", "name"), functions=(getattr,)),
)

# ---- ATen spellings: the ops of a torch.export graph (graph/export.py), by overload
# name under ``torch.ops.aten``. Arguments bind by the overload's schema: ``self`` is the
# op's first parameter, :data:`_ATEN_RENAMES` renames the others whose names differ
# (:func:`aten_param`), and an argument the row has no parameter for is dropped when it
# is at its schema default or in :data:`_ATEN_IGNORED` or the row is ``loose`` (else the
# node is ``"unknown"``); an overload whose schema name ends in ``_`` is the in-place
# spelling.
_ATEN: dict[str, tuple[str, ...]] = {
    "linear": ("linear.default",),
    "batch_norm": ("batch_norm.default",),
    "layer_norm": ("layer_norm.default",),
    "group_norm": ("group_norm.default",),
    "relu": ("relu.default", "relu_.default"),
    "relu6": ("relu6.default", "relu6_.default"),
    "hardtanh": ("hardtanh.default", "hardtanh_.default"),
    "leaky_relu": ("leaky_relu.default", "leaky_relu_.default"),
    "elu": ("elu.default", "elu_.default"),
    "silu": ("silu.default", "silu_.default"),
    "mish": ("mish.default", "mish_.default"),
    "hardswish": ("hardswish.default", "hardswish_.default"),
    "hardsigmoid": ("hardsigmoid.default", "hardsigmoid_.default"),
    "gelu": ("gelu.default", "gelu_.default"),
    "sigmoid": ("sigmoid.default", "sigmoid_.default"),
    "tanh": ("tanh.default", "tanh_.default"),
    "softmax": ("softmax.int",),
    "log_softmax": ("log_softmax.int",),
    "clamp": ("clamp.default", "clamp_.default"),
    "abs": ("abs.default",),
    "neg": ("neg.default",),
    "exp": ("exp.default",),
    "sqrt": ("sqrt.default",),
    "max_pool": ("max_pool1d.default", "max_pool2d.default", "max_pool3d.default"),
    "avg_pool": ("avg_pool1d.default", "avg_pool2d.default", "avg_pool3d.default"),
    "adaptive_avg_pool": ("adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default",
                          "adaptive_avg_pool3d.default"),
    "identity": ("clone.default", "alias.default", "detach.default", "contiguous.default"),
    "dropout": ("dropout.default", "dropout_.default"),
    "to": ("to.dtype", "type_as.default"),
    "add": ("add.Tensor", "add_.Tensor"),
    "sub": ("sub.Tensor", "sub_.Tensor"),
    "mul": ("mul.Tensor", "mul_.Tensor"),
    "div": ("div.Tensor", "div_.Tensor"),
    "matmul": ("matmul.default", "bmm.default"),
    "sdpa": ("scaled_dot_product_attention.default",),
    "cat": ("cat.default", "concat.default"),
    "pad": ("pad.default", "constant_pad_nd.default"),
    "flatten": ("flatten.using_ints",),
    "reshape": ("reshape.default", "view.default", "_unsafe_view.default", "unflatten.int"),
    "permute": ("permute.default",),
    "transpose": ("transpose.int",),
    "squeeze": ("squeeze.dim", "squeeze.dims", "squeeze.default"),
    "unsqueeze": ("unsqueeze.default",),
    "chunk": ("chunk.default",),
    "split": ("split.Tensor", "split_with_sizes.default"),
    "unbind": ("unbind.int",),
    "expand": ("expand.default",),
    "getitem": ("slice.Tensor", "select.int"),
    "mean": ("mean.dim", "mean.default"),
    "sum": ("sum.dim_IntList", "sum.default"),
    "amax": ("amax.default",),
}
_ATEN_RENAMES = {"size": "shape", "mat2": "other", "split_size": "split_size_or_sections",
                 "split_sizes": "split_size_or_sections", "train": "training"}
_ATEN_IGNORED = ("cudnn_enabled", "cudnn_enable", "memory_format", "implicit", "non_blocking",
                 "copy")

# functions known by qualified name, from optional libraries (torchvision wraps this one
# with torch.fx.wrap, so it appears as a call in the graph)
_NAMED_FUNCTIONS = {"torchvision.ops.stochastic_depth.stochastic_depth": "stochastic_depth"}
# modules known by qualified class name, from optional libraries
_NAMED_MODULES = {"torchvision.ops.stochastic_depth.StochasticDepth": "stochastic_depth",
                  # compact's attention with fewer heads: its own forward, the same op
                  "mobileprune.graph.ops.attention.PrunedMultiheadAttention":
                      "multihead_attention",
                  # timm's self-attention (ViT, DeiT): whole heads in one op
                  "timm.layers.attention.Attention": "timm_attention"}


def _index() -> tuple[dict, dict, dict, dict]:
    by_module, by_function, by_method, by_key = {}, {}, {}, {}
    for s in SPECS:
        if s.key in by_key:
            raise RuntimeError(f"op key {s.key!r} is in SPECS twice")
        by_key[s.key] = s
        for table, spellings in ((by_module, s.modules), (by_function, s.functions),
                                 (by_method, s.methods)):
            for sp in spellings:
                if sp in table and table[sp] is not s:
                    raise RuntimeError(f"{sp!r} is spelled for {table[sp].key!r} and {s.key!r}")
                table[sp] = s
    return by_module, by_function, by_method, by_key


BY_MODULE, BY_FUNCTION, BY_METHOD, BY_KEY = _index()


def _aten_index() -> dict[Any, Spec]:
    """``{OpOverload: row}`` of :data:`_ATEN` (overloads this torch lacks are skipped)."""
    out: dict[Any, Spec] = {}
    for key, names in _ATEN.items():
        for name in names:
            packet, _, overload = name.partition(".")
            op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
            if op is not None:
                out[op] = BY_KEY[key]
    return out


BY_ATEN = _aten_index()


def module_spec(m: nn.Module) -> Spec | None:
    """The row of a module: its exact class, or a subclass that keeps the base forward
    (a subclass with its own ``forward`` is traced through, not taken as the base op)."""
    t = type(m)
    name = _NAMED_MODULES.get(f"{t.__module__}.{t.__qualname__}")
    if name is not None:
        return BY_KEY[name]
    for base in t.__mro__:
        s = BY_MODULE.get(base)
        if s is not None:
            return s if base is t or t.forward is base.forward else None
    return None


def _bind(spec: Spec, args: tuple, kwargs: Mapping[str, Any]) -> dict:
    """Bind a call's arguments to ``spec.params`` (defaults filled). Raises TypeError."""
    if spec.variadic and len(args) > len(spec.params) - 1 and spec.params[-1] == spec.variadic:
        head = len(spec.params) - 1
        rest = args[head:]
        tail = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else tuple(rest)
        args = tuple(args[:head]) + (tuple(tail),)
    if spec.loose:
        args, kwargs = args[:len(spec.params)], {k: v for k, v in kwargs.items()
                                                  if k in spec.params}
    if len(args) > len(spec.params):
        raise TypeError(f"{len(args)} positional arguments, {spec.key} takes "
                        f"{len(spec.params)} ({', '.join(spec.params)})")
    out = dict(spec.defaults)
    out.update(zip(spec.params, args))
    for k, v in kwargs.items():
        if k not in spec.params:
            raise TypeError(f"unexpected argument {k!r} for {spec.key}")
        out[k] = v
    missing = [p for p in spec.params if p not in out]
    if missing:
        raise TypeError(f"missing argument(s) {missing} for {spec.key}")
    return out


def _bind_module(spec: Spec, m: nn.Module, name: str, args: tuple, kwargs: Mapping) -> dict:
    """A module call: forward arguments bound by the forward's own signature, then the
    parameters the module holds as attributes."""
    sig = inspect.signature(m.forward)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    out = dict(spec.defaults)
    fwd = list(bound.arguments.values())
    # the forward's first argument is the op's first parameter, whatever it is named
    out[spec.params[0]] = fwd[0] if fwd else None
    for k, v in list(bound.arguments.items())[1:]:
        if k in spec.params:
            out[k] = v
    for param, attr in spec.module_attrs.items():
        if hasattr(m, attr):
            out[param] = getattr(m, attr)
    out["module"] = m
    out["module_name"] = name
    return out


def _function_spec(f: Any) -> Spec | None:
    try:
        s = BY_FUNCTION.get(f)
    except TypeError:  # unhashable target
        return None
    if s is not None:
        return s
    name = _NAMED_FUNCTIONS.get(f"{getattr(f, '__module__', '')}.{getattr(f, '__name__', '')}")
    return BY_KEY[name] if name else None


def _bind_aten(spec: Spec, op: Any, node: fx.Node) -> dict:
    """An ATen call's arguments bound by the overload's schema to ``spec.params`` (see
    :data:`_ATEN`); ``aten.slice`` / ``aten.select`` become a ``getitem`` index,
    ``aten.unflatten`` a reshape to its traced shape. Raises TypeError."""
    schema = op._schema
    given = dict(zip((a.name for a in schema.arguments), node.args))
    given.update(node.kwargs)
    if spec.key == "getitem":
        return {"input": given["self"], "index": _aten_index_of(node, given)}
    if schema.name == "aten::unflatten":  # a reshape to the traced shape
        tm = node.meta.get("tensor_meta")
        if tm is None:
            raise TypeError("an unflatten of unknown result shape")
        return {"input": given["self"], "shape": tuple(int(d) for d in tm.shape)}
    out = dict(spec.defaults)
    declared = {a.name: a for a in schema.arguments}
    for name, value in given.items():
        param = aten_param(spec, name)
        if param in spec.params:
            out[param] = value
        elif not spec.loose and name not in _ATEN_IGNORED and not (
                declared[name].has_default_value() and declared[name].default_value == value):
            raise TypeError(f"argument {name}={value!r} of {schema.name} has no parameter "
                            f"in op {spec.key!r}")
    if spec.key in ("max_pool", "avg_pool") and not out.get("stride"):
        out["stride"] = None  # the schema's "[]": the kernel size
    missing = [p for p in spec.params if p not in out]
    if missing:
        raise TypeError(f"missing argument(s) {missing} for {spec.key}")
    if schema.name.endswith("_"):
        out["inplace"] = True
    return out


def aten_param(spec: Spec, name: str) -> str:
    """The row's parameter an ATen schema argument binds to: ``self`` is the first, a
    name of :data:`_ATEN_RENAMES` is renamed when the row has the new name."""
    if name == "self":
        return spec.params[0]
    new = _ATEN_RENAMES.get(name, name)
    return new if new in spec.params else name


def _aten_index_of(node: fx.Node, given: dict) -> tuple:
    """The ``x[...]`` index of ``aten.slice(x, dim, start, end, step)`` or
    ``aten.select(x, dim, index)`` (a negative ``dim`` counted from the traced rank)."""
    dim = int(given.get("dim", 0))
    if dim < 0:
        tm = given["self"].meta.get("tensor_meta") if isinstance(given["self"], fx.Node) else None
        if tm is None:
            raise TypeError("a negative dim on a tensor of unknown rank")
        dim += len(tm.shape)
    if "index" in given:
        item: Any = given["index"]
    else:
        item = slice(given.get("start"), given.get("end"), given.get("step", 1))
    return (slice(None),) * dim + (item,)


def _canonical(node: fx.Node, modules: Mapping[str, nn.Module]) -> tuple[str, dict, str | None]:
    """(key, bound args, why unknown) of one node."""
    if node.op in ("placeholder", "output", "get_attr"):
        key = {"placeholder": "input", "output": "output", "get_attr": "get_attr"}[node.op]
        return key, {"target": node.target, "args": node.args}, None
    args, kwargs = tuple(node.args), dict(node.kwargs)
    if node.op == "call_module":
        m = modules.get(node.target)
        spec = module_spec(m) if m is not None else None
        if spec is None:
            return "unknown", {"module": m, "module_name": node.target}, \
                f"module type {type(m).__name__} is not in the op table"
        return spec.key, _bind_module(spec, m, node.target, args, kwargs), None
    if node.op == "call_method":
        spec = BY_METHOD.get(node.target)
        inplace = spec is not None and node.target in spec.inplace
        if spec is not None and node.target in spec.reverse:
            args = (args[1], args[0]) + args[2:]
    elif isinstance(node.target, torch._ops.OpOverload):
        spec = BY_ATEN.get(node.target)
        if spec is None:
            return "unknown", {}, f"{describe(node)} is not in the op table"
        return spec.key, _bind_aten(spec, node.target, node), None
    else:
        spec = _function_spec(node.target)
        inplace = spec is not None and node.target in spec.inplace
    if spec is None:
        return "unknown", {}, f"{describe(node)} is not in the op table"
    bound = _bind(spec, args, kwargs)
    if inplace:
        bound["inplace"] = True
    return spec.key, bound, None


def canonicalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Write ``mp_op`` / ``mp_args`` (and ``mp_why`` for unknown ops) on every node."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        try:
            key, bound, why = _canonical(node, modules)
        except TypeError as exc:
            key, bound, why = "unknown", {}, f"arguments do not bind ({exc})"
        node.meta["mp_op"] = key
        node.meta["mp_args"] = bound
        if why is not None:
            node.meta["mp_why"] = why
    return gm


def describe(node: fx.Node) -> str:
    """``node 'x' (module 'features.0': Conv2d)``: what the user wrote, for messages."""
    t = node.target
    if node.op == "call_module":
        m = node.graph.owning_module.get_submodule(t) if node.graph.owning_module else None
        return f"node {node.name!r} (module {t!r}: {type(m).__name__})"
    if isinstance(t, torch._ops.OpOverload):
        return f"node {node.name!r} (ATen op {t.name()})"
    if node.op == "call_function":
        mod = getattr(t, "__module__", "") or ""
        name = getattr(t, "__name__", repr(t))
        return f"node {node.name!r} (function {mod + '.' if mod else ''}{name})"
    if node.op == "call_method":
        return f"node {node.name!r} (method .{t}())"
    return f"node {node.name!r} ({node.op} {t!r})"


def source_line(node: fx.Node) -> str | None:
    """``file.py:12: code`` of the user's line that created ``node`` (the innermost
    frame of fx's recorded stack trace that is outside torch and mobileprune)."""
    st = node.stack_trace or node.meta.get("stack_trace")
    if not st:
        return None
    lines = st.strip().splitlines()
    found = None
    for i, ln in enumerate(lines):
        m = _FRAME.match(ln.strip())
        if m and not any(s in m.group(1) for s in _LIBRARY_DIRS):
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            found = f"{m.group(1)}:{m.group(2)}: {code}"
    return found


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_LIBRARY_DIRS = ("/torch/", "/mobileprune/graph/", "<frozen")
