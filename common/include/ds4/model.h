/*
 * ds4/model.h - the DeepSeek-V4 model engine (CPU reference numerics of DeepSeek's official
 * inference/model.py + kernel.py).
 *
 * Handles:
 *   ds4_model_h  weights (mmap'ed, read-only) + backend; shareable by many sequences. Calls
 *                into one model are serialised by the caller (one step at a time per model).
 *   ds4_seq_h    one sequence's state: position, per layer the window ring, compressed rows,
 *                index-key rows and compressor tails, all in the KV wire format (below).
 *
 * Incremental operation: ds4_model_step() feeds any number of new tokens per sequence (a
 * prefill chunk of any size, or one decode token) and returns logits of the last position (or
 * of every position with DS4_STEP_ALL_LOGITS). Chunk boundaries need not align with compression
 * ratios: the engine is position-based and gives the same result for any chunking.
 *
 * KV wire format of one sequence (ds4_seq_export), per layer l = 0 .. n_layers+n_mtp-1 in
 * this order:
 *   window ring  sliding_window rows (row of token p at slot p % window; slots of tokens not
 *                seen yet are zero), each ds4_config_kv_row_bytes():
 *                (head_dim-rope) e4m3 | (head_dim-rope)/64 ue8m0 | rope x bf16 (LE) | 0 pad to 8
 *   compressed   n_comp rows (CSA/HCA: floor(pos / ratio)), same row format
 *   index keys   CSA only: n_comp rows of ds4_config_index_row_bytes():
 *                index_head_dim/2 bytes e2m1 (low nibble = even element) | /32 ue8m0
 *   tail         CSA/HCA compressor state, fp32 LE, ds4_config_tail_bytes(): main kv_state,
 *                main score_state ([coff*r][coff*head_dim] each), then (CSA) indexer kv_state,
 *                score_state ([8][2*index_head_dim] each). Scores of empty slots are -inf.
 * preceded by a ds4_seq_state_header_t. These are exactly the values the reference computes
 * (it rounds KV to these formats), so export/import is lossless.
 */
#ifndef DS4_MODEL_H
#define DS4_MODEL_H

#include "ds4/config.h"
#include "ds4/diag.h"
#include "ds4/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_model *ds4_model_h;
typedef struct ds4_seq *ds4_seq_h;

typedef struct ds4_model_params {
    const char *backend;   /* "cpu" (default) */
    int n_threads;         /* 0 = all cores */
    bool progress;         /* log loading progress for large checkpoints */
    uint64_t f32_cache_max_bytes; /* keep exact fp32 copies of all linear weights when they fit
                                     (small models: no per-call dequantisation); 0 = never */
} ds4_model_params_t;

ds4_model_params_t ds4_model_params_default(void);

/*
 * Loads a checkpoint directory in the Hugging Face V4 layout (config.json +
 * model.safetensors[.index.json] + shards). Every tensor the config implies is checked for
 * presence, dtype and shape (also .scale block counts); problems are collected in `diag` with
 * the tensor and file named. Returns DS4_ERR_CONFIG / DS4_ERR_CHECKPOINT / DS4_ERR_MODEL /
 * DS4_ERR_IO; *out set only on success.
 */
ds4_status_t ds4_model_load(const char *dir, const ds4_model_params_t *params, ds4_model_h *out,
                            ds4_diag_t *diag);
void ds4_model_free(ds4_model_h model);
const ds4_model_config_t *ds4_model_config(ds4_model_h model);

/* A new, empty sequence (position 0). */
ds4_status_t ds4_seq_create(ds4_model_h model, ds4_seq_h *out);
void ds4_seq_destroy(ds4_seq_h seq);
int64_t ds4_seq_pos(ds4_seq_h seq);
/* Deep copy (for speculative decoding checkpoints, forking). */
ds4_status_t ds4_seq_clone(ds4_seq_h seq, ds4_seq_h *out);

/* Hooks for tests, diagnostics and layer-wise KV shipping; all optional. Called on the
 * stepping thread. */
typedef struct ds4_step_hooks {
    void *arg;
    /* After layer `layer` finished for tokens [pos0, pos0+n) of `seq`: its mHC output streams
     * [n][hc][dim] (bf16 values as f32). The layer's KV rows are final at this point. */
    void (*layer_done)(void *arg, ds4_seq_h seq, int layer, int64_t pos0, int n,
                       const float *streams);
    /* CSA selection of query position `pos` in `layer` (entry indices, descending score). */
    void (*csa_topk)(void *arg, int layer, int64_t pos, const int32_t *sel, int n_sel);
} ds4_step_hooks_t;

enum {
    DS4_STEP_ALL_LOGITS = 1u << 0, /* logits for every new position, not only the last */
    DS4_STEP_MTP = 1u << 1,        /* keep the MTP layer's window in sync (speculative decoding):
                                      runs the MTP block on the positions whose next token is
                                      now known, so that its state reaches pos - 1 */
};

/* One sequence's part of a step. */
typedef struct ds4_step_item {
    ds4_seq_h seq;
    const int32_t *tokens;  /* n_tokens new token ids (appended at ds4_seq_pos) */
    int32_t n_tokens;
    float *logits;          /* vocab floats (or n_tokens*vocab with ALL_LOGITS); NULL = none */
    unsigned flags;
} ds4_step_item_t;

/*
 * Runs every item (prefill chunks and decode tokens mixed). On error (bad token id: DS4_ERR_VOCAB,
 * context past max_position_embeddings: DS4_ERR_CONTEXT_FULL) no sequence is changed.
 */
ds4_status_t ds4_model_step(ds4_model_h model, ds4_step_item_t *items, int n_items,
                            const ds4_step_hooks_t *hooks);

/* mHC streams [hc][dim] entering the head at the sequence's last position (MTP input). */
const float *ds4_seq_last_streams(ds4_seq_h seq);

/*
 * MTP block: given the main model's final streams at the last position of `seq` and the next
 * token `next_token`, returns the MTP logits (prediction of the token after next_token) and
 * advances the MTP layer's own window state of `seq` by one position.
 */
ds4_status_t ds4_model_mtp_step(ds4_model_h model, ds4_seq_h seq, int32_t next_token,
                                float *logits);
/* MTP over explicit inputs: streams [n][hc][dim] at positions pos0.., tokens = the next token of
 * each position; logits of the last position; uses and advances the MTP window state. */
ds4_status_t ds4_model_mtp_forward(ds4_model_h model, ds4_seq_h seq, int64_t pos0, int n,
                                   const float *streams, const int32_t *next_tokens,
                                   float *logits);

/* ---- greedy generation, optionally with MTP speculative decoding ---- */

typedef struct ds4_spec_stats {
    int64_t drafted;     /* MTP draft tokens proposed */
    int64_t accepted;    /* drafts confirmed by the main model */
    int64_t main_steps;  /* main-model step calls */
} ds4_spec_stats_t;

/*
 * Generates n_tokens greedy tokens continuing `seq`, whose last step produced `last_logits`
 * (vocab floats). With `speculative`, each step drafts one token with the MTP block and verifies
 * it with the main model in a 2-token step (rejected drafts are rolled back from a state
 * checkpoint); the output is identical to plain greedy decoding because every emitted token is
 * the argmax of main-model logits, which do not depend on chunking. Speculative mode needs the
 * MTP state in sync (steps run with DS4_STEP_MTP since position 0). The last emitted token is
 * not fed to the sequence.
 */
ds4_status_t ds4_model_generate_greedy(ds4_model_h model, ds4_seq_h seq, const float *last_logits,
                                       int n_tokens, bool speculative, int32_t *out,
                                       ds4_spec_stats_t *stats);

/* ---- state export / import (KV wire format, see above) ---- */

#define DS4_SEQ_STATE_MAGIC 0x54535344u /* "DSST" */
#define DS4_SEQ_STATE_VERSION 1u

typedef struct ds4_seq_state_header {
    uint32_t magic;
    uint32_t version;
    int64_t pos;           /* tokens processed */
    int64_t mtp_pos;       /* positions the MTP window has seen */
    uint32_t n_layers;     /* main + MTP */
    uint32_t row_bytes;    /* ds4_config_kv_row_bytes */
    uint32_t index_row_bytes;
    uint32_t reserved;
} ds4_seq_state_header_t;
_Static_assert(sizeof(ds4_seq_state_header_t) == 40, "wire header size");

/* Bytes of layer `layer`'s groups at the sequence's current position. */
typedef struct ds4_seq_layer_bytes {
    uint64_t window;
    uint64_t compressed;
    uint64_t index;
    uint64_t tail;
} ds4_seq_layer_bytes_t;
void ds4_seq_layer_bytes(ds4_seq_h seq, int layer, ds4_seq_layer_bytes_t *out);
/* Total export size (header + every layer). */
uint64_t ds4_seq_export_bytes(ds4_seq_h seq);
/* Writes the state into buf (cap bytes); DS4_ERR_OUT_OF_RANGE when too small. */
ds4_status_t ds4_seq_export(ds4_seq_h seq, void *buf, uint64_t cap, uint64_t *written);
/* One layer's groups only (window | compressed | index | tail, as in the full export), e.g. to
 * ship a layer from the layer_done hook; DS4_ERR_OUT_OF_RANGE when cap is too small. */
ds4_status_t ds4_seq_export_layer(ds4_seq_h seq, int layer, void *buf, uint64_t cap,
                                  uint64_t *written);
/* Creates a sequence from an exported state; validates header and sizes (DS4_ERR_KV_CORRUPT). */
ds4_status_t ds4_seq_import(ds4_model_h model, const void *buf, uint64_t len, ds4_seq_h *out);

#ifdef __cplusplus
}
#endif
#endif /* DS4_MODEL_H */
