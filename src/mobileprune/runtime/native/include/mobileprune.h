/*
 * mobileprune.h - the C API of mobileprune's native inference engine.
 *
 * One header, C11, no dependency beyond the C standard library and pthreads. It runs a
 * pruned network stored in a mobileprune model file (format version 3, docs/native_format.md)
 * with sparse or dense kernels chosen per layer, on x86-64 (AVX2 / AVX-512, chosen at run
 * time), arm64 (NEON) and any other target (portable C).
 *
 * Usage (every call returns an mp_status; MP_OK is 0):
 *
 *     mp_model* model = NULL;
 *     mp_plan* plan = NULL;
 *     if (mp_model_load_file("model.mps", &model) != MP_OK) {
 *         fprintf(stderr, "%s\n", mp_last_error());
 *         return 1;
 *     }
 *     int64_t dims[8]; size_t ndim;
 *     mp_model_input_shape(model, 0, dims, 8, &ndim);       // per sample, batch excluded
 *     mp_plan_create(model, 1, 1, MP_PLAN_DEFAULT, &plan);  // batch 1, 1 thread
 *     const float* inputs[1] = {image};                     // (batch, dims...) float32, C order
 *     float* outputs[1] = {logits};                         // (batch, output dims...)
 *     mp_plan_run(plan, inputs, outputs);                   // no allocation, no I/O
 *     mp_plan_free(plan);
 *     mp_model_free(model);
 *
 * Ownership and lifetime:
 *   - mp_model_load(data, size): the caller keeps `data` alive and unchanged until
 *     mp_model_free; the model reads its arrays in place. mp_model_load_file owns its copy.
 *   - A plan copies and packs the weights it needs at creation; it keeps a pointer to its
 *     model, so free every plan of a model before the model.
 *   - A plan's workspace (intermediate tensors and scratch) is one block: allocated once by
 *     mp_plan_create, or given by the caller with mp_plan_set_workspace (then the caller
 *     owns it; it must stay alive while the plan runs and be 64-byte aligned).
 *   - mp_plan_run never allocates and does no I/O. A plan may be run from any thread but by
 *     one thread at a time; different plans run concurrently.
 *   - Strings returned by the library are owned by it (mp_last_error: until the next call
 *     that fails on the same thread).
 *
 * Errors: a call that fails returns its status and leaves a one-line message that names
 * the cause (for a bad file: the field, op or array at fault) in mp_last_error(), which is
 * thread-local. No call aborts the process or reads outside the bytes it was given.
 */
#ifndef MOBILEPRUNE_H
#define MOBILEPRUNE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MP_VERSION_MAJOR 0
#define MP_VERSION_MINOR 1
#define MP_VERSION_PATCH 0
/* the model file format version this library reads */
#define MP_FORMAT_VERSION 3
/* the largest rank of a per-sample tensor shape */
#define MP_MAX_DIMS 8

typedef enum mp_status {
    MP_OK = 0,
    MP_INVALID_ARGUMENT = 1,     /* a NULL pointer, an index out of range, a bad flag */
    MP_INVALID_MODEL = 2,        /* the bytes are not a valid model file */
    MP_UNSUPPORTED_OP = 3,       /* a valid file with an op or attribute this build cannot run */
    MP_SHAPE_MISMATCH = 4,       /* shapes of the graph do not agree */
    MP_OUT_OF_MEMORY = 5,
    MP_UNSUPPORTED_HARDWARE = 6, /* a kernel was forced that this CPU cannot run */
    MP_IO_ERROR = 7              /* mp_model_load_file could not read the file */
} mp_status;

/* Flags of mp_plan_create (combine with |). */
#define MP_PLAN_DEFAULT 0u
#define MP_PLAN_FORCE_DENSE 1u   /* every conv / linear with its dense kernel */
#define MP_PLAN_FORCE_SPARSE 2u  /* every conv / linear with its sparse kernel */
#define MP_PLAN_NO_TUNE 4u       /* choose kernels by the cost model only: no timing at creation */
#define MP_PLAN_PORTABLE 8u      /* portable C kernels only (no SIMD): the reference path */
#define MP_PLAN_PROFILE 16u      /* time every layer of each run (mp_plan_profile) */

/* A short English name of a status ("ok", "invalid model", ...); never NULL. */
const char* mp_status_string(mp_status status);
/* The library version, "MAJOR.MINOR.PATCH". */
const char* mp_version(void);
/* The model file format version this library reads (MP_FORMAT_VERSION). */
uint32_t mp_format_version(void);
/* The kernels this CPU runs, e.g. "avx512f" / "avx2" / "neon" / "scalar". */
const char* mp_cpu_isa(void);
/* The message of the last failed call on this thread ("" if none). */
const char* mp_last_error(void);

typedef struct mp_model mp_model;
typedef struct mp_plan mp_plan;

/* Validate a model file held in memory (every count, offset and shape is checked against
 * `size` before use) and return a model that reads it in place. */
mp_status mp_model_load(const void* data, size_t size, mp_model** out);
/* Read and validate a model file; the model owns the bytes it read. */
mp_status mp_model_load_file(const char* path, mp_model** out);
void mp_model_free(mp_model* model);

size_t mp_model_num_inputs(const mp_model* model);
size_t mp_model_num_outputs(const mp_model* model);
/* Per-sample shape (batch excluded) of input / output `index`: writes up to `max_dims`
 * sizes to `dims` and the rank to `*ndim` (MP_INVALID_ARGUMENT if max_dims is too small). */
mp_status mp_model_input_shape(const mp_model* model, size_t index, int64_t* dims,
                               size_t max_dims, size_t* ndim);
mp_status mp_model_output_shape(const mp_model* model, size_t index, int64_t* dims,
                                size_t max_dims, size_t* ndim);

/* Plan the model for `batch` samples per run on `threads` threads (>= 1; the caller's
 * thread is one of them): infer and check every shape, choose and pack a kernel per layer,
 * place every intermediate tensor in one workspace, allocate it, start the threads. */
mp_status mp_plan_create(const mp_model* model, size_t batch, size_t threads, uint32_t flags,
                         mp_plan** out);
/* Bytes of workspace the plan needs (64-byte aligned block). */
size_t mp_plan_workspace_size(const mp_plan* plan);
/* Run in caller-owned memory instead (`size` >= mp_plan_workspace_size, `mem` 64-byte
 * aligned); the plan's own block is released. */
mp_status mp_plan_set_workspace(mp_plan* plan, void* mem, size_t size);
/* inputs[i]: (batch, input i shape) float32, C order; outputs[j]: the same for output j.
 * Buffers may be unaligned; outputs must not overlap inputs. */
mp_status mp_plan_run(mp_plan* plan, const float* const* inputs, float* const* outputs);
/* One line per layer: name, op, kernel, storage, density, reason for the choice. Writes at
 * most `size` bytes (NUL-terminated) and the full length needed (without the NUL) to
 * `*needed` when `needed` is not NULL. */
mp_status mp_plan_describe(const mp_plan* plan, char* buf, size_t size, size_t* needed);
/* Per-op wall time of the last mp_plan_run of a plan created with MP_PLAN_PROFILE:
 * seconds[i] for op i of the model, in the order of the lines of mp_plan_describe (0 for an
 * op fused into another one or an alias). Writes min(max, ops) values and the number of
 * ops to `*count` (when not NULL); MP_INVALID_ARGUMENT if the plan does not profile. */
mp_status mp_plan_profile(const mp_plan* plan, double* seconds, size_t max, size_t* count);
void mp_plan_free(mp_plan* plan);

#ifdef __cplusplus
}
#endif

#endif /* MOBILEPRUNE_H */
