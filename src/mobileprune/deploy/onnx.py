"""ONNX export (``.onnx``), checked with onnxruntime.

``torch.export.export`` then the torch.export-based ONNX exporter
(``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``); the batch axis is
dynamic when the model allows it (``"dynamic_batch"``: the file also reproduces the
model on another batch size), otherwise the example's shape is fixed. Weights are
embedded (no external data file; a model over 2 GB is refused). The file is written
atomically and accepted only when onnxruntime (CPU) reproduces the eager model
(:mod:`mobileprune.deploy.numerics`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobileprune.checkpoint import atomic_write
from mobileprune.deploy.common import (as_args, export_graph, need, prepare_with_reference,
                                       quiet, refuse_script_module, result)
from mobileprune.deploy.numerics import check_inputs, short, verify
from mobileprune.errors import ConfigError, UnsupportedModelError

__all__ = ["export_onnx"]


def _session(ort: Any, tmp: str, fn: str, name: str):
    """A one-thread CPU onnxruntime session on the file ``tmp``."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(tmp, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{fn}: onnxruntime cannot load the ONNX file of {name} ({short(exc)})") from exc


def _to_onnx(work: nn.Module, args: tuple, fn: str, dynamic: bool, opset: int | None,
             names: tuple[list[str], list[str]]):
    """The ONNXProgram of ``work`` (dynamic batch axis when ``dynamic``)."""
    with quiet():
        ep = export_graph(work, args, fn, dynamic)
        try:
            return torch.onnx.export(ep, args, None, dynamo=True, external_data=False,
                                     opset_version=opset, input_names=names[0],
                                     output_names=names[1], verbose=False)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(f"{fn}: the ONNX exporter cannot translate "
                                        f"{type(work).__name__} ({short(exc)})") from exc


def _save(prog, tmp: str, fn: str, name: str, opset: int | None) -> int | None:
    """Write ``prog`` to ``tmp``; returns the file's opset."""
    try:
        with quiet():
            prog.save(tmp, external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{fn}: cannot write the ONNX file of {name} ({short(exc)}; a model over "
            f"2 GB needs external data, which this exporter does not write)") from exc
    try:
        return int(prog.model.opset_imports.get("", opset or 0)) or opset
    except Exception:  # noqa: BLE001
        return opset


def export_onnx(model: nn.Module, example_input: Any, path: str | os.PathLike,
                opset: int | None = None) -> dict:
    """Export ``model`` to ONNX (torch.export-based exporter) and check it with onnxruntime.

    Args:
        model: the model (copied, eval mode).
        example_input: a tensor, or a tuple/list of tensors, batch dimension first. The
            ONNX inputs are named ``input`` (``input_0``, ``input_1``... for several), the
            outputs ``output`` (``output_0``...).
        path: destination, written atomically (one self-contained file).
        opset: ONNX opset version; ``None`` for the exporter's default.

    Returns:
        ``{"path", "bytes", "max_abs_diff", "verified", "format": "onnx", "opset",
        "dynamic_batch", "zero_fraction"}`` (plus ``"note"`` when onnxruntime is missing).

    Raises:
        ExportDependencyError: ``onnxscript`` / ``onnx`` is not installed.
        UnsupportedModelError: ``torch.export`` cannot capture the model (data-dependent
            control flow...), an op has no ONNX translation, or the file does not
            reproduce the model (nothing is written).
        ConfigError: bad ``example_input`` or ``opset``.
    """
    fn = "export_onnx"
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ConfigError(f"{fn}: opset must be an integer >= 7 or None, got {opset!r}")
    args = as_args(example_input, fn)
    refuse_script_module(model, fn)
    need("onnxscript", fn, "the ONNX exporter of torch 2.13 (torch.onnx.export(dynamo=True))")
    need("onnx", fn, "the ONNX exporter")
    work, ref = prepare_with_reference(model, args, fn)
    name = type(model).__name__
    path = Path(path)
    names = (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))],
             ["output"] if len(ref) == 1 else [f"output_{i}" for i in range(len(ref))])
    try:
        ort, ort_error = __import__("onnxruntime"), None
    except Exception as exc:  # noqa: BLE001
        ort, ort_error = None, short(exc)
    required, batch = check_inputs(work, args, ref, other_batch=True)
    state: dict[str, Any] = {}

    def write_one(tmp: str, prog, dynamic: bool) -> None:
        state["opset"], state["diff"], state["dynamic"] = _save(prog, tmp, fn, name, opset), None, dynamic
        if ort is None:
            return
        sess = _session(ort, tmp, fn, name)

        def run(a: tuple) -> list:
            return sess.run(None, {n: t.numpy() for n, t in zip(names[0], a)})

        checks = required + ([batch] if dynamic and batch is not None else [])
        state["diff"] = verify(run, checks, f"{fn}: the ONNX file of {name}")

    def write(tmp: str) -> None:
        try:
            prog = _to_onnx(work, args, fn, True, opset, names)
        except Exception:  # noqa: BLE001  (batch axis not symbolic: fix the example's shape)
            prog = None
        if prog is not None:
            try:
                write_one(tmp, prog, True)
                return
            except UnsupportedModelError:
                pass
        write_one(tmp, _to_onnx(work, args, fn, False, opset, names), False)

    atomic_write(path, write)
    out = result("onnx", path, state["diff"], ort is not None, work, opset=state["opset"],
                 dynamic_batch=state["dynamic"])
    if ort is None:
        out["note"] = f"not verified: onnxruntime is not installed ({ort_error})"
    return out
