/* Attention of every layer kind (window, CSA, HCA): projections and the blockwise sparse attention of the reference kernel (blocks of 64 entries,
 * online softmax, bf16 probabilities before P.V, sink in the denominator). Scores are
 * sequential fp32 dot products and block sums use the reference's row-reduction order
 * (ds4__sum_row_f32): measured against the golden, both are needed for bit-exact layers. */
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <string.h>

#define ATTN_BLOCK 64

/* ---------------- sparse attention ---------------- */

typedef struct attn_job {
    ds4_model_h m;
    ds4_seq_h s;
    const ds4_layer_w_t *L;
    int64_t T, p0;
    const float *q;      /* [T][H][hd] */
    const float *kv;     /* [T][hd] rows of this chunk (wire-exact values) */
    const int32_t *sel;  /* CSA: [T][topk] */
    const int32_t *n_sel;
    float *o;            /* [T][H][hd] */
} attn_job_t;

static void attn_rows(void *arg, size_t begin, size_t end, int thread_index)
{
    attn_job_t *j = arg;
    ds4_model_h m = j->m;
    const ds4_model_config_t *c = &m->cfg;
    const ds4_layer_w_t *L = j->L;
    ds4_layer_state_t *ls = &j->s->ls[L->index];
    int H = c->n_heads, hd = c->head_dim, win = c->sliding_window;
    int64_t max_comp = 0;
    if (L->kind == DS4_LAYER_HCA)
        max_comp = (j->p0 + j->T) / L->ratio;
    else if (L->kind == DS4_LAYER_CSA)
        max_comp = c->index_topk;
    int64_t cap = win + max_comp;
    float *K = ds4_malloc_array((size_t)(cap * hd), sizeof(float));
    bool *valid = ds4_malloc_array((size_t)cap, sizeof(bool));
    double *acc = ds4_malloc_array((size_t)hd, sizeof(double));
    DS4_ASSERT(K != NULL && valid != NULL && acc != NULL);
    const float scale = (float)(1.0 / sqrt((double)hd));
    for (size_t t = begin; t < end; t++) {
        int64_t p = j->p0 + (int64_t)t;
        int64_t n = 0;
        for (int w = 0; w < win; w++, n++) {
            int64_t tok = p >= win - 1 ? p - win + 1 + w : (w <= p ? w : -1);
            valid[n] = tok >= 0;
            if (tok < 0)
                continue;
            if (tok >= j->p0)
                memcpy(K + n * hd, j->kv + (tok - j->p0) * hd, sizeof(float) * (size_t)hd);
            else
                ds4__kv_row_decode(c, ls->ring + (tok % win) * m->row_bytes, K + n * hd);
        }
        if (L->kind == DS4_LAYER_HCA) {
            int64_t nv = (p + 1) / L->ratio;
            for (int64_t g = 0; g < nv; g++, n++) {
                valid[n] = true;
                ds4__kv_row_decode(c, ls->comp + g * m->row_bytes, K + n * hd);
            }
        } else if (L->kind == DS4_LAYER_CSA) {
            for (int i = 0; i < j->n_sel[t]; i++, n++) {
                int32_t g = j->sel[(int64_t)t * c->index_topk + i];
                valid[n] = true;
                ds4__kv_row_decode(c, ls->comp + (int64_t)g * m->row_bytes, K + n * hd);
            }
        }
        for (int h = 0; h < H; h++) {
            const float *q = j->q + ((int64_t)t * H + h) * hd;
            float mrun = -INFINITY, sum = 0.0f;
            memset(acc, 0, sizeof(double) * (size_t)hd);
            for (int64_t b0 = 0; b0 < n; b0 += ATTN_BLOCK) {
                int64_t b1 = b0 + ATTN_BLOCK < n ? b0 + ATTN_BLOCK : n;
                float sc[ATTN_BLOCK];
                float bm = mrun;
                for (int64_t e = b0; e < b1; e++) {
                    if (!valid[e]) {
                        sc[e - b0] = -INFINITY;
                        continue;
                    }
                    const float *k = K + e * hd;
                    float d = 0.0f;
                    for (int i = 0; i < hd; i++)
                        d += q[i] * k[i];
                    sc[e - b0] = d * scale;
                    bm = sc[e - b0] > bm ? sc[e - b0] : bm;
                }
                float rescale = ds4__exp_ref(mrun - bm);
                /* the block's probabilities sum over all 64 slots (invalid/padding = 0) in the
                 * reference's row-reduction order */
                float pad[ATTN_BLOCK];
                for (int64_t e = b0; e < b0 + ATTN_BLOCK; e++)
                    pad[e - b0] = e < b1 ? ds4__exp_ref(sc[e - b0] - bm) : 0.0f;
                memcpy(sc, pad, sizeof(float) * (size_t)(b1 - b0));
                float bsum = ds4__sum_row_f32(pad, ATTN_BLOCK);
                sum = sum * rescale + bsum;
                for (int i = 0; i < hd; i++)
                    acc[i] = (double)(float)(acc[i] * rescale);
                for (int64_t e = b0; e < b1; e++) {
                    if (!valid[e])
                        continue;
                    float pb = ds4_round_bf16(sc[e - b0]);
                    const float *k = K + e * hd;
                    for (int i = 0; i < hd; i++)
                        acc[i] += (double)(pb * k[i]);
                }
                mrun = bm;
            }
            sum += ds4__exp_ref(L->attn_sink[h] - mrun);
            float *o = j->o + ((int64_t)t * H + h) * hd;
            for (int i = 0; i < hd; i++)
                o[i] = ds4_round_bf16((float)acc[i] / sum);
        }
    }
    ds4_free(K);
    ds4_free(valid);
    ds4_free(acc);
}

ds4_status_t ds4__attention(ds4_model_h m, ds4_seq_h s, const ds4_layer_w_t *L, const float *x,
                            int64_t T, int64_t p0, float *out, const ds4_step_hooks_t *hooks)
{
    const ds4_model_config_t *c = &m->cfg;
    ds4_layer_state_t *ls = &s->ls[L->index];
    int H = c->n_heads, hd = c->head_dim, rd = c->rope_head_dim, win = c->sliding_window;
    int ql = c->q_lora_rank, G = c->o_groups, ol = c->o_lora_rank;
    int64_t gin = (int64_t)H * hd / G;
    const float *freqs = L->ratio != 0 ? m->rope_freq_comp : m->rope_freq_window;
    ds4_status_t st = DS4_OK;
    float *qr = ds4_malloc_array((size_t)(T * ql), sizeof(float));
    float *tmp = ds4_malloc_array((size_t)(T * (ql > hd ? ql : hd)), sizeof(float));
    float *q = ds4_malloc_array((size_t)(T * H * hd), sizeof(float));
    float *kv = ds4_malloc_array((size_t)(T * hd), sizeof(float));
    uint8_t *rows = ds4_malloc_array((size_t)T, m->row_bytes);
    float *o = ds4_malloc_array((size_t)(T * H * hd), sizeof(float));
    float *og = ds4_malloc_array((size_t)(T * gin), sizeof(float));
    float *z = ds4_malloc_array((size_t)(T * G * ol), sizeof(float));
    float *zg = ds4_malloc_array((size_t)(T * ol), sizeof(float));
    int32_t *sel = NULL, *n_sel = NULL;
    if (qr == NULL || tmp == NULL || q == NULL || kv == NULL || rows == NULL || o == NULL ||
        og == NULL || z == NULL || zg == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    /* q path */
    ds4__linear_bf16(m, &L->wq_a, T, x, tmp, 0);
    ds4__rmsnorm_rows(tmp, L->q_norm, T, ql, c->rms_norm_eps, qr);
    ds4__linear_bf16(m, &L->wq_b, T, qr, q, 0);
    const float eps = (float)c->rms_norm_eps;
    for (int64_t i = 0; i < T * H; i++) {
        float *qh = q + i * hd;
        double ss = 0.0;
        for (int k = 0; k < hd; k++)
            ss += (double)ds4_round_bf16(qh[k] * qh[k]);
        float mean = ds4_round_bf16((float)ss / (float)hd);
        float rs = ds4_round_bf16(1.0f / sqrtf(ds4_round_bf16(mean + eps)));
        for (int k = 0; k < hd; k++)
            qh[k] = ds4_round_bf16(qh[k] * rs);
        ds4__rope(qh + hd - rd, rd, freqs, p0 + i / H, false);
    }
    /* kv path */
    ds4__linear_bf16(m, &L->wkv, T, x, tmp, 0);
    ds4__rmsnorm_rows(tmp, L->kv_norm, T, hd, c->rms_norm_eps, kv);
    for (int64_t t = 0; t < T; t++) {
        ds4__rope(kv + t * hd + hd - rd, rd, freqs, p0 + t, false);
        ds4__kv_row_encode(c, kv + t * hd, rows + t * m->row_bytes);
    }
    /* compressed entries */
    if (L->kind == DS4_LAYER_CSA) {
        sel = ds4_malloc_array((size_t)(T * c->index_topk), sizeof(int32_t));
        n_sel = ds4_malloc_array((size_t)T, sizeof(int32_t));
        if (sel == NULL || n_sel == NULL) {
            st = DS4_ERR_NO_MEMORY;
            goto out;
        }
        st = ds4__indexer_run(m, s, L, x, qr, T, p0, sel, n_sel);
        if (st != DS4_OK)
            goto out;
        if (hooks != NULL && hooks->csa_topk != NULL) {
            for (int64_t t = 0; t < T; t++)
                hooks->csa_topk(hooks->arg, L->index, p0 + t, sel + t * c->index_topk,
                                n_sel[t]);
        }
    }
    if (L->ratio != 0) {
        st = ds4__compressor_run(m, s, L, false, x, T, p0);
        if (st != DS4_OK)
            goto out;
    }
    attn_job_t job = {.m = m, .s = s, .L = L, .T = T, .p0 = p0, .q = q, .kv = kv, .sel = sel,
                      .n_sel = n_sel, .o = o};
    m->ops->parallel_for(m->be, (size_t)T, attn_rows, &job);
    /* ring update after every query of the chunk has read the old rows */
    for (int64_t t = (T > win ? T - win : 0); t < T; t++)
        memcpy(ls->ring + ((p0 + t) % win) * m->row_bytes, rows + t * m->row_bytes,
               m->row_bytes);
    for (int64_t i = 0; i < T * H; i++)
        ds4__rope(o + i * hd + hd - rd, rd, freqs, p0 + i / H, true);
    /* grouped output projection: wo_a per group in bf16 (no activation quantisation) */
    for (int g = 0; g < G; g++) {
        for (int64_t t = 0; t < T; t++)
            memcpy(og + t * gin, o + t * H * hd + g * gin, sizeof(float) * (size_t)gin);
        ds4_weight_t wg = ds4_weight_rows(&L->wo_a, (int64_t)g * ol, ol);
        ds4__linear_bf16(m, &wg, T, og, zg, DS4_MATMUL_NO_ACT_QUANT);
        for (int64_t t = 0; t < T; t++)
            memcpy(z + t * G * ol + g * ol, zg + t * ol, sizeof(float) * (size_t)ol);
    }
    ds4__linear_bf16(m, &L->wo_b, T, z, out, 0);
out:
    ds4_free(qr);
    ds4_free(tmp);
    ds4_free(q);
    ds4_free(kv);
    ds4_free(rows);
    ds4_free(o);
    ds4_free(og);
    ds4_free(z);
    ds4_free(zg);
    ds4_free(sel);
    ds4_free(n_sel);
    return st;
}
