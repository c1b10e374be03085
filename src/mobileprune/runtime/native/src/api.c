/* Version, status strings, CPU name and the thread-local last-error message. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

#define MP_STR2(x) #x
#define MP_STR(x) MP_STR2(x)

/* The only mutable global state besides the CPU features: one message per thread. */
static _Thread_local char mp_error_message[512];

const char* mp_status_string(mp_status status) {
    switch (status) {
    case MP_OK: return "ok";
    case MP_INVALID_ARGUMENT: return "invalid argument";
    case MP_INVALID_MODEL: return "invalid model";
    case MP_UNSUPPORTED_OP: return "unsupported op";
    case MP_SHAPE_MISMATCH: return "shape mismatch";
    case MP_OUT_OF_MEMORY: return "out of memory";
    case MP_UNSUPPORTED_HARDWARE: return "unsupported hardware";
    case MP_IO_ERROR: return "I/O error";
    }
    return "unknown status";
}

const char* mp_version(void) {
    return MP_STR(MP_VERSION_MAJOR) "." MP_STR(MP_VERSION_MINOR) "." MP_STR(MP_VERSION_PATCH);
}

uint32_t mp_format_version(void) { return MP_FORMAT_VERSION; }

const char* mp_cpu_isa(void) {
    switch (mp_cpu_best_isa()) {
    case MP_ISA_AVX512: return "avx512f";
    case MP_ISA_AVX2: return "avx2";
    case MP_ISA_NEON: return "neon";
    case MP_ISA_SCALAR: return "scalar";
    }
    return "scalar";
}

const char* mp_last_error(void) { return mp_error_message; }

mp_status mp_set_error(mp_status status, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mp_error_message, sizeof mp_error_message, fmt, ap);
    va_end(ap);
    /* one line: names from a file may hold control characters */
    for (char* c = mp_error_message; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7F) *c = '?';
    return status;
}

mp_status mp_op_error(const mp_model* m, uint32_t index, mp_status st, const char* fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mp_set_error(st, "op '%.80s' (#%u): %s", mp_str(m, m->ops[index].name), index, msg);
}

const char* mp_op_name(uint32_t code) {
    switch (code) {
#define MP_OP(e, c, name) case c: return name;
#include "ops.inc"
#undef MP_OP
    default: return "?";
    }
}

const char* mp_fn_name(uint32_t code) {
    switch (code) {
#define MP_ACT(e, c, name) case c: return name;
#include "activations.inc"
#undef MP_ACT
    default: return "?";
    }
}
