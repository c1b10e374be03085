"""``Lower``: a traced, canonical graph as the runtime's flat list of ops (export_sparse).

:func:`lower` is one loop over the nodes of :func:`mobileprune.graph.trace`'s graph.
Inputs, parameters read by ``get_attr`` and the output are structural and handled here;
every other node goes to its handler (:func:`mobileprune.graph.registry.handler`):
``check(node, emit)`` says why it cannot run, an ``eval_noop`` handler passes its input
through, else ``lower(node, emit)`` writes the runtime op(s) through :class:`Emit`. A node
that cannot run raises :class:`UnsupportedModelError` naming its op key, the node
(:func:`~mobileprune.graph.canonical.describe`), the user's source line
(:func:`~mobileprune.graph.canonical.source_line`) and the reason.

What a node becomes (kept by :class:`Emit`):

* a runtime value (:class:`Ref`: its name, and ``bdim``, the axis of torch's tensor
  where the batch is: the runtime always holds it batch first, so a value with
  ``bdim = 1`` is torch's ``(T, N, ...)`` tensor stored as ``(N, T, ...)``);
* a static Python value known at export: sizes (``x.size()``, ``x.shape[1] // g``),
  numbers, parameters (``get_attr``), ``None``, or a tuple of those and of
  :class:`Ref` (the outputs of ``split``, ``nn.LSTM``, ...).

Ops are dicts in the description :mod:`mobileprune.runtime.format3` encodes
(``docs/native_format.md``); weight matrices and per-channel arrays stay float64 /
numpy in the op (keys ``weight*``, ``bias*``, ``scale``, ``shift``, ``value``) until
:func:`mobileprune.deploy.sparse.export_sparse` stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import fx

from mobileprune.errors import UnsupportedModelError
from mobileprune.graph.canonical import BY_KEY, describe, source_line
from mobileprune.graph.registry import handler
from mobileprune.graph.trace import Traced, defaulted, tensor_meta
from mobileprune.runtime import format3

__all__ = ["Ref", "Missing", "Emit", "Lowered", "lower", "message"]


class Ref(NamedTuple):
    """A runtime value: its name, and the torch axis of the batch (see the module doc)."""

    name: str
    bdim: int = 0


class Missing(NamedTuple):
    """A part of a result the runtime does not compute (an LSTM's final cell state):
    reading it as a tensor fails with ``why``."""

    why: str


@dataclass
class Lowered:
    """The lowered graph: model inputs ``[{"name", "shape"}]``, output value names, ops."""

    inputs: list[dict] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    ops: list[dict] = field(default_factory=list)


def message(node: fx.Node, why: str) -> str:
    """``export_sparse: op 'gelu', node 'x' (module ...): why (source: file.py:3: code)``."""
    line = source_line(node)
    where = f" (source: {line})" if line else ""
    return (f"export_sparse: op {node.meta.get('mp_op', '?')!r}, {describe(node)}: "
            f"{why}{where}")


class Emit:
    """What a handler's ``lower`` reads (its arguments as runtime values, static values
    and shapes) and writes (runtime ops, aliases, static values)."""

    def __init__(self, batch: int, fold_bn: bool, order: dict[fx.Node, int]) -> None:
        self.batch, self.fold_bn, self.order = batch, fold_bn, order
        self.out = Lowered()
        self.refs: dict[fx.Node, Ref] = {}
        self.statics: dict[fx.Node, Any] = {}
        self.producer: dict[str, dict] = {}  # value name -> the op that writes it
        self.shapes: dict[str, list[int]] = {}  # value name -> its per-sample shape
        self.symbolic: set[fx.Node] = set()  # static tuples holding refs (not constants)

    # ---- failures
    def fail(self, node: fx.Node, why: str) -> UnsupportedModelError:
        return UnsupportedModelError(message(node, why))

    # ---- what an argument is
    def is_tensor(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and arg in self.refs

    def is_static(self, arg: Any) -> bool:
        """A constant, or a value computed from sizes and constants only."""
        found: list[fx.Node] = []
        fx.node.map_arg(arg, lambda n: found.append(n) or n)
        return all(n in self.statics for n in found)

    def is_constant(self, arg: Any) -> bool:
        """Static, and no runtime value inside (it can be computed at export)."""
        found: list[fx.Node] = []
        fx.node.map_arg(arg, lambda n: found.append(n) or n)
        return all(n in self.statics and n not in self.symbolic for n in found)

    def static(self, node: fx.Node, arg: Any, what: str = "argument") -> Any:
        """The Python value of ``arg`` (nodes inside lists / tuples replaced)."""
        if not self.is_static(arg):
            raise self.fail(node, f"{what} is computed from tensor values at run time "
                                  f"(only sizes and constants can be)")
        return fx.node.map_aggregate(
            arg, lambda a: self.statics[a] if isinstance(a, fx.Node) else a)

    def ref(self, node: fx.Node, arg: Any) -> Ref:
        if isinstance(self.statics.get(arg) if isinstance(arg, fx.Node) else None, Missing):
            raise self.fail(node, f"{arg.name!r}: {self.statics[arg].why}")
        if not self.is_tensor(arg):
            raise self.fail(node, f"argument {getattr(arg, 'name', arg)!r} is not a tensor "
                                  f"produced by a supported op")
        return self.refs[arg]

    def value(self, node: fx.Node, arg: Any, bdim: int = 0) -> str:
        """The runtime name of tensor ``arg``, which must have its batch on axis ``bdim``."""
        r = self.ref(node, arg)
        if r.bdim != bdim:
            raise self.fail(node, f"input {arg.name!r} has its batch on axis {r.bdim}; this "
                                  f"op needs it on axis {bdim}")
        return r.name

    def shape(self, node: fx.Node, arg: Any = None, any_dtype: bool = False
              ) -> tuple[int, ...]:
        """Torch's full shape of tensor node ``arg`` (default ``node``), float32 unless
        ``any_dtype``."""
        arg = node if arg is None else arg
        tm = tensor_meta(arg)
        if tm is None:
            raise self.fail(node, f"{getattr(arg, 'name', arg)!r} is not a single tensor")
        if str(tm.dtype) != "torch.float32" and not any_dtype:
            raise self.fail(node, f"{arg.name!r} is a {tm.dtype} tensor (the runtime computes "
                                  f"float32 tensors only)")
        return tuple(int(s) for s in tm.shape)

    def sample(self, node: fx.Node, arg: Any = None, bdim: int = 0,
               any_dtype: bool = False) -> list[int]:
        """The per-sample shape of ``arg`` (default ``node``): its shape without axis
        ``bdim``, which must be the batch."""
        s = self.shape(node, arg, any_dtype)
        if len(s) <= bdim or s[bdim] != self.batch:
            raise self.fail(node, f"shape {s} does not keep the batch ({self.batch}) on "
                                  f"axis {bdim}: the sparse runtime holds every tensor with "
                                  f"the batch on an axis of its own, so a reshape that folds "
                                  f"it into another axis cannot run there (write the "
                                  f"reshape with the batch kept apart, or export to ONNX / "
                                  f".pte / .ptl, which run it)")
        return list(s[:bdim] + s[bdim + 1:])

    # ---- writing
    def op(self, node: fx.Node, kind: str, inputs: list[str], attrs: dict | None = None, *,
           shape: list[int] | None = None, name: str | None = None, bdim: int = 0,
           **extra: Any) -> str:
        """Append runtime op ``kind``; its output is bound to ``node`` unless ``name`` is
        given (an intermediate of a several-op lowering, with its per-sample ``shape``)."""
        if kind not in format3.OP_CODES:
            raise self.fail(node, f"the runtime has no {kind!r} op")
        fn = (attrs or {}).get("fn")
        if kind == "activation" and fn not in format3.ACTIVATION_CODES:
            raise self.fail(node, f"the runtime has no {fn!r} activation")
        out = name or node.name
        shp = self.sample(node, bdim=bdim) if shape is None else list(shape)
        if not shp:
            raise self.fail(node, "its result has no axis besides the batch (the runtime "
                                  "holds at least one per sample)")
        op = {"name": out, "op": kind, "inputs": list(inputs), "shape": shp,
              "attrs": attrs or {}, **extra}
        self.out.ops.append(op)
        self.producer[out] = op
        self.shapes[out] = shp
        if name is None:
            self.refs[node] = Ref(out, bdim)
        return out

    def operand(self, node: fx.Node, arg: Any, rank: int, tag: str) -> str:
        """A tensor operand of an op whose output has ``rank`` torch axes: a runtime value
        (batch first), or a static tensor (a parameter) written as a ``constant`` op
        (per-sample value; a leading axis of size 1 is the batch's, fewer axes are aligned
        right as torch broadcasts them)."""
        if self.is_tensor(arg):
            return self.value(node, arg)
        t = self.static(node, arg, "operand")
        if not hasattr(t, "shape") or t.dim() > rank or (t.dim() == rank and t.shape[0] != 1):
            raise self.fail(node, f"operand {getattr(arg, 'name', arg)!r} of shape "
                                  f"{tuple(getattr(t, 'shape', ()))} is not a per-sample constant")
        v = t.detach().double().reshape(-1).numpy()
        shape = [1] * (rank - 1 - min(t.dim(), rank - 1)) + list(t.shape)[-(rank - 1):]
        return self.op(node, "constant", [], shape=[int(s) for s in shape] or [1],
                       name=f"{node.name}.{tag}", value=v)

    def producer_shape(self, ref: Ref) -> list[int]:
        """The per-sample shape the runtime holds for ``ref``."""
        return self.shapes[ref.name]

    def bind(self, node: fx.Node, ref: Ref | str) -> None:
        """``node`` is the runtime value ``ref`` (no op)."""
        self.refs[node] = ref if isinstance(ref, Ref) else Ref(ref)

    def set_static(self, node: fx.Node, value: Any) -> None:
        self.statics[node] = value
        if _holds_ref(value):
            self.symbolic.add(node)

    def check_inplace(self, node: fx.Node, inp: Any) -> None:
        """An in-place op on ``inp`` is only exact when nothing reads ``inp`` after it."""
        if not isinstance(inp, fx.Node):
            return
        later = [u.name for u in inp.users if u is not node and self.order[u] > self.order[node]]
        if later:
            raise self.fail(node, f"in-place op on {inp.name!r}, which is read again later by "
                                  f"{later}")


def _holds_ref(v: Any) -> bool:
    """A :class:`Ref` or :class:`Missing` in (nested tuples / lists of) ``v``."""
    if isinstance(v, (Ref, Missing)):
        return True
    return isinstance(v, (tuple, list)) and any(_holds_ref(x) for x in v)


def _structural(node: fx.Node, emit: Emit) -> bool:
    """Inputs, parameters and the output; True when ``node`` was one."""
    key = node.meta.get("mp_op")
    if key == "input" and defaulted(node) is not node:
        emit.set_static(node, defaulted(node))  # an optional argument left at its default
    elif key == "input":  # its dtype is checked where it is used (named by that op)
        emit.out.inputs.append({"name": node.name, "shape": emit.sample(node, any_dtype=True)})
        emit.shapes[node.name] = emit.out.inputs[-1]["shape"]
        emit.bind(node, node.name)
    elif key == "get_attr":
        gm = node.graph.owning_module
        obj = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        emit.set_static(node, obj.detach() if hasattr(obj, "detach") else obj)
    elif key == "output":
        res = node.args[0]
        items = list(res) if isinstance(res, (tuple, list)) else [res]
        if not items:
            raise emit.fail(node, "the model has no output")
        emit.out.outputs = [emit.value(node, r) for r in items]
    else:
        return False
    return True


def _fold(node: fx.Node, emit: Emit, interp: fx.Interpreter) -> bool:
    """Compute a node whose arguments are all static (constant folding: a parameter
    reshaped, ``torch.arange``, an embedding of constant indices); True when folded."""
    if node.op not in ("call_function", "call_method", "call_module") or not emit.is_constant(
            (node.args, node.kwargs)):
        return False
    args, kwargs = emit.static(node, node.args), emit.static(node, node.kwargs)
    with torch.no_grad():
        emit.set_static(node, getattr(interp, node.op)(node.target, args, kwargs))
    return True


def _noop(node: fx.Node, emit: Emit) -> None:
    """An eval-mode no-op: the node is its first argument (or a static ``None``)."""
    first = node.meta["mp_args"].get(BY_KEY[node.meta["mp_op"]].params[0])
    if emit.is_tensor(first):
        emit.bind(node, emit.refs[first])
    else:
        emit.set_static(node, None if not emit.is_static(first) else emit.static(node, first))


def _drop_dead(out: Lowered) -> None:
    """Remove ops whose value nothing reads (parts of a lowering the model never uses,
    such as an LSTM's final state)."""
    live = set(out.outputs)
    kept = []
    for op in reversed(out.ops):
        if op["name"] in live:
            kept.append(op)
            live.update(op["inputs"])
    out.ops = kept[::-1]


def lower(traced: Traced, fold_bn: bool = True) -> Lowered:
    """The runtime ops of ``traced`` (every input ``(N, ...)`` with the same N)."""
    nodes = list(traced.gm.graph.nodes)
    batch = int(traced.args[0].shape[0])
    emit = Emit(batch, fold_bn, {n: i for i, n in enumerate(nodes)})
    interp = fx.Interpreter(traced.gm)
    for node in nodes:
        if _structural(node, emit) or _fold(node, emit, interp):
            continue
        if node.meta.get("mp_op") == "unknown":
            why = node.meta.get("mp_why", "it is not in the op table")
            raise emit.fail(node, why.replace(f"{describe(node)} is", "it is", 1))
        h = handler(node)
        why = h.check(node, emit)
        if why is not None:
            raise emit.fail(node, why)
        if h.eval_noop:
            _noop(node, emit)
            continue
        try:
            h.lower(node, emit)
        except NotImplementedError:
            raise emit.fail(node, "no runtime lowering for this op") from None
    if not emit.out.inputs:
        raise UnsupportedModelError("export_sparse: the traced graph has no input")
    _drop_dead(emit.out)
    return emit.out


def as_float64(t: Any) -> np.ndarray:
    """A parameter as a float64 numpy copy (the exporter's arithmetic precision)."""
    return t.detach().to("cpu").double().numpy().copy()
