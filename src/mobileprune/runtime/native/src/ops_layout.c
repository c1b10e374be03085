/* Ops that move values without arithmetic: permute (any per-sample axis order), slice
 * (a strided range along one axis) and constant (a stored tensor for every sample). */
#include <stdlib.h>

#include "internal.h"

/* ---- permute. The (batch, dims...) output is simplified at plan time: size-1 dims are
 * dropped and neighbours that lie one inside the other in the input too are merged
 * (a channel shuffle (g, C/g, H, W) -> (C/g, g, H, W) copies rows of H*W values). Each
 * output axis keeps its input stride; a task is one row of the innermost merged axis. */
enum { T_RANK = 1, T_DIMS = 2, T_STRIDES = 2 + MP_MAX_DIMS + 1 };

static void permute_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    const int64_t* p = s->p;
    int64_t r = p[T_RANK], n = p[T_DIMS + r - 1], st = p[T_STRIDES + r - 1];
    for (size_t t = b; t < e; t++) {
        int64_t idx = (int64_t)t, off = 0;
        for (int64_t k = r - 2; k >= 0; k--) {
            off += idx % p[T_DIMS + k] * p[T_STRIDES + k];
            idx /= p[T_DIMS + k];
        }
        const float* restrict x = s->in[0] + off;
        float* restrict y = s->out + (int64_t)t * n;
        if (st == 1)
            memcpy(y, x, (size_t)n * sizeof(float));
        else
            for (int64_t i = 0; i < n; i++) y[i] = x[i * st];
    }
}

static void setup_permute(mp_step* s) {
    const mp_value* v = &s->model->values[s->in_tensor[0]];
    int64_t dims[MP_MAX_DIMS + 1], stride[MP_MAX_DIMS + 1];
    uint32_t n = v->ndim + 1;
    dims[0] = (int64_t)s->batch;
    for (uint32_t k = 1; k < n; k++) dims[k] = v->dims[k - 1];
    stride[n - 1] = 1;
    for (uint32_t k = n - 1; k > 0; k--) stride[k - 1] = stride[k] * dims[k];
    int64_t r = 0;
    for (uint32_t k = 0; k < n; k++) {
        int64_t a = k ? s->op->iattr[k - 1] + 1 : 0; /* output axis k reads input axis a */
        if (dims[a] == 1) continue;
        if (r > 0 && s->p[T_STRIDES + r - 1] == stride[a] * dims[a]) { /* contiguous: merge */
            s->p[T_DIMS + r - 1] *= dims[a];
            s->p[T_STRIDES + r - 1] = stride[a];
            continue;
        }
        s->p[T_DIMS + r] = dims[a];
        s->p[T_STRIDES + r++] = stride[a];
    }
    if (r == 0) { /* every dim is 1 */
        s->p[T_DIMS] = 1;
        s->p[T_STRIDES] = 1;
        r = 1;
    }
    s->p[T_RANK] = r;
    s->num_tasks = (size_t)(s->p[0] / s->p[T_DIMS + r - 1]);
    s->fn = permute_task;
    s->kernel = r == 1 ? "permute-copy" : "permute";
}

/* ---- slice: task = one (sample, outer index): `count` blocks of `inner` values, every
 * `step`-th block from `start` of the input's `len` */
static void slice_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    size_t inner = (size_t)s->p[1], len = (size_t)s->p[2], start = (size_t)s->p[3];
    size_t count = (size_t)s->p[4], step = (size_t)s->p[5];
    for (size_t t = b; t < e; t++) {
        const float* x = s->in[0] + (t * len + start) * inner;
        float* y = s->out + t * count * inner;
        if (step == 1)
            memcpy(y, x, count * inner * sizeof(float));
        else
            for (size_t k = 0; k < count; k++) memcpy(y + k * inner, x + k * step * inner,
                                                      inner * sizeof(float));
    }
}

static void setup_slice(mp_step* s) {
    const mp_value* v = &s->model->values[s->in_tensor[0]];
    const mp_value* o = &s->model->values[s->out_tensor];
    uint32_t ax = (uint32_t)s->op->iattr[0];
    int64_t outer, inner;
    mp_axis_split(v, s->batch, ax, &outer, &inner);
    s->p[1] = inner;
    s->p[2] = v->dims[ax];
    s->p[3] = s->op->iattr[1];
    s->p[4] = o->dims[ax];
    s->p[5] = s->op->iattr[3];
    s->num_tasks = (size_t)outer;
    s->fn = slice_task;
    s->kernel = "slice";
}

/* ---- constant: task = one sample */
static void constant_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    size_t n = (size_t)s->p[1];
    for (size_t t = b; t < e; t++) memcpy(s->out + t * n, s->scale, n * sizeof(float));
}

static mp_status setup_constant(mp_step* s) {
    const mp_array* a = &s->model->arrays[s->op->arrays[0]];
    size_t n = (size_t)s->model->values[s->out_tensor].numel;
    s->owned = malloc(n * sizeof(float));
    if (!s->owned) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory (constant)");
    for (size_t k = 0; k < n; k++) s->owned[k] = mp_array_float(a, k);
    s->scale = s->owned;
    s->p[1] = (int64_t)n;
    s->num_tasks = s->batch;
    s->fn = constant_task;
    s->kernel = "constant";
    return MP_OK;
}

mp_status mp_layout_setup(mp_step* s) {
    switch (s->code) {
    case MP_OP_PERMUTE: setup_permute(s); return MP_OK;
    case MP_OP_SLICE: setup_slice(s); return MP_OK;
    default: return setup_constant(s);
    }
}
