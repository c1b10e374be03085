/* Sparse linear, AVX-512F: rows [r0, r1) of y = act(W x + b), W in CSR; per row 16
 * nonzeros at a time: their values, their column indices and a gather of x, one FMA
 * (seed 003, Algorithm 2 with one column of X per input; batch 1 is bound by memory). */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

MP_TARGET_AVX512 void mp_f32_spmv_16__avx512f(const mp_linear_args* a)
{
    for (size_t r = a->r0; r < a->r1; r++) {
        const uint32_t k0 = a->ptr[r], k1 = a->ptr[r + 1];
        for (size_t n = 0; n < a->batch; n++) {
            const float* x = a->x + n * a->ldx;
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            uint32_t k = k0;
            for (; k + 32 <= k1; k += 32) {
                const __m512i i0 = _mm512_loadu_si512((const void*)(a->idx + k));
                const __m512i i1 = _mm512_loadu_si512((const void*)(a->idx + k + 16));
                acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a->val + k), _mm512_i32gather_ps(i0, x, 4), acc0);
                acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a->val + k + 16), _mm512_i32gather_ps(i1, x, 4), acc1);
            }
            for (; k < k1; k += 16) {
                const uint32_t left = k1 - k;
                const __mmask16 m = (__mmask16)(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
                const __m512i i0 = _mm512_maskz_loadu_epi32(m, a->idx + k);
                const __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, i0, x, 4);
                acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a->val + k), xv, acc0);
            }
            float y = a->bias[r] + _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
            y = y < a->act_min ? a->act_min : y;
            a->y[n * a->ldy + r] = y > a->act_max ? a->act_max : y;
        }
    }
}
#else
typedef int mp_f32_spmv_16__avx512f_absent; /* not this arch: an empty unit is not ISO C */
#endif
