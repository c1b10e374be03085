/* Kernel benchmark of the native engine's conv / linear operators on the FER-2013 CNN layers
 * (mobileprune.models.FERNet, input 1x48x48), random unstructured masks, batch 1, 1 thread.
 *
 * Per layer and kernel choice (auto = cost model + timing run, forced sparse, forced dense)
 * the median time of prepare + compute over all tasks, and the throughput on the nonzero
 * multiply-adds (nnz * output pixels / time). Every operator is timed interleaved with the
 * others of its layer, so ratios hold on a busy machine. benchmarks/native_kernels.py
 * builds this file as a shared library, adds torch's dense 1024x1024 matmul peak measured
 * in the same run, and writes docs/benchmarks/native_kernels.md.
 *
 * Standalone: SRC=src/mobileprune/runtime/native/src
 *   gcc -std=c11 -O2 benchmarks/native_kernels.c $SRC/conv.c $SRC/linear.c $SRC/cpu.c \
 *       $SRC/kernels/[a-z]*.c -lm -o native_kernels && taskset -c 1 ./native_kernels [density]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/mobileprune/runtime/native/src/kernels/kernels.h"

#if defined(__GNUC__)
__attribute__((weak))
#endif
mp_status mp_set_error(mp_status status, const char* fmt, ...)
{
    (void)fmt;
    return status;
}

static uint64_t g_rng = 12345;
static double urand(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

#define NCHOICE 3
static const uint32_t k_choice[NCHOICE] = {MP_KERNEL_AUTO, MP_KERNEL_SPARSE, MP_KERNEL_DENSE};

static int cmp_double(const void* a, const void* b)
{
    const double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

/* Random CSR weights (rows x cols) at `density`; returns nnz. */
static int64_t random_csr(int rows, int cols, double density, uint32_t** ptr, uint32_t** idx,
                          float** val)
{
    *ptr = malloc(((size_t)rows + 1) * sizeof(uint32_t));
    *idx = malloc(((size_t)rows * (size_t)cols + 1) * sizeof(uint32_t));
    *val = malloc(((size_t)rows * (size_t)cols + 1) * sizeof(float));
    size_t k = 0;
    for (int r = 0; r < rows; r++) {
        (*ptr)[r] = (uint32_t)k;
        for (int c = 0; c < cols; c++)
            if (urand() < density) (*idx)[k] = (uint32_t)c, (*val)[k++] = (float)(urand() - 0.5);
    }
    (*ptr)[rows] = (uint32_t)k;
    return (int64_t)k;
}

/* Time one conv layer with each kernel choice: median seconds in t[], describe lines in
 * desc[] (160 bytes each). `isa` < 0: the CPU's best. Returns nnz. */
int64_t mp_bench_conv(int cin, int cout, int h, int w, int k, double density, int reps,
                      int isa, double* t, char* desc)
{
    mp_conv_desc d = {cin, cout, 1, h, w, h, w, k, k, 1, 1, 1, 1, k / 2, k / 2, k / 2, k / 2,
                      MP_ACT_RELU, 0.0f, INFINITY};
    uint32_t *ptr, *idx;
    float* val;
    const int cols = cin * k * k;
    const int64_t nnz = random_csr(cout, cols, density, &ptr, &idx, &val);
    const mp_weights mw = {cout, cols, nnz, NULL, ptr, idx, val, NULL};
    mp_conv_op* ops[NCHOICE] = {NULL};
    void* scratch[NCHOICE];
    float* x = malloc((size_t)cin * (size_t)h * (size_t)w * sizeof(float));
    float* y = malloc((size_t)cout * (size_t)h * (size_t)w * sizeof(float));
    for (size_t i = 0; i < (size_t)cin * (size_t)h * (size_t)w; i++) x[i] = (float)urand();
    const mp_isa use = isa < 0 ? mp_cpu_best_isa() : (mp_isa)isa;
    for (int c = 0; c < NCHOICE; c++) {
        if (mp_conv_create_isa(&d, &mw, k_choice[c], use, &ops[c]) != MP_OK) return -1;
        mp_conv_describe(ops[c], desc + 160 * c, 160);
        scratch[c] = malloc(mp_conv_scratch_bytes(ops[c], 1));
    }
    double* s = malloc((size_t)reps * NCHOICE * sizeof(double));
    for (int r = 0; r < reps; r++)
        for (int c = 0; c < NCHOICE; c++) {
            const double t0 = mp_now_seconds();
            mp_conv_prepare(ops[c], 1, x, scratch[c]);
            mp_conv_compute(ops[c], 1, x, scratch[c], y, 0, mp_conv_num_tasks(ops[c], 1));
            s[c * reps + r] = mp_now_seconds() - t0;
        }
    for (int c = 0; c < NCHOICE; c++) {
        qsort(s + c * reps, (size_t)reps, sizeof(double), cmp_double);
        t[c] = s[c * reps + reps / 2];
        mp_conv_free(ops[c]);
        free(scratch[c]);
    }
    free(s), free(x), free(y), free(ptr), free(idx), free(val);
    return nnz;
}

/* The same for a linear layer (batch rows). */
int64_t mp_bench_linear(int in, int outn, double density, int batch, int reps, int isa,
                        double* t, char* desc)
{
    const mp_linear_desc d = {in, outn, MP_ACT_RELU, 0.0f, INFINITY, batch};
    uint32_t *ptr, *idx;
    float* val;
    const int64_t nnz = random_csr(outn, in, density, &ptr, &idx, &val);
    const mp_weights mw = {outn, in, nnz, NULL, ptr, idx, val, NULL};
    mp_linear_op* ops[NCHOICE] = {NULL};
    void* scratch[NCHOICE];
    float* x = malloc((size_t)batch * (size_t)in * sizeof(float));
    float* y = malloc((size_t)batch * (size_t)outn * sizeof(float));
    for (size_t i = 0; i < (size_t)batch * (size_t)in; i++) x[i] = (float)urand();
    const mp_isa use = isa < 0 ? mp_cpu_best_isa() : (mp_isa)isa;
    for (int c = 0; c < NCHOICE; c++) {
        if (mp_linear_create_isa(&d, &mw, k_choice[c], use, &ops[c]) != MP_OK) return -1;
        mp_linear_describe(ops[c], (size_t)batch, desc + 160 * c, 160);
        scratch[c] = malloc(mp_linear_scratch_bytes(ops[c], (size_t)batch) + 1);
    }
    double* s = malloc((size_t)reps * NCHOICE * sizeof(double));
    for (int r = 0; r < reps; r++)
        for (int c = 0; c < NCHOICE; c++) {
            const double t0 = mp_now_seconds();
            mp_linear_prepare(ops[c], (size_t)batch, x, scratch[c]);
            mp_linear_compute(ops[c], (size_t)batch, x, scratch[c], y, 0,
                              mp_linear_num_tasks(ops[c], (size_t)batch));
            s[c * reps + r] = mp_now_seconds() - t0;
        }
    for (int c = 0; c < NCHOICE; c++) {
        qsort(s + c * reps, (size_t)reps, sizeof(double), cmp_double);
        t[c] = s[c * reps + reps / 2];
        mp_linear_free(ops[c]);
        free(scratch[c]);
    }
    free(s), free(x), free(y), free(ptr), free(idx), free(val);
    return nnz;
}

/* Raw FMA peak of this core in GMAC/s (16 independent 16-lane FMA chains in registers),
 * AVX-512 only (0 elsewhere): the ceiling beside torch's matmul peak. */
#if MP_ARCH_X86_64
#include <immintrin.h>
MP_TARGET_AVX512 static double fma_peak_avx512(void)
{
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_set1_ps((float)i);
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    const long iters = 200000;
    const double t0 = mp_now_seconds();
    for (long it = 0; it < iters; it++)
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    const double dt = mp_now_seconds() - t0;
    float sink = 0.0f;
    for (int i = 0; i < 16; i++) sink += _mm512_reduce_add_ps(acc[i]);
    return sink == 12345.0f ? 0.0 : (double)iters * 16 * 16 / dt * 1e-9;
}
#endif

double mp_bench_fma_peak(void)
{
#if MP_ARCH_X86_64
    if (mp_cpu_best_isa() == MP_ISA_AVX512) {
        double best = 0.0;
        for (int i = 0; i < 5; i++) {
            const double p = fma_peak_avx512();
            best = p > best ? p : best;
        }
        return best;
    }
#endif
    return 0.0;
}

#ifndef MP_BENCH_NO_MAIN
int main(int argc, char** argv)
{
    const double density = argc > 1 ? atof(argv[1]) : 0.1;
    static const int conv[9][3] = {{1, 32, 48},  {32, 32, 48},  {32, 32, 48},
                                   {32, 64, 24}, {64, 64, 24},  {64, 64, 24},
                                   {64, 128, 12}, {128, 128, 12}, {128, 128, 12}};
    double t[NCHOICE], tot[NCHOICE] = {0}, macs = 0;
    char desc[160 * NCHOICE];
    printf("density %.2f, isa %d; us auto / sparse / dense, GMAC/s on nonzeros (auto)\n", density,
           (int)mp_cpu_best_isa());
    for (int l = 0; l < 9; l++) {
        const int64_t nnz = mp_bench_conv(conv[l][0], conv[l][1], conv[l][2], conv[l][2], 3,
                                          l == 0 ? 1.0 : density, 201, -1, t, desc);
        const double m = (double)nnz * conv[l][2] * conv[l][2], pk = mp_bench_fma_peak();
        macs += m;
        for (int c = 0; c < NCHOICE; c++) tot[c] += t[c];
        printf("conv%d %7.1f %7.1f %7.1f  %5.1f GMAC/s %4.0f%% of fma %5.1f  %s\n", l + 1,
               t[0] * 1e6, t[1] * 1e6, t[2] * 1e6, m / t[0] * 1e-9, 100 * m / t[0] * 1e-9 / pk,
               pk, desc);
    }
    static const int fc[3][2] = {{4608, 64}, {64, 64}, {64, 6}};
    for (int l = 0; l < 3; l++) {
        const int64_t nnz = mp_bench_linear(fc[l][0], fc[l][1], density, 1, 201, -1, t, desc);
        macs += (double)nnz;
        for (int c = 0; c < NCHOICE; c++) tot[c] += t[c];
        printf("fc%d   %7.1f %7.1f %7.1f  %5.1f GMAC/s  %s\n", l + 1, t[0] * 1e6, t[1] * 1e6,
               t[2] * 1e6, (double)nnz / t[0] * 1e-9, desc);
    }
    printf("total %7.1f %7.1f %7.1f  %5.1f GMAC/s\n", tot[0] * 1e6, tot[1] * 1e6, tot[2] * 1e6,
           macs / tot[0] * 1e-9);
    return 0;
}
#endif
