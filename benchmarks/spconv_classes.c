/* Shift classes against the engine's plain loop, AVX-512F (docs/benchmarks/native_kernels.md):
 * one random sparse 3x3 layer (cin -> cout at H x H, stride 1, padding 1, flat padded rows of
 * width WQ, channel planes rounded up to 16 floats), blocks of 8 contiguous 16-pixel vectors,
 *   flat      the plain loop: per nonzero one broadcast weight and 8 loads at offset off
 *             (15 of 16 of those 64-byte loads straddle a cache line), and
 *   classes   the nonzeros of each row grouped by s = off mod 16, loaded from off - s (every
 *             load aligned); class 0 straight into the 8 output vectors, a class s > 0 into 9
 *             spare vectors shifted by s lanes (vpermt2ps) and added once per class.
 * Prints both times, the useful GMAC/s and the largest difference of the two outputs.
 * Minimum of 300 interleaved runs. Standalone, x86-64 with AVX-512F only:
 *   cc -O2 -std=c11 benchmarks/spconv_classes.c -o /tmp/spconv_classes
 *   taskset -c 1 /tmp/spconv_classes 32 32 48; ... 64 64 24; ... 128 128 12  [density [WQ]] */
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
#define NV 8
#endif
__attribute__((target("avx512f"))) static void run(const float* in, float* out, int nvec, int cout,
    const int* ptr, const int* off, const float* val, int oplane)
{
    for (int b0 = 0; b0 < nvec; b0 += NV) {
        const float* base = in + (size_t)b0 * 16;
        for (int r = 0; r < cout; r++) {
            __m512 acc[NV];
            _Pragma("GCC unroll 17") for (int v = 0; v < NV; v++) acc[v] = _mm512_set1_ps(0.01f);
            for (int k = ptr[r]; k < ptr[r + 1]; k++) {
                const float* p = base + off[k];
                const __m512 w = _mm512_set1_ps(val[k]);
                _Pragma("GCC unroll 17") for (int v = 0; v < NV; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * v), acc[v]);
            }
            float* o = out + (size_t)r * oplane + (size_t)b0 * 16;
            _Pragma("GCC unroll 17") for (int v = 0; v < NV; v++) _mm512_storeu_ps(o + 16 * v, _mm512_max_ps(_mm512_setzero_ps(), acc[v]));
        }
    }
}
/* classes: per row, cptr[r*17 + s] .. cptr[r*17+s+1] nonzeros of class s (aligned offsets) */
__attribute__((target("avx512f"))) static void runz(const float* in, float* out, int nvec, int cout,
    const int* cptr, const int* off, const float* val, int oplane)
{
    for (int b0 = 0; b0 < nvec; b0 += NV) {
        const float* base = in + (size_t)b0 * 16;
        for (int r = 0; r < cout; r++) {
            const int* cp = cptr + r * 17;
            __m512 acc[NV];
            _Pragma("GCC unroll 17") for (int v = 0; v < NV; v++) acc[v] = _mm512_set1_ps(0.01f);
            for (int k = cp[0]; k < cp[1]; k++) {
                const float* p = base + off[k];
                const __m512 w = _mm512_set1_ps(val[k]);
                _Pragma("GCC unroll 17") for (int v = 0; v < NV; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_load_ps(p + 16 * v), acc[v]);
            }
            for (int s = 1; s < 16; s++) {
                if (cp[s] == cp[s + 1]) continue;
                __m512 z[NV + 1];
                _Pragma("GCC unroll 17") for (int v = 0; v <= NV; v++) z[v] = _mm512_setzero_ps();
                for (int k = cp[s]; k < cp[s + 1]; k++) {
                    const float* p = base + off[k];
                    const __m512 w = _mm512_set1_ps(val[k]);
                    _Pragma("GCC unroll 17") for (int v = 0; v <= NV; v++) z[v] = _mm512_fmadd_ps(w, _mm512_load_ps(p + 16 * v), z[v]);
                }
                const __m512i idx = _mm512_add_epi32(_mm512_set_epi32(15,14,13,12,11,10,9,8,7,6,5,4,3,2,1,0), _mm512_set1_epi32(s));
                _Pragma("GCC unroll 17") for (int v = 0; v < NV; v++) acc[v] = _mm512_add_ps(acc[v], _mm512_permutex2var_ps(z[v], idx, z[v + 1]));
            }
            float* o = out + (size_t)r * oplane + (size_t)b0 * 16;
            _Pragma("GCC unroll 17") for (int v = 0; v < NV; v++) _mm512_storeu_ps(o + 16 * v, _mm512_max_ps(_mm512_setzero_ps(), acc[v]));
        }
    }
}
int main(int argc, char** argv)
{
    const int cin = atoi(argv[1]), cout = atoi(argv[2]), h = atoi(argv[3]);
    const double density = argc > 4 ? atof(argv[4]) : 0.1;
    const int wq = argc > 5 ? atoi(argv[5]) : h + 2;
    const int plane = ((wq * (h + 2)) + 15) & ~15;
    const int nvec = ((h - 1) * wq + h + 15) / 16;
    size_t nin = (size_t)cin * plane + 65536;
    float* in = aligned_alloc(64, nin * 4), *out = aligned_alloc(64, ((size_t)cout * plane + 65536) * 4), *out2 = aligned_alloc(64, ((size_t)cout * plane + 65536) * 4);
    int n = cin * 9 * cout;
    int* ptr = malloc((cout + 1) * 4), *off = malloc(n * 4), *offz = malloc(n * 4), *cptr = malloc(cout * 17 * 4);
    float* val = malloc(n * 4), *valz = malloc(n * 4);
    for (size_t i = 0; i < nin; i++) in[i] = (float)urand();
    int nz = 0, nzz = 0;
    for (int r = 0; r < cout; r++) { ptr[r] = nz; int start = nz;
        for (int c = 0; c < cin; c++) for (int t = 0; t < 9; t++) if (urand() < density) {
            off[nz] = c * plane + (t / 3) * wq + t % 3; val[nz++] = (float)urand(); }
        for (int s = 0; s < 16; s++) { cptr[r * 17 + s] = nzz;
            for (int k = start; k < nz; k++) if ((off[k] & 15) == s) { offz[nzz] = off[k] - s; valz[nzz++] = val[k]; } }
        cptr[r * 17 + 16] = nzz; }
    ptr[cout] = nz;
    double best[2] = {1e9, 1e9};
    for (int rep = 0; rep < 300; rep++) for (int i = 0; i < 2; i++) { int j = (i + rep) % 2;
        double t0 = now();
        if (j == 0) run(in, out, nvec, cout, ptr, off, val, plane); else runz(in, out2, nvec, cout, cptr, offz, valz, plane);
        double t = now() - t0; if (t < best[j]) best[j] = t; }
    double err = 0; for (int r = 0; r < cout; r++) for (int q = 0; q < nvec * 16; q++) { double d = out[(size_t)r*plane+q] - out2[(size_t)r*plane+q]; if (d < 0) d = -d; if (d > err) err = d; }
    printf("%d->%d %dx%d wq %d: flat %.1f us %.1f GMAC/s | classes %.1f us %.1f GMAC/s | %.2fx maxdiff %.1e\n", cin, cout, h, h, wq,
      best[0]*1e6, (double)nz*h*h/best[0]/1e9, best[1]*1e6, (double)nz*h*h/best[1]/1e9, best[0]/best[1], err);
    return 0;
}
