/* Elementwise ops and softmax, in portable C written so that gcc -O3 vectorises the loops:
 * relu, the activation functions (exactly the Python runtime's float32 formulas:
 * mobileprune/runtime/model.py _activation), batchnorm, a tensor with a number (add / sub /
 * mul). Elementwise tasks are chunks of MP_CHUNK elements of the whole batch. */
#include <math.h>
#include <stdlib.h>

#include "fastmath.h"
#include "internal.h"
#include "kernels/kernels.h"

#define MP_CHUNK 4096

static inline void chunk(const mp_step* s, size_t b, size_t e, size_t* i0, size_t* i1) {
    size_t total = (size_t)s->p[0];
    *i0 = b * MP_CHUNK;
    *i1 = e * MP_CHUNK < total ? e * MP_CHUNK : total;
}

static inline float clampf(float v, float lo, float hi) {
    return v < lo ? lo : (v > hi ? hi : v); /* NaN passes through, like np.clip */
}

/* Each activation twice on x86-64: for the baseline ISA and for AVX-512 (16 lanes: the
 * exp-based ones run about 4x faster), the same operations in the same order (no
 * contraction into FMA under -std=c11), so the same bits; setup_activation picks one. */
#if MP_ARCH_X86_64
#define MP_ELTWISE(name, expr)                                          \
    MP_ELTWISE_ISA(name, , expr)                                        \
    MP_ELTWISE_ISA(name##_avx512, MP_TARGET_AVX512, expr)
#else
#define MP_ELTWISE(name, expr) MP_ELTWISE_ISA(name, , expr)
#endif
#define MP_ELTWISE_ISA(name, target, expr)                              \
    target static void name(void* ctx, size_t b, size_t e) {            \
        const mp_step* s = ctx;                                         \
        size_t i0, i1;                                                  \
        chunk(s, b, e, &i0, &i1);                                       \
        const float* restrict x = s->in[0];                             \
        float* restrict y = s->out;                                     \
        const float p0 = s->f[0], p1 = s->f[1];                         \
        (void)p0;                                                       \
        (void)p1;                                                       \
        for (size_t i = i0; i < i1; i++) {                              \
            const float v = x[i];                                       \
            y[i] = (expr);                                              \
        }                                                               \
    }

MP_ELTWISE(relu_task, v < 0.0f ? 0.0f : v)
MP_ELTWISE(hardtanh_task, clampf(v, p0, p1))
MP_ELTWISE(leaky_task, v >= 0.0f ? v : v * p0)
MP_ELTWISE(elu_task, v > 0.0f ? v : expm1f(v) * p0)
MP_ELTWISE(sigmoid_task, sigmoidf(v))
MP_ELTWISE(tanh_task, tanh_fast(v))
MP_ELTWISE(hardsigmoid_task, clampf(v / 6.0f + 0.5f, 0.0f, 1.0f))
MP_ELTWISE(hardswish_task, v * clampf(v + 3.0f, 0.0f, 6.0f) / 6.0f)
MP_ELTWISE(silu_task, v * sigmoidf(v))
/* gelu as torch computes it: x / 2 (1 + erf(x / sqrt 2)), or with approximate="tanh"
 * x / 2 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) */
MP_ELTWISE(gelu_task, 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)))
MP_ELTWISE(gelu_tanh_task,
           0.5f * v * (1.0f + tanh_fast(0.79788456080286536f * (v + 0.044715f * v * v * v))))
/* a tensor and a number, with the fused clamp (act_min / act_max: -inf / +inf if none) */
#define MP_SCALAR_OP(name, expr)                                        \
    static void name(void* ctx, size_t b, size_t e) {                   \
        const mp_step* s = ctx;                                         \
        size_t i0, i1;                                                  \
        chunk(s, b, e, &i0, &i1);                                       \
        const float* restrict x = s->in[0];                             \
        float* restrict y = s->out;                                     \
        const float c = s->f[0], lo = s->act_min, hi = s->act_max;      \
        for (size_t i = i0; i < i1; i++) {                              \
            const float v = x[i];                                       \
            y[i] = clampf(expr, lo, hi);                                \
        }                                                               \
    }

MP_SCALAR_OP(add_scalar_task, v + c)
MP_SCALAR_OP(sub_scalar_task, v - c)
MP_SCALAR_OP(rsub_scalar_task, c - v)
MP_SCALAR_OP(mul_scalar_task, v * c)
MP_SCALAR_OP(div_scalar_task, v / c)
MP_SCALAR_OP(rdiv_scalar_task, c / v)

/* softmax over one axis: task = one (sample, outer index) block of len x inner values;
 * e = exp(x - max), y = e / sum(e) (the Python runtime's order of operations). Over the
 * last axis (inner = 1) the exponentials and the division run in separate loops that
 * vectorise; the sum is added in the same order either way. */
static void softmax_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    size_t len = (size_t)s->p[1], inner = (size_t)s->p[2];
    for (size_t t = b; t < e; t++) {
        const float* restrict x = s->in[0] + t * len * inner;
        float* restrict y = s->out + t * len * inner;
        for (size_t j = 0; j < inner; j++) {
            float mx = x[j], sum = 0.0f;
            for (size_t k = 1; k < len; k++) mx = x[k * inner + j] > mx ? x[k * inner + j] : mx;
            if (inner == 1) {
                for (size_t k = 0; k < len; k++) y[k] = exp_neg(x[k] - mx);
                for (size_t k = 0; k < len; k++) sum += y[k];
                for (size_t k = 0; k < len; k++) y[k] /= sum;
                continue;
            }
            for (size_t k = 0; k < len; k++) {
                float v = exp_neg(x[k * inner + j] - mx);
                y[k * inner + j] = v;
                sum += v;
            }
            for (size_t k = 0; k < len; k++) y[k * inner + j] /= sum;
        }
    }
}

/* batchnorm: y = x * scale[c] + shift[c], rounded after each operation like numpy; a task
 * is one (sample, channel) plane. */
static void batchnorm_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    size_t C = (size_t)s->p[1], inner = (size_t)s->p[2];
    for (size_t t = b; t < e; t++) {
        const float* restrict x = s->in[0] + t * inner;
        float* restrict y = s->out + t * inner;
        const float a = s->scale[t % C], c = s->shift[t % C], lo = s->act_min, hi = s->act_max;
        for (size_t i = 0; i < inner; i++) {
            float v = x[i] * a;
            y[i] = clampf(v + c, lo, hi); /* the fused relu / hardtanh, if any */
        }
    }
}

static mp_status setup_activation(mp_step* s) {
    static const mp_task_fn fns[] = {NULL, hardtanh_task, leaky_task, elu_task, sigmoid_task,
                                     tanh_task, hardsigmoid_task, hardswish_task, silu_task,
                                     NULL, gelu_task};
    static const char* const names[] = {NULL, "hardtanh", "leaky-relu", "elu", "sigmoid",
                                        "tanh", "hardsigmoid", "hardswish", "silu", NULL,
                                        "gelu-erf"};
#if MP_ARCH_X86_64
    static const mp_task_fn fns512[] = {NULL, hardtanh_task_avx512, leaky_task_avx512,
                                        elu_task_avx512, sigmoid_task_avx512, tanh_task_avx512,
                                        hardsigmoid_task_avx512, hardswish_task_avx512,
                                        silu_task_avx512, NULL, gelu_task_avx512};
    const int wide = mp_cpu_best_isa() >= MP_ISA_AVX512;
#else
    const mp_task_fn* fns512 = fns;
    const int wide = 0;
#endif
    int32_t fn = s->op->iattr[0];
    s->f[0] = s->op->fattr[0];
    s->f[1] = s->op->fattr[1];
    if (fn == MP_FN_GELU && s->op->iattr[1] == 1) {
#if MP_ARCH_X86_64
        s->fn = wide ? gelu_tanh_task_avx512 : gelu_tanh_task;
#else
        s->fn = gelu_tanh_task;
#endif
        s->kernel = "gelu-tanh";
        return MP_OK;
    }
    if (fn != MP_FN_SOFTMAX) { /* codes checked at load */
        s->fn = wide ? fns512[fn] : fns[fn];
        s->kernel = names[fn];
        return MP_OK;
    }
    const mp_value* v = &s->model->values[s->in_tensor[0]];
    int64_t outer, inner;
    mp_axis_split(v, s->batch, (uint32_t)s->op->iattr[1], &outer, &inner);
    s->p[1] = v->dims[s->op->iattr[1]];
    s->p[2] = inner;
    s->fn = softmax_task;
    s->num_tasks = (size_t)outer;
    s->kernel = "softmax";
    return MP_OK;
}

static mp_status setup_batchnorm(mp_step* s) {
    const mp_model* m = s->model;
    const mp_value* v = &m->values[s->in_tensor[0]];
    size_t C = (size_t)v->dims[0];
    s->owned = malloc(2 * C * sizeof(float));
    if (!s->owned) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory (batchnorm)");
    const mp_array* sc = &m->arrays[s->op->arrays[0]];
    const mp_array* sh = &m->arrays[s->op->arrays[1]];
    for (size_t c = 0; c < C; c++) {
        s->owned[c] = mp_array_float(sc, c);
        s->owned[C + c] = mp_array_float(sh, c);
    }
    s->scale = s->owned;
    s->shift = s->owned + C;
    s->p[1] = (int64_t)C;
    s->p[2] = v->numel / (int64_t)C;
    s->num_tasks = s->batch * C;
    s->fn = batchnorm_task;
    s->kernel = "batchnorm";
    return MP_OK;
}

static mp_status setup_scalar(mp_step* s) {
    s->f[0] = s->op->fattr[0];
    switch (s->op->code) {
    case MP_OP_ADD: s->fn = add_scalar_task; s->kernel = "add-scalar"; break;
    case MP_OP_SUB:
        s->fn = s->op->iattr[1] ? rsub_scalar_task : sub_scalar_task;
        s->kernel = s->op->iattr[1] ? "scalar-sub" : "sub-scalar";
        break;
    case MP_OP_DIV:
        s->fn = s->op->iattr[1] ? rdiv_scalar_task : div_scalar_task;
        s->kernel = s->op->iattr[1] ? "scalar-div" : "div-scalar";
        break;
    default: s->fn = mul_scalar_task; s->kernel = "mul-scalar"; break;
    }
    return MP_OK;
}

mp_status mp_simple_setup(mp_step* s) {
    const mp_value* v = &s->model->values[s->out_tensor];
    s->p[0] = (int64_t)s->batch * v->numel; /* total elements of the output */
    s->work = (size_t)s->p[0];
    s->num_tasks = ((size_t)s->p[0] + MP_CHUNK - 1) / MP_CHUNK;
    switch (s->op->code) {
#if MP_ARCH_X86_64
    case MP_OP_RELU:
        s->fn = mp_cpu_best_isa() >= MP_ISA_AVX512 ? relu_task_avx512 : relu_task;
        s->kernel = "relu";
        return MP_OK;
#else
    case MP_OP_RELU: s->fn = relu_task; s->kernel = "relu"; return MP_OK;
#endif
    case MP_OP_ACTIVATION: return setup_activation(s);
    case MP_OP_BATCHNORM: return setup_batchnorm(s);
    case MP_OP_ADD: case MP_OP_SUB: case MP_OP_MUL: case MP_OP_DIV:
        return s->op->iattr[0] ? setup_scalar(s) : mp_binary_setup(s);
    case MP_OP_CONCAT: return mp_concat_setup(s);
    case MP_OP_LAYER_NORM: case MP_OP_GROUP_NORM: return mp_norm_setup(s);
    case MP_OP_PERMUTE: case MP_OP_SLICE: case MP_OP_CONSTANT: return mp_layout_setup(s);
    case MP_OP_MATMUL: case MP_OP_MEAN: return mp_matmul_setup(s);
    default: return mp_pooling_setup(s);
    }
}
