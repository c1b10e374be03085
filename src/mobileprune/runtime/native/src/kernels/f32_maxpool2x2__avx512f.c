/* 2x2 max pooling, stride 2, AVX-512F: 16 outputs per step from two 32-float runs of each
 * input row, split into even and odd columns by one permute each; the comparisons are the
 * scalar kernel's (max of each row's pair, then of the two rows, a NaN winning), so the
 * results are the same bits. The last wo % 16 outputs of a row take one masked step (a
 * scalar tail branches on every comparison: ReLU outputs, full of ties, mispredict). */
#include "kernels.h"

#if MP_ARCH_X86_64
#include <immintrin.h>

/* a where a > b or a is NaN, else b */
MP_TARGET_AVX512 MP_INLINE __m512 vmax_nan(__m512 a, __m512 b)
{
    const __mmask16 m = _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) | _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(m, b, a);
}

/* max of the pairs (2i, 2i + 1) of the 32 floats at p (those of lanes kl / kh only) */
MP_TARGET_AVX512 MP_INLINE __m512 pairs(const float* p, __m512i even, __m512i odd, __mmask16 kl,
                                        __mmask16 kh)
{
    const __m512 lo = _mm512_maskz_loadu_ps(kl, p), hi = _mm512_maskz_loadu_ps(kh, p + 16);
    return vmax_nan(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
}

MP_TARGET_AVX512 void mp_f32_maxpool2x2__avx512f(const float* x, float* y, size_t rows, size_t w,
                                                 size_t wo)
{
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (size_t yo = 0; yo < rows; yo++) {
        const float* r0 = x + 2 * yo * w;
        const float* r1 = r0 + w;
        float* o = y + yo * wo;
        size_t xo = 0;
        for (; xo + 16 <= wo; xo += 16)
            _mm512_storeu_ps(o + xo, vmax_nan(pairs(r0 + 2 * xo, even, odd, 0xFFFF, 0xFFFF),
                                              pairs(r1 + 2 * xo, even, odd, 0xFFFF, 0xFFFF)));
        if (xo < wo) { /* n < 16 outputs from 2n inputs of each row */
            const unsigned n = (unsigned)(wo - xo);
            const __mmask16 kl = (__mmask16)(n >= 8 ? 0xFFFFu : (1u << (2 * n)) - 1u);
            const __mmask16 kh = (__mmask16)(n > 8 ? (1u << (2 * n - 16)) - 1u : 0u);
            _mm512_mask_storeu_ps(o + xo, (__mmask16)((1u << n) - 1u),
                                  vmax_nan(pairs(r0 + 2 * xo, even, odd, kl, kh),
                                           pairs(r1 + 2 * xo, even, odd, kl, kh)));
        }
    }
}
#else
typedef int mp_f32_maxpool2x2__avx512f_absent; /* not this arch: an empty unit is not ISO C */
#endif
