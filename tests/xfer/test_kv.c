/* Unit tests of ds4/kv.h and ds4/crc32c.h: CRC32C against RFC 3720 vectors, the V4 manifest
 * against the KV sizes of the V4 reference (shared/reference/v4-model.md §4), pool accounting,
 * block table views. */
#include "ds4/alloc.h"
#include "ds4/config.h"
#include "ds4/crc32c.h"
#include "ds4/kv.h"
#include "ds4/log.h"
#include "test.h"

#include <inttypes.h>
#include <stdint.h>

static ds4_kv_manifest_h *load_manifest(const char *name, ds4_model_config_t *cfg_out)
{
    char rel[128];
    snprintf(rel, sizeof(rel), "configs/%s/config.json", name);
    static ds4_model_config_t cfg;
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_status_t st = ds4_config_load(ds4_test_fixture(rel), &cfg, &diag, NULL);
    DS4_CHECK_STATUS(st, DS4_OK);
    ds4_diag_free(&diag);
    if (st != DS4_OK)
        return NULL;
    if (cfg_out != NULL)
        *cfg_out = cfg;
    ds4_kv_manifest_h *m = NULL;
    DS4_CHECK_STATUS(ds4_kv_manifest_create(&cfg, &m), DS4_OK);
    return m;
}

static int hexval(int c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

static void test_crc32c_vectors(void)
{
    FILE *f = fopen(ds4_test_fixture("kv/crc32c-vectors.txt"), "r");
    DS4_CHECK(f != NULL);
    if (f == NULL)
        return;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char hex[400];
        unsigned want;
        DS4_CHECK(sscanf(line, "%399s %x", hex, &want) == 2);
        unsigned char data[200];
        size_t len = strlen(hex) / 2;
        for (size_t i = 0; i < len; i++)
            data[i] = (unsigned char)(hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
        DS4_CHECKF(ds4_crc32c(0, data, len) == want, "vector %d: %08x want %08x", n,
                   ds4_crc32c(0, data, len), want);
        DS4_CHECKF(ds4_crc32c_sw(0, data, len) == want, "sw vector %d", n);
        /* split anywhere: continuation must equal the one-shot value */
        for (size_t cut = 0; cut <= len; cut++)
            DS4_CHECK(ds4_crc32c(ds4_crc32c(0, data, cut), data + cut, len - cut) == want);
        n++;
    }
    fclose(f);
    DS4_CHECK_EQ_INT(n, 6);
}

static void test_crc32c_long_buffers(void)
{
    /* The interleaved hardware path (3 x 8 KiB and 3 x 256 B streams) against the bytewise
     * software path, over sizes and misalignments that cross every stage boundary. */
    size_t cap = 200000;
    unsigned char *buf = ds4_malloc(cap + 16);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < cap + 16; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
    size_t sizes[] = {0, 1, 7, 8, 255, 767, 768, 769, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 777,
                      100000, cap};
    for (size_t s = 0; s < DS4_ARRAY_LEN(sizes); s++) {
        for (size_t off = 0; off < 3; off++) {
            uint32_t a = ds4_crc32c(0x12345678u, buf + off, sizes[s]);
            uint32_t b = ds4_crc32c_sw(0x12345678u, buf + off, sizes[s]);
            DS4_CHECKF(a == b, "size %zu off %zu: %08x vs %08x", sizes[s], off, a, b);
        }
    }
    ds4_free(buf);
    fprintf(stderr, "  crc32c hardware path: %s\n", ds4_crc32c_is_hw() ? "yes" : "no");
}

static void test_manifest_v4_pro(void)
{
    ds4_model_config_t cfg;
    ds4_kv_manifest_h *m = load_manifest("v4-pro", &cfg);
    if (m == NULL)
        return;
    DS4_CHECK_EQ_INT(cfg.n_layers, 61);
    /* groups: a window per layer, csa+index+tail per CSA layer, hca+tail per HCA layer */
    int want = 0, n_csa = 0, n_hca = 0;
    for (int l = 0; l < ds4_config_n_layers_total(&cfg); l++) {
        want += 1;
        if (cfg.layer_kind[l] == DS4_LAYER_CSA)
            want += 3, n_csa += l < cfg.n_layers;
        else if (cfg.layer_kind[l] == DS4_LAYER_HCA)
            want += 2, n_hca += l < cfg.n_layers;
    }
    DS4_CHECK_EQ_INT(ds4_kv_manifest_n_groups(m), want);
    /* reference §4.2: Pro has 30 CSA and 31 HCA layers, 584 B main rows, 68 B FP4 index rows */
    DS4_CHECK_EQ_INT(n_csa, 30);
    DS4_CHECK_EQ_INT(n_hca, 31);
    DS4_CHECK_EQ_INT(ds4_kv_manifest_kind_row_bytes(m, DS4_KV_CSA), 584);
    DS4_CHECK_EQ_INT(ds4_kv_manifest_kind_row_bytes(m, DS4_KV_INDEX), 68);
    /* fixed order of the first layers: window, then its groups */
    const ds4_kv_group_t *g0 = ds4_kv_manifest_group(m, 0);
    DS4_CHECK(g0->layer == 0 && g0->kind == DS4_KV_WINDOW && g0->fixed_rows == 128);
    /* history bytes at 1M tokens: reference table 5,031 B/token = 4.91 GiB (main stack; the
     * MTP layer is window-only in V4-Pro). 5031.4375 B/token exactly. */
    uint64_t n = 1048576, hist = 0, fixed = 0;
    for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(m); g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(m, g);
        if (grp->tokens_per_row != 0)
            hist += ds4_kv_group_bytes(grp, n);
        else
            fixed += ds4_kv_group_bytes(grp, n);
    }
    DS4_CHECK_EQ_INT(hist, 5275844608ull); /* 5031.4375 * 2^20 */
    DS4_CHECK_NEAR((double)hist / (1ull << 30), 4.91, 0.005);
    /* reference §4.2 constant extra: 62 FP8 rings of 128 x 584 B + 30 x 80 KiB + 31 x 512 KiB */
    DS4_CHECK_EQ_INT(fixed, 62ull * 128 * 584 + 30ull * 80 * 1024 + 31ull * 512 * 1024);
    DS4_CHECK_EQ_INT(ds4_kv_manifest_seq_bytes(m, n), hist + fixed);
    ds4_kv_manifest_destroy(m);
}

static void test_manifest_compare_and_wire(void)
{
    ds4_kv_manifest_h *pro = load_manifest("v4-pro", NULL);
    ds4_kv_manifest_h *flash = load_manifest("v4-flash", NULL);
    ds4_kv_manifest_h *pro2 = load_manifest("v4-pro", NULL);
    if (pro == NULL || flash == NULL || pro2 == NULL)
        return;
    char why[256] = "";
    DS4_CHECK_STATUS(ds4_kv_manifest_compare(pro, pro2, why, sizeof(why)), DS4_OK);
    DS4_CHECK(ds4_kv_manifest_digest(pro) == ds4_kv_manifest_digest(pro2));
    DS4_CHECK(ds4_kv_manifest_digest(pro) != ds4_kv_manifest_digest(flash));
    DS4_CHECK_STATUS(ds4_kv_manifest_compare(pro, flash, why, sizeof(why)), DS4_ERR_KV_MANIFEST);
    DS4_CHECK_STR_CONTAINS(why, "group ");
    DS4_CHECK_STR_CONTAINS(why, "(layer ");
    fprintf(stderr, "  pro vs flash: %s\n", why);

    void *buf = NULL;
    size_t len = 0;
    DS4_CHECK_STATUS(ds4_kv_manifest_encode(pro, &buf, &len), DS4_OK);
    ds4_kv_manifest_h *back = NULL;
    DS4_CHECK_STATUS(ds4_kv_manifest_decode(buf, len, &back, why, sizeof(why)), DS4_OK);
    if (back != NULL) {
        DS4_CHECK_STATUS(ds4_kv_manifest_compare(pro, back, why, sizeof(why)), DS4_OK);
        DS4_CHECK(ds4_kv_manifest_digest(back) == ds4_kv_manifest_digest(pro));
        ds4_kv_manifest_destroy(back);
    }
    /* one flipped bit anywhere: rejected (crc), never a crash */
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i += 7) {
        p[i] ^= 0x10;
        back = NULL;
        ds4_status_t st = ds4_kv_manifest_decode(buf, len, &back, why, sizeof(why));
        DS4_CHECK(st != DS4_OK && back == NULL);
        p[i] ^= 0x10;
    }
    DS4_CHECK(ds4_kv_manifest_decode(buf, len - 1, &back, why, sizeof(why)) == DS4_ERR_PARSE);
    ds4_free(buf);

    /* a hand-made remote manifest differing in one group's row size is named precisely */
    DS4_CHECK_STATUS(ds4_kv_manifest_encode(pro, &buf, &len), DS4_OK);
    p = buf;
    size_t group5 = 24 + 5 * 24 + 8; /* row_bytes of group 5 */
    uint32_t rb = 600;
    memcpy(p + group5, &rb, 4);
    uint32_t crc = ds4_crc32c(0, p, len - 4);
    memcpy(p + len - 4, &crc, 4);
    DS4_CHECK_STATUS(ds4_kv_manifest_decode(buf, len, &back, why, sizeof(why)), DS4_OK);
    if (back != NULL) {
        DS4_CHECK_STATUS(ds4_kv_manifest_compare(pro, back, why, sizeof(why)),
                         DS4_ERR_KV_MANIFEST);
        DS4_CHECK_STR_CONTAINS(why, "group 5 (layer ");
        DS4_CHECK_STR_CONTAINS(why, "remote row_bytes 600");
        ds4_kv_manifest_destroy(back);
    }
    ds4_free(buf);
    ds4_kv_manifest_destroy(pro);
    ds4_kv_manifest_destroy(pro2);
    ds4_kv_manifest_destroy(flash);
}

static void test_pool_accounting(void)
{
    ds4_kv_manifest_h *m = load_manifest("tiny-a", NULL);
    if (m == NULL)
        return;
    ds4_kv_pool_params_t p = ds4_kv_pool_params_default(m);
    p.block_rows[DS4_KV_CSA] = 16;
    p.block_rows[DS4_KV_INDEX] = 16;
    p.block_rows[DS4_KV_HCA] = 4;
    p.block_rows[DS4_KV_TAIL] = 1024;
    DS4_CHECK_STATUS(ds4_kv_pool_params_for_tokens(&p, 1000, 2), DS4_OK);
    ds4_kv_pool_h *pool = NULL;
    DS4_CHECK_STATUS(ds4_kv_pool_create(&p, &pool), DS4_OK);
    if (pool == NULL)
        return;
    ds4_kv_block_table_h *a = NULL, *b = NULL, *c = NULL;
    DS4_CHECK_STATUS(ds4_kv_pool_alloc(pool, 1000, &a), DS4_OK);
    DS4_CHECK_STATUS(ds4_kv_pool_alloc(pool, 999, &b), DS4_OK);
    ds4_kv_pool_stats_t s;
    ds4_kv_pool_stats(pool, &s);
    DS4_CHECK_EQ_INT(s.n_tables, 2);
    /* a third sequence does not fit; the failed call changes nothing */
    DS4_CHECK_STATUS(ds4_kv_pool_alloc(pool, 1000, &c), DS4_ERR_NO_BLOCKS);
    DS4_CHECK(c == NULL);
    ds4_kv_pool_stats_t s2;
    ds4_kv_pool_stats(pool, &s2);
    DS4_CHECK_EQ_INT(s2.used_blocks_all, s.used_blocks_all);

    /* rows: every row address inside the region, distinct across groups and tables, and the
     * view (wire form) addresses exactly the same bytes */
    void *vb = NULL;
    size_t vlen = 0;
    DS4_CHECK_STATUS(ds4_kv_table_encode(pool, a, &vb, &vlen), DS4_OK);
    ds4_kv_view_t view;
    char why[200] = "";
    DS4_CHECK_STATUS(ds4_kv_view_decode(vb, vlen, m, &view, why, sizeof(why)), DS4_OK);
    unsigned char *base = ds4_kv_pool_base(pool);
    size_t size = ds4_kv_pool_size(pool);
    unsigned char *seen = ds4_calloc(size, 1);
    for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(m); g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(m, g);
        for (uint64_t r = 0; r < ds4_kv_group_rows(grp, 1000); r++) {
            uint64_t contig = 0, off = 0, contig2 = 0;
            unsigned char *row = ds4_kv_table_row_ptr(pool, a, g, r, &contig);
            DS4_CHECK(row != NULL && row >= base && row + grp->row_bytes <= base + size);
            DS4_CHECK_STATUS(ds4_kv_view_row_offset(&view, m, g, r, &off, &contig2), DS4_OK);
            DS4_CHECK_EQ_INT(off, (uint64_t)(row - base));
            DS4_CHECK_EQ_INT(contig, contig2);
            for (uint32_t i = 0; i < grp->row_bytes; i++) {
                DS4_CHECK(seen[row - base + i] == 0);
                seen[row - base + i] = 1;
            }
        }
        DS4_CHECK(ds4_kv_table_row_ptr(pool, a, g, ds4_kv_group_rows(grp, 1000), NULL) == NULL);
    }
    ds4_free(seen);
    /* a damaged view is refused */
    ((unsigned char *)vb)[150] ^= 1;
    DS4_CHECK(ds4_kv_view_decode(vb, vlen, m, &view, why, sizeof(why)) == DS4_ERR_PARSE);
    ds4_free(vb);

    ds4_kv_pool_free(pool, a);
    ds4_kv_pool_free(pool, b);
    ds4_kv_pool_stats(pool, &s);
    DS4_CHECK_EQ_INT(s.used_blocks_all, 0);
    DS4_CHECK_EQ_INT(s.n_tables, 0);
    DS4_CHECK_STATUS(ds4_kv_pool_alloc(pool, 0, &c), DS4_ERR_INVALID_ARG);
    ds4_kv_pool_destroy(pool);
    ds4_kv_manifest_destroy(m);
}

int main(void)
{
    ds4_log_set_level(DS4_LOG_ERROR);
    DS4_RUN(test_crc32c_vectors);
    DS4_RUN(test_crc32c_long_buffers);
    DS4_RUN(test_manifest_v4_pro);
    DS4_RUN(test_manifest_compare_and_wire);
    DS4_RUN(test_pool_accounting);
    return ds4_test_finish();
}
