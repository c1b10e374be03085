/* matmul of two activations (batched over the leading dims, which broadcast) and mean over
 * a set of axes. */
#include <stdlib.h>

#include "internal.h"

/* ---- matmul: Y (..., M, N) = A (..., M, K) B (..., K, N). The leading dims, the batch
 * first, index the matrices; an operand's stride is 0 along a dim it broadcasts. A task
 * is one block of MP_MM_ROWS rows of one output matrix; rows go 4 at a time (each row of
 * B loaded once for four rows of Y), every row a loop over N that vectorises. */
enum { MM_M = 1, MM_K, MM_N, MM_RANK, MM_BLOCKS, MM_DIMS, MM_SA = MM_DIMS + MP_MAX_DIMS + 1,
       MM_SB = MM_SA + MP_MAX_DIMS + 1 };
#define MP_MM_ROWS 16

static void mm_rows4(const float* restrict a, const float* restrict b, float* restrict y,
                     size_t K, size_t N) {
    float* restrict y1 = y + N;
    float* restrict y2 = y + 2 * N;
    float* restrict y3 = y + 3 * N;
    for (size_t j = 0; j < 4 * N; j++) y[j] = 0.0f;
    for (size_t k = 0; k < K; k++) {
        const float a0 = a[k], a1 = a[K + k], a2 = a[2 * K + k], a3 = a[3 * K + k];
        const float* restrict bk = b + k * N;
        for (size_t j = 0; j < N; j++) {
            y[j] += a0 * bk[j];
            y1[j] += a1 * bk[j];
            y2[j] += a2 * bk[j];
            y3[j] += a3 * bk[j];
        }
    }
}

static void mm_row(const float* restrict a, const float* restrict b, float* restrict y, size_t K,
                   size_t N) {
    for (size_t j = 0; j < N; j++) y[j] = 0.0f;
    for (size_t k = 0; k < K; k++) {
        const float ak = a[k];
        const float* restrict bk = b + k * N;
        for (size_t j = 0; j < N; j++) y[j] += ak * bk[j];
    }
}

static void matmul_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    const int64_t* p = s->p;
    size_t M = (size_t)p[MM_M], K = (size_t)p[MM_K], N = (size_t)p[MM_N];
    for (size_t t = b; t < e; t++) {
        int64_t mat = (int64_t)t / p[MM_BLOCKS], oa = 0, ob = 0, idx = mat;
        size_t m0 = (size_t)((int64_t)t % p[MM_BLOCKS]) * MP_MM_ROWS;
        size_t m1 = m0 + MP_MM_ROWS < M ? m0 + MP_MM_ROWS : M;
        for (int64_t k = p[MM_RANK] - 1; k >= 0; k--) {
            int64_t ik = idx % p[MM_DIMS + k];
            idx /= p[MM_DIMS + k];
            oa += ik * p[MM_SA + k];
            ob += ik * p[MM_SB + k];
        }
        const float* A = s->in[0] + (size_t)oa * M * K;
        const float* B = s->in[1] + (size_t)ob * K * N;
        float* Y = s->out + (size_t)mat * M * N;
        size_t m = m0;
        for (; m + 4 <= m1; m += 4) mm_rows4(A + m * K, B, Y + m * N, K, N);
        for (; m < m1; m++) mm_row(A + m * K, B, Y + m * N, K, N);
    }
}

static void setup_matmul(mp_step* s) {
    const mp_value* va = &s->model->values[s->in_tensor[0]];
    const mp_value* vb = &s->model->values[s->in_tensor[1]];
    const mp_value* vo = &s->model->values[s->out_tensor];
    uint32_t lead = vo->ndim - 2; /* per-sample leading dims of the output */
    int64_t* p = s->p;
    p[MM_M] = vo->dims[lead];
    p[MM_K] = va->dims[va->ndim - 1];
    p[MM_N] = vo->dims[lead + 1];
    p[MM_RANK] = lead + 1;
    int64_t sa = 1, sb = 1, mats = 1; /* strides in matrices, innermost leading dim first */
    for (int64_t k = lead; k >= 0; k--) { /* k = 0: the batch, k > 0: per-sample dim k - 1 */
        int64_t d = k ? vo->dims[k - 1] : (int64_t)s->batch;
        int64_t da = k ? va->dims[k - 1] : d, db = k ? vb->dims[k - 1] : d;
        p[MM_DIMS + k] = d;
        p[MM_SA + k] = da == d ? sa : 0;
        p[MM_SB + k] = db == d ? sb : 0;
        sa *= da;
        sb *= db;
        mats *= d;
    }
    p[MM_BLOCKS] = (p[MM_M] + MP_MM_ROWS - 1) / MP_MM_ROWS;
    s->num_tasks = (size_t)(mats * p[MM_BLOCKS]);
    double work = (double)mats * (double)p[MM_M] * (double)p[MM_N] * (double)p[MM_K];
    s->work = work < (double)(SIZE_MAX / 2) ? (size_t)work : SIZE_MAX / 2;
    s->fn = matmul_task;
    s->kernel = "matmul";
}

/* ---- mean over a set of axes. The per-sample dims are merged into runs of kept and of
 * reduced axes; a task is one sample: its sums go to a double accumulator per output
 * value (the step's scratch), row by row of the innermost run, then are divided by the
 * number of values each one averages. */
enum { MN_RUNS = 1, MN_INNER_REDUCED, MN_COUNT, MN_OUT, MN_DIMS, MN_OSTR = MN_DIMS + MP_MAX_DIMS };

static void mean_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    const int64_t* p = s->p;
    int64_t runs = p[MN_RUNS], inner = p[MN_DIMS + runs - 1], out_n = p[MN_OUT];
    int64_t in_n = s->model->values[s->in_tensor[0]].numel;
    for (size_t t = b; t < e; t++) {
        const float* x = s->in[0] + (int64_t)t * in_n;
        double* acc = (double*)s->scratch + (int64_t)t * out_n;
        for (int64_t j = 0; j < out_n; j++) acc[j] = 0.0;
        for (int64_t row = 0; row < in_n / inner; row++) {
            int64_t idx = row, o = 0;
            for (int64_t k = runs - 2; k >= 0; k--) {
                o += idx % p[MN_DIMS + k] * p[MN_OSTR + k];
                idx /= p[MN_DIMS + k];
            }
            const float* xr = x + row * inner;
            if (p[MN_INNER_REDUCED]) {
                double sum = 0.0;
                for (int64_t i = 0; i < inner; i++) sum += xr[i];
                acc[o] += sum;
            } else {
                for (int64_t i = 0; i < inner; i++) acc[o + i] += xr[i];
            }
        }
        float* y = s->out + (int64_t)t * out_n;
        for (int64_t j = 0; j < out_n; j++) y[j] = (float)(acc[j] / (double)p[MN_COUNT]);
    }
}

static void setup_mean(mp_step* s) {
    const mp_value* v = &s->model->values[s->in_tensor[0]];
    int32_t mask = s->op->iattr[1];
    int64_t* p = s->p;
    int64_t runs = 0, count = 1, reduced[MP_MAX_DIMS];
    for (uint32_t k = 0; k < v->ndim; k++) {
        int64_t red = mask >> k & 1;
        count *= red ? v->dims[k] : 1;
        if (runs > 0 && reduced[runs - 1] == red) {
            p[MN_DIMS + runs - 1] *= v->dims[k];
            continue;
        }
        reduced[runs] = red;
        p[MN_DIMS + runs++] = v->dims[k];
    }
    int64_t ostride = 1;
    for (int64_t k = runs - 1; k >= 0; k--) {
        p[MN_OSTR + k] = reduced[k] ? 0 : ostride;
        ostride *= reduced[k] ? 1 : p[MN_DIMS + k];
    }
    p[MN_RUNS] = runs;
    p[MN_INNER_REDUCED] = reduced[runs - 1];
    p[MN_COUNT] = count;
    p[MN_OUT] = s->model->values[s->out_tensor].numel;
    s->scratch_bytes = s->batch * (size_t)p[MN_OUT] * sizeof(double);
    s->num_tasks = s->batch;
    s->work = s->batch * (size_t)v->numel;
    s->fn = mean_task;
    s->kernel = "mean";
}

mp_status mp_matmul_setup(mp_step* s) {
    if (s->code == MP_OP_MATMUL)
        setup_matmul(s);
    else
        setup_mean(s);
    return MP_OK;
}
