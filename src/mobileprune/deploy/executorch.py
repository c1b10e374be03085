"""ExecuTorch export (``.pte``), checked with ``executorch.runtime``.

``torch.export.export`` then ``executorch.exir.to_edge_transform_and_lower``; the input
shapes are fixed to ``example_input``'s. The program is accepted only when the
ExecuTorch runtime reproduces the eager model on ``example_input`` and on a random
input of the same shape (:mod:`mobileprune.deploy.numerics`).

Backend choice (``"backend"`` in the result):

* ``"xnnpack"``: the ``XnnpackPartitioner`` delegates the graph to XNNPACK (fast
  kernels); used for every model without a recurrent layer.
* ``"portable"``: ExecuTorch's portable kernels, no delegate; used when the model has an
  ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``. ``torch.export`` unrolls a recurrent layer into
  ~20 ops per time step, which the XNNPACK delegate splits at every step (its partitioner
  takes no ``split_with_sizes``) into one partition per step, each run through 17
  graph passes that re-trace it (measured on this 2-core machine, one thread:
  ``export_executorch`` of an LSTM(32, 64) + Linear classifier, 16 steps: 26.6 s with
  XNNPACK, 9.1 s portable; 50 steps: 35.1 s -> 14.5 s; lowering a 2-layer LSTM(8, 32) on
  16 steps: 23.7 s -> 7.6 s, the program then runs in 0.66 ms instead of 0.12 ms).

Install with ``pip install -c constraints.txt 'mobileprune[export]'``. ExecuTorch's
native libraries are built against one torch release: executorch 1.5.1 works with torch
2.13.0 (pinned together in ``constraints.txt``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobileprune.checkpoint import atomic_write
from mobileprune.deploy.common import (as_args, export_graph, prepare_with_reference, quiet,
                                       refuse_script_module, result)
from mobileprune.deploy.numerics import check_inputs, short, verify
from mobileprune.errors import ExportDependencyError, UnsupportedModelError

__all__ = ["export_executorch", "RECURRENT"]

#: layers that make :func:`export_executorch` use the portable kernels (see the module doc)
RECURRENT = (nn.RNNBase,)


def _executorch_modules(fn: str):
    """Import the ExecuTorch lowering API, or raise ExportDependencyError saying why."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except Exception as exc:  # noqa: BLE001
        installed = None
        try:
            from importlib.metadata import version

            installed = version("executorch")
        except Exception:  # noqa: BLE001
            pass
        if installed is None:
            why = "executorch is not installed"
        else:
            why = (f"executorch {installed} is installed but does not import with torch "
                   f"{torch.__version__} (its native libraries are built against one torch "
                   f"release; executorch 1.5.1 matches torch 2.13.0)")
        raise ExportDependencyError(
            f"{fn}: {why} ({short(exc)}); install it with "
            f"pip install -c constraints.txt 'mobileprune[export]'") from exc
    return to_edge_transform_and_lower, XnnpackPartitioner


def _runtime():
    """``(executorch.runtime.Runtime, None)``, or ``(None, reason)`` when it cannot load."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning of the python runtime
            from executorch.runtime import Runtime
        return Runtime.get(), None
    except Exception as exc:  # noqa: BLE001
        return None, short(exc)


def _lower(work: nn.Module, args: tuple, fn: str) -> tuple[bytes, str]:
    """The program's bytes and its backend (``"xnnpack"`` or ``"portable"``)."""
    to_edge_transform_and_lower, XnnpackPartitioner = _executorch_modules(fn)
    backend = "portable" if any(isinstance(m, RECURRENT) for m in work.modules()) else "xnnpack"
    ep = export_graph(work, args, fn, dynamic=False)
    try:
        parts = [XnnpackPartitioner()] if backend == "xnnpack" else None
        return to_edge_transform_and_lower(ep, partitioner=parts).to_executorch().buffer, backend
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{fn}: ExecuTorch cannot lower {type(work).__name__} ({short(exc)})") from exc


def export_executorch(model: nn.Module, example_input: Any, path: str | os.PathLike) -> dict:
    """Export ``model`` to an ExecuTorch program (``.pte``) and check it.

    Args:
        model: the model (copied, eval mode).
        example_input: a tensor, or a tuple/list of tensors; the program's input shapes
            are fixed to these (batch included).
        path: destination, written atomically.

    Returns:
        ``{"path", "bytes", "max_abs_diff", "verified", "format": "pte",
        "dynamic_batch": False, "backend", "zero_fraction"}`` (plus ``"note"`` when the
        ExecuTorch runtime cannot be loaded).

    Raises:
        ExportDependencyError: executorch is not installed, or does not work with the
            installed torch.
        UnsupportedModelError: ``torch.export`` cannot capture the model, lowering fails,
            or the program does not reproduce the model (nothing is written).
        ConfigError: bad ``example_input``.
    """
    fn = "export_executorch"
    args = as_args(example_input, fn)
    refuse_script_module(model, fn)
    with quiet():
        _executorch_modules(fn)
    work, ref = prepare_with_reference(model, args, fn)
    name, path = type(model).__name__, Path(path)
    with quiet():
        buffer, backend = _lower(work, args, fn)
    runtime, rt_error = _runtime()
    required, _ = check_inputs(work, args, ref, other_batch=False)
    state: dict[str, Any] = {"diff": None}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(buffer)
        if runtime is None:
            return
        try:
            method = runtime.load_program(tmp).load_method("forward")
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"{fn}: the ExecuTorch runtime cannot load the program of {name} "
                f"({short(exc)})") from exc
        state["diff"] = verify(lambda a: list(method.execute(list(a))), required,
                               f"{fn}: the ExecuTorch program of {name}")

    atomic_write(path, write)
    out = result("pte", path, state["diff"], runtime is not None, work, dynamic_batch=False,
                 backend=backend)
    if runtime is None:
        out["note"] = f"not verified: executorch.runtime cannot be loaded ({rt_error})"
    return out
