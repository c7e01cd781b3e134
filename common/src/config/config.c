#include "ds4/config.h"
#include "ds4/alloc.h"
#include "ds4/json.h"
#include "ds4/log.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define CONFIG_MAX_BYTES (4u << 20)

/* Keys of the official config.json that ds4 accepts but does not need (type-checked only). */
static const char *const k_known_other[] = {
    "architectures", "attention_bias", "attention_dropout", "initializer_range",
    "torch_dtype",   "transformers_version", "use_cache",   "topk_method",
    "auto_map",      "_name_or_path",
};

/* Every key ds4 reads. */
static const char *const k_known_used[] = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_nextn_predict_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "qk_rope_head_dim", "q_lora_rank",
    "o_groups", "o_lora_rank", "sliding_window", "index_n_heads", "index_head_dim", "index_topk",
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
    "num_hash_layers", "hc_mult", "hc_sinkhorn_iters", "hc_eps", "max_position_embeddings",
    "bos_token_id", "eos_token_id", "rms_norm_eps", "rope_theta", "compress_rope_theta",
    "routed_scaling_factor", "swiglu_limit", "rope_scaling", "scoring_func", "norm_topk_prob",
    "expert_dtype", "quantization_config", "compress_ratios", "model_type", "hidden_act",
    "tie_word_embeddings",
};

const char *ds4_layer_kind_name(ds4_layer_kind_t kind)
{
    switch (kind) {
    case DS4_LAYER_WINDOW: return "window";
    case DS4_LAYER_CSA: return "csa";
    case DS4_LAYER_HCA: return "hca";
    }
    return "unknown";
}

const char *ds4_score_func_name(ds4_score_func_t func)
{
    switch (func) {
    case DS4_SCORE_SQRTSOFTPLUS: return "sqrtsoftplus";
    case DS4_SCORE_SOFTMAX: return "softmax";
    case DS4_SCORE_SIGMOID: return "sigmoid";
    }
    return "unknown";
}

static bool in_list(const char *key, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(key, list[i]) == 0)
            return true;
    }
    return false;
}

/* Reads a required positive int32 (1 .. max). */
static void get_dim(const json_t *root, const char *key, int64_t min, int64_t max, int32_t *out,
                    ds4_diag_t *d)
{
    int64_t v = 0;
    if (ds4_json_get_i64(root, "", key, true, min, max, &v, d))
        *out = (int32_t)v;
}

static void get_num(const json_t *root, const char *key, double min, double max, double *out,
                    ds4_diag_t *d)
{
    ds4_json_get_f64(root, "", key, true, min, max, out, d);
}

/* Requires root[key] to be the string `want` (or one of `alts`). Returns the index matched. */
static int get_enum(const json_t *root, const char *path, const char *key,
                    const char *const *values, size_t n_values, ds4_diag_t *d)
{
    const char *s = NULL;
    if (!ds4_json_get_str(root, path, key, true, &s, d))
        return -1;
    for (size_t i = 0; i < n_values; i++) {
        if (strcmp(s, values[i]) == 0)
            return (int)i;
    }
    char p[128];
    char allowed[256] = "";
    for (size_t i = 0; i < n_values; i++) {
        strncat(allowed, i == 0 ? "" : ", ", sizeof(allowed) - strlen(allowed) - 1);
        strncat(allowed, values[i], sizeof(allowed) - strlen(allowed) - 1);
    }
    ds4_diag_addf(d, ds4_json_path(p, sizeof(p), path, key), "unknown value \"%s\" (supported: %s)",
                  s, allowed);
    return -1;
}

static void check_multiple(ds4_diag_t *d, const char *what, int64_t value, int64_t block,
                           const char *why)
{
    if (value > 0 && value % block != 0)
        ds4_diag_addf(d, what, "value %lld is not a multiple of %lld (%s)", (long long)value,
                      (long long)block, why);
}

static void parse_quant(const json_t *root, ds4_model_config_t *c, ds4_diag_t *d)
{
    static const char *const methods[] = {"fp8"};
    static const char *const fmts[] = {"e4m3"};
    static const char *const scale_fmts[] = {"ue8m0"};
    static const char *const schemes[] = {"dynamic"};
    const char *path = "quantization_config";
    json_t *q = ds4_json_get_typed(root, "", path, true, JSON_OBJECT, d);
    if (q == NULL)
        return;
    get_enum(q, path, "quant_method", methods, 1, d);
    get_enum(q, path, "fmt", fmts, 1, d);
    get_enum(q, path, "scale_fmt", scale_fmts, 1, d);
    if (json_object_get(q, "activation_scheme") != NULL)
        get_enum(q, path, "activation_scheme", schemes, 1, d);
    json_t *wb = ds4_json_get_typed(q, path, "weight_block_size", true, JSON_ARRAY, d);
    if (wb == NULL)
        return;
    if (json_array_size(wb) != 2) {
        ds4_diag_addf(d, "quantization_config.weight_block_size",
                      "has %zu entries, expected 2", json_array_size(wb));
        return;
    }
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_array_get(wb, i);
        if (!json_is_integer(v) || json_integer_value(v) != DS4_FP8_BLOCK) {
            ds4_diag_addf(d, "quantization_config.weight_block_size",
                          "entry %zu must be %d (ds4 supports 128x128 FP8 blocks)", i,
                          DS4_FP8_BLOCK);
            return;
        }
        c->weight_block[i] = DS4_FP8_BLOCK;
    }
}

static void parse_rope_scaling(const json_t *root, ds4_model_config_t *c, ds4_diag_t *d)
{
    static const char *const types[] = {"yarn"};
    const char *path = "rope_scaling";
    json_t *rs = json_object_get(root, path);
    if (rs == NULL) {
        ds4_diag_addf(d, path, "missing required key (use null for no scaling)");
        return;
    }
    if (json_is_null(rs)) {
        c->has_yarn = false;
        return;
    }
    if (!json_is_object(rs)) {
        ds4_diag_addf(d, path, "expected object or null, got %s", ds4_json_type_name(rs));
        return;
    }
    /* HF writes "type"; newer configs write "rope_type". */
    const char *key = json_object_get(rs, "rope_type") != NULL ? "rope_type" : "type";
    if (get_enum(rs, path, key, types, 1, d) < 0)
        return;
    c->has_yarn = true;
    ds4_json_get_f64(rs, path, "factor", true, 1.0, 1e6, &c->rope_factor, d);
    ds4_json_get_i64(rs, path, "original_max_position_embeddings", true, 1, INT32_MAX,
                     &c->rope_original_max_pos, d);
    ds4_json_get_f64(rs, path, "beta_fast", true, 0.0, 1e6, &c->beta_fast, d);
    ds4_json_get_f64(rs, path, "beta_slow", true, 0.0, 1e6, &c->beta_slow, d);
}

static void parse_layers(const json_t *root, ds4_model_config_t *c, ds4_diag_t *d)
{
    json_t *cr = ds4_json_get_typed(root, "", "compress_ratios", true, JSON_ARRAY, d);
    if (cr == NULL || c->n_layers <= 0 || c->n_mtp_layers < 0)
        return;
    size_t want = (size_t)c->n_layers + (size_t)c->n_mtp_layers;
    if (json_array_size(cr) != want) {
        ds4_diag_addf(d, "compress_ratios",
                      "has %zu entries, expected num_hidden_layers + num_nextn_predict_layers "
                      "= %zu (one per layer, then the MTP layer)",
                      json_array_size(cr), want);
        return;
    }
    if (want > DS4_CONFIG_MAX_LAYERS) {
        ds4_diag_addf(d, "compress_ratios", "%zu layers exceed the limit of %d", want,
                      DS4_CONFIG_MAX_LAYERS);
        return;
    }
    for (size_t i = 0; i < want; i++) {
        char p[64];
        ds4_json_path_index(p, sizeof(p), "compress_ratios", i);
        json_t *v = json_array_get(cr, i);
        if (!json_is_integer(v)) {
            ds4_diag_addf(d, p, "expected an integer, got %s", ds4_json_type_name(v));
            continue;
        }
        json_int_t r = json_integer_value(v);
        if (r != 0 && (r < 2 || r > 65536)) {
            ds4_diag_addf(d, p, "compress ratio %lld invalid (0 = window only, or 2..65536)",
                          (long long)r);
            continue;
        }
        c->compress_ratio[i] = (int32_t)r;
        c->layer_kind[i] = r == 0 ? DS4_LAYER_WINDOW : r == 4 ? DS4_LAYER_CSA : DS4_LAYER_HCA;
        if ((int32_t)i < c->n_layers) {
            c->n_window_layers += c->layer_kind[i] == DS4_LAYER_WINDOW;
            c->n_csa_layers += c->layer_kind[i] == DS4_LAYER_CSA;
            c->n_hca_layers += c->layer_kind[i] == DS4_LAYER_HCA;
        }
    }
}

/* Relations between dimensions that the V4 weight and KV formats require. */
static void check_shapes(ds4_model_config_t *c, ds4_diag_t *d)
{
    const char *fp8 = "FP8 weights use 128x128 blocks";
    const char *fp4 = "FP4 experts use 32-element blocks";
    check_multiple(d, "hidden_size", c->hidden_size, DS4_FP8_BLOCK, fp8);
    check_multiple(d, "q_lora_rank", c->q_lora_rank, DS4_FP8_BLOCK, fp8);
    check_multiple(d, "o_lora_rank", c->o_lora_rank, DS4_FP8_BLOCK, fp8);
    check_multiple(d, "head_dim", c->head_dim, DS4_FP8_BLOCK, fp8);
    check_multiple(d, "moe_intermediate_size", c->moe_inter_dim, DS4_FP8_BLOCK, fp8);
    check_multiple(d, "index_head_dim", c->index_head_dim, DS4_FP8_BLOCK,
                   "indexer queries use FP8 128-blocks and FP4 32-blocks");
    if (c->expert_dtype == DS4_EXPERT_FP4) {
        check_multiple(d, "hidden_size", c->hidden_size, DS4_FP4_BLOCK, fp4);
        check_multiple(d, "moe_intermediate_size", c->moe_inter_dim, DS4_FP4_BLOCK, fp4);
    }
    if (c->head_dim > 0 && c->rope_head_dim > 0) {
        if (c->rope_head_dim >= c->head_dim)
            ds4_diag_addf(d, "qk_rope_head_dim", "value %d must be smaller than head_dim %d",
                          c->rope_head_dim, c->head_dim);
        else
            check_multiple(d, "head_dim - qk_rope_head_dim", c->head_dim - c->rope_head_dim,
                           DS4_KV_FP8_BLOCK, "KV nope dims use FP8 64-blocks");
        if (c->rope_head_dim % 2 != 0)
            ds4_diag_addf(d, "qk_rope_head_dim", "value %d must be even", c->rope_head_dim);
    }
    if (c->index_head_dim > 0 && (c->index_head_dim & (c->index_head_dim - 1)) != 0)
        ds4_diag_addf(d, "index_head_dim",
                      "value %d must be a power of two (indexer Hadamard rotation)",
                      c->index_head_dim);
    if (c->n_heads > 0 && c->o_groups > 0) {
        if (c->n_heads % c->o_groups != 0)
            ds4_diag_addf(d, "o_groups", "value %d does not divide num_attention_heads %d",
                          c->o_groups, c->n_heads);
    }
    if (c->n_activated_experts > 0 && c->n_routed_experts > 0 &&
        c->n_activated_experts > c->n_routed_experts)
        ds4_diag_addf(d, "num_experts_per_tok",
                      "value %d exceeds n_routed_experts %d", c->n_activated_experts,
                      c->n_routed_experts);
    if (c->n_hash_layers > c->n_layers && c->n_layers > 0)
        ds4_diag_addf(d, "num_hash_layers", "value %d exceeds num_hidden_layers %d",
                      c->n_hash_layers, c->n_layers);
    if (c->n_kv_heads != 1 && c->n_kv_heads > 0)
        ds4_diag_addf(d, "num_key_value_heads",
                      "value %d unsupported: DeepSeek-V4 shares one K=V head", c->n_kv_heads);
    if (c->n_shared_experts != 1 && c->n_shared_experts >= 0)
        ds4_diag_addf(d, "n_shared_experts", "value %d unsupported: DeepSeek-V4 has exactly 1",
                      c->n_shared_experts);
    if (c->bos_token_id >= c->vocab_size && c->vocab_size > 0)
        ds4_diag_addf(d, "bos_token_id", "value %d outside vocab_size %d", c->bos_token_id,
                      c->vocab_size);
    if (c->eos_token_id >= c->vocab_size && c->vocab_size > 0)
        ds4_diag_addf(d, "eos_token_id", "value %d outside vocab_size %d", c->eos_token_id,
                      c->vocab_size);
    if (c->n_csa_layers > 0 && c->index_topk <= 0)
        ds4_diag_addf(d, "index_topk", "must be positive when CSA layers exist");
}

static void check_unknown_keys(const json_t *root, ds4_diag_t *warnings)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        if (!in_list(key, k_known_used, DS4_ARRAY_LEN(k_known_used)) &&
            !in_list(key, k_known_other, DS4_ARRAY_LEN(k_known_other)) && warnings != NULL)
            ds4_diag_addf(warnings, key, "unknown key ignored");
    }
}

static ds4_status_t parse_root(const json_t *root, ds4_model_config_t *c, ds4_diag_t *d,
                               ds4_diag_t *warnings)
{
    static const char *const model_types[] = {"deepseek_v4"};
    static const char *const score_funcs[] = {"sqrtsoftplus", "softmax", "sigmoid"};
    static const char *const expert_dtypes[] = {"fp4", "fp8"};
    static const char *const acts[] = {"silu"};
    const int64_t big = 1 << 24;

    if (!json_is_object(root)) {
        ds4_diag_addf(d, "", "config must be a JSON object, got %s", ds4_json_type_name(root));
        return DS4_ERR_CONFIG;
    }
    memset(c, 0, sizeof(*c));
    get_enum(root, "", "model_type", model_types, 1, d);
    get_enum(root, "", "hidden_act", acts, 1, d);

    get_dim(root, "vocab_size", 2, big, &c->vocab_size, d);
    get_dim(root, "hidden_size", 1, big, &c->hidden_size, d);
    get_dim(root, "num_hidden_layers", 1, DS4_CONFIG_MAX_LAYERS - 8, &c->n_layers, d);
    get_dim(root, "num_nextn_predict_layers", 0, 8, &c->n_mtp_layers, d);
    get_dim(root, "num_attention_heads", 1, 4096, &c->n_heads, d);
    get_dim(root, "num_key_value_heads", 1, 4096, &c->n_kv_heads, d);
    get_dim(root, "head_dim", 1, 65536, &c->head_dim, d);
    get_dim(root, "qk_rope_head_dim", 2, 65536, &c->rope_head_dim, d);
    get_dim(root, "q_lora_rank", 1, big, &c->q_lora_rank, d);
    get_dim(root, "o_groups", 1, 4096, &c->o_groups, d);
    get_dim(root, "o_lora_rank", 1, big, &c->o_lora_rank, d);
    get_dim(root, "sliding_window", 1, big, &c->sliding_window, d);
    get_dim(root, "index_n_heads", 1, 4096, &c->index_n_heads, d);
    get_dim(root, "index_head_dim", 1, 65536, &c->index_head_dim, d);
    get_dim(root, "index_topk", 1, big, &c->index_topk, d);
    get_dim(root, "n_routed_experts", 1, 65536, &c->n_routed_experts, d);
    get_dim(root, "n_shared_experts", 0, 64, &c->n_shared_experts, d);
    get_dim(root, "num_experts_per_tok", 1, 65536, &c->n_activated_experts, d);
    get_dim(root, "moe_intermediate_size", 1, big, &c->moe_inter_dim, d);
    get_dim(root, "num_hash_layers", 0, DS4_CONFIG_MAX_LAYERS, &c->n_hash_layers, d);
    get_dim(root, "hc_mult", 1, 64, &c->hc_mult, d);
    get_dim(root, "hc_sinkhorn_iters", 1, 1000, &c->hc_sinkhorn_iters, d);
    get_dim(root, "bos_token_id", 0, big, &c->bos_token_id, d);
    get_dim(root, "eos_token_id", 0, big, &c->eos_token_id, d);
    ds4_json_get_i64(root, "", "max_position_embeddings", true, 1, INT64_C(1) << 40,
                     &c->max_position_embeddings, d);

    get_num(root, "hc_eps", 0.0, 1.0, &c->hc_eps, d);
    get_num(root, "rms_norm_eps", 0.0, 1.0, &c->rms_norm_eps, d);
    get_num(root, "rope_theta", 1.0, 1e12, &c->rope_theta, d);
    get_num(root, "compress_rope_theta", 1.0, 1e12, &c->compress_rope_theta, d);
    get_num(root, "routed_scaling_factor", 0.0, 1e6, &c->routed_scaling_factor, d);
    get_num(root, "swiglu_limit", 0.0, 1e9, &c->swiglu_limit, d);

    int sf = get_enum(root, "", "scoring_func", score_funcs, 3, d);
    if (sf >= 0)
        c->scoring_func = (ds4_score_func_t)sf;
    int ed = get_enum(root, "", "expert_dtype", expert_dtypes, 2, d);
    if (ed >= 0)
        c->expert_dtype = ed == 0 ? DS4_EXPERT_FP4 : DS4_EXPERT_FP8;
    ds4_json_get_bool(root, "", "norm_topk_prob", true, &c->norm_topk_prob, d);
    bool tie = false;
    if (ds4_json_get_bool(root, "", "tie_word_embeddings", false, &tie, d) && tie)
        ds4_diag_addf(d, "tie_word_embeddings", "true is unsupported: V4 has a separate head");

    parse_quant(root, c, d);
    parse_rope_scaling(root, c, d);
    parse_layers(root, c, d);
    check_shapes(c, d);
    check_unknown_keys(root, warnings);

    /* Type-check the informational keys that are present. */
    bool b;
    const char *s;
    double f;
    ds4_json_get_bool(root, "", "attention_bias", false, &b, d);
    if (json_object_get(root, "attention_bias") != NULL && b)
        ds4_diag_addf(d, "attention_bias", "true is unsupported: V4 has no attention bias");
    ds4_json_get_bool(root, "", "use_cache", false, &b, d);
    ds4_json_get_str(root, "", "torch_dtype", false, &s, d);
    ds4_json_get_str(root, "", "topk_method", false, &s, d);
    ds4_json_get_f64(root, "", "attention_dropout", false, 0.0, 1.0, &f, d);
    ds4_json_get_typed(root, "", "architectures", false, JSON_ARRAY, d);

    return d->count > 0 || d->oom ? DS4_ERR_CONFIG : DS4_OK;
}

ds4_status_t ds4_config_parse(const char *json, size_t len, const char *what,
                              ds4_model_config_t *out, ds4_diag_t *diag, ds4_diag_t *warnings)
{
    ds4_diag_t local;
    ds4_diag_init(&local);
    ds4_diag_t *d = diag != NULL ? diag : &local;
    size_t before = d->count;
    json_t *root = NULL;
    ds4_status_t st = ds4_json_load_buf(json, len, what, &root, d);
    if (st == DS4_OK) {
        st = parse_root(root, out, d, warnings);
        if (st == DS4_OK && d->count > before)
            st = DS4_ERR_CONFIG;
        json_decref(root);
    }
    ds4_diag_free(&local);
    return st;
}

ds4_status_t ds4_config_load(const char *path, ds4_model_config_t *out, ds4_diag_t *diag,
                             ds4_diag_t *warnings)
{
    ds4_diag_t local;
    ds4_diag_init(&local);
    ds4_diag_t *d = diag != NULL ? diag : &local;
    json_t *root = NULL;
    ds4_status_t st = ds4_json_load_file(path, CONFIG_MAX_BYTES, &root, d);
    if (st == DS4_OK) {
        st = parse_root(root, out, d, warnings);
        json_decref(root);
    }
    ds4_diag_free(&local);
    return st;
}

uint32_t ds4_config_kv_row_bytes(const ds4_model_config_t *c)
{
    uint32_t nope = (uint32_t)(c->head_dim - c->rope_head_dim);
    uint32_t raw = nope + nope / DS4_KV_FP8_BLOCK + 2u * (uint32_t)c->rope_head_dim;
    return (raw + 7u) & ~7u;
}

uint32_t ds4_config_index_row_bytes(const ds4_model_config_t *c)
{
    return (uint32_t)c->index_head_dim / 2u + (uint32_t)c->index_head_dim / DS4_FP4_BLOCK;
}

uint64_t ds4_config_tail_bytes(const ds4_model_config_t *c, int32_t layer)
{
    int32_t r = c->compress_ratio[layer];
    switch (c->layer_kind[layer]) {
    case DS4_LAYER_WINDOW:
        return 0;
    case DS4_LAYER_CSA:
        return 2ull * 4ull * (2ull * (uint64_t)r) *
               (2ull * (uint64_t)c->head_dim + 2ull * (uint64_t)c->index_head_dim);
    case DS4_LAYER_HCA:
        return 2ull * 4ull * (uint64_t)r * (uint64_t)c->head_dim;
    }
    return 0;
}

double ds4_config_layer_history_bytes_per_token(const ds4_model_config_t *c, int32_t layer)
{
    int32_t r = c->compress_ratio[layer];
    switch (c->layer_kind[layer]) {
    case DS4_LAYER_WINDOW:
        return 0.0;
    case DS4_LAYER_CSA:
        return (double)(ds4_config_kv_row_bytes(c) + ds4_config_index_row_bytes(c)) / r;
    case DS4_LAYER_HCA:
        return (double)ds4_config_kv_row_bytes(c) / r;
    }
    return 0.0;
}

double ds4_config_history_bytes_per_token(const ds4_model_config_t *c)
{
    double total = 0.0;
    for (int32_t l = 0; l < c->n_layers; l++)
        total += ds4_config_layer_history_bytes_per_token(c, l);
    return total;
}

uint64_t ds4_config_fixed_seq_bytes(const ds4_model_config_t *c)
{
    uint64_t total = 0;
    for (int32_t l = 0; l < ds4_config_n_layers_total(c); l++) {
        total += (uint64_t)c->sliding_window * ds4_config_kv_row_bytes(c);
        total += ds4_config_tail_bytes(c, l);
    }
    return total;
}
