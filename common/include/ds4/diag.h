/*
 * ds4/diag.h - diagnostics: a list of problems, each with the path of what it is about.
 *
 * Parsers of configs, checkpoints and requests collect *all* problems before failing (fail
 * closed, but tell the user everything at once). Each entry reads "<path>: <message>", e.g.
 * "compress_ratios: has 61 entries, expected num_hidden_layers + 1 = 62".
 * A ds4_diag_t is a value type owned by its caller: init, add, read, free. Not thread-safe.
 */
#ifndef DS4_DIAG_H
#define DS4_DIAG_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_diag {
    char **items;  /* "<path>: <message>" strings, owned */
    size_t count;
    size_t cap;
    bool oom;      /* an entry could not be stored (memory); count may be short */
} ds4_diag_t;

void ds4_diag_init(ds4_diag_t *diag);
void ds4_diag_free(ds4_diag_t *diag);
/* Adds "<path>: <formatted message>" (path may be NULL or "" for a message with no path). */
void ds4_diag_addf(ds4_diag_t *diag, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* True when any entry contains `needle`. */
bool ds4_diag_contains(const ds4_diag_t *diag, const char *needle);
/* All entries joined with `sep` into a new string (ds4_free); NULL on allocation failure. */
char *ds4_diag_join(const ds4_diag_t *diag, const char *sep);
/* Logs every entry at error level, prefixed with `what`. */
void ds4_diag_log(const ds4_diag_t *diag, const char *what);

#ifdef __cplusplus
}
#endif
#endif /* DS4_DIAG_H */
