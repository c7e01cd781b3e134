// Device weight cache: a weight is uploaded once (its host bytes live in the checkpoint mmap and
// never change) and found again by its host data pointer.
#include "cuda-internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void ds4__cuda_weight_sizes(const ds4_weight_t *w, size_t *data_bytes, size_t *scale_bytes)
{
    size_t n = (size_t)w->n, k = (size_t)w->k;
    switch (w->type) {
    case DS4_W_F32:
        *data_bytes = n * k * 4;
        *scale_bytes = 0;
        return;
    case DS4_W_BF16:
        *data_bytes = n * k * 2;
        *scale_bytes = 0;
        return;
    case DS4_W_FP8:
        *data_bytes = n * k;
        *scale_bytes = ((n + 127) / 128) * ((k + 127) / 128);
        return;
    case DS4_W_FP4:
        *data_bytes = n * (k / 2);
        *scale_bytes = n * (k / 32);
        return;
    }
    *data_bytes = 0;
    *scale_bytes = 0;
}

void ds4__cuda_weight_cache_init(ds4_cuda_weight_cache_t *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
}

void ds4__cuda_weight_cache_free(ds4_cuda_weight_cache_t *c)
{
    for (size_t i = 0; i < c->cap; i++) {
        if (c->slots[i].host_data != NULL) {
            cudaFree(c->slots[i].dev_data);
            cudaFree(c->slots[i].dev_scale);
        }
    }
    free(c->slots);
    pthread_mutex_destroy(&c->lock);
    memset(c, 0, sizeof(*c));
}

static size_t slot_of(const void *p, size_t cap)
{
    uint64_t h = (uint64_t)(uintptr_t)p;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (size_t)h & (cap - 1);
}

static ds4_status_t grow(ds4_cuda_weight_cache_t *c)
{
    size_t cap = c->cap == 0 ? 256 : c->cap * 2;
    ds4_cuda_weight_t *slots = (ds4_cuda_weight_t *)calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return DS4_ERR_NO_MEMORY;
    for (size_t i = 0; i < c->cap; i++) {
        if (c->slots[i].host_data == NULL)
            continue;
        size_t s = slot_of(c->slots[i].host_data, cap);
        while (slots[s].host_data != NULL)
            s = (s + 1) & (cap - 1);
        slots[s] = c->slots[i];
    }
    free(c->slots);
    c->slots = slots;
    c->cap = cap;
    return DS4_OK;
}

ds4_status_t ds4__cuda_weight_get(struct ds4_backend *be, const ds4_weight_t *w,
                                  ds4_cuda_weight_t *out)
{
    ds4_cuda_weight_cache_t *c = &be->cache;
    ds4_status_t st = DS4_OK;
    pthread_mutex_lock(&c->lock);
    if ((c->count + 1) * 2 > c->cap && (st = grow(c)) != DS4_OK)
        goto unlock;
    {
        size_t s = slot_of(w->data, c->cap);
        while (c->slots[s].host_data != NULL && c->slots[s].host_data != w->data)
            s = (s + 1) & (c->cap - 1);
        ds4_cuda_weight_t *e = &c->slots[s];
        if (e->host_data == NULL) {
            ds4_cuda_weight_t nw;
            memset(&nw, 0, sizeof(nw));
            ds4__cuda_weight_sizes(w, &nw.data_bytes, &nw.scale_bytes);
            st = DS4_CUDA_CHECK(cudaMalloc(&nw.dev_data, nw.data_bytes));
            if (st != DS4_OK)
                goto unlock;
            st = DS4_CUDA_CHECK(cudaMemcpy(nw.dev_data, w->data, nw.data_bytes,
                                           cudaMemcpyHostToDevice));
            if (st == DS4_OK && nw.scale_bytes > 0) {
                st = DS4_CUDA_CHECK(cudaMalloc((void **)&nw.dev_scale, nw.scale_bytes));
                if (st == DS4_OK)
                    st = DS4_CUDA_CHECK(cudaMemcpy(nw.dev_scale, w->scale, nw.scale_bytes,
                                                   cudaMemcpyHostToDevice));
            }
            if (st != DS4_OK) {
                cudaFree(nw.dev_data);
                cudaFree(nw.dev_scale);
                goto unlock;
            }
            nw.host_data = w->data;
            nw.host_scale = w->scale;
            *e = nw;
            c->count++;
            c->bytes += nw.data_bytes + nw.scale_bytes;
        }
        *out = *e;
    }
unlock:
    pthread_mutex_unlock(&c->lock);
    return st;
}
