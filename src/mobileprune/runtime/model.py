"""The sparse model file and :class:`SparseModel`, which runs it on the native engine.

Only numpy and the standard library (ctypes) are imported here: no torch, no numba. The
arithmetic is done by the C library of ``native/`` (``native/include/mobileprune.h``),
bound in :mod:`mobileprune.runtime._native`.

File formats
------------
Version 3 (``docs/native_format.md``) is the one the engine reads and the exporter writes:
fixed little-endian records (header, values, ops, refs, arrays, strings) and 64-byte
aligned arrays, checked field by field by the C loader (every count, offset, shape and
CSR index is checked before use, with a message naming the field, op or array at fault).

Versions 1 and 2 (written by mobileprune before the native engine) keep loading: they
are converted in memory to version 3 (:mod:`mobileprune.runtime.format3`), and
``mobileprune convert OLD NEW`` rewrites such a file. Their layout, little-endian::

    offset 0   8 bytes   magic  b"MPSPARSE"
           8   uint32    format_version (1 or 2)
          12   uint32    CRC-32 of the JSON header bytes
          16   uint64    H = length of the JSON header in bytes
          24   H bytes   JSON header, UTF-8
                         zero padding up to the next multiple of 64  -> data start D
           D   data section: every array at a 64-byte aligned offset (relative to D),
               raw C-order bytes, zero padding between arrays

The file ends exactly at ``D + header["data_nbytes"]``. The JSON header holds
``"magic": "mobileprune.sparse"``, ``"format_version"``, ``"producer"``,
``"architecture"``, ``"value_dtype"`` (``"float32"`` / ``"float16"``), the input(s)
(version 1: ``"input": {"name", "shape"}``; version 2: ``"inputs": [...]``),
``"outputs"`` (value names), ``"ops"`` (a topologically ordered list of ``{"name", "op",
"inputs", "shape", "attrs"}``, conv/linear with a ``"weight"`` record ``{"rows", "cols",
"nnz", "storage": "csr" | "dense", "arrays"}`` and ``"bias"``, batchnorm with ``"scale"`` /
``"shift"``), ``"arrays"`` (``{name: {"dtype", "shape", "offset", "nbytes"}}``),
``"data_nbytes"`` and ``"data_crc32"``. :func:`read_container` / :func:`write_container`
read and write this container (the exporter builds its graph in this form and
:mod:`.format3` turns it into version 3).

Execution and the dense / sparse choice
---------------------------------------
:class:`SparseModel` loads the version-3 bytes with ``mp_model_load`` (the bytes are kept
alive by the model) and, on the first call with a batch size ``N``, creates a *plan*
(``mp_plan_create``): the engine infers every shape, chooses a kernel and storage per
Conv/Linear layer (sparse CSR or dense, by a cost model and, unless ``tune=False``, by
timing both at plan creation), packs the weights for it, fuses what it can (bias,
batch norm, ReLU) and places every intermediate tensor in one workspace. A call then
runs the plan: no allocation in the engine, the Python around it only checks the input
and allocates the output. ``mode="sparse"`` / ``"dense"`` force every layer's kernel
(``MP_PLAN_FORCE_SPARSE`` / ``MP_PLAN_FORCE_DENSE``); ``threads`` is the number of
threads a call uses (the caller's thread is one of them). :meth:`SparseModel.summary`
prints the engine's per-layer choice and reason (``mp_plan_describe``).

Plans are cached per batch size (a few sizes at a time). One :class:`SparseModel` may be
called from several threads at once: each concurrent call runs its own plan (a plan is
run by one thread at a time), created on demand.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct
import threading
import weakref
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobileprune.files import atomic_write_bytes

from . import SparseFormatError, _native, format3

__all__ = [
    "MAGIC", "MAGIC_BYTES", "FORMAT_VERSION", "READ_VERSIONS", "SparseModel", "LayerPlan", "load",
    "read_container", "write_container", "OP_TYPES", "ACTIVATIONS", "model_bytes", "write_bytes",
    "check_model", "convert", "backend",
]

MAGIC = "mobileprune.sparse"
MAGIC_BYTES = b"MPSPARSE"
#: the format version the exporter writes and the engine reads
FORMAT_VERSION = 3
#: format versions this runtime reads (1 and 2 converted to 3 in memory)
READ_VERSIONS = (1, 2, 3)
#: versions of the JSON container (:func:`read_container` / :func:`write_container`)
CONTAINER_VERSIONS = (1, 2)
ALIGN = 64
_PREFIX = struct.Struct("<8sIIQ")
_DTYPES = {"<f4": np.float32, "<f2": np.float16, "<u2": np.uint16, "<u4": np.uint32,
           "<i4": np.int32, "<i8": np.int64, "<u1": np.uint8}

#: the op names of the runtime (codes: :data:`mobileprune.runtime.format3.OP_CODES`, the
#: same as native/src/ops.inc)
OP_TYPES = tuple(format3.OP_CODES)
#: the functions of ``activation`` ops (codes: ``format3.ACTIVATION_CODES``)
ACTIVATIONS = tuple(format3.ACTIVATION_CODES)

# =======================================================================================
# container

def _pad(n: int) -> int:
    return (-n) % ALIGN


def write_container(path: str | os.PathLike, header: dict, arrays: dict[str, np.ndarray]) -> int:
    """Write ``header`` + ``arrays`` atomically (temp file + ``os.replace``); return size.

    ``header`` must not contain ``arrays``/``data_nbytes``/``data_crc32`` (they are
    filled in here); its ``format_version`` (1 or 2; default 2 when the header has
    ``"inputs"``, else 1) is also written in the binary prefix. Arrays are written
    little-endian, C order. This is the JSON container of versions 1 / 2: the exporter
    writes version 3 (:func:`mobileprune.runtime.format3.write`).
    """
    header = dict(header)
    version = header.setdefault("format_version", 2 if "inputs" in header else 1)
    if version not in CONTAINER_VERSIONS:
        raise ValueError(f"format_version must be one of {CONTAINER_VERSIONS}, got {version!r}")
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
    atomic_write_bytes(path, head + data)
    return len(head) + len(data)


def _read_raw(source: str | os.PathLike | bytes) -> tuple[bytes, str]:
    """The bytes of a model file (or the bytes given) and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    where = os.fspath(source)
    try:
        with open(where, "rb") as f:
            return f.read(), where
    except IsADirectoryError as e:
        raise SparseFormatError(f"{where}: is a directory, not a sparse model file") from e
    except PermissionError as e:
        if os.path.isdir(where):
            raise SparseFormatError(f"{where}: is a directory, not a sparse model file") from e
        raise


def file_version(raw: bytes, where: str = "<bytes>") -> int:
    """The format version of a model file's bytes (after checking its magic)."""
    if len(raw) < 12:
        raise SparseFormatError(f"{where}: file too short ({len(raw)} bytes) to be a "
                                f"mobileprune sparse model (truncated?)")
    magic, version = struct.unpack_from("<8sI", raw, 0)
    if magic != MAGIC_BYTES:
        raise SparseFormatError(f"{where}: not a mobileprune sparse model file "
                                f"(bad magic {magic!r}, expected {MAGIC_BYTES!r})")
    if version not in READ_VERSIONS:
        raise SparseFormatError(f"{where}: unsupported format_version {version} "
                                f"(this runtime reads versions "
                                f"{', '.join(map(str, READ_VERSIONS))})")
    return version


def read_container(source: str | os.PathLike | bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a sparse model file; return ``(header, arrays)``: the JSON header
    of a version 1 / 2 file, or for a version-3 file the same description decoded from
    its records (:func:`mobileprune.runtime.format3.decode`).

    Arrays are read-only numpy views of the file bytes. Raises
    :class:`SparseFormatError` on any inconsistency of the container itself.
    """
    raw, where = _read_raw(source)
    if file_version(raw, where) == 3:
        return format3.decode(raw, where)
    return _read_json_container(raw, where)


def _read_json_container(raw: bytes, where: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A version 1 / 2 file (its magic and version already checked by :func:`file_version`)."""
    if len(raw) < _PREFIX.size:
        raise SparseFormatError(f"{where}: file too short ({len(raw)} bytes) to be a "
                                f"mobileprune sparse model (truncated?)")
    _, version, hcrc, hlen = _PREFIX.unpack_from(raw, 0)
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
# version 3

def _layers(header: dict) -> list[dict]:
    """Per Conv/Linear op of a decoded description: its name, the module it came from,
    and its weight's GEMM view ``(rows, cols)`` and nonzeros."""
    res = []
    for op in header["ops"]:
        if op["op"] in ("conv1d", "conv2d", "linear"):
            w = op["weight"]
            pixels = math.prod(op["shape"][1:]) if op["op"] != "linear" else 1
            res.append({"name": op["name"], "module": op.get("module") or op["name"],
                        "op": op["op"], "rows": w["rows"], "cols": w["cols"], "nnz": w["nnz"],
                        "pixels": pixels})
    return res


def write_bytes(path: str | os.PathLike, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically (:func:`mobileprune.files.atomic_write`: a
    failure leaves no partial file); return its size."""
    return atomic_write_bytes(path, data)


def check_model(data: bytes) -> None:
    """Load ``data`` (version-3 bytes) with the engine's loader and free it: raises
    :class:`SparseFormatError` with the loader's message when the bytes are not a valid
    model."""
    L = _native.lib()
    buf = _aligned_bytes(data)
    h = ctypes.c_void_p()
    _native.check(L.mp_model_load(buf.ctypes.data, len(data), ctypes.byref(h)))
    L.mp_model_free(h)


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Rewrite the version 1 / 2 model file ``src`` as a version-3 file ``dst`` (written
    atomically, checked by the engine's loader first); return its size. Refuses
    ``dst == src`` and a ``src`` that is already version 3 (``ValueError``);
    :class:`SparseFormatError` for a file that is not a readable model."""
    if os.path.abspath(os.fspath(src)) == os.path.abspath(os.fspath(dst)) or (
            os.path.exists(dst) and os.path.samefile(src, dst)):
        raise ValueError(f"convert: the new file must differ from the old one ({os.fspath(src)})")
    raw, where = _read_raw(src)
    if file_version(raw, where) == 3:
        raise ValueError(f"convert: {where} is already a format-3 file")
    data = model_bytes(raw)
    check_model(data)
    return write_bytes(dst, data)


def model_bytes(source: str | os.PathLike | bytes) -> bytes:
    """The version-3 bytes of a model file (or of the bytes given): a version-3 file as
    it is, a version 1 / 2 file converted (:func:`mobileprune.runtime.format3.encode`).
    Raises :class:`SparseFormatError` for a file that is not a readable model."""
    raw, where = _read_raw(source)
    return _v3_bytes(raw, where)


def _v3_bytes(raw: bytes, where: str) -> bytes:
    if file_version(raw, where) == 3:
        return raw
    header, arrays = _read_json_container(raw, where)
    return format3.encode(header, arrays)


# =======================================================================================
# the model

_F32 = np.dtype(np.float32)
_MODES = {"auto": _native.PLAN_DEFAULT, "sparse": _native.PLAN_FORCE_SPARSE,
          "dense": _native.PLAN_FORCE_DENSE}
#: batch sizes a model keeps plans for (the oldest size's plans are freed for a new one)
MAX_BATCH_SIZES = 8
#: idle plans kept per batch size (one per concurrent caller)
MAX_IDLE = 4


@dataclass
class LayerPlan:
    """How one Conv/Linear layer runs (see :meth:`SparseModel.plan`): its GEMM view
    (``rows`` output channels / features x ``cols``), nonzero weights, multiply-adds per
    sample (dense / nonzero), and the kernel and weight storage the engine chose
    (``"dense"``, ``"csr"``, blocked...) with its reason (``extra["describe"]``: the
    line of ``mp_plan_describe``)."""

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
    storage: str = ""


@dataclass(frozen=True)
class LayerTime:
    """One op's share of a call (see :meth:`SparseModel.profile`): its name and op, the
    median wall time of its step in seconds (0 when fused into another op or an alias),
    and its line of ``mp_plan_describe`` (kernel, storage, reason)."""

    name: str
    op: str
    seconds: float
    describe: str


class _Plan:
    """One ``mp_plan`` (batch size ``N``) with its reusable pointer arrays."""

    __slots__ = ("handle", "N", "settings", "ins", "outs")

    def __init__(self, model_handle, N: int, settings: tuple[int, int], nin: int, nout: int):
        L = _native.lib()
        h = ctypes.c_void_p()
        threads, flags = settings
        _native.check(L.mp_plan_create(model_handle, N, threads, flags, ctypes.byref(h)),
                      f"planning the model for batch {N}")
        self.handle = h
        self.N = N
        self.settings = settings
        self.ins = (ctypes.c_void_p * nin)()
        self.outs = (ctypes.c_void_p * nout)()

    def free(self) -> None:
        if self.handle:
            _native.lib().mp_plan_free(self.handle)
            self.handle = None


def _free_all(model_handle, pool: dict, lock: threading.Lock, data) -> None:
    """Finalizer of a :class:`SparseModel`: its plans, then its model (``data``, the
    bytes the model reads, is kept alive until here)."""
    with lock:
        for idle in pool.values():
            for p in idle:
                p.free()
        pool.clear()
    if model_handle:
        _native.lib().mp_model_free(model_handle)


def _address(a: np.ndarray) -> int:
    """The data address of a C-contiguous array (the fast way for a writeable one)."""
    try:
        return _addressof(_c_char.from_buffer(a))
    except (TypeError, ValueError):  # read-only
        return a.__array_interface__["data"][0]


_addressof, _c_char = ctypes.addressof, ctypes.c_char


def _aligned_bytes(raw: bytes) -> np.ndarray:
    """A 64-byte aligned, read-only copy of ``raw`` (the engine reads the arrays in place)."""
    buf = np.empty(len(raw) + ALIGN, np.uint8)
    off = (-buf.ctypes.data) % ALIGN
    a = buf[off:off + len(raw)]
    a[:] = np.frombuffer(raw, np.uint8)
    a.flags.writeable = False
    return a


class SparseModel:
    """A model loaded from a mobileprune sparse file, run by the native engine.

    Args:
        source: path of a file written by :func:`mobileprune.deploy.sparse.export_sparse`
            (format 3; files of format 1 and 2 are converted in memory), or its bytes.
        mode: ``"auto"`` (default: the engine picks a sparse or dense kernel per
            Conv/Linear layer by cost), ``"sparse"`` or ``"dense"`` (every layer the same
            way).
        threads: threads a call uses (>= 1; default 1, the caller's thread only).
        tune: with ``mode="auto"``, let the engine time both kernels of a layer whose
            choice is close when it plans a batch size (the faster is kept; two loads may
            then choose differently, and agree to float rounding, not bitwise).
            ``tune=False`` chooses by the cost model alone (a plan that does not depend
            on timing).
        portable: run the portable C kernels only (no SIMD; ``MP_PLAN_PORTABLE``): the
            reference path, slower.
        blas_threads: former name of ``threads`` (``None`` means 1).

    Calling the model on a float32 array ``(N, *input_shape)`` (``N >= 1``; other float
    dtypes are converted, other dtypes refused) returns the float32 output ``(N,
    *output_shape)`` (a tuple if the model has several outputs), a new array, or the
    caller's preallocated ``out=`` array(s) (see :meth:`__call__`).

    Raises:
        SparseFormatError: the file is not a valid sparse model file (the message of the
            engine's loader names the field, op or array at fault).
        UnsupportedOpError: a valid file with an op this engine cannot run.
        ValueError: ``mode`` / ``threads`` is invalid.
        NativeError: the native library is missing or cannot be loaded.
    """

    def __init__(self, source: str | os.PathLike | bytes, *, mode: str = "auto",
                 threads: int | None = None, tune: bool = True, portable: bool = False,
                 blas_threads: int | None = None) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be 'auto', 'sparse' or 'dense', got {mode!r}")
        if threads is None:
            threads = blas_threads if blas_threads is not None else 1
        self._threads = _check_threads(threads)
        self._mode = mode
        self._tune = bool(tune)
        self._portable = bool(portable)
        raw, where = _read_raw(source)
        raw = _v3_bytes(raw, where)
        self._data = _aligned_bytes(raw)
        L = _native.lib()
        h = ctypes.c_void_p()
        _native.check(L.mp_model_load(self._data.ctypes.data, len(raw), ctypes.byref(h)),
                      "" if where == "<bytes>" else where)
        self._handle = h
        self._run = L.mp_plan_run
        # idle plans by batch size: a call pops one (list.pop is atomic: two concurrent
        # calls never get the same plan), or makes a new one, and puts it back
        self._pool: dict[int, list[_Plan]] = {}
        self._lock = threading.Lock()
        self._current = self._settings()  # (threads, flags) of the plans in the pool
        self._finalizer = weakref.finalize(self, _free_all, h, self._pool, self._lock, self._data)
        nin, nout = L.mp_model_num_inputs(h), L.mp_model_num_outputs(h)
        self.input_shapes = [_native.shape(L.mp_model_input_shape, h, i) for i in range(nin)]
        self.output_shapes = [_native.shape(L.mp_model_output_shape, h, i) for i in range(nout)]
        header, _ = format3.decode(raw)  # names and layer sizes (the engine checked the bytes)
        self._layers = _layers(header)
        self.header = {k: v for k, v in header.items() if k != "ops"}
        self.architecture = header.get("architecture")
        self.value_dtype = header.get("value_dtype")
        self.input_names = [i["name"] for i in header["inputs"]]
        self.output_names = list(header["outputs"])
        single = nin == 1
        # the single input (None when the model has several: see input_shapes)
        self.input_name = self.input_names[0] if single else None
        self.input_shape = self.input_shapes[0] if single else None
        self._out0 = self.output_shapes[0] if nout == 1 else None

    # ---- settings
    @property
    def threads(self) -> int:
        """Threads a call uses; setting it drops the plans made for the old value."""
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        value = _check_threads(value)
        if value != self._threads:
            self._threads = value
            self._drop_plans()

    @property
    def blas_threads(self) -> int:
        """Former name of :attr:`threads`."""
        return self._threads

    @blas_threads.setter
    def blas_threads(self, value: int | None) -> None:
        self.threads = 1 if value is None else value

    @property
    def mode(self) -> str:
        """``"auto"``, ``"sparse"`` or ``"dense"``; setting it drops the plans made before."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in _MODES:
            raise ValueError(f"mode must be 'auto', 'sparse' or 'dense', got {value!r}")
        self._mode = value
        self._drop_plans()

    @property
    def flags(self) -> int:
        """The ``mp_plan_create`` flags of :attr:`mode`, :attr:`tune` and :attr:`portable`."""
        return (_MODES[self._mode] | (0 if self._tune else _native.PLAN_NO_TUNE)
                | (_native.PLAN_PORTABLE if self._portable else 0))

    def _settings(self) -> tuple[int, int]:
        return self._threads, self.flags

    @property
    def tune(self) -> bool:
        """Whether plans of ``mode="auto"`` time close choices (set at load)."""
        return self._tune

    @property
    def portable(self) -> bool:
        """Whether plans use the portable C kernels only (set at load)."""
        return self._portable

    def _drop_plans(self) -> None:
        """Free the idle plans (after a change of settings; plans in use are freed when
        they come back)."""
        with self._lock:
            self._current = self._settings()
            for idle in self._pool.values():
                for p in idle:
                    p.free()
            self._pool.clear()

    def _acquire(self, N: int) -> _Plan:
        """An idle plan for batch ``N`` (taken out of the pool), or a new one."""
        idle = self._pool.get(N)
        if idle:
            try:
                return idle.pop()
            except IndexError:  # another thread took the last one
                pass
        with self._lock:
            if N not in self._pool:
                if len(self._pool) >= MAX_BATCH_SIZES:  # forget the oldest batch size
                    for p in self._pool.pop(next(iter(self._pool))):
                        p.free()
                self._pool[N] = []
        return _Plan(self._handle, N, self._current, len(self.input_shapes),
                     len(self.output_shapes))

    def _release(self, plan: _Plan) -> None:
        """Put ``plan`` back in the pool (or free it if the settings changed meanwhile,
        its batch size was forgotten, or enough plans of its size are idle)."""
        with self._lock:
            idle = self._pool.get(plan.N)
            if idle is None or len(idle) >= MAX_IDLE or plan.settings != self._current \
                    or not self._finalizer.alive:
                plan.free()
            else:
                idle.append(plan)

    # ---- execution
    def __call__(self, x: Any, *more: Any, out: np.ndarray | tuple[np.ndarray, ...] | None = None
                 ) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the model on ``x`` (float32 ``(N, *input_shape)``; other float dtypes are
        converted, non-contiguous arrays copied); a model with several inputs takes one
        array per input, in the order of :attr:`input_names` (the order of the exported
        model's ``forward`` arguments), all with the same batch size ``N``.

        ``out``: optional preallocated output(s) (one C-contiguous, writeable float32
        array of each output's shape, a tuple for several outputs), written and returned
        instead of new arrays, like numpy's ``out=`` or ONNX Runtime's I/O binding: a
        serving loop then allocates nothing per call. ``out`` may overlap the input (the
        input is then copied first).
        """
        if (x.__class__ is np.ndarray and x.dtype is _F32 and not more
                and x.shape[1:] == self.input_shape and x.flags.c_contiguous and len(x)):
            xs = (x,)  # the common case (one float32 input of the right shape), checked inline
        else:
            xs = self._check_inputs((x,) + more)
        N = xs[0].shape[0]
        if out is None:
            if self._out0 is not None:
                outs = (np.empty((N,) + self._out0, _F32),)
            else:
                outs = tuple([np.empty((N,) + s, _F32) for s in self.output_shapes])
        else:
            outs = self._check_out(out, N)
            if any(np.may_share_memory(o, a) for o in outs for a in xs):
                xs = tuple(a.copy() for a in xs)
        plan = self._acquire(N)
        try:
            ins, ptrs = plan.ins, plan.outs
            for i, a in enumerate(xs):
                ins[i] = _address(a)
            for i, o in enumerate(outs):
                ptrs[i] = _addressof(_c_char.from_buffer(o))
            status = self._run(plan.handle, ins, ptrs)
            if status:
                _native.check(status)
        except BaseException:
            plan.free()
            raise
        self._release(plan)
        if out is not None:
            return out
        return outs[0] if len(outs) == 1 else outs

    def _check_inputs(self, xs: tuple) -> tuple[np.ndarray, ...]:
        """The inputs of :meth:`__call__` as C-contiguous float32 arrays, checked against
        the input shapes (and, for several inputs, against each other's batch size)."""
        names, shapes = self.input_names, self.input_shapes
        if len(xs) != len(names):
            raise ValueError(f"the model takes {len(names)} input(s) ({', '.join(names)}), "
                             f"got {len(xs)}")
        res = []
        for a, shp, name in zip(xs, shapes, names):
            what = "input" if len(names) == 1 else f"input {name!r}"
            if a.__class__ is not np.ndarray or a.dtype is not _F32 or not a.flags.c_contiguous:
                a = np.asarray(a)
                if a.dtype.kind != "f":
                    raise ValueError(f"{what} must be a float32 array (floating point arrays "
                                     f"are converted), got dtype {a.dtype}")
                a = np.ascontiguousarray(a, dtype=np.float32)
            if a.ndim != len(shp) + 1 or a.shape[1:] != shp or a.shape[0] < 1:
                raise ValueError(f"{what} must have shape (N, {', '.join(map(str, shp))}) "
                                 f"with N >= 1, got {a.shape}")
            res.append(a)
        if any(a.shape[0] != res[0].shape[0] for a in res):
            raise ValueError(f"inputs have different batch sizes: "
                             f"{[a.shape[0] for a in res]}")
        return tuple(res)

    def _check_out(self, out, N: int) -> tuple[np.ndarray, ...]:
        """``out`` of :meth:`__call__` as a tuple, checked against the output shapes."""
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
    def describe(self, batch: int = 1) -> str:
        """The engine's plan for ``batch`` samples (``mp_plan_describe``): one line per
        layer with its kernel, storage, density and the reason for the choice."""
        plan = self._acquire(batch)
        try:
            return _native.describe(plan.handle)
        finally:
            self._release(plan)

    def plan(self) -> list[LayerPlan]:
        """Per Conv/Linear layer: shape, density and the kernel the engine chose for it
        (at batch 1, with the current mode / threads / tune)."""
        text = self.describe(1)
        lines = {}
        for line in text.splitlines():
            toks = line.split()
            if toks:
                lines.setdefault(toks[0], line)
        res = []
        for lay in self._layers:
            line = lines.get(lay["name"]) or lines.get(lay["module"]) or ""
            rows, cols, nnz = lay["rows"], lay["cols"], lay["nnz"]
            toks = line.split()  # name op kernel storage density=... reason [+relu ...]
            res.append(LayerPlan(lay["module"], lay["op"], rows, cols, nnz,
                                 nnz / (rows * cols) if rows * cols else 0.0,
                                 toks[2] if len(toks) > 2 else "",
                                 relu_fused="+relu" in toks,
                                 macs_dense=rows * cols * lay["pixels"],
                                 macs_sparse=nnz * lay["pixels"],
                                 extra={"describe": line.strip()},
                                 storage=toks[3] if len(toks) > 3 else ""))
        return res

    def profile(self, *xs: Any, repeats: int = 20, warmup: int = 3) -> list[LayerTime]:
        """Where a call spends its time: runs the model on ``xs`` (as :meth:`__call__`)
        ``warmup + repeats`` times with per-layer timing on (``MP_PLAN_PROFILE``, a plan of
        its own with the current mode / threads) and returns one :class:`LayerTime` per op
        of the model (the lines of :meth:`describe`): the median wall time of its step, 0
        for an activation fused into a conv / linear or a reshape that is an alias."""
        if repeats < 1 or warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
        xs = self._check_inputs(xs)
        N = xs[0].shape[0]
        threads, flags = self._settings()
        plan = _Plan(self._handle, N, (threads, flags | _native.PLAN_PROFILE),
                     len(self.input_shapes), len(self.output_shapes))
        try:
            outs = [np.empty((N,) + s, _F32) for s in self.output_shapes]
            for i, a in enumerate(xs):
                plan.ins[i] = _address(a)
            for i, o in enumerate(outs):
                plan.outs[i] = _address(o)
            runs = []
            for r in range(warmup + repeats):
                _native.check(self._run(plan.handle, plan.ins, plan.outs))
                if r >= warmup:
                    runs.append(_native.profile(plan.handle))
            lines = _native.describe(plan.handle).splitlines()
        finally:
            plan.free()
        med = np.median(np.asarray(runs), axis=0)
        return [LayerTime(*(ln.split(None, 2) + ["", ""])[:2], float(t), ln.strip())
                for ln, t in zip(lines, med)]

    def summary(self) -> str:
        """The engine's per-layer plan at batch 1 (:meth:`describe`) as text."""
        return self.describe(1)

    def __repr__(self) -> str:
        inputs = self.input_shape if self.input_name is not None else self.input_shapes
        return (f"SparseModel(architecture={self.architecture!r}, input={inputs}, "
                f"outputs={self.output_shapes}, layers={len(self._layers)}, mode={self.mode!r}, "
                f"threads={self._threads}, backend={backend()!r})")

    def close(self) -> None:
        """Free the engine's model and plans now (otherwise when the object is collected)."""
        self._finalizer()


def _check_threads(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"threads must be a positive int, got {value!r}")
    return value


def backend() -> str:
    """The engine's kernels on this CPU, e.g. ``"native-avx512f"`` (``mp_cpu_isa``)."""
    return f"native-{_native.isa()}"


def load(path: str | os.PathLike | bytes, mode: str = "auto", threads: int | None = None,
         tune: bool = True, portable: bool = False, blas_threads: int | None = None) -> SparseModel:
    """Load a sparse model file (see :class:`SparseModel`)."""
    return SparseModel(path, mode=mode, threads=threads, tune=tune, portable=portable,
                       blas_threads=blas_threads)
