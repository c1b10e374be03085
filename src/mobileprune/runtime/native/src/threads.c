/* A small thread pool: `threads - 1` workers plus the caller's thread run a parallel-for
 * over tasks [0, n), each thread one contiguous range. Workers spin briefly on the job
 * counter (a layer is often tens of microseconds; waking a sleeping thread costs about as
 * much), then sleep on a condition variable. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

#define MP_SPIN_ROUNDS 20000

typedef struct mp_worker {
    mp_pool* pool;
    size_t index;
    pthread_t thread;
} mp_worker;

struct mp_pool {
    size_t threads;
    mp_worker* workers;
    size_t started;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_ulong generation; /* bumped per job */
    atomic_size_t pending;   /* workers still running the current job */
    atomic_bool stop;
    mp_task_fn fn;
    void* ctx;
    size_t n;
};

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void run_share(mp_pool* p, size_t index) {
    size_t begin = p->n * index / p->threads, end = p->n * (index + 1) / p->threads;
    if (begin < end) p->fn(p->ctx, begin, end);
}

/* Wait until the job counter differs from `seen`: spin, then sleep. */
static unsigned long wait_job(mp_pool* p, unsigned long seen) {
    for (int i = 0; i < MP_SPIN_ROUNDS; i++) {
        unsigned long g = atomic_load(&p->generation);
        if (g != seen || atomic_load(&p->stop)) return g;
        cpu_relax();
    }
    pthread_mutex_lock(&p->mu);
    unsigned long g;
    while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->wake, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void* worker_main(void* arg) {
    mp_worker* w = arg;
    mp_pool* p = w->pool;
    unsigned long seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        if (atomic_load(&p->stop)) break;
        run_share(p, w->index);
        if (atomic_fetch_sub(&p->pending, 1) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

mp_status mp_pool_create(size_t threads, mp_pool** out) {
    *out = NULL;
    mp_pool* p = calloc(1, sizeof *p);
    if (!p) return mp_set_error(MP_OUT_OF_MEMORY, "out of memory creating the thread pool");
    p->threads = threads;
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, false);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (threads > 1) {
        p->workers = calloc(threads - 1, sizeof(mp_worker));
        if (!p->workers) {
            mp_pool_free(p);
            return mp_set_error(MP_OUT_OF_MEMORY, "out of memory creating the thread pool");
        }
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
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    atomic_store(&p->pending, p->threads - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_share(p, 0);
    for (int i = 0; i < MP_SPIN_ROUNDS && atomic_load(&p->pending); i++) cpu_relax();
    if (atomic_load(&p->pending)) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending)) pthread_cond_wait(&p->done, &p->mu);
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
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p);
}
