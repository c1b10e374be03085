/* Input layouts for the direct sparse 3x3 convolution loop on AVX-512F (the question behind
 * shift classes; docs/benchmarks/native_kernels.md): one random sparse layer (cin -> cout at
 * H x H, stride 1, padding 1), blocks of NV contiguous 16-float vectors, the same loop over
 *   flat unaligned      the engine's padded rows (15 of 16 loads straddle a cache line),
 *   flat aligned(ceil)  the same with every offset rounded down to 16 floats: wrong results,
 *                       the time of a loop whose loads never straddle (an upper bound),
 *   16 tiles+halo       the 4 x 4 tiles of the image as the 16 lanes, each with its halo:
 *                       every load aligned, more vectors (the halo columns) and input,
 *   wide rows, 3 copies rows padded to 16 floats and three copies shifted by kx: every load
 *                       aligned, three times the input.
 * Minimum of 300 interleaved runs, useful multiply-adds. Standalone, x86-64 AVX-512F only:
 *   cc -O2 -std=c11 -DNV=8 benchmarks/spconv_layouts512.c -o /tmp/l512
 *   taskset -c 1 /tmp/l512 32 32 48; ... 64 64 24; ... 128 128 12   [density] */
#define _POSIX_C_SOURCE 200809L
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static uint64_t g_rng = 1;
static double urand(void){ g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull; return (double)(g_rng >> 11) / 9007199254740992.0; }
static double now(void){ struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec; }
#ifndef NV
#define NV 16
#endif
/* blocks of NV contiguous vectors starting at start[b]; nvec total vectors (last block partial) */
__attribute__((target("avx512f"))) static void run(const float* in, float* out, int nvec, int cout,
    const int* ptr, const int* off, const float* val, int oplane)
{
    for (int b0 = 0; b0 < nvec; b0 += NV) {
        const float* base = in + (size_t)b0 * 16;
        for (int r = 0; r < cout; r++) {
            __m512 acc[NV];
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++) acc[v] = _mm512_set1_ps(0.01f);
            for (int k = ptr[r]; k < ptr[r + 1]; k++) {
                const float* p = base + off[k];
                const __m512 w = _mm512_set1_ps(val[k]);
#pragma GCC unroll 16
                for (int v = 0; v < NV; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * v), acc[v]);
            }
            float* o = out + (size_t)r * oplane + (size_t)b0 * 16;
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++) _mm512_storeu_ps(o + 16 * v, _mm512_max_ps(_mm512_setzero_ps(), acc[v]));
        }
    }
}
int main(int argc, char** argv)
{
    const int cin = atoi(argv[1]), cout = atoi(argv[2]), h = atoi(argv[3]);
    const double density = argc > 4 ? atof(argv[4]) : 0.1;
    const int tg = argc > 5 ? atoi(argv[5]) : 4; /* tile grid tg x tg = 16 */
    const int wq = h + 2, plane = wq * wq;
    const int th = h / tg, tq = th + 2, tplane = tq * tq * 16;
    const int nvec_flat = ((h - 1) * wq + h + 15) / 16;
    const int nvec_tile = (th - 1) * tq + th;
    size_t nin = (size_t)cin * (plane > tplane ? plane : tplane) * 3 + 65536;
    float* in = aligned_alloc(64, nin * 4), *out = aligned_alloc(64, ((size_t)cout * tplane + 65536) * 4);
    int* ptr = malloc((cout + 1) * 4); int n = cin * 9 * cout;
    int* off[4]; for (int i = 0; i < 4; i++) off[i] = malloc(n * 4);
    const int w64 = (wq + 15) & ~15, plane64 = (h + 2) * w64, cstride = cin * plane64;
    float* val = malloc(n * 4);
    for (size_t i = 0; i < nin; i++) in[i] = (float)urand();
    int nz = 0;
    for (int r = 0; r < cout; r++) { ptr[r] = nz;
        for (int c = 0; c < cin; c++) for (int t = 0; t < 9; t++) if (urand() < density) {
            off[0][nz] = c * plane + (t / 3) * wq + t % 3; off[1][nz] = off[0][nz] & ~15;
            off[2][nz] = c * tplane + ((t / 3) * tq + t % 3) * 16; off[3][nz] = (t % 3) * cstride + c * plane64 + (t / 3) * w64; val[nz++] = (float)urand(); } }
    ptr[cout] = nz;
    const char* name[4] = {"flat unaligned", "flat aligned(ceil)", "16 tiles+halo", "wide rows, 3 copies"};
    int nv[4] = {nvec_flat, nvec_flat, nvec_tile, ((h - 1) * w64 + h + 15) / 16}; int op[4] = {plane, plane, tplane, plane64};
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    for (int rep = 0; rep < 300; rep++) for (int i = 0; i < 4; i++) { int j = (i + rep) % 4;
        double t0 = now(); run(in, out, nv[j], cout, ptr, off[j], val, op[j]); double t = now() - t0; if (t < best[j]) best[j] = t; }
    for (int i = 0; i < 4; i++) printf("%d->%d %dx%d: %-20s %8.1f us %6.1f GMAC/s (useful)\n", cin, cout, h, h, name[i], best[i]*1e6, (double)nz*h*h/best[i]/1e9);
    return 0;
}
