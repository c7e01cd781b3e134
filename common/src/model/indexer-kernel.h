/* The fused lightning-indexer kernel (indexer-kernel.c, indexer-avx2.c, indexer-avx512.c).
 *
 * For query rows r and keys g < n_visible[r] it computes, without materialising q.k:
 *   dot_h(r, g) = q_{r,h} . k_g                       (FP4 x FP4, exact: see below)
 *   score(r, g) = bf16(sum_h bf16(relu(bf16(dot_h)) * w_{r,h}))   (fp32, heads in order)
 * and keeps each row's top `topk` keys by (score desc, g asc): a key enters only when its score
 * is strictly greater than the current k-th best, so a tie never displaces a lower g.
 *
 * Operands: an FP4 value is c * 2^(s - 128) with c = 2 * e2m1 an integer in [-12, 12] and s the
 * ue8m0 byte of its 32-block. Per 32-block the dot of two rows is an integer (|.| <= 32 * 144 =
 * 4608 < 2^13) computed exactly in int32; it is scaled by the key's then the query's block scale
 * (exact, barring fp32 under/overflow: scale bytes in [2, 253]) and the blocks are summed in
 * fp32 in block order. Exactness: every block term is a multiple of 2^emin (emin the smallest
 * block exponent of the pair), so the fp32 sum is exact in any order while every partial sum is
 * below 2^24 * 2^emin: n_blocks * 4608 * 2^spread < 2^24 for the spread of block exponents
 * (query + key), i.e. a spread of at most 9 at dim 128. Then the dot equals the exact value,
 * which is what an fp32 GEMM of the decoded values (or DeepSeek's reference) gives too. Outside
 * that condition every dispatch level still gives the same answer (same operation order), but
 * it may differ from a GEMM.
 *
 * Keys live in a tiled copy made from the FP4 wire rows (ds4__index_row_*): tiles of 16 keys,
 * for each group of 4 dims a 64-byte vector (key l's 4 values at bytes 4l..4l+3), values stored
 * unsigned with an offset (for the int8 dot instructions; the query side carries the matching
 * -offset * sum(c_q) correction) and the block scales as fp32 [block][16 keys]. Two forms:
 *   plain:  c + 12 in [0, 24], scale[b] = 2^(s_b - 128).
 *   shifted ("fast"), when every key of the tile has block exponents within 3 of its smallest
 *           (s_min) and s in [66, 180]: c' = c * 2^(s_b - s_min) (|c'| <= 96) stored as c' + 96,
 *           every scale[b] = 2^(s_min - 128). A block dot with shifted values is the plain one
 *           times 2^(s_b - s_min), exactly (|.| < 2^24), so x_b = fl(dot') * scale'[b] equals
 *           fl(dot) * scale[b]: the per-block arithmetic gives identical results on both forms.
 * The shifted form also needs dim <= 1024. A query (row, head) has the same two forms; when the
 * query and the tile are both shifted, the whole dot is one exact integer (|.| <= n_blocks *
 * 4608 * 2^6 < 2^24) scaled by the two s_min powers of two: the exact dot, which is also what
 * the per-block sum gives (exponent spread <= 6: within the exactness condition), so this fast
 * path changes no result. The exponent range keeps every product of scales normal.
 *
 * Dispatch: AVX-512 VNNI (vpdpbusd), AVX2 (vpmaddubsw), portable C, chosen at run time with
 * __builtin_cpu_supports (no global -march); all levels give identical results.
 */
#ifndef DS4_INDEXER_KERNEL_H
#define DS4_INDEXER_KERNEL_H

#include "ds4/backend.h"
#include "ds4/status.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DS4__IDXK_TILE 16   /* keys per tile */
#define DS4__IDXK_BLOCK 32  /* values per scale block */
#define DS4__IDXK_KOFF 12   /* offset added to plain key values (c + 12 >= 0) */
#define DS4__IDXK_FOFF 96   /* offset added to shifted key values (c' + 96 >= 0) */
#define DS4__IDXK_FSPREAD 3 /* shifted form: block exponents within 3 of the smallest */
#define DS4__IDXK_FSMIN 66  /* shifted form: scale bytes in [66, 180] */
#define DS4__IDXK_FSMAX 180
#define DS4__IDXK_FMAXDIM 1024 /* shifted form: dim <= 1024 (whole dot < 2^24) */

typedef enum ds4__idxk_level {
    DS4__IDXK_AUTO = 0,     /* best level this CPU supports */
    DS4__IDXK_PORTABLE = 1,
    DS4__IDXK_AVX2 = 2,
    DS4__IDXK_AVX512VNNI = 3,
} ds4__idxk_level_t;

/* Keys in tile layout. dim: values per key (a multiple of 32). */
typedef struct ds4__idxk_keys {
    int dim;
    int64_t n_keys;
    int64_t n_tiles;         /* ceil(n_keys / 16) */
    uint8_t *vals;           /* [n_tiles][dim/4][16][4]: offset values; padding keys c = 0 */
    float *scale;            /* [n_tiles][dim/32][16]: block scales; padding keys 0 */
    uint8_t *fast;           /* [n_tiles]: 1 = shifted form, 0 = plain */
} ds4__idxk_keys_t;

/* Queries: n_rows x n_heads rows of dim FP4 values. */
typedef struct ds4__idxk_queries {
    int dim;
    int n_heads;
    int64_t n_rows;
    int8_t *vals;            /* [rows][heads][dim]: c in [-12, 12] */
    int32_t *corr;           /* [rows][heads][dim/32]: -12 * sum of the block's c (x 8 for
                              * shifted tiles: -96 * sum) */
    float *scale;            /* [rows][heads][dim/32]: 2^(s - 128) */
    /* shifted form (valid where row_fast) */
    int8_t *fvals;           /* [rows][heads][dim]: c' = c * 2^(s_b - s_min) */
    int32_t *fcorr;          /* [rows][heads]: -96 * sum of c' */
    float *fscale;           /* [rows][heads]: 2^(s_min - 128) */
    uint8_t *row_fast;       /* [rows]: 1 when every head of the row has the shifted form */
} ds4__idxk_queries_t;

/* Allocates tiles for n_keys keys (contents undefined until filled). */
ds4_status_t ds4__idxk_keys_alloc(ds4__idxk_keys_t *k, int dim, int64_t n_keys);
/* Converts FP4 wire rows (dim/2 bytes of nibbles, element 2i low, then dim/32 ue8m0 bytes;
 * row g at rows + g * row_bytes) of tiles [t0, t1) into the layout above. Tiles are
 * independent: callers may fill disjoint ranges from several threads. */
void ds4__idxk_keys_fill(ds4__idxk_keys_t *k, const uint8_t *rows, size_t row_bytes, int64_t t0,
                         int64_t t1);
void ds4__idxk_keys_free(ds4__idxk_keys_t *k);

ds4_status_t ds4__idxk_queries_alloc(ds4__idxk_queries_t *q, int dim, int n_heads, int64_t n_rows);
/* Sets query (row r, head h) from packed e2m1 codes (dim/2 bytes) and dim/32 ue8m0 bytes, as
 * ds4_act_quant_fp4 produces them. Every (r, h) must be set exactly once. */
void ds4__idxk_queries_set(ds4__idxk_queries_t *q, int64_t r, int h, const uint8_t *packed,
                           const uint8_t *scales);
void ds4__idxk_queries_free(ds4__idxk_queries_t *q);

/* One selection job over all rows of `q`. */
typedef struct ds4__idxk_job {
    const ds4__idxk_keys_t *keys;
    const ds4__idxk_queries_t *q;
    const float *w;              /* [rows][heads] head weights (fp32) */
    const int64_t *n_visible;    /* [rows] keys row r may select: 0 <= . <= keys->n_keys,
                                  * non-decreasing in r */
    int topk;                    /* > 0 */
    ds4__idxk_level_t level;     /* AUTO: best supported; an unsupported level -> AUTO; the
                                  * SIMD levels need n_heads % 4 == 0 (else portable) */
    int32_t *sel;                /* [rows][topk] out: keys by (score desc, g asc) */
    float *best;                 /* [rows][topk] scratch: the scores of sel */
    int32_t *n_sel;              /* [rows] out: min(topk, n_visible[r]) */
    /* internal */
    atomic_long next_block;
    int64_t rows_per_block;
    int64_t n_blocks;
    ds4__idxk_level_t run_level;
} ds4__idxk_job_t;

/* Best level this CPU supports. */
ds4__idxk_level_t ds4__idxk_level_best(void);
bool ds4__idxk_level_supported(ds4__idxk_level_t level);
const char *ds4__idxk_level_name(ds4__idxk_level_t level);

/* Runs the job: over the backend's threads when ops != NULL, else on the caller. Rows go in
 * blocks (sized so a block's query values stay in L1 while each key tile serves all of them),
 * taken from a shared counter heaviest (last) first; a row's result does not depend on the
 * thread or the block split. Memory: none beyond the job's arrays. */
void ds4__idxk_select(ds4__idxk_job_t *job, const ds4_backend_ops_t *ops, ds4_backend_h be);

/* ---- per-level kernels: rows [r0, r1) of the job (internal) ---- */
void ds4__idxk_rows_portable(const ds4__idxk_job_t *job, int64_t r0, int64_t r1);
#if defined(__x86_64__) || defined(__i386__)
void ds4__idxk_rows_avx2(const ds4__idxk_job_t *job, int64_t r0, int64_t r1);
void ds4__idxk_rows_avx512(const ds4__idxk_job_t *job, int64_t r0, int64_t r1);
#endif

/* Top-k insertion shared by every level. A row holds k <= topk entries sorted by (score desc,
 * g asc) in best[] / sel[]; a new key g is larger than every g held. Key g enters when k < topk
 * or sc > best[topk - 1] (callers may pre-filter with that test); it goes after every entry
 * whose score is not below sc (ties never displace a lower g) and the last entry drops out when
 * full. The position is a count of such entries (branch-free, the same as a scan from the end
 * on sorted scores; clamped so that NaN scores cannot index out of range). */
static inline int ds4__idxk_count_not_below(const float *best, int n, float sc)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        c += !(sc > best[i]);
    return c;
}

static inline void ds4__idxk_insert_at(int32_t *sel, float *best, int *k, int topk, int32_t g,
                                       float sc, int pos)
{
    int n = *k;
    int keep = n < topk ? n : topk - 1; /* entries that stay */
    pos = pos < keep ? pos : keep;
    if (keep > pos) {
        memmove(best + pos + 1, best + pos, sizeof(float) * (size_t)(keep - pos));
        memmove(sel + pos + 1, sel + pos, sizeof(int32_t) * (size_t)(keep - pos));
    }
    best[pos] = sc;
    sel[pos] = g;
    if (n < topk)
        *k = n + 1;
}

static inline void ds4__idxk_insert(int32_t *sel, float *best, int *k, int topk, int32_t g,
                                    float sc)
{
    if (*k == topk && !(sc > best[topk - 1]))
        return;
    ds4__idxk_insert_at(sel, best, k, topk, g, sc, ds4__idxk_count_not_below(best, *k, sc));
}

#endif
