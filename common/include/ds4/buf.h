/*
 * ds4/buf.h - a growable byte string, kept NUL-terminated.
 *
 * A zeroed ds4_buf_t is the empty buffer (p may be NULL until the first append). Appends that
 * cannot allocate leave the contents unchanged, return false and set the sticky `oom` flag, so a
 * writer may append a whole document and check `oom` once at the end.
 */
#ifndef DS4_BUF_H
#define DS4_BUF_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_buf {
    char *p;    /* len bytes + a NUL once anything was appended; ds4_free via ds4_buf_free */
    size_t len; /* bytes, without the NUL */
    size_t cap; /* bytes allocated */
    bool oom;   /* an append failed (sticky until ds4_buf_clear / ds4_buf_free) */
} ds4_buf_t;

bool ds4_buf_put(ds4_buf_t *b, const void *data, size_t n);
bool ds4_buf_str(ds4_buf_t *b, const char *s);
__attribute__((format(printf, 2, 3))) bool ds4_buf_printf(ds4_buf_t *b, const char *fmt, ...);
/* Empties the buffer (and clears oom), keeping its memory. */
void ds4_buf_clear(ds4_buf_t *b);
/* Frees the memory; the buffer is empty (zeroed) again. */
void ds4_buf_free(ds4_buf_t *b);

#ifdef __cplusplus
}
#endif
#endif /* DS4_BUF_H */
