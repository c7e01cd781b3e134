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

/* Scores of the 16 keys of tile (tv, ts) for NR (1 or 2, a constant after inlining) query rows
 * r, r + 1: two rows share every key load and give 8 independent dpbusd chains. */
static inline __attribute__((always_inline)) TGT void tile_scores(const ds4__idxk_job_t *job,
                                                                  const uint8_t *tv,
                                                                  const float *ts, int64_t r,
                                                                  int NR, __m512 *out)
{
    const ds4__idxk_queries_t *Q = job->q;
    const int dim = Q->dim, nb = dim / DS4__IDXK_BLOCK, nh = Q->n_heads, L = DS4__IDXK_TILE;
    const __m512 zero = _mm512_setzero_ps();
    __m512 score[2] = {zero, zero};
    for (int hg = 0; hg < nh; hg += 4) {
        const int8_t *qv[2][4];
        const int32_t *corr[2];
        const float *qs[2];
        __m512 s[2][4] = {{zero, zero, zero, zero}, {zero, zero, zero, zero}};
#pragma GCC unroll 2
        for (int i = 0; i < NR; i++) {
            const int64_t qi = (r + i) * nh + hg;
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++)
                qv[i][h] = Q->vals + (qi + h) * dim;
            corr[i] = Q->corr + qi * nb;
            qs[i] = Q->scale + qi * nb;
        }
        for (int b = 0; b < nb; b++) {
            __m512i a[2][4];
#pragma GCC unroll 2
            for (int i = 0; i < NR; i++)
#pragma GCC unroll 4
                for (int h = 0; h < 4; h++)
                    a[i][h] = _mm512_set1_epi32(corr[i][h * nb + b]);
#pragma GCC unroll 8
            for (int j = b * 8; j < b * 8 + 8; j++) {
                const __m512i kv = _mm512_load_si512((const void *)(tv + (int64_t)j * 64));
#pragma GCC unroll 2
                for (int i = 0; i < NR; i++)
#pragma GCC unroll 4
                    for (int h = 0; h < 4; h++)
                        a[i][h] = _mm512_dpbusd_epi32(a[i][h], kv,
                                                      _mm512_set1_epi32(ld32(qv[i][h] + 4 * j)));
            }
            const __m512 ks = _mm512_load_ps(ts + b * L);
#pragma GCC unroll 2
            for (int i = 0; i < NR; i++)
#pragma GCC unroll 4
                for (int h = 0; h < 4; h++) {
                    __m512 x = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a[i][h]), ks),
                                             _mm512_set1_ps(qs[i][h * nb + b]));
                    s[i][h] = b == 0 ? x : _mm512_add_ps(s[i][h], x);
                }
        }
#pragma GCC unroll 2
        for (int i = 0; i < NR; i++) {
            const float *w = job->w + (r + i) * nh + hg;
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++) {
                /* max(0, d) keeps d when d is NaN or -0, as the scalar `if (d < 0) d = 0` */
                __m512 d = _mm512_max_ps(zero, bf16r(s[i][h]));
                score[i] = _mm512_add_ps(score[i],
                                         bf16r(_mm512_mul_ps(d, _mm512_set1_ps(w[h]))));
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < NR; i++)
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

/* Top-k update of row r with the scores of tile t (the keys it may see). */
static inline __attribute__((always_inline)) TGT void tile_select(const ds4__idxk_job_t *job,
                                                                  int64_t t, int64_t r,
                                                                  __m512 score)
{
    const int topk = job->topk, L = DS4__IDXK_TILE;
    int64_t left = job->n_visible[r] - t * L;
    __mmask16 m = left >= L ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
    int32_t *sel = job->sel + r * topk;
    float *best = job->best + r * topk;
    int k = job->n_sel[r];
    if (k == topk)
        m &= _mm512_cmp_ps_mask(score, _mm512_set1_ps(best[topk - 1]), _CMP_GT_OQ);
    if (m == 0)
        return;
    float sc[16];
    _mm512_storeu_ps(sc, score);
    while (m != 0) {
        int l = __builtin_ctz((unsigned)m);
        m &= (__mmask16)(m - 1);
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
    for (int64_t t = 0; t < n_tiles; t++) {
        const uint8_t *tv = K->vals + t * (int64_t)dim * L;
        const float *ts = K->scale + t * (int64_t)nb * L;
        int64_t r = r0;
        while (r < r1 && t * L >= job->n_visible[r]) /* rows that see none of this tile */
            r++;
        __m512 sc[2];
        for (; r + 2 <= r1; r += 2) { /* n_visible is non-decreasing: r + 1 sees it too */
            tile_scores(job, tv, ts, r, 2, sc);
            tile_select(job, t, r, sc[0]);
            tile_select(job, t, r + 1, sc[1]);
        }
        if (r < r1) {
            tile_scores(job, tv, ts, r, 1, sc);
            tile_select(job, t, r, sc[0]);
        }
    }
}

#endif
