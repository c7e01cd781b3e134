/*
 * Bad checkpoints -> clear errors naming the tensor/file, never a crash: missing tensor, wrong
 * shape, wrong dtype, truncated shard, index naming a missing shard, scale tensor of the wrong
 * block count, out-of-range tid2eid. Variants are made from a small ds4-mkmodel checkpoint
 * (2 shards) by editing its headers / index.
 */
#include "test.h"

#include "ds4/alloc.h"
#include "ds4/json.h"
#include "ds4/model.h"
#include "mkmodel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[64];
static const char *k_shard1 = "model-00001-of-00002.safetensors";
static const char *k_shard2 = "model-00002-of-00002.safetensors";

static void spit(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    DS4_CHECK(f != NULL && fwrite(b, 1, n, f) == n);
    fclose(f);
}

static char g_backup[2][64];
static void *g_orig[3];
static size_t g_orig_len[3];

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_dir, name);
}

static void restore(void)
{
    const char *names[3] = {k_shard1, k_shard2, "model.safetensors.index.json"};
    for (int i = 0; i < 3; i++) {
        char p[256];
        path_of(p, sizeof(p), names[i]);
        spit(p, g_orig[i], g_orig_len[i]);
    }
}

/* Finds which shard holds `tensor` and edits its header entry with fn. */
static void edit_header(const char *tensor, void (*fn)(json_t *entry))
{
    const char *names[2] = {k_shard1, k_shard2};
    for (int i = 0; i < 2; i++) {
        uint64_t hl = 0;
        for (int k = 0; k < 8; k++)
            hl |= (uint64_t)((uint8_t *)g_orig[i])[k] << (8 * k);
        json_t *h = json_loadb((const char *)g_orig[i] + 8, hl, 0, NULL);
        json_t *e = json_object_get(h, tensor);
        if (e == NULL) {
            json_decref(h);
            continue;
        }
        fn(e);
        char *txt = json_dumps(h, JSON_COMPACT);
        size_t tl = strlen(txt), pl = (tl + 7) / 8 * 8;
        size_t data = g_orig_len[i] - 8 - hl;
        uint8_t *nb = ds4_malloc(8 + pl + data);
        for (int k = 0; k < 8; k++)
            nb[k] = (uint8_t)((uint64_t)pl >> (8 * k));
        memcpy(nb + 8, txt, tl);
        memset(nb + 8 + tl, ' ', pl - tl);
        memcpy(nb + 8 + pl, (uint8_t *)g_orig[i] + 8 + hl, data);
        char p[256];
        path_of(p, sizeof(p), names[i]);
        spit(p, nb, 8 + pl + data);
        ds4_free(nb);
        free(txt);
        json_decref(h);
        return;
    }
    DS4_CHECKF(false, "tensor %s not in any shard", tensor);
}

/* Loads and expects failure with `status` and a diagnostic containing every needle. */
static void expect_fail(const char *what, ds4_status_t status, const char *n1, const char *n2)
{
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_model_h m = NULL;
    ds4_status_t st = ds4_model_load(g_dir, NULL, &m, &diag);
    char *msg = ds4_diag_join(&diag, " | ");
    printf("%s -> %s: %s\n", what, ds4_status_str(st), msg != NULL ? msg : "");
    DS4_CHECK(m == NULL);
    DS4_CHECKF(st == status, "%s: status %s", what, ds4_status_str(st));
    DS4_CHECKF(n1 == NULL || ds4_diag_contains(&diag, n1), "%s: diag lacks %s", what, n1);
    DS4_CHECKF(n2 == NULL || ds4_diag_contains(&diag, n2), "%s: diag lacks %s", what, n2);
    ds4_free(msg);
    ds4_diag_free(&diag);
    ds4_model_free(m);
    restore();
}

static void swap_shape(json_t *e)
{
    json_t *s = json_object_get(e, "shape");
    json_t *a = json_incref(json_array_get(s, 0)), *b = json_incref(json_array_get(s, 1));
    json_array_set_new(s, 0, b);
    json_array_set_new(s, 1, a);
}

static void to_f16(json_t *e)
{
    json_object_set_new(e, "dtype", json_string("F16"));
}

static void test_good_then_bad(void)
{
    ds4_model_h m;
    DS4_CHECK_STATUS(ds4_model_load(g_dir, NULL, &m, NULL), DS4_OK);
    ds4_model_free(m);

    /* missing tensor: dropped from the index */
    json_t *ix = json_loadb(g_orig[2], g_orig_len[2], 0, NULL);
    json_object_del(json_object_get(ix, "weight_map"), "layers.1.attn.wkv.weight");
    char p[256];
    path_of(p, sizeof(p), "model.safetensors.index.json");
    json_dump_file(ix, p, 0);
    expect_fail("missing tensor", DS4_ERR_MODEL, "layers.1.attn.wkv.weight", NULL);
    /* index naming a missing shard */
    json_object_set_new(json_object_get(ix, "weight_map"), "layers.1.attn.wkv.weight",
                        json_string("model-00009-of-00009.safetensors"));
    json_dump_file(ix, p, 0);
    expect_fail("index names a missing shard", DS4_ERR_CHECKPOINT, "model-00009-of-00009", NULL);
    json_decref(ix);

    /* wrong shape (same byte size): wq_b [256,128] -> [128,256] */
    edit_header("layers.0.attn.wq_b.weight", swap_shape);
    expect_fail("wrong shape", DS4_ERR_MODEL, "layers.0.attn.wq_b.weight", "found F8_E4M3 [128, 256]");
    /* scale with the wrong block count: wq_b.scale [2,1] -> [1,2] */
    edit_header("layers.0.attn.wq_b.scale", swap_shape);
    expect_fail("scale block count", DS4_ERR_MODEL, "layers.0.attn.wq_b.scale", NULL);
    /* wrong dtype (same element size): a bf16 norm weight declared F16 */
    edit_header("layers.2.attn_norm.weight", to_f16);
    expect_fail("wrong dtype", DS4_ERR_MODEL, "layers.2.attn_norm.weight", "BF16");

    /* truncated shard */
    path_of(p, sizeof(p), k_shard2);
    spit(p, g_orig[1], g_orig_len[1] / 2);
    expect_fail("truncated shard", DS4_ERR_CHECKPOINT, k_shard2, NULL);
}

int main(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/ds4-badckpt-XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        return 1;
    ds4_mkmodel_params_t mp = ds4_mkmodel_params_default();
    mp.vocab_size = 1024;
    mp.n_shards = 2;
    if (ds4_mkmodel_write(g_dir, &mp) != DS4_OK)
        return 1;
    const char *names[3] = {k_shard1, k_shard2, "model.safetensors.index.json"};
    for (int i = 0; i < 3; i++) {
        char p[256];
        path_of(p, sizeof(p), names[i]);
        g_orig[i] = ds4_test_read_file(p, &g_orig_len[i]);
        if (g_orig[i] == NULL)
            return 1;
    }
    (void)g_backup;
    DS4_RUN(test_good_then_bad);
    for (int i = 0; i < 3; i++) {
        char p[256];
        path_of(p, sizeof(p), names[i]);
        unlink(p);
        ds4_free(g_orig[i]);
    }
    char p[256];
    path_of(p, sizeof(p), "config.json");
    unlink(p);
    rmdir(g_dir);
    return ds4_test_finish();
}
