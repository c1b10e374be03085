/* layer_norm and group_norm: each block of consecutive values (layer_norm: one row of the
 * normalized dims; group_norm: one group of channels of a sample, with its positions) is
 * normalised by its mean and biased variance (two passes: the mean, then the squared
 * deviations; eight partial sums per pass, so the loops vectorise), then scaled and
 * shifted per element (layer_norm) or per channel (group_norm). A task is one block. */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

#define MP_LANES 8

/* Sum of x[0..n) (in the order: MP_LANES partial sums, then their total in double). */
static double block_sum(const float* restrict x, size_t n, float shift, int squares) {
    float acc[MP_LANES] = {0};
    size_t i = 0;
    if (squares)
        for (; i + MP_LANES <= n; i += MP_LANES)
            for (int l = 0; l < MP_LANES; l++) acc[l] += (x[i + l] - shift) * (x[i + l] - shift);
    else
        for (; i + MP_LANES <= n; i += MP_LANES)
            for (int l = 0; l < MP_LANES; l++) acc[l] += x[i + l];
    double sum = 0.0;
    for (int l = 0; l < MP_LANES; l++) sum += acc[l];
    for (; i < n; i++) sum += squares ? (double)(x[i] - shift) * (x[i] - shift) : x[i];
    return sum;
}

/* mean and 1 / sqrt(var + eps) of x[0..n) */
static void block_stats(const float* x, size_t n, float eps, float* mean, float* rstd) {
    float m = (float)(block_sum(x, n, 0.0f, 0) / (double)n);
    double var = block_sum(x, n, m, 1) / (double)n;
    *mean = m;
    *rstd = (float)(1.0 / sqrt(var + (double)eps));
}

static void layer_norm_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    size_t n = (size_t)s->p[1];
    const float* restrict g = s->scale;
    const float* restrict h = s->shift;
    for (size_t t = b; t < e; t++) {
        const float* restrict x = s->in[0] + t * n;
        float* restrict y = s->out + t * n;
        float mean, rstd;
        block_stats(x, n, s->f[0], &mean, &rstd);
        for (size_t i = 0; i < n; i++) y[i] = (x[i] - mean) * rstd * g[i] + h[i];
    }
}

/* task = (sample, group): channels [c0, c0 + cpg) of `inner` positions each */
static void group_norm_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    size_t groups = (size_t)s->p[1], cpg = (size_t)s->p[2], inner = (size_t)s->p[3];
    for (size_t t = b; t < e; t++) {
        const float* x = s->in[0] + t * cpg * inner;
        float* y = s->out + t * cpg * inner;
        float mean, rstd;
        block_stats(x, cpg * inner, s->f[0], &mean, &rstd);
        for (size_t k = 0; k < cpg; k++) {
            size_t c = (t % groups) * cpg + k;
            const float a = rstd * s->scale[c], d = s->shift[c] - mean * a;
            const float* restrict xc = x + k * inner;
            float* restrict yc = y + k * inner;
            for (size_t i = 0; i < inner; i++) yc[i] = xc[i] * a + d;
        }
    }
}

/* scale (ones if absent) and shift (zeros if absent), n each, owned by the step */
static mp_status affine_arrays(mp_step* s, size_t n) {
    const mp_model* m = s->model;
    s->owned = malloc(2 * n * sizeof(float));
    if (!s->owned) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory (%s)", mp_op_name(s->code));
    for (int slot = 0; slot < 2; slot++) {
        uint32_t id = s->op->arrays[slot];
        float* dst = s->owned + (size_t)slot * n;
        for (size_t k = 0; k < n; k++)
            dst[k] = id != MP_NONE ? mp_array_float(&m->arrays[id], k) : (slot ? 0.0f : 1.0f);
    }
    s->scale = s->owned;
    s->shift = s->owned + n;
    return MP_OK;
}

mp_status mp_norm_setup(mp_step* s) {
    const mp_value* v = &s->model->values[s->in_tensor[0]];
    int32_t k = s->op->iattr[0];
    s->f[0] = s->op->fattr[0];
    if (s->code == MP_OP_LAYER_NORM) {
        int64_t n = 1;
        for (uint32_t d = v->ndim - (uint32_t)k; d < v->ndim; d++) n *= v->dims[d];
        s->p[1] = n;
        s->num_tasks = s->batch * (size_t)(v->numel / n);
        s->fn = layer_norm_task;
        s->kernel = "layer-norm";
        return affine_arrays(s, (size_t)n);
    }
    s->p[1] = k;
    s->p[2] = v->dims[0] / k;
    s->p[3] = v->numel / v->dims[0];
    s->num_tasks = s->batch * (size_t)k;
    s->fn = group_norm_task;
    s->kernel = "group-norm";
    return affine_arrays(s, (size_t)v->dims[0]);
}
