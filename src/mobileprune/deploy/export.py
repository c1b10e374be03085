"""Deployment exports: TorchScript lite (``.ptl``), ONNX (``.onnx``), ExecuTorch (``.pte``)
and the native bundle (:func:`export_native`: the sparse model file with the C engine's
sources, for a phone or any C toolchain).

Each exporter traces the model **in eval mode** (on a copy: the caller's model is not
modified), writes the file **atomically** (temporary file in the destination folder, then
``os.replace``: a failed export leaves no partial file and never overwrites an existing
one), and **verifies** the written file by running it in the matching runtime and comparing
with the eager PyTorch outputs, on ``example_input`` and on a seeded random input of the
same shape. The tolerance is ``1e-4 * (1 + max|output|)`` per output (float32), as in
:mod:`mobileprune.surgery.compact`. A file that does not reproduce the model is not written
(:class:`~mobileprune.errors.UnsupportedModelError`).

Every exporter returns a dict::

    {"path": Path, "bytes": int, "max_abs_diff": float | None, "verified": bool,
     "format": "ptl" | "torchscript" | "onnx" | "pte", "dynamic_batch": bool, ...}

``verified`` is ``False`` (and ``max_abs_diff`` ``None``) only when the runtime needed for
the check is not installed (``onnxruntime`` / ``executorch.runtime``); the reason is in
``"note"``.

Pruned models and file size
---------------------------
These formats store every weight tensor **densely**: the zeros that unstructured or
group pruning leaves inside full-size tensors are written like any other value, so a
pruned model's ``.onnx`` / ``.ptl`` / ``.pte`` file is as large as the dense one (and runs
as fast). To get a genuinely smaller and faster file, first remove whole dead units with
:func:`mobileprune.surgery.compact.compact`, which returns a smaller dense model, and export that;
to keep unstructured sparsity, use :func:`mobileprune.deploy.sparse.export_sparse` (CSR
weights, :mod:`mobileprune.runtime`). The result's ``"zero_fraction"`` (share of exactly
zero parameters that the file stores) flags a model that was pruned but not compacted.

Formats (as checked with torch 2.13.0)
--------------------------------------
* :func:`export_torchscript_lite`: ``torch.jit.trace`` (or a ``ScriptModule`` you pass,
  for models with data-dependent control flow, which tracing cannot capture), then
  ``torch.utils.mobile_optimizer.optimize_for_mobile``; the CPU wheels of torch 2.13 are
  built without XNNPACK, where it raises, so the exporter falls back to
  ``torch.jit.freeze`` (inlines the weights, folds Conv+BatchNorm). Saved with
  ``_save_for_lite_interpreter`` (the format the Android ``org.pytorch`` lite runtime
  loads; deprecated in favour of ExecuTorch but still present in torch 2.13) and checked
  with ``torch.jit.mobile._load_for_lite_interpreter``. Should a later torch remove the
  lite interpreter, a plain TorchScript file is written instead (``"format":
  "torchscript"``, loaded with ``torch.jit.load``).
* :func:`export_onnx`: ``torch.export.export`` then the torch.export-based ONNX exporter
  (``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``); the batch axis is
  dynamic when the model allows it (``"dynamic_batch"``), otherwise the example's shape
  is fixed. Weights are embedded (no external data file; a model over 2 GB is refused).
  Checked with ``onnxruntime`` on CPU.
* :func:`export_executorch`: ``torch.export.export`` then
  ``executorch.exir.to_edge_transform_and_lower`` with the ``XnnpackPartitioner``; the
  input shape is fixed to ``example_input``'s. Checked with ``executorch.runtime``.

Install the optional packages with ``pip install -c constraints.txt 'mobileprune[export]'``
(onnx, onnxscript, onnxruntime, executorch). ExecuTorch's native libraries are built
against one torch release: executorch 1.5.1 works with torch 2.13.0 (pinned together in
``constraints.txt``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mobileprune.checkpoint import atomic_write
from mobileprune.graph.trace import flat_tensors as _tensors
from mobileprune.errors import ConfigError, ExportDependencyError, UnsupportedModelError

__all__ = ["export_torchscript_lite", "export_onnx", "export_executorch", "export_native",
           "ExportDependencyError", "FORMATS"]

#: Format name -> (exporter, usual file suffix).
FORMATS: dict[str, tuple[Callable[..., dict], str]] = {}

_MAX_MSG = 600


# --------------------------------------------------------------------------- helpers

def _as_args(example_input: Any, fn: str) -> tuple[Tensor, ...]:
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


def _prepare(model: Any, fn: str) -> nn.Module:
    """An eval-mode CPU copy of ``model`` (a ScriptModule is used as it is, in eval mode)."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"{fn}: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        return model.eval()
    try:
        work = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{fn}: cannot copy {type(model).__name__} ({type(exc).__name__}: {exc})") from exc
    return work.cpu().eval()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > _MAX_MSG:
        text = text[:_MAX_MSG] + " ..."
    return f"{type(exc).__name__}: {text}"


def _random_like(args: tuple[Tensor, ...], batch: int | None = None, seed: int = 1234) -> tuple:
    g = torch.Generator().manual_seed(seed)
    out = []
    for a in args:
        shape = tuple(a.shape) if batch is None else (batch, *a.shape[1:])
        if a.is_floating_point():
            out.append(torch.randn(shape, generator=g, dtype=a.dtype))
        elif batch is None:
            out.append(a.clone())
        else:  # integer inputs (ids, ...): repeat the example's rows
            idx = torch.arange(batch) % a.shape[0]
            out.append(a[idx].clone())
    return tuple(out)


def _tol(ref: Tensor) -> float:
    scale = 1.0 + (float(ref.abs().max()) if ref.numel() else 0.0)
    if ref.dtype == torch.float64:
        return 1e-8 * scale
    if ref.dtype in (torch.float16, torch.bfloat16):
        return 1e-2 * scale
    return 1e-4 * scale


def _compare(got: list, want: list[Tensor], what: str) -> float:
    """Max abs difference of ``got`` (tensors or arrays) vs ``want``; raises on mismatch."""
    if len(got) != len(want):
        raise _Mismatch(f"{what}: {len(got)} outputs, the model has {len(want)}")
    worst = 0.0
    for g, w in zip(got, want):
        g = torch.as_tensor(g).detach().cpu()
        if tuple(g.shape) != tuple(w.shape):
            raise _Mismatch(f"{what}: output shape {tuple(g.shape)} != {tuple(w.shape)}")
        if not w.numel():
            continue
        if w.is_floating_point():
            diff = float((g.to(w.dtype) - w).abs().max())
            if not diff <= _tol(w):  # also catches nan
                raise _Mismatch(f"{what}: max abs difference {diff:.3g} > {_tol(w):.3g}")
        else:
            diff = 0.0 if torch.equal(g.to(w.dtype), w) else math.inf
            if diff:
                raise _Mismatch(f"{what}: integer outputs differ")
        worst = max(worst, diff)
    return worst


class _Mismatch(Exception):
    pass


def _reference(model: nn.Module, args: tuple) -> list[Tensor]:
    with torch.no_grad():
        return [t.detach() for t in _tensors(model(*args))]


def _prepare_with_reference(model: Any, args: tuple, fn: str) -> tuple[nn.Module, list[Tensor]]:
    """:func:`_prepare` plus the eager outputs on ``args`` (the reference every export
    is checked against)."""
    work = _prepare(model, fn)
    try:
        return work, _reference(work, args)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{fn}: example_input does not run through {type(model).__name__} ({_short(exc)})") from exc


def _zero_fraction(model: nn.Module) -> float:
    total = zeros = 0
    for p in model.parameters():
        total += p.numel()
        zeros += int((p == 0).sum())
    return zeros / total if total else 0.0


@contextlib.contextmanager
def _quiet():
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


def _result(fmt: str, path: Path, diff: float | None, verified: bool, model: nn.Module,
            **extra: Any) -> dict:
    out = {"path": path, "bytes": path.stat().st_size, "max_abs_diff": diff,
           "verified": verified, "format": fmt, "zero_fraction": _zero_fraction(model)}
    out.update(extra)
    return out


def _verify(run: Callable[[tuple], list], name: str, fmt: str, checks: list[tuple[str, tuple, list]]
            ) -> float:
    """Run the exported file on every (label, args, reference) and return the max diff."""
    worst = 0.0
    for label, args, ref in checks:
        try:
            got = run(args)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"the exported {fmt} file of {name} does not run on {label} ({_short(exc)})"
            ) from exc
        try:
            worst = max(worst, _compare(got, ref, label))
        except _Mismatch as exc:
            raise UnsupportedModelError(
                f"the exported {fmt} file of {name} does not reproduce the model ({exc}); "
                f"the model probably has data-dependent control flow or Python-side state "
                f"that the exporter froze") from exc
    return worst


def _batch_ok(run: Callable[[tuple], list], args: tuple, ref: list[Tensor]) -> bool:
    try:
        _compare(run(args), ref, "other batch size")
        return True
    except Exception:  # noqa: BLE001
        return False


def _export_graph(work: nn.Module, args: tuple, fn: str, dynamic: bool):
    """``torch.export.export`` with a dynamic batch axis when asked; raises on failure."""
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
            f"{fn}: torch.export cannot capture {name} ({_short(exc)}); exports need a model "
            f"without data-dependent control flow (use torch.cond, or rewrite the branch "
            f"with tensor ops such as torch.where)") from exc


# --------------------------------------------------------------------------- TorchScript lite

def _has_lite() -> bool:
    if not hasattr(torch.jit.ScriptModule, "_save_for_lite_interpreter"):
        return False
    try:
        import torch.jit.mobile as mobile
    except ImportError:
        return False
    return hasattr(mobile, "_load_for_lite_interpreter")


def export_torchscript_lite(model: nn.Module, example_input: Any, path: str | os.PathLike) -> dict:
    """Export ``model`` for the PyTorch lite interpreter (``.ptl``) and check it.

    Args:
        model: the model (copied, eval mode). A :class:`torch.jit.ScriptModule` is
            exported as it is (script a model with data-dependent control flow yourself:
            ``torch.jit.script(model)``); any other module is traced with
            ``example_input``.
        example_input: a tensor, or a tuple/list of tensors, batch dimension first.
        path: destination, written atomically.

    Returns:
        ``{"path", "bytes", "max_abs_diff", "verified", "format", "dynamic_batch",
        "optimization", "zero_fraction"}``; ``"format"`` is ``"ptl"`` (or
        ``"torchscript"`` if this torch has no lite interpreter), ``"optimization"`` is
        ``"optimize_for_mobile"``, ``"freeze"`` or ``"none"``.

    Raises:
        UnsupportedModelError: tracing fails, the model branches on tensor values while
            being traced, or the saved file does not reproduce the model.
        ConfigError: bad ``example_input``.
    """
    fn = "export_torchscript_lite"
    args = _as_args(example_input, fn)
    work, ref = _prepare_with_reference(model, args, fn)
    name = type(model).__name__
    path = Path(path)

    with _quiet():
        if isinstance(work, torch.jit.ScriptModule):
            scripted = work
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", torch.jit.TracerWarning)
                try:
                    scripted = torch.jit.trace(work, args, check_trace=False)
                except Exception as exc:  # noqa: BLE001
                    raise UnsupportedModelError(
                        f"{fn}: torch.jit.trace cannot trace {name} ({_short(exc)})") from exc
            for w in caught:
                if issubclass(w.category, torch.jit.TracerWarning) and "Python boolean" in str(w.message):
                    raise UnsupportedModelError(
                        f"{fn}: {name} has data-dependent control flow (an `if` on a tensor "
                        f"value), which tracing freezes to one branch; pass "
                        f"torch.jit.script(model) instead, or rewrite the branch with tensor "
                        f"ops (torch.where)")
        optimized, how = None, "none"
        try:
            from torch.utils.mobile_optimizer import optimize_for_mobile

            optimized, how = optimize_for_mobile(scripted), "optimize_for_mobile"
        except Exception:  # noqa: BLE001  (CPU wheels of torch 2.13 lack XNNPACK: it raises)
            try:
                optimized, how = torch.jit.freeze(scripted), "freeze"
            except Exception:  # noqa: BLE001
                optimized, how = scripted, "none"

    lite = _has_lite()
    fmt = "ptl" if lite else "torchscript"
    rnd = _random_like(args)
    other = _random_like(args, batch=args[0].shape[0] + 2, seed=4321)
    state: dict[str, Any] = {}

    def load(tmp: str):
        with _quiet():
            if lite:
                from torch.jit.mobile import _load_for_lite_interpreter

                return _load_for_lite_interpreter(tmp)
            return torch.jit.load(tmp)

    def write(tmp: str) -> None:
        with _quiet():
            try:
                if lite:
                    optimized._save_for_lite_interpreter(tmp)
                else:
                    torch.jit.save(optimized, tmp)
            except Exception as exc:  # noqa: BLE001
                raise UnsupportedModelError(
                    f"{fn}: cannot save {name} as {fmt} ({_short(exc)})") from exc
        loaded = load(tmp)

        def run(a: tuple) -> list:
            with torch.no_grad():
                return _tensors(loaded(*a))

        state["diff"] = _verify(run, name, fmt, [("example_input", args, ref),
                                                 ("a random input", rnd, _reference(work, rnd))])
        state["dynamic"] = _batch_ok(run, other, _reference(work, other))

    atomic_write(path, write)
    return _result(fmt, path, state["diff"], True, work, dynamic_batch=state["dynamic"],
                   optimization=how)


# --------------------------------------------------------------------------- ONNX

def _need(module: str, fn: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001  (ImportError, or a broken native library)
        raise ExportDependencyError(
            f"{fn}: {what} needs the package {module.split('.')[0]!r}, which is not installed "
            f"or does not import ({_short(exc)}); install it with "
            f"pip install -c constraints.txt 'mobileprune[export]'") from exc


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
            reproduce the model.
        ConfigError: bad ``example_input`` or ``opset``.
    """
    fn = "export_onnx"
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ConfigError(f"{fn}: opset must be an integer >= 7 or None, got {opset!r}")
    args = _as_args(example_input, fn)
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(f"{fn}: pass the nn.Module, not a ScriptModule "
                                    f"(the ONNX exporter works from torch.export)")
    _need("onnxscript", fn, "the ONNX exporter of torch 2.13 (torch.onnx.export(dynamo=True))")
    _need("onnx", fn, "the ONNX exporter")
    work, ref = _prepare_with_reference(model, args, fn)
    name = type(model).__name__
    path = Path(path)

    n_in, n_out = len(args), len(ref)
    in_names = ["input"] if n_in == 1 else [f"input_{i}" for i in range(n_in)]
    out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    try:
        ort = __import__("onnxruntime")
    except Exception as exc:  # noqa: BLE001
        ort, ort_error = None, _short(exc)
    rnd = _random_like(args)
    other = _random_like(args, batch=args[0].shape[0] + 2, seed=4321)
    state: dict[str, Any] = {}

    def to_onnx(dynamic: bool):
        with _quiet():
            ep = _export_graph(work, args, fn, dynamic)
            try:
                return torch.onnx.export(ep, args, None, dynamo=True, external_data=False,
                                         opset_version=opset, input_names=in_names,
                                         output_names=out_names, verbose=False)
            except Exception as exc:  # noqa: BLE001
                raise UnsupportedModelError(
                    f"{fn}: the ONNX exporter cannot translate {name} ({_short(exc)})") from exc

    def session(tmp: str):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(tmp, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"{fn}: onnxruntime cannot load the ONNX file of {name} ({_short(exc)})") from exc

    def write_one(tmp: str, prog, dynamic: bool) -> None:
        try:
            with _quiet():
                prog.save(tmp, external_data=False)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"{fn}: cannot write the ONNX file of {name} ({_short(exc)}; a model over "
                f"2 GB needs external data, which this exporter does not write)") from exc
        try:
            state["opset"] = int(prog.model.opset_imports.get("", opset or 0)) or opset
        except Exception:  # noqa: BLE001
            state["opset"] = opset
        state["diff"], state["dynamic"] = None, dynamic
        if ort is None:
            return
        sess = session(tmp)

        def run(a: tuple) -> list:
            return sess.run(None, {n: t.numpy() for n, t in zip(in_names, a)})

        checks = [("example_input", args, ref), ("a random input", rnd, _reference(work, rnd))]
        if dynamic:
            checks.append(("a batch of another size", other, _reference(work, other)))
        state["diff"] = _verify(run, name, "ONNX", checks)

    def write(tmp: str) -> None:
        try:
            prog = to_onnx(True)
        except Exception:  # noqa: BLE001  (batch axis not symbolic: fix the example's shape)
            prog = None
        if prog is not None:
            try:
                write_one(tmp, prog, True)
                return
            except UnsupportedModelError:
                pass
        write_one(tmp, to_onnx(False), False)

    atomic_write(path, write)
    out = _result("onnx", path, state["diff"], ort is not None, work, opset=state["opset"],
                  dynamic_batch=state["dynamic"])
    if ort is None:
        out["note"] = f"not verified: onnxruntime is not installed ({ort_error})"
    return out


# --------------------------------------------------------------------------- ExecuTorch

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
            f"{fn}: {why} ({_short(exc)}); install it with "
            f"pip install -c constraints.txt 'mobileprune[export]'") from exc
    return to_edge_transform_and_lower, XnnpackPartitioner


def export_executorch(model: nn.Module, example_input: Any, path: str | os.PathLike) -> dict:
    """Export ``model`` to an ExecuTorch program (``.pte``, XNNPACK delegate) and check it.

    Args:
        model: the model (copied, eval mode).
        example_input: a tensor, or a tuple/list of tensors; the program's input shapes
            are fixed to these (batch included).
        path: destination, written atomically.

    Returns:
        ``{"path", "bytes", "max_abs_diff", "verified", "format": "pte",
        "dynamic_batch": False, "zero_fraction"}`` (plus ``"note"`` when the ExecuTorch
        runtime cannot be loaded).

    Raises:
        ExportDependencyError: executorch is not installed, or does not work with the
            installed torch.
        UnsupportedModelError: ``torch.export`` cannot capture the model, lowering fails,
            or the program does not reproduce the model.
        ConfigError: bad ``example_input``.
    """
    fn = "export_executorch"
    args = _as_args(example_input, fn)
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(f"{fn}: pass the nn.Module, not a ScriptModule "
                                    f"(ExecuTorch works from torch.export)")
    with _quiet():
        to_edge_transform_and_lower, XnnpackPartitioner = _executorch_modules(fn)
    work, ref = _prepare_with_reference(model, args, fn)
    name = type(model).__name__
    path = Path(path)

    with _quiet():
        ep = _export_graph(work, args, fn, dynamic=False)
        try:
            buffer = to_edge_transform_and_lower(
                ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"{fn}: ExecuTorch cannot lower {name} ({_short(exc)})") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning of the python runtime
            from executorch.runtime import Runtime
        runtime, rt_error = Runtime.get(), None
    except Exception as exc:  # noqa: BLE001
        runtime, rt_error = None, _short(exc)
    rnd = _random_like(args)
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
                f"({_short(exc)})") from exc

        def run(a: tuple) -> list:
            return list(method.execute(list(a)))

        state["diff"] = _verify(run, name, "ExecuTorch", [
            ("example_input", args, ref), ("a random input", rnd, _reference(work, rnd))])

    atomic_write(path, write)
    out = _result("pte", path, state["diff"], runtime is not None, work, dynamic_batch=False)
    if runtime is None:
        out["note"] = f"not verified: executorch.runtime cannot be loaded ({rt_error})"
    return out


# --------------------------------------------------------------------------- native bundle

#: first line of a bundle's README.txt: how export_native recognises a previous bundle
BUNDLE_MARK = "mobileprune native bundle"
#: what a bundle holds besides the C sources
BUNDLE_FILES = ("model.mps", "input.bin", "expected.bin", "README.txt")
_NATIVE_PARTS = ("include", "src", "examples", "CMakeLists.txt")

_README = """{mark}: {arch}

model.mps      the model (mobileprune model file, format version 3; docs/native_format.md)
include/       the engine's public C API: mobileprune.h (usage example at its top)
src/           the engine's C sources (C11, no dependency but libm and pthreads)
CMakeLists.txt builds the static library libmobileprune and the example mobileprune_run
examples/      mobileprune_run.c: runs a model file on raw float32 data
input.bin      an example input: raw little-endian float32, C order, {inputs}
expected.bin   PyTorch's output for it, the same way: {outputs}

Build and run on this machine (needs cmake and a C compiler; no Python, no torch):

    cmake -S . -B build && cmake --build build
    ./build/mobileprune_run model.mps input.bin output.bin --batch {batch}

output.bin then matches expected.bin to float32 rounding (within 1e-4 of the largest
output). Several inputs or outputs are stored one after the other, in order.

Linux arm64 (cross-compiled, run under qemu):

    cmake -S . -B build-arm64 -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \\
        -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc && cmake --build build-arm64
    qemu-aarch64 -L /usr/aarch64-linux-gnu ./build-arm64/mobileprune_run model.mps input.bin \\
        output.bin --batch {batch}

Android (NDK): add -DCMAKE_TOOLCHAIN_FILE=$ANDROID_NDK/build/cmake/android.toolchain.cmake
-DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-24 to the first cmake command and link
libmobileprune.a into your JNI library (mp_model_load_file / mp_plan_create / mp_plan_run).
"""


def _native_dir() -> Path:
    from mobileprune import runtime
    return Path(runtime.__file__).resolve().parent / "native"


def _is_bundle(d: Path) -> bool:
    readme = d / "README.txt"
    try:
        return readme.is_file() and readme.read_text(errors="replace").startswith(BUNDLE_MARK)
    except OSError:
        return False


def _bundle_target(out_dir: str | os.PathLike, fn: str) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{fn}: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_bundle(out):
        raise ConfigError(f"{fn}: {out} is a non-empty directory that is not a previous bundle "
                          f"(no README.txt starting with {BUNDLE_MARK!r}); choose another --out")
    return out


def _copy_native(dst: Path) -> list[str]:
    """Copy the engine's sources (include/, src/, examples/, CMakeLists.txt) into ``dst``."""
    import shutil

    src = _native_dir()
    if not (src / "include" / "mobileprune.h").is_file():
        raise ExportDependencyError(f"export_native: the engine's sources are missing from {src}")
    keep = (".c", ".h", ".inc", ".txt", ".md", ".cmake")
    copied = []
    for part in _NATIVE_PARTS:
        p = src / part
        if p.is_file():
            shutil.copy2(p, dst / part)
            copied.append(part)
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and (f.suffix in keep or f.name == "CMakeLists.txt"):
                    rel = f.relative_to(src)
                    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dst / rel)
                    copied.append(rel.as_posix())
    return copied


def _float32_bytes(tensors) -> bytes:
    import numpy as np

    return b"".join(np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4").tobytes()
                    for t in tensors)


def _check_bundle_model(path: Path, args: tuple, ref: list[Tensor], name: str) -> tuple:
    """Run ``model.mps`` in the Python runtime (the same engine): ``(max diff, verified,
    note)``; not verified when the engine is not built here."""
    from mobileprune import runtime

    try:
        sm = runtime.load(path)
    except runtime.NativeError as exc:
        return None, False, f"not verified: {exc}"
    got = sm(*[a.numpy() for a in args])
    got = list(got) if isinstance(got, tuple) else [got]
    try:
        return _compare(got, ref, "example_input"), True, None
    except _Mismatch as exc:
        raise UnsupportedModelError(f"export_native: the model file of {name} does not "
                                    f"reproduce the model ({exc})") from exc


def export_native(model: nn.Module, example_input: Any, out_dir: str | os.PathLike, *,
                  value_dtype: str = "float32", fold_bn: bool = True) -> dict:
    """Write a self-contained native bundle of ``model`` to the directory ``out_dir``.

    The bundle (no Python or torch needed to use it): ``model.mps`` (the sparse model
    file, :func:`mobileprune.deploy.sparse.export_sparse`), the engine's public header
    (``include/mobileprune.h``) and C sources (``src/``), ``CMakeLists.txt`` (a static
    library and the example program ``mobileprune_run``, ``examples/``), ``input.bin`` /
    ``expected.bin`` (``example_input`` and the model's output on it, raw little-endian
    float32, several inputs / outputs one after the other) and ``README.txt`` with the
    build and run commands (host, Linux arm64, Android).

    ``out_dir`` must not exist, be empty, or hold a previous bundle, which is replaced
    atomically (the new bundle is written to a temporary directory beside it, then
    renamed). The model file is checked against the model in the Python runtime
    (``"verified"``; ``False`` with a ``"note"`` when the engine is not built here).

    Returns ``{"path", "format": "native", "files", "bytes" (of model.mps),
    "max_abs_diff", "verified", "zero_fraction", "size_report"}``.

    Raises:
        ConfigError: bad ``example_input`` or ``out_dir``.
        UnsupportedModelError: the model has an op the runtime cannot run, or its file does
            not reproduce it.
    """
    import shutil
    import tempfile

    from mobileprune.deploy.sparse import export_sparse

    fn = "export_native"
    args = _as_args(example_input, fn)
    if not all(a.is_floating_point() for a in args):
        raise ConfigError(f"{fn}: every example input must be a floating point tensor (the "
                          f"engine runs float32)")
    out = _bundle_target(out_dir, fn)
    work, ref = _prepare_with_reference(model, args, fn)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        rep = export_sparse(work, args if len(args) > 1 else args[0], tmp / "model.mps",
                            value_dtype=value_dtype, fold_bn=fold_bn)
        diff, verified, note = _check_bundle_model(tmp / "model.mps", args, ref, type(model).__name__)
        files = _copy_native(tmp)
        (tmp / "input.bin").write_bytes(_float32_bytes(args))
        (tmp / "expected.bin").write_bytes(_float32_bytes(ref))
        shapes = lambda ts: ", ".join(str(tuple(t.shape)) for t in ts)  # noqa: E731
        (tmp / "README.txt").write_text(_README.format(
            mark=BUNDLE_MARK, arch=rep.get("architecture"), inputs=shapes(args),
            outputs=shapes(ref), batch=int(args[0].shape[0])))
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res = {"path": out, "format": "native", "files": sorted(list(BUNDLE_FILES) + files),
           "bytes": (out / "model.mps").stat().st_size, "max_abs_diff": diff,
           "verified": verified, "zero_fraction": _zero_fraction(work), "size_report": rep}
    if note:
        res["note"] = note
    return res


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


FORMATS.update({"ptl": (export_torchscript_lite, ".ptl"), "onnx": (export_onnx, ".onnx"),
                "pte": (export_executorch, ".pte"), "native": (export_native, "")})
