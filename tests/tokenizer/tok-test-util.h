/*
 * tok-test-util.h - helpers shared by the tokenizer tests: the tokenizer under test (the
 * embedded default shipped in models/tokenizer/) and JSON-lines fixture reading.
 */
#ifndef DS4_TOK_TEST_UTIL_H
#define DS4_TOK_TEST_UTIL_H

#include "ds4/alloc.h"
#include "ds4/tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

/* models/tokenizer/tokenizer.json of the source tree under test. Static buffer. */
static inline const char *tok_test_default_path(void)
{
    static char buf[4096];
    const char *src = getenv("DS4_SOURCE_DIR");
    snprintf(buf, sizeof(buf), "%s/models/tokenizer/tokenizer.json", src != NULL ? src : ".");
    return buf;
}

/* Reads a JSON-lines file into a JSON array (NULL on error, message printed). */
static inline json_t *tok_test_read_jsonl(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return NULL;
    }
    json_t *rows = json_array();
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    size_t lineno = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (n <= 1)
            continue;
        json_error_t err;
        json_t *row = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &err);
        if (row == NULL) {
            fprintf(stderr, "%s:%zu: %s\n", path, lineno, err.text);
            json_decref(rows);
            rows = NULL;
            break;
        }
        json_array_append_new(rows, row);
    }
    free(line);
    fclose(f);
    return rows;
}

#endif /* DS4_TOK_TEST_UTIL_H */
