#include "workers/model/pool.h"

#include <cblas.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Most loops of a forward follow one another within microseconds; a
 * worker spins this many rounds (each a sched_yield, so a core another
 * thread wants is given up) before it sleeps on the condition variable. */
#define POOL_SPIN 2000
#define POOL_MAX 64

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    int want;               /* threads asked for (0: not yet decided) */
    int started;            /* workers running (threads - 1) */
    pthread_t th[POOL_MAX];
    /* the current loop */
    atomic_uint gen;        /* bumped per loop; workers watch it */
    unsigned gen0;          /* gen when the newest workers were created */
    atomic_int next;        /* next task index */
    atomic_int busy;        /* workers still in the loop */
    int n;
    pool_task_fn fn;
    void *ctx;
    int atfork;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

void pool_set_threads(int n)
{
    if (n <= 0)
        return;
    P.want = n > POOL_MAX ? POOL_MAX : n;
}

int pool_threads(void)
{
    if (P.want == 0) {
        int n = openblas_get_num_threads();
        P.want = n < 1 ? 1 : (n > POOL_MAX ? POOL_MAX : n);
    }
    return P.want;
}

static void run_tasks(int tid)
{
    for (;;) {
        int i = atomic_fetch_add(&P.next, 1);
        if (i >= P.n)
            break;
        P.fn(P.ctx, i, tid);
    }
}

static void *worker(void *arg)
{
    const int tid = (int)(long)arg;
    unsigned seen = P.gen0; /* the loop that created us is still to come */
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load(&P.gen)) == seen && spins < POOL_SPIN) {
            sched_yield();
            spins++;
        }
        if (g == seen) {
            pthread_mutex_lock(&P.mu);
            while ((g = atomic_load(&P.gen)) == seen)
                pthread_cond_wait(&P.wake, &P.mu);
            pthread_mutex_unlock(&P.mu);
        }
        seen = g;
        if (tid < P.want)
            run_tasks(tid);
        if (atomic_fetch_sub(&P.busy, 1) == 1) {
            pthread_mutex_lock(&P.mu);
            pthread_cond_signal(&P.done);
            pthread_mutex_unlock(&P.mu);
        }
    }
    return NULL;
}

/* A child of fork() has none of the parent's workers. */
static void after_fork_child(void)
{
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.wake, NULL);
    pthread_cond_init(&P.done, NULL);
    P.started = 0;
}

/* Start workers up to want - 1; returns how many run. */
static int start_workers(int want)
{
    if (!P.atfork) {
        pthread_atfork(NULL, NULL, after_fork_child);
        P.atfork = 1;
    }
    P.gen0 = atomic_load(&P.gen);
    while (P.started < want - 1) {
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&P.th[P.started], &at, worker, (void *)(long)(P.started + 1));
        pthread_attr_destroy(&at);
        if (rc != 0)
            break; /* run with fewer threads */
        P.started++;
    }
    return P.started;
}

void pool_for(int n, pool_task_fn fn, void *ctx, int blas)
{
    int want = pool_threads();
    if (n <= 0)
        return;
    int workers = want > 1 && n > 1 ? start_workers(want) : 0;
    /* tasks call BLAS single-threaded however many threads run them, so
     * their results do not depend on the thread count */
    int blas_threads = 0;
    if (blas) {
        blas_threads = openblas_get_num_threads();
        if (blas_threads > 1)
            openblas_set_num_threads(1);
    }
    if (workers == 0) {
        for (int i = 0; i < n; i++)
            fn(ctx, i, 0);
        if (blas && blas_threads > 1)
            openblas_set_num_threads(blas_threads);
        return;
    }
    P.n = n;
    P.fn = fn;
    P.ctx = ctx;
    atomic_store(&P.next, 0);
    atomic_store(&P.busy, workers);
    pthread_mutex_lock(&P.mu);
    atomic_fetch_add(&P.gen, 1);
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);
    run_tasks(0);
    /* wait for the workers: most finish while we ran our share */
    int spins = 0;
    while (atomic_load(&P.busy) > 0 && spins < POOL_SPIN) {
        sched_yield();
        spins++;
    }
    if (atomic_load(&P.busy) > 0) {
        pthread_mutex_lock(&P.mu);
        while (atomic_load(&P.busy) > 0)
            pthread_cond_wait(&P.done, &P.mu);
        pthread_mutex_unlock(&P.mu);
    }
    if (blas && blas_threads > 1)
        openblas_set_num_threads(blas_threads);
}

void pool_split(int total, int n, int i, int align, int *lo, int *hi)
{
    if (align < 1)
        align = 1;
    int units = (total + align - 1) / align;
    int a = (int)((long long)units * i / n), b = (int)((long long)units * (i + 1) / n);
    *lo = a * align < total ? a * align : total;
    *hi = b * align < total ? b * align : total;
}

/* Below this many elements a loop runs inline. */
#define POOL_ROWS_MIN ((size_t)1 << 15)

struct rows_job {
    pool_rows_fn fn;
    const void *ctx;
    size_t n, chunk;
};

static void rows_task(void *vctx, int i, int tid)
{
    (void)tid;
    const struct rows_job *j = vctx;
    size_t lo = (size_t)i * j->chunk, hi = lo + j->chunk < j->n ? lo + j->chunk : j->n;
    if (lo < hi)
        j->fn(j->ctx, lo, hi);
}

void pool_rows(size_t n, size_t cost, pool_rows_fn fn, const void *ctx)
{
    int th = pool_threads();
    if (n == 0)
        return;
    if (th <= 1 || n < 2 || n * (cost ? cost : 1) < POOL_ROWS_MIN) {
        fn(ctx, 0, n);
        return;
    }
    /* a few chunks per thread, so a thread slowed by another process
     * does not hold the others up */
    size_t tasks = (size_t)th * 4 < n ? (size_t)th * 4 : n;
    struct rows_job j = {fn, ctx, n, (n + tasks - 1) / tasks};
    pool_for((int)((n + j.chunk - 1) / j.chunk), rows_task, &j, 0);
}
