/*
 * chat-pyjson.c - JSON written the way Python's json.dumps(ensure_ascii=False) writes it, so
 * tool schemas and arguments in prompts match the official encoder byte for byte.
 */
#include "chat-internal.h"

#include "ds4/alloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ds4__str_put(ds4_str_t *s, const char *p, size_t n)
{
    if (s->oom)
        return;
    if (s->n + n + 1 > s->cap) {
        size_t cap = DS4_MAX(s->cap * 2, s->n + n + 64);
        char *q = ds4_realloc_array(s->p, cap, 1);
        if (q == NULL) {
            s->oom = true;
            return;
        }
        s->p = q;
        s->cap = cap;
    }
    memcpy(s->p + s->n, p, n);
    s->n += n;
    s->p[s->n] = '\0';
}

void ds4__str_puts(ds4_str_t *s, const char *p)
{
    ds4__str_put(s, p, strlen(p));
}

void ds4__str_free(ds4_str_t *s)
{
    ds4_free(s->p);
    s->p = NULL;
    s->n = s->cap = 0;
}

void ds4__chat_diag(ds4_diag_t *diag, const char *path, const char *fmt, ...)
{
    if (diag == NULL)
        return;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ds4_diag_addf(diag, path, "%s", msg);
}

void ds4__pyjson_string(ds4_str_t *s, const char *p, size_t n)
{
    ds4__str_put(s, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        const char *esc = NULL;
        char ubuf[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(ubuf, sizeof(ubuf), "\\u%04x", c);
                esc = ubuf;
            }
            break;
        }
        if (esc != NULL) {
            ds4__str_put(s, p + run, i - run);
            ds4__str_puts(s, esc);
            run = i + 1;
        }
    }
    ds4__str_put(s, p + run, n - run);
    ds4__str_put(s, "\"", 1);
}

/* Python's repr(float): the shortest digits that round-trip, fixed for 1e-4 <= |v| < 1e16. */
void ds4__pyjson_float(ds4_str_t *s, double v)
{
    if (isnan(v)) {
        ds4__str_puts(s, "NaN");
        return;
    }
    if (isinf(v)) {
        ds4__str_puts(s, v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec - 1, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    /* buf = [-]d[.ddd]e[+-]XX */
    bool neg = buf[0] == '-';
    const char *m = buf + (neg ? 1 : 0);
    char digits[24];
    size_t nd = 0;
    const char *e = strchr(m, 'e');
    for (const char *q = m; q < e; q++)
        if (*q != '.')
            digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    int exp10 = atoi(e + 1);
    char out[64];
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 >= 0) {
            for (int k = 0; k <= exp10; k++)
                out[o++] = (size_t)k < nd ? digits[k] : '0';
            out[o++] = '.';
            if ((size_t)exp10 + 1 < nd)
                for (size_t k = (size_t)exp10 + 1; k < nd; k++)
                    out[o++] = digits[k];
            else
                out[o++] = '0';
        } else {
            out[o++] = '0';
            out[o++] = '.';
            for (int k = 0; k < -exp10 - 1; k++)
                out[o++] = '0';
            for (size_t k = 0; k < nd; k++)
                out[o++] = digits[k];
        }
        out[o] = '\0';
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (size_t k = 1; k < nd; k++)
                out[o++] = digits[k];
        }
        snprintf(out + o, sizeof(out) - o, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
    }
    ds4__str_puts(s, out);
}

void ds4__pyjson_dump(ds4_str_t *s, const json_t *v)
{
    char buf[32];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *val;
        bool first = true;
        ds4__str_put(s, "{", 1);
        json_object_foreach((json_t *)v, key, val)
        {
            if (!first)
                ds4__str_put(s, ", ", 2);
            first = false;
            ds4__pyjson_string(s, key, strlen(key));
            ds4__str_put(s, ": ", 2);
            ds4__pyjson_dump(s, val);
        }
        ds4__str_put(s, "}", 1);
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *val;
        ds4__str_put(s, "[", 1);
        json_array_foreach(v, i, val)
        {
            if (i > 0)
                ds4__str_put(s, ", ", 2);
            ds4__pyjson_dump(s, val);
        }
        ds4__str_put(s, "]", 1);
        break;
    }
    case JSON_STRING:
        ds4__pyjson_string(s, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(v));
        ds4__str_puts(s, buf);
        break;
    case JSON_REAL:
        ds4__pyjson_float(s, json_real_value(v));
        break;
    case JSON_TRUE: ds4__str_puts(s, "true"); break;
    case JSON_FALSE: ds4__str_puts(s, "false"); break;
    case JSON_NULL: ds4__str_puts(s, "null"); break;
    }
}

char *ds4_chat_json_dumps(const json_t *value, size_t *len)
{
    ds4_str_t s = {0};
    ds4__pyjson_dump(&s, value);
    if (s.oom || s.p == NULL) {
        ds4__str_free(&s);
        return NULL;
    }
    if (len != NULL)
        *len = s.n;
    return s.p;
}
