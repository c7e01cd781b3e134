/* Internal structures of the model engine (common/src/model). */
#ifndef DS4_MODEL_INTERNAL_H
#define DS4_MODEL_INTERNAL_H

#include "ds4/backend.h"
#include "ds4/config.h"
#include "ds4/model.h"
#include "ds4/numeric.h"
#include "ds4/safetensors.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct ds4_layer_w {
    int index;
    ds4_layer_kind_t kind;
    int ratio;               /* 0 window, 4 CSA, else HCA */
    bool is_hash;
    bool is_mtp;
    const uint16_t *attn_norm, *ffn_norm;
    const float *hc_attn_fn, *hc_attn_base, *hc_attn_scale;
    const float *hc_ffn_fn, *hc_ffn_base, *hc_ffn_scale;
    const float *attn_sink;
    ds4_weight_t wq_a, wq_b, wkv, wo_a, wo_b;
    const uint16_t *q_norm, *kv_norm;
    /* compressor (CSA/HCA) */
    ds4_weight_t cmp_wkv, cmp_wgate;
    const float *cmp_ape;
    const uint16_t *cmp_norm;
    /* indexer (CSA) */
    ds4_weight_t idx_wq_b, idx_wproj, idx_cmp_wkv, idx_cmp_wgate;
    const float *idx_cmp_ape;
    const uint16_t *idx_cmp_norm;
    /* MoE */
    ds4_weight_t gate;
    const float *gate_bias;
    const int64_t *tid2eid;
    ds4_weight_t *experts;   /* [n_routed][3]: w1, w2, w3 */
    ds4_weight_t sh_w1, sh_w2, sh_w3;
    /* MTP only */
    ds4_weight_t e_proj, h_proj;
    const uint16_t *enorm, *hnorm, *mtp_norm;
    const float *hc_head_fn, *hc_head_base, *hc_head_scale;
} ds4_layer_w_t;

struct ds4_model {
    ds4_model_config_t cfg;
    ds4_st_h st;
    const ds4_backend_ops_t *ops;
    ds4_backend_h be;
    int n_total;             /* main + MTP layers */
    ds4_layer_w_t *layers;
    ds4_weight_t embed;      /* BF16 [V, d] */
    ds4_weight_t head;       /* BF16 [V, d] */
    const uint16_t *norm;
    const float *hc_head_fn, *hc_head_base, *hc_head_scale;
    float rope_freq_window[64];  /* rope_head_dim/2 frequencies, no YaRN */
    float rope_freq_comp[64];    /* compress_rope_theta with YaRN */
    uint32_t row_bytes, index_row_bytes;
    float *f32_cache;        /* exact fp32 copies of the linear weights (small models) */
};

typedef struct ds4_layer_state {
    uint8_t *ring;           /* window * row_bytes */
    uint8_t *comp;           /* n_comp * row_bytes (capacity cap_comp) */
    uint8_t *idx;            /* n_comp * index_row_bytes (CSA) */
    int64_t n_comp;
    int64_t cap_comp;
    float *tail;             /* compressor state (tail_floats) */
    int64_t tail_floats;
} ds4_layer_state_t;

struct ds4_seq {
    ds4_model_h model;
    int64_t pos;
    int64_t mtp_pos;
    ds4_layer_state_t *ls;   /* n_total */
    float *last_streams;     /* hc * dim */
};

/* ---- ops.c ---- */
static inline float ds4__bf(float x)
{
    return ds4_round_bf16(x);
}
void ds4__round_bf16_arr(float *x, int64_t n);
/* fp32 sum of x[0..n) in the order of the reference's (torch CPU, 8-lane vectors) row
 * reduction: see ops.c. Used wherever the reference reduces a contiguous fp32 row. */
float ds4__sum_row_f32(const float *x, int64_t n);
/* exp(x) in fp32 as the reference's vectorised CPU exp computes it (see ops.c); used for every
 * exp of the forward pass (softmaxes, sigmoid, SiLU, attention). */
float ds4__exp_ref(float x);
/* out = bf16(w * (x * rsqrt(mean(x^2) + eps))) over rows of n (fp32 math). */
void ds4__rmsnorm_rows(const float *x, const uint16_t *w, int64_t rows, int64_t n, double eps,
                       float *out);
/* RoPE on pairs of x[0..rd) at position pos with freqs[rd/2]; bf16 write-back. */
void ds4__rope(float *x, int rd, const float *freqs, int64_t pos, bool inverse);
/* In-place fast Walsh-Hadamard (Sylvester order) of n (power of two), scaled by n^-1/2, bf16. */
void ds4__hadamard_bf16(float *x, int n);
void ds4__rope_freqs(const ds4_model_config_t *c, bool compressed, float *freqs);
/* mHC pre: X [rows][hc*d] -> y [rows][d] (bf16), post [rows][hc], comb [rows][hc*hc]. */
void ds4__hc_pre(ds4_model_h m, const float *X, int64_t rows, const float *fn, const float *base,
                 const float *scale, float *y, float *post, float *comb);
/* mHC post in place: X[k] = bf16(post[k] * f + sum_j comb[j][k] X[j]). */
void ds4__hc_post(const ds4_model_config_t *c, float *X, int64_t rows, const float *f,
                  const float *post, const float *comb);
/* Head collapse: y [rows][d] (bf16). */
void ds4__hc_head(ds4_model_h m, const float *X, int64_t rows, const float *fn,
                  const float *base, const float *scale, float *y);
/* y[m, n] = bf16(matmul) */
void ds4__linear_bf16(ds4_model_h m, const ds4_weight_t *w, int64_t rows, const float *x,
                      float *y, unsigned flags);
/* KV row codec (wire format). */
void ds4__kv_row_encode(const ds4_model_config_t *c, float *vals, uint8_t *row);
void ds4__kv_row_decode(const ds4_model_config_t *c, const uint8_t *row, float *vals);
void ds4__index_row_encode(const ds4_model_config_t *c, float *vals, uint8_t *row);
void ds4__index_row_decode(const ds4_model_config_t *c, const uint8_t *row, float *vals);

/* ---- attn.c ---- */
/* Runs the compressor of layer L (indexer: the CSA index compressor) over chunk rows x[T]
 * at positions p0.., appending finished compressed rows to the sequence state. */
ds4_status_t ds4__compressor_run(ds4_model_h m, ds4_seq_h s, const ds4_layer_w_t *L,
                                 bool indexer, const float *x, int64_t T, int64_t p0);
/* CSA lightning indexer for chunk rows x[T] (qr: the q low-rank rows): sel[T][index_topk]
 * receives each row's selected compressed entries, n_sel[T] how many are valid. */
ds4_status_t ds4__indexer_run(ds4_model_h m, ds4_seq_h s, const ds4_layer_w_t *L,
                              const float *x, const float *qr, int64_t T, int64_t p0,
                              int32_t *sel, int32_t *n_sel);
ds4_status_t ds4__attention(ds4_model_h m, ds4_seq_h s, const ds4_layer_w_t *L, const float *x,
                            int64_t T, int64_t p0, float *out, const ds4_step_hooks_t *hooks);

/* ---- moe.c ---- */
ds4_status_t ds4__moe(ds4_model_h m, const ds4_layer_w_t *L, const float *x, int64_t T,
                      const int32_t *tokens, float *out);

/* ---- model-seq.c ---- */
ds4_status_t ds4__seq_reserve(ds4_seq_h s, int layer, int64_t n_comp);
void ds4__seq_tail_reset(ds4_model_h m, int layer, float *tail);

/* ---- forward.c ---- */
/* Rows [row0, row0 + n) of a batched pass belong to `seq`, positions p0 .. p0 + n - 1. */
typedef struct ds4__seg {
    ds4_seq_h seq;
    int64_t row0;
    int64_t n;
    int64_t p0;
} ds4__seg_t;
ds4_status_t ds4__block(ds4_model_h m, const ds4__seg_t *segs, int n_segs, const ds4_layer_w_t *L,
                        float *X, int64_t T, const int32_t *tokens, const ds4_step_hooks_t *hooks);

#endif
