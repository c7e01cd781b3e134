/*
 * Good-path tests of the safetensors reader: the golden tiny-a checkpoint (585 tensors, real V4
 * names and dtypes) cross-checked against an independent fread + jansson parse of the same file
 * and against values read with Python's json/struct, plus a generated 2-shard checkpoint.
 */
#include "ds4/safetensors.h"
#include "ds4/status.h"
#include "st-testutil.h"
#include "test.h"

#include <jansson.h>
#include <pthread.h>

static char g_tiny[4096]; /* tests/fixtures/tiny-a */

/* Independent reading of a safetensors file: header length, JSON header, data start. */
typedef struct ref_file {
    FILE *f;
    uint64_t data_start;
    json_t *header;
} ref_file_t;

static int ref_open(const char *path, ref_file_t *r)
{
    memset(r, 0, sizeof(*r));
    r->f = fopen(path, "rb");
    if (r->f == NULL)
        return -1;
    unsigned char b[8];
    if (fread(b, 1, 8, r->f) != 8)
        return -1;
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)b[i] << (8 * i);
    char *h = malloc(n);
    if (h == NULL || fread(h, 1, n, r->f) != n) {
        free(h);
        return -1;
    }
    json_error_t err;
    r->header = json_loadb(h, n, 0, &err);
    free(h);
    r->data_start = 8 + n;
    return r->header != NULL ? 0 : -1;
}

static void ref_close(ref_file_t *r)
{
    if (r->f != NULL)
        fclose(r->f);
    json_decref(r->header);
}

static int ref_read(ref_file_t *r, uint64_t off, void *buf, size_t n)
{
    if (fseek(r->f, (long)(r->data_start + off), SEEK_SET) != 0)
        return -1;
    return fread(buf, 1, n, r->f) == n ? 0 : -1;
}

static void hex(const void *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", ((const unsigned char *)p)[i]);
}

/* One known tensor: values printed by Python (json + struct) from the golden file. */
typedef struct known {
    const char *name;
    ds4_dtype_t dtype;
    int32_t n_dims;
    int64_t shape[2];
    size_t size_bytes;
    const char *first8_hex;
} known_t;

static const known_t k_known[] = {
    {"embed.weight", DS4_DTYPE_BF16, 2, {1024, 256}, 524288, "69bfe83f833f8f3f"},
    {"layers.2.attn.wq_a.weight", DS4_DTYPE_F8_E4M3, 2, {128, 256}, 32768, "dfedeccee8d05b5b"},
    {"layers.2.attn.wq_a.scale", DS4_DTYPE_F8_E8M0, 2, {1, 2}, 2, "7575"},
    {"layers.3.ffn.experts.0.w1.weight", DS4_DTYPE_I8, 2, {128, 128}, 16384, "a4bb1bc88c6c039d"},
    {"layers.3.ffn.experts.0.w1.scale", DS4_DTYPE_F8_E8M0, 2, {128, 8}, 1024, "7a7a7b7a7a7a7a7a"},
    {"layers.0.ffn.gate.tid2eid", DS4_DTYPE_I64, 2, {1024, 2}, 16384, "0200000000000000"},
    {"hc_head_scale", DS4_DTYPE_F32, 1, {1}, 4, "27d09f3f"},
};

static void check_known(ds4_st_h st)
{
    for (size_t k = 0; k < sizeof(k_known) / sizeof(k_known[0]); k++) {
        const known_t *w = &k_known[k];
        ds4_diag_t d;
        ds4_diag_init(&d);
        ds4_tensor_view_t v;
        ds4_status_t s = ds4_st_get(st, w->name, &v, &d);
        DS4_CHECK_STATUS(s, DS4_OK);
        if (s != DS4_OK)
            continue;
        DS4_CHECK(strcmp(v.name, w->name) == 0);
        DS4_CHECKF(v.dtype == w->dtype, "%s dtype %s", w->name, ds4_dtype_name(v.dtype));
        DS4_CHECK_EQ_INT(v.n_dims, w->n_dims);
        for (int32_t i = 0; i < w->n_dims; i++)
            DS4_CHECK_EQ_INT(v.shape[i], w->shape[i]);
        DS4_CHECK_EQ_INT(v.size_bytes, w->size_bytes);
        DS4_CHECK_EQ_INT(v.n_elements * (int64_t)ds4_dtype_size(v.dtype), w->size_bytes);
        char h[17] = {0};
        size_t n = strlen(w->first8_hex) / 2;
        hex(v.data, n, h);
        DS4_CHECKF(strcmp(h, w->first8_hex) == 0, "%s first bytes %s want %s", w->name, h,
                   w->first8_hex);
        DS4_CHECK_STR_CONTAINS(v.file, "model.safetensors");
        ds4_diag_free(&d);
    }
}

/* Every tensor: offsets, dtype, shape and first bytes against the independent parse. */
static void check_all_against_ref(ds4_st_h st, const char *file)
{
    ref_file_t r;
    DS4_CHECK(ref_open(file, &r) == 0);
    if (r.header == NULL) {
        ref_close(&r);
        return;
    }
    size_t n_ref = 0, mismatches = 0;
    const char *key;
    json_t *e;
    json_object_foreach(r.header, key, e)
    {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        n_ref++;
        ds4_diag_t d;
        ds4_diag_init(&d);
        ds4_tensor_view_t v;
        if (ds4_st_get(st, key, &v, &d) != DS4_OK) {
            mismatches++;
            ds4_diag_free(&d);
            continue;
        }
        ds4_diag_free(&d);
        json_t *shape = json_object_get(e, "shape");
        uint64_t begin =
            (uint64_t)json_integer_value(json_array_get(json_object_get(e, "data_offsets"), 0));
        uint64_t end =
            (uint64_t)json_integer_value(json_array_get(json_object_get(e, "data_offsets"), 1));
        bool ok =
            strcmp(ds4_dtype_name(v.dtype), json_string_value(json_object_get(e, "dtype"))) == 0;
        ok = ok && (size_t)v.n_dims == json_array_size(shape);
        for (size_t i = 0; ok && i < json_array_size(shape); i++)
            ok = v.shape[i] == json_integer_value(json_array_get(shape, i));
        ok = ok && v.size_bytes == end - begin;
        unsigned char buf[32];
        size_t n = v.size_bytes < sizeof(buf) ? v.size_bytes : sizeof(buf);
        ok = ok && ref_read(&r, begin, buf, n) == 0 && memcmp(buf, v.data, n) == 0;
        /* last bytes too: the view must end where the offsets say */
        if (ok && v.size_bytes > 0) {
            unsigned char last;
            ok = ref_read(&r, end - 1, &last, 1) == 0 &&
                 last == ((const unsigned char *)v.data)[v.size_bytes - 1];
        }
        if (!ok) {
            fprintf(stderr, "  mismatch on %s\n", key);
            mismatches++;
        }
    }
    DS4_CHECK_EQ_INT(n_ref, 585);
    DS4_CHECK_EQ_INT(mismatches, 0);
    ref_close(&r);
}

static void test_tiny_a_directory(void)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_st_h st = NULL;
    ds4_status_t s = ds4_st_open(g_tiny, &st, &d);
    DS4_CHECK_STATUS(s, DS4_OK);
    if (s != DS4_OK) {
        ds4_diag_log(&d, "open");
        ds4_diag_free(&d);
        return;
    }
    DS4_CHECK_EQ_INT(ds4_st_count(st), 585);
    DS4_CHECK_EQ_INT(ds4_st_shard_count(st), 1);
    /* The directory has an index: names come in weight_map order (first/last per Python). */
    DS4_CHECK(strcmp(ds4_st_name(st, 0), "embed.weight") == 0);
    DS4_CHECK(strcmp(ds4_st_name(st, 584), "norm.weight") == 0);
    DS4_CHECK(ds4_st_name(st, 585) == NULL);
    check_known(st);
    char file[4200];
    snprintf(file, sizeof(file), "%s/model.safetensors", g_tiny);
    check_all_against_ref(st, file);
    DS4_CHECK_STATUS(ds4_st_validate_all(st, &d), DS4_OK);
    /* metadata.total_size of the index, and the sum of data_offsets spans per Python */
    DS4_CHECK_EQ_INT(ds4_st_total_bytes(st), 11602672);
    DS4_CHECK_EQ_INT(d.count, 0);
    ds4_st_close(st);
    ds4_diag_free(&d);
}

static void test_tiny_a_single_file(void)
{
    char file[4200];
    snprintf(file, sizeof(file), "%s/model.safetensors", g_tiny);
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_st_h st = NULL;
    DS4_CHECK_STATUS(ds4_st_open(file, &st, &d), DS4_OK);
    if (st == NULL)
        return;
    DS4_CHECK_EQ_INT(ds4_st_count(st), 585);
    /* Header order: the file is packed by item size then name, so an I64 tensor is first. */
    ref_file_t r;
    DS4_CHECK(ref_open(file, &r) == 0);
    void *it = json_object_iter(r.header);
    if (strcmp(json_object_iter_key(it), "__metadata__") == 0)
        it = json_object_iter_next(r.header, it);
    DS4_CHECK(strcmp(ds4_st_name(st, 0), json_object_iter_key(it)) == 0);
    ref_close(&r);
    check_known(st);
    check_all_against_ref(st, file);
    DS4_CHECK_EQ_INT(ds4_st_total_bytes(st), 11602672);

    /* ds4_st_expect: match, wildcard, wrong dtype, wrong shape, absent */
    ds4_tensor_view_t v;
    memset(&v, 0, sizeof(v));
    const int64_t emb[2] = {1024, 256}, any[2] = {-1, 256}, bad[2] = {1024, 255};
    DS4_CHECK_STATUS(ds4_st_expect(st, "embed.weight", DS4_DTYPE_BF16, 2, emb, &v, &d), DS4_OK);
    DS4_CHECK_EQ_INT(v.shape[0], 1024);
    DS4_CHECK_STATUS(ds4_st_expect(st, "embed.weight", DS4_DTYPE_BF16, 2, any, &v, &d), DS4_OK);
    DS4_CHECK_EQ_INT(d.count, 0);
    memset(&v, 0, sizeof(v));
    DS4_CHECK_STATUS(ds4_st_expect(st, "embed.weight", DS4_DTYPE_F32, 2, emb, &v, &d),
                     DS4_ERR_MODEL);
    DS4_CHECK(v.data == NULL); /* outputs untouched on failure */
    DS4_CHECK(ds4_diag_contains(&d, "embed.weight: expected F32 [1024, 256]"));
    DS4_CHECK(ds4_diag_contains(&d, "found BF16 [1024, 256]"));
    DS4_CHECK_STATUS(ds4_st_expect(st, "embed.weight", DS4_DTYPE_BF16, 2, bad, &v, &d),
                     DS4_ERR_MODEL);
    DS4_CHECK(ds4_diag_contains(&d, "expected BF16 [1024, 255]"));
    DS4_CHECK_STATUS(ds4_st_expect(st, "embed.weight", DS4_DTYPE_BF16, 1, emb, &v, &d),
                     DS4_ERR_MODEL);
    DS4_CHECK_STATUS(ds4_st_get(st, "no.such.tensor", &v, &d), DS4_ERR_NOT_FOUND);
    DS4_CHECK(ds4_diag_contains(&d, "tensor no.such.tensor not found"));
    DS4_CHECK(v.data == NULL);
    ds4_st_close(st);
    ds4_diag_free(&d);
}

static void test_dtypes(void)
{
    static const char *names[] = {"F32", "F16", "BF16",    "I64",    "I32",
                                  "I8",  "U8",  "F8_E4M3", "F8_E8M0"};
    static const size_t sizes[] = {4, 2, 2, 8, 4, 1, 1, 1, 1};
    DS4_CHECK_EQ_INT(DS4_DTYPE_COUNT, 9);
    for (int i = 0; i < DS4_DTYPE_COUNT; i++) {
        DS4_CHECK(strcmp(ds4_dtype_name((ds4_dtype_t)i), names[i]) == 0);
        DS4_CHECK_EQ_INT(ds4_dtype_size((ds4_dtype_t)i), sizes[i]);
        DS4_CHECK_EQ_INT(ds4_dtype_parse(names[i]), i);
    }
    DS4_CHECK_EQ_INT(ds4_dtype_parse("F64"), -1);
    DS4_CHECK_EQ_INT(ds4_dtype_parse("bf16"), -1);
    DS4_CHECK_EQ_INT(ds4_dtype_parse(""), -1);
    DS4_CHECK_EQ_INT(ds4_dtype_parse(NULL), -1);
    DS4_CHECK(strcmp(ds4_dtype_name(DS4_DTYPE_COUNT), "unknown") == 0);
    DS4_CHECK_EQ_INT(ds4_dtype_size(DS4_DTYPE_COUNT), 0);
}

/*
 * Two shards written here. Shard 1 (data 24 + 8 bytes): a F32 [2,3] at [0,24), u F32 [2] at
 * [24,32). Shard 2 (data 40 bytes): b I64 [4] at [0,32), c BF16 [] (scalar) at [32,34),
 * e U8 [0,5] at [34,34) (empty), f I8 [3] at [34,37).
 */
static char g_two[4096];

static int write_two_shards(void)
{
    if (stt_mkdtemp(g_two, sizeof(g_two), "two") != 0)
        return -1;
    float a[8] = {1.0f, -2.0f, 3.5f, 0.25f, 100.0f, -0.5f, 7.0f, 8.0f};
    unsigned char d2[40];
    int64_t b[4] = {10, -20, 30, 1LL << 40};
    memcpy(d2, b, sizeof(b));
    d2[32] = 0x80; /* bf16 0x3f80 = 1.0 little-endian */
    d2[33] = 0x3f;
    d2[34] = 0xff;
    d2[35] = 0x01;
    d2[36] = 0x7f;
    d2[37] = d2[38] = d2[39] = 0;
    int rc = 0;
    rc |= stt_write_st(g_two, "model-00001-of-00002.safetensors",
                       "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}",
                       1, a, sizeof(a), 0);
    rc |= stt_write_st(g_two, "model-00002-of-00002.safetensors",
                       "{\"b\":{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[0,32]},"
                       "\"c\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[32,34]},"
                       "\"e\":{\"dtype\":\"U8\",\"shape\":[0,5],\"data_offsets\":[34,34]},"
                       "\"f\":{\"dtype\":\"I8\",\"shape\":[3],\"data_offsets\":[34,37]}}",
                       1, d2, sizeof(d2), 0);
    const char *index = "{\"metadata\":{\"total_size\":69},\"weight_map\":{"
                        "\"b\":\"model-00002-of-00002.safetensors\","
                        "\"a\":\"model-00001-of-00002.safetensors\","
                        "\"c\":\"model-00002-of-00002.safetensors\","
                        "\"e\":\"model-00002-of-00002.safetensors\","
                        "\"f\":\"model-00002-of-00002.safetensors\","
                        "\"u\":\"model-00001-of-00002.safetensors\"}}";
    rc |= stt_write_raw(g_two, "model.safetensors.index.json", index, strlen(index));
    return rc;
}

static void test_two_shards(void)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_st_h st = NULL;
    DS4_CHECK_STATUS(ds4_st_open(g_two, &st, &d), DS4_OK);
    if (st == NULL) {
        ds4_diag_log(&d, "open");
        ds4_diag_free(&d);
        return;
    }
    DS4_CHECK_EQ_INT(ds4_st_count(st), 6);
    DS4_CHECK_EQ_INT(ds4_st_shard_count(st), 2);
    DS4_CHECK(strcmp(ds4_st_name(st, 0), "b") == 0);
    DS4_CHECK(strcmp(ds4_st_name(st, 1), "a") == 0);

    ds4_tensor_view_t v;
    DS4_CHECK_STATUS(ds4_st_get(st, "a", &v, &d), DS4_OK);
    DS4_CHECK_STR_CONTAINS(v.file, "model-00001-of-00002.safetensors");
    DS4_CHECK(v.dtype == DS4_DTYPE_F32 && v.n_dims == 2 && v.shape[0] == 2 && v.shape[1] == 3);
    DS4_CHECK_EQ_INT(v.size_bytes, 24);
    DS4_CHECK(((const float *)v.data)[2] == 3.5f && ((const float *)v.data)[5] == -0.5f);

    DS4_CHECK_STATUS(ds4_st_get(st, "b", &v, &d), DS4_OK);
    DS4_CHECK_STR_CONTAINS(v.file, "model-00002-of-00002.safetensors");
    DS4_CHECK(((const int64_t *)v.data)[1] == -20 && ((const int64_t *)v.data)[3] == 1LL << 40);

    DS4_CHECK_STATUS(ds4_st_get(st, "c", &v, &d), DS4_OK);
    DS4_CHECK_EQ_INT(v.n_dims, 0);
    DS4_CHECK_EQ_INT(v.n_elements, 1);
    DS4_CHECK_EQ_INT(v.size_bytes, 2);
    DS4_CHECK(((const unsigned char *)v.data)[1] == 0x3f);

    DS4_CHECK_STATUS(ds4_st_get(st, "e", &v, &d), DS4_OK);
    DS4_CHECK_EQ_INT(v.n_elements, 0);
    DS4_CHECK_EQ_INT(v.size_bytes, 0);
    DS4_CHECK_EQ_INT(v.shape[1], 5);

    DS4_CHECK_STATUS(ds4_st_get(st, "f", &v, &d), DS4_OK);
    DS4_CHECK(((const int8_t *)v.data)[0] == -1 && ((const int8_t *)v.data)[2] == 127);

    DS4_CHECK_STATUS(ds4_st_get(st, "u", &v, &d), DS4_OK);
    DS4_CHECK_STR_CONTAINS(v.file, "model-00001-of-00002.safetensors");
    DS4_CHECK(((const float *)v.data)[0] == 7.0f);

    DS4_CHECK_STATUS(ds4_st_validate_all(st, &d), DS4_OK);
    DS4_CHECK_EQ_INT(ds4_st_total_bytes(st), 69);
    DS4_CHECK_EQ_INT(d.count, 0);
    ds4_st_close(st);

    /* The index file itself opens the same checkpoint. */
    char path[4200];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", g_two);
    DS4_CHECK_STATUS(ds4_st_open(path, &st, &d), DS4_OK);
    if (st != NULL) {
        DS4_CHECK_STATUS(ds4_st_get(st, "u", &v, &d), DS4_OK);
        ds4_st_close(st);
    }
    ds4_diag_free(&d);
}

/* Lazy shard opening from many threads at once (run under ASan in CI). */
static ds4_st_h g_shared;
static int g_thread_fail;

static void *lookup_thread(void *arg)
{
    const char *names[] = {"a", "b", "c", "f", "u"};
    for (int it = 0; it < 200; it++) {
        ds4_diag_t d;
        ds4_diag_init(&d);
        ds4_tensor_view_t v;
        const char *n = names[((size_t)arg + (size_t)it) % 5];
        if (ds4_st_get(g_shared, n, &v, &d) != DS4_OK || strcmp(v.name, n) != 0)
            __atomic_fetch_add(&g_thread_fail, 1, __ATOMIC_RELAXED);
        ds4_diag_free(&d);
    }
    return NULL;
}

static void test_concurrent_lazy_open(void)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    DS4_CHECK_STATUS(ds4_st_open(g_two, &g_shared, &d), DS4_OK);
    if (g_shared == NULL)
        return;
    pthread_t th[4];
    for (size_t i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, lookup_thread, (void *)i);
    for (size_t i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    DS4_CHECK_EQ_INT(g_thread_fail, 0);
    ds4_st_close(g_shared);
    ds4_diag_free(&d);
}

static void test_tiny_a_present(void)
{
    struct stat sb;
    DS4_CHECKF(stat(g_tiny, &sb) == 0 && S_ISDIR(sb.st_mode), "fixture %s missing", g_tiny);
}

int main(void)
{
    snprintf(g_tiny, sizeof(g_tiny), "%s", ds4_test_fixture("tiny-a"));
    struct stat sb;
    bool have_tiny = stat(g_tiny, &sb) == 0;
    DS4_RUN(test_dtypes);
    if (write_two_shards() != 0) {
        fprintf(stderr, "cannot write the 2-shard checkpoint under %s\n", g_two);
        return 1;
    }
    DS4_RUN(test_two_shards);
    DS4_RUN(test_concurrent_lazy_open);
    stt_rmtree(g_two);
    /* tests/fixtures/tiny-a is committed (a copy of shared/golden/model/tiny-a): its absence
     * is a broken checkout, not a reason to skip. */
    DS4_RUN(test_tiny_a_present);
    if (have_tiny) {
        DS4_RUN(test_tiny_a_directory);
        DS4_RUN(test_tiny_a_single_file);
    }
    return ds4_test_finish();
}
