/* ds4-mkmodel: deterministic (same seed -> identical bytes), every layer kind + MTP + hash and
 * score MoE, loads and runs. */
#include "test.h"

#include "golden.h"

#include "ds4/model.h"
#include "mkmodel.h"

#include <string.h>
#include <unistd.h>

static void cleanup(const char *dir)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

static void test_deterministic_and_complete(void)
{
    char a[] = "/tmp/ds4-mk-a-XXXXXX", b[] = "/tmp/ds4-mk-b-XXXXXX", c[] = "/tmp/ds4-mk-c-XXXXXX";
    DS4_CHECK(mkdtemp(a) && mkdtemp(b) && mkdtemp(c));
    ds4_mkmodel_params_t p = ds4_mkmodel_params_default();
    p.vocab_size = 2048;
    DS4_CHECK_STATUS(ds4_mkmodel_write(a, &p), DS4_OK);
    DS4_CHECK_STATUS(ds4_mkmodel_write(b, &p), DS4_OK);
    p.seed += 1;
    DS4_CHECK_STATUS(ds4_mkmodel_write(c, &p), DS4_OK);
    char pa[128], pb[128], pc[128];
    snprintf(pa, sizeof(pa), "%s/model.safetensors", a);
    snprintf(pb, sizeof(pb), "%s/model.safetensors", b);
    snprintf(pc, sizeof(pc), "%s/model.safetensors", c);
    size_t na, nb, nc;
    void *fa = ds4_test_read_file(pa, &na), *fb = ds4_test_read_file(pb, &nb), *fc = ds4_test_read_file(pc, &nc);
    DS4_CHECK(fa && fb && fc && na == nb && na == nc);
    DS4_CHECK(memcmp(fa, fb, na) == 0);
    DS4_CHECK(memcmp(fa, fc, na) != 0);
    ds4_model_h m;
    DS4_CHECK_STATUS(ds4_model_load(a, NULL, &m, NULL), DS4_OK);
    const ds4_model_config_t *cfg = ds4_model_config(m);
    DS4_CHECK(cfg->n_window_layers >= 1 && cfg->n_csa_layers >= 1 && cfg->n_hca_layers >= 1);
    DS4_CHECK(cfg->n_mtp_layers == 1 && cfg->n_hash_layers >= 1 &&
              cfg->n_hash_layers < cfg->n_layers);
    ds4_seq_h s;
    DS4_CHECK_STATUS(ds4_seq_create(m, &s), DS4_OK);
    int32_t toks[200];
    for (int i = 0; i < 200; i++)
        toks[i] = (i * 613 + 11) % cfg->vocab_size;
    float *lg = ds4_malloc_array((size_t)cfg->vocab_size, sizeof(float));
    ds4_step_item_t it = {.seq = s, .tokens = toks, .n_tokens = 200, .logits = lg};
    DS4_CHECK_STATUS(ds4_model_step(m, &it, 1, NULL), DS4_OK);
    bool finite = true;
    for (int i = 0; i < cfg->vocab_size; i++)
        finite &= isfinite(lg[i]);
    DS4_CHECK(finite);
    ds4_free(lg);
    ds4_seq_destroy(s);
    ds4_model_free(m);
    ds4_free(fa);
    ds4_free(fb);
    ds4_free(fc);
    cleanup(a);
    cleanup(b);
    cleanup(c);
}

int main(void)
{
    DS4_RUN(test_deterministic_and_complete);
    return ds4_test_finish();
}
