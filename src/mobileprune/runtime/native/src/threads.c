/* A small thread pool: `threads - 1` workers plus the caller's thread run a parallel-for
 * over tasks [0, n), cut in chunks (about 4 per thread).
 *
 * Each thread owns a contiguous range of chunks, the same part of every job (thread t gets
 * the samples t / threads of the batch when tasks go sample by sample), so a layer mostly
 * reads what the same core wrote in the layer before. A thread that has finished its range
 * steals chunks from the others' ranges: one the OS descheduled (a busy phone, a shared
 * core) delays only the chunk it holds, and the caller waits for claimed chunks, never for
 * a sleeping worker to show up.
 *
 * A range is one atomic word (job number << 32 | end chunk << 16 | next chunk): a late
 * worker's claim for an old job fails its compare-and-swap, and the job's fields (fn, ctx,
 * n, chunk) are only read after a successful claim, while the caller still waits for that
 * chunk. Workers wait for the next job busily for a while, then sleep on a condition
 * variable. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

/* Waiting: MP_SPIN_ROUNDS pause instructions, then sched_yield calls until MP_YIELD_NS
 * have passed (a thread sharing its core with another, when there are more threads than
 * free cores, gives the core away instead of burning its time slice; on an idle core the
 * call returns at once), then sleep on the condition variable. Waking a sleeping thread
 * costs tens of microseconds (more in a VM), so the busy phase covers the gap between two
 * layers, such as the single-threaded prepare of a convolution. */
#define MP_SPIN_ROUNDS 1000
#define MP_YIELD_NS 2000000
#define MP_CHUNKS_PER_THREAD 4

/* a range word on its own cache line (owners and thieves of other ranges do not collide) */
typedef struct mp_range {
    atomic_uint_least64_t word; /* job << 32 | end << 16 | next (chunk indices) */
    char pad[64 - sizeof(atomic_uint_least64_t)];
} mp_range;

typedef struct mp_worker {
    mp_pool* pool;
    size_t index;
    pthread_t thread;
} mp_worker;

struct mp_pool {
    size_t threads;
    mp_worker* workers;
    mp_range* ranges; /* one per thread; caller: 0 */
    void* ranges_block;
    size_t started;
    pthread_mutex_t mu;
    pthread_cond_t wake, done_cv;
    atomic_uint job_word;  /* the current job number */
    atomic_size_t done;    /* tasks finished in the current job */
    atomic_bool stop;
    uint32_t job;
    mp_task_fn fn;
    void* ctx;
    size_t n, chunk;
};

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Busy-wait (spin, then yield) until ready(p, arg) or MP_YIELD_NS; returns ready's value. */
static bool wait_busy(mp_pool* p, bool (*ready)(mp_pool*, uintptr_t), uintptr_t arg) {
    for (int i = 0; i < MP_SPIN_ROUNDS; i++) {
        if (ready(p, arg)) return true;
        cpu_relax();
    }
    int64_t end = now_ns() + MP_YIELD_NS;
    while (!ready(p, arg)) {
        if (now_ns() > end) return false;
        sched_yield();
    }
    return true;
}

/* Claim and run the chunks left in range r of job `job`. */
static void work_range(mp_pool* p, uint32_t job, mp_range* r) {
    uint64_t c = atomic_load(&r->word);
    while ((uint32_t)(c >> 32) == job) {
        uint64_t k = c & 0xFFFFu, end = (c >> 16) & 0xFFFFu;
        if (k >= end) return;
        if (!atomic_compare_exchange_weak(&r->word, &c, c + 1)) continue;
        /* the job cannot end before this chunk does: its fields are stable */
        size_t n = p->n, b = (size_t)k * p->chunk, e = b + p->chunk < n ? b + p->chunk : n;
        p->fn(p->ctx, b, e);
        /* after this add the caller may start the next job: read nothing of p but atomics */
        if (atomic_fetch_add(&p->done, e - b) + (e - b) == n) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
        c = atomic_load(&r->word);
    }
}

/* Own range first, then steal from the next threads' ranges. */
static void work(mp_pool* p, uint32_t job, size_t self) {
    for (size_t k = 0; k < p->threads; k++)
        work_range(p, job, &p->ranges[(self + k) % p->threads]);
}

static bool job_changed(mp_pool* p, uintptr_t seen) {
    return atomic_load(&p->job_word) != (unsigned)seen || atomic_load(&p->stop);
}

static bool job_done(mp_pool* p, uintptr_t n) { return atomic_load(&p->done) == (size_t)n; }

/* Wait until the job number differs from `seen` (or stop): busy, then asleep. */
static uint32_t wait_job(mp_pool* p, uint32_t seen) {
    if (!wait_busy(p, job_changed, seen)) {
        pthread_mutex_lock(&p->mu);
        while (!job_changed(p, seen)) pthread_cond_wait(&p->wake, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    return atomic_load(&p->job_word);
}

static void* worker_main(void* arg) {
    mp_worker* w = arg;
    mp_pool* p = w->pool;
    uint32_t seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        if (atomic_load(&p->stop)) break;
        work(p, seen, w->index);
    }
    return NULL;
}

static mp_status pool_alloc(mp_pool* p, size_t threads) {
    p->threads = threads;
    p->ranges_block = calloc(threads + 1, sizeof(mp_range));
    if (!p->ranges_block) return MP_OUT_OF_MEMORY;
    p->ranges = (mp_range*)((uintptr_t)p->ranges_block + (64 - (uintptr_t)p->ranges_block % 64));
    for (size_t t = 0; t < threads; t++) atomic_init(&p->ranges[t].word, 0);
    atomic_init(&p->job_word, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->stop, false);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    if (threads > 1) {
        p->workers = calloc(threads - 1, sizeof(mp_worker));
        if (!p->workers) return MP_OUT_OF_MEMORY;
    }
    return MP_OK;
}

mp_status mp_pool_create(size_t threads, mp_pool** out) {
    *out = NULL;
    mp_pool* p = calloc(1, sizeof *p);
    if (!p || pool_alloc(p, threads)) {
        mp_pool_free(p);
        return mp_set_error(MP_OUT_OF_MEMORY, "out of memory creating the thread pool");
    }
    for (size_t i = 0; i + 1 < threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].index = i + 1;
        if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0) {
            mp_pool_free(p);
            return mp_set_error(MP_OUT_OF_MEMORY, "cannot start thread %zu of %zu", i + 2,
                                threads);
        }
        p->started++;
    }
    *out = p;
    return MP_OK;
}

void mp_pool_run(mp_pool* p, mp_task_fn fn, void* ctx, size_t n) {
    if (n == 0) return;
    if (p->threads == 1 || n == 1) {
        fn(ctx, 0, n);
        return;
    }
    /* at most 4 chunks per thread, 4096 in all (threads <= 1024): they fit 16 bits */
    size_t T = p->threads, want = MP_CHUNKS_PER_THREAD * T < n ? MP_CHUNKS_PER_THREAD * T : n;
    size_t chunk = (n + want - 1) / want;
    uint64_t chunks = (n + chunk - 1) / chunk;
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    atomic_store(&p->done, 0);
    uint32_t job = ++p->job;
    for (size_t t = 0; t < T; t++) /* thread t: chunks [t C / T, (t + 1) C / T) */
        atomic_store(&p->ranges[t].word, (uint64_t)job << 32 | (chunks * (t + 1) / T) << 16 |
                                             chunks * t / T);
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->job_word, job);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    work(p, job, 0);
    if (!wait_busy(p, job_done, n)) {
        pthread_mutex_lock(&p->mu);
        while (!job_done(p, n)) pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

size_t mp_pool_threads(const mp_pool* p) { return p->threads; }

void mp_pool_free(mp_pool* p) {
    if (!p) return;
    if (p->ranges_block) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, true);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        for (size_t i = 0; i < p->started; i++) pthread_join(p->workers[i].thread, NULL);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->wake);
        pthread_cond_destroy(&p->done_cv);
    }
    free(p->workers);
    free(p->ranges_block);
    free(p);
}
