/*
 * fuzz_load - libFuzzer entry for the tokenizer.json loader (the hand-written vocab/merges
 * scanner and the feature checks): any bytes are loaded; a load either fails with a status
 * and at least one problem in the diagnostics, or yields a tokenizer that can encode and
 * decode a short text.
 */
#include "ds4/alloc.h"
#include "ds4/log.h"
#include "ds4/tokenizer.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_tokenizer_h *tok = NULL;
    ds4_status_t st = ds4_tokenizer_load_buf((const char *)data, size, "fuzz", &tok, &diag);
    if (st != DS4_OK) {
        DS4_ASSERT(tok == NULL && (diag.count > 0 || st == DS4_ERR_NO_MEMORY));
        ds4_diag_free(&diag);
        return 0;
    }
    ds4_diag_free(&diag);
    static const char text[] = "abc ab<x> 12345 héllo  \n\tz";
    int32_t *ids = NULL;
    size_t n = 0;
    st = ds4_tokenizer_encode(tok, NULL, text, sizeof(text) - 1, &ids, &n, NULL, NULL);
    DS4_ASSERT(st == DS4_OK || st == DS4_ERR_INTERNAL);
    if (st == DS4_OK) {
        char *back = NULL;
        size_t blen = 0;
        DS4_ASSERT(ds4_tokenizer_decode(tok, ids, n, false, &back, &blen, NULL) == DS4_OK);
        ds4_free(back);
        ds4_free(ids);
    }
    ds4_tokenizer_destroy(tok);
    return 0;
}
