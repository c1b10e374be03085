/* mp_plan_run: copy the inputs in, run every step (operator prepare on the caller's
 * thread, then its tasks over the pool), copy the outputs out. No allocation, no I/O. */
#include "internal.h"

/* Below this many elements / multiply-adds a step runs on the caller's thread alone:
 * waking the others costs more than it saves. */
#define MP_PARALLEL_WORK 32768u

static void conv_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    mp_conv_compute(s->conv, s->batch, s->in[0], s->scratch, s->out, b, e);
}

/* Sample groups [b, e): each prepared and computed whole, in its own scratch. */
static void group_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    const mp_value* vi = &s->model->values[s->in_tensor[0]];
    const mp_value* vo = &s->model->values[s->out_tensor];
    for (size_t g = b; g < e; g++) {
        size_t n0 = s->batch * g / s->groups, n1 = s->batch * (g + 1) / s->groups;
        const float* in = s->in[0] + n0 * (size_t)vi->numel;
        void* scratch = (uint8_t*)s->scratch + g * s->group_scratch;
        float* out = s->out + n0 * (size_t)vo->numel;
        if (s->into) /* chained: this group's padded buffers in the next conv's group scratch */
            out = mp_conv_input_buffer(s->into->conv,
                                       (uint8_t*)s->into->scratch + g * s->into->group_scratch);
        if (s->conv) {
            mp_conv_prepare(s->conv, n1 - n0, in, scratch);
            mp_conv_compute(s->conv, n1 - n0, in, scratch, out, 0,
                            mp_conv_num_tasks(s->conv, n1 - n0));
        } else {
            mp_linear_prepare(s->linear, n1 - n0, in, scratch);
            mp_linear_compute(s->linear, n1 - n0, in, scratch, out, 0,
                              mp_linear_num_tasks(s->linear, n1 - n0));
        }
    }
}

static void linear_task(void* ctx, size_t b, size_t e) {
    const mp_step* s = ctx;
    mp_linear_compute(s->linear, s->rows, s->in[0], s->scratch, s->out, b, e);
}

static void run_step(mp_plan* p, mp_step* s) {
    mp_task_fn fn = s->fn;
    if (s->groups) {
        fn = group_task;
    } else if (s->conv) {
        mp_conv_prepare(s->conv, s->batch, s->in[0], s->scratch);
        fn = conv_task;
    } else if (s->linear) {
        mp_linear_prepare(s->linear, s->rows, s->in[0], s->scratch);
        fn = linear_task;
    }
    if (s->work < MP_PARALLEL_WORK || mp_pool_threads(p->pool) == 1)
        fn(s, 0, s->num_tasks);
    else
        mp_pool_run(p->pool, fn, s, s->num_tasks);
}

static size_t value_bytes(const mp_plan* p, uint32_t v) {
    return (size_t)p->model->values[v].numel * p->batch * sizeof(float);
}

static const uint8_t* value_ptr(const mp_plan* p, uint32_t v) {
    while (p->tensors[v].alias != v) v = p->tensors[v].alias;
    return p->ws + p->tensors[v].offset;
}

mp_status mp_plan_run(mp_plan* plan, const float* const* inputs, float* const* outputs) {
    if (!plan || !inputs || !outputs)
        return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_run: NULL plan, inputs or outputs");
    const mp_model* m = plan->model;
    for (uint32_t k = 0; k < m->num_inputs; k++)
        if (!inputs[k]) return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_run: input %u is NULL", k);
    for (uint32_t k = 0; k < m->num_outputs; k++)
        if (!outputs[k])
            return mp_set_error(MP_INVALID_ARGUMENT, "mp_plan_run: output %u is NULL", k);
    for (uint32_t k = 0; k < m->num_inputs; k++)
        memcpy((uint8_t*)value_ptr(plan, m->inputs[k]), inputs[k], value_bytes(plan, m->inputs[k]));
    if (plan->flags & MP_PLAN_PROFILE) {
        for (size_t s = 0; s < plan->num_steps; s++) {
            const double t0 = mp_wall_seconds();
            run_step(plan, &plan->steps[s]);
            plan->steps[s].seconds = mp_wall_seconds() - t0;
        }
    } else {
        for (size_t s = 0; s < plan->num_steps; s++) run_step(plan, &plan->steps[s]);
    }
    for (uint32_t k = 0; k < m->num_outputs; k++)
        memcpy(outputs[k], value_ptr(plan, m->outputs[k]), value_bytes(plan, m->outputs[k]));
    return MP_OK;
}
