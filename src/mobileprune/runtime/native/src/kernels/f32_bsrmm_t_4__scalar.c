/* Block-sparse linear on the transposed input, portable C (seed 003, Algorithm 2 on X^T:
 * Y^T[row, :] += value * X^T[col, :]), W in BSR with 4x1 blocks (see f32_bsrmv_4__scalar.c):
 * one row of x^T, loaded once, feeds the 4 rows of a block. Rows [r0, r1), the batch in
 * chunks of 16 (x^T zero-padded to ldx, a multiple of 16); y[n * ldy + row] for the real
 * inputs and rows only. */
#include "kernels.h"

#define CHUNK 16

void mp_f32_bsrmm_t_4__scalar(const mp_linear_args* a)
{
    for (size_t r = a->r0; r < a->r1; r += 4) {
        const size_t g = r / 4, nr = a->rows - r < 4 ? a->rows - r : 4;
        for (size_t n0 = 0; n0 < a->batch; n0 += CHUNK) {
            float acc[4][CHUNK];
            for (size_t i = 0; i < 4; i++)
                for (int l = 0; l < CHUNK; l++) acc[i][l] = i < nr ? a->bias[r + i] : 0.0f;
            for (uint32_t k = a->ptr[g]; k < a->ptr[g + 1]; k++) {
                const float* v = a->val + 4 * (size_t)k;
                const float* xt = a->x + (size_t)a->idx[k] * a->ldx + n0;
                for (int i = 0; i < 4; i++)
                    for (int l = 0; l < CHUNK; l++) acc[i][l] += v[i] * xt[l];
            }
            const size_t nb = a->batch - n0 < CHUNK ? a->batch - n0 : CHUNK;
            for (size_t i = 0; i < nr; i++)
                for (size_t l = 0; l < nb; l++) {
                    const float y = acc[i][l] < a->act_min ? a->act_min : acc[i][l];
                    a->y[(n0 + l) * a->ldy + r + i] = y > a->act_max ? a->act_max : y;
                }
        }
    }
}
