"""The numerical check every export is accepted by: an exported file is run in its own
runtime and compared with the eager model, on ``example_input`` and on other inputs.

One implementation for all exporters (:mod:`mobileprune.deploy.onnx`,
:mod:`~mobileprune.deploy.torchscript`, :mod:`~mobileprune.deploy.executorch`,
:mod:`~mobileprune.deploy.native`, and :mod:`~mobileprune.deploy.sparse`'s check of the
file it writes):

* :func:`tolerance`: ``1e-4 * (1 + max|reference|)`` per float32 output (``1e-8`` for
  float64, ``1e-2`` for float16 / bfloat16), as in :mod:`mobileprune.surgery.compact`;
* :func:`compare`: the largest absolute difference, raising :class:`Mismatch` when an
  output's count, shape or values differ (NaN where torch has NaN is equal; a NaN
  elsewhere is a mismatch; integer outputs must be equal);
* :func:`random_like`: a seeded random input with the example's per-sample shape (float
  inputs drawn from N(0, 1); integer inputs, e.g. token ids, reuse the example's rows);
* :func:`check_inputs`: the inputs a file is checked on, each with the eager reference;
* :func:`verify`: runs a file on those inputs and raises a one-line
  :class:`~mobileprune.errors.UnsupportedModelError` naming the input and the difference.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from mobileprune.errors import UnsupportedModelError
from mobileprune.graph.trace import flat_tensors as _tensors
from mobileprune.graph.trace import random_like  # noqa: F401 (part of this module's API)

__all__ = ["Check", "Mismatch", "tolerance", "compare", "random_like", "reference",
           "check_inputs", "run_checks", "verify", "short"]

_MAX_MSG = 600


class Mismatch(Exception):
    """An exported file's outputs differ from the eager model's (the reason is the text)."""


class Check(NamedTuple):
    """One input an exported file is run on: ``label`` (for messages, e.g. ``"a random
    input of the same shape"``), ``args`` (the forward arguments) and ``want`` (the eager
    model's outputs on them, flattened to a list of tensors)."""

    label: str
    args: tuple
    want: list


def short(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line, cut to ~600 characters (for error messages)."""
    text = " ".join(str(exc).split())
    if len(text) > _MAX_MSG:
        text = text[:_MAX_MSG] + " ..."
    return f"{type(exc).__name__}: {text}"


def tolerance(ref: Tensor) -> float:
    """The largest absolute difference accepted for the output ``ref``."""
    finite = ref[~ref.isnan()]
    scale = 1.0 + (float(finite.abs().max()) if finite.numel() else 0.0)
    if ref.dtype == torch.float64:
        return 1e-8 * scale
    if ref.dtype in (torch.float16, torch.bfloat16):
        return 1e-2 * scale
    return 1e-4 * scale


def compare(got: list, want: list[Tensor], what: str) -> float:
    """Max abs difference of ``got`` (tensors or numpy arrays) vs ``want``.

    Raises:
        Mismatch: the number of outputs, a shape, a value beyond :func:`tolerance`, a NaN
            position or an integer output differs (the message starts with ``what``).
    """
    if len(got) != len(want):
        raise Mismatch(f"{what}: {len(got)} outputs, the model has {len(want)}")
    worst = 0.0
    for g, w in zip(got, want):
        g = torch.as_tensor(g).detach().cpu()
        if tuple(g.shape) != tuple(w.shape):
            raise Mismatch(f"{what}: output shape {tuple(g.shape)} != {tuple(w.shape)}")
        if not w.numel():
            continue
        if not w.is_floating_point():
            if not torch.equal(g.to(w.dtype), w):
                raise Mismatch(f"{what}: integer outputs differ")
            continue
        g, nan = g.to(w.dtype), w.isnan()
        if not torch.equal(nan, g.isnan()):
            raise Mismatch(f"{what}: NaN at other positions than the model's")
        diff = float((g - w).abs()[~nan].max()) if not bool(nan.all()) else 0.0
        if not diff <= tolerance(w):  # also catches inf - inf
            raise Mismatch(f"{what}: max abs difference {diff:.3g} > {tolerance(w):.3g}")
        worst = max(worst, diff)
    return worst


def reference(model: nn.Module, args: tuple) -> list[Tensor]:
    """The eager outputs of ``model(*args)`` (no grad), flattened to a list of tensors."""
    with torch.no_grad():
        return [t.detach() for t in _tensors(model(*args))]


def check_inputs(model: nn.Module, args: tuple, ref: list[Tensor], *, other_batch: bool
                 ) -> tuple[list[Check], Check | None]:
    """The checks an export must pass, and the optional batch-size check.

    Returns ``(required, batch)``: ``required`` is ``example_input`` and a random input
    of the same shape (a program that froze a branch, a Python value or a shape on the
    example differs on it), ``batch`` a random input with 2 more rows when
    ``other_batch`` (it decides ``"dynamic_batch"``), else ``None``.
    """
    rnd = random_like(args)
    required = [Check("example_input", args, ref),
                Check("a random input of the same shape", rnd, reference(model, rnd))]
    if not other_batch:
        return required, None
    n = int(args[0].shape[0]) + 2
    other = random_like(args, batch=n, seed=4321)
    try:
        want = reference(model, other)
    except Exception:  # noqa: BLE001 - the eager model itself only runs at one batch size
        return required, None
    return required, Check(f"a batch of {n}", other, want)


def run_checks(run: Callable[[tuple], list], checks: list[Check]) -> float:
    """Run an exported file (``run``: forward arguments -> list of outputs) on every
    check; return the max abs difference.

    Raises:
        Mismatch: on the first check the file fails or does not run on (the message
            starts with the check's label).
    """
    worst = 0.0
    for check in checks:
        try:
            got = run(check.args)
        except Exception as exc:  # noqa: BLE001
            raise Mismatch(f"{check.label}: it does not run ({short(exc)})") from exc
        worst = max(worst, compare(got, check.want, check.label))
    return worst


def verify(run: Callable[[tuple], list], checks: list[Check], what: str) -> float:
    """:func:`run_checks`, raising ``UnsupportedModelError("{what} does not reproduce the
    model (reason); nothing was written")`` on a mismatch; ``what`` names the file, e.g.
    ``"export_onnx: the ONNX file of Net"``."""
    try:
        return run_checks(run, checks)
    except Mismatch as exc:
        raise UnsupportedModelError(
            f"{what} does not reproduce the model ({exc}); nothing was written") from exc
