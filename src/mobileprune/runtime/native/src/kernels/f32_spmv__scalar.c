/* Sparse linear, portable C: rows [r0, r1) of y = act(W x + b), W in CSR, for each input
 * of a small batch (seed 003, Algorithm 2 with one column of X per input). */
#include "kernels.h"

void mp_f32_spmv__scalar(const mp_linear_args* a)
{
    for (size_t r = a->r0; r < a->r1; r++) {
        const uint32_t k0 = a->ptr[r], k1 = a->ptr[r + 1];
        for (size_t n = 0; n < a->batch; n++) {
            const float* x = a->x + n * a->ldx;
            float s0 = a->bias[r], s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            uint32_t k = k0;
            for (; k + 4 <= k1; k += 4) {
                s0 += a->val[k] * x[a->idx[k]];
                s1 += a->val[k + 1] * x[a->idx[k + 1]];
                s2 += a->val[k + 2] * x[a->idx[k + 2]];
                s3 += a->val[k + 3] * x[a->idx[k + 3]];
            }
            for (; k < k1; k++) s0 += a->val[k] * x[a->idx[k]];
            float y = (s0 + s1) + (s2 + s3);
            y = y < a->act_min ? a->act_min : y;
            a->y[n * a->ldy + r] = y > a->act_max ? a->act_max : y;
        }
    }
}
