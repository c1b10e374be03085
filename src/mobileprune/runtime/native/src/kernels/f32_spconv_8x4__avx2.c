/* Direct sparse convolution, AVX2 + FMA: 8 output pixels per ymm vector, up to 12
 * contiguous vectors (one base register; 8 scattered ones) per pixel block with 1-row
 * blocks, 3 with 4-row blocks (12 accumulators + 3 inputs + 1 weight = the 16 registers),
 * held in registers across the nonzeros of a row block (seed
 * 003, Algorithm 2: Y[row, :] += value * X[col, :]). Bias first, clamp before the store. */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

/* The activation is min(hi, max(lo, acc)), bounds first: x86 max / min return the second
 * operand when one is NaN, so a NaN sum stays NaN (as in torch). */
MP_TARGET_AVX2 MP_INLINE void store8(float* out, const mp_pixvec* pv, __m256 y)
{
    float* o = out + pv->out;
    if (pv->kind == MP_VEC_FULL) {
        _mm256_storeu_ps(o, y);
    } else if (pv->kind == MP_VEC_PREFIX) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const int n = __builtin_popcount(pv->mask);
        _mm256_maskstore_ps(o, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane), y);
    } else {
        float t[8];
        _mm256_storeu_ps(t, y);
        int j = 0;
        for (int l = 0; l < 8; l++)
            if ((pv->mask >> l) & 1u) o[j++] = t[l];
    }
}

/* Row r of a block starts from its bias (first channel chunk) or its partial sums. */
MP_TARGET_AVX2 MP_INLINE void start_row(const mp_spconv_args* a, const mp_rowblk* rb,
                                        int r, int nv, __m256* acc)
{
    if (rb->flags & MP_BLK_FIRST) {
        const __m256 b = _mm256_set1_ps(a->bias[rb->row + r]);
#pragma GCC unroll 12
        for (int v = 0; v < nv; v++) acc[v] = b;
        return;
    }
    const float* p = a->partial + (size_t)(rb->row + r) * a->pstride;
#pragma GCC unroll 12
    for (int v = 0; v < nv; v++) acc[v] = _mm256_loadu_ps(p + a->vec[v].in);
}

/* Row r ends with the activation in the output (last chunk) or in its partial sums. */
MP_TARGET_AVX2 MP_INLINE void end_row(const mp_spconv_args* a, const mp_rowblk* rb,
                                      int r, int nv, const __m256* acc)
{
    if (rb->flags & MP_BLK_LAST) {
        const __m256 lo = _mm256_set1_ps(a->act_min), hi = _mm256_set1_ps(a->act_max);
        float* out = a->output + (size_t)(rb->row + r) * a->plane;
#pragma GCC unroll 12
        for (int v = 0; v < nv; v++) store8(out, &a->vec[v], _mm256_min_ps(hi, _mm256_max_ps(lo, acc[v])));
        return;
    }
    float* p = a->partial + (size_t)(rb->row + r) * a->pstride;
#pragma GCC unroll 12
    for (int v = 0; v < nv; v++) _mm256_storeu_ps(p + a->vec[v].in, acc[v]);
}

MP_TARGET_AVX2 MP_INLINE void block4(const mp_spconv_args* a, const mp_rowblk* rb,
                                    const float* const* base, const int nv)
{
    __m256 acc[4][3];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) start_row(a, rb, r, nv, acc[r]);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const int32_t o = off[k];
        __m256 x[3];
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++) x[v] = _mm256_loadu_ps(base[v] + o);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const __m256 w = _mm256_broadcast_ss(val + 4 * k + r);
#pragma GCC unroll 3
            for (int v = 0; v < nv; v++) acc[r][v] = _mm256_fmadd_ps(w, x[v], acc[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) end_row(a, rb, r, nv, acc[r]);
}

MP_TARGET_AVX2 MP_INLINE void block1(const mp_spconv_args* a, const mp_rowblk* rb,
                                    const float* const* base, const int nv)
{
    __m256 acc[MP_MAX_NV];
    start_row(a, rb, 0, nv, acc);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const int32_t o = off[k];
        const __m256 w = _mm256_broadcast_ss(val + k);
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(base[v] + o), acc[v]);
    }
    end_row(a, rb, 0, nv, acc);
}

MP_TARGET_AVX2 MP_INLINE void run(const mp_spconv_args* a, const int nv)
{
    const float* base[MP_MAX_NV];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) base[v] = a->input + a->vec[v].in;
    for (size_t b = a->b0; b < a->b1; b++) {
        const mp_rowblk* rb = &a->blocks[b];
        if (rb->mr == 4)
            block4(a, rb, base, nv < 3 ? nv : 3); /* conv.c: nv <= 3 with 4-row blocks */
        else
            block1(a, rb, base, nv);
    }
}

/* Contiguous vectors: one base pointer, vector v at displacement 32 * v bytes. */
MP_TARGET_AVX2 MP_INLINE void block1c(const mp_spconv_args* a, const mp_rowblk* rb,
                                     const float* base, const int nv)
{
    __m256 acc[12];
    start_row(a, rb, 0, nv, acc);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const float* p = base + off[k];
        const __m256 w = _mm256_broadcast_ss(val + k);
#pragma GCC unroll 12
        for (int v = 0; v < nv; v++) acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * v), acc[v]);
    }
    end_row(a, rb, 0, nv, acc);
}

MP_TARGET_AVX2 MP_INLINE void run_c(const mp_spconv_args* a, const int nv)
{
    const float* base[3];
#pragma GCC unroll 3
    for (int v = 0; v < 3; v++) base[v] = a->input + a->vec[0].in + 8 * v;
    for (size_t b = a->b0; b < a->b1; b++) {
        const mp_rowblk* rb = &a->blocks[b];
        if (rb->mr == 4)
            block4(a, rb, base, nv < 3 ? nv : 3); /* conv.c: nv <= 3 with 4-row blocks */
        else
            block1c(a, rb, a->input + a->vec[0].in, nv);
    }
}

MP_TARGET_AVX2 static void contiguous(const mp_spconv_args* a)
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
    default: run_c(a, 12); break;
    }
}

MP_TARGET_AVX2 void mp_f32_spconv_8x4__avx2(const mp_spconv_args* a)
{
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
typedef int mp_f32_spconv_8x4__avx2_absent; /* not this arch: an empty unit is not ISO C */
#endif
