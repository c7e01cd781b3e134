/* AVX2 level of the indexer kernel (indexer-kernel.h): a 16-key tile as two halves of 8 keys,
 * one ymm lane per key, per-block arithmetic on both tile forms. vpmaddubsw multiplies unsigned
 * key values (<= 192) by signed plain query values (|c| <= 12) into int16 pairs (|.| <= 4608,
 * no saturation); 4 groups add up to |.| <= 18432 in int16 before vpmaddwd widens to int32
 * (exact). */
#include "indexer-kernel.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#define TGT __attribute__((target("avx2")))

/* bf16 rounding of every lane; see the AVX-512 level for the NaN argument. */
static inline TGT __m256 bf16r(__m256 x)
{
    __m256i u = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u)));
}

static inline int32_t ld32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* Scores of 8 keys (half `half` of tile tv/ts) for query row qi0.. (heads nh). */
static inline TGT __m256 half_scores(const ds4__idxk_job_t *job, const uint8_t *tv,
                                     const float *ts, int half, int64_t r, int32_t cm)
{
    const ds4__idxk_queries_t *Q = job->q;
    const int dim = Q->dim, nb = dim / DS4__IDXK_BLOCK, nh = Q->n_heads, L = DS4__IDXK_TILE;
    const __m256 zero = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 score = zero;
    for (int hg = 0; hg < nh; hg += 4) {
        const int64_t qi = r * nh + hg;
        const int8_t *q0 = Q->vals + qi * dim;
        const int8_t *q1 = q0 + dim, *q2 = q1 + dim, *q3 = q2 + dim;
        const int32_t *corr = Q->corr + qi * nb;
        const float *qs = Q->scale + qi * nb;
        __m256 s[4] = {zero, zero, zero, zero};
        for (int b = 0; b < nb; b++) {
            __m256i a[4];
            for (int i = 0; i < 4; i++)
                a[i] = _mm256_set1_epi32(cm * corr[i * nb + b]);
            for (int j0 = b * 8; j0 < b * 8 + 8; j0 += 4) {
                __m256i p0 = _mm256_setzero_si256(), p1 = p0, p2 = p0, p3 = p0;
                for (int j = j0; j < j0 + 4; j++) {
                    const __m256i kv =
                        _mm256_load_si256((const __m256i *)(tv + (int64_t)j * 64 + 32 * half));
                    __m256i b0 = _mm256_set1_epi32(ld32(q0 + 4 * j));
                    __m256i b1 = _mm256_set1_epi32(ld32(q1 + 4 * j));
                    __m256i b2 = _mm256_set1_epi32(ld32(q2 + 4 * j));
                    __m256i b3 = _mm256_set1_epi32(ld32(q3 + 4 * j));
                    p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(kv, b0));
                    p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(kv, b1));
                    p2 = _mm256_add_epi16(p2, _mm256_maddubs_epi16(kv, b2));
                    p3 = _mm256_add_epi16(p3, _mm256_maddubs_epi16(kv, b3));
                }
                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(p0, ones));
                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(p1, ones));
                a[2] = _mm256_add_epi32(a[2], _mm256_madd_epi16(p2, ones));
                a[3] = _mm256_add_epi32(a[3], _mm256_madd_epi16(p3, ones));
            }
            const __m256 ks = _mm256_load_ps(ts + b * L + 8 * half);
            for (int i = 0; i < 4; i++) {
                __m256 x = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a[i]), ks),
                                         _mm256_set1_ps(qs[i * nb + b]));
                s[i] = b == 0 ? x : _mm256_add_ps(s[i], x);
            }
        }
        const float *w = job->w + qi;
        for (int i = 0; i < 4; i++) {
            /* max(0, d) keeps d when d is NaN or -0, as the scalar `if (d < 0) d = 0` */
            __m256 d = _mm256_max_ps(zero, bf16r(s[i]));
            score = _mm256_add_ps(score, bf16r(_mm256_mul_ps(d, _mm256_set1_ps(w[i]))));
        }
    }
    return bf16r(score);
}

TGT void ds4__idxk_rows_avx2(const ds4__idxk_job_t *job, int64_t r0, int64_t r1)
{
    const ds4__idxk_keys_t *K = job->keys;
    const int dim = K->dim, nb = dim / DS4__IDXK_BLOCK, L = DS4__IDXK_TILE;
    const int topk = job->topk;
    for (int64_t r = r0; r < r1; r++)
        job->n_sel[r] = 0;
    const int64_t nv_max = job->n_visible[r1 - 1];
    const int64_t n_tiles = (nv_max + L - 1) / L;
    for (int64_t t = 0; t < n_tiles; t++) {
        const uint8_t *tv = K->vals + t * (int64_t)dim * L;
        const float *ts = K->scale + t * (int64_t)nb * L;
        for (int64_t r = r0; r < r1; r++) {
            const int64_t nv = job->n_visible[r];
            if (t * L >= nv)
                continue;
            int32_t *sel = job->sel + r * topk;
            float *best = job->best + r * topk;
            int k = job->n_sel[r];
            const int32_t cm = K->fast[t] ? DS4__IDXK_FOFF / DS4__IDXK_KOFF : 1;
            for (int half = 0; half < 2; half++) {
                int64_t left = nv - t * L - 8 * half;
                if (left <= 0)
                    break;
                __m256 score = half_scores(job, tv, ts, half, r, cm);
                unsigned m = left >= 8 ? 0xffu : (1u << left) - 1u;
                if (k == topk)
                    m &= (unsigned)_mm256_movemask_ps(
                        _mm256_cmp_ps(score, _mm256_set1_ps(best[topk - 1]), _CMP_GT_OQ));
                if (m == 0)
                    continue;
                float sc[8];
                _mm256_storeu_ps(sc, score);
                while (m != 0) {
                    int l = __builtin_ctz(m);
                    m &= m - 1;
                    ds4__idxk_insert(sel, best, &k, topk, (int32_t)(t * L + 8 * half + l),
                                     sc[l]);
                }
            }
            job->n_sel[r] = k;
        }
    }
}

#endif
