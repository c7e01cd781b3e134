/*
 * mkmodel.h - writes a DeepSeek-V4 checkpoint in the Hugging Face layout (config.json +
 * safetensors, optionally sharded with model.safetensors.index.json) with deterministic random
 * weights: FP8 e4m3 + 128x128 ue8m0 scales, FP4 e2m1 experts + per-32 ue8m0, BF16, F32, I64
 * tid2eid, every layer kind and MTP. Same seed and config -> byte-identical files.
 * Used by the ds4-mkmodel tool and by tests (bad-checkpoint variants).
 */
#ifndef DS4_MKMODEL_H
#define DS4_MKMODEL_H

#include "ds4/status.h"

#include <stdint.h>

typedef struct ds4_mkmodel_params {
    uint64_t seed;
    int vocab_size;
    int hidden;          /* multiple of 128 */
    int n_heads;
    int head_dim;        /* rope 64 + nope (multiple of 64) */
    int q_lora;
    int o_groups;
    int o_lora;
    int window;
    int n_experts;
    int n_active;
    int moe_inter;
    int n_hash;
    int index_heads;
    int index_topk;
    int n_layers;
    const int *ratios;   /* n_layers + 1 entries (last: MTP, 0) */
    int n_shards;        /* 1: model.safetensors; >1: model-0000i-of-0000n + index */
} ds4_mkmodel_params_t;

/* The embedded default model: vocab 129,280, 4 layers (window, CSA, HCA, CSA) + MTP. */
ds4_mkmodel_params_t ds4_mkmodel_params_default(void);

/* Writes the checkpoint into directory `dir` (created if missing). */
ds4_status_t ds4_mkmodel_write(const char *dir, const ds4_mkmodel_params_t *p);

#endif
