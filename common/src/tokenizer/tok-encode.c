/*
 * tok-encode.c - text → ids: UTF-8 check, added tokens, regex pre-tokenization (PCRE2 JIT),
 * byte-level BPE with a merge-rank hash table, and a per-scratch pre-token cache.
 */
#include "tok-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <string.h>

#define CACHE_SLOTS (1u << 16)
#define CACHE_MAX_USED (CACHE_SLOTS / 2)
#define CACHE_MAX_KEY 64           /* longer pre-tokens are not cached */
#define CACHE_KEYS_CAP ((size_t)1 << 20)
#define CACHE_IDS_CAP ((size_t)1 << 18)
#define LINEAR_BPE_MAX 48          /* pieces up to this many bytes merge by linear scan */
#define NO_RANK UINT32_MAX

struct ds4_tok_cache_entry {
    uint32_t hash;
    uint32_t key_off;
    uint32_t ids_off;
    uint16_t key_len; /* 0 = empty slot */
    uint16_t n_ids;
};

/* ---- scratch ---- */

ds4_status_t ds4_tok_scratch_create(const ds4_tokenizer_h *tok, ds4_tok_scratch_h **out)
{
    if (tok == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_tok_scratch_h *s = ds4_calloc(1, sizeof(*s));
    if (s == NULL)
        return DS4_ERR_NO_MEMORY;
    s->tok = tok;
    s->md = pcre2_match_data_create(1, NULL);
    s->jit_stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL);
    s->mctx = pcre2_match_context_create(NULL);
    if (s->md == NULL || s->jit_stack == NULL || s->mctx == NULL) {
        ds4_tok_scratch_destroy(s);
        return DS4_ERR_NO_MEMORY;
    }
    pcre2_jit_stack_assign(s->mctx, NULL, s->jit_stack);
    *out = s;
    return DS4_OK;
}

void ds4_tok_scratch_destroy(ds4_tok_scratch_h *s)
{
    if (s == NULL)
        return;
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mctx);
    pcre2_jit_stack_free(s->jit_stack);
    ds4_free(s->sym_id);
    ds4_free(s->sym_prev);
    ds4_free(s->sym_next);
    ds4_free(s->sym_rank);
    ds4_free(s->heap);
    ds4_free(s->cache);
    ds4_free(s->cache_keys);
    ds4_free(s->cache_ids);
    ds4_free(s);
}

static bool scratch_reserve(ds4_tok_scratch_h *s, size_t n)
{
    if (n <= s->sym_cap)
        return true;
    size_t cap = DS4_MAX(n, s->sym_cap * 2);
    int32_t *id = ds4_realloc_array(s->sym_id, cap, sizeof(*id));
    if (id != NULL)
        s->sym_id = id;
    int32_t *pv = ds4_realloc_array(s->sym_prev, cap, sizeof(*pv));
    if (pv != NULL)
        s->sym_prev = pv;
    int32_t *nx = ds4_realloc_array(s->sym_next, cap, sizeof(*nx));
    if (nx != NULL)
        s->sym_next = nx;
    uint32_t *rk = ds4_realloc_array(s->sym_rank, cap, sizeof(*rk));
    if (rk != NULL)
        s->sym_rank = rk;
    uint64_t *hp = ds4_realloc_array(s->heap, cap * 3, sizeof(*hp));
    if (hp != NULL)
        s->heap = hp;
    if (id == NULL || pv == NULL || nx == NULL || rk == NULL || hp == NULL)
        return false;
    s->sym_cap = cap;
    return true;
}

static void cache_reset(ds4_tok_scratch_h *s)
{
    memset(s->cache, 0, CACHE_SLOTS * sizeof(*s->cache));
    s->cache_used = 0;
    s->cache_keys_used = 0;
    s->cache_ids_used = 0;
}

static bool cache_init(ds4_tok_scratch_h *s)
{
    s->cache = ds4_calloc(CACHE_SLOTS, sizeof(*s->cache));
    s->cache_keys = ds4_malloc(CACHE_KEYS_CAP);
    s->cache_ids = ds4_malloc_array(CACHE_IDS_CAP, sizeof(*s->cache_ids));
    if (s->cache == NULL || s->cache_keys == NULL || s->cache_ids == NULL) {
        ds4_free(s->cache);
        ds4_free(s->cache_keys);
        ds4_free(s->cache_ids);
        s->cache = NULL;
        s->cache_keys = NULL;
        s->cache_ids = NULL;
        return false;
    }
    s->cache_mask = CACHE_SLOTS - 1;
    return true;
}

/* ---- encoder state for one call ---- */

typedef struct enc {
    const ds4_tokenizer_h *t;
    bool wide; /* the text holds a code point the narrow regexes classify differently */
    ds4_tok_scratch_h *s;
    const char *text;
    int32_t *ids;
    size_t n, cap;
    ds4_status_t st;
    ds4_diag_t *diag;
} enc_t;

static bool push_id(enc_t *e, int32_t id)
{
    if (e->n == e->cap) {
        size_t cap = e->cap * 2;
        int32_t *p = ds4_realloc_array(e->ids, cap, sizeof(*p));
        if (p == NULL) {
            e->st = DS4_ERR_NO_MEMORY;
            return false;
        }
        e->ids = p;
        e->cap = cap;
    }
    e->ids[e->n++] = id;
    return true;
}

static uint32_t pair_rank(const ds4_tokenizer_h *t, int32_t a, int32_t b)
{
    uint32_t r;
    int32_t nid;
    return ds4__tok_merge_lookup(t, a, b, &r, &nid) ? r : NO_RANK;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0];
    uint64_t last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= m)
            break;
        size_t c = (l + 1 < m && h[l + 1] < h[l]) ? l + 1 : l;
        if (last <= h[c])
            break;
        h[i] = h[c];
        i = c;
    }
    if (m > 0)
        h[i] = last;
    return top;
}

/* Merges symbol i with its right neighbour and refreshes the ranks around it. */
static void merge_at(const ds4_tokenizer_h *t, ds4_tok_scratch_h *s, int32_t i, uint64_t *heap,
                     size_t *hn)
{
    int32_t *id = s->sym_id, *prev = s->sym_prev, *next = s->sym_next;
    uint32_t *rank = s->sym_rank;
    int32_t j = next[i];
    uint32_t r;
    int32_t nid;
    bool ok = ds4__tok_merge_lookup(t, id[i], id[j], &r, &nid);
    DS4_ASSERT(ok);
    id[i] = nid;
    next[i] = next[j];
    if (next[j] >= 0)
        prev[next[j]] = i;
    rank[j] = NO_RANK;
    id[j] = -1;
    rank[i] = next[i] >= 0 ? pair_rank(t, id[i], id[next[i]]) : NO_RANK;
    if (heap != NULL && rank[i] != NO_RANK)
        heap_push(heap, hn, ((uint64_t)rank[i] << 32) | (uint32_t)i);
    int32_t p = prev[i];
    if (p >= 0) {
        rank[p] = pair_rank(t, id[p], id[i]);
        if (heap != NULL && rank[p] != NO_RANK)
            heap_push(heap, hn, ((uint64_t)rank[p] << 32) | (uint32_t)p);
    }
}

/* BPE of one pre-token of n >= 2 bytes; appends its ids. */
static void bpe_merge(enc_t *e, const unsigned char *p, size_t n)
{
    const ds4_tokenizer_h *t = e->t;
    ds4_tok_scratch_h *s = e->s;
    if (n > (size_t)INT32_MAX - 1 || !scratch_reserve(s, n)) {
        e->st = DS4_ERR_NO_MEMORY;
        return;
    }
    int32_t *id = s->sym_id, *prev = s->sym_prev, *next = s->sym_next;
    uint32_t *rank = s->sym_rank;
    int32_t m = (int32_t)n;
    for (int32_t i = 0; i < m; i++) {
        id[i] = t->byte_id[p[i]];
        prev[i] = i - 1;
        next[i] = i + 1 < m ? i + 1 : -1;
    }
    for (int32_t i = 0; i + 1 < m; i++)
        rank[i] = pair_rank(t, id[i], id[i + 1]);
    rank[m - 1] = NO_RANK;

    if (n <= LINEAR_BPE_MAX) {
        for (;;) {
            uint32_t best = NO_RANK;
            int32_t bi = -1;
            for (int32_t i = 0; i >= 0; i = next[i])
                if (rank[i] < best) {
                    best = rank[i];
                    bi = i;
                }
            if (bi < 0)
                break;
            merge_at(t, s, bi, NULL, NULL);
        }
    } else {
        uint64_t *heap = s->heap;
        size_t hn = 0;
        for (int32_t i = 0; i + 1 < m; i++)
            if (rank[i] != NO_RANK)
                heap_push(heap, &hn, ((uint64_t)rank[i] << 32) | (uint32_t)i);
        while (hn > 0) {
            uint64_t top = heap_pop(heap, &hn);
            int32_t i = (int32_t)(uint32_t)top;
            uint32_t r = (uint32_t)(top >> 32);
            if (id[i] < 0 || rank[i] != r)
                continue; /* stale: the pair at i changed since it was pushed */
            merge_at(t, s, i, heap, &hn);
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        if (!push_id(e, id[i]))
            return;
}

/* One pre-token → ids, through the cache. */
static void enc_bpe(enc_t *e, size_t start, size_t end)
{
    const ds4_tokenizer_h *t = e->t;
    ds4_tok_scratch_h *s = e->s;
    const unsigned char *p = (const unsigned char *)e->text + start;
    size_t n = end - start;
    if (n == 1) {
        push_id(e, t->byte_id[p[0]]);
        return;
    }
    uint32_t h = 0;
    bool cacheable = n <= CACHE_MAX_KEY && (s->cache != NULL || cache_init(s));
    if (cacheable) {
        h = ds4__tok_hash_bytes((const char *)p, n);
        uint32_t i = h & s->cache_mask;
        for (;;) {
            struct ds4_tok_cache_entry *ce = &s->cache[i];
            if (ce->key_len == 0)
                break;
            if (ce->hash == h && ce->key_len == n &&
                memcmp(s->cache_keys + ce->key_off, p, n) == 0) {
                for (uint32_t k = 0; k < ce->n_ids; k++)
                    if (!push_id(e, s->cache_ids[ce->ids_off + k]))
                        return;
                return;
            }
            i = (i + 1) & s->cache_mask;
        }
    }
    size_t first = e->n;
    int32_t whole = t->ignore_merges ? ds4__tok_vocab_find(t, (const char *)p, n) : -1;
    if (whole >= 0)
        push_id(e, whole);
    else
        bpe_merge(e, p, n);
    if (e->st != DS4_OK || !cacheable)
        return;
    size_t k = e->n - first;
    if (s->cache_used >= CACHE_MAX_USED || s->cache_keys_used + n > CACHE_KEYS_CAP ||
        s->cache_ids_used + k > CACHE_IDS_CAP)
        cache_reset(s);
    uint32_t i = h & s->cache_mask;
    while (s->cache[i].key_len != 0)
        i = (i + 1) & s->cache_mask;
    s->cache[i] = (struct ds4_tok_cache_entry){.hash = h,
                                               .key_off = (uint32_t)s->cache_keys_used,
                                               .ids_off = (uint32_t)s->cache_ids_used,
                                               .key_len = (uint16_t)n,
                                               .n_ids = (uint16_t)k};
    memcpy(s->cache_keys + s->cache_keys_used, p, n);
    s->cache_keys_used += n;
    memcpy(s->cache_ids + s->cache_ids_used, e->ids + first, k * sizeof(*e->ids));
    s->cache_ids_used += k;
    s->cache_used++;
}

static size_t utf8_char_len(unsigned char b)
{
    return b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
}

/* True when text holds a code point whose Unicode properties PCRE2 and Oniguruma disagree on
 * (all such code points are >= U+0800: 3- and 4-byte sequences; text is valid UTF-8). */
static bool needs_wide(const ds4_tokenizer_h *t, const unsigned char *s, size_t len)
{
    if (t->delta_bitmap == NULL)
        return false;
    size_t i = 0;
    while (i < len) {
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ull) != 0)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        unsigned char b = s[i];
        if (b < 0xE0) {
            i += b < 0x80 ? 1 : 2;
            continue;
        }
        uint32_t cp;
        if (b < 0xF0) {
            cp = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) |
                 (s[i + 2] & 0x3F);
            i += 3;
        } else {
            cp = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
                 ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
            i += 4;
        }
        if ((t->delta_bitmap[cp >> 3] >> (cp & 7)) & 1)
            return true;
    }
    return false;
}

/* Split level `level` (Isolated): matches and the gaps between them each go one level down. */
static void enc_pretok(enc_t *e, int level, size_t start, size_t end)
{
    const ds4_tokenizer_h *t = e->t;
    if (e->st != DS4_OK)
        return;
    if (level == t->n_splits) {
        enc_bpe(e, start, end);
        return;
    }
    bool narrow = !e->wide && t->split_re_narrow[level] != NULL;
    pcre2_code *re = narrow ? t->split_re_narrow[level] : t->split_re[level];
    bool jit = narrow ? t->split_jit_narrow[level] : t->split_jit[level];
    PCRE2_SPTR subj = (PCRE2_SPTR)e->text + start;
    size_t len = end - start, pos = 0, gap = 0;
    pcre2_match_data *md = e->s->md;
    while (pos < len && e->st == DS4_OK) {
        int rc = jit ? pcre2_jit_match(re, subj, len, pos, 0, md, e->s->mctx)
                     : pcre2_match(re, subj, len, pos, PCRE2_NO_UTF_CHECK, md, e->s->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            ds4__tok_diag(e->diag, "text", "pre-tokenizer regex %d failed at byte offset %zu: %s",
                          level, start + pos, (char *)msg);
            e->st = DS4_ERR_INTERNAL;
            return;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* empty match: nothing to split off; step one code point */
            pos = me + utf8_char_len(subj[me]);
            continue;
        }
        if (gap < ms)
            enc_pretok(e, level + 1, start + gap, start + ms);
        enc_pretok(e, level + 1, start + ms, start + me);
        pos = gap = me;
    }
    if (gap < len)
        enc_pretok(e, level + 1, start + gap, end);
}

/* Added tokens: level 0 = not normalized, level 1 = normalized; gaps go one level down. */
static void enc_added(enc_t *e, int level, size_t start, size_t end)
{
    if (level == 2) {
        enc_pretok(e, 0, start, end);
        return;
    }
    const ds4_tok_trie_t *trie = level == 0 ? &e->t->trie_raw : &e->t->trie_norm;
    if (trie->n_tokens == 0) {
        enc_added(e, level + 1, start, end);
        return;
    }
    const unsigned char *s = (const unsigned char *)e->text;
    size_t gap = start, i = start;
    while (i < end && e->st == DS4_OK) {
        unsigned char b = s[i];
        int32_t id;
        size_t mlen;
        if ((trie->first_byte[b >> 3] & (1u << (b & 7))) != 0 &&
            ds4__tok_trie_longest(trie, (const char *)s + i, end - i, &id, &mlen)) {
            if (gap < i)
                enc_added(e, level + 1, gap, i);
            push_id(e, id);
            i += mlen;
            gap = i;
            continue;
        }
        i++;
    }
    if (gap < end && e->st == DS4_OK)
        enc_added(e, level + 1, gap, end);
}

ds4_status_t ds4_tokenizer_encode(const ds4_tokenizer_h *tok, ds4_tok_scratch_h *scratch,
                                  const char *text, size_t len, int32_t **ids, size_t *n_ids,
                                  size_t *err_offset, ds4_diag_t *diag)
{
    if (tok == NULL || (text == NULL && len > 0) || ids == NULL || n_ids == NULL)
        return DS4_ERR_INVALID_ARG;
    if (scratch != NULL && scratch->tok != tok) {
        ds4__tok_diag(diag, "scratch", "belongs to another tokenizer");
        return DS4_ERR_INVALID_ARG;
    }
    size_t bad = 0;
    if (!ds4_utf8_validate(text, len, &bad)) {
        ds4__tok_diag(diag, "text", "invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                      (unsigned)(unsigned char)text[bad]);
        if (err_offset != NULL)
            *err_offset = bad;
        return DS4_ERR_INVALID_UTF8;
    }
    ds4_tok_scratch_h *tmp = NULL;
    if (scratch == NULL) {
        ds4_status_t st = ds4_tok_scratch_create(tok, &tmp);
        if (st != DS4_OK)
            return st;
        scratch = tmp;
    }
    enc_t e = {.t = tok, .s = scratch, .text = text, .st = DS4_OK, .diag = diag};
    e.wide = needs_wide(tok, (const unsigned char *)text, len);
    e.cap = len / 3 + 16;
    e.ids = ds4_malloc_array(e.cap, sizeof(*e.ids));
    if (e.ids == NULL) {
        ds4_tok_scratch_destroy(tmp);
        return DS4_ERR_NO_MEMORY;
    }
    if (len > 0)
        enc_added(&e, 0, 0, len);
    ds4_tok_scratch_destroy(tmp);
    if (e.st != DS4_OK) {
        ds4_free(e.ids);
        return e.st;
    }
    *ids = e.ids;
    *n_ids = e.n;
    return DS4_OK;
}
