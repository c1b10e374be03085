/* Pooling: max / average 1-D and 2-D with every PyTorch attribute (padding, dilation,
 * ceil_mode through the output size, count_include_pad, divisor_override) and global
 * average pooling. A task is one (sample, channel) plane; 1-D ops run as 2-D with H = 1.
 * Semantics: the Python runtime's kernels (mobileprune/runtime/kernels.py _maxpool2d,
 * _avgpool2d, global_avgpool): max ignores padding (implicit -inf) and propagates NaN;
 * average sums in double and divides by the torch divisor. */
#include <math.h>

#include "fastmath.h"
#include "internal.h"
#include "kernels/kernels.h"

enum { P_H = 1, P_W, P_HO, P_WO, P_KH, P_KW, P_SH, P_SW, P_PH, P_PW, P_DH, P_DW, P_INCL, P_DIV,
       P_EXACT2, P_KERNEL };

/* 2x2 max pooling kernels (kernels/kernels.inc), the last one this CPU runs is used. */
typedef struct pool_kernel {
    mp_isa isa;
    const char* name;
    mp_maxpool2x2_fn fn;
} pool_kernel;

static const pool_kernel k_pool[] = {
#define MP_CONV_UKERNEL(isa, name, lanes, nv1, nv4, nva)
#define MP_LINEAR_UKERNEL(isa, name, kind)
#define MP_POOL_UKERNEL(isa, name) {isa, "maxpool-2x2 " #name, mp_##name},
#include "kernels/kernels.inc"
#undef MP_CONV_UKERNEL
#undef MP_LINEAR_UKERNEL
#undef MP_POOL_UKERNEL
};

static int64_t pick_pool_kernel(mp_isa isa)
{
    int64_t k = 0;
    for (size_t i = 0; i < sizeof(k_pool) / sizeof(k_pool[0]); i++)
        if (k_pool[i].isa <= isa && k_pool[i].isa >= k_pool[k].isa) k = (int64_t)i;
    return k;
}

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* v when it is greater than m or NaN, else m: both tests evaluated and the result picked
 * on bits (fastmath.h), so no branch (a branch on every comparison mispredicts on ReLU
 * outputs, full of ties) and loops vectorise */
static inline float max_nan(float m, float v) {
    const uint32_t take = 0u - (uint32_t)((v > m) | (v != v));
    return u2f(select_bits(take, f2u(v), f2u(m)));
}

/* Output columns [lo, hi) whose whole window row lies inside the input (no bounds checks
 * there): xo s - p >= 0 and xo s - p + (k - 1) d <= W - 1. */
static void interior(int64_t W, int64_t Wo, int64_t k, int64_t s, int64_t p, int64_t d,
                     int64_t* lo, int64_t* hi) {
    int64_t num = W - 1 + p - (k - 1) * d;
    *lo = (p + s - 1) / s;
    *hi = num < 0 ? 0 : num / s + 1;
    if (*lo > Wo) *lo = Wo;
    if (*hi > Wo) *hi = Wo;
    if (*hi < *lo) *hi = *lo;
}

/* One window row tap (input row `row`, column offset j d - p) into the running maxima of
 * an output row: the interior columns in a plain strided loop, the borders checked. */
static void max_tap(const int64_t* p, const float* row, float* o, int64_t off, int64_t lo,
                    int64_t hi) {
    int64_t sw = p[P_SW], W = p[P_W];
    for (int64_t xo = 0; xo < lo; xo++) {
        int64_t w = xo * sw + off;
        if (w >= 0 && w < W) o[xo] = max_nan(o[xo], row[w]);
    }
    for (int64_t xo = lo; xo < hi; xo++) o[xo] = max_nan(o[xo], row[xo * sw + off]);
    for (int64_t xo = hi; xo < p[P_WO]; xo++) {
        int64_t w = xo * sw + off;
        if (w >= 0 && w < W) o[xo] = max_nan(o[xo], row[w]);
    }
}

/* Max over each window (padding ignored: implicit -inf); the updates of one output follow
 * the window's row-major order, so ties and NaN resolve as in the Python runtime. */
static void maxpool_plane(const int64_t* p, const float* x, float* y) {
    int64_t lo, hi;
    interior(p[P_W], p[P_WO], p[P_KW], p[P_SW], p[P_PW], p[P_DW], &lo, &hi);
    for (int64_t yo = 0; yo < p[P_HO]; yo++) {
        float* o = y + yo * p[P_WO];
        for (int64_t xo = 0; xo < p[P_WO]; xo++) o[xo] = -INFINITY;
        for (int64_t i = 0; i < p[P_KH]; i++) {
            int64_t h = yo * p[P_SH] - p[P_PH] + i * p[P_DH];
            if (h < 0 || h >= p[P_H]) continue;
            for (int64_t j = 0; j < p[P_KW]; j++)
                max_tap(p, x + h * p[P_W], o, j * p[P_DW] - p[P_PW], lo, hi);
        }
    }
}

/* 2x2 window, stride 2, no padding (the common case): the kernel of this CPU. */
static void maxpool2x2_plane(const int64_t* p, const float* x, float* y) {
    k_pool[p[P_KERNEL]].fn(x, y, (size_t)p[P_HO], (size_t)p[P_W], (size_t)p[P_WO]);
}

#define MP_AVG_BLOCK 256

/* Window sums of output columns [x0, x1) of one output row, in double, tap by tap (input
 * rows h0..h1, then columns left to right: the order of the Python runtime's sum). */
static void avg_sums(const int64_t* p, const float* x, int64_t h0, int64_t h1, int64_t x0,
                     int64_t x1, int64_t lo, int64_t hi, double* acc) {
    int64_t W = p[P_W], sw = p[P_SW];
    int64_t a = lo > x0 ? lo : x0, b = hi < x1 ? hi : x1; /* interior part of the block */
    if (b < a) b = a;
    for (int64_t xo = x0; xo < x1; xo++) acc[xo - x0] = 0.0;
    for (int64_t h = h0; h < h1; h++) {
        const float* row = x + h * W;
        for (int64_t j = 0; j < p[P_KW]; j++) {
            int64_t off = j - p[P_PW];
            for (int64_t xo = a; xo < b; xo++) acc[xo - x0] += row[xo * sw + off];
            for (int64_t xo = x0; xo < x1; xo++) {
                int64_t w = xo * sw + off;
                if ((xo < a || xo >= b) && w >= 0 && w < W) acc[xo - x0] += row[w];
            }
        }
    }
}

/* Average pooling: torch's divisor (count_include_pad: the window clipped to the padded
 * input; else the valid taps; divisor_override wins), the sum in double. */
static void avgpool_plane(const int64_t* p, const float* x, float* y) {
    int64_t H = p[P_H], W = p[P_W], lo, hi;
    double acc[MP_AVG_BLOCK];
    interior(W, p[P_WO], p[P_KW], p[P_SW], p[P_PW], 1, &lo, &hi);
    for (int64_t yo = 0; yo < p[P_HO]; yo++) {
        int64_t hs = yo * p[P_SH] - p[P_PH], he = imin(hs + p[P_KH], H + p[P_PH]);
        int64_t h0 = imax(hs, 0), h1 = imin(he, H);
        for (int64_t x0 = 0; x0 < p[P_WO]; x0 += MP_AVG_BLOCK) {
            int64_t x1 = imin(x0 + MP_AVG_BLOCK, p[P_WO]);
            avg_sums(p, x, h0, h1, x0, x1, lo, hi, acc);
            for (int64_t xo = x0; xo < x1; xo++) {
                int64_t ws = xo * p[P_SW] - p[P_PW], we = imin(ws + p[P_KW], W + p[P_PW]);
                int64_t w0 = imax(ws, 0), w1 = imin(we, W);
                int64_t d = p[P_DIV] > 0 ? p[P_DIV]
                            : p[P_INCL] ? (he - hs) * (we - ws) : (h1 - h0) * (w1 - w0);
                y[yo * p[P_WO] + xo] = d > 0 ? (float)(acc[xo - x0] / (double)d) : 0.0f;
            }
        }
    }
}

/* Adaptive average pooling: output bin i of a length-L axis with O bins averages input
 * positions [floor(i L / O), ceil((i + 1) L / O)) (PyTorch's rule), summed in double. */
static void adaptive_plane(const int64_t* p, const float* x, float* y) {
    for (int64_t yo = 0; yo < p[P_HO]; yo++) {
        int64_t h0 = yo * p[P_H] / p[P_HO], h1 = ((yo + 1) * p[P_H] + p[P_HO] - 1) / p[P_HO];
        for (int64_t xo = 0; xo < p[P_WO]; xo++) {
            int64_t w0 = xo * p[P_W] / p[P_WO], w1 = ((xo + 1) * p[P_W] + p[P_WO] - 1) / p[P_WO];
            double sum = 0.0;
            for (int64_t h = h0; h < h1; h++)
                for (int64_t w = w0; w < w1; w++) sum += x[h * p[P_W] + w];
            y[yo * p[P_WO] + xo] = (float)(sum / (double)((h1 - h0) * (w1 - w0)));
        }
    }
}

static void pool_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    size_t in_plane = (size_t)(s->p[P_H] * s->p[P_W]);
    size_t out_plane = (size_t)(s->p[P_HO] * s->p[P_WO]);
    void (*plane)(const int64_t*, const float*, float*) =
        s->p[0] == 3 ? adaptive_plane : s->p[0] == 2 ? maxpool2x2_plane
        : s->p[0] == 1 ? maxpool_plane : avgpool_plane;
    if (s->p[P_EXACT2]) { /* 2x2 pooling that tiles the planes: one run of rows */
        k_pool[s->p[P_KERNEL]].fn(s->in[0] + b * in_plane, s->out + b * out_plane,
                                  (e - b) * (size_t)s->p[P_HO], (size_t)s->p[P_W], (size_t)s->p[P_WO]);
        return;
    }
    for (size_t t = b; t < e; t++) plane(s->p, s->in[0] + t * in_plane, s->out + t * out_plane);
}

/* Mean of each (sample, channel) plane, summed in double (numpy's mean(dtype=float64)). */
static void global_avg_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    size_t inner = (size_t)s->p[1];
    for (size_t t = b; t < e; t++) {
        const float* x = s->in[0] + t * inner;
        double sum = 0.0;
        for (size_t i = 0; i < inner; i++) sum += x[i];
        s->out[t] = (float)(sum / (double)inner);
    }
}

mp_status mp_pooling_setup(mp_step* s) {
    const mp_value* in = &s->model->values[s->in_tensor[0]];
    const mp_value* out = &s->model->values[s->out_tensor];
    const int32_t* a = s->op->iattr;
    s->work = s->batch * (size_t)in->numel;
    s->num_tasks = s->batch * (size_t)in->dims[0];
    if (s->op->code == MP_OP_GLOBAL_AVGPOOL) {
        s->p[1] = in->numel / in->dims[0];
        s->fn = global_avg_task;
        s->kernel = "global-avgpool";
        return MP_OK;
    }
    bool one = in->ndim == 2, max = s->op->code == MP_OP_MAXPOOL1D ||
                                    s->op->code == MP_OP_MAXPOOL2D;
    s->p[P_H] = one ? 1 : in->dims[1];
    s->p[P_W] = in->dims[in->ndim - 1];
    s->p[P_HO] = one ? 1 : out->dims[1];
    s->p[P_WO] = out->dims[out->ndim - 1];
    s->fn = pool_task;
    if (s->op->code == MP_OP_ADAPTIVE_AVGPOOL1D || s->op->code == MP_OP_ADAPTIVE_AVGPOOL2D) {
        s->p[0] = 3;
        s->kernel = "adaptive-avgpool";
        return MP_OK;
    }
    for (int k = 0; k < 8; k++) s->p[P_KH + k] = a[k];
    s->p[P_INCL] = a[9];
    s->p[P_DIV] = a[10];
    bool k2 = a[0] == 2 && a[1] == 2 && a[2] == 2 && a[3] == 2 && a[4] == 0 && a[5] == 0 &&
              a[6] == 1 && a[7] == 1 && 2 * s->p[P_HO] <= s->p[P_H] &&
              2 * s->p[P_WO] <= s->p[P_W];
    s->p[0] = max ? (k2 ? 2 : 1) : 0;
    s->p[P_EXACT2] = max && k2 && 2 * s->p[P_HO] == s->p[P_H] && 2 * s->p[P_WO] == s->p[P_W];
    s->fn = pool_task;
    s->p[P_KERNEL] = pick_pool_kernel(mp_cpu_best_isa());
    s->kernel = max ? (k2 ? k_pool[s->p[P_KERNEL]].name : "maxpool") : "avgpool";
    return MP_OK;
}
