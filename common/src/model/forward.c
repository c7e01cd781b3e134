/* The forward pass: embedding -> blocks (mHC + attention + MoE) -> mHC head -> norm -> head,
 * per sequence and chunk; the step API over a batch of sequences; the MTP block. */
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <string.h>

ds4_status_t ds4__block(ds4_model_h m, const ds4__seg_t *segs, int n_segs, const ds4_layer_w_t *L,
                        float *X, int64_t T, const int32_t *tokens, const ds4_step_hooks_t *hooks)
{
    const ds4_model_config_t *c = &m->cfg;
    int64_t d = c->hidden_size, hc = c->hc_mult;
    ds4_status_t st = DS4_OK;
    float *y = ds4_malloc_array((size_t)(T * d), sizeof(float));
    float *xn = ds4_malloc_array((size_t)(T * d), sizeof(float));
    float *f = ds4_malloc_array((size_t)(T * d), sizeof(float));
    float *post = ds4_malloc_array((size_t)(T * hc), sizeof(float));
    float *comb = ds4_malloc_array((size_t)(T * hc * hc), sizeof(float));
    if (y == NULL || xn == NULL || f == NULL || post == NULL || comb == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    ds4__hc_pre(m, X, T, L->hc_attn_fn, L->hc_attn_base, L->hc_attn_scale, y, post, comb);
    ds4__rmsnorm_rows(y, L->attn_norm, T, d, c->rms_norm_eps, xn);
    /* attention per sequence (its own KV state); every other op runs over all rows at once */
    for (int i = 0; i < n_segs; i++) {
        st = ds4__attention(m, segs[i].seq, L, xn + segs[i].row0 * d, segs[i].n, segs[i].p0,
                            f + segs[i].row0 * d, hooks);
        if (st != DS4_OK)
            goto out;
    }
    ds4__hc_post(c, X, T, f, post, comb);
    ds4__hc_pre(m, X, T, L->hc_ffn_fn, L->hc_ffn_base, L->hc_ffn_scale, y, post, comb);
    ds4__rmsnorm_rows(y, L->ffn_norm, T, d, c->rms_norm_eps, xn);
    st = ds4__moe(m, L, xn, T, tokens, f);
    if (st != DS4_OK)
        goto out;
    ds4__hc_post(c, X, T, f, post, comb);
out:
    ds4_free(y);
    ds4_free(xn);
    ds4_free(f);
    ds4_free(post);
    ds4_free(comb);
    return st;
}

/* Logits of `rows` stream rows X[rows][hc*d] through an hc head + norm + the shared head. */
static ds4_status_t head_logits(ds4_model_h m, const float *X, int64_t rows, const float *fn,
                                const float *base, const float *scale, const uint16_t *norm,
                                float *logits)
{
    const ds4_model_config_t *c = &m->cfg;
    int64_t d = c->hidden_size;
    float *y = ds4_malloc_array((size_t)(rows * d), sizeof(float));
    float *yn = ds4_malloc_array((size_t)(rows * d), sizeof(float));
    if (y == NULL || yn == NULL) {
        ds4_free(y);
        ds4_free(yn);
        return DS4_ERR_NO_MEMORY;
    }
    ds4__hc_head(m, X, rows, fn, base, scale, y);
    ds4__rmsnorm_rows(y, norm, rows, d, c->rms_norm_eps, yn);
    m->ops->matmul(m->be, &m->head, rows, yn, logits, DS4_MATMUL_STREAM);
    ds4_free(y);
    ds4_free(yn);
    return DS4_OK;
}

static void embed_rows(ds4_model_h m, const int32_t *tokens, int64_t n, float *X, bool streams)
{
    const ds4_model_config_t *c = &m->cfg;
    int64_t d = c->hidden_size, hc = streams ? c->hc_mult : 1;
    const uint16_t *E = m->embed.data;
    for (int64_t t = 0; t < n; t++) {
        const uint16_t *row = E + (int64_t)tokens[t] * d;
        for (int64_t j = 0; j < hc; j++)
            for (int64_t i = 0; i < d; i++)
                X[(t * hc + j) * d + i] = ds4_bf16_to_f32(row[i]);
    }
}

static ds4_status_t check_tokens(ds4_model_h m, ds4_seq_h s, const int32_t *tokens, int64_t n,
                                 int64_t pos)
{
    const ds4_model_config_t *c = &m->cfg;
    for (int64_t t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size) {
            ds4_log_error("token %lld at index %lld outside the vocabulary [0, %d)",
                          (long long)tokens[t], (long long)t, c->vocab_size);
            return DS4_ERR_VOCAB;
        }
    }
    if (pos + n > c->max_position_embeddings) {
        ds4_log_error("sequence would reach %lld tokens, past max_position_embeddings %lld",
                      (long long)(pos + n), (long long)c->max_position_embeddings);
        return DS4_ERR_CONTEXT_FULL;
    }
    return DS4_OK;
}

/* MTP sync of one item after its main forward: MTP positions q in
 * [max(mtp_pos, p0 - 1), p0 + T - 2] with streams X_q and token q + 1. */
static ds4_status_t mtp_sync(ds4_model_h m, ds4_step_item_t *it, int64_t p0, const float *X)
{
    const ds4_model_config_t *c = &m->cfg;
    ds4_seq_h s = it->seq;
    int64_t d = c->hidden_size, hc = c->hc_mult, T = it->n_tokens;
    int64_t q0 = s->mtp_pos > p0 - 1 ? s->mtp_pos : p0 - 1;
    int64_t nq = p0 + T - 1 - q0;
    if (q0 != s->mtp_pos || nq <= 0)
        return DS4_OK;
    float *Xs = ds4_malloc_array((size_t)(nq * hc * d), sizeof(float));
    if (Xs == NULL)
        return DS4_ERR_NO_MEMORY;
    for (int64_t q = q0; q < q0 + nq; q++) {
        const float *src = q == p0 - 1 ? s->last_streams : X + (q - p0) * hc * d;
        memcpy(Xs + (q - q0) * hc * d, src, sizeof(float) * (size_t)(hc * d));
    }
    ds4_status_t st =
        ds4_model_mtp_forward(m, s, q0, (int)nq, Xs, it->tokens + (q0 + 1 - p0), NULL);
    ds4_free(Xs);
    return st;
}

/* One forward pass over every item's new tokens: rows of all items are concatenated so that
 * projections, mHC, MoE and the head run as single batched GEMMs (row-independent, so each
 * sequence's result equals a solo run bitwise); attention runs per sequence. */
static ds4_status_t batch_forward(ds4_model_h m, ds4_step_item_t *items, int n_items,
                                  const ds4_step_hooks_t *hooks)
{
    const ds4_model_config_t *c = &m->cfg;
    int64_t d = c->hidden_size, hc = c->hc_mult, V = c->vocab_size;
    int64_t T = 0, n_logit_rows = 0;
    for (int i = 0; i < n_items; i++) {
        T += items[i].n_tokens;
        if (items[i].logits != NULL && items[i].n_tokens > 0)
            n_logit_rows += (items[i].flags & DS4_STEP_ALL_LOGITS) ? items[i].n_tokens : 1;
    }
    if (T == 0)
        return DS4_OK;
    ds4_status_t st = DS4_OK;
    float *X = ds4_malloc_array((size_t)(T * hc * d), sizeof(float));
    int32_t *tok = ds4_malloc_array((size_t)T, sizeof(int32_t));
    ds4__seg_t *segs = ds4_calloc((size_t)n_items, sizeof(ds4__seg_t));
    float *Xl = NULL, *lg = NULL;
    if (X == NULL || tok == NULL || segs == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    int n_segs = 0;
    int64_t row = 0;
    for (int i = 0; i < n_items; i++) {
        if (items[i].n_tokens == 0)
            continue;
        segs[n_segs++] = (ds4__seg_t){.seq = items[i].seq, .row0 = row,
                                      .n = items[i].n_tokens, .p0 = items[i].seq->pos};
        memcpy(tok + row, items[i].tokens, sizeof(int32_t) * (size_t)items[i].n_tokens);
        row += items[i].n_tokens;
    }
    embed_rows(m, tok, T, X, true);
    for (int l = 0; l < c->n_layers; l++) {
        st = ds4__block(m, segs, n_segs, &m->layers[l], X, T, tok, hooks);
        if (st != DS4_OK)
            goto out;
        if (hooks != NULL && hooks->layer_done != NULL) {
            for (int i = 0; i < n_segs; i++)
                hooks->layer_done(hooks->arg, segs[i].seq, l, segs[i].p0, (int)segs[i].n,
                                  X + segs[i].row0 * hc * d);
        }
    }
    if (n_logit_rows > 0) {
        Xl = ds4_malloc_array((size_t)(n_logit_rows * hc * d), sizeof(float));
        lg = ds4_malloc_array((size_t)(n_logit_rows * V), sizeof(float));
        if (Xl == NULL || lg == NULL) {
            st = DS4_ERR_NO_MEMORY;
            goto out;
        }
        int64_t k = 0;
        for (int i = 0, sgi = 0; i < n_items; i++) {
            if (items[i].n_tokens == 0)
                continue;
            const ds4__seg_t *sg = &segs[sgi++];
            if (items[i].logits == NULL)
                continue;
            bool all = (items[i].flags & DS4_STEP_ALL_LOGITS) != 0;
            int64_t r0 = all ? sg->row0 : sg->row0 + sg->n - 1, nr = all ? sg->n : 1;
            memcpy(Xl + k * hc * d, X + r0 * hc * d, sizeof(float) * (size_t)(nr * hc * d));
            k += nr;
        }
        st = head_logits(m, Xl, n_logit_rows, m->hc_head_fn, m->hc_head_base, m->hc_head_scale,
                         m->norm, lg);
        if (st != DS4_OK)
            goto out;
        k = 0;
        for (int i = 0; i < n_items; i++) {
            if (items[i].n_tokens == 0 || items[i].logits == NULL)
                continue;
            int64_t nr = (items[i].flags & DS4_STEP_ALL_LOGITS) ? items[i].n_tokens : 1;
            memcpy(items[i].logits, lg + k * V, sizeof(float) * (size_t)(nr * V));
            k += nr;
        }
    }
    for (int i = 0, sgi = 0; i < n_items; i++) {
        if (items[i].n_tokens == 0)
            continue;
        const ds4__seg_t *sg = &segs[sgi++];
        const float *Xi = X + sg->row0 * hc * d;
        if ((items[i].flags & DS4_STEP_MTP) != 0 && c->n_mtp_layers > 0) {
            st = mtp_sync(m, &items[i], sg->p0, Xi);
            if (st != DS4_OK)
                goto out;
        }
        memcpy(sg->seq->last_streams, Xi + (sg->n - 1) * hc * d,
               sizeof(float) * (size_t)(hc * d));
        sg->seq->pos = sg->p0 + sg->n;
    }
out:
    ds4_free(X);
    ds4_free(tok);
    ds4_free(segs);
    ds4_free(Xl);
    ds4_free(lg);
    return st;
}

ds4_status_t ds4_model_step(ds4_model_h m, ds4_step_item_t *items, int n_items,
                            const ds4_step_hooks_t *hooks)
{
    if (n_items < 0 || (n_items > 0 && items == NULL))
        return DS4_ERR_INVALID_ARG;
    for (int i = 0; i < n_items; i++) {
        if (items[i].seq == NULL || items[i].n_tokens < 0 ||
            (items[i].n_tokens > 0 && items[i].tokens == NULL))
            return DS4_ERR_INVALID_ARG;
        for (int j = 0; j < i; j++) {
            if (items[j].seq == items[i].seq) {
                ds4_log_error("step: sequence appears twice in one batch (items %d and %d)", j, i);
                return DS4_ERR_INVALID_ARG;
            }
        }
        ds4_status_t st = check_tokens(m, items[i].seq, items[i].tokens, items[i].n_tokens,
                                       items[i].seq->pos);
        if (st != DS4_OK)
            return st;
    }
    return batch_forward(m, items, n_items, hooks);
}

ds4_status_t ds4_model_mtp_forward(ds4_model_h m, ds4_seq_h s, int64_t pos0, int n,
                                   const float *streams, const int32_t *next_tokens,
                                   float *logits)
{
    const ds4_model_config_t *c = &m->cfg;
    if (c->n_mtp_layers < 1) {
        ds4_log_error("mtp: the checkpoint has no MTP block");
        return DS4_ERR_UNSUPPORTED;
    }
    if (n <= 0 || pos0 != s->mtp_pos) {
        ds4_log_error("mtp: positions must continue the MTP state (at %lld, got %lld)",
                      (long long)s->mtp_pos, (long long)pos0);
        return DS4_ERR_INVALID_ARG;
    }
    ds4_status_t st = check_tokens(m, s, next_tokens, n, pos0);
    if (st != DS4_OK)
        return st;
    const ds4_layer_w_t *L = &m->layers[c->n_layers];
    int64_t d = c->hidden_size, hc = c->hc_mult;
    float *e = ds4_malloc_array((size_t)(n * d), sizeof(float));
    float *en = ds4_malloc_array((size_t)(n * d), sizeof(float));
    float *ep = ds4_malloc_array((size_t)(n * d), sizeof(float));
    float *xh = ds4_malloc_array((size_t)(n * hc * d), sizeof(float));
    float *X = ds4_malloc_array((size_t)(n * hc * d), sizeof(float));
    if (e == NULL || en == NULL || ep == NULL || xh == NULL || X == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    embed_rows(m, next_tokens, n, e, false);
    ds4__rmsnorm_rows(e, L->enorm, n, d, c->rms_norm_eps, en);
    ds4__linear_bf16(m, &L->e_proj, n, en, ep, 0);
    ds4__rmsnorm_rows(streams, L->hnorm, n * hc, d, c->rms_norm_eps, xh);
    ds4__linear_bf16(m, &L->h_proj, n * hc, xh, X, 0);
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < hc; j++)
            for (int64_t i = 0; i < d; i++)
                X[(t * hc + j) * d + i] = ds4_round_bf16(ep[t * d + i] + X[(t * hc + j) * d + i]);
    ds4__seg_t seg = {.seq = s, .row0 = 0, .n = n, .p0 = pos0};
    st = ds4__block(m, &seg, 1, L, X, n, next_tokens, NULL);
    if (st != DS4_OK)
        goto out;
    s->mtp_pos = pos0 + n;
    if (logits != NULL)
        st = head_logits(m, X + (int64_t)(n - 1) * hc * d, 1, L->hc_head_fn, L->hc_head_base,
                         L->hc_head_scale, L->mtp_norm, logits);
out:
    ds4_free(e);
    ds4_free(en);
    ds4_free(ep);
    ds4_free(xh);
    ds4_free(X);
    return st;
}

ds4_status_t ds4_model_mtp_step(ds4_model_h m, ds4_seq_h s, int32_t next_token, float *logits)
{
    if (s->pos < 1)
        return DS4_ERR_INVALID_ARG;
    return ds4_model_mtp_forward(m, s, s->pos - 1, 1, s->last_streams, &next_token, logits);
}
