/* The format-3 loader (docs/native_format.md): every count, offset and size is checked
 * against the bytes given before it is used, and nothing is allocated before the counts
 * that size it are known to fit in the file (a record count can never make the loader
 * allocate more than a small multiple of the file size). */
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

typedef struct mp_header {
    uint32_t version, header_size, crc, nv, nops, narrays, nrefs, nin, nout, inputs_ref,
        outputs_ref, producer, architecture, value_dtype;
    uint64_t file_size, values_off, ops_off, refs_off, arrays_off, strings_off, strings_size,
        data_off;
} mp_header;

static void read_header(const uint8_t* p, mp_header* h) {
    h->version = mp_rd_u32(p + 8);
    h->header_size = mp_rd_u32(p + 12);
    h->file_size = mp_rd_u64(p + 16);
    h->crc = mp_rd_u32(p + 24);
    h->nv = mp_rd_u32(p + 28);
    h->nops = mp_rd_u32(p + 32);
    h->narrays = mp_rd_u32(p + 36);
    h->nrefs = mp_rd_u32(p + 40);
    h->nin = mp_rd_u32(p + 44);
    h->nout = mp_rd_u32(p + 48);
    h->inputs_ref = mp_rd_u32(p + 52);
    h->outputs_ref = mp_rd_u32(p + 56);
    h->producer = mp_rd_u32(p + 60);
    h->architecture = mp_rd_u32(p + 64);
    h->value_dtype = mp_rd_u32(p + 68);
    h->values_off = mp_rd_u64(p + 72);
    h->ops_off = mp_rd_u64(p + 80);
    h->refs_off = mp_rd_u64(p + 88);
    h->arrays_off = mp_rd_u64(p + 96);
    h->strings_off = mp_rd_u64(p + 104);
    h->strings_size = mp_rd_u64(p + 112);
    h->data_off = mp_rd_u64(p + 120);
}

static mp_status check_prefix(const uint8_t* p, size_t size, const mp_header* h) {
    if (size < MP_HEADER_SIZE)
        return mp_set_error(MP_INVALID_MODEL, "file of %zu bytes is shorter than the %u-byte "
                            "header (truncated?)", size, MP_HEADER_SIZE);
    if (memcmp(p, "MPSPARSE", 8) != 0)
        return mp_set_error(MP_INVALID_MODEL, "not a mobileprune model file (bad magic)");
    if (h->version != MP_FORMAT_VERSION)
        return mp_set_error(MP_INVALID_MODEL, "format_version %u: this library reads version "
                            "%u (convert with `mobileprune convert`)", h->version,
                            MP_FORMAT_VERSION);
    if (h->header_size != MP_HEADER_SIZE)
        return mp_set_error(MP_INVALID_MODEL, "header_size %u, expected %u", h->header_size,
                            MP_HEADER_SIZE);
    if (h->file_size != (uint64_t)size)
        return mp_set_error(MP_INVALID_MODEL, "file_size field is %llu but %zu bytes were "
                            "given (truncated or padded file)",
                            (unsigned long long)h->file_size, size);
    uint32_t crc = mp_crc32(p + MP_HEADER_SIZE, size - MP_HEADER_SIZE);
    if (crc != h->crc)
        return mp_set_error(MP_INVALID_MODEL, "crc32 mismatch (file 0x%08x, computed 0x%08x): "
                            "corrupt file", h->crc, crc);
    return MP_OK;
}

static mp_status check_counts(const mp_header* h) {
    const uint32_t counts[4] = {h->nv, h->nops, h->narrays, h->nrefs};
    const char* names[4] = {"num_values", "num_ops", "num_arrays", "num_refs"};
    for (int i = 0; i < 4; i++)
        if (counts[i] > MP_MAX_RECORDS)
            return mp_set_error(MP_INVALID_MODEL, "%s %u is over the limit %u", names[i],
                                counts[i], MP_MAX_RECORDS);
    if (h->nin < 1 || h->nout < 1)
        return mp_set_error(MP_INVALID_MODEL, "num_inputs %u / num_outputs %u: both must be "
                            ">= 1", h->nin, h->nout);
    if (h->value_dtype != MP_DT_F32 && h->value_dtype != MP_DT_F16)
        return mp_set_error(MP_INVALID_MODEL, "value_dtype %u (1 float32 or 2 float16)",
                            h->value_dtype);
    if ((uint64_t)h->inputs_ref + h->nin > h->nrefs)
        return mp_set_error(MP_INVALID_MODEL, "inputs_ref %u + num_inputs %u is past num_refs "
                            "%u", h->inputs_ref, h->nin, h->nrefs);
    if ((uint64_t)h->outputs_ref + h->nout > h->nrefs)
        return mp_set_error(MP_INVALID_MODEL, "outputs_ref %u + num_outputs %u is past num_refs"
                            " %u", h->outputs_ref, h->nout, h->nrefs);
    return MP_OK;
}

/* Sections in order, aligned, without overlap, inside the file. */
static mp_status check_sections(const mp_header* h) {
    const char* names[6] = {"values", "ops", "refs", "arrays", "strings", "data"};
    uint64_t off[6] = {h->values_off, h->ops_off, h->refs_off, h->arrays_off, h->strings_off,
                       h->data_off};
    uint64_t len[6] = {(uint64_t)h->nv * MP_VALUE_RECORD, (uint64_t)h->nops * MP_OP_RECORD,
                       (uint64_t)h->nrefs * 4u, (uint64_t)h->narrays * MP_ARRAY_RECORD,
                       h->strings_size, 0};
    uint64_t prev_end = MP_HEADER_SIZE;
    for (int i = 0; i < 6; i++) {
        uint64_t align = i == 5 ? MP_ALIGN : 8u, end;
        if (off[i] % align)
            return mp_set_error(MP_INVALID_MODEL, "%s_offset %llu is not a multiple of %llu",
                                names[i], (unsigned long long)off[i], (unsigned long long)align);
        if (off[i] < prev_end)
            return mp_set_error(MP_INVALID_MODEL, "%s_offset %llu overlaps the previous section"
                                " (which ends at %llu)", names[i], (unsigned long long)off[i],
                                (unsigned long long)prev_end);
        if (!mp_add_u64(off[i], len[i], &end) || end > h->file_size)
            return mp_set_error(MP_INVALID_MODEL, "section %s (%llu bytes at %llu) is past the "
                                "end of the file (%llu bytes)", names[i],
                                (unsigned long long)len[i], (unsigned long long)off[i],
                                (unsigned long long)h->file_size);
        prev_end = end;
    }
    return MP_OK;
}

static mp_status check_string(const mp_model* m, uint32_t off, const char* what) {
    if (off >= m->strings_size)
        return mp_set_error(MP_INVALID_MODEL, "%s: string offset %u is outside the string "
                            "section (%llu bytes)", what, off,
                            (unsigned long long)m->strings_size);
    return MP_OK;
}

static mp_status decode_values(mp_model* m, const uint8_t* p) {
    char what[48];
    for (uint32_t i = 0; i < m->num_values; i++, p += MP_VALUE_RECORD) {
        mp_value* v = &m->values[i];
        snprintf(what, sizeof what, "value #%u name", i);
        v->name = mp_rd_u32(p);
        mp_status st = check_string(m, v->name, what);
        if (st) return st;
        v->ndim = mp_rd_u32(p + 4);
        v->producer = mp_rd_u32(p + 40);
        const char* nm = mp_str(m, v->name);
        if (v->ndim < 1 || v->ndim > MP_MAX_DIMS)
            return mp_set_error(MP_INVALID_MODEL, "value '%.80s' (#%u): ndim %u (1..%d)", nm, i,
                                v->ndim, MP_MAX_DIMS);
        v->numel = 1;
        for (uint32_t d = 0; d < MP_MAX_DIMS; d++) {
            uint32_t x = mp_rd_u32(p + 8 + 4 * d);
            v->dims[d] = x;
            if (d >= v->ndim ? x != 0 : (x < 1 || x > MP_MAX_DIM))
                return mp_set_error(MP_INVALID_MODEL, "value '%.80s' (#%u): dims[%u] = %u is "
                                    "out of range", nm, i, d, x);
            if (d < v->ndim) v->numel *= x; /* < 2^62: checked below at each step */
            if (v->numel > MP_MAX_NUMEL)
                return mp_set_error(MP_INVALID_MODEL, "value '%.80s' (#%u): more than 2^31 "
                                    "elements per sample", nm, i);
        }
        if (v->producer != MP_NONE && v->producer >= m->num_ops)
            return mp_set_error(MP_INVALID_MODEL, "value '%.80s' (#%u): producer %u is not an op"
                                " (num_ops %u)", nm, i, v->producer, m->num_ops);
    }
    return MP_OK;
}

static mp_status decode_refs(mp_model* m, const uint8_t* p) {
    for (uint32_t i = 0; i < m->num_refs; i++) {
        m->refs[i] = mp_rd_u32(p + 4 * (size_t)i);
        if (m->refs[i] >= m->num_values)
            return mp_set_error(MP_INVALID_MODEL, "refs[%u] = %u is not a value (num_values %u)",
                                i, m->refs[i], m->num_values);
    }
    return MP_OK;
}

typedef struct mp_span {
    uint64_t begin, end;
    uint32_t id;
} mp_span;

static int cmp_span(const void* a, const void* b) {
    const mp_span* x = a;
    const mp_span* y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

/* No two arrays share a byte (empty arrays occupy none). */
static mp_status check_overlap(const mp_model* m) {
    if (m->num_arrays < 2) return MP_OK;
    mp_span* spans = malloc(sizeof(mp_span) * m->num_arrays);
    if (!spans) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory checking arrays");
    uint32_t n = 0;
    for (uint32_t i = 0; i < m->num_arrays; i++) {
        const mp_array* a = &m->arrays[i];
        if (a->count == 0) continue;
        spans[n].begin = a->offset;
        spans[n].end = a->offset + a->count * mp_dtype_size(a->dtype); /* checked in bounds */
        spans[n++].id = i;
    }
    qsort(spans, n, sizeof(mp_span), cmp_span);
    mp_status st = MP_OK;
    for (uint32_t k = 1; k < n; k++)
        if (spans[k].begin < spans[k - 1].end) {
            st = mp_set_error(MP_INVALID_MODEL, "array #%u overlaps array #%u", spans[k].id,
                              spans[k - 1].id);
            break;
        }
    free(spans);
    return st;
}

static mp_status decode_arrays(mp_model* m, const uint8_t* p, uint64_t data_size) {
    for (uint32_t i = 0; i < m->num_arrays; i++, p += MP_ARRAY_RECORD) {
        mp_array* a = &m->arrays[i];
        a->dtype = mp_rd_u32(p);
        a->offset = mp_rd_u64(p + 8);
        a->count = mp_rd_u64(p + 16);
        size_t item = mp_dtype_size(a->dtype);
        uint64_t nbytes, end;
        if (item == 0)
            return mp_set_error(MP_INVALID_MODEL, "array #%u: unknown dtype %u", i, a->dtype);
        if (a->offset % MP_ALIGN)
            return mp_set_error(MP_INVALID_MODEL, "array #%u: offset %llu is not a multiple of "
                                "64", i, (unsigned long long)a->offset);
        if (!mp_mul_u64(a->count, item, &nbytes) || !mp_add_u64(a->offset, nbytes, &end) ||
            end > data_size)
            return mp_set_error(MP_INVALID_MODEL, "array #%u (%llu %s elements at offset %llu) "
                                "is past the end of the data section (%llu bytes)", i,
                                (unsigned long long)a->count, mp_dtype_name(a->dtype),
                                (unsigned long long)a->offset, (unsigned long long)data_size);
        a->data = m->bytes + (m->size - data_size) + a->offset;
    }
    return check_overlap(m);
}

static mp_status decode_op(mp_model* m, uint32_t i, const uint8_t* p) {
    mp_op* op = &m->ops[i];
    char what[40];
    snprintf(what, sizeof what, "op #%u name", i);
    op->name = mp_rd_u32(p + 4);
    mp_status st = check_string(m, op->name, what);
    if (st) return st;
    op->code = mp_rd_u32(p);
    op->output = mp_rd_u32(p + 8);
    op->num_inputs = mp_rd_u32(p + 12);
    op->inputs_ref = mp_rd_u32(p + 16);
    for (int k = 0; k < MP_ARRAY_SLOTS; k++) op->arrays[k] = mp_rd_u32(p + 24 + 4 * k);
    for (int k = 0; k < MP_NUM_IATTR; k++) op->iattr[k] = (int32_t)mp_rd_u32(p + 56 + 4 * k);
    for (int k = 0; k < MP_NUM_FATTR; k++) op->fattr[k] = mp_rd_f32(p + 136 + 4 * k);
    if (op->output >= m->num_values)
        return mp_op_error(m, i, MP_INVALID_MODEL, "output %u is not a value (num_values %u)",
                           op->output, m->num_values);
    if ((uint64_t)op->inputs_ref + op->num_inputs > m->num_refs)
        return mp_op_error(m, i, MP_INVALID_MODEL, "inputs_ref %u + num_inputs %u is past "
                           "num_refs %u", op->inputs_ref, op->num_inputs, m->num_refs);
    for (int k = 0; k < MP_ARRAY_SLOTS; k++)
        if (op->arrays[k] != MP_NONE && op->arrays[k] >= m->num_arrays)
            return mp_op_error(m, i, MP_INVALID_MODEL, "array slot %d names array %u "
                               "(num_arrays %u)", k, op->arrays[k], m->num_arrays);
    return MP_OK;
}

/* Model inputs: distinct values without producer; then every op in order: inputs already
 * defined, output produced exactly once (and recorded so), shapes inferred and checked. */
static mp_status check_graph(mp_model* m) {
    uint8_t* defined = calloc(m->num_values ? m->num_values : 1, 1);
    if (!defined) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory checking the graph");
    mp_status st = MP_OK;
    for (uint32_t i = 0; i < m->num_inputs && !st; i++) {
        uint32_t v = m->inputs[i];
        if (defined[v])
            st = mp_set_error(MP_INVALID_MODEL, "model input %u: value '%.80s' is listed "
                              "twice", i, mp_str(m, m->values[v].name));
        else if (m->values[v].producer != MP_NONE)
            st = mp_set_error(MP_INVALID_MODEL, "model input %u: value '%.80s' has a producer "
                              "op", i, mp_str(m, m->values[v].name));
        defined[v] = 1;
    }
    for (uint32_t i = 0; i < m->num_ops && !st; i++) {
        const mp_op* op = &m->ops[i];
        const uint32_t* in = mp_op_inputs(m, op);
        for (uint32_t k = 0; k < op->num_inputs && !st; k++)
            if (!defined[in[k]])
                st = mp_op_error(m, i, MP_INVALID_MODEL, "input %u (value '%.80s') is not "
                                 "defined before this op", k, mp_str(m, m->values[in[k]].name));
        if (st) break;
        if (defined[op->output] || m->values[op->output].producer != i)
            st = mp_op_error(m, i, MP_INVALID_MODEL, "output value '%.80s' is %s",
                             mp_str(m, m->values[op->output].name),
                             defined[op->output] ? "produced twice"
                                                 : "recorded with another producer");
        else
            st = mp_check_op(m, i);
        defined[op->output] = 1;
    }
    for (uint32_t v = 0; v < m->num_values && !st; v++)
        if (!defined[v])
            st = mp_set_error(MP_INVALID_MODEL, "value '%.80s' (#%u) is never produced",
                              mp_str(m, m->values[v].name), v);
    free(defined);
    return st;
}

static mp_status alloc_records(mp_model* m) {
    m->values = calloc(m->num_values ? m->num_values : 1, sizeof(mp_value));
    m->ops = calloc(m->num_ops ? m->num_ops : 1, sizeof(mp_op));
    m->refs = calloc(m->num_refs ? m->num_refs : 1, sizeof(uint32_t));
    m->arrays = calloc(m->num_arrays ? m->num_arrays : 1, sizeof(mp_array));
    if (!m->values || !m->ops || !m->refs || !m->arrays)
        return mp_set_error(MP_OUT_OF_MEMORY, "out of memory decoding the model records");
    return MP_OK;
}

static mp_status decode(mp_model* m, const mp_header* h) {
    const uint8_t* p = m->bytes;
    m->num_values = h->nv;
    m->num_ops = h->nops;
    m->num_arrays = h->narrays;
    m->num_refs = h->nrefs;
    m->num_inputs = h->nin;
    m->num_outputs = h->nout;
    m->value_dtype = h->value_dtype;
    m->strings = (const char*)p + h->strings_off;
    m->strings_size = h->strings_size;
    if (h->strings_size == 0 || m->strings[h->strings_size - 1] != '\0')
        return mp_set_error(MP_INVALID_MODEL, "the string section (%llu bytes) does not end with"
                            " a NUL", (unsigned long long)h->strings_size);
    mp_status st = check_string(m, h->producer, "producer");
    if (!st) st = check_string(m, h->architecture, "architecture");
    if (!st) st = alloc_records(m);
    if (st) return st;
    m->producer = h->producer;
    m->architecture = h->architecture;
    m->inputs = m->refs + h->inputs_ref;
    m->outputs = m->refs + h->outputs_ref;
    st = decode_values(m, p + h->values_off);
    if (!st) st = decode_refs(m, p + h->refs_off);
    if (!st) st = decode_arrays(m, p + h->arrays_off, h->file_size - h->data_off);
    for (uint32_t i = 0; i < m->num_ops && !st; i++)
        st = decode_op(m, i, p + h->ops_off + (uint64_t)i * MP_OP_RECORD);
    return st ? st : check_graph(m);
}

mp_status mp_model_load(const void* data, size_t size, mp_model** out) {
    if (!out) return mp_set_error(MP_INVALID_ARGUMENT, "mp_model_load: out is NULL");
    *out = NULL;
    if (!data) return mp_set_error(MP_INVALID_ARGUMENT, "mp_model_load: data is NULL");
    mp_header h;
    memset(&h, 0, sizeof h);
    if (size >= MP_HEADER_SIZE) read_header(data, &h);
    mp_status st = check_prefix(data, size, &h);
    if (!st) st = check_counts(&h);
    if (!st) st = check_sections(&h);
    if (st) return st;
    mp_model* m = calloc(1, sizeof *m);
    if (!m) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory allocating the model");
    m->bytes = data;
    m->size = size;
    st = decode(m, &h);
    if (st) {
        mp_model_free(m);
        return st;
    }
    *out = m;
    return MP_OK;
}

/* Read a whole stream into a growing buffer (no fseek: a directory or a pipe has no size). */
static mp_status read_stream(FILE* f, const char* path, uint8_t** data, size_t* size) {
    size_t cap = 1 << 16, n = 0;
    uint8_t* buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (ferror(f)) {
            free(buf);
            return mp_set_error(MP_IO_ERROR, "%.300s: read error (a directory?)", path);
        }
        if (n < cap) break; /* end of file */
        uint8_t* bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!bigger) free(buf);
        buf = bigger;
        cap *= 2;
    }
    if (!buf) return mp_set_error(MP_OUT_OF_MEMORY, "%.300s: out of memory reading", path);
    *data = buf;
    *size = n;
    return MP_OK;
}

mp_status mp_model_load_file(const char* path, mp_model** out) {
    if (!out) return mp_set_error(MP_INVALID_ARGUMENT, "mp_model_load_file: out is NULL");
    *out = NULL;
    if (!path) return mp_set_error(MP_INVALID_ARGUMENT, "mp_model_load_file: path is NULL");
    FILE* f = fopen(path, "rb");
    if (!f) return mp_set_error(MP_IO_ERROR, "%.300s: cannot open the file", path);
    uint8_t* buf = NULL;
    size_t n = 0;
    mp_status st = read_stream(f, path, &buf, &n);
    fclose(f);
    if (!st) st = mp_model_load(buf, n, out);
    if (st) {
        free(buf);
        return st;
    }
    (*out)->owned = buf;
    return MP_OK;
}

void mp_model_free(mp_model* model) {
    if (!model) return;
    free(model->values);
    free(model->ops);
    free(model->refs);
    free(model->arrays);
    free(model->owned);
    free(model);
}

size_t mp_model_num_inputs(const mp_model* model) { return model ? model->num_inputs : 0; }
size_t mp_model_num_outputs(const mp_model* model) { return model ? model->num_outputs : 0; }

static mp_status value_shape(const mp_model* m, const uint32_t* ids, size_t count,
                             size_t index, int64_t* dims, size_t max_dims, size_t* ndim,
                             const char* what) {
    if (!m || !ndim || (!dims && max_dims))
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_model_%s_shape: NULL argument", what);
    if (index >= count)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_model_%s_shape: index %zu, the model has "
                            "%zu %ss", what, index, count, what);
    const mp_value* v = &m->values[ids[index]];
    *ndim = v->ndim;
    if (max_dims < v->ndim)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_model_%s_shape: %s %zu has %u dims, "
                            "max_dims is %zu", what, what, index, v->ndim, max_dims);
    for (uint32_t d = 0; d < v->ndim; d++) dims[d] = v->dims[d];
    return MP_OK;
}

mp_status mp_model_input_shape(const mp_model* model, size_t index, int64_t* dims,
                               size_t max_dims, size_t* ndim) {
    return value_shape(model, model ? model->inputs : NULL, model ? model->num_inputs : 0,
                       index, dims, max_dims, ndim, "input");
}

mp_status mp_model_output_shape(const mp_model* model, size_t index, int64_t* dims,
                                size_t max_dims, size_t* ndim) {
    return value_shape(model, model ? model->outputs : NULL, model ? model->num_outputs : 0,
                       index, dims, max_dims, ndim, "output");
}
