/* CPU feature detection, once per process (the engine's only global state besides the
 * thread-local error message): the best kernel family this CPU and OS run.
 *
 * x86-64: AVX2 + FMA, or AVX-512 F + BW + VL, each only when the OS saves the wide
 * registers (XGETBV: XMM/YMM state, and opmask/ZMM state for AVX-512). arm64: NEON is the
 * baseline. Anything else: the portable scalar kernels. The environment variable
 * MOBILEPRUNE_ISA=scalar|neon|avx2|avx512 lowers the choice (tests run every family the
 * CPU has); it never raises it above what the CPU runs.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include "kernels/kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static mp_isa detect(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return MP_ISA_SCALAR;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!(fma && osxsave && avx)) return MP_ISA_SCALAR;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return MP_ISA_SCALAR; /* XMM and YMM state */
    if (__get_cpuid_max(0, NULL) < 7) return MP_ISA_SCALAR;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1;
    const int avx512 = ((b >> 16) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1); /* F BW VL */
    if (!avx2) return MP_ISA_SCALAR;
    if (avx512 && (xcr0 & 0xE6) == 0xE6) return MP_ISA_AVX512; /* + opmask, ZMM state */
    return MP_ISA_AVX2;
}
#elif defined(__aarch64__)
static mp_isa detect(void) { return MP_ISA_NEON; }
#else
static mp_isa detect(void) { return MP_ISA_SCALAR; }
#endif

/* MOBILEPRUNE_ISA as a cap (unknown or unset: no cap). */
static mp_isa env_cap(mp_isa hw)
{
    const char* s = getenv("MOBILEPRUNE_ISA");
    if (s == NULL || *s == '\0') return hw;
    mp_isa cap = hw;
    if (strcmp(s, "scalar") == 0) cap = MP_ISA_SCALAR;
    else if (strcmp(s, "neon") == 0) cap = MP_ISA_NEON;
    else if (strcmp(s, "avx2") == 0) cap = MP_ISA_AVX2;
    else if (strcmp(s, "avx512") == 0 || strcmp(s, "avx512f") == 0) cap = MP_ISA_AVX512;
    if (hw == MP_ISA_NEON) return cap == MP_ISA_SCALAR ? MP_ISA_SCALAR : MP_ISA_NEON;
    if (cap == MP_ISA_NEON) return MP_ISA_SCALAR; /* x86: neon names no x86 family */
    return cap < hw ? cap : hw;
}

/* -1: not detected yet; racing first calls store the same value. */
static atomic_int g_isa = -1;

mp_isa mp_cpu_best_isa(void)
{
    int v = atomic_load_explicit(&g_isa, memory_order_acquire);
    if (v < 0) {
        v = (int)env_cap(detect());
        atomic_store_explicit(&g_isa, v, memory_order_release);
    }
    return (mp_isa)v;
}

double mp_now_seconds(void)
{
    struct timespec ts;
#if defined(CLOCK_THREAD_CPUTIME_ID)
    /* CPU time of this thread: the timing run at create is not skewed by other processes
     * that share the core */
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double mp_wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
