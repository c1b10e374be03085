"""The table of op handlers: one :class:`OpHandler` per op key of
:data:`mobileprune.graph.canonical.SPECS`, registered once.

A handler says, for its op, everything the passes need (``../shared/docs/style.md``
section 1), each method with a conservative default:

* ``check(node, ctx)``: why the node cannot be handled here (``None``: it can);
* ``channels(node, flow)``: how channel slots and constants move through it
  (:class:`mobileprune.graph.passes.channels.ChannelFlow`); returns ``None`` when it
  handled the node, else why it cannot (the node's channels are then kept);
* ``resize(module, keep_in, keep_out, shift)``: the one place a layer is resized
  (``compact`` and checkpoint restore);
* ``lower(node, emit)``: the runtime op(s) for :func:`~mobileprune.export_sparse`;
* ``eval_noop``: the op is the identity in eval mode (Dropout, Identity, ...);
* ``any_axis``: its channel rule handles features on any axis (a Linear on ``(N, L, E)``
  puts its units on the last one), not only dim 1.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import fx, nn

__all__ = ["OpHandler", "HANDLERS", "register", "handler", "args_of", "op_of",
           "module_handler"]


class OpHandler:
    """Base handler: knows nothing, so every pass treats the op conservatively."""

    key: ClassVar[str] = ""
    eval_noop: ClassVar[bool] = False
    #: its ``channels`` rule understands inputs whose slots index an axis other than 1
    #: (``flow.axis_of``); otherwise such inputs are refused before it is asked
    any_axis: ClassVar[bool] = False

    def check(self, node: fx.Node, ctx: Any) -> str | None:
        return None

    def channels(self, node: fx.Node, flow: Any) -> str | None:
        return f"op {self.key or 'unknown'!r} has no channel rule"

    def resize(self, module: nn.Module, keep_in: Any, keep_out: Any, shift: Any = None) -> None:
        """Cut ``module`` to the kept input / output units (index tensors, None: all);
        ``shift`` (float64 per kept output) is added to its bias."""
        raise NotImplementedError(f"op {self.key!r} has no weights to resize")

    def lower(self, node: fx.Node, emit: Any) -> None:
        raise NotImplementedError(f"op {self.key!r} has no runtime lowering")


HANDLERS: dict[str, OpHandler] = {}


def register(cls: type[OpHandler]) -> type[OpHandler]:
    """Class decorator: file one instance under ``cls.key``; a key registered twice is
    an error (never a silent overwrite)."""
    if not cls.key:
        raise RuntimeError(f"{cls.__name__} has no key")
    if cls.key in HANDLERS:
        raise RuntimeError(f"op {cls.key!r} registered twice ({type(HANDLERS[cls.key]).__name__}, "
                           f"{cls.__name__})")
    HANDLERS[cls.key] = cls()
    return cls


def op_of(node: Any) -> str | None:
    """The canonical op key of a node (None for a non-node)."""
    return node.meta.get("mp_op") if isinstance(node, fx.Node) else None


def args_of(node: fx.Node) -> dict:
    """The canonical bound arguments of a node."""
    return node.meta.get("mp_args", {})


def handler(node: fx.Node) -> OpHandler:
    """The handler of a canonicalised node (the base handler when its key has none)."""
    return HANDLERS.get(node.meta.get("mp_op", "unknown"), _UNKNOWN)


_UNKNOWN = OpHandler()


def module_handler(m: nn.Module) -> OpHandler | None:
    """The handler of a layer's type (its class or a base class in the op table, own
    ``forward`` or not: what its parameters are), or None."""
    from mobileprune.graph.canonical import BY_MODULE

    for base in type(m).__mro__:
        spec = BY_MODULE.get(base)
        if spec is not None:
            return HANDLERS.get(spec.key)
    return None
