"""Passes over the canonical graph of :func:`mobileprune.graph.trace`: each a node loop
that asks every node's handler (``../shared/docs/style.md`` section 1).

* :mod:`~mobileprune.graph.passes.lower` -- the runtime ops of ``export_sparse``.
"""
