/* Block-sparse linear, AVX2 + FMA: rows [r0, r1) of y = act(W x + b) for each input of a
 * small batch, W in BSR with 4x1 blocks (layout in f32_bsrmv_4__scalar.c): per block one
 * broadcast input, one 4-value load and one 4-lane FMA (seed 003, Algorithm 2 with one
 * column of X per input), four accumulators (blocks k mod 4) so that the FMA latency is
 * hidden. The bias is padded to a multiple of 4 rows (linear.c). */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

MP_TARGET_AVX2 void mp_f32_bsrmv_4__avx2(const mp_linear_args* a)
{
    const __m128 lo = _mm_set1_ps(a->act_min), hi = _mm_set1_ps(a->act_max);
    for (size_t r = a->r0; r < a->r1; r += 4) {
        const size_t g = r / 4, nr = a->rows - r < 4 ? a->rows - r : 4;
        const uint32_t k0 = a->ptr[g], k1 = a->ptr[g + 1];
        const uint32_t* idx = a->idx;
        const float* val = a->val;
        for (size_t n = 0; n < a->batch; n++) {
            const float* x = a->x + n * a->ldx;
            __m128 s0 = _mm_loadu_ps(a->bias + r), s1 = _mm_setzero_ps();
            __m128 s2 = _mm_setzero_ps(), s3 = _mm_setzero_ps();
            uint32_t k = k0;
            for (; k + 4 <= k1; k += 4) {
                s0 = _mm_fmadd_ps(_mm_loadu_ps(val + 4 * (size_t)k), _mm_broadcast_ss(x + idx[k]), s0);
                s1 = _mm_fmadd_ps(_mm_loadu_ps(val + 4 * (size_t)k + 4), _mm_broadcast_ss(x + idx[k + 1]), s1);
                s2 = _mm_fmadd_ps(_mm_loadu_ps(val + 4 * (size_t)k + 8), _mm_broadcast_ss(x + idx[k + 2]), s2);
                s3 = _mm_fmadd_ps(_mm_loadu_ps(val + 4 * (size_t)k + 12), _mm_broadcast_ss(x + idx[k + 3]), s3);
            }
            for (; k < k1; k++)
                s0 = _mm_fmadd_ps(_mm_loadu_ps(val + 4 * (size_t)k), _mm_broadcast_ss(x + idx[k]), s0);
            /* bound first: x86 max / min return the second operand when one is NaN */
            const __m128 y = _mm_min_ps(hi, _mm_max_ps(lo, _mm_add_ps(_mm_add_ps(s0, s1), _mm_add_ps(s2, s3))));
            float* out = a->y + n * a->ldy + r;
            if (nr == 4) {
                _mm_storeu_ps(out, y);
            } else {
                float t[4];
                _mm_storeu_ps(t, y);
                for (size_t i = 0; i < nr; i++) out[i] = t[i];
            }
        }
    }
}
#else
typedef int mp_f32_bsrmv_4__avx2_absent; /* not this arch: an empty unit is not ISO C */
#endif
