"""Exception types raised by mobileprune.

Every error derives from :class:`MobilePruneError` *and* from the built-in type a user
would expect (``ValueError``, ``FileNotFoundError``...), so ``except ValueError`` keeps
working while the CLI can catch all library errors in one place and exit non-zero with
the message.
"""

from __future__ import annotations


class MobilePruneError(Exception):
    """Base class of every error mobileprune raises on purpose."""


class ConfigError(MobilePruneError, ValueError):
    """A pruning configuration is invalid (unknown layer, target out of range...)."""


class CheckpointError(MobilePruneError, ValueError):
    """A checkpoint file is corrupt, foreign, or does not match the model."""


class DataError(MobilePruneError, ValueError):
    """A data directory or data file is missing or malformed."""


class UnsupportedModelError(MobilePruneError, TypeError):
    """The model has no prunable layer, or a layer/op mobileprune cannot handle."""


class CompactionError(MobilePruneError, RuntimeError):
    """A compacted model does not reproduce the original's outputs (an internal error:
    :func:`mobileprune.surgery.compact.compact` never returns such a model)."""


class ExportDependencyError(MobilePruneError, ImportError):
    """An optional package an exporter needs is missing or does not work with this torch."""
