/*
 * ds4/threadpool.h - a fixed pool of compute threads for data-parallel loops.
 *
 * ds4_threadpool_parallel_for(pool, n, fn, arg) splits [0, n) into contiguous ranges and calls
 * fn(arg, begin, end, thread_index) on the pool's threads plus the calling thread, returning when
 * all ranges are done. The split depends only on n and the thread count, so results are
 * deterministic for a fixed thread count. One parallel_for at a time per pool (calls from several
 * threads are serialised). fn must not call parallel_for on the same pool.
 */
#ifndef DS4_THREADPOOL_H
#define DS4_THREADPOOL_H

#include "ds4/status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_threadpool *ds4_threadpool_h;

typedef struct ds4_threadpool_params {
    /* Total threads doing work, the caller included; 0 = ds4_cpu_count(). */
    int n_threads;
} ds4_threadpool_params_t;

typedef void (*ds4_parallel_cb)(void *arg, size_t begin, size_t end, int thread_index);

ds4_threadpool_params_t ds4_threadpool_params_default(void);
ds4_status_t ds4_threadpool_create(const ds4_threadpool_params_t *params, ds4_threadpool_h *out);
void ds4_threadpool_destroy(ds4_threadpool_h pool);
int ds4_threadpool_size(ds4_threadpool_h pool);
/* A NULL pool runs fn(arg, 0, n, 0) on the caller. */
void ds4_threadpool_parallel_for(ds4_threadpool_h pool, size_t n, ds4_parallel_cb fn, void *arg);

/* CPUs this process may run on (sched_getaffinity), at least 1. DS4_THREADS overrides. */
int ds4_cpu_count(void);

#ifdef __cplusplus
}
#endif
#endif /* DS4_THREADPOOL_H */
