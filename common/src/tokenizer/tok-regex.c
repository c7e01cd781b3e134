/*
 * tok-regex.c - the pre-tokenizer section of tokenizer.json: Split / ByteLevel steps, and the
 * rewriting of their Oniguruma regexes into PCRE2 patterns with Oniguruma's meaning (\s \d \w
 * \h, Unicode 16 property tables via tok-unicode-delta.h), compiled with JIT.
 */
#include "tok-internal.h"
#include "tok-unicode-delta.h"

#include "ds4/alloc.h"
#include "ds4/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Oniguruma's Unicode \s is the White_Space property; PCRE2's also has U+180E. */
#define ONIG_SPACE_ITEMS "\\t\\n\\x{0b}\\f\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}" \
                         "\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
#define ONIG_WORD_ITEMS "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = DS4_MAX(b->cap * 2, b->n + n + 64);
        char *p = ds4_realloc_array(b->p, cap, 1);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(sbuf_t *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* Returns the PCRE2 pattern (ds4_free) or NULL with a problem recorded. */
static char *translate_regex(ds4__tok_load_ctx_t *c, const char *path, const char *re, bool widen,
                             bool *widened)
{
    sbuf_t b = {0};
    bool in_class = false;
    size_t n = strlen(re);
    for (size_t i = 0; i < n; i++) {
        char ch = re[i];
        if (ch == '\\' && i + 1 < n) {
            char e = re[i + 1];
            const char *outside = NULL, *inside = NULL;
            switch (e) {
            case 's': outside = "[" ONIG_SPACE_ITEMS "]"; inside = ONIG_SPACE_ITEMS; break;
            case 'S': outside = "[^" ONIG_SPACE_ITEMS "]"; break;
            case 'd': outside = inside = "\\p{Nd}"; break;
            case 'D': outside = inside = "\\P{Nd}"; break;
            case 'w': outside = "[" ONIG_WORD_ITEMS "]"; inside = ONIG_WORD_ITEMS; break;
            case 'W': outside = "[^" ONIG_WORD_ITEMS "]"; break;
            case 'h': outside = "[0-9a-fA-F]"; inside = "0-9a-fA-F"; break;
            case 'H': outside = "[^0-9a-fA-F]"; break;
            default: break;
            }
            if (e == 'p' || e == 'P') {
                /* \pX or \p{X}: Unicode property, widened to Oniguruma's Unicode version */
                size_t name_at = i + 2, name_len = 1;
                if (name_at < n && re[name_at] == '{') {
                    const char *close = strchr(re + name_at, '}');
                    if (close == NULL) {
                        ds4__tok_invalid(c, path, "unterminated \\%c{", e);
                        ds4_free(b.p);
                        return NULL;
                    }
                    name_at++;
                    name_len = (size_t)(close - (re + name_at));
                }
                size_t end = name_at + name_len + (re[i + 2] == '{' ? 1 : 0);
                const ds4_tok_unicode_delta_t *d = NULL;
                for (size_t k = 0; k < DS4_ARRAY_LEN(DS4_TOK_UNICODE_DELTA); k++)
                    if (strlen(DS4_TOK_UNICODE_DELTA[k].prop) == name_len &&
                        memcmp(DS4_TOK_UNICODE_DELTA[k].prop, re + name_at, name_len) == 0)
                        d = &DS4_TOK_UNICODE_DELTA[k];
                if (d == NULL || d->add[0] == '\0' || !widen) {
                    sb_put(&b, re + i, end - i); /* same in both engines (or not covered) */
                } else if ((*widened = true, d->remove[0] != '\0')) {
                    ds4__tok_unsupported(c, path, "\\p{%s} (PCRE2 and Oniguruma disagree beyond additions)",
                                d->prop);
                    ds4_free(b.p);
                    return NULL;
                } else if (e == 'p') {
                    if (!in_class)
                        sb_puts(&b, "[");
                    sb_puts(&b, "\\p{");
                    sb_puts(&b, d->prop);
                    sb_puts(&b, "}");
                    sb_puts(&b, d->add);
                    if (!in_class)
                        sb_puts(&b, "]");
                } else if (!in_class) {
                    sb_puts(&b, "[^\\p{");
                    sb_puts(&b, d->prop);
                    sb_puts(&b, "}");
                    sb_puts(&b, d->add);
                    sb_puts(&b, "]");
                } else {
                    ds4__tok_unsupported(c, path, "\\P{%s} inside a character class", d->prop);
                    ds4_free(b.p);
                    return NULL;
                }
                i = end - 1;
                continue;
            }
            if (outside != NULL || inside != NULL) {
                const char *rep = in_class ? inside : outside;
                if (rep == NULL) {
                    ds4__tok_unsupported(c, path, "\\%c inside a character class", e);
                    ds4_free(b.p);
                    return NULL;
                }
                sb_puts(&b, rep);
                i++;
                continue;
            }
            /* any other escape: copy backslash and the whole next code point */
            size_t clen = 1;
            unsigned char u = (unsigned char)e;
            if (u >= 0xF0)
                clen = 4;
            else if (u >= 0xE0)
                clen = 3;
            else if (u >= 0xC0)
                clen = 2;
            if (i + 1 + clen > n)
                clen = n - i - 1;
            sb_put(&b, re + i, 1 + clen);
            i += clen;
            continue;
        }
        if (!in_class && ch == '[') {
            in_class = true;
            sb_put(&b, re + i, 1);
            /* a ']' right after '[' or '[^' is a literal in both engines */
            if (i + 1 < n && re[i + 1] == '^') {
                sb_put(&b, re + i + 1, 1);
                i++;
            }
            if (i + 1 < n && re[i + 1] == ']') {
                sb_put(&b, re + i + 1, 1);
                i++;
            }
            continue;
        }
        if (in_class && ch == '[') {
            if (i + 1 < n && re[i + 1] == ':') {
                const char *end = strstr(re + i + 2, ":]");
                if (end != NULL) {
                    size_t len = (size_t)(end + 2 - (re + i));
                    sb_put(&b, re + i, len);
                    i += len - 1;
                    continue;
                }
            }
            ds4__tok_unsupported(c, path, "nested character class (Oniguruma set operations)");
            ds4_free(b.p);
            return NULL;
        }
        if (in_class && ch == '&' && i + 1 < n && re[i + 1] == '&') {
            ds4__tok_unsupported(c, path, "character class intersection &&");
            ds4_free(b.p);
            return NULL;
        }
        if (in_class && ch == ']')
            in_class = false;
        sb_put(&b, re + i, 1);
    }
    if (b.oom) {
        ds4_free(b.p);
        ds4__tok_invalid(c, path, "out of memory");
        return NULL;
    }
    if (b.p == NULL)
        b.p = ds4_strdup("");
    return b.p;
}

/* A String pattern: every ASCII non-alphanumeric escaped. */
static char *literal_regex(const char *s)
{
    sbuf_t b = {0};
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char u = (unsigned char)*p;
        if (u < 0x80 && !((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') ||
                          (u >= 'A' && u <= 'Z'))) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\x{%x}", u);
            sb_puts(&b, esc);
        } else {
            sb_put(&b, p, 1);
        }
    }
    if (b.oom) {
        ds4_free(b.p);
        return NULL;
    }
    return b.p != NULL ? b.p : ds4_strdup("");
}

static pcre2_code *compile_re(ds4__tok_load_ctx_t *c, const char *path, const char *pattern, bool *jit)
{
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        ds4__tok_invalid(c, path, "regex does not compile at offset %zu: %s", (size_t)off, (char *)msg);
        return NULL;
    }
    *jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    return re;
}

/* Parses "\x{a}-\x{b}\x{c}..." items of tok-unicode-delta.h into the bitmap. */
static void bitmap_add_items(uint8_t *bm, const char *items)
{
    const char *p = items;
    while ((p = strstr(p, "x{")) != NULL) {
        unsigned long a = strtoul(p + 2, NULL, 16), b = a;
        const char *close = strchr(p, '}');
        if (close == NULL)
            break;
        p = close + 1;
        if (close[1] == '-' && strncmp(close + 2, "\\x{", 3) == 0) {
            b = strtoul(close + 5, NULL, 16);
            const char *close2 = strchr(close + 5, '}');
            if (close2 == NULL)
                break;
            p = close2 + 1;
        }
        for (unsigned long cp = a; cp <= b && cp < 0x110000; cp++)
            bm[cp >> 3] |= (uint8_t)(1u << (cp & 7));
    }
}

/* Compiles one Isolated split from an Oniguruma pattern (or a literal when is_literal). */
static void add_split(ds4__tok_load_ctx_t *c, ds4_tokenizer_h *t, const char *path, const char *onig,
                      bool is_literal)
{
    if (t->n_splits == DS4_TOK_MAX_SPLITS) {
        ds4__tok_unsupported(c, path, "more than %d Split pre-tokenizers", DS4_TOK_MAX_SPLITS);
        return;
    }
    bool widened = false, dummy = false;
    char *wide = is_literal ? literal_regex(onig) : translate_regex(c, path, onig, true,
                                                                     &widened);
    if (wide == NULL)
        return;
    char *narrow = widened ? translate_regex(c, path, onig, false, &dummy) : NULL;
    int k = t->n_splits;
    t->split_re[k] = compile_re(c, path, wide, &t->split_jit[k]);
    if (t->split_re[k] != NULL && narrow != NULL) {
        t->split_re_narrow[k] = compile_re(c, path, narrow, &t->split_jit_narrow[k]);
        if (t->delta_bitmap == NULL) {
            t->delta_bitmap = ds4_calloc(0x110000 / 8, 1);
            if (t->delta_bitmap != NULL)
                for (size_t i = 0; i < DS4_ARRAY_LEN(DS4_TOK_UNICODE_DELTA); i++)
                    bitmap_add_items(t->delta_bitmap, DS4_TOK_UNICODE_DELTA[i].add);
        }
    }
    if (t->split_re[k] != NULL && (narrow == NULL || t->split_re_narrow[k] != NULL))
        t->n_splits++;
    else if (t->split_re[k] != NULL)
        pcre2_code_free(t->split_re[k]);
    ds4_free(wide);
    ds4_free(narrow);
}

static const char *GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static void parse_pretok_one(ds4__tok_load_ctx_t *c, ds4_tokenizer_h *t, const json_t *pt,
                             const char *path)
{
    char p[128];
    const char *type = NULL;
    if (!json_is_object(pt)) {
        ds4__tok_invalid(c, path, "expected an object");
        return;
    }
    if (!ds4_json_get_str(pt, path, "type", true, &type, c->diag)) {
        c->n_invalid++;
        return;
    }
    if (strcmp(type, "Split") == 0) {
        const char *behavior = NULL;
        bool invert = false;
        if (ds4_json_get_str(pt, path, "behavior", true, &behavior, c->diag) &&
            strcmp(behavior, "Isolated") != 0)
            ds4__tok_unsupported(c, ds4_json_path(p, sizeof(p), path, "behavior"),
                        "Split behavior \"%s\" (only Isolated)", behavior);
        else if (behavior == NULL)
            c->n_invalid++;
        ds4_json_get_bool(pt, path, "invert", false, &invert, c->diag);
        if (invert)
            ds4__tok_unsupported(c, ds4_json_path(p, sizeof(p), path, "invert"), "Split invert=true");
        const json_t *pat = json_object_get(pt, "pattern");
        ds4_json_path(p, sizeof(p), path, "pattern");
        const char *rx = NULL, *str = NULL;
        if (json_is_object(pat) && json_is_string(json_object_get(pat, "Regex")))
            rx = json_string_value(json_object_get(pat, "Regex"));
        else if (json_is_object(pat) && json_is_string(json_object_get(pat, "String")))
            str = json_string_value(json_object_get(pat, "String"));
        else {
            ds4__tok_invalid(c, p, "expected {\"Regex\": string} or {\"String\": string}");
            return;
        }
        add_split(c, t, p, rx != NULL ? rx : str, rx == NULL);
    } else if (strcmp(type, "ByteLevel") == 0) {
        bool prefix = false, use_regex = true;
        ds4_json_get_bool(pt, path, "add_prefix_space", false, &prefix, c->diag);
        ds4_json_get_bool(pt, path, "use_regex", false, &use_regex, c->diag);
        if (prefix)
            ds4__tok_unsupported(c, ds4_json_path(p, sizeof(p), path, "add_prefix_space"),
                        "ByteLevel add_prefix_space=true");
        if (use_regex)
            add_split(c, t, path, GPT2_PATTERN, false);
    } else {
        ds4__tok_unsupported(c, ds4_json_path(p, sizeof(p), path, "type"), "pre_tokenizer \"%s\"",
                    type);
    }
}

void ds4__tok_parse_pretok(ds4__tok_load_ctx_t *c, ds4_tokenizer_h *t, const json_t *root)
{
    const json_t *pt = json_object_get(root, "pre_tokenizer");
    if (pt == NULL || json_is_null(pt)) {
        ds4__tok_unsupported(c, "pre_tokenizer", "null (a byte-level BPE needs ByteLevel)");
        return;
    }
    const char *type = json_is_object(pt) ? json_string_value(json_object_get(pt, "type")) : NULL;
    if (type != NULL && strcmp(type, "Sequence") == 0) {
        const json_t *list = ds4_json_get_typed(pt, "pre_tokenizer", "pretokenizers", true,
                                                JSON_ARRAY, c->diag);
        if (list == NULL) {
            c->n_invalid++;
            return;
        }
        size_t i;
        const json_t *item;
        char p[128];
        bool saw_byte_level = false;
        json_array_foreach(list, i, item)
        {
            ds4_json_path_index(p, sizeof(p), "pre_tokenizer.pretokenizers", i);
            const char *it = json_string_value(json_object_get(item, "type"));
            if (it != NULL && strcmp(it, "ByteLevel") == 0)
                saw_byte_level = true;
            else if (saw_byte_level)
                ds4__tok_unsupported(c, p, "a pre-tokenizer after ByteLevel");
            parse_pretok_one(c, t, item, p);
        }
        if (!saw_byte_level)
            ds4__tok_unsupported(c, "pre_tokenizer", "no ByteLevel step (only byte-level BPE is built)");
    } else {
        parse_pretok_one(c, t, pt, "pre_tokenizer");
        if (type == NULL || strcmp(type, "ByteLevel") != 0)
            ds4__tok_unsupported(c, "pre_tokenizer", "no ByteLevel step (only byte-level BPE is built)");
    }
}
