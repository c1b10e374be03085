"""Model file format version 3: the binary layout the native engine reads.

The layout (fixed 128-byte header, value / op / array records, refs, strings, 64-byte
aligned data) is specified in ``docs/native_format.md``; the C loader
(``native/src/model.c``) is its reader of record and checks everything. This module
converts between that layout and the Python runtime's description of a model: the
``(header, arrays)`` pair of format versions 1 and 2 (a JSON-style dict with ``"ops"``,
``"input"`` / ``"inputs"``, ``"outputs"``; see :mod:`mobileprune.runtime.model`).

:func:`encode` checks the JSON *types* it needs to write the records (a corrupt
version-1/2 header is a :class:`SparseFormatError`, never a ``KeyError``); whether shapes
and attributes make sense is the engine's check, done once, in C. :func:`decode` reads a
version-3 file back into the same description (array names are generated: ``a0``,
``a1``, ...; dense weight values get their ``(rows, cols)`` shape, other arrays are 1-D).

Torch-free: numpy and the standard library only.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import numpy as np

from . import SparseFormatError

__all__ = ["VERSION", "MAGIC_BYTES", "OP_CODES", "ACTIVATION_CODES", "encode", "decode", "is_format3"]

VERSION = 3
MAGIC_BYTES = b"MPSPARSE"
HEADER = struct.Struct("<8sIIQI11I7Q")
VALUE = struct.Struct("<II8III")
OP = struct.Struct("<6I8I20i6f")
ARRAY = struct.Struct("<IIQQQ")
NONE = 0xFFFFFFFF
MAX_DIMS = 8
MAX_COUNT = 1 << 20
_ALIGN = 64

#: op name -> code (``native/src/ops.inc``; a test checks the two agree)
OP_CODES: dict[str, int] = {
    "conv1d": 1, "conv2d": 2, "linear": 3, "maxpool1d": 4, "maxpool2d": 5, "avgpool1d": 6,
    "avgpool2d": 7, "global_avgpool": 8, "batchnorm": 9, "relu": 10, "activation": 11,
    "reshape": 12, "add": 13, "sub": 14, "mul": 15, "concat": 16, "layer_norm": 17,
    "group_norm": 18, "permute": 19, "matmul": 20, "div": 21, "mean": 22, "slice": 23,
    "adaptive_avgpool1d": 24, "adaptive_avgpool2d": 25, "lstm": 26, "gru": 27, "constant": 28,
}
#: activation fn -> code (``native/src/activations.inc``)
ACTIVATION_CODES: dict[str, int] = {
    "hardtanh": 1, "leaky_relu": 2, "elu": 3, "sigmoid": 4, "tanh": 5, "hardsigmoid": 6,
    "hardswish": 7, "silu": 8, "softmax": 9, "gelu": 10,
}
#: the numbers each activation takes, in fattr order
_ACT_PARAMS = {"hardtanh": ("min_val", "max_val"), "leaky_relu": ("negative_slope",),
               "elu": ("alpha",)}
_DTYPE_CODES = {np.dtype("<f4"): 1, np.dtype("<f2"): 2, np.dtype("<u2"): 3, np.dtype("<u4"): 4,
                np.dtype("<i4"): 5}
_CODE_DTYPES = {c: d for d, c in _DTYPE_CODES.items()}
_VALUE_DTYPES = {"float32": 1, "float16": 2}
_GELU_APPROX = {"none": 0, "tanh": 1}
# weight array slots of conv / linear records (lstm / gru: W_ih at 0..3, W_hh at 4..7)
_W_SLOTS = ("values", "indptr", "indices")
_BIAS_SLOT = 3
_BINARY = ("add", "sub", "mul", "div")
_RNN_WEIGHTS = (("weight_ih", "bias_ih"), ("weight_hh", "bias_hh"))


def is_format3(raw: bytes) -> bool:
    """True when ``raw`` starts like a version-3 file (magic and version)."""
    return len(raw) >= 12 and raw[:8] == MAGIC_BYTES and struct.unpack_from("<I", raw, 8)[0] == VERSION


# =======================================================================================
# JSON-type checks of the version-1/2 description (what encode needs to read it)

def _bad(op: Any, msg: str) -> SparseFormatError:
    name = op.get("name", "?") if isinstance(op, dict) else op
    return SparseFormatError(f"op {name!r}: {msg}")


def _int(op, v, what, lo=None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise _bad(op, f"{what} must be an integer{f' >= {lo}' if lo is not None else ''}, got {v!r}")
    if not -2 ** 31 <= v < 2 ** 31:
        raise _bad(op, f"{what} {v} does not fit 32 bits")
    return v


def _num(op, v, what) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(op, f"{what} must be a finite number, got {v!r}")
    return float(v)


def _ints(op, attrs, key, n, lo=None) -> list[int]:
    v = attrs.get(key)
    if not isinstance(v, list) or len(v) != n:
        raise _bad(op, f"attribute {key!r} must be a list of {n} integers, got {v!r}")
    return [_int(op, t, f"attribute {key!r}", lo) for t in v]


def _bool(op, attrs, key, default=None) -> int:
    v = attrs.get(key, default)
    if not isinstance(v, bool):
        raise _bad(op, f"attribute {key!r} must be a boolean, got {v!r}")
    return int(v)


def _shape(where, v) -> list[int]:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_DIMS:
        raise SparseFormatError(f"{where}: shape must be a list of 1..{MAX_DIMS} sizes, got {v!r}")
    return [_int(where, t, "shape entry", 1) for t in v]


# =======================================================================================
# per-op attribute layout (docs/native_format.md, "Ops")

def _conv_attrs(op, a, iat) -> None:
    nd = 1 if op["op"] == "conv1d" else 2
    k, s, d = (_ints(op, a, key, nd, 1) for key in ("kernel", "stride", "dilation"))
    pads = a.get("padding")
    if not isinstance(pads, list) or len(pads) != nd or not all(isinstance(p, list) and len(p) == 2 for p in pads):
        raise _bad(op, f"attribute 'padding' must be {nd} [before, after] pairs, got {pads!r}")
    pads = [[_int(op, t, "padding", 0) for t in p] for p in pads]
    if nd == 1:
        k, s, d, pads = [1] + k, [1] + s, [1] + d, [[0, 0]] + pads
    iat[4:7] = [_int(op, a.get(key), key, 1) for key in ("in_channels", "out_channels", "groups")]
    iat[7:17] = k + s + d + pads[0] + pads[1]


def _weight(op, key, bias_key, at, iat, slots, ids) -> None:
    """A weight record ``op[key]`` and its bias ``op[bias_key]``: iattr ``at..at+3``
    (storage, rows, cols, nnz), array slots ``at..at+3`` (values, indptr, indices, bias)."""
    w = op.get(key)
    if not isinstance(w, dict) or not isinstance(w.get("arrays"), dict):
        raise _bad(op, f"missing {key} record")
    storage = {"dense": 0, "csr": 1}.get(w.get("storage"))
    if storage is None:
        raise _bad(op, f"unknown {key} storage {w.get('storage')!r}")
    iat[at:at + 4] = [storage] + [_int(op, w.get(k), f"{key} {k}", 0) for k in ("rows", "cols", "nnz")]
    for slot, k in enumerate(_W_SLOTS[:1] if storage == 0 else _W_SLOTS):
        slots[at + slot] = ids(op, w["arrays"].get(k), f"{key} {k}")
    if op.get(bias_key) is not None:
        slots[at + _BIAS_SLOT] = ids(op, op[bias_key], bias_key)


def _pool_attrs(op, a, iat) -> None:
    nd = 1 if op["op"].endswith("1d") else 2
    k, s = _ints(op, a, "kernel", nd, 1), _ints(op, a, "stride", nd, 1)
    p = _ints(op, a, "padding", nd, 0)
    d = _ints(op, a, "dilation", nd, 1) if op["op"].startswith("max") else [1] * nd
    if nd == 1:
        k, s, p, d = [1] + k, [1] + s, [0] + p, [1] + d
    iat[0:8] = k + s + p + d
    iat[8] = _bool(op, a, "ceil_mode", False)
    if op["op"].startswith("avg"):
        iat[9] = _bool(op, a, "count_include_pad")
        dv = a.get("divisor_override")
        iat[10] = 0 if dv is None else _int(op, dv, "divisor_override", 1)


def _activation_attrs(op, a, iat, fat) -> None:
    fn = a.get("fn")
    if fn not in ACTIVATION_CODES:
        raise _bad(op, f"unknown activation {fn!r} (known: {', '.join(ACTIVATION_CODES)})")
    iat[0] = ACTIVATION_CODES[fn]
    if fn == "softmax":
        iat[1] = _int(op, a.get("axis"), "softmax axis", 0)
    if fn == "gelu":
        approx = a.get("approximate", "none")
        if approx not in _GELU_APPROX:
            raise _bad(op, f"gelu approximate must be 'none' or 'tanh', got {approx!r}")
        iat[1] = _GELU_APPROX[approx]
    for i, key in enumerate(_ACT_PARAMS.get(fn, ())):
        fat[i] = _num(op, a.get(key), f"activation {fn} {key}")


def _binary_attrs(op, a, iat, fat) -> None:
    if "scalar" in a:
        iat[0] = 1
        iat[1] = _bool(op, a, "scalar_first", False)
        fat[0] = _num(op, a["scalar"], "scalar operand")


def _norm_fields(op, a, iat, fat, slots, ids) -> None:
    """layer_norm / group_norm: iattr 0 (normalized_ndim / num_groups), fattr 0 eps,
    optional scale / shift arrays in slots 0 / 1."""
    key = "normalized_ndim" if op["op"] == "layer_norm" else "num_groups"
    iat[0] = _int(op, a.get(key), key, 1)
    fat[0] = _num(op, a.get("eps"), "eps")
    for slot, k in enumerate(("scale", "shift")):
        if op.get(k) is not None:
            slots[slot] = ids(op, op[k], k)


def _layout_attrs(op, a, iat) -> None:
    """permute / mean / slice / adaptive pooling."""
    kind = op["op"]
    if kind == "permute":
        perm = a.get("perm")
        if not isinstance(perm, list) or not 1 <= len(perm) <= MAX_DIMS:
            raise _bad(op, f"attribute 'perm' must be a list of 1..{MAX_DIMS} axes, got {perm!r}")
        iat[0:len(perm)] = [_int(op, p, "perm entry", 0) for p in perm]
    elif kind == "mean":
        axes = a.get("axes")
        if not isinstance(axes, list) or not axes:
            raise _bad(op, f"attribute 'axes' must be a non-empty list of axes, got {axes!r}")
        ax = [_int(op, x, "mean axis", 0) for x in axes]
        if max(ax) >= MAX_DIMS:
            raise _bad(op, f"mean axes {axes!r}: per-sample axes are < {MAX_DIMS}")
        iat[0], iat[1] = _bool(op, a, "keepdim", False), sum(1 << x for x in set(ax))
    elif kind == "slice":
        iat[0:3] = [_int(op, a.get(k), f"slice {k}", 0) for k in ("axis", "start", "end")]
        iat[3] = _int(op, a.get("step", 1), "slice step", 1)
    else:
        nd = 1 if kind.endswith("1d") else 2
        size = _ints(op, a, "output_size", nd, 1)
        iat[0:2] = [1] + size if nd == 1 else size


def _op_fields(op: dict, ids) -> tuple[list[int], list[float], list[int]]:
    """``(iattr, fattr, array slots)`` of one op of a version-1/2 description."""
    iat, fat, slots = [0] * 20, [0.0] * 6, [NONE] * 8
    kind, a = op["op"], op.get("attrs") or {}
    if not isinstance(a, dict):
        raise _bad(op, "attrs must be an object")
    if kind in ("conv1d", "conv2d", "linear"):
        _weight(op, "weight", "bias", 0, iat, slots, ids)
        if kind != "linear":
            _conv_attrs(op, a, iat)
    elif kind in ("lstm", "gru"):
        for k, (w, b) in enumerate(_RNN_WEIGHTS):
            _weight(op, w, b, 4 * k, iat, slots, ids)
        iat[8] = _int(op, a.get("hidden_size"), "hidden_size", 1)
        iat[9] = _bool(op, a, "bidirectional", False)
    elif kind in ("maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d"):
        _pool_attrs(op, a, iat)
    elif kind == "global_avgpool":
        iat[0] = _bool(op, a, "keepdim")
    elif kind == "batchnorm":
        slots[0], slots[1] = ids(op, op.get("scale"), "scale"), ids(op, op.get("shift"), "shift")
    elif kind in ("layer_norm", "group_norm"):
        _norm_fields(op, a, iat, fat, slots, ids)
    elif kind == "activation":
        _activation_attrs(op, a, iat, fat)
    elif kind in _BINARY:
        _binary_attrs(op, a, iat, fat)
    elif kind == "concat":
        iat[0] = _int(op, a.get("axis"), "concat axis", 0)
    elif kind in ("permute", "mean", "slice", "adaptive_avgpool1d", "adaptive_avgpool2d"):
        _layout_attrs(op, a, iat)
    elif kind == "constant":
        slots[0] = ids(op, op.get("value"), "value")
    return iat, fat, slots


# =======================================================================================
# encode

class _Strings:
    def __init__(self) -> None:
        self.blob = bytearray()
        self.at: dict[str, int] = {}

    def __call__(self, s: str) -> int:
        if s not in self.at:
            self.at[s] = len(self.blob)
            self.blob += s.encode("utf-8") + b"\0"
        return self.at[s]


def _model_inputs(header: dict) -> list[dict]:
    ins = header.get("inputs") if "inputs" in header else [header.get("input")]
    if not isinstance(ins, list) or not ins or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in ins):
        raise SparseFormatError("header: 'input' / 'inputs' must name each model input and its shape")
    return ins


def _array_table(arrays: dict[str, np.ndarray]):
    """``(ids by name, records, data bytes)``: every array little-endian, 64-byte aligned."""
    ids, recs, chunks, pos = {}, [], [], 0
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        code = _DTYPE_CODES.get(a.dtype)
        if code is None:
            raise SparseFormatError(f"array {name!r}: dtype {a.dtype} cannot be stored in format 3")
        raw = a.tobytes()
        ids[name] = len(recs)
        recs.append(ARRAY.pack(code, 0, pos, a.size, 0))
        chunks.append(raw + b"\0" * (-len(raw) % _ALIGN))
        pos += len(chunks[-1])
    return ids, recs, b"".join(chunks)


def encode(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """Format-3 bytes of a model given as a version-1/2 ``(header, arrays)`` pair.

    Raises :class:`SparseFormatError` when the description is not well-typed (a missing
    op field, an attribute of the wrong JSON type, an unknown op name, an array that is
    not in ``arrays``).
    """
    ops = header.get("ops")
    if not isinstance(ops, list) or not all(isinstance(o, dict) for o in ops):
        raise SparseFormatError("header: 'ops' must be a list of op objects")
    strings, (aid, arecs, data) = _Strings(), _array_table(arrays)
    values, vid, refs = [], {}, []

    def value(name, shape, producer):
        if not isinstance(name, str) or name in vid:
            raise SparseFormatError(f"value {name!r}: missing or defined twice")
        dims = _shape(f"value {name!r}", shape)
        vid[name] = len(values)
        values.append(VALUE.pack(strings(name), len(dims), *(dims + [0] * (MAX_DIMS - len(dims))), producer, 0))

    def ids(op, name, what):
        if not isinstance(name, str) or name not in aid:
            raise _bad(op, f"{what} array {name!r} missing from the file")
        return aid[name]

    def ref_list(names, what):
        if not isinstance(names, list) or not all(isinstance(n, str) and n in vid for n in names):
            raise SparseFormatError(f"{what}: {names!r} names a value that is not defined before it")
        start = len(refs)
        refs.extend(vid[n] for n in names)
        return start, len(names)

    ins = _model_inputs(header)
    for i in ins:
        value(i["name"], i.get("shape"), NONE)
    in_ref, _ = ref_list([i["name"] for i in ins], "inputs")
    op_recs = []
    modules = {}
    for k, op in enumerate(ops):
        if op.get("op") not in OP_CODES:
            raise _bad(op, f"unknown op type {op.get('op')!r} (known: {', '.join(OP_CODES)})")
        iat, fat, slots = _op_fields(op, ids)
        r0, nr = ref_list(op.get("inputs"), f"op {op.get('name')!r} inputs")
        value(op.get("name"), op.get("shape"), k)
        if isinstance(op.get("module"), str):
            modules[op["name"]] = op["module"]
        op_recs.append(OP.pack(OP_CODES[op["op"]], strings(op["name"]), vid[op["name"]], nr, r0, 0,
                               *slots, *iat, *fat))
    out_ref, n_out = ref_list(header.get("outputs"), "outputs")
    meta = {"architecture": header.get("architecture"), "modules": modules}
    meta.update({k: header[k] for k in ("fold_bn",) if k in header})
    producer = strings(str(header.get("producer") or "mobileprune"))
    meta_at = strings(json.dumps(meta, separators=(",", ":")))
    vdt = _VALUE_DTYPES.get(header.get("value_dtype", "float32"))
    if vdt is None:
        raise SparseFormatError(f"header: value_dtype must be float32 or float16, got {header.get('value_dtype')!r}")
    return _assemble(values, op_recs, refs, arecs, bytes(strings.blob), data,
                     (len(ins), n_out, in_ref, out_ref, producer, meta_at, vdt))


def _assemble(values, op_recs, refs, arecs, strings, data, fields) -> bytes:
    """Lay the sections out in order (8-byte aligned, data 64-byte aligned) after the
    header, fill in offsets and the CRC."""
    parts = [b"".join(values), b"".join(op_recs), struct.pack(f"<{len(refs)}I", *refs),
             b"".join(arecs), strings]
    offsets, body, pos = [], bytearray(), HEADER.size
    for p in parts:
        offsets.append(pos)
        body += p + b"\0" * (-len(p) % 8)
        pos = HEADER.size + len(body)
    body += b"\0" * (-pos % _ALIGN)
    data_offset = HEADER.size + len(body)
    body += data
    n_in, n_out, in_ref, out_ref, producer, meta_at, vdt = fields
    size = HEADER.size + len(body)
    head = HEADER.pack(MAGIC_BYTES, VERSION, HEADER.size, size, zlib.crc32(body),
                       len(values), len(op_recs), len(arecs), len(refs), n_in, n_out, in_ref, out_ref,
                       producer, meta_at, vdt, *offsets[:4], offsets[4], len(strings), data_offset)
    return head + bytes(body)


# =======================================================================================
# decode

def _string(blob: bytes, at: int, what: str) -> str:
    end = blob.find(b"\0", at)
    if at >= len(blob) or end < 0:
        raise SparseFormatError(f"{what}: string offset {at} outside the string section")
    return blob[at:end].decode("utf-8", errors="replace")


def _section(raw, off, n, rec, what):
    if off + n * rec.size > len(raw) or n > MAX_COUNT:
        raise SparseFormatError(f"{what}: {n} records at offset {off} do not fit the file")
    return [rec.unpack_from(raw, off + i * rec.size) for i in range(n)]


def decode(raw: bytes, where: str = "<bytes>") -> tuple[dict, dict[str, np.ndarray]]:
    """``(header, arrays)`` of a format-3 file, as a version-1/2 description.

    Checks what reading needs (sizes, bounds, CRC); the engine checks the rest when it
    loads the same bytes.
    """
    if len(raw) < HEADER.size:
        raise SparseFormatError(f"{where}: file too short ({len(raw)} bytes) for a format-3 header")
    h = HEADER.unpack_from(raw, 0)
    (magic, version, hsize, fsize, crc, nv, nops, narr, nrefs, nin, nout, in_ref, out_ref,
     producer, meta_at, vdt, voff, ooff, roff, aoff, soff, ssize, doff) = h
    if magic != MAGIC_BYTES or version != VERSION or hsize != HEADER.size:
        raise SparseFormatError(f"{where}: not a format-3 mobileprune model file")
    if fsize != len(raw):
        raise SparseFormatError(f"{where}: file is {len(raw)} bytes, header says {fsize} (truncated?)")
    if zlib.crc32(memoryview(raw)[HEADER.size:]) != crc:
        raise SparseFormatError(f"{where}: corrupt file (CRC mismatch)")
    if soff + ssize > len(raw) or doff > len(raw):
        raise SparseFormatError(f"{where}: string or data section outside the file")
    strings = bytes(raw[soff:soff + ssize])
    vals = _section(raw, voff, nv, VALUE, f"{where}: values")
    op_recs = _section(raw, ooff, nops, OP, f"{where}: ops")
    refs = [r[0] for r in _section(raw, roff, nrefs, struct.Struct("<I"), f"{where}: refs")]
    arrays = _decode_arrays(raw, doff, _section(raw, aoff, narr, ARRAY, f"{where}: arrays"), where)
    vname = [_string(strings, v[0], f"{where}: value {i}") for i, v in enumerate(vals)]
    vshape = [list(v[2:2 + v[1]]) for v in vals]

    def names(start, n):
        if start + n > len(refs) or any(r >= len(vals) for r in refs[start:start + n]):
            raise SparseFormatError(f"{where}: value reference out of range")
        return [vname[r] for r in refs[start:start + n]]

    meta = _metadata(_string(strings, meta_at, f"{where}: metadata"))
    ops = [_decode_op(rec, names, vname, vshape, strings, arrays, meta.get("modules", {}), where)
           for rec in op_recs]
    inputs = [{"name": n, "shape": vshape[vname.index(n)]} for n in names(in_ref, nin)]
    header = {"magic": "mobileprune.sparse", "format_version": VERSION,
              "producer": _string(strings, producer, f"{where}: producer"),
              "architecture": meta.get("architecture"),
              "value_dtype": {1: "float32", 2: "float16"}.get(vdt, "?"),
              "inputs": inputs, "outputs": names(out_ref, nout), "ops": ops}
    if "fold_bn" in meta:
        header["fold_bn"] = meta["fold_bn"]
    return header, arrays


def _metadata(text: str) -> dict:
    """The descriptive metadata string (header field 64): the JSON object the encoder
    writes, or, for a file written otherwise, ``{"architecture": text}`` (the engine
    never reads it, so a file need not carry JSON there)."""
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        return {"architecture": text.strip() or None}
    if not isinstance(meta.get("modules", {}), dict):
        meta["modules"] = {}
    return meta


def _decode_arrays(raw, doff, recs, where) -> dict[str, np.ndarray]:
    out = {}
    for i, (code, _, off, count, _) in enumerate(recs):
        dt = _CODE_DTYPES.get(code)
        if dt is None or doff + off + count * dt.itemsize > len(raw):
            raise SparseFormatError(f"{where}: array {i} has a bad dtype or lies outside the file")
        out[f"a{i}"] = np.frombuffer(raw, dtype=dt, count=count, offset=doff + off)
    return out


_OP_NAMES = {c: n for n, c in OP_CODES.items()}
_ACT_NAMES = {c: n for n, c in ACTIVATION_CODES.items()}


def _decode_op(rec, names, vname, vshape, strings, arrays, modules, where) -> dict:
    code, name_at, out, nin, r0, _ = rec[:6]
    slots, iat, fat = rec[6:14], list(rec[14:34]), list(rec[34:40])
    kind = _OP_NAMES.get(code)
    if kind is None or out >= len(vname):
        raise SparseFormatError(f"{where}: op record with unknown code {code} or output {out}")
    name = _string(strings, name_at, f"{where}: op name")
    op: dict[str, Any] = {"name": name, "op": kind, "inputs": names(r0, nin), "shape": vshape[out],
                          "attrs": _decode_attrs(kind, iat, fat, len(vshape[out]))}
    if name in modules:
        op["module"] = modules[name]
    arr = [f"a{s}" if s != NONE else None for s in slots]
    if kind in ("conv1d", "conv2d", "linear"):
        op["weight"], op["bias"] = _decode_weight(iat, arr, 0, arrays)
    elif kind in ("lstm", "gru"):
        for k, (w, b) in enumerate(_RNN_WEIGHTS):
            op[w], op[b] = _decode_weight(iat, arr, 4 * k, arrays)
    elif kind in ("batchnorm", "layer_norm", "group_norm"):
        op["scale"], op["shift"] = arr[0], arr[1]
    elif kind == "constant":
        op["value"] = arr[0]
    return op


def _decode_weight(iat, arr, at, arrays) -> tuple[dict, str | None]:
    """The weight record at iattr / slots ``at..at+3`` and its bias array name."""
    storage = "csr" if iat[at] == 1 else "dense"
    rows, cols = iat[at + 1], iat[at + 2]
    names = _W_SLOTS if storage == "csr" else _W_SLOTS[:1]
    w = {"rows": rows, "cols": cols, "nnz": iat[at + 3], "storage": storage,
         "arrays": {k: arr[at + i] for i, k in enumerate(names)}}
    v = arr[at]
    if storage == "dense" and v in arrays and arrays[v].size == rows * cols:
        arrays[v] = arrays[v].reshape(rows, cols)
    return w, arr[at + _BIAS_SLOT]


def _decode_attrs(kind, iat, fat, rank) -> dict:
    """The description's attrs of an op record (``rank``: its output's)."""
    if kind in ("conv1d", "conv2d"):
        k, s, d, p = iat[7:9], iat[9:11], iat[11:13], [iat[13:15], iat[15:17]]
        nd = 1 if kind == "conv1d" else 2
        a = {"in_channels": iat[4], "out_channels": iat[5], "groups": iat[6]}
        a.update(kernel=k[-nd:], stride=s[-nd:], dilation=d[-nd:], padding=[list(x) for x in p[-nd:]])
        return a
    if kind == "linear":
        return {"in_features": iat[2], "out_features": iat[1]}
    if kind.startswith(("maxpool", "avgpool")):
        nd = 1 if kind.endswith("1d") else 2
        a = {"kernel": iat[0:2][-nd:], "stride": iat[2:4][-nd:], "padding": iat[4:6][-nd:],
             "ceil_mode": bool(iat[8])}
        if kind.startswith("max"):
            a["dilation"] = iat[6:8][-nd:]
        else:
            a["count_include_pad"], a["divisor_override"] = bool(iat[9]), iat[10] or None
        return a
    if kind == "global_avgpool":
        return {"keepdim": bool(iat[0])}
    if kind == "activation":
        fn = _ACT_NAMES.get(iat[0], f"<code {iat[0]}>")
        a = {"fn": fn, **{k: fat[i] for i, k in enumerate(_ACT_PARAMS.get(fn, ()))}}
        if fn == "softmax":
            a["axis"] = iat[1]
        if fn == "gelu":
            a["approximate"] = {v: k for k, v in _GELU_APPROX.items()}.get(iat[1], f"<code {iat[1]}>")
        return a
    if kind in _BINARY and iat[0]:
        return {"scalar": fat[0], "scalar_first": bool(iat[1])}
    return _decode_new_attrs(kind, iat, fat, rank)


def _decode_new_attrs(kind, iat, fat, rank) -> dict:
    """Attributes of concat and of the ops after it in ops.inc."""
    if kind == "concat":
        return {"axis": iat[0]}
    if kind == "layer_norm":
        return {"normalized_ndim": iat[0], "eps": fat[0]}
    if kind == "group_norm":
        return {"num_groups": iat[0], "eps": fat[0]}
    if kind == "permute":  # one entry per axis of the output (the input's rank)
        return {"perm": iat[:rank]}
    if kind == "mean":
        return {"axes": [k for k in range(MAX_DIMS) if iat[1] >> k & 1], "keepdim": bool(iat[0])}
    if kind == "slice":
        return dict(zip(("axis", "start", "end", "step"), iat[0:4]))
    if kind.startswith("adaptive_avgpool"):
        return {"output_size": iat[1:2] if kind.endswith("1d") else iat[0:2]}
    if kind in ("lstm", "gru"):
        return {"hidden_size": iat[8], "bidirectional": bool(iat[9])}
    return {}
