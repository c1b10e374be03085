/* Sparse, dense and block-sparse linear on the transposed input, AVX2 + FMA (seed 003,
 * Algorithm 2 literally: Y^T[row, :] += value * X^T[col, :]): per row, up to 4 vectors of 8
 * inputs of the batch in registers (2 partial sums each: independent FMA chains even at
 * batch 8), one broadcast value and one FMA per vector and nonzero; x^T is zero-padded to
 * ldx (a multiple of 16); y[n * ldy + row] for the real inputs only. */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

MP_TARGET_AVX2 MP_INLINE void put(const mp_linear_args* a, size_t r, size_t n0, __m256 acc)
{
    float t[8];
    /* bound first: x86 max / min return the second operand when one is NaN */
    const __m256 lo = _mm256_set1_ps(a->act_min), hi = _mm256_set1_ps(a->act_max);
    _mm256_storeu_ps(t, _mm256_min_ps(hi, _mm256_max_ps(lo, acc)));
    const size_t nb = a->batch - n0 < 8 ? a->batch - n0 : 8;
    for (size_t l = 0; l < nb; l++) a->y[(n0 + l) * a->ldy + r] = t[l];
}

/* One row, batch inputs [n0, n0 + 8 nv). */
MP_TARGET_AVX2 MP_INLINE void chunk(const mp_linear_args* a, size_t r, size_t n0, const int nv,
                                   const int dense)
{
    __m256 acc[2][4];
#pragma GCC unroll 4
    for (int q = 0; q < nv; q++) {
        acc[0][q] = _mm256_set1_ps(a->bias[r]);
        acc[1][q] = _mm256_setzero_ps();
    }
    const size_t k0 = dense ? 0 : a->ptr[r], k1 = dense ? a->cols : a->ptr[r + 1];
    const float* w = dense ? a->val + r * a->cols : a->val;
    size_t k = k0;
    for (; k + 2 <= k1; k += 2)
#pragma GCC unroll 2
        for (int p = 0; p < 2; p++) {
            const __m256 v = _mm256_set1_ps(w[k + (size_t)p]);
            const size_t c = dense ? k + (size_t)p : (size_t)a->idx[k + (size_t)p];
            const float* xt = a->x + c * a->ldx + n0;
#pragma GCC unroll 4
            for (int q = 0; q < nv; q++)
                acc[p][q] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xt + 8 * q), acc[p][q]);
        }
    if (k < k1) {
        const __m256 v = _mm256_set1_ps(w[k]);
        const float* xt = a->x + (dense ? k : (size_t)a->idx[k]) * a->ldx + n0;
#pragma GCC unroll 4
        for (int q = 0; q < nv; q++) acc[0][q] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xt + 8 * q), acc[0][q]);
    }
#pragma GCC unroll 4
    for (int q = 0; q < nv; q++) put(a, r, n0 + 8 * (size_t)q, _mm256_add_ps(acc[0][q], acc[1][q]));
}

MP_TARGET_AVX2 MP_INLINE void rows(const mp_linear_args* a, const int dense)
{
    for (size_t r = a->r0; r < a->r1; r++)
        for (size_t n0 = 0; n0 < a->batch; n0 += 32) {
            const size_t left = (a->batch - n0 + 7) / 8;
            if (left >= 4) chunk(a, r, n0, 4, dense);
            else if (left == 3) chunk(a, r, n0, 3, dense);
            else if (left == 2) chunk(a, r, n0, 2, dense);
            else chunk(a, r, n0, 1, dense);
        }
}

MP_TARGET_AVX2 void mp_f32_spmm_t_8x4__avx2(const mp_linear_args* a) { rows(a, 0); }
MP_TARGET_AVX2 void mp_f32_gemm_t_8x4__avx2(const mp_linear_args* a) { rows(a, 1); }

/* Block sparse (BSR, 4x1 blocks, layout in f32_bsrmv_4__scalar.c): per block up to 3
 * vectors of 8 inputs of the batch are loaded once and feed the block's 4 rows (12
 * accumulators: one load per 4 FMAs, as the conv's 4-row blocks). The bias is padded to a
 * multiple of 4 rows (linear.c). Rows r .. r + 3, batch inputs [n0, n0 + 8 nv). */
MP_TARGET_AVX2 MP_INLINE void chunk4(const mp_linear_args* a, size_t r, size_t n0, const int nv)
{
    __m256 acc[4][3];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const __m256 b = _mm256_set1_ps(a->bias[r + (size_t)i]);
#pragma GCC unroll 3
        for (int q = 0; q < nv; q++) acc[i][q] = b;
    }
    const size_t g = r / 4;
    for (uint32_t k = a->ptr[g]; k < a->ptr[g + 1]; k++) {
        const float* xt = a->x + (size_t)a->idx[k] * a->ldx + n0;
        const float* v = a->val + 4 * (size_t)k;
        __m256 x[3];
#pragma GCC unroll 3
        for (int q = 0; q < nv; q++) x[q] = _mm256_loadu_ps(xt + 8 * q);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const __m256 w = _mm256_broadcast_ss(v + i);
#pragma GCC unroll 3
            for (int q = 0; q < nv; q++) acc[i][q] = _mm256_fmadd_ps(w, x[q], acc[i][q]);
        }
    }
    const size_t nr = a->rows - r < 4 ? a->rows - r : 4;
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        if ((size_t)i < nr)
#pragma GCC unroll 3
            for (int q = 0; q < nv; q++) put(a, r + (size_t)i, n0 + 8 * (size_t)q, acc[i][q]);
}

MP_TARGET_AVX2 void mp_f32_bsrmm_t_8x4__avx2(const mp_linear_args* a)
{
    for (size_t r = a->r0; r < a->r1; r += 4)
        for (size_t n0 = 0; n0 < a->batch; n0 += 24) {
            const size_t left = (a->batch - n0 + 7) / 8;
            if (left >= 3) chunk4(a, r, n0, 3);
            else if (left == 2) chunk4(a, r, n0, 2);
            else chunk4(a, r, n0, 1);
        }
}
#else
typedef int mp_f32_spmm_t_8x4__avx2_absent; /* not this arch: an empty unit is not ISO C */
#endif
