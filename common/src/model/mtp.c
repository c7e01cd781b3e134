/* Greedy generation with MTP speculative decoding (draft 1 token, verify with the main model). */
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"
#include "ds4/sampling.h"

#include <string.h>

/* Swaps the states of two sequences of the same model (rollback to a checkpoint). */
static void seq_swap(ds4_seq_h a, ds4_seq_h b)
{
    struct ds4_seq t = *a;
    *a = *b;
    *b = t;
}

ds4_status_t ds4_model_generate_greedy(ds4_model_h m, ds4_seq_h s, const float *last_logits,
                                       int n, bool speculative, int32_t *out,
                                       ds4_spec_stats_t *stats)
{
    const ds4_model_config_t *c = &m->cfg;
    int V = c->vocab_size;
    ds4_spec_stats_t st0 = {0};
    ds4_status_t st = DS4_OK;
    if (speculative && (c->n_mtp_layers < 1 || s->mtp_pos != s->pos - 1)) {
        ds4_log_error("speculative decoding needs an MTP block in sync (mtp at %lld, pos %lld)",
                      (long long)s->mtp_pos, (long long)s->pos);
        return DS4_ERR_INVALID_ARG;
    }
    float *L = ds4_malloc_array((size_t)V, sizeof(float));
    float *L2 = ds4_malloc_array((size_t)2 * V, sizeof(float));
    float *Lm = ds4_malloc_array((size_t)V, sizeof(float));
    if (L == NULL || L2 == NULL || Lm == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    memcpy(L, last_logits, sizeof(float) * (size_t)V);
    unsigned flags = speculative ? DS4_STEP_MTP : 0;
    int produced = 0;
    while (produced < n) {
        int32_t y = ds4_argmax(L, V);
        out[produced++] = y;
        if (produced == n)
            break;
        if (!speculative) {
            ds4_step_item_t it = {.seq = s, .tokens = &y, .n_tokens = 1, .logits = L};
            st = ds4_model_step(m, &it, 1, NULL);
            st0.main_steps++;
            if (st != DS4_OK)
                goto out;
            continue;
        }
        st = ds4_model_mtp_step(m, s, y, Lm);
        if (st != DS4_OK)
            goto out;
        int32_t pair[2] = {y, ds4_argmax(Lm, V)};
        st0.drafted++;
        ds4_seq_h ckpt;
        st = ds4_seq_clone(s, &ckpt);
        if (st != DS4_OK)
            goto out;
        ds4_step_item_t it = {.seq = s, .tokens = pair, .n_tokens = 2, .logits = L2,
                              .flags = DS4_STEP_ALL_LOGITS | flags};
        st = ds4_model_step(m, &it, 1, NULL);
        st0.main_steps++;
        if (st != DS4_OK) {
            ds4_seq_destroy(ckpt);
            goto out;
        }
        if (ds4_argmax(L2, V) == pair[1]) {
            st0.accepted++;
            out[produced++] = pair[1];
            memcpy(L, L2 + V, sizeof(float) * (size_t)V);
            ds4_seq_destroy(ckpt);
        } else {
            /* roll back the 2-token step, then feed y alone (same logits, bitwise) */
            seq_swap(s, ckpt);
            ds4_seq_destroy(ckpt);
            ds4_step_item_t one = {.seq = s, .tokens = &y, .n_tokens = 1, .logits = L,
                                   .flags = flags};
            st = ds4_model_step(m, &one, 1, NULL);
            st0.main_steps++;
            if (st != DS4_OK)
                goto out;
        }
    }
    if (stats != NULL)
        *stats = st0;
out:
    ds4_free(L);
    ds4_free(L2);
    ds4_free(Lm);
    return st;
}
