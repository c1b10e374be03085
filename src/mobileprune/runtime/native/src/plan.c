/* mp_plan_create / mp_plan_free / mp_plan_describe: fuse activations into conv / linear,
 * convert and pack weights (operators.h), set up the simple ops, place every tensor and
 * scratch in one workspace (arena.c) and start the threads (threads.c). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

/* ---- fusion: an op whose output is read only by one relu or hardtanh takes it as a clamp
 * epilogue (conv / linear as operators.h's act; add / sub / mul / batchnorm in their loop) */

static bool fusable_act(const mp_op* op) {
    return op->code == MP_OP_RELU ||
           (op->code == MP_OP_ACTIVATION && op->iattr[0] == MP_FN_HARDTANH);
}

/* Ops that apply a clamp epilogue: conv / linear (operators.h), add / sub / mul and
 * batchnorm (ops_eltwise.c, ops_binary.c: a residual add + relu in one pass). */
static bool takes_epilogue(const mp_op* op) {
    switch (op->code) {
    case MP_OP_CONV1D: case MP_OP_CONV2D: case MP_OP_LINEAR: case MP_OP_ADD: case MP_OP_SUB:
    case MP_OP_MUL: case MP_OP_DIV: case MP_OP_BATCHNORM: return true;
    default: return false;
    }
}

static mp_status find_fusions(mp_plan* plan) {
    const mp_model* m = plan->model;
    uint32_t* uses = calloc(m->num_values, sizeof(uint32_t));
    uint32_t* reader = malloc(m->num_values * sizeof(uint32_t));
    if (!uses || !reader) {
        free(uses);
        free(reader);
        return mp_set_error(MP_OUT_OF_MEMORY, "out of memory planning the model");
    }
    for (uint32_t v = 0; v < m->num_values; v++) reader[v] = MP_NONE;
    for (uint32_t i = 0; i < m->num_ops; i++)
        for (uint32_t k = 0; k < m->ops[i].num_inputs; k++) {
            uint32_t v = mp_op_inputs(m, &m->ops[i])[k];
            uses[v]++;
            reader[v] = i;
        }
    for (uint32_t k = 0; k < m->num_outputs; k++) uses[m->outputs[k]]++;
    for (uint32_t i = 0; i < m->num_ops; i++) {
        const mp_op* op = &m->ops[i];
        uint32_t r = reader[op->output]; /* the one use may be a model output: MP_NONE */
        if (takes_epilogue(op) && uses[op->output] == 1 && r != MP_NONE && fusable_act(&m->ops[r])) {
            plan->op_fused_into[r] = i;
            plan->op_act[i] = r;
        }
    }
    free(uses);
    free(reader);
    return MP_OK;
}

static void fused_act(const mp_plan* plan, uint32_t i, mp_act_kind* act, float* lo, float* hi) {
    *act = MP_ACT_NONE;
    *lo = -INFINITY;
    *hi = INFINITY;
    if (plan->op_act[i] == MP_NONE) return;
    const mp_op* a = &plan->model->ops[plan->op_act[i]];
    *act = a->code == MP_OP_RELU ? MP_ACT_RELU : MP_ACT_CLAMP;
    *lo = a->code == MP_OP_RELU ? 0.0f : a->fattr[0];
    *hi = a->code == MP_OP_RELU ? INFINITY : a->fattr[1];
}

/* A conv at batch 2 or more on several threads: one task per sample group (see mp_step;
 * its prepare then runs on every thread: FER-like CNN at batch 16, 2 threads / 1 thread
 * 1.6x -> 1.8x). Linear layers keep the operator's own tasks (a batch split did not pay). */
static void set_groups(const mp_plan* plan, mp_step* s) {
    if (plan->threads < 2 || plan->batch < 2) return;
    s->groups = plan->threads < plan->batch ? plan->threads : plan->batch;
    size_t most = (plan->batch + s->groups - 1) / s->groups;
    size_t one = mp_conv_scratch_bytes(s->conv, most);
    s->group_scratch = (one + MP_ALIGN - 1) / MP_ALIGN * MP_ALIGN;
    s->scratch_bytes = s->group_scratch * s->groups;
    s->num_tasks = s->groups;
}

static mp_status setup_conv(mp_plan* plan, mp_step* s, const mp_weights* w) {
    const mp_model* m = plan->model;
    const mp_op* op = s->op;
    const mp_value* in = &m->values[s->in_tensor[0]];
    const mp_value* out = &m->values[op->output];
    const int32_t* a = op->iattr;
    bool one = in->ndim == 2;
    mp_conv_desc d = {
        .in_channels = a[4], .out_channels = a[5], .groups = a[6],
        .in_h = one ? 1 : (int32_t)in->dims[1], .in_w = (int32_t)in->dims[in->ndim - 1],
        .out_h = one ? 1 : (int32_t)out->dims[1], .out_w = (int32_t)out->dims[out->ndim - 1],
        .kernel_h = a[7], .kernel_w = a[8], .stride_h = a[9], .stride_w = a[10],
        .dilation_h = a[11], .dilation_w = a[12], .pad_top = a[13], .pad_bottom = a[14],
        .pad_left = a[15], .pad_right = a[16], .act = s->act, .act_min = s->act_min,
        .act_max = s->act_max};
    mp_status st = mp_conv_create(&d, w, plan->flags, &s->conv);
    if (st) return st;
    s->scratch_bytes = mp_conv_scratch_bytes(s->conv, plan->batch);
    s->num_tasks = mp_conv_num_tasks(s->conv, plan->batch);
    set_groups(plan, s);
    return MP_OK;
}

/* A conv of one group with one output pixel per channel (squeeze-excitation and head
 * convs after global pooling, a 3x3 on a 1x1 map, a valid conv as large as its input) is a
 * matrix-vector product over the input: it runs as a linear operator (pixel vectors would
 * use 1 lane of 8 or 16, and taps that land in the padding would be multiplied anyway). */
static bool conv_is_linear(const mp_step* s) {
    const mp_op* op = s->op;
    if (op->code == MP_OP_LINEAR) return true;
    return op->iattr[6] == 1 && s->model->values[op->output].numel == op->iattr[5];
}

/* The weights of that product: column (c, i, j) of the conv reads input (c, y, x) with
 * y = i dh - pad_top, x = j dw - pad_left; columns that land in the padding go. CSR with
 * columns c H W + y W + x, still increasing along each row. */
static mp_status one_pixel_weights(const mp_step* s, const mp_weights* w, mp_weights* out,
                                   mp_wbuf* b) {
    const int32_t* a = s->op->iattr;
    const mp_value* in = &s->model->values[s->in_tensor[0]];
    const int64_t H = in->ndim == 2 ? 1 : in->dims[1], W = in->dims[in->ndim - 1];
    const int64_t kh = a[7], kw = a[8], cap = w->dense ? (int64_t)w->rows * w->cols : w->nnz;
    memset(b, 0, sizeof *b);
    b->indptr = malloc(((size_t)w->rows + 1) * sizeof(uint32_t));
    b->indices = malloc((size_t)(cap ? cap : 1) * sizeof(uint32_t));
    b->values = malloc((size_t)(cap ? cap : 1) * sizeof(float));
    if (!b->indptr || !b->indices || !b->values)
        return mp_set_error(MP_OUT_OF_MEMORY, "conv on one pixel: out of memory");
    uint32_t n = 0;
    for (int32_t r = 0; r < w->rows; r++) {
        b->indptr[r] = n;
        const int64_t k0 = w->dense ? 0 : (int64_t)w->indptr[r];
        const int64_t k1 = w->dense ? (int64_t)w->cols : (int64_t)w->indptr[r + 1];
        for (int64_t k = k0; k < k1; k++) {
            const int64_t col = w->dense ? k : w->indices[k];
            const float v = w->dense ? w->dense[(size_t)r * (size_t)w->cols + (size_t)k] : w->values[k];
            const int64_t y = (col / kw) % kh * a[11] - a[13], x = col % kw * a[12] - a[15];
            if (v == 0.0f || y < 0 || y >= H || x < 0 || x >= W) continue;
            b->indices[n] = (uint32_t)((col / (kh * kw)) * H * W + y * W + x);
            b->values[n++] = v;
        }
    }
    b->indptr[w->rows] = n;
    *out = (mp_weights){w->rows, (int32_t)(a[4] * H * W), n, NULL, b->indptr, b->indices,
                        b->values, w->bias};
    return MP_OK;
}

static mp_status setup_linear(mp_plan* plan, mp_step* s, const mp_weights* w) {
    /* an N-D input: the leading per-sample dims are more rows */
    s->rows = plan->batch * (size_t)(plan->model->values[s->in_tensor[0]].numel / w->cols);
    mp_linear_desc d = {.in_features = w->cols, .out_features = w->rows, .act = s->act,
                        .act_min = s->act_min, .act_max = s->act_max,
                        .rows = s->rows < INT32_MAX ? (int32_t)s->rows : INT32_MAX};
    mp_status st = mp_linear_create(&d, w, plan->flags, &s->linear);
    if (!st) {
        s->scratch_bytes = mp_linear_scratch_bytes(s->linear, s->rows);
        s->num_tasks = mp_linear_num_tasks(s->linear, s->rows);
    }
    return st;
}

static mp_status setup_heavy(mp_plan* plan, mp_step* s) {
    const mp_model* m = plan->model;
    mp_weights w;
    mp_wbuf b;
    mp_status st = mp_make_weights(m, s->op, 0, &w, &b);
    /* multiply-adds, roughly (double: batch x outputs x row length can pass 2^63) */
    double work = (double)plan->batch * (double)m->values[s->out_tensor].numel *
                  ((double)w.nnz / (w.rows ? w.rows : 1) + 1.0);
    s->work = work < (double)(SIZE_MAX / 2) ? (size_t)work : SIZE_MAX / 2;
    if (!st && s->op->code == MP_OP_LINEAR) {
        st = setup_linear(plan, s, &w);
    } else if (!st && conv_is_linear(s)) {
        mp_weights w1;
        mp_wbuf b1;
        st = one_pixel_weights(s, &w, &w1, &b1);
        if (!st) st = setup_linear(plan, s, &w1);
        mp_wbuf_free(&b1);
    } else if (!st) {
        st = setup_conv(plan, s, &w);
    }
    mp_wbuf_free(&b);
    if (st && !strstr(mp_last_error(), "op '"))
        return mp_op_error(m, s->op_index, st, "%s", mp_last_error());
    return st;
}

/* ---- steps */

static uint32_t root(const mp_plan* plan, uint32_t v) {
    while (plan->tensors[v].alias != v) v = plan->tensors[v].alias;
    return v;
}

static mp_status add_step(mp_plan* plan, uint32_t i) {
    const mp_model* m = plan->model;
    mp_step* s = &plan->steps[plan->num_steps];
    const mp_op* op = &m->ops[i];
    s->model = m;
    s->batch = plan->batch;
    s->op_index = i;
    s->code = op->code;
    s->op = op;
    s->num_in = op->num_inputs;
    s->in_tensor = malloc((op->num_inputs ? op->num_inputs : 1) * sizeof(uint32_t));
    s->in = calloc(op->num_inputs ? op->num_inputs : 1, sizeof(float*));
    if (!s->in_tensor || !s->in) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory (plan)");
    memcpy(s->in_tensor, mp_op_inputs(m, op), op->num_inputs * sizeof(uint32_t));
    s->out_tensor = op->output;
    plan->op_step[i] = (uint32_t)plan->num_steps++;
    fused_act(plan, i, &s->act, &s->act_min, &s->act_max);
    if (op->code == MP_OP_CONV1D || op->code == MP_OP_CONV2D || op->code == MP_OP_LINEAR)
        return setup_heavy(plan, s);
    if (op->code == MP_OP_LSTM || op->code == MP_OP_GRU) {
        mp_status st = mp_rnn_setup(s, plan->flags, plan->threads);
        if (st && !strstr(mp_last_error(), "op '"))
            return mp_op_error(m, i, st, "%s", mp_last_error());
        return st;
    }
    return mp_simple_setup(s);
}

static mp_status build_steps(mp_plan* plan) {
    const mp_model* m = plan->model;
    for (uint32_t v = 0; v < m->num_values; v++) plan->tensors[v].alias = v;
    for (uint32_t i = 0; i < m->num_ops; i++) {
        const mp_op* op = &m->ops[i];
        if (plan->op_fused_into[i] != MP_NONE) {
            plan->tensors[op->output].alias = m->ops[plan->op_fused_into[i]].output;
            continue;
        }
        if (op->code == MP_OP_RESHAPE) { /* same bytes, new shape: an alias, no copy */
            plan->tensors[op->output].alias = root(plan, mp_op_inputs(m, op)[0]);
            continue;
        }
        mp_status st = add_step(plan, i);
        if (st) return st;
    }
    return MP_OK;
}

/* ---- chained convs: a conv whose output only the next conv reads writes it straight into
 * that conv's padded input buffer (mp_conv_chain); the value then needs no memory. */

/* How many inputs of steps read value v (a root); *last: the last such step. */
static size_t readers(mp_plan* plan, uint32_t v, mp_step** last) {
    size_t n = 0;
    for (size_t s = 0; s < plan->num_steps; s++)
        for (uint32_t k = 0; k < plan->steps[s].num_in; k++)
            if (root(plan, plan->steps[s].in_tensor[k]) == v) n++, *last = &plan->steps[s];
    return n;
}

static bool is_model_output(const mp_plan* plan, uint32_t v) {
    for (uint32_t k = 0; k < plan->model->num_outputs; k++)
        if (root(plan, plan->model->outputs[k]) == v) return true;
    return false;
}

static void chain_convs(mp_plan* plan) {
    for (size_t s = 0; s < plan->num_steps; s++) {
        mp_step* a = &plan->steps[s];
        mp_step* b = NULL;
        if (!a->conv) continue;
        const uint32_t v = root(plan, a->out_tensor);
        /* both over the same sample groups (see set_groups) or both over the whole batch */
        if (is_model_output(plan, v) || readers(plan, v, &b) != 1 || !b->conv ||
            b->groups != a->groups || !mp_conv_chain(a->conv, b->conv))
            continue;
        a->into = b;
        b->scratch_from = (int64_t)s + 1;
        plan->tensors[v].in_scratch = 1;
    }
}

static mp_status check_args(const mp_model* model, size_t batch, size_t threads,
                            uint32_t flags, mp_plan** out) {
    if (!out) return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_create: out is NULL");
    *out = NULL;
    if (!model) return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_create: model is NULL");
    if (batch < 1 || batch > (size_t)INT32_MAX)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_create: batch %zu (1..2^31-1)", batch);
    if (threads < 1 || threads > 1024)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_create: threads %zu (1..1024)",
                            threads);
    if (flags & ~31u)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_create: unknown flag bits 0x%x",
                            flags & ~31u);
    if ((flags & MP_PLAN_FORCE_DENSE) && (flags & MP_PLAN_FORCE_SPARSE))
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_create: MP_PLAN_FORCE_DENSE and "
                            "MP_PLAN_FORCE_SPARSE together");
    return MP_OK;
}

static mp_status alloc_plan(const mp_model* model, size_t batch, size_t threads,
                            uint32_t flags, mp_plan** out) {
    mp_plan* p = calloc(1, sizeof *p);
    if (!p) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory allocating the plan");
    *out = p;
    p->model = model;
    p->batch = batch;
    p->threads = threads;
    p->flags = flags;
    size_t nops = model->num_ops ? model->num_ops : 1;
    p->steps = calloc(nops, sizeof(mp_step));
    p->op_step = malloc(nops * sizeof(uint32_t));
    p->op_fused_into = malloc(nops * sizeof(uint32_t));
    p->op_act = malloc(nops * sizeof(uint32_t));
    p->tensors = calloc(model->num_values, sizeof(mp_tensor));
    if (!p->steps || !p->op_step || !p->op_fused_into || !p->op_act || !p->tensors)
        return mp_set_error(MP_OUT_OF_MEMORY, "out of memory allocating the plan");
    for (size_t i = 0; i < nops; i++) p->op_step[i] = p->op_fused_into[i] = p->op_act[i] = MP_NONE;
    return MP_OK;
}

mp_status mp_plan_create(const mp_model* model, size_t batch, size_t threads, uint32_t flags,
                         mp_plan** out) {
    mp_status st = check_args(model, batch, threads, flags, out);
    if (st) return st;
    mp_plan* p = NULL;
    st = alloc_plan(model, batch, threads, flags, &p);
    if (!st) st = find_fusions(p);
    if (!st) st = build_steps(p);
    if (!st) chain_convs(p);
    if (!st) st = mp_plan_place(p);
    if (!st && p->ws_size) {
        p->ws_block = malloc(p->ws_size + MP_ALIGN);
        if (!p->ws_block)
            st = mp_set_error(MP_OUT_OF_MEMORY, "cannot allocate a workspace of %zu bytes",
                              p->ws_size);
        else
            p->ws = (uint8_t*)p->ws_block + (MP_ALIGN - (uintptr_t)p->ws_block % MP_ALIGN);
    }
    if (!st) mp_plan_bind(p);
    if (!st) st = mp_pool_create(threads, &p->pool);
    if (st) {
        mp_plan_free(p);
        return st;
    }
    *out = p;
    return MP_OK;
}

void mp_plan_free(mp_plan* plan) {
    if (!plan) return;
    mp_pool_free(plan->pool);
    for (size_t i = 0; i < plan->num_steps; i++) {
        mp_step* s = &plan->steps[i];
        mp_conv_free(s->conv);
        mp_linear_free(s->linear);
        mp_rnn_free(s->rnn);
        free(s->in_tensor);
        free(s->in);
        free(s->owned);
    }
    /* a step whose setup failed half-way is counted too (num_steps was bumped) */
    free(plan->steps);
    free(plan->op_step);
    free(plan->op_fused_into);
    free(plan->op_act);
    free(plan->tensors);
    free(plan->ws_block);
    free(plan);
}

size_t mp_plan_workspace_size(const mp_plan* plan) { return plan ? plan->ws_size : 0; }

mp_status mp_plan_set_workspace(mp_plan* plan, void* mem, size_t size) {
    if (!plan) return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_set_workspace: plan is NULL");
    if (!mem && plan->ws_size)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_set_workspace: mem is NULL");
    if ((uintptr_t)mem % MP_ALIGN)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_set_workspace: mem is not 64-byte "
                            "aligned");
    if (size < plan->ws_size)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_set_workspace: %zu bytes given, the "
                            "plan needs %zu", size, plan->ws_size);
    free(plan->ws_block);
    plan->ws_block = NULL;
    plan->ws = mem;
    mp_plan_bind(plan);
    return MP_OK;
}

/* ---- describe: one line per op */

typedef struct mp_text {
    char* buf;
    size_t size, len;
} mp_text;

static void text_add(mp_text* t, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void text_add(mp_text* t, const char* fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t k = (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1;
    if (t->buf && t->len < t->size) {
        size_t room = t->size - 1 - t->len, c = k < room ? k : room;
        memcpy(t->buf + t->len, tmp, c);
        t->buf[t->len + c] = '\0';
    }
    t->len += k;
}

static void describe_op(const mp_plan* p, uint32_t i, mp_text* t) {
    const mp_model* m = p->model;
    const mp_op* op = &m->ops[i];
    const char* name = mp_str(m, op->name);
    char line[400];
    if (p->op_fused_into[i] != MP_NONE) {
        text_add(t, "%.80s %s fused into '%.80s'\n", name, mp_op_name(op->code),
                 mp_str(m, m->ops[p->op_fused_into[i]].name));
        return;
    }
    if (p->op_step[i] == MP_NONE) {
        text_add(t, "%.80s %s alias (no copy)\n", name, mp_op_name(op->code));
        return;
    }
    const mp_step* s = &p->steps[p->op_step[i]];
    line[0] = '\0';
    if (s->conv) mp_conv_describe(s->conv, line, sizeof line);
    else if (s->linear) mp_linear_describe(s->linear, s->rows, line, sizeof line);
    else if (s->rnn) mp_rnn_describe(s, line, sizeof line);
    else snprintf(line, sizeof line, "%s", s->kernel);
    text_add(t, "%.80s %s %s", name, mp_op_name(op->code), line);
    if (s->act == MP_ACT_RELU)
        text_add(t, " +relu ('%.80s')", mp_str(m, m->ops[p->op_act[i]].name));
    else if (s->act == MP_ACT_CLAMP)
        text_add(t, " +hardtanh(%g, %g) ('%.80s')", (double)s->act_min, (double)s->act_max,
                 mp_str(m, m->ops[p->op_act[i]].name));
    text_add(t, "\n");
}

mp_status mp_plan_describe(const mp_plan* plan, char* buf, size_t size, size_t* needed) {
    if (!plan) return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_describe: plan is NULL");
    if (!buf && size)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_describe: buf is NULL, size %zu",
                            size);
    mp_text t = {buf, size, 0};
    if (buf && size) buf[0] = '\0';
    for (uint32_t i = 0; i < plan->model->num_ops; i++) describe_op(plan, i, &t);
    if (needed) *needed = t.len;
    return MP_OK;
}

mp_status mp_plan_profile(const mp_plan* plan, double* seconds, size_t max, size_t* count) {
    if (!plan || (!seconds && max))
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_profile: NULL plan or seconds");
    if (!(plan->flags & MP_PLAN_PROFILE))
        return mp_set_error(MP_INVALID_ARGUMENT,
                            "mp_plan_profile: the plan was not created with MP_PLAN_PROFILE");
    const uint32_t n = plan->model->num_ops;
    for (uint32_t i = 0; i < n && i < max; i++)
        seconds[i] = plan->op_step[i] == MP_NONE ? 0.0 : plan->steps[plan->op_step[i]].seconds;
    if (count) *count = n;
    return MP_OK;
}
