/* MTP speculative decoding on the default tiny model (ds4-mkmodel) yields exactly the plain
 * greedy tokens for 64 steps; prints the acceptance rate. */
#include "test.h"

#include "ds4/alloc.h"
#include "ds4/model.h"
#include "mkmodel.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_GEN 64

static void test_spec_equals_greedy(void)
{
    char dir[] = "/tmp/ds4-mtp-XXXXXX";
    DS4_CHECK(mkdtemp(dir) != NULL);
    ds4_mkmodel_params_t mp = ds4_mkmodel_params_default();
    DS4_CHECK_STATUS(ds4_mkmodel_write(dir, &mp), DS4_OK);
    ds4_model_h m;
    DS4_CHECK_STATUS(ds4_model_load(dir, NULL, &m, NULL), DS4_OK);
    int V = ds4_model_config(m)->vocab_size;
    int32_t prompt[40];
    for (int i = 0; i < 40; i++)
        prompt[i] = (int32_t)((i * 104729 + 7) % V);
    float *logits = ds4_malloc_array((size_t)V, sizeof(float));
    ds4_seq_h a, b;
    DS4_CHECK_STATUS(ds4_seq_create(m, &a), DS4_OK);
    ds4_step_item_t it = {.seq = a, .tokens = prompt, .n_tokens = 40, .logits = logits,
                          .flags = DS4_STEP_MTP};
    DS4_CHECK_STATUS(ds4_model_step(m, &it, 1, NULL), DS4_OK);
    DS4_CHECK_STATUS(ds4_seq_clone(a, &b), DS4_OK);
    int32_t plain[N_GEN], spec[N_GEN];
    ds4_spec_stats_t st;
    DS4_CHECK_STATUS(ds4_model_generate_greedy(m, a, logits, N_GEN, false, plain, NULL), DS4_OK);
    DS4_CHECK_STATUS(ds4_model_generate_greedy(m, b, logits, N_GEN, true, spec, &st), DS4_OK);
    DS4_CHECK(memcmp(plain, spec, sizeof(plain)) == 0);
    printf("MTP speculative decoding: %d tokens identical to greedy: %s; drafts %lld, accepted "
           "%lld (acceptance %.1f%%), main-model steps %lld\n",
           N_GEN, memcmp(plain, spec, sizeof(plain)) == 0 ? "yes" : "NO",
           (long long)st.drafted, (long long)st.accepted,
           st.drafted ? 100.0 * (double)st.accepted / (double)st.drafted : 0.0,
           (long long)st.main_steps);
    /* without MTP sync the speculative mode refuses */
    ds4_seq_h c;
    DS4_CHECK_STATUS(ds4_seq_create(m, &c), DS4_OK);
    it = (ds4_step_item_t){.seq = c, .tokens = prompt, .n_tokens = 40, .logits = logits};
    DS4_CHECK_STATUS(ds4_model_step(m, &it, 1, NULL), DS4_OK);
    DS4_CHECK_STATUS(ds4_model_generate_greedy(m, c, logits, 4, true, spec, NULL),
                     DS4_ERR_INVALID_ARG);
    ds4_seq_destroy(a);
    ds4_seq_destroy(b);
    ds4_seq_destroy(c);
    ds4_free(logits);
    ds4_model_free(m);
    char path[64];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    DS4_RUN(test_spec_equals_greedy);
    return ds4_test_finish();
}
