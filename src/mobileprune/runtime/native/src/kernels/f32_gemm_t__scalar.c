/* Dense linear on the transposed input, portable C: Y^T[row, :] = b + sum_c W[row, c] *
 * X^T[c, :], rows [r0, r1), the batch in chunks of 16 (x^T zero-padded to ldx, a multiple
 * of 16: fixed-length lane loops that vectorise); y[n * ldy + row] for the real inputs. */
#include "kernels.h"

#define CHUNK 16

void mp_f32_gemm_t__scalar(const mp_linear_args* a)
{
    for (size_t r = a->r0; r < a->r1; r++) {
        const float* w = a->val + r * a->cols;
        for (size_t n0 = 0; n0 < a->batch; n0 += CHUNK) {
            float acc[CHUNK];
            for (int l = 0; l < CHUNK; l++) acc[l] = a->bias[r];
            for (size_t c = 0; c < a->cols; c++) {
                const float v = w[c];
                const float* xt = a->x + c * a->ldx + n0;
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
