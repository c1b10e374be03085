"""One-run deployment benchmark: every backend, batch size and thread count, side by side.

:func:`benchmark_model` builds, in one process and one run, every way this project can
deploy a pruned model, checks that each one computes the same outputs as PyTorch, times
them **interleaved** (:func:`mobileprune.measure.latency.compare_latency`: warm-up, then
``repeats`` rounds in which every backend runs once, in rotating order, so a burst of
load on a shared machine hits all backends alike) and writes ``bench.json``,
``bench.md`` and ``bench.png`` into ``out_dir``. :func:`bench_checkpoint` does the same
from mobileprune checkpoints.

Backends (``formats`` selects the families; ``"torch"`` is always measured, it is the
reference)
-------------------------------------------------------------------------------------------
========================  ===============================================================
``torch_dense``           the unpruned ``dense_model`` in eager PyTorch (only when given)
``torch_pruned``          the pruned model as given (zeros inside full-size tensors)
``torch_compacted``       :func:`mobileprune.surgery.compact.compact` of the pruned model
                          (``"compacted"``)
``sparse_runtime``        :func:`mobileprune.deploy.sparse.export_sparse` of the pruned
                          model, run by :func:`mobileprune.runtime.load` (``"sparse"``)
``onnx_dense``            ONNX Runtime (CPU provider) on the ONNX export of the dense model
``onnx_compacted``        ... of the compacted model (``"onnx"``)
``pte_dense``             ExecuTorch (XNNPACK delegate) on the ``.pte`` of the dense model
``pte_compacted``         ... of the compacted model (``"pte"``)
========================  ===============================================================

Without ``dense_model`` there is no separate dense model: the pruned model, which has the
dense architecture and whose zeros are stored and multiplied like any other value by
dense kernels and dense file formats, *is* the dense baseline: ``torch_pruned`` is then
"dense torch", and ``onnx_dense`` / ``pte_dense`` are exports of the pruned model
(``result["dense_reference"] == "pruned_model"``).

Threads
-------
* torch: ``torch.set_num_threads(t)`` during the timing (restored afterwards).
* ONNX Runtime: one ``InferenceSession`` per thread count, ``intra_op_num_threads = t``,
  ``inter_op_num_threads = 1``, sequential execution, and **spin-waiting disabled**
  (``session.intra_op.allow_spinning = 0``) so that idle ORT worker threads do not steal
  the CPU from the backend timed next in the interleaved rounds.
* ExecuTorch: the global XNNPACK thread pool is resized with
  ``executorch.extension.pybindings.portable_lib._unsafe_reset_threadpool(t)`` before each
  thread count (restored at the end). The XNNPACK delegate binds the pool when a method
  is loaded and a resize frees the old pool, so every loaded method is released before a
  resize and reloaded after it (settings are timed thread count by thread count); if the
  function is missing the pool is left as it is and ``"threading"`` says so.
* sparse runtime: the native engine (C) runs each call on ``t`` threads
  (``SparseModel.threads``; a plan per thread count and batch size).

Batch sizes and ExecuTorch
--------------------------
An ONNX file is exported once with a dynamic batch axis (per batch size if the model
does not allow one). A ``.pte`` program has its input shape fixed at export, so it is
exported **once per batch size** (``dense_b8.pte``...); ``pte_batch_sizes`` restricts
that (e.g. ``(1,)``: lowering costs a few seconds per file), and the ``pte_*`` backends
then have no entry at the other batch sizes (noted in ``"notes"``). The fastest-dense
baseline at a setting is the minimum over the dense backends measured *at that
setting*.

Inputs and output check
-----------------------
For each batch size ``b`` one seeded ``torch.randn(b, *example_input.shape[1:])`` input
is used by every backend (as a torch tensor for torch / ExecuTorch, as the same float32
values in a numpy array for ONNX Runtime and the sparse runtime; the conversion is done
once, outside the timing; :func:`bench_inputs` returns them). A model with several
inputs (``forward(a, b, ...)``) takes a tuple/list of example tensors with one batch
size; per batch size there is then one seeded ``torch.randn(b, *shape_i)`` per input
(drawn batch size by batch size, input by input, from one generator: with one input the
values are those of the single-input case), and every backend gets all of them:
``model(*xs)`` in torch, ``sm(*arrays)`` in the sparse runtime, one feed per ONNX
session input (in the session's input order, which is the ``forward`` order), all of
them for ExecuTorch. Before timing, every backend's output is compared with its
PyTorch reference (``torch_dense`` for the dense exports, ``torch_pruned`` for the
compacted and sparse ones): ``max_abs_diff`` over all batch sizes, tolerance ``1e-4 * (1 +
max|reference|)`` as in :mod:`mobileprune.deploy.export`; a mismatch is recorded
(``outputs_match: false`` plus a note), not raised.

Result (``bench.json``)
-----------------------
::

    {"title", "created", "model", "input_shape" (per sample; None with several inputs),
     "input_shapes" (only with several inputs: one per-sample shape per input),
     "batch_sizes", "threads",
     "repeats", "warmup", "inner", "seed", "dense_reference": "dense_model"|"pruned_model",
     "dense_torch": "torch_dense"|"torch_pruned", "dense_backends": [...],
     "settings": [{"key": "b1_t1", "batch": 1, "threads": 1}, ...],
     "backends": {name: {"kind": "torch"|"sparse"|"onnx"|"pte", "model": "dense"|"pruned"|
                         "compacted", "dense_baseline": bool, "threading": str,
                         "files": [...], "reference": name, "max_abs_diff": float,
                         "tolerance": float, "outputs_match": bool, "build_seconds": float,
                         "latency": {"b1_t1": {"batch", "threads", "median_ms", "p10_ms",
                                               "p90_ms", "runs", "speedup_vs_dense_torch",
                                               "speedup_vs_fastest_dense"}, ...}}},
     "fastest_dense": {"b1_t1": {"backend": name, "median_ms": float}, ...},
     "sizes": {"dense_state"|"compacted_state"|"sparse"|"onnx_dense"|"onnx_compacted"|
               "pte_dense"|"pte_compacted": {"path", "bytes", "vs_dense_state"}},
     "model_stats": {...}, "skipped": {name: reason}, "notes": [...],
     "environment": {...}, "files": {"json", "md", "png"}, "meta": {...}}

``speedup_vs_dense_torch = median(dense torch) / median(backend)`` and
``speedup_vs_fastest_dense = median(fastest dense) / median(backend)``, all medians
from the same interleaved run (same batch size and thread count). A backend that cannot
be built (package missing, export failure) is listed in ``"skipped"`` with the reason;
the benchmark never fails because of one backend. ``bench.png`` (matplotlib, Agg canvas,
no pyplot state) shows the median latency of each backend, one bar per setting (batch 1 /
1 thread first), log scale, p10-p90 error bars; without matplotlib it is not written
(noted). All files are written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import importlib
import io
import json
import math
import operator
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mobileprune.checkpoint import atomic_write, atomic_write_text
from mobileprune.errors import ConfigError, ExportDependencyError
from mobileprune.measure.latency import compare_latency, speedup

__all__ = ["benchmark_model", "bench_checkpoint", "bench_inputs", "FORMAT_NAMES",
           "format_markdown"]

#: The backend families ``formats`` can name.
FORMAT_NAMES = ("torch", "compacted", "sparse", "onnx", "pte")

_BACKEND_ORDER = ("torch_dense", "torch_pruned", "torch_compacted", "sparse_runtime",
                  "onnx_dense", "onnx_compacted", "pte_dense", "pte_compacted")


# --------------------------------------------------------------------------- helpers

def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit] + " ..."
    return f"{type(exc).__name__}: {text}"


def _import(name: str) -> Any:
    """Import an optional package (``None`` in ``sys.modules`` makes it fail, as in tests)."""
    return importlib.import_module(name)


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def _outputs(obj: Any) -> list[np.ndarray]:
    """Flatten a model output (tensor / array / tuple / list / dict) to float arrays."""
    if isinstance(obj, Tensor):
        return [obj.detach().cpu().numpy()]
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [a for o in obj for a in _outputs(o)]
    if isinstance(obj, dict):
        return [a for k in sorted(obj, key=str) for a in _outputs(obj[k])]
    return [np.asarray(obj)]


def _diff(got: list[np.ndarray], want: list[np.ndarray]) -> tuple[float, float]:
    """(max abs difference, tolerance 1e-4 * (1 + max|want|)); inf on a shape mismatch."""
    if len(got) != len(want):
        return math.inf, 0.0
    worst, tol = 0.0, math.inf
    for g, w in zip(got, want):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if g.shape != w.shape:
            return math.inf, 0.0
        if not w.size:
            continue
        d = float(np.max(np.abs(g - w)))
        worst = max(worst, d if d == d else math.inf)  # nan -> inf
        tol = min(tol, 1e-4 * (1.0 + float(np.max(np.abs(w)))))
    return worst, (tol if tol != math.inf else 1e-4)


def _n_params(model: nn.Module) -> tuple[int, int]:
    total = nz = 0
    for p in model.parameters():
        total += p.numel()
        nz += int(torch.count_nonzero(p))
    return total, nz


def _float32_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).clone()
            for k, v in model.state_dict().items()}


def _save_state(model: nn.Module, path: Path) -> int:
    state = _float32_state(model)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path.stat().st_size


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, (str, int, float, bool)) or o is None:
        return o
    return str(o)


def _check_ints(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    try:
        vals = tuple(values)
    except TypeError:
        raise ConfigError(f"{name} must be a sequence of positive integers, got {values!r}") from None
    if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise ConfigError(f"{name} must be a non-empty sequence of positive integers, got {values!r}")
    return tuple(dict.fromkeys(vals))


def _key(b: int, t: int) -> str:
    return f"b{b}_t{t}"


def _one_or_tuple(xs: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    """The tensor of a single-input model, the tuple otherwise (what the exports take)."""
    return xs[0] if len(xs) == 1 else xs


def _as_inputs(example_input: Any) -> tuple[Tensor, ...]:
    """``example_input`` as a non-empty tuple of float tensors with the same batch size.

    One tensor gives a 1-tuple; a tuple/list gives one tensor per positional input of
    ``forward``. Raises :class:`ConfigError` naming the problem.
    """
    if isinstance(example_input, Tensor):
        xs: tuple = (example_input,)
    elif isinstance(example_input, (tuple, list)):
        if not example_input:
            raise ConfigError("example_input must be one float tensor (N, ...) or a non-empty "
                              "tuple/list of them (one per model input); got an empty "
                              f"{type(example_input).__name__}")
        xs = tuple(example_input)
    else:
        raise ConfigError(f"example_input must be one float tensor (N, ...) or a tuple/list of "
                          f"them (one per model input), got {type(example_input).__name__}")
    several = len(xs) > 1 or not isinstance(example_input, Tensor)
    for i, x in enumerate(xs):
        what = f"example_input[{i}]" if several else "example_input"
        if not isinstance(x, Tensor):
            raise ConfigError(f"{what} must be a float tensor (N, ...), got {type(x).__name__}")
        if x.dim() < 1 or x.shape[0] < 1:
            raise ConfigError(f"{what} must have a batch dimension N >= 1, got shape "
                              f"{tuple(x.shape)}")
        if not x.is_floating_point():
            raise ConfigError(f"{what} must be a float tensor, got dtype {x.dtype}")
    batches = [int(x.shape[0]) for x in xs]
    if len(set(batches)) > 1:
        raise ConfigError(f"the example_input tensors must all have the same batch size, got "
                          f"{batches} (shapes {[tuple(x.shape) for x in xs]})")
    return xs


def _is_int(v: Any) -> bool:
    """An integer (int, numpy integer, ...), not a bool."""
    if isinstance(v, (bool, np.bool_)):
        return False
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def _shape_list(shape: Any, what: str) -> tuple[int, ...]:
    """One per-sample shape as a tuple of positive ints (ConfigError otherwise)."""
    if isinstance(shape, (str, bytes)):
        raise ConfigError(f"{what} must be a sequence of integers, got {shape!r}")
    try:
        vals = tuple(shape)
    except TypeError:
        raise ConfigError(f"{what} must be a sequence of integers, got {shape!r}") from None
    if not all(_is_int(v) for v in vals):
        raise ConfigError(f"{what} must be a sequence of integers, got {shape!r}")
    vals = tuple(operator.index(v) for v in vals)
    if not vals or any(v < 1 for v in vals):
        raise ConfigError(f"{what} must hold positive integers, got {shape!r}")
    return vals


def _input_shapes(shape: Any) -> list[tuple[int, ...]]:
    """One per-sample shape (``(1, 28, 28)``) or a list of them (one per model input,
    ``[[3, 32, 32], [625]]``) as a list of shapes. Raises :class:`ConfigError`."""
    if isinstance(shape, (str, bytes)):
        raise ConfigError(f"input_shape must be a sequence of integers or a list of such "
                          f"sequences, got {shape!r}")
    try:
        items = list(shape)
    except TypeError:
        raise ConfigError(f"input_shape must be a sequence of integers or a list of such "
                          f"sequences, got {shape!r}") from None
    if not items:
        raise ConfigError(f"input_shape must not be empty, got {shape!r}")
    nested = [not _is_int(v) for v in items]
    if not any(nested):
        return [_shape_list(items, "input_shape")]
    if not all(nested):
        raise ConfigError(f"input_shape mixes integers and shapes: give one shape (e.g. "
                          f"[1, 28, 28]) or a list of shapes (e.g. [[3, 32, 32], [625]]), got "
                          f"{shape!r}")
    return [_shape_list(v, f"input_shape[{i}]") for i, v in enumerate(items)]


class _Backend:
    """One deployed form of the model: how to call it at (batch, threads) and its output."""

    def __init__(self, name: str, kind: str, model: str, dense_baseline: bool, reference: str,
                 threading: str) -> None:
        self.name, self.kind, self.model = name, kind, model
        self.dense_baseline, self.reference, self.threading = dense_baseline, reference, threading
        self.files: list[str] = []
        self.build_seconds = 0.0
        self.batches: set[int] | None = None  # None: every batch size
        # call(b, t) -> a callable for compare_latency (a module, or fn(example) ignoring it)
        self.call: Callable[[int, int], Any] = lambda b, t: None
        self.run: Callable[[int], Any] = lambda b: None  # output at batch b
        self.info: dict[str, Any] = {}
        # drop loaded state bound to a thread pool (ExecuTorch methods)
        self.release: Callable[[], None] = lambda: None

    def has(self, b: int) -> bool:
        return self.batches is None or b in self.batches


@dataclasses.dataclass
class _Bench:
    """What the stages of :func:`benchmark_model` share: the models (copies), the inputs,
    the output folder, and what the stages found (backends, file sizes, skips, notes)."""

    out: Path
    pruned: nn.Module
    dense: nn.Module | None
    example: Tensor | tuple[Tensor, ...]  # what exports / compaction trace with (batch 1)
    inputs: dict[int, tuple[Tensor, ...]]  # per batch size, one tensor per model input
    batch_sizes: tuple[int, ...]
    fmts: set[str]
    refs: dict[str, dict[int, list[np.ndarray]]] = dataclasses.field(default_factory=dict)
    backends: dict[str, _Backend] = dataclasses.field(default_factory=dict)
    sizes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    compacted: nn.Module | None = None

    def __post_init__(self) -> None:
        # the same values as ``inputs``, sharing their memory
        self.inputs_np = {b: tuple(x.numpy() for x in xs) for b, xs in self.inputs.items()}

    @property
    def dense_torch(self) -> str:
        """The torch backend that is "dense torch": the dense model's, else the pruned one's."""
        return "torch_dense" if self.dense is not None else "torch_pruned"

    @property
    def dense_src(self) -> nn.Module:
        """What the dense exports (onnx_dense, pte_dense) are made from."""
        return self.dense if self.dense is not None else self.pruned

    def skip(self, name: str, why: str, note: str | None = None) -> None:
        self.skipped[name] = why
        if note:
            self.notes.append(note)


# --------------------------------------------------------------------------- ExecuTorch threads

def _et_threadpool():
    """(get, reset) of ExecuTorch's global thread pool, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pl = _import("executorch.extension.pybindings.portable_lib")
        return pl._threadpool_get_thread_count, pl._unsafe_reset_threadpool
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- main entry

def bench_inputs(example_input: Tensor | Sequence[Tensor], batch_sizes: Sequence[int] = (1, 8),
                 seed: int = 0) -> dict[int, tuple[Tensor, ...]]:
    """The random inputs :func:`benchmark_model` feeds every backend.

    Args:
        example_input: as for :func:`benchmark_model` (one tensor, or a tuple/list of
            tensors, one per model input); only the per-sample shapes are used.
        batch_sizes, seed: as for :func:`benchmark_model`.

    Returns:
        ``{b: (x_1, ..., x_k)}``: per batch size, one float32 tensor ``(b, *shape_i)``
        per input (a 1-tuple for a single input), drawn with ``torch.randn`` from one
        generator seeded with ``seed``, batch size by batch size and input by input
        (with one input: ``torch.randn((b, *shape))`` for each ``b`` in turn).

    Raises:
        ConfigError: bad ``example_input`` or ``batch_sizes``.
    """
    xs = _as_inputs(example_input)
    batch_sizes = _check_ints("batch_sizes", batch_sizes)
    g = torch.Generator().manual_seed(seed)
    return {b: tuple(torch.randn((b, *x.shape[1:]), generator=g) for x in xs)
            for b in batch_sizes}


def benchmark_model(model: nn.Module, example_input: Tensor, out_dir: str | os.PathLike, *,
                    dense_model: nn.Module | None = None,
                    batch_sizes: Sequence[int] = (1, 8), threads: Sequence[int] = (1, 2),
                    repeats: int = 20, warmup: int = 5,
                    formats: Sequence[str] = FORMAT_NAMES, title: str | None = None,
                    pte_batch_sizes: Sequence[int] | None = None, inner: int = 1,
                    seed: int = 0, meta: Mapping[str, Any] | None = None) -> dict:
    """Build, check and time every deployment backend of ``model`` in one run.

    Args:
        model: the pruned model (zeros inside full-size tensors); copied, never modified.
        example_input: one float tensor ``(N, ...)``, or for a model with several inputs
            a tuple/list of float tensors, one per ``forward`` argument in order, all with
            the same ``N >= 1``; only the per-sample shapes are used (plus tracing for the
            compaction/exports).
        out_dir: where the exported files, ``bench.json``, ``bench.md`` and
            ``bench.png`` are written (created if needed).
        dense_model: the unpruned model of the same architecture (optional; see the
            module docstring for what "dense" means without it).
        batch_sizes, threads: the settings; every backend is timed at each (batch,
            threads) pair.
        repeats: timed interleaved rounds per setting (the median is over ``repeats``
            runs of each backend); warmup: untimed rounds before them.
        formats: backend families among :data:`FORMAT_NAMES`; ``"torch"`` is always
            included.
        title: heading of ``bench.md`` / ``bench.png`` (default: the model's class name).
        pte_batch_sizes: batch sizes to export ``.pte`` programs for (default: all of
            ``batch_sizes``; each costs one ExecuTorch lowering per model).
        inner: calls timed together per run (see :func:`compare_latency`).
        seed: seed of the benchmark inputs.
        meta: extra JSON-serialisable information stored as ``result["meta"]``.

    Returns:
        The result dict written to ``bench.json`` (see the module docstring); file paths
        in it are relative to ``out_dir``.

    Raises:
        ConfigError: bad arguments (unknown format, non-positive batch size, an
            ``example_input`` that is not a float tensor or a non-empty tuple/list of float
            tensors with one batch size...).
    """
    batch_sizes, threads, dropped, pte_batches, fmts = _checked_settings(
        batch_sizes, threads, pte_batch_sizes, formats, repeats=repeats, warmup=warmup, inner=inner)
    t_start = time.perf_counter()
    bench = _start(model, dense_model, example_input, Path(out_dir), batch_sizes, fmts, seed)
    if dropped:
        bench.notes.insert(0, f"thread counts {dropped} skipped: this process may run on "
                           f"{len(_affinity() or [])} CPU(s) {_affinity()}")
    _add_torch(bench)
    if fmts & {"compacted", "onnx", "pte"}:
        _add_compacted(bench)
    if "sparse" in fmts:
        _add_sparse(bench)
    if "onnx" in fmts:
        _add_onnx(bench)
    et_pool = _add_pte(bench, pte_batches) if "pte" in fmts else None
    for s in bench.sizes.values():
        s["vs_dense_state"] = bench.sizes["dense_state"]["bytes"] / s["bytes"] if s["bytes"] else None
    _check_outputs(bench)  # before timing: also plans the native engine, loads ORT sessions
    order = [n for n in _BACKEND_ORDER if n in bench.backends]
    latency, load = _time_all(bench, order, threads, et_pool,
                              dict(repeats=repeats, warmup=warmup, inner=inner))
    settings = [{"key": _key(b, t), "batch": b, "threads": t} for b in batch_sizes for t in threads]
    fastest = _speedups(bench, order, latency, settings)
    result: dict[str, Any] = {
        "title": title or f"{type(model).__name__} deployment benchmark",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": type(model).__name__,
        **_input_fields([tuple(x.shape[1:]) for x in bench.inputs[batch_sizes[0]]]),
        "batch_sizes": list(batch_sizes), "threads": list(threads), "repeats": repeats,
        "warmup": warmup, "inner": inner, "seed": seed, "formats": [f for f in FORMAT_NAMES if f in fmts],
        "pte_batch_sizes": list(pte_batches) if "pte" in fmts else None,
        "dense_reference": "dense_model" if bench.dense is not None else "pruned_model",
        "dense_torch": bench.dense_torch,
        "dense_backends": [n for n in order if bench.backends[n].dense_baseline],
        "settings": settings, "backends": _backend_fields(bench, order, latency),
        "fastest_dense": fastest, "sizes": bench.sizes, "model_stats": _model_stats(bench),
        "skipped": bench.skipped, "notes": bench.notes, "environment": _environment(load),
        "files": {"json": "bench.json", "md": "bench.md", "png": None}, "meta": dict(meta or {}),
    }
    return _write(result, bench.out, t_start)


def _checked_settings(batch_sizes, threads, pte_batch_sizes, formats, **counts: Any):
    """``(batch_sizes, threads, dropped threads, pte batch sizes, formats)`` checked; the
    thread counts this process cannot use are dropped (and returned to say so)."""
    batch_sizes = _check_ints("batch_sizes", batch_sizes)
    threads, dropped = _allowed_threads(_check_ints("threads", threads))
    pte_batches = batch_sizes if pte_batch_sizes is None else _check_ints("pte_batch_sizes",
                                                                         pte_batch_sizes)
    for name, v in counts.items():
        lo = 0 if name == "warmup" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMAT_NAMES]
    if unknown:
        raise ConfigError(f"unknown format(s) {unknown}; choose among {list(FORMAT_NAMES)}")
    return batch_sizes, threads, dropped, pte_batches, set(formats) | {"torch"}


def _start(model, dense_model, example_input, out: Path, batch_sizes, fmts, seed) -> _Bench:
    """Copies of the models, the inputs and their reference outputs, the output folder."""
    xs0 = _as_inputs(example_input)
    if not isinstance(model, nn.Module) or (dense_model is not None
                                            and not isinstance(dense_model, nn.Module)):
        raise ConfigError("model and dense_model must be torch.nn.Module instances")
    out.mkdir(parents=True, exist_ok=True)
    pruned = copy.deepcopy(model).cpu().float().eval()
    dense = copy.deepcopy(dense_model).cpu().float().eval() if dense_model is not None else None
    # one tuple of tensors per batch size, one tensor per model input (a single input is
    # a 1-tuple; the random draws, and so the values, are those of the single-input code)
    examples = tuple(x.detach().cpu().float()[:1].contiguous() for x in xs0)
    bench = _Bench(out, pruned, dense, examples if len(examples) > 1 else examples[0],
                   bench_inputs(examples, batch_sizes, seed), batch_sizes, fmts)
    if dense is None:
        bench.notes.append("no dense_model given: the pruned model (dense architecture, zeros "
                           "stored densely) is the dense baseline: torch_pruned is 'dense torch', "
                           "and onnx_dense / pte_dense are exports of the pruned model")
    with torch.no_grad():
        bench.refs["torch_pruned"] = {b: _outputs(pruned(*bench.inputs[b])) for b in batch_sizes}
        if dense is not None:
            bench.refs["torch_dense"] = {b: _outputs(dense(*bench.inputs[b])) for b in batch_sizes}
    return bench


def _input_fields(sample_shapes: list[tuple[int, ...]]) -> dict[str, Any]:
    if len(sample_shapes) > 1:
        return {"input_shape": None, "input_shapes": [list(s) for s in sample_shapes]}
    return {"input_shape": list(sample_shapes[0])}


def _torch_backend(bench: _Bench, name: str, module: nn.Module, which: str, ref: str) -> _Backend:
    be = _Backend(name, "torch", which, name == bench.dense_torch, ref, "torch.set_num_threads(t)")
    be.call = lambda b, t, m=module: m

    def run(b: int, m=module):
        with torch.no_grad():
            return m(*bench.inputs[b])
    be.run = run
    return be


def _add_torch(bench: _Bench) -> None:
    """torch_dense (with a dense model), torch_pruned, and the size of the float32 state."""
    if bench.dense is not None:
        bench.backends["torch_dense"] = _torch_backend(bench, "torch_dense", bench.dense, "dense",
                                                       "torch_dense")
    bench.backends["torch_pruned"] = _torch_backend(bench, "torch_pruned", bench.pruned, "pruned",
                                                    "torch_pruned")
    bench.sizes["dense_state"] = {"path": "dense_state.pt",
                                  "bytes": _save_state(bench.dense_src, bench.out / "dense_state.pt")}
    if bench.dense is None:
        bench.sizes["dense_state"]["note"] = "state_dict of the pruned model (dense architecture)"


def _add_compacted(bench: _Bench) -> None:
    """The compacted model (dead units removed): its state size and torch_compacted."""
    t0 = time.perf_counter()
    try:
        from mobileprune.surgery.compact import compact

        bench.compacted = compact(bench.pruned, bench.example).eval()
    except Exception as exc:  # noqa: BLE001
        for n in ("torch_compacted", "onnx_compacted", "pte_compacted"):
            bench.skipped[n] = f"compaction failed ({_short(exc)})"
        bench.notes.append(f"compaction failed: {_short(exc)}")
        return
    seconds = time.perf_counter() - t0
    bench.sizes["compacted_state"] = {
        "path": "compacted_state.pt",
        "bytes": _save_state(bench.compacted, bench.out / "compacted_state.pt")}
    if "compacted" in bench.fmts:
        be = _torch_backend(bench, "torch_compacted", bench.compacted, "compacted", "torch_pruned")
        be.build_seconds = seconds
        bench.backends["torch_compacted"] = be


def _add_sparse(bench: _Bench) -> None:
    """The sparse runtime on the pruned model's ``.mpsparse`` file."""
    t0 = time.perf_counter()
    try:
        from mobileprune import runtime
        from mobileprune.deploy.sparse import export_sparse

        path = bench.out / "pruned.mpsparse"
        export_sparse(bench.pruned, bench.example, path)
        bench.sizes["sparse"] = {"path": path.name, "bytes": path.stat().st_size}
        sm = runtime.load(path)
    except Exception as exc:  # noqa: BLE001
        bench.skip("sparse_runtime", _short(exc), f"sparse runtime skipped: {_short(exc)}")
        return
    be = _Backend("sparse_runtime", "sparse", "pruned", False, "torch_pruned",
                  f"{runtime.backend()} kernels; t = the engine's threads")
    be.files = [path.name]
    be.info = {"kernels": runtime.backend(),
               "layers": [{"name": p.name, "density": p.density, "kernel": p.kernel}
                          for p in sm.plan()]}

    def sparse_call(b: int, t: int):
        sm.threads = t  # called just before the timing of this setting
        a = bench.inputs_np[b]
        return lambda *_x: sm(*a)
    be.call = sparse_call
    be.run = lambda b: sm(*bench.inputs_np[b])
    be.build_seconds = time.perf_counter() - t0
    bench.backends["sparse_runtime"] = be


def _check_outputs(bench: _Bench) -> None:
    """Every backend's outputs against its torch reference, at every batch size it has."""
    for name, be in bench.backends.items():
        worst, tol = 0.0, math.inf
        for b in bench.batch_sizes:
            if not be.has(b):
                continue
            try:
                got = _outputs(be.run(b))
            except Exception as exc:  # noqa: BLE001
                bench.notes.append(f"{name} failed on batch {b}: {_short(exc)}")
                worst, tol = math.inf, 0.0
                break
            d, t = _diff(got, bench.refs[be.reference][b])
            worst, tol = max(worst, d), min(tol, t)
        be.info.update({"max_abs_diff": worst, "tolerance": tol,
                        "outputs_match": bool(worst <= tol)})
        if not worst <= tol:
            bench.notes.append(f"{name}: outputs differ from {be.reference} (max abs diff "
                               f"{worst:.3g} > tolerance {tol:.3g})")


def _time_all(bench: _Bench, order: list[str], threads, et_pool, timing: dict) -> tuple[dict, dict]:
    """``(latency, load)``: ``latency[backend][key]`` of every setting, interleaved over
    the backends (:func:`compare_latency`), and the load average before and after.

    ExecuTorch's XNNPACK delegate binds the global thread pool when a method is loaded,
    and resizing the pool frees the old one: methods are released before every resize
    and reloaded after it. Settings are therefore timed thread count by thread count."""
    latency: dict[str, dict[str, dict]] = {n: {} for n in order}
    load = {"start": _loadavg()}
    et_prev = None
    if et_pool is not None:
        try:
            et_prev = int(et_pool[0]())
        except Exception:  # noqa: BLE001
            et_pool = None
            bench.notes.append("ExecuTorch thread pool size unknown: left as it is (not resized)")

    def release_all() -> None:
        for be in bench.backends.values():
            be.release()
        gc.collect()

    try:
        for t in threads:
            if et_pool is not None:
                release_all()
                et_pool[1](t)
            for b in bench.batch_sizes:
                for n, r in _time_setting(bench, order, b, t, timing).items():
                    latency[n][_key(b, t)] = {"batch": b, "threads": t, **r}
    finally:
        release_all()
        if et_pool is not None and et_prev:
            try:
                et_pool[1](et_prev)
            except Exception:  # noqa: BLE001
                pass
    load["end"] = _loadavg()
    _note_busy(bench, load, threads)
    return latency, load


def _time_setting(bench: _Bench, order: list[str], b: int, t: int, timing: dict) -> dict:
    calls = {}
    for n in order:
        be = bench.backends[n]
        if be.has(b):
            c = be.call(b, t)
            if c is not None:
                calls[n] = c
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a tuple: compare_latency calls every torch module as m(*inputs[b])
        return compare_latency(calls, bench.inputs[b], threads=t, **timing)


def _note_busy(bench: _Bench, load: dict, threads) -> None:
    ncpu = os.cpu_count() or 1
    busy = [la[0] for la in (load["start"], load["end"]) if la]
    if busy and max(busy) + max(threads) > ncpu + 0.5:
        bench.notes.append(f"busy machine: 1-minute load average {max(busy):.2f} on {ncpu} CPUs "
                           f"while timing up to {max(threads)} thread(s); multi-threaded timings "
                           f"(and speedups) are unreliable here, compare the 1-thread columns")


def _speedups(bench: _Bench, order: list[str], latency: dict, settings: list[dict]) -> dict:
    """Adds each timing's speedups over dense torch and over the fastest dense backend of
    its setting (and whether the spreads overlap); returns the fastest dense per setting."""
    dense_names = [n for n in order if bench.backends[n].dense_baseline]
    fastest: dict[str, dict] = {}
    for s in settings:
        k = s["key"]
        cands = [(latency[n][k]["median_ms"], n) for n in dense_names if k in latency[n]]
        if cands:
            ms, n = min(cands)
            fastest[k] = {"backend": n, "median_ms": ms}
    for n in order:
        for k, r in latency[n].items():
            base = latency[bench.dense_torch].get(k)
            r["speedup_vs_dense_torch"] = base["median_ms"] / r["median_ms"] if base else None
            r["within_noise_vs_dense_torch"] = bool(base) and speedup(r, base) is None
            f = fastest.get(k)
            r["speedup_vs_fastest_dense"] = f["median_ms"] / r["median_ms"] if f else None
            fr = latency[f["backend"]].get(k) if f else None
            r["within_noise_vs_fastest_dense"] = bool(fr) and speedup(r, fr) is None
    return fastest


def _model_stats(bench: _Bench) -> dict[str, Any]:
    total, nz = _n_params(bench.pruned)
    stats: dict[str, Any] = {"pruned_parameters": total, "pruned_nonzero_parameters": nz,
                             "pruned_zero_fraction": 1 - nz / total if total else 0.0}
    if bench.dense is not None:
        stats["dense_parameters"], stats["dense_nonzero_parameters"] = _n_params(bench.dense)
    if bench.compacted is not None:
        stats["compacted_parameters"], stats["compacted_nonzero_parameters"] = \
            _n_params(bench.compacted)
        stats["compacted_class"] = type(bench.compacted).__name__
    return stats


def _backend_fields(bench: _Bench, order: list[str], latency: dict) -> dict[str, dict]:
    fields = {}
    for n in order:
        be = bench.backends[n]
        fields[n] = {
            "kind": be.kind, "model": be.model, "dense_baseline": be.dense_baseline,
            "reference": be.reference, "threading": be.threading, "files": be.files,
            "batch_sizes": sorted(be.batches) if be.batches is not None else list(bench.batch_sizes),
            "build_seconds": be.build_seconds, **be.info, "latency": latency[n]}
    return fields


def _write(result: dict, out: Path, t_start: float) -> dict:
    """bench.png (when matplotlib is there), bench.md and bench.json; the JSON-ready result."""
    png = _plot(result, out / "bench.png")
    if png is None:
        result["notes"].append("matplotlib is not installed: bench.png not written "
                               "(pip install matplotlib)")
    else:
        result["files"]["png"] = "bench.png"
    result["elapsed_seconds"] = time.perf_counter() - t_start
    result = _jsonable(result)
    atomic_write_text(out / "bench.md", format_markdown(result))
    atomic_write_text(out / "bench.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _affinity() -> list[int] | None:
    """The CPUs this process may run on (``taskset``, cgroups), where the OS tells."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def _allowed_threads(threads: tuple[int, ...]) -> tuple[tuple[int, ...], list[int]]:
    """Thread counts that fit the CPUs this process may use; the others are dropped
    (timing 2 threads pinned to one core measures contention, not the engine)."""
    cpus = _affinity()
    if cpus is None:
        return threads, []
    keep = tuple(t for t in threads if t <= len(cpus))
    if not keep:
        raise ConfigError(f"threads {list(threads)}: this process may run on {len(cpus)} CPU(s) "
                          f"({cpus}); ask for at most {len(cpus)} thread(s) or widen the affinity")
    return keep, [t for t in threads if t > len(cpus)]


def _environment(load: dict) -> dict:
    try:
        from mobileprune.runtime import backend as rt_backend

        kernels = rt_backend()
    except Exception:  # noqa: BLE001
        kernels = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
            "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"), "executorch": _version("executorch"),
            "sparse_kernels": kernels, "load_average": load, "cpu_affinity": _affinity()}


# --------------------------------------------------------------------------- ONNX Runtime

def _add_onnx(bench: _Bench) -> None:
    """onnx_dense and onnx_compacted: exported (sizes), and timed when onnxruntime is there."""
    try:
        ort, ort_error = _import("onnxruntime"), None
    except Exception as exc:  # noqa: BLE001
        ort, ort_error = None, _short(exc)
        bench.notes.append(f"onnxruntime is not installed: the ONNX files are written (sizes) "
                           f"but not timed ({ort_error})")
    for name, which, module, ref in _export_models(bench, "onnx"):
        t0 = time.perf_counter()
        files = _exported(bench, name, lambda: _export_onnx_files(bench, name, module))
        if files is None:
            continue
        first = next(iter(files.values()))
        bench.sizes[name] = {"path": Path(first).name, "bytes": Path(first).stat().st_size}
        if ort is None:
            bench.skipped[name] = f"onnxruntime is not installed ({ort_error})"
            continue
        be = _Backend(name, "onnx", which, which == "dense", ref,
                      "intra_op_num_threads = t, inter_op 1, sequential, no spin-waiting")
        be.files = [Path(p).name for p in files.values()]
        be.info = {"onnxruntime": getattr(ort, "__version__", None), "dynamic_batch": None in files}
        if None not in files:
            be.batches = set(files)
        session = _ort_sessions(ort, files, len(bench.inputs[bench.batch_sizes[0]]))

        def call(b: int, t: int, session=session):
            sess, names = session(b, t)
            feed = dict(zip(names, bench.inputs_np[b]))  # session inputs = forward arguments
            return lambda *_x: sess.run(None, feed)
        be.call = call
        be.run = lambda b, call=call: call(b, 1)()
        try:
            session(bench.batch_sizes[0] if be.has(bench.batch_sizes[0]) else min(be.batches), 1)
        except Exception as exc:  # noqa: BLE001
            why = f"onnxruntime cannot load the file ({_short(exc)})"
            bench.skip(name, why, f"{name} skipped: {why}")
            continue
        be.build_seconds = time.perf_counter() - t0
        bench.backends[name] = be


def _export_models(bench: _Bench, fmt: str) -> list[tuple[str, str, nn.Module, str]]:
    """``(backend name, which model, module, reference)`` of the dense and compacted
    exports in format ``fmt`` (``onnx``, ``pte``)."""
    models = [(f"{fmt}_dense", "dense", bench.dense_src, bench.dense_torch)]
    if bench.compacted is not None:
        models.append((f"{fmt}_compacted", "compacted", bench.compacted, "torch_pruned"))
    return models


def _export_onnx_files(bench: _Bench, name: str, module: nn.Module) -> dict:
    """``{None: path}`` (dynamic batch) or ``{b: path}`` (one file per batch size)."""
    from mobileprune.deploy.export import export_onnx

    stem = name.split("_", 1)[1]
    rep = export_onnx(module, bench.example, bench.out / f"{stem}.onnx")
    if rep.get("dynamic_batch"):
        return {None: rep["path"]}
    files = {b: export_onnx(module, _one_or_tuple(bench.inputs[b]),
                            bench.out / f"{stem}_b{b}.onnx")["path"] for b in bench.batch_sizes}
    examples = bench.example if isinstance(bench.example, tuple) else (bench.example,)
    if examples[0].shape[0] not in bench.batch_sizes:
        Path(rep["path"]).unlink(missing_ok=True)
    bench.notes.append(f"{name}: the model has no dynamic batch axis in ONNX; one file per "
                       f"batch size")
    return files


def _exported(bench: _Bench, name: str, export: Callable[[], dict]) -> dict | None:
    """``export()`` (the files of backend ``name``), or None with the reason recorded."""
    try:
        return export()
    except ExportDependencyError as exc:
        bench.skip(name, f"package missing ({_short(exc)})", f"{name} skipped: {_short(exc)}")
    except Exception as exc:  # noqa: BLE001
        bench.skip(name, f"export failed ({_short(exc)})",
                   f"{name} skipped: export failed ({_short(exc)})")
    return None


def _ort_sessions(ort, files: dict, n_inputs: int) -> Callable[[int, int], tuple]:
    """``session(b, t) -> (InferenceSession, input names)``, created once per (file, t):
    t intra-op threads, one inter-op thread, sequential, no spin-waiting."""
    sessions: dict[tuple, Any] = {}

    def session(b: int, t: int):
        path = files.get(None, files.get(b))
        if (path, t) not in sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = t
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.log_severity_level = 3
            try:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            except Exception:  # noqa: BLE001
                pass
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]
            if len(names) != n_inputs:
                raise ValueError(f"the ONNX file has {len(names)} input(s) {names}, the model "
                                 f"{n_inputs}")
            sessions[(path, t)] = (sess, names)
        return sessions[(path, t)]
    return session


# --------------------------------------------------------------------------- ExecuTorch

def _add_pte(bench: _Bench, pte_batches: tuple[int, ...]):
    """pte_dense and pte_compacted (XNNPACK-delegated programs, one per batch size in
    ``pte_batches``); returns ExecuTorch's thread pool (get, reset) when one was loaded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rt_mod = _import("executorch.runtime")
        runtime, rt_error = rt_mod.Runtime.get(), None
    except Exception as exc:  # noqa: BLE001
        runtime, rt_error = None, _short(exc)
    pool = _et_threadpool() if runtime is not None else None
    threading = ("XNNPACK thread pool resized to t (_unsafe_reset_threadpool)" if pool else
                 "thread count not controllable from Python (default XNNPACK pool)")
    pte_b = [b for b in bench.batch_sizes if b in pte_batches]
    if not pte_b:
        for n in ("pte_dense", "pte_compacted"):
            bench.skipped[n] = "no batch size of batch_sizes is in pte_batch_sizes"
        return None
    if len(pte_b) < len(bench.batch_sizes):
        bench.notes.append(f"ExecuTorch programs have a fixed input shape: exported for batch "
                           f"size(s) {pte_b} only (pte_batch_sizes); pte_* are not timed at the "
                           f"other batch sizes")
    any_ok = False
    for name, which, module, ref in _export_models(bench, "pte"):
        t0 = time.perf_counter()
        files = _exported(bench, name, lambda: _export_pte_files(bench, name, module, pte_b))
        if files is None:
            continue
        bench.sizes[name] = {"path": files[pte_b[0]].name, "bytes": files[pte_b[0]].stat().st_size,
                             "batch": pte_b[0]}
        if runtime is None:
            bench.skip(name, f"executorch.runtime cannot be loaded ({rt_error})",
                       f"{name}: .pte written but not timed: executorch.runtime cannot be "
                       f"loaded ({rt_error})")
            continue
        be = _pte_backend(bench, runtime, name, which, ref, threading, files)
        if be is not None:
            be.build_seconds = time.perf_counter() - t0
            bench.backends[name] = be
            any_ok = True
    return pool if any_ok else None


def _export_pte_files(bench: _Bench, name: str, module: nn.Module, pte_b) -> dict:
    from mobileprune.deploy.export import export_executorch

    stem = name.split("_", 1)[1]
    return {b: Path(export_executorch(module, _one_or_tuple(bench.inputs[b]),
                                      bench.out / f"{stem}_b{b}.pte")["path"]) for b in pte_b}


def _pte_backend(bench: _Bench, runtime, name, which, ref, threading, files) -> _Backend | None:
    """The backend of one set of ``.pte`` files, or None (recorded) when they cannot load."""
    loaded: dict[int, tuple] = {}

    def method(b: int):
        """The loaded ``forward`` at batch ``b`` (cached until :meth:`_Backend.release`)."""
        if b not in loaded:
            prog = runtime.load_program(str(files[b]))
            loaded[b] = (prog, prog.load_method("forward"))
        return loaded[b][1]

    try:
        method(next(iter(files)))
    except Exception as exc:  # noqa: BLE001
        why = f"the ExecuTorch runtime cannot load the program ({_short(exc)})"
        bench.skip(name, why, f"{name} skipped: {why}")
        return None
    be = _Backend(name, "pte", which, which == "dense", ref, threading)
    be.files = [p.name for p in files.values()]
    be.batches = set(files)
    be.info = {"executorch": _version("executorch"), "delegate": "XnnpackPartitioner",
               "fixed_batch": True}

    def call(b: int, t: int):
        m, args = method(b), list(bench.inputs[b])
        return lambda *_x: m.execute(args)
    be.call = call
    be.run = lambda b: method(b).execute(list(bench.inputs[b]))
    be.release = loaded.clear
    return be


# --------------------------------------------------------------------------- markdown

def _fmt_ms(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{r['median_ms']:.3f} ({r['min_ms']:.3f}-{r['max_ms']:.3f})"


def _fmt_x(v: float | None, noise: bool = False) -> str:
    """A ratio; one whose timing spreads overlap is printed as within noise, not as a
    speedup."""
    if v is None:
        return "-"
    return f"within noise ({v:.2f}x)" if noise else f"{v:.2f}x"


def _fmt_bytes(n: int) -> str:
    for unit, f in (("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n} B"


def format_markdown(result: Mapping[str, Any]) -> str:
    """The ``bench.md`` text of a :func:`benchmark_model` result."""
    settings = result["settings"]
    heads = [f"b{s['batch']} / {s['threads']}t" for s in settings]
    names = list(result["backends"])
    env = result.get("environment") or {}
    if result.get("input_shapes"):  # several inputs
        shapes = ", ".join(f"(N, {', '.join(map(str, s))})" for s in result["input_shapes"])
        inputs = f"{len(result['input_shapes'])} inputs {shapes}"
    else:
        inputs = f"input (N, {', '.join(map(str, result['input_shape']))})"
    lines = [f"# {result['title']}", "",
             f"- model `{result['model']}`, {inputs}, created {result['created']}",
             f"- {result['repeats']} interleaved timed rounds after {result['warmup']} warm-up "
             f"rounds per setting (median, in brackets p10-p90, in ms; b = batch size, t = "
             f"threads); all backends in the same run",
             f"- dense baseline: `{result['dense_torch']}` for dense torch; fastest dense "
             f"runtime = min of {', '.join(f'`{n}`' for n in result['dense_backends'])} at the "
             f"same setting" + (" (no dense model given: the pruned model is the dense "
                                "baseline)" if result["dense_reference"] == "pruned_model" else ""),
             f"- machine: {env.get('platform')}, {env.get('cpu_count')} CPUs, torch "
             f"{env.get('torch')}, onnxruntime {env.get('onnxruntime')}, executorch "
             f"{env.get('executorch')}, sparse kernels {env.get('sparse_kernels')}; load "
             f"average {((env.get('load_average') or {}).get('start'))} -> "
             f"{((env.get('load_average') or {}).get('end'))}", ""]

    def table(title: str, cell: Callable[[dict | None], str], extra: list[str] | None = None):
        lines.extend([f"## {title}", "", "| backend | " + " | ".join(heads) + " |",
                      "|---|" + "---:|" * len(heads)])
        for n in names:
            lat = result["backends"][n]["latency"]
            lines.append(f"| `{n}` | " + " | ".join(cell(lat.get(s["key"])) for s in settings) + " |")
        lines.extend(extra or [])
        lines.append("")

    table("Median latency, ms (min-max)", _fmt_ms)
    table(f"Speedup vs dense torch (`{result['dense_torch']}`)",
          lambda r: _fmt_x(r.get("speedup_vs_dense_torch"), r.get("within_noise_vs_dense_torch"))
          if r else "-")
    fd = result["fastest_dense"]
    table("Speedup vs the fastest dense runtime (same setting)",
          lambda r: _fmt_x(r.get("speedup_vs_fastest_dense"), r.get("within_noise_vs_fastest_dense"))
          if r else "-",
          ["| *fastest dense* | " + " | ".join(
              f"`{fd[s['key']]['backend']}` {fd[s['key']]['median_ms']:.3f}" if s["key"] in fd
              else "-" for s in settings) + " |"])

    lines.extend(["## File sizes", "", "| file | bytes | | vs dense float32 state |",
                  "|---|---:|---:|---:|"])
    for k, s in result["sizes"].items():
        lines.append(f"| {k} (`{s['path']}`) | {s['bytes']:,} | {_fmt_bytes(s['bytes'])} | "
                     f"{_fmt_x(s.get('vs_dense_state'))} |")
    stats = result.get("model_stats") or {}
    if stats:
        lines.append("")
        lines.append("Parameters: " + ", ".join(
            f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else
            f"{k.replace('_', ' ')} {v:.3f}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
            for k, v in stats.items()))
    lines.extend(["", "## Output check (vs PyTorch)", "",
                  "| backend | reference | max abs diff | tolerance | ok | threading |",
                  "|---|---|---:|---:|:-:|---|"])
    for n in names:
        b = result["backends"][n]
        d, t = b.get("max_abs_diff"), b.get("tolerance")
        lines.append(f"| `{n}` | `{b['reference']}` | {'inf' if d is None else f'{d:.2e}'} | "
                     f"{'-' if t is None else f'{t:.2e}'} | {'yes' if b.get('outputs_match') else 'NO'} | "
                     f"{b['threading']} |")
    if result.get("skipped"):
        lines.extend(["", "## Skipped", ""])
        lines.extend(f"- `{k}`: {v}" for k, v in result["skipped"].items())
    if result.get("notes"):
        lines.extend(["", "## Notes", ""])
        lines.extend(f"- {n}" for n in result["notes"])
    if result["files"].get("png"):
        lines.extend(["", f"![median latency]({result['files']['png']})"])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot

def _plot(result: dict, path: Path) -> Path | None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except Exception:  # noqa: BLE001
        return None
    settings = result["settings"]
    names = list(result["backends"])
    if not names:
        return None
    n_set = len(settings)
    width = 0.8 / n_set
    fig = Figure(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, s in enumerate(settings):
        xs, ys, lo, hi = [], [], [], []
        for j, n in enumerate(names):
            r = result["backends"][n]["latency"].get(s["key"])
            if r is None:
                continue
            xs.append(j + (i - (n_set - 1) / 2) * width)
            ys.append(r["median_ms"])
            lo.append(max(r["median_ms"] - r["p10_ms"], 0.0))
            hi.append(max(r["p90_ms"] - r["median_ms"], 0.0))
        ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=2,
               label=f"batch {s['batch']}, {s['threads']} thread{'s' if s['threads'] > 1 else ''}")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=25, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms, log scale)")
    ax.set_title(result["title"])
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
    atomic_write(path, write)  # temp file in out_dir, then os.replace
    return path


# --------------------------------------------------------------------------- checkpoints

def _load(path: str | os.PathLike, what: str):
    from mobileprune.checkpoint import load_checkpoint, restore_model
    from mobileprune.sparsity.masks import apply_masks

    ckpt = load_checkpoint(path)
    model = restore_model(ckpt, source=str(path)).eval()
    masks = ckpt.get("masks") or {}
    if masks:
        try:
            apply_masks(model, masks)  # the weights already hold the zeros; make them exact
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{what} {path}: its masks do not fit its model ({exc})") from None
    return ckpt, model


def bench_checkpoint(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike,
                     input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None, *,
                     dense_checkpoint: str | os.PathLike | None = None, **kw: Any) -> dict:
    """:func:`benchmark_model` on a mobileprune checkpoint.

    Args:
        checkpoint_path: the pruned (or compacted) checkpoint; rebuilt with
            :func:`~mobileprune.checkpoint.restore_model`, its masks re-applied.
        out_dir: output folder (see :func:`benchmark_model`).
        input_shape: per-sample input shape without the batch dimension, e.g.
            ``(1, 28, 28)``, or for a model with several inputs a list of them, one per
            ``forward`` argument in order, e.g. ``[(3, 64, 64), (3, 64, 64), (3, 64, 64),
            (625,)]``; default ``ckpt["extra"]["input_shape"]`` (either form).
        dense_checkpoint: the unpruned model's checkpoint (a pruned checkpoint holds no
            dense copy); without it the pruned model is the dense baseline.
        **kw: passed to :func:`benchmark_model` (``batch_sizes``, ``threads``,
            ``repeats``, ``warmup``, ``formats``, ``title``, ``pte_batch_sizes``...).

    Raises:
        ConfigError: no input shape (neither argument nor checkpoint), bad shape.
        CheckpointError: unreadable checkpoint / architecture mismatch.
    """
    ckpt, model = _load(checkpoint_path, "checkpoint")
    shape = input_shape if input_shape is not None else (ckpt.get("extra") or {}).get("input_shape")
    if not shape:
        raise ConfigError(f"{checkpoint_path} does not record its input shape: pass "
                          f"input_shape (per sample, e.g. 1,28,28)")
    shapes = _input_shapes(shape)
    dense = None
    dense_name = None
    if dense_checkpoint is not None:
        dckpt, dense = _load(dense_checkpoint, "dense checkpoint")
        dense_name = (dckpt.get("model") or {}).get("name")
    name = (ckpt.get("model") or {}).get("name") or type(model).__name__
    kw.setdefault("title", f"{name}: deployment benchmark ({Path(checkpoint_path).name})")
    meta = dict(kw.pop("meta", None) or {})
    meta.update({"checkpoint": str(checkpoint_path), "checkpoint_kind": ckpt.get("kind"),
                 "model_name": name, "dense_checkpoint": (str(dense_checkpoint)
                                                          if dense_checkpoint else None),
                 "dense_model_name": dense_name, "metrics": ckpt.get("metrics") or {}})
    g = torch.Generator().manual_seed(0)
    examples = tuple(torch.randn((1, *shp), generator=g) for shp in shapes)
    example = examples[0] if len(examples) == 1 else examples
    return benchmark_model(model, example, out_dir, dense_model=dense, meta=meta, **kw)
