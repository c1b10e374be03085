"""The tracer's fallback: a model torch.fx cannot trace, captured by ``torch.export`` and
turned into the graph the passes read (:func:`mobileprune.graph.trace`).

torch.fx fails on Python control flow over traced values: a branch on a shape
(``if new_h != H:`` in timm's MobileViT block) or on a tensor's device
(``if v.device.type != 'meta':`` in timm's EfficientViT attention). ``torch.export``
(``strict=False``) runs the forward on the example input's shapes, so such branches are
decided once for those shapes; a branch on tensor *values* (``if x.sum() > 0:``) it
refuses, and so does the fallback.

:func:`export_graph` returns an fx :class:`~torch.fx.GraphModule` in the fx tracer's
terms, so one table of spellings and one set of handlers serves both:

* every call of a *leaf* layer (``is_leaf``: :func:`~mobileprune.graph.trace.leaf_module`, Conv,
  BatchNorm, Linear, activations, ...) found by the ``nn_module_stack`` of its ATen nodes
  becomes one ``call_module`` node on the user's own module, when that call has one
  tensor input and one result (else its ATen nodes stay, and are canonicalised one by
  one);
* parameters, buffers and lifted constants become ``get_attr`` nodes on the user's
  module paths (``features.0.bn.weight``);
* the other nodes are ATen ops, spelled in :data:`mobileprune.graph.canonical._ATEN`;
* ``wrap_with_autocast`` (an ``autocast(enabled=False)`` block) and
  ``wrap_with_set_grad_enabled`` bodies are inlined; ``aten._assert_tensor_metadata`` and
  the other checks export adds are dropped.

Shapes are those of the example input: sizes the forward computes become constants
(``reshape(x, [1, 64, 256])``), which the passes read as the fx graph's computed sizes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import fx, nn
from torch.utils import _pytree

__all__ = ["export_graph"]

_HOP = torch.ops.higher_order
#: ATen checks with no result that torch.export inserts (shapes and dtypes are static here)
_DROPPED = {getattr(torch.ops.aten, n).default for n in
            ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size")
            if hasattr(torch.ops.aten, n)}


@dataclass
class _LeafCall:
    """One call of a leaf layer: its module path, its ATen nodes (in order), the tensor
    nodes it reads from outside and the nodes read from outside it."""

    path: str
    nodes: list[fx.Node] = field(default_factory=list)
    inputs: list[fx.Node] = field(default_factory=list)
    results: list[fx.Node] = field(default_factory=list)


def export_graph(work: nn.Module, args: tuple,
                 is_leaf: Callable[[nn.Module], bool]) -> fx.GraphModule:
    """``work`` (eval mode) captured by ``torch.export.export(strict=False)`` on ``args``,
    as an fx graph module over ``work``'s own layers and tensors (module docstring);
    ``is_leaf`` says which layers become ``call_module`` nodes. Raises whatever
    torch.export raises, or ValueError for a graph it cannot map back."""
    with _quiet():
        ep = torch.export.export(work, args, strict=False)
    gm = ep.graph_module
    _inline_bodies(gm)
    kinds = {s.arg.name: s for s in ep.graph_signature.input_specs}
    owned = {n for n, s in kinds.items() if s.target is not None}
    calls = _leaf_calls(gm.graph, _one_in_one_out(work, args, is_leaf), owned)
    graph, attrs = fx.Graph(), {}
    env: dict[fx.Node, Any] = {}
    n_inputs = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = _input(graph, node, kinds[node.name], ep, work, attrs)
            n_inputs += kinds[node.name].kind.name == "USER_INPUT"
        elif node.op == "output":  # the forward's results (not buffer updates)
            flat = [env.get(o, o) if isinstance(o, fx.Node) else o for o, spec in
                    zip(node.args[0], ep.graph_signature.output_specs)
                    if spec.kind.name == "USER_OUTPUT"]
            graph.output(_pytree.tree_unflatten(flat, ep.call_spec.out_spec))
        elif node.target in _DROPPED and not node.users:
            continue
        elif node in calls:
            call = calls[node]
            if node is call.results[0]:
                if any(i not in env for i in call.inputs):
                    raise ValueError(f"layer {call.path!r} reads a value computed after it")
                attrs[call.path] = work.get_submodule(call.path)
                new = graph.call_module(call.path, tuple(env[i] for i in call.inputs))
                _copy_meta(node, new)
                env[node] = new
        else:
            if node.op == "get_attr":
                attrs[node.target] = getattr(gm, node.target)
            env[node] = graph.node_copy(node, lambda n: env[n])
    if n_inputs != len(args):
        raise ValueError(f"torch.export saw {n_inputs} inputs, the example has {len(args)}")
    _drop_unused(graph)
    return fx.GraphModule(attrs, graph, type(work).__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export's advice to the model's author (warnings, log records, and the
    partial graph it prints to stderr when it fails) silenced: a failure reaches the
    user as the tracer's one message."""
    loggers = [logging.getLogger(n) for n in _LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", message=".*were assigned during export")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch.export", "torch._export",
            "torch._dynamo", "torch.fx.experimental.recording")


def _input(graph: fx.Graph, node: fx.Node, spec: Any, ep: Any, work: nn.Module,
           attrs: dict) -> fx.Node:
    """A user input as a placeholder; a parameter, buffer or constant as a ``get_attr``
    on its path in ``work`` (a lifted constant under ``_mp_constant.<name>``)."""
    kind = spec.kind.name
    if kind == "USER_INPUT":
        return graph.placeholder(node.name)
    if kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ") or spec.target in ep.constants:
        target = "_mp_constant." + spec.target.replace(".", "_")
        attrs[target] = ep.constants[spec.target]
    elif kind in ("PARAMETER", "BUFFER"):
        target = spec.target
        attrs[target] = work.get_parameter(target) if kind == "PARAMETER" \
            else work.get_buffer(target)
    else:
        raise ValueError(f"torch.export input {node.name!r} of kind {kind}")
    return graph.get_attr(target)


def _copy_meta(old: fx.Node, new: fx.Node) -> None:
    """Keep the source line (``stack_trace``) and module stack for messages."""
    for k in ("stack_trace", "nn_module_stack"):
        if k in old.meta:
            new.meta[k] = old.meta[k]


def _drop_unused(graph: fx.Graph) -> None:
    """Remove the ``get_attr`` nodes nothing reads (parameters used inside a layer call)."""
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)


def _one_in_one_out(work: nn.Module, args: tuple,
                    is_leaf: Callable[[nn.Module], bool]) -> set[str]:
    """The paths of the leaf layers that every call in an eager run of ``work`` on
    ``args`` gives one positional tensor and no keyword, and that return one tensor
    (an LSTM's tuple, an attention's ``(q, k, v)`` are not: their ATen nodes stay)."""
    calls: dict[str, bool] = {}

    def hook(path: str):
        def record(_m: nn.Module, a: tuple, kw: dict, out: Any) -> None:
            one = len(a) == 1 and not kw and isinstance(a[0], torch.Tensor)
            calls[path] = calls.get(path, True) and one and isinstance(out, torch.Tensor)
        return record

    handles = [m.register_forward_hook(hook(p), with_kwargs=True)
               for p, m in work.named_modules() if p and is_leaf(m)]
    try:
        with torch.no_grad():
            work(*args)
    finally:
        for h in handles:
            h.remove()
    return {p for p, ok in calls.items() if ok}


def _leaf_calls(graph: fx.Graph, leaves: set[str], owned: set[str]
                ) -> dict[fx.Node, _LeafCall]:
    """``{node: call}`` for the ATen nodes of every call of a layer in ``leaves`` that
    can become one ``call_module`` node (one tensor input from outside, one result read
    outside); ``owned`` are the placeholders of parameters, buffers and constants."""
    by_key: dict[str, _LeafCall] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            if path in leaves:
                by_key.setdefault(key, _LeafCall(path)).nodes.append(node)
                break
    out: dict[fx.Node, _LeafCall] = {}
    for call in by_key.values():
        inside = set(call.nodes)
        for n in call.nodes:
            for a in n.all_input_nodes:
                if a not in inside and a not in call.inputs and not (
                        a.op == "placeholder" and a.name in owned):
                    call.inputs.append(a)
        call.results = [n for n in call.nodes if any(u not in inside for u in n.users)]
        if len(call.inputs) == 1 and len(call.results) == 1:
            out.update((n, call) for n in call.nodes)
    return out


def _inline_bodies(gm: fx.GraphModule) -> None:
    """Inline the bodies of ``wrap_with_set_grad_enabled`` and of
    ``wrap_with_autocast`` with autocast disabled (both compute what the body computes);
    an enabled autocast stays (an unknown op)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is getattr(_HOP, "wrap_with_set_grad_enabled", None):
            body, operands = node.args[1], node.args[2:]
        elif node.target is getattr(_HOP, "wrap_with_autocast", None) and node.args[2] is False:
            body, operands = node.args[4], node.args[5:]
        else:
            continue
        sub = getattr(gm, body.target)
        inputs = [n for n in sub.graph.nodes if n.op == "placeholder"]
        with gm.graph.inserting_before(node):
            result = gm.graph.graph_copy(sub.graph, dict(zip(inputs, operands)))
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise ValueError(f"the result of {node.name} is used whole by {user.name}")
            user.replace_all_uses_with(result[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        if not body.users:
            gm.graph.erase_node(body)
    gm.graph.lint()


