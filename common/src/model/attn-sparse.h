/* Blockwise sparse attention of one query row (all heads) over a sequence of key entries, with
 * the reference kernel's arithmetic (docs/engine.md "Numerics"), and CPU kernels chosen at run
 * time (portable C, AVX2+FMA, AVX-512F) that give bit-identical results at every level:
 *   - score of entry e, head h: d = 0; for i = 0..hd-1: d += q[h][i] * k_e[i] (fp32, mul then
 *     add, no FMA), then d * scale; vectorised across keys (one lane per key);
 *   - blocks of DS4__ATTN_BLOCK entries: online softmax (max, rescale = exp(m_old - m_new)),
 *     probabilities exp(s - m) (ds4__exp_ref's algorithm, vectorised with FMA as SLEEF does),
 *     block sum over all 64 slots in ds4__sum_row_f32's order, acc = (double)(float)(acc *
 *     rescale), then acc[i] += (double)(bf16(p_e) * k_e[i]) for the valid entries in order
 *     (vectorised across i);
 *   - sink in the denominator, output bf16(acc / sum).
 * Invalid entries (padding) take part in the block structure with probability 0. */
#ifndef DS4_ATTN_SPARSE_H
#define DS4_ATTN_SPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DS4__ATTN_BLOCK 64
/* Transposed keys are stored in tiles of DS4__ATTN_TILE keys (see ds4__attn_seg_t). */
#define DS4__ATTN_TILE 64

typedef enum ds4__attn_isa {
    DS4__ATTN_ISA_C = 0,      /* portable C */
    DS4__ATTN_ISA_AVX2 = 1,   /* x86-64 AVX2 + FMA */
    DS4__ATTN_ISA_AVX512 = 2, /* x86-64 AVX-512F */
    DS4__ATTN_ISA_COUNT
} ds4__attn_isa_t;

/* Whether this CPU (and build) runs `isa`. */
bool ds4__attn_isa_supported(ds4__attn_isa_t isa);
/* The best supported level, capped by the environment variable DS4_ATTN_ISA (c, avx2, avx512)
 * when set (benchmarks, tests). Cheap: reads the environment on every call. */
ds4__attn_isa_t ds4__attn_isa_select(void);
const char *ds4__attn_isa_name(ds4__attn_isa_t isa);

/* A run of n consecutive entries. kt == NULL: n invalid (padding) entries. Otherwise key j
 * (0 <= j < n) has element i at kt[(j / 64) * tile_stride + i * ld + j % 64] (transposed,
 * tiles of 64 keys; an untransposed-tile [hd][L] matrix is tile_stride = 64, ld = L) and its
 * row at kr + j * hd (the same values, row-major). */
typedef struct ds4__attn_seg {
    int64_t n;
    const float *kt;
    int64_t ld;
    int64_t tile_stride;
    const float *kr;
    bool exact;  /* ds4__attn_keys_exact holds for the n rows (enables exact-product kernels) */
} ds4__attn_seg_t;

/* True when every value is a finite bf16 value that is 0 or of magnitude >= 2^-20: its
 * product with a bf16 value of magnitude 0 or in [2^-100, 1] then has at most 16 significant
 * bits and stays normal, so it is exact in fp32 and double FMA equals mul-then-add (the
 * engine's keys: e4m3 x 2^k and bf16 values). */
bool ds4__attn_keys_exact(ds4__attn_isa_t isa, const float *x, int64_t n);

/* rows[n][hd] -> tiles of 64 rows: t[(r / 64) * 64 * hd + i * 64 + r % 64] (a seg's kt with
 * ld = 64, tile_stride = 64 * hd); other slots of t are left as they are. */
void ds4__attn_transpose_tiles(ds4__attn_isa_t isa, const float *rows, int64_t n, int hd,
                               float *t);

typedef struct ds4__attn_shape {
    int n_heads;
    int head_dim;
    float scale;        /* score scale (1/sqrt(head_dim) in fp32) */
    const float *sink;  /* [n_heads] attention sink logits */
} ds4__attn_shape_t;

/* Bytes of scratch ds4__attn_query needs for up to n_entries entries. */
size_t ds4__attn_scratch_bytes(const ds4__attn_shape_t *sh, int64_t n_entries);

/* o[h][i] (bf16 values) = attention of q[h][0..hd) over the entries of segs[0..n_segs) in
 * order. scratch: ds4__attn_scratch_bytes(sh, total entries), 64-byte aligned. At least one
 * entry of the first block must be valid (the reference's sequences always start with a
 * valid window entry). */
void ds4__attn_query(ds4__attn_isa_t isa, const ds4__attn_shape_t *sh, const ds4__attn_seg_t *segs,
                     int n_segs, const float *q, float *o, void *scratch);

/* The kernels of ds4__attn_query, one at a time (tests compare their unrounded results):
 * sc[h * ss + j] = score of key j of seg (j < seg->n) for head h, times sh->scale; */
void ds4__attn_scores(ds4__attn_isa_t isa, const ds4__attn_shape_t *sh, const ds4__attn_seg_t *seg,
                      const float *q, float *sc, int64_t ss);
/* for e < n in order, for each head h: acc[h][i] += (double)(pb[h * ps + e] * kr[e * hd + i]); */
void ds4__attn_pv(ds4__attn_isa_t isa, const ds4__attn_shape_t *sh, const float *pb, int64_t ps,
                  int64_t n, const float *kr, bool exact, double *acc);
/* ops.c: y[r * m + j] = sequential fp32 dot (element 0 first, mul then add) of x[r][0..n) and
 * w[j][0..n), for r < rows, j < m, vectorised across j at the `isa` level (same bits). */
void ds4__dots_seq(ds4__attn_isa_t isa, const float *x, int64_t rows, int64_t n, const float *w,
                   int m, float *y);
/* ops.c: ds4__sum_row_f32 at the `isa` level (same order, same bits). */
float ds4__sum_row_f32_isa(ds4__attn_isa_t isa, const float *x, int64_t n);
/* ops.c: ds4__kv_row_decode at the `isa` level (same values). */
struct ds4_model_config;
void ds4__kv_row_decode_isa(ds4__attn_isa_t isa, const struct ds4_model_config *c,
                            const uint8_t *row, float *vals);
/* ops.c: ds4__rope in two steps, so the cos/sin of a position serve several rows (q heads,
 * kv, output): cs/sn[rd/2] of position pos, then the rotation (same values as ds4__rope). */
void ds4__rope_table(int rd, const float *freqs, int64_t pos, float *cs, float *sn);
void ds4__rope_apply(float *x, int rd, const float *cs, const float *sn, bool inverse);
/* y[e] = ds4__exp_ref(x[e]) for e < n. */
void ds4__attn_exp(ds4__attn_isa_t isa, const float *x, int64_t n, float *y);

#endif
