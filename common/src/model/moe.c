/* MoE: hash (tid2eid) or sqrt-softplus score routing with selection bias, FP4 routed experts,
 * FP8 shared expert, SwiGLU with clamp, routing weight applied before w2. */
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <string.h>

/* One SwiGLU expert on rows x[n][d] -> y[n][d] (bf16); wts[n] (NULL = weight 1). */
static ds4_status_t expert(ds4_model_h m, const ds4_weight_t *w1, const ds4_weight_t *w2,
                           const ds4_weight_t *w3, const float *x, int64_t n, const float *wts,
                           float *y)
{
    const ds4_model_config_t *c = &m->cfg;
    int64_t I = w1->n;
    float *g = ds4_malloc_array((size_t)(n * I), sizeof(float));
    float *u = ds4_malloc_array((size_t)(n * I), sizeof(float));
    if (g == NULL || u == NULL) {
        ds4_free(g);
        ds4_free(u);
        return DS4_ERR_NO_MEMORY;
    }
    ds4__linear_bf16(m, w1, n, x, g, 0);
    ds4__linear_bf16(m, w3, n, x, u, 0);
    float lim = (float)c->swiglu_limit;
    for (int64_t r = 0; r < n; r++) {
        for (int64_t i = 0; i < I; i++) {
            float gv = g[r * I + i], uv = u[r * I + i];
            if (lim > 0.0f) {
                uv = uv < -lim ? -lim : (uv > lim ? lim : uv);
                gv = gv > lim ? lim : gv;
            }
            float h = (gv / (1.0f + ds4__exp_ref(-gv))) * uv;
            if (wts != NULL)
                h = wts[r] * h;
            g[r * I + i] = ds4_round_bf16(h);
        }
    }
    ds4__linear_bf16(m, w2, n, g, y, 0);
    ds4_free(g);
    ds4_free(u);
    return DS4_OK;
}

ds4_status_t ds4__moe(ds4_model_h m, const ds4_layer_w_t *L, const float *x, int64_t T,
                      const int32_t *tokens, float *out)
{
    const ds4_model_config_t *c = &m->cfg;
    int E = c->n_routed_experts, K = c->n_activated_experts;
    int64_t d = c->hidden_size;
    ds4_status_t st = DS4_OK;
    float *logits = ds4_malloc_array((size_t)(T * E), sizeof(float));
    int32_t *idx = ds4_malloc_array((size_t)(T * K), sizeof(int32_t));
    float *wt = ds4_malloc_array((size_t)(T * K), sizeof(float));
    float *acc = ds4_calloc((size_t)(T * d), sizeof(float));
    float *xe = ds4_malloc_array((size_t)(T * d), sizeof(float));
    float *ye = ds4_malloc_array((size_t)(T * d), sizeof(float));
    float *we = ds4_malloc_array((size_t)T, sizeof(float));
    int64_t *rows = ds4_malloc_array((size_t)T, sizeof(int64_t));
    if (logits == NULL || idx == NULL || wt == NULL || acc == NULL || xe == NULL || ye == NULL ||
        we == NULL || rows == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    m->ops->matmul(m->be, &L->gate, T, x, logits, 0);
    for (int64_t t = 0; t < T; t++) {
        float sc[1024], biased[1024];
        for (int e = 0; e < E; e++) {
            float l = logits[t * E + e];
            float sp = l > 20.0f ? l : log1pf(ds4__exp_ref(l));
            sc[e] = sqrtf(sp);
            biased[e] = L->gate_bias != NULL ? sc[e] + L->gate_bias[e] : sc[e];
        }
        int32_t *ix = idx + t * K;
        if (L->is_hash) {
            for (int k = 0; k < K; k++)
                ix[k] = (int32_t)L->tid2eid[(int64_t)tokens[t] * K + k];
        } else {
            bool used[1024] = {false};
            for (int k = 0; k < K; k++) {
                int best = -1;
                for (int e = 0; e < E; e++) {
                    if (!used[e] && (best < 0 || biased[e] > biased[best]))
                        best = e;
                }
                used[best] = true;
                ix[k] = best;
            }
        }
        float sum = 0.0f;
        for (int k = 0; k < K; k++)
            sum += sc[ix[k]];
        for (int k = 0; k < K; k++)
            wt[t * K + k] = sc[ix[k]] / sum * (float)c->routed_scaling_factor;
    }
    for (int e = 0; e < E; e++) {
        int64_t n = 0;
        for (int64_t t = 0; t < T; t++) {
            for (int k = 0; k < K; k++) {
                if (idx[t * K + k] == e) {
                    rows[n] = t;
                    we[n] = wt[t * K + k];
                    memcpy(xe + n * d, x + t * d, sizeof(float) * (size_t)d);
                    n++;
                }
            }
        }
        if (n == 0)
            continue;
        const ds4_weight_t *ew = L->experts + (int64_t)e * 3;
        st = expert(m, &ew[0], &ew[1], &ew[2], xe, n, we, ye);
        if (st != DS4_OK)
            goto out;
        for (int64_t r = 0; r < n; r++)
            for (int64_t i = 0; i < d; i++)
                acc[rows[r] * d + i] += ye[r * d + i];
    }
    st = expert(m, &L->sh_w1, &L->sh_w2, &L->sh_w3, x, T, NULL, ye);
    if (st != DS4_OK)
        goto out;
    for (int64_t i = 0; i < T * d; i++)
        out[i] = ds4_round_bf16(acc[i] + ye[i]);
out:
    ds4_free(logits);
    ds4_free(idx);
    ds4_free(wt);
    ds4_free(acc);
    ds4_free(xe);
    ds4_free(ye);
    ds4_free(we);
    ds4_free(rows);
    return st;
}
