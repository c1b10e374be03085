/* Direct sparse convolution, arm64 NEON: 4 output pixels per q register, up to 8 vectors
 * per pixel block with 1-row blocks, 6 with 4-row blocks (24 of the 32 registers), held
 * in registers across the nonzeros of a row block (seed 003, Algorithm 2: Y[row, :] +=
 * value * X[col, :]). Unaligned 16-byte loads are cheap on arm64: plain padded rows. */
#include "kernels.h"

#if MP_ARCH_ARM64
#include <arm_neon.h>

MP_INLINE void store4(float* out, const mp_pixvec* pv, float32x4_t y)
{
    float* o = out + pv->out;
    if (pv->kind == MP_VEC_FULL) {
        vst1q_f32(o, y);
        return;
    }
    float t[4];
    vst1q_f32(t, y);
    int j = 0;
    for (int l = 0; l < 4; l++)
        if ((pv->mask >> l) & 1u) o[j++] = t[l];
}

/* Row r of a block starts from its bias (first channel chunk) or its partial sums. */
MP_INLINE void start_row(const mp_spconv_args* a, const mp_rowblk* rb,
                         int r, int nv, float32x4_t* acc)
{
    if (rb->flags & MP_BLK_FIRST) {
        const float32x4_t b = vdupq_n_f32(a->bias[rb->row + r]);
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) acc[v] = b;
        return;
    }
    const float* p = a->partial + (size_t)(rb->row + r) * a->pstride;
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) acc[v] = vld1q_f32(p + a->vec[v].in);
}

/* Row r ends with the activation in the output (last chunk) or in its partial sums. */
MP_INLINE void end_row(const mp_spconv_args* a, const mp_rowblk* rb,
                       int r, int nv, const float32x4_t* acc)
{
    if (rb->flags & MP_BLK_LAST) {
        const float32x4_t lo = vdupq_n_f32(a->act_min), hi = vdupq_n_f32(a->act_max);
        float* out = a->output + (size_t)(rb->row + r) * a->plane;
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) store4(out, &a->vec[v], vminq_f32(vmaxq_f32(acc[v], lo), hi));
        return;
    }
    float* p = a->partial + (size_t)(rb->row + r) * a->pstride;
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) vst1q_f32(p + a->vec[v].in, acc[v]);
}

MP_INLINE void block4(const mp_spconv_args* a, const mp_rowblk* rb, const float* const* base,
                      const int nv)
{
    float32x4_t acc[4][6];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) start_row(a, rb, r, nv, acc[r]);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const int32_t o = off[k];
        const float32x4_t w = vld1q_f32(val + 4 * k);
#pragma GCC unroll 6
        for (int v = 0; v < nv; v++) {
            const float32x4_t x = vld1q_f32(base[v] + o);
            acc[0][v] = vfmaq_laneq_f32(acc[0][v], x, w, 0);
            acc[1][v] = vfmaq_laneq_f32(acc[1][v], x, w, 1);
            acc[2][v] = vfmaq_laneq_f32(acc[2][v], x, w, 2);
            acc[3][v] = vfmaq_laneq_f32(acc[3][v], x, w, 3);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) end_row(a, rb, r, nv, acc[r]);
}

MP_INLINE void block1(const mp_spconv_args* a, const mp_rowblk* rb, const float* const* base,
                      const int nv)
{
    float32x4_t acc[MP_MAX_NV];
    start_row(a, rb, 0, nv, acc);
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const int32_t o = off[k];
        const float w = val[k];
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) acc[v] = vfmaq_n_f32(acc[v], vld1q_f32(base[v] + o), w);
    }
    end_row(a, rb, 0, nv, acc);
}

MP_INLINE void run(const mp_spconv_args* a, const int nv)
{
    const float* base[MP_MAX_NV];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) base[v] = a->input + a->vec[v].in;
    for (size_t b = a->b0; b < a->b1; b++) {
        const mp_rowblk* rb = &a->blocks[b];
        if (rb->mr == 4)
            block4(a, rb, base, nv < 6 ? nv : 6); /* conv.c: nv <= 6 with 4-row blocks */
        else
            block1(a, rb, base, nv);
    }
}

void mp_f32_spconv_4x4__neon(const mp_spconv_args* a)
{
    switch (a->nv) {
    case 1: run(a, 1); break;
    case 2: run(a, 2); break;
    case 3: run(a, 3); break;
    case 4: run(a, 4); break;
    case 5: run(a, 5); break;
    case 6: run(a, 6); break;
    case 7: run(a, 7); break;
    default: run(a, 8); break;
    }
}
#else
typedef int mp_f32_spconv_4x4__neon_absent; /* not this arch: an empty unit is not ISO C */
#endif
