/* Internal declarations of the engine core: the decoded model (model.c, shapes.c) and its
 * weights (weights.c), the plan (plan.c, arena.c, run.c), the thread pool (threads.c) and
 * the simple ops (ops_*.c).
 *
 * A model is a read-only view of a format-3 file (docs/native_format.md): its records are
 * decoded once, with explicit little-endian reads, into the structs below; array data
 * stays in the file bytes and is read element by element with mp_rd_* (never through a
 * cast of a possibly misaligned pointer).
 */
#ifndef MP_INTERNAL_H
#define MP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../include/mobileprune.h"
#include "operators.h"

#define MP_NONE 0xFFFFFFFFu
#define MP_HEADER_SIZE 128u
#define MP_VALUE_RECORD 48u
#define MP_OP_RECORD 160u
#define MP_ARRAY_RECORD 32u
#define MP_MAX_RECORDS (1u << 20)
#define MP_MAX_DIM 0x7FFFFFFFLL
#define MP_MAX_NUMEL (1LL << 31)
#define MP_ARRAY_SLOTS 8
#define MP_NUM_IATTR 20
#define MP_NUM_FATTR 6
#define MP_ALIGN 64u

typedef enum mp_op_code {
#define MP_OP(e, code, name) MP_OP_##e = code,
#include "ops.inc"
#undef MP_OP
} mp_op_code;

typedef enum mp_fn_code {
#define MP_ACT(e, code, name) MP_FN_##e = code,
#include "activations.inc"
#undef MP_ACT
} mp_fn_code;

/* Codes run 1..MP_NUM_OPS (ops.inc) and 1..MP_NUM_FNS (activations.inc), without gaps. */
enum {
    MP_NUM_OPS = 0
#define MP_OP(e, code, name) + 1
#include "ops.inc"
#undef MP_OP
    ,
    MP_NUM_FNS = 0
#define MP_ACT(e, code, name) + 1
#include "activations.inc"
#undef MP_ACT
};

typedef enum mp_dtype {
    MP_DT_F32 = 1, MP_DT_F16 = 2, MP_DT_U16 = 3, MP_DT_U32 = 4, MP_DT_I32 = 5
} mp_dtype;

/* A value (tensor of the graph): per-sample shape, producer op or MP_NONE (model input). */
typedef struct mp_value {
    uint32_t name;
    uint32_t ndim;
    int64_t dims[MP_MAX_DIMS];
    int64_t numel;
    uint32_t producer;
} mp_value;

typedef struct mp_op {
    uint32_t code, name, output, num_inputs, inputs_ref;
    uint32_t arrays[MP_ARRAY_SLOTS];
    int32_t iattr[MP_NUM_IATTR];
    float fattr[MP_NUM_FATTR];
} mp_op;

typedef struct mp_array {
    uint32_t dtype;
    uint64_t offset, count;
    const uint8_t* data; /* into the file bytes (any alignment) */
} mp_array;

struct mp_model {
    const uint8_t* bytes;
    size_t size;
    void* owned; /* mp_model_load_file: the bytes read */
    uint32_t num_values, num_ops, num_arrays, num_refs, num_inputs, num_outputs;
    uint32_t value_dtype, producer, architecture;
    mp_value* values;
    mp_op* ops;
    uint32_t* refs;
    mp_array* arrays;
    const char* strings;
    uint64_t strings_size;
    const uint32_t* inputs;  /* value ids, into refs */
    const uint32_t* outputs; /* value ids, into refs */
};

/* ---- little-endian reads (any alignment) */
static inline uint16_t mp_rd_u16(const uint8_t* p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t mp_rd_u32(const uint8_t* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static inline uint64_t mp_rd_u64(const uint8_t* p) {
    return (uint64_t)mp_rd_u32(p) | ((uint64_t)mp_rd_u32(p + 4) << 32);
}
static inline float mp_rd_f32(const uint8_t* p) {
    uint32_t u = mp_rd_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
float mp_half_to_float(uint16_t h);
/* Element i of a float32 / float16 array as float. */
float mp_array_float(const mp_array* a, uint64_t i);
/* Element i of a uint16 / uint32 / int32 array. */
uint64_t mp_array_uint(const mp_array* a, uint64_t i);
size_t mp_dtype_size(uint32_t dtype);
const char* mp_dtype_name(uint32_t dtype);

/* ---- overflow-safe arithmetic on non-negative values: false on overflow */
static inline bool mp_mul_u64(uint64_t a, uint64_t b, uint64_t* r) {
    if (a != 0 && b > UINT64_MAX / a) return false;
    *r = a * b;
    return true;
}
static inline bool mp_add_u64(uint64_t a, uint64_t b, uint64_t* r) {
    if (b > UINT64_MAX - a) return false;
    *r = a + b;
    return true;
}

/* ---- model helpers (model.c) */
uint32_t mp_crc32(const uint8_t* data, size_t n);
static inline const char* mp_str(const mp_model* m, uint32_t off) {
    return m->strings + off; /* offsets are checked at load; the section ends with NUL */
}
static inline const uint32_t* mp_op_inputs(const mp_model* m, const mp_op* op) {
    return m->refs + op->inputs_ref;
}
const char* mp_op_name(uint32_t code);
const char* mp_fn_name(uint32_t code);
/* Set an error prefixed by "op 'name' (#index): ". */
mp_status mp_op_error(const mp_model* m, uint32_t index, mp_status st, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Validate op `index` (attributes, arrays, input shapes) and check that the stored output
 * dims equal the inferred ones (shapes.c). Inputs are already known to be defined. */
mp_status mp_check_op(const mp_model* m, uint32_t index);

/* The weight stored at iattr / array slots at..at+3 of a conv / linear (at 0) or lstm /
 * gru (W_ih at 0, W_hh at 4) record, converted to float32 / uint32 in buffers the caller
 * frees with mp_wbuf_free (weights.c). */
typedef struct mp_wbuf {
    float* values;
    float* bias;
    uint32_t* indptr;
    uint32_t* indices;
} mp_wbuf;
mp_status mp_make_weights(const mp_model* m, const mp_op* op, int at, mp_weights* w, mp_wbuf* b);
void mp_wbuf_free(mp_wbuf* b);

/* ---- thread pool (threads.c) */
typedef void (*mp_task_fn)(void* ctx, size_t begin, size_t end);
typedef struct mp_pool mp_pool;
mp_status mp_pool_create(size_t threads, mp_pool** out);
/* Run fn over tasks [0, n) split in contiguous ranges over the pool's threads (the
 * caller's thread included); returns when every range is done. */
void mp_pool_run(mp_pool* pool, mp_task_fn fn, void* ctx, size_t n);
size_t mp_pool_threads(const mp_pool* pool);
void mp_pool_free(mp_pool* pool);

/* ---- plan (plan.c, arena.c, run.c) */
typedef struct mp_step mp_step;
struct mp_step {
    const mp_model* model;
    size_t batch;
    uint32_t op_index;
    uint32_t code;
    const mp_op* op;
    uint32_t num_in;
    uint32_t* in_tensor; /* tensor (value) ids */
    uint32_t out_tensor;
    const float** in;    /* bound pointers (mp_plan_bind) */
    float* out;
    void* scratch;
    size_t scratch_bytes, scratch_offset;
    /* conv over sample groups (batch >= 2 on several threads): task g = samples
     * [g B / groups, (g + 1) B / groups), prepared and computed by one thread in its own
     * scratch of group_scratch bytes (no single-threaded prepare); 0: tasks of the op */
    size_t groups, group_scratch;
    mp_conv_op* conv;
    /* conv chained into the next conv (mp_conv_chain): `into` is that step, whose scratch
     * holds this step's output and so lives from this step on (`scratch_from`) */
    struct mp_step* into;
    int64_t scratch_from;
    mp_linear_op* linear;
    size_t rows;         /* linear: samples x leading dims, the rows the operator sees */
    struct mp_rnn* rnn;  /* lstm / gru (ops_rnn.c): its linear operators and scratch layout */
    mp_act_kind act;
    float act_min, act_max;
    /* simple ops: fn(step, begin, end) over tasks [0, num_tasks) */
    mp_task_fn fn;
    size_t num_tasks;
    size_t work; /* elements touched (or multiply-adds): decides whether threads pay */
    const char* kernel;
    /* op parameters in the form the kernels read */
    int64_t p[40];
    float f[4];
    const float* scale; /* batchnorm */
    const float* shift;
    float* owned;       /* converted constant arrays owned by the step */
    double seconds;     /* MP_PLAN_PROFILE: wall time of this step in the last run */
};

typedef struct mp_tensor {
    size_t bytes;      /* whole batch, 64-byte rounded */
    size_t offset;     /* in the workspace */
    int64_t first, last; /* step indices of first / last use */
    uint32_t alias;    /* value id whose memory this value shares (itself if none) */
    int in_scratch;    /* written into its reader's padded buffer (chained convs): no memory */
} mp_tensor;

struct mp_plan {
    const mp_model* model;
    uint32_t* op_step;       /* per op: its step, or MP_NONE (fused activation, reshape) */
    uint32_t* op_fused_into; /* per op: the conv / linear op it is fused into, or MP_NONE */
    uint32_t* op_act;        /* per conv / linear op: the activation op fused, or MP_NONE */
    size_t batch, threads;
    uint32_t flags;
    size_t num_steps;
    mp_step* steps;
    mp_tensor* tensors; /* one per value */
    size_t ws_size;
    void* ws_block;     /* own allocation (NULL if caller-owned) */
    uint8_t* ws;        /* 64-byte aligned base */
    mp_pool* pool;
};

/* The values of a (batch, dims...) tensor around per-sample axis `ax`: outer = batch x the
 * dims before it, inner = the product of the dims after it. */
static inline void mp_axis_split(const mp_value* v, size_t batch, uint32_t ax, int64_t* outer,
                                 int64_t* inner) {
    *outer = (int64_t)batch;
    *inner = 1;
    for (uint32_t d = 0; d < ax; d++) *outer *= v->dims[d];
    for (uint32_t d = ax + 1; d < v->ndim; d++) *inner *= v->dims[d];
}

mp_status mp_plan_place(mp_plan* plan);  /* arena.c: offsets + ws_size */
void mp_plan_bind(mp_plan* plan);        /* arena.c: step pointers for plan->ws */
/* Set fn / num_tasks / work / kernel / parameters of a simple op's step (in, out and
 * model, batch, op already set): ops_eltwise.c dispatches to the others. */
mp_status mp_simple_setup(mp_step* s);
mp_status mp_pooling_setup(mp_step* s);    /* ops_pool.c: max / avg / global average */
mp_status mp_binary_setup(mp_step* s);     /* ops_binary.c: broadcast add / sub / mul / div */
mp_status mp_concat_setup(mp_step* s);     /* ops_binary.c */
mp_status mp_norm_setup(mp_step* s);       /* ops_norm.c: layer_norm, group_norm */
mp_status mp_layout_setup(mp_step* s);     /* ops_layout.c: permute, slice, constant */
mp_status mp_matmul_setup(mp_step* s);     /* ops_matmul.c: matmul, mean */
/* ops_rnn.c: lstm / gru (creates linear operators: the plan's flags and threads) */
mp_status mp_rnn_setup(mp_step* s, uint32_t flags, size_t threads);
void mp_rnn_describe(const mp_step* s, char* buf, size_t size);
void mp_rnn_free(struct mp_rnn* rnn);

#endif /* MP_INTERNAL_H */
