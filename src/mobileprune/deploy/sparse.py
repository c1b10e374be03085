"""Export a pruned PyTorch model to a compact sparse file for the torch-free runtime.

:func:`export_sparse` traces the model with :func:`torch.fx.symbolic_trace` (in eval
mode, on a float32 CPU copy; the model itself is not modified), runs ``example_input``
through the traced graph (``ShapeProp``) to learn every shape, and writes the graph as a
flat list of runtime ops plus the weights, in the model file format version 3
(``docs/native_format.md``). :mod:`mobileprune.runtime` loads and runs the file with the
native engine (C), no torch; the same file runs on a phone through the engine's C API
(:func:`mobileprune.deploy.export.export_native` writes a self-contained bundle).

Supported graph
---------------
One or several tensor inputs ``(N, ...)`` (the ``forward`` arguments, all with the
same batch size); outputs: one tensor or a tuple/list of tensors. A module called
more than once (one tower applied to two inputs) becomes one op per call, and
identical arrays are stored once.

* ``nn.Conv1d`` / ``nn.Conv2d`` modules (not ``F.conv1d/2d`` calls): any stride,
  padding (numbers, ``"valid"``, ``"same"``), dilation, ``groups`` (1, depthwise or any
  divisor), ``padding_mode="zeros"``;
* ``nn.Linear`` on ``(N, features)``;
* ``nn.BatchNorm1d/2d`` with running statistics: **folded** into the preceding
  Conv/Linear when ``fold_bn`` and that layer's output feeds only the batch norm
  (``W' = W * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``;
  zeros stay zeros), else kept as a per-channel ``batchnorm`` op;
* max / average pooling 1d/2d (modules and ``F.*``; ``ceil_mode``, padding, dilation
  of max pooling, ``count_include_pad``, ``divisor_override``), adaptive average pooling
  to size 1 (or to a size dividing the input), ``x.mean(spatial dims)``;
* ReLU (module, ``F.relu``, ``torch.relu``, ``.relu()``; in-place only when nothing else
  reads its input later), and, as modules, ``F.*`` / ``torch.*`` functions or tensor
  methods: ReLU6, Hardtanh, LeakyReLU, ELU, Sigmoid, Tanh, Hardsigmoid, Hardswish, SiLU,
  and softmax over one non-batch dimension;
* ``+``, ``-``, ``*`` (operators, ``torch.add/sub/mul``, methods, in place) of two tensors
  of the same rank that broadcast per sample (a squeeze-excitation gate ``x * s`` with
  ``s`` of shape ``(N, C, 1, 1)``), or of a tensor and a number;
* ``flatten`` / ``view`` / ``reshape`` keeping the batch dimension; ``torch.cat`` on a
  non-batch dimension; Dropout (eval: identity), ``nn.Identity``, ``.contiguous()``,
  ``x.size()`` / ``x.shape`` used by a view.

Anything else raises :class:`~mobileprune.errors.UnsupportedModelError` naming the fx
node (and its module type or function).

Weight storage
--------------
Each Conv/Linear weight is stored as the GEMM view ``(rows = out channels/features,
cols = in_channels/groups * kh * kw or in_features)`` in the smaller of

* CSR: ``indptr`` uint32, ``indices`` uint16 (uint32 when ``cols >= 65536``),
  ``values`` in ``value_dtype`` -- ``4 (rows + 1) + nnz (2 + 4)`` bytes for float32;
* dense ``values`` ``(rows, cols)`` -- ``4 rows cols`` bytes,

never both: the runtime builds whichever form its kernel needs at load time (it runs a
layer dense when its density is high, see :mod:`mobileprune.runtime.model`, and then
the file stores it dense anyway because CSR is only smaller below ~2/3 density).
Biases (and batch-norm scale/shift) are float32. ``value_dtype="float16"`` halves the
value bytes; values are converted to float32 at load (weights that underflow to zero in
float16 are dropped).

:func:`size_report` lists, per layer, the bytes of the dense float32 weights (+ bias)
and the bytes actually stored (indices counted), and the totals.
"""

from __future__ import annotations

import copy
import math
import operator
import os
import tempfile
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from mobileprune.errors import UnsupportedModelError
from mobileprune.runtime import format3
from mobileprune.runtime.model import MAGIC, read_container, write_bytes

__all__ = ["export_sparse", "size_report", "format_size_report"]

_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_LEAF_TYPES = set(_CONV) | set(_BN) | set(_MAXPOOL) | set(_AVGPOOL) | set(_ADAPTIVE) | {
    nn.Linear, nn.ReLU, nn.Flatten}
_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}
# elementwise binary ops: function -> (runtime op, in place)
_BINARY_FUNCS = {operator.add: ("add", False), torch.add: ("add", False),
                 operator.iadd: ("add", True), operator.sub: ("sub", False),
                 torch.sub: ("sub", False), operator.isub: ("sub", True),
                 operator.mul: ("mul", False), torch.mul: ("mul", False),
                 operator.imul: ("mul", True)}
_BINARY_METHODS = {"add": ("add", False), "__add__": ("add", False), "__radd__": ("add", False),
                   "add_": ("add", True), "__iadd__": ("add", True),
                   "sub": ("sub", False), "__sub__": ("sub", False), "sub_": ("sub", True),
                   "__isub__": ("sub", True), "__rsub__": ("rsub", False),
                   "mul": ("mul", False), "__mul__": ("mul", False), "__rmul__": ("mul", False),
                   "mul_": ("mul", True), "__imul__": ("mul", True)}
_CAT_FUNCS = {torch.cat, getattr(torch, "concat", torch.cat), getattr(torch, "concatenate", torch.cat)}
_FLATTEN_FUNCS = {torch.flatten}
_MAXPOOL_FUNCS = {F.max_pool1d: 1, F.max_pool2d: 2}
_AVGPOOL_FUNCS = {F.avg_pool1d: 1, F.avg_pool2d: 2}
_ADAPTIVE_FUNCS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout}
_MEAN_FUNCS = {torch.mean}
# activations other than ReLU. Modules: type -> (runtime fn, the module attributes it
# takes); functions: -> (runtime fn, argument names, defaults). ReLU6 and Hardtanh are
# both the runtime's hardtanh.
_ACT_MODULES = {
    nn.ReLU6: ("hardtanh", ("min_val", "max_val")), nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
    nn.LeakyReLU: ("leaky_relu", ("negative_slope",)), nn.ELU: ("elu", ("alpha",)),
    nn.Sigmoid: ("sigmoid", ()), nn.Tanh: ("tanh", ()), nn.Hardsigmoid: ("hardsigmoid", ()),
    nn.Hardswish: ("hardswish", ()), nn.SiLU: ("silu", ()), nn.Softmax: ("softmax", ("dim",)),
}
_ACT_FUNCS = {
    F.relu6: ("hardtanh", ("input", "inplace"), {"inplace": False}),
    F.hardtanh: ("hardtanh", ("input", "min_val", "max_val", "inplace"),
                 {"min_val": -1.0, "max_val": 1.0, "inplace": False}),
    F.leaky_relu: ("leaky_relu", ("input", "negative_slope", "inplace"),
                   {"negative_slope": 0.01, "inplace": False}),
    F.elu: ("elu", ("input", "alpha", "inplace"), {"alpha": 1.0, "inplace": False}),
    torch.sigmoid: ("sigmoid", ("input",), {}), F.sigmoid: ("sigmoid", ("input",), {}),
    torch.tanh: ("tanh", ("input",), {}), F.tanh: ("tanh", ("input",), {}),
    F.hardsigmoid: ("hardsigmoid", ("input", "inplace"), {"inplace": False}),
    F.hardswish: ("hardswish", ("input", "inplace"), {"inplace": False}),
    F.silu: ("silu", ("input", "inplace"), {"inplace": False}),
    F.softmax: ("softmax", ("input", "dim", "_stacklevel", "dtype"),
                {"dim": None, "_stacklevel": 3, "dtype": None}),
    torch.softmax: ("softmax", ("input", "dim", "dtype"), {"dtype": None}),
}
_ACT_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh", "softmax": "softmax",
                "sigmoid_": "sigmoid", "tanh_": "tanh"}


def _tuple(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1 and n > 1:
            v = list(v) * n
        if len(v) != n:
            raise ValueError(f"expected {n} values, got {v!r}")
        return [int(t) for t in v]
    return [int(v)] * n


def _bind(args: tuple, kwargs: dict, names: Sequence[str], defaults: dict) -> dict:
    out = dict(defaults)
    if len(args) > len(names):
        raise TypeError("too many arguments")
    for n, a in zip(names, args):
        out[n] = a
    for k, v in kwargs.items():
        if k not in names:
            raise TypeError(f"unexpected argument {k!r}")
        out[k] = v
    missing = [n for n in names if n not in out]
    if missing:
        raise TypeError(f"missing arguments {missing}")
    return out


def _describe(node: fx.Node, modules: dict) -> str:
    if node.op == "call_module":
        return f"node {node.name!r} (module {node.target!r}: {type(modules.get(node.target)).__name__})"
    if node.op == "call_function":
        t = getattr(node.target, "__name__", repr(node.target))
        mod = getattr(node.target, "__module__", "") or ""
        return f"node {node.name!r} (function {mod + '.' if mod else ''}{t})"
    if node.op == "call_method":
        return f"node {node.name!r} (method .{node.target}())"
    return f"node {node.name!r} ({node.op} {node.target!r})"


class _Exporter:
    def __init__(self, gm: fx.GraphModule, batch: int, fold_bn: bool) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.batch = batch
        self.fold_bn = fold_bn
        self.nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self.value: dict[fx.Node, str] = {}  # tensor node -> runtime value name
        self.meta: set[fx.Node] = set()  # non-tensor nodes (sizes) usable by views only
        self.ops: list[dict] = []
        self.op_of: dict[str, dict] = {}  # value name -> producing op
        self.node_of_value: dict[str, fx.Node] = {}
        self.weights: dict[str, dict] = {}  # op name -> {"w": float64 (rows, cols), "b": ...}
        self.bn_arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.inputs: list[dict] = []
        self.outputs: list[str] = []

    # ---- helpers
    def fail(self, node: fx.Node, why: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"export_sparse: {_describe(node, self.modules)} is not supported by the sparse "
            f"runtime: {why}")

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        tm = node.meta.get("tensor_meta")
        if tm is None or not hasattr(tm, "shape"):
            raise self.fail(node, "its output is not a single tensor")
        s = tuple(int(d) for d in tm.shape)
        if len(s) < 1 or s[0] != self.batch:
            raise self.fail(node, f"output shape {s} does not keep the batch dimension "
                                  f"({self.batch}) first")
        return s

    def val(self, node: fx.Node, arg: Any) -> str:
        if not isinstance(arg, fx.Node) or arg not in self.value:
            raise self.fail(node, f"argument {arg!r} is not a tensor produced by a supported op")
        return self.value[arg]

    def single_input(self, node: fx.Node) -> fx.Node:
        if len(node.args) < 1 or not isinstance(node.args[0], fx.Node):
            raise self.fail(node, "expects one tensor input")
        return node.args[0]

    def no_tensor_args(self, node: fx.Node, objs: Any) -> None:
        found: list[fx.Node] = []
        fx.node.map_arg(objs, lambda n: found.append(n) or n)
        if found:
            raise self.fail(node, f"tensor-valued argument(s) {[n.name for n in found]} "
                                  f"(only constants are supported here)")

    def check_inplace(self, node: fx.Node, inp: fx.Node) -> None:
        later = [u for u in inp.users if u is not node and self.order[u] > self.order[node]]
        if later:
            raise self.fail(node, f"in-place op on {inp.name!r}, which is read again later by "
                                  f"{[u.name for u in later]}")

    def emit(self, node: fx.Node, kind: str, inputs: list[str], attrs: dict | None = None,
             shape: tuple[int, ...] | None = None, **extra) -> dict:
        s = self.shape(node) if shape is None else shape
        op = {"name": node.name, "op": kind, "inputs": inputs, "shape": list(s[1:]),
              "attrs": attrs or {}}
        op.update(extra)
        self.ops.append(op)
        self.value[node] = node.name
        self.op_of[node.name] = op
        self.node_of_value[node.name] = node
        return op

    def alias(self, node: fx.Node, inp: fx.Node) -> None:
        self.value[node] = self.val(node, inp)

    # ---- main loop
    def run(self) -> None:
        for node in self.nodes:
            if node.op == "placeholder":
                s = self.shape(node)
                self.inputs.append({"name": node.name, "shape": list(s[1:])})
                self.value[node] = node.name
            elif node.op == "get_attr":
                raise self.fail(node, "graph constants / parameters used outside a layer")
            elif node.op == "call_module":
                self.module(node)
            elif node.op == "call_function":
                self.function(node)
            elif node.op == "call_method":
                self.method(node)
            elif node.op == "output":
                res = node.args[0]
                items = list(res) if isinstance(res, (tuple, list)) else [res]
                if not items:
                    raise self.fail(node, "the model has no output")
                self.outputs = [self.val(node, r) for r in items]
            else:  # pragma: no cover
                raise self.fail(node, "unknown node kind")
        if not self.inputs:
            raise UnsupportedModelError("export_sparse: the traced graph has no input")

    # ---- call_module
    def module(self, node: fx.Node) -> None:
        m = self.modules.get(node.target)
        t = type(m)
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            raise self.fail(node, "module called with other than one tensor argument")
        inp = node.args[0]
        if t in _CONV:
            return self.conv(node, m, inp)
        if t is nn.Linear:
            return self.linear(node, m, inp)
        if t in _BN:
            return self.batchnorm(node, m, inp)
        if t is nn.ReLU:
            if m.inplace:
                self.check_inplace(node, inp)
            self.emit(node, "relu", [self.val(node, inp)])
            return
        if t in _MAXPOOL:
            if m.return_indices:
                raise self.fail(node, "return_indices=True")
            nd = 1 if t is nn.MaxPool1d else 2
            return self.pool(node, inp, "max", nd, m.kernel_size, m.stride, m.padding,
                             m.dilation, m.ceil_mode)
        if t in _AVGPOOL:
            nd = 1 if t is nn.AvgPool1d else 2
            return self.pool(node, inp, "avg", nd, m.kernel_size, m.stride, m.padding, 1,
                             m.ceil_mode, m.count_include_pad,
                             getattr(m, "divisor_override", None))
        if t in _ADAPTIVE:
            return self.adaptive(node, inp, 1 if t is nn.AdaptiveAvgPool1d else 2, m.output_size)
        if t is nn.Flatten:
            return self.flatten(node, inp, m.start_dim, m.end_dim)
        if t in _IDENTITY_MODULES:
            self.alias(node, inp)
            return
        if t in _ACT_MODULES:
            fn, names = _ACT_MODULES[t]
            return self.activation(node, inp, fn, {k: getattr(m, k) for k in names},
                                   getattr(m, "inplace", False))
        raise self.fail(node, "unsupported layer type")

    def conv(self, node: fx.Node, m: nn.Module, inp: fx.Node) -> None:
        nd = 1 if isinstance(m, nn.Conv1d) else 2
        if m.padding_mode != "zeros":
            raise self.fail(node, f"padding_mode={m.padding_mode!r} (only 'zeros')")
        k = _tuple(m.kernel_size, nd)
        st = _tuple(m.stride, nd)
        dl = _tuple(m.dilation, nd)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                pads = [[0, 0] for _ in range(nd)]
            else:  # "same": torch puts the odd extra zero at the end
                pads = []
                for kk, dd in zip(k, dl):
                    total = dd * (kk - 1)
                    pads.append([total // 2, total - total // 2])
        else:
            pads = [[p, p] for p in _tuple(m.padding, nd)]
        w = m.weight.detach().to(torch.float64).reshape(m.out_channels, -1).clone()
        b = m.bias.detach().to(torch.float64).clone() if m.bias is not None else None
        attrs = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel": k,
                 "stride": st, "padding": pads, "dilation": dl, "groups": m.groups}
        self.emit(node, f"conv{nd}d", [self.val(node, inp)], attrs, module=node.target)
        self.weights[node.name] = {"w": w, "b": b}

    def linear(self, node: fx.Node, m: nn.Linear, inp: fx.Node) -> None:
        s = self.shape(inp)
        if len(s) != 2:
            raise self.fail(node, f"Linear on a {len(s)}-D input {s} (only (N, features))")
        w = m.weight.detach().to(torch.float64).clone()
        b = m.bias.detach().to(torch.float64).clone() if m.bias is not None else None
        self.emit(node, "linear", [self.val(node, inp)],
                  {"in_features": m.in_features, "out_features": m.out_features},
                  module=node.target)
        self.weights[node.name] = {"w": w, "b": b}

    def batchnorm(self, node: fx.Node, m: nn.Module, inp: fx.Node) -> None:
        if m.running_mean is None or m.running_var is None:
            raise self.fail(node, "BatchNorm without running statistics (track_running_stats=False)")
        mean = m.running_mean.detach().to(torch.float64)
        var = m.running_var.detach().to(torch.float64)
        scale = 1.0 / torch.sqrt(var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach().to(torch.float64)
        shift = -mean * scale
        if m.bias is not None:
            shift = shift + m.bias.detach().to(torch.float64)
        src = self.val(node, inp)
        prod = self.op_of.get(src)
        prod_node = self.node_of_value.get(src)
        if (self.fold_bn and prod is not None and prod["op"] in ("conv1d", "conv2d", "linear")
                and prod_node is inp and len(inp.users) == 1 and src not in self.outputs
                and prod["shape"][0] == scale.numel()):
            wb = self.weights[src]
            wb["w"] = wb["w"] * scale[:, None]
            b = wb["b"] if wb["b"] is not None else torch.zeros_like(scale)
            wb["b"] = b * scale + shift
            self.value[node] = src
            return
        s = self.shape(node)
        if len(s) < 2 or s[1] != scale.numel():
            raise self.fail(node, f"BatchNorm over {scale.numel()} channels on input {s}")
        op = self.emit(node, "batchnorm", [src], {}, scale=f"{node.name}.scale",
                       shift=f"{node.name}.shift", module=node.target)
        self.bn_arrays[node.name] = (scale.to(torch.float32).numpy(), shift.to(torch.float32).numpy())
        del op

    def pool(self, node, inp, kind, nd, kernel, stride, padding, dilation, ceil_mode,
             count_include_pad=True, divisor_override=None) -> None:
        s = self.shape(inp)
        if len(s) != nd + 2:
            raise self.fail(node, f"{nd}-D pooling on input {s} (needs (N, C, spatial))")
        k = _tuple(kernel, nd)
        st = _tuple(stride if stride not in (None, [], ()) else kernel, nd)
        attrs = {"kernel": k, "stride": st, "padding": _tuple(padding, nd),
                 "ceil_mode": bool(ceil_mode)}
        if kind == "max":
            attrs["dilation"] = _tuple(dilation, nd)
        else:
            attrs["count_include_pad"] = bool(count_include_pad)
            attrs["divisor_override"] = int(divisor_override) if divisor_override else None
        self.emit(node, f"{kind}pool{nd}d", [self.val(node, inp)], attrs)

    def adaptive(self, node, inp, nd, output_size) -> None:
        s = self.shape(inp)
        if len(s) != nd + 2:
            raise self.fail(node, f"adaptive {nd}-D pooling on input {s}")
        outs = output_size if isinstance(output_size, (tuple, list)) else [output_size] * nd
        outs = [s[2 + i] if o is None else int(o) for i, o in enumerate(outs)]
        if all(o == 1 for o in outs):
            self.emit(node, "global_avgpool", [self.val(node, inp)], {"keepdim": True})
            return
        if all(L % o == 0 for L, o in zip(s[2:], outs)):
            k = [L // o for L, o in zip(s[2:], outs)]
            attrs = {"kernel": k, "stride": k, "padding": [0] * nd, "ceil_mode": False,
                     "count_include_pad": True, "divisor_override": None}
            self.emit(node, f"avgpool{nd}d", [self.val(node, inp)], attrs)
            return
        raise self.fail(node, f"adaptive average pooling {s[2:]} -> {outs} (only to 1 or to a "
                              f"size dividing the input)")

    def flatten(self, node, inp, start, end) -> None:
        s = self.shape(inp)
        nd = len(s)
        if not isinstance(start, int) or not isinstance(end, int):
            raise self.fail(node, "non-constant flatten dims")
        if nd == 0 or start % nd == 0:
            raise self.fail(node, "flatten merges the batch dimension")
        self.emit(node, "reshape", [self.val(node, inp)])

    def reshape(self, node, inp) -> None:
        si, so = self.shape(inp), self.shape(node)
        if math.prod(si[1:]) != math.prod(so[1:]):
            raise self.fail(node, f"view {si} -> {so} changes the per-sample size")
        found: list[fx.Node] = []
        fx.node.map_arg((node.args[1:], node.kwargs), lambda n: found.append(n) or n)
        bad = [n.name for n in found if n not in self.meta]
        if bad:
            raise self.fail(node, f"shape argument(s) {bad} computed from tensors")
        self.emit(node, "reshape", [self.val(node, inp)])

    def binary(self, node, kind: str, a, b, alpha=1, inplace: bool = False) -> None:
        """``a + b``, ``a - b``, ``a * b`` (``kind`` add / sub / mul; ``rsub``: ``b - a``):
        two tensors of the same rank that broadcast per sample (e.g. ``(C, H, W)`` times
        ``(C, 1, 1)``, a squeeze-excitation gate), or a tensor and a number."""
        if alpha != 1:
            raise self.fail(node, f"{kind} with alpha={alpha!r}")
        if kind == "rsub":
            kind, a, b = "sub", b, a
        if inplace:
            self.check_inplace(node, a)
        tensors = [t for t in (a, b) if isinstance(t, fx.Node)]
        if not tensors:
            raise self.fail(node, f"{kind} of two constants")
        for t in (a, b):
            if not isinstance(t, fx.Node) and (isinstance(t, bool)
                                               or not isinstance(t, (int, float))
                                               or not math.isfinite(t)):
                raise self.fail(node, f"{kind} with the constant {t!r} (only finite numbers)")
        if len(tensors) == 1:
            scalar = b if isinstance(a, fx.Node) else a
            self.emit(node, kind, [self.val(node, tensors[0])],
                      {"scalar": float(scalar), "scalar_first": not isinstance(a, fx.Node)})
            return
        sa, sb = self.shape(a), self.shape(b)
        try:
            ok = len(sa) == len(sb) and tuple(torch.broadcast_shapes(sa, sb)) == self.shape(node)
        except RuntimeError:
            ok = False
        if not ok:
            raise self.fail(node, f"{kind} of shapes {sa} and {sb} (they must have the same "
                                  f"rank and broadcast)")
        self.emit(node, kind, [self.val(node, a), self.val(node, b)])

    def cat(self, node, tensors, dim) -> None:
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise self.fail(node, "cat of a non-list")
        nd = len(self.shape(tensors[0]))
        if not isinstance(dim, int) or not -nd <= dim < nd or dim % nd == 0:
            raise self.fail(node, f"cat along dim {dim!r} (must be a non-batch dimension)")
        self.emit(node, "concat", [self.val(node, t) for t in tensors], {"axis": dim % nd - 1})

    def activation(self, node, inp, fn: str, params: dict, inplace: bool = False) -> None:
        """An elementwise activation (or softmax over one non-batch dimension)."""
        if not isinstance(inp, fx.Node):
            raise self.fail(node, "activation of a non-tensor")
        if inplace:
            self.check_inplace(node, inp)
        self.no_tensor_args(node, list(params.values()))
        attrs = {"fn": fn}
        if fn == "softmax":
            nd = len(self.shape(inp))
            dim = params.get("dim")
            if not isinstance(dim, int) or not -nd <= dim < nd or dim % nd == 0:
                raise self.fail(node, f"softmax over dim {dim!r} (must be one non-batch "
                                      f"dimension, given explicitly)")
            attrs["axis"] = dim % nd - 1
        else:
            attrs.update({k: float(v) for k, v in params.items()})
        self.emit(node, "activation", [self.val(node, inp)], attrs)

    def mean(self, node, inp, dim, keepdim) -> None:
        s = self.shape(inp)
        nd = len(s)
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        try:
            dims = sorted({int(d) % nd for d in dims})
        except (TypeError, ValueError):
            raise self.fail(node, f"mean over {dim!r}") from None
        if nd < 3 or dims != list(range(2, nd)):
            raise self.fail(node, f"mean over dims {dim!r} of {s} (only all spatial dims)")
        self.emit(node, "global_avgpool", [self.val(node, inp)], {"keepdim": bool(keepdim)})

    # ---- call_function / call_method
    def function(self, node: fx.Node) -> None:
        f, args, kw = node.target, node.args, node.kwargs
        if f is getattr:
            if len(args) == 2 and isinstance(args[0], fx.Node) and args[1] == "shape":
                self.meta.add(node)
                return
            raise self.fail(node, f"attribute access {args[1:]!r}")
        if f is operator.getitem and args and isinstance(args[0], fx.Node) and args[0] in self.meta:
            self.meta.add(node)
            return
        if f in _RELU_FUNCS:
            b = _bind(args, kw, ("input", "inplace"), {"inplace": f in (torch.relu_, F.relu_)})
            inp = b["input"]
            if b["inplace"] or f in (torch.relu_, F.relu_):
                self.check_inplace(node, inp)
            self.emit(node, "relu", [self.val(node, inp)])
            return
        if f in _ACT_FUNCS:
            fn, names, defaults = _ACT_FUNCS[f]
            b = _bind(args, kw, names, defaults)
            if b.get("dtype") is not None:
                raise self.fail(node, "softmax with a dtype")
            if fn == "hardtanh" and f is F.relu6:
                b.update(min_val=0.0, max_val=6.0)
            params = {k: v for k, v in b.items()
                      if k in ("min_val", "max_val", "negative_slope", "alpha", "dim")}
            return self.activation(node, b["input"], fn, params, b.get("inplace", False))
        if f in _BINARY_FUNCS:
            kind, inplace = _BINARY_FUNCS[f]
            b = _bind(args, kw, ("input", "other", "alpha"), {"alpha": 1})
            return self.binary(node, kind, b["input"], b["other"], b["alpha"], inplace)
        if f in _CAT_FUNCS:
            b = _bind(args, kw, ("tensors", "dim"), {"dim": 0})
            return self.cat(node, b["tensors"], b["dim"])
        if f in _FLATTEN_FUNCS:
            b = _bind(args, kw, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            return self.flatten(node, b["input"], b["start_dim"], b["end_dim"])
        if f in _MAXPOOL_FUNCS:
            b = _bind(args, kw, ("input", "kernel_size", "stride", "padding", "dilation",
                                 "ceil_mode", "return_indices"),
                      {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                       "return_indices": False})
            self.no_tensor_args(node, [v for k, v in b.items() if k != "input"])
            if b["return_indices"]:
                raise self.fail(node, "return_indices=True")
            return self.pool(node, b["input"], "max", _MAXPOOL_FUNCS[f], b["kernel_size"],
                             b["stride"], b["padding"], b["dilation"], b["ceil_mode"])
        if f in _AVGPOOL_FUNCS:
            names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                     "divisor_override")
            if _AVGPOOL_FUNCS[f] == 1:
                names = names[:-1]
            b = _bind(args, kw, names, {"stride": None, "padding": 0, "ceil_mode": False,
                                        "count_include_pad": True, "divisor_override": None})
            self.no_tensor_args(node, [v for k, v in b.items() if k != "input"])
            return self.pool(node, b["input"], "avg", _AVGPOOL_FUNCS[f], b["kernel_size"],
                             b["stride"], b["padding"], 1, b["ceil_mode"], b["count_include_pad"],
                             b["divisor_override"])
        if f in _ADAPTIVE_FUNCS:
            b = _bind(args, kw, ("input", "output_size"), {})
            return self.adaptive(node, b["input"], _ADAPTIVE_FUNCS[f], b["output_size"])
        if f in _DROPOUT_FUNCS:
            b = _bind(args, kw, ("input", "p", "training", "inplace"),
                      {"p": 0.5, "training": True, "inplace": False})
            if b["training"] is not False:
                raise self.fail(node, "dropout with training=True in the traced graph")
            self.alias(node, b["input"])
            return
        if f in _MEAN_FUNCS:
            b = _bind(args, kw, ("input", "dim", "keepdim", "dtype"), {"dim": None, "keepdim": False,
                                                                      "dtype": None})
            if b["dim"] is None or b["dtype"] is not None:
                raise self.fail(node, "mean over all dimensions / with a dtype")
            return self.mean(node, b["input"], b["dim"], b["keepdim"])
        raise self.fail(node, "unsupported function")

    def method(self, node: fx.Node) -> None:
        name, args, kw = node.target, node.args, node.kwargs
        if not args or not isinstance(args[0], fx.Node):
            raise self.fail(node, "method on a non-tensor")
        x = args[0]
        if name in ("size", "dim"):
            self.meta.add(node)
            return
        if x in self.meta:
            raise self.fail(node, "computation on tensor sizes")
        if name in ("relu", "relu_"):
            if name == "relu_":
                self.check_inplace(node, x)
            self.emit(node, "relu", [self.val(node, x)])
            return
        if name in _ACT_METHODS:
            params = {}
            if name == "softmax":
                b = _bind(args[1:], kw, ("dim", "dtype"), {"dtype": None})
                if b["dtype"] is not None:
                    raise self.fail(node, "softmax with a dtype")
                params = {"dim": b["dim"]}
            return self.activation(node, x, _ACT_METHODS[name], params, name.endswith("_"))
        if name in _BINARY_METHODS:
            kind, inplace = _BINARY_METHODS[name]
            b = _bind(args[1:], kw, ("other", "alpha"), {"alpha": 1})
            return self.binary(node, kind, x, b["other"], b["alpha"], inplace)
        if name == "flatten":
            b = _bind(args[1:], kw, ("start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            return self.flatten(node, x, b["start_dim"], b["end_dim"])
        if name in ("view", "reshape"):
            return self.reshape(node, x)
        if name == "contiguous":
            self.alias(node, x)
            return
        if name == "mean":
            b = _bind(args[1:], kw, ("dim", "keepdim", "dtype"), {"dim": None, "keepdim": False,
                                                                 "dtype": None})
            if b["dim"] is None or b["dtype"] is not None:
                raise self.fail(node, "mean over all dimensions / with a dtype")
            return self.mean(node, x, b["dim"], b["keepdim"])
        raise self.fail(node, "unsupported tensor method")


def _weight_arrays(name: str, w: np.ndarray, value_dtype: np.dtype, storage: str):
    """Return (weight record, arrays) for a (rows, cols) float64 weight."""
    rows, cols = w.shape
    wv = w.astype(value_dtype)
    nz = wv != 0
    nnz = int(nz.sum())
    isz = np.dtype(value_dtype).itemsize
    idx_dtype = np.uint16 if cols < 65536 else np.uint32
    csr_bytes = 4 * (rows + 1) + nnz * (np.dtype(idx_dtype).itemsize + isz)
    dense_bytes = rows * cols * isz
    if storage == "auto":
        storage = "csr" if csr_bytes < dense_bytes else "dense"
    if storage == "csr":
        r, c = np.nonzero(nz)
        indptr = np.zeros(rows + 1, np.uint32)
        np.cumsum(np.bincount(r, minlength=rows), out=indptr[1:])
        arrays = {f"{name}.indptr": indptr, f"{name}.indices": c.astype(idx_dtype),
                  f"{name}.values": wv[r, c]}
        rec = {"rows": rows, "cols": cols, "nnz": nnz, "storage": "csr",
               "arrays": {"indptr": f"{name}.indptr", "indices": f"{name}.indices",
                          "values": f"{name}.values"}}
    elif storage == "dense":
        wv = np.where(nz, wv, np.zeros((), value_dtype))  # no -0.0 / denormal surprises
        arrays = {f"{name}.values": np.ascontiguousarray(wv)}
        rec = {"rows": rows, "cols": cols, "nnz": nnz, "storage": "dense",
               "arrays": {"values": f"{name}.values"}}
    else:
        raise ValueError(f"storage must be 'auto', 'csr' or 'dense', got {storage!r}")
    return rec, arrays


def _example_tuple(example_input: Any) -> tuple[torch.Tensor, ...]:
    """``example_input`` (a tensor, or a tuple/list of tensors) as a tuple, checked."""
    xs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not xs or not all(isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] >= 1
                         for x in xs):
        raise ValueError("example_input must be one tensor (N, ...) with N >= 1, or a "
                         "non-empty tuple/list of such tensors (one per forward argument)")
    if any(x.shape[0] != xs[0].shape[0] for x in xs):
        raise ValueError(f"example_input tensors have different batch sizes "
                         f"{[int(x.shape[0]) for x in xs]}")
    return xs


def _dedupe_arrays(ops: list[dict], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store byte-identical arrays once: the ops that named a duplicate are pointed at the
    first copy (a module called twice, e.g. one tower for both eyes, keeps one copy of its
    weights). Returns the arrays to write."""
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        key = (a.dtype.str, a.shape, a.tobytes())
        rename[name] = first.setdefault(key, name)
    for op in ops:
        w = op.get("weight")
        if w is not None:
            w["arrays"] = {k: rename[v] for k, v in w["arrays"].items()}
        for k in ("bias", "scale", "shift"):
            if op.get(k) is not None:
                op[k] = rename[op[k]]
    return {n: a for n, a in arrays.items() if rename[n] == n}


def export_sparse(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, *,
                  value_dtype: str = "float32", fold_bn: bool = True,
                  storage: str = "auto", architecture: str | None = None) -> dict:
    """Write ``model`` as a sparse model file for :mod:`mobileprune.runtime`.

    Args:
        model: the (pruned) network; it is copied, set to eval mode and float32 on CPU
            for the export (the caller's model is not modified).
        example_input: one tensor ``(N, ...)`` the model accepts (any N >= 1; only the
            per-sample shape is recorded, the runtime accepts any batch size), or a
            tuple/list of tensors, one per ``forward`` argument, with the same N.
        path: destination file (written atomically: temp file + ``os.replace``).
        value_dtype: ``"float32"`` or ``"float16"`` for the stored weight values.
        fold_bn: fold eval-mode BatchNorms into the preceding Conv/Linear.
        storage: ``"auto"`` (smaller of CSR and dense per layer), ``"csr"`` or
            ``"dense"`` (for all layers).
        architecture: name recorded in the file; default the model's class name.

    Returns:
        :func:`size_report` of the written file.

    Raises:
        UnsupportedModelError: the model cannot be traced or contains an op the runtime
            does not support (the message names the fx node).
        ValueError: bad ``value_dtype`` / ``storage`` / ``example_input``.
    """
    if value_dtype not in ("float32", "float16"):
        raise ValueError(f"value_dtype must be 'float32' or 'float16', got {value_dtype!r}")
    if storage not in ("auto", "csr", "dense"):
        raise ValueError(f"storage must be 'auto', 'csr' or 'dense', got {storage!r}")
    xs = _example_tuple(example_input)
    arch = architecture or type(model).__name__
    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    if type(m) in _LEAF_TYPES:  # a bare layer: fx would trace into its F.* call
        m = nn.Sequential(m).eval()
    try:
        gm = fx.symbolic_trace(m)
    except Exception as e:
        raise UnsupportedModelError(
            f"export_sparse: {arch} cannot be traced by torch.fx ({type(e).__name__}: {e})") from e
    xs = tuple(x.detach().to(device="cpu", dtype=torch.float32) for x in xs)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*xs)
    except Exception as e:
        shapes = ", ".join(str(tuple(x.shape)) for x in xs)
        raise UnsupportedModelError(
            f"export_sparse: example_input {shapes} does not run through the traced "
            f"{arch} ({type(e).__name__}: {e})") from e
    ex = _Exporter(gm, int(xs[0].shape[0]), fold_bn)
    ex.run()

    vdt = np.dtype(np.float32 if value_dtype == "float32" else np.float16)
    arrays: dict[str, np.ndarray] = {}
    for op in ex.ops:
        if op["op"] in ("conv1d", "conv2d", "linear"):
            wb = ex.weights[op["name"]]
            w = wb["w"].numpy()
            rec, arrs = _weight_arrays(op["name"], w, vdt, storage)
            op["weight"] = rec
            arrays.update(arrs)
            if wb["b"] is not None:
                arrays[f"{op['name']}.bias"] = wb["b"].numpy().astype(np.float32)
                op["bias"] = f"{op['name']}.bias"
            else:
                op["bias"] = None
        elif op["op"] == "batchnorm":
            sc, sf = ex.bn_arrays[op["name"]]
            arrays[op["scale"]] = sc.astype(np.float32)
            arrays[op["shift"]] = sf.astype(np.float32)
    try:
        from mobileprune import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    header = {"magic": MAGIC, "inputs": ex.inputs, "producer": f"mobileprune {version}",
              "architecture": arch, "value_dtype": value_dtype, "fold_bn": bool(fold_bn),
              "outputs": ex.outputs, "ops": ex.ops}
    # the graph described as in format versions 1 / 2, written as version 3 (the native
    # engine's format; shapes and attributes are checked by its loader when it is read)
    write_bytes(path, format3.encode(header, _dedupe_arrays(ex.ops, arrays)))
    return size_report(path)


# ---------------------------------------------------------------------------------------
# size report

def size_report(source: str | os.PathLike | nn.Module, example_input: torch.Tensor | None = None,
                **export_kwargs: Any) -> dict:
    """Bytes per layer: dense float32 weights vs what the sparse file stores.

    ``source`` is a sparse model file, or a model (then ``example_input`` is required and
    the model is exported to a temporary file with ``export_kwargs``).

    Returns a dict with ``"layers"`` (one entry per Conv/Linear/BatchNorm op: ``name``,
    ``op``, ``rows``, ``cols``, ``nnz``, ``density``, ``storage``,
    ``dense_float32_bytes`` = 4 x (weights + bias entries), ``stored_bytes`` = bytes of
    all its arrays, split in ``index_bytes`` (indptr + indices), ``value_bytes``,
    ``bias_bytes``; a layer applied several times, whose arrays the file stores once,
    is listed once), ``"totals"`` (sums, ``"compression"`` = dense / stored), and
    ``"file_bytes"`` / ``"header_bytes"`` (the real file size, and what is not array
    data: prefix, JSON and alignment padding).
    """
    if isinstance(source, nn.Module):
        if example_input is None:
            raise ValueError("size_report(model) needs example_input")
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "model.mpsparse")
            export_sparse(source, example_input, p, **export_kwargs)
            rep = size_report(p)
            rep["path"] = None
            return rep
    header, arrays = read_container(source)
    nb = {k: int(v.nbytes) for k, v in arrays.items()}
    layers = []
    seen: set[str] = set()  # weight arrays counted (a layer applied twice is stored once)
    for op in header["ops"]:
        if op["op"] in ("conv1d", "conv2d", "linear"):
            w = op["weight"]
            a = w["arrays"]
            if a["values"] in seen:
                continue
            seen.add(a["values"])
            rows, cols, nnz = w["rows"], w["cols"], w["nnz"]
            idx_b = nb.get(a.get("indptr"), 0) + nb.get(a.get("indices"), 0)
            val_b = nb[a["values"]]
            bias_b = nb.get(op.get("bias"), 0) if op.get("bias") else 0
            dense = 4 * rows * cols + (4 * rows if op.get("bias") else 0)
            layers.append({"name": op.get("module") or op["name"], "op": op["op"],
                           "rows": rows, "cols": cols,
                           "nnz": nnz, "density": nnz / (rows * cols) if rows * cols else 0.0,
                           "storage": w["storage"], "dense_float32_bytes": dense,
                           "index_bytes": idx_b, "value_bytes": val_b, "bias_bytes": bias_b,
                           "stored_bytes": idx_b + val_b + bias_b})
        elif op["op"] == "batchnorm":
            b = nb[op["scale"]] + nb[op["shift"]]
            c = b // 8
            layers.append({"name": op.get("module") or op["name"], "op": "batchnorm",
                           "rows": c, "cols": 1,
                           "nnz": c, "density": 1.0, "storage": "dense",
                           "dense_float32_bytes": b, "index_bytes": 0, "value_bytes": b,
                           "bias_bytes": 0, "stored_bytes": b})
    keys = ("dense_float32_bytes", "stored_bytes", "index_bytes", "value_bytes", "bias_bytes",
            "nnz")
    totals = {k: sum(l[k] for l in layers) for k in keys}
    totals["weights"] = sum(l["rows"] * l["cols"] for l in layers if l["op"] != "batchnorm")
    totals["compression"] = (totals["dense_float32_bytes"] / totals["stored_bytes"]
                             if totals["stored_bytes"] else float("inf"))
    file_bytes = os.path.getsize(source) if not isinstance(source, (bytes, bytearray)) else len(source)
    data_bytes = sum(nb.values())
    return {"path": None if isinstance(source, (bytes, bytearray)) else os.fspath(source),
            "architecture": header.get("architecture"), "value_dtype": header.get("value_dtype"),
            "layers": layers, "totals": totals, "file_bytes": file_bytes,
            "header_bytes": file_bytes - data_bytes}


def format_size_report(rep: dict) -> str:
    """A text table of :func:`size_report`."""
    lines = [f"{'layer':<22} {'op':<9} {'shape':>12} {'density':>8} {'storage':>7} "
             f"{'dense f32 B':>12} {'stored B':>10} {'ratio':>7}"]
    for l in rep["layers"]:
        ratio = l["dense_float32_bytes"] / l["stored_bytes"] if l["stored_bytes"] else float("inf")
        lines.append(f"{l['name']:<22} {l['op']:<9} {str(l['rows']) + 'x' + str(l['cols']):>12} "
                     f"{l['density']:>8.3f} {l['storage']:>7} {l['dense_float32_bytes']:>12,} "
                     f"{l['stored_bytes']:>10,} {ratio:>6.1f}x")
    t = rep["totals"]
    lines.append(f"{'total':<22} {'':<9} {'':>12} {t['nnz'] / max(t['weights'], 1):>8.3f} {'':>7} "
                 f"{t['dense_float32_bytes']:>12,} {t['stored_bytes']:>10,} "
                 f"{t['compression']:>6.1f}x")
    lines.append(f"file: {rep['file_bytes']:,} bytes ({rep['header_bytes']:,} header/padding)")
    return "\n".join(lines)
