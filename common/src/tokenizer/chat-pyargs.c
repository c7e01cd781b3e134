/*
 * chat-pyargs.c - a tool call's `arguments` string read the way the official encoder reads it:
 * Python's json.loads, then json.dumps(ensure_ascii=False) of every non-string value. Python
 * semantics that a generic JSON library does not share are kept: integers of any size printed
 * as written (-0 as 0), floats in repr form (1e400 → Infinity), NaN / Infinity literals,
 * repeated keys keeping the first position and the last value.
 */
#include "chat-internal.h"

#include "ds4/alloc.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 500 /* deeper nesting: Python raises RecursionError (not JSON for the encoder) */

typedef struct rd {
    const char *p, *end;
    int depth;
    bool surrogate; /* a lone UTF-16 surrogate was decoded (not representable in UTF-8) */
} rd_t;

static void ws(rd_t *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static bool lit(rd_t *r, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, s, n) != 0)
        return false;
    r->p += n;
    return true;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static void put_cp(ds4_str_t *o, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    ds4__str_put(o, b, n);
}

/* A JSON string (r->p at '"') decoded into o (strict: no raw control characters). */
static bool read_string(rd_t *r, ds4_str_t *o)
{
    r->p++;
    for (;;) {
        const char *run = r->p;
        while (r->p < r->end && *r->p != '"' && *r->p != '\\' && (unsigned char)*r->p >= 0x20)
            r->p++;
        ds4__str_put(o, run, (size_t)(r->p - run));
        if (r->p >= r->end || (unsigned char)*r->p < 0x20)
            return false;
        if (*r->p == '"') {
            r->p++;
            return true;
        }
        if (r->end - r->p < 2)
            return false;
        char e = r->p[1];
        r->p += 2;
        const char *simple = NULL;
        switch (e) {
        case '"': simple = "\""; break;
        case '\\': simple = "\\"; break;
        case '/': simple = "/"; break;
        case 'b': simple = "\b"; break;
        case 'f': simple = "\f"; break;
        case 'n': simple = "\n"; break;
        case 'r': simple = "\r"; break;
        case 't': simple = "\t"; break;
        case 'u': break;
        default: return false;
        }
        if (simple != NULL) {
            ds4__str_put(o, simple, 1);
            continue;
        }
        if (r->end - r->p < 4)
            return false;
        int cp = hex4(r->p);
        if (cp < 0)
            return false;
        r->p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF && r->end - r->p >= 6 && r->p[0] == '\\' &&
            r->p[1] == 'u') {
            int lo = hex4(r->p + 2);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                r->p += 6;
                put_cp(o, 0x10000 + (((uint32_t)cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00));
                continue;
            }
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            r->surrogate = true;
            return false;
        }
        put_cp(o, (uint32_t)cp);
    }
}

static bool value(rd_t *r, ds4_str_t *o);

typedef struct entry {
    ds4_str_t key, val;
} entry_t;

static void free_entries(entry_t *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ds4__str_free(&e[i].key);
        ds4__str_free(&e[i].val);
    }
    ds4_free(e);
}

/* Object members with Python dict semantics; *out / *n_out own the entries. */
static bool members(rd_t *r, entry_t **out, size_t *n_out)
{
    entry_t *e = NULL;
    size_t n = 0, cap = 0;
    r->p++; /* '{' */
    ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        *out = NULL;
        *n_out = 0;
        return true;
    }
    for (;;) {
        ws(r);
        ds4_str_t k = {0}, v = {0};
        bool ok = r->p < r->end && *r->p == '"' && read_string(r, &k);
        ws(r);
        ok = ok && r->p < r->end && *r->p == ':';
        if (ok) {
            r->p++;
            ok = value(r, &v) && !k.oom && !v.oom;
        }
        if (!ok) {
            ds4__str_free(&k);
            ds4__str_free(&v);
            free_entries(e, n);
            return false;
        }
        if (k.p == NULL)
            ds4__str_put(&k, "", 0);
        size_t i = 0;
        while (i < n && !(e[i].key.n == k.n && memcmp(e[i].key.p, k.p, k.n) == 0))
            i++;
        if (i < n) { /* a repeated key: first position, last value */
            ds4__str_free(&e[i].val);
            e[i].val = v;
            ds4__str_free(&k);
        } else {
            if (n == cap) {
                cap = cap == 0 ? 8 : cap * 2;
                entry_t *ne = ds4_realloc_array(e, cap, sizeof(*ne));
                if (ne == NULL) {
                    ds4__str_free(&k);
                    ds4__str_free(&v);
                    free_entries(e, n);
                    return false;
                }
                e = ne;
            }
            e[n].key = k;
            e[n].val = v;
            n++;
        }
        ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == '}') {
            r->p++;
            *out = e;
            *n_out = n;
            return true;
        }
        free_entries(e, n);
        return false;
    }
}

static bool number(rd_t *r, ds4_str_t *o)
{
    const char *s = r->p;
    if (r->p < r->end && *r->p == '-')
        r->p++;
    if (r->p >= r->end || *r->p < '0' || *r->p > '9')
        return false;
    if (*r->p == '0')
        r->p++;
    else
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            r->p++;
    const char *int_end = r->p;
    bool is_float = false;
    if (r->end - r->p >= 2 && *r->p == '.' && r->p[1] >= '0' && r->p[1] <= '9') {
        is_float = true;
        r->p++;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            r->p++;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        const char *q = r->p + 1;
        if (q < r->end && (*q == '+' || *q == '-'))
            q++;
        if (q < r->end && *q >= '0' && *q <= '9') {
            is_float = true;
            while (q < r->end && *q >= '0' && *q <= '9')
                q++;
            r->p = q;
        }
    }
    if (!is_float) {
        /* Python int: printed exactly as written, except that -0 is 0 */
        if (int_end - s == 2 && s[0] == '-' && s[1] == '0')
            ds4__str_put(o, "0", 1);
        else
            ds4__str_put(o, s, (size_t)(int_end - s));
        return true;
    }
    char buf[512];
    size_t n = (size_t)(r->p - s);
    double d;
    if (n < sizeof(buf)) {
        memcpy(buf, s, n);
        buf[n] = '\0';
        d = strtod(buf, NULL);
    } else {
        char *big = ds4_strndup(s, n);
        if (big == NULL)
            return false;
        d = strtod(big, NULL);
        ds4_free(big);
    }
    ds4__pyjson_float(o, d);
    return true;
}

static bool value(rd_t *r, ds4_str_t *o)
{
    ws(r);
    if (r->p >= r->end)
        return false;
    if (++r->depth > MAX_DEPTH)
        return false;
    bool ok = true;
    char c = *r->p;
    if (c == '"') {
        ds4_str_t s = {0};
        ok = read_string(r, &s);
        if (ok)
            ds4__pyjson_string(o, s.p != NULL ? s.p : "", s.n);
        ds4__str_free(&s);
    } else if (c == '{') {
        entry_t *e = NULL;
        size_t n = 0;
        ok = members(r, &e, &n);
        if (ok) {
            ds4__str_put(o, "{", 1);
            for (size_t i = 0; i < n; i++) {
                if (i > 0)
                    ds4__str_put(o, ", ", 2);
                ds4__pyjson_string(o, e[i].key.p, e[i].key.n);
                ds4__str_put(o, ": ", 2);
                ds4__str_put(o, e[i].val.p != NULL ? e[i].val.p : "", e[i].val.n);
            }
            ds4__str_put(o, "}", 1);
            free_entries(e, n);
        }
    } else if (c == '[') {
        r->p++;
        ds4__str_put(o, "[", 1);
        ws(r);
        if (r->p < r->end && *r->p == ']') {
            r->p++;
        } else {
            for (bool first = true;; first = false) {
                if (!first)
                    ds4__str_put(o, ", ", 2);
                if (!value(r, o)) {
                    ok = false;
                    break;
                }
                ws(r);
                if (r->p < r->end && *r->p == ',') {
                    r->p++;
                    continue;
                }
                if (r->p < r->end && *r->p == ']') {
                    r->p++;
                    break;
                }
                ok = false;
                break;
            }
        }
        ds4__str_put(o, "]", 1);
    } else if (lit(r, "true")) {
        ds4__str_puts(o, "true");
    } else if (lit(r, "false")) {
        ds4__str_puts(o, "false");
    } else if (lit(r, "null")) {
        ds4__str_puts(o, "null");
    } else if (lit(r, "NaN")) {
        ds4__str_puts(o, "NaN");
    } else if (lit(r, "Infinity")) {
        ds4__str_puts(o, "Infinity");
    } else if (lit(r, "-Infinity")) {
        ds4__str_puts(o, "-Infinity");
    } else {
        ok = number(r, o);
    }
    r->depth--;
    return ok;
}

int ds4__pyargs_parse(const char *text, size_t len, ds4__pyarg_t **out, size_t *n_out)
{
    rd_t r = {.p = text, .end = text + len};
    ws(&r);
    if (r.p >= r.end)
        return 0;
    if (*r.p != '{') {
        /* valid JSON but not an object, or not JSON at all */
        ds4_str_t tmp = {0};
        bool ok = value(&r, &tmp);
        ws(&r);
        ds4__str_free(&tmp);
        if (r.surrogate)
            return -3;
        return ok && r.p == r.end ? -1 : 0;
    }
    entry_t *e = NULL;
    size_t n = 0;
    bool ok = members(&r, &e, &n);
    ws(&r);
    if (!ok || r.p != r.end) {
        if (ok)
            free_entries(e, n);
        return r.surrogate ? -3 : 0;
    }
    /* second pass over the members to tell string values (kept raw) from the rest */
    ds4__pyarg_t *a = ds4_calloc(n + 1, sizeof(*a));
    if (a == NULL) {
        free_entries(e, n);
        return -2;
    }
    for (size_t i = 0; i < n; i++) {
        a[i].key = e[i].key.p != NULL ? e[i].key.p : ds4_strdup("");
        a[i].key_len = e[i].key.n;
        e[i].key.p = NULL;
        a[i].value = e[i].val.p;
        a[i].value_len = e[i].val.n;
        e[i].val.p = NULL;
    }
    free_entries(e, n);
    /* string values were serialised with quotes; decode them back to raw text */
    for (size_t i = 0; i < n; i++) {
        if (a[i].value_len >= 2 && a[i].value[0] == '"') {
            rd_t rs = {.p = a[i].value, .end = a[i].value + a[i].value_len};
            ds4_str_t raw = {0};
            if (!read_string(&rs, &raw) || raw.oom) {
                ds4__str_free(&raw);
                ds4__pyargs_free(a, n);
                return -2;
            }
            ds4_free(a[i].value);
            a[i].value = raw.p != NULL ? raw.p : ds4_strdup("");
            a[i].value_len = raw.n;
            a[i].is_string = true;
        }
    }
    *out = a;
    *n_out = n;
    return 1;
}

void ds4__pyargs_free(ds4__pyarg_t *a, size_t n)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        ds4_free(a[i].key);
        ds4_free(a[i].value);
    }
    ds4_free(a);
}
