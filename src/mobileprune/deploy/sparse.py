"""Export a pruned PyTorch model to a compact sparse file for the torch-free runtime.

:func:`export_sparse` traces the model with :func:`mobileprune.graph.trace` (an eval-mode
float32 CPU copy; the model itself is not modified; ``example_input`` gives every shape),
lowers the canonical graph to a flat list of runtime ops with the ``Lower`` pass
(:mod:`mobileprune.graph.passes.lower`: one handler per op key, in
:mod:`mobileprune.graph.ops`), runs the result on the native engine against torch, and
writes it with the weights in the model file format version 3
(``docs/native_format.md``). :mod:`mobileprune.runtime` loads and runs the file with the
native engine (C), no torch; the same file runs on a phone through the engine's C API
(:func:`mobileprune.deploy.export.export_native` writes a self-contained bundle).

Supported graph
---------------
One or several tensor inputs ``(N, ...)`` (the ``forward`` arguments, all with the
same batch size); outputs: one tensor or a tuple/list of tensors. A module called
more than once (one tower applied to two inputs) becomes one op per call, and
identical arrays are stored once. Which ops lower, and how, is said by each handler's
``lower`` (``docs/methods.md`` section 4); BatchNorms are **folded** into the preceding
Conv/Linear when ``fold_bn`` and that layer's output feeds only the batch norm
(``W' = W * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``; zeros
stay zeros), else kept as a per-channel ``batchnorm`` op; eval-mode no-ops (Dropout,
Identity, StochasticDepth, ``torch._assert``, ``.contiguous()``) vanish.

Anything else raises :class:`~mobileprune.errors.UnsupportedModelError` naming the op
key, the node, the user's source line and the reason; so does a lowered model whose
output on ``example_input`` differs from torch's (:func:`mobileprune.deploy.numerics.compare`):
a file is written
only after that check.

Weight storage
--------------
Each Conv/Linear weight is stored as the GEMM view ``(rows = out channels/features,
cols = in_channels/groups * kh * kw or in_features)`` in the smaller of

* CSR: ``indptr`` uint32, ``indices`` uint16 (uint32 when ``cols >= 65536``),
  ``values`` in ``value_dtype`` -- ``4 (rows + 1) + nnz (2 + 4)`` bytes for float32;
* dense ``values`` ``(rows, cols)`` -- ``4 rows cols`` bytes,

never both: the runtime builds whichever form its kernel needs at load time (it runs a
layer dense when its density is high, see :mod:`mobileprune.runtime.model`, and then
the file stores it dense anyway because CSR is only smaller below ~2/3 density).
Biases (and batch-norm scale/shift) are float32. ``value_dtype="float16"`` halves the
value bytes; values are converted to float32 at load (weights that underflow to zero in
float16 are dropped).

:func:`size_report` lists, per layer, the bytes of the dense float32 weights (+ bias)
and the bytes actually stored (indices counted), and the totals.
"""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

from mobileprune.deploy.numerics import Mismatch, compare
from mobileprune.errors import UnsupportedModelError
from mobileprune.graph.passes.lower import Lowered, lower
from mobileprune.graph.trace import leaf_module, trace
from mobileprune.runtime import SparseFormatError, format3
from mobileprune.runtime.model import MAGIC, SparseModel, read_container, write_bytes

__all__ = ["export_sparse", "size_report", "format_size_report"]

_WEIGHT_KEYS = ("weight", "weight_ih", "weight_hh")


def _weight_arrays(name: str, w: np.ndarray, value_dtype: np.dtype, storage: str):
    """Return (weight record, arrays) for a (rows, cols) float64 weight."""
    rows, cols = w.shape
    wv = w.astype(value_dtype)
    nz = wv != 0
    nnz = int(nz.sum())
    isz = np.dtype(value_dtype).itemsize
    idx_dtype = np.uint16 if cols < 65536 else np.uint32
    csr_bytes = 4 * (rows + 1) + nnz * (np.dtype(idx_dtype).itemsize + isz)
    dense_bytes = rows * cols * isz
    if storage == "auto":
        storage = "csr" if csr_bytes < dense_bytes else "dense"
    if storage == "csr":
        r, c = np.nonzero(nz)
        indptr = np.zeros(rows + 1, np.uint32)
        np.cumsum(np.bincount(r, minlength=rows), out=indptr[1:])
        arrays = {f"{name}.indptr": indptr, f"{name}.indices": c.astype(idx_dtype),
                  f"{name}.values": wv[r, c]}
        rec = {"rows": rows, "cols": cols, "nnz": nnz, "storage": "csr",
               "arrays": {"indptr": f"{name}.indptr", "indices": f"{name}.indices",
                          "values": f"{name}.values"}}
    elif storage == "dense":
        wv = np.where(nz, wv, np.zeros((), value_dtype))  # no -0.0 / denormal surprises
        arrays = {f"{name}.values": np.ascontiguousarray(wv)}
        rec = {"rows": rows, "cols": cols, "nnz": nnz, "storage": "dense",
               "arrays": {"values": f"{name}.values"}}
    else:
        raise ValueError(f"storage must be 'auto', 'csr' or 'dense', got {storage!r}")
    return rec, arrays


def _example_tuple(example_input: Any) -> tuple[torch.Tensor, ...]:
    """``example_input`` (a tensor, or a tuple/list of tensors) as a tuple, checked."""
    xs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not xs or not all(isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] >= 1
                         for x in xs):
        raise ValueError("example_input must be one tensor (N, ...) with N >= 1, or a "
                         "non-empty tuple/list of such tensors (one per forward argument)")
    if any(x.shape[0] != xs[0].shape[0] for x in xs):
        raise ValueError(f"example_input tensors have different batch sizes "
                         f"{[int(x.shape[0]) for x in xs]}")
    return xs


def _dedupe_arrays(ops: list[dict], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store byte-identical arrays once: the ops that named a duplicate are pointed at the
    first copy (a module called twice, e.g. one tower for both eyes, keeps one copy of its
    weights). Returns the arrays to write."""
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        key = (a.dtype.str, a.shape, a.tobytes())
        rename[name] = first.setdefault(key, name)
    for op in ops:
        for k, v in op.items():
            if k in _WEIGHT_KEYS and isinstance(v, dict):
                v["arrays"] = {s: rename[n] for s, n in v["arrays"].items()}
            elif k in _ARRAY_KEYS and v is not None:
                op[k] = rename[v]
    return {n: a for n, a in arrays.items() if rename[n] == n}


_ARRAY_KEYS = ("bias", "bias_ih", "bias_hh", "scale", "shift", "value")


def _store(ops: list[dict], value_dtype: np.dtype, storage: str):
    """The ops with their numpy arrays replaced by names (weight matrices by weight
    records, the smaller of CSR and dense unless ``storage`` says), and the arrays."""
    out, arrays = [], {}
    for op in ops:
        op = dict(op)
        for k in _WEIGHT_KEYS:
            if isinstance(op.get(k), np.ndarray):
                name = op["name"] if k == "weight" else f"{op['name']}.{k}"
                op[k], arrs = _weight_arrays(name, op[k], value_dtype, storage)
                arrays.update(arrs)
        for k in _ARRAY_KEYS:
            if isinstance(op.get(k), np.ndarray):
                arrays[f"{op['name']}.{k}"] = op[k].astype(np.float32).reshape(-1)
                op[k] = f"{op['name']}.{k}"
        out.append(op)
    return out, arrays


def _encode(low: Lowered, arch: str, value_dtype: str, fold_bn: bool, storage: str) -> bytes:
    """The format-3 bytes of a lowered graph."""
    vdt = np.dtype(np.float32 if value_dtype == "float32" else np.float16)
    ops, arrays = _store(low.ops, vdt, storage)
    try:
        from mobileprune import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    header = {"magic": MAGIC, "inputs": low.inputs, "producer": f"mobileprune {version}",
              "architecture": arch, "value_dtype": value_dtype, "fold_bn": bool(fold_bn),
              "outputs": low.outputs, "ops": ops}
    return format3.encode(header, _dedupe_arrays(ops, arrays))


def _compare(got: Any, ref: Any, what: str) -> None:
    """Raise unless the runtime's outputs ``got`` match torch's ``ref`` by the check every
    export uses (:func:`mobileprune.deploy.numerics.compare`: ``1e-4 * (1 + max|torch|)``
    per float32 output, NaN only where torch has NaN)."""
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    got = [got] if isinstance(got, np.ndarray) else list(got)
    try:
        compare(got, [r.detach() for r in refs], f"on {what}")
    except Mismatch as e:
        raise UnsupportedModelError(f"export_sparse: the runtime's output differs from torch's "
                                    f"{e}; nothing was written") from None


def _verify(data: bytes, traced, arch: str) -> None:
    """Run ``data`` on the native engine and compare with torch (:func:`_compare`): on
    the example inputs, and on a batch one sample larger (the example with its first
    sample halved appended) run by the eval-mode model itself (a torch.export graph
    holds the example's sizes), so that nothing computed from the batch size at export
    (a folded constant) passes unnoticed; skipped when torch itself refuses that batch."""
    try:
        model = SparseModel(data, tune=False)
    except SparseFormatError as e:
        raise UnsupportedModelError(f"export_sparse: the runtime cannot run the lowered "
                                    f"{arch}: {e}") from e
    xs = traced.args
    _compare(model(*[x.numpy() for x in xs]), traced.out, "example_input")
    more = tuple(torch.cat([x, x[:1] * 0.5]) for x in xs)
    try:
        with torch.no_grad():
            ref = traced.work(*more)
    except Exception:  # noqa: BLE001 - a model that only runs at the example's batch size
        return
    _compare(model(*[x.numpy() for x in more]), ref, f"a batch of {len(more[0])}")


def export_sparse(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, *,
                  value_dtype: str = "float32", fold_bn: bool = True,
                  storage: str = "auto", architecture: str | None = None) -> dict:
    """Write ``model`` as a sparse model file for :mod:`mobileprune.runtime`.

    The model is traced by :func:`mobileprune.graph.trace` and lowered to runtime ops by
    :func:`mobileprune.graph.passes.lower.lower` (one handler per op key); the file is
    run by the native engine on ``example_input`` and compared with torch (max absolute
    difference <= ``1e-4 * (1 + max|torch output|)`` with float32 weights, the check of
    every exporter: :func:`mobileprune.deploy.numerics.compare`) before it is written.

    Args:
        model: the (pruned) network; it is copied, set to eval mode and float32 on CPU
            for the export (the caller's model is not modified).
        example_input: one tensor ``(N, ...)`` the model accepts (any N >= 1; only the
            per-sample shape is recorded, the runtime accepts any batch size), or a
            tuple/list of tensors, one per ``forward`` argument, with the same N.
        path: destination file (written atomically: temp file + ``os.replace``).
        value_dtype: ``"float32"`` or ``"float16"`` for the stored weight values.
        fold_bn: fold eval-mode BatchNorms into the preceding Conv/Linear.
        storage: ``"auto"`` (smaller of CSR and dense per layer), ``"csr"`` or
            ``"dense"`` (for all layers).
        architecture: name recorded in the file; default the model's class name.

    Returns:
        :func:`size_report` of the written file.

    Raises:
        UnsupportedModelError: the model cannot be traced, contains an op the runtime
            cannot run (the message names the op key, the node, the source line and the
            reason), or the runtime's output differs from torch's (nothing is written).
        ValueError: bad ``value_dtype`` / ``storage`` / ``example_input``.
    """
    if value_dtype not in ("float32", "float16"):
        raise ValueError(f"value_dtype must be 'float32' or 'float16', got {value_dtype!r}")
    if storage not in ("auto", "csr", "dense"):
        raise ValueError(f"storage must be 'auto', 'csr' or 'dense', got {storage!r}")
    xs = _example_tuple(example_input)
    arch = architecture or type(model).__name__
    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    if leaf_module(m):  # a bare layer: the root's forward is always traced into
        m = nn.Sequential(m).eval()
    xs = tuple(x.detach().to(device="cpu", dtype=torch.float32) for x in xs)
    traced = trace(m, xs, who="export_sparse", copy_model=False)
    low = lower(traced, fold_bn)
    data = _encode(low, arch, "float32", fold_bn, storage)
    _verify(data, traced, arch)
    if value_dtype != "float32":
        data = _encode(low, arch, value_dtype, fold_bn, storage)
    write_bytes(path, data)
    return size_report(path)


# ---------------------------------------------------------------------------------------
# size report

def size_report(source: str | os.PathLike | nn.Module, example_input: torch.Tensor | None = None,
                **export_kwargs: Any) -> dict:
    """Bytes per layer: dense float32 weights vs what the sparse file stores.

    ``source`` is a sparse model file, or a model (then ``example_input`` is required and
    the model is exported to a temporary file with ``export_kwargs``).

    Returns a dict with ``"layers"`` (one entry per Conv/Linear/BatchNorm op: ``name``,
    ``op``, ``rows``, ``cols``, ``nnz``, ``density``, ``storage``,
    ``dense_float32_bytes`` = 4 x (weights + bias entries), ``stored_bytes`` = bytes of
    all its arrays, split in ``index_bytes`` (indptr + indices), ``value_bytes``,
    ``bias_bytes``; a layer applied several times, whose arrays the file stores once,
    is listed once), ``"totals"`` (sums, ``"compression"`` = dense / stored), and
    ``"file_bytes"`` / ``"header_bytes"`` (the real file size, and what is not array
    data: prefix, JSON and alignment padding).
    """
    if isinstance(source, nn.Module):
        if example_input is None:
            raise ValueError("size_report(model) needs example_input")
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "model.mpsparse")
            export_sparse(source, example_input, p, **export_kwargs)
            rep = size_report(p)
            rep["path"] = None
            return rep
    header, arrays = read_container(source)
    nb = {k: int(v.nbytes) for k, v in arrays.items()}
    layers = []
    seen: set[str] = set()  # weight arrays counted (a layer applied twice is stored once)
    for op in header["ops"]:
        if op["op"] in ("conv1d", "conv2d", "linear"):
            w = op["weight"]
            a = w["arrays"]
            if a["values"] in seen:
                continue
            seen.add(a["values"])
            rows, cols, nnz = w["rows"], w["cols"], w["nnz"]
            idx_b = nb.get(a.get("indptr"), 0) + nb.get(a.get("indices"), 0)
            val_b = nb[a["values"]]
            bias_b = nb.get(op.get("bias"), 0) if op.get("bias") else 0
            dense = 4 * rows * cols + (4 * rows if op.get("bias") else 0)
            layers.append({"name": op.get("module") or op["name"], "op": op["op"],
                           "rows": rows, "cols": cols,
                           "nnz": nnz, "density": nnz / (rows * cols) if rows * cols else 0.0,
                           "storage": w["storage"], "dense_float32_bytes": dense,
                           "index_bytes": idx_b, "value_bytes": val_b, "bias_bytes": bias_b,
                           "stored_bytes": idx_b + val_b + bias_b})
        elif op["op"] == "batchnorm":
            b = nb[op["scale"]] + nb[op["shift"]]
            c = b // 8
            layers.append({"name": op.get("module") or op["name"], "op": "batchnorm",
                           "rows": c, "cols": 1,
                           "nnz": c, "density": 1.0, "storage": "dense",
                           "dense_float32_bytes": b, "index_bytes": 0, "value_bytes": b,
                           "bias_bytes": 0, "stored_bytes": b})
    keys = ("dense_float32_bytes", "stored_bytes", "index_bytes", "value_bytes", "bias_bytes",
            "nnz")
    totals = {k: sum(l[k] for l in layers) for k in keys}
    totals["weights"] = sum(l["rows"] * l["cols"] for l in layers if l["op"] != "batchnorm")
    totals["compression"] = (totals["dense_float32_bytes"] / totals["stored_bytes"]
                             if totals["stored_bytes"] else float("inf"))
    file_bytes = os.path.getsize(source) if not isinstance(source, (bytes, bytearray)) else len(source)
    data_bytes = sum(nb.values())
    return {"path": None if isinstance(source, (bytes, bytearray)) else os.fspath(source),
            "architecture": header.get("architecture"), "value_dtype": header.get("value_dtype"),
            "layers": layers, "totals": totals, "file_bytes": file_bytes,
            "header_bytes": file_bytes - data_bytes}


def format_size_report(rep: dict) -> str:
    """A text table of :func:`size_report`."""
    lines = [f"{'layer':<22} {'op':<9} {'shape':>12} {'density':>8} {'storage':>7} "
             f"{'dense f32 B':>12} {'stored B':>10} {'ratio':>7}"]
    for l in rep["layers"]:
        ratio = l["dense_float32_bytes"] / l["stored_bytes"] if l["stored_bytes"] else float("inf")
        lines.append(f"{l['name']:<22} {l['op']:<9} {str(l['rows']) + 'x' + str(l['cols']):>12} "
                     f"{l['density']:>8.3f} {l['storage']:>7} {l['dense_float32_bytes']:>12,} "
                     f"{l['stored_bytes']:>10,} {ratio:>6.1f}x")
    t = rep["totals"]
    lines.append(f"{'total':<22} {'':<9} {'':>12} {t['nnz'] / max(t['weights'], 1):>8.3f} {'':>7} "
                 f"{t['dense_float32_bytes']:>12,} {t['stored_bytes']:>10,} "
                 f"{t['compression']:>6.1f}x")
    lines.append(f"file: {rep['file_bytes']:,} bytes ({rep['header_bytes']:,} header/padding)")
    return "\n".join(lines)
