/*
 * Reject tests of the safetensors reader: each case writes one broken file (or index) by hand,
 * opens it, and checks the status, that the output handle is untouched, and that the diag
 * names the problem (and the file or tensor it is about). Run under ASan+UBSan in CI.
 */
#include "ds4/alloc.h"
#include "ds4/safetensors.h"
#include "ds4/status.h"
#include "st-testutil.h"
#include "test.h"

static char g_dir[4096];
static int g_case;

/* A fresh file name per case so cases cannot see each other's files. */
static const char *case_name(char *buf, size_t cap, const char *suffix)
{
    snprintf(buf, cap, "case%02d%s", ++g_case, suffix);
    return buf;
}

static const char *full(const char *name)
{
    static char path[8192];
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    return path;
}

/* Opens path expecting failure `want`; every needle must appear in the diag. */
static void expect_open_fail(const char *path, ds4_status_t want, const char *const *needles)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_st_h st = (ds4_st_h)(uintptr_t)0x1; /* sentinel: must stay untouched */
    ds4_status_t s = ds4_st_open(path, &st, &d);
    DS4_CHECK_STATUS(s, want);
    DS4_CHECK(st == (ds4_st_h)(uintptr_t)0x1);
    if (s == DS4_OK && st != (ds4_st_h)(uintptr_t)0x1)
        ds4_st_close(st);
    DS4_CHECK(d.count > 0);
    char *all = ds4_diag_join(&d, " | ");
    for (const char *const *n = needles; *n != NULL; n++)
        DS4_CHECK_STR_CONTAINS(all, *n);
    fprintf(stderr, "    diag: %s\n", all != NULL ? all : "(null)");
    ds4_free(all);
    ds4_diag_free(&d);
}

/* Writes a padded single file with `header` and `data_len` ramp bytes and expects a failure. */
static void reject_header(const char *header, size_t data_len, const char *const *needles)
{
    char name[64];
    case_name(name, sizeof(name), ".safetensors");
    DS4_CHECK(stt_write_st(g_dir, name, header, 1, NULL, data_len, 0) == 0);
    const char *path = full(name);
    char copy[8192];
    snprintf(copy, sizeof(copy), "%s", path);
    expect_open_fail(copy, DS4_ERR_CHECKPOINT, needles);
}

#define NEEDLES(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_empty_file(void)
{
    char name[64];
    case_name(name, sizeof(name), ".safetensors");
    DS4_CHECK(stt_write_raw(g_dir, name, "", 0) == 0);
    expect_open_fail(full(name), DS4_ERR_CHECKPOINT, NEEDLES(name, "empty"));
}

static void test_shorter_than_length_field(void)
{
    char name[64];
    case_name(name, sizeof(name), ".safetensors");
    DS4_CHECK(stt_write_raw(g_dir, name, "\x10\x00\x00\x00\x00", 5) == 0);
    expect_open_fail(full(name), DS4_ERR_CHECKPOINT,
                     NEEDLES(name, "truncated", "shorter than the 8-byte header length"));
}

static void test_truncated_header(void)
{
    /* Length field says 64 bytes of header; only 20 follow. */
    char name[64];
    case_name(name, sizeof(name), ".safetensors");
    DS4_CHECK(stt_write_st(g_dir, name, "{\"a\":{\"dtype\":\"F32\"", 0, NULL, 0, 64) == 0);
    expect_open_fail(full(name), DS4_ERR_CHECKPOINT,
                     NEEDLES(name, "truncated", "header length 64 is beyond the end"));
}

static void test_header_length_beyond_file(void)
{
    /* 2^63 + small: also catches 8 + N overflowing. */
    char name[64];
    case_name(name, sizeof(name), ".safetensors");
    DS4_CHECK(stt_write_st(g_dir, name, "{}", 1, NULL, 0, (1ull << 63) + 5) == 0);
    expect_open_fail(full(name), DS4_ERR_CHECKPOINT, NEEDLES(name, "exceeds the limit"));
}

static void test_header_length_over_bound(void)
{
    char name[64];
    case_name(name, sizeof(name), ".safetensors");
    DS4_CHECK(stt_write_st(g_dir, name, "{}", 1, NULL, 0, (100ull << 20) + 1) == 0);
    expect_open_fail(full(name), DS4_ERR_CHECKPOINT,
                     NEEDLES("header length 104857601 exceeds the limit", "100 MiB"));
}

static void test_invalid_json(void)
{
    reject_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]", 4,
                  NEEDLES("invalid JSON"));
    reject_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} junk", 4,
                  NEEDLES("invalid JSON"));
}

static void test_non_object_header(void)
{
    reject_header("[1, 2, 3]", 0, NEEDLES("does not start with '{'"));
    reject_header("", 0, NEEDLES("does not start with '{'"));
}

static void test_offsets_past_eof(void)
{
    reject_header("{\"w\":{\"dtype\":\"BF16\",\"shape\":[4,4],\"data_offsets\":[0,32]}}", 16,
                  NEEDLES("tensor 'w'", "past the end of the data section (16 bytes"));
}

static void test_overlap(void)
{
    reject_header("{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                  "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                  16, NEEDLES("'x' [0, 16) and 'y' [8, 16) overlap"));
    /* identical ranges overlap too; zero-size tensors never do */
    reject_header("{\"p\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
                  "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
                  "\"q\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
                  8, NEEDLES("overlap", "'p'", "'q'"));
}

static void test_size_mismatch(void)
{
    reject_header("{\"m\":{\"dtype\":\"BF16\",\"shape\":[3,5],\"data_offsets\":[0,15]}}", 32,
                  NEEDLES("tensor 'm'", "size mismatch", "15 bytes", "needs 30"));
}

static void test_unknown_dtype(void)
{
    reject_header("{\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                  NEEDLES("tensor 'd'", "unknown dtype 'F64'"));
    /* jansson keeps NUL bytes in strings: "F32\0x" must not read as F32 */
    reject_header("{\"d\":{\"dtype\":\"F32\\u0000x\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  NEEDLES("tensor 'd'", "dtype contains a NUL byte"));
    reject_header("{\"d\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                  NEEDLES("tensor 'd'", "dtype has type integer"));
}

static void test_duplicate_name(void)
{
    reject_header("{\"dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                  2, NEEDLES("duplicate", "dup"));
}

static void test_negative_shape(void)
{
    reject_header("{\"n\":{\"dtype\":\"U8\",\"shape\":[2,-2],\"data_offsets\":[0,4]}}", 4,
                  NEEDLES("tensor 'n'", "shape[1] is negative"));
    reject_header("{\"n\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}", 4,
                  NEEDLES("tensor 'n'", "shape[0] has type number"));
}

static void test_begin_after_end(void)
{
    reject_header("{\"r\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
                  NEEDLES("tensor 'r'", "begin 8 > end 4"));
    reject_header("{\"r\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 8,
                  NEEDLES("tensor 'r'", "non-negative"));
    reject_header("{\"r\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 8,
                  NEEDLES("tensor 'r'", "[begin, end]"));
}

static void test_shape_overflow(void)
{
    /* 2^32 * 2^32 elements overflows 64 bits */
    reject_header("{\"o\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
                  "\"data_offsets\":[0,8]}}",
                  8, NEEDLES("tensor 'o'", "overflows 64 bits"));
    /* 2^62 elements fit, 2^62 x 4 bytes do not */
    reject_header("{\"o\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
                  "\"data_offsets\":[0,8]}}",
                  8, NEEDLES("tensor 'o'", "overflows 64 bits"));
    /* integer beyond int64 is a JSON error */
    reject_header("{\"o\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],"
                  "\"data_offsets\":[0,8]}}",
                  8, NEEDLES("invalid JSON", "too big integer"));
}

static void test_too_many_dims(void)
{
    reject_header("{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                  "\"data_offsets\":[0,1]}}",
                  1, NEEDLES("tensor 't'", "9 dimensions"));
}

static void test_missing_and_unknown_keys(void)
{
    reject_header("{\"k\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                  NEEDLES("tensor 'k': missing dtype"));
    reject_header("{\"k\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1,
                  NEEDLES("tensor 'k': missing shape"));
    reject_header("{\"k\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1,
                  NEEDLES("tensor 'k': missing data_offsets"));
    reject_header("{\"k\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", 1,
                  NEEDLES("tensor 'k': unknown key 'x'"));
    reject_header("{\"k\":[1]}", 1, NEEDLES("tensor 'k': entry has type array"));
}

static void test_bad_metadata(void)
{
    reject_header("{\"__metadata__\":{\"format\":1}}", 0,
                  NEEDLES("__metadata__.format has type integer"));
    reject_header("{\"__metadata__\":[]}", 0, NEEDLES("__metadata__ has type array"));
}

static void test_nul_and_empty_names(void)
{
    reject_header("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                  NEEDLES("NUL"));
    reject_header("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                  NEEDLES("empty name"));
}

static void test_misaligned(void)
{
    /* F32 at data offset 2: the header is padded to 8, so the file offset is 2 mod 4 */
    reject_header("{\"al\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8,
                  NEEDLES("tensor 'al'", "not aligned to 4 bytes"));
}

static void test_all_problems_reported(void)
{
    /* three independent problems: all three named */
    reject_header("{\"a\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,2]},"
                  "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,99]}}",
                  4, NEEDLES("tensor 'a'", "tensor 'b'", "tensor 'c'"));
}

static void test_not_found_paths(void)
{
    expect_open_fail(full("no-such-file.safetensors"), DS4_ERR_NOT_FOUND,
                     NEEDLES("no-such-file.safetensors", "No such file"));
    char sub[64];
    case_name(sub, sizeof(sub), "-emptydir");
    char path[8192];
    snprintf(path, sizeof(path), "%s", full(sub));
    DS4_CHECK(mkdir(path, 0755) == 0);
    expect_open_fail(path, DS4_ERR_NOT_FOUND,
                     NEEDLES("neither model.safetensors.index.json nor model.safetensors"));
    rmdir(path);
}

/* ---- index cases ---- */

static const char *k_good_shard = "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}";

static void reject_index(const char *index_json, ds4_status_t want, const char *const *needles)
{
    char name[64];
    case_name(name, sizeof(name), ".index.json");
    DS4_CHECK(stt_write_raw(g_dir, name, index_json, strlen(index_json)) == 0);
    char path[8192];
    snprintf(path, sizeof(path), "%s", full(name));
    expect_open_fail(path, want, needles);
}

static void test_index_missing_shard(void)
{
    DS4_CHECK(stt_write_st(g_dir, "good-shard.safetensors", k_good_shard, 1, NULL, 4, 0) == 0);
    reject_index("{\"weight_map\":{\"w\":\"good-shard.safetensors\","
                 "\"v\":\"gone-00002.safetensors\"}}",
                 DS4_ERR_CHECKPOINT, NEEDLES("shard", "gone-00002.safetensors", "cannot be found"));
}

static void test_index_dotdot(void)
{
    reject_index("{\"weight_map\":{\"w\":\"../good-shard.safetensors\"}}", DS4_ERR_CHECKPOINT,
                 NEEDLES("weight_map.w", "'..'"));
    reject_index("{\"weight_map\":{\"w\":\"sub/../../x.safetensors\"}}", DS4_ERR_CHECKPOINT,
                 NEEDLES("weight_map.w", "'..'"));
    reject_index("{\"weight_map\":{\"w\":\"/etc/passwd\"}}", DS4_ERR_CHECKPOINT,
                 NEEDLES("weight_map.w", "absolute path"));
    reject_index("{\"weight_map\":{\"w\":\"\"}}", DS4_ERR_CHECKPOINT,
                 NEEDLES("weight_map.w", "is empty"));
    reject_index("{\"weight_map\":{\"w\":\"a\\u0000b\"}}", DS4_ERR_CHECKPOINT,
                 NEEDLES("weight_map.w", "NUL"));
}

static void test_index_malformed(void)
{
    reject_index("{\"weight_map\":{\"w\":\"good-shard.safetensors\"", DS4_ERR_CHECKPOINT,
                 NEEDLES("invalid JSON"));
    reject_index("{\"metadata\":{}}", DS4_ERR_CHECKPOINT, NEEDLES("missing weight_map"));
    reject_index("{\"weight_map\":[]}", DS4_ERR_CHECKPOINT, NEEDLES("weight_map has type array"));
    reject_index("{\"weight_map\":{\"w\":3}}", DS4_ERR_CHECKPOINT,
                 NEEDLES("weight_map.w has type integer"));
    reject_index("{\"weight_map\":{}}", DS4_ERR_CHECKPOINT, NEEDLES("weight_map is empty"));
    reject_index("{\"weight_map\":{\"w\":\"good-shard.safetensors\","
                 "\"w\":\"good-shard.safetensors\"}}",
                 DS4_ERR_CHECKPOINT, NEEDLES("duplicate"));
    reject_index("[]", DS4_ERR_CHECKPOINT, NEEDLES("index has type array"));
}

/* Lazily opened shards: open succeeds, the first access reports the shard's problem. */
static void test_index_tensor_not_in_shard(void)
{
    DS4_CHECK(stt_write_st(g_dir, "good-shard.safetensors", k_good_shard, 1, NULL, 4, 0) == 0);
    const char *ix = "{\"weight_map\":{\"w\":\"good-shard.safetensors\","
                     "\"ghost\":\"good-shard.safetensors\"}}";
    char name[64];
    case_name(name, sizeof(name), ".index.json");
    DS4_CHECK(stt_write_raw(g_dir, name, ix, strlen(ix)) == 0);
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_st_h st = NULL;
    DS4_CHECK_STATUS(ds4_st_open(full(name), &st, &d), DS4_OK);
    if (st == NULL)
        return;
    ds4_tensor_view_t v;
    memset(&v, 0, sizeof(v));
    DS4_CHECK_STATUS(ds4_st_get(st, "ghost", &v, &d), DS4_ERR_CHECKPOINT);
    DS4_CHECK(v.data == NULL);
    DS4_CHECK(ds4_diag_contains(&d, "good-shard.safetensors: tensor ghost is listed in the "
                                    "index but not in this shard"));
    DS4_CHECK_STATUS(ds4_st_get(st, "w", &v, &d), DS4_OK);
    ds4_diag_free(&d);
    ds4_diag_init(&d);
    DS4_CHECK_STATUS(ds4_st_validate_all(st, &d), DS4_ERR_CHECKPOINT);
    DS4_CHECK(ds4_diag_contains(&d, "tensor ghost is listed in the index but not in this shard"));
    ds4_st_close(st);
    ds4_diag_free(&d);
}

static void test_index_bad_shard_lazy(void)
{
    DS4_CHECK(stt_write_st(g_dir, "good-shard.safetensors", k_good_shard, 1, NULL, 4, 0) == 0);
    DS4_CHECK(stt_write_st(g_dir, "bad-shard.safetensors",
                           "{\"z\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", 1,
                           NULL, 4, 0) == 0);
    const char *ix = "{\"weight_map\":{\"w\":\"good-shard.safetensors\","
                     "\"z\":\"bad-shard.safetensors\"}}";
    char name[64];
    case_name(name, sizeof(name), ".index.json");
    DS4_CHECK(stt_write_raw(g_dir, name, ix, strlen(ix)) == 0);
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_st_h st = NULL;
    DS4_CHECK_STATUS(ds4_st_open(full(name), &st, &d), DS4_OK);
    if (st == NULL)
        return;
    ds4_tensor_view_t v;
    DS4_CHECK_STATUS(ds4_st_get(st, "w", &v, &d), DS4_OK);
    for (int round = 0; round < 2; round++) { /* the failure is remembered and replayed */
        ds4_diag_free(&d);
        ds4_diag_init(&d);
        DS4_CHECK_STATUS(ds4_st_get(st, "z", &v, &d), DS4_ERR_CHECKPOINT);
        DS4_CHECK(ds4_diag_contains(&d, "bad-shard.safetensors"));
        DS4_CHECK(ds4_diag_contains(&d, "past the end of the data section"));
    }
    ds4_diag_free(&d);
    ds4_diag_init(&d);
    DS4_CHECK_STATUS(ds4_st_validate_all(st, &d), DS4_ERR_CHECKPOINT);
    DS4_CHECK(ds4_diag_contains(&d, "bad-shard.safetensors"));
    /* total_bytes counts the valid shard only */
    DS4_CHECK_EQ_INT(ds4_st_total_bytes(st), 4);
    ds4_st_close(st);
    ds4_diag_free(&d);
}

/*
 * Deterministic mutation sweep: a valid 3-tensor file with single-byte changes, truncations and
 * header-length changes. Every variant must either open (and then every view must be readable
 * end to end: a view outside the mapping would crash) or fail with a diag entry.
 */
static void test_mutations(void)
{
    const char *header = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                         "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                         "\"c\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[22,23]}}";
    size_t hlen = strlen(header), padded = (hlen + 7) / 8 * 8, data = 24;
    size_t total = 8 + padded + data;
    unsigned char *good = malloc(total), *buf = malloc(total);
    DS4_CHECK(good != NULL && buf != NULL);
    if (good == NULL || buf == NULL) {
        free(good);
        free(buf);
        return;
    }
    for (int i = 0; i < 8; i++)
        good[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(good + 8, header, hlen);
    memset(good + 8 + hlen, ' ', padded - hlen);
    for (size_t i = 0; i < data; i++)
        good[8 + padded + i] = (unsigned char)i;
    static const unsigned char repl[] = {'0', '9', '-', '"',  '{',  '}', '[', ']',
                                         ',', ':', ' ', 0x00, 0xff, 'e', '.', 0x80};
    uint32_t rng = 12345;
    int opened = 0, rejected = 0, silent = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, good, total);
        size_t len = total;
        rng = rng * 1103515245u + 12345u;
        uint32_t r = rng >> 8;
        switch (it % 3) {
        case 0: /* one byte of the header or length field replaced */
            buf[r % (8 + hlen)] = repl[(r >> 12) % sizeof(repl)];
            break;
        case 1: /* truncated anywhere */
            len = r % total;
            break;
        default: /* a digit of the header changed, or the length field off by a little */
            if (r & 1) {
                size_t pos = 8 + (r >> 1) % hlen;
                if (buf[pos] >= '0' && buf[pos] <= '9')
                    buf[pos] = (unsigned char)('0' + (r >> 16) % 10);
                else
                    buf[pos] = ' ';
            } else {
                buf[0] = (unsigned char)(buf[0] + (int)((r >> 4) % 17) - 8);
            }
        }
        char name[64];
        snprintf(name, sizeof(name), "mut%04d.safetensors", it);
        DS4_CHECK(stt_write_raw(g_dir, name, buf, len) == 0);
        char path[8192];
        snprintf(path, sizeof(path), "%s", full(name));
        ds4_diag_t d;
        ds4_diag_init(&d);
        ds4_st_h st = NULL;
        ds4_status_t s = ds4_st_open(path, &st, &d);
        if (s == DS4_OK) {
            opened++;
            unsigned acc = 0;
            for (size_t i = 0; i < ds4_st_count(st); i++) {
                ds4_tensor_view_t v;
                if (ds4_st_get(st, ds4_st_name(st, i), &v, &d) != DS4_OK) {
                    silent++;
                    continue;
                }
                if (v.size_bytes > 0)
                    acc += ((const unsigned char *)v.data)[0] +
                           ((const unsigned char *)v.data)[v.size_bytes - 1];
                if ((uint64_t)v.n_elements * ds4_dtype_size(v.dtype) != v.size_bytes)
                    silent++;
            }
            (void)acc;
            ds4_st_close(st);
        } else {
            rejected++;
            if (d.count == 0 || st != NULL)
                silent++;
        }
        ds4_diag_free(&d);
        unlink(path);
    }
    fprintf(stderr, "    mutations: %d opened, %d rejected\n", opened, rejected);
    DS4_CHECK_EQ_INT(silent, 0);
    DS4_CHECK(rejected > 1000);
    free(good);
    free(buf);
}

int main(void)
{
    if (stt_mkdtemp(g_dir, sizeof(g_dir), "reject") != 0) {
        perror("mkdtemp");
        return 1;
    }
    DS4_RUN(test_empty_file);
    DS4_RUN(test_shorter_than_length_field);
    DS4_RUN(test_truncated_header);
    DS4_RUN(test_header_length_beyond_file);
    DS4_RUN(test_header_length_over_bound);
    DS4_RUN(test_invalid_json);
    DS4_RUN(test_non_object_header);
    DS4_RUN(test_offsets_past_eof);
    DS4_RUN(test_overlap);
    DS4_RUN(test_size_mismatch);
    DS4_RUN(test_unknown_dtype);
    DS4_RUN(test_duplicate_name);
    DS4_RUN(test_negative_shape);
    DS4_RUN(test_begin_after_end);
    DS4_RUN(test_shape_overflow);
    DS4_RUN(test_too_many_dims);
    DS4_RUN(test_missing_and_unknown_keys);
    DS4_RUN(test_bad_metadata);
    DS4_RUN(test_nul_and_empty_names);
    DS4_RUN(test_misaligned);
    DS4_RUN(test_all_problems_reported);
    DS4_RUN(test_not_found_paths);
    DS4_RUN(test_index_missing_shard);
    DS4_RUN(test_index_dotdot);
    DS4_RUN(test_index_malformed);
    DS4_RUN(test_index_tensor_not_in_shard);
    DS4_RUN(test_index_bad_shard_lazy);
    DS4_RUN(test_mutations);
    stt_rmtree(g_dir);
    return ds4_test_finish();
}
