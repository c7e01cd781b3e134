/*
 * chat-internal.h - a growable string used by the chat encoder, parser and Python-style JSON
 * writer (chat-*.c only).
 */
#ifndef DS4_CHAT_INTERNAL_H
#define DS4_CHAT_INTERNAL_H

#include "ds4/chat.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct ds4_str {
    char *p;   /* NUL-terminated when not NULL */
    size_t n;
    size_t cap;
    bool oom;  /* an append failed; the content is incomplete */
} ds4_str_t;

void ds4__str_put(ds4_str_t *s, const char *p, size_t n);
void ds4__str_puts(ds4_str_t *s, const char *p);
void ds4__str_free(ds4_str_t *s);

/* Appends Python's json.dumps(v, ensure_ascii=False). */
void ds4__pyjson_dump(ds4_str_t *s, const json_t *v);
/* Appends json.dumps of a UTF-8 string of n bytes. */
void ds4__pyjson_string(ds4_str_t *s, const char *p, size_t n);

/* Appends Python's repr of a float as json.dumps writes it (NaN, Infinity, 1e+16, 0.1). */
void ds4__pyjson_float(ds4_str_t *s, double v);

/* One parameter of a tool call's arguments: `value` is the raw text for a JSON string value
 * (is_string), else Python's json.dumps of the value. Owned strings. */
typedef struct ds4__pyarg {
    char *key;
    size_t key_len;
    bool is_string;
    char *value;
    size_t value_len;
} ds4__pyarg_t;

/*
 * Reads an arguments string as Python's json.loads would (chat-pyargs.c). Returns 1 with the
 * object's members (in order; a repeated key keeps its first position and last value), 0 when
 * the text is not JSON, -1 when it is JSON but not an object, -2 on allocation failure, -3 when
 * it holds a lone UTF-16 surrogate escape (valid for Python, not representable in UTF-8).
 */
int ds4__pyargs_parse(const char *text, size_t len, ds4__pyarg_t **out, size_t *n_out);
void ds4__pyargs_free(ds4__pyarg_t *a, size_t n);

/* Adds a problem to diag when diag is not NULL. */
void ds4__chat_diag(ds4_diag_t *diag, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* DS4_CHAT_INTERNAL_H */
