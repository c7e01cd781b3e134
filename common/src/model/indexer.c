/* The CSA lightning indexer: FP4 index queries against the FP4 compressed index keys,
 * score = sum over heads of relu(q.k) * weight, per query the top index_topk keys by
 * (score desc, key asc). */
#include "indexer-kernel.h"
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <string.h>

/* Converts key tiles [begin, end) of a chunk's keys (work split over the backend's threads). */
typedef struct keys_job {
    ds4__idxk_keys_t *keys;
    const uint8_t *rows;
    size_t row_bytes;
} keys_job_t;

static void keys_fill(void *arg, size_t begin, size_t end, int thread_index)
{
    keys_job_t *j = arg;
    ds4__idxk_keys_fill(j->keys, j->rows, j->row_bytes, (int64_t)begin, (int64_t)end);
}

/* Index queries of chunk rows [begin, end): RoPE, Hadamard, FP4 quantisation, kernel form. */
typedef struct qprep_job {
    ds4_model_h m;
    float *iq;                /* [T][nih][ihd] */
    uint8_t *packed;          /* [T][nih][ihd/2 + ihd/32] scratch */
    int64_t p0;
    ds4__idxk_queries_t *qs;
} qprep_job_t;

static void qprep_rows(void *arg, size_t begin, size_t end, int thread_index)
{
    qprep_job_t *j = arg;
    const ds4_model_config_t *c = &j->m->cfg;
    int nih = c->index_n_heads, ihd = c->index_head_dim, rd = c->rope_head_dim;
    size_t pb = (size_t)(ihd / 2 + ihd / 32);
    for (int64_t t = (int64_t)begin; t < (int64_t)end; t++) {
        for (int h = 0; h < nih; h++) {
            float *q = j->iq + (t * nih + h) * ihd;
            uint8_t *pk = j->packed + (size_t)(t * nih + h) * pb;
            ds4__rope(q + ihd - rd, rd, j->m->rope_freq_comp, j->p0 + t, false);
            ds4__hadamard_bf16(q, ihd);
            ds4_act_quant_fp4(q, ihd, q, pk, pk + ihd / 2);
            ds4__idxk_queries_set(j->qs, t, h, pk, pk + ihd / 2);
        }
    }
}

ds4_status_t ds4__indexer_run(ds4_model_h m, ds4_seq_h s, const ds4_layer_w_t *L,
                                const float *x, const float *qr, int64_t T, int64_t p0,
                                int32_t *sel, int32_t *n_sel)
{
    const ds4_model_config_t *c = &m->cfg;
    ds4_layer_state_t *ls = &s->ls[L->index];
    int nih = c->index_n_heads, ihd = c->index_head_dim;
    ds4_status_t st = DS4_OK;
    ds4__idxk_keys_t keys = {0};
    ds4__idxk_queries_t qs = {0};
    bool have_keys = false, have_qs = false;
    float *iq = ds4_malloc_array((size_t)(T * nih * ihd), sizeof(float));
    float *w = ds4_malloc_array((size_t)(T * nih), sizeof(float));
    float *best = ds4_malloc_array((size_t)(T * c->index_topk), sizeof(float));
    int64_t *n_vis = ds4_malloc_array((size_t)T, sizeof(int64_t));
    uint8_t *packed = ds4_malloc_array((size_t)(T * nih), (size_t)(ihd / 2 + ihd / 32));
    if (iq == NULL || w == NULL || best == NULL || n_vis == NULL || packed == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    st = ds4__idxk_queries_alloc(&qs, ihd, nih, T);
    if (st != DS4_OK)
        goto out;
    have_qs = true;
    ds4__linear_bf16(m, &L->idx_wq_b, T, qr, iq, 0);
    qprep_job_t qj = {.m = m, .iq = iq, .packed = packed, .p0 = p0, .qs = &qs};
    m->ops->parallel_for(m->be, (size_t)T, qprep_rows, &qj);
    st = ds4__compressor_run(m, s, L, true, x, T, p0);
    if (st != DS4_OK)
        goto out;
    ds4__linear_bf16(m, &L->idx_wproj, T, x, w, 0);
    const float wscale = (float)(pow((double)ihd, -0.5) * pow((double)nih, -0.5));
    for (int64_t i = 0; i < T * nih; i++)
        w[i] = ds4_round_bf16(w[i] * wscale);
    int64_t n_keys = (p0 + T) / 4;
    st = ds4__idxk_keys_alloc(&keys, ihd, n_keys);
    if (st != DS4_OK)
        goto out;
    have_keys = true;
    keys_job_t kj = {.keys = &keys, .rows = ls->idx, .row_bytes = m->index_row_bytes};
    m->ops->parallel_for(m->be, (size_t)keys.n_tiles, keys_fill, &kj);
    /* Causal: row t (position p0 + t) sees the keys of the finished groups g < (p + 1) / 4. */
    for (int64_t t = 0; t < T; t++)
        n_vis[t] = (p0 + t + 1) / 4;
    ds4__idxk_job_t job = {.keys = &keys, .q = &qs, .w = w, .n_visible = n_vis,
                           .topk = c->index_topk, .level = DS4__IDXK_AUTO, .sel = sel,
                           .best = best, .n_sel = n_sel};
    ds4__idxk_select(&job, m->ops, m->be);
out:
    if (have_keys)
        ds4__idxk_keys_free(&keys);
    if (have_qs)
        ds4__idxk_queries_free(&qs);
    ds4_free(iq);
    ds4_free(w);
    ds4_free(best);
    ds4_free(n_vis);
    ds4_free(packed);
    return st;
}
