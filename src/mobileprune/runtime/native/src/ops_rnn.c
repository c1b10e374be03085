/* lstm and gru layers (docs/native_format.md): per sample a sequence (T, I) -> (T, H dirs).
 *
 * Each direction has two linear operators (operators.h, so its weights run on the same
 * dense / sparse kernels and kernel choice as a linear layer): the input projection
 * P = W_ih x + b_ih over all T steps at once (T rows per sample), and the recurrent
 * product Q = W_hh h + b_hh, one step at a time. The gates then combine P and Q as torch
 * does (fastmath.h's sigmoid / tanh). A task is one (sample group, direction): it runs
 * the whole sequence of its samples in its own part of the step's scratch, so the
 * directions and, at batch >= 2 on several threads, the sample groups run in parallel
 * (the steps of a sequence cannot). */
#include <stdio.h>
#include <stdlib.h>

#include "fastmath.h"
#include "internal.h"

typedef struct mp_rnn {
    int gru;
    size_t T, I, H, G, dirs, groups;
    mp_linear_op* proj[2];
    mp_linear_op* rec[2];
    /* one task's scratch: P (nb T x G H), the projection's scratch, h and c (nb x H),
     * Q (nb x G H), the recurrent product's scratch; byte offsets, 64-byte aligned */
    size_t off_ps, off_h, off_c, off_q, off_rs, task_bytes;
} mp_rnn;

static size_t round64(size_t n) { return (n + MP_ALIGN - 1) / MP_ALIGN * MP_ALIGN; }

static void lstm_cell(const float* restrict p, const float* restrict q, float* restrict h,
                      float* restrict c, size_t H) {
    for (size_t j = 0; j < H; j++) {
        float i = sigmoidf(p[j] + q[j]), f = sigmoidf(p[H + j] + q[H + j]);
        float g = tanh_fast(p[2 * H + j] + q[2 * H + j]);
        float o = sigmoidf(p[3 * H + j] + q[3 * H + j]);
        c[j] = f * c[j] + i * g;
        h[j] = o * tanh_fast(c[j]);
    }
}

/* torch's GRU: n = tanh(P_n + r (W_hn h + b_hn)), h' = (1 - z) n + z h */
static void gru_cell(const float* restrict p, const float* restrict q, float* restrict h,
                     size_t H) {
    for (size_t j = 0; j < H; j++) {
        float r = sigmoidf(p[j] + q[j]), z = sigmoidf(p[H + j] + q[H + j]);
        float n = tanh_fast(p[2 * H + j] + r * q[2 * H + j]);
        h[j] = (1.0f - z) * n + z * h[j];
    }
}

/* The whole sequence of samples [n0, n0 + nb) in direction d. */
static void run_sequence(const mp_step* s, size_t n0, size_t nb, size_t d, uint8_t* base) {
    const mp_rnn* r = s->rnn;
    size_t T = r->T, H = r->H, GH = r->G * r->H, ld = r->dirs * H;
    const float* x = s->in[0] + n0 * T * r->I;
    float* P = (float*)base;
    float *h = (float*)(base + r->off_h), *c = (float*)(base + r->off_c);
    float* q = (float*)(base + r->off_q);
    mp_linear_prepare(r->proj[d], nb * T, x, base + r->off_ps);
    mp_linear_compute(r->proj[d], nb * T, x, base + r->off_ps, P, 0,
                      mp_linear_num_tasks(r->proj[d], nb * T));
    memset(h, 0, nb * H * sizeof(float));
    memset(c, 0, nb * H * sizeof(float));
    for (size_t step = 0; step < T; step++) {
        size_t t = d ? T - 1 - step : step;
        mp_linear_prepare(r->rec[d], nb, h, base + r->off_rs);
        mp_linear_compute(r->rec[d], nb, h, base + r->off_rs, q, 0,
                          mp_linear_num_tasks(r->rec[d], nb));
        for (size_t n = 0; n < nb; n++) {
            const float* p = P + (n * T + t) * GH;
            if (r->gru)
                gru_cell(p, q + n * GH, h + n * H, H);
            else
                lstm_cell(p, q + n * GH, h + n * H, c + n * H, H);
            memcpy(s->out + ((n0 + n) * T + t) * ld + d * H, h + n * H, H * sizeof(float));
        }
    }
}

/* task = (sample group, direction) */
static void rnn_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    const mp_rnn* r = s->rnn;
    for (size_t t = b; t < e; t++) {
        size_t g = t / r->dirs, d = t % r->dirs;
        size_t n0 = s->batch * g / r->groups, n1 = s->batch * (g + 1) / r->groups;
        run_sequence(s, n0, n1 - n0, d, (uint8_t*)s->scratch + t * r->task_bytes);
    }
}

/* Rows [r0, r0 + n) of w (the bias too); a CSR row pointer rebased into ptr (n + 1). */
static mp_weights rows_of(const mp_weights* w, int32_t r0, int32_t n, uint32_t* ptr) {
    mp_weights sub = *w;
    sub.rows = n;
    if (w->bias) sub.bias = w->bias + r0;
    if (w->dense) {
        sub.dense = w->dense + (size_t)r0 * (size_t)w->cols;
        return sub;
    }
    uint32_t first = w->indptr[r0];
    for (int32_t k = 0; k <= n; k++) ptr[k] = w->indptr[r0 + k] - first;
    sub.indptr = ptr;
    sub.indices = w->indices + first;
    sub.values = w->values + first;
    sub.nnz = ptr[n];
    return sub;
}

/* One linear operator per direction over the rows of that direction of the weight at `at`. */
static mp_status make_linears(mp_step* s, int at, uint32_t flags, mp_linear_op** ops) {
    mp_rnn* r = s->rnn;
    mp_weights w;
    mp_wbuf buf;
    int32_t GH = (int32_t)(r->G * r->H);
    mp_status st = mp_make_weights(s->model, s->op, at, &w, &buf);
    uint32_t* ptr = st ? NULL : malloc(((size_t)GH + 1) * sizeof(uint32_t));
    if (!st && !ptr) st = mp_set_error(MP_OUT_OF_MEMORY, "out of memory (%s)", mp_op_name(s->code));
    for (size_t d = 0; d < r->dirs && !st; d++) {
        mp_weights sub = rows_of(&w, (int32_t)d * GH, GH, ptr);
        mp_linear_desc desc = {.in_features = w.cols, .out_features = GH, .act = MP_ACT_NONE,
                               .act_min = 0.0f, .act_max = 0.0f};
        st = mp_linear_create(&desc, &sub, flags, &ops[d]);
    }
    free(ptr);
    mp_wbuf_free(&buf);
    return st;
}

/* Byte offsets of one task's buffers for at most nb samples. */
static void layout(mp_rnn* r, size_t nb) {
    size_t GH = r->G * r->H, ps = 0, rs = 0;
    for (size_t d = 0; d < r->dirs; d++) {
        size_t a = mp_linear_scratch_bytes(r->proj[d], nb * r->T);
        size_t b = mp_linear_scratch_bytes(r->rec[d], nb);
        ps = a > ps ? a : ps;
        rs = b > rs ? b : rs;
    }
    r->off_ps = round64(nb * r->T * GH * sizeof(float));
    r->off_h = r->off_ps + round64(ps);
    r->off_c = r->off_h + round64(nb * r->H * sizeof(float));
    r->off_q = r->off_c + round64(nb * r->H * sizeof(float));
    r->off_rs = r->off_q + round64(nb * GH * sizeof(float));
    r->task_bytes = r->off_rs + round64(rs);
}

mp_status mp_rnn_setup(mp_step* s, uint32_t flags, size_t threads) {
    const mp_value* in = &s->model->values[s->in_tensor[0]];
    mp_rnn* r = calloc(1, sizeof *r);
    if (!r) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory (%s)", mp_op_name(s->code));
    s->rnn = r;
    r->gru = s->code == MP_OP_GRU;
    r->T = (size_t)in->dims[0];
    r->I = (size_t)in->dims[1];
    r->H = (size_t)s->op->iattr[8];
    r->G = r->gru ? 3 : 4;
    r->dirs = s->op->iattr[9] ? 2 : 1;
    mp_status st = make_linears(s, 0, flags, r->proj);
    if (!st) st = make_linears(s, 4, flags, r->rec);
    if (st) return st;
    r->groups = threads >= 2 && s->batch >= 2 ? (threads < s->batch ? threads : s->batch) : 1;
    size_t nb = (s->batch + r->groups - 1) / r->groups;
    /* the scratch in floats, roughly (double: no overflow), before computing it exactly */
    double need = (double)(r->groups * r->dirs) * (double)nb *
                  ((double)r->T * (double)(r->G * r->H + r->I + 16) + (double)(4 * r->H * r->G));
    if (need > (double)((size_t)1 << 40) / sizeof(float) || need > (double)(SIZE_MAX / 8))
        return mp_set_error(MP_OUT_OF_MEMORY, "%s: a scratch of %.3g bytes at batch %zu",
                            mp_op_name(s->code), need * sizeof(float), s->batch);
    layout(r, nb);
    s->scratch_bytes = r->groups * r->dirs * r->task_bytes;
    s->num_tasks = r->groups * r->dirs;
    double work = (double)s->batch * (double)(r->T * r->dirs * r->G * r->H) *
                  (double)(r->I + r->H);
    s->work = work < (double)(SIZE_MAX / 2) ? (size_t)work : SIZE_MAX / 2;
    s->fn = rnn_task;
    s->kernel = r->gru ? "gru" : "lstm";
    return MP_OK;
}

void mp_rnn_describe(const mp_step* s, char* buf, size_t size) {
    char ih[200], hh[200];
    mp_linear_describe(s->rnn->proj[0], 1, ih, sizeof ih);
    mp_linear_describe(s->rnn->rec[0], 1, hh, sizeof hh);
    snprintf(buf, size, "%s%s W_ih: %s; W_hh: %s", s->kernel,
             s->rnn->dirs == 2 ? " bidirectional" : "", ih, hh);
}

void mp_rnn_free(mp_rnn* r) {
    if (!r) return;
    for (int d = 0; d < 2; d++) {
        mp_linear_free(r->proj[d]);
        mp_linear_free(r->rec[d]);
    }
    free(r);
}
