/* Blockwise sparse attention of one query row (attn-sparse.h): the portable kernels and the
 * x86 AVX2 / AVX-512 ones. Every kernel keeps each scalar result's operation sequence (lanes
 * are independent keys or independent head-dim elements), so all levels agree bit for bit;
 * the file builds with -ffp-contract=off, and FMA appears only where ds4__exp_ref uses fmaf. */
#include "attn-sparse.h"

#include "model-internal.h"

#include "ds4/log.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define ATTN_X86 1
#include <immintrin.h>
#endif

typedef struct attn_kernels {
    /* sc[h * ss + j] = score of key j of sg for head h, j < sg->n */
    void (*scores)(const float *q, int H, int hd, const ds4__attn_seg_t *sg, float scale,
                   float *sc, int64_t ss);
    /* y[e] = ds4__exp_ref(x[e] - m), e < n */
    void (*exp_shift)(const float *x, float m, int64_t n, float *y);
    /* for e < n in order, for each head h: acc[h][i] += (double)(pb[h * ps + e] * kr[e][i]) */
    void (*pv)(int H, int hd, const float *pb, int64_t ps, int64_t n, const float *kr,
               double *acc);
    /* the same when every product pb * k is exact in fp32 (ds4__attn_keys_exact rows, bf16
     * probabilities 0 or >= 2^-100): then acc + (double)(pb * k) rounds once like
     * fma((double)pb, (double)k, acc), so k is widened once for all heads and the product and
     * the sum are one double FMA */
    void (*pv_exact)(int H, int hd, const float *pb, int64_t ps, int64_t n, const float *kr,
                     double *acc);
    /* a[i] = (double)(float)(a[i] * r), i < n (the block rescale) */
    void (*rescale)(double *a, int n, float r);
    /* pb[e] = bf16(p[e]), e < n; returns whether some pb is 0 < pb < 2^-100, > 1 or NaN */
    bool (*round_pb)(const float *p, int64_t n, float *pb);
    /* ds4__sum_row_f32(x, 64) */
    float (*sum64)(const float *x);
} attn_kernels_t;

/* ---------------- portable C ---------------- */

static void scores_c(const float *q, int H, int hd, const ds4__attn_seg_t *sg, float scale,
                     float *sc, int64_t ss)
{
    float d[DS4__ATTN_TILE];
    for (int64_t j0 = 0; j0 < sg->n; j0 += DS4__ATTN_TILE) {
        int64_t w = sg->n - j0 < DS4__ATTN_TILE ? sg->n - j0 : DS4__ATTN_TILE;
        const float *base = sg->kt + (j0 / DS4__ATTN_TILE) * sg->tile_stride;
        for (int h = 0; h < H; h++) {
            const float *qh = q + (int64_t)h * hd;
            for (int64_t l = 0; l < w; l++)
                d[l] = 0.0f;
            for (int i = 0; i < hd; i++) {
                const float *row = base + (int64_t)i * sg->ld;
                float qi = qh[i];
                for (int64_t l = 0; l < w; l++)
                    d[l] += qi * row[l];
            }
            for (int64_t l = 0; l < w; l++)
                sc[(int64_t)h * ss + j0 + l] = d[l] * scale;
        }
    }
}

static void exp_shift_c(const float *x, float m, int64_t n, float *y)
{
    for (int64_t e = 0; e < n; e++)
        y[e] = ds4__exp_ref(x[e] - m);
}

static void pv_c(int H, int hd, const float *pb, int64_t ps, int64_t n, const float *kr,
                 double *acc)
{
    for (int64_t e = 0; e < n; e++) {
        const float *k = kr + e * hd;
        for (int h = 0; h < H; h++) {
            float p = pb[(int64_t)h * ps + e];
            double *a = acc + (int64_t)h * hd;
            for (int i = 0; i < hd; i++)
                a[i] += (double)(p * k[i]);
        }
    }
}

/* 2^-20 and 2^-100 as bits: magnitude floors of keys and probabilities for exact products */
#define EXACT_KEY_MIN 0x35800000u
#define EXACT_PB_MIN 0x0d800000u

static void rescale_c(double *a, int n, float r)
{
    for (int i = 0; i < n; i++)
        a[i] = (double)(float)(a[i] * r);
}

static bool round_pb_c(const float *p, int64_t n, float *pb)
{
    bool tiny = false;
    for (int64_t e = 0; e < n; e++) {
        float v = ds4_round_bf16(p[e]);
        uint32_t u;
        memcpy(&u, &v, sizeof(u));
        tiny |= (u != 0 && u < EXACT_PB_MIN) || u > 0x3f800000u;
        pb[e] = v;
    }
    return tiny;
}

static float sum64_c(const float *x)
{
    return ds4__sum_row_f32(x, DS4__ATTN_BLOCK);
}

/* ---------------- x86 ---------------- */
#ifdef ATTN_X86

/* ds4__exp_ref's constants (ops.c) */
#define EXP_INV_LN2 1.442695040888963407359924681001892137426645954152985934135449406931f
#define EXP_LN2_HI 0.693145751953125f
#define EXP_LN2_LO 1.428606765330187045e-06f
#define EXP_C0 0.000198527617612853646278381f
#define EXP_C1 0.00139304355252534151077271f
#define EXP_C2 0.00833336077630519866943359f
#define EXP_C3 0.0416664853692054748535156f
#define EXP_C4 0.166666671633720397949219f
#define EXP_C5 0.5f

/* ---- AVX-512F ---- */

/* ds4__exp_ref on 16 lanes: same rint, fmaf chain and 2^q1 * 2^(q-q1) scaling (each factor a
 * normal power of two for |x| <= 104, so u * 2^q1 is exact and the second product rounds once,
 * as ldexpf does); NaN -> x, x > 104 -> inf, x < -104 -> 0. */
__attribute__((target("avx512f"))) static inline __m512 exp_avx512(__m512 x)
{
    __m512 qf = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_INV_LN2)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 s = _mm512_fmadd_ps(qf, _mm512_set1_ps(-EXP_LN2_HI), x);
    s = _mm512_fmadd_ps(qf, _mm512_set1_ps(-EXP_LN2_LO), s);
    __m512 u = _mm512_set1_ps(EXP_C0);
    u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EXP_C1));
    u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EXP_C2));
    u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EXP_C3));
    u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EXP_C4));
    u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EXP_C5));
    u = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_mul_ps(s, s), u, s));
    __mmask16 in = _mm512_cmp_ps_mask(x, _mm512_set1_ps(104.0f), _CMP_LE_OQ) &
                   _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_GE_OQ);
    __m512i q = _mm512_maskz_cvtps_epi32(in, qf);
    __m512i q1 = _mm512_srai_epi32(q, 1);
    __m512i q2 = _mm512_sub_epi32(q, q1);
    const __m512i bias = _mm512_set1_epi32(127);
    __m512 p1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(q1, bias), 23));
    __m512 p2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(q2, bias), 23));
    __m512 r = _mm512_mul_ps(_mm512_mul_ps(u, p1), p2);
    r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(104.0f), _CMP_GT_OQ), r,
                             _mm512_set1_ps(INFINITY));
    r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_LT_OQ), r,
                             _mm512_setzero_ps());
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, x);
}

__attribute__((target("avx512f"))) static inline __mmask16 lanes16(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : (n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u));
}

__attribute__((target("avx512f"))) static void
scores_avx512(const float *q, int H, int hd, const ds4__attn_seg_t *sg, float scale, float *sc,
              int64_t ss)
{
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t j0 = 0; j0 < sg->n; j0 += DS4__ATTN_TILE) {
        int64_t w = sg->n - j0;
        __mmask16 m0 = lanes16(w), m1 = lanes16(w - 16), m2 = lanes16(w - 32),
                  m3 = lanes16(w - 48);
        const float *base = sg->kt + (j0 / DS4__ATTN_TILE) * sg->tile_stride;
        int h = 0;
        for (; h + 1 < H; h += 2) {
            const float *qa = q + (int64_t)h * hd, *qb = qa + hd;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int i = 0; i < hd; i++) {
                const float *row = base + (int64_t)i * sg->ld;
                __m512 x0 = _mm512_maskz_loadu_ps(m0, row);
                __m512 x1 = _mm512_maskz_loadu_ps(m1, row + 16);
                __m512 x2 = _mm512_maskz_loadu_ps(m2, row + 32);
                __m512 x3 = _mm512_maskz_loadu_ps(m3, row + 48);
                __m512 va = _mm512_set1_ps(qa[i]), vb = _mm512_set1_ps(qb[i]);
                a0 = _mm512_add_ps(a0, _mm512_mul_ps(va, x0));
                a1 = _mm512_add_ps(a1, _mm512_mul_ps(va, x1));
                a2 = _mm512_add_ps(a2, _mm512_mul_ps(va, x2));
                a3 = _mm512_add_ps(a3, _mm512_mul_ps(va, x3));
                b0 = _mm512_add_ps(b0, _mm512_mul_ps(vb, x0));
                b1 = _mm512_add_ps(b1, _mm512_mul_ps(vb, x1));
                b2 = _mm512_add_ps(b2, _mm512_mul_ps(vb, x2));
                b3 = _mm512_add_ps(b3, _mm512_mul_ps(vb, x3));
            }
            float *sa = sc + (int64_t)h * ss + j0, *sb = sa + ss;
            _mm512_mask_storeu_ps(sa, m0, _mm512_mul_ps(a0, vs));
            _mm512_mask_storeu_ps(sa + 16, m1, _mm512_mul_ps(a1, vs));
            _mm512_mask_storeu_ps(sa + 32, m2, _mm512_mul_ps(a2, vs));
            _mm512_mask_storeu_ps(sa + 48, m3, _mm512_mul_ps(a3, vs));
            _mm512_mask_storeu_ps(sb, m0, _mm512_mul_ps(b0, vs));
            _mm512_mask_storeu_ps(sb + 16, m1, _mm512_mul_ps(b1, vs));
            _mm512_mask_storeu_ps(sb + 32, m2, _mm512_mul_ps(b2, vs));
            _mm512_mask_storeu_ps(sb + 48, m3, _mm512_mul_ps(b3, vs));
        }
        if (h < H) {
            const float *qa = q + (int64_t)h * hd;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int i = 0; i < hd; i++) {
                const float *row = base + (int64_t)i * sg->ld;
                __m512 va = _mm512_set1_ps(qa[i]);
                a0 = _mm512_add_ps(a0, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m0, row)));
                a1 = _mm512_add_ps(a1, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m1, row + 16)));
                a2 = _mm512_add_ps(a2, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m2, row + 32)));
                a3 = _mm512_add_ps(a3, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m3, row + 48)));
            }
            float *sa = sc + (int64_t)h * ss + j0;
            _mm512_mask_storeu_ps(sa, m0, _mm512_mul_ps(a0, vs));
            _mm512_mask_storeu_ps(sa + 16, m1, _mm512_mul_ps(a1, vs));
            _mm512_mask_storeu_ps(sa + 32, m2, _mm512_mul_ps(a2, vs));
            _mm512_mask_storeu_ps(sa + 48, m3, _mm512_mul_ps(a3, vs));
        }
    }
}

__attribute__((target("avx512f"))) static void exp_shift_avx512(const float *x, float m,
                                                                int64_t n, float *y)
{
    const __m512 vm = _mm512_set1_ps(m);
    for (int64_t e = 0; e < n; e += 16) {
        __mmask16 k = lanes16(n - e);
        __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + e), vm);
        _mm512_mask_storeu_ps(y + e, k, exp_avx512(v));
    }
}

/* the upper 8 floats of a 16-float vector (AVX-512F only: via the f64x4 extract) */
__attribute__((target("avx512f"))) static inline __m256 hi8(__m512 x)
{
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
}

#define PV512_ACC(A, P, X)                                                                    \
    do {                                                                                      \
        __m512 t0_ = _mm512_mul_ps((P), (X)[0]), t1_ = _mm512_mul_ps((P), (X)[1]);            \
        __m512 t2_ = _mm512_mul_ps((P), (X)[2]), t3_ = _mm512_mul_ps((P), (X)[3]);            \
        (A)[0] = _mm512_add_pd((A)[0], _mm512_cvtps_pd(_mm512_castps512_ps256(t0_)));         \
        (A)[1] = _mm512_add_pd((A)[1], _mm512_cvtps_pd(hi8(t0_)));                            \
        (A)[2] = _mm512_add_pd((A)[2], _mm512_cvtps_pd(_mm512_castps512_ps256(t1_)));         \
        (A)[3] = _mm512_add_pd((A)[3], _mm512_cvtps_pd(hi8(t1_)));                            \
        (A)[4] = _mm512_add_pd((A)[4], _mm512_cvtps_pd(_mm512_castps512_ps256(t2_)));         \
        (A)[5] = _mm512_add_pd((A)[5], _mm512_cvtps_pd(hi8(t2_)));                            \
        (A)[6] = _mm512_add_pd((A)[6], _mm512_cvtps_pd(_mm512_castps512_ps256(t3_)));         \
        (A)[7] = _mm512_add_pd((A)[7], _mm512_cvtps_pd(hi8(t3_)));                            \
    } while (0)

/* hd % 64 == 0: 64 head-dim elements of one or two heads stay in 8 / 16 double registers over
 * the run of keys. */
__attribute__((target("avx512f"))) static void pv_avx512(int H, int hd, const float *pb,
                                                         int64_t ps, int64_t n, const float *kr,
                                                         double *acc)
{
    for (int i0 = 0; i0 < hd; i0 += 64) {
        int h = 0;
        for (; h + 1 < H; h += 2) {
            double *aa = acc + (int64_t)h * hd + i0, *ab = aa + hd;
            const float *pa = pb + (int64_t)h * ps, *pbb = pa + ps;
            __m512d A[8], B[8];
            for (int k = 0; k < 8; k++) {
                A[k] = _mm512_loadu_pd(aa + 8 * k);
                B[k] = _mm512_loadu_pd(ab + 8 * k);
            }
            for (int64_t e = 0; e < n; e++) {
                const float *k = kr + e * hd + i0;
                __m512 X[4] = {_mm512_loadu_ps(k), _mm512_loadu_ps(k + 16),
                               _mm512_loadu_ps(k + 32), _mm512_loadu_ps(k + 48)};
                PV512_ACC(A, _mm512_set1_ps(pa[e]), X);
                PV512_ACC(B, _mm512_set1_ps(pbb[e]), X);
            }
            for (int k = 0; k < 8; k++) {
                _mm512_storeu_pd(aa + 8 * k, A[k]);
                _mm512_storeu_pd(ab + 8 * k, B[k]);
            }
        }
        if (h < H) {
            double *aa = acc + (int64_t)h * hd + i0;
            const float *pa = pb + (int64_t)h * ps;
            __m512d A[8];
            for (int k = 0; k < 8; k++)
                A[k] = _mm512_loadu_pd(aa + 8 * k);
            for (int64_t e = 0; e < n; e++) {
                const float *k = kr + e * hd + i0;
                __m512 X[4] = {_mm512_loadu_ps(k), _mm512_loadu_ps(k + 16),
                               _mm512_loadu_ps(k + 32), _mm512_loadu_ps(k + 48)};
                PV512_ACC(A, _mm512_set1_ps(pa[e]), X);
            }
            for (int k = 0; k < 8; k++)
                _mm512_storeu_pd(aa + 8 * k, A[k]);
        }
    }
}

/* exact products (see attn_kernels_t.pv_exact), hd % 64 == 0: per 64 elements, the key widened
 * to 8 double vectors once, then one FMA per vector and head; heads in pairs */
__attribute__((target("avx512f"))) static void pv_exact_avx512(int H, int hd, const float *pb,
                                                               int64_t ps, int64_t n,
                                                               const float *kr, double *acc)
{
    for (int i0 = 0; i0 < hd; i0 += 64) {
        for (int h = 0; h < H; h += 2) {
            bool two = h + 1 < H;
            double *aa = acc + (int64_t)h * hd + i0, *ab = two ? aa + hd : aa;
            const float *pa = pb + (int64_t)h * ps, *pbb = two ? pa + ps : pa;
            __m512d A[8], B[8];
            for (int k = 0; k < 8; k++) {
                A[k] = _mm512_loadu_pd(aa + 8 * k);
                B[k] = _mm512_loadu_pd(ab + 8 * k);
            }
            for (int64_t e = 0; e < n; e++) {
                const float *k = kr + e * hd + i0;
                __m512d va = _mm512_set1_pd((double)pa[e]), vb = _mm512_set1_pd((double)pbb[e]);
                for (int v = 0; v < 8; v++) {
                    __m512d kd = _mm512_cvtps_pd(_mm256_loadu_ps(k + 8 * v));
                    A[v] = _mm512_fmadd_pd(va, kd, A[v]);
                    B[v] = _mm512_fmadd_pd(vb, kd, B[v]);
                }
            }
            for (int k = 0; k < 8; k++)
                _mm512_storeu_pd(aa + 8 * k, A[k]);
            if (two)
                for (int k = 0; k < 8; k++)
                    _mm512_storeu_pd(ab + 8 * k, B[k]);
        }
    }
}

__attribute__((target("avx512f"))) static void rescale_avx512(double *a, int n, float r)
{
    const __m512d vr = _mm512_set1_pd((double)r);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm512_storeu_pd(a + i, _mm512_cvtps_pd(_mm512_cvtpd_ps(
                                    _mm512_mul_pd(_mm512_loadu_pd(a + i), vr))));
    rescale_c(a + i, n - i, r);
}

/* ds4_round_bf16 on 16 lanes (NaN kept quiet) */
__attribute__((target("avx512f"))) static inline __m512 bf16_avx512(__m512 x)
{
    __m512i u = _mm512_castps_si512(x);
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i r = _mm512_add_epi32(
        u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                            _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    __m512i q = _mm512_or_si512(_mm512_and_si512(u, hi), _mm512_set1_epi32(0x400000));
    return _mm512_castsi512_ps(_mm512_mask_blend_epi32(nan, _mm512_and_si512(r, hi), q));
}

__attribute__((target("avx512f"))) static bool round_pb_avx512(const float *p, int64_t n,
                                                               float *pb)
{
    __mmask16 tiny = 0;
    for (int64_t e = 0; e < n; e += 16) {
        __mmask16 k = lanes16(n - e);
        __m512i u = _mm512_castps_si512(bf16_avx512(_mm512_maskz_loadu_ps(k, p + e)));
        tiny |= _mm512_mask_cmpneq_epi32_mask(k, u, _mm512_setzero_si512()) &
                _mm512_mask_cmplt_epu32_mask(k, u, _mm512_set1_epi32((int)EXACT_PB_MIN));
        tiny |= _mm512_mask_cmpgt_epu32_mask(k, u, _mm512_set1_epi32(0x3f800000));
        _mm512_mask_storeu_ps(pb + e, k, _mm512_castsi512_ps(u));
    }
    return tiny != 0;
}

/* ds4__sum_row_f32's order for n = 64 (8 vectors of 8, 4 accumulators, no cascade level
 * filled): acc_k = (((0 + v_k) + v_k+4) + 0 + 0 + 0), acc_0 += acc_1, acc_2, acc_3, then the
 * 8 lanes added to 0 in order (the +0 steps kept: they turn -0 into +0 as the scalar code) */
__attribute__((target("avx512f"))) static float sum64_avx512(const float *x)
{
    const __m256 z = _mm256_setzero_ps();
    __m256 a[4];
    for (int k = 0; k < 4; k++) {
        __m256 v = _mm256_add_ps(_mm256_add_ps(z, _mm256_loadu_ps(x + 8 * k)),
                                 _mm256_loadu_ps(x + 32 + 8 * k));
        a[k] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(v, z), z), z);
    }
    __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), a[2]), a[3]);
    float l[8];
    _mm256_storeu_ps(l, t);
    float total = 0.0f;
    for (int i = 0; i < 8; i++)
        total += l[i];
    return total;
}

/* ---- AVX2 + FMA ---- */

__attribute__((target("avx2,fma"))) static inline __m256 exp_avx2(__m256 x)
{
    __m256 qf = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_INV_LN2)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 s = _mm256_fmadd_ps(qf, _mm256_set1_ps(-EXP_LN2_HI), x);
    s = _mm256_fmadd_ps(qf, _mm256_set1_ps(-EXP_LN2_LO), s);
    __m256 u = _mm256_set1_ps(EXP_C0);
    u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EXP_C1));
    u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EXP_C2));
    u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EXP_C3));
    u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EXP_C4));
    u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EXP_C5));
    u = _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_mul_ps(s, s), u, s));
    __m256 in = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(104.0f), _CMP_LE_OQ),
                              _mm256_cmp_ps(x, _mm256_set1_ps(-104.0f), _CMP_GE_OQ));
    __m256i q = _mm256_and_si256(_mm256_cvtps_epi32(qf), _mm256_castps_si256(in));
    __m256i q1 = _mm256_srai_epi32(q, 1);
    __m256i q2 = _mm256_sub_epi32(q, q1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(q1, bias), 23));
    __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(q2, bias), 23));
    __m256 r = _mm256_mul_ps(_mm256_mul_ps(u, p1), p2);
    r = _mm256_blendv_ps(r, _mm256_set1_ps(INFINITY),
                         _mm256_cmp_ps(x, _mm256_set1_ps(104.0f), _CMP_GT_OQ));
    r = _mm256_blendv_ps(r, _mm256_setzero_ps(),
                         _mm256_cmp_ps(x, _mm256_set1_ps(-104.0f), _CMP_LT_OQ));
    return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/* lane l of the mask is set when l < n */
__attribute__((target("avx2,fma"))) static inline __m256i lanes8(int64_t n)
{
    int c = n > 8 ? 8 : (n < 0 ? 0 : (int)n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* groups of 32 keys (half a tile): 4 vectors per head, two heads at a time */
__attribute__((target("avx2,fma"))) static void
scores_avx2(const float *q, int H, int hd, const ds4__attn_seg_t *sg, float scale, float *sc,
            int64_t ss)
{
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t j0 = 0; j0 < sg->n; j0 += 32) {
        int64_t w = sg->n - j0;
        __m256i m0 = lanes8(w), m1 = lanes8(w - 8), m2 = lanes8(w - 16), m3 = lanes8(w - 24);
        const float *base = sg->kt + (j0 / DS4__ATTN_TILE) * sg->tile_stride +
                            j0 % DS4__ATTN_TILE;
        for (int h = 0; h < H; h += 2) {
            bool two = h + 1 < H;
            const float *qa = q + (int64_t)h * hd, *qb = two ? qa + hd : qa;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int i = 0; i < hd; i++) {
                const float *row = base + (int64_t)i * sg->ld;
                __m256 x0 = _mm256_maskload_ps(row, m0);
                __m256 x1 = _mm256_maskload_ps(row + 8, m1);
                __m256 x2 = _mm256_maskload_ps(row + 16, m2);
                __m256 x3 = _mm256_maskload_ps(row + 24, m3);
                __m256 va = _mm256_set1_ps(qa[i]), vb = _mm256_set1_ps(qb[i]);
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(va, x0));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(va, x1));
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(va, x2));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(va, x3));
                b0 = _mm256_add_ps(b0, _mm256_mul_ps(vb, x0));
                b1 = _mm256_add_ps(b1, _mm256_mul_ps(vb, x1));
                b2 = _mm256_add_ps(b2, _mm256_mul_ps(vb, x2));
                b3 = _mm256_add_ps(b3, _mm256_mul_ps(vb, x3));
            }
            float *sa = sc + (int64_t)h * ss + j0;
            _mm256_maskstore_ps(sa, m0, _mm256_mul_ps(a0, vs));
            _mm256_maskstore_ps(sa + 8, m1, _mm256_mul_ps(a1, vs));
            _mm256_maskstore_ps(sa + 16, m2, _mm256_mul_ps(a2, vs));
            _mm256_maskstore_ps(sa + 24, m3, _mm256_mul_ps(a3, vs));
            if (two) {
                float *sb = sa + ss;
                _mm256_maskstore_ps(sb, m0, _mm256_mul_ps(b0, vs));
                _mm256_maskstore_ps(sb + 8, m1, _mm256_mul_ps(b1, vs));
                _mm256_maskstore_ps(sb + 16, m2, _mm256_mul_ps(b2, vs));
                _mm256_maskstore_ps(sb + 24, m3, _mm256_mul_ps(b3, vs));
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void exp_shift_avx2(const float *x, float m,
                                                               int64_t n, float *y)
{
    const __m256 vm = _mm256_set1_ps(m);
    for (int64_t e = 0; e < n; e += 8) {
        __m256i k = lanes8(n - e);
        __m256 v = _mm256_sub_ps(_mm256_maskload_ps(x + e, k), vm);
        _mm256_maskstore_ps(y + e, k, exp_avx2(v));
    }
}

#define PV256_ACC(A, P, X)                                                                    \
    do {                                                                                      \
        __m256 t0_ = _mm256_mul_ps((P), (X)[0]), t1_ = _mm256_mul_ps((P), (X)[1]);            \
        (A)[0] = _mm256_add_pd((A)[0], _mm256_cvtps_pd(_mm256_castps256_ps128(t0_)));         \
        (A)[1] = _mm256_add_pd((A)[1], _mm256_cvtps_pd(_mm256_extractf128_ps(t0_, 1)));       \
        (A)[2] = _mm256_add_pd((A)[2], _mm256_cvtps_pd(_mm256_castps256_ps128(t1_)));         \
        (A)[3] = _mm256_add_pd((A)[3], _mm256_cvtps_pd(_mm256_extractf128_ps(t1_, 1)));       \
    } while (0)

/* hd % 16 == 0: 16 head-dim elements of one or two heads in 4 / 8 double registers */
__attribute__((target("avx2,fma"))) static void pv_avx2(int H, int hd, const float *pb,
                                                       int64_t ps, int64_t n, const float *kr,
                                                       double *acc)
{
    for (int i0 = 0; i0 < hd; i0 += 16) {
        for (int h = 0; h < H; h += 2) {
            bool two = h + 1 < H;
            double *aa = acc + (int64_t)h * hd + i0, *ab = two ? aa + hd : aa;
            const float *pa = pb + (int64_t)h * ps, *pbb = two ? pa + ps : pa;
            __m256d A[4], B[4];
            for (int k = 0; k < 4; k++) {
                A[k] = _mm256_loadu_pd(aa + 4 * k);
                B[k] = _mm256_loadu_pd(ab + 4 * k);
            }
            for (int64_t e = 0; e < n; e++) {
                const float *k = kr + e * hd + i0;
                __m256 X[2] = {_mm256_loadu_ps(k), _mm256_loadu_ps(k + 8)};
                PV256_ACC(A, _mm256_set1_ps(pa[e]), X);
                PV256_ACC(B, _mm256_set1_ps(pbb[e]), X);
            }
            for (int k = 0; k < 4; k++)
                _mm256_storeu_pd(aa + 4 * k, A[k]);
            if (two)
                for (int k = 0; k < 4; k++)
                    _mm256_storeu_pd(ab + 4 * k, B[k]);
        }
    }
}

/* exact products, hd % 16 == 0: 16 elements of two heads in 8 double registers */
__attribute__((target("avx2,fma"))) static void pv_exact_avx2(int H, int hd, const float *pb,
                                                             int64_t ps, int64_t n,
                                                             const float *kr, double *acc)
{
    for (int i0 = 0; i0 < hd; i0 += 16) {
        for (int h = 0; h < H; h += 2) {
            bool two = h + 1 < H;
            double *aa = acc + (int64_t)h * hd + i0, *ab = two ? aa + hd : aa;
            const float *pa = pb + (int64_t)h * ps, *pbb = two ? pa + ps : pa;
            __m256d A[4], B[4];
            for (int k = 0; k < 4; k++) {
                A[k] = _mm256_loadu_pd(aa + 4 * k);
                B[k] = _mm256_loadu_pd(ab + 4 * k);
            }
            for (int64_t e = 0; e < n; e++) {
                const float *k = kr + e * hd + i0;
                __m256d va = _mm256_set1_pd((double)pa[e]), vb = _mm256_set1_pd((double)pbb[e]);
                for (int v = 0; v < 4; v++) {
                    __m256d kd = _mm256_cvtps_pd(_mm_loadu_ps(k + 4 * v));
                    A[v] = _mm256_fmadd_pd(va, kd, A[v]);
                    B[v] = _mm256_fmadd_pd(vb, kd, B[v]);
                }
            }
            for (int k = 0; k < 4; k++)
                _mm256_storeu_pd(aa + 4 * k, A[k]);
            if (two)
                for (int k = 0; k < 4; k++)
                    _mm256_storeu_pd(ab + 4 * k, B[k]);
        }
    }
}

#endif /* ATTN_X86 */

/* ---------------- dispatch ---------------- */

bool ds4__attn_isa_supported(ds4__attn_isa_t isa)
{
    switch (isa) {
    case DS4__ATTN_ISA_C:
        return true;
#ifdef ATTN_X86
    case DS4__ATTN_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case DS4__ATTN_ISA_AVX512:
        return __builtin_cpu_supports("avx512f");
#endif
    default:
        return false;
    }
}

const char *ds4__attn_isa_name(ds4__attn_isa_t isa)
{
    switch (isa) {
    case DS4__ATTN_ISA_C:
        return "c";
    case DS4__ATTN_ISA_AVX2:
        return "avx2";
    case DS4__ATTN_ISA_AVX512:
        return "avx512";
    default:
        return "?";
    }
}

ds4__attn_isa_t ds4__attn_isa_select(void)
{
    ds4__attn_isa_t cap = DS4__ATTN_ISA_AVX512;
    const char *env = getenv("DS4_ATTN_ISA");
    if (env != NULL) {
        for (int i = 0; i < DS4__ATTN_ISA_COUNT; i++)
            if (strcmp(env, ds4__attn_isa_name((ds4__attn_isa_t)i)) == 0)
                cap = (ds4__attn_isa_t)i;
    }
    for (int i = cap; i > 0; i--)
        if (ds4__attn_isa_supported((ds4__attn_isa_t)i))
            return (ds4__attn_isa_t)i;
    return DS4__ATTN_ISA_C;
}

static attn_kernels_t kernels_for(ds4__attn_isa_t isa, int hd)
{
    attn_kernels_t k = {.scores = scores_c, .exp_shift = exp_shift_c, .pv = pv_c,
                        .pv_exact = pv_c, .rescale = rescale_c, .round_pb = round_pb_c,
                        .sum64 = sum64_c};
    DS4_ASSERT(ds4__attn_isa_supported(isa));
#ifdef ATTN_X86
    bool avx2 = ds4__attn_isa_supported(DS4__ATTN_ISA_AVX2);
    if (isa == DS4__ATTN_ISA_AVX512) {
        k.scores = scores_avx512;
        k.exp_shift = exp_shift_avx512;
        k.rescale = rescale_avx512;
        k.round_pb = round_pb_avx512;
        k.sum64 = sum64_avx512;
        if (hd % 64 == 0) {
            k.pv = pv_avx512;
            k.pv_exact = pv_exact_avx512;
        } else if (hd % 16 == 0 && avx2) {
            k.pv = pv_avx2;
            k.pv_exact = pv_exact_avx2;
        }
    } else if (isa == DS4__ATTN_ISA_AVX2) {
        k.scores = scores_avx2;
        k.exp_shift = exp_shift_avx2;
        if (hd % 16 == 0) {
            k.pv = pv_avx2;
            k.pv_exact = pv_exact_avx2;
        }
    }
#else
    (void)hd;
#endif
    return k;
}

void ds4__attn_exp(ds4__attn_isa_t isa, const float *x, int64_t n, float *y)
{
    attn_kernels_t k = kernels_for(isa, 0);
    k.exp_shift(x, 0.0f, n, y);
}

void ds4__attn_scores(ds4__attn_isa_t isa, const ds4__attn_shape_t *sh, const ds4__attn_seg_t *seg,
                      const float *q, float *sc, int64_t ss)
{
    attn_kernels_t k = kernels_for(isa, sh->head_dim);
    if (seg->n > 0)
        k.scores(q, sh->n_heads, sh->head_dim, seg, sh->scale, sc, ss);
}

void ds4__attn_pv(ds4__attn_isa_t isa, const ds4__attn_shape_t *sh, const float *pb, int64_t ps,
                  int64_t n, const float *kr, bool exact, double *acc)
{
    attn_kernels_t k = kernels_for(isa, sh->head_dim);
    (exact ? k.pv_exact : k.pv)(sh->n_heads, sh->head_dim, pb, ps, n, kr, acc);
}

static bool keys_exact_c(const float *x, int64_t n)
{
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof(u));
        uint32_t a = u & 0x7fffffffu;
        /* low 16 bits set (not bf16), non-finite, or nonzero below 2^-20 */
        bad |= (u & 0xffffu) | (uint32_t)(a >= 0x7f800000u) |
               (uint32_t)(a != 0 && a < EXACT_KEY_MIN);
    }
    return bad == 0;
}

#ifdef ATTN_X86
__attribute__((target("avx512f"))) static bool keys_exact_avx512(const float *x, int64_t n)
{
    const __m512i abs = _mm512_set1_epi32(0x7fffffff), lo = _mm512_set1_epi32(0xffff);
    const __m512i inf = _mm512_set1_epi32(0x7f800000);
    const __m512i kmin = _mm512_set1_epi32((int)EXACT_KEY_MIN), zero = _mm512_setzero_si512();
    __mmask16 bad = 0;
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = lanes16(n - i);
        __m512i u = _mm512_maskz_loadu_epi32(k, x + i);
        __m512i a = _mm512_and_si512(u, abs);
        bad |= _mm512_mask_test_epi32_mask(k, u, lo);
        bad |= _mm512_mask_cmpge_epu32_mask(k, a, inf);
        bad |= _mm512_mask_cmpneq_epi32_mask(k, a, zero) &
               _mm512_mask_cmplt_epu32_mask(k, a, kmin);
    }
    return bad == 0;
}
#endif

static void transpose_tiles_c(const float *rows, int64_t r0, int64_t n, int hd, float *t)
{
    for (int64_t r = r0; r < n; r++) {
        float *tt = t + (r / DS4__ATTN_TILE) * DS4__ATTN_TILE * hd + r % DS4__ATTN_TILE;
        for (int i = 0; i < hd; i++)
            tt[(int64_t)i * DS4__ATTN_TILE] = rows[r * hd + i];
    }
}

#ifdef ATTN_X86
/* 8 x 8 blocks (rows r..r+7 within one tile, elements i..i+7) transposed in registers */
__attribute__((target("avx2"))) static void transpose_tiles_avx2(const float *rows, int64_t n,
                                                                int hd, float *t)
{
    int64_t r = 0;
    for (; r + 8 <= n; r += 8) {
        float *tile = t + (r / DS4__ATTN_TILE) * DS4__ATTN_TILE * hd + r % DS4__ATTN_TILE;
        for (int i = 0; i < hd; i += 8) {
            const float *src = rows + r * hd + i;
            __m256 a0 = _mm256_loadu_ps(src), a1 = _mm256_loadu_ps(src + hd);
            __m256 a2 = _mm256_loadu_ps(src + 2 * hd), a3 = _mm256_loadu_ps(src + 3 * hd);
            __m256 a4 = _mm256_loadu_ps(src + 4 * hd), a5 = _mm256_loadu_ps(src + 5 * hd);
            __m256 a6 = _mm256_loadu_ps(src + 6 * hd), a7 = _mm256_loadu_ps(src + 7 * hd);
            __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
            __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
            __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
            __m256 t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
            __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
            __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
            float *dst = tile + (int64_t)i * DS4__ATTN_TILE;
            _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(dst + DS4__ATTN_TILE, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(dst + 2 * DS4__ATTN_TILE, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(dst + 3 * DS4__ATTN_TILE, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(dst + 4 * DS4__ATTN_TILE, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(dst + 5 * DS4__ATTN_TILE, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(dst + 6 * DS4__ATTN_TILE, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(dst + 7 * DS4__ATTN_TILE, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
    }
    transpose_tiles_c(rows, r, n, hd, t);
}
#endif

void ds4__attn_transpose_tiles(ds4__attn_isa_t isa, const float *rows, int64_t n, int hd,
                               float *t)
{
    DS4_ASSERT(ds4__attn_isa_supported(isa));
#ifdef ATTN_X86
    if (isa != DS4__ATTN_ISA_C && hd % 8 == 0 && ds4__attn_isa_supported(DS4__ATTN_ISA_AVX2)) {
        transpose_tiles_avx2(rows, n, hd, t);
        return;
    }
#endif
    transpose_tiles_c(rows, 0, n, hd, t);
}

bool ds4__attn_keys_exact(ds4__attn_isa_t isa, const float *x, int64_t n)
{
    DS4_ASSERT(ds4__attn_isa_supported(isa));
#ifdef ATTN_X86
    if (isa == DS4__ATTN_ISA_AVX512)
        return keys_exact_avx512(x, n);
#endif
    return keys_exact_c(x, n);
}

/* ---------------- one query ---------------- */

static int64_t score_stride(int64_t n_entries)
{
    return (n_entries + 15) / 16 * 16;
}

size_t ds4__attn_scratch_bytes(const ds4__attn_shape_t *sh, int64_t n_entries)
{
    size_t H = (size_t)sh->n_heads, hd = (size_t)sh->head_dim;
    return H * hd * sizeof(double) +
           (H * (size_t)score_stride(n_entries) + H * DS4__ATTN_BLOCK + 2 * H) * sizeof(float);
}

void ds4__attn_query(ds4__attn_isa_t isa, const ds4__attn_shape_t *sh, const ds4__attn_seg_t *segs,
                     int n_segs, const float *q, float *o, void *scratch)
{
    const int H = sh->n_heads, hd = sh->head_dim;
    attn_kernels_t K = kernels_for(isa, hd);
    int64_t n = 0;
    for (int s = 0; s < n_segs; s++)
        n += segs[s].n;
    const int64_t ss = score_stride(n);
    double *acc = scratch;                           /* [H][hd] */
    float *sc = (float *)(acc + (int64_t)H * hd);    /* [H][ss] scores */
    float *pb = sc + (int64_t)H * ss;                /* [H][64] bf16 probabilities of a block */
    float *mrun = pb + (int64_t)H * DS4__ATTN_BLOCK; /* [H] running max */
    float *sum = mrun + H;                           /* [H] running denominator */

    int64_t off = 0;
    for (int s = 0; s < n_segs; s++) {
        if (segs[s].kt == NULL) {
            for (int h = 0; h < H; h++)
                for (int64_t e = 0; e < segs[s].n; e++)
                    sc[(int64_t)h * ss + off + e] = -INFINITY;
        } else if (segs[s].n > 0) {
            K.scores(q, H, hd, &segs[s], sh->scale, sc + off, ss);
        }
        off += segs[s].n;
    }
    memset(acc, 0, sizeof(double) * (size_t)H * (size_t)hd);
    for (int h = 0; h < H; h++) {
        mrun[h] = -INFINITY;
        sum[h] = 0.0f;
    }
    int si = 0;
    int64_t sj = 0; /* entry b0 is entry sj of segment si */
    for (int64_t b0 = 0; b0 < n; b0 += DS4__ATTN_BLOCK) {
        int64_t b1 = b0 + DS4__ATTN_BLOCK < n ? b0 + DS4__ATTN_BLOCK : n, nb = b1 - b0;
        bool pb_tiny = false;
        for (int h = 0; h < H; h++) {
            const float *s = sc + (int64_t)h * ss + b0;
            float bm = mrun[h];
            for (int64_t e = 0; e < nb; e++)
                bm = s[e] > bm ? s[e] : bm;
            float rescale = ds4__exp_ref(mrun[h] - bm);
            /* the block's probabilities sum over all 64 slots (invalid/padding = 0) in the
             * reference's row-reduction order */
            float p[DS4__ATTN_BLOCK];
            K.exp_shift(s, bm, nb, p);
            for (int64_t e = nb; e < DS4__ATTN_BLOCK; e++)
                p[e] = 0.0f;
            float bsum = K.sum64(p);
            sum[h] = sum[h] * rescale + bsum;
            K.rescale(acc + (int64_t)h * hd, hd, rescale);
            /* 0 < p < 2^-100 (products may round in fp32), p > 1 or NaN: regular P.V */
            pb_tiny |= K.round_pb(p, nb, pb + h * DS4__ATTN_BLOCK);
            mrun[h] = bm;
        }
        /* P.V over the block's valid entries, in entry order */
        for (int64_t e = b0; e < b1;) {
            while (sj == segs[si].n) {
                si++;
                sj = 0;
            }
            const ds4__attn_seg_t *sg = &segs[si];
            int64_t take = sg->n - sj < b1 - e ? sg->n - sj : b1 - e;
            if (sg->kt != NULL)
                (sg->exact && !pb_tiny ? K.pv_exact : K.pv)(H, hd, pb + (e - b0),
                                                            DS4__ATTN_BLOCK, take,
                                                            sg->kr + sj * hd, acc);
            e += take;
            sj += take;
        }
    }
    for (int h = 0; h < H; h++) {
        float den = sum[h] + ds4__exp_ref(sh->sink[h] - mrun[h]);
        for (int i = 0; i < hd; i++)
            o[(int64_t)h * hd + i] = ds4_round_bf16((float)acc[(int64_t)h * hd + i] / den);
    }
}
