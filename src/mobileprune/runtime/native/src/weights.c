/* A conv / linear / recurrent weight as stored in the model file (model.c's arrays, any
 * stored dtype) converted into the float32 / uint32 form operators.h takes (mp_weights),
 * in buffers the caller owns: mp_make_weights fills them, mp_wbuf_free frees them. Used
 * by the plan (plan.c) and by the recurrent ops (ops_rnn.c) alike. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void mp_wbuf_free(mp_wbuf* b) {
    free(b->values);
    free(b->bias);
    free(b->indptr);
    free(b->indices);
}

mp_status mp_make_weights(const mp_model* m, const mp_op* op, int at, mp_weights* w, mp_wbuf* b) {
    memset(w, 0, sizeof *w);
    memset(b, 0, sizeof *b);
    w->rows = op->iattr[at + 1];
    w->cols = op->iattr[at + 2];
    w->nnz = op->iattr[at + 3];
    const uint32_t* slot = op->arrays + at;
    const mp_array* va = &m->arrays[slot[0]];
    b->values = malloc((va->count ? va->count : 1) * sizeof(float));
    bool csr = op->iattr[at] == 1, ok = b->values != NULL;
    if (csr) {
        b->indptr = malloc(((size_t)w->rows + 1) * sizeof(uint32_t));
        b->indices = malloc((va->count ? va->count : 1) * sizeof(uint32_t));
        ok = ok && b->indptr && b->indices;
    }
    if (slot[3] != MP_NONE) {
        b->bias = malloc((size_t)w->rows * sizeof(float));
        ok = ok && b->bias;
    }
    if (!ok) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory converting weights");
    for (uint64_t k = 0; k < va->count; k++) b->values[k] = mp_array_float(va, k);
    if (csr) {
        const mp_array* ip = &m->arrays[slot[1]];
        const mp_array* ix = &m->arrays[slot[2]];
        for (uint64_t k = 0; k <= (uint64_t)w->rows; k++) b->indptr[k] = (uint32_t)mp_array_uint(ip, k);
        for (uint64_t k = 0; k < ix->count; k++) b->indices[k] = (uint32_t)mp_array_uint(ix, k);
        w->indptr = b->indptr;
        w->indices = b->indices;
        w->values = b->values;
    } else {
        w->dense = b->values;
    }
    if (b->bias) {
        const mp_array* ba = &m->arrays[slot[3]];
        for (int32_t k = 0; k < w->rows; k++) b->bias[k] = mp_array_float(ba, (uint64_t)k);
        w->bias = b->bias;
    }
    return MP_OK;
}
