/* Sparse linear, AVX2 + FMA: rows [r0, r1) of y = act(W x + b), W in CSR; per row 8
 * nonzeros at a time: their values, their column indices and a gather of x, one FMA, two
 * independent sums (seed 003, Algorithm 2 with one column of X per input; batch 1 is bound
 * by memory). The tail of a row is a masked load and a masked gather. */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

MP_TARGET_AVX2 MP_INLINE float hsum8(__m256 v)
{
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

MP_TARGET_AVX2 static float row_dot(const mp_linear_args* a, uint32_t k0, uint32_t k1,
                                    const float* x)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    uint32_t k = k0;
    for (; k + 16 <= k1; k += 16) {
        const __m256i i0 = _mm256_loadu_si256((const __m256i*)(const void*)(a->idx + k));
        const __m256i i1 = _mm256_loadu_si256((const __m256i*)(const void*)(a->idx + k + 8));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a->val + k), _mm256_i32gather_ps(x, i0, 4), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a->val + k + 8), _mm256_i32gather_ps(x, i1, 4), acc1);
    }
    for (; k < k1; k += 8) {
        const int left = (int)(k1 - k);
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(left),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256i i0 = _mm256_maskload_epi32((const int*)(const void*)(a->idx + k), m);
        const __m256 xv = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, i0,
                                                   _mm256_castsi256_ps(m), 4);
        acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(a->val + k, m), xv, acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

MP_TARGET_AVX2 void mp_f32_spmv_8__avx2(const mp_linear_args* a)
{
    for (size_t r = a->r0; r < a->r1; r++)
        for (size_t n = 0; n < a->batch; n++) {
            float y = a->bias[r] + row_dot(a, a->ptr[r], a->ptr[r + 1], a->x + n * a->ldx);
            y = y < a->act_min ? a->act_min : y;
            a->y[n * a->ldy + r] = y > a->act_max ? a->act_max : y;
        }
}
#else
typedef int mp_f32_spmv_8__avx2_absent; /* not this arch: an empty unit is not ISO C */
#endif
