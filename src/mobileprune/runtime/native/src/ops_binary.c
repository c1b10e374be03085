/* add / sub / mul / div of two tensors that broadcast (numpy rules on same-rank per-sample
 * shapes), and concat along one per-sample axis.
 *
 * Broadcasting: the (batch, dims...) shapes are simplified once at plan time: dims of size
 * 1 in the output are dropped and neighbours where each operand is either full or
 * broadcast alike are merged, so `(C, H, W) * (C, 1, 1)` becomes rows of H*W values
 * times one number. A task is one row of the innermost merged dim, or a piece of it. */
#include "internal.h"

enum { B_RANK = 0, B_DIMS = 1, B_SA = 11, B_SB = 21, B_ROWS = 31, B_INNER, B_IA, B_IB, B_PIECES };

/* a long row (a residual add collapses to one row of the whole batch) is cut in pieces of
 * this many elements, so that threads share it */
#define MP_ROW_PIECE 4096

#define MP_BINARY_ROW(name, OP)                                                      \
    static void name(const float* restrict a, const float* restrict b,              \
                     float* restrict y, size_t n, int64_t ia, int64_t ib) {         \
        if (ia && ib)                                                                \
            for (size_t i = 0; i < n; i++) y[i] = a[i] OP b[i];                     \
        else if (ia) {                                                               \
            const float v = b[0];                                                    \
            for (size_t i = 0; i < n; i++) y[i] = a[i] OP v;                        \
        } else {                                                                     \
            const float v = a[0];                                                    \
            for (size_t i = 0; i < n; i++) y[i] = v OP b[i];                        \
        }                                                                            \
    }

MP_BINARY_ROW(add_row, +)
MP_BINARY_ROW(sub_row, -)
MP_BINARY_ROW(mul_row, *)
MP_BINARY_ROW(div_row, /)

static void binary_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    const int64_t* p = s->p;
    int64_t r = p[B_RANK];
    void (*row)(const float*, const float*, float*, size_t, int64_t, int64_t) =
        s->op->code == MP_OP_ADD ? add_row : s->op->code == MP_OP_SUB ? sub_row
        : s->op->code == MP_OP_MUL ? mul_row : div_row;
    for (size_t t = b; t < e; t++) {
        int64_t idx = (int64_t)t / p[B_PIECES], piece = (int64_t)t % p[B_PIECES], oa = 0, ob = 0;
        int64_t start = piece * MP_ROW_PIECE, inner = p[B_INNER];
        size_t len = (size_t)(inner - start < MP_ROW_PIECE ? inner - start : MP_ROW_PIECE);
        float* y = s->out + idx * inner + start;
        for (int64_t k = r - 2; k >= 0; k--) {
            int64_t ik = idx % p[B_DIMS + k];
            idx /= p[B_DIMS + k];
            oa += ik * p[B_SA + k];
            ob += ik * p[B_SB + k];
        }
        oa += p[B_IA] ? start : 0;
        ob += p[B_IB] ? start : 0;
        row(s->in[0] + oa, s->in[1] + ob, y, len, p[B_IA], p[B_IB]);
        if (s->act != MP_ACT_NONE) { /* the fused relu / hardtanh, on the piece still in L1 */
            const float lo = s->act_min, hi = s->act_max;
            for (size_t i = 0; i < len; i++) y[i] = y[i] < lo ? lo : (y[i] > hi ? hi : y[i]);
        }
    }
}

mp_status mp_binary_setup(mp_step* s) {
    const mp_value* va = &s->model->values[s->in_tensor[0]];
    const mp_value* vb = &s->model->values[s->in_tensor[1]];
    int64_t od[MP_MAX_DIMS + 1], fa[MP_MAX_DIMS + 1], fb[MP_MAX_DIMS + 1];
    int64_t r = 0;
    for (uint32_t k = 0; k <= va->ndim; k++) {
        int64_t a = k ? va->dims[k - 1] : (int64_t)s->batch;
        int64_t b = k ? vb->dims[k - 1] : (int64_t)s->batch;
        int64_t o = a > b ? a : b;
        if (o == 1) continue;
        int64_t ffa = a == o, ffb = b == o;
        if (r > 0 && fa[r - 1] == ffa && fb[r - 1] == ffb) {
            od[r - 1] *= o;
            continue;
        }
        od[r] = o;
        fa[r] = ffa;
        fb[r++] = ffb;
    }
    if (r == 0) { /* every dim is 1 */
        od[0] = 1;
        fa[0] = fb[0] = 1;
        r = 1;
    }
    int64_t sa = 1, sb = 1, rows = 1;
    for (int64_t k = r - 1; k >= 0; k--) {
        s->p[B_DIMS + k] = od[k];
        s->p[B_SA + k] = fa[k] ? sa : 0;
        s->p[B_SB + k] = fb[k] ? sb : 0;
        sa *= fa[k] ? od[k] : 1;
        sb *= fb[k] ? od[k] : 1;
        if (k < r - 1) rows *= od[k];
    }
    s->p[B_RANK] = r;
    s->p[B_ROWS] = rows;
    s->p[B_INNER] = od[r - 1];
    s->p[B_IA] = fa[r - 1];
    s->p[B_IB] = fb[r - 1];
    s->p[B_PIECES] = (od[r - 1] + MP_ROW_PIECE - 1) / MP_ROW_PIECE;
    s->num_tasks = (size_t)(rows * s->p[B_PIECES]);
    s->fn = binary_task;
    s->kernel = fa[r - 1] && fb[r - 1] ? "binary" : "binary-broadcast";
    return MP_OK;
}

/* concat: a task is one (sample, outer index); it copies each input's contiguous block. */
static void concat_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    const mp_model* m = s->model;
    size_t inner = (size_t)s->p[1], out_len = (size_t)s->p[2], ax = (size_t)s->p[3];
    for (size_t t = b; t < e; t++) {
        float* dst = s->out + t * out_len * inner;
        for (uint32_t k = 0; k < s->num_in; k++) {
            size_t n = (size_t)m->values[s->in_tensor[k]].dims[ax] * inner;
            memcpy(dst, s->in[k] + t * n, n * sizeof(float));
            dst += n;
        }
    }
}

mp_status mp_concat_setup(mp_step* s) {
    const mp_value* out = &s->model->values[s->out_tensor];
    uint32_t ax = (uint32_t)s->op->iattr[0];
    int64_t outer, inner;
    mp_axis_split(out, s->batch, ax, &outer, &inner);
    s->p[1] = inner;
    s->p[2] = out->dims[ax];
    s->p[3] = ax;
    s->num_tasks = (size_t)outer;
    s->fn = concat_task;
    s->kernel = "concat";
    return MP_OK;
}
