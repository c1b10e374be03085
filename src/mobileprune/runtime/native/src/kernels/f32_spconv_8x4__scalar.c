/* Direct sparse convolution, portable C: 8 output pixels per vector, row blocks of 1 or 4
 * rows (seed 003, Algorithm 2: Y[row, :] += value * X[col, :], one input offset per
 * nonzero). The reference path (MP_PLAN_PORTABLE) and the kernel of targets without SIMD. */
#include "kernels.h"

#define LANES 8

static void store_vec(float* out, const mp_pixvec* pv, const float* acc)
{
    float* o = out + pv->out;
    if (pv->kind == MP_VEC_FULL) {
        for (int l = 0; l < LANES; l++) o[l] = acc[l];
        return;
    }
    int j = 0;
    for (int l = 0; l < LANES; l++)
        if ((pv->mask >> l) & 1u) o[j++] = acc[l];
}

static void run_block(const mp_spconv_args* a, const mp_rowblk* rb)
{
    float acc[MP_MAX_MR][MP_MAX_NV][LANES];
    const int nv = (int)a->nv, mr = rb->mr;
    const float* bias = a->bias + rb->row;
    const int first = (rb->flags & MP_BLK_FIRST) != 0, last = (rb->flags & MP_BLK_LAST) != 0;
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) {
            if (first) {
                for (int l = 0; l < LANES; l++) acc[r][v][l] = bias[r];
                continue;
            }
            const float* p = a->partial + (size_t)(rb->row + r) * a->pstride + (size_t)a->vec[v].in;
            for (int l = 0; l < LANES; l++) acc[r][v][l] = p[l];
        }
    const int32_t* off = a->off + rb->nz;
    const float* val = a->val + rb->val;
    for (int32_t k = 0; k < rb->count; k++) {
        const float* x0 = a->input + off[k];
        for (int v = 0; v < nv; v++) {
            const float* x = x0 + a->vec[v].in;
            for (int r = 0; r < mr; r++) {
                const float w = val[(size_t)k * (size_t)mr + (size_t)r];
                for (int l = 0; l < LANES; l++) acc[r][v][l] += w * x[l];
            }
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) {
            float* t = acc[r][v];
            if (!last) { /* partial sums: whole vectors */
                float* p = a->partial + (size_t)(rb->row + r) * a->pstride + (size_t)a->vec[v].in;
                for (int l = 0; l < LANES; l++) p[l] = t[l];
                continue;
            }
            for (int l = 0; l < LANES; l++) {
                float y = t[l] < a->act_min ? a->act_min : t[l];
                t[l] = y > a->act_max ? a->act_max : y;
            }
            store_vec(a->output + (size_t)(rb->row + r) * a->plane, &a->vec[v], t);
        }
}

void mp_f32_spconv_8x4__scalar(const mp_spconv_args* a)
{
    for (size_t b = a->b0; b < a->b1; b++) run_block(a, &a->blocks[b]);
}
