/* Linear operator: y = act(W x + b) for (batch, in) -> (batch, out), W stored sparse (CSR),
 * block sparse (BSR: 4x1 blocks, the union of the columns of 4 consecutive rows, zero-filled:
 * what `structure: block` pruning leaves) or dense, chosen at create (forced, cost model,
 * or a short timing run at batch 1).
 *
 * Small batches (< MP_LINEAR_T_BATCH) run one dot product per output and input, W rows
 * streamed once per task (batch 1 is bound by memory: 4 bytes per weight dense, 8 per
 * nonzero sparse, 5 per weight in full 4x1 blocks). Larger batches use seed 003 Algorithm
 * 2 literally on X^T: prepare transposes the input into scratch, Y^T[row, :] += value *
 * X^T[col, :] is then contiguous over the batch (a BSR block loads X^T[col, :] once for 4
 * rows). Tasks are chunks of output rows, a multiple of 4.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

/* Batches of at least this size run the transposed kernels. */
#define MP_LINEAR_T_BATCH 8
/* Density from which the cost model prefers dense (8 bytes per nonzero vs 4 per weight,
 * plus the gather). */
#define DENSE_DENSITY 0.4
/* The BSR packing is a candidate when the nonzeros fill at least this much of its blocks
 * (the conv's BLOCK_FILL). */
#define BSR_FILL 0.5

enum { LIN_CSR = 0, LIN_DENSE = 1, LIN_BSR = 2, LIN_STORAGES = 3 };
static const char* const k_storage_name[LIN_STORAGES] = {"csr", "dense", "csr4"};
static const char* const k_choice_name[LIN_STORAGES] = {"sparse", "dense", "blocked"};

typedef struct linear_kernel {
    mp_isa isa;
    const char* name;
    mp_linear_fn fn;
    int kind;
} linear_kernel;

static const linear_kernel k_linear[] = {
#define MP_CONV_UKERNEL(isa, name, lanes, nv1, nv4, nva)
#define MP_LINEAR_UKERNEL(isa, name, kind) {isa, #name, mp_##name, kind},
#include "kernels/kernels.inc"
#undef MP_CONV_UKERNEL
#undef MP_LINEAR_UKERNEL
};

struct mp_linear_op {
    mp_linear_desc d;
    int storage;  /* LIN_CSR, LIN_DENSE or LIN_BSR */
    const linear_kernel* k;   /* small batch */
    const linear_kernel* kt;  /* transposed */
    const linear_kernel* ktr; /* x -> x^T */
    uint32_t* ptr;  /* CSR: per row; BSR: per group of 4 rows */
    uint32_t* idx;
    float* val;
    float* bias;    /* padded with zeros to a multiple of 4 rows */
    double fill;    /* nonzeros / weights of the BSR blocks (0: storage forced, or no
                     * nonzeros) */
    size_t rows_per_task;
    int64_t nnz;
    double density;
    char reason[96];
};

static const linear_kernel* pick(mp_isa isa, int kind)
{
    const linear_kernel* k = NULL;
    for (size_t i = 0; i < sizeof(k_linear) / sizeof(k_linear[0]); i++)
        if (k_linear[i].kind == kind && k_linear[i].isa <= isa && (!k || k_linear[i].isa >= k->isa))
            k = &k_linear[i];
    return k;
}

static mp_status check(const mp_linear_desc* d, const mp_weights* w)
{
    if (d->in_features < 1 || d->out_features < 1)
        return mp_set_error(MP_INVALID_ARGUMENT, "linear: %d -> %d features", d->in_features,
                            d->out_features);
    if (w->rows != d->out_features || w->cols != d->in_features)
        return mp_set_error(MP_SHAPE_MISMATCH, "linear: weights %dx%d, expected %dx%d", w->rows,
                            w->cols, d->out_features, d->in_features);
    if (d->act != MP_ACT_NONE && d->act != MP_ACT_RELU && d->act != MP_ACT_CLAMP)
        return mp_set_error(MP_INVALID_ARGUMENT, "linear: unknown activation %d", (int)d->act);
    if (w->dense != NULL) return MP_OK;
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
    if (w->indptr == NULL || (w->nnz > 0 && (w->indices == NULL || w->values == NULL)))
        return mp_set_error(MP_INVALID_ARGUMENT, "linear: neither dense nor CSR weights");
    if (w->indptr[0] != 0 || (int64_t)w->indptr[rows] != w->nnz)
        return mp_set_error(MP_INVALID_ARGUMENT, "linear: indptr does not span nnz");
    for (size_t r = 0; r < rows; r++) {
        if (w->indptr[r + 1] < w->indptr[r])
            return mp_set_error(MP_INVALID_ARGUMENT, "linear: indptr decreases at row %zu", r);
        for (uint32_t k = w->indptr[r]; k < w->indptr[r + 1]; k++)
            if (w->indices[k] >= cols || (k > w->indptr[r] && w->indices[k] <= w->indices[k - 1]))
                return mp_set_error(MP_INVALID_ARGUMENT, "linear: row %zu: bad column index", r);
    }
    return MP_OK;
}

/* W as dense rows x cols (zeros included). */
static mp_status pack_dense(mp_linear_op* op, const mp_weights* w)
{
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
    op->val = calloc(rows * cols, sizeof(float));
    if (op->val == NULL) return mp_set_error(MP_OUT_OF_MEMORY, "linear: out of memory");
    for (size_t r = 0; r < rows; r++) {
        if (w->dense != NULL) {
            memcpy(op->val + r * cols, w->dense + r * cols, cols * sizeof(float));
            continue;
        }
        for (uint32_t k = w->indptr[r]; k < w->indptr[r + 1]; k++)
            op->val[r * cols + w->indices[k]] = w->values[k];
    }
    return MP_OK;
}

/* W as CSR (nonzeros only) from either input storage. */
static mp_status pack_csr(mp_linear_op* op, const mp_weights* w)
{
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols, nnz = (size_t)op->nnz;
    op->ptr = malloc((rows + 1) * sizeof(uint32_t));
    op->idx = malloc((nnz ? nnz : 1) * sizeof(uint32_t));
    op->val = malloc((nnz ? nnz : 1) * sizeof(float));
    if (!op->ptr || !op->idx || !op->val)
        return mp_set_error(MP_OUT_OF_MEMORY, "linear: out of memory");
    size_t k = 0;
    for (size_t r = 0; r < rows; r++) {
        op->ptr[r] = (uint32_t)k;
        if (w->dense == NULL) {
            const size_t n = w->indptr[r + 1] - w->indptr[r];
            memcpy(op->idx + k, w->indices + w->indptr[r], n * sizeof(uint32_t));
            memcpy(op->val + k, w->values + w->indptr[r], n * sizeof(float));
            k += n;
            continue;
        }
        for (size_t j = 0; j < cols; j++)
            if (w->dense[r * cols + j] != 0.0f) op->idx[k] = (uint32_t)j, op->val[k++] = w->dense[r * cols + j];
    }
    op->ptr[rows] = (uint32_t)k;
    return MP_OK;
}

/* The union of the (sorted) column lists of CSR rows [r, r1), r1 - r <= 4, in order:
 * a merge of the rows' lists. Writes the columns to `out` (when not NULL); returns how
 * many there are. */
static size_t group_union(const uint32_t* ptr, const uint32_t* idx, size_t r, size_t r1,
                          uint32_t* out)
{
    uint32_t h[4], e[4];
    const size_t n = r1 - r;
    for (size_t i = 0; i < n; i++) h[i] = ptr[r + i], e[i] = ptr[r + i + 1];
    size_t u = 0;
    for (;;) {
        uint32_t c = UINT32_MAX;
        for (size_t i = 0; i < n; i++)
            if (h[i] < e[i] && idx[h[i]] < c) c = idx[h[i]];
        if (c == UINT32_MAX) return u;
        for (size_t i = 0; i < n; i++) h[i] += h[i] < e[i] && idx[h[i]] == c;
        if (out) out[u] = c;
        u++;
    }
}

/* Blocks of the BSR packing of w (4x1 blocks: the columns any of 4 consecutive rows uses),
 * counted from either input storage without packing it. */
static size_t count_blocks(const mp_weights* w)
{
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
    size_t nb = 0;
    for (size_t r = 0; r < rows; r += 4) {
        const size_t r1 = r + 4 < rows ? r + 4 : rows;
        if (w->dense == NULL) {
            nb += group_union(w->indptr, w->indices, r, r1, NULL);
            continue;
        }
        for (size_t j = 0; j < cols; j++) {
            int any = 0;
            for (size_t i = r; i < r1; i++) any |= w->dense[i * cols + j] != 0.0f;
            nb += (size_t)any;
        }
    }
    return nb;
}

/* op (packed CSR) -> BSR with 4x1 blocks: per group of 4 rows the union of their columns,
 * 4 values per block (zeros where a row lacks the column: 0 * x, so a NaN / Inf input
 * reaches every row of the group, as it does through torch's zero weights). */
static mp_status csr_to_bsr(mp_linear_op* op)
{
    const size_t rows = (size_t)op->d.out_features, groups = (rows + 3) / 4;
    size_t nb = 0;
    for (size_t r = 0; r < rows; r += 4)
        nb += group_union(op->ptr, op->idx, r, r + 4 < rows ? r + 4 : rows, NULL);
    uint32_t* ptr = malloc((groups + 1) * sizeof(uint32_t));
    uint32_t* idx = malloc((nb ? nb : 1) * sizeof(uint32_t));
    float* val = calloc(nb ? 4 * nb : 1, sizeof(float));
    if (!ptr || !idx || !val) {
        free(ptr), free(idx), free(val);
        return mp_set_error(MP_OUT_OF_MEMORY, "linear: out of memory");
    }
    size_t b0 = 0;
    for (size_t r = 0; r < rows; r += 4) {
        const size_t r1 = r + 4 < rows ? r + 4 : rows;
        ptr[r / 4] = (uint32_t)b0;
        const size_t u = group_union(op->ptr, op->idx, r, r1, idx + b0);
        for (size_t i = r; i < r1; i++) {  /* both column lists are sorted: one merge */
            size_t b = b0;
            for (uint32_t k = op->ptr[i]; k < op->ptr[i + 1]; k++) {
                while (idx[b] != op->idx[k]) b++;
                val[4 * b + (i - r)] = op->val[k];
            }
        }
        b0 += u;
    }
    ptr[groups] = (uint32_t)b0;
    free(op->ptr), free(op->idx), free(op->val);
    op->ptr = ptr, op->idx = idx, op->val = val;
    return MP_OK;
}

static void unpack(mp_linear_op* op)
{
    free(op->ptr);
    free(op->idx);
    free(op->val);
    op->ptr = op->idx = NULL;
    op->val = NULL;
}

static void set_kernels(mp_linear_op* op, mp_isa isa)
{
    static const int small[LIN_STORAGES] = {MP_LIN_CSR, MP_LIN_DENSE, MP_LIN_BSR};
    static const int large[LIN_STORAGES] = {MP_LIN_CSR_T, MP_LIN_DENSE_T, MP_LIN_BSR_T};
    op->k = pick(isa, small[op->storage]);
    op->kt = pick(isa, large[op->storage]);
    op->ktr = pick(isa, MP_LIN_TRANSPOSE);
}

/* Pack W in `storage` (the previous packing is freed) and pick its kernels. */
static mp_status pack(mp_linear_op* op, const mp_weights* w, int storage, mp_isa isa)
{
    unpack(op);
    op->storage = storage;
    set_kernels(op, isa);
    if (storage == LIN_DENSE) return pack_dense(op, w);
    mp_status st = pack_csr(op, w);
    return st == MP_OK && storage == LIN_BSR ? csr_to_bsr(op) : st;
}

static int64_t count_nnz(const mp_weights* w)
{
    if (w->dense == NULL) return w->nnz;
    int64_t n = 0;
    for (size_t i = 0; i < (size_t)w->rows * (size_t)w->cols; i++) n += w->dense[i] != 0.0f;
    return n;
}

static void run_rows(const mp_linear_op* op, size_t batch, const float* x, size_t ldx, float* y,
                     size_t r0, size_t r1, int transposed)
{
    const mp_linear_args a = {(size_t)op->d.out_features, (size_t)op->d.in_features, batch,
                              op->ptr, op->idx, op->val, op->bias, x, ldx, y,
                              (size_t)op->d.out_features, r0, r1, op->d.act_min, op->d.act_max};
    (transposed ? op->kt : op->k)->fn(&a);
}

static size_t padded_batch(size_t batch)
{
    return (batch + 15) & ~(size_t)15;
}

/* A sparse storage stays unless dense is this much faster (see tune). */
#define SPARSE_MARGIN 1.1
/* The timing run uses the op's rows per run up to this many (the kernels' relative speed
 * settles well before; a sequence of thousands of rows would make loading slow). */
#define TUNE_MAX_ROWS 64

/* Best of 5 runs of the current packing on n rows (x^T included at n >= MP_LINEAR_T_BATCH),
 * in seconds. */
static double time_rows(const mp_linear_op* op, size_t n, const float* x, void* xt, float* y)
{
    double best = INFINITY;
    for (int i = 0; i < 6; i++) {
        const double t0 = mp_now_seconds();
        if (n < MP_LINEAR_T_BATCH)
            run_rows(op, n, x, (size_t)op->d.in_features, y, 0, (size_t)op->d.out_features, 0);
        else
            mp_linear_prepare(op, n, x, xt),
                run_rows(op, n, mp_align64_const(xt), padded_batch(n), y, 0, (size_t)op->d.out_features, 1);
        const double dt = mp_now_seconds() - t0;
        if (i > 0 && dt < best) best = dt;
    }
    return best;
}

/* Time CSR, BSR (when its blocks are full enough) and dense on the rows of a run (desc.rows,
 * at most TUNE_MAX_ROWS); keep the fastest. op is packed CSR on entry. */
static mp_status tune(mp_linear_op* op, const mp_weights* w, mp_isa isa)
{
    const size_t in = (size_t)op->d.in_features, outn = (size_t)op->d.out_features;
    const size_t n = op->d.rows < 1 ? 1 : op->d.rows > TUNE_MAX_ROWS ? TUNE_MAX_ROWS : (size_t)op->d.rows;
    float* x = malloc(n * in * sizeof(float));
    float* y = malloc(n * outn * sizeof(float));
    void* xt = malloc(mp_linear_scratch_bytes(op, n) + 64);
    double t[LIN_STORAGES] = {INFINITY, INFINITY, INFINITY};
    mp_status st = MP_OK;
    if (x == NULL || y == NULL || xt == NULL) {
        st = mp_set_error(MP_OUT_OF_MEMORY, "linear: out of memory (tuning)");
        goto done;
    }
    for (size_t i = 0; i < n * in; i++) x[i] = (float)(i % 7) * 0.25f;
    t[LIN_CSR] = time_rows(op, n, x, xt, y);
    static const int order[2] = {LIN_BSR, LIN_DENSE};
    for (int i = 0; i < 2 && st == MP_OK; i++) {
        if (order[i] == LIN_BSR && op->fill < BSR_FILL) continue;
        st = pack(op, w, order[i], isa);
        if (st == MP_OK) t[order[i]] = time_rows(op, n, x, xt, y);
    }
    if (st != MP_OK) goto done;
    /* timed with the weights in cache; in a whole model they mostly are not, and the CSR
     * arrays are the smaller stream: dense must beat CSR by SPARSE_MARGIN (full BSR
     * blocks are a larger stream than dense: no margin) */
    const int sp = t[LIN_BSR] < t[LIN_CSR] ? LIN_BSR : LIN_CSR;
    const double margin = sp == LIN_CSR ? SPARSE_MARGIN : 1.0;
    const int best = t[LIN_DENSE] * margin < t[sp] ? LIN_DENSE : sp;
    int next = -1;
    for (int m = 0; m < LIN_STORAGES; m++)
        if (m != best && isfinite(t[m]) && (next < 0 || t[m] < t[next])) next = m;
    if (best != LIN_DENSE) st = pack(op, w, best, isa);
    snprintf(op->reason, sizeof(op->reason), "tuned %s %.1fus %s %s %.1fus%s", k_choice_name[best],
             t[best] * 1e6, t[best] < t[next] ? "<" : ">=", k_choice_name[next], t[next] * 1e6,
             n > 1 ? " on the rows of a run" : "");
done:
    free(x);
    free(y);
    free(xt);
    return st;
}

static mp_status build(mp_linear_op* op, const mp_weights* w, uint32_t flags, mp_isa isa)
{
    op->nnz = count_nnz(w);
    op->density = (double)op->nnz / ((double)w->rows * (double)w->cols);
    for (int32_t r = 0; r < w->rows; r++) op->bias[r] = w->bias ? w->bias[r] : 0.0f;
    const int forced = (flags & (MP_KERNEL_DENSE | MP_KERNEL_SPARSE)) != 0;
    if (!forced && op->nnz > 0)
        op->fill = (double)op->nnz / (4.0 * (double)count_blocks(w));
    int storage = op->density >= DENSE_DENSITY ? LIN_DENSE : op->fill >= BSR_FILL ? LIN_BSR : LIN_CSR;
    if (forced) {
        storage = (flags & MP_KERNEL_DENSE) ? LIN_DENSE : LIN_CSR;
        snprintf(op->reason, sizeof(op->reason), "forced %s", k_choice_name[storage]);
    } else if (!(flags & MP_KERNEL_NO_TUNE)) {
        mp_status st = pack(op, w, LIN_CSR, isa);
        return st == MP_OK ? tune(op, w, isa) : st;
    } else {
        snprintf(op->reason, sizeof(op->reason), "model %s (density %.2f, block fill %.2f)",
                 k_choice_name[storage], op->density, op->fill);
    }
    return pack(op, w, storage, isa);
}

mp_status mp_linear_create_isa(const mp_linear_desc* desc, const mp_weights* w,
                               uint32_t flags, mp_isa isa, mp_linear_op** out)
{
    if (desc == NULL || w == NULL || out == NULL)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_linear_create: NULL argument");
    *out = NULL;
    if ((flags & MP_KERNEL_DENSE) && (flags & MP_KERNEL_SPARSE))
        return mp_set_error(MP_INVALID_ARGUMENT, "linear: dense and sparse both forced");
    mp_status st = check(desc, w);
    if (st != MP_OK) return st;
    mp_linear_op* op = calloc(1, sizeof(*op));
    if (op == NULL) return mp_set_error(MP_OUT_OF_MEMORY, "linear: out of memory");
    op->d = *desc;
    if (desc->act == MP_ACT_NONE) op->d.act_min = -INFINITY, op->d.act_max = INFINITY;
    if (desc->act == MP_ACT_RELU) op->d.act_min = 0.0f, op->d.act_max = INFINITY;
    if (flags & MP_KERNEL_PORTABLE) isa = MP_ISA_SCALAR;
    const size_t rows = (size_t)desc->out_features;
    const size_t rpt = (rows + 7) / 8;
    op->rows_per_task = rpt < 4 ? 4 : (rpt + 3) & ~(size_t)3;
    op->bias = calloc((rows + 3) & ~(size_t)3, sizeof(float));
    st = op->bias ? build(op, w, flags, isa) : mp_set_error(MP_OUT_OF_MEMORY, "linear: out of memory");
    if (st != MP_OK) {
        mp_linear_free(op);
        return st;
    }
    *out = op;
    return MP_OK;
}

mp_status mp_linear_create(const mp_linear_desc* desc, const mp_weights* w, uint32_t flags,
                           mp_linear_op** out)
{
    return mp_linear_create_isa(desc, w, flags, mp_cpu_best_isa(), out);
}


size_t mp_linear_scratch_bytes(const mp_linear_op* op, size_t batch)
{
    if (batch < MP_LINEAR_T_BATCH) return 0;
    return padded_batch(batch) * (size_t)op->d.in_features * sizeof(float) + 64;
}


/* x (batch, cols) -> x^T (cols, ld), zero-padded to ld (a multiple of 16). */
void mp_linear_prepare(const mp_linear_op* op, size_t batch, const float* in, void* scratch)
{
    if (batch < MP_LINEAR_T_BATCH) return;
    const size_t cols = (size_t)op->d.in_features;
    const mp_linear_args a = {cols, cols, batch, NULL, NULL, NULL, NULL, in, cols,
                              mp_align64(scratch), padded_batch(batch), 0, cols, 0.0f, 0.0f};
    op->ktr->fn(&a);
}

size_t mp_linear_num_tasks(const mp_linear_op* op, size_t batch)
{
    (void)batch;
    return ((size_t)op->d.out_features + op->rows_per_task - 1) / op->rows_per_task;
}

void mp_linear_compute(const mp_linear_op* op, size_t batch, const float* in,
                       const void* scratch, float* out, size_t task_begin, size_t task_end)
{
    const size_t rows = (size_t)op->d.out_features;
    size_t r0 = task_begin * op->rows_per_task, r1 = task_end * op->rows_per_task;
    if (r1 > rows) r1 = rows;
    if (r0 >= r1) return;
    if (batch < MP_LINEAR_T_BATCH)
        run_rows(op, batch, in, (size_t)op->d.in_features, out, r0, r1, 0);
    else
        run_rows(op, batch, mp_align64_const(scratch), padded_batch(batch), out, r0, r1, 1);
}

void mp_linear_describe(const mp_linear_op* op, size_t batch, char* buf, size_t size)
{
    if (buf == NULL || size == 0) return;
    const linear_kernel* k = batch < MP_LINEAR_T_BATCH ? op->k : op->kt;
    snprintf(buf, size, "%s %s density=%.3f %s", k->name, k_storage_name[op->storage],
             op->density, op->reason);
}

void mp_linear_free(mp_linear_op* op)
{
    if (op == NULL) return;
    unpack(op);
    free(op->bias);
    free(op);
}
