/* Raw fused multiply-add peak of one core: independent FMA chains on registers only
 * (no loads), for benchmarks/engines.py. Compiled at run time with the system compiler;
 * the widest vector unit the CPU has is chosen by the caller (mp_fma_peak(isa, iters)).
 * Returns multiply-adds per second (lanes x FMAs), or -1 when `isa` is not built here. */
#define _POSIX_C_SOURCE 199309L
#include <stddef.h>
#include <stdint.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define CHAINS 12
/* twelve named accumulators (an array would be kept in memory by the compiler) */
#define FMA12(F, a, b)                                                                   \
    do {                                                                                 \
        c0 = F(c0, a, b); c1 = F(c1, a, b); c2 = F(c2, a, b); c3 = F(c3, a, b);          \
        c4 = F(c4, a, b); c5 = F(c5, a, b); c6 = F(c6, a, b); c7 = F(c7, a, b);          \
        c8 = F(c8, a, b); c9 = F(c9, a, b); c10 = F(c10, a, b); c11 = F(c11, a, b);      \
    } while (0)
#define SUM12(R) (R(c0) + R(c1) + R(c2) + R(c3) + R(c4) + R(c5) + R(c6) + R(c7) + R(c8) + R(c9) + R(c10) + R(c11))

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static double peak_avx512(int64_t iters) {
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    __m512 c0 = b, c1 = b, c2 = b, c3 = b, c4 = b, c5 = b, c6 = b, c7 = b, c8 = b, c9 = b, c10 = b, c11 = b;
    double t0 = now();
    for (int64_t n = 0; n < iters; n++) FMA12(_mm512_fmadd_ps, a, b);
    double t = now() - t0;
    float sink = SUM12(_mm512_reduce_add_ps);
    return sink == 12345.f ? 0 : (double)iters * CHAINS * 16 / t;
}
__attribute__((target("avx2,fma"))) static double peak_avx2(int64_t iters) {
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    __m256 c0 = b, c1 = b, c2 = b, c3 = b, c4 = b, c5 = b, c6 = b, c7 = b, c8 = b, c9 = b, c10 = b, c11 = b;
    double t0 = now();
    for (int64_t n = 0; n < iters; n++) FMA12(_mm256_fmadd_ps, a, b);
    double t = now() - t0;
    float sink = SUM12(_mm256_cvtss_f32);
    return sink == 12345.f ? 0 : (double)iters * CHAINS * 8 / t;
}
#endif

#if defined(__aarch64__)
#include <arm_neon.h>
static double peak_neon(int64_t iters) {
    const float32x4_t a = vdupq_n_f32(0.999999f), b = vdupq_n_f32(1e-7f);
    float32x4_t c0 = b, c1 = b, c2 = b, c3 = b, c4 = b, c5 = b, c6 = b, c7 = b, c8 = b, c9 = b, c10 = b, c11 = b;
    double t0 = now();
#define NEON_FMA(c, x, y) vfmaq_f32(y, c, x)
    for (int64_t n = 0; n < iters; n++) FMA12(NEON_FMA, a, b);
    double t = now() - t0;
#define LANE0(c) vgetq_lane_f32(c, 0)
    float sink = SUM12(LANE0);
    return sink == 12345.f ? 0 : (double)iters * CHAINS * 4 / t;
}
#endif

/* isa: 512 (AVX-512), 256 (AVX2+FMA), 128 (NEON) */
double mp_fma_peak(int isa, int64_t iters) {
#if defined(__x86_64__)
    if (isa == 512) return peak_avx512(iters);
    if (isa == 256) return peak_avx2(iters);
#endif
#if defined(__aarch64__)
    if (isa == 128) return peak_neon(iters);
#endif
    (void)iters;
    return -1.0;
}
