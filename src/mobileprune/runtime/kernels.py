"""Compute kernels of the torch-free sparse runtime (numpy + numba; numba optional).

Every kernel works on float32 C-ordered buffers prepared by :mod:`.model`. With numba
installed (and ``MOBILEPRUNE_NO_NUMBA`` unset) the hot loops are ``@njit(cache=True,
fastmath=True)`` functions (single-threaded: ``parallel=False``); without it the same
functions are vectorised numpy code (slower, same results up to float rounding).

Convolution: direct sparse convolution (seed 003, Algorithm 2, without im2col)
-----------------------------------------------------------------------------
Algorithm 2 multiplies the sparse weight matrix ``W'`` (triples ``row, col, value``) by
the im2col matrix ``X``: ``Y[row, :] += value * X[col, :]``. For a convolution the row
``X[col, :]`` of column ``col = (c, i, j)`` is the input plane of channel ``c`` shifted by
``(i * dil_h, j * dil_w)``, so it is never materialised:

1. the input is copied **once** into a zero-padded buffer (:func:`conv_fill_input`). A
   stride ``s > 1`` is turned into stride 1 by a *polyphase split*: padded row ``h`` goes
   to phase ``h % s`` row ``h // s`` (same for columns), so output ``(y, x)`` reads phase
   ``((i*d) % s, (j*d) % s)`` at ``(y + (i*d)//s, x + (j*d)//s)`` -- a plain shift again.
   In that buffer every weight ``(c, i, j)`` becomes one flat offset ``off`` and output
   ``(y, x)`` of its contribution reads ``buf[off + y * Wq + x]`` (``Wq`` = buffer row
   length), for every output row ``y`` with the same ``off``.
2. the output plane of one channel is cut into vectors of 8 consecutive outputs, or 16
   when output rows are a multiple of 16 long (inside a row, or along the flat buffer
   position when that needs fewer vectors; see :func:`conv_block_table`), grouped in
   *blocks* of 6-8 vectors (48-128 outputs). For
   each block and each output channel ``o``, the kernel keeps the block's vectors in
   **registers** (8 independent FMA chains) and runs over the nonzeros ``k`` of row ``o``
   of the CSR weights: ``acc_j += vals[k] * buf[offs[k] + delta_j : ... + 8]`` -- one
   vector load and one fused multiply-add per 8 MACs, no load/store of the output per
   nonzero. The block is stored once, bias included and the ReLU fused. The loop order
   is *blocks outside, output channels inside*: the input rows a block reads stay in L1
   across all output channels (when the whole input buffer fits in L1, output channels
   go outside and a channel without nonzeros is a plain bias fill).
3. output rows are stored with a padded stride (a multiple of 8, or the buffer row
   length); the runtime hands a strided view ``out[..., :Wo]`` to the next op (no copy).

The register-blocked inner loop is emitted as LLVM IR (numba ``@intrinsic`` with
``<8 x float>`` or ``<16 x float>`` vectors and ``llvm.fma``) because LLVM does not keep array accumulators
in registers across the nonzero loop by itself. If that code cannot be generated, a
plain numba loop nest computes the same thing.

Dense paths use BLAS: im2col (:func:`conv_im2col`, the rows ``X[col, :]`` gathered from
the same padded buffer) + ``numpy.matmul`` for convolutions, ``X @ W.T`` for Linear.

Linear (sparse)
---------------
Batch ``N < 8``: the CSR rows are repacked at load time as SELL-C-sigma
(:func:`sell_pack`: rows sorted by nonzero count, slices of 8 rows stored column by
column, padded to the slice's longest row -- typically < 5 % padding). One slice is 8
outputs at once: per step a vector of 8 values, 8 gathered inputs, one FMA
(:func:`linear_sell`). Batches ``N >= 8`` use Algorithm 2 literally on ``X^T``
(:func:`linear_csr_t`: ``Y^T[o, :] += v * X^T[c, :]``, contiguous in ``n``). Without
numba: a gather + ``numpy.add.reduceat`` over the CSR rows (:func:`linear_csr`).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

__all__ = [
    "HAVE_NUMBA", "backend", "conv_fill_input", "conv_sparse", "conv_forward_sparse",
    "conv_im2col", "set_blas_threads_local",
    "linear_csr", "linear_csr_t", "linear_sell", "sell_pack", "maxpool2d", "avgpool2d", "global_avgpool",
    "conv_block_table", "VEC", "VEC_WIDTHS", "BLOCK_SIZES",
]

#: SELL-C-sigma slice height (rows per slice = lanes) and unroll of the sparse Linear kernel.
SELL_C = 8
SELL_UNROLL = 2

#: Lanes per vector (the default), the vector widths of the sparse conv kernel, and the
#: possible numbers of vectors per register block (accumulators).
VEC = 8
VEC_WIDTHS = (16, 8)
ALIGN_BYTES = 64  # cache line
ALIGN_PAD = ALIGN_BYTES // 4  # float32 elements to spare for aligning a buffer
BLOCK_SIZES = (8, 7, 6)

_DISABLED = os.environ.get("MOBILEPRUNE_NO_NUMBA", "").strip() not in ("", "0")
try:
    if _DISABLED:
        raise ImportError("disabled by MOBILEPRUNE_NO_NUMBA")
    import numba
    from numba import njit, types
    from numba.extending import intrinsic
    HAVE_NUMBA = True
except Exception:  # pragma: no cover - exercised only without numba
    numba = None
    HAVE_NUMBA = False

# set to False if the LLVM-IR inner loop cannot be compiled on this platform
_USE_INTRINSIC = HAVE_NUMBA and os.environ.get("MOBILEPRUNE_NO_INTRINSIC", "").strip() in ("", "0")


def _openblas_local_setter():
    """``openblas_set_num_threads_local`` of numpy's bundled OpenBLAS (>= 0.3.27), or None.

    It changes the BLAS thread count of the *calling thread only* and returns the
    previous value, so the runtime can run its few dense GEMMs single-threaded without
    touching the rest of the process.
    """
    try:
        import ctypes
        import glob
        base = os.path.dirname(np.__file__)
        libs = []
        for d in (os.path.join(base, os.pardir, "numpy.libs"), os.path.join(base, ".dylibs")):
            libs += glob.glob(os.path.join(d, "*openblas*"))
        for path in libs:
            fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = ctypes.c_int
                return fn
    except Exception:  # pragma: no cover - best effort only
        pass
    return None


_BLAS_LOCAL = _openblas_local_setter()


def set_blas_threads_local(n: int) -> int | None:
    """Set numpy's OpenBLAS thread count for the calling thread; return the previous
    value (None when the bundled BLAS does not offer it: nothing is changed then)."""
    if _BLAS_LOCAL is None:
        return None
    return int(_BLAS_LOCAL(int(n)))


def backend() -> str:
    """``"numba-simd"``, ``"numba"`` or ``"numpy"``: which kernels run."""
    if not HAVE_NUMBA:
        return "numpy"
    return "numba-simd" if _USE_INTRINSIC else "numba"


# ---------------------------------------------------------------------------------------
# block table (pure Python / numpy; shared by every backend)

def conv_block_table(Ho: int, Wo: int, Wq: int, nv: int | None = None,
                     width: int | None = None) -> tuple[np.ndarray, int, int, int]:
    """Register blocks of the sparse conv kernel for an ``Ho x Wo`` output.

    ``width``: lanes per vector, one of :data:`VEC_WIDTHS`. By default 16 (one AVX-512
    register, a whole cache line of output per store) when output rows are a multiple of
    16 long, else 8: on 48-wide FER-2013 planes 16 lanes take 0.5-1.5 us off conv1 and
    about 15% off conv2/conv3, while 24- and 12-wide planes (padded or cut across rows
    to 16) ran 10-20% slower than with 8 (``benchmarks/sparse_layers.py``, session 9).

    Two ways to cut the output plane into vectors of ``width`` outputs are compared and
    the one with fewer vectors is used:

    * *rows*: vectors ``x0 = 0, width, ...`` inside each output row; the plane is stored
      with rows padded to ``Wo8`` (a multiple of ``width``);
    * *flat*: vectors over the flat position ``t = y * Wq + x`` of the buffer geometry
      (a vector may cross a row end; the ``Wq - Wo`` columns in between are garbage);
      the plane is stored with row stride ``Wq``.

    Returns ``(blk, row_stride, plane, width)``: ``blk`` is ``(nblocks, 2 * nv)`` int64, columns
    ``0..nv-1`` the input deltas of the ``nv`` vectors of a block and ``nv..2nv-1`` their
    output positions in the plane (``plane`` floats per output channel, rows
    ``row_stride`` apart). A short last block repeats its first vector (the same value is
    stored twice). ``nv`` (vectors per block) is one of :data:`BLOCK_SIZES`; by default
    the one that wastes the fewest repeated vectors (ties: the larger).
    """
    if width is None:
        width = 16 if Wo % 16 == 0 else VEC
    elif width not in VEC_WIDTHS:
        raise ValueError(f"width must be one of {VEC_WIDTHS}, got {width!r}")
    Wo8 = -(-Wo // width) * width
    n_rows = Ho * (Wo8 // width)
    L = (Ho - 1) * Wq + Wo
    n_flat = -(-L // width)
    if n_flat < n_rows:
        vec = [(t, t) for t in range(0, n_flat * width, width)]
        row_stride, plane = Wq, max(Ho * Wq, n_flat * width)
    else:
        vec = [(y * Wq + x0, y * Wo8 + x0) for y in range(Ho) for x0 in range(0, Wo, width)]
        row_stride, plane = Wo8, Ho * Wo8
    if nv is None:
        nv = min(BLOCK_SIZES, key=lambda v: (-(-len(vec) // v) * v, -v))
    elif nv not in BLOCK_SIZES:
        raise ValueError(f"nv must be one of {BLOCK_SIZES}")
    nblk = -(-len(vec) // nv)
    blk = np.empty((nblk, 2 * nv), np.int64)
    for b in range(nblk):
        chunk = vec[b * nv:(b + 1) * nv]
        chunk = chunk + [chunk[0]] * (nv - len(chunk))
        for j, (d, p) in enumerate(chunk):
            blk[b, j] = d
            blk[b, nv + j] = p
    return blk, row_stride, plane, width


# ---------------------------------------------------------------------------------------
# numba kernels

if HAVE_NUMBA:
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils

    @njit(cache=True, inline="always")
    def _round64(n):
        return (n + 63) // 64 * 64

    def _make_block_intrinsic(nv: int, unroll: int, width: int = VEC):
        """LLVM-IR register-blocked inner loop (see the module docstring) over ``nv``
        vectors of ``width`` float32 lanes."""

        @intrinsic
        def _conv_block(typingctx, xp, offs, vals, k0, k1, xbase, blk, b, out, obase, bias,
                        relu):
            if not (isinstance(xp, types.Array) and xp.dtype == types.float32 and xp.ndim == 1
                    and isinstance(out, types.Array) and out.dtype == types.float32
                    and out.ndim == 1 and offs.dtype == types.int32
                    and vals.dtype == types.float32 and blk.dtype == types.int64
                    and blk.ndim == 2 and blk.layout == "C"):
                return None
            sig = types.void(xp, offs, vals, types.int64, types.int64, types.int64, blk,
                             types.int64, out, types.int64, types.float32, types.int64)

            def codegen(context, builder, signature, args):
                (xp_v, offs_v, vals_v, k0_v, k1_v, xbase_v, blk_v, b_v, out_v, obase_v,
                 bias_v, relu_v) = args
                sa = signature.args
                xa = context.make_array(sa[0])(context, builder, xp_v).data
                oa = context.make_array(sa[1])(context, builder, offs_v).data
                va = context.make_array(sa[2])(context, builder, vals_v).data
                ba = context.make_array(sa[6])(context, builder, blk_v).data
                outa = context.make_array(sa[8])(context, builder, out_v).data
                f32 = _ir.FloatType()
                i64 = _ir.IntType(64)
                i32 = _ir.IntType(32)
                vt = _ir.VectorType(f32, width)
                vptr = vt.as_pointer()
                fma = _cgutils.get_or_insert_function(
                    builder.module, _ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{width}f32")
                undef = _ir.Constant(vt, _ir.Undefined)
                zmask = _ir.Constant(_ir.VectorType(i32, width), [0] * width)

                def bcast(s):
                    e = builder.insert_element(undef, s, _ir.Constant(i32, 0))
                    return builder.shuffle_vector(e, undef, zmask)

                row = builder.mul(b_v, _ir.Constant(i64, 2 * nv))
                deltas, opos = [], []
                for j in range(nv):
                    d = builder.load(builder.gep(ba, [builder.add(row, _ir.Constant(i64, j))]))
                    deltas.append(builder.add(d, xbase_v))
                    p = builder.load(builder.gep(ba, [builder.add(row, _ir.Constant(i64, nv + j))]))
                    opos.append(builder.add(p, obase_v))
                zero = _ir.Constant(vt, [0.0] * width)

                def loop(kstart, init_accs, step, name):
                    entry = builder.block
                    head = builder.append_basic_block(name + "_head")
                    body = builder.append_basic_block(name + "_body")
                    done = builder.append_basic_block(name + "_exit")
                    builder.branch(head)
                    builder.position_at_end(head)
                    k = builder.phi(i64)
                    k.add_incoming(kstart, entry)
                    accs = []
                    for a in init_accs:
                        p = builder.phi(vt)
                        p.add_incoming(a, entry)
                        accs.append(p)
                    cond = builder.icmp_signed("<=", builder.add(k, _ir.Constant(i64, step)), k1_v)
                    builder.cbranch(cond, body, done)
                    builder.position_at_end(body)
                    new = list(accs)
                    for q in range(step):
                        kq = builder.add(k, _ir.Constant(i64, q))
                        off = builder.sext(builder.load(builder.gep(oa, [kq])), i64)
                        v = bcast(builder.load(builder.gep(va, [kq])))
                        for j in range(nv):
                            idx = q * nv + j
                            pj = builder.gep(xa, [builder.add(off, deltas[j])])
                            xv = builder.load(builder.bitcast(pj, vptr), align=4)
                            new[idx] = builder.call(fma, [xv, v, new[idx]])
                    kn = builder.add(k, _ir.Constant(i64, step))
                    bend = builder.block
                    builder.branch(head)
                    k.add_incoming(kn, bend)
                    for a, n in zip(accs, new):
                        a.add_incoming(n, bend)
                    builder.position_at_end(done)
                    return k, accs

                init = [bcast(bias_v)] * nv + [zero] * (nv * (unroll - 1))
                k, accs = loop(k0_v, init, unroll, "mpblk_main")
                fin = []
                for j in range(nv):
                    a = accs[j]
                    for q in range(1, unroll):
                        a = builder.fadd(a, accs[q * nv + j])
                    fin.append(a)
                if unroll > 1:
                    k, fin = loop(k, fin, 1, "mpblk_rem")
                # ReLU: x < 0 ? 0 : x (NaN stays NaN), only when relu != 0
                lo = builder.select(builder.icmp_signed("!=", relu_v, _ir.Constant(i64, 0)),
                                    _ir.Constant(f32, 0.0), _ir.Constant(f32, float("-inf")))
                lo_v = bcast(lo)
                for j in range(nv):
                    neg = builder.fcmp_ordered("<", fin[j], lo_v)
                    a = builder.select(neg, zero, fin[j])
                    pj = builder.gep(outa, [opos[j]])
                    builder.store(a, builder.bitcast(pj, vptr), align=4)
                return context.get_dummy_value()

            return sig, codegen

        return _conv_block

    _conv_block8 = _make_block_intrinsic(8, 1)
    _conv_block7 = _make_block_intrinsic(7, 1)
    _conv_block6 = _make_block_intrinsic(6, 1)
    _conv_block8w = _make_block_intrinsic(8, 1, 16)
    _conv_block7w = _make_block_intrinsic(7, 1, 16)
    _conv_block6w = _make_block_intrinsic(6, 1, 16)

    @njit(cache=True, boundscheck=False, inline="always")
    def _conv_block_any(buf, offs, vals, k0, k1, xbase, blk, b, out, ob, bias, relu, nv, wide):
        # the register block for (nv, width): 16 lanes when ``wide``
        if wide:
            if nv == 8:
                _conv_block8w(buf, offs, vals, k0, k1, xbase, blk, b, out, ob, bias, relu)
            elif nv == 7:
                _conv_block7w(buf, offs, vals, k0, k1, xbase, blk, b, out, ob, bias, relu)
            else:
                _conv_block6w(buf, offs, vals, k0, k1, xbase, blk, b, out, ob, bias, relu)
        elif nv == 8:
            _conv_block8(buf, offs, vals, k0, k1, xbase, blk, b, out, ob, bias, relu)
        elif nv == 7:
            _conv_block7(buf, offs, vals, k0, k1, xbase, blk, b, out, ob, bias, relu)
        else:
            _conv_block6(buf, offs, vals, k0, k1, xbase, blk, b, out, ob, bias, relu)

    @njit(cache=True, boundscheck=False)
    def _conv_sparse_simd(buf, P, N, indptr, offs, vals, bias, blk, relu, out, OP, plane,
                          o_outer, width):
        O = indptr.shape[0] - 1
        nblk = blk.shape[0]
        nv = blk.shape[1] // 2
        wide = width == 16
        for n in range(N):
            xbase = n * P
            if o_outer:
                # the whole input is in L1: one output channel at a time; a channel without
                # nonzeros is its (ReLU'd) bias
                for o in range(O):
                    k0 = indptr[o]
                    k1 = indptr[o + 1]
                    ob = n * OP + o * plane
                    if k0 == k1:
                        v = bias[o]
                        if relu and v < 0:
                            v = np.float32(0.0)
                        dst = out[ob:ob + plane]
                        for t in range(plane):
                            dst[t] = v
                        continue
                    for b in range(nblk):
                        _conv_block_any(buf, offs, vals, k0, k1, xbase, blk, b, out, ob, bias[o],
                                        relu, nv, wide)
            else:
                # blocks outside: the input rows a block reads stay in L1 for all channels
                for b in range(nblk):
                    for o in range(O):
                        _conv_block_any(buf, offs, vals, indptr[o], indptr[o + 1], xbase, blk, b,
                                        out, n * OP + o * plane, bias[o], relu, nv, wide)

    @njit(cache=True, boundscheck=False)
    def _conv_forward_simd(x, buf, P, pt, pl, sh, sw, Hq, Wq, indptr, offs, vals, bias, blk,
                           relu, out, OP, plane, o_outer, width):
        # fill + convolve in one call (one dispatch from Python instead of two)
        if sh == 1 and sw == 1:
            _fill_s1(x, buf, P, pt, pl, Hq, Wq)
        else:
            _fill_poly(x, buf, P, pt, pl, sh, sw, Hq, Wq)
        _conv_sparse_simd(buf, P, x.shape[0], indptr, offs, vals, bias, blk, relu, out, OP,
                          plane, o_outer, width)

    @njit(cache=True, boundscheck=False)
    def _conv_forward_packed(x, buf, indptr, offs, vals, bias, blk, out, geom):
        # the same with the per-layer constants in one int64 array: a numba call costs
        # about 0.1 us per argument, which matters for small layers at batch 1
        _conv_forward_simd(x, buf, geom[0], geom[1], geom[2], geom[3], geom[4], geom[5],
                           geom[6], indptr, offs, vals, bias, blk, geom[9], out,
                           geom[7], geom[8], geom[10] != 0, geom[11])

    @njit(cache=True, boundscheck=False, inline="always")
    def _blob_views(blob):
        # the arrays packed by conv_pack (see there): six sections after a 64-byte header
        h = blob[:64].view(np.int64)
        o0 = 64
        o1 = o0 + _round64(h[0] * 8)
        o2 = o1 + _round64(h[1] * 8)
        o3 = o2 + _round64(h[2] * h[3] * 8)
        o4 = o3 + _round64(h[4] * 4)
        o5 = o4 + _round64(h[4] * 4)
        geom = blob[o0:o0 + h[0] * 8].view(np.int64)
        indptr = blob[o1:o1 + h[1] * 8].view(np.int64)
        blk = blob[o2:o2 + h[2] * h[3] * 8].view(np.int64).reshape(h[2], h[3])
        offs = blob[o3:o3 + h[4] * 4].view(np.int32)
        vals = blob[o4:o4 + h[4] * 4].view(np.float32)
        bias = blob[o5:o5 + h[5] * 4].view(np.float32)
        return geom, indptr, blk, offs, vals, bias

    @njit(cache=True, boundscheck=False)
    def _conv_forward_blob(x, buf, blob, out):
        # _conv_forward_packed with every constant in one byte array: 4 arguments to
        # convert per call instead of 9 (about 0.4 us less at batch 1)
        geom, indptr, blk, offs, vals, bias = _blob_views(blob)
        _conv_forward_packed(x, buf, indptr, offs, vals, bias, blk, out, geom)

    @njit(cache=True, boundscheck=False)
    def _conv_forward_blob_into(x, buf, blob, raw):
        # the same, writing into the first 64-byte aligned float of ``raw`` (which has
        # ALIGN_PAD floats to spare); returns that offset. Vector stores that straddle
        # cache lines cost about 20% on a layer bound by writing its output.
        geom, indptr, blk, offs, vals, bias = _blob_views(blob)
        o = ((ALIGN_BYTES - raw.ctypes.data % ALIGN_BYTES) % ALIGN_BYTES) // 4
        size = x.shape[0] * geom[7]
        _conv_forward_packed(x, buf, indptr, offs, vals, bias, blk, raw[o:o + size], geom)
        return o

    @njit(cache=True, fastmath=True, boundscheck=False)
    def _conv_sparse_loops(buf, P, N, indptr, offs, vals, bias, blk, relu, out, OP, plane,
                           width):
        O = indptr.shape[0] - 1
        nblk = blk.shape[0]
        nv = blk.shape[1] // 2
        acc = np.empty(width, np.float32)
        for n in range(N):
            xbase = n * P
            for b in range(nblk):
                for o in range(O):
                    k0 = indptr[o]
                    k1 = indptr[o + 1]
                    for j in range(nv):
                        d = blk[b, j] + xbase
                        for t in range(width):
                            acc[t] = bias[o]
                        for k in range(k0, k1):
                            v = vals[k]
                            seg = buf[offs[k] + d:offs[k] + d + width]
                            for t in range(width):
                                acc[t] += v * seg[t]
                        p = n * OP + o * plane + blk[b, nv + j]
                        for t in range(width):
                            a = acc[t]
                            if relu and a < 0:
                                a = 0.0
                            out[p + t] = a

    @njit(cache=True, boundscheck=False)
    def _fill_s1(x, buf, P, pt, pl, Hq, Wq):
        N, C, H, W = x.shape
        for n in range(N):
            for c in range(C):
                for h in range(H):
                    dst = buf[n * P + (c * Hq + h + pt) * Wq + pl:n * P + (c * Hq + h + pt) * Wq + pl + W]
                    src = x[n, c, h]
                    for w in range(W):
                        dst[w] = src[w]

    @njit(cache=True, boundscheck=False)
    def _fill_poly(x, buf, P, pt, pl, sh, sw, Hq, Wq):
        N, C, H, W = x.shape
        for n in range(N):
            for c in range(C):
                for h in range(H):
                    hp = h + pt
                    a = hp % sh
                    q = hp // sh
                    for w in range(W):
                        wp = w + pl
                        bb = wp % sw
                        r = wp // sw
                        buf[n * P + (((a * sw + bb) * C + c) * Hq + q) * Wq + r] = x[n, c, h, w]

    @njit(cache=True, boundscheck=False)
    def _im2col(buf, base, roff, Ho, Wo, Wq, cols):
        K = roff.shape[0]
        for r in range(K):
            for y in range(Ho):
                src = buf[base + roff[r] + y * Wq:base + roff[r] + y * Wq + Wo]
                dst = cols[r, y * Wo:(y + 1) * Wo]
                for x in range(Wo):
                    dst[x] = src[x]

    @intrinsic
    def _sell_group(typingctx, x, idx, vals, p0, p1, acc_out):
        """acc_out[0:8] = sum over the SELL slices p0..p1 of vals[p:p+8] * x[idx[p:p+8]]."""
        if not (isinstance(x, types.Array) and x.dtype == types.float32
                and idx.dtype == types.int32 and vals.dtype == types.float32
                and acc_out.dtype == types.float32):
            return None
        sig = types.void(x, idx, vals, types.int64, types.int64, acc_out)

        def codegen(context, builder, signature, args):
            x_v, idx_v, vals_v, p0_v, p1_v, out_v = args
            sa = signature.args
            xa = context.make_array(sa[0])(context, builder, x_v).data
            ia = context.make_array(sa[1])(context, builder, idx_v).data
            va = context.make_array(sa[2])(context, builder, vals_v).data
            oa = context.make_array(sa[5])(context, builder, out_v).data
            f32 = _ir.FloatType()
            i64 = _ir.IntType(64)
            i32 = _ir.IntType(32)
            vt = _ir.VectorType(f32, SELL_C)
            it = _ir.VectorType(i32, SELL_C)
            fma = _cgutils.get_or_insert_function(
                builder.module, _ir.FunctionType(vt, [vt, vt, vt]), "llvm.fma.v8f32")
            zero = _ir.Constant(vt, [0.0] * SELL_C)
            entry = builder.block
            head = builder.append_basic_block("sell_head")
            body = builder.append_basic_block("sell_body")
            done = builder.append_basic_block("sell_done")
            builder.branch(head)
            builder.position_at_end(head)
            p = builder.phi(i64)
            p.add_incoming(p0_v, entry)
            accs = [builder.phi(vt) for _ in range(SELL_UNROLL)]
            for a in accs:
                a.add_incoming(zero, entry)
            builder.cbranch(builder.icmp_signed("<", p, p1_v), body, done)
            builder.position_at_end(body)
            new = []
            for u in range(SELL_UNROLL):
                q = builder.add(p, _ir.Constant(i64, SELL_C * u))
                v = builder.load(builder.bitcast(builder.gep(va, [q]), vt.as_pointer()), align=4)
                iv = builder.load(builder.bitcast(builder.gep(ia, [q]), it.as_pointer()), align=4)
                xv = _ir.Constant(vt, _ir.Undefined)
                for lane in range(SELL_C):
                    il = builder.sext(builder.extract_element(iv, _ir.Constant(i32, lane)), i64)
                    xv = builder.insert_element(xv, builder.load(builder.gep(xa, [il])),
                                                _ir.Constant(i32, lane))
                new.append(builder.call(fma, [v, xv, accs[u]]))
            pn = builder.add(p, _ir.Constant(i64, SELL_C * SELL_UNROLL))
            bend = builder.block
            builder.branch(head)
            p.add_incoming(pn, bend)
            for a, n in zip(accs, new):
                a.add_incoming(n, bend)
            builder.position_at_end(done)
            tot = accs[0]
            for a in accs[1:]:
                tot = builder.fadd(tot, a)
            builder.store(tot, builder.bitcast(oa, vt.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    @njit(cache=True, boundscheck=False)
    def _linear_sell_simd(X, gptr, idx, vals, perm, bias, relu, Y):
        N = X.shape[0]
        G = gptr.shape[0] - 1
        acc = np.empty(SELL_C, np.float32)
        for n in range(N):
            x = X[n]
            y = Y[n]
            for g in range(G):
                _sell_group(x, idx, vals, gptr[g], gptr[g + 1], acc)
                r0 = g * SELL_C
                for lane in range(SELL_C):
                    r = perm[r0 + lane]
                    v = acc[lane] + bias[r]
                    if relu and v < 0:
                        v = np.float32(0.0)
                    y[r] = v

    @njit(cache=True, fastmath=True, boundscheck=False)
    def _linear_sell_loops(X, gptr, idx, vals, perm, bias, relu, Y):
        N = X.shape[0]
        G = gptr.shape[0] - 1
        acc = np.empty(SELL_C, np.float32)
        for n in range(N):
            x = X[n]
            y = Y[n]
            for g in range(G):
                for lane in range(SELL_C):
                    acc[lane] = 0.0
                for p in range(gptr[g], gptr[g + 1], SELL_C):
                    vs = vals[p:p + SELL_C]
                    ix = idx[p:p + SELL_C]
                    for lane in range(SELL_C):
                        acc[lane] += vs[lane] * x[ix[lane]]
                r0 = g * SELL_C
                for lane in range(SELL_C):
                    r = perm[r0 + lane]
                    v = acc[lane] + bias[r]
                    if relu and v < 0:
                        v = np.float32(0.0)
                    y[r] = v

    @njit(cache=True, fastmath=True, boundscheck=False)
    def _linear_csr(X, indptr, idx, vals, bias, relu, Y):
        N = X.shape[0]
        O = indptr.shape[0] - 1
        if N == 1:
            x = X[0]
            y = Y[0]
            for o in range(O):
                s = np.float32(0.0)
                for k in range(indptr[o], indptr[o + 1]):
                    s += vals[k] * x[idx[k]]
                s += bias[o]
                if relu and s < 0:
                    s = np.float32(0.0)
                y[o] = s
            return
        for o in range(O):
            k0 = indptr[o]
            k1 = indptr[o + 1]
            for n in range(N):
                x = X[n]
                s = np.float32(0.0)
                for k in range(k0, k1):
                    s += vals[k] * x[idx[k]]
                s += bias[o]
                if relu and s < 0:
                    s = np.float32(0.0)
                Y[n, o] = s

    @njit(cache=True, fastmath=True, boundscheck=False)
    def _linear_csr_t(XT, indptr, idx, vals, bias, relu, YT):
        N = XT.shape[1]
        O = indptr.shape[0] - 1
        for o in range(O):
            y = YT[o]
            b = bias[o]
            for n in range(N):
                y[n] = b
            for k in range(indptr[o], indptr[o + 1]):
                v = vals[k]
                x = XT[idx[k]]
                for n in range(N):
                    y[n] += v * x[n]
            if relu:
                for n in range(N):
                    if y[n] < 0:
                        y[n] = 0.0

    @njit(cache=True, boundscheck=False)
    def _maxpool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out):
        N, C, H, W = x.shape
        Ho, Wo = out.shape[2], out.shape[3]
        for n in range(N):
            for c in range(C):
                for yo in range(Ho):
                    h0 = yo * sh - ph
                    for xo in range(Wo):
                        w0 = xo * sw - pw
                        m = -np.inf
                        for i in range(kh):
                            h = h0 + i * dh
                            if h < 0 or h >= H:
                                continue
                            for j in range(kw):
                                w = w0 + j * dw
                                if w < 0 or w >= W:
                                    continue
                                v = x[n, c, h, w]
                                if v > m or v != v:
                                    m = v
                        out[n, c, yo, xo] = m

    @njit(cache=True, boundscheck=False)
    def _maxpool2d_k2(x, out):
        # 2x2, stride 2 (the common case): straight-line max of the four window values;
        # NaN propagates like torch
        N, C = x.shape[0], x.shape[1]
        Ho, Wo = out.shape[2], out.shape[3]
        for n in range(N):
            for c in range(C):
                for yo in range(Ho):
                    r0 = x[n, c, 2 * yo]
                    r1 = x[n, c, 2 * yo + 1]
                    o = out[n, c, yo]
                    for xo in range(Wo):
                        a = r0[2 * xo]
                        b = r0[2 * xo + 1]
                        e = r1[2 * xo]
                        d = r1[2 * xo + 1]
                        m1 = a if (a > b or a != a) else b
                        m2 = e if (e > d or e != e) else d
                        o[xo] = m1 if (m1 > m2 or m1 != m1) else m2

    @njit(cache=True, boundscheck=False)
    def _maxpool2d_tiled(x, k, out):
        # kernel == stride == k, no padding, no dilation (LeNet, VGG, FER pools): the
        # max over the k rows of a window row runs on contiguous data (vectorised),
        # then the max over k neighbours; NaN propagates like torch
        N, C = x.shape[0], x.shape[1]
        Ho, Wo = out.shape[2], out.shape[3]
        Wk = Wo * k
        tmp = np.empty(Wk, np.float32)
        for n in range(N):
            for c in range(C):
                for yo in range(Ho):
                    first = x[n, c, yo * k]
                    for w in range(Wk):
                        tmp[w] = first[w]
                    for i in range(1, k):
                        row = x[n, c, yo * k + i]
                        for w in range(Wk):
                            v = row[w]
                            m = tmp[w]
                            tmp[w] = v if (v > m or v != v) else m
                    o = out[n, c, yo]
                    for xo in range(Wo):
                        m = tmp[xo * k]
                        for j in range(1, k):
                            v = tmp[xo * k + j]
                            m = v if (v > m or v != v) else m
                        o[xo] = m

    @njit(cache=True, boundscheck=False)
    def _avgpool2d(x, kh, kw, sh, sw, ph, pw, include_pad, divisor, out):
        N, C, H, W = x.shape
        Ho, Wo = out.shape[2], out.shape[3]
        for n in range(N):
            for c in range(C):
                for yo in range(Ho):
                    hs = yo * sh - ph
                    he = min(hs + kh, H + ph)
                    for xo in range(Wo):
                        ws = xo * sw - pw
                        we = min(ws + kw, W + pw)
                        size = (he - hs) * (we - ws)
                        h0 = max(hs, 0)
                        h1 = min(he, H)
                        w0 = max(ws, 0)
                        w1 = min(we, W)
                        s = 0.0
                        for h in range(h0, h1):
                            for w in range(w0, w1):
                                s += x[n, c, h, w]
                        if divisor > 0:
                            d = divisor
                        elif include_pad:
                            d = size
                        else:
                            d = (h1 - h0) * (w1 - w0)
                        out[n, c, yo, xo] = s / d if d > 0 else 0.0


# ---------------------------------------------------------------------------------------
# public entry points (dispatch numba / numpy)

def conv_fill_input(x: np.ndarray, buf: np.ndarray, P: int, pt: int, pl: int, sh: int, sw: int,
                    Hq: int, Wq: int) -> None:
    """Copy ``x`` ``(N, C, H, W)`` into the zero-padded (polyphase if stride > 1) buffer.

    Only the interior positions are written; the padding stays zero from allocation.
    """
    N, C, H, W = x.shape
    if HAVE_NUMBA:
        if sh == 1 and sw == 1:
            _fill_s1(x, buf, P, pt, pl, Hq, Wq)
        else:
            _fill_poly(x, buf, P, pt, pl, sh, sw, Hq, Wq)
        return
    view = buf[:N * P].reshape(N, sh * sw, C, Hq, Wq)
    for a in range(sh):
        h_first = (a - pt) % sh  # first input row h with (h + pt) % sh == a
        if h_first >= H:
            continue
        q0 = (h_first + pt) // sh
        hs = slice(h_first, H, sh)
        nh = len(range(h_first, H, sh))
        for bb in range(sw):
            w_first = (bb - pl) % sw
            if w_first >= W:
                continue
            r0 = (w_first + pl) // sw
            nw = len(range(w_first, W, sw))
            view[:, a * sw + bb, :, q0:q0 + nh, r0:r0 + nw] = x[:, :, hs, w_first::sw]


def conv_sparse(buf, P, N, indptr, offs, vals, bias, blk, relu, out, OP, plane,
                o_outer=False, width=VEC) -> None:
    """Direct sparse convolution (see the module docstring); numba only.

    ``blk`` and ``width`` come from :func:`conv_block_table` (``blk``'s shape selects the
    register block size); ``o_outer`` loops output channels outside the blocks (good
    when the whole input buffer fits in L1).
    """
    global _USE_INTRINSIC
    if _USE_INTRINSIC:
        try:
            _conv_sparse_simd(buf, P, N, indptr, offs, vals, bias, blk, int(relu), out, OP, plane,
                              bool(o_outer), int(width))
            return
        except Exception as e:  # pragma: no cover - platform without the IR path
            _USE_INTRINSIC = False
            warnings.warn(f"mobileprune.runtime: SIMD conv kernel unavailable ({e}); "
                          f"using the plain numba loop", RuntimeWarning, stacklevel=2)
    _conv_sparse_loops(buf, P, N, indptr, offs, vals, bias, blk, bool(relu), out, OP, plane,
                       int(width))


def conv_forward_sparse(x, buf, P, pt, pl, sh, sw, Hq, Wq, indptr, offs, vals, bias, blk,
                        relu, out, OP, plane, o_outer, width=VEC) -> None:
    """:func:`conv_fill_input` + :func:`conv_sparse` in one numba call."""
    global _USE_INTRINSIC
    if _USE_INTRINSIC:
        try:
            _conv_forward_simd(x, buf, P, pt, pl, sh, sw, Hq, Wq, indptr, offs, vals, bias, blk,
                               int(relu), out, OP, plane, bool(o_outer), int(width))
            return
        except Exception as e:  # pragma: no cover - platform without the IR path
            _USE_INTRINSIC = False
            warnings.warn(f"mobileprune.runtime: SIMD conv kernel unavailable ({e}); "
                          f"using the plain numba loop", RuntimeWarning, stacklevel=2)
    conv_fill_input(x, buf, P, pt, pl, sh, sw, Hq, Wq)
    _conv_sparse_loops(buf, P, x.shape[0], indptr, offs, vals, bias, blk, bool(relu), out, OP,
                       plane, int(width))


def conv_geometry(P, pt, pl, sh, sw, Hq, Wq, OP, plane, relu, o_outer, width=VEC) -> np.ndarray:
    """Pack the per-layer constants of :func:`conv_forward_sparse` for
    :func:`conv_forward_sparse_packed`."""
    return np.array([P, pt, pl, sh, sw, Hq, Wq, OP, plane, int(relu), int(o_outer), int(width)],
                    np.int64)


def conv_forward_sparse_packed(x, buf, indptr, offs, vals, bias, blk, out, geom) -> None:
    """:func:`conv_forward_sparse` with the constants packed by :func:`conv_geometry`."""
    if _USE_INTRINSIC:
        _conv_forward_packed(x, buf, indptr, offs, vals, bias, blk, out, geom)
        return
    g = [int(v) for v in geom]
    conv_forward_sparse(x, buf, g[0], g[1], g[2], g[3], g[4], g[5], g[6], indptr, offs, vals,
                        bias, blk, bool(g[9]), out, g[7], g[8], bool(g[10]), g[11])


def _round64_py(n: int) -> int:
    return (n + 63) // 64 * 64


def conv_pack(indptr: np.ndarray, offs: np.ndarray, vals: np.ndarray, bias: np.ndarray,
              blk: np.ndarray, geom: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Every constant of one sparse conv layer in one 64-byte aligned byte array, for
    :func:`conv_forward_blob_kernel` / :func:`conv_forward_blob_into` (a numba call costs
    about 0.1 us per array argument; at batch 1 a small layer takes a few us).

    Layout: a 64-byte header of int64 counts ``(len(geom), len(indptr), nblk, 2 * nv,
    nnz, len(bias))``, then ``geom`` (int64), ``indptr`` (int64), ``blk`` (int64,
    ``(nblk, 2 nv)``), ``offs`` (int32), ``vals`` (float32), ``bias`` (float32), each
    starting on a 64-byte boundary. Returns the blob and views of those six arrays into
    it (so the layer keeps one copy of its weights).
    """
    parts = [np.ascontiguousarray(geom, np.int64), np.ascontiguousarray(indptr, np.int64),
             np.ascontiguousarray(blk, np.int64), np.ascontiguousarray(offs, np.int32),
             np.ascontiguousarray(vals, np.float32), np.ascontiguousarray(bias, np.float32)]
    if parts[2].ndim != 2 or parts[3].shape != parts[4].shape:
        raise ValueError("conv_pack: blk must be 2-D and offs / vals of one length")
    starts, pos = [], 64
    for a in parts:
        starts.append(pos)
        pos += _round64_py(a.nbytes)
    blob = aligned_empty(pos, np.uint8, zero=True)
    blob[:48].view(np.int64)[:] = [parts[0].size, parts[1].size, parts[2].shape[0],
                                   parts[2].shape[1], parts[3].size, parts[5].size]
    views = []
    for a, st in zip(parts, starts):
        v = blob[st:st + a.nbytes].view(a.dtype).reshape(a.shape)
        v[...] = a
        views.append(v)
    return blob, tuple(views)


def _blob_views_py(blob: np.ndarray) -> tuple[np.ndarray, ...]:
    h = [int(v) for v in blob[:48].view(np.int64)]
    shapes = [((h[0],), np.int64), ((h[1],), np.int64), ((h[2], h[3]), np.int64),
              ((h[4],), np.int32), ((h[4],), np.float32), ((h[5],), np.float32)]
    out, pos = [], 64
    for shp, dt in shapes:
        n = int(np.prod(shp)) * np.dtype(dt).itemsize
        out.append(blob[pos:pos + n].view(dt).reshape(shp))
        pos += _round64_py(n)
    return tuple(out)


def _conv_forward_blob_py(x, buf, blob, out) -> None:
    geom, indptr, blk, offs, vals, bias = _blob_views_py(blob)
    conv_forward_sparse_packed(x, buf, indptr, offs, vals, bias, blk, out, geom)


def _conv_forward_blob_into_py(x, buf, blob, raw) -> int:
    geom = _blob_views_py(blob)[0]
    _conv_forward_blob_py(x, buf, blob, raw[:x.shape[0] * int(geom[7])])
    return 0


def conv_forward_blob_kernel():
    """``f(x, buf, blob, out)``: :func:`conv_forward_sparse_packed` with the layer's
    constants packed by :func:`conv_pack`; the compiled kernel itself when the SIMD path
    is in use, to be called without a Python wrapper in per-call hot loops."""
    return _conv_forward_blob if _USE_INTRINSIC else _conv_forward_blob_py


def conv_forward_blob_into():
    """``f(x, buf, blob, raw) -> o``: like :func:`conv_forward_blob_kernel`, writing the
    output to ``raw[o:o + N * OP]`` (allocate ``N * OP + ALIGN_PAD`` floats): with the
    compiled SIMD kernels the first 64-byte aligned stretch of ``raw``, otherwise
    ``o = 0``."""
    return _conv_forward_blob_into if _USE_INTRINSIC else _conv_forward_blob_into_py


def aligned_empty(shape, dtype=np.float32, zero: bool = False) -> np.ndarray:
    """A new C-contiguous array whose data starts on a 64-byte boundary (a cache line)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = (np.zeros if zero else np.empty)(n * dtype.itemsize + ALIGN_BYTES, np.uint8)
    o = (-raw.ctypes.data) % ALIGN_BYTES
    return raw[o:o + n * dtype.itemsize].view(dtype).reshape(shape)


def conv_im2col(buf: np.ndarray, base: int, roff: np.ndarray, Ho: int, Wo: int, Wq: int,
                cols: np.ndarray) -> None:
    """``cols[r, y*Wo + x] = buf[base + roff[r] + y*Wq + x]`` (im2col from the buffer)."""
    if HAVE_NUMBA:
        _im2col(buf, base, roff, Ho, Wo, Wq, cols)
        return
    idx = (roff[:, None, None] + (np.arange(Ho) * Wq)[None, :, None]
           + np.arange(Wo)[None, None, :]) + base
    cols[...] = buf[idx.reshape(len(roff), Ho * Wo)]


def sell_pack(indptr: np.ndarray, idx: np.ndarray, vals: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CSR -> SELL-C-sigma (C = :data:`SELL_C`, sigma = all rows).

    Rows are sorted by decreasing nonzero count and cut into slices of ``C`` rows; a slice
    is stored column by column (``C`` values, then the next ``C``...), each row padded with
    zeros (index 0) to the slice length rounded up to ``SELL_UNROLL``. The last slice is
    completed with copies of the first row (computed twice, stored once). Returns
    ``(gptr, sidx, svals, perm)``: slice ``g`` occupies ``[gptr[g], gptr[g+1])``, its lane
    ``l`` is output row ``perm[g * C + l]``.
    """
    O = len(indptr) - 1
    nnz = np.diff(indptr)
    perm = np.argsort(-nnz, kind="stable")
    G = -(-O // SELL_C)
    perm = np.concatenate([perm, np.full(G * SELL_C - O, perm[0] if O else 0, perm.dtype)])
    lens = nnz[perm].reshape(G, SELL_C).max(axis=1)
    lens = -(-lens // SELL_UNROLL) * SELL_UNROLL
    gptr = np.zeros(G + 1, np.int64)
    np.cumsum(lens * SELL_C, out=gptr[1:])
    sidx = np.zeros(int(gptr[-1]), np.int32)
    svals = np.zeros(int(gptr[-1]), np.float32)
    for g in range(G):
        for lane in range(SELL_C):
            r = perm[g * SELL_C + lane]
            a, b = indptr[r], indptr[r + 1]
            pos = gptr[g] + lane + SELL_C * np.arange(b - a)
            sidx[pos] = idx[a:b]
            svals[pos] = vals[a:b]
    return gptr, sidx, svals, perm.astype(np.int64)


def linear_sell(X, gptr, sidx, svals, perm, bias, relu, Y) -> None:
    """``Y = X @ W.T + b`` (optionally ReLU) with ``W`` in SELL form (:func:`sell_pack`);
    numba only. Per slice, 8 rows are computed at once (one vector of values, 8 gathered
    inputs, one FMA per 8 nonzeros)."""
    global _USE_INTRINSIC
    if _USE_INTRINSIC:
        try:
            _linear_sell_simd(X, gptr, sidx, svals, perm, bias, bool(relu), Y)
            return
        except Exception as e:  # pragma: no cover - platform without the IR path
            _USE_INTRINSIC = False
            warnings.warn(f"mobileprune.runtime: SIMD kernels unavailable ({e}); "
                          f"using plain numba loops", RuntimeWarning, stacklevel=2)
    _linear_sell_loops(X, gptr, sidx, svals, perm, bias, bool(relu), Y)


def linear_csr(X, indptr, idx, vals, bias, relu, Y) -> None:
    """``Y = X @ W.T + b`` (optionally ReLU) with CSR ``W``; ``X (N, in)``, ``Y (N, out)``."""
    if HAVE_NUMBA:
        _linear_csr(X, indptr, idx, vals, bias, bool(relu), Y)
        return
    prod = X[:, idx] * vals[None, :]
    O = len(indptr) - 1
    sums = np.zeros((X.shape[0], O), np.float32)
    nz_rows = np.flatnonzero(np.diff(indptr) > 0)
    if nz_rows.size:
        sums[:, nz_rows] = np.add.reduceat(prod, indptr[nz_rows], axis=1)
    np.add(sums, bias[None, :], out=Y)
    if relu:
        np.maximum(Y, 0, out=Y)


def linear_csr_t(XT, indptr, idx, vals, bias, relu, YT) -> None:
    """Seed Algorithm 2 on transposed activations: ``YT (out, N) = W @ XT (in, N) + b``."""
    if HAVE_NUMBA:
        _linear_csr_t(XT, indptr, idx, vals, bias, bool(relu), YT)
        return
    linear_csr(np.ascontiguousarray(XT.T), indptr, idx, vals, bias, relu, YT.T)


def maxpool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out) -> None:
    """Max pooling (implicit -inf padding, dilation, ceil_mode through ``out``'s shape)."""
    if HAVE_NUMBA:
        Ho, Wo = out.shape[2], out.shape[3]
        if (kh == kw == sh == sw and ph == pw == 0 and dh == dw == 1
                and Ho * kh <= x.shape[2] and Wo * kw <= x.shape[3]):
            if kh == 2:
                _maxpool2d_k2(x, out)
            else:
                _maxpool2d_tiled(x, kh, out)
        else:
            _maxpool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out)
        return
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2:]
    need_h = (Ho - 1) * sh + (kh - 1) * dh + 1
    need_w = (Wo - 1) * sw + (kw - 1) * dw + 1
    Hp = max(H + ph, need_h - ph) + ph
    Wp = max(W + pw, need_w - pw) + pw
    xp = np.full((N, C, Hp, Wp), -np.inf, np.float32)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    res = np.full((N, C, Ho, Wo), -np.inf, np.float32)
    for i in range(kh):
        for j in range(kw):
            sl = xp[:, :, i * dh:i * dh + (Ho - 1) * sh + 1:sh, j * dw:j * dw + (Wo - 1) * sw + 1:sw]
            np.maximum(res, sl, out=res)
    out[...] = res


def avgpool2d(x, kh, kw, sh, sw, ph, pw, include_pad, divisor, out) -> None:
    """Average pooling with torch's divisor rules (``count_include_pad``,
    ``divisor_override``, ceil_mode windows clipped to the padded input)."""
    if HAVE_NUMBA:
        _avgpool2d(x, kh, kw, sh, sw, ph, pw, bool(include_pad), int(divisor), out)
        return
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2:]
    Hp = max(H + ph, (Ho - 1) * sh + kh - ph) + ph
    Wp = max(W + pw, (Wo - 1) * sw + kw - pw) + pw
    xp = np.zeros((N, C, Hp, Wp), np.float64)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    s = np.zeros((N, C, Ho, Wo), np.float64)
    for i in range(kh):
        for j in range(kw):
            s += xp[:, :, i:i + (Ho - 1) * sh + 1:sh, j:j + (Wo - 1) * sw + 1:sw]
    if divisor > 0:
        d = np.full((Ho, Wo), float(divisor))
    else:
        hs = np.arange(Ho) * sh - ph
        ws = np.arange(Wo) * sw - pw
        he = np.minimum(hs + kh, H + ph)
        we = np.minimum(ws + kw, W + pw)
        if include_pad:
            d = np.outer(he - hs, we - ws).astype(np.float64)
        else:
            d = np.outer(np.minimum(he, H) - np.maximum(hs, 0),
                         np.minimum(we, W) - np.maximum(ws, 0)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[...] = np.where(d > 0, s / np.where(d > 0, d, 1), 0.0)


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """Mean over every axis after the channel axis: ``(N, C, ...) -> (N, C)``."""
    n, c = x.shape[:2]
    return x.reshape(n, c, -1).mean(axis=2, dtype=np.float64).astype(np.float32)
