/*
 * fuzz_load - a deterministic mutation fuzzer of the model loader (public API only).
 *
 *     fuzz_load [--iters N] [--seed S] [--budget SECONDS] [--strict] [--verbose] SEED.mps...
 *
 * Every case is a seed model file (format version 3, docs/native_format.md) changed in one
 * of these ways, then given to mp_model_load -> mp_plan_create -> mp_plan_run on a zero
 * input:
 *   1. truncated at every section and array boundary (and one byte either side), with the
 *      header's file_size and CRC left alone and with both fixed up;
 *   2. every header field, every field of every value / op / array record and every ref set
 *      to boundary and huge values (0, 1, 2^20 + 1, 2^31 - 1, 2^32 - 1, 2^63, the file size,
 *      NaN / inf for float attributes...), CRC fixed so that the deeper checks are reached;
 *   3. integer arrays (CSR indptr / indices) with entries at both ends set out of range;
 *   4. --iters random cases: 1 to 4 bit flips, byte sets, interesting words, truncations,
 *      extensions and splices, mostly with file_size and CRC fixed up.
 * Property checked (besides "no crash, over-read, UB, leak or hang", which the sanitizers
 * and a per-case alarm check): a refused file returns a known status with a non-empty
 * message, one line (a warning unless --strict); every seed loads. Cases are numbered and
 * reproducible from --seed.
 * Exit status: 0 ok, 1 a property failed, 2 bad usage or no seed file.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* alarm, posix_memalign, clock_gettime */
#endif

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mobileprune.h"

#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_ASAN 1
#endif
#endif
#if defined(FUZZ_ASAN)
#include <sanitizer/common_interface_defs.h>
/* Huge allocations return NULL (the engine must report MP_OUT_OF_MEMORY) instead of
 * aborting; no allocation above 2 GiB. */
const char* __asan_default_options(void);
const char* __asan_default_options(void) {
    return "allocator_may_return_null=1:max_allocation_size_mb=2048";
}
#endif

enum { HEADER_SIZE = 128, VALUE_SIZE = 48, OP_SIZE = 160, ARRAY_SIZE = 32 };
enum { CASE_SECONDS = 30 };                  /* a case running longer is a hang */
#define MAX_INPUT_ELEMENTS ((uint64_t)1 << 22) /* larger valid inputs: load and plan only */
#define MAX_WORKSPACE ((size_t)1 << 30)        /* larger plans are not run */

/* ---- the state of one fuzzing session ----------------------------------------------- */

typedef struct seed_file {
    const char* path;
    unsigned char* data;
    size_t size;
} seed_file;

typedef struct fuzzer {
    uint32_t crc_table[256];
    uint64_t rng;
    unsigned char* work; /* the mutated bytes, capacity `cap` */
    size_t cap;
    unsigned long cases, skipped, loaded, planned, ran, by_status[16];
    int verbose, strict_messages;
    unsigned long failed, multiline;
    double start, budget;
} fuzzer;

static char current_case[320]; /* printed on a crash, a sanitizer report or a hang */

static void print_current_case(void) {
    const char prefix[] = "\nfuzz_load: failing case: ";
    if (write(2, prefix, sizeof prefix - 1) < 0 ||
        write(2, current_case, strlen(current_case)) < 0 || write(2, "\n", 1) < 0)
        return;
}

static void on_alarm(int sig) {
    (void)sig;
    const char msg[] = "\nfuzz_load: HANG (case ran longer than the alarm)";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(1);
    print_current_case();
    _exit(1);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* splitmix64 */
static uint64_t next_random(fuzzer* f) {
    uint64_t z = (f->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t random_below(fuzzer* f, size_t n) { return n ? (size_t)(next_random(f) % n) : 0; }

/* ---- little-endian fields and the CRC -------------------------------------------------- */

static uint32_t rd32(const unsigned char* p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char* p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(unsigned char* p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void wr64(unsigned char* p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

static void crc_init(fuzzer* f) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        f->crc_table[i] = c;
    }
}

/* zlib's CRC-32 */
static uint32_t crc32_of(const fuzzer* f, const unsigned char* p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = f->crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* Make the header's file_size and CRC agree with the bytes (when the header is whole). */
static void fix_header(const fuzzer* f, unsigned char* p, size_t size, int fix_size, int fix_crc) {
    if (fix_size && size >= 24) wr64(p + 16, size);
    if (fix_crc && size >= HEADER_SIZE)
        wr32(p + 24, crc32_of(f, p + HEADER_SIZE, size - HEADER_SIZE));
}

/* ---- running one case ------------------------------------------------------------------ */

/* A property failure: report it (the first 20 in full) and remember to exit 1. */
static void fail_with(fuzzer* f, const char* what, const char* message) {
    if (++f->failed <= 20) {
        fprintf(stderr, "fuzz_load: FAIL: %s\n  case: %s\n", what, current_case);
        if (message != NULL) {
            fputs("  message: \"", stderr);
            for (const unsigned char* c = (const unsigned char*)message; *c; c++) {
                if (*c < 0x20 || *c >= 0x7F || *c == '\\') fprintf(stderr, "\\x%02x", *c);
                else fputc(*c, stderr);
            }
            fputs("\"\n", stderr);
        }
    }
}

static void fail(fuzzer* f, const char* what) { fail_with(f, what, NULL); }

static void check_refusal(fuzzer* f, mp_status st) {
    const char* msg = mp_last_error();
    if ((unsigned)st < 16) f->by_status[st]++;
    if (st == MP_OK || (unsigned)st > MP_IO_ERROR) fail_with(f, "unknown status code", msg);
    else if (msg == NULL || msg[0] == '\0') fail(f, "refused without a message");
    else if (strpbrk(msg, "\n\r") != NULL) {
        if (f->strict_messages) fail_with(f, "error message is not one line", msg);
        else if (++f->multiline == 1) {
            fprintf(stderr, "fuzz_load: WARN: an error message is not one line (bytes of the "
                    "file copied into it; --strict makes this a failure)\n  case: %s\n",
                    current_case);
        }
    }
}

/* Per-sample element count of every input; 0 when the model reports something absurd. */
static uint64_t io_elements(const mp_model* m, int inputs, size_t n, uint64_t* each) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t dims[MP_MAX_DIMS];
        size_t ndim = 0;
        uint64_t e = 1;
        mp_status st = inputs ? mp_model_input_shape(m, i, dims, MP_MAX_DIMS, &ndim)
                              : mp_model_output_shape(m, i, dims, MP_MAX_DIMS, &ndim);
        if (st != MP_OK || ndim == 0 || ndim > MP_MAX_DIMS) return 0;
        for (size_t d = 0; d < ndim; d++) {
            if (dims[d] <= 0 || (uint64_t)dims[d] > MAX_INPUT_ELEMENTS) return 0;
            e *= (uint64_t)dims[d];
            if (e > MAX_INPUT_ELEMENTS) return 0;
        }
        each[i] = e;
        total += e;
    }
    return total <= MAX_INPUT_ELEMENTS ? total : 0;
}

/* One float block per tensor (exactly sized, so an overrun is an ASan report). */
static float** alloc_tensors(size_t n, const uint64_t* each, size_t batch) {
    float** t = calloc(n ? n : 1, sizeof *t);
    for (size_t i = 0; t != NULL && i < n; i++) {
        t[i] = calloc((size_t)each[i] * batch, sizeof(float));
        if (t[i] == NULL) return t; /* freed by free_tensors */
    }
    return t;
}

static void free_tensors(float** t, size_t n) {
    for (size_t i = 0; t != NULL && i < n; i++) free(t[i]);
    free(t);
}

static void describe_plan(fuzzer* f, const mp_plan* plan) {
    char small[8];
    size_t needed = 0;
    memset(small, 'x', sizeof small);
    if (mp_plan_describe(plan, small, sizeof small, &needed) != MP_OK) {
        fail(f, "mp_plan_describe failed on a valid plan");
    } else if (memchr(small, '\0', sizeof small) == NULL) {
        fail(f, "mp_plan_describe left a short buffer without NUL");
    }
}

/* Plan and run a loaded model on zero inputs with a batch, threads and flags from the rng. */
static void plan_and_run(fuzzer* f, const mp_model* m) {
    enum { MAX_IO = 64 };
    uint64_t in_each[MAX_IO], out_each[MAX_IO];
    size_t nin = mp_model_num_inputs(m), nout = mp_model_num_outputs(m);
    if (nin == 0 || nout == 0 || nin > MAX_IO || nout > MAX_IO) return;
    if (io_elements(m, 1, nin, in_each) == 0 || io_elements(m, 0, nout, out_each) == 0) return;
    static const uint32_t flag_sets[] = {MP_PLAN_DEFAULT, MP_PLAN_NO_TUNE,
                                         MP_PLAN_NO_TUNE | MP_PLAN_FORCE_DENSE,
                                         MP_PLAN_NO_TUNE | MP_PLAN_FORCE_SPARSE,
                                         MP_PLAN_NO_TUNE | MP_PLAN_PORTABLE};
    size_t batch = 1 + random_below(f, 2), threads = 1 + (random_below(f, 4) == 0);
    uint32_t flags = flag_sets[random_below(f, sizeof flag_sets / sizeof flag_sets[0])];
    mp_plan* plan = NULL;
    mp_status st = mp_plan_create(m, batch, threads, flags, &plan);
    if (st != MP_OK) {
        check_refusal(f, st);
        return;
    }
    f->planned++;
    describe_plan(f, plan);
    float** in = alloc_tensors(nin, in_each, batch);
    float** out = alloc_tensors(nout, out_each, batch);
    if (in != NULL && out != NULL && in[nin - 1] != NULL && out[nout - 1] != NULL &&
        mp_plan_workspace_size(plan) <= MAX_WORKSPACE) {
        st = mp_plan_run(plan, (const float* const*)in, out);
        if (st != MP_OK) check_refusal(f, st);
        else f->ran++;
    }
    free_tensors(in, nin);
    free_tensors(out, nout);
    mp_plan_free(plan);
}

/* Load the first `size` bytes of f->work (from an exactly sized, 64-byte aligned copy). */
static void run_case(fuzzer* f, size_t size) {
    void* copy = NULL;
    if (f->budget > 0 && now_seconds() - f->start > f->budget) {
        f->skipped++;
        return;
    }
    f->cases++;
    if (f->verbose) fprintf(stderr, "case %lu: %s\n", f->cases, current_case);
    if (posix_memalign(&copy, 64, size ? size : 1) != 0) {
        fail(f, "out of memory in the fuzzer");
        return;
    }
    if (size) memcpy(copy, f->work, size);
    alarm(CASE_SECONDS);
    mp_model* m = NULL;
    mp_status st = mp_model_load(copy, size, &m);
    if (st != MP_OK) {
        check_refusal(f, st);
        if (m != NULL) fail(f, "a refused load set *out");
    } else {
        f->loaded++;
        plan_and_run(f, m);
        mp_model_free(m);
    }
    alarm(0);
    free(copy);
}

/* ---- systematic mutations -------------------------------------------------------------- */

static void truncate_at(fuzzer* f, const seed_file* s, size_t cut) {
    for (int fixed = 0; fixed < 2; fixed++) {
        snprintf(current_case, sizeof current_case, "%s: truncated to %zu bytes%s", s->path, cut,
                 fixed ? " (file_size and CRC fixed)" : "");
        memcpy(f->work, s->data, cut);
        fix_header(f, f->work, cut, fixed, fixed);
        run_case(f, cut);
    }
}

/* Section starts and ends, array starts and ends, each +-1. */
static void truncations(fuzzer* f, const seed_file* s) {
    const unsigned char* h = s->data;
    uint64_t marks[64 + 3 * 64];
    size_t n = 0;
    static const int fields[] = {72, 80, 88, 96, 104, 120};
    marks[n++] = 0, marks[n++] = 8, marks[n++] = 24, marks[n++] = HEADER_SIZE;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) marks[n++] = rd64(h + fields[i]);
    marks[n++] = rd64(h + 104) + rd64(h + 112);
    uint64_t arrays = rd64(h + 96), data = rd64(h + 120), na = rd32(h + 36);
    for (uint64_t a = 0; a < na && a < 60 && arrays + (a + 1) * ARRAY_SIZE <= s->size; a++) {
        const unsigned char* r = h + arrays + a * ARRAY_SIZE;
        uint32_t dt = rd32(r);
        uint64_t item = (dt == 2 || dt == 3) ? 2 : 4;
        marks[n++] = data + rd64(r + 8);
        marks[n++] = data + rd64(r + 8) + item * rd64(r + 16);
    }
    for (size_t i = 0; i < n; i++)
        for (int d = -1; d <= 1; d++) {
            uint64_t cut = marks[i] + (uint64_t)(int64_t)d;
            if ((marks[i] > 0 || d >= 0) && cut < s->size) truncate_at(f, s, (size_t)cut);
        }
}

static const uint64_t interesting[] = {
    0, 1, 2, 3, 7, 8, 63, 64, 255, 0x7FFF, 0xFFFF, 0x10000, (1u << 20), (1u << 20) + 1,
    0x7FFFFFFF, 0x80000000u, 0xFFFFFFFEu, 0xFFFFFFFFu, (uint64_t)1 << 32, (uint64_t)1 << 40,
    (uint64_t)1 << 62, (uint64_t)1 << 63, UINT64_MAX - 63, UINT64_MAX};
enum { N_INTERESTING_32 = 18, N_INTERESTING_64 = sizeof interesting / sizeof interesting[0] };

/* Set the field at `offset` (4 or 8 bytes) to each interesting value, the original +-1 and
 * sizes related to the file; CRC fixed unless the field is the CRC itself. */
static void set_field(fuzzer* f, const seed_file* s, size_t offset, int width, const char* what) {
    if (offset + (size_t)width > s->size) return;
    uint64_t orig = width == 4 ? rd32(s->data + offset) : rd64(s->data + offset);
    uint64_t extra[] = {orig - 1, orig + 1, s->size, s->size - 1, s->size + 1, s->size / 2};
    size_t n_int = width == 4 ? N_INTERESTING_32 : N_INTERESTING_64;
    for (size_t i = 0; i < n_int + sizeof extra / sizeof extra[0]; i++) {
        uint64_t v = i < n_int ? interesting[i] : extra[i - n_int];
        if (v == orig || (width == 4 && v > 0xFFFFFFFFu)) continue;
        memcpy(f->work, s->data, s->size);
        if (width == 4) wr32(f->work + offset, (uint32_t)v);
        else wr64(f->work + offset, v);
        snprintf(current_case, sizeof current_case, "%s: %s at byte %zu = %llu", s->path, what,
                 offset, (unsigned long long)v);
        fix_header(f, f->work, s->size, 0, offset != 24);
        run_case(f, s->size);
    }
}

static void set_float_field(fuzzer* f, const seed_file* s, size_t offset, const char* what) {
    static const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 1e38f, -1e38f, 1e-45f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0] + 3; i++) {
        float v = i == 7 ? (float)NAN : i == 8 ? (float)INFINITY : i == 9 ? -(float)INFINITY
                                                                      : specials[i];
        uint32_t bits;
        memcpy(&bits, &v, 4);
        memcpy(f->work, s->data, s->size);
        wr32(f->work + offset, bits);
        snprintf(current_case, sizeof current_case, "%s: %s at byte %llu = float %g", s->path,
                 what, (unsigned long long)offset, (double)v);
        fix_header(f, f->work, s->size, 0, 1);
        run_case(f, s->size);
    }
}

/* Every field of the fixed header. */
static void header_fields(fuzzer* f, const seed_file* s) {
    for (size_t off = 8; off < 72; off += 4) set_field(f, s, off, off == 16 ? 8 : 4, "header");
    for (size_t off = 72; off < HEADER_SIZE; off += 8) set_field(f, s, off, 8, "header");
    set_field(f, s, 20, 4, "header"); /* the high half of file_size */
}

/* `count` records of `rec_size` bytes at `base` (bounded by the file): every u32 field set
 * to interesting values, except the fattr floats (op records, bytes 136..160). */
static void record_fields(fuzzer* f, const seed_file* s, uint64_t base, uint64_t count,
                          size_t rec_size, const char* what) {
    for (uint64_t r = 0; r < count && r < 256; r++) {
        uint64_t rec = base + r * rec_size;
        if (rec + rec_size > s->size) return;
        for (size_t off = 0; off < rec_size; off += 4) {
            if (rec_size == OP_SIZE && off >= 136) set_float_field(f, s, rec + off, what);
            else if (rec_size == ARRAY_SIZE && (off == 8 || off == 16)) {
                set_field(f, s, rec + off, 8, what);
                off += 4;
            } else set_field(f, s, rec + off, 4, what);
        }
    }
}

/* Entries at both ends and the middle of every integer array (indptr, indices) set out of
 * range or swapped, breaking the CSR invariants. */
static void integer_arrays(fuzzer* f, const seed_file* s) {
    const unsigned char* h = s->data;
    uint64_t arrays = rd64(h + 96), data = rd64(h + 120), na = rd32(h + 36);
    for (uint64_t a = 0; a < na && a < 256 && arrays + (a + 1) * ARRAY_SIZE <= s->size; a++) {
        const unsigned char* r = h + arrays + a * ARRAY_SIZE;
        uint32_t dt = rd32(r);
        uint64_t off = rd64(r + 8), count = rd64(r + 16), item = dt == 3 ? 2 : 4;
        if (dt < 3 || dt > 5 || count == 0 || data + off + count * item > s->size) continue;
        uint64_t picks[] = {0, 1, count / 2, count - 2, count - 1};
        static const uint32_t vals[] = {0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF};
        for (size_t p = 0; p < 5; p++) {
            if (picks[p] >= count) continue;
            size_t at = (size_t)(data + off + picks[p] * item);
            for (size_t v = 0; v < sizeof vals / sizeof vals[0]; v++) {
                memcpy(f->work, s->data, s->size);
                if (item == 2) {
                    f->work[at] = (unsigned char)vals[v];
                    f->work[at + 1] = (unsigned char)(vals[v] >> 8);
                } else {
                    wr32(f->work + at, vals[v]);
                }
                snprintf(current_case, sizeof current_case, "%s: array %llu entry %llu = %u",
                         s->path, (unsigned long long)a, (unsigned long long)picks[p], vals[v]);
                fix_header(f, f->work, s->size, 0, 1);
                run_case(f, s->size);
            }
        }
    }
}

static void systematic(fuzzer* f, const seed_file* s) {
    const unsigned char* h = s->data;
    truncations(f, s);
    header_fields(f, s);
    record_fields(f, s, rd64(h + 72), rd32(h + 28), VALUE_SIZE, "value record");
    record_fields(f, s, rd64(h + 80), rd32(h + 32), OP_SIZE, "op record");
    record_fields(f, s, rd64(h + 88), rd32(h + 40), 4, "ref");
    record_fields(f, s, rd64(h + 96), rd32(h + 36), ARRAY_SIZE, "array record");
    integer_arrays(f, s);
}

/* ---- random mutations ------------------------------------------------------------------ */

/* A position biased towards the header and records (where the structure lives). */
static size_t random_position(fuzzer* f, size_t size, size_t struct_end) {
    if (struct_end > size) struct_end = size;
    if (struct_end > 0 && random_below(f, 4) != 0) return random_below(f, struct_end);
    return random_below(f, size);
}

static size_t mutate_once(fuzzer* f, size_t size, size_t struct_end) {
    unsigned char* p = f->work;
    size_t at = random_position(f, size, struct_end);
    switch (random_below(f, 7)) {
    case 0: if (size) p[at] ^= (unsigned char)(1u << random_below(f, 8)); break;
    case 1: if (size) p[at] = (unsigned char)next_random(f); break;
    case 2:
        if ((at & ~(size_t)3) + 4 <= size)
            wr32(p + (at & ~(size_t)3), (uint32_t)interesting[random_below(f, N_INTERESTING_32)]);
        break;
    case 3:
        if ((at & ~(size_t)7) + 8 <= size)
            wr64(p + (at & ~(size_t)7), interesting[random_below(f, N_INTERESTING_64)]);
        break;
    case 4: return random_below(f, size + 1); /* truncate */
    case 5: { /* extend with random bytes */
        size_t add = 1 + random_below(f, 256);
        if (size + add > f->cap) add = f->cap - size;
        for (size_t i = 0; i < add; i++) p[size + i] = (unsigned char)next_random(f);
        return size + add;
    }
    default: { /* splice: copy a chunk over another place */
        size_t len = 1 + random_below(f, 64), from = random_below(f, size);
        if (from + len <= size && at + len <= size) memmove(p + at, p + from, len);
        break;
    }
    }
    return size;
}

static void random_cases(fuzzer* f, const seed_file* seeds, size_t nseeds, unsigned long iters) {
    for (unsigned long done = 0; done < iters && f->skipped == 0; done++) {
        const seed_file* s = &seeds[random_below(f, nseeds)];
        size_t size = s->size, struct_end = s->size >= HEADER_SIZE ? rd64(s->data + 120) : 0;
        memcpy(f->work, s->data, size);
        size_t k = 1 + random_below(f, 4);
        for (size_t i = 0; i < k; i++) size = mutate_once(f, size, struct_end);
        int fix = random_below(f, 10) != 0;
        fix_header(f, f->work, size, fix, fix);
        snprintf(current_case, sizeof current_case, "%s: random case %lu (--seed as given)",
                 s->path, done);
        run_case(f, size);
    }
}

/* ---- seeds, API edge cases and main -------------------------------------------------------- */

static int read_seed(const char* path, seed_file* s) {
    FILE* fp = fopen(path, "rb");
    s->path = path;
    s->data = NULL;
    if (fp == NULL) return 0;
    if (fseek(fp, 0, SEEK_END) == 0) {
        long n = ftell(fp);
        if (n > 0 && n < (1L << 26) && fseek(fp, 0, SEEK_SET) == 0) {
            s->size = (size_t)n;
            s->data = malloc(s->size);
            if (s->data != NULL && fread(s->data, 1, s->size, fp) != s->size) {
                free(s->data);
                s->data = NULL;
            }
        }
    }
    fclose(fp);
    return s->data != NULL;
}

/* Misuse of the loading calls: NULL pointers, empty and foreign buffers, missing files. */
static void api_edges(fuzzer* f, const char* a_seed_path) {
    static const unsigned char foreign[HEADER_SIZE] = "MPSPARSE\x02\0\0\0{\"format_version\": 2}";
    mp_model* m = NULL;
    snprintf(current_case, sizeof current_case, "API edge cases");
    if (mp_model_load(NULL, 10, &m) != MP_INVALID_ARGUMENT)
        fail(f, "load(NULL, 10) not MP_INVALID_ARGUMENT");
    if (mp_model_load(foreign, sizeof foreign, NULL) != MP_INVALID_ARGUMENT)
        fail(f, "load(out=NULL) not MP_INVALID_ARGUMENT");
    if (mp_model_load(foreign, 0, &m) == MP_OK) fail(f, "an empty buffer loaded");
    if (mp_model_load(foreign, sizeof foreign, &m) != MP_INVALID_MODEL)
        fail(f, "a version-2 header not MP_INVALID_MODEL");
    if (mp_model_load_file("/nonexistent/dir/model.mps", &m) != MP_IO_ERROR)
        fail(f, "a missing file not MP_IO_ERROR");
    if (mp_model_load_file(".", &m) != MP_IO_ERROR) fail(f, "a directory not MP_IO_ERROR");
    if (mp_model_load_file(a_seed_path, &m) != MP_OK) fail(f, "mp_model_load_file refused a seed");
    mp_model_free(m);
    mp_model_free(NULL);
    mp_plan_free(NULL);
}

/* A valid model whose tensors are as large as the format allows: input x (1, 46340, 46340)
 * (2^31 - 88400 elements, 8 GiB), z = x + x, y = relu(z); no arrays. Built here, not by
 * the Python writer, so that the loader is checked against docs/native_format.md itself. */
static size_t huge_model(const fuzzer* f, unsigned char* p) {
    enum { VALUES = 128, OPS = VALUES + 3 * VALUE_SIZE, REFS = OPS + 2 * OP_SIZE,
           STRINGS = REFS + 24, END = 640 };
    static const char strings[] = "\0x\0z\0y\0add\0relu"; /* names at 1, 3, 5, 7, 11 */
    memset(p, 0, END);
    memcpy(p, "MPSPARSE", 8);
    wr32(p + 8, 3), wr32(p + 12, HEADER_SIZE), wr64(p + 16, END);
    wr32(p + 28, 3), wr32(p + 32, 2), wr32(p + 36, 0), wr32(p + 40, 5); /* values ops arrays refs */
    wr32(p + 44, 1), wr32(p + 48, 1), wr32(p + 52, 3), wr32(p + 56, 4); /* inputs outputs */
    wr32(p + 68, 1);
    wr64(p + 72, VALUES), wr64(p + 80, OPS), wr64(p + 88, REFS), wr64(p + 96, STRINGS);
    wr64(p + 104, STRINGS), wr64(p + 112, sizeof strings), wr64(p + 120, END);
    for (uint32_t v = 0; v < 3; v++) { /* x, z, y: (1, 46340, 46340) */
        unsigned char* r = p + VALUES + v * VALUE_SIZE;
        wr32(r, 1 + 2 * v), wr32(r + 4, 3), wr32(r + 8, 1), wr32(r + 12, 46340), wr32(r + 16, 46340);
        wr32(r + 40, v == 0 ? 0xFFFFFFFFu : v - 1);
    }
    static const uint32_t refs[] = {0, 0, 1, 0, 2}; /* add(x, x), relu(z), in x, out y */
    for (int i = 0; i < 5; i++) wr32(p + REFS + 4 * i, refs[i]);
    for (uint32_t o = 0; o < 2; o++) {
        unsigned char* r = p + OPS + o * OP_SIZE;
        wr32(r, o == 0 ? 13 : 10), wr32(r + 4, o == 0 ? 7 : 11), wr32(r + 8, 1 + o);
        wr32(r + 12, o == 0 ? 2 : 1), wr32(r + 16, o == 0 ? 0 : 2);
        for (int a = 0; a < 8; a++) wr32(r + 24 + 4 * a, 0xFFFFFFFFu);
    }
    memcpy(p + STRINGS, strings, sizeof strings);
    fix_header(f, p, END, 1, 1);
    return END;
}

/* Sizes that would allocate gigabytes or overflow: the huge model plans (or is refused
 * with MP_OUT_OF_MEMORY: ASan caps allocations at 2 GiB here) and is never run; the largest
 * batches on it and on a seed are refused or planned without overflow. */
static void huge_sizes(fuzzer* f, const seed_file* seed) {
    static const size_t batches[] = {1, 2, 1u << 20, 0x7FFFFFFF, (size_t)1 << 31, SIZE_MAX};
    unsigned char* bytes = malloc(640);
    if (bytes == NULL) return;
    snprintf(current_case, sizeof current_case, "huge model: (1, 46340, 46340) add + relu");
    size_t size = huge_model(f, bytes);
    mp_model *huge = NULL, *small = NULL;
    mp_status st = mp_model_load(bytes, size, &huge);
    if (st != MP_OK) fail_with(f, "the huge valid model does not load", mp_last_error());
    if (mp_model_load(seed->data, seed->size, &small) != MP_OK) fail(f, "a seed does not load");
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++)
        for (int which = 0; which < 2; which++) {
            const mp_model* m = which ? small : huge;
            mp_plan* plan = NULL;
            if (m == NULL) continue;
            snprintf(current_case, sizeof current_case, "%s: mp_plan_create batch %zu",
                     which ? seed->path : "huge model", batches[i]);
            alarm(CASE_SECONDS);
            st = mp_plan_create(m, batches[i], 1, MP_PLAN_NO_TUNE, &plan);
            alarm(0);
            if (st != MP_OK) check_refusal(f, st);
            else f->planned++; /* planned (not run: the caller's buffers would be 8 GiB) */
            mp_plan_free(plan);
        }
    mp_model_free(small);
    mp_model_free(huge);
    free(bytes);
}

static int parse_args(int argc, char** argv, fuzzer* f, unsigned long* iters, const char*** paths,
                      int* npaths) {
    *paths = calloc((size_t)argc, sizeof **paths);
    if (*paths == NULL) return 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) *iters = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) f->rng = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--budget") == 0 && i + 1 < argc) f->budget = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--verbose") == 0) f->verbose = 1;
        else if (strcmp(argv[i], "--strict") == 0) f->strict_messages = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: fuzz_load [--iters N] [--seed S] [--budget SECONDS] [--strict] [--verbose] "
                            "SEED.mps...\n");
            return 2;
        } else (*paths)[(*npaths)++] = argv[i];
    }
    return 0;
}

static void report(const fuzzer* f, size_t nseeds) {
    fprintf(stderr,
            "fuzz_load: %lu cases over %zu seeds in %.1f s%s: %lu loaded, %lu planned, %lu ran; "
            "refusals: invalid_argument %lu, invalid_model %lu, unsupported_op %lu, "
            "shape_mismatch %lu, out_of_memory %lu, io_error %lu%s\n",
            f->cases, nseeds, now_seconds() - f->start,
            f->skipped ? " (time budget reached: the remaining cases skipped)" : "", f->loaded, f->planned, f->ran,
            f->by_status[MP_INVALID_ARGUMENT], f->by_status[MP_INVALID_MODEL],
            f->by_status[MP_UNSUPPORTED_OP], f->by_status[MP_SHAPE_MISMATCH],
            f->by_status[MP_OUT_OF_MEMORY], f->by_status[MP_IO_ERROR],
            f->failed ? " -- FAILED" : "");
    if (f->failed) fprintf(stderr, "fuzz_load: %lu property failures\n", f->failed);
    if (f->multiline)
        fprintf(stderr, "fuzz_load: WARN: %lu error messages were not one line\n", f->multiline);
}

int main(int argc, char** argv) {
    static fuzzer f;
    unsigned long iters = 50000;
    const char** paths = NULL;
    int npaths = 0;
    f.rng = 1;
    f.budget = 45.0;
    if (parse_args(argc, argv, &f, &iters, &paths, &npaths) != 0) return 2;
#if defined(FUZZ_ASAN)
    __sanitizer_set_death_callback(print_current_case);
#endif
    signal(SIGALRM, on_alarm);
    crc_init(&f);
    f.start = now_seconds();
    seed_file* seeds = calloc((size_t)npaths + 1, sizeof *seeds);
    size_t nseeds = 0;
    for (int i = 0; seeds != NULL && i < npaths; i++) {
        if (!read_seed(paths[i], &seeds[nseeds])) {
            fprintf(stderr, "fuzz_load: cannot read seed %s\n", paths[i]);
            continue;
        }
        if (seeds[nseeds].size > f.cap) f.cap = seeds[nseeds].size;
        nseeds++;
    }
    if (nseeds == 0) {
        fprintf(stderr, "fuzz_load: no seed model file given (tests/native/data/*.mps)\n");
        return 2;
    }
    f.cap += 4096;
    f.work = malloc(f.cap);
    if (f.work == NULL) return 2;
    for (size_t i = 0; i < nseeds; i++) {
        memcpy(f.work, seeds[i].data, seeds[i].size);
        snprintf(current_case, sizeof current_case, "%s: unchanged seed", seeds[i].path);
        unsigned long loaded = f.loaded;
        run_case(&f, seeds[i].size);
        if (f.loaded == loaded) fail(&f, "a seed model file does not load");
    }
    api_edges(&f, seeds[0].path);
    huge_sizes(&f, &seeds[0]);
    for (size_t i = 0; i < nseeds; i++)
        if (seeds[i].size >= HEADER_SIZE) systematic(&f, &seeds[i]);
    random_cases(&f, seeds, nseeds, iters);
    report(&f, nseeds);
    for (size_t i = 0; i < nseeds; i++) free(seeds[i].data);
    free(seeds);
    free(f.work);
    free(paths);
    return f.failed ? 1 : 0;
}
