/* Tests of the conv / linear operators (src/conv.c, src/linear.c) and every kernel of
 * src/kernels/kernels.inc the CPU runs, against naive references written here:
 * a direct 7-loop convolution (stride, padding, dilation, groups) and a plain matmul.
 * Random shapes and masks at densities 0, 0.1, 0.5 and 1, every activation, batch 1 and 3
 * (linear also 9 and 17: the transposed path), weights handed over dense and as CSR,
 * every kernel choice flag, tasks run in random pieces and random order (any split must
 * be valid), outputs checked for untouched guard words and fully written.
 *
 * Build (x86-64 or aarch64; SRC = src/mobileprune/runtime/native/src):
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror tests/native/test_kernels.c $SRC/conv.c \
 *       $SRC/linear.c $SRC/cpu.c $SRC/kernels/[a-z]*.c -lm -o test_kernels && ./test_kernels
 * mp_set_error is the core's; a weak stand-in here lets the test link without it.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/mobileprune/runtime/native/src/kernels/kernels.h"

#if defined(__GNUC__)
__attribute__((weak))
#endif
mp_status mp_set_error(mp_status status, const char* fmt, ...)
{
    (void)fmt;
    return status;
}

static int g_failures = 0, g_checks = 0;
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static int rint_in(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }
static float rfloat(void) { return (float)(rnd() % 20001u) / 10000.0f - 1.0f; }

#define CHECK(cond, ...)                                          \
    do {                                                          \
        g_checks++;                                               \
        if (!(cond)) {                                            \
            g_failures++;                                         \
            if (g_failures < 20) {                                \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
                fprintf(stderr, __VA_ARGS__);                     \
                fprintf(stderr, "\n");                            \
            }                                                     \
        }                                                         \
    } while (0)

static float act(float y, mp_act_kind k, float lo, float hi)
{
    if (isnan(y)) return y; /* torch: relu / hardtanh keep a NaN */
    if (k == MP_ACT_RELU) return y > 0.0f ? y : 0.0f;
    if (k == MP_ACT_CLAMP) return y < lo ? lo : (y > hi ? hi : y);
    return y;
}

/* Naive convolution; `mag` gets sum |w x| + |b| per output (the rounding scale). */
static void ref_conv(const mp_conv_desc* d, size_t batch, const float* x, const float* w,
                     const float* b, float* y, float* mag)
{
    const int cg = d->in_channels / d->groups, og = d->out_channels / d->groups;
    const int kk = cg * d->kernel_h * d->kernel_w;
    for (size_t n = 0; n < batch; n++)
        for (int o = 0; o < d->out_channels; o++)
            for (int oy = 0; oy < d->out_h; oy++)
                for (int ox = 0; ox < d->out_w; ox++) {
                    double s = b ? b[o] : 0.0, m = b ? fabs(b[o]) : 0.0;
                    for (int c = 0; c < cg; c++)
                        for (int i = 0; i < d->kernel_h; i++)
                            for (int j = 0; j < d->kernel_w; j++) {
                                const int iy = oy * d->stride_h + i * d->dilation_h - d->pad_top;
                                const int ix = ox * d->stride_w + j * d->dilation_w - d->pad_left;
                                if (iy < 0 || iy >= d->in_h || ix < 0 || ix >= d->in_w) continue;
                                const int ch = (o / og) * cg + c;
                                const double wv = w[(size_t)o * (size_t)kk + (size_t)((c * d->kernel_h + i) * d->kernel_w + j)];
                                const double xv = x[((n * (size_t)d->in_channels + (size_t)ch) * (size_t)d->in_h + (size_t)iy) * (size_t)d->in_w + (size_t)ix];
                                s += wv * xv;
                                m += fabs(wv * xv);
                            }
                    const size_t at = ((n * (size_t)d->out_channels + (size_t)o) * (size_t)d->out_h + (size_t)oy) * (size_t)d->out_w + (size_t)ox;
                    y[at] = act((float)s, d->act, d->act_min, d->act_max);
                    mag[at] = (float)m;
                }
}

/* Random mask at `density` (exactly 0 / 1 at the ends). */
static void random_weights(float* w, size_t n, double density)
{
    for (size_t i = 0; i < n; i++) {
        const double u = (double)(rnd() % 1000000u) / 1e6;
        float v = rfloat();
        if (v == 0.0f) v = 0.5f;
        w[i] = u < density ? v : 0.0f;
    }
}

typedef struct csr_store {
    uint32_t* ptr;
    uint32_t* idx;
    float* val;
} csr_store;

static mp_weights make_weights(const float* w, const float* bias, int rows, int cols, int as_csr,
                               csr_store* s)
{
    mp_weights mw = {rows, cols, 0, NULL, NULL, NULL, NULL, bias};
    size_t nnz = 0;
    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++) nnz += w[i] != 0.0f;
    mw.nnz = (int64_t)nnz;
    memset(s, 0, sizeof(*s));
    if (!as_csr) {
        mw.dense = w;
        return mw;
    }
    s->ptr = malloc(((size_t)rows + 1) * sizeof(uint32_t));
    s->idx = malloc((nnz + 1) * sizeof(uint32_t));
    s->val = malloc((nnz + 1) * sizeof(float));
    size_t k = 0;
    for (int r = 0; r < rows; r++) {
        s->ptr[r] = (uint32_t)k;
        for (int c = 0; c < cols; c++)
            if (w[(size_t)r * (size_t)cols + (size_t)c] != 0.0f)
                s->idx[k] = (uint32_t)c, s->val[k++] = w[(size_t)r * (size_t)cols + (size_t)c];
    }
    s->ptr[rows] = (uint32_t)k;
    mw.indptr = s->ptr, mw.indices = s->idx, mw.values = s->val;
    return mw;
}

static void csr_release(csr_store* s)
{
    free(s->ptr);
    free(s->idx);
    free(s->val);
}

/* Run tasks [0, total) in random pieces, pieces in random order. */
typedef void (*run_fn)(const void* op, size_t t0, size_t t1, void* ctx);
static void run_split(size_t total, run_fn f, const void* op, void* ctx)
{
    size_t cuts[66], nc = 0;
    cuts[nc++] = 0;
    for (size_t t = 1; t < total && nc < 64; t++)
        if (rnd() % 3 == 0) cuts[nc++] = t;
    cuts[nc++] = total;
    size_t order[66];
    for (size_t i = 0; i + 1 < nc; i++) order[i] = i;
    for (size_t i = nc - 1; i > 1; i--) {
        const size_t j = rnd() % i, t = order[i - 1];
        order[i - 1] = order[j], order[j] = t;
    }
    for (size_t i = 0; i + 1 < nc; i++) f(op, cuts[order[i]], cuts[order[i] + 1], ctx);
}

typedef struct conv_ctx {
    size_t batch;
    const float* x;
    void* scratch;
    float* y;
} conv_ctx;

static void conv_piece(const void* op, size_t t0, size_t t1, void* c)
{
    conv_ctx* k = c;
    mp_conv_compute(op, k->batch, k->x, k->scratch, k->y, t0, t1);
}

#define GUARD 32

static int compare(const char* what, const float* got, const float* want, const float* mag,
                   size_t n, double tol)
{
    for (size_t i = 0; i < n; i++) {
        if (isnan(want[i]) && isnan(got[i])) continue;
        const double err = fabs((double)got[i] - (double)want[i]);
        if (!(err <= tol * (1.0 + (double)mag[i]))) {
            CHECK(0, "%s: element %zu = %g, reference %g", what, i, got[i], want[i]);
            return 0;
        }
    }
    for (size_t i = n; i < n + GUARD; i++)
        if (got[i] != 12345.0f) {
            CHECK(0, "%s: wrote past the output (element %zu)", what, i);
            return 0;
        }
    g_checks++;
    return 1;
}

static const char* isa_name(mp_isa isa)
{
    static const char* const names[] = {"scalar", "neon", "avx2", "avx512"};
    return names[isa];
}

static const uint32_t k_flags[] = {MP_KERNEL_AUTO, MP_KERNEL_NO_TUNE, MP_KERNEL_DENSE,
                                   MP_KERNEL_SPARSE, MP_KERNEL_PORTABLE | MP_KERNEL_NO_TUNE};

/* One conv layer: every flag, weights dense and CSR, against the naive reference. */
static void conv_case_x(const mp_conv_desc* d, double density, size_t batch, mp_isa isa,
                        int with_nan);
static void conv_case(const mp_conv_desc* d, double density, size_t batch, mp_isa isa)
{
    conv_case_x(d, density, batch, isa, 0);
}

/* with_nan: one input element is NaN (density 1: every weight multiplies it, as in torch's
 * dense conv; the outputs that see it must be NaN, the others exact). */
static void conv_case_x(const mp_conv_desc* d, double density, size_t batch, mp_isa isa,
                        int with_nan)
{
    const int cols = d->in_channels / d->groups * d->kernel_h * d->kernel_w;
    const size_t nw = (size_t)d->out_channels * (size_t)cols;
    const size_t nx = batch * (size_t)d->in_channels * (size_t)d->in_h * (size_t)d->in_w;
    const size_t ny = batch * (size_t)d->out_channels * (size_t)d->out_h * (size_t)d->out_w;
    float* w = malloc(nw * sizeof(float));
    float* b = malloc((size_t)d->out_channels * sizeof(float));
    float* x = malloc(nx * sizeof(float));
    float* want = malloc(ny * sizeof(float));
    float* mag = malloc(ny * sizeof(float));
    float* y = malloc((ny + GUARD) * sizeof(float));
    random_weights(w, nw, density);
    for (int o = 0; o < d->out_channels; o++) b[o] = rfloat();
    for (size_t i = 0; i < nx; i++) x[i] = rfloat();
    if (with_nan) x[rnd() % nx] = NAN;
    const int with_bias = rnd() % 4 != 0;
    ref_conv(d, batch, x, w, with_bias ? b : NULL, want, mag);
    for (size_t f = 0; f < sizeof(k_flags) / sizeof(k_flags[0]); f++) {
        csr_store cs;
        const mp_weights mw = make_weights(w, with_bias ? b : NULL, d->out_channels, cols,
                                           (int)((f + rnd()) % 2), &cs);
        mp_conv_op* op = NULL;
        const mp_status st = mp_conv_create_isa(d, &mw, k_flags[f], isa, &op);
        CHECK(st == MP_OK, "conv create failed: status %d", (int)st);
        if (st == MP_OK) {
            char desc[160], what[400];
            mp_conv_describe(op, desc, sizeof(desc));
            snprintf(what, sizeof(what), "conv %s %dx%dx%d->%d k%dx%d s%d,%d d%d,%d p%d,%d,%d,%d g%d act%d batch %zu density %.1f flags %u [%s]",
                     isa_name(isa), d->in_channels, d->in_h, d->in_w, d->out_channels,
                     d->kernel_h, d->kernel_w, d->stride_h, d->stride_w, d->dilation_h,
                     d->dilation_w, d->pad_top, d->pad_bottom, d->pad_left, d->pad_right,
                     d->groups, (int)d->act, batch, density, k_flags[f], desc);
            void* scratch = malloc(mp_conv_scratch_bytes(op, batch));
            for (size_t i = 0; i < ny + GUARD; i++) y[i] = i < ny ? NAN : 12345.0f;
            mp_conv_prepare(op, batch, x, scratch);
            conv_ctx ctx = {batch, x, scratch, y};
            run_split(mp_conv_num_tasks(op, batch), conv_piece, op, &ctx);
            compare(what, y, want, mag, ny, 1e-5);
            if (getenv("MP_TEST_VERBOSE")) printf("%s\n", what);
            free(scratch);
            mp_conv_free(op);
        }
        csr_release(&cs);
    }
    free(w), free(b), free(x), free(want), free(mag), free(y);
}

static mp_conv_desc conv_desc(int c, int o, int g, int h, int w, int kh, int kw, int sh, int sw,
                              int dh, int dw, int pt, int pb, int pl, int pr)
{
    mp_conv_desc d = {c, o, g, h, w, 0, 0, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr,
                      MP_ACT_NONE, 0.0f, 0.0f};
    d.out_h = (h + pt + pb - dh * (kh - 1) - 1) / sh + 1;
    d.out_w = (w + pl + pr - dw * (kw - 1) - 1) / sw + 1;
    const int a = (int)(rnd() % 3);
    d.act = (mp_act_kind)a;
    d.act_min = a == 2 ? -0.3f : 0.0f;
    d.act_max = a == 2 ? 0.6f : INFINITY;
    return d;
}

static mp_conv_desc random_conv(void)
{
    for (;;) {
        const int g = rnd() % 4 == 0 ? rint_in(2, 3) : 1;
        const int dw = rnd() % 5 == 0;
        const int c = dw ? rint_in(1, 6) * g : rint_in(1, 5) * g;
        const int o = dw ? c : rint_in(1, 9) * g;
        const int one_d = rnd() % 5 == 0;
        const int h = one_d ? 1 : rint_in(1, 20), w = rint_in(1, 40);
        const int kh = one_d ? 1 : rint_in(1, 4), kw = rint_in(1, 5);
        const int sh = one_d ? 1 : rint_in(1, 3), sw = rint_in(1, 3);
        const int dh = one_d ? 1 : rint_in(1, 2), dwl = rint_in(1, 2);
        const int pt = one_d ? 0 : rint_in(0, kh), pb = one_d ? 0 : rint_in(0, kh);
        const int pl = rint_in(0, kw), pr = rint_in(0, kw);
        if (h + pt + pb < dh * (kh - 1) + 1 || w + pl + pr < dwl * (kw - 1) + 1) continue;
        return conv_desc(c, o, dw ? c : g, h, w, kh, kw, sh, sw, dh, dwl, pt, pb, pl, pr);
    }
}

static void test_conv(mp_isa isa)
{
    static const double dens[] = {0.0, 0.1, 0.5, 1.0};
    const mp_conv_desc fixed[] = {
        conv_desc(1, 32, 1, 48, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),   /* FER conv1 */
        conv_desc(32, 32, 1, 48, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  /* FER conv2 */
        conv_desc(64, 64, 1, 24, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  /* FER conv5 */
        conv_desc(64, 128, 1, 12, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1), /* FER conv7 */
        conv_desc(16, 16, 16, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1), /* depthwise, stride 2 */
        conv_desc(24, 40, 1, 7, 9, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0),    /* pointwise */
        conv_desc(24, 40, 1, 8, 8, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0),    /* pointwise, input in place */
        conv_desc(8, 12, 1, 10, 16, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0),   /* valid 3x3, input in place */
        conv_desc(6, 8, 2, 1, 64, 1, 5, 1, 2, 1, 3, 0, 0, 4, 1),     /* 1-D, groups, dilation */
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        conv_case(&fixed[i], dens[i % 4 == 0 ? 1 : i % 4], i % 2 ? 3 : 1, isa);
    conv_case(&fixed[2], 1.0, 1, isa);
    for (int t = 0; t < 60; t++) {
        const mp_conv_desc d = random_conv();
        conv_case(&d, dens[t % 4], t % 3 == 2 ? 3 : 1, isa);
    }
}

/* Shift classes (kernels.h: aligned loads, nonzeros grouped by offset mod 16, one permute
 * per class): on a kernel that has them, forced-sparse convs with enough nonzeros per row
 * use them, across strides, dilations, 1-D, channel chunks and batches; every flag's
 * output matches the naive reference (conv_case). */
static float* conv_weights(const mp_conv_desc* d, double density, csr_store* cs, mp_weights* mw);
static void test_shift_classes(mp_isa isa)
{
    const mp_conv_desc shapes[] = {
        conv_desc(48, 16, 1, 20, 37, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),   /* 3x3, odd width */
        conv_desc(32, 8, 1, 17, 23, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),    /* stride 2: phases */
        conv_desc(16, 8, 1, 13, 40, 5, 5, 1, 1, 2, 2, 4, 4, 4, 4),    /* dilation 2 */
        conv_desc(40, 12, 1, 1, 200, 1, 7, 1, 1, 1, 1, 0, 0, 3, 3),   /* 1-D */
        conv_desc(128, 16, 1, 24, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  /* FER conv8-like */
        conv_desc(160, 4, 1, 1, 3000, 1, 3, 1, 1, 1, 1, 0, 0, 1, 1),  /* 1-D, long rows */
        conv_desc(24, 20, 1, 9, 70, 3, 5, 1, 2, 1, 1, 2, 0, 1, 3),    /* uneven padding, chunks */
    };
    static const double dens[] = {0.3, 0.4, 0.3, 0.3, 0.1, 0.5, 0.5};
    int used = 0;
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        const mp_conv_desc* d = &shapes[i];
        csr_store cs;
        mp_weights mw;
        float* bias = conv_weights(d, dens[i], &cs, &mw);
        mp_conv_op* op = NULL;
        if (mp_conv_create_isa(d, &mw, MP_KERNEL_SPARSE, isa, &op) == MP_OK) {
            char desc[200];
            mp_conv_describe(op, desc, sizeof(desc));
            used += strstr(desc, "shift classes") != NULL;
            if (getenv("MP_TEST_VERBOSE")) printf("shift test %zu: %s\n", i, desc);
            mp_conv_free(op);
        }
        csr_release(&cs);
        free(bias);
        conv_case(d, dens[i], i % 2 ? 2 : 1, isa);
    }
    if (isa == MP_ISA_AVX512)
        CHECK(used == (int)(sizeof(shapes) / sizeof(shapes[0])), "avx512: %d of %zu convs in shift classes",
              used, sizeof(shapes) / sizeof(shapes[0]));
    else
        CHECK(used == 0, "%s: shift classes without a kernel for them", isa_name(isa));
}

/* A conv chained into the next (mp_conv_chain): the pair's output equals that of the two
 * run apart, bit for bit; the reader's scratch starts as NaN (its padding must be zeroed)
 * and the words after it stay untouched. Returns 1 when the pair chained. */
static float* conv_weights(const mp_conv_desc* d, double density, csr_store* cs, mp_weights* mw)
{
    const int cols = d->in_channels / d->groups * d->kernel_h * d->kernel_w;
    float* w = malloc((size_t)d->out_channels * (size_t)cols * sizeof(float));
    float* b = malloc((size_t)d->out_channels * sizeof(float));
    random_weights(w, (size_t)d->out_channels * (size_t)cols, density);
    for (int o = 0; o < d->out_channels; o++) b[o] = rfloat();
    *mw = make_weights(w, b, d->out_channels, cols, 1, cs); /* CSR: a copy of w */
    free(w);
    return b; /* the bias, kept by the caller while the ops are made */
}

/* Two ops run the same packing: the same storage, both with or both without shift classes. */
static int same_packing(const mp_conv_op* x, const mp_conv_op* y)
{
    char dx[240], dy[240];
    mp_conv_describe(x, dx, sizeof(dx));
    mp_conv_describe(y, dy, sizeof(dy));
    const char *sx = strchr(dx, ' '), *sy = strchr(dy, ' ');
    const size_t nx = sx ? strcspn(sx + 1, " ") : 0, ny = sy ? strcspn(sy + 1, " ") : 0;
    return sx && sy && nx == ny && strncmp(sx + 1, sy + 1, nx) == 0 &&
           (strstr(dx, "shift classes") != NULL) == (strstr(dy, "shift classes") != NULL);
}

static int chain_case(const mp_conv_desc* da, const mp_conv_desc* db, size_t batch, mp_isa isa,
                      uint32_t flags)
{
    mp_conv_op *a[2] = {NULL, NULL}, *b[2] = {NULL, NULL};
    csr_store ca, cb;
    mp_weights wa, wb;
    float *ba = conv_weights(da, 0.3, &ca, &wa), *bb = conv_weights(db, 0.3, &cb, &wb);
    int ok = 1, chained = 0;
    for (int k = 0; k < 2 && ok; k++)
        ok = mp_conv_create_isa(da, &wa, flags, isa, &a[k]) == MP_OK &&
             mp_conv_create_isa(db, &wb, flags, isa, &b[k]) == MP_OK;
    CHECK(ok, "chain: conv create failed");
    if (ok) chained = mp_conv_chain(a[1], b[1]);
    const size_t nx = batch * (size_t)da->in_channels * (size_t)da->in_h * (size_t)da->in_w;
    const size_t ny = batch * (size_t)da->out_channels * (size_t)da->out_h * (size_t)da->out_w;
    const size_t nz = batch * (size_t)db->out_channels * (size_t)db->out_h * (size_t)db->out_w;
    float *x = malloc(nx * sizeof(float)), *y = malloc(ny * sizeof(float));
    float *z0 = malloc(nz * sizeof(float)), *z1 = malloc((nz + GUARD) * sizeof(float));
    for (size_t i = 0; i < nx; i++) x[i] = rfloat();
    for (size_t i = 0; i < nz + GUARD; i++) z1[i] = 12345.0f;
    for (int k = 0; ok && k < 2; k++) {
        const size_t sb_bytes = mp_conv_scratch_bytes(b[k], batch);
        void* sa = malloc(mp_conv_scratch_bytes(a[k], batch));
        float* sb = malloc(sb_bytes + GUARD * sizeof(float));
        for (size_t i = 0; i < sb_bytes / sizeof(float) + GUARD; i++) sb[i] = i < sb_bytes / sizeof(float) ? NAN : 777.0f;
        float* mid = k && chained ? mp_conv_input_buffer(b[k], sb) : y;
        conv_ctx ca_ctx = {batch, x, sa, mid}, cb_ctx = {batch, mid, sb, k ? z1 : z0};
        mp_conv_prepare(a[k], batch, x, sa);
        run_split(mp_conv_num_tasks(a[k], batch), conv_piece, a[k], &ca_ctx);
        mp_conv_prepare(b[k], batch, mid, sb);
        run_split(mp_conv_num_tasks(b[k], batch), conv_piece, b[k], &cb_ctx);
        for (size_t i = sb_bytes / sizeof(float); i < sb_bytes / sizeof(float) + GUARD; i++)
            CHECK(sb[i] == 777.0f, "chain: wrote past the reader's scratch");
        free(sa), free(sb);
    }
    if (ok) {
        /* bit for bit when both pairs run the same packings (a timed choice may differ
         * between two creations; shift classes sum in another order than the other packs) */
        const int same = same_packing(a[0], a[1]) && same_packing(b[0], b[1]);
        size_t bad = 0;
        for (size_t i = 0; i < nz; i++)
            bad += same ? memcmp(&z0[i], &z1[i], sizeof(float)) != 0
                        : !(fabsf(z0[i] - z1[i]) <= 1e-5f * (1.0f + fabsf(z0[i])));
        CHECK(bad == 0, "chain %s: %zu of %zu outputs differ (%dx%dx%d k%d p%d,%d -> k%d p%d,%d,%d,%d batch %zu flags %u chained %d)",
              isa_name(isa), bad, nz, da->in_channels, da->in_h, da->in_w, da->kernel_w,
              da->pad_top, da->pad_left, db->kernel_w, db->pad_top, db->pad_bottom, db->pad_left,
              db->pad_right, batch, flags, chained);
        for (size_t i = nz; i < nz + GUARD; i++) CHECK(z1[i] == 12345.0f, "chain: wrote past z");
    }
    for (int k = 0; k < 2; k++) mp_conv_free(a[k]), mp_conv_free(b[k]);
    csr_release(&ca), csr_release(&cb);
    free(ba), free(bb), free(x), free(y), free(z0), free(z1);
    return chained;
}

static void test_chain(mp_isa isa)
{
    int chained = 0, tried = 0;
    const mp_conv_desc fer_a = conv_desc(32, 32, 1, 48, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1);
    chained += chain_case(&fer_a, &fer_a, 1, isa, MP_KERNEL_SPARSE), tried++;
    for (int t = 0; t < 40; t++) {
        mp_conv_desc da = random_conv();
        da.groups = 1, da.in_channels = rint_in(1, 6);
        /* b: stride 1, any kernel / padding / dilation that fits a's output */
        const int kh = da.out_h == 1 ? 1 : rint_in(1, 4), kw = rint_in(1, 5);
        const int pt = kh == 1 ? 0 : rint_in(0, kh), pb = kh == 1 ? 0 : rint_in(0, kh);
        /* half the pairs with b's padded row as wide as a's (flat vectors chain only then) */
        const int wqa = (da.in_w + da.pad_left + da.pad_right + da.stride_w - 1) / da.stride_w;
        const int spare = wqa - da.out_w, same = t % 2 == 0 && spare >= 0 && spare <= 2 * kw;
        const int pl = same ? spare / 2 : rint_in(0, kw), pr = same ? spare - spare / 2 : rint_in(0, kw);
        const int dl = rint_in(1, 2);
        if (da.out_h + pt + pb < kh || da.out_w + pl + pr < dl * (kw - 1) + 1) continue;
        const mp_conv_desc db = conv_desc(da.out_channels, rint_in(1, 7), 1, da.out_h, da.out_w,
                                          kh, kw, 1, 1, 1, dl, pt, pb, pl, pr);
        chained += chain_case(&da, &db, t % 3 == 2 ? 3 : 1, isa, k_flags[t % 5]);
        tried++;
    }
    printf("  %s: %d of %d conv pairs chained\n", isa_name(isa), chained, tried);
    CHECK(chained > tried / 4, "chain %s: only %d of %d pairs chained", isa_name(isa), chained, tried);
}

typedef struct lin_ctx {
    size_t batch;
    const float* x;
    const void* scratch;
    float* y;
} lin_ctx;

static void lin_piece(const void* op, size_t t0, size_t t1, void* c)
{
    lin_ctx* k = c;
    mp_linear_compute(op, k->batch, k->x, k->scratch, k->y, t0, t1);
}

/* `structure: block` weights: 4x1 tiles (4 consecutive rows at one column, the last group
 * ragged when rows % 4 != 0) kept at `density`, each weight of a kept tile zeroed with
 * probability `hole` (the BSR packing zero-fills them). */
static void block_weights(float* w, int rows, int cols, double density, double hole)
{
    for (int r = 0; r < rows; r += 4)
        for (int c = 0; c < cols; c++) {
            const int keep = (double)(rnd() % 1000000u) / 1e6 < density;
            for (int i = r; i < rows && i < r + 4; i++) {
                float v = rfloat();
                if (v == 0.0f) v = 0.5f;
                w[(size_t)i * (size_t)cols + (size_t)c] =
                    keep && (double)(rnd() % 1000000u) / 1e6 >= hole ? v : 0.0f;
            }
        }
}

static void linear_case_x(int in, int outn, double density, size_t batch, mp_isa isa,
                          int with_nan, double hole);
static void linear_case(int in, int outn, double density, size_t batch, mp_isa isa)
{
    linear_case_x(in, outn, density, batch, isa, 0, -1.0);
}

/* hole < 0: a random mask at `density`; else block_weights(density, hole). With full
 * enough tiles the cost model (MP_KERNEL_NO_TUNE) must pick the BSR packing ("csr4"). */
static void linear_case_x(int in, int outn, double density, size_t batch, mp_isa isa,
                          int with_nan, double hole)
{
    const size_t nw = (size_t)in * (size_t)outn, nx = batch * (size_t)in, ny = batch * (size_t)outn;
    float* w = malloc(nw * sizeof(float));
    float* b = malloc((size_t)outn * sizeof(float));
    float* x = malloc(nx * sizeof(float));
    float* want = malloc(ny * sizeof(float));
    float* mag = malloc(ny * sizeof(float));
    float* y = malloc((ny + GUARD) * sizeof(float));
    if (hole < 0.0) random_weights(w, nw, density);
    else block_weights(w, outn, in, density, hole);
    for (int o = 0; o < outn; o++) b[o] = rfloat();
    for (size_t i = 0; i < nx; i++) x[i] = rfloat();
    if (with_nan) x[rnd() % nx] = NAN;
    const int a = (int)(rnd() % 3), with_bias = rnd() % 4 != 0;
    /* half the ops are timed on the rows they run (desc.rows), the others on one row */
    const mp_linear_desc d = {in, outn, (mp_act_kind)a, a == 2 ? -0.2f : 0.0f, a == 2 ? 0.5f : INFINITY,
                              rnd() % 2 ? (int32_t)batch : 0};
    for (size_t n = 0; n < batch; n++)
        for (int o = 0; o < outn; o++) {
            double s = with_bias ? b[o] : 0.0, m = with_bias ? fabs(b[o]) : 0.0;
            for (int c = 0; c < in; c++) {
                const double p = (double)w[(size_t)o * (size_t)in + (size_t)c] * x[n * (size_t)in + (size_t)c];
                s += p;
                m += fabs(p);
            }
            want[n * (size_t)outn + (size_t)o] = act((float)s, d.act, d.act_min, d.act_max);
            mag[n * (size_t)outn + (size_t)o] = (float)m;
        }
    /* the cost model's rule (linear.c): BSR when the density is below 0.4 and the
     * nonzeros fill at least half of the 4x1 blocks (the columns 4 consecutive rows use) */
    size_t nnz = 0, blocks = 0;
    for (int r = 0; r < outn; r += 4)
        for (int c = 0; c < in; c++) {
            int any = 0;
            for (int i = r; i < outn && i < r + 4; i++) {
                const int nz = w[(size_t)i * (size_t)in + (size_t)c] != 0.0f;
                nnz += (size_t)nz, any |= nz;
            }
            blocks += (size_t)any;
        }
    const double fill = blocks ? (double)nnz / (4.0 * (double)blocks) : 0.0;
    const int expect_bsr = nnz > 0 && (double)nnz < 0.4 * (double)nw && fill >= 0.5;
    for (size_t f = 0; f < sizeof(k_flags) / sizeof(k_flags[0]); f++) {
        csr_store cs;
        const mp_weights mw = make_weights(w, with_bias ? b : NULL, outn, in, (int)((f + rnd()) % 2), &cs);
        mp_linear_op* op = NULL;
        const mp_status st = mp_linear_create_isa(&d, &mw, k_flags[f], isa, &op);
        CHECK(st == MP_OK, "linear create failed: status %d", (int)st);
        if (st == MP_OK) {
            char desc[160], what[300];
            mp_linear_describe(op, batch, desc, sizeof(desc));
            snprintf(what, sizeof(what), "linear %s %d->%d act%d batch %zu density %.1f flags %u [%s]",
                     isa_name(isa), in, outn, a, batch, density, k_flags[f], desc);
            void* scratch = malloc(mp_linear_scratch_bytes(op, batch) + 1);
            for (size_t i = 0; i < ny + GUARD; i++) y[i] = i < ny ? NAN : 12345.0f;
            mp_linear_prepare(op, batch, x, scratch);
            lin_ctx ctx = {batch, x, scratch, y};
            run_split(mp_linear_num_tasks(op, batch), lin_piece, op, &ctx);
            compare(what, y, want, mag, ny, 1e-5);
            if (k_flags[f] == MP_KERNEL_AUTO)
                CHECK((strstr(desc, "on the rows of a run") != NULL) == (d.rows > 1),
                      "%s: timed on %d rows, the reason does not say so", what, (int)d.rows);
            if (k_flags[f] == MP_KERNEL_NO_TUNE)
                CHECK((strstr(desc, " csr4 ") != NULL) == expect_bsr,
                      "%s: BSR expected %d (block fill %.2f)", what, expect_bsr, fill);
            if (getenv("MP_TEST_VERBOSE")) printf("%s\n", what);
            free(scratch);
            mp_linear_free(op);
        }
        csr_release(&cs);
    }
    free(w), free(b), free(x), free(want), free(mag), free(y);
}

static void test_linear(mp_isa isa)
{
    static const double dens[] = {0.0, 0.1, 0.5, 1.0};
    static const size_t batches[] = {1, 3, 9, 17};
    linear_case(4608, 64, 0.1, 1, isa); /* FER fc1 */
    linear_case(4608, 64, 0.1, 16, isa);
    linear_case(130, 21, 0.3, 40, isa); /* 4 vectors of the batch per row chunk, then 1 */
    linear_case(130, 21, 1.0, 40, isa);
    for (int t = 0; t < 48; t++)
        linear_case(rint_in(1, 300), rint_in(1, 70), dens[t % 4], batches[(t / 4) % 4], isa);
    /* 4x1 blocks (BSR): FER fc1 at 90 %, ragged row groups, holes, both batch paths */
    linear_case_x(4608, 64, 0.1, 1, isa, 0, 0.0);
    linear_case_x(4608, 64, 0.1, 16, isa, 0, 0.0);
    /* every batch path of the BSR kernels: 1-3 inputs read directly; on x^T 1, 2 or 3
     * vectors of 8 inputs per chunk, and a second chunk from 25 inputs on */
    static const size_t bsr_batches[] = {1, 3, 8, 9, 16, 17, 25, 49};
    for (int t = 0; t < 32; t++)
        linear_case_x(rint_in(1, 300), rint_in(1, 70), t % 8 == 7 ? 0.0 : 0.2, bsr_batches[t % 8],
                      isa, 0, t % 3 == 0 ? 0.25 : 0.0);
    linear_case_x(256, 40, 0.15, 49, isa, 0, 0.0);
}

/* A NaN input stays NaN through every kernel and activation (density 1, every flag). */
/* 2x2 max pooling kernels of this ISA against a naive reference: NaN when the window
 * has one, else its largest value; every kernel gives the scalar kernel's bits (zeros
 * keep their sign). Widths with and without a spare input column, tails shorter than a
 * vector, NaN, infinities, signed zeros and ties. */
typedef struct { mp_isa isa; const char* name; mp_maxpool2x2_fn fn; } pool_entry;
static const pool_entry k_pools[] = {
#define MP_CONV_UKERNEL(isa, name, lanes, nv1, nv4, nva)
#define MP_LINEAR_UKERNEL(isa, name, kind)
#define MP_POOL_UKERNEL(isa, name) {isa, #name, mp_##name},
#include "kernels/kernels.inc"
#undef MP_CONV_UKERNEL
#undef MP_LINEAR_UKERNEL
#undef MP_POOL_UKERNEL
};

static float pool_value(void)
{
    static const float special[] = {0.0f, -0.0f, 1.0f, INFINITY, -INFINITY, NAN};
    return rnd() % 8 == 0 ? special[rnd() % 6] : (float)(rnd() % 7) - 3.0f;
}

static void test_pool(mp_isa isa)
{
    for (size_t k = 0; k < sizeof(k_pools) / sizeof(k_pools[0]); k++) {
        if (k_pools[k].isa > isa || (k_pools[k].isa == MP_ISA_NEON) != (isa == MP_ISA_NEON)) continue;
        for (int t = 0; t < 40; t++) {
            const size_t wo = (size_t)rint_in(1, 40), rows = (size_t)rint_in(1, 5);
            const size_t w = 2 * wo + (size_t)(rnd() % 2), n = 2 * rows * w;
            float *x = malloc(n * sizeof(float)), *y = malloc((rows * wo + GUARD) * sizeof(float));
            float* ref = malloc(rows * wo * sizeof(float));
            for (size_t i = 0; i < n; i++) x[i] = pool_value();
            for (size_t i = 0; i < rows * wo + GUARD; i++) y[i] = 12345.0f;
            mp_f32_maxpool2x2__scalar(x, ref, rows, w, wo);
            k_pools[k].fn(x, y, rows, w, wo);
            size_t bad = 0;
            for (size_t r = 0; r < rows; r++)
                for (size_t j = 0; j < wo; j++) {
                    const float* a = x + 2 * r * w + 2 * j;
                    const float win[4] = {a[0], a[1], a[w], a[w + 1]};
                    float m = -INFINITY;
                    int nan = 0;
                    for (int q = 0; q < 4; q++) nan |= isnan(win[q]), m = win[q] > m ? win[q] : m;
                    const float got = y[r * wo + j];
                    bad += nan ? !isnan(got) : got != m;
                    bad += memcmp(&got, &ref[r * wo + j], sizeof(float)) != 0 && !(isnan(got) && isnan(ref[r * wo + j]));
                }
            for (size_t i = rows * wo; i < rows * wo + GUARD; i++) bad += y[i] != 12345.0f;
            CHECK(bad == 0, "%s: %zu wrong outputs (%zu rows, w %zu, wo %zu)", k_pools[k].name, bad, rows, w, wo);
            free(x), free(y), free(ref);
        }
    }
}

static void test_nan(mp_isa isa)
{
    for (int t = 0; t < 6; t++) {
        const mp_conv_desc d = conv_desc(4, 8, 1, 9, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1);
        conv_case_x(&d, 1.0, t % 2 ? 3 : 1, isa, 1);
        linear_case_x(40, 12, 1.0, t % 2 ? 9 : 1, isa, 1, -1.0);
    }
}

/* Bad arguments: a status and no operator. */
static void test_errors(void)
{
    const float w[4] = {1, 0, 0, 1};
    mp_weights mw = {2, 2, 2, w, NULL, NULL, NULL, NULL};
    mp_conv_desc d = conv_desc(2, 2, 1, 5, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0);
    mp_conv_op* op = (mp_conv_op*)&mw;
    d.out_h = 4;
    CHECK(mp_conv_create(&d, &mw, 0, &op) == MP_SHAPE_MISMATCH && op == NULL, "wrong out_h accepted");
    d.out_h = 5;
    d.groups = 3;
    CHECK(mp_conv_create(&d, &mw, 0, &op) == MP_INVALID_ARGUMENT, "groups not dividing accepted");
    d.groups = 1;
    mw.cols = 3;
    CHECK(mp_conv_create(&d, &mw, 0, &op) == MP_SHAPE_MISMATCH, "wrong weight shape accepted");
    mw.cols = 2;
    CHECK(mp_conv_create(&d, &mw, MP_KERNEL_DENSE | MP_KERNEL_SPARSE, &op) == MP_INVALID_ARGUMENT,
          "dense and sparse both forced accepted");
    const uint32_t ptr[3] = {0, 1, 2}, bad_idx[2] = {0, 2};
    const float vals[2] = {1, 1};
    mp_weights mc = {2, 2, 2, NULL, ptr, bad_idx, vals, NULL};
    CHECK(mp_conv_create(&d, &mc, 0, &op) == MP_INVALID_ARGUMENT, "column index >= cols accepted");
    const mp_linear_desc ld = {2, 2, MP_ACT_NONE, 0, 0, 0};
    mp_linear_op* lop = NULL;
    CHECK(mp_linear_create(&ld, &mc, 0, &lop) == MP_INVALID_ARGUMENT && lop == NULL,
          "linear: column index >= cols accepted");
    const mp_linear_desc ld3 = {3, 2, MP_ACT_NONE, 0, 0, 0};
    CHECK(mp_linear_create(&ld3, &mw, 0, &lop) == MP_SHAPE_MISMATCH, "linear: wrong shape accepted");
    CHECK(mp_conv_create(NULL, &mw, 0, &op) == MP_INVALID_ARGUMENT, "NULL desc accepted");
}

int main(void)
{
    const mp_isa best = mp_cpu_best_isa();
    printf("test_kernels: best isa %s\n", isa_name(best));
    test_errors();
    for (int i = 0; i <= (int)best; i++) {
        const mp_isa isa = (mp_isa)i;
        if ((isa == MP_ISA_NEON) != (best == MP_ISA_NEON) && isa != MP_ISA_SCALAR) continue;
        test_conv(isa);
        test_chain(isa);
        test_shift_classes(isa);
        test_pool(isa);
        test_linear(isa);
        test_nan(isa);
        printf("  %s: done\n", isa_name(isa));
    }
    printf("test_kernels: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
