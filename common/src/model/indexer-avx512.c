/* AVX-512 VNNI level of the indexer kernel (indexer-kernel.h): one zmm lane per key of a
 * 16-key tile; vpdpbusd multiplies the unsigned key values (c + 12) by the broadcast signed
 * query values 4 at a time into int32 (exact), starting from the query's -12 * sum(c)
 * correction. Compiled for the target via attributes only; called after a cpuid check. */
#include "indexer-kernel.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vnni")))

/* bf16 rounding (nearest even) of every lane, as ds4_f32_to_bf16 for all finite values and
 * for the quiet NaNs with zero low 16 bits that are the only NaNs reaching it here (decoded
 * NaN scales, default NaNs of invalid ops, bf16 weights): the carry then stays below bit 16. */
static inline TGT __m512 bf16r(__m512 x)
{
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u)));
}

static inline int32_t ld32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

#define INLINE static inline __attribute__((always_inline)) TGT

/* score += bf16(relu(bf16(x)) * w) for one head: max(0, d) keeps d when d is NaN or -0, as the
 * scalar `if (d < 0) d = 0` does. */
INLINE __m512 head_add(__m512 score, __m512 x, __m512 w)
{
    __m512 d = _mm512_max_ps(_mm512_setzero_ps(), bf16r(x));
    return _mm512_add_ps(score, bf16r(_mm512_mul_ps(d, w)));
}

/* Per-block path: scores of NT (1 or 2, a constant after inlining) consecutive tiles for query
 * row r, any tile form (cm[i]: the correction multiplier of tile i, 1 plain / 8 shifted). Every
 * broadcast query group feeds NT tiles; 4 heads x NT tiles give 4 NT independent dpbusd chains. */
INLINE void block_scores(const ds4__idxk_job_t *job, const uint8_t *tv, const float *ts,
                         int64_t r, int NT, const int32_t *cm, __m512 *out)
{
    const ds4__idxk_queries_t *Q = job->q;
    const int dim = Q->dim, nb = dim / DS4__IDXK_BLOCK, nh = Q->n_heads, L = DS4__IDXK_TILE;
    const int64_t tv_stride = (int64_t)dim * L, ts_stride = (int64_t)nb * L;
    const __m512 zero = _mm512_setzero_ps();
    __m512 score[2] = {zero, zero};
    for (int hg = 0; hg < nh; hg += 4) {
        const int64_t qi = r * nh + hg;
        const int8_t *qv = Q->vals + qi * dim;
        const int32_t *corr = Q->corr + qi * nb;
        const float *qs = Q->scale + qi * nb;
        __m512 s[2][4] = {{zero, zero, zero, zero}, {zero, zero, zero, zero}};
        for (int b = 0; b < nb; b++) {
            __m512i a[2][4];
#pragma GCC unroll 2
            for (int i = 0; i < NT; i++)
#pragma GCC unroll 4
                for (int h = 0; h < 4; h++)
                    a[i][h] = _mm512_set1_epi32(cm[i] * corr[h * nb + b]);
#pragma GCC unroll 8
            for (int j = b * 8; j < b * 8 + 8; j++) {
                __m512i kv[2];
#pragma GCC unroll 2
                for (int i = 0; i < NT; i++)
                    kv[i] = _mm512_load_si512((const void *)(tv + i * tv_stride + j * 64));
#pragma GCC unroll 4
                for (int h = 0; h < 4; h++) {
                    const __m512i qb = _mm512_set1_epi32(ld32(qv + h * dim + 4 * j));
#pragma GCC unroll 2
                    for (int i = 0; i < NT; i++)
                        a[i][h] = _mm512_dpbusd_epi32(a[i][h], kv[i], qb);
                }
            }
#pragma GCC unroll 2
            for (int i = 0; i < NT; i++) {
                const __m512 ks = _mm512_load_ps(ts + i * ts_stride + b * L);
#pragma GCC unroll 4
                for (int h = 0; h < 4; h++) {
                    __m512 x = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a[i][h]), ks),
                                             _mm512_set1_ps(qs[h * nb + b]));
                    s[i][h] = b == 0 ? x : _mm512_add_ps(s[i][h], x);
                }
            }
        }
        const float *w = job->w + qi;
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) {
            const __m512 wh = _mm512_set1_ps(w[h]);
#pragma GCC unroll 2
            for (int i = 0; i < NT; i++)
                score[i] = head_add(score[i], s[i][h], wh);
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < NT; i++)
        out[i] = bf16r(score[i]);
}

/* Whole-dot path (shifted tiles and a shifted query row): one exact int32 dot per head over
 * all dims, scaled by the tile's and the query's s_min powers of two. */
INLINE void fast_scores(const ds4__idxk_job_t *job, const uint8_t *tv, const float *ts,
                        int64_t r, int NT, __m512 *out)
{
    const ds4__idxk_queries_t *Q = job->q;
    const int dim = Q->dim, nb = dim / DS4__IDXK_BLOCK, nh = Q->n_heads, L = DS4__IDXK_TILE;
    const int64_t tv_stride = (int64_t)dim * L, ts_stride = (int64_t)nb * L;
    const __m512 zero = _mm512_setzero_ps();
    __m512 score[2] = {zero, zero};
    for (int hg = 0; hg < nh; hg += 4) {
        const int64_t qi = r * nh + hg;
        const int8_t *qv = Q->fvals + qi * dim;
        __m512i a[2][4];
#pragma GCC unroll 2
        for (int i = 0; i < NT; i++)
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++)
                a[i][h] = _mm512_set1_epi32(Q->fcorr[qi + h]);
#pragma GCC unroll 8
        for (int j = 0; j < dim / 4; j++) {
            __m512i kv[2];
#pragma GCC unroll 2
            for (int i = 0; i < NT; i++)
                kv[i] = _mm512_load_si512((const void *)(tv + i * tv_stride + j * 64));
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++) {
                const __m512i qb = _mm512_set1_epi32(ld32(qv + h * dim + 4 * j));
#pragma GCC unroll 2
                for (int i = 0; i < NT; i++)
                    a[i][h] = _mm512_dpbusd_epi32(a[i][h], kv[i], qb);
            }
        }
        const float *w = job->w + qi;
#pragma GCC unroll 2
        for (int i = 0; i < NT; i++) {
            const __m512 ks = _mm512_load_ps(ts + i * ts_stride);
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++) {
                __m512 x = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a[i][h]), ks),
                                         _mm512_set1_ps(Q->fscale[qi + h]));
                score[i] = head_add(score[i], x, _mm512_set1_ps(w[h]));
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < NT; i++)
        out[i] = bf16r(score[i]);
}

/* ds4__idxk_count_not_below with 16 compares per instruction. */
static inline TGT int count_not_below(const float *best, int n, float sc)
{
    const __m512 v = _mm512_set1_ps(sc);
    int c = 0, i = 0;
    for (; i + 16 <= n; i += 16)
        c += __builtin_popcount(
            (unsigned)_mm512_cmp_ps_mask(v, _mm512_loadu_ps(best + i), _CMP_NGT_UQ));
    if (i < n) {
        __mmask16 tail = (__mmask16)((1u << (n - i)) - 1u);
        c += __builtin_popcount((unsigned)_mm512_mask_cmp_ps_mask(
            tail, v, _mm512_maskz_loadu_ps(tail, best + i), _CMP_NGT_UQ));
    }
    return c;
}

/* Top-k update of row r with the scores of NT (1 or 2) tiles from tile t (the keys it may
 * see): one threshold test and one branch for up to 32 keys; survivors in key order. */
INLINE void tiles_select(const ds4__idxk_job_t *job, int64_t t, int64_t r, const __m512 *score,
                         int NT)
{
    const int topk = job->topk, L = DS4__IDXK_TILE;
    const int64_t left = job->n_visible[r] - t * L;
    uint32_t m = left >= 32 ? 0xffffffffu : (1u << left) - 1u;
    if (NT == 1)
        m &= 0xffffu;
    int32_t *sel = job->sel + r * topk;
    float *best = job->best + r * topk;
    int k = job->n_sel[r];
    if (k == topk) {
        const __m512 thr = _mm512_set1_ps(best[topk - 1]);
        uint32_t gt = _mm512_cmp_ps_mask(score[0], thr, _CMP_GT_OQ);
        if (NT == 2)
            gt |= (uint32_t)_mm512_cmp_ps_mask(score[1], thr, _CMP_GT_OQ) << 16;
        m &= gt;
    }
    if (m == 0)
        return;
    float sc[32];
    _mm512_storeu_ps(sc, score[0]);
    if (NT == 2)
        _mm512_storeu_ps(sc + 16, score[1]);
    while (m != 0) {
        int l = __builtin_ctz(m);
        m &= m - 1;
        if (k == topk && !(sc[l] > best[topk - 1]))
            continue;
        ds4__idxk_insert_at(sel, best, &k, topk, (int32_t)(t * L + l), sc[l],
                            count_not_below(best, k, sc[l]));
    }
    job->n_sel[r] = k;
}

TGT void ds4__idxk_rows_avx512(const ds4__idxk_job_t *job, int64_t r0, int64_t r1)
{
    const ds4__idxk_keys_t *K = job->keys;
    const int dim = K->dim, nb = dim / DS4__IDXK_BLOCK, L = DS4__IDXK_TILE;
    for (int64_t r = r0; r < r1; r++)
        job->n_sel[r] = 0;
    const int64_t nv_max = job->n_visible[r1 - 1];
    const int64_t n_tiles = (nv_max + L - 1) / L;
    const int32_t cmul = DS4__IDXK_FOFF / DS4__IDXK_KOFF;
    for (int64_t t = 0; t < n_tiles; t += 2) {
        const uint8_t *tv = K->vals + t * (int64_t)dim * L;
        const float *ts = K->scale + t * (int64_t)nb * L;
        const bool two = t + 1 < n_tiles;
        const int32_t cm[2] = {K->fast[t] ? cmul : 1, two && K->fast[t + 1] ? cmul : 1};
        const bool fast1 = K->fast[t] != 0, fast2 = fast1 && two && K->fast[t + 1] != 0;
        __m512 sc[2];
        for (int64_t r = r0; r < r1; r++) {
            const int64_t nv = job->n_visible[r];
            if (t * L >= nv)
                continue;
            const bool rf = job->q->row_fast[r] != 0;
            if ((t + 1) * L < nv) { /* the row sees both tiles */
                if (rf && fast2)
                    fast_scores(job, tv, ts, r, 2, sc);
                else
                    block_scores(job, tv, ts, r, 2, cm, sc);
                tiles_select(job, t, r, sc, 2);
            } else {
                if (rf && fast1)
                    fast_scores(job, tv, ts, r, 1, sc);
                else
                    block_scores(job, tv, ts, r, 1, cm, sc);
                tiles_select(job, t, r, sc, 1);
            }
        }
    }
}

#endif
