/* Dense linear, AVX-512F: rows [r0, r1) of y = act(W x + b), W row-major; 4 rows at a time
 * share each 16-float load of x (one FMA per row), columns past a multiple of 16 masked. */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

MP_TARGET_AVX512 MP_INLINE float finish(const mp_linear_args* a, size_t r, __m512 acc)
{
    const float y = a->bias[r] + _mm512_reduce_add_ps(acc);
    const float lo = y < a->act_min ? a->act_min : y;
    return lo > a->act_max ? a->act_max : lo;
}

MP_TARGET_AVX512 static void rows4(const mp_linear_args* a, size_t r, const float* x, float* y)
{
    const size_t cols = a->cols;
    const float* w = a->val + r * cols;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    for (size_t c = 0; c < cols; c += 16) {
        const size_t left = cols - c;
        const __mmask16 m = (__mmask16)(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + c);
        for (int q = 0; q < 4; q++)
            acc[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + (size_t)q * cols + c), xv, acc[q]);
    }
    for (int q = 0; q < 4; q++) y[(size_t)q] = finish(a, r + (size_t)q, acc[q]);
}

MP_TARGET_AVX512 static void row1(const mp_linear_args* a, size_t r, const float* x, float* y)
{
    const size_t cols = a->cols;
    const float* w = a->val + r * cols;
    __m512 acc = _mm512_setzero_ps();
    for (size_t c = 0; c < cols; c += 16) {
        const size_t left = cols - c;
        const __mmask16 m = (__mmask16)(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + c), _mm512_maskz_loadu_ps(m, x + c), acc);
    }
    *y = finish(a, r, acc);
}

MP_TARGET_AVX512 void mp_f32_gemv_4x16__avx512f(const mp_linear_args* a)
{
    for (size_t n = 0; n < a->batch; n++) {
        const float* x = a->x + n * a->ldx;
        float* y = a->y + n * a->ldy;
        size_t r = a->r0;
        for (; r + 4 <= a->r1; r += 4) {
            float t[4];
            rows4(a, r, x, t);
            for (int q = 0; q < 4; q++) y[r + (size_t)q] = t[q];
        }
        for (; r < a->r1; r++) row1(a, r, x, y + r);
    }
}
#else
typedef int mp_f32_gemv_4x16__avx512f_absent; /* not this arch: an empty unit is not ISO C */
#endif
