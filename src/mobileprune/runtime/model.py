"""The sparse model file (reader/writer) and :class:`SparseModel`, the torch-free engine.

Only numpy (and optionally numba, through :mod:`.kernels`) is imported here.

File format (``format_version`` 1 and 2)
----------------------------------------
One file, little-endian::

    offset 0   8 bytes   magic  b"MPSPARSE"
           8   uint32    format_version (1 or 2)
          12   uint32    CRC-32 of the JSON header bytes
          16   uint64    H = length of the JSON header in bytes
          24   H bytes   JSON header, UTF-8
                         zero padding up to the next multiple of 64  -> data start D
           D   data section: every array at a 64-byte aligned offset (relative to D),
               raw C-order bytes, zero padding between arrays

The file ends exactly at ``D + header["data_nbytes"]``. The JSON header holds:

* ``"magic": "mobileprune.sparse"``, ``"format_version"`` (as in the prefix),
  ``"producer"``;
* ``"architecture"`` (class name of the exported model), ``"value_dtype"``
  (``"float32"`` or ``"float16"``: the stored weight values; biases and batch-norm
  scale/shift are always float32);
* version 1: ``"input": {"name", "shape"}`` (per-sample shape, batch excluded);
  version 2: ``"inputs": [{"name", "shape"}, ...]`` (a model with several inputs, in
  the order of its ``forward`` arguments; the exporter writes version 1 whenever the
  model has one input, so those files stay readable by version-1 runtimes);
* ``"outputs": [value names]``;
* ``"ops"``: the graph as a topologically ordered list; each op ``{"name", "op",
  "inputs": [value names], "shape": per-sample output shape, "attrs": {...}}`` produces
  the value ``name``. Op types: ``conv1d``, ``conv2d``, ``linear``, ``maxpool1d``,
  ``maxpool2d``, ``avgpool1d``, ``avgpool2d``, ``global_avgpool``, ``batchnorm``,
  ``relu``, ``activation`` (``attrs.fn``: one of :data:`ACTIVATIONS`, with its
  parameters), ``reshape``, ``add`` / ``sub`` / ``mul`` (two inputs of one rank that
  broadcast, or one input and ``attrs.scalar``, ``attrs.scalar_first``), ``concat``
  (attributes: see :func:`_infer_shape`).
  ``conv*``/``linear`` carry ``"weight"``: ``{"rows", "cols", "nnz", "storage",
  "arrays": {...}}`` and ``"bias"`` (array name or ``null``); ``batchnorm`` carries
  ``"scale"`` and ``"shift"`` array names;
* ``"arrays": {name: {"dtype", "shape", "offset", "nbytes"}}`` (several ops may name the
  same array: a layer applied twice, such as one eye tower run on both eyes, is stored
  once);
* ``"data_nbytes"`` and ``"data_crc32"`` (CRC-32 of the whole data section).

A weight is the GEMM view of the layer: ``rows`` = output channels / features, ``cols``
= ``in_channels/groups * kh * kw`` (column ``(c * kh + i) * kw + j``) or
``in_features``. ``storage`` is

* ``"csr"``: ``indptr`` uint32 ``(rows + 1,)``, ``indices`` uint16 (uint32 if
  ``cols >= 65536``) ``(nnz,)``, ``values`` ``(nnz,)`` in ``value_dtype``;
* ``"dense"``: ``values`` ``(rows, cols)`` in ``value_dtype``.

The exporter picks whichever is smaller (dense once the density passes about 2/3 with
float32 values); the runtime converts to the form its kernel needs at load time.

Any inconsistency -- wrong magic, unknown version, truncated or padded file, CRC
mismatch, bad JSON, arrays out of bounds, array shapes that do not match the op
attributes, shapes that do not follow from the inputs -- raises
:class:`~mobileprune.runtime.SparseFormatError`.

Execution and the dense/sparse choice
-------------------------------------
:class:`SparseModel` turns the op list into steps (a Conv/Linear followed only by a ReLU
gets the ReLU fused; intermediate values are freed after their last use). Each Conv and
Linear runs with a sparse or a dense kernel, chosen at load time by ``mode``:

* ``"sparse"`` / ``"dense"``: every layer the same way;
* ``"auto"`` (default): a threshold on the weight density ``nnz / (rows * cols)``,
  calibrated once on this project's reference machine (1 thread, batch 1, see
  ``benchmarks/sparse_layers.py --calibrate``): sparse when density <
  :data:`DENSITY_THRESHOLDS` ``["conv"]`` for a convolution with ``groups == 1``, <
  ``["linear"]`` for a Linear; grouped/depthwise convolutions always run the direct
  kernel (an im2col GEMM per group is never faster). Tiny layers (under
  :data:`TINY_MACS` multiply-adds) always take the sparse path, whose call overhead is
  lower. Where the crossover depends on the shape (densities in :data:`TUNE_BAND`),
  ``tune=True`` (default) times both kernels at load, at batch 1 on this machine
  (median of 7 interleaved calls each), and keeps the faster; the times are in
  ``plan()[i].extra["tuned_us"]``. Two loads may then choose differently, and
  their outputs agree to float rounding, not bitwise. ``tune=False`` keeps the plain
  thresholds (a plan that does not depend on timing).

With the numpy-only backend (no numba), the sparse conv path is an im2col GEMM over the
nonzero columns only and the sparse Linear path a gather + ``reduceat``.

A :class:`SparseModel` keeps per-thread scratch buffers; one instance can be called from
several threads. On the first call with a batch size ``N`` (per thread) the steps are
*bound*: each gets its buffers (64-byte aligned) and, for the direct sparse convolution,
a closure that makes one compiled call with every argument but the input fixed; later
calls with that ``N`` only run the bound list (at batch 1, the Python around a small
layer's kernel would otherwise cost as much as the kernel). Intermediate values live
in the reused buffers; every returned output is a fresh array.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import kernels
from . import SparseFormatError

__all__ = [
    "MAGIC", "MAGIC_BYTES", "FORMAT_VERSION", "READ_VERSIONS", "SparseModel", "load", "read_container",
    "write_container", "DENSITY_THRESHOLDS", "TUNE_BAND", "TINY_MACS", "OP_TYPES",
]

MAGIC = "mobileprune.sparse"
MAGIC_BYTES = b"MPSPARSE"
#: the newest format version, written for models with several inputs (version 1 for one
#: input, so such files stay readable by older runtimes)
FORMAT_VERSION = 2
#: format versions this runtime reads
READ_VERSIONS = (1, 2)
ALIGN = 64
_PREFIX = struct.Struct("<8sIIQ")
_DTYPES = {"<f4": np.float32, "<f2": np.float16, "<u2": np.uint16, "<u4": np.uint32,
           "<i4": np.int32, "<i8": np.int64, "<u1": np.uint8}

#: ``mode="auto"``: a layer runs sparse when its weight density is below this.
DENSITY_THRESHOLDS: dict[str, float] = {"conv": 0.35, "linear": 0.12}
#: Densities at which ``mode="auto"`` times both kernels at load and keeps the faster
#: (outside the band the threshold decides: the winner there is never in doubt).
TUNE_BAND: dict[str, tuple[float, float]] = {"conv": (0.15, 1.0), "linear": (0.06, 0.5)}
#: layers with fewer dense multiply-adds per sample always run sparse.
TINY_MACS = 4096

OP_TYPES = ("conv1d", "conv2d", "linear", "maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d",
            "global_avgpool", "batchnorm", "relu", "activation", "reshape", "add", "sub", "mul", "concat")

#: ``activation`` ops: ``attrs["fn"]`` and the numeric attributes each one takes
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "hardtanh": ("min_val", "max_val"),  # relu6 is hardtanh(0, 6)
    "leaky_relu": ("negative_slope",), "elu": ("alpha",), "sigmoid": (), "tanh": (),
    "hardsigmoid": (), "hardswish": (), "silu": (), "softmax": ("axis",),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32, copy=False)


def _activation(op: dict, ndim: int) -> Callable[[np.ndarray], np.ndarray]:
    """The float32 numpy function of an ``activation`` op (validates its attributes;
    ``ndim``: dimensions of a sample, for softmax's axis)."""
    a = op.get("attrs") or {}
    fn = a.get("fn")
    if fn not in ACTIVATIONS:
        raise _fail(op, f"unknown activation {fn!r} (this runtime knows "
                        f"{', '.join(ACTIVATIONS)})")
    p = {}
    for k in ACTIVATIONS[fn]:
        v = a.get(k)
        ok = (isinstance(v, int) and 0 <= v < ndim) if k == "axis" else (
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        if not ok:
            raise _fail(op, f"activation {fn}: bad {k} {v!r}")
        p[k] = v if k == "axis" else np.float32(v)
    f32 = np.float32
    if fn == "hardtanh":
        if not p["min_val"] <= p["max_val"]:
            raise _fail(op, "hardtanh: min_val > max_val")
        return lambda x: np.clip(x, p["min_val"], p["max_val"])
    if fn == "leaky_relu":
        return lambda x: np.where(x >= 0, x, x * p["negative_slope"])
    if fn == "elu":
        return lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)) * p["alpha"])
    if fn == "sigmoid":
        return _sigmoid
    if fn == "tanh":
        return np.tanh
    if fn == "hardsigmoid":
        return lambda x: np.clip(x / f32(6) + f32(0.5), f32(0), f32(1))
    if fn == "hardswish":
        return lambda x: x * np.clip(x + f32(3), f32(0), f32(6)) / f32(6)
    if fn == "silu":
        return lambda x: x * _sigmoid(x)
    ax = p["axis"] + 1  # softmax over one non-batch axis

    def softmax(x):
        e = np.exp(x - x.max(axis=ax, keepdims=True))
        e /= e.sum(axis=ax, keepdims=True)
        return e
    return softmax



# =======================================================================================
# container

def _pad(n: int) -> int:
    return (-n) % ALIGN


def write_container(path: str | os.PathLike, header: dict, arrays: dict[str, np.ndarray]) -> int:
    """Write ``header`` + ``arrays`` atomically (temp file + ``os.replace``); return size.

    ``header`` must not contain ``arrays``/``data_nbytes``/``data_crc32`` (they are
    filled in here); its ``format_version`` (default :data:`FORMAT_VERSION`) is also
    written in the binary prefix. Arrays are written little-endian, C order.
    """
    header = dict(header)
    version = header.setdefault("format_version", FORMAT_VERSION)
    if version not in READ_VERSIONS:
        raise ValueError(f"format_version must be one of {READ_VERSIONS}, got {version!r}")
    table: dict[str, dict] = {}
    chunks: list[bytes] = []
    pos = 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("<", "|", "=") else a.dtype
        a = a.astype(dt.newbyteorder("<"), copy=False)
        key = a.dtype.str if a.dtype.str in _DTYPES else None
        if key is None and a.dtype.itemsize == 1:
            key = "<u1"
        if key not in _DTYPES:
            raise ValueError(f"array {name!r}: unsupported dtype {a.dtype}")
        raw = a.tobytes()
        table[name] = {"dtype": key, "shape": list(a.shape), "offset": pos, "nbytes": len(raw)}
        chunks.append(raw)
        pad = _pad(len(raw))
        if pad:
            chunks.append(b"\0" * pad)
        pos += len(raw) + pad
    data = b"".join(chunks)
    header["arrays"] = table
    header["data_nbytes"] = len(data)
    header["data_crc32"] = zlib.crc32(data)
    hbytes = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
    prefix = _PREFIX.pack(MAGIC_BYTES, version, zlib.crc32(hbytes), len(hbytes))
    head = prefix + hbytes
    head += b"\0" * _pad(len(head))
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(head) + len(data)


def read_container(source: str | os.PathLike | bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a sparse model file; return ``(header, arrays)``.

    Arrays are read-only numpy views of the file bytes. Raises
    :class:`SparseFormatError` on any inconsistency of the container itself.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        where = "<bytes>"
    else:
        where = os.fspath(source)
        try:
            with open(where, "rb") as f:
                raw = f.read()
        except IsADirectoryError as e:
            raise SparseFormatError(f"{where}: is a directory, not a sparse model file") from e
    if len(raw) < _PREFIX.size:
        raise SparseFormatError(f"{where}: file too short ({len(raw)} bytes) to be a "
                                f"mobileprune sparse model (truncated?)")
    magic, version, hcrc, hlen = _PREFIX.unpack_from(raw, 0)
    if magic != MAGIC_BYTES:
        raise SparseFormatError(f"{where}: not a mobileprune sparse model file "
                                f"(bad magic {magic!r}, expected {MAGIC_BYTES!r})")
    if version not in READ_VERSIONS:
        raise SparseFormatError(f"{where}: unsupported format_version {version} "
                                f"(this runtime reads versions "
                                f"{', '.join(map(str, READ_VERSIONS))})")
    hstart = _PREFIX.size
    if hlen > len(raw) - hstart:
        raise SparseFormatError(f"{where}: truncated file (header of {hlen} bytes announced, "
                                f"{len(raw) - hstart} available)")
    hbytes = raw[hstart:hstart + hlen]
    if zlib.crc32(hbytes) != hcrc:
        raise SparseFormatError(f"{where}: corrupt header (CRC mismatch)")
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SparseFormatError(f"{where}: corrupt header ({e})") from e
    if not isinstance(header, dict):
        raise SparseFormatError(f"{where}: header is not a JSON object")
    if header.get("magic") != MAGIC:
        raise SparseFormatError(f"{where}: header magic {header.get('magic')!r} != {MAGIC!r}")
    if header.get("format_version") != version:
        raise SparseFormatError(f"{where}: header format_version "
                                f"{header.get('format_version')!r} differs from the file's "
                                f"{version}")
    dstart = hstart + hlen + _pad(hstart + hlen)
    dn = header.get("data_nbytes")
    if not isinstance(dn, int) or dn < 0:
        raise SparseFormatError(f"{where}: bad data_nbytes {dn!r}")
    if len(raw) < dstart + dn:
        raise SparseFormatError(f"{where}: truncated file ({len(raw)} bytes, expected "
                                f"{dstart + dn})")
    if len(raw) > dstart + dn:
        raise SparseFormatError(f"{where}: {len(raw) - dstart - dn} unexpected trailing bytes")
    data = memoryview(raw)[dstart:dstart + dn]
    if zlib.crc32(data) != header.get("data_crc32"):
        raise SparseFormatError(f"{where}: corrupt data section (CRC mismatch)")
    table = header.get("arrays")
    if not isinstance(table, dict):
        raise SparseFormatError(f"{where}: header has no array table")
    arrays: dict[str, np.ndarray] = {}
    spans = []
    for name, info in table.items():
        try:
            dt = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            off, nb = int(info["offset"]), int(info["nbytes"])
        except (KeyError, TypeError, ValueError) as e:
            raise SparseFormatError(f"{where}: bad entry for array {name!r}: {info!r}") from e
        if any(s < 0 for s in shape) or off < 0 or off % ALIGN:
            raise SparseFormatError(f"{where}: array {name!r} has a bad shape or offset")
        if nb != math.prod(shape) * np.dtype(dt).itemsize or off + nb > dn:
            raise SparseFormatError(f"{where}: array {name!r} ({shape}, {info['dtype']}) does "
                                    f"not fit its {nb} bytes at offset {off}")
        spans.append((off, off + nb, name))
        arrays[name] = np.frombuffer(data, dtype=np.dtype(dt).newbyteorder("<"),
                                     count=math.prod(shape), offset=off).reshape(shape)
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise SparseFormatError(f"{where}: arrays {an!r} and {bn!r} overlap")
    return header, arrays


# =======================================================================================
# validation helpers

def _fail(op: dict | str, msg: str) -> SparseFormatError:
    name = op.get("name", "?") if isinstance(op, dict) else op
    return SparseFormatError(f"op {name!r}: {msg}")


def _ints(op, attrs, key, n, lo=None):
    v = attrs.get(key)
    if not isinstance(v, list) or len(v) != n or not all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        raise _fail(op, f"attribute {key!r} must be a list of {n} integers, got {v!r}")
    if lo is not None and any(t < lo for t in v):
        raise _fail(op, f"attribute {key!r} must be >= {lo}, got {v!r}")
    return v


def _pads(op, attrs, n):
    v = attrs.get("padding")
    ok = isinstance(v, list) and len(v) == n and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(t, int) and t >= 0 for t in p) for p in v)
    if not ok:
        raise _fail(op, f"attribute 'padding' must be {n} [before, after] pairs, got {v!r}")
    return v


def _pool_len(L, k, s, p, d, ceil):
    num = L + 2 * p - d * (k - 1) - 1
    if num < 0:
        return 0
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= L + p:
        out -= 1
    return out


def _infer_shape(op: dict, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Output per-sample shape of ``op`` from its inputs' shapes (validates attributes)."""
    kind = op["op"]
    attrs = op.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise _fail(op, "attrs must be an object")
    binary = kind in ("add", "sub", "mul")
    n_in = (1 if "scalar" in attrs else 2) if binary else None
    if kind == "concat":
        if len(in_shapes) < 1:
            raise _fail(op, "concat needs at least one input")
    elif n_in is not None:
        if len(in_shapes) != n_in:
            raise _fail(op, f"needs {n_in} inputs, has {len(in_shapes)}")
    elif len(in_shapes) != 1:
        raise _fail(op, f"needs 1 input, has {len(in_shapes)}")
    s = in_shapes[0]
    if kind in ("conv1d", "conv2d"):
        nd = 1 if kind == "conv1d" else 2
        if len(s) != nd + 1:
            raise _fail(op, f"input must be (C, {'L' if nd == 1 else 'H, W'}), got {s}")
        k = _ints(op, attrs, "kernel", nd, 1)
        st = _ints(op, attrs, "stride", nd, 1)
        dl = _ints(op, attrs, "dilation", nd, 1)
        pd = _pads(op, attrs, nd)
        g = attrs.get("groups")
        cin, cout = attrs.get("in_channels"), attrs.get("out_channels")
        if not all(isinstance(t, int) and t >= 1 for t in (g, cin, cout)) or cin % g or cout % g:
            raise _fail(op, f"bad channels/groups {cin}/{cout}/{g}")
        if s[0] != cin:
            raise _fail(op, f"input has {s[0]} channels, layer expects {cin}")
        out = [cout]
        for L, kk, ss, dd, (pa, pb) in zip(s[1:], k, st, dl, pd):
            num = L + pa + pb - dd * (kk - 1) - 1
            if num < 0:
                raise _fail(op, f"input {s} too small for the kernel")
            out.append(num // ss + 1)
        return tuple(out)
    if kind == "linear":
        fi, fo = attrs.get("in_features"), attrs.get("out_features")
        if not all(isinstance(t, int) and t >= 1 for t in (fi, fo)):
            raise _fail(op, "bad in_features/out_features")
        if s != (fi,):
            raise _fail(op, f"input must be ({fi},) per sample, got {s}")
        return (fo,)
    if kind in ("maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d"):
        nd = 1 if kind.endswith("1d") else 2
        if len(s) != nd + 1:
            raise _fail(op, f"input must have {nd} spatial dims, got {s}")
        k = _ints(op, attrs, "kernel", nd, 1)
        st = _ints(op, attrs, "stride", nd, 1)
        p = _ints(op, attrs, "padding", nd, 0)
        dl = _ints(op, attrs, "dilation", nd, 1) if kind.startswith("max") else [1] * nd
        ceil = attrs.get("ceil_mode", False)
        if not isinstance(ceil, bool):
            raise _fail(op, "ceil_mode must be a boolean")
        if kind.startswith("avg"):
            if not isinstance(attrs.get("count_include_pad"), bool):
                raise _fail(op, "count_include_pad must be a boolean")
            dv = attrs.get("divisor_override")
            if dv is not None and (not isinstance(dv, int) or dv < 1):
                raise _fail(op, "divisor_override must be a positive integer or null")
        if any(pp * 2 > kk for pp, kk in zip(p, k)):
            raise _fail(op, "padding must be at most half the kernel")
        out = [s[0]]
        for L, kk, ss, pp, dd in zip(s[1:], k, st, p, dl):
            o = _pool_len(L, kk, ss, pp, dd, ceil)
            if o < 1:
                raise _fail(op, f"input {s} too small for the pooling window")
            out.append(o)
        return tuple(out)
    if kind == "global_avgpool":
        if len(s) < 2:
            raise _fail(op, f"input must be (C, spatial...), got {s}")
        keep = attrs.get("keepdim")
        if not isinstance(keep, bool):
            raise _fail(op, "keepdim must be a boolean")
        return (s[0],) + ((1,) * (len(s) - 1) if keep else ())
    if kind == "batchnorm":
        if len(s) < 1:
            raise _fail(op, "batchnorm input needs a channel dimension")
        return s
    if kind == "relu":
        return s
    if kind == "activation":
        _activation(op, len(s))  # validates the attributes
        return s
    if kind == "reshape":
        shape = op.get("shape")
        if not isinstance(shape, list) or math.prod(shape) != math.prod(s):
            raise _fail(op, f"cannot reshape {s} to {shape}")
        return tuple(shape)
    if binary:
        if "scalar" in attrs:
            v = attrs["scalar"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not isinstance(attrs.get("scalar_first", False), bool):
                raise _fail(op, f"bad scalar operand {v!r}")
            return s
        a, b = in_shapes
        try:
            out = np.broadcast_shapes(a, b)
        except ValueError:
            out = None
        if len(a) != len(b) or out is None:
            raise _fail(op, f"operands of shapes {a} and {b} do not broadcast")
        return tuple(out)
    if kind == "concat":
        ax = attrs.get("axis")
        if not isinstance(ax, int) or not 0 <= ax < len(s):
            raise _fail(op, f"bad concat axis {ax!r}")
        for t in in_shapes[1:]:
            if len(t) != len(s) or any(a != b for i, (a, b) in enumerate(zip(s, t)) if i != ax):
                raise _fail(op, f"cannot concatenate shapes {in_shapes} along axis {ax}")
        return s[:ax] + (sum(t[ax] for t in in_shapes),) + s[ax + 1:]
    raise _fail(op, f"unknown op type {kind!r} (this runtime knows {', '.join(OP_TYPES)})")


def _binary(op: dict) -> Callable[..., np.ndarray]:
    """The numpy function of an ``add`` / ``sub`` / ``mul`` op: of two arrays
    (broadcasting), or of one array and ``attrs["scalar"]`` (``scalar_first``: the number
    is the left operand)."""
    ufunc = {"add": np.add, "sub": np.subtract, "mul": np.multiply}[op["op"]]
    a = op.get("attrs") or {}
    if "scalar" not in a:
        return ufunc
    v = np.float32(a["scalar"])
    if a.get("scalar_first", False):
        return lambda x: ufunc(v, x)
    return lambda x: ufunc(x, v)


def _get(arrays, op, name, what):
    if not isinstance(name, str) or name not in arrays:
        raise _fail(op, f"{what} array {name!r} missing from the file")
    return arrays[name]


def _load_weight(op: dict, arrays: dict, rows: int, cols: int):
    """Return ``(csr or None, dense or None, nnz)``; validates shapes and indices."""
    w = op.get("weight")
    if not isinstance(w, dict):
        raise _fail(op, "missing weight record")
    if w.get("rows") != rows or w.get("cols") != cols:
        raise _fail(op, f"weight is {w.get('rows')}x{w.get('cols')}, op needs {rows}x{cols}")
    arr = w.get("arrays") or {}
    storage = w.get("storage")
    if storage == "csr":
        indptr = _get(arrays, op, arr.get("indptr"), "indptr")
        indices = _get(arrays, op, arr.get("indices"), "indices")
        values = _get(arrays, op, arr.get("values"), "values")
        if indptr.dtype != np.uint32 or indptr.shape != (rows + 1,):
            raise _fail(op, f"indptr must be uint32 ({rows + 1},), got {indptr.dtype} {indptr.shape}")
        if indices.dtype not in (np.uint16, np.uint32) or indices.ndim != 1:
            raise _fail(op, "indices must be a uint16/uint32 vector")
        if values.dtype not in (np.float32, np.float16) or values.ndim != 1:
            raise _fail(op, "values must be a float32/float16 vector")
        nnz = indices.shape[0]
        if values.shape[0] != nnz or w.get("nnz") != nnz:
            raise _fail(op, f"nnz mismatch: {w.get('nnz')} recorded, {nnz} indices, "
                            f"{values.shape[0]} values")
        ip = indptr.astype(np.int64)
        if ip[0] != 0 or ip[-1] != nnz or np.any(np.diff(ip) < 0):
            raise _fail(op, "indptr is not a valid CSR row pointer")
        if nnz and int(indices.max()) >= cols:
            raise _fail(op, f"column index {int(indices.max())} out of range (cols={cols})")
        return (ip, indices.astype(np.int32), values.astype(np.float32)), None, nnz
    if storage == "dense":
        values = _get(arrays, op, arr.get("values"), "values")
        if values.dtype not in (np.float32, np.float16) or values.shape != (rows, cols):
            raise _fail(op, f"dense weight must be float ({rows}, {cols}), got "
                            f"{values.dtype} {values.shape}")
        dense = values.astype(np.float32)
        nnz = int(np.count_nonzero(dense))
        if w.get("nnz") != nnz:
            raise _fail(op, f"nnz mismatch: {w.get('nnz')} recorded, {nnz} found")
        return None, dense, nnz
    raise _fail(op, f"unknown weight storage {storage!r}")


def _csr_from_dense(dense: np.ndarray):
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(dense.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int32), dense[rows, cols].astype(np.float32)


def _dense_from_csr(csr, rows: int, cols: int) -> np.ndarray:
    indptr, idx, vals = csr
    d = np.zeros((rows, cols), np.float32)
    r = np.repeat(np.arange(rows), np.diff(indptr))
    d[r, idx] = vals
    return d


def _bias(op: dict, arrays: dict, rows: int) -> np.ndarray:
    name = op.get("bias")
    if name is None:
        return np.zeros(rows, np.float32)
    b = _get(arrays, op, name, "bias")
    if b.dtype != np.float32 or b.shape != (rows,):
        raise _fail(op, f"bias must be float32 ({rows},), got {b.dtype} {b.shape}")
    return np.array(b, np.float32)


# =======================================================================================
# steps

_F32 = np.dtype(np.float32)


class _Scratch(threading.local):
    """Per-thread scratch arrays, reused across calls (fresh pages cost page faults)."""

    def __init__(self) -> None:
        self.bufs: dict = {}
        self.programs: dict = {}  # batch size -> bound program (SparseModel._bind)
        self.fast: dict = {}  # full input shape -> callables (SparseModel._bind)

    def get(self, owner: object, tag: str, shape: tuple[int, ...], zero: bool = False,
            dtype=np.float32) -> np.ndarray:
        key = (id(owner), tag)
        a = self.bufs.get(key)
        if a is None or a.shape != shape:
            a = kernels.aligned_empty(shape, dtype, zero)
            self.bufs[key] = a
        return a


@dataclass
class LayerPlan:
    """How one Conv/Linear layer runs (see :meth:`SparseModel.plan`)."""

    name: str
    op: str
    rows: int
    cols: int
    nnz: int
    density: float
    kernel: str
    relu_fused: bool = False
    macs_dense: int = 0
    macs_sparse: int = 0
    extra: dict = field(default_factory=dict)


class _Step:
    inputs: list[str]
    output: str
    is_output: bool = False  # the value is a model output: never a reused scratch buffer

    def _out(self, scratch: _Scratch, shape: tuple[int, ...]) -> np.ndarray:
        if self.is_output:
            return np.empty(shape, np.float32)
        return scratch.get(self, "out", shape)

    def run(self, vals: list[np.ndarray], scratch: _Scratch) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def bind(self, scratch: _Scratch, N: int):
        """A function of the step's input arrays for batch size ``N``, with its buffers
        looked up once (:meth:`SparseModel._bind`); by default :meth:`run`."""
        run = self.run

        def fn(*vals):
            return run(vals, scratch)
        return fn

    def bind_into(self, scratch: _Scratch, N: int):
        """``f(x, out)`` writing the step's output for batch size ``N`` straight into the
        caller's C-contiguous float32 array ``out`` (``SparseModel(x, out=...)``), or
        ``None`` if the step has no such kernel (the result is then copied into ``out``)."""
        return None


def _time_variants(step, x: np.ndarray, repeats: int = 7) -> dict[bool, float]:
    """Median seconds of ``step.run`` with its sparse (True) and dense (False) kernel,
    interleaved, after one warm-up call each (``mode="auto"`` tuning at load)."""
    scratch = _Scratch()
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(repeats + 1):
        for variant in (True, False):
            step.sparse = variant
            t0 = time.perf_counter()
            step.run([x], scratch)
            if r:
                times[variant].append(time.perf_counter() - t0)
    return {v: float(np.median(ts)) for v, ts in times.items()}


class _ConvStep(_Step):
    def __init__(self, op, arrays, in_shape, out_shape, mode, relu=False, tune_ok=True):
        self.name, self.inputs, self.output = op["name"], list(op["inputs"]), op["name"]
        a = op["attrs"]
        self.dims = 1 if op["op"] == "conv1d" else 2
        if self.dims == 1:
            C, W = in_shape
            H = 1
            kh, kw = 1, a["kernel"][0]
            sh, sw = 1, a["stride"][0]
            dh, dw = 1, a["dilation"][0]
            (pt, pb), (pl, pr) = (0, 0), a["padding"][0]
            O, Wo = out_shape
            Ho = 1
        else:
            C, H, W = in_shape
            kh, kw = a["kernel"]
            sh, sw = a["stride"]
            dh, dw = a["dilation"]
            (pt, pb), (pl, pr) = a["padding"]
            O, Ho, Wo = out_shape
        G = a["groups"]
        self.C, self.H, self.W, self.O, self.Ho, self.Wo, self.G = C, H, W, O, Ho, Wo, G
        self.out_shape = tuple(out_shape)
        Cg, Og = C // G, O // G
        K = Cg * kh * kw
        csr, dense, nnz = _load_weight(op, arrays, O, K)
        self.bias = _bias(op, arrays, O)
        self.relu = bool(relu)
        density = nnz / float(O * K) if O * K else 0.0
        macs = O * K * Ho * Wo
        # geometry of the padded (polyphase) input buffer
        Hp, Wp = H + pt + pb, W + pl + pr
        Hq, Wq = -(-Hp // sh), -(-Wp // sw)
        self.pt, self.pl, self.sh, self.sw, self.Hq, self.Wq = pt, pl, sh, sw, Hq, Wq
        self.P = sh * sw * C * Hq * Wq
        self.pointwise = (kh == kw == 1 and sh == sw == 1 and pt == pb == pl == pr == 0
                          and G == 1)
        # flat buffer offset of every weight column (c, i, j) for every group
        c_idx = np.arange(C).reshape(G, Cg)
        ii = np.arange(kh) * dh
        jj = np.arange(kw) * dw
        base_ij = (((ii % sh)[:, None] * sw + (jj % sw)[None, :]) * C * Hq * Wq
                   + (ii // sh)[:, None] * Wq + (jj // sw)[None, :])  # (kh, kw)
        # roff[g, (c*kh + i)*kw + j]
        self.roff = (c_idx[:, :, None, None] * (Hq * Wq) + base_ij[None, None]).reshape(G, K)
        kernels_ok = kernels.HAVE_NUMBA
        if mode == "dense":
            use_sparse = False
        elif mode == "sparse":
            use_sparse = True
        elif G > 1:
            use_sparse = True
        else:
            use_sparse = density < DENSITY_THRESHOLDS["conv"] or macs < TINY_MACS
        lo, hi = TUNE_BAND["conv"]
        tune = (mode == "auto" and tune_ok and kernels_ok and G == 1 and macs >= TINY_MACS
                and lo <= density <= hi)
        self.sparse = use_sparse
        if (use_sparse or tune) and kernels_ok:
            self._setup_direct(op, csr, dense, O, Og, Ho, Wo)
        if not (use_sparse and kernels_ok) or tune:
            self._setup_gemm(csr, dense, O, K, G, use_sparse and not tune)
        self.plan = LayerPlan(op.get("module") or self.name, op["op"], O, K, nnz, density,
                              self.kernel, self.relu, macs, nnz * Ho * Wo)
        if tune:
            self._tune()

    def _setup_direct(self, op, csr, dense, O, Og, Ho, Wo):
        """Direct sparse convolution (CSR rows of weights, offsets into the padded input)."""
        indptr, idx, vals = csr if csr is not None else _csr_from_dense(dense)
        grp = np.repeat(np.arange(O) // Og, np.diff(indptr))
        self.indptr = indptr
        self.offs = self.roff[grp, idx].astype(np.int32) if idx.size else np.zeros(0, np.int32)
        if self.P * 2 + 64 >= 2 ** 31:
            raise _fail(op, "layer too large for 32-bit offsets")
        self.vals = vals
        self.blk, self.row_stride, self.plane, self.width = kernels.conv_block_table(
            Ho, Wo, self.Wq)
        # whole input buffer in L1 (<= 16 KiB): output channels outside
        self.o_outer = self.P * 4 <= 16384
        self.geom = kernels.conv_geometry(self.P, self.pt, self.pl, self.sh, self.sw, self.Hq,
                                          self.Wq, O * self.plane, self.plane, self.relu,
                                          self.o_outer, self.width)
        # one byte array with every constant of the kernel (fewer arguments per call); the
        # attributes become views into it
        self.blob, (self.geom, self.indptr, self.blk, self.offs, self.vals, _) = kernels.conv_pack(
            self.indptr, self.offs, self.vals, self.bias, self.blk, self.geom)
        self.plain_out = self.plane == Ho * Wo and self.row_stride == Wo
        self.kernel_sparse = "direct-sparse-conv" + ("" if kernels.backend() == "numba-simd" else " (loops)")
        self.kernel = self.kernel_sparse

    def _setup_gemm(self, csr, dense, O, K, G, used_only):
        """im2col + BLAS GEMM (over the nonzero columns only for the numpy backend)."""
        self.Wd = dense if dense is not None else _dense_from_csr(csr, O, K)
        self.used = None
        if used_only:  # numpy backend: GEMM over the used columns only
            used = np.flatnonzero(np.any(self.Wd != 0, axis=0))
            self.used = used
            self.Wd = np.ascontiguousarray(self.Wd[:, used])
            self.roff_used = np.ascontiguousarray(self.roff[0, used]) if G == 1 else None
            self.kernel = "im2col-gemm (nonzero columns)"
            if G > 1:  # rare: numpy backend + grouped conv -> plain dense per group
                self.Wd = dense if dense is not None else _dense_from_csr(csr, O, K)
                self.used = None
                self.kernel = "im2col-gemm per group"
        else:
            self.kernel = "gemm" if self.pointwise else "im2col-gemm"
            if G > 1:
                self.kernel += " per group"
        self.kernel_dense = self.kernel

    def _tune(self) -> None:
        """Time both kernels on this machine at batch 1 and keep the faster one."""
        shape = (1, self.C, self.W) if self.dims == 1 else (1, self.C, self.H, self.W)
        t = _time_variants(self, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        self.sparse = t[True] <= t[False]
        self.kernel = self.kernel_sparse if self.sparse else self.kernel_dense
        self.plan.kernel = self.kernel
        self.plan.extra["tuned_us"] = {"sparse": round(t[True] * 1e6, 2), "dense": round(t[False] * 1e6, 2)}
        if self.sparse:
            del self.Wd
        else:
            del self.indptr, self.offs, self.vals, self.blob

    # scratch: zero-initialised padded input buffer, reused across calls (only the
    # interior is ever written, so the padding stays zero)
    def _buffer(self, scratch: _Scratch, N: int) -> np.ndarray:
        return scratch.get(self, "in", (N * self.P + 64,), zero=True)

    def _direct_args(self, scratch, N):
        """``(padded input buffer, packed constants)`` of the direct sparse kernel for batch
        size ``N`` (:func:`kernels.conv_pack`), or None if the layer does not run it with a
        plain (N, O, Ho, Wo) output."""
        if not (self.sparse and kernels.HAVE_NUMBA and self.plain_out and self.dims == 2):
            return None
        return self._buffer(scratch, N), self.blob

    def bind(self, scratch, N):
        args = self._direct_args(scratch, N)
        if args is None:
            return super().bind(scratch, N)
        # the direct sparse kernel with every argument fixed but the input: one numba
        # call per layer and call (at batch 1 the Python around a kernel is a few us)
        buf, blob = args
        size, shape = N * self.O * self.plane, (N,) + self.out_shape
        if self.is_output:  # a fresh, cache-line aligned array per call
            into = kernels.conv_forward_blob_into()
            empty, f32, pad = np.empty, np.float32, kernels.ALIGN_PAD

            def fn(x):
                raw = empty(size + pad, f32)
                o = into(x, buf, blob, raw)
                return raw[o:o + size].reshape(shape)
            fn.contiguous = True  # a fresh C-contiguous array (SparseModel._fast_fn)
            return fn
        out = scratch.get(self, "out", (size,))
        res = out.reshape(shape)
        kern = kernels.conv_forward_blob_kernel()

        def fn(x):
            kern(x, buf, blob, out)
            return res
        return fn

    def bind_into(self, scratch, N):
        args = self._direct_args(scratch, N)
        if args is None:
            return None
        buf, blob = args
        kern = kernels.conv_forward_blob_kernel()

        def fn(x, out):
            kern(x, buf, blob, out.reshape(-1))
            return out
        return fn

    def run(self, vals, scratch):
        x = vals[0]
        N = x.shape[0]
        x4 = x.reshape(N, self.C, self.H, self.W) if self.dims == 1 else x
        if x4.dtype != np.float32:
            x4 = x4.astype(np.float32)
        if self.sparse and kernels.HAVE_NUMBA:
            buf = self._buffer(scratch, N)
            plane, rs = self.plane, self.row_stride
            out = self._out(scratch, (N * self.O * plane,))
            kernels.conv_forward_sparse_packed(x4, buf, self.indptr, self.offs, self.vals,
                                               self.bias, self.blk, out, self.geom)
            if self.plain_out:  # plane == Ho * Wo: the buffer is the (N, O, Ho, Wo) output
                return out.reshape((N,) + self.out_shape)
            res = out.reshape(N, self.O, plane)
            if plane != self.Ho * rs:
                res = res[:, :, :self.Ho * rs]
            res = res.reshape(N, self.O, self.Ho, rs)
            if rs != self.Wo:
                res = res[..., :self.Wo]
            return res if self.dims == 2 else res[:, :, 0, :]
        # dense / numpy paths: (N, O, Ho*Wo) contiguous
        HW = self.Ho * self.Wo
        out = self._out(scratch, (N, self.O, HW))
        if self.pointwise:
            xc = np.ascontiguousarray(x4).reshape(N, self.C, HW)
            np.matmul(self.Wd, xc, out=out)
        else:
            buf = self._buffer(scratch, N)
            kernels.conv_fill_input(np.ascontiguousarray(x4), buf, self.P, self.pt, self.pl,
                                    self.sh, self.sw, self.Hq, self.Wq)
            G, O, Og = self.G, self.O, self.O // self.G
            if self.used is not None:
                roff = self.roff_used
                cols = scratch.get(self, "cols", (len(roff), HW))
                for n in range(N):
                    kernels.conv_im2col(buf, n * self.P, roff, self.Ho, self.Wo, self.Wq, cols)
                    np.matmul(self.Wd, cols, out=out[n])
            else:
                K = self.roff.shape[1]
                cols = scratch.get(self, "cols", (K, HW))
                for n in range(N):
                    for g in range(G):
                        kernels.conv_im2col(buf, n * self.P, np.ascontiguousarray(self.roff[g]),
                                            self.Ho, self.Wo, self.Wq, cols)
                        np.matmul(self.Wd[g * Og:(g + 1) * Og], cols, out=out[n, g * Og:(g + 1) * Og])
        out += self.bias[None, :, None]
        if self.relu:
            np.maximum(out, 0, out=out)
        return out.reshape((N,) + self.out_shape)


class _LinearStep(_Step):
    def __init__(self, op, arrays, in_shape, out_shape, mode, relu=False, tune_ok=True):
        self.name, self.inputs, self.output = op["name"], list(op["inputs"]), op["name"]
        fi, fo = op["attrs"]["in_features"], op["attrs"]["out_features"]
        csr, dense, nnz = _load_weight(op, arrays, fo, fi)
        self.bias = _bias(op, arrays, fo)
        self.relu = bool(relu)
        self.fo, self.fi = fo, fi
        density = nnz / float(fo * fi)
        if mode == "dense":
            use_sparse = False
        elif mode == "sparse":
            use_sparse = True
        else:
            use_sparse = density < DENSITY_THRESHOLDS["linear"] or fo * fi < TINY_MACS
        lo, hi = TUNE_BAND["linear"]
        tune = (mode == "auto" and tune_ok and kernels.HAVE_NUMBA and fo * fi >= TINY_MACS
                and lo <= density <= hi)
        self.sparse = use_sparse
        if use_sparse or tune:
            self.indptr, self.idx, self.vals = csr if csr is not None else _csr_from_dense(dense)
            self.kernel_sparse = "csr-gather"
            self.sell = None
            if kernels.HAVE_NUMBA:
                self.sell = kernels.sell_pack(self.indptr, self.idx, self.vals)
                self.kernel_sparse = "sell-gather (N<8) / csr-axpy (N>=8)"
        if not use_sparse or tune:
            self.Wt = np.ascontiguousarray((dense if dense is not None
                                            else _dense_from_csr(csr, fo, fi)).T)
        self.kernel = self.kernel_sparse if use_sparse else "gemm"
        self.plan = LayerPlan(op.get("module") or self.name, "linear", fo, fi, nnz, density,
                              self.kernel, self.relu, fo * fi, nnz)
        if tune:
            t = _time_variants(self, np.random.default_rng(0).standard_normal((1, fi)).astype(np.float32))
            self.sparse = t[True] <= t[False]
            self.kernel = self.plan.kernel = self.kernel_sparse if self.sparse else "gemm"
            self.plan.extra["tuned_us"] = {"sparse": round(t[True] * 1e6, 2),
                                           "dense": round(t[False] * 1e6, 2)}
            if self.sparse:
                del self.Wt
            else:
                del self.indptr, self.idx, self.vals, self.sell

    def run(self, vals, scratch):
        x = np.ascontiguousarray(vals[0], dtype=np.float32)
        N = x.shape[0]
        if self.sparse:
            if N >= 8 and kernels.HAVE_NUMBA:
                yt = scratch.get(self, "yt", (self.fo, N))
                kernels.linear_csr_t(np.ascontiguousarray(x.T), self.indptr, self.idx, self.vals,
                                     self.bias, self.relu, yt)
                return np.ascontiguousarray(yt.T)
            y = self._out(scratch, (N, self.fo))
            if self.sell is not None:
                gptr, sidx, svals, perm = self.sell
                kernels.linear_sell(x, gptr, sidx, svals, perm, self.bias, self.relu, y)
                return y
            kernels.linear_csr(x, self.indptr, self.idx, self.vals, self.bias, self.relu, y)
            return y
        y = np.matmul(x, self.Wt)
        y += self.bias
        if self.relu:
            np.maximum(y, 0, out=y)
        return y


class _PoolStep(_Step):
    def __init__(self, op, in_shape, out_shape):
        self.name, self.inputs, self.output = op["name"], list(op["inputs"]), op["name"]
        a = op["attrs"]
        self.kind = op["op"]
        self.dims = 1 if self.kind.endswith("1d") else 2
        one = (lambda v: [1] + list(v)) if self.dims == 1 else (lambda v: list(v))
        zero = (lambda v: [0] + list(v)) if self.dims == 1 else (lambda v: list(v))
        self.k = one(a["kernel"])
        self.s = one(a["stride"])
        self.p = zero(a["padding"])
        self.d = one(a.get("dilation", [1] * self.dims))
        self.include_pad = bool(a.get("count_include_pad", True))
        self.divisor = int(a.get("divisor_override") or 0)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.out4 = (out_shape[0], 1, out_shape[1]) if self.dims == 1 else tuple(out_shape)
        self.in4 = (in_shape[0], 1, in_shape[1]) if self.dims == 1 else tuple(in_shape)

    def run(self, vals, scratch):
        x = vals[0]
        N = x.shape[0]
        x4 = x.reshape((N,) + self.in4) if self.dims == 1 else x
        if kernels.HAVE_NUMBA and x4.strides[-1] != 4:
            x4 = np.ascontiguousarray(x4)
        out = self._out(scratch, (N,) + self.out4)
        if self.kind.startswith("max"):
            kernels.maxpool2d(x4, self.k[0], self.k[1], self.s[0], self.s[1], self.p[0], self.p[1],
                              self.d[0], self.d[1], out)
        else:
            kernels.avgpool2d(x4, self.k[0], self.k[1], self.s[0], self.s[1], self.p[0], self.p[1],
                              self.include_pad, self.divisor, out)
        return out.reshape((N,) + self.out_shape)


class _FnStep(_Step):
    def __init__(self, op, fn, view: bool = False):
        self.name, self.inputs, self.output = op["name"], list(op["inputs"]), op["name"]
        self.fn = fn
        self.view = view  # the result may be a view of the input (no fresh memory)

    def bind(self, scratch, N):
        return self.fn

    def run(self, vals, scratch):
        return self.fn(*vals)


# =======================================================================================
# the model

class SparseModel:
    """A model loaded from a mobileprune sparse file, run with numpy/numba kernels.

    Args:
        source: path of a file written by :func:`mobileprune.sparse_format.export_sparse`,
            or the bytes of one.
        mode: ``"auto"`` (default), ``"sparse"`` or ``"dense"``: how Conv/Linear layers run
            (see the module documentation).
        blas_threads: threads of numpy's BLAS during a call (dense layers only), set for
            the calling thread alone with OpenBLAS's ``openblas_set_num_threads_local`` and
            restored afterwards; ``None`` leaves BLAS alone. Default 1: the runtime is
            single-threaded, and a multi-threaded BLAS on a busy device can be many times
            slower than one thread.

    Calling the model on a float32 array ``(N, *input_shape)`` (``N >= 1``) returns the
    float32 output ``(N, *output_shape)`` (a tuple if the model has several outputs), a
    new array, or the caller's preallocated ``out=`` array(s) (see :meth:`__call__`).

    Raises:
        SparseFormatError: the file is not a valid sparse model file.
        ValueError: ``mode`` is unknown.
    """

    def __init__(self, source: str | os.PathLike | bytes, *, mode: str = "auto",
                 blas_threads: int | None = 1, tune: bool = True) -> None:
        if mode not in ("auto", "sparse", "dense"):
            raise ValueError(f"mode must be 'auto', 'sparse' or 'dense', got {mode!r}")
        if blas_threads is not None and (not isinstance(blas_threads, int) or blas_threads < 1):
            raise ValueError(f"blas_threads must be a positive int or None, got {blas_threads!r}")
        self.mode = mode
        self.blas_threads = blas_threads
        header, arrays = read_container(source)
        self.header = header
        self.architecture = header.get("architecture")
        self.value_dtype = header.get("value_dtype")
        self._scratch = _Scratch()
        self.tune = bool(tune)
        prev = None
        if mode == "auto" and self.tune and blas_threads is not None:
            prev = kernels.set_blas_threads_local(blas_threads)
        try:
            self._build(header, arrays)
        finally:
            if prev is not None:
                kernels.set_blas_threads_local(prev)

    # ---- construction
    def _build(self, header: dict, arrays: dict) -> None:
        if header["format_version"] == 1:
            key, recs = "input", [header.get("input")]
        else:
            key, recs = "inputs", header.get("inputs")
            if not isinstance(recs, list) or not recs:
                raise SparseFormatError("header: 'inputs' must be a non-empty list")
        for inp in recs:
            if not isinstance(inp, dict) or not isinstance(inp.get("name"), str) \
                    or not isinstance(inp.get("shape"), list) \
                    or not all(isinstance(s, int) and s >= 1 for s in inp["shape"]):
                raise SparseFormatError(f"header: bad {key!r} record {inp!r:.200}")
        ops = header.get("ops")
        outputs = header.get("outputs")
        if not isinstance(ops, list) or not isinstance(outputs, list) or not outputs:
            raise SparseFormatError("header: 'ops' and 'outputs' must be lists")
        self.input_names = [inp["name"] for inp in recs]
        if len(set(self.input_names)) != len(recs):
            raise SparseFormatError(f"header: input names {self.input_names} are not unique")
        self.input_shapes = [tuple(inp["shape"]) for inp in recs]
        single = len(recs) == 1
        # the single input (None when the model has several: see input_shapes)
        self.input_name = self.input_names[0] if single else None
        self.input_shape = self.input_shapes[0] if single else None
        shapes: dict[str, tuple[int, ...]] = dict(zip(self.input_names, self.input_shapes))
        consumers: dict[str, int] = {}
        for op in ops:
            if not isinstance(op, dict) or not isinstance(op.get("name"), str) \
                    or not isinstance(op.get("inputs"), list) or not isinstance(op.get("op"), str):
                raise SparseFormatError(f"header: malformed op record {op!r:.200}")
            if op["name"] in shapes:
                raise _fail(op, "value name defined twice")
            for i in op["inputs"]:
                if i not in shapes:
                    raise _fail(op, f"input {i!r} is not defined before this op")
                consumers[i] = consumers.get(i, 0) + 1
            rec = op.get("shape")
            if not isinstance(rec, list) or not all(isinstance(s, int) and s >= 0 for s in rec):
                raise _fail(op, f"bad recorded shape {rec!r}")
            got = _infer_shape(op, [shapes[i] for i in op["inputs"]])
            if tuple(got) != tuple(rec):
                raise _fail(op, f"recorded output shape {rec} does not follow from the inputs "
                                f"(expected {list(got)})")
            shapes[op["name"]] = tuple(got)
        for o in outputs:
            if o not in shapes:
                raise SparseFormatError(f"header: output {o!r} is not a defined value")
            consumers[o] = consumers.get(o, 0) + 1
        self.output_names = list(outputs)
        self.output_shapes = [shapes[o] for o in outputs]

        by_name = {op["name"]: op for op in ops}
        fused: dict[str, str] = {}  # relu name -> producer name
        for op in ops:
            if op["op"] == "relu":
                src = op["inputs"][0]
                p = by_name.get(src)
                if p is not None and p["op"] in ("conv1d", "conv2d", "linear") \
                        and consumers.get(src, 0) == 1:
                    fused[op["name"]] = src
        fused_producers = set(fused.values())
        alias: dict[str, str] = {}

        steps: list[_Step] = []
        self.layers: list[LayerPlan] = []
        for op in ops:
            kind = op["op"]
            name = op["name"]
            ins = [alias.get(i, i) for i in op["inputs"]]
            in_shapes = [shapes[i] for i in op["inputs"]]
            out_shape = shapes[name]
            if name in fused:
                alias[name] = alias.get(fused[name], fused[name])
                continue
            relu = name in fused_producers
            if kind in ("conv1d", "conv2d"):
                st = _ConvStep(op, arrays, in_shapes[0], out_shape, self.mode, relu, self.tune)
                self.layers.append(st.plan)
            elif kind == "linear":
                st = _LinearStep(op, arrays, in_shapes[0], out_shape, self.mode, relu, self.tune)
                self.layers.append(st.plan)
            elif kind.startswith(("maxpool", "avgpool")):
                st = _PoolStep(op, in_shapes[0], out_shape)
            elif kind == "global_avgpool":
                shp = out_shape

                def fn(x, _shp=shp):
                    return kernels.global_avgpool(x).reshape((x.shape[0],) + _shp)
                st = _FnStep(op, fn)
            elif kind == "batchnorm":
                C = in_shapes[0][0]
                sc = _get(arrays, op, op.get("scale"), "scale")
                sf = _get(arrays, op, op.get("shift"), "shift")
                if sc.dtype != np.float32 or sf.dtype != np.float32 or sc.shape != (C,) \
                        or sf.shape != (C,):
                    raise _fail(op, f"scale/shift must be float32 ({C},)")
                bshape = (1, C) + (1,) * (len(in_shapes[0]) - 1)
                scale = np.array(sc).reshape(bshape)
                shift = np.array(sf).reshape(bshape)

                def fn(x, _a=scale, _b=shift):
                    y = x * _a
                    y += _b
                    return y
                st = _FnStep(op, fn)
            elif kind == "relu":
                st = _FnStep(op, lambda x: np.maximum(x, np.float32(0)))
            elif kind == "activation":
                st = _FnStep(op, _activation(op, len(in_shapes[0])))
            elif kind == "reshape":
                shp = tuple(op["shape"])
                st = _FnStep(op, lambda x, _s=shp: np.reshape(x, (x.shape[0],) + _s), view=True)
            elif kind in ("add", "sub", "mul"):
                st = _FnStep(op, _binary(op))
            elif kind == "concat":
                ax = op["attrs"]["axis"] + 1
                st = _FnStep(op, lambda *xs, _a=ax: np.concatenate(xs, axis=_a))
            else:  # pragma: no cover - _infer_shape rejected it
                raise _fail(op, f"unknown op {kind!r}")
            st.inputs = ins
            steps.append(st)
        self.output_names = [alias.get(o, o) for o in self.output_names]
        self._out0 = self.output_shapes[0] if len(self.output_shapes) == 1 else None
        # liveness: free a value after its last use
        last: dict[str, int] = {}
        for i, st in enumerate(steps):
            for v in st.inputs:
                last[v] = i
        keep = set(self.output_names)
        self._uses_blas = any(getattr(st, "kernel", "").startswith(("gemm", "im2col"))
                              or (isinstance(st, _LinearStep) and not st.sparse)
                              for st in steps)
        for st in steps:
            st.is_output = st.output in keep
        # an output that may share memory with a reused scratch buffer (a reshape of a
        # layer's output, for instance) is copied before it is returned
        fresh: dict[str, bool] = dict.fromkeys(self.input_names, True)
        for st in steps:
            if isinstance(st, (_ConvStep, _LinearStep, _PoolStep)):
                fresh[st.output] = st.is_output
            elif isinstance(st, _FnStep) and st.view:
                fresh[st.output] = fresh[st.inputs[0]]
            else:
                fresh[st.output] = True
        self._copy_out = [not fresh[o] for o in self.output_names]
        self._steps = steps
        self._free = [[v for v in dict.fromkeys(st.inputs) if last.get(v) == i and v not in keep]
                      for i, st in enumerate(steps)]

    def _bind(self, scratch: _Scratch, N: int) -> tuple:
        """The steps bound to batch size ``N`` and this thread's buffers: a list of
        ``(function, input slots, output slot, slots to free)`` over a list of values
        (slots 0.. the model inputs), built on the first call with each ``N``."""
        slot = {name: i for i, name in enumerate(self.input_names)}
        for st in self._steps:
            slot.setdefault(st.output, len(slot))
        prog = [(st.bind(scratch, N), tuple(slot[v] for v in st.inputs), slot[st.output],
                 tuple(slot[v] for v in free))
                for st, free in zip(self._steps, self._free)]
        outs = [(slot[o], c) for o, c in zip(self.output_names, self._copy_out)]
        # a plain chain (every step reads the previous step's value, one output, the last
        # step's, not copied): a tuple of functions applied in turn, no slot bookkeeping.
        # At batch 1 on a small model the Python around the kernels is a good part of a call.
        chain = None
        if (self.input_name is not None and len(outs) == 1 and not outs[0][1] and prog
                and outs[0][0] == prog[-1][2]
                and all(ins == ((i and prog[i - 1][2]),) for i, (_, ins, _, _) in enumerate(prog))):
            chain = tuple(fn for fn, _, _, _ in prog)
        into = self._steps[-1].bind_into(scratch, N) if chain is not None else None
        bound = (prog, len(slot), outs, chain, into)
        if len(scratch.programs) >= 8:  # many batch sizes: keep the cache small
            scratch.programs.clear()
            scratch.fast.clear()
        scratch.programs[N] = bound
        if chain is not None and not self._uses_blas:
            scratch.fast[(N,) + self.input_shape] = self._fast_fns(chain, into, N)
        return bound

    def _fast_fns(self, chain: tuple, into: Callable | None, N: int) -> tuple:
        """``(f(x), f_out(x, out) or None, output shape)`` for a plain chain without BLAS
        threads to set, looked up by :meth:`__call__` with the whole input shape as key (so
        the lookup is also the shape check): at batch 1 on a small layer every 0.1 us of
        Python is a few percent."""
        if len(chain) == 1 and getattr(chain[0], "contiguous", False):
            fast = chain[0]  # its output is a fresh C-contiguous array
        else:
            def fast(x, _chain=chain, _asc=np.ascontiguousarray):
                for f in _chain:
                    x = f(x)
                return x if x.flags.c_contiguous else _asc(x)
        fast_out = None
        if into is not None:
            if len(chain) == 1:
                fast_out = into
            else:
                def fast_out(x, out, _chain=chain[:-1], _into=into):
                    for f in _chain:
                        x = f(x)
                    return _into(x, out)
        return fast, fast_out, (N,) + tuple(self._out0)

    # ---- execution
    def __call__(self, x: Any, *more: Any, out: np.ndarray | tuple[np.ndarray, ...] | None = None
                 ) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the model on ``x`` (float32 ``(N, *input_shape)``, converted if needed); a
        model with several inputs takes one array per input, in the order of
        :attr:`input_names` (the order of the exported model's ``forward`` arguments),
        all with the same batch size ``N``.

        ``out``: optional preallocated output(s) (one C-contiguous, writeable float32
        array of each output's shape, a tuple for several outputs), written and returned
        instead of new arrays, like numpy's ``out=`` or ONNX Runtime's I/O binding: a
        serving loop then allocates nothing per call. The last layer writes into it
        directly when its kernel can (a sparse Conv2d), otherwise the result is copied.
        """
        if x.__class__ is np.ndarray and x.dtype is _F32 and not more:
            fast = self._scratch.fast.get(x.shape)  # a bound plain chain, shape checked
            if fast is not None and x.flags.c_contiguous:
                if out is None:
                    return fast[0](x)
                if (fast[1] is not None and out.__class__ is np.ndarray and out.dtype is _F32
                        and out.shape == fast[2] and out.flags.c_contiguous
                        and out.flags.writeable):
                    return fast[1](x, out)
        xs = self._check_inputs((x,) + more)
        x = xs[0]
        shape = x.shape
        scratch = self._scratch
        bound = scratch.programs.get(shape[0])
        if bound is None:
            bound = self._bind(scratch, shape[0])
        prog, nslots, outs, chain, into = bound
        blas = self._uses_blas and self.blas_threads is not None  # threads to set around the call
        if out is not None:
            if (out.__class__ is np.ndarray and out.dtype is _F32 and out.shape[1:] == self._out0
                    and out.shape[0] == shape[0] and out.flags.c_contiguous and out.flags.writeable):
                out = (out,)  # the common case, checked inline
            else:
                out = self._check_out(out, shape[0])
        prev = None
        if blas:
            prev = kernels.set_blas_threads_local(self.blas_threads)
        elif chain is not None:  # the fast path: no BLAS threads to set, a plain chain
            last = len(chain) - 1 if out is not None and into is not None else len(chain)
            for i in range(last):
                x = chain[i](x)
            if out is None:
                return x if x.flags.c_contiguous else np.ascontiguousarray(x)
            if last < len(chain):
                return into(x, out[0])
            np.copyto(out[0], x)
            return out[0]
        vals: list = [None] * nslots
        vals[:len(xs)] = xs
        try:
            for fn, ins, o, free in prog:
                vals[o] = fn(vals[ins[0]]) if len(ins) == 1 else fn(*[vals[i] for i in ins])
                for v in free:
                    vals[v] = None
        finally:
            if prev is not None:
                kernels.set_blas_threads_local(prev)
        if out is not None:
            for dst, (o, _) in zip(out, outs):
                np.copyto(dst, vals[o])
            return out[0] if len(out) == 1 else out
        res = [np.array(vals[o]) if copy else np.ascontiguousarray(vals[o]) for o, copy in outs]
        return res[0] if len(res) == 1 else tuple(res)

    def _check_inputs(self, xs: tuple) -> tuple[np.ndarray, ...]:
        """The inputs of :meth:`__call__` as C-contiguous float32 arrays, checked against
        the input shapes (and, for several inputs, against each other's batch size)."""
        names, shapes = self.input_names, self.input_shapes
        if len(xs) != len(names):
            raise ValueError(f"the model takes {len(names)} input(s) ({', '.join(names)}), "
                             f"got {len(xs)}")
        res = []
        for a, shp, name in zip(xs, shapes, names):
            if a.__class__ is not np.ndarray or a.dtype is not _F32 or not a.flags.c_contiguous:
                a = np.ascontiguousarray(a, dtype=np.float32)
            if a.ndim != len(shp) + 1 or a.shape[1:] != shp or a.shape[0] < 1:
                what = "input" if len(names) == 1 else f"input {name!r}"
                raise ValueError(f"{what} must have shape (N, {', '.join(map(str, shp))}) "
                                 f"with N >= 1, got {a.shape}")
            res.append(a)
        if any(a.shape[0] != res[0].shape[0] for a in res):
            raise ValueError(f"inputs have different batch sizes: "
                             f"{[a.shape[0] for a in res]}")
        return tuple(res)

    def _check_out(self, out, N: int) -> tuple[np.ndarray, ...]:
        """``out`` of :meth:`__call__` as a tuple, checked against the output shapes. It
        may overlap the input: the input is read (copied) before any output is written."""
        arrs = out if out.__class__ is tuple else (out,)
        if len(arrs) != len(self.output_shapes):
            raise ValueError(f"out must hold {len(self.output_shapes)} array(s), one per model "
                             f"output, got {len(arrs)}")
        for a, shp, name in zip(arrs, self.output_shapes, self.output_names):
            if a.__class__ is np.ndarray and a.dtype is _F32 and a.shape[1:] == shp \
                    and a.shape[0] == N:
                f = a.flags
                if f.c_contiguous and f.writeable:
                    continue
            want = (N,) + tuple(shp)
            got = (type(a).__name__ if not isinstance(a, np.ndarray) else
                   f"{a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' non-contiguous'}"
                   f"{'' if a.flags.writeable else ' read-only'}")
            raise ValueError(f"out for output {name!r} must be a writeable C-contiguous "
                             f"float32 array of shape {want}, got {got}")
        return arrs

    # ---- introspection
    def plan(self) -> list[LayerPlan]:
        """Per Conv/Linear layer: shape, density and the kernel chosen for it."""
        return list(self.layers)

    def summary(self) -> str:
        """A text table of :meth:`plan` (one line per layer)."""
        lines = [f"{'layer':<24} {'op':<8} {'rows':>6} {'cols':>7} {'nnz':>9} {'density':>8}  kernel"]
        for p in self.layers:
            k = p.kernel + (" +relu" if p.relu_fused else "")
            lines.append(f"{p.name:<24} {p.op:<8} {p.rows:>6} {p.cols:>7} {p.nnz:>9} "
                         f"{p.density:>8.3f}  {k}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        inputs = self.input_shape if self.input_name is not None else self.input_shapes
        return (f"SparseModel(architecture={self.architecture!r}, input={inputs}, "
                f"outputs={self.output_shapes}, layers={len(self.layers)}, mode={self.mode!r}, "
                f"backend={kernels.backend()!r})")


def load(path: str | os.PathLike | bytes, mode: str = "auto",
         blas_threads: int | None = 1, tune: bool = True) -> SparseModel:
    """Load a sparse model file (see :class:`SparseModel`)."""
    return SparseModel(path, mode=mode, blas_threads=blas_threads, tune=tune)
