/* A small thread pool: `threads - 1` workers plus the caller's thread run a parallel-for
 * over tasks [0, n). Tasks are handed out in chunks from one atomic counter, so a thread
 * that the OS descheduled (a busy phone, a shared core) only delays the chunk it holds: the
 * others take the rest, and the caller waits for claimed chunks, never for a sleeping
 * worker to show up. Workers spin briefly for the next job (layers are often tens of
 * microseconds apart; waking a sleeping thread costs about as much), then sleep on a
 * condition variable.
 *
 * The word `claim` holds (job number << 32 | chunks << 16 | next chunk): a late worker's
 * claim for an old job fails its compare-and-swap, and the job's fields (fn, ctx, n, chunk)
 * are only read after a successful claim, while the caller still waits for that chunk. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

/* Waiting: MP_SPIN_ROUNDS pause instructions, then MP_YIELD_ROUNDS sched_yield calls (a
 * thread sharing its core with another, when there are more threads than free cores,
 * gives the core away instead of burning its time slice), then sleep. */
#define MP_SPIN_ROUNDS 2000
#define MP_YIELD_ROUNDS 200

typedef struct mp_worker {
    mp_pool* pool;
    pthread_t thread;
} mp_worker;

struct mp_pool {
    size_t threads;
    mp_worker* workers;
    size_t started;
    pthread_mutex_t mu;
    pthread_cond_t wake, done_cv;
    atomic_uint_least64_t claim; /* job << 32 | chunks << 16 | next chunk */
    atomic_size_t done;          /* tasks finished in the current job */
    atomic_bool stop;
    uint32_t job;
    mp_task_fn fn;
    void* ctx;
    size_t n, chunk;
};

static void cpu_relax(int round) {
    if (round >= MP_SPIN_ROUNDS) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Claim and run chunks of job `job` until none is left. The word says how many chunks
 * the job has, so nothing else is read before a claim succeeds. */
static void work(mp_pool* p, uint32_t job) {
    uint64_t c = atomic_load(&p->claim);
    while ((uint32_t)(c >> 32) == job) {
        uint64_t k = c & 0xFFFFu, chunks = (c >> 16) & 0xFFFFu;
        if (k >= chunks) return;
        if (!atomic_compare_exchange_weak(&p->claim, &c, c + 1)) continue;
        /* the job cannot end before this chunk does: its fields are stable */
        size_t n = p->n, b = (size_t)k * p->chunk, e = b + p->chunk < n ? b + p->chunk : n;
        p->fn(p->ctx, b, e);
        /* after this add the caller may start the next job: read nothing of p but atomics */
        if (atomic_fetch_add(&p->done, e - b) + (e - b) == n) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
        c = atomic_load(&p->claim);
    }
}

/* Wait until the job number differs from `seen` (or stop): spin, then sleep. */
static uint32_t wait_job(mp_pool* p, uint32_t seen) {
    for (int i = 0; i < MP_SPIN_ROUNDS + MP_YIELD_ROUNDS; i++) {
        uint32_t j = (uint32_t)(atomic_load(&p->claim) >> 32);
        if (j != seen || atomic_load(&p->stop)) return j;
        cpu_relax(i);
    }
    pthread_mutex_lock(&p->mu);
    uint32_t j;
    while ((j = (uint32_t)(atomic_load(&p->claim) >> 32)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->wake, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return j;
}

static void* worker_main(void* arg) {
    mp_pool* p = ((mp_worker*)arg)->pool;
    uint32_t seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        if (atomic_load(&p->stop)) break;
        work(p, seen);
    }
    return NULL;
}

mp_status mp_pool_create(size_t threads, mp_pool** out) {
    *out = NULL;
    mp_pool* p = calloc(1, sizeof *p);
    if (!p) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory creating the thread pool");
    p->threads = threads;
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->stop, false);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    if (threads > 1) {
        p->workers = calloc(threads - 1, sizeof(mp_worker));
        if (!p->workers) {
            mp_pool_free(p);
            return mp_set_error(MP_OUT_OF_MEMORY, "out of memory creating the thread pool");
        }
    }
    for (size_t i = 0; i + 1 < threads; i++) {
        p->workers[i].pool = p;
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
    /* about 4 chunks per thread (at most 4096 chunks): small enough to balance, few
     * enough claims */
    size_t want = 4 * p->threads < n ? 4 * p->threads : n;
    size_t chunk = (n + want - 1) / want;
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    uint64_t chunks = (n + chunk - 1) / chunk;
    atomic_store(&p->done, 0);
    uint32_t job = ++p->job;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->claim, (uint64_t)job << 32 | chunks << 16);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    work(p, job);
    for (int i = 0; i < MP_SPIN_ROUNDS + MP_YIELD_ROUNDS && atomic_load(&p->done) != n; i++)
        cpu_relax(i);
    if (atomic_load(&p->done) != n) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->done) != n) pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

size_t mp_pool_threads(const mp_pool* p) { return p->threads; }

void mp_pool_free(mp_pool* p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->started; i++) pthread_join(p->workers[i].thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done_cv);
    free(p->workers);
    free(p);
}
