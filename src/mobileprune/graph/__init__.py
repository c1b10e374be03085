"""The graph layer: one tracer, one table of op spellings, one table of op handlers.

* :func:`trace` -- an eval-mode copy of the model traced by torch.fx (where fx cannot
  trace the forward, captured by torch.export: :mod:`~mobileprune.graph.export`), shapes
  propagated, every node canonicalised (``node.meta["mp_op"]``, ``node.meta["mp_args"]``);
* :data:`SPECS` (:mod:`~mobileprune.graph.canonical`) -- every spelling of every op;
* :data:`HANDLERS` (:mod:`~mobileprune.graph.registry`, filled by
  :mod:`mobileprune.graph.ops`) -- what each op does to channels, weights and the runtime.

Passes over the canonical graph live in :mod:`mobileprune.graph.passes`.
"""

from mobileprune.graph.canonical import SPECS, Spec, canonicalize, describe, source_line
from mobileprune.graph.registry import HANDLERS, OpHandler, args_of, handler, op_of, register
from mobileprune.graph.trace import Traced, as_args, shape_of, tensor_meta, trace
from mobileprune.graph import ops as _ops  # noqa: F401  (registers the handlers)

__all__ = ["trace", "Traced", "as_args", "shape_of", "tensor_meta", "SPECS", "Spec",
           "canonicalize", "describe", "source_line", "HANDLERS", "OpHandler", "register",
           "handler", "args_of", "op_of"]
