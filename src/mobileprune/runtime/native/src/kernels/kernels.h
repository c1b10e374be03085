/* Micro-kernels of the conv / linear operators (conv.c, linear.c): the packed layouts they
 * read and one declaration per kernel, generated from kernels.inc (the only list of
 * kernels: the dispatcher, tests/native/test_kernels.c and benchmarks/native_kernels.c all
 * read it). One file per kernel variant, named as XNNPACK does:
 * f32_<op>_<lanes>x<rows>__<isa>.c.
 *
 * Direct sparse convolution (seed 003, Algorithm 2, without im2col): Y[row, :] += value *
 * X[col, :], where the row X[col, :] of column col = (c, i, j) is the zero-padded
 * (polyphase, for strides) input plane of channel c shifted by (i, j): one flat input
 * offset `off` per nonzero. Output pixels are cut into vectors of `lanes` pixels
 * (mp_pixvec: the input delta of its first lane and where its valid lanes go); a kernel
 * call runs one pixel block (nv vectors, all held in registers) over a range of row blocks
 * (mp_rowblk: 1 row, or 4 rows that share one column list, zero-filled), so every input
 * load feeds mr FMAs and the output is stored once, bias first and activation fused.
 */
#ifndef MP_KERNELS_H
#define MP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../operators.h"

#if defined(__x86_64__) || defined(_M_X64)
#define MP_ARCH_X86_64 1
#else
#define MP_ARCH_X86_64 0
#endif
#if defined(__aarch64__)
#define MP_ARCH_ARM64 1
#else
#define MP_ARCH_ARM64 0
#endif

#if defined(__GNUC__)
#define MP_INLINE static inline __attribute__((always_inline))
#define MP_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define MP_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#else
#define MP_INLINE static inline
#define MP_TARGET_AVX2
#define MP_TARGET_AVX512
#endif

/* The first 64-byte aligned float of a scratch block (scratch sizes include 64 spare bytes). */
static inline float* mp_align64(void* p) { return (float*)(((uintptr_t)p + 63) & ~(uintptr_t)63); }
static inline const float* mp_align64_const(const void* p)
{
    return (const float*)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

/* Most vectors per pixel block of any kernel when the vectors are scattered (each its own
 * input delta), when they are contiguous (vector v at delta vec[0].in + v * lanes: one base
 * register and constant displacements), and most rows per row block. */
#define MP_MAX_NV 8
#define MP_MAX_NV_CONTIG 24
#define MP_MAX_MR 4

/* How a vector's valid lanes reach the output. */
enum { MP_VEC_FULL = 0, MP_VEC_PREFIX = 1, MP_VEC_MASKED = 2 };

/* One vector of output pixels of a channel plane: lane l reads input[off + in + l]; the
 * lanes set in `mask` (bit l), in order, go to out[out + 0, 1, ...]. */
typedef struct mp_pixvec {
    int32_t in;
    int32_t out;
    uint32_t mask;
    int32_t kind;
} mp_pixvec;

/* `mr` consecutive output rows starting at `row` with `count` shared nonzeros: input
 * offsets off[nz .. nz + count), values val[val .. val + mr * count) (mr per nonzero).
 * When the input channels are cut in chunks (so that the input a pixel block reads stays
 * in L1), a row has one block per chunk: the first starts from the bias, the others from
 * the partial sums, and only the last applies the activation and stores to the output.
 * Partial sums are whole vectors in a scratch of their own (vector `pv` of row `r` at
 * partial[r * pstride + pv.in]): no masked or scattered lanes between chunks. */
enum { MP_BLK_FIRST = 1, MP_BLK_LAST = 2 };
typedef struct mp_rowblk {
    int32_t row;
    int32_t mr;
    int32_t count;
    int32_t flags;
    int64_t nz;
    int64_t val;
} mp_rowblk;

/* One conv kernel call: pixel block `vec[0 .. nv)` of one image, row blocks [b0, b1). */
typedef struct mp_spconv_args {
    const float* input;       /* padded polyphase buffer of the image */
    float* output;            /* output of the image: rows x plane */
    size_t plane;             /* output floats per channel (Ho * Wo) */
    const mp_pixvec* vec;
    size_t nv;
    int contig;               /* vec[v].in == vec[0].in + v * lanes for every v */
    const mp_rowblk* blocks;
    size_t b0, b1;
    const int32_t* off;
    const float* val;
    const float* bias;        /* one per output row (zeros when the layer has none) */
    float act_min, act_max;
    float* partial;           /* partial sums between channel chunks (NULL: one chunk) */
    size_t pstride;           /* floats per output row in `partial` */
    /* Shift classes (NULL: none; kernels with nva > 0 only, 1-row blocks, contiguous
     * vectors starting on a 64-byte boundary): the nonzeros of row block b are sorted by
     * class s = (offset mod lanes) and stored with offset - s, so every load is aligned;
     * its segments cseg[2i] = s, cseg[2i + 1] = count for i in [cbeg[b], cbeg[b + 1]). A
     * class s > 0 sums into nv + 1 spare vectors Z, then output vector v adds lanes s..s+15
     * of (Z[v], Z[v + 1]): one permute per vector and class instead of a load that straddles
     * a cache line per vector and nonzero. */
    const int32_t* cseg;
    const int32_t* cbeg;
} mp_spconv_args;

typedef void (*mp_spconv_fn)(const mp_spconv_args* a);

/* Linear, rows [r0, r1) of y = act(W x + b) for `batch` inputs.
 * Sparse: CSR rows (ptr, idx, val); dense: W row-major (ptr == NULL, ld = cols); block
 * sparse (BSR, 4x1 blocks): ptr per group of 4 rows, idx per block, 4 values per block, r0 a
 * multiple of 4 and the bias padded to a multiple of 4 rows.
 * Small batches read x (batch, cols) directly; the transposed kernel reads xt (cols, ldx)
 * with ldx >= batch (a multiple of the lanes) and writes y[n * ldy + row]. */
typedef struct mp_linear_args {
    size_t rows, cols, batch;
    const uint32_t* ptr;
    const uint32_t* idx;
    const float* val;
    const float* bias;
    const float* x;
    size_t ldx;
    float* y;
    size_t ldy;
    size_t r0, r1;
    float act_min, act_max;
} mp_linear_args;

typedef void (*mp_linear_fn)(const mp_linear_args* a);

/* 2x2 max pooling, stride 2: `rows` output rows of width wo, input rows of width w. */
typedef void (*mp_maxpool2x2_fn)(const float* x, float* y, size_t rows, size_t w, size_t wo);

#define MP_CONV_UKERNEL(arch_isa, name, lanes, nv1, nv4, nva) void mp_##name(const mp_spconv_args* a);
#define MP_LINEAR_UKERNEL(arch_isa, name, kind) void mp_##name(const mp_linear_args* a);
#define MP_POOL_UKERNEL(arch_isa, name) void mp_##name(const float* x, float* y, size_t rows, size_t w, size_t wo);
#include "kernels.inc"
#undef MP_CONV_UKERNEL
#undef MP_LINEAR_UKERNEL
#undef MP_POOL_UKERNEL

/* Kinds of linear kernels (MP_LINEAR_UKERNEL's third field). */
enum {
    MP_LIN_CSR = 0, MP_LIN_DENSE = 1, MP_LIN_CSR_T = 2, MP_LIN_DENSE_T = 3, MP_LIN_TRANSPOSE = 4,
    MP_LIN_BSR = 5, MP_LIN_BSR_T = 6
};

/* mp_conv_create / mp_linear_create with the kernel family `isa` (at most
 * mp_cpu_best_isa()): the tests and the benchmark run every family the CPU has. */
mp_status mp_conv_create_isa(const mp_conv_desc* desc, const mp_weights* w, uint32_t flags,
                             mp_isa isa, mp_conv_op** out);
mp_status mp_linear_create_isa(const mp_linear_desc* desc, const mp_weights* w,
                               uint32_t flags, mp_isa isa, mp_linear_op** out);

#endif /* MP_KERNELS_H */
