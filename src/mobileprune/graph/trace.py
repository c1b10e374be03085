"""The one tracer of the graph layer: an eval-mode float copy of the model, traced by
torch.fx with every layer of the op table kept whole (or, where torch.fx cannot trace
the forward, captured by torch.export: :mod:`mobileprune.graph.export`), shapes
propagated, canonicalised.

``compact``, ``dead_units`` / ``fold_dead_weights``, structured coupling in ADMM and
``export_sparse`` all start here (``docs/methods.md`` section 4).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from mobileprune.errors import ConfigError, UnsupportedModelError
from mobileprune.graph.canonical import canonicalize, module_spec
from mobileprune.graph.export import export_graph

__all__ = ["Traced", "trace", "as_args", "tensor_meta", "shape_of", "leaf_module",
           "flat_tensors", "random_like", "defaulted"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def leaf_module(m: nn.Module) -> bool:
    """A module the tracer keeps whole: one in the op table, or any other ``torch.nn``
    layer (not a container) -- those appear as ops of key ``"unknown"`` rather than
    being traced into (their ``forward`` often has data-dependent fast paths)."""
    if module_spec(m) is not None:
        return True
    mod = type(m).__module__
    return mod.startswith("torch.nn") and not isinstance(m, _CONTAINERS)


def defaulted(v: Any) -> Any:
    """An optional model input left at its default (a placeholder with a default and no
    traced value, e.g. ``attn_mask=None``): that default; any other value unchanged."""
    if isinstance(v, fx.Node) and v.op == "placeholder" and v.args \
            and v.meta.get("tensor_meta") is None:
        return v.args[0]
    return v


class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return leaf_module(m)


@dataclass
class Traced:
    """A traced model: ``gm`` (canonicalised, shapes in ``node.meta["tensor_meta"]``),
    ``work`` the eval-mode deep copy it was traced from (``gm`` shares its layers),
    ``args`` the example inputs, ``out`` the traced graph's output on them and ``via``
    the tracer that captured it (``"fx"``, or ``"export"`` for the torch.export
    fallback, whose sizes are the example input's)."""

    gm: fx.GraphModule
    work: nn.Module
    args: tuple
    out: Any
    via: str = "fx"

    @property
    def modules(self) -> dict[str, nn.Module]:
        return dict(self.gm.named_modules())


def as_args(example_input: Any) -> tuple:
    """``example_input`` (a tensor, or a tuple/list with one tensor per positional input)
    as a tuple."""
    if isinstance(example_input, Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)) and example_input:
        return tuple(example_input)
    raise ConfigError(f"example_input must be a tensor or a non-empty tuple/list of tensors, "
                      f"got {type(example_input).__name__}")


def trace(model: nn.Module, example_input: Any, *, who: str = "mobileprune",
          copy_model: bool = True) -> Traced:
    """Trace ``model`` (an eval-mode deep copy unless ``copy_model=False``) and propagate
    ``example_input`` through the graph.

    torch.fx first; when it cannot trace the forward, ``torch.export`` on the example
    input (:func:`mobileprune.graph.export.export_graph`; ``Traced.via`` says which).
    Raises :class:`UnsupportedModelError` (its message starts with ``who``) when neither
    can capture the forward or ``example_input`` does not run through the graph.
    """
    args = as_args(example_input)
    work = copy.deepcopy(model) if copy_model else model
    work.eval()
    gm, via = _capture(work, args, who)
    try:
        with torch.no_grad():
            out = ShapeProp(gm).propagate(*args)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{who}: example_input does not run through the traced graph of "
            f"{type(model).__name__} ({type(exc).__name__}: {exc})") from exc
    canonicalize(gm)
    return Traced(gm, work, args, out, via)


def _capture(work: nn.Module, args: tuple, who: str) -> tuple[fx.GraphModule, str]:
    """``(graph module, "fx" | "export")``: torch.fx's graph of ``work`` (leaf layers kept
    whole), else torch.export's turned into the same terms."""
    name = type(work).__name__
    try:
        tracer = _Tracer()
        graph = tracer.trace(work)
        return fx.GraphModule(tracer.root, graph, name), "fx"
    except Exception as exc:  # noqa: BLE001 - any tracing failure: try torch.export
        fx_exc = exc
    try:
        return export_graph(work, args, leaf_module), "export"
    except Exception as exc:  # noqa: BLE001 - reported with both reasons
        raise UnsupportedModelError(
            f"{who}: torch.fx cannot trace {name} ({_first_line(fx_exc)}) and torch.export "
            f"cannot capture it on example_input either ({_first_line(exc)}); the forward "
            f"must be traceable by torch.fx.symbolic_trace or torch.export (no Python "
            f"control flow on tensor values)") from exc


def _first_line(exc: BaseException) -> str:
    """``TypeName: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def tensor_meta(node: Any) -> TensorMetadata | None:
    """The ShapeProp metadata of a node that produces one tensor, else None."""
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    return tm if isinstance(tm, TensorMetadata) else None


def shape_of(node: Any) -> tuple[int, ...] | None:
    tm = tensor_meta(node)
    return tuple(int(s) for s in tm.shape) if tm is not None else None


def flat_tensors(obj: Any) -> list[Tensor]:
    """The tensors of a (nested) model output, in order (dict values by sorted key)."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in flat_tensors(o)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in flat_tensors(obj[k])]
    return []


def random_like(args: tuple, batch: int | None = None, seed: int = 1234) -> tuple:
    """Seeded random inputs shaped like ``args`` (with ``batch`` rows when given): float
    tensors are drawn from N(0, 1); integer tensors (ids) keep the example's values,
    rows repeated to ``batch``; anything else is passed as it is. The one helper that
    compaction and the exports check a second input with."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for a in args:
        if not isinstance(a, Tensor):
            out.append(a)
            continue
        shape = tuple(a.shape) if batch is None else (batch, *a.shape[1:])
        if a.is_floating_point():
            out.append(torch.randn(shape, generator=g, dtype=a.dtype).to(a.device))
        elif batch is None:
            out.append(a.clone())
        else:  # integer inputs (ids, ...): repeat the example's rows
            out.append(a[torch.arange(batch) % a.shape[0]].clone())
    return tuple(out)
