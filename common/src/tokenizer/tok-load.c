/*
 * tok-load.c - reads a Hugging Face tokenizer.json into ds4's tables (tok-internal.h).
 * Every unsupported or invalid feature is reported with its JSON path; nothing is guessed.
 */
#include "tok-internal.h"
#include "tok-json-scan.h"

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

void ds4__tok_invalid(ds4__tok_load_ctx_t *c, const char *path, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->n_invalid++;
    ds4__tok_diag(c->diag, path, "%s", msg);
}

void ds4__tok_unsupported(ds4__tok_load_ctx_t *c, const char *path, const char *fmt, ...)
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
static void build_byte_alphabet(ds4__tok_load_ctx_t *c)
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
static size_t byte_level_decode(const ds4__tok_load_ctx_t *c, const char *s, size_t n, char *out)
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

static void parse_simple_parts(ds4__tok_load_ctx_t *c, const json_t *root)
{
    const json_t *norm = json_object_get(root, "normalizer");
    if (norm != NULL && !json_is_null(norm)) {
        const char *type = json_string_value(json_object_get(norm, "type"));
        const json_t *list = json_object_get(norm, "normalizers");
        if (type == NULL || strcmp(type, "Sequence") != 0 || !json_is_array(list) ||
            json_array_size(list) != 0)
            ds4__tok_unsupported(c, "normalizer", "normalizer %s (only null or an empty Sequence)",
                        type != NULL ? type : "of unknown type");
    }
    const json_t *dec = json_object_get(root, "decoder");
    const char *dtype = json_is_object(dec) ? json_string_value(json_object_get(dec, "type"))
                                            : NULL;
    if (dtype == NULL || strcmp(dtype, "ByteLevel") != 0)
        ds4__tok_unsupported(c, "decoder", "decoder %s (only ByteLevel)",
                    dtype != NULL ? dtype : "missing or null");
    const json_t *post = json_object_get(root, "post_processor");
    if (post != NULL && !json_is_null(post)) {
        const char *ptype = json_string_value(json_object_get(post, "type"));
        if (ptype == NULL ||
            (strcmp(ptype, "ByteLevel") != 0 && strcmp(ptype, "TemplateProcessing") != 0))
            ds4__tok_unsupported(c, "post_processor", "post_processor %s",
                        ptype != NULL ? ptype : "of unknown type");
    }
    const json_t *trunc = json_object_get(root, "truncation");
    if (trunc != NULL && !json_is_null(trunc))
        ds4__tok_unsupported(c, "truncation", "truncation (must be null)");
    const json_t *pad = json_object_get(root, "padding");
    if (pad != NULL && !json_is_null(pad))
        ds4__tok_unsupported(c, "padding", "padding (must be null)");
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

static ds4_status_t parse_merges(ds4__tok_load_ctx_t *c, ds4_tokenizer_h *t, const ds4_tok_raw_t *raw,
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
                ds4__tok_invalid(c, path, "expected \"left right\" or [left, right]");
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
                ds4__tok_invalid(c, path, "%s token \"%.200s\" is not in model.vocab",
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

static ds4_status_t parse_model(ds4__tok_load_ctx_t *c, ds4_tokenizer_h *t, const json_t *root,
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
        ds4__tok_unsupported(c, "model.type", "model type \"%s\" (only BPE)", type);
        return DS4_OK;
    }
    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout != NULL && !json_is_null(dropout))
        ds4__tok_unsupported(c, "model.dropout", "BPE dropout");
    static const char *const null_keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < DS4_ARRAY_LEN(null_keys); i++) {
        const json_t *v = json_object_get(model, null_keys[i]);
        char p[96];
        if (v != NULL && !json_is_null(v) &&
            !(json_is_string(v) && json_string_length(v) == 0))
            ds4__tok_unsupported(c, ds4_json_path(p, sizeof(p), "model", null_keys[i]), "BPE %s",
                        null_keys[i]);
    }
    bool flag = false;
    if (ds4_json_get_bool(model, "model", "byte_fallback", false, &flag, c->diag) && flag)
        ds4__tok_unsupported(c, "model.byte_fallback", "BPE byte_fallback=true");
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
                ds4__tok_invalid(c, "model.vocab", "token \"%.64s\": id must be an integer in [0, %lld)",
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
            ds4__tok_invalid(c, "model.vocab", "token \"%.64s\" appears twice", key);
            continue;
        }
        vi.slots[h] = ((uint64_t)hash << 32) | ((uint32_t)k + 1);
        uint32_t id = (uint32_t)e->id;
        if (src[id] != NULL) {
            ds4__tok_invalid(c, "model.vocab", "id %u is used by \"%.64s\" and \"%.64s\"", id, src[id],
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
            ds4__tok_invalid(c, "model.vocab", "byte-level symbol \"%s\" (byte 0x%02x) is missing", sym,
                    b);
    }
    st = parse_merges(c, t, raw, &vi);
free_tmp:
    ds4_free(vi.slots);
    ds4_free(src);
    ds4_free(srclen);
    return st;
}

static ds4_status_t parse_added(ds4__tok_load_ctx_t *c, ds4_tokenizer_h *t, const json_t *added)
{
    size_t i;
    const json_t *a;
    char path[96];
    json_array_foreach(added, i, a)
    {
        ds4_json_path_index(path, sizeof(path), "added_tokens", i);
        if (!json_is_object(a)) {
            ds4__tok_invalid(c, path, "expected an object");
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
                ds4__tok_unsupported(c, ds4_json_path(p, sizeof(p), path, unsup[k]),
                            "added token %s=true", unsup[k]);
        }
        if (c->diag != NULL && (int)c->diag->count > before && !ok)
            c->n_invalid++;
        if (!ok)
            continue;
        size_t clen = json_string_length(json_object_get(a, "content"));
        if (clen == 0) {
            ds4__tok_invalid(c, path, "content is empty");
            continue;
        }
        ds4_tok_trie_t *trie = normalized ? &t->trie_norm : &t->trie_raw;
        int32_t prev = -1;
        if (ds4__tok_trie_insert(trie, content, clen, (int32_t)id, &prev) != DS4_OK)
            return DS4_ERR_NO_MEMORY;
        ds4_tok_trie_t *other = normalized ? &t->trie_raw : &t->trie_norm;
        if (prev >= 0 || ds4__tok_trie_exact(other, content, clen) >= 0)
            ds4__tok_invalid(c, path, "content \"%s\" appears twice in added_tokens", content);
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
    ds4__tok_load_ctx_t c = {.diag = diag};
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
        ds4__tok_invalid(&c, "added_tokens", "expected an array, got %s", ds4_json_type_name(added));
        added = empty = json_array();
    }
    parse_simple_parts(&c, root);
    ds4__tok_parse_pretok(&c, t, root);
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
    int32_t id = ds4__tok_trie_exact(&t->trie_raw, text, n);
    if (id < 0)
        id = ds4__tok_trie_exact(&t->trie_norm, text, n);
    if (id < 0)
        id = ds4__tok_vocab_find(t, text, n);
    return id;
}
