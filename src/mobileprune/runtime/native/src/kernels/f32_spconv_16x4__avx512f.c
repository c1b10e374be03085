/* Direct sparse convolution, AVX-512F: 16 output pixels per zmm vector, up to 16 vectors
 * per pixel block with 1-row blocks (8 when the vectors are not contiguous: one base
 * register each), 6 with 4-row blocks (24 accumulators), all held in
 * registers across the nonzeros of a row block (seed 003, Algorithm 2: Y[row, :] += value *
 * X[col, :]; one broadcast weight and one FMA per vector and nonzero, one load per vector
 * shared by the rows of a block). Bias is the initial value; clamp before the only store. */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

/* The activation is min(hi, max(lo, acc)), bounds first: x86 max / min return the second
 * operand when one is NaN, so a NaN sum stays NaN (as in torch). */
MP_TARGET_AVX512 MP_INLINE void store16(float* out, const mp_pixvec* pv, __m512 y)
{
    if (pv->kind == MP_VEC_FULL)
        _mm512_storeu_ps(out + pv->out, y);
    else if (pv->kind == MP_VEC_PREFIX)
        _mm512_mask_storeu_ps(out + pv->out, (__mmask16)pv->mask, y);
    else /* compress in a register: vcompressps to memory is slow */
        _mm512_mask_storeu_ps(out + pv->out,
                              (__mmask16)((1u << __builtin_popcount(pv->mask)) - 1u),
                              _mm512_maskz_compress_ps((__mmask16)pv->mask, y));
}

/* Row r of a block starts from its bias (first channel chunk) or its partial sums. */
MP_TARGET_AVX512 MP_INLINE void start_row(const mp_spconv_args* a, const mp_rowblk* rb,
                                          int r, int nv, __m512* acc)
{
    if (rb->flags & MP_BLK_FIRST) {
        const __m512 b = _mm512_set1_ps(a->bias[rb->row + r]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++) acc[v] = b;
        return;
    }
    const float* p = a->partial + (size_t)(rb->row + r) * a->pstride;
#pragma GCC unroll 16
    for (int v = 0; v < nv; v++) acc[v] = _mm512_loadu_ps(p + a->vec[v].in);
}

/* Row r ends with the activation in the output (last chunk) or in its partial sums. */
MP_TARGET_AVX512 MP_INLINE void end_row(const mp_spconv_args* a, const mp_rowblk* rb,
                                        int r, int nv, const __m512* acc)
{
    if (rb->flags & MP_BLK_LAST) {
        const __m512 lo = _mm512_set1_ps(a->act_min), hi = _mm512_set1_ps(a->act_max);
        float* out = a->output + (size_t)(rb->row + r) * a->plane;
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++) store16(out, &a->vec[v], _mm512_min_ps(hi, _mm512_max_ps(lo, acc[v])));
        return;
    }
    float* p = a->partial + (size_t)(rb->row + r) * a->pstride;
#pragma GCC unroll 16
    for (int v = 0; v < nv; v++) _mm512_storeu_ps(p + a->vec[v].in, acc[v]);
}

MP_TARGET_AVX512 MP_INLINE void block4(const mp_spconv_args* a, const mp_rowblk* rb,
                                      const float* const* base, const int nv)
{
    __m512 acc[4][MP_MAX_NV];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) start_row(a, rb, r, nv, acc[r]);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const int32_t o = off[k];
        const __m512 w0 = _mm512_set1_ps(val[4 * k]), w1 = _mm512_set1_ps(val[4 * k + 1]);
        const __m512 w2 = _mm512_set1_ps(val[4 * k + 2]), w3 = _mm512_set1_ps(val[4 * k + 3]);
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) {
            const __m512 x = _mm512_loadu_ps(base[v] + o);
            acc[0][v] = _mm512_fmadd_ps(w0, x, acc[0][v]);
            acc[1][v] = _mm512_fmadd_ps(w1, x, acc[1][v]);
            acc[2][v] = _mm512_fmadd_ps(w2, x, acc[2][v]);
            acc[3][v] = _mm512_fmadd_ps(w3, x, acc[3][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) end_row(a, rb, r, nv, acc[r]);
}

MP_TARGET_AVX512 MP_INLINE void block1(const mp_spconv_args* a, const mp_rowblk* rb,
                                      const float* const* base, const int nv)
{
    __m512 acc[MP_MAX_NV];
    start_row(a, rb, 0, nv, acc);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const int32_t o = off[k];
        const __m512 w = _mm512_set1_ps(val[k]);
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            acc[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(base[v] + o), acc[v]);
    }
    end_row(a, rb, 0, nv, acc);
}

MP_TARGET_AVX512 MP_INLINE void run(const mp_spconv_args* a, const int nv)
{
    const float* base[MP_MAX_NV];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) base[v] = a->input + a->vec[v].in;
    for (size_t b = a->b0; b < a->b1; b++) {
        const mp_rowblk* rb = &a->blocks[b];
        if (rb->mr == 4)
            block4(a, rb, base, nv < 6 ? nv : 6); /* conv.c: nv <= 6 with 4-row blocks */
        else
            block1(a, rb, base, nv);
    }
}

/* Contiguous vectors: one base pointer, vector v at displacement 64 * v bytes. */
MP_TARGET_AVX512 MP_INLINE void block4c(const mp_spconv_args* a, const mp_rowblk* rb,
                                       const float* base, const int nv)
{
    __m512 acc[4][6];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) start_row(a, rb, r, nv, acc[r]);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const float* p = base + off[k];
        const __m512 w0 = _mm512_set1_ps(val[4 * k]), w1 = _mm512_set1_ps(val[4 * k + 1]);
        const __m512 w2 = _mm512_set1_ps(val[4 * k + 2]), w3 = _mm512_set1_ps(val[4 * k + 3]);
#pragma GCC unroll 6
        for (int v = 0; v < nv; v++) {
            const __m512 x = _mm512_loadu_ps(p + 16 * v);
            acc[0][v] = _mm512_fmadd_ps(w0, x, acc[0][v]);
            acc[1][v] = _mm512_fmadd_ps(w1, x, acc[1][v]);
            acc[2][v] = _mm512_fmadd_ps(w2, x, acc[2][v]);
            acc[3][v] = _mm512_fmadd_ps(w3, x, acc[3][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) end_row(a, rb, r, nv, acc[r]);
}

MP_TARGET_AVX512 MP_INLINE void block1c(const mp_spconv_args* a, const mp_rowblk* rb,
                                       const float* base, const int nv)
{
    __m512 acc[16];
    start_row(a, rb, 0, nv, acc);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const float* p = base + off[k];
        const __m512 w = _mm512_set1_ps(val[k]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * v), acc[v]);
    }
    end_row(a, rb, 0, nv, acc);
}

MP_TARGET_AVX512 MP_INLINE void run_c(const mp_spconv_args* a, const int nv)
{
    const float* base = a->input + a->vec[0].in;
    for (size_t b = a->b0; b < a->b1; b++) {
        const mp_rowblk* rb = &a->blocks[b];
        if (rb->mr == 4)
            block4c(a, rb, base, nv < 6 ? nv : 6); /* conv.c: nv <= 6 with 4-row blocks */
        else
            block1c(a, rb, base, nv);
    }
}

/* Shift classes (kernels.h, mp_spconv_args.cseg): class 0 sums straight into the output
 * vectors, a class s > 0 into nv + 1 spare vectors z that are then shifted by s lanes
 * (vpermt2ps of z[v], z[v + 1]) and added. Every load starts on a 64-byte boundary. */
MP_TARGET_AVX512 MP_INLINE void block1s(const mp_spconv_args* a, size_t b, const float* base,
                                       const int nv)
{
    const mp_rowblk* rb = &a->blocks[b];
    __m512 acc[14], z[15];
    start_row(a, rb, 0, nv, acc);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int32_t i = a->cbeg[b]; i < a->cbeg[b + 1]; i++) {
        const int32_t s = a->cseg[2 * i], n = a->cseg[2 * i + 1];
        if (s == 0) {
            for (int32_t k = 0; k < n; k++) {
                const float* p = base + off[k];
                const __m512 w = _mm512_set1_ps(val[k]);
#pragma GCC unroll 14
                for (int v = 0; v < nv; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * v), acc[v]);
            }
        } else {
#pragma GCC unroll 15
            for (int v = 0; v <= nv; v++) z[v] = _mm512_setzero_ps();
            for (int32_t k = 0; k < n; k++) {
                const float* p = base + off[k];
                const __m512 w = _mm512_set1_ps(val[k]);
#pragma GCC unroll 15
                for (int v = 0; v <= nv; v++) z[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * v), z[v]);
            }
            const __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32(s));
#pragma GCC unroll 14
            for (int v = 0; v < nv; v++)
                acc[v] = _mm512_add_ps(acc[v], _mm512_permutex2var_ps(z[v], idx, z[v + 1]));
        }
        off += n;
        val += n;
    }
    end_row(a, rb, 0, nv, acc);
}

MP_TARGET_AVX512 MP_INLINE void run_s(const mp_spconv_args* a, const int nv)
{
    const float* base = a->input + a->vec[0].in;
    for (size_t b = a->b0; b < a->b1; b++) block1s(a, b, base, nv);
}

MP_TARGET_AVX512 static void shift_classes(const mp_spconv_args* a)
{
    switch (a->nv) {
    case 1: run_s(a, 1); break;
    case 2: run_s(a, 2); break;
    case 3: run_s(a, 3); break;
    case 4: run_s(a, 4); break;
    case 5: run_s(a, 5); break;
    case 6: run_s(a, 6); break;
    case 7: run_s(a, 7); break;
    case 8: run_s(a, 8); break;
    case 9: run_s(a, 9); break;
    case 10: run_s(a, 10); break;
    case 11: run_s(a, 11); break;
    case 12: run_s(a, 12); break;
    case 13: run_s(a, 13); break;
    default: run_s(a, 14); break;
    }
}

MP_TARGET_AVX512 static void contiguous(const mp_spconv_args* a)
{
    switch (a->nv) {
    case 1: run_c(a, 1); break;
    case 2: run_c(a, 2); break;
    case 3: run_c(a, 3); break;
    case 4: run_c(a, 4); break;
    case 5: run_c(a, 5); break;
    case 6: run_c(a, 6); break;
    case 7: run_c(a, 7); break;
    case 8: run_c(a, 8); break;
    case 9: run_c(a, 9); break;
    case 10: run_c(a, 10); break;
    case 11: run_c(a, 11); break;
    case 12: run_c(a, 12); break;
    case 13: run_c(a, 13); break;
    case 14: run_c(a, 14); break;
    case 15: run_c(a, 15); break;
    default: run_c(a, 16); break;
    }
}

MP_TARGET_AVX512 void mp_f32_spconv_16x4__avx512f(const mp_spconv_args* a)
{
    if (a->cseg != NULL) {
        shift_classes(a);
        return;
    }
    if (a->contig) {
        contiguous(a);
        return;
    }
    switch (a->nv) {
    case 1: run(a, 1); break;
    case 2: run(a, 2); break;
    case 3: run(a, 3); break;
    case 4: run(a, 4); break;
    case 5: run(a, 5); break;
    case 6: run(a, 6); break;
    case 7: run(a, 7); break;
    default: run(a, 8); break;
    }
}
#else
typedef int mp_f32_spconv_16x4__avx512f_absent; /* not this arch: an empty unit is not ISO C */
#endif
