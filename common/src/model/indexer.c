/* The CSA lightning indexer: FP4 index queries against the FP4 compressed index keys,
 * score = sum over heads of relu(q.k) * weight, per query the top index_topk keys by
 * (score desc, key asc). */
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <string.h>

typedef struct idx_job {
    ds4_model_h m;
    int64_t q0;          /* first query (chunk row) of this block */
    int64_t p0;
    int64_t n_keys;
    const float *S;      /* [rows of block][nih][n_keys] raw q.k dots */
    const float *w;      /* [T][nih] */
    int32_t *sel;        /* [T][topk] */
    int32_t *n_sel;      /* [T] */
} idx_job_t;

/* Scores of one query row: score[g] = bf16(sum_h bf16(relu(bf16(q_h.k_g)) * w_h)); keeps the
 * top-k by (score desc, g asc) with an insertion list (ties never displace a lower g). */
static void idx_rows(void *arg, size_t begin, size_t end, int thread_index)
{
    idx_job_t *j = arg;
    const ds4_model_config_t *c = &j->m->cfg;
    int nih = c->index_n_heads, topk = c->index_topk;
    float *best = ds4_malloc_array((size_t)topk, sizeof(float));
    DS4_ASSERT(best != NULL);
    for (size_t r = begin; r < end; r++) {
        int64_t t = j->q0 + (int64_t)r;
        int64_t p = j->p0 + t;
        int64_t nv = (p + 1) / 4;
        const float *S = j->S + (int64_t)r * nih * j->n_keys;
        const float *w = j->w + t * nih;
        int32_t *sel = j->sel + t * topk;
        int k = 0;
        for (int64_t g = 0; g < nv; g++) {
            float acc = 0.0f;
            for (int h = 0; h < nih; h++) {
                float d = ds4_round_bf16(S[(int64_t)h * j->n_keys + g]);
                if (d < 0.0f)
                    d = 0.0f;
                acc += ds4_round_bf16(d * w[h]);
            }
            float sc = ds4_round_bf16(acc);
            if (k == topk && !(sc > best[topk - 1]))
                continue;
            int pos = k < topk ? k++ : topk - 1;
            while (pos > 0 && sc > best[pos - 1]) {
                best[pos] = best[pos - 1];
                sel[pos] = sel[pos - 1];
                pos--;
            }
            best[pos] = sc;
            sel[pos] = (int32_t)g;
        }
        j->n_sel[t] = k;
    }
    ds4_free(best);
}

ds4_status_t ds4__indexer_run(ds4_model_h m, ds4_seq_h s, const ds4_layer_w_t *L,
                                const float *x, const float *qr, int64_t T, int64_t p0,
                                int32_t *sel, int32_t *n_sel)
{
    const ds4_model_config_t *c = &m->cfg;
    ds4_layer_state_t *ls = &s->ls[L->index];
    int nih = c->index_n_heads, ihd = c->index_head_dim, rd = c->rope_head_dim;
    ds4_status_t st = DS4_OK;
    float *iq = ds4_malloc_array((size_t)(T * nih * ihd), sizeof(float));
    float *w = ds4_malloc_array((size_t)(T * nih), sizeof(float));
    float *keys = NULL, *S = NULL;
    if (iq == NULL || w == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    ds4__linear_bf16(m, &L->idx_wq_b, T, qr, iq, 0);
    for (int64_t t = 0; t < T; t++) {
        for (int h = 0; h < nih; h++) {
            float *q = iq + (t * nih + h) * ihd;
            ds4__rope(q + ihd - rd, rd, m->rope_freq_comp, p0 + t, false);
            ds4__hadamard_bf16(q, ihd);
            ds4_act_quant_fp4(q, ihd, q, NULL, NULL);
        }
    }
    st = ds4__compressor_run(m, s, L, true, x, T, p0);
    if (st != DS4_OK)
        goto out;
    ds4__linear_bf16(m, &L->idx_wproj, T, x, w, 0);
    const float wscale = (float)(pow((double)ihd, -0.5) * pow((double)nih, -0.5));
    for (int64_t i = 0; i < T * nih; i++)
        w[i] = ds4_round_bf16(w[i] * wscale);
    int64_t n_keys = (p0 + T) / 4;
    keys = ds4_malloc_array((size_t)(n_keys > 0 ? n_keys * ihd : 1), sizeof(float));
    if (keys == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    for (int64_t g = 0; g < n_keys; g++)
        ds4__index_row_decode(c, ls->idx + g * m->index_row_bytes, keys + g * ihd);
    if (n_keys == 0) {
        for (int64_t t = 0; t < T; t++)
            n_sel[t] = 0;
        goto out;
    }
    /* q.k for a block of queries against every key with one GEMM: FP4 x FP4 products summed
     * over index_head_dim are exact in fp32, so the summation order does not matter. */
    const int64_t QB = 64;
    S = ds4_malloc_array((size_t)(QB * nih * n_keys), sizeof(float));
    if (S == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    for (int64_t q0 = 0; q0 < T; q0 += QB) {
        int64_t nq = T - q0 < QB ? T - q0 : QB;
        m->ops->gemm_f32(m->be, nq * nih, n_keys, ihd, iq + q0 * nih * ihd, keys, S);
        idx_job_t job = {.m = m, .q0 = q0, .p0 = p0, .n_keys = n_keys, .S = S, .w = w,
                         .sel = sel, .n_sel = n_sel};
        m->ops->parallel_for(m->be, (size_t)nq, idx_rows, &job);
    }
out:
    ds4_free(iq);
    ds4_free(w);
    ds4_free(keys);
    ds4_free(S);
    return st;
}

