/* Dense linear, portable C: rows [r0, r1) of y = act(W x + b), W row-major, for each input
 * of a small batch; 8 partial sums per dot product (the compiler may vectorise them). */
#include "kernels.h"

void mp_f32_gemv__scalar(const mp_linear_args* a)
{
    const size_t cols = a->cols;
    for (size_t r = a->r0; r < a->r1; r++) {
        const float* w = a->val + r * cols;
        for (size_t n = 0; n < a->batch; n++) {
            const float* x = a->x + n * a->ldx;
            float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            size_t c = 0;
            for (; c + 8 <= cols; c += 8)
                for (int l = 0; l < 8; l++) s[l] += w[c + (size_t)l] * x[c + (size_t)l];
            for (; c < cols; c++) s[0] += w[c] * x[c];
            float y = a->bias[r] + ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
            y = y < a->act_min ? a->act_min : y;
            a->y[n * a->ldy + r] = y > a->act_max ? a->act_max : y;
        }
    }
}
