/* Sparse linear on the transposed input, portable C (seed 003, Algorithm 2 literally:
 * Y^T[row, :] += value * X^T[col, :], contiguous over the batch): rows [r0, r1), the batch
 * in chunks of 64 accumulators; y[n * ldy + row]. */
#include "kernels.h"

#define CHUNK 64

void mp_f32_spmm_t__scalar(const mp_linear_args* a)
{
    float acc[CHUNK];
    for (size_t r = a->r0; r < a->r1; r++) {
        for (size_t n0 = 0; n0 < a->batch; n0 += CHUNK) {
            const size_t nb = a->batch - n0 < CHUNK ? a->batch - n0 : CHUNK;
            for (size_t l = 0; l < nb; l++) acc[l] = a->bias[r];
            for (uint32_t k = a->ptr[r]; k < a->ptr[r + 1]; k++) {
                const float v = a->val[k];
                const float* xt = a->x + (size_t)a->idx[k] * a->ldx + n0;
                for (size_t l = 0; l < nb; l++) acc[l] += v * xt[l];
            }
            for (size_t l = 0; l < nb; l++) {
                const float y = acc[l] < a->act_min ? a->act_min : acc[l];
                a->y[(n0 + l) * a->ldy + r] = y > a->act_max ? a->act_max : y;
            }
        }
    }
}
