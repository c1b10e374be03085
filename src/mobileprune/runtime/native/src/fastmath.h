/* Branch-free float32 exp / tanh / sigmoid that gcc vectorises in a loop, shared by the
 * elementwise ops (ops_eltwise.c), softmax and the recurrent layers (ops_rnn.c): one
 * implementation, so every op rounds the same way. */
#ifndef MP_FASTMATH_H
#define MP_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
/* (a & m) | (b & ~m): a select on bits that gcc vectorises (a select on a float compare
 * stays a branch under the default -ftrapping-math). */
static inline uint32_t select_bits(uint32_t m, uint32_t a, uint32_t b) { return (a & m) | (b & ~m); }

/* e^x for x <= 0 (the uses here: e^-|x| and e^(x - max)), branch-free so that loops
 * vectorise: x = n ln2 + f with n = round(x / ln2) (rounding by the 1.5 * 2^23 trick,
 * Cody-Waite split of ln2), e^f by its Taylor polynomial of degree 7 on |f| <= ln2 / 2
 * (truncation under 1e-8), times 2^n written into the exponent bits. At most 1.8 ulp from
 * the exact value over [-87.3, 0] (checked against double exp on every 7th float); 0 below
 * -87.3 (e^x under FLT_MIN); NaN stays NaN. */
static inline float exp_neg(float x) {
    uint32_t xb = f2u(x), ab = xb & 0x7FFFFFFFu;
    uint32_t big = 0u - (uint32_t)(ab > 0x42AE999Au); /* |x| > 87.3, or NaN */
    uint32_t nan = 0u - (uint32_t)(ab > 0x7F800000u);
    float xc = u2f(select_bits(big, 0xC2AE999Au, xb)); /* clamped to -87.3 */
    float r = xc * 1.44269504f + 12582912.0f;
    float n = r - 12582912.0f;
    float f = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * f + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    float y = p * u2f((f2u(r) << 23) + 0x3F800000u); /* low bits of r hold n: 2^n */
    return u2f(select_bits(big, 0x7FC00000u & nan, f2u(y)));
}

/* tanh, branch-free: |x| >= 0.4: (1 - e) / (1 + e) with e = e^-2|x| (no cancellation:
 * 1 - e > 0.55); |x| < 0.4: its Taylor series to x^13 (truncation under 1e-8 relative);
 * the sign of x put back. At most 2.7 ulp from the exact value (every 3rd float checked
 * against double tanh); tanh(-0) = -0, NaN stays NaN. */
static inline float tanh_fast(float x) {
    uint32_t xb = f2u(x), ab = xb & 0x7FFFFFFFu;
    float a = u2f(ab);
    float e = exp_neg(-2.0f * a);
    float large = (1.0f - e) / (1.0f + e);
    float z = a * a;
    float p = 21844.0f / 6081075.0f;
    p = p * z - 1382.0f / 155925.0f;
    p = p * z + 62.0f / 2835.0f;
    p = p * z - 17.0f / 315.0f;
    p = p * z + 2.0f / 15.0f;
    p = p * z - 1.0f / 3.0f;
    float small = a + a * (z * p);
    uint32_t m = 0u - (uint32_t)(ab < 0x3ECCCCCDu); /* |x| < 0.4 */
    return u2f(select_bits(m, f2u(small), f2u(large)) | (xb & 0x80000000u));
}

/* 1 / (1 + e^-x) without overflow, e = e^-|x|: x >= 0 gives 1 / (1 + e), x < 0 e / (1 + e)
 * (the Python runtime's formula; the sign bit picks the numerator, -0 included: e = 1). */
static inline float sigmoidf(float v) {
    float e = exp_neg(-fabsf(v));
    float num = u2f(select_bits(0u - (f2u(v) >> 31), f2u(e), 0x3F800000u));
    return num / (1.0f + e);
}

#endif /* MP_FASTMATH_H */
