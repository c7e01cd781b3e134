/* Growable byte string (ds4/buf.h): capacity doubles, at least 64 bytes beyond the need. */
#include "ds4/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"

static bool reserve(ds4_buf_t *b, size_t n)
{
    if (b->oom || n > SIZE_MAX - b->len - 65) {
        b->oom = true;
        return false;
    }
    if (b->len + n + 1 <= b->cap)
        return true;
    size_t cap = b->cap * 2 > b->len + n + 64 ? b->cap * 2 : b->len + n + 64;
    char *grown = ds4_realloc_array(b->p, cap, 1);
    if (grown == NULL) {
        b->oom = true;
        return false;
    }
    b->p = grown;
    b->cap = cap;
    return true;
}

bool ds4_buf_put(ds4_buf_t *b, const void *data, size_t n)
{
    if (!reserve(b, n))
        return false;
    if (n > 0)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

bool ds4_buf_str(ds4_buf_t *b, const char *s)
{
    return ds4_buf_put(b, s, strlen(s));
}

bool ds4_buf_printf(ds4_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(b, (size_t)n))
        return false;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return true;
}

void ds4_buf_clear(ds4_buf_t *b)
{
    b->len = 0;
    b->oom = false;
    if (b->p != NULL)
        b->p[0] = '\0';
}

void ds4_buf_free(ds4_buf_t *b)
{
    ds4_free(b->p);
    memset(b, 0, sizeof(*b));
}
