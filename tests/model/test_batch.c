/* A batched step over 8 sequences of different lengths equals the 8 sequences run alone. */
#include "test.h"

#include "ds4/alloc.h"
#include "ds4/model.h"

#include <string.h>

#define N_SEQ 8
#define N_DEC 4

static void test_batch_equals_single(void)
{
    ds4_model_h m;
    DS4_CHECK_STATUS(ds4_model_load(ds4_test_fixture("tiny-a"), NULL, &m, NULL), DS4_OK);
    int V = ds4_model_config(m)->vocab_size;
    static const int lens[N_SEQ] = {1, 5, 16, 33, 64, 97, 150, 230};
    int32_t toks[300];
    for (int i = 0; i < 300; i++)
        toks[i] = (int32_t)((i * 7919 + 13) % V);
    float *alone = ds4_malloc_array((size_t)N_SEQ * N_DEC * V, sizeof(float));
    float *batch = ds4_malloc_array((size_t)N_SEQ * N_DEC * V, sizeof(float));
    /* alone */
    for (int q = 0; q < N_SEQ; q++) {
        ds4_seq_h s;
        DS4_CHECK_STATUS(ds4_seq_create(m, &s), DS4_OK);
        ds4_step_item_t it = {.seq = s, .tokens = toks + q, .n_tokens = lens[q]};
        DS4_CHECK_STATUS(ds4_model_step(m, &it, 1, NULL), DS4_OK);
        for (int d = 0; d < N_DEC; d++) {
            ds4_step_item_t one = {.seq = s, .tokens = toks + 100 + q + d, .n_tokens = 1,
                                   .logits = alone + ((size_t)q * N_DEC + d) * V};
            DS4_CHECK_STATUS(ds4_model_step(m, &one, 1, NULL), DS4_OK);
        }
        ds4_seq_destroy(s);
    }
    /* batched: prefill chunks of all sequences in one step, then N_DEC batched decode steps */
    ds4_seq_h seqs[N_SEQ];
    ds4_step_item_t items[N_SEQ];
    for (int q = 0; q < N_SEQ; q++) {
        DS4_CHECK_STATUS(ds4_seq_create(m, &seqs[q]), DS4_OK);
        items[q] = (ds4_step_item_t){.seq = seqs[q], .tokens = toks + q, .n_tokens = lens[q]};
    }
    DS4_CHECK_STATUS(ds4_model_step(m, items, N_SEQ, NULL), DS4_OK);
    for (int d = 0; d < N_DEC; d++) {
        for (int q = 0; q < N_SEQ; q++)
            items[q] = (ds4_step_item_t){.seq = seqs[q], .tokens = toks + 100 + q + d,
                                         .n_tokens = 1,
                                         .logits = batch + ((size_t)q * N_DEC + d) * V};
        DS4_CHECK_STATUS(ds4_model_step(m, items, N_SEQ, NULL), DS4_OK);
    }
    int same = memcmp(alone, batch, (size_t)N_SEQ * N_DEC * V * sizeof(float)) == 0;
    printf("batched decode of %d sequences x %d steps: %s\n", N_SEQ, N_DEC,
           same ? "bitwise identical to single runs" : "DIFFERS");
    DS4_CHECK(same);
    /* a sequence twice in one batch is rejected, nothing changes */
    items[1].seq = items[0].seq;
    int64_t p0 = ds4_seq_pos(seqs[0]);
    DS4_CHECK_STATUS(ds4_model_step(m, items, 2, NULL), DS4_ERR_INVALID_ARG);
    DS4_CHECK(ds4_seq_pos(seqs[0]) == p0);
    /* a bad token id is rejected before any sequence changes */
    int32_t bad = V;
    items[0] = (ds4_step_item_t){.seq = seqs[0], .tokens = toks, .n_tokens = 1};
    items[1] = (ds4_step_item_t){.seq = seqs[1], .tokens = &bad, .n_tokens = 1};
    DS4_CHECK_STATUS(ds4_model_step(m, items, 2, NULL), DS4_ERR_VOCAB);
    DS4_CHECK(ds4_seq_pos(seqs[0]) == p0);
    for (int q = 0; q < N_SEQ; q++)
        ds4_seq_destroy(seqs[q]);
    ds4_free(alone);
    ds4_free(batch);
    ds4_model_free(m);
}

int main(void)
{
    DS4_RUN(test_batch_equals_single);
    return ds4_test_finish();
}
