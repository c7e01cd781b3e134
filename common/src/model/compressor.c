/* Compressors of CSA/HCA layers (and of the CSA lightning indexer): gated pooling of the
 * last `ratio` (overlapping for ratio 4) kv rows into one compressed row, written to the
 * sequence state in wire format; the unfinished tail lives in the compressor tail state. */
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <string.h>

ds4_status_t ds4__compressor_run(ds4_model_h m, ds4_seq_h s, const ds4_layer_w_t *L,
                                  bool indexer, const float *x, int64_t T, int64_t p0)
{
    const ds4_model_config_t *c = &m->cfg;
    ds4_layer_state_t *ls = &s->ls[L->index];
    int D = indexer ? c->index_head_dim : c->head_dim;
    int r = indexer ? 4 : L->ratio;
    bool overlap = (r == 4);
    int coff = overlap ? 2 : 1;
    int64_t W = (int64_t)coff * D;
    int rd = c->rope_head_dim;
    const ds4_weight_t *wkv = indexer ? &L->idx_cmp_wkv : &L->cmp_wkv;
    const ds4_weight_t *wg = indexer ? &L->idx_cmp_wgate : &L->cmp_wgate;
    const float *ape = indexer ? L->idx_cmp_ape : L->cmp_ape;
    const uint16_t *nw = indexer ? L->idx_cmp_norm : L->cmp_norm;

    /* tail layout: main kv_state, main score_state, [indexer kv_state, indexer score_state] */
    int64_t main_slots = (int64_t)(L->ratio == 4 ? 2 : 1) * L->ratio;
    int64_t main_w = (int64_t)(L->ratio == 4 ? 2 : 1) * c->head_dim;
    float *kv_state = ls->tail;
    if (indexer)
        kv_state = ls->tail + 2 * main_slots * main_w;
    float *sc_state = kv_state + (int64_t)coff * r * W;

    ds4_status_t st = ds4__seq_reserve(s, L->index, (p0 + T) / L->ratio);
    if (st != DS4_OK)
        return st;
    float *a = ds4_malloc_array((size_t)(T * W), sizeof(float));
    float *g = ds4_malloc_array((size_t)(T * W), sizeof(float));
    float *pooled = ds4_malloc_array((size_t)D, sizeof(float));
    float *v = ds4_malloc_array((size_t)D, sizeof(float));
    if (a == NULL || g == NULL || pooled == NULL || v == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    m->ops->matmul(m->be, wkv, T, x, a, 0);
    m->ops->matmul(m->be, wg, T, x, g, 0);
    for (int64_t t = 0; t < T; t++) {
        int64_t p = p0 + t;
        int off = (int)(p % r);
        int slot = overlap ? r + off : off;
        for (int64_t i = 0; i < W; i++) {
            kv_state[slot * W + i] = a[t * W + i];
            sc_state[slot * W + i] = g[t * W + i] + ape[off * W + i];
        }
        if ((p + 1) % r != 0)
            continue;
        int n_cand = overlap ? 2 * r : r;
        for (int ch = 0; ch < D; ch++) {
            float sv[256], kv[256];
            for (int j = 0; j < n_cand; j++) {
                int64_t col = (overlap && j >= r) ? D + ch : ch;
                sv[j] = sc_state[j * W + col];
                kv[j] = kv_state[j * W + col];
            }
            float mx = -INFINITY;
            for (int j = 0; j < n_cand; j++)
                mx = sv[j] > mx ? sv[j] : mx;
            float sum = 0.0f;
            for (int j = 0; j < n_cand; j++) {
                sv[j] = ds4__exp_ref(sv[j] - mx);
                sum += sv[j];
            }
            float acc = 0.0f;
            for (int j = 0; j < n_cand; j++)
                acc += kv[j] * (sv[j] / sum);
            pooled[ch] = ds4_round_bf16(acc);
        }
        if (overlap) {
            memmove(kv_state, kv_state + (int64_t)r * W, sizeof(float) * (size_t)(r * W));
            memmove(sc_state, sc_state + (int64_t)r * W, sizeof(float) * (size_t)(r * W));
        }
        int64_t gi = p / r;
        ds4__rmsnorm_rows(pooled, nw, 1, D, c->rms_norm_eps, v);
        ds4__rope(v + D - rd, rd, m->rope_freq_comp, (int64_t)r * gi, false);
        if (indexer) {
            ds4__hadamard_bf16(v, D);
            ds4__index_row_encode(c, v, ls->idx + gi * m->index_row_bytes);
        } else {
            ds4__kv_row_encode(c, v, ls->comp + gi * m->row_bytes);
            ls->n_comp = gi + 1;
        }
    }
out:
    ds4_free(a);
    ds4_free(g);
    ds4_free(pooled);
    ds4_free(v);
    return st;
}

