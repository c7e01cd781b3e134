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

TGT void ds4__idxk_rows_avx512(const ds4__idxk_job_t *job, int64_t r0, int64_t r1)
{
    const ds4__idxk_keys_t *K = job->keys;
    const ds4__idxk_queries_t *Q = job->q;
    const int dim = K->dim, nb = dim / DS4__IDXK_BLOCK, nh = Q->n_heads, L = DS4__IDXK_TILE;
    const int topk = job->topk;
    const __m512 zero = _mm512_setzero_ps();
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
            __m512 score = zero;
            for (int hg = 0; hg < nh; hg += 4) {
                const int64_t qi = r * nh + hg;
                const int8_t *q0 = Q->vals + qi * dim;
                const int8_t *q1 = q0 + dim, *q2 = q1 + dim, *q3 = q2 + dim;
                const int32_t *corr = Q->corr + qi * nb;
                const float *qs = Q->scale + qi * nb;
                __m512 s0 = zero, s1 = zero, s2 = zero, s3 = zero;
                for (int b = 0; b < nb; b++) {
                    __m512i a0 = _mm512_set1_epi32(corr[b]);
                    __m512i a1 = _mm512_set1_epi32(corr[nb + b]);
                    __m512i a2 = _mm512_set1_epi32(corr[2 * nb + b]);
                    __m512i a3 = _mm512_set1_epi32(corr[3 * nb + b]);
                    for (int j = b * 8; j < b * 8 + 8; j++) {
                        __m512i kv = _mm512_load_si512((const void *)(tv + (int64_t)j * 64));
                        a0 = _mm512_dpbusd_epi32(a0, kv, _mm512_set1_epi32(ld32(q0 + 4 * j)));
                        a1 = _mm512_dpbusd_epi32(a1, kv, _mm512_set1_epi32(ld32(q1 + 4 * j)));
                        a2 = _mm512_dpbusd_epi32(a2, kv, _mm512_set1_epi32(ld32(q2 + 4 * j)));
                        a3 = _mm512_dpbusd_epi32(a3, kv, _mm512_set1_epi32(ld32(q3 + 4 * j)));
                    }
                    const __m512 ks = _mm512_load_ps(ts + b * L);
                    __m512 x0 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a0), ks),
                                              _mm512_set1_ps(qs[b]));
                    __m512 x1 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a1), ks),
                                              _mm512_set1_ps(qs[nb + b]));
                    __m512 x2 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a2), ks),
                                              _mm512_set1_ps(qs[2 * nb + b]));
                    __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a3), ks),
                                              _mm512_set1_ps(qs[3 * nb + b]));
                    if (b == 0) {
                        s0 = x0, s1 = x1, s2 = x2, s3 = x3;
                    } else {
                        s0 = _mm512_add_ps(s0, x0);
                        s1 = _mm512_add_ps(s1, x1);
                        s2 = _mm512_add_ps(s2, x2);
                        s3 = _mm512_add_ps(s3, x3);
                    }
                }
                /* max(0, d) keeps d when d is NaN or -0, as the scalar `if (d < 0) d = 0` */
                const float *w = job->w + qi;
                __m512 d;
                d = _mm512_max_ps(zero, bf16r(s0));
                score = _mm512_add_ps(score, bf16r(_mm512_mul_ps(d, _mm512_set1_ps(w[0]))));
                d = _mm512_max_ps(zero, bf16r(s1));
                score = _mm512_add_ps(score, bf16r(_mm512_mul_ps(d, _mm512_set1_ps(w[1]))));
                d = _mm512_max_ps(zero, bf16r(s2));
                score = _mm512_add_ps(score, bf16r(_mm512_mul_ps(d, _mm512_set1_ps(w[2]))));
                d = _mm512_max_ps(zero, bf16r(s3));
                score = _mm512_add_ps(score, bf16r(_mm512_mul_ps(d, _mm512_set1_ps(w[3]))));
            }
            score = bf16r(score);
            int64_t left = nv - t * L;
            __mmask16 m = left >= L ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
            int32_t *sel = job->sel + r * topk;
            float *best = job->best + r * topk;
            int k = job->n_sel[r];
            if (k == topk)
                m &= _mm512_cmp_ps_mask(score, _mm512_set1_ps(best[topk - 1]), _CMP_GT_OQ);
            if (m == 0)
                continue;
            float sc[16];
            _mm512_storeu_ps(sc, score);
            while (m != 0) {
                int l = __builtin_ctz((unsigned)m);
                m &= (__mmask16)(m - 1);
                ds4__idxk_insert(sel, best, &k, topk, (int32_t)(t * L + l), sc[l]);
            }
            job->n_sel[r] = k;
        }
    }
}

#endif
