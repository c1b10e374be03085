"""Op handlers, one module per family; importing this package registers them all."""

from mobileprune.graph.ops import (  # noqa: F401
    activation, attention, concat, conv, elementwise, linear, noop, norm, pool, recurrent, shape)
