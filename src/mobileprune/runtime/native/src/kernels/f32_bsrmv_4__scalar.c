/* Block-sparse linear, portable C: rows [r0, r1) of y = act(W x + b) for each input of a
 * small batch, W in BSR with 4x1 blocks (`structure: block`, 4 consecutive output rows at
 * one input column): per block one input value x[col] feeds 4 multiply-adds (seed 003,
 * Algorithm 2 with one column of X per input). ptr[g] .. ptr[g + 1] are the blocks of rows
 * 4g .. 4g + 3, idx their columns, val 4 values each; rows past `rows` are zero padding.
 * Four partial sums per row (blocks k mod 4) keep the add chains independent. */
#include "kernels.h"

void mp_f32_bsrmv_4__scalar(const mp_linear_args* a)
{
    for (size_t r = a->r0; r < a->r1; r += 4) {
        const size_t g = r / 4, nr = a->rows - r < 4 ? a->rows - r : 4;
        const uint32_t k0 = a->ptr[g], k1 = a->ptr[g + 1];
        for (size_t n = 0; n < a->batch; n++) {
            const float* x = a->x + n * a->ldx;
            float s[4][4] = {{0.0f}};
            uint32_t k = k0;
            for (; k + 4 <= k1; k += 4)
                for (int u = 0; u < 4; u++) {
                    const float xv = x[a->idx[k + (uint32_t)u]];
                    const float* v = a->val + 4 * (size_t)(k + (uint32_t)u);
                    for (int i = 0; i < 4; i++) s[u][i] += v[i] * xv;
                }
            for (; k < k1; k++)
                for (int i = 0; i < 4; i++) s[0][i] += a->val[4 * (size_t)k + (size_t)i] * x[a->idx[k]];
            for (size_t i = 0; i < nr; i++) {
                float y = a->bias[r + i] + ((s[0][i] + s[1][i]) + (s[2][i] + s[3][i]));
                y = y < a->act_min ? a->act_min : y;
                a->y[n * a->ldy + r + i] = y > a->act_max ? a->act_max : y;
            }
        }
    }
}
