/*
 * test_tokenizer_unit - tokenizer behaviour outside the golden corpus: the published V4
 * example, bad input (invalid UTF-8 with offsets, unknown ids), malformed tokenizer.json reject
 * cases on a small hand-built tokenizer, streaming across split code points, skip of special
 * tokens, and one tokenizer shared by several threads.
 */
#include "test.h"
#include "tok-test-util.h"

#include "ds4/json.h"

#include <pthread.h>

static ds4_tokenizer_h *g_tok;

static void test_published_example(void)
{
    /* DeepSeek's published V4 example (shared/reference/v4-model.md §7) */
    const char *text = "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>";
    const int32_t want[] = {128803, 30594, 128804, 128821, 36101, 128822, 7624, 1};
    int32_t *ids = NULL;
    size_t n = 0;
    DS4_CHECK_STATUS(ds4_tokenizer_encode(g_tok, NULL, text, strlen(text), &ids, &n, NULL, NULL),
                     DS4_OK);
    DS4_CHECK_EQ_INT(n, DS4_ARRAY_LEN(want));
    for (size_t i = 0; i < n && i < DS4_ARRAY_LEN(want); i++)
        DS4_CHECK_EQ_INT(ids[i], want[i]);
    char *back = NULL;
    DS4_CHECK_STATUS(ds4_tokenizer_decode(g_tok, ids, n, true, &back, NULL, NULL), DS4_OK);
    /* <think>, </think> and EOS are special; <｜User｜> and <｜Assistant｜> are not */
    DS4_CHECK(back != NULL && strcmp(back, "<｜User｜>你好<｜Assistant｜>推理答案") == 0);
    ds4_free(back);
    ds4_free(ids);
    DS4_CHECK_EQ_INT(ds4_tokenizer_token_id(g_tok, "<think>"), 128821);
    DS4_CHECK_EQ_INT(ds4_tokenizer_token_id(g_tok, "<｜end▁of▁sentence｜>"), 1);
    DS4_CHECK(ds4_tokenizer_is_special(g_tok, 1));
    DS4_CHECK(!ds4_tokenizer_is_special(g_tok, 128803));
    DS4_CHECK_EQ_INT(ds4_tokenizer_n_ids(g_tok), 128847);

    /* empty text */
    DS4_CHECK_STATUS(ds4_tokenizer_encode(g_tok, NULL, "", 0, &ids, &n, NULL, NULL), DS4_OK);
    DS4_CHECK_EQ_INT(n, 0);
    ds4_free(ids);
}

static void expect_bad_utf8(const char *text, size_t len, size_t offset)
{
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    int32_t *ids = NULL;
    size_t n = 0, off = 9999;
    DS4_CHECK_STATUS(ds4_tokenizer_encode(g_tok, NULL, text, len, &ids, &n, &off, &diag),
                     DS4_ERR_INVALID_UTF8);
    DS4_CHECK(ids == NULL);
    DS4_CHECK_EQ_INT(off, offset);
    char needle[64];
    snprintf(needle, sizeof(needle), "invalid UTF-8 at byte offset %zu", offset);
    char *all = ds4_diag_join(&diag, "; ");
    DS4_CHECK_STR_CONTAINS(all, needle);
    ds4_free(all);
    ds4_diag_free(&diag);
}

static void test_invalid_utf8(void)
{
    expect_bad_utf8("ab\xff" "cd", 5, 2);
    expect_bad_utf8("\xc0\x80", 2, 0);                 /* overlong NUL */
    expect_bad_utf8("xx\xed\xa0\x80", 5, 2);           /* UTF-16 surrogate */
    expect_bad_utf8("abc\xe4\xb8", 5, 3);              /* truncated at the end */
    expect_bad_utf8("0123456789\xf4\x90\x80\x80", 14, 10); /* above U+10FFFF */
    expect_bad_utf8("héllo wörld \x80", 15, 14);       /* lone continuation byte */
    DS4_CHECK(ds4_utf8_validate("a\0b", 3, NULL));     /* NUL is valid UTF-8 */
}

static void test_unknown_ids(void)
{
    const int32_t bad[][2] = {{10, 128847}, {10, -1}, {10, 129279}};
    for (size_t k = 0; k < DS4_ARRAY_LEN(bad); k++) {
        ds4_diag_t diag;
        ds4_diag_init(&diag);
        char *text = NULL;
        DS4_CHECK_STATUS(ds4_tokenizer_decode(g_tok, bad[k], 2, false, &text, NULL, &diag),
                         DS4_ERR_VOCAB);
        DS4_CHECK(text == NULL);
        char needle[64];
        snprintf(needle, sizeof(needle), "id %d at position 1", bad[k][1]);
        char *all = ds4_diag_join(&diag, "; ");
        DS4_CHECK_STR_CONTAINS(all, needle);
        ds4_free(all);
        ds4_diag_free(&diag);
    }
    ds4_detok_h *d = NULL;
    DS4_CHECK_STATUS(ds4_detok_create(g_tok, NULL, &d), DS4_OK);
    const char *out;
    size_t len;
    int32_t e4 = ds4_tokenizer_token_id(g_tok, "\xe4");
    DS4_CHECK_STATUS(ds4_detok_feed(d, e4, &out, &len, NULL), DS4_OK);
    DS4_CHECK_EQ_INT(len, 0);
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    DS4_CHECK_STATUS(ds4_detok_feed(d, 200000, &out, &len, &diag), DS4_ERR_VOCAB);
    DS4_CHECK(ds4_diag_contains(&diag, "id 200000"));
    ds4_diag_free(&diag);
    /* the held byte survived the rejected id */
    DS4_CHECK_STATUS(ds4_detok_feed(d, ds4_tokenizer_token_id(g_tok, "\xbd"), &out, &len, NULL),
                     DS4_OK);
    DS4_CHECK_STATUS(ds4_detok_feed(d, ds4_tokenizer_token_id(g_tok, "\xa0"), &out, &len, NULL),
                     DS4_OK);
    DS4_CHECK(len == 3 && memcmp(out, "你", 3) == 0);
    ds4_detok_destroy(d);
}

/* Feeds ids one by one; returns the concatenation (ds4_free) after checking each chunk. */
static char *stream(const int32_t *ids, size_t n, bool skip)
{
    ds4_detok_params_t p = ds4_detok_params_default();
    p.skip_special_tokens = skip;
    ds4_detok_h *d = NULL;
    DS4_CHECK_STATUS(ds4_detok_create(g_tok, &p, &d), DS4_OK);
    char *acc = ds4_calloc(1, 4096);
    size_t an = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *out;
        size_t len;
        if (i < n)
            DS4_CHECK_STATUS(ds4_detok_feed(d, ids[i], &out, &len, NULL), DS4_OK);
        else
            ds4_detok_finish(d, &out, &len);
        DS4_CHECK(ds4_utf8_validate(out, len, NULL));
        memcpy(acc + an, out, len);
        an += len;
    }
    ds4_detok_destroy(d);
    return acc;
}

static void test_stream_split_code_points(void)
{
    /* 😀 = F0 9F 98 80 fed as four byte tokens, then "a", an invalid byte, a truncated tail */
    const char *bytes[] = {"\xf0", "\x9f", "\x98", "\x80", "a", "\xff", "b", "\xe4", "\xb8"};
    int32_t ids[DS4_ARRAY_LEN(bytes)];
    for (size_t i = 0; i < DS4_ARRAY_LEN(bytes); i++) {
        ids[i] = ds4_tokenizer_token_id(g_tok, bytes[i]);
        DS4_CHECK(ids[i] >= 0);
    }
    const char *want = "😀a\xef\xbf\xbd" "b\xef\xbf\xbd"; /* U+FFFD for 0xFF and for E4 B8 */
    char *s = stream(ids, DS4_ARRAY_LEN(ids), false);
    DS4_CHECKF(strcmp(s, want) == 0, "stream gave %s", s);
    char *full = NULL;
    DS4_CHECK_STATUS(ds4_tokenizer_decode(g_tok, ids, DS4_ARRAY_LEN(ids), false, &full, NULL,
                                          NULL),
                     DS4_OK);
    DS4_CHECK(full != NULL && strcmp(full, want) == 0);
    ds4_free(full);
    ds4_free(s);

    /* an invalid prefix broken by a new lead byte: E4 then E4 B8 80 → U+FFFD 一 */
    int32_t ids2[] = {ds4_tokenizer_token_id(g_tok, "\xe4"), ds4_tokenizer_token_id(g_tok, "\xe4"),
                      ds4_tokenizer_token_id(g_tok, "\xb8"), ds4_tokenizer_token_id(g_tok, "\x80")};
    s = stream(ids2, 4, false);
    DS4_CHECK(strcmp(s, "\xef\xbf\xbd一") == 0);
    ds4_free(s);

    /* special tokens skipped in the stream like in decode */
    int32_t ids3[] = {128821, 36101, 128822, 7624, 1};
    s = stream(ids3, 5, true);
    DS4_CHECK(strcmp(s, "推理答案") == 0);
    ds4_free(s);
    s = stream(ids3, 5, false);
    DS4_CHECK(strcmp(s, "<think>推理</think>答案<｜end▁of▁sentence｜>") == 0);
    ds4_free(s);
}

/* ---- a small hand-built tokenizer.json and its reject cases ---- */

/* GPT-2's byte → code point table, written out independently of the library. */
static void byte_symbol(int b, char out[4])
{
    int cp = b, n = 0;
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    if (!printable) {
        for (int k = 0; k < b; k++)
            n += !((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174);
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = '\0';
    }
}

static json_t *mini_tokenizer(void)
{
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        char sym[4];
        byte_symbol(b, sym);
        json_object_set_new(vocab, sym, json_integer(b));
    }
    json_object_set_new(vocab, "ab", json_integer(256));
    json_object_set_new(vocab, "abc", json_integer(257));
    json_object_set_new(vocab, "ĠĠ", json_integer(258));
    return json_pack(
        "{s:s, s:n, s:n, s:[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}], s:n,"
        " s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]},"
        " s:n, s:{s:s}, s:{s:s, s:n, s:n, s:o, s:[s, s, s]}}",
        "version", "1.0", "truncation", "padding", "added_tokens", "id", 259, "content", "<x>",
        "special", 1, "normalized", 0, "lstrip", 0, "rstrip", 0, "single_word", 0, "normalizer",
        "pre_tokenizer", "type", "Sequence", "pretokenizers", "type", "Split", "pattern",
        "Regex", "\\s+|\\S+", "behavior", "Isolated", "invert", 0, "type", "ByteLevel",
        "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0, "post_processor", "decoder",
        "type", "ByteLevel", "model", "type", "BPE", "dropout", "unk_token", "vocab", vocab,
        "merges", "a b", "ab c", "Ġ Ġ");
}

static ds4_status_t load_json(json_t *root, ds4_diag_t *diag, ds4_tokenizer_h **out)
{
    char *s = json_dumps(root, JSON_COMPACT);
    ds4_tokenizer_h *t = NULL;
    ds4_status_t st = ds4_tokenizer_load_buf(s, strlen(s), "mini", &t, diag);
    free(s);
    if (out != NULL)
        *out = t;
    else
        ds4_tokenizer_destroy(t);
    return st;
}

static void test_mini_tokenizer(void)
{
    json_t *root = mini_tokenizer();
    DS4_CHECK(root != NULL);
    ds4_tokenizer_h *t = NULL;
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    DS4_CHECK_STATUS(load_json(root, &diag, &t), DS4_OK);
    if (t != NULL) {
        const char *text = "abc ab<x>  ca";
        int32_t *ids = NULL;
        size_t n = 0;
        DS4_CHECK_STATUS(ds4_tokenizer_encode(t, NULL, text, strlen(text), &ids, &n, NULL, NULL),
                         DS4_OK);
        const int32_t want[] = {257, 32, 256, 259, 258, 'c', 'a'};
        DS4_CHECK_EQ_INT(n, DS4_ARRAY_LEN(want));
        for (size_t i = 0; i < n && i < DS4_ARRAY_LEN(want); i++)
            DS4_CHECK_EQ_INT(ids[i], want[i]);
        ds4_free(ids);
        ds4_tokenizer_destroy(t);
    }
    ds4_diag_free(&diag);
    json_decref(root);
}

typedef void (*mutate_fn)(json_t *root);

static void m_no_model(json_t *r) { json_object_del(r, "model"); }
static void m_wordpiece(json_t *r)
{
    json_object_set_new(json_object_get(r, "model"), "type", json_string("WordPiece"));
}
static void m_merge_oov(json_t *r)
{
    json_array_append_new(json_object_get(json_object_get(r, "model"), "merges"),
                          json_string("q z"));
}
static void m_merge_syntax(json_t *r)
{
    json_array_append_new(json_object_get(json_object_get(r, "model"), "merges"),
                          json_string("abc"));
}
static json_t *split0(json_t *r)
{
    return json_array_get(json_object_get(json_object_get(r, "pre_tokenizer"), "pretokenizers"),
                          0);
}
static void m_split_removed(json_t *r)
{
    json_object_set_new(split0(r), "behavior", json_string("Removed"));
}
static void m_bad_regex(json_t *r)
{
    json_object_set_new(split0(r), "pattern", json_pack("{s:s}", "Regex", "(\\p{L}"));
}
static void m_lstrip(json_t *r)
{
    json_object_set_new(json_array_get(json_object_get(r, "added_tokens"), 0), "lstrip",
                        json_true());
}
static void m_no_byte(json_t *r)
{
    json_object_del(json_object_get(json_object_get(r, "model"), "vocab"), "Ā");
}
static void m_normalizer(json_t *r)
{
    json_object_set_new(r, "normalizer", json_pack("{s:s}", "type", "NFKC"));
}
static void m_no_decoder(json_t *r) { json_object_set_new(r, "decoder", json_null()); }
static void m_bad_id(json_t *r)
{
    json_object_set_new(json_object_get(json_object_get(r, "model"), "vocab"), "zz",
                        json_string("7"));
}
static void m_dup_id(json_t *r)
{
    json_object_set_new(json_object_get(json_object_get(r, "model"), "vocab"), "zz",
                        json_integer(256));
}
static void m_dropout(json_t *r)
{
    json_object_set_new(json_object_get(r, "model"), "dropout", json_real(0.1));
}
static void m_added_not_array(json_t *r)
{
    json_object_set_new(r, "added_tokens", json_string("none"));
}
static void m_nested_class(json_t *r)
{
    json_object_set_new(split0(r), "pattern", json_pack("{s:s}", "Regex", "[a-z&&[^aeiou]]+"));
}

static void test_reject_cases(void)
{
    const struct {
        mutate_fn fn;
        ds4_status_t want;
        const char *needle;
    } cases[] = {
        {m_no_model, DS4_ERR_TOKENIZER, "model: missing"},
        {m_wordpiece, DS4_ERR_UNSUPPORTED, "model type \"WordPiece\""},
        {m_merge_oov, DS4_ERR_TOKENIZER, "model.merges[3]: merged token \"qz\" is not in model.vocab"},
        {m_merge_syntax, DS4_ERR_TOKENIZER, "model.merges[3]: expected"},
        {m_split_removed, DS4_ERR_UNSUPPORTED, "Split behavior \"Removed\""},
        {m_bad_regex, DS4_ERR_TOKENIZER, "regex does not compile"},
        {m_lstrip, DS4_ERR_UNSUPPORTED, "added_tokens[0].lstrip"},
        {m_no_byte, DS4_ERR_TOKENIZER, "(byte 0x00) is missing"},
        {m_normalizer, DS4_ERR_UNSUPPORTED, "normalizer NFKC"},
        {m_no_decoder, DS4_ERR_UNSUPPORTED, "decoder"},
        {m_bad_id, DS4_ERR_TOKENIZER, "token \"zz\": id must be an integer"},
        {m_dup_id, DS4_ERR_TOKENIZER, "id 256 is used by"},
        {m_dropout, DS4_ERR_UNSUPPORTED, "BPE dropout"},
        {m_added_not_array, DS4_ERR_TOKENIZER, "added_tokens: expected an array"},
        {m_nested_class, DS4_ERR_UNSUPPORTED, "character class intersection"},
    };
    for (size_t i = 0; i < DS4_ARRAY_LEN(cases); i++) {
        json_t *root = mini_tokenizer();
        cases[i].fn(root);
        ds4_diag_t diag;
        ds4_diag_init(&diag);
        ds4_tokenizer_h *t = (ds4_tokenizer_h *)&diag; /* must stay untouched on failure */
        ds4_status_t st = load_json(root, &diag, &t);
        DS4_CHECKF(st == cases[i].want, "case %zu: status %s, want %s", i, ds4_status_name(st),
                   ds4_status_name(cases[i].want));
        DS4_CHECKF(t == NULL || t == (ds4_tokenizer_h *)&diag, "case %zu: output set", i);
        char *all = ds4_diag_join(&diag, "; ");
        DS4_CHECK_STR_CONTAINS(all, cases[i].needle);
        ds4_free(all);
        ds4_diag_free(&diag);
        json_decref(root);
    }
    /* not JSON at all, and several problems at once */
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_tokenizer_h *t = NULL;
    DS4_CHECK_STATUS(ds4_tokenizer_load_buf("{\"model\": ", 10, "trunc", &t, &diag),
                     DS4_ERR_PARSE);
    DS4_CHECK(ds4_diag_contains(&diag, "invalid JSON"));
    ds4_diag_free(&diag);
    json_t *root = mini_tokenizer();
    m_merge_oov(root);
    m_lstrip(root);
    m_normalizer(root);
    ds4_diag_init(&diag);
    DS4_CHECK_STATUS(load_json(root, &diag, NULL), DS4_ERR_TOKENIZER);
    DS4_CHECK(diag.count >= 3);
    ds4_diag_free(&diag);
    json_decref(root);
    DS4_CHECK_STATUS(ds4_tokenizer_load("/nonexistent/tokenizer.json", &t, NULL), DS4_ERR_IO);
}

/* ---- shared across threads ---- */

typedef struct thread_arg {
    json_t *rows;
    size_t first, step;
    size_t bad;
} thread_arg_t;

static void *encode_rows(void *p)
{
    thread_arg_t *a = p;
    ds4_tok_scratch_h *s = NULL;
    if (ds4_tok_scratch_create(g_tok, &s) != DS4_OK) {
        a->bad++;
        return NULL;
    }
    for (size_t i = a->first; i < json_array_size(a->rows); i += a->step) {
        json_t *row = json_array_get(a->rows, i);
        json_t *jt = json_object_get(row, "text"), *jids = json_object_get(row, "ids");
        int32_t *ids = NULL;
        size_t n = 0;
        /* half the threads use their own scratch, half a temporary one per call */
        if (ds4_tokenizer_encode(g_tok, (a->first & 1) != 0 ? s : NULL, json_string_value(jt),
                                 json_string_length(jt), &ids, &n, NULL, NULL) != DS4_OK ||
            n != json_array_size(jids)) {
            a->bad++;
        } else {
            for (size_t k = 0; k < n; k++)
                if (ids[k] != json_integer_value(json_array_get(jids, k))) {
                    a->bad++;
                    break;
                }
        }
        ds4_free(ids);
    }
    ds4_tok_scratch_destroy(s);
    return NULL;
}

static void test_shared_across_threads(void)
{
    json_t *rows = tok_test_read_jsonl(ds4_test_fixture("tokenizer/encode-public.jsonl"));
    DS4_CHECK(rows != NULL);
    enum { N = 4 };
    pthread_t th[N];
    thread_arg_t args[N];
    for (size_t i = 0; i < N; i++) {
        args[i] = (thread_arg_t){.rows = rows, .first = i, .step = 7, .bad = 0};
        pthread_create(&th[i], NULL, encode_rows, &args[i]);
    }
    for (size_t i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        DS4_CHECK_EQ_INT(args[i].bad, 0);
    }
    json_decref(rows);
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
    DS4_RUN(test_published_example);
    DS4_RUN(test_invalid_utf8);
    DS4_RUN(test_unknown_ids);
    DS4_RUN(test_stream_split_code_points);
    DS4_RUN(test_mini_tokenizer);
    DS4_RUN(test_reject_cases);
    DS4_RUN(test_shared_across_threads);
    ds4_tokenizer_destroy(g_tok);
    return ds4_test_finish();
}
