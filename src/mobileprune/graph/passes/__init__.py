"""Passes over the canonical graph of :func:`mobileprune.graph.trace`: each a node loop
that asks every node's handler (``../shared/docs/style.md`` section 1).

* :mod:`~mobileprune.graph.passes.channels` -- which channels can be removed (``ChannelFlow``).
* :mod:`~mobileprune.graph.passes.units` -- its answers about a model: dead units and weights,
  coupled channel ids (compaction and structured ADMM).
* :mod:`~mobileprune.graph.passes.lower` -- the runtime ops of ``export_sparse``.
"""
