/* C tests of the engine core: the format-3 loader (valid files and rejections with the
 * expected status and message), shapes, plans (fusion, describe, workspace API), the simple
 * ops against torch (expected_torch.h, made by make_expected.py) or brute-force loops
 * written here, and threads (the same bits as one thread).
 *
 * Build and run: `make native-check` (tests/native/Makefile), or from the repository root:
 *   gcc -std=c11 -O1 -g -Wall -Wextra -Werror -fsanitize=address,undefined -pthread \
 *       -I src/mobileprune/runtime/native/include src/mobileprune/runtime/native/src/ *.c \
 *       src/mobileprune/runtime/native/src/kernels/ *.c tests/native/test_engine.c -lm
 * Run: ./a.out [directory of the seed models; default tests/native/data or ./data]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobileprune.h"
#include "expected_torch.h"

uint32_t mp_crc32(const uint8_t* data, size_t n); /* internal (util.c) */
mp_status mp_set_error(mp_status status, const char* fmt, ...); /* internal (api.c) */
double mp_wall_seconds(void); /* internal (cpu.c) */

static int failures, checks;

#define CHECK(cond)                                                              \
    do {                                                                         \
        checks++;                                                                \
        if (!(cond)) {                                                           \
            failures++;                                                          \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n",       \
                    __FILE__, __LINE__, #cond, mp_last_error());                 \
        }                                                                        \
    } while (0)

/* ======================================================================================
 * A small format-3 writer (docs/native_format.md), independent of the library. */

#define NONE 0xFFFFFFFFu
enum { F32 = 1, F16 = 2, U16 = 3, U32 = 4 };

typedef struct tb {
    uint32_t nv, nops, narr, nrefs, nin, nout, inputs_ref, outputs_ref, value_dtype;
    uint8_t vrec[64][48], orec[64][160], arec[64][32];
    uint32_t refs[256];
    uint32_t op_out[64];
    char strings[4096];
    uint32_t ssize;
    uint8_t data[1 << 16];
    size_t dsize;
} tb;

static void put32(uint8_t* p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t* p, uint64_t v) {
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}
static uint32_t get32(const uint8_t* p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static tb* tb_new(void) {
    tb* b = calloc(1, sizeof *b);
    b->value_dtype = F32;
    b->ssize = 1; /* offset 0: the empty string */
    return b;
}

static uint32_t tb_str(tb* b, const char* s) {
    uint32_t off = b->ssize;
    size_t n = strlen(s) + 1;
    memcpy(b->strings + off, s, n);
    b->ssize += (uint32_t)n;
    return off;
}

static uint32_t tb_value(tb* b, const char* name, uint32_t ndim, const int64_t* dims,
                         uint32_t producer) {
    uint8_t* r = b->vrec[b->nv];
    put32(r, tb_str(b, name));
    put32(r + 4, ndim);
    for (uint32_t d = 0; d < ndim; d++) put32(r + 8 + 4 * d, (uint32_t)dims[d]);
    put32(r + 40, producer);
    return b->nv++;
}

static uint32_t tb_array(tb* b, uint32_t dtype, const void* data, size_t count) {
    size_t item = dtype == F16 || dtype == U16 ? 2 : 4;
    uint8_t* r = b->arec[b->narr];
    b->dsize = (b->dsize + 63) / 64 * 64;
    put32(r, dtype);
    put64(r + 8, b->dsize);
    put64(r + 16, count);
    memcpy(b->data + b->dsize, data, count * item); /* little-endian host */
    b->dsize += count * item;
    return b->narr++;
}

/* An op and its output value; returns the op index (its value: b->op_out[index]). */
static uint32_t tb_op(tb* b, uint32_t code, const char* name, const uint32_t* ins, uint32_t nin,
                      uint32_t ndim, const int64_t* dims) {
    uint32_t i = b->nops++;
    uint8_t* r = b->orec[i];
    b->op_out[i] = tb_value(b, name, ndim, dims, i);
    put32(r, code);
    put32(r + 4, tb_str(b, name));
    put32(r + 8, b->op_out[i]);
    put32(r + 12, nin);
    put32(r + 16, b->nrefs);
    for (uint32_t k = 0; k < nin; k++) b->refs[b->nrefs++] = ins[k];
    for (int k = 0; k < 8; k++) put32(r + 24 + 4 * k, NONE);
    return i;
}

static void tb_iattr(tb* b, uint32_t op, int k, int32_t v) { put32(b->orec[op] + 56 + 4 * k, (uint32_t)v); }
static void tb_fattr(tb* b, uint32_t op, int k, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    put32(b->orec[op] + 136 + 4 * k, u);
}
static void tb_slot(tb* b, uint32_t op, int slot, uint32_t arr) { put32(b->orec[op] + 24 + 4 * slot, arr); }

static void tb_io(tb* b, const uint32_t* ins, uint32_t nin, const uint32_t* outs, uint32_t nout) {
    b->inputs_ref = b->nrefs;
    for (uint32_t k = 0; k < nin; k++) b->refs[b->nrefs++] = ins[k];
    b->outputs_ref = b->nrefs;
    for (uint32_t k = 0; k < nout; k++) b->refs[b->nrefs++] = outs[k];
    b->nin = nin;
    b->nout = nout;
}

static size_t up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* Offsets of the sections in tb_build's layout. */
typedef struct tb_layout {
    size_t values, ops, refs, arrays, strings, data, size;
} tb_layout;

static tb_layout tb_layout_of(const tb* b) {
    tb_layout L;
    L.values = 128;
    L.ops = up(L.values + 48 * b->nv, 8);
    L.refs = up(L.ops + 160 * b->nops, 8);
    L.arrays = up(L.refs + 4 * b->nrefs, 8);
    L.strings = up(L.arrays + 32 * b->narr, 8);
    L.data = up(L.strings + b->ssize, 64);
    L.size = L.data + b->dsize;
    return L;
}

static void fix_crc(uint8_t* f, size_t size) { put32(f + 24, mp_crc32(f + 128, size - 128)); }

static uint8_t* tb_build(const tb* b, size_t* size) {
    tb_layout L = tb_layout_of(b);
    uint8_t* f = calloc(1, L.size);
    memcpy(f, "MPSPARSE", 8);
    put32(f + 8, 3);
    put32(f + 12, 128);
    put64(f + 16, L.size);
    const uint32_t h[11] = {b->nv, b->nops, b->narr, b->nrefs, b->nin, b->nout, b->inputs_ref,
                            b->outputs_ref, 0, 0, b->value_dtype};
    for (int k = 0; k < 11; k++) put32(f + 28 + 4 * k, h[k]);
    const size_t offs[7] = {L.values, L.ops, L.refs, L.arrays, L.strings, b->ssize, L.data};
    for (int k = 0; k < 7; k++) put64(f + 72 + 8 * k, offs[k]);
    memcpy(f + L.values, b->vrec, 48 * (size_t)b->nv);
    memcpy(f + L.ops, b->orec, 160 * (size_t)b->nops);
    for (uint32_t k = 0; k < b->nrefs; k++) put32(f + L.refs + 4 * k, b->refs[k]);
    memcpy(f + L.arrays, b->arec, 32 * (size_t)b->narr);
    memcpy(f + L.strings, b->strings, b->ssize);
    memcpy(f + L.data, b->data, b->dsize);
    fix_crc(f, L.size);
    *size = L.size;
    return f;
}

/* ======================================================================================
 * Helpers */

static float sample_value(size_t i) { return (float)((int)((i * 37) % 23) - 11) * 0.25f; }

static void fill(float* x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = sample_value(i);
}

static uint16_t to_half(float f) { /* exact for the small values used here */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) == 0) return (uint16_t)(u >> 16);
    uint32_t sign = (u >> 16) & 0x8000u;
    int32_t e = (int32_t)((u >> 23) & 0xFF) - 127 + 15;
    return (uint16_t)(sign | ((uint32_t)e << 10) | ((u >> 13) & 0x3FFu));
}

static int close_all(const float* got, const float* want, size_t n, float tol) {
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(got[i] - want[i]);
        if (!(d <= tol * (1.0f + fabsf(want[i])))) {
            fprintf(stderr, "  element %zu: got %.9g, want %.9g\n", i, (double)got[i],
                    (double)want[i]);
            return 0;
        }
    }
    return 1;
}

/* Load, plan (batch, threads), run once; returns the status of the first failing call. */
static mp_status run_model(const uint8_t* file, size_t size, size_t batch, size_t threads,
                           const float* const* in, float* const* out) {
    mp_model* m = NULL;
    mp_plan* p = NULL;
    mp_status st = mp_model_load(file, size, &m);
    if (!st) st = mp_plan_create(m, batch, threads, MP_PLAN_DEFAULT, &p);
    if (!st) st = mp_plan_run(p, in, out);
    mp_plan_free(p);
    mp_model_free(m);
    return st;
}

enum {
    OP_CONV1D = 1, OP_CONV2D, OP_LINEAR, OP_MAXPOOL1D, OP_MAXPOOL2D, OP_AVGPOOL1D,
    OP_AVGPOOL2D, OP_GAP, OP_BN, OP_RELU, OP_ACT, OP_RESHAPE, OP_ADD, OP_SUB, OP_MUL, OP_CONCAT
};

/* ======================================================================================
 * The small CNN: x (1, 6, 6) -> conv2d c1 (2 out, 3x3, pad 1, CSR uint16, bias) -> relu r1
 * -> maxpool2d p1 (2x2) -> reshape flat (18) -> linear fc (4, dense float16, bias)
 * -> softmax sm. */

static const uint32_t c1_indptr[3] = {0, 3, 7};
static const uint16_t c1_indices[7] = {0, 4, 8, 1, 3, 4, 7};
static const float c1_values[7] = {0.5f, -1.0f, 0.25f, 1.0f, 0.5f, -0.5f, 2.0f};
static const float c1_bias[2] = {0.125f, -0.25f};

static float fc_weight(int o, int k) { return (float)((o * 18 + k) * 7 % 11 - 5) * 0.125f; }

typedef struct cnn_ids {
    uint32_t x, c1, r1, p1, flat, fc, sm;            /* op indices (x: value id) */
    uint32_t a_values, a_indptr, a_indices, a_bias, a_fc, a_fcb; /* array ids */
} cnn_ids;

static uint8_t* build_cnn(size_t* size, cnn_ids* id, tb** keep) {
    tb* b = tb_new();
    b->value_dtype = F16;
    const int64_t xd[3] = {1, 6, 6}, cd[3] = {2, 6, 6}, pd[3] = {2, 3, 3}, fd[1] = {18},
                  od[1] = {4};
    id->x = tb_value(b, "x", 3, xd, NONE);
    id->c1 = tb_op(b, OP_CONV2D, "c1", &id->x, 1, 3, cd);
    id->a_values = tb_array(b, F32, c1_values, 7);
    id->a_indptr = tb_array(b, U32, c1_indptr, 3);
    id->a_indices = tb_array(b, U16, c1_indices, 7);
    id->a_bias = tb_array(b, F32, c1_bias, 2);
    const int32_t ca[17] = {1, 2, 9, 7, 1, 2, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
    for (int k = 0; k < 17; k++) tb_iattr(b, id->c1, k, ca[k]);
    const uint32_t slots[4] = {id->a_values, id->a_indptr, id->a_indices, id->a_bias};
    for (int k = 0; k < 4; k++) tb_slot(b, id->c1, k, slots[k]);
    id->r1 = tb_op(b, OP_RELU, "r1", &b->op_out[id->c1], 1, 3, cd);
    id->p1 = tb_op(b, OP_MAXPOOL2D, "p1", &b->op_out[id->r1], 1, 3, pd);
    const int32_t pa[11] = {2, 2, 2, 2, 0, 0, 1, 1, 0, 0, 0};
    for (int k = 0; k < 11; k++) tb_iattr(b, id->p1, k, pa[k]);
    id->flat = tb_op(b, OP_RESHAPE, "flat", &b->op_out[id->p1], 1, 1, fd);
    id->fc = tb_op(b, OP_LINEAR, "fc", &b->op_out[id->flat], 1, 1, od);
    uint16_t w16[72];
    int nnz = 0;
    for (int o = 0; o < 4; o++)
        for (int k = 0; k < 18; k++) {
            w16[o * 18 + k] = to_half(fc_weight(o, k));
            nnz += fc_weight(o, k) != 0.0f;
        }
    const float fcb[4] = {-0.5f, -0.25f, 0.0f, 0.25f};
    id->a_fc = tb_array(b, F16, w16, 72);
    id->a_fcb = tb_array(b, F32, fcb, 4);
    tb_iattr(b, id->fc, 0, 0);
    tb_iattr(b, id->fc, 1, 4);
    tb_iattr(b, id->fc, 2, 18);
    tb_iattr(b, id->fc, 3, nnz);
    tb_slot(b, id->fc, 0, id->a_fc);
    tb_slot(b, id->fc, 3, id->a_fcb);
    id->sm = tb_op(b, OP_ACT, "sm", &b->op_out[id->fc], 1, 1, od);
    tb_iattr(b, id->sm, 0, 9);
    tb_iattr(b, id->sm, 1, 0);
    tb_io(b, &id->x, 1, &b->op_out[id->sm], 1);
    uint8_t* f = tb_build(b, size);
    if (keep) *keep = b;
    else free(b);
    return f;
}

/* Brute force of the CNN for one sample. */
static void cnn_reference(const float* x, float* y) {
    float c[2][6][6], p[18], z[4];
    for (int o = 0; o < 2; o++)
        for (int h = 0; h < 6; h++)
            for (int w = 0; w < 6; w++) {
                float s = c1_bias[o];
                for (uint32_t k = c1_indptr[o]; k < c1_indptr[o + 1]; k++) {
                    int i = c1_indices[k] / 3 - 1, j = c1_indices[k] % 3 - 1;
                    if (h + i >= 0 && h + i < 6 && w + j >= 0 && w + j < 6)
                        s += c1_values[k] * x[(h + i) * 6 + w + j];
                }
                c[o][h][w] = s > 0 ? s : 0;
            }
    for (int o = 0; o < 2; o++)
        for (int h = 0; h < 3; h++)
            for (int w = 0; w < 3; w++) {
                float m = c[o][2 * h][2 * w];
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++) m = fmaxf(m, c[o][2 * h + i][2 * w + j]);
                p[o * 9 + h * 3 + w] = m;
            }
    float mx = -INFINITY, sum = 0;
    for (int o = 0; o < 4; o++) {
        z[o] = -0.5f + 0.25f * (float)o;
        for (int k = 0; k < 18; k++) z[o] += fc_weight(o, k) * p[k];
        mx = fmaxf(mx, z[o]);
    }
    for (int o = 0; o < 4; o++) sum += expf(z[o] - mx);
    for (int o = 0; o < 4; o++) y[o] = expf(z[o] - mx) / sum;
}

static void test_api(void) {
    CHECK(strcmp(mp_version(), "0.1.0") == 0);
    CHECK(mp_format_version() == 3);
    CHECK(strcmp(mp_status_string(MP_OK), "ok") == 0);
    CHECK(strcmp(mp_status_string(MP_INVALID_MODEL), "invalid model") == 0);
    CHECK(strcmp(mp_status_string((mp_status)99), "unknown status") == 0);
    const char* isa = mp_cpu_isa();
    CHECK(isa && (!strcmp(isa, "scalar") || !strcmp(isa, "avx2") || !strcmp(isa, "avx512f") ||
                  !strcmp(isa, "neon")));
    const uint8_t check[9] = {'1', '2', '3', '4', '5', '6', '7', '8', '9'};
    CHECK(mp_crc32(check, 9) == 0xCBF43926u); /* the CRC-32 check value */
    mp_model* m = (mp_model*)1;
    CHECK(mp_model_load(NULL, 10, &m) == MP_INVALID_ARGUMENT && m == NULL);
    CHECK(mp_model_load_file("/nonexistent/model.mps", &m) == MP_IO_ERROR);
    CHECK(strstr(mp_last_error(), "/nonexistent/model.mps") != NULL);
    CHECK(mp_model_load_file(".", &m) == MP_IO_ERROR && m == NULL);
    CHECK(mp_set_error(MP_INVALID_MODEL, "a\nb\tc") == MP_INVALID_MODEL &&
          strcmp(mp_last_error(), "a?b?c") == 0); /* one line */
}

/* MP_PLAN_PROFILE: one time per op (the describe lines), zero for fused / alias ops, their
 * sum within the run's wall time; a plan without the flag refuses. */
static void test_profile(const mp_model* m, const mp_plan* plain, const char* text,
                         const float* x, const float* want, size_t batch) {
    double sec[64];
    size_t count = 0, lines = 0;
    for (const char* c = text; *c; c++) lines += *c == '\n';
    CHECK(mp_plan_profile(plain, sec, 64, &count) == MP_INVALID_ARGUMENT);
    CHECK(mp_plan_profile(NULL, sec, 64, &count) == MP_INVALID_ARGUMENT);
    mp_plan* q = NULL;
    CHECK(mp_plan_create(m, batch, 1, MP_PLAN_PROFILE, &q) == MP_OK);
    if (!q) return;
    float y[64];
    const float* in[1] = {x};
    float* out[1] = {y};
    const double t0 = mp_wall_seconds();
    CHECK(mp_plan_run(q, in, out) == MP_OK);
    const double wall = mp_wall_seconds() - t0;
    CHECK(close_all(y, want, batch * 4, 1e-5f));
    CHECK(mp_plan_profile(q, NULL, 0, &count) == MP_OK && count == lines && count <= 64);
    CHECK(mp_plan_profile(q, sec, 64, &count) == MP_OK);
    double sum = 0.0;
    const char* line = text;
    for (size_t i = 0; i < count && line; i++) {
        const char* end = strchr(line, '\n');
        const char* fused = strstr(line, " fused into ");
        const char* alias = strstr(line, " alias (no copy)");
        const int idle = (fused && fused < end) || (alias && alias < end);
        CHECK(sec[i] >= 0.0 && (!idle || sec[i] == 0.0));
        sum += sec[i];
        line = end ? end + 1 : NULL;
    }
    CHECK(sec[0] > 0.0 && sum > 0.0 && sum <= wall);
    mp_plan_free(q);
}

static void test_cnn(void) {
    size_t size;
    cnn_ids id;
    uint8_t* f = build_cnn(&size, &id, NULL);
    mp_model* m = NULL;
    CHECK(mp_model_load(f, size, &m) == MP_OK);
    if (!m) return;
    int64_t dims[8];
    size_t nd = 0;
    CHECK(mp_model_num_inputs(m) == 1 && mp_model_num_outputs(m) == 1);
    CHECK(mp_model_input_shape(m, 0, dims, 8, &nd) == MP_OK && nd == 3 && dims[0] == 1 &&
          dims[1] == 6 && dims[2] == 6);
    CHECK(mp_model_output_shape(m, 0, dims, 8, &nd) == MP_OK && nd == 1 && dims[0] == 4);
    CHECK(mp_model_input_shape(m, 0, dims, 2, &nd) == MP_INVALID_ARGUMENT && nd == 3);
    CHECK(mp_model_input_shape(m, 1, dims, 8, &nd) == MP_INVALID_ARGUMENT);
    enum { B = 3 };
    float x[B * 36], want[B * 4], buf[B * 4 + 1];
    fill(x, B * 36);
    for (int n = 0; n < B; n++) cnn_reference(x + 36 * n, want + 4 * n);
    mp_plan* p = NULL;
    CHECK(mp_plan_create(m, B, 1, MP_PLAN_DEFAULT, &p) == MP_OK);
    const float* in[1] = {x};
    float* out[1] = {buf + 1}; /* not 64-byte aligned */
    CHECK(mp_plan_run(p, in, out) == MP_OK);
    CHECK(close_all(buf + 1, want, B * 4, 1e-5f));
    char text[2048];
    size_t need = 0;
    CHECK(mp_plan_describe(p, text, sizeof text, &need) == MP_OK && need == strlen(text));
    CHECK(strstr(text, "c1 conv2d ") == text);
    CHECK(strstr(text, "+relu ('r1')") != NULL);
    CHECK(strstr(text, "r1 relu fused into 'c1'\n") != NULL);
    CHECK(strstr(text, "p1 maxpool2d maxpool-2x2 f32_maxpool2x2__") != NULL);
    CHECK(strstr(text, "flat reshape alias (no copy)\n") != NULL);
    CHECK(strstr(text, "sm activation softmax\n") != NULL);
    size_t need0 = 0;
    CHECK(mp_plan_describe(p, NULL, 0, &need0) == MP_OK && need0 == need);
    char small[10];
    size_t need2 = 0;
    CHECK(mp_plan_describe(p, small, sizeof small, &need2) == MP_OK && need2 == need &&
          strlen(small) == 9 && memcmp(small, text, 9) == 0);
    fprintf(stderr, "describe:\n%s", text);
    test_profile(m, p, text, x, want, B);
    mp_plan_free(p);
    mp_model_free(m);
    free(f);
}

/* ======================================================================================
 * Loader rejections: one mutation of the valid CNN file each. */

typedef struct mutation {
    const char* what;
    size_t pos;      /* byte offset to overwrite with a u32 (SIZE_MAX: none) */
    uint32_t value;
    int fix_crc;
    mp_status status;
    const char* message; /* substring of mp_last_error() */
} mutation;

static void expect_reject(const uint8_t* good, size_t size, const mutation* mu) {
    uint8_t* f = malloc(size);
    memcpy(f, good, size);
    if (mu->pos != SIZE_MAX) put32(f + mu->pos, mu->value);
    if (mu->fix_crc) fix_crc(f, size);
    mp_model* m = (mp_model*)1;
    mp_status st = mp_model_load(f, size, &m);
    int ok = st == mu->status && m == NULL && strstr(mp_last_error(), mu->message) != NULL;
    CHECK(ok);
    if (!ok)
        fprintf(stderr, "  %s: status %d (%s), message: %s\n", mu->what, st,
                mp_status_string(st), mp_last_error());
    if (st == MP_OK) mp_model_free(m);
    free(f);
}

/* hardtanh with min > max; files cut short anywhere. */
static void test_hardtanh_and_truncations(const uint8_t* f, size_t size, size_t sm) {
    uint32_t f_two = 0x40000000u;
    /* hardtanh with min 2 > max 0 */
    uint8_t* g = malloc(size);
    memcpy(g, f, size);
    put32(g + sm + 56, 1);
    put32(g + sm + 136, f_two);
    fix_crc(g, size);
    mutation ht = {"hardtanh", SIZE_MAX, 0, 0, MP_INVALID_MODEL, "hardtanh: min_val > max_val"};
    expect_reject(g, size, &ht);
    free(g);
    /* short and truncated files */
    mp_model* m = NULL;
    CHECK(mp_model_load(f, 100, &m) == MP_INVALID_MODEL && strstr(mp_last_error(), "shorter"));
    for (size_t k = 0; k < size; k += 7) {
        uint8_t* t = malloc(k ? k : 1); /* exact-size copy: ASan catches any over-read */
        memcpy(t, f, k);
        CHECK(mp_model_load(t, k, &m) == MP_INVALID_MODEL && m == NULL);
        free(t);
    }
}

static void test_rejections(void) {
    size_t size;
    cnn_ids id;
    tb* b;
    uint8_t* f = build_cnn(&size, &id, &b);
    tb_layout L = tb_layout_of(b);
    size_t op = L.ops, val = L.values, arr = L.arrays;
    size_t c1 = op + 160 * id.c1, fc = op + 160 * id.fc, sm = op + 160 * id.sm;
    uint32_t fc_nnz = get32(f + fc + 56 + 12);
    uint32_t f_nan = 0x7FC00000u;
    size_t idx_data = L.data + get32(f + arr + 32 * id.a_indices + 8);
    const mutation cases[] = {
        {"magic", 0, 0x5053504Eu, 0, MP_INVALID_MODEL, "bad magic"},
        {"version", 8, 2, 0, MP_INVALID_MODEL, "format_version 2"},
        {"header size", 12, 64, 0, MP_INVALID_MODEL, "header_size 64"},
        {"file size", 16, (uint32_t)size + 8, 0, MP_INVALID_MODEL, "file_size"},
        {"crc", 24, 0x12345678u, 0, MP_INVALID_MODEL, "crc32 mismatch"},
        {"data byte", L.data + 1, 0x11223344u, 0, MP_INVALID_MODEL, "crc32 mismatch"},
        {"num_ops limit", 32, (1u << 20) + 1, 0, MP_INVALID_MODEL, "num_ops 1048577 is over"},
        {"num_values", 28, 200000, 0, MP_INVALID_MODEL, "past the end"},
        {"num_inputs 0", 44, 0, 0, MP_INVALID_MODEL, "num_inputs 0"},
        {"outputs_ref", 56, 1000, 0, MP_INVALID_MODEL, "outputs_ref 1000"},
        {"value_dtype", 68, 7, 0, MP_INVALID_MODEL, "value_dtype 7"},
        {"values_offset", 72, 129, 0, MP_INVALID_MODEL, "values_offset 129 is not a multiple"},
        {"ops_offset", 80, 128, 0, MP_INVALID_MODEL, "ops_offset 128 overlaps"},
        {"data_offset", 120, (uint32_t)L.data + 64 * 1000, 0, MP_INVALID_MODEL, "section data"},
        {"strings_size", 112, 100000, 0, MP_INVALID_MODEL, "section strings"},
        {"producer string", 60, 100000, 0, MP_INVALID_MODEL, "producer: string offset"},
        {"value ndim", val + 4, 9, 1, MP_INVALID_MODEL, "value 'x' (#0): ndim 9"},
        {"value dim 0", val + 8, 0, 1, MP_INVALID_MODEL, "value 'x' (#0): dims[0] = 0"},
        {"value huge", val + 12, 0x7FFFFFFFu, 1, MP_INVALID_MODEL, "more than 2^31"},
        {"value producer", val + 40, 0, 1, MP_INVALID_MODEL, "model input 0: value 'x' has a"},
        {"ref", L.refs, 77, 1, MP_INVALID_MODEL, "refs[0] = 77"},
        {"array dtype", arr + 32 * id.a_bias, 9, 1, MP_INVALID_MODEL, "unknown dtype 9"},
        {"array align", arr + 32 * id.a_bias + 8, 65, 1, MP_INVALID_MODEL, "not a multiple of 64"},
        {"array bounds", arr + 32 * id.a_fcb + 16, 1000000, 1, MP_INVALID_MODEL,
         "past the end of the data section"},
        {"array overlap", arr + 32 * id.a_fcb + 8, 0, 1, MP_INVALID_MODEL, "overlaps"},
        {"op name", c1 + 4, 50000, 1, MP_INVALID_MODEL, "op #0 name: string offset"},
        {"op code", c1, 99, 1, MP_UNSUPPORTED_OP, "op 'c1' (#0): unknown op code 99"},
        {"op output", c1 + 8, 500, 1, MP_INVALID_MODEL, "output 500 is not a value"},
        {"op slot", sm + 24, id.a_bias, 1, MP_INVALID_MODEL, "array slot 0 is set but activation"},
        {"op not defined", L.refs + 4 * 2, b->op_out[id.fc], 1, MP_INVALID_MODEL,
         "op 'p1' (#2): input 0 (value 'fc') is not defined"},
        {"produced twice", op + 160 * id.p1 + 8, b->op_out[id.r1], 1, MP_INVALID_MODEL,
         "op 'p1' (#2): output value 'r1' is produced twice"},
        {"indices count", arr + 32 * id.a_indices + 16, 6, 1, MP_INVALID_MODEL,
         "op 'c1' (#0): array slot 2 (indices) has 6 elements, nnz is 7"},
        {"indices dtype", arr + 32 * id.a_indices, F32, 1, MP_INVALID_MODEL,
         "array slot 2 (indices) is float32"},
        {"index >= cols", idx_data, 9 | (4u << 16), 1, MP_INVALID_MODEL,
         "indices[0] = 9 in row 0: not < cols"},
        {"index order", idx_data, 4 | (4u << 16), 1, MP_INVALID_MODEL,
         "indices[1] = 4 in row 0: not increasing"},
        {"indptr", L.data + get32(f + arr + 32 * id.a_indptr + 8) + 4, 8, 1, MP_INVALID_MODEL,
         "indptr[1] = 8 is below indptr[0] or above nnz 7"},
        {"missing indptr", c1 + 24 + 4, NONE, 1, MP_INVALID_MODEL, "array slot 1 (indptr) is missing"},
        {"conv channels", c1 + 56 + 16, 3, 1, MP_SHAPE_MISMATCH, "input must be (3, H, W)"},
        {"conv groups", c1 + 56 + 24, 2, 1, MP_INVALID_MODEL, "bad channels/groups 1/2/2"},
        {"conv stride 0", c1 + 56 + 36, 0, 1, MP_INVALID_MODEL, "iattr[9] = 0 < 1"},
        {"weight rows", c1 + 56 + 4, 3, 1, MP_INVALID_MODEL, "weight is 3x9, the op needs 2x9"},
        {"dense nnz", fc + 56 + 12, fc_nnz - 1, 1, MP_INVALID_MODEL, "but the dense values hold"},
        {"storage", fc + 56, 5, 1, MP_INVALID_MODEL, "storage 5"},
        {"pool out dims", val + 48 * b->op_out[id.p1] + 12, 4, 1, MP_SHAPE_MISMATCH,
         "op 'p1' (#2): recorded output shape (2, 4, 3) does not follow from the inputs "
         "(expected (2, 3, 3))"},
        {"pool padding", op + 160 * id.p1 + 56 + 16, 2, 1, MP_INVALID_MODEL, "at most half"},
        {"pool ceil", op + 160 * id.p1 + 56 + 32, 2, 1, MP_INVALID_MODEL, "ceil_mode"},
        {"reshape count", val + 48 * b->op_out[id.flat] + 8, 17, 1, MP_SHAPE_MISMATCH,
         "cannot reshape 18 elements to 17"},
        {"activation code", sm + 56, 42, 1, MP_UNSUPPORTED_OP, "unknown activation function code 42"},
        {"softmax axis", sm + 56 + 4, 1, 1, MP_INVALID_MODEL, "softmax: bad axis 1"},
        {"fattr nan", sm + 136 + 8, f_nan, 1, MP_INVALID_MODEL, "fattr[2] is not finite"},
        {"num_inputs of op", sm + 12, 2, 1, MP_INVALID_MODEL, "needs 1 input(s), has 2"},
        {"never produced", val + 48 * b->op_out[id.sm] + 40, 0, 1, MP_INVALID_MODEL,
         "recorded with another producer"},
    };
    size_t n = sizeof cases / sizeof cases[0];
    for (size_t k = 0; k < n; k++)
        expect_reject(f, size, &cases[k]);
    test_hardtanh_and_truncations(f, size, sm);
    free(b);
    free(f);
}

/* Random byte mutations with the CRC fixed (so the mutation reaches the deeper checks):
 * never a crash or an over-read; a model that loads must plan and run. */
static void test_mutations(void) {
    size_t size;
    cnn_ids id;
    uint8_t* f = build_cnn(&size, &id, NULL);
    uint32_t rng = 12345;
    int loaded = 0;
    for (int iter = 0; iter < 3000; iter++) {
        uint8_t* g = malloc(size);
        memcpy(g, f, size);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            rng = rng * 1664525u + 1013904223u;
            size_t pos = 128 + (rng >> 8) % (size - 128);
            rng = rng * 1664525u + 1013904223u;
            g[pos] = (uint8_t)(iter % 3 == 0 ? g[pos] ^ (1u << (rng >> 29)) : rng >> 24);
        }
        fix_crc(g, size);
        mp_model* m = NULL;
        if (mp_model_load(g, size, &m) == MP_OK) {
            loaded++;
            mp_plan* p = NULL;
            if (mp_plan_create(m, 2, 1, 0, &p) == MP_OK) {
                size_t nin = 1, nd;
                int64_t dims[8];
                float* x = NULL;
                float* y = NULL;
                int64_t nx = 2, ny = 2;
                mp_model_input_shape(m, 0, dims, 8, &nd);
                for (size_t d = 0; d < nd; d++) nx *= dims[d];
                mp_model_output_shape(m, 0, dims, 8, &nd);
                for (size_t d = 0; d < nd; d++) ny *= dims[d];
                x = calloc((size_t)nx, sizeof(float));
                y = calloc((size_t)ny, sizeof(float));
                const float* in[1] = {x};
                float* out[1] = {y};
                CHECK(nin == mp_model_num_inputs(m) && mp_plan_run(p, in, out) == MP_OK);
                free(x);
                free(y);
                mp_plan_free(p);
            }
            mp_model_free(m);
        }
        free(g);
    }
    fprintf(stderr, "mutations: %d of 3000 mutated files still loaded\n", loaded);
    free(f);
}

/* ======================================================================================
 * Simple ops against torch (expected_torch.h) and brute force */

/* A model x -> one op -> y; returns the file. iattr / fattr: the op's attributes. */
static uint8_t* one_op(size_t* size, uint32_t code, uint32_t nd_in, const int64_t* din,
                       uint32_t nd_out, const int64_t* dout, const int32_t* ia, int nia,
                       const float* fa, int nfa) {
    tb* b = tb_new();
    uint32_t x = tb_value(b, "x", nd_in, din, NONE);
    uint32_t op = tb_op(b, code, "op", &x, 1, nd_out, dout);
    for (int k = 0; k < nia; k++) tb_iattr(b, op, k, ia[k]);
    for (int k = 0; k < nfa; k++) tb_fattr(b, op, k, fa[k]);
    tb_io(b, &x, 1, &b->op_out[op], 1);
    uint8_t* f = tb_build(b, size);
    free(b);
    return f;
}

typedef struct pool_case {
    const char* name;
    uint32_t code, nd;
    int64_t din[3], dout[3];
    int32_t ia[11];
    const float* want;
} pool_case;

static void test_pools(void) {
    const pool_case cases[] = {
        {"max_k32_s22_p11_d12_ceil", OP_MAXPOOL2D, 3, {2, 5, 7}, {2, 3, 4},
         {3, 2, 2, 2, 1, 1, 1, 2, 1, 0, 0}, pool_max_k32_s22_p11_d12_ceil},
        {"max_k2_s2", OP_MAXPOOL2D, 3, {2, 5, 7}, {2, 2, 3}, {2, 2, 2, 2, 0, 0, 1, 1, 0, 0, 0},
         pool_max_k2_s2},
        {"max_k3_s2_p1_ceil", OP_MAXPOOL2D, 3, {2, 6, 6}, {2, 4, 4},
         {3, 3, 2, 2, 1, 1, 1, 1, 1, 0, 0}, pool_max_k3_s2_p1_ceil},
        {"avg_k3_s2_p1_ceil_incl", OP_AVGPOOL2D, 3, {2, 5, 7}, {2, 3, 4},
         {3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0}, pool_avg_k3_s2_p1_ceil_incl},
        {"avg_k3_s2_p1_ceil_excl", OP_AVGPOOL2D, 3, {2, 5, 7}, {2, 3, 4},
         {3, 3, 2, 2, 1, 1, 1, 1, 1, 0, 0}, pool_avg_k3_s2_p1_ceil_excl},
        {"avg_k2_s2_p1_ceil_incl", OP_AVGPOOL2D, 3, {2, 5, 7}, {2, 3, 4},
         {2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 0}, pool_avg_k2_s2_p1_ceil_incl},
        {"max_k2_s2_p1_ceil", OP_MAXPOOL2D, 3, {2, 5, 7}, {2, 3, 4},
         {2, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0}, pool_max_k2_s2_p1_ceil},
        {"avg_k3_s2_p1_ceil_incl_clip", OP_AVGPOOL2D, 3, {2, 6, 6}, {2, 4, 4},
         {3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0}, pool_avg_k3_s2_p1_ceil_incl_clip},
        {"avg_k3_s2_p0_ceil_incl_clip", OP_AVGPOOL2D, 3, {2, 6, 6}, {2, 3, 3},
         {3, 3, 2, 2, 0, 0, 1, 1, 1, 1, 0}, pool_avg_k3_s2_p0_ceil_incl_clip},
        {"avg_k23_s12_p11_div5", OP_AVGPOOL2D, 3, {2, 5, 7}, {2, 6, 4},
         {2, 3, 1, 2, 1, 1, 1, 1, 0, 1, 5}, pool_avg_k23_s12_p11_div5},
        {"max1d_k3_s2_p1_d2", OP_MAXPOOL1D, 2, {2, 9}, {2, 4},
         {1, 3, 1, 2, 0, 1, 1, 2, 0, 0, 0}, pool_max1d_k3_s2_p1_d2},
        {"avg1d_k3_s3_p1_ceil_excl", OP_AVGPOOL1D, 2, {2, 8}, {2, 3},
         {1, 3, 1, 3, 0, 1, 1, 1, 1, 0, 0}, pool_avg1d_k3_s3_p1_ceil_excl},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const pool_case* pc = &cases[c];
        size_t size, nin = 2, nout = 2;
        for (uint32_t d = 0; d < pc->nd; d++) {
            nin *= (size_t)pc->din[d];
            nout *= (size_t)pc->dout[d];
        }
        uint8_t* f = one_op(&size, pc->code, pc->nd, pc->din, pc->nd, pc->dout, pc->ia, 11, NULL, 0);
        float* x = malloc(nin * sizeof(float));
        float* y = malloc(nout * sizeof(float));
        fill(x, nin);
        const float* in[1] = {x};
        float* out[1] = {y};
        mp_status st = run_model(f, size, 2, 1, in, out);
        CHECK(st == MP_OK);
        int ok = st == MP_OK && close_all(y, pc->want, nout, 1e-6f);
        CHECK(ok);
        if (!ok) fprintf(stderr, "  pool case %s\n", pc->name);
        free(x);
        free(y);
        free(f);
    }
}

/* Pools wider than one 256-column block of the average kernel, and a large max window:
 * brute force over the padded window (count_include_pad), both 1-D. */
static void test_wide_pools(void) {
    enum { L = 600 };
    static float x[2 * L], y[2 * L];
    fill(x, 2 * L);
    const int64_t d[2] = {1, L};
    const float* in[1] = {x};
    float* out[1] = {y};
    for (int max = 0; max < 2; max++) {
        size_t size;
        const int32_t ia[11] = {1, 5, 1, 1, 0, 2, 1, 1, 0, 1, 0}; /* k 5, s 1, p 2 */
        uint8_t* f = one_op(&size, max ? OP_MAXPOOL1D : OP_AVGPOOL1D, 2, d, 2, d, ia, 11, NULL, 0);
        CHECK(run_model(f, size, 2, 1, in, out) == MP_OK);
        int bad = 0;
        for (int n = 0; n < 2; n++)
            for (int o = 0; o < L; o++) {
                double s = 0, m = -INFINITY;
                for (int j = 0; j < 5; j++) {
                    int w = o - 2 + j;
                    if (w < 0 || w >= L) continue;
                    s += x[n * L + w];
                    m = x[n * L + w] > m ? x[n * L + w] : m;
                }
                float want = max ? (float)m : (float)(s / 5);
                bad += y[n * L + o] != want;
            }
        CHECK(bad == 0);
        free(f);
    }
}

static void test_activations(void) {
    const struct {
        int32_t fn;
        float a, b;
        const float* want;
    } cases[] = {
        {1, -1.0f, 2.0f, act_hardtanh}, {2, 0.1f, 0, act_leaky_relu}, {3, 0.7f, 0, act_elu},
        {4, 0, 0, act_sigmoid}, {5, 0, 0, act_tanh}, {6, 0, 0, act_hardsigmoid},
        {7, 0, 0, act_hardswish}, {8, 0, 0, act_silu}};
    const int64_t d[2] = {3, 4};
    float x[24], y[24];
    fill(x, 24);
    const float* in[1] = {x};
    float* out[1] = {y};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t size;
        const int32_t ia[1] = {cases[c].fn};
        const float fa[2] = {cases[c].a, cases[c].b};
        uint8_t* f = one_op(&size, OP_ACT, 2, d, 2, d, ia, 1, fa, 2);
        int ok = run_model(f, size, 2, 1, in, out) == MP_OK && close_all(y, cases[c].want, 24, 2e-6f);
        CHECK(ok);
        if (!ok) fprintf(stderr, "  activation code %d\n", cases[c].fn);
        free(f);
    }
    for (int32_t axis = 0; axis < 2; axis++) {
        size_t size;
        const int32_t ia[2] = {9, axis};
        uint8_t* f = one_op(&size, OP_ACT, 2, d, 2, d, ia, 2, NULL, 0);
        CHECK(run_model(f, size, 2, 1, in, out) == MP_OK &&
              close_all(y, axis ? act_softmax_axis1 : act_softmax_axis0, 24, 2e-6f));
        free(f);
    }
    size_t size; /* relu: max(x, 0) */
    uint8_t* f = one_op(&size, OP_RELU, 2, d, 2, d, NULL, 0, NULL, 0);
    CHECK(run_model(f, size, 2, 1, in, out) == MP_OK);
    for (int i = 0; i < 24; i++) CHECK(y[i] == (x[i] > 0 ? x[i] : 0.0f));
    free(f);
}

/* sigmoid, tanh, silu and softmax over a wide range (their exponential is the engine's own,
 * vectorisable one) against double precision: within 4e-7 relative (or 1e-35 absolute);
 * NaN stays NaN, -0 and the underflow edge included. */
static void test_activation_range(void) {
    enum { N = 1003 };
    static float x[N], y[N];
    for (int i = 0; i < 1000; i++) x[i] = -100.0f + 0.2003f * (float)i;
    x[1000] = -0.0f;
    x[1001] = -87.31f;
    x[1002] = NAN;
    const int64_t d[1] = {N};
    const float* in[1] = {x};
    float* out[1] = {y};
    for (int32_t fn = 4; fn <= 8; fn++) { /* sigmoid, tanh, silu */
        if (fn == 6 || fn == 7) continue;
        size_t size;
        const int32_t ia[1] = {fn};
        uint8_t* f = one_op(&size, OP_ACT, 1, d, 1, d, ia, 1, NULL, 0);
        CHECK(run_model(f, size, 1, 1, in, out) == MP_OK);
        int bad = 0;
        for (int i = 0; i < N - 1; i++) {
            double s = 1.0 / (1.0 + exp(-(double)x[i]));
            double want = fn == 4 ? s : fn == 5 ? tanh((double)x[i]) : (double)x[i] * s;
            bad += !(fabs(y[i] - want) <= 4e-7 * fabs(want) + 1e-35);
        }
        CHECK(bad == 0 && isnan(y[N - 1]));
        free(f);
    }
    size_t size; /* softmax over the 1002 finite values */
    const int32_t ia[2] = {9, 0};
    const int64_t d2[1] = {N - 1};
    uint8_t* f = one_op(&size, OP_ACT, 1, d2, 1, d2, ia, 2, NULL, 0);
    CHECK(run_model(f, size, 1, 1, in, out) == MP_OK);
    double mx = -1e300, sum = 0;
    for (int i = 0; i < N - 1; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < N - 1; i++) sum += exp(x[i] - mx);
    int bad = 0;
    for (int i = 0; i < N - 1; i++) {
        double want = exp(x[i] - mx) / sum;
        bad += !(fabs(y[i] - want) <= 2e-6 * want + 1e-37);
    }
    CHECK(bad == 0);
    free(f);
}

/* Brute force of every remaining simple op in one model with two inputs and four outputs:
 *   a (3, 2, 4), b (3, 1, 4)
 *   s = a + b (broadcast) ; d = b - a ; m = a * a ; k = 2.5 - a (number first) ; q = a * 3
 *   bn = batchnorm(a) ; g = global_avgpool(a, keepdim 1) ; cat = concat(a, b, axis 1)
 *   outputs: s + d + m (chained), k, bn, g, cat, a reshaped (an alias of a model input) */
static void test_elementwise(void) {
    tb* b = tb_new();
    const int64_t da[3] = {3, 2, 4}, db[3] = {3, 1, 4}, dg[3] = {3, 1, 1}, dc[3] = {3, 3, 4},
                  dr[2] = {6, 4};
    uint32_t xa = tb_value(b, "a", 3, da, NONE), xb = tb_value(b, "b", 3, db, NONE);
    uint32_t ab[2] = {xa, xb}, ba[2] = {xb, xa}, aa[2] = {xa, xa};
    uint32_t s = tb_op(b, OP_ADD, "s", ab, 2, 3, da);
    uint32_t d = tb_op(b, OP_SUB, "d", ba, 2, 3, da);
    uint32_t m = tb_op(b, OP_MUL, "m", aa, 2, 3, da);
    uint32_t k = tb_op(b, OP_SUB, "k", &xa, 1, 3, da);
    tb_iattr(b, k, 0, 1);
    tb_iattr(b, k, 1, 1);
    tb_fattr(b, k, 0, 2.5f);
    uint32_t q = tb_op(b, OP_MUL, "q", &b->op_out[k], 1, 3, da);
    tb_iattr(b, q, 0, 1);
    tb_fattr(b, q, 0, 3.0f);
    uint32_t sd[2] = {b->op_out[s], b->op_out[d]};
    uint32_t t1 = tb_op(b, OP_ADD, "t1", sd, 2, 3, da);
    uint32_t tm[2] = {b->op_out[t1], b->op_out[m]};
    uint32_t t2 = tb_op(b, OP_ADD, "t2", tm, 2, 3, da);
    const float scale[3] = {0.5f, -2.0f, 1.25f}, shift[3] = {1.0f, 0.0f, -0.75f};
    uint32_t bn = tb_op(b, OP_BN, "bn", &xa, 1, 3, da);
    tb_slot(b, bn, 0, tb_array(b, F32, scale, 3));
    tb_slot(b, bn, 1, tb_array(b, F32, shift, 3));
    uint32_t g = tb_op(b, OP_GAP, "g", &xa, 1, 3, dg);
    tb_iattr(b, g, 0, 1);
    uint32_t cat = tb_op(b, OP_CONCAT, "cat", ab, 2, 3, dc);
    tb_iattr(b, cat, 0, 1);
    uint32_t r = tb_op(b, OP_RESHAPE, "r", &xa, 1, 2, dr);
    uint32_t outs[6] = {b->op_out[t2], b->op_out[q], b->op_out[bn], b->op_out[g],
                        b->op_out[cat], b->op_out[r]};
    tb_io(b, ab, 2, outs, 6);
    size_t size;
    uint8_t* f = tb_build(b, &size);
    free(b);
    enum { N = 2 };
    float xa_[N * 24], xb_[N * 12], y0[N * 24], y1[N * 24], y2[N * 24], y3[N * 3], y4[N * 36],
        y5[N * 24];
    fill(xa_, N * 24);
    for (int i = 0; i < N * 12; i++) xb_[i] = sample_value((size_t)i + 5) * 0.5f;
    const float* in[2] = {xa_, xb_};
    float* out[6] = {y0, y1, y2, y3, y4, y5};
    CHECK(run_model(f, size, N, 1, in, out) == MP_OK);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < 3; c++) {
            double mean = 0;
            for (int h = 0; h < 2; h++)
                for (int w = 0; w < 4; w++) {
                    int i = n * 24 + c * 8 + h * 4 + w;
                    float A = xa_[i], B = xb_[n * 12 + c * 4 + w];
                    float sum = ((A + B) + (B - A)) + A * A;
                    CHECK(y0[i] == sum);
                    CHECK(y1[i] == (2.5f - A) * 3.0f);
                    float t = A * scale[c];
                    CHECK(y2[i] == t + shift[c]);
                    mean += A;
                    CHECK(y4[n * 36 + c * 12 + h * 4 + w] == A);
                    CHECK(y5[i] == A);
                }
            CHECK(y3[n * 3 + c] == (float)(mean / 8));
            for (int w = 0; w < 4; w++) CHECK(y4[n * 36 + c * 12 + 8 + w] == xb_[n * 12 + c * 4 + w]);
        }
    free(f);
}

/* Broadcast rows longer than one piece (4096): (2, 5000) - (1, 5000) and (2, 5000) * (2, 1),
 * on 1 and 2 threads, against brute force. */
static void test_long_rows(void) {
    enum { L = 5000, N = 4 }; /* 40000 elements: the pool runs it */
    tb* b = tb_new();
    const int64_t da[2] = {2, L}, db[2] = {1, L}, dc[2] = {2, 1};
    uint32_t xa = tb_value(b, "a", 2, da, NONE), xb = tb_value(b, "b", 2, db, NONE);
    uint32_t xc = tb_value(b, "c", 2, dc, NONE);
    uint32_t ab[2] = {xa, xb}, ac[2] = {xa, xc}, ins[3] = {xa, xb, xc};
    uint32_t s = tb_op(b, OP_SUB, "s", ab, 2, 2, da);
    uint32_t m = tb_op(b, OP_MUL, "m", ac, 2, 2, da);
    uint32_t outs[2] = {b->op_out[s], b->op_out[m]};
    tb_io(b, ins, 3, outs, 2);
    size_t size;
    uint8_t* f = tb_build(b, &size);
    free(b);
    static float va[N * 2 * L], vb[N * L], vc[N * 2], y0[N * 2 * L], y1[N * 2 * L];
    fill(va, N * 2 * L);
    for (int i = 0; i < N * L; i++) vb[i] = sample_value((size_t)i + 7);
    for (int i = 0; i < N * 2; i++) vc[i] = 0.5f + (float)i;
    const float* in[3] = {va, vb, vc};
    float* out[2] = {y0, y1};
    for (size_t threads = 1; threads <= 2; threads++) {
        memset(y0, 0, sizeof y0);
        memset(y1, 0, sizeof y1);
        CHECK(run_model(f, size, N, threads, in, out) == MP_OK);
        int bad = 0;
        for (int n = 0; n < N; n++)
            for (int r = 0; r < 2; r++)
                for (int i = 0; i < L; i++) {
                    int k = (n * 2 + r) * L + i;
                    bad += y0[k] != va[k] - vb[n * L + i];
                    bad += y1[k] != va[k] * vc[n * 2 + r];
                }
        CHECK(bad == 0);
    }
    free(f);
}

/* add -> relu, batchnorm -> hardtanh(0, 0.5) and (number - x) -> relu fuse into one pass
 * each; the results are those of the two ops in turn. */
static void test_simple_fusion(void) {
    tb* b = tb_new();
    const int64_t d[3] = {3, 2, 4};
    uint32_t xa = tb_value(b, "a", 3, d, NONE), xb = tb_value(b, "b", 3, d, NONE);
    uint32_t ab[2] = {xa, xb};
    uint32_t s = tb_op(b, OP_ADD, "s", ab, 2, 3, d);
    uint32_t r = tb_op(b, OP_RELU, "r", &b->op_out[s], 1, 3, d);
    const float scale[3] = {0.5f, -2.0f, 1.25f}, shift[3] = {1.0f, 0.0f, -0.75f};
    uint32_t bn = tb_op(b, OP_BN, "bn", &xa, 1, 3, d);
    tb_slot(b, bn, 0, tb_array(b, F32, scale, 3));
    tb_slot(b, bn, 1, tb_array(b, F32, shift, 3));
    uint32_t h = tb_op(b, OP_ACT, "h", &b->op_out[bn], 1, 3, d);
    tb_iattr(b, h, 0, 1);
    tb_fattr(b, h, 1, 0.5f);
    uint32_t k = tb_op(b, OP_SUB, "k", &xb, 1, 3, d);
    tb_iattr(b, k, 0, 1);
    tb_iattr(b, k, 1, 1);
    tb_fattr(b, k, 0, 0.25f);
    uint32_t kr = tb_op(b, OP_RELU, "kr", &b->op_out[k], 1, 3, d);
    uint32_t outs[3] = {b->op_out[r], b->op_out[h], b->op_out[kr]};
    tb_io(b, ab, 2, outs, 3);
    size_t size;
    uint8_t* f = tb_build(b, &size);
    free(b);
    enum { N = 2 };
    float va[N * 24], vb[N * 24], y0[N * 24], y1[N * 24], y2[N * 24];
    fill(va, N * 24);
    for (int i = 0; i < N * 24; i++) vb[i] = sample_value((size_t)i + 3) * 0.5f;
    const float* in[2] = {va, vb};
    float* out[3] = {y0, y1, y2};
    mp_model* m = NULL;
    mp_plan* p = NULL;
    char text[1024];
    CHECK(mp_model_load(f, size, &m) == MP_OK && mp_plan_create(m, N, 1, 0, &p) == MP_OK);
    CHECK(mp_plan_run(p, in, out) == MP_OK);
    CHECK(mp_plan_describe(p, text, sizeof text, NULL) == MP_OK);
    CHECK(strstr(text, "s add binary +relu ('r')\nr relu fused into 's'\n") != NULL);
    CHECK(strstr(text, "bn batchnorm batchnorm +hardtanh(0, 0.5) ('h')\n") != NULL);
    CHECK(strstr(text, "k sub scalar-sub +relu ('kr')\n") != NULL);
    for (int i = 0; i < N * 24; i++) {
        int c = (i / 8) % 3;
        float sum = va[i] + vb[i], t = va[i] * scale[c], bnv = t + shift[c], kv = 0.25f - vb[i];
        CHECK(y0[i] == (sum < 0 ? 0.0f : sum));
        CHECK(y1[i] == (bnv < 0 ? 0.0f : bnv > 0.5f ? 0.5f : bnv));
        CHECK(y2[i] == (kv < 0 ? 0.0f : kv));
    }
    mp_plan_free(p);
    mp_model_free(m);
    free(f);
}

/* conv1d -> hardtanh(0, 6) is fused; a conv whose output is also a model output is not. */
static void test_fusion(void) {
    tb* b = tb_new();
    const int64_t dx[2] = {2, 8}, dy[2] = {3, 6};
    uint32_t x = tb_value(b, "x", 2, dx, NONE);
    uint32_t c = tb_op(b, OP_CONV1D, "c", &x, 1, 2, dy);
    float w[18];
    for (int i = 0; i < 18; i++) w[i] = sample_value((size_t)i * 3 + 1);
    int nnz = 0;
    for (int i = 0; i < 18; i++) nnz += w[i] != 0.0f;
    const int32_t ca[17] = {0, 3, 6, nnz, 2, 3, 1, 1, 3, 1, 1, 1, 1, 0, 0, 0, 0};
    for (int k = 0; k < 17; k++) tb_iattr(b, c, k, ca[k]);
    tb_slot(b, c, 0, tb_array(b, F32, w, 18));
    uint32_t h = tb_op(b, OP_ACT, "h", &b->op_out[c], 1, 2, dy);
    tb_iattr(b, h, 0, 1);
    tb_fattr(b, h, 0, 0.0f);
    tb_fattr(b, h, 1, 1.5f);
    tb_io(b, &x, 1, &b->op_out[h], 1);
    size_t size;
    uint8_t* f = tb_build(b, &size);
    float xv[16], y[18], want[18];
    fill(xv, 16);
    for (int o = 0; o < 3; o++)
        for (int t = 0; t < 6; t++) {
            float s = 0;
            for (int ci = 0; ci < 2; ci++)
                for (int j = 0; j < 3; j++) s += w[o * 6 + ci * 3 + j] * xv[ci * 8 + t + j];
            want[o * 6 + t] = s < 0 ? 0 : s > 1.5f ? 1.5f : s;
        }
    const float* in[1] = {xv};
    float* out[1] = {y};
    mp_model* m = NULL;
    mp_plan* p = NULL;
    char text[1024];
    CHECK(mp_model_load(f, size, &m) == MP_OK && mp_plan_create(m, 1, 1, 0, &p) == MP_OK);
    CHECK(mp_plan_run(p, in, out) == MP_OK && close_all(y, want, 18, 1e-6f));
    CHECK(mp_plan_describe(p, text, sizeof text, NULL) == MP_OK);
    CHECK(strstr(text, " +hardtanh(0, 1.5) ('h')\nh activation fused into 'c'\n") != NULL);
    mp_plan_free(p);
    mp_model_free(m);
    free(f);
    /* the conv output is a model output too: not fused, and both outputs are right */
    uint32_t outs[2] = {b->op_out[h], b->op_out[c]};
    b->nrefs -= 2;
    tb_io(b, &x, 1, outs, 2);
    f = tb_build(b, &size);
    free(b);
    float yc[18];
    float* out2[2] = {y, yc};
    CHECK(mp_model_load(f, size, &m) == MP_OK && mp_plan_create(m, 1, 1, 0, &p) == MP_OK);
    CHECK(mp_plan_run(p, in, out2) == MP_OK && close_all(y, want, 18, 1e-6f));
    for (int i = 0; i < 18; i++)
        CHECK(fabsf((yc[i] < 0 ? 0 : yc[i] > 1.5f ? 1.5f : yc[i]) - want[i]) <= 1e-6f);
    CHECK(yc[0] != y[0] || yc[1] != y[1] || yc[2] != y[2] || yc[3] != y[3]); /* not clamped */
    CHECK(mp_plan_describe(p, text, sizeof text, NULL) == MP_OK);
    CHECK(strstr(text, "h activation hardtanh\n") != NULL && strstr(text, "fused") == NULL);
    mp_plan_free(p);
    mp_model_free(m);
    free(f);
}

/* Plan arguments, the workspace API, and threads: 2 and 3 threads give the bits of 1. */
static void test_plan_api_threads(void) {
    size_t size;
    cnn_ids id;
    uint8_t* f = build_cnn(&size, &id, NULL);
    mp_model* m = NULL;
    mp_plan* p = (mp_plan*)1;
    CHECK(mp_model_load(f, size, &m) == MP_OK);
    CHECK(mp_plan_create(m, 0, 1, 0, &p) == MP_INVALID_ARGUMENT && p == NULL);
    CHECK(mp_plan_create(m, 1, 0, 0, &p) == MP_INVALID_ARGUMENT);
    CHECK(mp_plan_create(m, 1, 1, 64, &p) == MP_INVALID_ARGUMENT);
    CHECK(mp_plan_create(m, 1, 1, MP_PLAN_FORCE_DENSE | MP_PLAN_FORCE_SPARSE, &p) ==
          MP_INVALID_ARGUMENT);
    CHECK(mp_plan_create(NULL, 1, 1, 0, &p) == MP_INVALID_ARGUMENT);
    enum { B = 16 };
    float x[B * 36], y1[B * 4], y2[B * 4], y3[B * 4];
    fill(x, B * 36);
    const float* in[1] = {x};
    float* out1[1] = {y1};
    float* out2[1] = {y2};
    float* out3[1] = {y3};
    mp_plan *p1 = NULL, *p2 = NULL, *p3 = NULL;
    CHECK(mp_plan_create(m, B, 1, MP_PLAN_NO_TUNE, &p1) == MP_OK);
    CHECK(mp_plan_create(m, B, 2, MP_PLAN_NO_TUNE, &p2) == MP_OK);
    CHECK(mp_plan_create(m, B, 3, MP_PLAN_NO_TUNE, &p3) == MP_OK);
    for (int rep = 0; rep < 3; rep++) {
        CHECK(mp_plan_run(p1, in, out1) == MP_OK && mp_plan_run(p2, in, out2) == MP_OK &&
              mp_plan_run(p3, in, out3) == MP_OK);
        CHECK(memcmp(y1, y2, sizeof y1) == 0 && memcmp(y1, y3, sizeof y1) == 0);
    }
    float want[B * 4];
    for (int n = 0; n < B; n++) cnn_reference(x + 36 * n, want + 4 * n);
    CHECK(close_all(y1, want, B * 4, 1e-5f));
    /* workspace: size, refusals, then the caller's block gives the same result */
    size_t ws = mp_plan_workspace_size(p2);
    CHECK(ws >= (size_t)B * 36 * 4 && ws % 64 == 0);
    uint8_t* raw = malloc(ws + 128);
    uint8_t* mem = raw + (64 - (uintptr_t)raw % 64);
    CHECK(mp_plan_set_workspace(p2, mem + 4, ws) == MP_INVALID_ARGUMENT);
    CHECK(mp_plan_set_workspace(p2, mem, ws - 64) == MP_INVALID_ARGUMENT);
    CHECK(mp_plan_set_workspace(p2, NULL, ws) == MP_INVALID_ARGUMENT);
    memset(mem, 0xFF, ws); /* NaN everywhere: nothing may depend on the old contents */
    memset(y2, 0, sizeof y2);
    CHECK(mp_plan_set_workspace(p2, mem, ws) == MP_OK);
    CHECK(mp_plan_run(p2, in, out2) == MP_OK && memcmp(y1, y2, sizeof y1) == 0);
    CHECK(mp_plan_run(p2, NULL, out2) == MP_INVALID_ARGUMENT);
    const float* bad_in[1] = {NULL};
    CHECK(mp_plan_run(p2, bad_in, out2) == MP_INVALID_ARGUMENT);
    mp_plan_free(p1);
    mp_plan_free(p2);
    mp_plan_free(p3);
    free(raw);
    mp_model_free(m);
    free(f);
}

/* Brute force of conv 3x3 pad 1 (8 -> 16 channels, 32x32) + relu + maxpool 2x2 against
 * `got` (n, 16, 16, 16): the number of elements off by more than 1e-4 relative. */
static int conv_relu_pool_errors(const float* xv, const float* w, const float* got, int B) {
    int bad = 0;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < 16; o++)
            for (int yy = 0; yy < 16; yy++)
                for (int xx = 0; xx < 16; xx++) {
                    float m = 0; /* relu output >= 0 */
                    for (int i = 0; i < 2; i++)
                        for (int j = 0; j < 2; j++) {
                            int oy = 2 * yy + i, ox = 2 * xx + j;
                            float acc = 0;
                            for (int ci = 0; ci < 8; ci++)
                                for (int u = 0; u < 3; u++)
                                    for (int v = 0; v < 3; v++) {
                                        int iy = oy + u - 1, ix = ox + v - 1;
                                        if (iy < 0 || iy >= 32 || ix < 0 || ix >= 32) continue;
                                        acc += w[o * 72 + ci * 9 + u * 3 + v] *
                                               xv[((n * 8 + ci) * 32 + iy) * 32 + ix];
                                    }
                            m = fmaxf(m, acc);
                        }
                    float g = got[((n * 16 + o) * 16 + yy) * 16 + xx];
                    bad += !(fabsf(g - m) <= 1e-4f * (1 + fabsf(m)));
                }
    return bad;
}

/* Brute force: y[o] = sum over c, i, j of w[o][c][i][j] x[c][y + i - 1][x + j - 1] (3x3, pad 1,
 * no bias) on one h x w image, then relu when asked. */
static void conv3x3_reference(const float* x, const float* w, int cin, int cout, int h, int wd,
                              int relu, float* y) {
    for (int o = 0; o < cout; o++)
        for (int r = 0; r < h; r++)
            for (int q = 0; q < wd; q++) {
                double acc = 0.0;
                for (int c = 0; c < cin; c++)
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++) {
                            const int rr = r + i - 1, qq = q + j - 1;
                            if (rr < 0 || rr >= h || qq < 0 || qq >= wd) continue;
                            acc += (double)w[((o * cin + c) * 3 + i) * 3 + j] *
                                   x[(c * h + rr) * wd + qq];
                        }
                y[(o * h + r) * wd + q] = relu && acc < 0.0 ? 0.0f : (float)acc;
            }
}

/* Two chained convs on sample groups: x (4, 12, 12) -> conv a (8, 3x3, pad 1, a third of
 * the weights zero) + relu -> conv b (8, 3x3, pad 1) -> output. On 2 and 3 threads a batch
 * of 5 runs as sample groups (2 + 3, 1 + 2 + 2), conv a writing each group's samples into
 * that group's part of conv b's padded buffers: the plan says so, and the outputs are the
 * bits of one thread (no group reads another's samples; ASan checks the writes). */
static void test_threads_chained_groups(void) {
    tb* b = tb_new();
    const int64_t dx[3] = {4, 12, 12}, dc[3] = {8, 12, 12};
    uint32_t x = tb_value(b, "x", 3, dx, NONE);
    static float wa[8 * 36], wb[8 * 72];
    int na = 0, nb = 0;
    for (int i = 0; i < 8 * 36; i++) {
        wa[i] = i % 3 == 1 ? 0.0f : sample_value((size_t)i * 3) * 0.25f;
        na += wa[i] != 0.0f;
    }
    for (int i = 0; i < 8 * 72; i++) {
        wb[i] = sample_value((size_t)i * 11 + 1) * 0.125f;
        nb += wb[i] != 0.0f;
    }
    uint32_t ca = tb_op(b, OP_CONV2D, "a", &x, 1, 3, dc);
    const int32_t aa[17] = {0, 8, 36, na, 4, 8, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
    for (int k = 0; k < 17; k++) tb_iattr(b, ca, k, aa[k]);
    tb_slot(b, ca, 0, tb_array(b, F32, wa, 8 * 36));
    uint32_t r = tb_op(b, OP_RELU, "r", &b->op_out[ca], 1, 3, dc);
    uint32_t cb = tb_op(b, OP_CONV2D, "b", &b->op_out[r], 1, 3, dc);
    const int32_t ba[17] = {0, 8, 72, nb, 8, 8, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
    for (int k = 0; k < 17; k++) tb_iattr(b, cb, k, ba[k]);
    tb_slot(b, cb, 0, tb_array(b, F32, wb, 8 * 72));
    tb_io(b, &x, 1, &b->op_out[cb], 1);
    size_t size;
    uint8_t* f = tb_build(b, &size);
    free(b);
    enum { B = 5, NX = B * 4 * 144, NY = B * 8 * 144 };
    float* xv = malloc(NX * sizeof(float));
    float* ys[3];
    fill(xv, NX);
    mp_model* m = NULL;
    CHECK(mp_model_load(f, size, &m) == MP_OK);
    for (int t = 0; t < 3; t++) {
        ys[t] = calloc(NY, sizeof(float));
        mp_plan* p = NULL;
        CHECK(mp_plan_create(m, B, (size_t)t + 1, MP_PLAN_DEFAULT, &p) == MP_OK);
        char text[2048];
        size_t need = 0;
        CHECK(mp_plan_describe(p, text, sizeof text, &need) == MP_OK);
        CHECK(strstr(text, "writes the next conv's padded input") != NULL);
        CHECK(strstr(text, "input written padded by the previous conv") != NULL);
        const float* in[1] = {xv};
        float* out[1] = {ys[t]};
        CHECK(mp_plan_run(p, in, out) == MP_OK);
        mp_plan_free(p);
    }
    for (int t = 1; t < 3; t++) CHECK(memcmp(ys[0], ys[t], NY * sizeof(float)) == 0);
    float most = 0.0f;
    for (int i = 0; i < NY; i++) most = fabsf(ys[0][i]) > most ? fabsf(ys[0][i]) : most;
    CHECK(most > 0.0f); /* the outputs are not all zero */
    float mid[8 * 144], want[8 * 144];
    for (int n = 0; n < B; n++) {
        conv3x3_reference(xv + n * 4 * 144, wa, 4, 8, 12, 12, 1, mid);
        conv3x3_reference(mid, wb, 8, 8, 12, 12, 0, want);
        CHECK(close_all(ys[0] + n * 8 * 144, want, 8 * 144, 1e-4f));
    }
    mp_model_free(m);
    for (int t = 0; t < 3; t++) free(ys[t]);
    free(xv);
    free(f);
}

/* A model large enough that every step runs on the pool (over 32768 elements per step):
 * x (8, 32, 32) -> conv2d 3x3 pad 1 (16, dense weights, half zero) + relu -> maxpool 2x2
 * -> avgpool 3x3 s1 p1 -> * 0.5 -> + itself -> softmax over channels -> global avgpool.
 * 2 and 3 threads must give the bits of 1 thread, and the conv + relu + maxpool part
 * matches brute force (checked through a second output). */
static void test_threads_big(void) {
    tb* b = tb_new();
    const int64_t dx[3] = {8, 32, 32}, dc[3] = {16, 32, 32}, dp[3] = {16, 16, 16},
                  dg[1] = {16};
    uint32_t x = tb_value(b, "x", 3, dx, NONE);
    uint32_t c = tb_op(b, OP_CONV2D, "c", &x, 1, 3, dc);
    static float w[16 * 72];
    int nnz = 0;
    for (int i = 0; i < 16 * 72; i++) {
        w[i] = (i * 7) % 3 == 0 ? 0.0f : sample_value((size_t)i * 5) * 0.125f;
        nnz += w[i] != 0.0f;
    }
    const int32_t ca[17] = {0, 16, 72, nnz, 8, 16, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
    for (int k = 0; k < 17; k++) tb_iattr(b, c, k, ca[k]);
    tb_slot(b, c, 0, tb_array(b, F32, w, 16 * 72));
    uint32_t r = tb_op(b, OP_RELU, "r", &b->op_out[c], 1, 3, dc);
    uint32_t mp = tb_op(b, OP_MAXPOOL2D, "mp", &b->op_out[r], 1, 3, dp);
    const int32_t ma[8] = {2, 2, 2, 2, 0, 0, 1, 1};
    for (int k = 0; k < 8; k++) tb_iattr(b, mp, k, ma[k]);
    uint32_t ap = tb_op(b, OP_AVGPOOL2D, "ap", &b->op_out[mp], 1, 3, dp);
    const int32_t aa[10] = {3, 3, 1, 1, 1, 1, 1, 1, 0, 1};
    for (int k = 0; k < 10; k++) tb_iattr(b, ap, k, aa[k]);
    uint32_t h = tb_op(b, OP_MUL, "h", &b->op_out[ap], 1, 3, dp);
    tb_iattr(b, h, 0, 1);
    tb_fattr(b, h, 0, 0.5f);
    uint32_t hh[2] = {b->op_out[h], b->op_out[h]};
    uint32_t s = tb_op(b, OP_ADD, "s", hh, 2, 3, dp);
    uint32_t sm = tb_op(b, OP_ACT, "sm", &b->op_out[s], 1, 3, dp);
    tb_iattr(b, sm, 0, 9);
    uint32_t g = tb_op(b, OP_GAP, "g", &b->op_out[sm], 1, 1, dg);
    uint32_t outs[2] = {b->op_out[g], b->op_out[mp]};
    tb_io(b, &x, 1, outs, 2);
    size_t size;
    uint8_t* f = tb_build(b, &size);
    free(b);
    enum { B = 8, NX = B * 8 * 32 * 32, NP = B * 16 * 16 * 16 };
    float* xv = malloc(NX * sizeof(float));
    float* ys[3];
    float* ps[3];
    fill(xv, NX);
    for (int t = 0; t < 3; t++) {
        ys[t] = calloc(B * 16, sizeof(float));
        ps[t] = calloc(NP, sizeof(float));
        const float* in[1] = {xv};
        float* out[2] = {ys[t], ps[t]};
        CHECK(run_model(f, size, B, (size_t)t + 1, in, out) == MP_OK);
    }
    for (int t = 1; t < 3; t++)
        CHECK(memcmp(ys[0], ys[t], B * 16 * sizeof(float)) == 0 &&
              memcmp(ps[0], ps[t], NP * sizeof(float)) == 0);
    float sum = 0; /* softmax over channels, then the mean of each channel: sums to 1 */
    for (int k = 0; k < 16; k++) sum += ys[0][k];
    CHECK(fabsf(sum - 1.0f) < 1e-4f);
    CHECK(conv_relu_pool_errors(xv, w, ps[0], B) == 0);
    for (int t = 0; t < 3; t++) {
        free(ys[t]);
        free(ps[t]);
    }
    free(xv);
    free(f);
}

/* A model without ops: its input is its output (twice); an unused second input. */
static void test_no_ops(void) {
    tb* b = tb_new();
    const int64_t d[2] = {2, 3};
    uint32_t x = tb_value(b, "x", 2, d, NONE), u = tb_value(b, "unused", 1, d, NONE);
    uint32_t ins[2] = {x, u}, outs[2] = {x, x};
    tb_io(b, ins, 2, outs, 2);
    size_t size;
    uint8_t* f = tb_build(b, &size);
    free(b);
    float xv[12], uv[4] = {0}, y0[12], y1[12];
    fill(xv, 12);
    const float* in[2] = {xv, uv};
    float* out[2] = {y0, y1};
    CHECK(run_model(f, size, 2, 2, in, out) == MP_OK);
    CHECK(memcmp(xv, y0, sizeof xv) == 0 && memcmp(xv, y1, sizeof xv) == 0);
    free(f);
}

/* The thread pool itself (internal API): every task of every job runs exactly once, for
 * task counts around the chunk boundaries and 1 to 4 threads, many jobs in a row. */
typedef struct mp_pool mp_pool;
typedef void (*mp_task_fn)(void* ctx, size_t begin, size_t end);
mp_status mp_pool_create(size_t threads, mp_pool** out);
void mp_pool_run(mp_pool* pool, mp_task_fn fn, void* ctx, size_t n);
void mp_pool_free(mp_pool* pool);

static void count_tasks(void* ctx, size_t b, size_t e) {
    int* hits = ctx;
    for (size_t t = b; t < e; t++) __atomic_add_fetch(&hits[t], 1, __ATOMIC_RELAXED);
}

static void test_pool(void) {
    static int hits[5000];
    for (size_t threads = 1; threads <= 4; threads++) {
        mp_pool* pool = NULL;
        CHECK(mp_pool_create(threads, &pool) == MP_OK);
        if (!pool) continue;
        int bad = 0;
        for (size_t n = 0; n < 300; n += 1 + n / 16) {
            memset(hits, 0, sizeof hits);
            for (int rep = 0; rep < 20; rep++) mp_pool_run(pool, count_tasks, hits, n);
            for (size_t t = 0; t < n; t++) bad += hits[t] != 20;
        }
        memset(hits, 0, sizeof hits);
        mp_pool_run(pool, count_tasks, hits, 4999);
        for (size_t t = 0; t < 5000; t++) bad += hits[t] != (t < 4999);
        CHECK(bad == 0);
        mp_pool_free(pool);
    }
}

/* The seed models of tests/native/data (gen_seeds.py): batch 2 against torch's output. */
static uint8_t* read_all(const char* path, size_t* size) {
    FILE* fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t* buf = malloc(n > 0 ? (size_t)n : 1);
    *size = fread(buf, 1, n > 0 ? (size_t)n : 0, fp);
    fclose(fp);
    return buf;
}

static void test_seed(const char* dir, const char* name, size_t threads) {
    char path[512];
    size_t nin, nout, nmodel;
    snprintf(path, sizeof path, "%s/%s.in", dir, name);
    float* x = (float*)read_all(path, &nin);
    snprintf(path, sizeof path, "%s/%s.out", dir, name);
    float* want = (float*)read_all(path, &nout);
    mp_model* m = NULL;
    mp_plan* p = NULL;
    snprintf(path, sizeof path, "%s/%s.mps", dir, name);
    if (!x || !want) {
        fprintf(stderr, "skip %s: no %s/%s.in/.out\n", name, dir, name);
        free(x);
        free(want);
        return;
    }
    CHECK(mp_model_load_file(path, &m) == MP_OK);
    CHECK(mp_plan_create(m, 2, threads, MP_PLAN_DEFAULT, &p) == MP_OK);
    if (!m || !p) goto done;
    const float* in[8];
    float* out[8];
    float* got = malloc(nout);
    size_t off_in = 0, off_out = 0, nd;
    int64_t dims[8];
    for (size_t i = 0; i < mp_model_num_inputs(m) && i < 8; i++) {
        in[i] = x + off_in;
        mp_model_input_shape(m, i, dims, 8, &nd);
        size_t e = 2;
        for (size_t d = 0; d < nd; d++) e *= (size_t)dims[d];
        off_in += e;
    }
    for (size_t i = 0; i < mp_model_num_outputs(m) && i < 8; i++) {
        out[i] = got + off_out;
        mp_model_output_shape(m, i, dims, 8, &nd);
        size_t e = 2;
        for (size_t d = 0; d < nd; d++) e *= (size_t)dims[d];
        off_out += e;
    }
    CHECK(off_in * 4 == nin && off_out * 4 == nout);
    nmodel = off_out;
    if (off_in * 4 == nin && off_out * 4 == nout) {
        CHECK(mp_plan_run(p, in, out) == MP_OK);
        int ok = close_all(got, want, nmodel, 1e-4f);
        CHECK(ok);
        if (!ok) fprintf(stderr, "  seed %s, %zu threads\n", name, threads);
    }
    free(got);
done:
    mp_plan_free(p);
    mp_model_free(m);
    free(x);
    free(want);
}

static void test_seeds(const char* dir) {
    const char* names[] = {"seed_cnn2d", "seed_cnn1d", "seed_two_inputs", "seed_residual_f16"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        test_seed(dir, names[k], 1);
        test_seed(dir, names[k], 2);
    }
}

int main(int argc, char** argv) {
    /* the seeds: from the repository root or from tests/native (the Makefile's directory) */
    FILE* probe = fopen("tests/native/data/seed_cnn2d.mps", "rb");
    const char* dir = argc > 1 ? argv[1] : probe ? "tests/native/data" : "data";
    if (probe) fclose(probe);
    test_api();
    test_cnn();
    test_rejections();
    test_mutations();
    test_pools();
    test_wide_pools();
    test_activations();
    test_activation_range();
    test_elementwise();
    test_fusion();
    test_simple_fusion();
    test_long_rows();
    test_plan_api_threads();
    test_threads_big();
    test_threads_chained_groups();
    test_no_ops();
    test_pool();
    test_seeds(dir);
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
