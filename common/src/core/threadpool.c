#include "ds4/threadpool.h"
#include "ds4/alloc.h"
#include "ds4/log.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>

struct ds4_threadpool {
    int n_threads;           /* workers + the caller */
    pthread_t *workers;      /* n_threads - 1 */
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* workers wait for a new generation */
    pthread_cond_t done;     /* caller waits for pending == 0 */
    pthread_mutex_t call_lock; /* serialises parallel_for callers */
    unsigned long generation;
    int pending;             /* workers still running the current job */
    bool stop;
    ds4_parallel_cb fn;
    void *arg;
    size_t n;
};

int ds4_cpu_count(void)
{
    const char *env = getenv("DS4_THREADS");
    if (env != NULL && atoi(env) > 0)
        return atoi(env);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    return 1;
}

ds4_threadpool_params_t ds4_threadpool_params_default(void)
{
    return (ds4_threadpool_params_t){.n_threads = 0};
}

static void run_range(struct ds4_threadpool *pool, int index)
{
    size_t n = pool->n;
    size_t t = (size_t)pool->n_threads;
    size_t begin = n * (size_t)index / t;
    size_t end = n * ((size_t)index + 1) / t;
    if (begin < end)
        pool->fn(pool->arg, begin, end, index);
}

static void *worker_main(void *p)
{
    struct ds4_threadpool *pool = p;
    pthread_mutex_lock(&pool->lock);
    int index = -1;
    for (int i = 0; i < pool->n_threads - 1; i++) {
        if (pthread_equal(pool->workers[i], pthread_self()))
            index = i + 1;
    }
    /* Workers are created before any job is posted (generation 0); starting from 0 rather
     * than the current value keeps a job posted before this thread first ran from being lost. */
    unsigned long seen = 0;
    for (;;) {
        while (!pool->stop && pool->generation == seen)
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stop)
            break;
        seen = pool->generation;
        pthread_mutex_unlock(&pool->lock);
        run_range(pool, index);
        pthread_mutex_lock(&pool->lock);
        if (--pool->pending == 0)
            pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

ds4_status_t ds4_threadpool_create(const ds4_threadpool_params_t *params, ds4_threadpool_h *out)
{
    int n = params->n_threads > 0 ? params->n_threads : ds4_cpu_count();
    struct ds4_threadpool *pool = ds4_calloc(1, sizeof(*pool));
    if (pool == NULL)
        return DS4_ERR_NO_MEMORY;
    pool->n_threads = n;
    pool->workers = ds4_calloc((size_t)n, sizeof(*pool->workers));
    if (pool->workers == NULL)
        goto free_pool;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_mutex_init(&pool->call_lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);

    /* Hold the lock while starting so each worker finds its own pthread_t in workers[]. */
    pthread_mutex_lock(&pool->lock);
    for (int i = 0; i < n - 1; i++) {
        if (pthread_create(&pool->workers[i], NULL, worker_main, pool) != 0) {
            ds4_log_error("threadpool: pthread_create failed after %d threads", i);
            pool->n_threads = i + 1;
            break;
        }
    }
    pthread_mutex_unlock(&pool->lock);
    *out = pool;
    return DS4_OK;

free_pool:
    ds4_free(pool);
    return DS4_ERR_NO_MEMORY;
}

void ds4_threadpool_destroy(ds4_threadpool_h pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->lock);
    pool->stop = true;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_threads - 1; i++)
        pthread_join(pool->workers[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->call_lock);
    ds4_free(pool->workers);
    ds4_free(pool);
}

int ds4_threadpool_size(ds4_threadpool_h pool)
{
    return pool != NULL ? pool->n_threads : 1;
}

void ds4_threadpool_parallel_for(ds4_threadpool_h pool, size_t n, ds4_parallel_cb fn, void *arg)
{
    if (n == 0)
        return;
    if (pool == NULL || pool->n_threads == 1 || n == 1) {
        fn(arg, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&pool->call_lock);
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    pool->pending = pool->n_threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    run_range(pool, 0);

    pthread_mutex_lock(&pool->lock);
    while (pool->pending > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&pool->call_lock);
}
