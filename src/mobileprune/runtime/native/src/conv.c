/* Convolution operator (1-D / 2-D, stride, padding, dilation, groups, depthwise): direct
 * sparse convolution, seed 003 Algorithm 2 without im2col, Y[row, :] += value * X[col, :].
 *
 * prepare copies each image once into a zero-padded buffer; a stride s > 1 becomes stride
 * 1 by a polyphase split (padded row h goes to phase h % s, row h / s; columns alike), so
 * the row X[col, :] of weight column col = (c, i, j) is the buffer shifted by one flat
 * offset: output (y, x) reads buf[off(col) + y * Wq + x]. Output pixels of a channel are
 * cut into vectors of `lanes` pixels, inside output rows or along the flat buffer position
 * (whichever needs fewer vectors; lanes past a row end read garbage and are not stored),
 * and vectors into pixel blocks held in registers by the kernel (kernels/kernels.h).
 * Flat vectors are contiguous: the kernel addresses a whole block from one base register.
 * When the input rows a pixel block reads over all channels exceed L1, the input channels
 * are cut in chunks (each row then has one block per chunk; partial sums wait in the
 * output, the activation is applied after the last chunk).
 * Depthwise convs (one input channel per group) pad inside compute instead: each task
 * owns whole groups, pads just their channels into its part of the scratch and uses them
 * while they are in cache (a separate prepare pass streamed the whole buffer through
 * memory: 96x112x112 stride 2, 1.3 ms of padding for 0.36 ms of arithmetic).
 *
 * Weights are packed at create as row blocks: 1 row with its own nonzeros, or 4 rows of one
 * group sharing the union of their columns (zero-filled; one input load feeds 4 FMAs).
 * Three packings compete: sparse (1-row blocks), blocked (4-row blocks where they are
 * full enough) and dense (4-row blocks of every column: the dense kernel is the fully
 * filled blocked one). A cost model ranks them and, unless MP_KERNEL_NO_TUNE, a short
 * interleaved timing run on the layer keeps the fastest.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

typedef struct conv_kernel {
    mp_isa isa;
    const char* name;
    mp_spconv_fn fn;
    int lanes, nv1, nv4, nva;
} conv_kernel;

static const conv_kernel k_conv[] = {
#define MP_CONV_UKERNEL(isa, name, lanes, nv1, nv4, nva) {isa, #name, mp_##name, lanes, nv1, nv4, nva},
#define MP_LINEAR_UKERNEL(isa, name, kind)
#include "kernels/kernels.inc"
#undef MP_CONV_UKERNEL
#undef MP_LINEAR_UKERNEL
};

/* PACK_TAPS (depthwise only): each nonzero is a tap (i, j) of its channel, applied to the
 * unpadded input plane with clipped ranges: no padded copy, work in proportion to the
 * nonzeros (a 3x3 depthwise at 90 % has about one tap per channel). */
/* PACK_SHIFT: the sparse pack in shift classes (kernels.h: aligned loads), on kernels that
 * have them; it competes with the plain one (timed, or by the cost model). */
enum { PACK_SPARSE = 0, PACK_BLOCKED = 1, PACK_DENSE = 2, PACK_TAPS = 3, PACK_SHIFT = 4,
       PACK_COUNT = 5 };
static const char* const k_pack_name[PACK_COUNT] = {"sparse", "blocked", "dense", "taps", "shift"};
static const char* const k_storage[PACK_COUNT] = {"csr", "csr4", "dense", "taps", "csr"};

/* Bytes of input a pixel block may read per channel chunk (L1 is 32-48 KB), and the
 * fewest nonzeros a row should have per chunk on average. */
#define L1_INPUT_BUDGET (20 * 1024)
#define MIN_CHUNK_NNZ 30.0
/* Shift classes pay when a class has this many nonzeros of a row block on average; their
 * aligned loads run as fast from L2 as from L1 (FER-2013 CNN on an AVX-512 Xeon: the
 * 128-channel layers 1.2x faster in one chunk than in four), so they chunk for L2 only. */
#define MIN_CLASS_NNZ 2.5
#define SHIFT_INPUT_BUDGET (512 * 1024)
/* A 4-row group goes blocked when its nonzeros fill at least this much of the block. */
#define BLOCK_FILL 0.5
/* Target tasks per image (threads take any split of them). */
#define TASKS_PER_IMAGE 8

typedef struct conv_pack {
    mp_rowblk* blocks;
    int32_t* off;
    float* val;
    size_t nblocks, noff, nval;
    size_t nv, npb;        /* vectors per pixel block, pixel blocks */
    size_t nchunks, cb;    /* input channel chunks of cb channels */
    size_t rchunks, pchunks;
    size_t* rchunk;        /* rchunks + 1 block indices */
    double cost;           /* cost model: cycles per pixel vector */
    int taps;              /* PACK_TAPS: off holds columns, compute runs taps_row */
    int shift;             /* PACK_SHIFT: 12 vectors per block, classes built */
    int32_t* cseg;         /* shift classes (mp_spconv_args): (shift, count) pairs, or NULL */
    int32_t* cbeg;         /* nblocks + 1 first segments */
    size_t need_floats;    /* buffer floats per image its aligned loads reach (0: as built) */
} conv_pack;

struct mp_conv_op {
    mp_conv_desc d;
    const conv_kernel* k;
    int32_t hq, wq, phases;
    size_t chan, buf_floats, plane;
    mp_pixvec* vec;
    size_t nvec;
    size_t vec_end; /* the largest vec[v].in + lanes: how far a pixel block's loads reach */
    size_t pstride; /* partial sums: floats per output row (vec_end, rounded up) */
    int contig; /* flat vectors: vec[v].in = v * lanes */
    int fused;  /* depthwise: each task pads its own channels inside compute */
    int direct; /* no padding, stride 1, every read inside the input: no buffer, no copy */
    /* Output channel c of image n starts at out + n * out_image + c * out_plane: the dense
     * NCHW tensor, or (chained) the padded input buffer of the next conv (mp_conv_chain). */
    size_t out_plane, out_image;
    int chained;   /* writes into the next conv's padded input buffer */
    int prepadded; /* the previous conv wrote this one's input: prepare zeroes the padding only */
    float* bias;
    conv_pack pack;
    int mode;
    int64_t nnz;
    double density;
    char reason[96];
};

/* CSR view of the weights (nonzeros only), owned or borrowed. */
typedef struct csr_view {
    const uint32_t* ptr;
    const uint32_t* idx;
    const float* val;
    uint32_t* own_ptr;
    uint32_t* own_idx;
    float* own_val;
} csr_view;

static void csr_free(csr_view* c)
{
    free(c->own_ptr);
    free(c->own_idx);
    free(c->own_val);
}

static mp_status csr_from(const mp_weights* w, csr_view* c)
{
    memset(c, 0, sizeof(*c));
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
    if (w->dense == NULL) {
        if (w->indptr == NULL || (w->nnz > 0 && (w->indices == NULL || w->values == NULL)))
            return mp_set_error(MP_INVALID_ARGUMENT, "weights: neither dense nor CSR arrays");
        if (w->indptr[0] != 0 || (int64_t)w->indptr[rows] != w->nnz)
            return mp_set_error(MP_INVALID_ARGUMENT, "weights: indptr does not span nnz");
        for (size_t r = 0; r < rows; r++)
            for (uint32_t k = w->indptr[r]; k < w->indptr[r + 1]; k++)
                if (w->indices[k] >= cols || (k > w->indptr[r] && w->indices[k] <= w->indices[k - 1]))
                    return mp_set_error(MP_INVALID_ARGUMENT, "weights: row %zu: bad column index", r);
        c->ptr = w->indptr, c->idx = w->indices, c->val = w->values;
        return MP_OK;
    }
    size_t nnz = 0;
    for (size_t i = 0; i < rows * cols; i++) nnz += w->dense[i] != 0.0f;
    c->own_ptr = malloc((rows + 1) * sizeof(uint32_t));
    c->own_idx = malloc((nnz ? nnz : 1) * sizeof(uint32_t));
    c->own_val = malloc((nnz ? nnz : 1) * sizeof(float));
    if (!c->own_ptr || !c->own_idx || !c->own_val) {
        csr_free(c);
        return mp_set_error(MP_OUT_OF_MEMORY, "weights: out of memory converting to CSR");
    }
    size_t k = 0;
    for (size_t r = 0; r < rows; r++) {
        c->own_ptr[r] = (uint32_t)k;
        for (size_t j = 0; j < cols; j++)
            if (w->dense[r * cols + j] != 0.0f) {
                c->own_idx[k] = (uint32_t)j;
                c->own_val[k++] = w->dense[r * cols + j];
            }
    }
    c->own_ptr[rows] = (uint32_t)k;
    c->ptr = c->own_ptr, c->idx = c->own_idx, c->val = c->own_val;
    return MP_OK;
}

static mp_status check_desc(const mp_conv_desc* d, const mp_weights* w)
{
    const int32_t v[] = {d->in_channels, d->out_channels, d->groups, d->in_h, d->in_w,
                         d->out_h, d->out_w, d->kernel_h, d->kernel_w, d->stride_h,
                         d->stride_w, d->dilation_h, d->dilation_w};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        if (v[i] < 1) return mp_set_error(MP_INVALID_ARGUMENT, "conv: size or stride %zu < 1", i);
    if (d->pad_top < 0 || d->pad_bottom < 0 || d->pad_left < 0 || d->pad_right < 0)
        return mp_set_error(MP_INVALID_ARGUMENT, "conv: negative padding");
    if (d->in_channels % d->groups || d->out_channels % d->groups)
        return mp_set_error(MP_INVALID_ARGUMENT, "conv: groups %d do not divide channels %d -> %d",
                            d->groups, d->in_channels, d->out_channels);
    const int64_t hp = (int64_t)d->in_h + d->pad_top + d->pad_bottom;
    const int64_t wp = (int64_t)d->in_w + d->pad_left + d->pad_right;
    const int64_t eh = (int64_t)d->dilation_h * (d->kernel_h - 1) + 1;
    const int64_t ew = (int64_t)d->dilation_w * (d->kernel_w - 1) + 1;
    if (hp < eh || wp < ew || (hp - eh) / d->stride_h + 1 != d->out_h ||
        (wp - ew) / d->stride_w + 1 != d->out_w)
        return mp_set_error(MP_SHAPE_MISMATCH, "conv: output %dx%d does not follow from the input",
                            d->out_h, d->out_w);
    const int64_t cols = (int64_t)(d->in_channels / d->groups) * d->kernel_h * d->kernel_w;
    if (w->rows != d->out_channels || w->cols != cols)
        return mp_set_error(MP_SHAPE_MISMATCH, "conv: weights %dx%d, expected %dx%lld", w->rows,
                            w->cols, d->out_channels, (long long)cols);
    if (d->act != MP_ACT_NONE && d->act != MP_ACT_RELU && d->act != MP_ACT_CLAMP)
        return mp_set_error(MP_INVALID_ARGUMENT, "conv: unknown activation %d", (int)d->act);
    return MP_OK;
}

/* Buffer geometry; the largest flat offset must fit an int32. */
static mp_status geometry(mp_conv_op* op)
{
    const mp_conv_desc* d = &op->d;
    const int64_t hp = (int64_t)d->in_h + d->pad_top + d->pad_bottom;
    const int64_t wp = (int64_t)d->in_w + d->pad_left + d->pad_right;
    op->hq = (int32_t)((hp + d->stride_h - 1) / d->stride_h);
    op->wq = (int32_t)((wp + d->stride_w - 1) / d->stride_w);
    op->phases = d->stride_h * d->stride_w;
    int64_t chan = (int64_t)op->phases * op->hq * op->wq;
    /* with a padded buffer, each channel plane starts on a 64-byte boundary, so that the
     * shift class of a weight (its offset mod 16) depends on its tap only: fewer classes */
    if (op->phases > 1 || d->pad_top || d->pad_bottom || d->pad_left || d->pad_right)
        chan = (chan + 15) & ~(int64_t)15;
    const int64_t total = chan * d->in_channels + 64;
    if (total > ((int64_t)1 << 30) || (int64_t)d->out_h * d->out_w > ((int64_t)1 << 30))
        return mp_set_error(MP_UNSUPPORTED_OP, "conv: input buffer of %lld floats is too large",
                            (long long)total);
    op->chan = (size_t)chan;
    op->buf_floats = ((size_t)total + 15) & ~(size_t)15;
    op->plane = (size_t)d->out_h * (size_t)d->out_w;
    return MP_OK;
}

/* Input offset of weight column `col` for output rows of group `g`. */
static int32_t col_offset(const mp_conv_op* op, int32_t g, int32_t col)
{
    const mp_conv_desc* d = &op->d;
    const int32_t j = col % d->kernel_w, i = (col / d->kernel_w) % d->kernel_h;
    const int32_t c = col / (d->kernel_w * d->kernel_h) + g * (d->in_channels / d->groups);
    const int32_t di = i * d->dilation_h, dj = j * d->dilation_w;
    const int32_t phase = (di % d->stride_h) * d->stride_w + dj % d->stride_w;
    return (int32_t)((size_t)c * op->chan) + (phase * op->hq + di / d->stride_h) * op->wq +
           dj / d->stride_w;
}

static size_t in_floats(const mp_conv_op* op)
{
    return (size_t)op->d.in_channels * (size_t)op->d.in_h * (size_t)op->d.in_w;
}

/* Without padding and stride, the padded buffer of an image would be a copy of its input
 * (1x1 convs, valid convs): the kernel reads the input itself when every load of every
 * vector (the largest column offset plus the end of the last vector) stays inside it. */
static int reads_input_directly(const mp_conv_op* op)
{
    const mp_conv_desc* d = &op->d;
    if (op->fused || op->phases != 1 || d->pad_top || d->pad_bottom || d->pad_left || d->pad_right)
        return 0;
    const int32_t cols = (d->in_channels / d->groups) * d->kernel_h * d->kernel_w;
    return (size_t)col_offset(op, d->groups - 1, cols - 1) + op->vec_end <= in_floats(op);
}

/* Pixel vectors: inside output rows, or along the flat buffer position. Flat vectors are
 * contiguous (the kernel addresses them from one base register, so blocks may be larger):
 * they win unless they need over 6% more vectors. */
static mp_status build_vectors(mp_conv_op* op, int lanes)
{
    const int64_t ho = op->d.out_h, wo = op->d.out_w, wq = op->wq;
    const int64_t n_rows = ho * ((wo + lanes - 1) / lanes);
    const int64_t len = (ho - 1) * wq + wo;
    const int64_t n_flat = (len + lanes - 1) / lanes;
    const int flat = n_flat * 100 <= n_rows * 106;
    op->vec = malloc((size_t)(flat ? n_flat : n_rows) * sizeof(mp_pixvec));
    if (op->vec == NULL) return mp_set_error(MP_OUT_OF_MEMORY, "conv: out of memory (vectors)");
    const uint32_t full = lanes == 32 ? 0xFFFFFFFFu : (1u << lanes) - 1u;
    size_t n = 0;
    for (int64_t v = 0; v < (flat ? n_flat : n_rows); v++) {
        mp_pixvec pv = {0, -1, 0u, MP_VEC_FULL};
        for (int l = 0; l < lanes; l++) {
            int64_t y, x;
            if (flat) {
                const int64_t t = v * lanes + l;
                y = t / wq, x = t % wq;
                pv.in = (int32_t)(v * lanes);
            } else {
                const int64_t per_row = (wo + lanes - 1) / lanes;
                y = v / per_row, x = (v % per_row) * lanes + l;
                pv.in = (int32_t)(y * wq + (v % per_row) * lanes);
            }
            if (y >= ho || x >= wo) continue;
            if (pv.out < 0) pv.out = (int32_t)(y * wo + x);
            pv.mask |= 1u << l;
        }
        if (pv.mask == 0 && !flat) continue;
        if (pv.out < 0) pv.out = 0;
        pv.kind = pv.mask == full ? MP_VEC_FULL
                  : (pv.mask & (pv.mask + 1u)) == 0 ? MP_VEC_PREFIX : MP_VEC_MASKED;
        op->vec[n++] = pv;
    }
    op->nvec = n;
    op->contig = flat;
    op->vec_end = 0;
    for (size_t v = 0; v < n; v++)
        if ((size_t)op->vec[v].in + (size_t)lanes > op->vec_end)
            op->vec_end = (size_t)op->vec[v].in + (size_t)lanes;
    op->pstride = (op->vec_end + 15) & ~(size_t)15;
    return MP_OK;
}

/* Scratch of the packer: a 0/1 column mark and 4 dense rows of values. */
typedef struct packer {
    const mp_conv_op* op;
    const csr_view* c;
    int mode, write;
    int32_t cols;
    uint8_t* mark;
    float* rowval; /* 4 x cols, zero between uses */
} packer;

static void scatter(packer* pk, int32_t r, int32_t nrows, int on)
{
    for (int32_t q = 0; q < nrows; q++)
        for (uint32_t k = pk->c->ptr[r + q]; k < pk->c->ptr[r + q + 1]; k++) {
            const uint32_t j = pk->c->idx[k];
            pk->mark[j] = (uint8_t)on;
            pk->rowval[(size_t)q * (size_t)pk->cols + j] = on ? pk->c->val[k] : 0.0f;
        }
}

/* Rows [r, r + mr) of group g as one block over the marked columns (all: dense). */
static void emit_block(packer* pk, conv_pack* p, int32_t g, int32_t r, int32_t mr, int all)
{
    size_t count = 0;
    for (int32_t j = 0; j < pk->cols; j++) {
        if (!all && !pk->mark[j]) continue;
        if (pk->write) {
            p->off[p->noff + count] = pk->mode == PACK_TAPS ? j : col_offset(pk->op, g, j);
            for (int32_t q = 0; q < mr; q++)
                p->val[p->nval + count * (size_t)mr + (size_t)q] =
                    pk->rowval[(size_t)q * (size_t)pk->cols + (size_t)j];
        }
        count++;
    }
    if (pk->write)
        p->blocks[p->nblocks] = (mp_rowblk){r, mr, (int32_t)count, MP_BLK_FIRST | MP_BLK_LAST,
                                           (int64_t)p->noff,
                                           (int64_t)p->nval};
    p->nblocks++;
    p->noff += count;
    p->nval += count * (size_t)mr;
    if (pk->mode == PACK_TAPS) /* a strided tap is a scalar loop */
        p->cost += (pk->op->d.stride_w > 1 ? 4.0 : 1.0) * (double)count + 1.0;
    else
        p->cost += (mr == 4 ? 2.0 : 1.0) * (double)count + 4.0;
}

/* One pass over the rows: counts (write 0) or fills (write 1) the pack. */
static void pack_pass(packer* pk, conv_pack* p)
{
    const mp_conv_desc* d = &pk->op->d;
    const int32_t og = d->out_channels / d->groups;
    p->nblocks = p->noff = p->nval = 0;
    p->cost = 0.0;
    for (int32_t g = 0; g < d->groups; g++) {
        for (int32_t r = g * og; r < (g + 1) * og;) {
            int four = 0;
            if (pk->mode != PACK_SPARSE && pk->mode != PACK_SHIFT && pk->mode != PACK_TAPS &&
                (g + 1) * og - r >= 4) {
                four = pk->mode == PACK_DENSE;
                if (!four) {
                    const size_t s = pk->c->ptr[r + 4] - pk->c->ptr[r];
                    scatter(pk, r, 4, 1);
                    size_t u = 0;
                    for (int32_t j = 0; j < pk->cols; j++) u += pk->mark[j];
                    four = u > 0 && (double)s >= BLOCK_FILL * 4.0 * (double)u;
                    scatter(pk, r, 4, 0);
                }
            }
            const int32_t mr = four ? 4 : 1;
            scatter(pk, r, mr, 1);
            emit_block(pk, p, g, r, mr, pk->mode == PACK_DENSE);
            scatter(pk, r, mr, 0);
            r += mr;
        }
    }
}

static void pack_free(conv_pack* p)
{
    free(p->blocks);
    free(p->off);
    free(p->val);
    free(p->rchunk);
    free(p->cseg);
    free(p->cbeg);
    memset(p, 0, sizeof(*p));
}

/* Depthwise: row chunks end on group boundaries (a task pads the channels of its groups). */
static mp_status split_groups(const mp_conv_op* op, conv_pack* p)
{
    const int32_t g = op->d.groups, og = op->d.out_channels / g;
    size_t b = 0;
    for (size_t i = 0; i < p->rchunks; i++) {
        const int32_t first_row = (int32_t)((size_t)g * i / p->rchunks) * og;
        while (b < p->nblocks && p->blocks[b].row < first_row) b++;
        p->rchunk[i] = b;
    }
    p->rchunk[p->rchunks] = p->nblocks;
    return MP_OK;
}

/* Tasks: pixel chunks x row chunks of about equal cost. */
static mp_status split_tasks(const mp_conv_op* op, conv_pack* p)
{
    int has4 = 0;
    for (size_t b = 0; b < p->nblocks; b++) has4 |= p->blocks[b].mr == 4;
    const int nv1 = p->shift ? op->k->nva
                    : op->contig || op->k->nv1 < MP_MAX_NV ? op->k->nv1 : MP_MAX_NV;
    p->nv = (size_t)(has4 ? op->k->nv4 : nv1);
    p->npb = (op->nvec + p->nv - 1) / p->nv;
    p->pchunks = p->npb < TASKS_PER_IMAGE ? p->npb : TASKS_PER_IMAGE;
    size_t rc = (TASKS_PER_IMAGE + p->pchunks - 1) / p->pchunks;
    p->rchunks = rc < p->nblocks ? rc : (p->nblocks ? p->nblocks : 1);
    if (op->fused) {
        p->pchunks = 1;
        p->rchunks = (size_t)op->d.groups < TASKS_PER_IMAGE ? (size_t)op->d.groups : TASKS_PER_IMAGE;
    }
    p->rchunk = malloc((p->rchunks + 1) * sizeof(size_t));
    if (p->rchunk == NULL) return mp_set_error(MP_OUT_OF_MEMORY, "conv: out of memory (tasks)");
    if (op->fused) return split_groups(op, p);
    double acc = 0.0;
    size_t b = 0;
    p->rchunk[0] = 0;
    for (size_t i = 1; i < p->rchunks; i++) {
        const double goal = p->cost * (double)i / (double)p->rchunks;
        while (b < p->nblocks && acc < goal) {
            const mp_rowblk* rb = &p->blocks[b++];
            acc += (rb->mr == 4 ? 2.0 : 1.0) * (double)rb->count + 4.0;
        }
        p->rchunk[i] = b;
    }
    p->rchunk[p->rchunks] = p->nblocks;
    return MP_OK;
}

/* Channels per chunk: the input rows a pixel block reads for a chunk fit L1_INPUT_BUDGET
 * (SHIFT_INPUT_BUDGET with shift classes), unless that leaves rows with fewer than
 * MIN_CHUNK_NNZ nonzeros per chunk. */
static void chunk_channels(const mp_conv_op* op, conv_pack* p)
{
    const mp_conv_desc* d = &op->d;
    const size_t cg = (size_t)(d->in_channels / d->groups);
    const size_t lanes = (size_t)op->k->lanes, wq = (size_t)op->wq;
    const size_t rows = (p->nv * lanes + wq - 1) / wq + 1 +
                        (size_t)((d->kernel_h - 1) * d->dilation_h / d->stride_h);
    const size_t slice = (size_t)op->phases * rows * wq * sizeof(float);
    size_t cb = (p->shift ? SHIFT_INPUT_BUDGET : L1_INPUT_BUDGET) / slice;
    size_t units_rows = 0;
    for (size_t b = 0; b < p->nblocks; b++) units_rows += (size_t)p->blocks[b].mr;
    const double per_channel = (double)p->nval / (double)(units_rows ? units_rows : 1) / (double)cg;
    const double need = per_channel > 0.0 ? ceil(MIN_CHUNK_NNZ / per_channel) : (double)cg;
    if ((double)cb < need) cb = need < (double)cg ? (size_t)need : cg;
    if (cb < 1) cb = 1;
    if (cb > cg) cb = cg;
    p->nchunks = (cg + cb - 1) / cb;
    p->cb = (cg + p->nchunks - 1) / p->nchunks;
}

/* Segments of unit `u` per chunk: writes the nonzero index where each chunk starts. */
static void unit_bounds(const mp_conv_op* op, const conv_pack* p, const mp_rowblk* u,
                        size_t* start)
{
    const int32_t og = op->d.out_channels / op->d.groups;
    const size_t cg = (size_t)(op->d.in_channels / op->d.groups);
    const size_t g = (size_t)(u->row / og);
    size_t k = 0;
    for (size_t cc = 0; cc < p->nchunks; cc++) {
        start[cc] = k;
        while (k < (size_t)u->count &&
               ((size_t)p->off[u->nz + (int64_t)k] / op->chan - g * cg) / p->cb == cc)
            k++;
    }
    start[p->nchunks] = (size_t)u->count;
}

/* Rebuild the block list as (row chunk, channel chunk, unit) segments. */
static mp_status segment(const mp_conv_op* op, conv_pack* p)
{
    chunk_channels(op, p);
    if (p->nchunks == 1) return MP_OK;
    const size_t nc = p->nchunks;
    size_t* start = malloc((nc + 1) * sizeof(size_t));
    mp_rowblk* seg = malloc(p->nblocks * nc * sizeof(mp_rowblk));
    if (start == NULL || seg == NULL) {
        free(start), free(seg);
        return mp_set_error(MP_OUT_OF_MEMORY, "conv: out of memory (chunks)");
    }
    size_t n = 0;
    for (size_t rc = 0; rc < p->rchunks; rc++) {
        const size_t u0 = p->rchunk[rc], u1 = p->rchunk[rc + 1];
        p->rchunk[rc] = n;
        for (size_t cc = 0; cc < nc; cc++)
            for (size_t u = u0; u < u1; u++) {
                const mp_rowblk* b = &p->blocks[u];
                unit_bounds(op, p, b, start);
                const int32_t flags = (cc == 0 ? MP_BLK_FIRST : 0) | (cc + 1 == nc ? MP_BLK_LAST : 0);
                const size_t cnt = start[cc + 1] - start[cc];
                if (cnt == 0 && flags == 0) continue;
                seg[n++] = (mp_rowblk){b->row, b->mr, (int32_t)cnt, flags,
                                       b->nz + (int64_t)start[cc],
                                       b->val + (int64_t)(start[cc] * (size_t)b->mr)};
            }
    }
    p->rchunk[p->rchunks] = n;
    free(start);
    free(p->blocks);
    p->blocks = seg;
    p->nblocks = n;
    return MP_OK;
}

static mp_status shift_classes(const mp_conv_op* op, conv_pack* p);

static mp_status make_pack(const mp_conv_op* op, const csr_view* c, int mode, conv_pack* p)
{
    memset(p, 0, sizeof(*p));
    if (mode == PACK_SHIFT && !(op->k->nva > 0 && op->contig && !op->direct && !op->fused &&
                                op->k->lanes == 16))
        return MP_OK; /* no such pack here */
    const int32_t cols = (int32_t)((op->d.in_channels / op->d.groups) * op->d.kernel_h *
                                   op->d.kernel_w);
    packer pk = {op, c, mode, 0, cols, calloc((size_t)cols, 1),
                 calloc((size_t)cols * 4, sizeof(float))};
    mp_status st = MP_OK;
    if (pk.mark == NULL || pk.rowval == NULL) {
        st = mp_set_error(MP_OUT_OF_MEMORY, "conv: out of memory (packing)");
        goto done;
    }
    pack_pass(&pk, p);
    if (p->noff > (size_t)INT32_MAX) {
        st = mp_set_error(MP_UNSUPPORTED_OP, "conv: %zu packed weights are too many", p->noff);
        goto done;
    }
    p->blocks = malloc((p->nblocks ? p->nblocks : 1) * sizeof(mp_rowblk));
    p->off = malloc((p->noff ? p->noff : 1) * sizeof(int32_t));
    p->val = malloc((p->nval ? p->nval : 1) * sizeof(float));
    if (p->blocks == NULL || p->off == NULL || p->val == NULL) {
        st = mp_set_error(MP_OUT_OF_MEMORY, "conv: out of memory (packed weights)");
        goto done;
    }
    pk.write = 1;
    pack_pass(&pk, p);
    p->taps = mode == PACK_TAPS;
    p->shift = mode == PACK_SHIFT;
    st = split_tasks(op, p);
    if (st == MP_OK) st = segment(op, p);
    if (st == MP_OK && p->shift) st = shift_classes(op, p);
    if (st == MP_OK && p->shift && p->cseg == NULL) pack_free(p); /* classes do not pay */
done:
    free(pk.mark);
    free(pk.rowval);
    if (st != MP_OK) pack_free(p);
    return st;
}

/* Shift classes of one row block: its nonzeros sorted by s = offset mod 16 (stable),
 * stored as offset - s; writes its (s, count) segments at seg and returns how many. */
static size_t classes_of(conv_pack* p, const mp_rowblk* rb, int32_t* off, float* val, int32_t* seg)
{
    size_t n = 0, k = 0;
    for (int32_t s = 0; s < 16; s++) {
        int32_t c = 0;
        for (int32_t j = 0; j < rb->count; j++) {
            const int32_t o = p->off[rb->nz + j];
            if ((o & 15) != s) continue;
            off[k] = o - s, val[k++] = p->val[rb->val + j], c++;
        }
        if (c) seg[2 * n] = s, seg[2 * n + 1] = c, n++;
    }
    return n;
}

/* PACK_SHIFT: the classes (kernels.h), when its segments average at least
 * MIN_CLASS_NNZ nonzeros (each class costs a permute and an add per vector); the aligned
 * loads of a pixel block reach one vector past it (need_floats). */
static mp_status shift_classes(const mp_conv_op* op, conv_pack* p)
{
    int32_t* off = calloc(p->noff ? p->noff : 1, sizeof(int32_t));
    float* val = calloc(p->nval ? p->nval : 1, sizeof(float));
    p->cseg = malloc((p->noff ? p->noff : 1) * 2 * sizeof(int32_t));
    p->cbeg = malloc((p->nblocks + 1) * sizeof(int32_t));
    if (off == NULL || val == NULL || p->cseg == NULL || p->cbeg == NULL) {
        free(off), free(val);
        return mp_set_error(MP_OUT_OF_MEMORY, "conv: out of memory (shift classes)");
    }
    size_t nseg = 0;
    int32_t top = 0;
    double cost = 0.0;
    for (size_t b = 0; b < p->nblocks; b++) {
        const mp_rowblk* rb = &p->blocks[b];
        p->cbeg[b] = (int32_t)nseg;
        const size_t n = classes_of(p, rb, off + rb->nz, val + rb->val, p->cseg + 2 * nseg);
        for (int32_t j = 0; j < rb->count; j++) top = off[rb->nz + j] > top ? off[rb->nz + j] : top;
        cost += 0.6 * (double)rb->count + 1.5 * (double)n + 4.0;
        nseg += n;
    }
    p->cbeg[p->nblocks] = (int32_t)nseg;
    if (nseg == 0 || (double)p->noff < MIN_CLASS_NNZ * (double)nseg) {
        free(off), free(val), free(p->cseg), free(p->cbeg);
        p->cseg = p->cbeg = NULL;
        return MP_OK;
    }
    memcpy(p->off, off, p->noff * sizeof(int32_t));
    memcpy(p->val, val, p->nval * sizeof(float));
    free(off), free(val);
    p->cost = cost;
    p->need_floats = ((size_t)top + 16 * (op->nvec + 1) + 15) & ~(size_t)15;
    return MP_OK;
}

/* Per image: the padded input buffer (none when the kernel reads the input directly),
 * then (channel chunks only) the partial sums. */
static size_t image_floats(const mp_conv_op* op) { return op->direct ? 0 : op->buf_floats; }

static size_t partial_floats(const mp_conv_op* op, const conv_pack* p)
{
    return p->nchunks > 1 ? (size_t)op->d.out_channels * op->pstride : 0;
}

size_t mp_conv_scratch_bytes(const mp_conv_op* op, size_t batch)
{
    return batch * (image_floats(op) + partial_floats(op, &op->pack)) * sizeof(float) + 64;
}


/* Padded rows are short (tens of floats) and many: three library calls per row (memset,
 * memcpy, memset) cost more than the copy itself, so the fill loops stay loops (compilers
 * turn them into those calls unless told not to). */
#if defined(__clang__)
#define MP_INLINE_LOOPS __attribute__((no_builtin))
#elif defined(__GNUC__)
#define MP_INLINE_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define MP_INLINE_LOOPS
#endif

/* Stride 1: each padded row written once (zeros, then the input row). */
MP_INLINE_LOOPS static void fill_rows(const mp_conv_op* op, const float* x, float* b, int32_t c0, int32_t c1)
{
    const mp_conv_desc* d = &op->d;
    const size_t wq = (size_t)op->wq, w = (size_t)d->in_w, pl = (size_t)d->pad_left;
    for (int32_t c = c0; c < c1; c++)
        for (int32_t h = 0; h < op->hq; h++) {
            float* dst = b + (size_t)c * op->chan + (size_t)h * wq;
            const int32_t y = h - d->pad_top;
            if (y < 0 || y >= d->in_h) {
                memset(dst, 0, wq * sizeof(float));
                continue;
            }
            const float* src = x + ((size_t)c * (size_t)d->in_h + (size_t)y) * w;
            for (size_t q = 0; q < pl; q++) dst[q] = 0.0f;
            for (size_t q = 0; q < w; q++) dst[pl + q] = src[q];
            for (size_t q = pl + w; q < wq; q++) dst[q] = 0.0f;
        }
}

/* One row of phase plane (ph, pw) of channel c: padded row h = r * sh + ph; its columns
 * pw, pw + sw, ... of the padded row; every element written once, no division per element. */
static void fill_phase_row(const mp_conv_op* op, const float* x, float* dst, int32_t c,
                           int32_t h, int32_t pw)
{
    const mp_conv_desc* d = &op->d;
    const int32_t sw = d->stride_w, y = h - d->pad_top, wq = op->wq;
    if (y < 0 || y >= d->in_h) {
        memset(dst, 0, (size_t)wq * sizeof(float));
        return;
    }
    const float* src = x + ((size_t)c * (size_t)d->in_h + (size_t)y) * (size_t)d->in_w;
    /* first input column xx >= 0 with (xx + pad_left) % sw == pw, at phase column q0 */
    const int32_t x0 = ((pw - d->pad_left) % sw + sw) % sw;
    const int32_t q0 = (x0 + d->pad_left) / sw;
    const int32_t n = x0 < d->in_w ? (d->in_w - x0 + sw - 1) / sw : 0;
    for (int32_t q = 0; q < q0; q++) dst[q] = 0.0f;
    for (int32_t q = 0; q < n; q++) dst[q0 + q] = src[x0 + q * sw];
    for (int32_t q = q0 + n; q < wq; q++) dst[q] = 0.0f;
}

/* Any stride: the polyphase split, row by row of each phase plane. */
static void fill_phases(const mp_conv_op* op, const float* x, float* b, int32_t c0, int32_t c1)
{
    const mp_conv_desc* d = &op->d;
    const int32_t sh = d->stride_h, sw = d->stride_w;
    for (int32_t c = c0; c < c1; c++)
        for (int32_t ph = 0; ph < sh; ph++)
            for (int32_t pw = 0; pw < sw; pw++) {
                float* plane = b + (size_t)c * op->chan +
                               (size_t)(ph * sw + pw) * (size_t)op->hq * (size_t)op->wq;
                for (int32_t r = 0; r < op->hq; r++)
                    fill_phase_row(op, x, plane + (size_t)r * (size_t)op->wq, c, r * sh + ph, pw);
            }
}

/* Channels [c0, c1) of one image into its padded buffer (and the spare floats that round
 * each channel plane up to 64 bytes: zeros). */
static void fill(const mp_conv_op* op, const float* x, float* b, int32_t c0, int32_t c1)
{
    if (op->phases == 1)
        fill_rows(op, x, b, c0, c1);
    else
        fill_phases(op, x, b, c0, c1);
    const size_t used = (size_t)op->phases * (size_t)op->hq * (size_t)op->wq;
    if (used < op->chan)
        for (int32_t c = c0; c < c1; c++)
            memset(b + (size_t)c * op->chan + used, 0, (op->chan - used) * sizeof(float));
}

/* The padding of every channel plane of one image's buffer (its inside is written by the
 * previous conv, with whatever its vectors' spare lanes put in the padding). */
MP_INLINE_LOOPS static void zero_padding(const mp_conv_op* op, float* b)
{
    const mp_conv_desc* d = &op->d;
    const size_t wq = (size_t)op->wq, pl = (size_t)d->pad_left, w = (size_t)d->in_w;
    const size_t top = (size_t)d->pad_top * wq, inside = (size_t)d->in_h * wq;
    for (int32_t c = 0; c < d->in_channels; c++) {
        float* p = b + (size_t)c * op->chan;
        for (size_t q = 0; q < top; q++) p[q] = 0.0f;
        for (size_t q = top + inside; q < op->chan; q++) p[q] = 0.0f;
        for (size_t r = top; r < top + inside; r += wq) {
            for (size_t q = 0; q < pl; q++) p[r + q] = 0.0f;
            for (size_t q = pl + w; q < wq; q++) p[r + q] = 0.0f;
        }
    }
}

void mp_conv_prepare(const mp_conv_op* op, size_t batch, const float* in, void* scratch)
{
    if (op->direct) return;
    float* buf = mp_align64(scratch);
    const size_t used = op->chan * (size_t)op->d.in_channels;
    for (size_t n = 0; n < batch; n++) {
        float* b = buf + n * op->buf_floats;
        if (op->prepadded)
            zero_padding(op, b);
        else if (!op->fused)
            fill(op, in + n * in_floats(op), b, 0, op->d.in_channels);
        memset(b + used, 0, (op->buf_floats - used) * sizeof(float));
    }
}

size_t mp_conv_num_tasks(const mp_conv_op* op, size_t batch)
{
    return batch * op->pack.rchunks * op->pack.pchunks;
}

/* First / one-past-last output index o with o * s + d inside [0, n) (d: the tap's shift),
 * within [0, nout). */
static int32_t tap_lo(int32_t d, int32_t s) { return d >= 0 ? 0 : (-d + s - 1) / s; }
static int32_t tap_hi(int32_t n, int32_t d, int32_t s, int32_t nout)
{
    if (n - 1 - d < 0) return 0;
    const int32_t h = (n - 1 - d) / s + 1;
    return h < nout ? h : nout;
}

/* PACK_TAPS: output row `rb->row` (one channel plane) = bias + its taps over the input
 * plane of its group, then the activation (bounds first: a NaN stays NaN). */
MP_INLINE_LOOPS static void taps_row(const mp_conv_op* op, const conv_pack* p, const mp_rowblk* rb,
                                     const float* x, float* y)
{
    const mp_conv_desc* d = &op->d;
    const int32_t og = d->out_channels / d->groups, ho = d->out_h, wo = d->out_w;
    const int32_t sh = d->stride_h, sw = d->stride_w;
    x += (size_t)(rb->row / og) * (size_t)d->in_h * (size_t)d->in_w;
    y += (size_t)rb->row * op->plane;
    for (size_t q = 0; q < op->plane; q++) y[q] = op->bias[rb->row];
    for (int32_t k = 0; k < rb->count; k++) {
        const int32_t col = p->off[rb->nz + k];
        const float w = p->val[rb->val + k];
        const int32_t dy = (col / d->kernel_w) * d->dilation_h - d->pad_top;
        const int32_t dx = (col % d->kernel_w) * d->dilation_w - d->pad_left;
        const int32_t x0 = tap_lo(dx, sw), x1 = tap_hi(d->in_w, dx, sw, wo);
        const int32_t y1 = tap_hi(d->in_h, dy, sh, ho);
        for (int32_t yy = tap_lo(dy, sh); yy < y1; yy++) {
            const float* xr = x + (size_t)(yy * sh + dy) * (size_t)d->in_w; /* a row inside */
            float* yr = y + (size_t)yy * (size_t)wo;
            if (sw == 1)
                for (int32_t xx = x0; xx < x1; xx++) yr[xx] += w * xr[xx + dx];
            else
                for (int32_t xx = x0; xx < x1; xx++) yr[xx] += w * xr[xx * sw + dx];
        }
    }
    for (size_t q = 0; q < op->plane; q++) {
        const float v = y[q] < d->act_min ? d->act_min : y[q];
        y[q] = v > d->act_max ? d->act_max : v;
    }
}

/* Tasks [t0, t1) of the batch; `buf` holds `batch` padded images, then as many partial-sum
 * scratches (partial_floats each). */
static void compute_pack(const mp_conv_op* op, const conv_pack* p, size_t batch, const float* in,
                         float* buf, float* out, size_t t0, size_t t1)
{
    const size_t per = p->rchunks * p->pchunks;
    const size_t pf = partial_floats(op, p);
    mp_spconv_args a = {NULL, NULL, op->out_plane, NULL, 0, op->contig, p->blocks, 0, 0, p->off, p->val,
                        op->bias, op->d.act_min, op->d.act_max, NULL, op->pstride, p->cseg, p->cbeg};
    for (size_t t = t0; t < t1; t++) {
        const size_t n = t / per, rc = (t % per) / p->pchunks, pc = t % p->pchunks;
        a.input = op->direct ? in + n * in_floats(op) : buf + n * op->buf_floats;
        a.output = out + n * op->out_image;
        a.partial = pf ? buf + batch * image_floats(op) + n * pf : NULL;
        a.b0 = p->rchunk[rc];
        a.b1 = p->rchunk[rc + 1];
        if (p->taps) {
            for (size_t b = a.b0; b < a.b1; b++)
                taps_row(op, p, &p->blocks[b], in + n * in_floats(op), a.output);
            continue;
        }
        if (op->fused && a.b0 < a.b1) { /* this task's groups = its input channels */
            const int32_t og = op->d.out_channels / op->d.groups;
            const mp_rowblk* last = &p->blocks[a.b1 - 1];
            fill(op, in + n * in_floats(op), buf + n * op->buf_floats, p->blocks[a.b0].row / og,
                 (last->row + last->mr - 1) / og + 1);
        }
        const size_t pb0 = pc * p->npb / p->pchunks, pb1 = (pc + 1) * p->npb / p->pchunks;
        for (size_t pb = pb0; pb < pb1; pb++) {
            a.vec = op->vec + pb * p->nv;
            a.nv = op->nvec - pb * p->nv < p->nv ? op->nvec - pb * p->nv : p->nv;
            op->k->fn(&a);
        }
    }
}

void mp_conv_compute(const mp_conv_op* op, size_t batch, const float* in, void* scratch,
                     float* out, size_t task_begin, size_t task_end)
{
    compute_pack(op, &op->pack, batch, in, mp_align64(scratch), out, task_begin, task_end);
}

/* Median-free quick timing: the best of a few interleaved runs of each pack. */
static void time_packs(mp_conv_op* op, conv_pack* packs, const int* cand, int ncand, double* best)
{
    size_t pf = 0;
    for (int c = 0; c < ncand; c++)
        if (partial_floats(op, &packs[cand[c]]) > pf) pf = partial_floats(op, &packs[cand[c]]);
    float* raw = calloc(image_floats(op) + pf + 16, sizeof(float));
    float* out = malloc(((size_t)op->d.out_channels * op->plane + 16) * sizeof(float));
    float* in = calloc(in_floats(op), sizeof(float));
    if (raw == NULL || out == NULL || in == NULL) goto done;
    float* buf = mp_align64(raw);
    for (size_t i = 0; i < (op->direct ? 0 : op->chan * (size_t)op->d.in_channels); i++)
        buf[i] = (float)((i * 2654435761u) % 1000u) * 1e-3f;
    for (int c = 0; c < ncand; c++) best[c] = INFINITY;
    for (int round = 0; round < 4; round++)
        for (int c = 0; c < ncand; c++) {
            const conv_pack* p = &packs[cand[c]];
            const double t0 = mp_now_seconds();
            compute_pack(op, p, 1, in, buf, out, 0, p->rchunks * p->pchunks);
            const double dt = mp_now_seconds() - t0;
            if (round > 0 && dt < best[c]) best[c] = dt;
        }
done:
    free(raw);
    free(out);
    free(in);
}

/* Choose among the packs: forced, by the cost model, or timed. */
static void choose(mp_conv_op* op, conv_pack* packs, uint32_t flags)
{
    int cand[PACK_COUNT], ncand = 0, pick = PACK_SPARSE;
    double best_cost = INFINITY;
    for (int m = 0; m < PACK_COUNT; m++)
        if (packs[m].blocks != NULL && packs[m].cost < best_cost) best_cost = packs[m].cost, pick = m;
    if (flags & (MP_KERNEL_DENSE | MP_KERNEL_SPARSE)) {
        snprintf(op->reason, sizeof(op->reason), "forced %s", k_pack_name[pick]);
    } else {
        for (int m = 0; m < PACK_COUNT; m++)
            if (packs[m].blocks != NULL && packs[m].cost <= 3.0 * best_cost) cand[ncand++] = m;
        double t[PACK_COUNT];
        if (!(flags & MP_KERNEL_NO_TUNE) && ncand > 1) {
            time_packs(op, packs, cand, ncand, t);
            int b = 0, s = -1;
            for (int c = 1; c < ncand; c++) if (t[c] < t[b]) b = c;
            for (int c = 0; c < ncand; c++) if (c != b && (s < 0 || t[c] < t[s])) s = c;
            if (isfinite(t[b])) {
                pick = cand[b];
                snprintf(op->reason, sizeof(op->reason), "tuned %s %.0fus < %s %.0fus",
                         k_pack_name[cand[b]], t[b] * 1e6, k_pack_name[cand[s]], t[s] * 1e6);
            }
        }
        if (op->reason[0] == '\0') {
            int next = -1;
            for (int m = 0; m < PACK_COUNT; m++)
                if (m != pick && packs[m].blocks != NULL && (next < 0 || packs[m].cost < packs[next].cost))
                    next = m;
            if (next < 0)
                snprintf(op->reason, sizeof(op->reason), "model %s", k_pack_name[pick]);
            else
                snprintf(op->reason, sizeof(op->reason), "model %s cost %.3g < %s %.3g",
                         k_pack_name[pick], packs[pick].cost, k_pack_name[next], packs[next].cost);
        }
    }
    op->mode = pick;
    op->pack = packs[pick];
    memset(&packs[pick], 0, sizeof(packs[pick]));
}

static const conv_kernel* pick_kernel(mp_isa isa)
{
    const conv_kernel* k = &k_conv[0];
    for (size_t i = 0; i < sizeof(k_conv) / sizeof(k_conv[0]); i++)
        if (k_conv[i].isa <= isa && k_conv[i].isa >= k->isa) k = &k_conv[i];
    return k;
}

static mp_status build(mp_conv_op* op, const mp_weights* w, uint32_t flags)
{
    csr_view c;
    mp_status st = csr_from(w, &c);
    if (st != MP_OK) return st;
    const size_t rows = (size_t)w->rows;
    op->nnz = (int64_t)c.ptr[rows];
    op->density = (double)op->nnz / ((double)rows * (double)w->cols);
    for (size_t r = 0; r < rows; r++) op->bias[r] = w->bias ? w->bias[r] : 0.0f;
    conv_pack packs[PACK_COUNT];
    memset(packs, 0, sizeof(packs));
    const int free_choice = !(flags & (MP_KERNEL_DENSE | MP_KERNEL_SPARSE));
    const int want[PACK_COUNT] = {!(flags & MP_KERNEL_DENSE), free_choice,
                                  !(flags & MP_KERNEL_SPARSE), free_choice && op->fused,
                                  !(flags & MP_KERNEL_DENSE)};
    for (int m = 0; m < PACK_COUNT && st == MP_OK; m++)
        if (want[m]) st = make_pack(op, &c, m, &packs[m]);
    csr_free(&c);
    for (int m = 0; m < PACK_COUNT && st == MP_OK; m++)
        if (packs[m].need_floats > op->buf_floats) op->buf_floats = packs[m].need_floats;
    if (st == MP_OK) {
        /* blocked identical to sparse (no 4-row block): drop it */
        if (packs[PACK_BLOCKED].blocks && packs[PACK_BLOCKED].nblocks == packs[PACK_SPARSE].nblocks)
            pack_free(&packs[PACK_BLOCKED]);
        choose(op, packs, flags);
    }
    for (int m = 0; m < PACK_COUNT; m++) pack_free(&packs[m]);
    return st;
}

mp_status mp_conv_create_isa(const mp_conv_desc* desc, const mp_weights* w, uint32_t flags,
                             mp_isa isa, mp_conv_op** out)
{
    if (desc == NULL || w == NULL || out == NULL)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_conv_create: NULL argument");
    *out = NULL;
    if ((flags & MP_KERNEL_DENSE) && (flags & MP_KERNEL_SPARSE))
        return mp_set_error(MP_INVALID_ARGUMENT, "conv: dense and sparse both forced");
    mp_status st = check_desc(desc, w);
    if (st != MP_OK) return st;
    mp_conv_op* op = calloc(1, sizeof(*op));
    if (op == NULL) return mp_set_error(MP_OUT_OF_MEMORY, "conv: out of memory");
    op->d = *desc;
    if (desc->act == MP_ACT_NONE) op->d.act_min = -INFINITY, op->d.act_max = INFINITY;
    if (desc->act == MP_ACT_RELU) op->d.act_min = 0.0f, op->d.act_max = INFINITY;
    op->k = pick_kernel((flags & MP_KERNEL_PORTABLE) ? MP_ISA_SCALAR : isa);
    op->bias = malloc((size_t)desc->out_channels * sizeof(float));
    st = op->bias ? geometry(op) : mp_set_error(MP_OUT_OF_MEMORY, "conv: out of memory");
    op->fused = desc->groups > 1 && desc->in_channels == desc->groups;
    if (st == MP_OK) st = build_vectors(op, op->k->lanes);
    if (st == MP_OK) op->direct = reads_input_directly(op);
    op->out_plane = op->plane;
    op->out_image = (size_t)desc->out_channels * op->plane;
    if (st == MP_OK) st = build(op, w, flags);
    if (st != MP_OK) {
        mp_conv_free(op);
        return st;
    }
    *out = op;
    return MP_OK;
}

mp_status mp_conv_create(const mp_conv_desc* desc, const mp_weights* w, uint32_t flags,
                         mp_conv_op** out)
{
    return mp_conv_create_isa(desc, w, flags, mp_cpu_best_isa(), out);
}

/* Output (y, x) of channel 0 at its place in b's padded buffer: the row vectors' start
 * pixels move there; flat vectors keep their spacing when both buffers have one row width
 * (their spare lanes then land in b's padding, which b's prepare zeroes, so they store
 * whole). Returns 0, changing nothing, when a flat vector could reach past b's plane. */
static int move_outputs(mp_conv_op* a, const mp_conv_op* b)
{
    const int32_t wo = a->d.out_w;
    const size_t shift = (size_t)b->d.pad_top * (size_t)b->wq + (size_t)b->d.pad_left;
    if (a->contig && (a->wq != b->wq || shift + a->vec_end > b->chan)) return 0;
    for (size_t v = 0; v < a->nvec; v++) {
        mp_pixvec* pv = &a->vec[v];
        if (a->contig) {
            pv->out = (int32_t)(shift + (size_t)pv->in);
            pv->kind = MP_VEC_FULL;
        } else {
            const size_t y = (size_t)(pv->out / wo), x = (size_t)(pv->out % wo);
            pv->out = (int32_t)(shift + y * (size_t)b->wq + x);
        }
    }
    return 1;
}

int mp_conv_chain(mp_conv_op* a, mp_conv_op* b)
{
    if (a == NULL || b == NULL || a == b || a->chained || b->prepadded || a->pack.taps ||
        b->pack.taps || b->fused || b->direct || b->phases != 1)
        return 0;
    if (b->d.in_channels != a->d.out_channels || b->d.in_h != a->d.out_h ||
        b->d.in_w != a->d.out_w || !move_outputs(a, b))
        return 0;
    a->out_plane = b->chan;
    a->out_image = b->buf_floats;
    a->chained = b->prepadded = 1;
    return 1;
}

float* mp_conv_input_buffer(const mp_conv_op* op, void* scratch)
{
    return op->direct ? NULL : mp_align64(scratch);
}

/* Rows of the packing that sit in 4-row blocks, and all its rows (each row block is
 * counted once: by its piece of the first channel chunk). */
static void rows_in_blocks4(const conv_pack* p, size_t* four, size_t* all)
{
    *four = *all = 0;
    for (size_t i = 0; i < p->nblocks; i++) {
        if (!(p->blocks[i].flags & MP_BLK_FIRST)) continue;
        *all += (size_t)p->blocks[i].mr;
        if (p->blocks[i].mr == 4) *four += 4;
    }
}

void mp_conv_describe(const mp_conv_op* op, char* buf, size_t size)
{
    if (buf == NULL || size == 0) return;
    char blocks[64] = "";
    if (op->mode == PACK_BLOCKED) {
        size_t four, all;
        rows_in_blocks4(&op->pack, &four, &all);
        snprintf(blocks, sizeof blocks, "%zu/%zu rows in 4-row blocks, ", four, all);
    }
    snprintf(buf, size, "%s %s density=%.3f %s (%s%zu px/block, %zu channel chunks%s%s%s%s)",
             op->k->name, k_storage[op->mode], op->density, op->reason, blocks,
             op->pack.nv * (size_t)op->k->lanes, op->pack.nchunks,
             op->pack.cseg ? ", aligned loads in shift classes" : "",
             op->direct ? ", input read in place" : "",
             op->prepadded ? ", input written padded by the previous conv" : "",
             op->chained ? ", writes the next conv's padded input" : "");
}

void mp_conv_free(mp_conv_op* op)
{
    if (op == NULL) return;
    pack_free(&op->pack);
    free(op->vec);
    free(op->bias);
    free(op);
}
