/* Sparse linear on the transposed input, portable C (seed 003, Algorithm 2 literally:
 * Y^T[row, :] += value * X^T[col, :], contiguous over the batch): rows [r0, r1), the batch
 * in chunks of 16 (x^T is zero-padded to ldx, a multiple of 16, so every chunk is full and
 * the fixed-length lane loop vectorises); y[n * ldy + row] for the real inputs only. */
#include "kernels.h"

#define CHUNK 16

void mp_f32_spmm_t__scalar(const mp_linear_args* a)
{
    for (size_t r = a->r0; r < a->r1; r++) {
        for (size_t n0 = 0; n0 < a->batch; n0 += CHUNK) {
            float acc[CHUNK];
            for (int l = 0; l < CHUNK; l++) acc[l] = a->bias[r];
            for (uint32_t k = a->ptr[r]; k < a->ptr[r + 1]; k++) {
                const float v = a->val[k];
                const float* xt = a->x + (size_t)a->idx[k] * a->ldx + n0;
                for (int l = 0; l < CHUNK; l++) acc[l] += v * xt[l];
            }
            const size_t nb = a->batch - n0 < CHUNK ? a->batch - n0 : CHUNK;
            for (size_t l = 0; l < nb; l++) {
                const float y = acc[l] < a->act_min ? a->act_min : acc[l];
                a->y[(n0 + l) * a->ldy + r] = y > a->act_max ? a->act_max : y;
            }
        }
    }
}
