/*
 * tok-decode.c - ids → text, and the streaming detokenizer.
 *
 * Invalid UTF-8 produced by byte-level tokens becomes U+FFFD, one per maximal invalid subpart,
 * exactly like Rust's String::from_utf8_lossy (what the Hugging Face decoder returns). The
 * streaming detokenizer holds back only a *valid but unfinished* code point at the end of what
 * it has seen, so its concatenated output equals the one-shot decode.
 */
#include "tok-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <string.h>

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

typedef struct obuf {
    char *p;
    size_t n, cap;
} obuf_t;

static bool ob_reserve(obuf_t *o, size_t extra)
{
    if (o->n + extra + 1 <= o->cap)
        return true;
    size_t cap = DS4_MAX(o->cap * 2, o->n + extra + 64);
    char *p = ds4_realloc_array(o->p, cap, 1);
    if (p == NULL)
        return false;
    o->p = p;
    o->cap = cap;
    return true;
}

/*
 * Appends the lossy decoding of s[0..n) to o. With `hold_tail`, a valid-but-unfinished
 * sequence at the very end is not decoded; its length is returned (0 otherwise).
 * Returns SIZE_MAX on allocation failure.
 */
static size_t lossy_append(obuf_t *o, const unsigned char *s, size_t n, bool hold_tail)
{
    /* worst case: every byte becomes U+FFFD (3 bytes) */
    if (!ob_reserve(o, n * 3))
        return SIZE_MAX;
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && s[run] < 0x80)
            run++;
        if (run > i) {
            memcpy(o->p + o->n, s + i, run - i);
            o->n += run - i;
            i = run;
            if (i == n)
                break;
        }
        size_t len;
        ds4__utf8_kind_t k = ds4__utf8_classify(s + i, n - i, &len);
        if (k == DS4__U8_VALID) {
            memcpy(o->p + o->n, s + i, len);
            o->n += len;
        } else if (k == DS4__U8_INCOMPLETE && hold_tail) {
            o->p[o->n] = '\0';
            return n - i;
        } else {
            memcpy(o->p + o->n, REPLACEMENT, 3);
            o->n += 3;
            if (k == DS4__U8_INCOMPLETE)
                len = n - i;
        }
        i += len;
    }
    o->p[o->n] = '\0';
    return 0;
}

static bool id_ok(const ds4_tokenizer_h *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_ids && (t->tok_flags[id] & DS4_TOK_F_VALID) != 0;
}

ds4_status_t ds4_tokenizer_decode(const ds4_tokenizer_h *t, const int32_t *ids, size_t n_ids,
                                  bool skip_special_tokens, char **text, size_t *text_len,
                                  ds4_diag_t *diag)
{
    if (t == NULL || (ids == NULL && n_ids > 0) || text == NULL)
        return DS4_ERR_INVALID_ARG;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (!id_ok(t, ids[i])) {
            ds4__tok_diag(diag, "ids", "id %ld at position %zu is not in the vocabulary "
                          "(%u ids)", (long)ids[i], i, t->n_ids);
            return DS4_ERR_VOCAB;
        }
        total += t->tok_off[ids[i] + 1] - t->tok_off[ids[i]];
    }
    unsigned char *raw = ds4_malloc(total + 1);
    if (raw == NULL)
        return DS4_ERR_NO_MEMORY;
    size_t off = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (skip_special_tokens && (t->tok_flags[id] & DS4_TOK_F_SPECIAL) != 0)
            continue;
        size_t l = t->tok_off[id + 1] - t->tok_off[id];
        memcpy(raw + off, t->tok_bytes + t->tok_off[id], l);
        off += l;
    }
    obuf_t o = {0};
    if (!ob_reserve(&o, 0) || lossy_append(&o, raw, off, false) == SIZE_MAX) {
        ds4_free(raw);
        ds4_free(o.p);
        return DS4_ERR_NO_MEMORY;
    }
    ds4_free(raw);
    *text = o.p;
    if (text_len != NULL)
        *text_len = o.n;
    return DS4_OK;
}

/* ---- streaming ---- */

struct ds4_detok {
    const ds4_tokenizer_h *tok;
    ds4_detok_params_t params;
    unsigned char pending[4]; /* a valid, unfinished code point (at most 3 bytes) */
    size_t n_pending;
    unsigned char *work;
    size_t work_cap;
    obuf_t out;
};

ds4_detok_params_t ds4_detok_params_default(void)
{
    return (ds4_detok_params_t){.skip_special_tokens = false};
}

ds4_status_t ds4_detok_create(const ds4_tokenizer_h *tok, const ds4_detok_params_t *params,
                              ds4_detok_h **out)
{
    if (tok == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_detok_h *d = ds4_calloc(1, sizeof(*d));
    if (d == NULL)
        return DS4_ERR_NO_MEMORY;
    d->tok = tok;
    d->params = params != NULL ? *params : ds4_detok_params_default();
    if (!ob_reserve(&d->out, 64)) {
        ds4_free(d);
        return DS4_ERR_NO_MEMORY;
    }
    *out = d;
    return DS4_OK;
}

void ds4_detok_destroy(ds4_detok_h *d)
{
    if (d == NULL)
        return;
    ds4_free(d->work);
    ds4_free(d->out.p);
    ds4_free(d);
}

ds4_status_t ds4_detok_feed(ds4_detok_h *d, int32_t id, const char **text, size_t *text_len,
                            ds4_diag_t *diag)
{
    const ds4_tokenizer_h *t = d->tok;
    if (!id_ok(t, id)) {
        ds4__tok_diag(diag, "id", "id %ld is not in the vocabulary (%u ids)", (long)id,
                      t->n_ids);
        return DS4_ERR_VOCAB;
    }
    d->out.n = 0;
    d->out.p[0] = '\0';
    if (d->params.skip_special_tokens && (t->tok_flags[id] & DS4_TOK_F_SPECIAL) != 0) {
        *text = d->out.p;
        *text_len = 0;
        return DS4_OK;
    }
    size_t l = t->tok_off[id + 1] - t->tok_off[id];
    size_t n = d->n_pending + l;
    if (n > d->work_cap) {
        unsigned char *w = ds4_realloc_array(d->work, DS4_MAX(n, 64), 1);
        if (w == NULL)
            return DS4_ERR_NO_MEMORY;
        d->work = w;
        d->work_cap = DS4_MAX(n, 64);
    }
    memcpy(d->work, d->pending, d->n_pending);
    memcpy(d->work + d->n_pending, t->tok_bytes + t->tok_off[id], l);
    size_t held = lossy_append(&d->out, d->work, n, true);
    if (held == SIZE_MAX)
        return DS4_ERR_NO_MEMORY;
    DS4_ASSERT(held < sizeof(d->pending));
    memcpy(d->pending, d->work + n - held, held);
    d->n_pending = held;
    *text = d->out.p;
    *text_len = d->out.n;
    return DS4_OK;
}

void ds4_detok_finish(ds4_detok_h *d, const char **text, size_t *text_len)
{
    d->out.n = 0;
    d->out.p[0] = '\0';
    if (d->n_pending > 0) {
        /* an unfinished sequence at the end is one maximal subpart: one U+FFFD */
        memcpy(d->out.p, REPLACEMENT, 3);
        d->out.n = 3;
        d->out.p[3] = '\0';
        d->n_pending = 0;
    }
    *text = d->out.p;
    *text_len = d->out.n;
}
