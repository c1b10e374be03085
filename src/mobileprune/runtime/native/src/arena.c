/* The workspace: every intermediate tensor (model inputs copied in, outputs copied out) and
 * every operator scratch lives in one block. Buffers are placed greedily, largest first,
 * at the lowest offset that does not overlap a placed buffer alive at the same time
 * (TFLite Micro's greedy memory planner: size, first use, last use).
 *
 * Time: 0 = inputs copied in, step s runs at s + 1, outputs copied out at num_steps + 1. */
#include <stdlib.h>

#include "internal.h"

typedef struct mp_buf {
    size_t size, offset;
    int64_t first, last;
    size_t* where; /* where to store the offset */
} mp_buf;

/* No single buffer over 2^40 bytes (SIZE_MAX / 2^22 on 32-bit targets): the sum of up to
 * 2^21 of them cannot overflow. */
#define MP_MAX_BUFFER \
    ((uint64_t)SIZE_MAX >> 22 < ((uint64_t)1 << 40) ? (uint64_t)SIZE_MAX >> 22 : (uint64_t)1 << 40)

static size_t round64(size_t n) { return (n + MP_ALIGN - 1) / MP_ALIGN * MP_ALIGN; }

static uint32_t root_of(const mp_plan* p, uint32_t v) {
    while (p->tensors[v].alias != v) v = p->tensors[v].alias;
    return v;
}

static void use(mp_tensor* t, int64_t time) {
    if (t->first < 0 || time < t->first) t->first = time;
    if (time > t->last) t->last = time;
}

/* First / last use of each root tensor. */
static void lifetimes(mp_plan* p) {
    const mp_model* m = p->model;
    for (uint32_t v = 0; v < m->num_values; v++) {
        p->tensors[v].first = -1;
        p->tensors[v].last = -1;
    }
    for (uint32_t k = 0; k < m->num_inputs; k++) use(&p->tensors[m->inputs[k]], 0);
    for (size_t s = 0; s < p->num_steps; s++) {
        const mp_step* st = &p->steps[s];
        for (uint32_t k = 0; k < st->num_in; k++)
            use(&p->tensors[root_of(p, st->in_tensor[k])], (int64_t)s + 1);
        use(&p->tensors[root_of(p, st->out_tensor)], (int64_t)s + 1);
    }
    for (uint32_t k = 0; k < m->num_outputs; k++)
        use(&p->tensors[root_of(p, m->outputs[k])], (int64_t)p->num_steps + 1);
}

static int cmp_buf(const void* a, const void* b) {
    const mp_buf* x = a;
    const mp_buf* y = b;
    if (x->size != y->size) return x->size > y->size ? -1 : 1;
    return x->first < y->first ? -1 : x->first > y->first ? 1 : 0;
}

static int cmp_offset(const void* a, const void* b) {
    const mp_buf* x = *(const mp_buf* const*)a;
    const mp_buf* y = *(const mp_buf* const*)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : 0;
}

/* Place bufs[0..n) (sorted largest first); returns the total size. */
static size_t place(mp_buf* bufs, size_t n, mp_buf** live) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t nlive = 0;
        for (size_t j = 0; j < i; j++)
            if (bufs[j].first <= bufs[i].last && bufs[i].first <= bufs[j].last)
                live[nlive++] = &bufs[j];
        qsort(live, nlive, sizeof(mp_buf*), cmp_offset);
        size_t off = 0;
        for (size_t j = 0; j < nlive; j++) {
            if (live[j]->offset >= off + bufs[i].size) break;
            size_t end = live[j]->offset + live[j]->size;
            if (end > off) off = end;
        }
        bufs[i].offset = off;
        if (off + bufs[i].size > total) total = off + bufs[i].size;
    }
    return total;
}

static mp_status tensor_bytes(const mp_plan* p, uint32_t v, size_t* out) {
    uint64_t n;
    if (!mp_mul_u64((uint64_t)p->model->values[v].numel, (uint64_t)p->batch * 4u, &n) ||
        n > MP_MAX_BUFFER)
        return mp_set_error(MP_OUT_OF_MEMORY, "value '%.80s' is too large at batch %zu",
                            mp_str(p->model, p->model->values[v].name), p->batch);
    *out = round64((size_t)n);
    return MP_OK;
}

mp_status mp_plan_place(mp_plan* p) {
    const mp_model* m = p->model;
    lifetimes(p);
    size_t cap = m->num_values + p->num_steps, n = 0;
    mp_buf* bufs = calloc(cap, sizeof(mp_buf));
    mp_buf** live = calloc(cap, sizeof(mp_buf*));
    mp_status st = bufs && live ? MP_OK : mp_set_error(MP_OUT_OF_MEMORY, "out of memory (plan)");
    for (uint32_t v = 0; v < m->num_values && !st; v++) {
        mp_tensor* t = &p->tensors[v];
        if (t->alias != v || t->first < 0 || t->in_scratch) continue;
        st = tensor_bytes(p, v, &t->bytes);
        bufs[n++] = (mp_buf){t->bytes, 0, t->first, t->last, &t->offset};
    }
    for (size_t s = 0; s < p->num_steps && !st; s++)
        if (p->steps[s].scratch_bytes) {
            const int64_t time = (int64_t)s + 1;
            const int64_t from = p->steps[s].scratch_from ? p->steps[s].scratch_from : time;
            if (p->steps[s].scratch_bytes > MP_MAX_BUFFER) {
                st = mp_set_error(MP_OUT_OF_MEMORY, "op '%.80s': scratch of %zu bytes",
                                  mp_str(m, p->steps[s].op->name), p->steps[s].scratch_bytes);
                break;
            }
            size_t size = round64(p->steps[s].scratch_bytes);
            bufs[n++] = (mp_buf){size, 0, from, time, &p->steps[s].scratch_offset};
        }
    if (!st) {
        qsort(bufs, n, sizeof(mp_buf), cmp_buf);
        p->ws_size = place(bufs, n, live);
        for (size_t i = 0; i < n; i++) *bufs[i].where = bufs[i].offset;
    }
    free(bufs);
    free(live);
    return st;
}

void mp_plan_bind(mp_plan* p) {
    for (size_t s = 0; s < p->num_steps; s++) {
        mp_step* st = &p->steps[s];
        for (uint32_t k = 0; k < st->num_in; k++)
            st->in[k] = (const float*)(p->ws + p->tensors[root_of(p, st->in_tensor[k])].offset);
        st->out = (float*)(p->ws + p->tensors[root_of(p, st->out_tensor)].offset);
        st->scratch = st->scratch_bytes ? p->ws + st->scratch_offset : NULL;
    }
    for (size_t s = 0; s < p->num_steps; s++) { /* chained convs: the reader's buffer */
        mp_step* st = &p->steps[s];
        if (st->into) st->into->in[0] = st->out = mp_conv_input_buffer(st->into->conv, st->into->scratch);
    }
}
