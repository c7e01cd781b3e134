#include "ds4/alloc.h"
#include "ds4/log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

bool ds4_size_mul(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

bool ds4_size_add(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

void *ds4_malloc(size_t size_bytes)
{
    void *p = malloc(size_bytes == 0 ? 1 : size_bytes);
    if (p == NULL)
        ds4_log_error("allocation failed size_bytes %zu", size_bytes);
    return p;
}

void *ds4_calloc(size_t n, size_t size)
{
    size_t total;
    if (!ds4_size_mul(n, size, &total)) {
        ds4_log_error("allocation size overflow n %zu size %zu", n, size);
        return NULL;
    }
    void *p = calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);
    if (p == NULL)
        ds4_log_error("allocation failed size_bytes %zu", total);
    return p;
}

void *ds4_malloc_array(size_t n, size_t size)
{
    size_t total;
    if (!ds4_size_mul(n, size, &total)) {
        ds4_log_error("allocation size overflow n %zu size %zu", n, size);
        return NULL;
    }
    return ds4_malloc(total);
}

void *ds4_realloc_array(void *ptr, size_t n, size_t size)
{
    size_t total;
    if (!ds4_size_mul(n, size, &total)) {
        ds4_log_error("allocation size overflow n %zu size %zu", n, size);
        return NULL;
    }
    void *p = realloc(ptr, total == 0 ? 1 : total);
    if (p == NULL)
        ds4_log_error("allocation failed size_bytes %zu", total);
    return p;
}

void *ds4_aligned_alloc(size_t align, size_t size_bytes)
{
    DS4_ASSERT(align >= sizeof(void *) && (align & (align - 1)) == 0);
    size_t rounded;
    if (!ds4_size_add(size_bytes, align - 1, &rounded)) {
        ds4_log_error("allocation size overflow size_bytes %zu", size_bytes);
        return NULL;
    }
    rounded &= ~(align - 1);
    void *p = NULL;
    if (posix_memalign(&p, align, rounded == 0 ? align : rounded) != 0) {
        ds4_log_error("aligned allocation failed size_bytes %zu align %zu", size_bytes, align);
        return NULL;
    }
    return p;
}

char *ds4_strdup(const char *s)
{
    return ds4_strndup(s, strlen(s));
}

char *ds4_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = ds4_malloc(len + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void ds4_free(void *ptr)
{
    free(ptr);
}
