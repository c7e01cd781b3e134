/*
 * Lazy mapping: a sharded checkpoint of 4 x 128 MiB (sparse files, ftruncate'd) is opened through
 * its index and one small tensor of one shard is read. Resident memory (VmRSS) must grow by far
 * less than the checkpoint (budget 16 MiB vs 512 MiB). The probe itself is checked: touching
 * every page of one big tensor must grow VmRSS by most of its 120 MiB, and ds4_st_advise
 * DONTNEED must give it back.
 */
#include "ds4/safetensors.h"
#include "ds4/status.h"
#include "st-testutil.h"
#include "test.h"

#include <inttypes.h>

#define N_SHARDS 4
#define SHARD_BYTES ((uint64_t)128 << 20)
#define BIG_BYTES ((uint64_t)120 << 20)
#define SMALL_FLOATS 16

static char g_dir[4096];

/* Shard s: small.s F32 [16] at [0,64) holding s*100 + i, big.s U8 [120 MiB] after it (a hole). */
static int write_shard(int s)
{
    char header[512];
    snprintf(header, sizeof(header),
             "{\"__metadata__\":{\"format\":\"pt\"},"
             "\"small.%d\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
             "\"big.%d\":{\"dtype\":\"U8\",\"shape\":[%" PRIu64 "],\"data_offsets\":[%d,%" PRIu64
             "]}}",
             s, SMALL_FLOATS, SMALL_FLOATS * 4, s, BIG_BYTES, SMALL_FLOATS * 4,
             SMALL_FLOATS * 4 + BIG_BYTES);
    float small[SMALL_FLOATS];
    for (int i = 0; i < SMALL_FLOATS; i++)
        small[i] = (float)(s * 100 + i);
    char name[64];
    snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, N_SHARDS);
    if (stt_write_st(g_dir, name, header, 1, small, sizeof(small), 0) != 0)
        return -1;
    char path[8192];
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    /* The rest of the file is a hole: no disk blocks, no page cache until touched. */
    return truncate(path, (off_t)SHARD_BYTES);
}

static int write_checkpoint(void)
{
    if (stt_mkdtemp(g_dir, sizeof(g_dir), "rss") != 0)
        return -1;
    char index[4096];
    size_t used = (size_t)snprintf(index, sizeof(index), "{\"weight_map\":{");
    for (int s = 0; s < N_SHARDS; s++) {
        if (write_shard(s) != 0)
            return -1;
        used += (size_t)snprintf(index + used, sizeof(index) - used,
                                 "%s\"small.%d\":\"model-%05d-of-%05d.safetensors\","
                                 "\"big.%d\":\"model-%05d-of-%05d.safetensors\"",
                                 s > 0 ? "," : "", s, s + 1, N_SHARDS, s, s + 1, N_SHARDS);
    }
    snprintf(index + used, sizeof(index) - used, "}}");
    return stt_write_raw(g_dir, "model.safetensors.index.json", index, strlen(index));
}

static void test_touch_only_what_is_read(void)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    long rss0 = stt_rss_kib();
    DS4_CHECK(rss0 > 0);
    ds4_st_h st = NULL;
    DS4_CHECK_STATUS(ds4_st_open(g_dir, &st, &d), DS4_OK);
    if (st == NULL) {
        ds4_diag_log(&d, "open");
        ds4_diag_free(&d);
        return;
    }
    DS4_CHECK_EQ_INT(ds4_st_count(st), 2 * N_SHARDS);
    DS4_CHECK_EQ_INT(ds4_st_shard_count(st), N_SHARDS);

    ds4_tensor_view_t v;
    DS4_CHECK_STATUS(ds4_st_get(st, "small.2", &v, &d), DS4_OK);
    float sum = 0.0f;
    for (int i = 0; i < SMALL_FLOATS; i++)
        sum += ((const float *)v.data)[i];
    DS4_CHECK(((const float *)v.data)[3] == 203.0f);
    DS4_CHECK(sum == (float)(200 * SMALL_FLOATS + SMALL_FLOATS * (SMALL_FLOATS - 1) / 2));
    DS4_CHECK_STATUS(ds4_st_get(st, "big.2", &v, &d), DS4_OK);
    DS4_CHECK_EQ_INT(v.size_bytes, BIG_BYTES);
    long rss1 = stt_rss_kib();
    long grew_kib = rss1 - rss0;
    fprintf(stderr,
            "    VmRSS %ld -> %ld KiB after open + one tensor (+%ld KiB) for %d x %" PRIu64
            " MiB\n",
            rss0, rss1, grew_kib, N_SHARDS, SHARD_BYTES >> 20);
    DS4_CHECKF(grew_kib < 16 * 1024, "resident memory grew %ld KiB reading a 64-byte tensor",
               grew_kib);

    /* The probe sees real growth: touch one byte per page of big.2 (a hole reads as zeros). */
    const volatile unsigned char *p = v.data;
    unsigned acc = 0;
    for (size_t off = 0; off < v.size_bytes; off += 4096)
        acc += p[off];
    DS4_CHECK_EQ_INT(acc, 0);
    long rss2 = stt_rss_kib();
    fprintf(stderr, "    VmRSS %ld KiB after touching big.2 (+%ld KiB)\n", rss2, rss2 - rss1);
    DS4_CHECKF(rss2 - rss1 > (long)(BIG_BYTES >> 10) / 2,
               "touching 120 MiB grew resident memory only %ld KiB: the probe is broken",
               rss2 - rss1);
    DS4_CHECK_STATUS(ds4_st_advise(&v, DS4_ST_DONTNEED), DS4_OK);
    long rss3 = stt_rss_kib();
    fprintf(stderr, "    VmRSS %ld KiB after DONTNEED\n", rss3);
    DS4_CHECKF(rss2 - rss3 > (long)(BIG_BYTES >> 10) / 2, "DONTNEED released only %ld KiB",
               rss2 - rss3);
    DS4_CHECK_STATUS(ds4_st_get(st, "small.2", &v, &d), DS4_OK);
    DS4_CHECK_STATUS(ds4_st_advise(&v, DS4_ST_WILLNEED), DS4_OK);
    DS4_CHECK_STATUS(ds4_st_advise(&v, (ds4_st_advice_t)7), DS4_ERR_INVALID_ARG);
    DS4_CHECK(((const float *)v.data)[0] == 200.0f); /* still valid after advice */

    DS4_CHECK_EQ_INT(ds4_st_total_bytes(st), N_SHARDS * (BIG_BYTES + SMALL_FLOATS * 4));
    DS4_CHECK_EQ_INT(d.count, 0);
    ds4_st_close(st);
    ds4_diag_free(&d);
}

int main(void)
{
    int rc = write_checkpoint();
    if (rc != 0) {
        fprintf(stderr, "cannot write the sparse checkpoint under %s\n", g_dir);
        stt_rmtree(g_dir);
        return 1;
    }
    DS4_RUN(test_touch_only_what_is_read);
    stt_rmtree(g_dir);
    return ds4_test_finish();
}
