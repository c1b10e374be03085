/* Input transposition of the linear operator for large batches, portable C: x (batch, cols)
 * -> x^T (cols, ldy) for columns [r0, r1), zero-padded from batch to ldy (kind
 * MP_LIN_TRANSPOSE: x = input, ldx = cols, y = x^T). Writes in order, reads from `batch`
 * sequential streams. */
#include "kernels.h"

void mp_f32_transpose__scalar(const mp_linear_args* a)
{
    for (size_t c = a->r0; c < a->r1; c++) {
        float* dst = a->y + c * a->ldy;
        for (size_t n = 0; n < a->batch; n++) dst[n] = a->x[n * a->ldx + c];
        for (size_t n = a->batch; n < a->ldy; n++) dst[n] = 0.0f;
    }
}
