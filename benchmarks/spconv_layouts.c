/* Input layouts for the direct sparse 3x3 convolution (seed 003, Algorithm 2), AVX2 + FMA:
 * does any layout beat the engine's flat padded rows on this core? One random 90 % sparse
 * layer (cin -> cout at H x H, stride 1, padding 1), the same inner loop for every layout
 * (12 accumulators of 8 pixels, one broadcast weight and 12 loads per nonzero), minimum
 * of 300 interleaved runs, useful multiply-adds only (padding columns not counted):
 *   flat     the engine's layout: channel planes of (H+2) x (H+2), blocks of 96 flat pixels;
 *   same     flat, but every block reads the first block's input (the L1-warm ceiling);
 *   prefetch flat, prefetching the next block's input slice while the rows run;
 *   copies   3 copies shifted by kx = 0, 1, 2, rows of H: every load 32-byte aligned;
 *   tiles    8 tiles of the image as the 8 lanes, each tile with its halo: every load
 *            aligned (4 x 2 tiles of H/4 x H/2).
 * (tiles needs H a multiple of 24, copies H * H a multiple of 96; otherwise not shown.)
 * Standalone, x86-64 only (not part of the engine):
 *   cc -O2 -std=c11 benchmarks/spconv_layouts.c -o /tmp/spconv_layouts
 *   taskset -c 1 /tmp/spconv_layouts 32 32 48; ... 64 64 24; ... 128 128 12
 * Results: docs/benchmarks/native_kernels.md (notes). */
#define _POSIX_C_SOURCE 200809L
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NV 12
enum { FLAT, SAME, PREFETCH, COPIES, TILES, NLAYOUT };
static const char* k_name[NLAYOUT] = {"flat", "same", "prefetch", "copies", "tiles"};

static uint64_t g_rng = 1;
static float urand(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct layer {
    int rows, nblk, pf_floats, pf_chan, cin;
    const int *ptr, *off, *blk;
    const float *val, *in;
} layer;

/* Every row of every block: acc[v] += w * x[off + 8 v] over the row's nonzeros. */
__attribute__((target("avx2,fma"))) static void run(const layer* L, float* out, int prefetch)
{
    for (int b = 0; b < L->nblk; b++) {
        const float* base = L->in + L->blk[b];
        for (int r = 0; r < L->rows; r++) {
            if (prefetch && b + 1 < L->nblk) /* the next block's slice, channels spread over rows */
                for (int c = r * L->cin / L->rows; c < (r + 1) * L->cin / L->rows; c++)
                    for (int l = 0; l < L->pf_floats; l += 16)
                        _mm_prefetch((const char*)(L->in + L->blk[b + 1] + c * L->pf_chan + l), _MM_HINT_T0);
            __m256 acc[NV];
#pragma GCC unroll 12
            for (int v = 0; v < NV; v++) acc[v] = _mm256_setzero_ps();
            for (int k = L->ptr[r]; k < L->ptr[r + 1]; k++) {
                const float* p = base + L->off[k];
                const __m256 w = _mm256_broadcast_ss(L->val + k);
#pragma GCC unroll 12
                for (int v = 0; v < NV; v++) acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * v), acc[v]);
            }
#pragma GCC unroll 12
            for (int v = 0; v < NV; v++) _mm256_storeu_ps(out + ((size_t)r * L->nblk + b) * NV * 8 + 8 * v, acc[v]);
        }
    }
}

static float* random_floats(size_t n)
{
    float* p = aligned_alloc(64, ((n + 4096 + 15) / 16) * 64);
    for (size_t i = 0; i < n + 4096; i++) p[i] = urand();
    return p;
}

int main(int argc, char** argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s CIN COUT H (H a multiple of 8)\n", argv[0]);
        return 2;
    }
    const int cin = atoi(argv[1]), cout = atoi(argv[2]), H = atoi(argv[3]);
    if (cin < 1 || cout < 1 || H < 8 || H % 8) {
        fprintf(stderr, "CIN, COUT >= 1 and H a multiple of 8 >= 8\n");
        return 2;
    }
    const int wp = H + 2, chan_f = (H + 2) * wp + 16;               /* flat */
    const int chan_c = (H + 2) * H;                                  /* copies: rows of H */
    const int th = H / 4, tw = H / 2, tp = tw + 2, chan_t = (th + 2) * tp * 8; /* tiles */
    const size_t copy = (size_t)cin * chan_c;
    int* ptr = malloc(((size_t)cout + 1) * sizeof(int));
    int* off[NLAYOUT];
    for (int l = 0; l < NLAYOUT; l++) off[l] = malloc((size_t)cout * cin * 9 * sizeof(int));
    float* val = malloc((size_t)cout * cin * 9 * sizeof(float));
    int n = 0;
    for (int r = 0; r < cout; r++) {
        ptr[r] = n;
        for (int c = 0; c < cin; c++)
            for (int t = 0; t < 9; t++) {
                if (urand() >= 0.1f) continue;
                const int ky = t / 3, kx = t % 3;
                off[FLAT][n] = off[SAME][n] = off[PREFETCH][n] = c * chan_f + ky * wp + kx;
                off[COPIES][n] = (int)(kx * copy) + c * chan_c + ky * H;
                off[TILES][n] = c * chan_t + (ky * tp + kx) * 8;
                val[n++] = urand() - 0.5f;
            }
    }
    ptr[cout] = n;
    const float* in_f = random_floats((size_t)cin * chan_f);
    const float* in_c = random_floats(3 * copy);
    const float* in_t = random_floats((size_t)cin * chan_t);
    const int nflat = H * wp / (NV * 8), ntile = tw % NV ? 0 : th * (tw / NV);
    int* blk[NLAYOUT];
    for (int l = 0; l < NLAYOUT; l++) blk[l] = malloc((size_t)(H * wp + 1) * sizeof(int));
    for (int b = 0; b < nflat; b++) blk[FLAT][b] = blk[PREFETCH][b] = b * NV * 8, blk[SAME][b] = 0;
    for (int b = 0; b < H * H / (NV * 8); b++) blk[COPIES][b] = b * NV * 8;
    for (int b = 0; b < ntile; b++) blk[TILES][b] = ((b / (tw / NV)) * tp + (b % (tw / NV)) * NV) * 8;
    layer L[NLAYOUT];
    for (int l = 0; l < NLAYOUT; l++)
        L[l] = (layer){cout, l == TILES ? ntile : l == COPIES ? H * H % (NV * 8) ? 0 : H * H / (NV * 8) : nflat,
                       (NV * 8 + 2 * wp + 2), chan_f, cin, ptr, off[l], blk[l], val,
                       l == COPIES ? in_c : l == TILES ? in_t : in_f};
    float* out = aligned_alloc(64, (size_t)cout * (H * wp + NV * 8) * sizeof(float));
    double best[NLAYOUT];
    for (int l = 0; l < NLAYOUT; l++) best[l] = 1e30;
    for (int it = 0; it < 300; it++)
        for (int l = 0; l < NLAYOUT; l++) {
            const double t0 = now();
            run(&L[l], out, l == PREFETCH);
            const double t = now() - t0;
            if (t < best[l]) best[l] = t;
        }
    printf("cin %d cout %d H %d, %.1f nonzeros per row, useful GMAC/s:", cin, cout, H, (double)n / cout);
    double rate[NLAYOUT];
    for (int l = 0; l < NLAYOUT; l++) {
        const double px = l >= COPIES ? (double)L[l].nblk * NV * 8 : (double)nflat * NV * 8 * H / wp;
        rate[l] = n * px / best[l] * 1e-9;
        if (L[l].nblk) printf(" %s %.1f (%.2fx)", k_name[l], rate[l], rate[l] / rate[FLAT]);
    }
    printf("\n");
    return 0;
}
