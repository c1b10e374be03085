/* Dense linear, AVX2 + FMA: rows [r0, r1) of y = act(W x + b), W row-major; 4 rows at a
 * time share each 8-float load of x (one FMA per row), the columns past a multiple of 8
 * by masked loads. */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

MP_TARGET_AVX2 MP_INLINE float finish(const mp_linear_args* a, size_t r, __m256 acc)
{
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    const float y = a->bias[r] + _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
    const float lo = y < a->act_min ? a->act_min : y;
    return lo > a->act_max ? a->act_max : lo;
}

/* Rows [r, r + nr) (nr <= 4) for one input x. */
MP_TARGET_AVX2 MP_INLINE void rows(const mp_linear_args* a, size_t r, const int nr,
                                  const float* x, float* y)
{
    const size_t cols = a->cols;
    const float* w = a->val + r * cols;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    size_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        const __m256 xv = _mm256_loadu_ps(x + c);
#pragma GCC unroll 4
        for (int q = 0; q < nr; q++)
            acc[q] = _mm256_fmadd_ps(_mm256_loadu_ps(w + (size_t)q * cols + c), xv, acc[q]);
    }
    if (c < cols) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(cols - c)),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256 xv = _mm256_maskload_ps(x + c, m);
#pragma GCC unroll 4
        for (int q = 0; q < nr; q++)
            acc[q] = _mm256_fmadd_ps(_mm256_maskload_ps(w + (size_t)q * cols + c, m), xv, acc[q]);
    }
#pragma GCC unroll 4
    for (int q = 0; q < nr; q++) y[r + (size_t)q] = finish(a, r + (size_t)q, acc[q]);
}

MP_TARGET_AVX2 void mp_f32_gemv_4x8__avx2(const mp_linear_args* a)
{
    for (size_t n = 0; n < a->batch; n++) {
        const float* x = a->x + n * a->ldx;
        float* y = a->y + n * a->ldy;
        size_t r = a->r0;
        for (; r + 4 <= a->r1; r += 4) rows(a, r, 4, x, y);
        for (; r < a->r1; r++) rows(a, r, 1, x, y);
    }
}
#else
typedef int mp_f32_gemv_4x8__avx2_absent; /* not this arch: an empty unit is not ISO C */
#endif
