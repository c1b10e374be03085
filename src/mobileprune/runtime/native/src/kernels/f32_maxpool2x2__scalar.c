/* 2x2 max pooling, stride 2, no padding: `rows` output rows of width wo from input rows of
 * width w (row yo reads input rows 2 yo and 2 yo + 1). Each window is reduced as torch
 * does: max of the first row's pair, of the second row's, then of the two, a NaN winning
 * every comparison (so a NaN anywhere in the window gives NaN). */
#include "kernels.h"

static inline float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

void mp_f32_maxpool2x2__scalar(const float* x, float* y, size_t rows, size_t w, size_t wo)
{
    for (size_t yo = 0; yo < rows; yo++) {
        const float* r0 = x + 2 * yo * w;
        const float* r1 = r0 + w;
        float* o = y + yo * wo;
        for (size_t xo = 0; xo < wo; xo++)
            o[xo] = max_nan(max_nan(r0[2 * xo], r0[2 * xo + 1]), max_nan(r1[2 * xo], r1[2 * xo + 1]));
    }
}
