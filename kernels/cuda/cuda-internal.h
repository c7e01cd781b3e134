/*
 * Internal to the CUDA backend: the handle, error checking and the device weight cache.
 * Compiled by nvcc only; the rest of ds4 never includes CUDA headers.
 */
#ifndef DS4_CUDA_INTERNAL_H
#define DS4_CUDA_INTERNAL_H

#include "ds4/backend.h"
#include "ds4/log.h"
#include "ds4/threadpool.h"

#include <cuda_runtime.h>
#include <pthread.h>

/* Logs a failed CUDA runtime call with its location and evaluates to a ds4 status. */
#define DS4_CUDA_CHECK(expr) ds4__cuda_check((expr), #expr, __FILE__, __LINE__)

static inline ds4_status_t ds4__cuda_check(cudaError_t err, const char *what, const char *file,
                                           int line)
{
    if (err == cudaSuccess)
        return DS4_OK;
    ds4_log_error("cuda call failed at %s:%d: %s: %s", file, line, what,
                  cudaGetErrorString(err));
    return err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver ? DS4_ERR_NO_DEVICE
                                                                          : DS4_ERR_BACKEND;
}

/* One uploaded weight: device copies of data and scales, keyed by the host data pointer. */
typedef struct ds4_cuda_weight {
    const void *host_data;
    const uint8_t *host_scale;
    void *dev_data;
    uint8_t *dev_scale;
    size_t data_bytes;
    size_t scale_bytes;
} ds4_cuda_weight_t;

typedef struct ds4_cuda_weight_cache {
    pthread_mutex_t lock;
    ds4_cuda_weight_t *slots; /* open addressing, capacity a power of two */
    size_t cap;
    size_t count;
    size_t bytes;             /* device bytes held */
} ds4_cuda_weight_cache_t;

struct ds4_backend {
    int device;
    cudaStream_t stream;
    ds4_threadpool_h pool;    /* host threads for parallel_for */
    ds4_cuda_weight_cache_t cache;
    /* Scratch for activations/outputs, grown on demand (bytes). */
    float *dev_x;
    float *dev_y;
    size_t dev_x_cap;
    size_t dev_y_cap;
};

/* Bytes of a weight's data and scale arrays as laid out in the checkpoint. */
void ds4__cuda_weight_sizes(const ds4_weight_t *w, size_t *data_bytes, size_t *scale_bytes);
/* Device copy of `w` (uploaded on first use, then cached for the backend's life); *out is a
 * copy of the cache entry, valid while the backend lives. */
ds4_status_t ds4__cuda_weight_get(struct ds4_backend *be, const ds4_weight_t *w,
                                  ds4_cuda_weight_t *out);
void ds4__cuda_weight_cache_init(ds4_cuda_weight_cache_t *c);
void ds4__cuda_weight_cache_free(ds4_cuda_weight_cache_t *c);

/* y[m, n] = act(x) . W^T on the device; x, y host pointers. */
ds4_status_t ds4__cuda_matmul(struct ds4_backend *be, const ds4_weight_t *w, int64_t m,
                              const float *x, float *y, unsigned flags);
ds4_status_t ds4__cuda_gemm_f32(struct ds4_backend *be, int64_t m, int64_t n, int64_t k,
                                const float *a, const float *b, float *c);

#endif /* DS4_CUDA_INTERNAL_H */
