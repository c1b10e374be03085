/* TEMPORARY test-only stand-in for conv.c / linear.c / cpu.c (helper H2's files) so the
 * core links before they land: a naive direct convolution and linear layer following
 * operators.h. Not part of the library; compiled only with -DMP_TEST_STUB_OPERATORS;
 * removed once the real operators are on main. */
typedef int mp_stub_operators_unit; /* the file is never an empty translation unit */
#ifdef MP_TEST_STUB_OPERATORS
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/mobileprune/runtime/native/src/operators.h"

mp_isa mp_cpu_best_isa(void) { return MP_ISA_SCALAR; }

typedef struct stub_w {
    float* w;
    float* b;
    int32_t rows, cols;
} stub_w;

static mp_status stub_pack(const mp_weights* w, stub_w* s) {
    size_t n = (size_t)w->rows * (size_t)w->cols;
    s->w = calloc(n ? n : 1, sizeof(float));
    s->b = calloc((size_t)w->rows, sizeof(float));
    if (!s->w || !s->b) return mp_set_error(MP_OUT_OF_MEMORY, "stub: out of memory");
    s->rows = w->rows;
    s->cols = w->cols;
    if (w->dense) memcpy(s->w, w->dense, n * sizeof(float));
    else
        for (int32_t r = 0; r < w->rows; r++)
            for (uint32_t k = w->indptr[r]; k < w->indptr[r + 1]; k++)
                s->w[(size_t)r * w->cols + w->indices[k]] = w->values[k];
    if (w->bias) memcpy(s->b, w->bias, (size_t)w->rows * sizeof(float));
    return MP_OK;
}

static float stub_act(float y, mp_act_kind act, float lo, float hi) {
    if (act == MP_ACT_NONE) return y;
    return y < lo ? lo : (y > hi ? hi : y);
}

struct mp_conv_op {
    mp_conv_desc d;
    stub_w w;
};

mp_status mp_conv_create(const mp_conv_desc* desc, const mp_weights* w, uint32_t flags,
                         mp_conv_op** out) {
    (void)flags;
    mp_conv_op* op = calloc(1, sizeof *op);
    if (!op) return MP_OUT_OF_MEMORY;
    op->d = *desc;
    mp_status st = stub_pack(w, &op->w);
    if (st) { mp_conv_free(op); return st; }
    *out = op;
    return MP_OK;
}
size_t mp_conv_scratch_bytes(const mp_conv_op* op, size_t batch) { (void)op; (void)batch; return 64; }
void mp_conv_prepare(const mp_conv_op* op, size_t batch, const float* in, void* scratch) {
    (void)op; (void)batch; (void)in; memset(scratch, 0, 64);
}
size_t mp_conv_num_tasks(const mp_conv_op* op, size_t batch) { return batch * (size_t)op->d.out_channels; }
void mp_conv_compute(const mp_conv_op* op, size_t batch, const float* in, const void* scratch,
                     float* out, size_t t0, size_t t1) {
    (void)batch; (void)scratch;
    const mp_conv_desc* d = &op->d;
    int32_t cg = d->in_channels / d->groups, og = d->out_channels / d->groups;
    for (size_t t = t0; t < t1; t++) {
        size_t n = t / (size_t)d->out_channels;
        int32_t o = (int32_t)(t % (size_t)d->out_channels), g = o / og;
        for (int32_t y = 0; y < d->out_h; y++)
            for (int32_t x = 0; x < d->out_w; x++) {
                float s = op->w.b[o];
                for (int32_t c = 0; c < cg; c++)
                    for (int32_t i = 0; i < d->kernel_h; i++)
                        for (int32_t j = 0; j < d->kernel_w; j++) {
                            int32_t h = y * d->stride_h - d->pad_top + i * d->dilation_h;
                            int32_t w = x * d->stride_w - d->pad_left + j * d->dilation_w;
                            if (h < 0 || h >= d->in_h || w < 0 || w >= d->in_w) continue;
                            size_t col = ((size_t)c * d->kernel_h + i) * d->kernel_w + j;
                            s += op->w.w[(size_t)o * op->w.cols + col] *
                                 in[((n * d->in_channels + (size_t)(g * cg + c)) * d->in_h + h) * d->in_w + w];
                        }
                out[((n * d->out_channels + o) * d->out_h + y) * d->out_w + x] =
                    stub_act(s, d->act, d->act_min, d->act_max);
            }
    }
}
void mp_conv_describe(const mp_conv_op* op, char* buf, size_t size) {
    snprintf(buf, size, "stub-direct dense density=1.000 test stub (%dx%d)", op->w.rows, op->w.cols);
}
void mp_conv_free(mp_conv_op* op) {
    if (!op) return;
    free(op->w.w); free(op->w.b); free(op);
}

struct mp_linear_op {
    mp_linear_desc d;
    stub_w w;
};
mp_status mp_linear_create(const mp_linear_desc* desc, const mp_weights* w, uint32_t flags,
                           mp_linear_op** out) {
    (void)flags;
    mp_linear_op* op = calloc(1, sizeof *op);
    if (!op) return MP_OUT_OF_MEMORY;
    op->d = *desc;
    mp_status st = stub_pack(w, &op->w);
    if (st) { mp_linear_free(op); return st; }
    *out = op;
    return MP_OK;
}
size_t mp_linear_scratch_bytes(const mp_linear_op* op, size_t batch) { (void)op; (void)batch; return 0; }
void mp_linear_prepare(const mp_linear_op* op, size_t batch, const float* in, void* scratch) {
    (void)op; (void)batch; (void)in; (void)scratch;
}
size_t mp_linear_num_tasks(const mp_linear_op* op, size_t batch) { (void)op; return batch; }
void mp_linear_compute(const mp_linear_op* op, size_t batch, const float* in,
                       const void* scratch, float* out, size_t t0, size_t t1) {
    (void)batch; (void)scratch;
    int32_t I = op->d.in_features, O = op->d.out_features;
    for (size_t n = t0; n < t1; n++)
        for (int32_t o = 0; o < O; o++) {
            float s = op->w.b[o];
            for (int32_t k = 0; k < I; k++) s += op->w.w[(size_t)o * I + k] * in[n * I + k];
            out[n * O + o] = stub_act(s, op->d.act, op->d.act_min, op->d.act_max);
        }
}
void mp_linear_describe(const mp_linear_op* op, char* buf, size_t size) {
    snprintf(buf, size, "stub-gemv dense density=1.000 test stub (%dx%d)", op->w.rows, op->w.cols);
}
void mp_linear_free(mp_linear_op* op) {
    if (!op) return;
    free(op->w.w); free(op->w.b); free(op);
}
#endif /* MP_TEST_STUB_OPERATORS */
