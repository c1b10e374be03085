/* Per-op validation of a loaded model: attributes in range, arrays of the right dtype and
 * count, CSR structure, input shapes, and the output shape inferred exactly as the Python
 * runtime's _infer_shape does (PyTorch's rules); the stored output dims must equal it. */
#include <math.h>
#include <stdio.h>

#include "internal.h"

typedef struct mp_shape {
    uint32_t n;
    int64_t d[MP_MAX_DIMS];
} mp_shape;

/* array slot names of a weight record (lstm / gru: W_ih at 0..3, W_hh at 4..7) */
static const char* const slot_names[MP_ARRAY_SLOTS] = {
    "values", "indptr", "indices", "bias", "W_hh values", "W_hh indptr", "W_hh indices",
    "W_hh bias"};

static void fmt_shape(char* buf, size_t size, const int64_t* d, uint32_t n) {
    size_t k = (size_t)snprintf(buf, size, "(");
    for (uint32_t i = 0; i < n && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, "%s%lld", i ? ", " : "", (long long)d[i]);
    if (k < size) snprintf(buf + k, size - k, "%s)", n == 1 ? "," : "");
}

static const mp_value* input_value(const mp_model* m, const mp_op* op, uint32_t k) {
    return &m->values[mp_op_inputs(m, op)[k]];
}

static mp_status err(const mp_model* m, uint32_t i, mp_status st, const char* msg) {
    return mp_op_error(m, i, st, "%s", msg);
}

/* ---- conv / linear weights */

static mp_status check_array(const mp_model* m, uint32_t i, int slot, uint32_t dt1,
                             uint32_t dt2, uint64_t count, const char* count_what) {
    uint32_t id = m->ops[i].arrays[slot];
    if (id == MP_NONE)
        return mp_op_error(m, i, MP_INVALID_MODEL, "array slot %d (%s) is missing", slot,
                           slot_names[slot]);
    const mp_array* a = &m->arrays[id];
    if (a->dtype != dt1 && a->dtype != dt2)
        return mp_op_error(m, i, MP_INVALID_MODEL, "array slot %d (%s) is %s, expected %s%s%s",
                           slot, slot_names[slot], mp_dtype_name(a->dtype), mp_dtype_name(dt1),
                           dt2 != dt1 ? " or " : "", dt2 != dt1 ? mp_dtype_name(dt2) : "");
    if (a->count != count)
        return mp_op_error(m, i, MP_INVALID_MODEL, "array slot %d (%s) has %llu elements, %s is"
                           " %llu", slot, slot_names[slot], (unsigned long long)a->count,
                           count_what, (unsigned long long)count);
    return MP_OK;
}

static mp_status check_csr(const mp_model* m, uint32_t i, int at, int64_t rows, int64_t cols,
                           int64_t nnz) {
    const mp_array* ip = &m->arrays[m->ops[i].arrays[at + 1]];
    const mp_array* ix = &m->arrays[m->ops[i].arrays[at + 2]];
    if (mp_array_uint(ip, 0) != 0 || (int64_t)mp_array_uint(ip, (uint64_t)rows) != nnz)
        return mp_op_error(m, i, MP_INVALID_MODEL, "indptr must start at 0 and end at nnz %lld",
                           (long long)nnz);
    for (int64_t r = 0; r < rows; r++) {
        uint64_t b = mp_array_uint(ip, (uint64_t)r), e = mp_array_uint(ip, (uint64_t)r + 1);
        if (e < b || e > (uint64_t)nnz)
            return mp_op_error(m, i, MP_INVALID_MODEL, "indptr[%lld] = %llu is below indptr[%lld] "
                               "or above nnz %lld", (long long)r + 1, (unsigned long long)e,
                               (long long)r, (long long)nnz);
        for (uint64_t k = b; k < e; k++) {
            uint64_t c = mp_array_uint(ix, k);
            if (c >= (uint64_t)cols || (k > b && c <= mp_array_uint(ix, k - 1)))
                return mp_op_error(m, i, MP_INVALID_MODEL, "indices[%llu] = %llu in row %lld: "
                                   "%s", (unsigned long long)k, (unsigned long long)c,
                                   (long long)r, c >= (uint64_t)cols ? "not < cols"
                                                                     : "not increasing");
        }
    }
    return MP_OK;
}

static mp_status check_dense(const mp_model* m, uint32_t i, int at, int64_t nnz) {
    const mp_array* a = &m->arrays[m->ops[i].arrays[at]];
    uint64_t found = 0;
    for (uint64_t k = 0; k < a->count; k++) found += mp_array_float(a, k) != 0.0f;
    if (m->ops[i].arrays[at + 1] != MP_NONE || m->ops[i].arrays[at + 2] != MP_NONE)
        return err(m, i, MP_INVALID_MODEL, "dense storage with an indptr or indices array");
    if (found != (uint64_t)nnz)
        return mp_op_error(m, i, MP_INVALID_MODEL, "nnz is %lld but the dense values hold %llu "
                           "nonzeros", (long long)nnz, (unsigned long long)found);
    return MP_OK;
}

/* The weight at iattr / array slots at..at+3 (storage, rows, cols, nnz; values, indptr,
 * indices, bias) is rows x cols, stored as it says. */
static mp_status check_weight(const mp_model* m, uint32_t i, int at, int64_t rows, int64_t cols) {
    const int32_t* a = m->ops[i].iattr + at;
    if (a[0] != 0 && a[0] != 1)
        return mp_op_error(m, i, MP_INVALID_MODEL, "storage %d (0 dense, 1 csr)", a[0]);
    if (a[1] != rows || a[2] != cols)
        return mp_op_error(m, i, MP_INVALID_MODEL, "weight is %dx%d, the op needs %lldx%lld",
                           a[1], a[2], (long long)rows, (long long)cols);
    if (a[3] < 0 || (int64_t)a[3] > rows * cols)
        return mp_op_error(m, i, MP_INVALID_MODEL, "nnz %d out of range", a[3]);
    mp_status st;
    if (a[0] == 1) {
        st = check_array(m, i, at, MP_DT_F32, MP_DT_F16, (uint64_t)a[3], "nnz");
        if (!st) st = check_array(m, i, at + 1, MP_DT_U32, MP_DT_U32, (uint64_t)rows + 1, "rows + 1");
        if (!st) st = check_array(m, i, at + 2, MP_DT_U16, MP_DT_U32, (uint64_t)a[3], "nnz");
        if (!st) st = check_csr(m, i, at, rows, cols, a[3]);
    } else {
        st = check_array(m, i, at, MP_DT_F32, MP_DT_F16, (uint64_t)(rows * cols), "rows * cols");
        if (!st) st = check_dense(m, i, at, a[3]);
    }
    if (!st && m->ops[i].arrays[at + 3] != MP_NONE)
        st = check_array(m, i, at + 3, MP_DT_F32, MP_DT_F32, (uint64_t)rows, "rows");
    return st;
}

/* ---- ops */

static mp_status infer_conv(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const int32_t* a = op->iattr;
    const mp_value* in = input_value(m, op, 0);
    bool one = op->code == MP_OP_CONV1D;
    for (int k = 4; k <= 12; k++)
        if (a[k] < 1) return mp_op_error(m, i, MP_INVALID_MODEL, "iattr[%d] = %d < 1", k, a[k]);
    for (int k = 13; k <= 16; k++)
        if (a[k] < 0) return mp_op_error(m, i, MP_INVALID_MODEL, "padding iattr[%d] < 0", k);
    if (one && (a[7] != 1 || a[9] != 1 || a[11] != 1 || a[13] != 0 || a[14] != 0))
        return err(m, i, MP_INVALID_MODEL, "conv1d with height attributes not neutral");
    if (a[4] % a[6] || a[5] % a[6])
        return mp_op_error(m, i, MP_INVALID_MODEL, "bad channels/groups %d/%d/%d", a[4], a[5],
                           a[6]);
    if (in->ndim != (one ? 2u : 3u) || in->dims[0] != a[4])
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "input must be (%d, %s), got %u dims with "
                           "%lld channels", a[4], one ? "L" : "H, W", in->ndim,
                           (long long)in->dims[0]);
    int64_t L[2] = {one ? 1 : in->dims[1], in->dims[in->ndim - 1]};
    out->n = in->ndim;
    out->d[0] = a[5];
    for (int s = 0; s < 2; s++) {
        int64_t num = L[s] + a[13 + 2 * s] + a[14 + 2 * s] - (int64_t)a[11 + s] * (a[7 + s] - 1) - 1;
        if (num < 0) return err(m, i, MP_SHAPE_MISMATCH, "input too small for the kernel");
        if (!one || s == 1) out->d[out->n - 2 + (uint32_t)s] = num / a[9 + s] + 1;
    }
    uint64_t cols;
    if (!mp_mul_u64((uint64_t)(a[4] / a[6]), (uint64_t)a[7] * (uint64_t)a[8], &cols) ||
        cols > (uint64_t)INT32_MAX)
        return err(m, i, MP_INVALID_MODEL, "kernel too large");
    return check_weight(m, i, 0, a[5], (int64_t)cols);
}

static mp_status infer_linear(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    if (op->iattr[1] < 1 || op->iattr[2] < 1)
        return err(m, i, MP_INVALID_MODEL, "rows and cols must be >= 1");
    if (in->dims[in->ndim - 1] != op->iattr[2])
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "input must be (..., %d) per sample, its "
                           "last dim is %lld", op->iattr[2], (long long)in->dims[in->ndim - 1]);
    out->n = in->ndim;
    memcpy(out->d, in->dims, sizeof out->d);
    out->d[in->ndim - 1] = op->iattr[1];
    return check_weight(m, i, 0, op->iattr[1], op->iattr[2]);
}

static int64_t pool_len(int64_t L, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil) {
    int64_t num = L + 2 * p - d * (k - 1) - 1;
    if (num < 0) return 0;
    int64_t o = (ceil ? (num + s - 1) / s : num / s) + 1;
    if (ceil && (o - 1) * s >= L + p) o--;
    return o;
}

static mp_status infer_pool(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const int32_t* a = op->iattr;
    const mp_value* in = input_value(m, op, 0);
    bool one = op->code == MP_OP_MAXPOOL1D || op->code == MP_OP_AVGPOOL1D;
    bool avg = op->code == MP_OP_AVGPOOL1D || op->code == MP_OP_AVGPOOL2D;
    for (int k = 0; k < 8; k++)
        if (a[k] < (k == 4 || k == 5 ? 0 : 1))
            return mp_op_error(m, i, MP_INVALID_MODEL, "iattr[%d] = %d out of range", k, a[k]);
    if ((a[8] | a[9]) & ~1 || a[10] < 0 || (avg && (a[6] != 1 || a[7] != 1)))
        return err(m, i, MP_INVALID_MODEL, "bad ceil_mode / count_include_pad / "
                   "divisor_override / dilation");
    if (one && (a[0] != 1 || a[2] != 1 || a[4] != 0 || a[6] != 1))
        return err(m, i, MP_INVALID_MODEL, "1-D pooling with height attributes not neutral");
    if (2 * (int64_t)a[4] > a[0] || 2 * (int64_t)a[5] > a[1])
        return err(m, i, MP_INVALID_MODEL, "padding must be at most half the kernel");
    if (in->ndim != (one ? 2u : 3u))
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "input must have %d spatial dims, got %u "
                           "dims", one ? 1 : 2, in->ndim);
    out->n = in->ndim;
    out->d[0] = in->dims[0];
    int64_t L[2] = {one ? 1 : in->dims[1], in->dims[in->ndim - 1]};
    for (int s = 0; s < 2; s++) {
        int64_t o = pool_len(L[s], a[s], a[2 + s], a[4 + s], a[6 + s], a[8] == 1);
        if (o < 1) return err(m, i, MP_SHAPE_MISMATCH, "input too small for the pooling window");
        if (!one || s == 1) out->d[out->n - 2 + (uint32_t)s] = o;
    }
    return MP_OK;
}

static mp_status infer_global(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    if (in->ndim < 2) return err(m, i, MP_SHAPE_MISMATCH, "input must be (C, spatial...)");
    if (op->iattr[0] != 0 && op->iattr[0] != 1)
        return err(m, i, MP_INVALID_MODEL, "keepdim must be 0 or 1");
    out->n = op->iattr[0] ? in->ndim : 1;
    out->d[0] = in->dims[0];
    for (uint32_t k = 1; k < out->n; k++) out->d[k] = 1;
    return MP_OK;
}

static mp_status infer_batchnorm(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_value* in = input_value(m, &m->ops[i], 0);
    out->n = in->ndim;
    memcpy(out->d, in->dims, sizeof out->d);
    mp_status st = check_array(m, i, 0, MP_DT_F32, MP_DT_F32, (uint64_t)in->dims[0], "C");
    return st ? st : check_array(m, i, 1, MP_DT_F32, MP_DT_F32, (uint64_t)in->dims[0], "C");
}

static mp_status infer_activation(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    out->n = in->ndim;
    memcpy(out->d, in->dims, sizeof out->d);
    if (op->code == MP_OP_RELU) return MP_OK;
    int32_t fn = op->iattr[0];
    if (fn < 1 || fn > MP_NUM_FNS)
        return mp_op_error(m, i, MP_UNSUPPORTED_OP, "unknown activation function code %d (this "
                           "library knows codes 1..%d)", fn, MP_NUM_FNS);
    if (fn == MP_FN_HARDTANH && !(op->fattr[0] <= op->fattr[1]))
        return err(m, i, MP_INVALID_MODEL, "hardtanh: min_val > max_val");
    if (fn == MP_FN_SOFTMAX && (op->iattr[1] < 0 || (uint32_t)op->iattr[1] >= in->ndim))
        return mp_op_error(m, i, MP_INVALID_MODEL, "softmax: bad axis %d", op->iattr[1]);
    if (fn == MP_FN_GELU && (op->iattr[1] & ~1))
        return mp_op_error(m, i, MP_INVALID_MODEL, "gelu: approximate %d (0 none, 1 tanh)",
                           op->iattr[1]);
    return MP_OK;
}

static mp_status infer_reshape(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_value* in = input_value(m, &m->ops[i], 0);
    const mp_value* o = &m->values[m->ops[i].output];
    if (in->numel != o->numel)
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "cannot reshape %lld elements to %lld",
                           (long long)in->numel, (long long)o->numel);
    out->n = o->ndim;
    memcpy(out->d, o->dims, sizeof out->d);
    return MP_OK;
}

static mp_status infer_binary(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* a = input_value(m, op, 0);
    out->n = a->ndim;
    memcpy(out->d, a->dims, sizeof out->d);
    if (op->iattr[0] == 1) return MP_OK; /* a number operand: the shape of the input */
    const mp_value* b = input_value(m, op, 1);
    bool ok = a->ndim == b->ndim;
    for (uint32_t k = 0; ok && k < a->ndim; k++) {
        ok = a->dims[k] == b->dims[k] || a->dims[k] == 1 || b->dims[k] == 1;
        out->d[k] = a->dims[k] == 1 ? b->dims[k] : a->dims[k];
    }
    if (!ok) {
        char sa[128], sb[128];
        fmt_shape(sa, sizeof sa, a->dims, a->ndim);
        fmt_shape(sb, sizeof sb, b->dims, b->ndim);
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "operands of shapes %s and %s do not "
                           "broadcast", sa, sb);
    }
    return MP_OK;
}

static mp_status infer_concat(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* a = input_value(m, op, 0);
    int32_t ax = op->iattr[0];
    if (ax < 0 || (uint32_t)ax >= a->ndim)
        return mp_op_error(m, i, MP_INVALID_MODEL, "bad concat axis %d", ax);
    out->n = a->ndim;
    memcpy(out->d, a->dims, sizeof out->d);
    for (uint32_t k = 1; k < op->num_inputs; k++) {
        const mp_value* b = input_value(m, op, k);
        bool ok = b->ndim == a->ndim;
        for (uint32_t d = 0; ok && d < a->ndim; d++) ok = d == (uint32_t)ax || a->dims[d] == b->dims[d];
        if (!ok)
            return mp_op_error(m, i, MP_SHAPE_MISMATCH, "input %u does not match input 0 on "
                               "the dims other than axis %d", k, ax);
        out->d[ax] += b->dims[ax];
        if (out->d[ax] > MP_MAX_DIM) return err(m, i, MP_SHAPE_MISMATCH, "concat too large");
    }
    return MP_OK;
}

/* ---- ops of tensors and sequences (layer_norm ... constant) */

static void same_shape(const mp_value* in, mp_shape* out) {
    out->n = in->ndim;
    memcpy(out->d, in->dims, sizeof out->d);
}

/* Optional float32 arrays in slots 0 and 1 (scale, shift) of `count` elements each. */
static mp_status check_affine(const mp_model* m, uint32_t i, int64_t count, const char* what) {
    mp_status st = MP_OK;
    for (int slot = 0; slot < 2 && !st; slot++)
        if (m->ops[i].arrays[slot] != MP_NONE) {
            const mp_array* a = &m->arrays[m->ops[i].arrays[slot]];
            if (a->dtype != MP_DT_F32 || a->count != (uint64_t)count)
                st = mp_op_error(m, i, MP_INVALID_MODEL, "%s array (slot %d) must be float32 "
                                 "with %lld elements (%s), got %llu %s", slot ? "shift" : "scale",
                                 slot, (long long)count, what, (unsigned long long)a->count,
                                 mp_dtype_name(a->dtype));
        }
    return st;
}

static mp_status infer_norm(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    int32_t k = op->iattr[0];
    same_shape(in, out);
    if (!(op->fattr[0] >= 0.0f)) return err(m, i, MP_INVALID_MODEL, "eps must be >= 0");
    if (op->code == MP_OP_GROUP_NORM) {
        if (k < 1 || in->dims[0] % k)
            return mp_op_error(m, i, MP_SHAPE_MISMATCH, "num_groups %d does not divide the %lld "
                               "channels of the input", k, (long long)in->dims[0]);
        return check_affine(m, i, in->dims[0], "one per channel");
    }
    if (k < 1 || (uint32_t)k > in->ndim)
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "normalized_ndim %d is not in 1..%u (the "
                           "input's rank)", k, in->ndim);
    int64_t inner = 1;
    for (uint32_t d = in->ndim - (uint32_t)k; d < in->ndim; d++) inner *= in->dims[d];
    return check_affine(m, i, inner, "the normalized dims");
}

static mp_status infer_permute(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    uint32_t seen = 0;
    out->n = in->ndim;
    for (uint32_t k = 0; k < in->ndim; k++) {
        int32_t p = op->iattr[k];
        if (p < 0 || (uint32_t)p >= in->ndim || (seen >> p & 1u))
            return mp_op_error(m, i, MP_INVALID_MODEL, "perm[%u] = %d: perm must hold each axis "
                               "0..%u once", k, p, in->ndim - 1);
        seen |= 1u << p;
        out->d[k] = in->dims[p];
    }
    return MP_OK;
}

/* (..., M, K) x (..., K, N) of the same rank; the leading dims broadcast (size 1). */
static mp_status infer_matmul(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_value* a = input_value(m, &m->ops[i], 0);
    const mp_value* b = input_value(m, &m->ops[i], 1);
    if (a->ndim < 2 || a->ndim != b->ndim)
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "operands of rank %u and %u: both need the "
                           "same rank >= 2 per sample", a->ndim, b->ndim);
    if (a->dims[a->ndim - 1] != b->dims[b->ndim - 2])
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "A is (..., %lld, %lld) but B is (..., %lld, "
                           "%lld): the inner sizes differ", (long long)a->dims[a->ndim - 2],
                           (long long)a->dims[a->ndim - 1], (long long)b->dims[b->ndim - 2],
                           (long long)b->dims[b->ndim - 1]);
    out->n = a->ndim;
    for (uint32_t k = 0; k + 2 < out->n; k++) {
        int64_t da = a->dims[k], db = b->dims[k];
        if (da != db && da != 1 && db != 1)
            return mp_op_error(m, i, MP_SHAPE_MISMATCH, "leading dims %lld and %lld (axis %u) "
                               "do not broadcast", (long long)da, (long long)db, k);
        out->d[k] = da == 1 ? db : da;
    }
    out->d[out->n - 2] = a->dims[a->ndim - 2];
    out->d[out->n - 1] = b->dims[b->ndim - 1];
    return MP_OK;
}

static mp_status infer_mean(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    int32_t keep = op->iattr[0], mask = op->iattr[1];
    if (keep != 0 && keep != 1) return err(m, i, MP_INVALID_MODEL, "keepdim must be 0 or 1");
    if (mask <= 0 || mask >> in->ndim)
        return mp_op_error(m, i, MP_INVALID_MODEL, "axes mask 0x%x must name some of the %u "
                           "axes of the input", (unsigned)mask, in->ndim);
    out->n = 0;
    for (uint32_t k = 0; k < in->ndim; k++)
        if (!(mask >> k & 1)) out->d[out->n++] = in->dims[k];
        else if (keep) out->d[out->n++] = 1;
    if (out->n == 0) out->d[out->n++] = 1; /* every axis dropped: a per-sample scalar */
    return MP_OK;
}

static mp_status infer_slice(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    const int32_t* a = op->iattr;
    if (a[0] < 0 || (uint32_t)a[0] >= in->ndim)
        return mp_op_error(m, i, MP_INVALID_MODEL, "axis %d is not an axis of the input (rank "
                           "%u)", a[0], in->ndim);
    if (a[1] < 0 || a[2] <= a[1] || a[2] > in->dims[a[0]] || a[3] < 1)
        return mp_op_error(m, i, MP_INVALID_MODEL, "start %d, end %d, step %d: need 0 <= start < "
                           "end <= %lld and step >= 1", a[1], a[2], a[3],
                           (long long)in->dims[a[0]]);
    same_shape(in, out);
    out->d[a[0]] = ((int64_t)a[2] - a[1] + a[3] - 1) / a[3];
    return MP_OK;
}

static mp_status infer_adaptive(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    bool one = op->code == MP_OP_ADAPTIVE_AVGPOOL1D;
    if (op->iattr[0] < 1 || op->iattr[1] < 1 || (one && op->iattr[0] != 1))
        return mp_op_error(m, i, MP_INVALID_MODEL, "output size %d x %d (each >= 1; 1-D: height "
                           "1)", op->iattr[0], op->iattr[1]);
    if (in->ndim != (one ? 2u : 3u))
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "input must be (C, %s), got %u dims",
                           one ? "L" : "H, W", in->ndim);
    same_shape(in, out);
    if (!one) out->d[1] = op->iattr[0];
    out->d[in->ndim - 1] = op->iattr[1];
    return MP_OK;
}

static mp_status infer_rnn(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_op* op = &m->ops[i];
    const mp_value* in = input_value(m, op, 0);
    int64_t H = op->iattr[8], dirs = op->iattr[9] + 1, G = op->code == MP_OP_LSTM ? 4 : 3;
    if (H < 1 || (op->iattr[9] & ~1))
        return mp_op_error(m, i, MP_INVALID_MODEL, "hidden_size %d (>= 1), bidirectional %d "
                           "(0/1)", op->iattr[8], op->iattr[9]);
    if (dirs * G * H > INT32_MAX) return err(m, i, MP_INVALID_MODEL, "hidden_size too large");
    if (in->ndim != 2)
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "input must be (T, input_size) per sample, "
                           "got %u dims", in->ndim);
    out->n = 2;
    out->d[0] = in->dims[0];
    out->d[1] = dirs * H;
    mp_status st = check_weight(m, i, 0, dirs * G * H, in->dims[1]);
    return st ? st : check_weight(m, i, 4, dirs * G * H, H);
}

static mp_status infer_constant(const mp_model* m, uint32_t i, mp_shape* out) {
    const mp_value* o = &m->values[m->ops[i].output];
    out->n = o->ndim;
    memcpy(out->d, o->dims, sizeof out->d);
    return check_array(m, i, 0, MP_DT_F32, MP_DT_F16, (uint64_t)o->numel, "the output size");
}

/* Number of inputs the op takes (0: one or more) and the array slots it may name. */
static mp_status check_arity(const mp_model* m, uint32_t i) {
    const mp_op* op = &m->ops[i];
    uint32_t code = op->code, want = 1, slots = 0;
    if (code == MP_OP_CONV1D || code == MP_OP_CONV2D || code == MP_OP_LINEAR) slots = 0xF;
    if (code == MP_OP_LSTM || code == MP_OP_GRU) slots = 0xFF;
    if (code == MP_OP_BATCHNORM || code == MP_OP_LAYER_NORM || code == MP_OP_GROUP_NORM)
        slots = 0x3;
    if (code == MP_OP_CONSTANT) slots = 0x1, want = 0;
    if (code == MP_OP_MATMUL) want = 2;
    if (code == MP_OP_ADD || code == MP_OP_SUB || code == MP_OP_MUL || code == MP_OP_DIV) {
        if ((op->iattr[0] | op->iattr[1]) & ~1)
            return err(m, i, MP_INVALID_MODEL, "has_scalar / scalar_first must be 0 or 1");
        want = op->iattr[0] ? 1 : 2;
    }
    if (code == MP_OP_CONCAT) want = op->num_inputs ? op->num_inputs : 1;
    if (op->num_inputs != want)
        return mp_op_error(m, i, MP_INVALID_MODEL, "needs %u input(s), has %u", want,
                           op->num_inputs);
    for (int k = 0; k < MP_ARRAY_SLOTS; k++)
        if (op->arrays[k] != MP_NONE && !(slots >> k & 1u))
            return mp_op_error(m, i, MP_INVALID_MODEL, "array slot %d is set but %s does not "
                               "take it", k, mp_op_name(code));
    for (int k = 0; k < MP_NUM_FATTR; k++)
        if (!isfinite(op->fattr[k]))
            return mp_op_error(m, i, MP_INVALID_MODEL, "fattr[%d] is not finite", k);
    return MP_OK;
}

static mp_status infer(const mp_model* m, uint32_t i, mp_shape* out) {
    switch (m->ops[i].code) {
    case MP_OP_CONV1D: case MP_OP_CONV2D: return infer_conv(m, i, out);
    case MP_OP_LINEAR: return infer_linear(m, i, out);
    case MP_OP_MAXPOOL1D: case MP_OP_MAXPOOL2D: case MP_OP_AVGPOOL1D: case MP_OP_AVGPOOL2D:
        return infer_pool(m, i, out);
    case MP_OP_GLOBAL_AVGPOOL: return infer_global(m, i, out);
    case MP_OP_BATCHNORM: return infer_batchnorm(m, i, out);
    case MP_OP_RELU: case MP_OP_ACTIVATION: return infer_activation(m, i, out);
    case MP_OP_RESHAPE: return infer_reshape(m, i, out);
    case MP_OP_ADD: case MP_OP_SUB: case MP_OP_MUL: case MP_OP_DIV:
        return infer_binary(m, i, out);
    case MP_OP_CONCAT: return infer_concat(m, i, out);
    case MP_OP_LAYER_NORM: case MP_OP_GROUP_NORM: return infer_norm(m, i, out);
    case MP_OP_PERMUTE: return infer_permute(m, i, out);
    case MP_OP_MATMUL: return infer_matmul(m, i, out);
    case MP_OP_MEAN: return infer_mean(m, i, out);
    case MP_OP_SLICE: return infer_slice(m, i, out);
    case MP_OP_ADAPTIVE_AVGPOOL1D: case MP_OP_ADAPTIVE_AVGPOOL2D:
        return infer_adaptive(m, i, out);
    case MP_OP_LSTM: case MP_OP_GRU: return infer_rnn(m, i, out);
    case MP_OP_CONSTANT: return infer_constant(m, i, out);
    default:
        return mp_op_error(m, i, MP_UNSUPPORTED_OP, "unknown op code %u", m->ops[i].code);
    }
}

mp_status mp_check_op(const mp_model* m, uint32_t i) {
    if (!*mp_op_name(m->ops[i].code) || mp_op_name(m->ops[i].code)[0] == '?')
        return mp_op_error(m, i, MP_UNSUPPORTED_OP, "unknown op code %u (this library knows "
                           "codes 1..%d)", m->ops[i].code, MP_NUM_OPS);
    mp_shape s;
    memset(&s, 0, sizeof s);
    mp_status st = check_arity(m, i);
    if (!st) st = infer(m, i, &s);
    if (st) return st;
    const mp_value* o = &m->values[m->ops[i].output];
    bool same = o->ndim == s.n;
    for (uint32_t k = 0; same && k < s.n; k++) same = o->dims[k] == s.d[k];
    if (!same) {
        char got[160], want[160];
        fmt_shape(got, sizeof got, o->dims, o->ndim);
        fmt_shape(want, sizeof want, s.d, s.n);
        return mp_op_error(m, i, MP_SHAPE_MISMATCH, "recorded output shape %s does not follow "
                           "from the inputs (expected %s)", got, want);
    }
    return MP_OK;
}
