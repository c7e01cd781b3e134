#include "ds4/diag.h"
#include "ds4/alloc.h"
#include "ds4/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void ds4_diag_init(ds4_diag_t *diag)
{
    memset(diag, 0, sizeof(*diag));
}

void ds4_diag_free(ds4_diag_t *diag)
{
    for (size_t i = 0; i < diag->count; i++)
        ds4_free(diag->items[i]);
    ds4_free(diag->items);
    memset(diag, 0, sizeof(*diag));
}

void ds4_diag_addf(ds4_diag_t *diag, const char *path, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    if (diag->count == diag->cap) {
        size_t cap = diag->cap == 0 ? 8 : diag->cap * 2;
        char **items = ds4_realloc_array(diag->items, cap, sizeof(*items));
        if (items == NULL) {
            diag->oom = true;
            return;
        }
        diag->items = items;
        diag->cap = cap;
    }
    size_t len = strlen(msg) + (path != NULL ? strlen(path) : 0) + 3;
    char *item = ds4_malloc(len);
    if (item == NULL) {
        diag->oom = true;
        return;
    }
    if (path != NULL && path[0] != '\0')
        snprintf(item, len, "%s: %s", path, msg);
    else
        snprintf(item, len, "%s", msg);
    diag->items[diag->count++] = item;
}

bool ds4_diag_contains(const ds4_diag_t *diag, const char *needle)
{
    for (size_t i = 0; i < diag->count; i++) {
        if (strstr(diag->items[i], needle) != NULL)
            return true;
    }
    return false;
}

char *ds4_diag_join(const ds4_diag_t *diag, const char *sep)
{
    size_t seplen = strlen(sep);
    size_t total = 1;
    for (size_t i = 0; i < diag->count; i++)
        total += strlen(diag->items[i]) + seplen;
    char *out = ds4_malloc(total);
    if (out == NULL)
        return NULL;
    char *p = out;
    for (size_t i = 0; i < diag->count; i++) {
        if (i > 0) {
            memcpy(p, sep, seplen);
            p += seplen;
        }
        size_t len = strlen(diag->items[i]);
        memcpy(p, diag->items[i], len);
        p += len;
    }
    *p = '\0';
    return out;
}

void ds4_diag_log(const ds4_diag_t *diag, const char *what)
{
    for (size_t i = 0; i < diag->count; i++)
        ds4_log_error("%s: %s", what, diag->items[i]);
    if (diag->oom)
        ds4_log_error("%s: further problems not recorded (out of memory)", what);
}
