/* Input transposition of the linear operator for large batches, AVX-512F: 16 inputs of
 * the batch at a time, one gather per column (indices n * cols), zero-padded from batch to
 * ldy (kind MP_LIN_TRANSPOSE: x = input, ldx = cols, y = x^T (cols, ldy), columns
 * [r0, r1)). */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

MP_TARGET_AVX512 void mp_f32_transpose_16__avx512f(const mp_linear_args* a)
{
    const int32_t ld = (int32_t)a->ldx;
    const __m512i step = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(ld));
    for (size_t n0 = 0; n0 < a->ldy; n0 += 16) {
        const size_t left = a->batch > n0 ? a->batch - n0 : 0;
        const __mmask16 m = (__mmask16)(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
        const float* src = a->x + (left ? n0 * a->ldx : 0);
        for (size_t c = a->r0; c < a->r1; c++)
            _mm512_storeu_ps(a->y + c * a->ldy + n0,
                             _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, step, src + c, 4));
    }
}
#else
typedef int mp_f32_transpose_16__avx512f_absent; /* not this arch: an empty unit is not ISO C */
#endif
