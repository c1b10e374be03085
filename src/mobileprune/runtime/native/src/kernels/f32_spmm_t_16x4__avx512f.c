/* Sparse linear on the transposed input, AVX-512F (seed 003, Algorithm 2 literally:
 * Y^T[row, :] += value * X^T[col, :]): per row, up to 4 vectors of 16 inputs of the batch
 * in registers (4 partial sums each), one broadcast value and one FMA per vector and
 * nonzero; x^T is zero-padded
 * to ldx (a multiple of 16); y[n * ldy + row] for the real inputs only. */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

MP_TARGET_AVX512 MP_INLINE void put(const mp_linear_args* a, size_t r, size_t n0, __m512 acc)
{
    float t[16];
    /* bound first: x86 max / min return the second operand when one is NaN, so a NaN
     * sum stays NaN (as in torch) */
    const __m512 lo = _mm512_set1_ps(a->act_min), hi = _mm512_set1_ps(a->act_max);
    _mm512_storeu_ps(t, _mm512_min_ps(hi, _mm512_max_ps(lo, acc)));
    const size_t nb = a->batch - n0 < 16 ? a->batch - n0 : 16;
    for (size_t l = 0; l < nb; l++) a->y[(n0 + l) * a->ldy + r] = t[l];
}

/* One row, batch inputs [n0, n0 + 16 nv): 4 interleaved partial sums per vector, so the
 * FMA chains are independent even for a single vector (batch 16). */
MP_TARGET_AVX512 MP_INLINE void chunk(const mp_linear_args* a, size_t r, size_t n0, const int nv,
                                     const int dense)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++)
#pragma GCC unroll 4
        for (int q = 0; q < nv; q++) acc[p][q] = _mm512_set1_ps(p == 0 ? a->bias[r] : 0.0f);
    const size_t k0 = dense ? 0 : a->ptr[r], k1 = dense ? a->cols : a->ptr[r + 1];
    const float* w = dense ? a->val + r * a->cols : a->val;
    size_t k = k0;
    for (; k + 4 <= k1; k += 4)
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            const __m512 v = _mm512_set1_ps(w[k + (size_t)p]);
            const size_t c = dense ? k + (size_t)p : (size_t)a->idx[k + (size_t)p];
            const float* xt = a->x + c * a->ldx + n0;
#pragma GCC unroll 4
            for (int q = 0; q < nv; q++)
                acc[p][q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xt + 16 * q), acc[p][q]);
        }
    for (; k < k1; k++) {
        const __m512 v = _mm512_set1_ps(w[k]);
        const float* xt = a->x + (dense ? k : (size_t)a->idx[k]) * a->ldx + n0;
#pragma GCC unroll 4
        for (int q = 0; q < nv; q++) acc[0][q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xt + 16 * q), acc[0][q]);
    }
#pragma GCC unroll 4
    for (int q = 0; q < nv; q++)
        put(a, r, n0 + 16 * (size_t)q,
            _mm512_add_ps(_mm512_add_ps(acc[0][q], acc[1][q]), _mm512_add_ps(acc[2][q], acc[3][q])));
}

MP_TARGET_AVX512 MP_INLINE void rows(const mp_linear_args* a, const int dense)
{
    for (size_t r = a->r0; r < a->r1; r++)
        for (size_t n0 = 0; n0 < a->batch; n0 += 64) {
            const size_t left = (a->batch - n0 + 15) / 16;
            if (left >= 4) chunk(a, r, n0, 4, dense);
            else if (left == 3) chunk(a, r, n0, 3, dense);
            else if (left == 2) chunk(a, r, n0, 2, dense);
            else chunk(a, r, n0, 1, dense);
        }
}

MP_TARGET_AVX512 void mp_f32_spmm_t_16x4__avx512f(const mp_linear_args* a) { rows(a, 0); }
MP_TARGET_AVX512 void mp_f32_gemm_t_16x4__avx512f(const mp_linear_args* a) { rows(a, 1); }
#else
typedef int mp_f32_spmm_t_16x4__avx512f_absent; /* not this arch: an empty unit is not ISO C */
#endif
