/* Loading a V4 checkpoint in the Hugging Face layout: every tensor the config implies is
 * looked up with its exact dtype and shape (scales included); all problems are collected. */
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct loader {
    ds4_model_h m;
    ds4_diag_t *diag;
    ds4_status_t st;   /* first failure */
    char prefix[64];
} loader_t;

static const void *get(loader_t *ld, const char *suffix, ds4_dtype_t dt, int nd, int64_t d0,
                       int64_t d1)
{
    char name[256];
    snprintf(name, sizeof(name), "%s%s", ld->prefix, suffix);
    int64_t shape[2] = {d0, d1};
    ds4_tensor_view_t v;
    ds4_status_t st = ds4_st_expect(ld->m->st, name, dt, nd, shape, &v, ld->diag);
    if (st != DS4_OK) {
        if (ld->st == DS4_OK)
            ld->st = st == DS4_ERR_NOT_FOUND ? DS4_ERR_MODEL : st;
        return NULL;
    }
    return v.data;
}

/* A linear weight: FP8 (+ 128x128 block scale), FP4 (+ per-32 scale), BF16. */
static ds4_weight_t get_w(loader_t *ld, const char *base, ds4_wtype_t type, int64_t n, int64_t k)
{
    char wn[200], sn[200];
    snprintf(wn, sizeof(wn), "%s.weight", base);
    snprintf(sn, sizeof(sn), "%s.scale", base);
    ds4_weight_t w = {.type = type, .n = n, .k = k};
    switch (type) {
    case DS4_W_FP8:
        w.data = get(ld, wn, DS4_DTYPE_F8_E4M3, 2, n, k);
        w.scale = get(ld, sn, DS4_DTYPE_F8_E8M0, 2, (n + 127) / 128, (k + 127) / 128);
        break;
    case DS4_W_FP4:
        w.data = get(ld, wn, DS4_DTYPE_I8, 2, n, k / 2);
        w.scale = get(ld, sn, DS4_DTYPE_F8_E8M0, 2, n, k / 32);
        break;
    case DS4_W_BF16:
        w.data = get(ld, wn, DS4_DTYPE_BF16, 2, n, k);
        break;
    case DS4_W_F32:
        w.data = get(ld, wn, DS4_DTYPE_F32, 2, n, k);
        break;
    }
    return w;
}

static void load_layer(loader_t *ld, ds4_layer_w_t *L, int li)
{
    ds4_model_h m = ld->m;
    const ds4_model_config_t *c = &m->cfg;
    int64_t d = c->hidden_size, hc = c->hc_mult, mix = (2 + hc) * hc;
    int64_t H = c->n_heads, hd = c->head_dim, ql = c->q_lora_rank;
    int64_t G = c->o_groups, ol = c->o_lora_rank, E = c->n_routed_experts;
    int64_t I = c->moe_inter_dim;
    L->index = li;
    L->is_mtp = li >= c->n_layers;
    L->kind = c->layer_kind[li];
    L->ratio = c->compress_ratio[li];
    L->is_hash = !L->is_mtp && ds4_config_layer_is_hash(c, li);
    if (L->is_mtp)
        snprintf(ld->prefix, sizeof(ld->prefix), "mtp.%d.", li - c->n_layers);
    else
        snprintf(ld->prefix, sizeof(ld->prefix), "layers.%d.", li);

    L->attn_norm = get(ld, "attn_norm.weight", DS4_DTYPE_BF16, 1, d, 0);
    L->ffn_norm = get(ld, "ffn_norm.weight", DS4_DTYPE_BF16, 1, d, 0);
    L->hc_attn_fn = get(ld, "hc_attn_fn", DS4_DTYPE_F32, 2, mix, hc * d);
    L->hc_attn_base = get(ld, "hc_attn_base", DS4_DTYPE_F32, 1, mix, 0);
    L->hc_attn_scale = get(ld, "hc_attn_scale", DS4_DTYPE_F32, 1, 3, 0);
    L->hc_ffn_fn = get(ld, "hc_ffn_fn", DS4_DTYPE_F32, 2, mix, hc * d);
    L->hc_ffn_base = get(ld, "hc_ffn_base", DS4_DTYPE_F32, 1, mix, 0);
    L->hc_ffn_scale = get(ld, "hc_ffn_scale", DS4_DTYPE_F32, 1, 3, 0);
    L->attn_sink = get(ld, "attn.attn_sink", DS4_DTYPE_F32, 1, H, 0);
    L->wq_a = get_w(ld, "attn.wq_a", DS4_W_FP8, ql, d);
    L->q_norm = get(ld, "attn.q_norm.weight", DS4_DTYPE_BF16, 1, ql, 0);
    L->wq_b = get_w(ld, "attn.wq_b", DS4_W_FP8, H * hd, ql);
    L->wkv = get_w(ld, "attn.wkv", DS4_W_FP8, hd, d);
    L->kv_norm = get(ld, "attn.kv_norm.weight", DS4_DTYPE_BF16, 1, hd, 0);
    L->wo_a = get_w(ld, "attn.wo_a", DS4_W_FP8, G * ol, H * hd / G);
    L->wo_b = get_w(ld, "attn.wo_b", DS4_W_FP8, d, G * ol);
    if (L->ratio != 0) {
        int64_t coff = L->ratio == 4 ? 2 : 1;
        L->cmp_wkv = get_w(ld, "attn.compressor.wkv", DS4_W_BF16, coff * hd, d);
        L->cmp_wgate = get_w(ld, "attn.compressor.wgate", DS4_W_BF16, coff * hd, d);
        L->cmp_ape = get(ld, "attn.compressor.ape", DS4_DTYPE_F32, 2, L->ratio, coff * hd);
        L->cmp_norm = get(ld, "attn.compressor.norm.weight", DS4_DTYPE_BF16, 1, hd, 0);
    }
    if (L->kind == DS4_LAYER_CSA) {
        int64_t nih = c->index_n_heads, ihd = c->index_head_dim;
        L->idx_wq_b = get_w(ld, "attn.indexer.wq_b", DS4_W_FP8, nih * ihd, ql);
        L->idx_wproj = get_w(ld, "attn.indexer.weights_proj", DS4_W_BF16, nih, d);
        L->idx_cmp_wkv = get_w(ld, "attn.indexer.compressor.wkv", DS4_W_BF16, 2 * ihd, d);
        L->idx_cmp_wgate = get_w(ld, "attn.indexer.compressor.wgate", DS4_W_BF16, 2 * ihd, d);
        L->idx_cmp_ape = get(ld, "attn.indexer.compressor.ape", DS4_DTYPE_F32, 2, 4, 2 * ihd);
        L->idx_cmp_norm =
            get(ld, "attn.indexer.compressor.norm.weight", DS4_DTYPE_BF16, 1, ihd, 0);
    }
    L->gate = get_w(ld, "ffn.gate", DS4_W_BF16, E, d);
    if (L->is_hash) {
        L->tid2eid = get(ld, "ffn.gate.tid2eid", DS4_DTYPE_I64, 2, c->vocab_size,
                         c->n_activated_experts);
        if (L->tid2eid != NULL) {
            int64_t n = (int64_t)c->vocab_size * c->n_activated_experts;
            for (int64_t i = 0; i < n; i++) {
                if (L->tid2eid[i] < 0 || L->tid2eid[i] >= E) {
                    ds4_diag_addf(ld->diag, NULL,
                                  "tensor %sffn.gate.tid2eid: entry %lld = %lld outside [0, %lld)",
                                  ld->prefix, (long long)i, (long long)L->tid2eid[i],
                                  (long long)E);
                    if (ld->st == DS4_OK)
                        ld->st = DS4_ERR_MODEL;
                    break;
                }
            }
        }
    } else {
        L->gate_bias = get(ld, "ffn.gate.bias", DS4_DTYPE_F32, 1, E, 0);
    }
    L->experts = ds4_calloc((size_t)(E * 3), sizeof(ds4_weight_t));
    if (L->experts == NULL) {
        ld->st = DS4_ERR_NO_MEMORY;
        return;
    }
    ds4_wtype_t et = c->expert_dtype == DS4_EXPERT_FP4 ? DS4_W_FP4 : DS4_W_FP8;
    for (int64_t e = 0; e < E; e++) {
        char b[96];
        snprintf(b, sizeof(b), "ffn.experts.%lld.w1", (long long)e);
        L->experts[e * 3 + 0] = get_w(ld, b, et, I, d);
        snprintf(b, sizeof(b), "ffn.experts.%lld.w2", (long long)e);
        L->experts[e * 3 + 1] = get_w(ld, b, et, d, I);
        snprintf(b, sizeof(b), "ffn.experts.%lld.w3", (long long)e);
        L->experts[e * 3 + 2] = get_w(ld, b, et, I, d);
    }
    L->sh_w1 = get_w(ld, "ffn.shared_experts.w1", DS4_W_FP8, I, d);
    L->sh_w2 = get_w(ld, "ffn.shared_experts.w2", DS4_W_FP8, d, I);
    L->sh_w3 = get_w(ld, "ffn.shared_experts.w3", DS4_W_FP8, I, d);
    if (L->is_mtp) {
        L->e_proj = get_w(ld, "e_proj", DS4_W_FP8, d, d);
        L->h_proj = get_w(ld, "h_proj", DS4_W_FP8, d, d);
        L->enorm = get(ld, "enorm.weight", DS4_DTYPE_BF16, 1, d, 0);
        L->hnorm = get(ld, "hnorm.weight", DS4_DTYPE_BF16, 1, d, 0);
        L->mtp_norm = get(ld, "norm.weight", DS4_DTYPE_BF16, 1, d, 0);
        L->hc_head_fn = get(ld, "hc_head_fn", DS4_DTYPE_F32, 2, hc, hc * d);
        L->hc_head_base = get(ld, "hc_head_base", DS4_DTYPE_F32, 1, hc, 0);
        L->hc_head_scale = get(ld, "hc_head_scale", DS4_DTYPE_F32, 1, 1, 0);
    }
}

/* Every linear weight of the model (for the fp32 cache). */
static int collect_weights(ds4_model_h m, ds4_weight_t **out, int cap)
{
    int n = 0;
#define W(x) do { if ((x).data != NULL && n < cap) out[n++] = &(x); } while (0)
    /* the head streams its bf16 rows (DS4_MATMUL_STREAM): no fp32 copy */
    for (int i = 0; i < m->n_total; i++) {
        ds4_layer_w_t *L = &m->layers[i];
        W(L->wq_a); W(L->wq_b); W(L->wkv); W(L->wo_a); W(L->wo_b);
        W(L->cmp_wkv); W(L->cmp_wgate); W(L->idx_wq_b); W(L->idx_wproj);
        W(L->idx_cmp_wkv); W(L->idx_cmp_wgate); W(L->gate);
        W(L->sh_w1); W(L->sh_w2); W(L->sh_w3); W(L->e_proj); W(L->h_proj);
        for (int e = 0; e < m->cfg.n_routed_experts * 3; e++)
            W(L->experts[e]);
    }
#undef W
    return n;
}

/* Exact fp32 copies of all linear weights when they fit in `budget` bytes (dequantisation of
 * FP8/FP4/BF16 is exact, so results are unchanged; only per-call tile work disappears). */
static ds4_status_t build_f32_cache(ds4_model_h m, uint64_t budget)
{
    int cap = 64 + m->n_total * (24 + 3 * m->cfg.n_routed_experts);
    ds4_weight_t **ws = ds4_malloc_array((size_t)cap, sizeof(*ws));
    if (ws == NULL)
        return DS4_ERR_NO_MEMORY;
    int n = collect_weights(m, ws, cap);
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += (uint64_t)ws[i]->n * (uint64_t)ws[i]->k * sizeof(float);
    if (total > budget) {
        ds4_free(ws);
        return DS4_OK;
    }
    m->f32_cache = ds4_malloc(total > 0 ? total : 1);
    if (m->f32_cache == NULL) {
        ds4_free(ws);
        return DS4_OK; /* optional: fall back to tile dequantisation */
    }
    float *p = m->f32_cache;
    for (int i = 0; i < n; i++) {
        ds4_weight_dequant_rows(ws[i], 0, ws[i]->n, p);
        ws[i]->f32 = p;
        p += ws[i]->n * ws[i]->k;
    }
    ds4_free(ws);
    return DS4_OK;
}

ds4_model_params_t ds4_model_params_default(void)
{
    return (ds4_model_params_t){.backend = "cpu", .n_threads = 0, .progress = false,
                                .f32_cache_max_bytes = 512ull << 20};
}

/* Engine limits beyond the config loader's checks (fixed-size scratch in the kernels). */
static void check_limits(const ds4_model_config_t *c, ds4_diag_t *diag, ds4_status_t *st)
{
    if (c->n_routed_experts > 1024 || c->hc_mult > 16 || c->rope_head_dim > 128 ||
        c->rope_head_dim % 2 != 0 || c->index_head_dim % 32 != 0 ||
        (c->index_head_dim & (c->index_head_dim - 1)) != 0 || c->n_activated_experts < 1 ||
        c->n_activated_experts > c->n_routed_experts || c->n_shared_experts != 1 ||
        c->n_heads % c->o_groups != 0 || c->o_lora_rank % 128 != 0) {
        ds4_diag_addf(diag, "config.json",
                      "unsupported dimensions for the engine (experts <= 1024, hc_mult <= 16, "
                      "rope_head_dim even <= 128, index_head_dim a power of two >= 32, "
                      "1 shared expert, n_heads %% o_groups == 0, o_lora_rank %% 128 == 0)");
        *st = DS4_ERR_CONFIG;
    }
    for (int i = 0; i < ds4_config_n_layers_total(c); i++) {
        int r = c->compress_ratio[i];
        if (r != 0 && (r > 256 || (c->layer_kind[i] == DS4_LAYER_CSA && r != 4))) {
            ds4_diag_addf(diag, "config.json", "compress_ratios[%d] = %d unsupported", i, r);
            *st = DS4_ERR_CONFIG;
        }
    }
}

ds4_status_t ds4_model_load(const char *dir, const ds4_model_params_t *params, ds4_model_h *out,
                            ds4_diag_t *diag)
{
    ds4_model_params_t p = params != NULL ? *params : ds4_model_params_default();
    ds4_status_t st;
    ds4_diag_t local;
    if (diag == NULL) {
        /* Problems are still collected (and logged) when the caller passes no diag. */
        ds4_diag_init(&local);
        st = ds4_model_load(dir, &p, out, &local);
        if (st != DS4_OK)
            ds4_diag_log(&local, "model load");
        ds4_diag_free(&local);
        return st;
    }
    struct ds4_model *m = ds4_calloc(1, sizeof(*m));
    if (m == NULL)
        return DS4_ERR_NO_MEMORY;
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    st = ds4_config_load(path, &m->cfg, diag, NULL);
    if (st != DS4_OK)
        goto fail;
    check_limits(&m->cfg, diag, &st);
    if (st != DS4_OK)
        goto fail;
    m->ops = ds4_backend_get(p.backend);
    if (m->ops == NULL) {
        ds4_diag_addf(diag, NULL, "backend %s not compiled in", p.backend);
        st = DS4_ERR_NO_DEVICE;
        goto fail;
    }
    st = ds4_st_open(dir, &m->st, diag);
    if (st != DS4_OK)
        goto fail;
    const ds4_model_config_t *c = &m->cfg;
    m->n_total = ds4_config_n_layers_total(c);
    m->row_bytes = ds4_config_kv_row_bytes(c);
    m->index_row_bytes = ds4_config_index_row_bytes(c);
    ds4__rope_freqs(c, false, m->rope_freq_window);
    ds4__rope_freqs(c, true, m->rope_freq_comp);
    m->layers = ds4_calloc((size_t)m->n_total, sizeof(ds4_layer_w_t));
    if (m->layers == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto fail;
    }
    loader_t ld = {.m = m, .diag = diag, .st = DS4_OK};
    int64_t d = c->hidden_size, hc = c->hc_mult;
    m->embed = get_w(&ld, "embed", DS4_W_BF16, c->vocab_size, d);
    m->head = get_w(&ld, "head", DS4_W_BF16, c->vocab_size, d);
    m->norm = get(&ld, "norm.weight", DS4_DTYPE_BF16, 1, d, 0);
    m->hc_head_fn = get(&ld, "hc_head_fn", DS4_DTYPE_F32, 2, hc, hc * d);
    m->hc_head_base = get(&ld, "hc_head_base", DS4_DTYPE_F32, 1, hc, 0);
    m->hc_head_scale = get(&ld, "hc_head_scale", DS4_DTYPE_F32, 1, 1, 0);
    for (int i = 0; i < m->n_total && ld.st != DS4_ERR_NO_MEMORY; i++) {
        load_layer(&ld, &m->layers[i], i);
        if (p.progress)
            ds4_log_info("model load layer %d/%d (%s)", i + 1, m->n_total,
                         ds4_layer_kind_name(c->layer_kind[i]));
    }
    if (ld.st != DS4_OK) {
        st = ld.st;
        goto fail;
    }
    st = m->ops->create(p.n_threads, &m->be);
    if (st != DS4_OK)
        goto fail;
    st = build_f32_cache(m, p.f32_cache_max_bytes);
    if (st != DS4_OK)
        goto fail;
    *out = m;
    return DS4_OK;
fail:
    ds4_model_free(m);
    return st;
}

void ds4_model_free(ds4_model_h m)
{
    if (m == NULL)
        return;
    if (m->layers != NULL) {
        for (int i = 0; i < m->n_total; i++)
            ds4_free(m->layers[i].experts);
        ds4_free(m->layers);
    }
    if (m->be != NULL)
        m->ops->destroy(m->be);
    ds4_free(m->f32_cache);
    if (m->st != NULL)
        ds4_st_close(m->st);
    ds4_free(m);
}

const ds4_model_config_t *ds4_model_config(ds4_model_h m)
{
    return &m->cfg;
}
