/*
 * ds4/alloc.h - allocation helpers.
 *
 * All return NULL on failure (and on size overflow) after logging once; callers turn NULL into
 * DS4_ERR_NO_MEMORY. Memory from these functions is released with ds4_free (aligned memory too).
 */
#ifndef DS4_ALLOC_H
#define DS4_ALLOC_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void *ds4_malloc(size_t size_bytes);
/* Zeroed array of n elements of `size` bytes; NULL when n*size overflows. */
void *ds4_calloc(size_t n, size_t size);
/* Array of n elements of `size` bytes, uninitialised; NULL when n*size overflows. */
void *ds4_malloc_array(size_t n, size_t size);
/* Resizes to n elements of `size`; on failure the old block is left untouched and NULL returned. */
void *ds4_realloc_array(void *ptr, size_t n, size_t size);
/* `align` must be a power of two >= sizeof(void*); size rounded up to a multiple of align. */
void *ds4_aligned_alloc(size_t align, size_t size_bytes);
char *ds4_strdup(const char *s);
char *ds4_strndup(const char *s, size_t n);
void ds4_free(void *ptr);

/* Checked arithmetic on sizes: false when the result would overflow. */
bool ds4_size_mul(size_t a, size_t b, size_t *out);
bool ds4_size_add(size_t a, size_t b, size_t *out);

#define DS4_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DS4_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DS4_MAX(a, b) ((a) > (b) ? (a) : (b))
#define DS4_ROUND_UP(x, m) ((((x) + (m) - 1) / (m)) * (m))
#define DS4_DIV_CEIL(x, m) (((x) + (m) - 1) / (m))

#ifdef __cplusplus
}
#endif
#endif /* DS4_ALLOC_H */
