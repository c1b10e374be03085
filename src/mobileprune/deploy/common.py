"""What every exporter does before and after its format's own work: check
``example_input``, take an eval-mode copy of the model with its eager reference, capture
it with ``torch.export``, import an optional package, silence the exporters' chatter,
and build the result dict. The numerical check itself is :mod:`mobileprune.deploy.numerics`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mobileprune.deploy.numerics import reference, short
from mobileprune.errors import ConfigError, ExportDependencyError, UnsupportedModelError

__all__ = ["as_args", "prepare", "prepare_with_reference", "zero_fraction", "quiet",
           "result", "export_graph", "need", "refuse_script_module"]

_EXPORT_EXTRA = "pip install -c constraints.txt 'mobileprune[export]'"


def as_args(example_input: Any, fn: str) -> tuple[Tensor, ...]:
    """``example_input`` (a tensor or a non-empty tuple/list of tensors, batch first) as a
    tuple of detached CPU tensors; :class:`ConfigError` naming ``fn`` otherwise."""
    if isinstance(example_input, Tensor):
        args: tuple = (example_input,)
    elif isinstance(example_input, (tuple, list)) and example_input:
        args = tuple(example_input)
    else:
        raise ConfigError(f"{fn}: example_input must be a tensor or a non-empty tuple/list of "
                          f"tensors, got {type(example_input).__name__}")
    for a in args:
        if not isinstance(a, Tensor) or a.dim() < 1 or a.shape[0] < 1:
            raise ConfigError(f"{fn}: every example input must be a tensor (N, ...) with N >= 1")
    return tuple(a.detach().cpu() for a in args)


def prepare(model: Any, fn: str) -> nn.Module:
    """An eval-mode CPU copy of ``model`` (a ScriptModule is used as it is, in eval mode)."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"{fn}: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        return model.eval()
    try:
        work = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{fn}: cannot copy {type(model).__name__} ({short(exc)})") from exc
    return work.cpu().eval()


def prepare_with_reference(model: Any, args: tuple, fn: str) -> tuple[nn.Module, list[Tensor]]:
    """:func:`prepare` plus the eager outputs on ``args`` (the reference every export is
    checked against); :class:`UnsupportedModelError` when ``args`` do not run."""
    work = prepare(model, fn)
    try:
        return work, reference(work, args)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{fn}: example_input does not run through {type(model).__name__} ({short(exc)})") from exc


def refuse_script_module(model: Any, fn: str) -> None:
    """Exporters built on ``torch.export`` need the ``nn.Module``, not a ScriptModule."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(f"{fn}: pass the nn.Module, not a ScriptModule "
                                    f"(this exporter works from torch.export)")


def zero_fraction(model: nn.Module) -> float:
    """Share of the model's parameter values that are exactly zero."""
    total = zeros = 0
    for p in model.parameters():
        total += p.numel()
        zeros += int((p == 0).sum())
    return zeros / total if total else 0.0


@contextlib.contextmanager
def quiet():
    """Silence the deprecation chatter of the exporters (torch.jit, lite interpreter...)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export",
                                               "torch.fx.experimental.symbolic_shapes",
                                               "torchao", "executorch", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def result(fmt: str, path: Path, diff: float | None, verified: bool, model: nn.Module,
           **extra: Any) -> dict:
    """The dict every exporter returns (``path``, ``bytes``, ``max_abs_diff``,
    ``verified``, ``format``, ``zero_fraction`` and the exporter's ``extra`` keys)."""
    out = {"path": path, "bytes": path.stat().st_size, "max_abs_diff": diff,
           "verified": verified, "format": fmt, "zero_fraction": zero_fraction(model)}
    out.update(extra)
    return out


def export_graph(work: nn.Module, args: tuple, fn: str, dynamic: bool):
    """``torch.export.export`` (non-strict), with a dynamic batch axis when ``dynamic``.

    Raises:
        UnsupportedModelError: ``torch.export`` cannot capture the model with a static
            batch (the dynamic attempt raises the exporter's own error, for a retry).
    """
    from torch.export import Dim

    name = type(work).__name__
    if dynamic:
        # a batch of 1 would be specialised ("0/1 specialisation"): trace with 2 rows
        trace_args = tuple(torch.cat([a, a]) if a.shape[0] == 1 else a for a in args)
        batch = Dim("batch")
        shapes = tuple({0: batch} for _ in trace_args)
        return torch.export.export(work, trace_args, dynamic_shapes=shapes, strict=False)
    try:
        return torch.export.export(work, args, strict=False)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{fn}: torch.export cannot capture {name} ({short(exc)}); exports need a model "
            f"without data-dependent control flow (use torch.cond, or rewrite the branch "
            f"with tensor ops such as torch.where)") from exc


def need(module: str, fn: str, what: str) -> Any:
    """Import ``module`` or raise :class:`ExportDependencyError` saying who needs it."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001  (ImportError, or a broken native library)
        raise ExportDependencyError(
            f"{fn}: {what} needs the package {module.split('.')[0]!r}, which is not installed "
            f"or does not import ({short(exc)}); install it with {_EXPORT_EXTRA}") from exc
