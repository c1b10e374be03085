/* Internal interface between the engine core (graph, plan, arena, threads: model.c,
 * plan.c, ops/ *.c) and the heavy operators, convolution and linear (conv.c, linear.c and
 * their SIMD kernels in kernels/). Not part of the public API (include/mobileprune.h).
 *
 * An operator follows XNNPACK's shape: create packs the weights for the chosen kernel and
 * records the choice and its reason; run time is pure arithmetic split in independent
 * tasks the core hands to its threads:
 *
 *     create(desc, weights, flags) -> op         (plan time: analyse, choose, pack, maybe time)
 *     scratch_bytes(op, batch)                   (shared scratch: padded input, transposes...)
 *     prepare(op, batch, in, scratch)            (one thread, cheap: padding / layout change)
 *     num_tasks(op, batch)                       (pieces of the output, any split is valid)
 *     compute(op, batch, in, scratch, out, t0, t1) (tasks [t0, t1): any thread, no allocation)
 *
 * compute reads the scratch that prepare filled; a conv task may also write the part of the
 * scratch that only it reads (a depthwise / grouped conv pads its own channels while they
 * are in cache, so its prepare does nothing). Tasks never write what another task reads.
 *
 * Tensors are float32, C order, contiguous: conv input (batch, C, H, W) -> output (batch, O,
 * Ho, Wo) (1-D convs: H = Ho = 1); linear input (batch, in) -> output (batch, out). Bias and
 * the fused activation (act) are applied inside compute.
 */
#ifndef MP_OPERATORS_H
#define MP_OPERATORS_H

#include <stddef.h>
#include <stdint.h>

#include "../include/mobileprune.h"

/* Set the thread's last error (printf format) and return `status`. Defined by the core. */
mp_status mp_set_error(mp_status status, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Epilogue fused into conv / linear: y = min(max(y, act_min), act_max). */
typedef enum mp_act_kind { MP_ACT_NONE = 0, MP_ACT_RELU = 1, MP_ACT_CLAMP = 2 } mp_act_kind;

/* Kernel choice flags (same bits as MP_PLAN_*). */
#define MP_KERNEL_AUTO 0u
#define MP_KERNEL_DENSE MP_PLAN_FORCE_DENSE
#define MP_KERNEL_SPARSE MP_PLAN_FORCE_SPARSE
#define MP_KERNEL_NO_TUNE MP_PLAN_NO_TUNE
#define MP_KERNEL_PORTABLE MP_PLAN_PORTABLE

/* A weight matrix in its GEMM view, float32, as the core hands it over (converted from
 * the file's float16 values / uint16 indices / dense storage as needed). Exactly one of
 * `dense` (rows x cols, row-major) and the CSR triple (indptr: rows + 1, indices and
 * values: nnz) is set. `bias` (rows) may be NULL. Only read during create. */
typedef struct mp_weights {
    int32_t rows, cols;
    int64_t nnz;
    const float* dense;
    const uint32_t* indptr;
    const uint32_t* indices;
    const float* values;
    const float* bias;
} mp_weights;

typedef struct mp_conv_desc {
    int32_t in_channels, out_channels, groups;
    int32_t in_h, in_w, out_h, out_w;
    int32_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
    int32_t pad_top, pad_bottom, pad_left, pad_right;
    mp_act_kind act;
    float act_min, act_max; /* MP_ACT_RELU: 0, +inf */
} mp_conv_desc;

typedef struct mp_conv_op mp_conv_op;
mp_status mp_conv_create(const mp_conv_desc* desc, const mp_weights* w, uint32_t flags,
                         mp_conv_op** out);
size_t mp_conv_scratch_bytes(const mp_conv_op* op, size_t batch);
void mp_conv_prepare(const mp_conv_op* op, size_t batch, const float* in, void* scratch);
size_t mp_conv_num_tasks(const mp_conv_op* op, size_t batch);
void mp_conv_compute(const mp_conv_op* op, size_t batch, const float* in, void* scratch,
                     float* out, size_t task_begin, size_t task_end);
/* Let `a` write its output straight into the padded input buffer of `b`, its only reader
 * (conv -> conv, stride 1 on b's side, no depthwise fill or taps on either): b's prepare
 * then zeroes the padding instead of copying the input. Returns 1 when chained; 0 (nothing
 * changed) when they do not fit. Then a's compute takes mp_conv_input_buffer(b, b's
 * scratch) as its output, and b's prepare must run after a's compute, with that scratch. */
int mp_conv_chain(mp_conv_op* a, mp_conv_op* b);
/* Where in `scratch` the op keeps its padded input buffer (NULL: it reads its input). */
float* mp_conv_input_buffer(const mp_conv_op* op, void* scratch);
/* "kernel-name storage density=0.100 reason" (one line, no newline). */
void mp_conv_describe(const mp_conv_op* op, char* buf, size_t size);
void mp_conv_free(mp_conv_op* op);

typedef struct mp_linear_desc {
    int32_t in_features, out_features;
    mp_act_kind act;
    float act_min, act_max;
    int32_t rows; /* rows per run (samples x leading dims) the timing run uses; 0: 1 */
} mp_linear_desc;

typedef struct mp_linear_op mp_linear_op;
mp_status mp_linear_create(const mp_linear_desc* desc, const mp_weights* w, uint32_t flags,
                           mp_linear_op** out);
size_t mp_linear_scratch_bytes(const mp_linear_op* op, size_t batch);
void mp_linear_prepare(const mp_linear_op* op, size_t batch, const float* in, void* scratch);
size_t mp_linear_num_tasks(const mp_linear_op* op, size_t batch);
void mp_linear_compute(const mp_linear_op* op, size_t batch, const float* in,
                       const void* scratch, float* out, size_t task_begin, size_t task_end);
/* The kernel that runs `batch` inputs, the storage and the reason of the choice. */
void mp_linear_describe(const mp_linear_op* op, size_t batch, char* buf, size_t size);
void mp_linear_free(mp_linear_op* op);

/* CPU features, detected once (cpu.c). */
typedef enum mp_isa { MP_ISA_SCALAR = 0, MP_ISA_NEON = 1, MP_ISA_AVX2 = 2, MP_ISA_AVX512 = 3 } mp_isa;
mp_isa mp_cpu_best_isa(void);
/* Seconds of CPU time of the calling thread (monotonic clock where that is missing): the
 * timing runs at create (cpu.c). */
double mp_now_seconds(void);
/* Seconds of the monotonic clock: MP_PLAN_PROFILE's per-step wall time (cpu.c). */
double mp_wall_seconds(void);

#endif /* MP_OPERATORS_H */
