/* What unaligned input loads cost the direct sparse convolution loop (seed 003,
 * Algorithm 2), AVX2 + FMA: the engine's row loop (bias, then per nonzero one broadcast
 * weight and 12 loads of 8 pixels, then ReLU and store) on one random sparse 3x3 layer
 * (cin -> cout at H x H, stride 1, padding 1, flat padded rows, blocks of 96 pixels), run
 *   unaligned  with the layer's real offsets (c * plane + ky * (H+2) + kx: most loads
 *              start inside a 32-byte word, many straddle a cache line), and
 *   aligned    with every offset rounded down to a multiple of 8 floats: the same rows,
 *              counts and footprint, every load one aligned 32-byte word.
 * "aligned" is the loop of a layout whose vectors never straddle, such as 8 images of a
 * batch as the 8 lanes (each pixel's 8 values contiguous); its results are wrong on purpose
 * (it measures time only). Minimum of 300 interleaved runs, useful multiply-adds.
 * Standalone, x86-64 only (not part of the engine):
 *   cc -O2 -std=c11 benchmarks/spconv_align.c -o /tmp/spconv_align
 *   taskset -c 0 /tmp/spconv_align 32 32 48; ... 64 64 24; ... 128 128 12   [density, default 0.1]
 * Results: docs/benchmarks/native_kernels.md (notes). */
#define _POSIX_C_SOURCE 200809L
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NV 12

static uint64_t g_rng = 1;
static double urand(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* rows [0, cout) of every block: out = relu(bias + sum_k val[k] * in[base + off[k] + 8 v]) */
__attribute__((target("avx2,fma"))) static void run(const float* in, float* out, int nblk, int cout,
                                                    const int* ptr, const int* off, const float* val,
                                                    int plane)
{
    for (int b = 0; b < nblk; b++) {
        const float* base = in + b * 96;
        for (int r = 0; r < cout; r++) {
            __m256 acc[NV];
#pragma GCC unroll 12
            for (int v = 0; v < NV; v++) acc[v] = _mm256_set1_ps(0.01f);
            for (int k = ptr[r]; k < ptr[r + 1]; k++) {
                const float* p = base + off[k];
                const __m256 w = _mm256_broadcast_ss(val + k);
#pragma GCC unroll 12
                for (int v = 0; v < NV; v++) acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * v), acc[v]);
            }
            float* o = out + (size_t)r * plane + b * 96;
#pragma GCC unroll 12
            for (int v = 0; v < NV; v++) _mm256_storeu_ps(o + 8 * v, _mm256_max_ps(_mm256_setzero_ps(), acc[v]));
        }
    }
}

int main(int argc, char** argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s CIN COUT H [DENSITY]\n", argv[0]);
        return 2;
    }
    const int cin = atoi(argv[1]), cout = atoi(argv[2]), h = atoi(argv[3]);
    const double density = argc > 4 ? atof(argv[4]) : 0.1;
    const int wq = h + 2, plane = wq * wq, nblk = ((h - 1) * wq + h + 95) / 96;
    const size_t nin = (size_t)cin * plane + 4096, nout = (size_t)cout * plane + 4096;
    float* in = aligned_alloc(64, nin * sizeof(float));
    float* out = aligned_alloc(64, nout * sizeof(float));
    int* ptr = malloc((size_t)(cout + 1) * sizeof(int));
    int* off = malloc((size_t)cin * 9 * cout * sizeof(int));
    int* off_aligned = malloc((size_t)cin * 9 * cout * sizeof(int));
    float* val = malloc((size_t)cin * 9 * cout * sizeof(float));
    if (!in || !out || !ptr || !off || !off_aligned || !val) return 1;
    for (size_t i = 0; i < nin; i++) in[i] = (float)urand();
    int nz = 0;
    for (int r = 0; r < cout; r++) {
        ptr[r] = nz;
        for (int c = 0; c < cin; c++)
            for (int t = 0; t < 9; t++)
                if (urand() < density) {
                    off[nz] = c * plane + (t / 3) * wq + t % 3;
                    off_aligned[nz] = off[nz] & ~7;
                    val[nz++] = (float)urand();
                }
    }
    ptr[cout] = nz;
    const int* offs[2] = {off, off_aligned};
    const char* name[2] = {"unaligned", "aligned"};
    double best[2] = {1e9, 1e9};
    for (int rep = 0; rep < 300; rep++)
        for (int i = 0; i < 2; i++) {
            const int j = (i + rep) % 2;
            const double t0 = now();
            run(in, out, nblk, cout, ptr, offs[j], val, plane);
            const double t = now() - t0;
            if (t < best[j]) best[j] = t;
        }
    for (int i = 0; i < 2; i++)
        printf("%d->%d at %dx%d, %.0f%% nonzero: %-9s %8.1f us %6.1f GMAC/s\n", cin, cout, h, h,
               100 * density, name[i], best[i] * 1e6, (double)nz * h * h / best[i] / 1e9);
    printf("aligned / unaligned speed: %.2fx (%.1f nonzeros per row)\n", best[0] / best[1], (double)nz / cout);
    return 0;
}
