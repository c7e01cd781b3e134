/*
 * tok-load.c - reads a Hugging Face tokenizer.json into ds4's tables (tok-internal.h).
 * Every unsupported or invalid feature is reported with its JSON path; nothing is guessed.
 */
#include "tok-internal.h"
#include "tok-json-scan.h"
#include "tok-unicode-delta.h"

#include "ds4/alloc.h"
#include "ds4/json.h"
#include "ds4/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_ID ((int64_t)1 << 24) /* ids above this are certainly a broken file */

void ds4__tok_diag(ds4_diag_t *diag, const char *path, const char *fmt, ...)
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

/* Load context: collects problems, remembers whether any was "unsupported". */
typedef struct load_ctx {
    ds4_diag_t *diag;
    int n_invalid;
    int n_unsupported;
    uint16_t char_byte[512]; /* byte-level alphabet: code point → byte + 1 (0 = not in it) */
} load_ctx_t;

static void invalid(load_ctx_t *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void unsupported(load_ctx_t *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void invalid(load_ctx_t *c, const char *path, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->n_invalid++;
    ds4__tok_diag(c->diag, path, "%s", msg);
}

static void unsupported(load_ctx_t *c, const char *path, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->n_unsupported++;
    ds4__tok_diag(c->diag, path, "unsupported tokenizer feature: %s", msg);
}

/* GPT-2's byte-level alphabet: printable bytes map to themselves, the rest to U+0100.. */
static void build_byte_alphabet(load_ctx_t *c)
{
    memset(c->char_byte, 0, sizeof(c->char_byte));
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        int cp = printable ? b : 256 + n++;
        c->char_byte[cp] = (uint16_t)(b + 1);
    }
}

/* Decodes one code point of valid UTF-8 (JSON strings from jansson are valid). */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char b = s[0];
    if (b < 0x80 || n < 2) {
        *cp = b;
        return 1;
    }
    if ((b & 0xE0) == 0xC0) {
        *cp = ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if ((b & 0xF0) == 0xE0 && n >= 3) {
        *cp = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    if (n >= 4) {
        *cp = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
              ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        return 4;
    }
    *cp = b;
    return 1;
}

/*
 * What the ByteLevel decoder emits for a token string: each code point mapped back to its
 * byte when every code point is in the alphabet, else the string's own UTF-8 bytes. Writes at
 * most n bytes to out and returns the count.
 */
static size_t byte_level_decode(const load_ctx_t *c, const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += utf8_next((const unsigned char *)s + i, n - i, &cp);
        if (cp >= 512 || c->char_byte[cp] == 0) {
            memcpy(out, s, n);
            return n;
        }
        out[o++] = (char)(c->char_byte[cp] - 1);
    }
    return o;
}

/* ---- added-token trie ---- */

void ds4__tok_trie_free(ds4_tok_trie_t *trie)
{
    ds4_free(trie->nodes);
    memset(trie, 0, sizeof(*trie));
}

static ds4_status_t trie_insert(ds4_tok_trie_t *t, const char *s, size_t n, int32_t id,
                                int32_t *prev_id)
{
    if (t->nodes == NULL) {
        t->cap = 256;
        t->nodes = ds4_calloc(t->cap, sizeof(*t->nodes));
        if (t->nodes == NULL)
            return DS4_ERR_NO_MEMORY;
        t->nodes[0].id = -1;
        t->n_nodes = 1;
    }
    uint32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        uint32_t ch = t->nodes[cur].first_child;
        while (ch != 0 && t->nodes[ch].byte != b)
            ch = t->nodes[ch].next_sibling;
        if (ch == 0) {
            if (t->n_nodes == t->cap) {
                ds4_tok_trie_node_t *nn = ds4_realloc_array(t->nodes, t->cap * 2, sizeof(*nn));
                if (nn == NULL)
                    return DS4_ERR_NO_MEMORY;
                t->nodes = nn;
                t->cap *= 2;
            }
            ch = t->n_nodes++;
            t->nodes[ch] = (ds4_tok_trie_node_t){.first_child = 0,
                                                 .next_sibling = t->nodes[cur].first_child,
                                                 .id = -1,
                                                 .byte = b};
            t->nodes[cur].first_child = ch;
        }
        cur = ch;
    }
    *prev_id = t->nodes[cur].id;
    if (t->nodes[cur].id < 0)
        t->n_tokens++;
    t->nodes[cur].id = id;
    t->first_byte[(uint8_t)s[0] >> 3] |= (uint8_t)(1u << ((uint8_t)s[0] & 7));
    return DS4_OK;
}

bool ds4__tok_trie_longest(const ds4_tok_trie_t *t, const char *s, size_t n, int32_t *id,
                           size_t *len)
{
    uint32_t cur = 0;
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        uint32_t ch = t->nodes[cur].first_child;
        while (ch != 0 && t->nodes[ch].byte != b)
            ch = t->nodes[ch].next_sibling;
        if (ch == 0)
            break;
        cur = ch;
        if (t->nodes[cur].id >= 0) {
            *id = t->nodes[cur].id;
            *len = i + 1;
            found = true;
        }
    }
    return found;
}

static int32_t trie_exact(const ds4_tok_trie_t *t, const char *s, size_t n)
{
    if (t->nodes == NULL || n == 0)
        return -1;
    int32_t id;
    size_t len;
    if (ds4__tok_trie_longest(t, s, n, &id, &len) && len == n)
        return id;
    return -1;
}

/* ---- regex translation (Oniguruma syntax → PCRE2) ---- */

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
static char *translate_regex(load_ctx_t *c, const char *path, const char *re, bool widen,
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
                        invalid(c, path, "unterminated \\%c{", e);
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
                    unsupported(c, path, "\\p{%s} (PCRE2 and Oniguruma disagree beyond additions)",
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
                    unsupported(c, path, "\\P{%s} inside a character class", d->prop);
                    ds4_free(b.p);
                    return NULL;
                }
                i = end - 1;
                continue;
            }
            if (outside != NULL || inside != NULL) {
                const char *rep = in_class ? inside : outside;
                if (rep == NULL) {
                    unsupported(c, path, "\\%c inside a character class", e);
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
            unsupported(c, path, "nested character class (Oniguruma set operations)");
            ds4_free(b.p);
            return NULL;
        }
        if (in_class && ch == '&' && i + 1 < n && re[i + 1] == '&') {
            unsupported(c, path, "character class intersection &&");
            ds4_free(b.p);
            return NULL;
        }
        if (in_class && ch == ']')
            in_class = false;
        sb_put(&b, re + i, 1);
    }
    if (b.oom) {
        ds4_free(b.p);
        invalid(c, path, "out of memory");
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

static pcre2_code *compile_re(load_ctx_t *c, const char *path, const char *pattern, bool *jit)
{
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        invalid(c, path, "regex does not compile at offset %zu: %s", (size_t)off, (char *)msg);
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
static void add_split(load_ctx_t *c, ds4_tokenizer_h *t, const char *path, const char *onig,
                      bool is_literal)
{
    if (t->n_splits == DS4_TOK_MAX_SPLITS) {
        unsupported(c, path, "more than %d Split pre-tokenizers", DS4_TOK_MAX_SPLITS);
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

static void parse_pretok_one(load_ctx_t *c, ds4_tokenizer_h *t, const json_t *pt,
                             const char *path)
{
    char p[128];
    const char *type = NULL;
    if (!json_is_object(pt)) {
        invalid(c, path, "expected an object");
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
            unsupported(c, ds4_json_path(p, sizeof(p), path, "behavior"),
                        "Split behavior \"%s\" (only Isolated)", behavior);
        else if (behavior == NULL)
            c->n_invalid++;
        ds4_json_get_bool(pt, path, "invert", false, &invert, c->diag);
        if (invert)
            unsupported(c, ds4_json_path(p, sizeof(p), path, "invert"), "Split invert=true");
        const json_t *pat = json_object_get(pt, "pattern");
        ds4_json_path(p, sizeof(p), path, "pattern");
        const char *rx = NULL, *str = NULL;
        if (json_is_object(pat) && json_is_string(json_object_get(pat, "Regex")))
            rx = json_string_value(json_object_get(pat, "Regex"));
        else if (json_is_object(pat) && json_is_string(json_object_get(pat, "String")))
            str = json_string_value(json_object_get(pat, "String"));
        else {
            invalid(c, p, "expected {\"Regex\": string} or {\"String\": string}");
            return;
        }
        add_split(c, t, p, rx != NULL ? rx : str, rx == NULL);
    } else if (strcmp(type, "ByteLevel") == 0) {
        bool prefix = false, use_regex = true;
        ds4_json_get_bool(pt, path, "add_prefix_space", false, &prefix, c->diag);
        ds4_json_get_bool(pt, path, "use_regex", false, &use_regex, c->diag);
        if (prefix)
            unsupported(c, ds4_json_path(p, sizeof(p), path, "add_prefix_space"),
                        "ByteLevel add_prefix_space=true");
        if (use_regex)
            add_split(c, t, path, GPT2_PATTERN, false);
    } else {
        unsupported(c, ds4_json_path(p, sizeof(p), path, "type"), "pre_tokenizer \"%s\"",
                    type);
    }
}

static void parse_pretok(load_ctx_t *c, ds4_tokenizer_h *t, const json_t *root)
{
    const json_t *pt = json_object_get(root, "pre_tokenizer");
    if (pt == NULL || json_is_null(pt)) {
        unsupported(c, "pre_tokenizer", "null (a byte-level BPE needs ByteLevel)");
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
                unsupported(c, p, "a pre-tokenizer after ByteLevel");
            parse_pretok_one(c, t, item, p);
        }
        if (!saw_byte_level)
            unsupported(c, "pre_tokenizer", "no ByteLevel step (only byte-level BPE is built)");
    } else {
        parse_pretok_one(c, t, pt, "pre_tokenizer");
        if (type == NULL || strcmp(type, "ByteLevel") != 0)
            unsupported(c, "pre_tokenizer", "no ByteLevel step (only byte-level BPE is built)");
    }
}

static void parse_simple_parts(load_ctx_t *c, const json_t *root)
{
    const json_t *norm = json_object_get(root, "normalizer");
    if (norm != NULL && !json_is_null(norm)) {
        const char *type = json_string_value(json_object_get(norm, "type"));
        const json_t *list = json_object_get(norm, "normalizers");
        if (type == NULL || strcmp(type, "Sequence") != 0 || !json_is_array(list) ||
            json_array_size(list) != 0)
            unsupported(c, "normalizer", "normalizer %s (only null or an empty Sequence)",
                        type != NULL ? type : "of unknown type");
    }
    const json_t *dec = json_object_get(root, "decoder");
    const char *dtype = json_is_object(dec) ? json_string_value(json_object_get(dec, "type"))
                                            : NULL;
    if (dtype == NULL || strcmp(dtype, "ByteLevel") != 0)
        unsupported(c, "decoder", "decoder %s (only ByteLevel)",
                    dtype != NULL ? dtype : "missing or null");
    const json_t *post = json_object_get(root, "post_processor");
    if (post != NULL && !json_is_null(post)) {
        const char *ptype = json_string_value(json_object_get(post, "type"));
        if (ptype == NULL ||
            (strcmp(ptype, "ByteLevel") != 0 && strcmp(ptype, "TemplateProcessing") != 0))
            unsupported(c, "post_processor", "post_processor %s",
                        ptype != NULL ? ptype : "of unknown type");
    }
    const json_t *trunc = json_object_get(root, "truncation");
    if (trunc != NULL && !json_is_null(trunc))
        unsupported(c, "truncation", "truncation (must be null)");
    const json_t *pad = json_object_get(root, "padding");
    if (pad != NULL && !json_is_null(pad))
        unsupported(c, "padding", "padding (must be null)");
}

/* ---- vocab and merges ---- */

int32_t ds4__tok_vocab_find(const ds4_tokenizer_h *t, const char *s, size_t n)
{
    uint32_t i = ds4__tok_hash_bytes(s, n) & t->vocab_mask;
    for (;;) {
        uint32_t slot = t->vocab_slots[i];
        if (slot == 0)
            return -1;
        uint32_t id = slot - 1;
        uint32_t len = t->tok_off[id + 1] - t->tok_off[id];
        if (len == n && memcmp(t->tok_bytes + t->tok_off[id], s, n) == 0)
            return (int32_t)id;
        i = (i + 1) & t->vocab_mask;
    }
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

/* String → vocab id lookup over the raw (byte-level) vocab keys. A slot holds the key's hash
 * (high 32 bits) and entry index + 1 (low 32 bits; 0 = empty), so most misses never touch
 * the entries. */
typedef struct vocab_index {
    const ds4_tok_raw_t *raw;
    uint64_t *slots;
    uint32_t mask;
} vocab_index_t;

static int32_t vocab_lookup(const vocab_index_t *vi, const char *s, size_t n)
{
    uint32_t h = ds4__tok_hash_bytes(s, n);
    uint32_t i = h & vi->mask;
    for (;;) {
        uint64_t slot = vi->slots[i];
        if (slot == 0)
            return -1;
        if ((uint32_t)(slot >> 32) == h) {
            const ds4_tok_vocab_ent_t *e = &vi->raw->vocab[(uint32_t)slot - 1];
            if (e->len == n && memcmp(vi->raw->arena + e->off, s, n) == 0)
                return (int32_t)e->id;
        }
        i = (i + 1) & vi->mask;
    }
}

static ds4_status_t parse_merges(load_ctx_t *c, ds4_tokenizer_h *t, const ds4_tok_raw_t *raw,
                                 const vocab_index_t *vi)
{
    size_t n = raw->n_merges;
    t->merge_mask = pow2_at_least((uint64_t)n * 2 + 1) - 1;
    t->merge_keys = ds4_calloc((size_t)t->merge_mask + 1, sizeof(*t->merge_keys));
    t->merge_rank = ds4_malloc_array((size_t)t->merge_mask + 1, sizeof(*t->merge_rank));
    t->merge_new = ds4_malloc_array((size_t)t->merge_mask + 1, sizeof(*t->merge_new));
    if (t->merge_keys == NULL || t->merge_rank == NULL || t->merge_new == NULL)
        return DS4_ERR_NO_MEMORY;
    char path[96];
    char cat[1024];
    int reported = 0;
    for (size_t r = 0; r < n; r++) {
        const ds4_tok_merge_ent_t *m = &raw->merges[r];
        if (!m->ok) {
            ds4_json_path_index(path, sizeof(path), "model.merges", r);
            if (reported++ < 10)
                invalid(c, path, "expected \"left right\" or [left, right]");
            else
                c->n_invalid++;
            continue;
        }
        const char *a = raw->arena + m->a_off, *b = raw->arena + m->b_off;
        int32_t ia = vocab_lookup(vi, a, m->a_len);
        int32_t ib = ia >= 0 ? vocab_lookup(vi, b, m->b_len) : -1;
        int32_t inew = -1;
        bool fits = (size_t)m->a_len + m->b_len < sizeof(cat);
        if (ib >= 0 && fits) {
            memcpy(cat, a, m->a_len);
            memcpy(cat + m->a_len, b, m->b_len);
            cat[m->a_len + m->b_len] = '\0';
            inew = vocab_lookup(vi, cat, (size_t)m->a_len + m->b_len);
        }
        if (inew < 0) {
            ds4_json_path_index(path, sizeof(path), "model.merges", r);
            if (reported++ < 10)
                invalid(c, path, "%s token \"%.200s\" is not in model.vocab",
                        ia < 0 ? "left" : ib < 0 ? "right" : "merged",
                        ia < 0 ? a : ib < 0 ? b : fits ? cat : "(too long)");
            else
                c->n_invalid++;
            continue;
        }
        uint64_t key = (((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib) + 1;
        uint32_t i = (uint32_t)ds4__tok_mix64(key) & t->merge_mask;
        while (t->merge_keys[i] != 0 && t->merge_keys[i] != key)
            i = (i + 1) & t->merge_mask;
        /* a repeated pair keeps its last rank, as the Rust library's map does */
        if (t->merge_keys[i] == 0)
            t->n_merges++;
        t->merge_keys[i] = key;
        t->merge_rank[i] = (uint32_t)r;
        t->merge_new[i] = inew;
    }
    return DS4_OK;
}

static ds4_status_t parse_model(load_ctx_t *c, ds4_tokenizer_h *t, const json_t *root,
                                const json_t *added, ds4_tok_raw_t *raw)
{
    const json_t *model = ds4_json_get_typed(root, "", "model", true, JSON_OBJECT, c->diag);
    if (model == NULL) {
        c->n_invalid++;
        return DS4_OK;
    }
    const char *type = NULL;
    if (ds4_json_get_str(model, "model", "type", false, &type, c->diag) &&
        strcmp(type, "BPE") != 0) {
        unsupported(c, "model.type", "model type \"%s\" (only BPE)", type);
        return DS4_OK;
    }
    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout != NULL && !json_is_null(dropout))
        unsupported(c, "model.dropout", "BPE dropout");
    static const char *const null_keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < DS4_ARRAY_LEN(null_keys); i++) {
        const json_t *v = json_object_get(model, null_keys[i]);
        char p[96];
        if (v != NULL && !json_is_null(v) &&
            !(json_is_string(v) && json_string_length(v) == 0))
            unsupported(c, ds4_json_path(p, sizeof(p), "model", null_keys[i]), "BPE %s",
                        null_keys[i]);
    }
    bool flag = false;
    if (ds4_json_get_bool(model, "model", "byte_fallback", false, &flag, c->diag) && flag)
        unsupported(c, "model.byte_fallback", "BPE byte_fallback=true");
    flag = false;
    ds4_json_get_bool(model, "model", "ignore_merges", false, &flag, c->diag);
    t->ignore_merges = flag;

    /* vocab and merges: extracted by the scanner, or still in the document */
    const json_t *jv = raw->have_vocab ? NULL
                                       : ds4_json_get_typed(model, "model", "vocab", true,
                                                            JSON_OBJECT, c->diag);
    const json_t *jm = raw->have_merges ? NULL
                                        : ds4_json_get_typed(model, "model", "merges", true,
                                                             JSON_ARRAY, c->diag);
    if ((!raw->have_vocab && jv == NULL) || (!raw->have_merges && jm == NULL)) {
        c->n_invalid++;
        return DS4_OK;
    }
    ds4_status_t st = ds4__tok_raw_from_json(raw, jv, jm);
    if (st != DS4_OK)
        return st;

    /* ids: the vocab, then added tokens may extend the range */
    int64_t max_id = -1;
    int bad = 0;
    for (size_t k = 0; k < raw->n_vocab; k++) {
        const ds4_tok_vocab_ent_t *e = &raw->vocab[k];
        if (!e->id_ok || e->id < 0 || e->id >= MAX_ID) {
            if (bad++ < 10)
                invalid(c, "model.vocab", "token \"%.64s\": id must be an integer in [0, %lld)",
                        raw->arena + e->off, (long long)MAX_ID);
            else
                c->n_invalid++;
            continue;
        }
        max_id = DS4_MAX(max_id, e->id);
    }
    int64_t max_vocab_id = max_id;
    size_t i;
    const json_t *a;
    json_array_foreach(added, i, a)
    {
        const json_t *id = json_object_get(a, "id");
        if (json_is_integer(id) && json_integer_value(id) >= 0 && json_integer_value(id) < MAX_ID)
            max_id = DS4_MAX(max_id, (int64_t)json_integer_value(id));
    }
    if (bad > 0)
        return DS4_OK;

    /* string index of the vocab keys (duplicates are an error) */
    vocab_index_t vi = {.raw = raw};
    vi.mask = pow2_at_least((uint64_t)raw->n_vocab * 2 + 1) - 1;
    vi.slots = ds4_calloc((size_t)vi.mask + 1, sizeof(*vi.slots));
    t->n_vocab = (uint32_t)(max_vocab_id + 1);
    t->n_ids = (uint32_t)(max_id + 1);
    t->tok_off = ds4_calloc((size_t)t->n_ids + 1, sizeof(*t->tok_off));
    t->tok_flags = ds4_calloc(t->n_ids, 1);
    const char **src = ds4_calloc(t->n_ids, sizeof(*src));
    size_t *srclen = ds4_calloc(t->n_ids, sizeof(*srclen));
    st = DS4_ERR_NO_MEMORY;
    if (vi.slots == NULL || t->tok_off == NULL || t->tok_flags == NULL || src == NULL ||
        srclen == NULL)
        goto free_tmp;
    for (size_t k = 0; k < raw->n_vocab; k++) {
        const ds4_tok_vocab_ent_t *e = &raw->vocab[k];
        const char *key = raw->arena + e->off;
        uint32_t hash = ds4__tok_hash_bytes(key, e->len);
        uint32_t h = hash & vi.mask;
        bool dup = false;
        while (vi.slots[h] != 0) {
            const ds4_tok_vocab_ent_t *o = &raw->vocab[(uint32_t)vi.slots[h] - 1];
            if ((uint32_t)(vi.slots[h] >> 32) == hash && o->len == e->len &&
                memcmp(raw->arena + o->off, key, e->len) == 0) {
                dup = true;
                break;
            }
            h = (h + 1) & vi.mask;
        }
        if (dup) {
            invalid(c, "model.vocab", "token \"%.64s\" appears twice", key);
            continue;
        }
        vi.slots[h] = ((uint64_t)hash << 32) | ((uint32_t)k + 1);
        uint32_t id = (uint32_t)e->id;
        if (src[id] != NULL) {
            invalid(c, "model.vocab", "id %u is used by \"%.64s\" and \"%.64s\"", id, src[id],
                    key);
            continue;
        }
        src[id] = key;
        srclen[id] = e->len;
    }
    json_array_foreach(added, i, a)
    {
        const json_t *id = json_object_get(a, "id");
        const json_t *content = json_object_get(a, "content");
        if (!json_is_integer(id) || !json_is_string(content) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= MAX_ID)
            continue; /* reported by parse_added */
        uint32_t u = (uint32_t)json_integer_value(id);
        src[u] = json_string_value(content);
        srclen[u] = json_string_length(content);
    }
    size_t total = 0;
    for (uint32_t id = 0; id < t->n_ids; id++)
        total += srclen[id];
    t->tok_bytes = ds4_malloc(total + 1);
    if (t->tok_bytes == NULL)
        goto free_tmp;
    size_t off = 0;
    for (uint32_t id = 0; id < t->n_ids; id++) {
        t->tok_off[id] = (uint32_t)off;
        if (src[id] != NULL) {
            off += byte_level_decode(c, src[id], srclen[id], t->tok_bytes + off);
            t->tok_flags[id] |= DS4_TOK_F_VALID;
        }
    }
    t->tok_off[t->n_ids] = (uint32_t)off;

    /* raw-bytes lookup of model vocab tokens (first id wins for equal byte strings) */
    t->vocab_mask = pow2_at_least((uint64_t)t->n_vocab * 2 + 1) - 1;
    t->vocab_slots = ds4_calloc((size_t)t->vocab_mask + 1, sizeof(*t->vocab_slots));
    if (t->vocab_slots == NULL)
        goto free_tmp;
    for (size_t k = 0; k < raw->n_vocab; k++) {
        uint32_t id = (uint32_t)raw->vocab[k].id;
        const char *bytes = t->tok_bytes + t->tok_off[id];
        size_t n = t->tok_off[id + 1] - t->tok_off[id];
        uint32_t h = ds4__tok_hash_bytes(bytes, n) & t->vocab_mask;
        bool dup = false;
        while (t->vocab_slots[h] != 0) {
            uint32_t o = t->vocab_slots[h] - 1;
            if (o == id || (t->tok_off[o + 1] - t->tok_off[o] == n &&
                            memcmp(t->tok_bytes + t->tok_off[o], bytes, n) == 0)) {
                dup = true;
                break;
            }
            h = (h + 1) & t->vocab_mask;
        }
        if (!dup)
            t->vocab_slots[h] = id + 1;
    }

    /* byte-level alphabet: every byte needs its one-symbol token */
    uint16_t byte_cp[256];
    for (int k = 0; k < 512; k++)
        if (c->char_byte[k] != 0)
            byte_cp[c->char_byte[k] - 1] = (uint16_t)k;
    for (int b = 0; b < 256; b++) {
        char sym[4];
        int cp = byte_cp[b];
        size_t sl = 0;
        if (cp < 0x80) {
            sym[sl++] = (char)cp;
        } else {
            sym[sl++] = (char)(0xC0 | (cp >> 6));
            sym[sl++] = (char)(0x80 | (cp & 0x3F));
        }
        sym[sl] = '\0';
        t->byte_id[b] = vocab_lookup(&vi, sym, sl);
        if (t->byte_id[b] < 0)
            invalid(c, "model.vocab", "byte-level symbol \"%s\" (byte 0x%02x) is missing", sym,
                    b);
    }
    st = parse_merges(c, t, raw, &vi);
free_tmp:
    ds4_free(vi.slots);
    ds4_free(src);
    ds4_free(srclen);
    return st;
}

static ds4_status_t parse_added(load_ctx_t *c, ds4_tokenizer_h *t, const json_t *added)
{
    size_t i;
    const json_t *a;
    char path[96];
    json_array_foreach(added, i, a)
    {
        ds4_json_path_index(path, sizeof(path), "added_tokens", i);
        if (!json_is_object(a)) {
            invalid(c, path, "expected an object");
            continue;
        }
        int64_t id = -1;
        const char *content = NULL;
        bool special = false, normalized, flag;
        int before = (int)(c->diag != NULL ? c->diag->count : 0);
        bool ok = ds4_json_get_i64(a, path, "id", true, 0, MAX_ID - 1, &id, c->diag);
        ok &= ds4_json_get_str(a, path, "content", true, &content, c->diag);
        ds4_json_get_bool(a, path, "special", false, &special, c->diag);
        normalized = !special;
        ds4_json_get_bool(a, path, "normalized", false, &normalized, c->diag);
        static const char *const unsup[] = {"lstrip", "rstrip", "single_word"};
        for (size_t k = 0; k < DS4_ARRAY_LEN(unsup); k++) {
            flag = false;
            char p[128];
            if (ds4_json_get_bool(a, path, unsup[k], false, &flag, c->diag) && flag)
                unsupported(c, ds4_json_path(p, sizeof(p), path, unsup[k]),
                            "added token %s=true", unsup[k]);
        }
        if (c->diag != NULL && (int)c->diag->count > before && !ok)
            c->n_invalid++;
        if (!ok)
            continue;
        size_t clen = json_string_length(json_object_get(a, "content"));
        if (clen == 0) {
            invalid(c, path, "content is empty");
            continue;
        }
        ds4_tok_trie_t *trie = normalized ? &t->trie_norm : &t->trie_raw;
        int32_t prev = -1;
        if (trie_insert(trie, content, clen, (int32_t)id, &prev) != DS4_OK)
            return DS4_ERR_NO_MEMORY;
        ds4_tok_trie_t *other = normalized ? &t->trie_raw : &t->trie_norm;
        if (prev >= 0 || trie_exact(other, content, clen) >= 0)
            invalid(c, path, "content \"%s\" appears twice in added_tokens", content);
        if (t->tok_flags != NULL && id < t->n_ids) {
            t->tok_flags[id] |= DS4_TOK_F_ADDED;
            if (special)
                t->tok_flags[id] |= DS4_TOK_F_SPECIAL;
        }
    }
    return DS4_OK;
}

void ds4_tokenizer_destroy(ds4_tokenizer_h *t)
{
    if (t == NULL)
        return;
    ds4_free(t->tok_off);
    ds4_free(t->tok_flags);
    ds4_free(t->tok_bytes);
    ds4_free(t->vocab_slots);
    ds4_free(t->merge_keys);
    ds4_free(t->merge_rank);
    ds4_free(t->merge_new);
    ds4__tok_trie_free(&t->trie_raw);
    ds4__tok_trie_free(&t->trie_norm);
    for (int i = 0; i < t->n_splits; i++) {
        pcre2_code_free(t->split_re[i]);
        pcre2_code_free(t->split_re_narrow[i]);
    }
    ds4_free(t->delta_bitmap);
    ds4_free(t);
}

static ds4_status_t load_root(const json_t *root, ds4_tok_raw_t *raw, ds4_tokenizer_h **out,
                              ds4_diag_t *diag)
{
    load_ctx_t c = {.diag = diag};
    build_byte_alphabet(&c);
    ds4_status_t st = DS4_OK;
    if (!json_is_object(root)) {
        ds4__tok_diag(diag, "", "expected a JSON object at the top level");
        return DS4_ERR_TOKENIZER;
    }
    ds4_tokenizer_h *t = ds4_calloc(1, sizeof(*t));
    if (t == NULL)
        return DS4_ERR_NO_MEMORY;
    const json_t *added = json_object_get(root, "added_tokens");
    json_t *empty = NULL;
    if (added == NULL || json_is_null(added)) {
        empty = json_array();
        added = empty;
    } else if (!json_is_array(added)) {
        invalid(&c, "added_tokens", "expected an array, got %s", ds4_json_type_name(added));
        added = empty = json_array();
    }
    parse_simple_parts(&c, root);
    parse_pretok(&c, t, root);
    st = parse_model(&c, t, root, added, raw);
    if (st == DS4_OK)
        st = parse_added(&c, t, added);
    json_decref(empty);
    if (st == DS4_OK && (c.n_invalid > 0 || c.n_unsupported > 0))
        st = c.n_invalid > 0 ? DS4_ERR_TOKENIZER : DS4_ERR_UNSUPPORTED;
    if (st == DS4_OK && t->n_ids == 0) {
        ds4__tok_diag(diag, "model.vocab", "is empty");
        st = DS4_ERR_TOKENIZER;
    }
    if (st != DS4_OK) {
        ds4_tokenizer_destroy(t);
        return st;
    }
    *out = t;
    return DS4_OK;
}

/* Parses a private, writable copy of the JSON text (the scanner blanks vocab and merges). */
static ds4_status_t load_text(char *buf, size_t len, const char *what, ds4_tokenizer_h **out,
                              ds4_diag_t *d)
{
    ds4_tok_raw_t raw = {0};
    ds4_status_t st = ds4__tok_scan(buf, len, &raw, d);
    json_t *root = NULL;
    if (st == DS4_OK)
        st = ds4_json_load_buf(buf, len, what, &root, d);
    if (st == DS4_OK) {
        st = load_root(root, &raw, out, d);
        json_decref(root);
    }
    ds4__tok_raw_free(&raw);
    return st;
}

ds4_status_t ds4_tokenizer_load_buf(const char *json, size_t len, const char *what,
                                    ds4_tokenizer_h **out, ds4_diag_t *diag)
{
    if ((json == NULL && len > 0) || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_diag_t local;
    ds4_diag_init(&local);
    ds4_diag_t *d = diag != NULL ? diag : &local;
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    char *copy = ds4_malloc(len + 1);
    if (copy != NULL) {
        memcpy(copy, json, len);
        copy[len] = '\0';
        st = load_text(copy, len, what != NULL ? what : "tokenizer.json", out, d);
        ds4_free(copy);
    }
    ds4_diag_free(&local);
    return st;
}

ds4_status_t ds4_tokenizer_load(const char *path, ds4_tokenizer_h **out, ds4_diag_t *diag)
{
    if (path == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_diag_t local;
    ds4_diag_init(&local);
    ds4_diag_t *d = diag != NULL ? diag : &local;
    ds4_status_t st = DS4_ERR_IO;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    struct stat sb;
    if (f == NULL) {
        ds4_diag_addf(d, path, "cannot open: %s", strerror(errno));
        goto done;
    }
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ds4_diag_addf(d, path, "not a readable regular file");
        goto close_file;
    }
    if ((uint64_t)sb.st_size > DS4_TOKENIZER_MAX_FILE_BYTES) {
        ds4_diag_addf(d, path, "file is %lld bytes, more than the limit of %zu",
                      (long long)sb.st_size, DS4_TOKENIZER_MAX_FILE_BYTES);
        st = DS4_ERR_TOKENIZER;
        goto close_file;
    }
    size_t len = (size_t)sb.st_size;
    buf = ds4_malloc(len + 1);
    if (buf == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto close_file;
    }
    if (len > 0 && fread(buf, 1, len, f) != len) {
        ds4_diag_addf(d, path, "short read");
        goto free_buf;
    }
    buf[len] = '\0';
    st = load_text(buf, len, path, out, d);
free_buf:
    ds4_free(buf);
close_file:
    fclose(f);
done:
    ds4_diag_free(&local);
    return st;
}

#ifndef DS4_TOKENIZER_DEFAULT_PATH
#define DS4_TOKENIZER_DEFAULT_PATH "models/tokenizer/tokenizer.json"
#endif

const char *ds4_tokenizer_default_path(void)
{
    const char *env = getenv("DS4_TOKENIZER");
    return env != NULL && env[0] != '\0' ? env : DS4_TOKENIZER_DEFAULT_PATH;
}

ds4_status_t ds4_tokenizer_load_default(ds4_tokenizer_h **out, ds4_diag_t *diag)
{
    return ds4_tokenizer_load(ds4_tokenizer_default_path(), out, diag);
}

uint32_t ds4_tokenizer_n_ids(const ds4_tokenizer_h *t)
{
    return t->n_ids;
}

bool ds4_tokenizer_is_special(const ds4_tokenizer_h *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_ids && (t->tok_flags[id] & DS4_TOK_F_SPECIAL) != 0;
}

int32_t ds4_tokenizer_token_id(const ds4_tokenizer_h *t, const char *text)
{
    size_t n = strlen(text);
    int32_t id = trie_exact(&t->trie_raw, text, n);
    if (id < 0)
        id = trie_exact(&t->trie_norm, text, n);
    if (id < 0)
        id = ds4__tok_vocab_find(t, text, n);
    return id;
}
