/*
 * Model config loader against the official V4-Pro / V4-Flash config.json files (reference data
 * in tests/fixtures/configs) and reject cases derived from them, one per failure.
 */
#include "ds4/config.h"
#include "ds4/json.h"
#include "test.h"

static void load_ok(const char *rel, ds4_model_config_t *c)
{
    ds4_diag_t d, w;
    ds4_diag_init(&d);
    ds4_diag_init(&w);
    ds4_status_t st = ds4_config_load(ds4_test_fixture(rel), c, &d, &w);
    DS4_CHECK_STATUS(st, DS4_OK);
    for (size_t i = 0; i < d.count; i++)
        fprintf(stderr, "  unexpected: %s\n", d.items[i]);
    DS4_CHECK_EQ_INT(w.count, 0);
    ds4_diag_free(&d);
    ds4_diag_free(&w);
}

static void test_v4_pro(void)
{
    ds4_model_config_t c;
    load_ok("configs/v4-pro/config.json", &c);
    DS4_CHECK_EQ_INT(c.n_layers, 61);
    DS4_CHECK_EQ_INT(c.n_mtp_layers, 1);
    DS4_CHECK_EQ_INT(c.n_hca_layers, 31);
    DS4_CHECK_EQ_INT(c.n_csa_layers, 30);
    DS4_CHECK_EQ_INT(c.n_window_layers, 0);
    DS4_CHECK_EQ_INT(c.layer_kind[0], DS4_LAYER_HCA);
    DS4_CHECK_EQ_INT(c.layer_kind[1], DS4_LAYER_HCA);
    DS4_CHECK_EQ_INT(c.layer_kind[2], DS4_LAYER_CSA);
    DS4_CHECK_EQ_INT(c.layer_kind[60], DS4_LAYER_CSA);
    DS4_CHECK_EQ_INT(c.layer_kind[61], DS4_LAYER_WINDOW); /* MTP */
    DS4_CHECK(ds4_config_layer_is_hash(&c, 2) && !ds4_config_layer_is_hash(&c, 3));
    DS4_CHECK_EQ_INT(ds4_config_kv_row_bytes(&c), 584);
    DS4_CHECK_EQ_INT(ds4_config_index_row_bytes(&c), 68);
    double bpt = ds4_config_history_bytes_per_token(&c);
    DS4_CHECK_NEAR(bpt, 5031.4375, 1e-9);
    double gib = bpt * (double)(1u << 20) / (double)(1u << 30);
    DS4_CHECK_NEAR(gib, 4.91, 0.005);
    DS4_CHECK(c.has_yarn && c.rope_factor == 16.0 && c.rope_original_max_pos == 65536);
    DS4_CHECK(c.scoring_func == DS4_SCORE_SQRTSOFTPLUS && c.expert_dtype == DS4_EXPERT_FP4);
    DS4_CHECK_EQ_INT(c.hidden_size, 7168);
    DS4_CHECK_EQ_INT(c.n_routed_experts, 384);
}

static void test_v4_flash(void)
{
    ds4_model_config_t c;
    load_ok("configs/v4-flash/config.json", &c);
    DS4_CHECK_EQ_INT(c.n_layers, 43);
    DS4_CHECK_EQ_INT(c.n_window_layers, 2);
    DS4_CHECK_EQ_INT(c.n_csa_layers, 21);
    DS4_CHECK_EQ_INT(c.n_hca_layers, 20);
    DS4_CHECK_EQ_INT(c.layer_kind[43], DS4_LAYER_WINDOW);
    double bpt = ds4_config_history_bytes_per_token(&c);
    DS4_CHECK_NEAR(bpt, 3514.25, 1e-9);
    DS4_CHECK_NEAR(bpt * (double)(1u << 20) / (double)(1u << 30), 3.43, 0.005);
}

static void test_tiny(void)
{
    ds4_model_config_t c;
    load_ok("configs/tiny-a/config.json", &c);
    DS4_CHECK_EQ_INT(c.n_layers, 6);
    static const ds4_layer_kind_t want[] = {DS4_LAYER_WINDOW, DS4_LAYER_WINDOW, DS4_LAYER_CSA,
                                            DS4_LAYER_HCA,    DS4_LAYER_CSA,    DS4_LAYER_HCA,
                                            DS4_LAYER_WINDOW};
    for (int i = 0; i < 7; i++)
        DS4_CHECK_EQ_INT(c.layer_kind[i], want[i]);
    /* head_dim 256: 192 nope e4m3 + 3 scales + 64 bf16 rope = 323 -> 328 */
    DS4_CHECK_EQ_INT(ds4_config_kv_row_bytes(&c), 328);
    DS4_CHECK_EQ_INT(c.sliding_window, 16);
}

/* Loads the Pro config, applies `mutate`, and expects DS4_ERR_CONFIG naming `needle`. */
static void reject(const char *name, void (*mutate)(json_t *), const char *needle)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    json_t *root = NULL;
    DS4_CHECK_STATUS(ds4_json_load_file(ds4_test_fixture("configs/v4-pro/config.json"), 1 << 20,
                                        &root, &d),
                     DS4_OK);
    if (root == NULL)
        return;
    mutate(root);
    char *text = json_dumps(root, 0);
    json_decref(root);
    ds4_model_config_t c;
    ds4_status_t st = ds4_config_parse(text, strlen(text), name, &c, &d, NULL);
    free(text);
    DS4_CHECKF(st == DS4_ERR_CONFIG, "%s: status %s", name, ds4_status_name(st));
    DS4_CHECKF(ds4_diag_contains(&d, needle), "%s: no problem mentions \"%s\"", name, needle);
    for (size_t i = 0; i < d.count; i++)
        fprintf(stderr, "  %s -> %s\n", name, d.items[i]);
    ds4_diag_free(&d);
}

static void m_missing(json_t *r) { json_object_del(r, "hidden_size"); }
static void m_scoring(json_t *r) { json_object_set_new(r, "scoring_func", json_string("relu")); }
static void m_ratios_len(json_t *r) { json_array_remove(json_object_get(r, "compress_ratios"), 0); }
static void m_not128(json_t *r) { json_object_set_new(r, "hidden_size", json_integer(7100)); }
static void m_negative(json_t *r) { json_object_set_new(r, "num_attention_heads", json_integer(-8)); }
static void m_type(json_t *r) { json_object_set_new(r, "vocab_size", json_string("129280")); }
static void m_model_type(json_t *r) { json_object_set_new(r, "model_type", json_string("llama")); }
static void m_topk(json_t *r) { json_object_set_new(r, "num_experts_per_tok", json_integer(500)); }
static void m_ratio_value(json_t *r)
{
    json_array_set_new(json_object_get(r, "compress_ratios"), 5, json_integer(1));
}
static void m_quant(json_t *r)
{
    json_object_set_new(json_object_get(r, "quantization_config"), "scale_fmt", json_string("fp32"));
}
static void m_rope(json_t *r)
{
    json_object_set_new(json_object_get(r, "rope_scaling"), "type", json_string("ntk"));
}
static void m_not_object(json_t *r) { json_object_set_new(r, "quantization_config", json_integer(1)); }
static void m_moe_fp4(json_t *r) { json_object_set_new(r, "moe_intermediate_size", json_integer(3000)); }
static void m_ogroups(json_t *r) { json_object_set_new(r, "o_groups", json_integer(7)); }

static void test_reject_cases(void)
{
    reject("missing key", m_missing, "hidden_size: missing required key");
    reject("unknown scoring_func", m_scoring, "scoring_func: unknown value \"relu\"");
    reject("compress_ratios length", m_ratios_len, "compress_ratios: has 61 entries, expected");
    reject("non-128 dim", m_not128, "hidden_size: value 7100 is not a multiple of 128");
    reject("negative value", m_negative, "num_attention_heads: value -8 outside");
    reject("wrong type", m_type, "vocab_size: expected an integer, got string");
    reject("unknown model_type", m_model_type, "model_type: unknown value \"llama\"");
    reject("top-k > experts", m_topk, "num_experts_per_tok: value 500 exceeds n_routed_experts 384");
    reject("ratio value", m_ratio_value, "compress_ratios[5]: compress ratio 1 invalid");
    reject("scale format", m_quant, "quantization_config.scale_fmt: unknown value \"fp32\"");
    reject("rope type", m_rope, "rope_scaling.type: unknown value \"ntk\"");
    reject("not an object", m_not_object, "quantization_config: expected object, got integer");
    reject("moe dim", m_moe_fp4, "moe_intermediate_size: value 3000 is not a multiple of 128");
    reject("o_groups", m_ogroups, "o_groups: value 7 does not divide num_attention_heads 128");
}

static void test_collects_all(void)
{
    const char *text = "{\"model_type\": \"deepseek_v4\", \"hidden_size\": 100}";
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_model_config_t c;
    DS4_CHECK_STATUS(ds4_config_parse(text, strlen(text), "partial", &c, &d, NULL),
                     DS4_ERR_CONFIG);
    /* Every missing critical key is reported, not just the first. */
    DS4_CHECK(d.count >= 30);
    DS4_CHECK(ds4_diag_contains(&d, "vocab_size: missing"));
    DS4_CHECK(ds4_diag_contains(&d, "compress_ratios: missing"));
    DS4_CHECK(ds4_diag_contains(&d, "hidden_size: value 100 is not a multiple of 128"));
    ds4_diag_free(&d);

    const char *notjson = "{\"model_type\": ";
    ds4_diag_init(&d);
    DS4_CHECK_STATUS(ds4_config_parse(notjson, strlen(notjson), "trunc", &c, &d, NULL),
                     DS4_ERR_PARSE);
    ds4_diag_free(&d);
    ds4_diag_init(&d);
    DS4_CHECK_STATUS(ds4_config_load("/nonexistent/config.json", &c, &d, NULL), DS4_ERR_IO);
    DS4_CHECK(ds4_diag_contains(&d, "cannot open"));
    ds4_diag_free(&d);
}

int main(void)
{
    DS4_RUN(test_v4_pro);
    DS4_RUN(test_v4_flash);
    DS4_RUN(test_tiny);
    DS4_RUN(test_reject_cases);
    DS4_RUN(test_collects_all);
    return ds4_test_finish();
}
