"""TorchScript lite export (``.ptl``), accepted by the numerical check against torch.

A program is built from the eval-mode copy of the model, saved with
``_save_for_lite_interpreter`` (the format the Android ``org.pytorch`` lite runtime
loads; deprecated in favour of ExecuTorch but still present in torch 2.13), loaded back
with ``torch.jit.mobile._load_for_lite_interpreter`` and run on ``example_input``, on a
random input of the same shape and on a batch of another size
(:func:`mobileprune.deploy.numerics.check_inputs`). The candidates, in order:

1. a ``ScriptModule`` you pass is the only candidate;
2. otherwise ``torch.jit.trace`` and ``torch.jit.script``: trace first, script first when
   tracing warned that it froze a tensor value to a Python constant (an ``if`` on a tensor:
   the warning is a hint for the order, never a refusal; LSTM, GRU, nn.TransformerEncoder
   and MultiheadAttention trace to correct programs despite such warnings).

The first candidate that reproduces the model on all three inputs is written
(``"dynamic_batch": True``); one that is right only at the example's batch size is
written when no candidate does better (``"dynamic_batch": False``). When none reproduces
the model on the example and the random input, nothing is written and
:class:`~mobileprune.errors.UnsupportedModelError` names each candidate's reason.

Each program is optimised with ``torch.utils.mobile_optimizer.optimize_for_mobile``; the
CPU wheels of torch 2.13 are built without XNNPACK, where it raises, so the exporter
falls back to ``torch.jit.freeze`` (inlines the weights, folds Conv+BatchNorm). Should a
later torch remove the lite interpreter, a plain TorchScript file is written instead
(``"format": "torchscript"``, loaded with ``torch.jit.load``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mobileprune.checkpoint import atomic_write
from mobileprune.deploy.common import as_args, prepare_with_reference, quiet, result
from mobileprune.deploy.numerics import Check, Mismatch, check_inputs, run_checks, short
from mobileprune.errors import UnsupportedModelError
from mobileprune.graph.trace import flat_tensors as _tensors

__all__ = ["export_torchscript_lite"]


def _has_lite() -> bool:
    if not hasattr(torch.jit.ScriptModule, "_save_for_lite_interpreter"):
        return False
    try:
        import torch.jit.mobile as mobile
    except ImportError:
        return False
    return hasattr(mobile, "_load_for_lite_interpreter")


def _trace(work: nn.Module, args: tuple) -> tuple[torch.jit.ScriptModule, bool]:
    """``torch.jit.trace`` (no built-in check: the numerical check decides) and whether
    it warned that a tensor value was frozen to a Python constant."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(work, args, check_trace=False)
    froze = any(issubclass(w.category, torch.jit.TracerWarning) and
                "Python" in str(w.message) for w in caught)
    return traced, froze


def _raiser(exc: Exception) -> Callable[[], Any]:
    """A candidate builder that fails the way the tracer did."""
    def build() -> Any:
        raise exc
    return build


def _candidates(work: nn.Module, args: tuple) -> list[tuple[str, Callable[[], Any]]]:
    """``[(how, build)]`` in the order they are tried (see the module docstring)."""
    if isinstance(work, torch.jit.ScriptModule):
        return [("the ScriptModule", lambda: work)]
    try:
        traced, froze = _trace(work, args)
        trace: Callable[[], Any] = lambda: traced  # noqa: E731
    except Exception as exc:  # noqa: BLE001  (reported with the other candidates' reasons)
        trace, froze = _raiser(exc), True
    script = lambda: torch.jit.script(work)  # noqa: E731
    pairs = [("torch.jit.trace", trace), ("torch.jit.script", script)]
    return pairs[::-1] if froze else pairs


def _optimize(scripted: torch.jit.ScriptModule) -> tuple[torch.jit.ScriptModule, str]:
    """``optimize_for_mobile``, else ``torch.jit.freeze``, else the program as it is."""
    try:
        from torch.utils.mobile_optimizer import optimize_for_mobile

        return optimize_for_mobile(scripted), "optimize_for_mobile"
    except Exception:  # noqa: BLE001  (CPU wheels of torch 2.13 lack XNNPACK: it raises)
        try:
            return torch.jit.freeze(scripted), "freeze"
        except Exception:  # noqa: BLE001
            return scripted, "none"


def _save_and_check(program, tmp: str, lite: bool, required: list[Check],
                    batch: Check | None) -> tuple[float, bool]:
    """Save ``program`` to ``tmp``, load it back and check it: ``(max diff, dynamic)``.

    Raises:
        Mismatch: the file fails a required check.
        Exception: whatever saving or loading the program raises.
    """
    with quiet():
        if lite:
            from torch.jit.mobile import _load_for_lite_interpreter

            program._save_for_lite_interpreter(tmp)
            loaded = _load_for_lite_interpreter(tmp)
        else:
            torch.jit.save(program, tmp)
            loaded = torch.jit.load(tmp)

    def run(a: tuple) -> list:
        with torch.no_grad():
            return _tensors(loaded(*a))

    diff = run_checks(run, required)
    if batch is None:
        return diff, False
    try:
        return max(diff, run_checks(run, [batch])), True
    except Mismatch:
        return diff, False


def export_torchscript_lite(model: nn.Module, example_input: Any, path: str | os.PathLike) -> dict:
    """Export ``model`` for the PyTorch lite interpreter (``.ptl``) and check it.

    Args:
        model: the model (copied, eval mode), or a :class:`torch.jit.ScriptModule`
            (exported as it is).
        example_input: a tensor, or a tuple/list of tensors, batch dimension first.
        path: destination, written atomically.

    Returns:
        ``{"path", "bytes", "max_abs_diff", "verified", "format", "dynamic_batch",
        "program", "optimization", "zero_fraction"}``; ``"format"`` is ``"ptl"`` (or
        ``"torchscript"`` if this torch has no lite interpreter), ``"program"`` is
        ``"torch.jit.trace"``, ``"torch.jit.script"`` or ``"the ScriptModule"``,
        ``"optimization"`` is ``"optimize_for_mobile"``, ``"freeze"`` or ``"none"``.

    Raises:
        UnsupportedModelError: no program reproduces the model on ``example_input`` and
            on a random input of the same shape (the message gives each candidate's
            reason); nothing is written.
        ConfigError: bad ``example_input``.
    """
    fn = "export_torchscript_lite"
    args = as_args(example_input, fn)
    work, ref = prepare_with_reference(model, args, fn)
    name, path, lite = type(model).__name__, Path(path), _has_lite()
    required, batch = check_inputs(work, args, ref, other_batch=True)
    state: dict[str, Any] = {}

    def write(tmp: str) -> None:
        reasons, fixed = [], None
        with quiet():
            candidates = _candidates(work, args)
        for how, build in candidates:
            try:
                with quiet():
                    program, opt = _optimize(build())
                diff, dynamic = _save_and_check(program, tmp, lite, required, batch)
            except Mismatch as exc:
                reasons.append(f"{how}: wrong on {exc}")
                continue
            except Exception as exc:  # noqa: BLE001
                reasons.append(f"{how} fails ({short(exc)})")
                continue
            if dynamic or batch is None:
                state.update(diff=diff, dynamic=dynamic, how=how, opt=opt)
                return
            fixed = fixed or (program, dict(diff=diff, dynamic=False, how=how, opt=opt))
        if fixed is None:
            raise UnsupportedModelError(
                f"{fn}: no TorchScript program reproduces {name}, nothing was written: "
                f"{'; '.join(reasons)} (data-dependent control flow or Python-side state "
                f"that tracing froze and scripting cannot compile; rewrite the branch "
                f"with tensor ops such as torch.where)")
        _save_and_check(fixed[0], tmp, lite, required, None)
        state.update(fixed[1])

    atomic_write(path, write)
    return result("ptl" if lite else "torchscript", path, state["diff"], True, work,
                  dynamic_batch=state["dynamic"], program=state["how"],
                  optimization=state["opt"])
