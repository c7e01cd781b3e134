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

/* Adds a problem to diag when diag is not NULL. */
void ds4__chat_diag(ds4_diag_t *diag, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* DS4_CHAT_INTERNAL_H */
