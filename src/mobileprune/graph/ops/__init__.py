"""Op handlers, one module per family; importing this package registers them all."""

from mobileprune.graph.ops import noop  # noqa: F401
