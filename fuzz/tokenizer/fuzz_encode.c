/*
 * fuzz_encode - libFuzzer entry for the tokenizer: any bytes are encoded; valid UTF-8 must
 * round-trip through decode and through the streaming detokenizer; invalid UTF-8 must be
 * rejected with DS4_ERR_INVALID_UTF8. The same bytes read as ids exercise decode on unknown
 * ids. A broken invariant aborts (the fuzzer reports it).
 * The tokenizer is $DS4_TOKENIZER or the embedded default (models/tokenizer/).
 */
#include "ds4/alloc.h"
#include "ds4/log.h"
#include "ds4/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ds4_tokenizer_h *g_tok;
static ds4_tok_scratch_h *g_scratch;
static ds4_detok_h *g_detok;

static void setup(void)
{
    if (g_tok != NULL)
        return;
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    if (ds4_tokenizer_load_default(&g_tok, &diag) != DS4_OK) {
        ds4_diag_log(&diag, "fuzz tokenizer");
        abort();
    }
    ds4_diag_free(&diag);
    DS4_ASSERT(ds4_tok_scratch_create(g_tok, &g_scratch) == DS4_OK);
    DS4_ASSERT(ds4_detok_create(g_tok, NULL, &g_detok) == DS4_OK);
}

/* Streams ids and checks the chunks are valid UTF-8 and add up to `want`. */
static void check_stream(const int32_t *ids, size_t n, const char *want, size_t want_len)
{
    size_t off = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *chunk;
        size_t len;
        if (i < n) {
            ds4_status_t st = ds4_detok_feed(g_detok, ids[i], &chunk, &len, NULL);
            if (st == DS4_ERR_VOCAB)
                continue;
            DS4_ASSERT(st == DS4_OK);
        } else {
            ds4_detok_finish(g_detok, &chunk, &len);
        }
        DS4_ASSERT(ds4_utf8_validate(chunk, len, NULL));
        DS4_ASSERT(off + len <= want_len && memcmp(want + off, chunk, len) == 0);
        off += len;
    }
    DS4_ASSERT(off == want_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    const char *text = (const char *)data;
    int32_t *ids = NULL;
    size_t n = 0, bad = 0;
    ds4_status_t st = ds4_tokenizer_encode(g_tok, g_scratch, text, size, &ids, &n, &bad, NULL);
    if (ds4_utf8_validate(text, size, NULL)) {
        DS4_ASSERT(st == DS4_OK);
        char *back = NULL;
        size_t blen = 0;
        DS4_ASSERT(ds4_tokenizer_decode(g_tok, ids, n, false, &back, &blen, NULL) == DS4_OK);
        DS4_ASSERT(blen == size && memcmp(back, text, size) == 0);
        check_stream(ids, n, back, blen);
        ds4_free(back);
        ds4_free(ids);
    } else {
        DS4_ASSERT(st == DS4_ERR_INVALID_UTF8 && bad < size && ids == NULL);
    }

    /* the same bytes as ids: decode must fail on an unknown id, else match the stream */
    size_t n_ids = size / 4;
    int32_t *raw = ds4_malloc_array(n_ids + 1, sizeof(*raw));
    DS4_ASSERT(raw != NULL);
    uint32_t limit = ds4_tokenizer_n_ids(g_tok) + 64;
    bool any_bad = false;
    for (size_t i = 0; i < n_ids; i++) {
        uint32_t v;
        memcpy(&v, data + 4 * i, 4);
        raw[i] = (int32_t)(v % limit);
        any_bad |= (uint32_t)raw[i] >= ds4_tokenizer_n_ids(g_tok);
    }
    char *dec = NULL;
    size_t dlen = 0;
    st = ds4_tokenizer_decode(g_tok, raw, n_ids, false, &dec, &dlen, NULL);
    if (any_bad) {
        DS4_ASSERT(st == DS4_ERR_VOCAB && dec == NULL);
    } else {
        DS4_ASSERT(st == DS4_OK && ds4_utf8_validate(dec, dlen, NULL));
        check_stream(raw, n_ids, dec, dlen);
    }
    ds4_free(dec);
    ds4_free(raw);
    return 0;
}
