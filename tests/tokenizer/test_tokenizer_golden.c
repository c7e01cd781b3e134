/*
 * test_tokenizer_golden - reference corpora with ids from the Hugging Face Rust library: the
 * public golden corpus (encode-public.jsonl) and a differential corpus of random Unicode text
 * (hf-differential.jsonl: characters new in Unicode 15/16, long whitespace runs, added-token
 * fragments). Encode must give identical ids, decode must give back the text, and the
 * streaming detokenizer fed one id at a time must give the same text in valid-UTF-8 chunks.
 */
#include "test.h"
#include "tok-test-util.h"

#include "ds4/log.h"

static ds4_tokenizer_h *g_tok;
static json_t *g_rows;

static void test_encode_matches_reference(void)
{
    size_t i, bad = 0;
    json_t *row;
    ds4_tok_scratch_h *scratch = NULL;
    DS4_CHECK(ds4_tok_scratch_create(g_tok, &scratch) == DS4_OK);
    json_array_foreach(g_rows, i, row)
    {
        json_t *jt = json_object_get(row, "text"), *jids = json_object_get(row, "ids");
        int32_t *ids = NULL;
        size_t n = 0;
        ds4_status_t st = ds4_tokenizer_encode(g_tok, scratch, json_string_value(jt),
                                               json_string_length(jt), &ids, &n, NULL, NULL);
        bool ok = st == DS4_OK && n == json_array_size(jids);
        for (size_t k = 0; ok && k < n; k++)
            ok = ids[k] == json_integer_value(json_array_get(jids, k));
        if (!ok && bad++ < 5) {
            fprintf(stderr, "  row %zu: status %s, %zu ids vs %zu expected\n", i,
                    ds4_status_name(st), n, json_array_size(jids));
            for (size_t k = 0; k < n && k < json_array_size(jids); k++)
                if (ids[k] != json_integer_value(json_array_get(jids, k))) {
                    fprintf(stderr, "    first difference at %zu: %d vs %lld\n", k, ids[k],
                            (long long)json_integer_value(json_array_get(jids, k)));
                    break;
                }
        }
        ds4_free(ids);
    }
    ds4_tok_scratch_destroy(scratch);
    DS4_CHECKF(bad == 0, "%zu of %zu rows differ", bad, json_array_size(g_rows));
    fprintf(stderr, "  encode: %zu/%zu rows identical\n", json_array_size(g_rows) - bad,
            json_array_size(g_rows));
}

static void row_ids(const json_t *row, int32_t **ids, size_t *n)
{
    json_t *jids = json_object_get(row, "ids");
    *n = json_array_size(jids);
    *ids = ds4_malloc_array(*n + 1, sizeof(**ids));
    for (size_t k = 0; k < *n; k++)
        (*ids)[k] = (int32_t)json_integer_value(json_array_get(jids, k));
}

static void test_decode_gives_text(void)
{
    size_t i, bad = 0;
    json_t *row;
    json_array_foreach(g_rows, i, row)
    {
        json_t *jt = json_object_get(row, "text");
        int32_t *ids;
        size_t n, len = 0;
        row_ids(row, &ids, &n);
        char *text = NULL;
        ds4_status_t st = ds4_tokenizer_decode(g_tok, ids, n, false, &text, &len, NULL);
        bool ok = st == DS4_OK && len == json_string_length(jt) &&
                  memcmp(text, json_string_value(jt), len) == 0;
        if (!ok && bad++ < 5)
            fprintf(stderr, "  row %zu: decode differs (status %s)\n", i, ds4_status_name(st));
        ds4_free(text);
        ds4_free(ids);
    }
    DS4_CHECKF(bad == 0, "%zu rows decode differently", bad);
}

static void test_stream_matches_decode(void)
{
    size_t i, bad = 0, bad_utf8 = 0;
    json_t *row;
    ds4_detok_h *d = NULL;
    DS4_CHECK(ds4_detok_create(g_tok, NULL, &d) == DS4_OK);
    json_array_foreach(g_rows, i, row)
    {
        int32_t *ids;
        size_t n, len = 0;
        row_ids(row, &ids, &n);
        char *full = NULL;
        DS4_CHECK(ds4_tokenizer_decode(g_tok, ids, n, false, &full, &len, NULL) == DS4_OK);
        char *acc = ds4_malloc(len * 3 + 16);
        size_t an = 0;
        for (size_t k = 0; k <= n; k++) {
            const char *chunk;
            size_t cl;
            if (k < n)
                DS4_CHECK(ds4_detok_feed(d, ids[k], &chunk, &cl, NULL) == DS4_OK);
            else
                ds4_detok_finish(d, &chunk, &cl);
            if (!ds4_utf8_validate(chunk, cl, NULL))
                bad_utf8++;
            if (an + cl <= len * 3 + 16)
                memcpy(acc + an, chunk, cl);
            an += cl;
        }
        if ((an != len || memcmp(acc, full, len) != 0) && bad++ < 5)
            fprintf(stderr, "  row %zu: streamed text differs from decode\n", i);
        ds4_free(acc);
        ds4_free(full);
        ds4_free(ids);
    }
    ds4_detok_destroy(d);
    DS4_CHECKF(bad == 0, "%zu rows stream differently", bad);
    DS4_CHECKF(bad_utf8 == 0, "%zu chunks were invalid UTF-8", bad_utf8);
}

int main(void)
{
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    if (ds4_tokenizer_load(tok_test_default_path(), &g_tok, &diag) != DS4_OK) {
        ds4_diag_log(&diag, "tokenizer");
        return 1;
    }
    ds4_diag_free(&diag);
    static const char *const corpora[] = {"tokenizer/encode-public.jsonl",
                                          "tokenizer/hf-differential.jsonl"};
    for (size_t k = 0; k < DS4_ARRAY_LEN(corpora); k++) {
        fprintf(stderr, "corpus %s\n", corpora[k]);
        g_rows = tok_test_read_jsonl(ds4_test_fixture(corpora[k]));
        if (g_rows == NULL)
            return 1;
        DS4_RUN(test_encode_matches_reference);
        DS4_RUN(test_decode_gives_text);
        DS4_RUN(test_stream_matches_decode);
        json_decref(g_rows);
    }
    ds4_tokenizer_destroy(g_tok);
    return ds4_test_finish();
}
