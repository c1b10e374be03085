/*
 * mobileprune_run - run a mobileprune model file on raw float32 data (public API only).
 *
 *     mobileprune_run MODEL_FILE INPUT_BIN OUTPUT_BIN [--batch N] [--threads T]
 *                     [--describe] [--time R] [--dense | --sparse] [--portable] [--no-tune]
 *
 * INPUT_BIN holds the model inputs as raw little-endian float32 in C order, shape (N, input
 * shape...), the inputs of a model with several concatenated in order; OUTPUT_BIN receives
 * the outputs the same way. --describe prints the plan (kernel per layer); --time R runs R
 * more times and prints the median wall time of one run. Exit status: 0 ok, 2 bad usage or
 * bad input file, 1 an engine error (its message is printed).
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mobileprune.h"

#define EXIT_ENGINE 1
#define EXIT_USAGE 2

static const char* const usage_text =
    "usage: mobileprune_run MODEL_FILE INPUT_BIN OUTPUT_BIN [--batch N] [--threads T]\n"
    "                       [--describe] [--time R] [--dense | --sparse] [--portable] "
    "[--no-tune]\n"
    "  INPUT_BIN / OUTPUT_BIN: raw little-endian float32, shape (N, ...) per input / output,\n"
    "  several inputs or outputs concatenated in order\n";

typedef struct options {
    const char* model_path;
    const char* input_path;
    const char* output_path;
    size_t batch, threads, repeats;
    uint32_t flags;
    int describe;
} options;

/* A count in [1, max] from `text`; 0 when it is not one. */
static size_t parse_count(const char* text, size_t max) {
    char* end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || v == 0 || v > max)
        return 0;
    return (size_t)v;
}

/* The count of option `name` (argv[*i + 1]); advances *i. 0 when missing or bad. */
static size_t option_count(int argc, char** argv, int* i, size_t max) {
    const char* name = argv[*i];
    if (*i + 1 >= argc) {
        fprintf(stderr, "mobileprune_run: %s needs a value\n", name);
        return 0;
    }
    *i += 1;
    size_t v = parse_count(argv[*i], max);
    if (v == 0)
        fprintf(stderr, "mobileprune_run: %s takes an integer in [1, %zu], got '%s'\n", name,
                max, argv[*i]);
    return v;
}

/* 1 when argv[*i] is a flag option (and applies it), 0 when unknown. */
static int apply_flag(const char* arg, options* o) {
    if (strcmp(arg, "--describe") == 0) o->describe = 1;
    else if (strcmp(arg, "--dense") == 0) o->flags |= MP_PLAN_FORCE_DENSE;
    else if (strcmp(arg, "--sparse") == 0) o->flags |= MP_PLAN_FORCE_SPARSE;
    else if (strcmp(arg, "--portable") == 0) o->flags |= MP_PLAN_PORTABLE;
    else if (strcmp(arg, "--no-tune") == 0) o->flags |= MP_PLAN_NO_TUNE;
    else return 0;
    return 1;
}

/* Fill `o` from the command line; 0 on success, EXIT_USAGE (after a message) otherwise. */
static int parse_args(int argc, char** argv, options* o) {
    const char* positional[3];
    int npos = 0;
    memset(o, 0, sizeof *o);
    o->batch = 1;
    o->threads = 1;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        size_t* count = NULL;
        size_t max = 0;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            exit(0);
        }
        if (strcmp(a, "--batch") == 0) count = &o->batch, max = (size_t)1 << 20;
        else if (strcmp(a, "--threads") == 0) count = &o->threads, max = 1024;
        else if (strcmp(a, "--time") == 0) count = &o->repeats, max = (size_t)1 << 24;
        if (count != NULL) {
            if ((*count = option_count(argc, argv, &i, max)) == 0) return EXIT_USAGE;
        } else if (apply_flag(a, o)) {
            continue;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "mobileprune_run: unknown option '%s'\n%s", a, usage_text);
            return EXIT_USAGE;
        } else if (npos < 3) {
            positional[npos++] = a;
        } else {
            fprintf(stderr, "mobileprune_run: too many arguments\n%s", usage_text);
            return EXIT_USAGE;
        }
    }
    if (npos != 3) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    if ((o->flags & MP_PLAN_FORCE_DENSE) && (o->flags & MP_PLAN_FORCE_SPARSE)) {
        fputs("mobileprune_run: --dense and --sparse exclude each other\n", stderr);
        return EXIT_USAGE;
    }
    o->model_path = positional[0];
    o->input_path = positional[1];
    o->output_path = positional[2];
    return 0;
}

/* The whole file in a malloc'ed block (*size bytes); NULL after a message on failure. */
static unsigned char* read_file(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "mobileprune_run: cannot open input %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    unsigned char* buf = malloc(cap);
    while (buf != NULL) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        unsigned char* bigger = (cap <= SIZE_MAX / 2) ? realloc(buf, cap * 2) : NULL;
        if (bigger == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf == NULL || ferror(f)) {
        fprintf(stderr, "mobileprune_run: cannot read input %s\n", path);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = n;
    return buf;
}

/* Elements of one sample of input / output `index` into *count; formats the shape into
 * `text` ("(1, 28, 28)"). Returns the engine status. */
static mp_status tensor_size(const mp_model* m, int is_input, size_t index, size_t* count,
                             char* text, size_t text_size) {
    int64_t dims[MP_MAX_DIMS];
    size_t ndim = 0, n = 1, used = 0;
    mp_status st = is_input ? mp_model_input_shape(m, index, dims, MP_MAX_DIMS, &ndim)
                            : mp_model_output_shape(m, index, dims, MP_MAX_DIMS, &ndim);
    if (st != MP_OK) return st;
    text[0] = '\0';
    for (size_t d = 0; d < ndim; d++) {
        if (dims[d] <= 0 || (uint64_t)dims[d] > SIZE_MAX / n) {
            fprintf(stderr, "mobileprune_run: the model reports a bad shape\n");
            return MP_INVALID_MODEL;
        }
        n *= (size_t)dims[d];
        int w = snprintf(text + used, text_size - used, "%s%" PRId64, d ? ", " : "(", dims[d]);
        if (w > 0 && (size_t)w < text_size - used) used += (size_t)w;
    }
    snprintf(text + used, text_size - used, ")");
    *count = n;
    return MP_OK;
}

/* Per-sample element counts of every input or output into counts[] (malloc'ed). */
static mp_status tensor_sizes(const mp_model* m, int is_input, size_t n, size_t** counts,
                              size_t* total_per_sample, char* shapes, size_t shapes_size) {
    char one[160];
    size_t used = 0, total = 0;
    *counts = calloc(n ? n : 1, sizeof **counts);
    if (*counts == NULL) return MP_OUT_OF_MEMORY;
    shapes[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        mp_status st = tensor_size(m, is_input, i, &(*counts)[i], one, sizeof one);
        if (st != MP_OK) return st;
        if ((*counts)[i] > SIZE_MAX / 4 - total) return MP_INVALID_MODEL;
        total += (*counts)[i];
        int w = snprintf(shapes + used, shapes_size - used, "%s%s", i ? " + " : "", one);
        if (w > 0 && (size_t)w < shapes_size - used) used += (size_t)w;
    }
    *total_per_sample = total;
    return MP_OK;
}

static int host_is_little_endian(void) {
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* Reverse the byte order of `n` 4-byte words in place (big-endian hosts only). */
static void swap_words(void* data, size_t n) {
    unsigned char* p = data;
    for (size_t i = 0; i < n; i++, p += 4) {
        unsigned char t0 = p[0], t1 = p[1];
        p[0] = p[3];
        p[1] = p[2];
        p[2] = t1;
        p[3] = t0;
    }
}

static double now_seconds(void) {
#if defined(_WIN32)
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

/* Run the plan `repeats` times and print the median, min and max of one run. */
static mp_status time_runs(mp_plan* plan, const float* const* in, float* const* out,
                           size_t repeats) {
    double* t = malloc(repeats * sizeof *t);
    if (t == NULL) return MP_OUT_OF_MEMORY;
    for (size_t r = 0; r < repeats; r++) {
        double t0 = now_seconds();
        mp_status st = mp_plan_run(plan, in, out);
        t[r] = now_seconds() - t0;
        if (st != MP_OK) {
            free(t);
            return st;
        }
    }
    qsort(t, repeats, sizeof *t, compare_doubles);
    double median = (repeats % 2) ? t[repeats / 2] : 0.5 * (t[repeats / 2 - 1] + t[repeats / 2]);
    printf("time: median %.4f ms (min %.4f, max %.4f) over %zu runs\n", median * 1e3, t[0] * 1e3,
           t[repeats - 1] * 1e3, repeats);
    free(t);
    return MP_OK;
}

static mp_status print_plan(const mp_plan* plan) {
    size_t needed = 0;
    mp_status st = mp_plan_describe(plan, NULL, 0, &needed);
    if (st != MP_OK) return st;
    char* text = malloc(needed + 1);
    if (text == NULL) return MP_OUT_OF_MEMORY;
    st = mp_plan_describe(plan, text, needed + 1, NULL);
    if (st == MP_OK) {
        fputs(text, stdout);
        if (needed == 0 || text[needed - 1] != '\n') fputc('\n', stdout);
    }
    free(text);
    return st;
}

/* Pointers to each input / output inside one contiguous block of batch-major tensors. */
static void split_block(float* block, const size_t* counts, size_t n, size_t batch,
                        float** parts) {
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        parts[i] = block + offset;
        offset += counts[i] * batch;
    }
}

static int write_output(const char* path, float* data, size_t count) {
    if (!host_is_little_endian()) swap_words(data, count);
    FILE* f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "mobileprune_run: cannot open output %s: %s\n", path, strerror(errno));
        return EXIT_ENGINE;
    }
    size_t written = fwrite(data, sizeof(float), count, f);
    int bad = (written != count) | (fclose(f) != 0);
    if (bad) fprintf(stderr, "mobileprune_run: cannot write output %s\n", path);
    return bad ? EXIT_ENGINE : 0;
}

/* State shared by the steps of main, released by cleanup(). */
typedef struct session {
    mp_model* model;
    mp_plan* plan;
    unsigned char* input;
    float* output;
    size_t *in_counts, *out_counts;
    const float** in_ptrs;
    float** out_ptrs;
} session;

static void cleanup(session* s) {
    mp_plan_free(s->plan);
    mp_model_free(s->model);
    free(s->input);
    free(s->output);
    free(s->in_counts);
    free(s->out_counts);
    free((void*)s->in_ptrs);
    free(s->out_ptrs);
}

static int engine_error(const char* what, mp_status st) {
    fprintf(stderr, "mobileprune_run: %s: %s: %s\n", what, mp_status_string(st), mp_last_error());
    return EXIT_ENGINE;
}

/* Read INPUT_BIN and check its size against the model inputs; returns an exit status. */
static int load_input(const options* o, session* s) {
    char shapes[1024];
    size_t per_sample = 0, nin = mp_model_num_inputs(s->model), size = 0;
    mp_status st = tensor_sizes(s->model, 1, nin, &s->in_counts, &per_sample, shapes,
                                sizeof shapes);
    if (st != MP_OK) return engine_error("input shapes", st);
    s->input = read_file(o->input_path, &size);
    if (s->input == NULL) return EXIT_USAGE;
    if (per_sample > SIZE_MAX / 4 / o->batch || size != per_sample * o->batch * 4) {
        fprintf(stderr,
                "mobileprune_run: %s has %zu bytes; the model takes batch %zu x %s float32 "
                "= %zu bytes (%zu float32 per sample)\n",
                o->input_path, size, o->batch, shapes, per_sample * o->batch * 4, per_sample);
        return EXIT_USAGE;
    }
    if (!host_is_little_endian()) swap_words(s->input, per_sample * o->batch);
    s->in_ptrs = malloc((nin ? nin : 1) * sizeof *s->in_ptrs);
    if (s->in_ptrs == NULL) return engine_error("inputs", MP_OUT_OF_MEMORY);
    split_block((float*)(void*)s->input, s->in_counts, nin, o->batch, (float**)s->in_ptrs);
    return 0;
}

static int alloc_output(const options* o, session* s, size_t* total) {
    char shapes[1024];
    size_t per_sample = 0, nout = mp_model_num_outputs(s->model);
    mp_status st = tensor_sizes(s->model, 0, nout, &s->out_counts, &per_sample, shapes,
                                sizeof shapes);
    if (st != MP_OK) return engine_error("output shapes", st);
    if (per_sample > SIZE_MAX / 4 / o->batch) return engine_error("outputs", MP_OUT_OF_MEMORY);
    *total = per_sample * o->batch;
    s->output = calloc(*total ? *total : 1, sizeof(float));
    s->out_ptrs = malloc((nout ? nout : 1) * sizeof *s->out_ptrs);
    if (s->output == NULL || s->out_ptrs == NULL) return engine_error("outputs", MP_OUT_OF_MEMORY);
    split_block(s->output, s->out_counts, nout, o->batch, s->out_ptrs);
    return 0;
}

static int run(const options* o, session* s) {
    size_t out_total = 0;
    mp_status st = mp_model_load_file(o->model_path, &s->model);
    if (st != MP_OK) return engine_error(o->model_path, st);
    int rc = load_input(o, s);
    if (rc == 0) rc = alloc_output(o, s, &out_total);
    if (rc != 0) return rc;
    st = mp_plan_create(s->model, o->batch, o->threads, o->flags, &s->plan);
    if (st != MP_OK) return engine_error("plan", st);
    if (o->describe && (st = print_plan(s->plan)) != MP_OK) return engine_error("describe", st);
    st = mp_plan_run(s->plan, s->in_ptrs, s->out_ptrs);
    if (st != MP_OK) return engine_error("run", st);
    rc = write_output(o->output_path, s->output, out_total);
    if (rc == 0 && o->repeats > 0) {
        st = time_runs(s->plan, s->in_ptrs, s->out_ptrs, o->repeats);
        if (st != MP_OK) return engine_error("run", st);
    }
    return rc;
}

int main(int argc, char** argv) {
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc != 0) return rc;
    session s;
    memset(&s, 0, sizeof s);
    rc = run(&o, &s);
    cleanup(&s);
    return rc;
}
