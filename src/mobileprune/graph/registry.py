"""The table of op handlers: one :class:`OpHandler` per op key of
:data:`mobileprune.graph.canonical.SPECS`, registered once.

A handler says, for its op, everything the passes need (``../shared/docs/style.md``
section 1), each method with a conservative default:

* ``check(node, ctx)``: why the node cannot be handled here (``None``: it can);
* ``channels(node, flow)``: how channel slots and constants move through it
  (:mod:`mobileprune.graph.passes.channels`); ``False``: unknown, its channels are kept;
* ``resize(module, keep_in, keep_out)``: the one place a layer is resized;
* ``lower(node, emit)``: the runtime op(s) for :func:`~mobileprune.export_sparse`;
* ``eval_noop``: the op is the identity in eval mode (Dropout, Identity, ...).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import fx, nn

__all__ = ["OpHandler", "HANDLERS", "register", "handler", "args_of", "op_of"]


class OpHandler:
    """Base handler: knows nothing, so every pass treats the op conservatively."""

    key: ClassVar[str] = ""
    eval_noop: ClassVar[bool] = False

    def check(self, node: fx.Node, ctx: Any) -> str | None:
        return None

    def channels(self, node: fx.Node, flow: Any) -> bool:
        return False

    def resize(self, module: nn.Module, keep_in: Any, keep_out: Any) -> None:
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
