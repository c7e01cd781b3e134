/*
 * ds4/config.h - the DeepSeek-V4 model configuration, read from a Hugging Face config.json.
 *
 * Fail closed: ds4_config_load collects every problem (with its key path) into a ds4_diag_t and
 * returns DS4_ERR_CONFIG if there is any. Model-critical keys have no defaults; unknown values of
 * enumerated keys (model_type, scoring_func, hidden_act, quantisation format, rope type) are
 * rejected; dimensions must fit the FP8 128x128 weight blocks, the FP4 32-element expert blocks
 * and the 64-element FP8 KV blocks. Keys ds4 does not know are reported as warnings (in
 * `warnings`), never silently used.
 *
 * Layer numbering: layers 0 .. n_layers-1 are the main stack, layers n_layers ..
 * n_layers+n_mtp_layers-1 are the MTP blocks; compress_ratio[] and layer_kind[] cover both.
 *
 * ds4_model_config_t is a plain value (no heap memory): copy it freely.
 */
#ifndef DS4_CONFIG_H
#define DS4_CONFIG_H

#include "ds4/diag.h"
#include "ds4/status.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DS4_CONFIG_MAX_LAYERS 512
#define DS4_FP8_BLOCK 128      /* FP8 weight block edge (128x128, ue8m0 scale per block) */
#define DS4_FP4_BLOCK 32       /* FP4 e2m1 elements per ue8m0 scale */
#define DS4_KV_FP8_BLOCK 64    /* KV nope dims per ue8m0 scale */

typedef enum ds4_layer_kind {
    DS4_LAYER_WINDOW = 0, /* sliding window only (compress ratio 0) */
    DS4_LAYER_CSA = 1,    /* compressed sparse attention: ratio 4, overlapping, lightning indexer */
    DS4_LAYER_HCA = 2,    /* heavily compressed attention: any other ratio, all compressed rows */
} ds4_layer_kind_t;

typedef enum ds4_score_func {
    DS4_SCORE_SQRTSOFTPLUS = 0,
    DS4_SCORE_SOFTMAX = 1,
    DS4_SCORE_SIGMOID = 2,
} ds4_score_func_t;

typedef enum ds4_expert_dtype {
    DS4_EXPERT_FP4 = 0, /* e2m1 packed 2 per byte (I8 tensors) + ue8m0 per 32 inputs */
    DS4_EXPERT_FP8 = 1, /* e4m3 + ue8m0 per 128x128 block */
} ds4_expert_dtype_t;

typedef struct ds4_model_config {
    /* Sizes (HF key in comments where the name differs). */
    int32_t vocab_size;
    int32_t hidden_size;             /* dim */
    int32_t n_layers;                /* num_hidden_layers */
    int32_t n_mtp_layers;            /* num_nextn_predict_layers */
    int32_t n_heads;                 /* num_attention_heads */
    int32_t n_kv_heads;              /* num_key_value_heads (V4: 1, K = V shared) */
    int32_t head_dim;                /* 512 on V4: nope + rope */
    int32_t rope_head_dim;           /* qk_rope_head_dim: RoPE on the last dims of each head */
    int32_t q_lora_rank;
    int32_t o_groups;
    int32_t o_lora_rank;
    int32_t sliding_window;          /* raw window rows per layer */
    int32_t index_n_heads;
    int32_t index_head_dim;
    int32_t index_topk;
    int32_t n_routed_experts;
    int32_t n_shared_experts;
    int32_t n_activated_experts;     /* num_experts_per_tok */
    int32_t moe_inter_dim;           /* moe_intermediate_size */
    int32_t n_hash_layers;           /* num_hash_layers: first layers route by token id */
    int32_t hc_mult;                 /* mHC residual streams */
    int32_t hc_sinkhorn_iters;
    int64_t max_position_embeddings;
    int32_t bos_token_id;
    int32_t eos_token_id;

    double hc_eps;
    double rms_norm_eps;
    double rope_theta;               /* window-only layers */
    double compress_rope_theta;      /* CSA/HCA layers (with YaRN) */
    double routed_scaling_factor;    /* route_scale */
    double swiglu_limit;

    /* YaRN (rope_scaling); has_yarn false when rope_scaling is null/absent. */
    bool has_yarn;
    double rope_factor;
    int64_t rope_original_max_pos;   /* original_max_position_embeddings (original_seq_len) */
    double beta_fast;
    double beta_slow;

    ds4_score_func_t scoring_func;
    bool norm_topk_prob;
    ds4_expert_dtype_t expert_dtype;
    int32_t weight_block[2];         /* quantization_config.weight_block_size */

    /* Per layer, main stack then MTP: n_layers + n_mtp_layers entries. */
    int32_t compress_ratio[DS4_CONFIG_MAX_LAYERS];
    ds4_layer_kind_t layer_kind[DS4_CONFIG_MAX_LAYERS];

    /* Counts over the main stack only. */
    int32_t n_window_layers;
    int32_t n_csa_layers;
    int32_t n_hca_layers;
} ds4_model_config_t;

/*
 * Parses config.json at `path`. On success fills *out and returns DS4_OK. On failure returns
 * DS4_ERR_IO / DS4_ERR_PARSE / DS4_ERR_CONFIG with every problem in `diag` (when not NULL), and
 * *out is unspecified. `warnings` (may be NULL) receives non-fatal notes (unknown keys).
 */
ds4_status_t ds4_config_load(const char *path, ds4_model_config_t *out, ds4_diag_t *diag,
                             ds4_diag_t *warnings);
/* The same from a JSON text of `len` bytes; `what` names it in messages. */
ds4_status_t ds4_config_parse(const char *json, size_t len, const char *what,
                              ds4_model_config_t *out, ds4_diag_t *diag, ds4_diag_t *warnings);

/* Total layers including MTP blocks. */
static inline int32_t ds4_config_n_layers_total(const ds4_model_config_t *c)
{
    return c->n_layers + c->n_mtp_layers;
}
/* True when layer `layer` (main stack) routes experts by token id (tid2eid). */
static inline bool ds4_config_layer_is_hash(const ds4_model_config_t *c, int32_t layer)
{
    return layer >= 0 && layer < c->n_hash_layers;
}

const char *ds4_layer_kind_name(ds4_layer_kind_t kind);      /* "window" "csa" "hca" */
const char *ds4_score_func_name(ds4_score_func_t func);

/*
 * KV storage layout (the wire format, see ds4/kv.h):
 *   main/window row: (head_dim - rope) x e4m3 + one ue8m0 per 64 nope dims + rope x bf16,
 *                    padded to 8 bytes (V4: 448 + 7 + 128 = 583 -> 584 B);
 *   indexer key row: index_head_dim/2 bytes of e2m1 + one ue8m0 per 32 dims (V4: 68 B).
 */
uint32_t ds4_config_kv_row_bytes(const ds4_model_config_t *c);
uint32_t ds4_config_index_row_bytes(const ds4_model_config_t *c);
/*
 * Compressor tail state of one layer in bytes (fp32 kv + score slots, as the reference keeps
 * them): CSA main [2r, 2*head_dim] x2 plus indexer [2r, 2*index_head_dim] x2; HCA [r, head_dim]
 * x2; window-only 0.
 */
uint64_t ds4_config_tail_bytes(const ds4_model_config_t *c, int32_t layer);
/*
 * History bytes per token of one layer (grows with context): CSA (row + index row)/4, HCA
 * row/ratio, window 0. Fractional (one row per `ratio` tokens).
 */
double ds4_config_layer_history_bytes_per_token(const ds4_model_config_t *c, int32_t layer);
/* Sum over the main stack: V4-Pro 5031.4375, V4-Flash 3514.25. */
double ds4_config_history_bytes_per_token(const ds4_model_config_t *c);
/* Fixed per-sequence bytes: window rings of every layer (incl. MTP) + compressor tails. */
uint64_t ds4_config_fixed_seq_bytes(const ds4_model_config_t *c);

#ifdef __cplusplus
}
#endif
#endif /* DS4_CONFIG_H */
