/*
 * tok-json-scan.c - see tok-json-scan.h. A small, strict JSON reader for exactly two shapes:
 * an object of string → integer (vocab) and an array of strings or string pairs (merges).
 */
#include "tok-json-scan.h"

#include "ds4/alloc.h"
#include "ds4/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct scan {
    char *p, *end, *base;
    const char *err; /* first problem, NULL while fine */
    size_t err_off;
} scan_t;

static void fail(scan_t *s, const char *msg)
{
    if (s->err == NULL) {
        s->err = msg;
        s->err_off = (size_t)(s->p - s->base);
    }
}

static void ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static bool arena_reserve(ds4_tok_raw_t *r, size_t n)
{
    if (r->arena_used + n <= r->arena_cap)
        return true;
    size_t cap = DS4_MAX(r->arena_cap * 2, r->arena_used + n + 4096);
    char *a = ds4_realloc_array(r->arena, cap, 1);
    if (a == NULL) {
        r->oom = true;
        return false;
    }
    r->arena = a;
    r->arena_cap = cap;
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool read_hex4(scan_t *s, uint32_t *out)
{
    if (s->end - s->p < 4) {
        fail(s, "truncated \\u escape");
        return false;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s->p[i]);
        if (h < 0) {
            fail(s, "invalid \\u escape");
            return false;
        }
        v = v * 16 + (uint32_t)h;
    }
    s->p += 4;
    *out = v;
    return true;
}

/* Decodes the string at s->p (a '"') into the arena. */
static bool read_string(scan_t *s, ds4_tok_raw_t *r, uint32_t *off, uint32_t *len)
{
    if (s->p >= s->end || *s->p != '"') {
        fail(s, "expected a string");
        return false;
    }
    s->p++;
    char *start = s->p;
    /* fast path: no escapes */
    while (s->p < s->end && *s->p != '"' && *s->p != '\\' && (unsigned char)*s->p >= 0x20)
        s->p++;
    size_t plain = (size_t)(s->p - start);
    if (!arena_reserve(r, plain + 8))
        return false;
    *off = (uint32_t)r->arena_used;
    memcpy(r->arena + r->arena_used, start, plain);
    r->arena_used += plain;
    for (;;) {
        if (s->p >= s->end) {
            fail(s, "unterminated string");
            return false;
        }
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            s->p++;
            break;
        }
        if (c < 0x20) {
            fail(s, "control character in a string");
            return false;
        }
        if (!arena_reserve(r, 8))
            return false;
        if (c != '\\') {
            r->arena[r->arena_used++] = (char)c;
            s->p++;
            continue;
        }
        if (s->p + 1 >= s->end) {
            fail(s, "truncated escape");
            return false;
        }
        char e = s->p[1];
        s->p += 2;
        char simple = 0;
        switch (e) {
        case '"': simple = '"'; break;
        case '\\': simple = '\\'; break;
        case '/': simple = '/'; break;
        case 'b': simple = '\b'; break;
        case 'f': simple = '\f'; break;
        case 'n': simple = '\n'; break;
        case 'r': simple = '\r'; break;
        case 't': simple = '\t'; break;
        case 'u': break;
        default:
            fail(s, "invalid escape");
            return false;
        }
        if (e != 'u') {
            r->arena[r->arena_used++] = simple;
            continue;
        }
        uint32_t cp;
        if (!read_hex4(s, &cp))
            return false;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u') {
                fail(s, "unpaired UTF-16 surrogate");
                return false;
            }
            s->p += 2;
            if (!read_hex4(s, &lo))
                return false;
            if (lo < 0xDC00 || lo > 0xDFFF) {
                fail(s, "unpaired UTF-16 surrogate");
                return false;
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail(s, "unpaired UTF-16 surrogate");
            return false;
        }
        char *o = r->arena + r->arena_used;
        if (cp < 0x80) {
            o[0] = (char)cp;
            r->arena_used += 1;
        } else if (cp < 0x800) {
            o[0] = (char)(0xC0 | (cp >> 6));
            o[1] = (char)(0x80 | (cp & 0x3F));
            r->arena_used += 2;
        } else if (cp < 0x10000) {
            o[0] = (char)(0xE0 | (cp >> 12));
            o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
            o[2] = (char)(0x80 | (cp & 0x3F));
            r->arena_used += 3;
        } else {
            o[0] = (char)(0xF0 | (cp >> 18));
            o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
            o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
            o[3] = (char)(0x80 | (cp & 0x3F));
            r->arena_used += 4;
        }
    }
    *len = (uint32_t)(r->arena_used - *off);
    if (!ds4_utf8_validate(r->arena + *off, *len, NULL)) {
        fail(s, "string is not valid UTF-8");
        return false;
    }
    if (!arena_reserve(r, 1))
        return false;
    r->arena[r->arena_used++] = '\0'; /* keep every string NUL-terminated */
    return true;
}

/* Skips any JSON value (structure only; jansson validates what it parses). */
static bool skip_value(scan_t *s)
{
    ws(s);
    if (s->p >= s->end) {
        fail(s, "expected a value");
        return false;
    }
    int depth = 0;
    do {
        if (s->p >= s->end) {
            fail(s, "unterminated value");
            return false;
        }
        char c = *s->p;
        if (c == '"') {
            s->p++;
            while (s->p < s->end && *s->p != '"')
                s->p += *s->p == '\\' ? 2 : 1;
            if (s->p >= s->end) {
                fail(s, "unterminated string");
                return false;
            }
            s->p++;
        } else if (c == '{' || c == '[') {
            depth++;
            s->p++;
        } else if (c == '}' || c == ']') {
            depth--;
            s->p++;
        } else if (depth == 0) {
            while (s->p < s->end && strchr(",}] \t\r\n", *s->p) == NULL)
                s->p++;
        } else {
            s->p++;
        }
    } while (depth > 0);
    return true;
}

static bool push_vocab(ds4_tok_raw_t *r, ds4_tok_vocab_ent_t e)
{
    if (r->n_vocab == r->cap_vocab) {
        size_t cap = r->cap_vocab == 0 ? 1024 : r->cap_vocab * 2;
        ds4_tok_vocab_ent_t *v = ds4_realloc_array(r->vocab, cap, sizeof(*v));
        if (v == NULL) {
            r->oom = true;
            return false;
        }
        r->vocab = v;
        r->cap_vocab = cap;
    }
    r->vocab[r->n_vocab++] = e;
    return true;
}

static bool push_merge(ds4_tok_raw_t *r, ds4_tok_merge_ent_t e)
{
    if (r->n_merges == r->cap_merges) {
        size_t cap = r->cap_merges == 0 ? 1024 : r->cap_merges * 2;
        ds4_tok_merge_ent_t *m = ds4_realloc_array(r->merges, cap, sizeof(*m));
        if (m == NULL) {
            r->oom = true;
            return false;
        }
        r->merges = m;
        r->cap_merges = cap;
    }
    r->merges[r->n_merges++] = e;
    return true;
}

/* Splits a "left right" merge string (exactly one space, both halves non-empty). */
static ds4_tok_merge_ent_t split_merge(const ds4_tok_raw_t *r, uint32_t off, uint32_t len)
{
    ds4_tok_merge_ent_t m = {.a_off = off, .a_len = len, .ok = false};
    const char *s = r->arena + off;
    const char *sp = memchr(s, ' ', len);
    if (sp == NULL || sp == s || (uint32_t)(sp - s) + 1 >= len ||
        memchr(sp + 1, ' ', len - (uint32_t)(sp - s) - 1) != NULL)
        return m;
    m.a_len = (uint32_t)(sp - s);
    m.b_off = off + m.a_len + 1;
    m.b_len = len - m.a_len - 1;
    m.ok = true;
    return m;
}

static bool scan_vocab(scan_t *s, ds4_tok_raw_t *r)
{
    s->p++; /* '{' */
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return true;
    }
    for (;;) {
        ws(s);
        ds4_tok_vocab_ent_t e = {0};
        if (!read_string(s, r, &e.off, &e.len))
            return false;
        ws(s);
        if (s->p >= s->end || *s->p != ':') {
            fail(s, "expected ':'");
            return false;
        }
        s->p++;
        ws(s);
        char *num = s->p;
        bool neg = s->p < s->end && *s->p == '-';
        if (neg)
            s->p++;
        int64_t v = 0;
        int digits = 0;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9' && digits < 18) {
            v = v * 10 + (*s->p - '0');
            s->p++;
            digits++;
        }
        e.id = neg ? -v : v;
        e.id_ok = digits > 0 && (s->p >= s->end || strchr(",} \t\r\n", *s->p) != NULL);
        if (!e.id_ok) {
            s->p = num;
            if (!skip_value(s))
                return false;
        }
        if (!push_vocab(r, e))
            return false;
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            return true;
        }
        fail(s, "expected ',' or '}'");
        return false;
    }
}

static bool scan_merges(scan_t *s, ds4_tok_raw_t *r)
{
    s->p++; /* '[' */
    ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return true;
    }
    for (;;) {
        ws(s);
        ds4_tok_merge_ent_t m = {.ok = false};
        if (s->p < s->end && *s->p == '"') {
            uint32_t off, len;
            if (!read_string(s, r, &off, &len))
                return false;
            m = split_merge(r, off, len);
        } else if (s->p < s->end && *s->p == '[') {
            char *save = s->p;
            s->p++;
            ws(s);
            bool ok = s->p < s->end && *s->p == '"' && read_string(s, r, &m.a_off, &m.a_len);
            ws(s);
            ok = ok && s->p < s->end && *s->p == ',';
            if (ok) {
                s->p++;
                ws(s);
                ok = s->p < s->end && *s->p == '"' && read_string(s, r, &m.b_off, &m.b_len);
                ws(s);
                ok = ok && s->p < s->end && *s->p == ']';
            }
            if (s->err != NULL)
                return false;
            if (ok) {
                s->p++;
                m.ok = true;
            } else {
                s->p = save;
                if (!skip_value(s))
                    return false;
            }
        } else if (!skip_value(s)) {
            return false;
        }
        if (!push_merge(r, m))
            return false;
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == ']') {
            s->p++;
            return true;
        }
        fail(s, "expected ',' or ']'");
        return false;
    }
}

/* Replaces [start, end) by "{}" or "[]" and spaces, keeping newlines (line numbers). */
static void blank(char *start, char *end, const char *with)
{
    for (char *q = start; q < end; q++)
        if (*q != '\n')
            *q = ' ';
    start[0] = with[0];
    start[1] = with[1];
}

/* Compares the key string at s->p with `lit` (keys without escapes only) and skips it. */
static bool key_is(scan_t *s, const char *lit, bool *match)
{
    if (s->p >= s->end || *s->p != '"')
        return false;
    char *q = s->p + 1;
    while (q < s->end && *q != '"')
        q += *q == '\\' ? 2 : 1;
    if (q >= s->end)
        return false;
    size_t n = (size_t)(q - s->p - 1);
    *match = n == strlen(lit) && memcmp(s->p + 1, lit, n) == 0;
    s->p = q + 1;
    ws(s);
    if (s->p >= s->end || *s->p != ':')
        return false;
    s->p++;
    ws(s);
    return true;
}

ds4_status_t ds4__tok_scan(char *buf, size_t len, ds4_tok_raw_t *raw, ds4_diag_t *diag)
{
    scan_t s = {.p = buf, .end = buf + len, .base = buf};
    ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return DS4_OK; /* not an object: jansson reports it */
    s.p++;
    for (;;) {
        ws(&s);
        if (s.p < s.end && *s.p == '}')
            break;
        bool is_model = false;
        if (!key_is(&s, "model", &is_model))
            return DS4_OK;
        if (is_model && s.p < s.end && *s.p == '{') {
            s.p++;
            for (;;) {
                ws(&s);
                if (s.p < s.end && *s.p == '}') {
                    s.p++;
                    break;
                }
                bool is_vocab = false, is_merges = false;
                char *save = s.p;
                if (!key_is(&s, "vocab", &is_vocab))
                    return DS4_OK;
                s.p = save;
                key_is(&s, "merges", &is_merges);
                char *start = s.p;
                bool ok;
                if (is_vocab && !raw->have_vocab && s.p < s.end && *s.p == '{') {
                    ok = scan_vocab(&s, raw);
                    if (ok) {
                        blank(start, s.p, "{}");
                        raw->have_vocab = true;
                    }
                } else if (is_merges && !raw->have_merges && s.p < s.end && *s.p == '[') {
                    ok = scan_merges(&s, raw);
                    if (ok) {
                        blank(start, s.p, "[]");
                        raw->have_merges = true;
                    }
                } else {
                    ok = skip_value(&s);
                }
                if (raw->oom)
                    return DS4_ERR_NO_MEMORY;
                if (!ok) {
                    if (s.err != NULL && (is_vocab || is_merges)) {
                        ds4_diag_addf(diag, is_vocab ? "model.vocab" : "model.merges",
                                      "invalid JSON at byte offset %zu: %s", s.err_off, s.err);
                        return DS4_ERR_PARSE;
                    }
                    return DS4_OK;
                }
                ws(&s);
                if (s.p < s.end && *s.p == ',')
                    s.p++;
            }
        } else if (!skip_value(&s)) {
            return DS4_OK;
        }
        ws(&s);
        if (s.p < s.end && *s.p == ',')
            s.p++;
        else if (s.p < s.end && *s.p == '}')
            break;
        else
            return DS4_OK;
    }
    return DS4_OK;
}

static bool copy_str(ds4_tok_raw_t *r, const json_t *v, uint32_t *off, uint32_t *len)
{
    size_t n = json_string_length(v);
    if (!arena_reserve(r, n + 1))
        return false;
    *off = (uint32_t)r->arena_used;
    *len = (uint32_t)n;
    memcpy(r->arena + r->arena_used, json_string_value(v), n);
    r->arena_used += n;
    r->arena[r->arena_used++] = '\0';
    return true;
}

ds4_status_t ds4__tok_raw_from_json(ds4_tok_raw_t *r, const json_t *vocab, const json_t *merges)
{
    if (vocab != NULL && !r->have_vocab) {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)vocab, key, val)
        {
            ds4_tok_vocab_ent_t e = {.id_ok = json_is_integer(val)};
            json_t *k = json_string(key);
            bool ok = k != NULL && copy_str(r, k, &e.off, &e.len);
            json_decref(k);
            e.id = e.id_ok ? (int64_t)json_integer_value(val) : -1;
            if (!ok || !push_vocab(r, e))
                return DS4_ERR_NO_MEMORY;
        }
        r->have_vocab = true;
    }
    if (merges != NULL && !r->have_merges) {
        size_t i;
        const json_t *m;
        json_array_foreach(merges, i, m)
        {
            ds4_tok_merge_ent_t e = {.ok = false};
            if (json_is_string(m)) {
                uint32_t off, len;
                if (!copy_str(r, m, &off, &len))
                    return DS4_ERR_NO_MEMORY;
                e = split_merge(r, off, len);
            } else if (json_is_array(m) && json_array_size(m) == 2 &&
                       json_is_string(json_array_get(m, 0)) &&
                       json_is_string(json_array_get(m, 1))) {
                if (!copy_str(r, json_array_get(m, 0), &e.a_off, &e.a_len) ||
                    !copy_str(r, json_array_get(m, 1), &e.b_off, &e.b_len))
                    return DS4_ERR_NO_MEMORY;
                e.ok = true;
            }
            if (!push_merge(r, e))
                return DS4_ERR_NO_MEMORY;
        }
        r->have_merges = true;
    }
    return r->oom ? DS4_ERR_NO_MEMORY : DS4_OK;
}

void ds4__tok_raw_free(ds4_tok_raw_t *r)
{
    ds4_free(r->arena);
    ds4_free(r->vocab);
    ds4_free(r->merges);
    memset(r, 0, sizeof(*r));
}
