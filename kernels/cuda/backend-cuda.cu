// The CUDA backend's vtable: device selection, stream, host thread pool, and the ops.
#include "cuda-internal.h"

#include <stdlib.h>
#include <string.h>

extern "C" int ds4_backend_cuda_device_count(void);

extern "C" int ds4_backend_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no device" error
        return 0;
    }
    return n;
}

static ds4_status_t cuda_create(int n_threads, ds4_backend_h *out)
{
    if (ds4_backend_cuda_device_count() <= 0) {
        ds4_log_warn("cuda backend: no CUDA device present");
        return DS4_ERR_NO_DEVICE;
    }
    struct ds4_backend *be = (struct ds4_backend *)calloc(1, sizeof(*be));
    if (be == NULL)
        return DS4_ERR_NO_MEMORY;
    ds4_status_t st = DS4_CUDA_CHECK(cudaSetDevice(0));
    if (st != DS4_OK)
        goto free_be;
    st = DS4_CUDA_CHECK(cudaStreamCreateWithFlags(&be->stream, cudaStreamNonBlocking));
    if (st != DS4_OK)
        goto free_be;
    {
        ds4_threadpool_params_t p = ds4_threadpool_params_default();
        p.n_threads = n_threads;
        st = ds4_threadpool_create(&p, &be->pool);
        if (st != DS4_OK)
            goto destroy_stream;
    }
    ds4__cuda_weight_cache_init(&be->cache);
    *out = be;
    return DS4_OK;

destroy_stream:
    cudaStreamDestroy(be->stream);
free_be:
    free(be);
    return st;
}

static void cuda_destroy(ds4_backend_h be)
{
    if (be == NULL)
        return;
    ds4__cuda_weight_cache_free(&be->cache);
    cudaFree(be->dev_x);
    cudaFree(be->dev_y);
    cudaStreamDestroy(be->stream);
    ds4_threadpool_destroy(be->pool);
    free(be);
}

static int cuda_n_threads(ds4_backend_h be)
{
    return ds4_threadpool_size(be->pool);
}

// The vtable's matmul has no status: a device failure here is unrecoverable for the step, so
// it is logged and aborts (DS4_ASSERT), never silently returning wrong numbers.
static void cuda_matmul(ds4_backend_h be, const ds4_weight_t *w, int64_t m, const float *x,
                        float *y, unsigned flags)
{
    ds4_status_t st = ds4__cuda_matmul(be, w, m, x, y, flags);
    DS4_ASSERT(st == DS4_OK);
}

static void cuda_gemm_f32(ds4_backend_h be, int64_t m, int64_t n, int64_t k, const float *a,
                          const float *b, float *c)
{
    ds4_status_t st = ds4__cuda_gemm_f32(be, m, n, k, a, b, c);
    DS4_ASSERT(st == DS4_OK);
}

static void cuda_parallel_for(ds4_backend_h be, size_t n,
                              void (*fn)(void *arg, size_t begin, size_t end, int thread_index),
                              void *arg)
{
    ds4_threadpool_parallel_for(be->pool, n, fn, arg);
}

extern "C" const ds4_backend_ops_t ds4_backend_cuda_ops = {
    /* name */ "cuda",
    /* create */ cuda_create,
    /* destroy */ cuda_destroy,
    /* n_threads */ cuda_n_threads,
    /* matmul */ cuda_matmul,
    /* gemm_f32 */ cuda_gemm_f32,
    /* parallel_for */ cuda_parallel_for,
};
