/* Element-wise and small ops of the V4 forward pass, with the reference's rounding points. */
#include "attn-sparse.h"
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define OPS_X86 1
#include <immintrin.h>

/* ds4_round_bf16 on 16 lanes: round to nearest even on the upper 16 bits, NaN kept quiet */
__attribute__((target("avx512f"))) static inline __m512 round_bf16_avx512(__m512 x)
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

__attribute__((target("avx2"))) static inline __m256 round_bf16_avx2(__m256 x)
{
    __m256i u = _mm256_castps_si256(x);
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    /* both sides are non-negative as int32: the signed compare is the unsigned one */
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x7f800000));
    __m256i r = _mm256_add_epi32(
        u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                            _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
    __m256i q = _mm256_or_si256(_mm256_and_si256(u, hi), _mm256_set1_epi32(0x400000));
    return _mm256_castsi256_ps(_mm256_blendv_epi8(_mm256_and_si256(r, hi), q, nan));
}

__attribute__((target("avx512f"))) static void round_bf16_arr_avx512(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, round_bf16_avx512(_mm512_loadu_ps(x + i)));
    for (; i < n; i++)
        x[i] = ds4_round_bf16(x[i]);
}

__attribute__((target("avx2"))) static void round_bf16_arr_avx2(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, round_bf16_avx2(_mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        x[i] = ds4_round_bf16(x[i]);
}
#endif

void ds4__round_bf16_arr(float *x, int64_t n)
{
#ifdef OPS_X86
    ds4__attn_isa_t isa = ds4__attn_isa_select();
    if (isa == DS4__ATTN_ISA_AVX512) {
        round_bf16_arr_avx512(x, n);
        return;
    }
    if (isa == DS4__ATTN_ISA_AVX2) {
        round_bf16_arr_avx2(x, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        x[i] = ds4_round_bf16(x[i]);
}

/* The reference reduces contiguous fp32 rows (x.square().mean(-1), softmax sums) with torch's
 * vectorised CPU sum: vectors of 8 lanes, 4 interleaved vector accumulators (vector v goes to
 * accumulator v % 4), each accumulator summing sequentially with a cascade that folds every 16
 * vectors into the next level; then accumulators 1..3 are added to accumulator 0, a scalar tail
 * (n % 8 elements) is summed from 0 and the 8 lanes are added to it in order. Reproducing this
 * order (instead of an exact or sequential sum) is what makes the bf16 roundings downstream
 * agree with the golden outputs bit for bit. */
#define SUM_LANES 8
#define SUM_ILP 4
#define SUM_LEVELS 4

float ds4__sum_row_f32(const float *x, int64_t n)
{
    int64_t n_vec = n / SUM_LANES, n_ilp = n_vec / SUM_ILP;
    float acc[SUM_LEVELS][SUM_ILP][SUM_LANES];
    memset(acc, 0, sizeof(acc));
    int ceil_log2 = 0;
    while (((int64_t)1 << ceil_log2) < n_ilp)
        ceil_log2++;
    int level_power = ceil_log2 / SUM_LEVELS > 4 ? ceil_log2 / SUM_LEVELS : 4;
    int64_t level_step = (int64_t)1 << level_power, level_mask = level_step - 1;
    int64_t i = 0;
    while (i + level_step <= n_ilp) {
        for (int64_t s = 0; s < level_step; s++, i++)
            for (int k = 0; k < SUM_ILP; k++)
                for (int l = 0; l < SUM_LANES; l++)
                    acc[0][k][l] += x[(i * SUM_ILP + k) * SUM_LANES + l];
        for (int lv = 1; lv < SUM_LEVELS; lv++) {
            for (int k = 0; k < SUM_ILP; k++)
                for (int l = 0; l < SUM_LANES; l++) {
                    acc[lv][k][l] += acc[lv - 1][k][l];
                    acc[lv - 1][k][l] = 0.0f;
                }
            if ((i & (level_mask << (lv * level_power))) != 0)
                break;
        }
    }
    for (; i < n_ilp; i++)
        for (int k = 0; k < SUM_ILP; k++)
            for (int l = 0; l < SUM_LANES; l++)
                acc[0][k][l] += x[(i * SUM_ILP + k) * SUM_LANES + l];
    for (int lv = 1; lv < SUM_LEVELS; lv++)
        for (int k = 0; k < SUM_ILP; k++)
            for (int l = 0; l < SUM_LANES; l++)
                acc[0][k][l] += acc[lv][k][l];
    for (int64_t v = n_ilp * SUM_ILP; v < n_vec; v++)
        for (int l = 0; l < SUM_LANES; l++)
            acc[0][0][l] += x[v * SUM_LANES + l];
    for (int k = 1; k < SUM_ILP; k++)
        for (int l = 0; l < SUM_LANES; l++)
            acc[0][0][l] += acc[0][k][l];
    float total = 0.0f;
    for (int64_t e = n_vec * SUM_LANES; e < n; e++)
        total += x[e];
    for (int l = 0; l < SUM_LANES; l++)
        total += acc[0][0][l];
    return total;
}

/* The reference's torch evaluates exp on fp32 vectors with SLEEF's 1-ulp algorithm, which
 * differs from libm's correctly rounded expf in the last bit for some inputs; those bits decide
 * bf16 roundings (Sinkhorn, attention). Same algorithm: x = q*ln2 + s with q = rint(x/ln2)
 * (ln2 split in a high and a low part), a degree-6 polynomial in s evaluated with fused
 * multiply-adds, then scaled by 2^q; below -104 the result is 0. The scaling multiplies by
 * 2^(q>>1) (exact: u * 2^q1 stays normal for |q| <= 151) and then by 2^(q - (q>>1)) (one
 * rounding, as ldexpf's); on x86 a clone for FMA CPUs inlines fmaf/rintf (same values: fmaf
 * and rintf are exact operations either way) instead of calling libm. */
static inline float pow2_normal(int k) /* 2^k for -126 <= k <= 127 */
{
    return ds4_bits_to_f32((uint32_t)(k + 127) << 23);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("fma", "default")))
#endif
float ds4__exp_ref(float x)
{
    if (isnan(x))
        return x;
    if (x > 104.0f) /* 2^q overflows from x ~ 88.73 on; keeps q within int range */
        return INFINITY;
    if (x < -104.0f)
        return 0.0f;
    const float inv_ln2 = 1.442695040888963407359924681001892137426645954152985934135449406931f;
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187045e-06f;
    float qf = rintf(x * inv_ln2);
    int q = (int)qf;
    float s = fmaf(qf, -ln2_hi, x);
    s = fmaf(qf, -ln2_lo, s);
    float u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    int q1 = q >> 1;
    return u * pow2_normal(q1) * pow2_normal(q - q1);
}

#ifdef OPS_X86
__attribute__((target("avx2"))) static inline __m256 sum_ld8(const float *x, bool sq)
{
    __m256 v = _mm256_loadu_ps(x);
    return sq ? _mm256_mul_ps(v, v) : v;
}

/* ds4__sum_row_f32 with its 8 lanes as one vector (each lane's additions in the same order);
 * sq: the elements are x[i] * x[i] (rounded to fp32, as a stored square) */
__attribute__((target("avx2"))) static float sum_row_avx2(const float *x, int64_t n, bool sq)
{
    int64_t n_vec = n / SUM_LANES, n_ilp = n_vec / SUM_ILP;
    __m256 acc[SUM_LEVELS][SUM_ILP];
    for (int lv = 0; lv < SUM_LEVELS; lv++)
        for (int k = 0; k < SUM_ILP; k++)
            acc[lv][k] = _mm256_setzero_ps();
    int ceil_log2 = 0;
    while (((int64_t)1 << ceil_log2) < n_ilp)
        ceil_log2++;
    int level_power = ceil_log2 / SUM_LEVELS > 4 ? ceil_log2 / SUM_LEVELS : 4;
    int64_t level_step = (int64_t)1 << level_power, level_mask = level_step - 1;
    int64_t i = 0;
    while (i + level_step <= n_ilp) {
        for (int64_t s = 0; s < level_step; s++, i++)
            for (int k = 0; k < SUM_ILP; k++)
                acc[0][k] = _mm256_add_ps(acc[0][k],
                                          sum_ld8(x + (i * SUM_ILP + k) * SUM_LANES, sq));
        for (int lv = 1; lv < SUM_LEVELS; lv++) {
            for (int k = 0; k < SUM_ILP; k++) {
                acc[lv][k] = _mm256_add_ps(acc[lv][k], acc[lv - 1][k]);
                acc[lv - 1][k] = _mm256_setzero_ps();
            }
            if ((i & (level_mask << (lv * level_power))) != 0)
                break;
        }
    }
    for (; i < n_ilp; i++)
        for (int k = 0; k < SUM_ILP; k++)
            acc[0][k] = _mm256_add_ps(acc[0][k], sum_ld8(x + (i * SUM_ILP + k) * SUM_LANES,
                                                         sq));
    for (int lv = 1; lv < SUM_LEVELS; lv++)
        for (int k = 0; k < SUM_ILP; k++)
            acc[0][k] = _mm256_add_ps(acc[0][k], acc[lv][k]);
    for (int64_t v = n_ilp * SUM_ILP; v < n_vec; v++)
        acc[0][0] = _mm256_add_ps(acc[0][0], sum_ld8(x + v * SUM_LANES, sq));
    for (int k = 1; k < SUM_ILP; k++)
        acc[0][0] = _mm256_add_ps(acc[0][0], acc[0][k]);
    float total = 0.0f;
    for (int64_t e = n_vec * SUM_LANES; e < n; e++)
        total += sq ? x[e] * x[e] : x[e];
    float lanes[SUM_LANES];
    _mm256_storeu_ps(lanes, acc[0][0]);
    for (int l = 0; l < SUM_LANES; l++)
        total += lanes[l];
    return total;
}
#endif

float ds4__sum_row_f32_isa(ds4__attn_isa_t isa, const float *x, int64_t n)
{
#ifdef OPS_X86
    if (isa != DS4__ATTN_ISA_C && ds4__attn_isa_supported(DS4__ATTN_ISA_AVX2))
        return sum_row_avx2(x, n, false);
#endif
    (void)isa;
    return ds4__sum_row_f32(x, n);
}

/* mean(x^2) of a row: squares rounded to fp32 (a separate op in the reference), then summed in
 * the reference's order (ds4__sum_row_f32) and divided by n. */
static float mean_square(ds4__attn_isa_t isa, const float *x, int64_t n)
{
#ifdef OPS_X86
    if (isa != DS4__ATTN_ISA_C && ds4__attn_isa_supported(DS4__ATTN_ISA_AVX2))
        return sum_row_avx2(x, n, true) / (float)n;
#endif
    (void)isa;
    float buf[1024];
    float total = 0.0f;
    if (n <= 1024) {
        for (int64_t i = 0; i < n; i++)
            buf[i] = x[i] * x[i];
        total = ds4__sum_row_f32(buf, n);
    } else {
        float *sq = ds4_malloc_array((size_t)n, sizeof(float));
        DS4_ASSERT(sq != NULL);
        for (int64_t i = 0; i < n; i++)
            sq[i] = x[i] * x[i];
        total = ds4__sum_row_f32(sq, n);
        ds4_free(sq);
    }
    return total / (float)n;
}

void ds4__rmsnorm_rows(const float *x, const uint16_t *w, int64_t rows, int64_t n, double eps,
                       float *out)
{
    const float e = (float)eps;
    ds4__attn_isa_t isa = ds4__attn_isa_select();
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *o = out + r * n;
        float rs = 1.0f / sqrtf(mean_square(isa, xr, n) + e);
        for (int64_t i = 0; i < n; i++)
            o[i] = ds4_round_bf16(ds4_bf16_to_f32(w[i]) * (xr[i] * rs));
    }
}

void ds4__rope_freqs(const ds4_model_config_t *c, bool compressed, float *freqs)
{
    int dim = c->rope_head_dim;
    double base = compressed ? c->compress_rope_theta : c->rope_theta;
    for (int i = 0; i < dim / 2; i++) {
        float ex = (float)(2 * i) / (float)dim;
        freqs[i] = 1.0f / powf((float)base, ex);
    }
    if (compressed && c->has_yarn && c->rope_original_max_pos > 0) {
        double orig = (double)c->rope_original_max_pos;
        double lo_d = dim * log(orig / (c->beta_fast * 2 * M_PI)) / (2 * log(base));
        double hi_d = dim * log(orig / (c->beta_slow * 2 * M_PI)) / (2 * log(base));
        double low = floor(lo_d), high = ceil(hi_d);
        if (low < 0)
            low = 0;
        if (high > dim - 1)
            high = dim - 1;
        if (low == high)
            high += 0.001;
        for (int i = 0; i < dim / 2; i++) {
            float lin = ((float)i - (float)low) / ((float)high - (float)low);
            float ramp = lin < 0.0f ? 0.0f : (lin > 1.0f ? 1.0f : lin);
            float smooth = 1.0f - ramp;
            freqs[i] = freqs[i] / (float)c->rope_factor * (1.0f - smooth) + freqs[i] * smooth;
        }
    }
}

void ds4__rope_table(int rd, const float *freqs, int64_t pos, float *cs, float *sn)
{
    for (int i = 0; i < rd / 2; i++) {
        float ang = (float)pos * freqs[i];
        cs[i] = cosf(ang);
        sn[i] = sinf(ang);
    }
}

void ds4__rope_apply(float *x, int rd, const float *cs, const float *sn, bool inverse)
{
    for (int i = 0; i < rd / 2; i++) {
        float c = cs[i], s = inverse ? -sn[i] : sn[i];
        float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = ds4_round_bf16(a * c - b * s);
        x[2 * i + 1] = ds4_round_bf16(a * s + b * c);
    }
}

void ds4__rope(float *x, int rd, const float *freqs, int64_t pos, bool inverse)
{
    float cs[256], sn[256];
    DS4_ASSERT(rd / 2 <= 256);
    ds4__rope_table(rd, freqs, pos, cs, sn);
    ds4__rope_apply(x, rd, cs, sn, inverse);
}

void ds4__hadamard_bf16(float *x, int n)
{
    for (int h = 1; h < n; h *= 2) {
        for (int i = 0; i < n; i += 2 * h) {
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    float sc = (float)(1.0 / sqrt((double)n));
    for (int i = 0; i < n; i++)
        x[i] = ds4_round_bf16(x[i] * sc);
}

void ds4__linear_bf16(ds4_model_h m, const ds4_weight_t *w, int64_t rows, const float *x,
                      float *y, unsigned flags)
{
    m->ops->matmul(m->be, w, rows, x, y, flags);
    ds4__round_bf16_arr(y, rows * w->n);
}

/* hc_split_sinkhorn of one token: mixes[(2+hc)*hc] (already scaled by rsqrt). */
static void sinkhorn(const ds4_model_config_t *c, const float *mix, const float *base,
                     const float *scale, float *pre, float *post, float *comb)
{
    int hc = c->hc_mult;
    float eps = (float)c->hc_eps;
    for (int j = 0; j < hc; j++) {
        float v = mix[j] * scale[0] + base[j];
        pre[j] = 1.0f / (1.0f + ds4__exp_ref(-v)) + eps;
        float u = mix[hc + j] * scale[1] + base[hc + j];
        post[j] = 2.0f * (1.0f / (1.0f + ds4__exp_ref(-u)));
    }
    float C[16 * 16];
    for (int j = 0; j < hc; j++) {
        float mx = -INFINITY;
        for (int k = 0; k < hc; k++) {
            C[j * hc + k] = mix[2 * hc + j * hc + k] * scale[2] + base[2 * hc + j * hc + k];
            mx = C[j * hc + k] > mx ? C[j * hc + k] : mx;
        }
        float sum = 0.0f;
        for (int k = 0; k < hc; k++) {
            C[j * hc + k] = ds4__exp_ref(C[j * hc + k] - mx);
            sum += C[j * hc + k];
        }
        for (int k = 0; k < hc; k++)
            C[j * hc + k] = C[j * hc + k] / sum + eps;
    }
    for (int it = 0; it < c->hc_sinkhorn_iters; it++) {
        if (it > 0) {
            for (int j = 0; j < hc; j++) {
                float s = 0.0f;
                for (int k = 0; k < hc; k++)
                    s += C[j * hc + k];
                for (int k = 0; k < hc; k++)
                    C[j * hc + k] /= (s + eps);
            }
        }
        for (int k = 0; k < hc; k++) {
            float s = 0.0f;
            for (int j = 0; j < hc; j++)
                s += C[j * hc + k];
            for (int j = 0; j < hc; j++)
                C[j * hc + k] /= (s + eps);
        }
    }
    memcpy(comb, C, sizeof(float) * (size_t)(hc * hc));
}

/* ---- sequential fp32 dots, vectorised across outputs ----
 * y[r * m + j] = d, d = 0; for i = 0..n-1: d += x[r][i] * w[j][i] (mul then add, element 0
 * first: the reference's fp32 F.linear order), with the weights transposed and zero-padded:
 * wt[i * mp + j] (mp a multiple of 16). Lane = output j, so every level gives the same bits. */
static void dots_seq_c(const float *x, int64_t rows, int64_t n, const float *wt, int m,
                       int64_t mp, float *y)
{
    float d[256];
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        for (int j0 = 0; j0 < m; j0 += 256) {
            int w = m - j0 < 256 ? m - j0 : 256;
            for (int j = 0; j < w; j++)
                d[j] = 0.0f;
            for (int64_t i = 0; i < n; i++) {
                const float *wi = wt + i * mp + j0;
                float xi = xr[i];
                for (int j = 0; j < w; j++)
                    d[j] += xi * wi[j];
            }
            memcpy(y + r * m + j0, d, sizeof(float) * (size_t)w);
        }
    }
}

#ifdef OPS_X86
/* 32 outputs x 4 rows per pass (8 accumulators sharing each weight load) */
__attribute__((target("avx512f"))) static void dots_seq_avx512(const float *x, int64_t rows,
                                                               int64_t n, const float *wt, int m,
                                                               int64_t mp, float *y)
{
    for (int j0 = 0; j0 < m; j0 += 32) {
        int w = m - j0 < 32 ? m - j0 : 32;
        __mmask16 k0 = w >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << w) - 1u);
        __mmask16 k1 = w >= 32 ? (__mmask16)0xffff
                       : w <= 16 ? (__mmask16)0 : (__mmask16)((1u << (w - 16)) - 1u);
        for (int64_t r0 = 0; r0 < rows; r0 += 4) {
            int nr = rows - r0 < 4 ? (int)(rows - r0) : 4;
            const float *x0 = x + r0 * n;
            const float *x1 = nr > 1 ? x0 + n : x0, *x2 = nr > 2 ? x0 + 2 * n : x0;
            const float *x3 = nr > 3 ? x0 + 3 * n : x0;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
            __m512 c0 = a0, c1 = a0, d0 = a0, d1 = a0;
            for (int64_t i = 0; i < n; i++) {
                const float *wi = wt + i * mp + j0;
                __m512 w0 = _mm512_maskz_loadu_ps(k0, wi), w1 = _mm512_maskz_loadu_ps(k1, wi + 16);
                __m512 v = _mm512_set1_ps(x0[i]);
                a0 = _mm512_add_ps(a0, _mm512_mul_ps(v, w0));
                a1 = _mm512_add_ps(a1, _mm512_mul_ps(v, w1));
                v = _mm512_set1_ps(x1[i]);
                b0 = _mm512_add_ps(b0, _mm512_mul_ps(v, w0));
                b1 = _mm512_add_ps(b1, _mm512_mul_ps(v, w1));
                v = _mm512_set1_ps(x2[i]);
                c0 = _mm512_add_ps(c0, _mm512_mul_ps(v, w0));
                c1 = _mm512_add_ps(c1, _mm512_mul_ps(v, w1));
                v = _mm512_set1_ps(x3[i]);
                d0 = _mm512_add_ps(d0, _mm512_mul_ps(v, w0));
                d1 = _mm512_add_ps(d1, _mm512_mul_ps(v, w1));
            }
            __m512 res[4][2] = {{a0, a1}, {b0, b1}, {c0, c1}, {d0, d1}};
            for (int r = 0; r < nr; r++) {
                float *yr = y + (r0 + r) * m + j0;
                _mm512_mask_storeu_ps(yr, k0, res[r][0]);
                _mm512_mask_storeu_ps(yr + 16, k1, res[r][1]);
            }
        }
    }
}

/* 16 outputs x 4 rows per pass */
__attribute__((target("avx2,fma"))) static void dots_seq_avx2(const float *x, int64_t rows,
                                                              int64_t n, const float *wt, int m,
                                                              int64_t mp, float *y)
{
    for (int j0 = 0; j0 < m; j0 += 16) {
        int w = m - j0 < 16 ? m - j0 : 16;
        for (int64_t r0 = 0; r0 < rows; r0 += 4) {
            int nr = rows - r0 < 4 ? (int)(rows - r0) : 4;
            const float *x0 = x + r0 * n;
            const float *x1 = nr > 1 ? x0 + n : x0, *x2 = nr > 2 ? x0 + 2 * n : x0;
            const float *x3 = nr > 3 ? x0 + 3 * n : x0;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
            __m256 c0 = a0, c1 = a0, d0 = a0, d1 = a0;
            for (int64_t i = 0; i < n; i++) {
                const float *wi = wt + i * mp + j0; /* mp % 16 == 0: 16 lanes readable */
                __m256 w0 = _mm256_loadu_ps(wi), w1 = _mm256_loadu_ps(wi + 8);
                __m256 v = _mm256_set1_ps(x0[i]);
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(v, w0));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(v, w1));
                v = _mm256_set1_ps(x1[i]);
                b0 = _mm256_add_ps(b0, _mm256_mul_ps(v, w0));
                b1 = _mm256_add_ps(b1, _mm256_mul_ps(v, w1));
                v = _mm256_set1_ps(x2[i]);
                c0 = _mm256_add_ps(c0, _mm256_mul_ps(v, w0));
                c1 = _mm256_add_ps(c1, _mm256_mul_ps(v, w1));
                v = _mm256_set1_ps(x3[i]);
                d0 = _mm256_add_ps(d0, _mm256_mul_ps(v, w0));
                d1 = _mm256_add_ps(d1, _mm256_mul_ps(v, w1));
            }
            float res[4][16];
            _mm256_storeu_ps(res[0], a0);
            _mm256_storeu_ps(res[0] + 8, a1);
            _mm256_storeu_ps(res[1], b0);
            _mm256_storeu_ps(res[1] + 8, b1);
            _mm256_storeu_ps(res[2], c0);
            _mm256_storeu_ps(res[2] + 8, c1);
            _mm256_storeu_ps(res[3], d0);
            _mm256_storeu_ps(res[3] + 8, d1);
            for (int r = 0; r < nr; r++)
                memcpy(y + (r0 + r) * m + j0, res[r], sizeof(float) * (size_t)w);
        }
    }
}
#endif

void ds4__dots_seq(ds4__attn_isa_t isa, const float *x, int64_t rows, int64_t n, const float *w,
                   int m, float *y)
{
    int64_t mp = ((int64_t)m + 15) / 16 * 16;
    float *wt = ds4_calloc((size_t)(n * mp), sizeof(float));
    DS4_ASSERT(wt != NULL && ds4__attn_isa_supported(isa));
    for (int j = 0; j < m; j++)
        for (int64_t i = 0; i < n; i++)
            wt[i * mp + j] = w[(int64_t)j * n + i];
#ifdef OPS_X86
    if (isa == DS4__ATTN_ISA_AVX512)
        dots_seq_avx512(x, rows, n, wt, m, mp, y);
    else if (isa == DS4__ATTN_ISA_AVX2)
        dots_seq_avx2(x, rows, n, wt, m, mp, y);
    else
#endif
        dots_seq_c(x, rows, n, wt, m, mp, y);
    ds4_free(wt);
}

/* rsqrt(mean(x^2) + eps) over the hc*d values of each row, and raw mixes = fn . x: each mix a
 * plain sequential fp32 dot product (the reference's fp32 F.linear order, measured on the
 * golden: exact agreement, where double or 4/8/16-lane sums flip bf16 roundings). */
static void hc_mixes(ds4_model_h m, const float *X, int64_t rows, const float *fn, int n_mix,
                     float *mixes)
{
    const ds4_model_config_t *c = &m->cfg;
    int64_t hd = (int64_t)c->hc_mult * c->hidden_size;
    ds4__attn_isa_t isa = ds4__attn_isa_select();
    ds4__dots_seq(isa, X, rows, hd, fn, n_mix, mixes);
    for (int64_t r = 0; r < rows; r++) {
        const float *x = X + r * hd;
        float rs = 1.0f / sqrtf(mean_square(isa, x, hd) + (float)c->rms_norm_eps);
        for (int j = 0; j < n_mix; j++)
            mixes[r * n_mix + j] *= rs;
    }
}

void ds4__hc_pre(ds4_model_h m, const float *X, int64_t rows, const float *fn, const float *base,
                 const float *scale, float *y, float *post, float *comb)
{
    const ds4_model_config_t *c = &m->cfg;
    int hc = c->hc_mult;
    int n_mix = (2 + hc) * hc;
    int64_t d = c->hidden_size;
    float *mixes = ds4_malloc_array((size_t)(rows * n_mix), sizeof(float));
    DS4_ASSERT(mixes != NULL);
    hc_mixes(m, X, rows, fn, n_mix, mixes);
    for (int64_t r = 0; r < rows; r++) {
        float pre[16];
        sinkhorn(c, mixes + r * n_mix, base, scale, pre, post + r * hc, comb + r * hc * hc);
        const float *x = X + r * hc * d;
        for (int64_t i = 0; i < d; i++) {
            float acc = 0.0f;
            for (int j = 0; j < hc; j++)
                acc += pre[j] * x[j * d + i];
            y[r * d + i] = ds4_round_bf16(acc);
        }
    }
    ds4_free(mixes);
}

#ifdef OPS_X86
/* ds4__hc_post on 16 (AVX-512) / 8 (AVX2) elements i at once: lanes are independent i, each
 * lane's operations those of the scalar loop */
__attribute__((target("avx512f"))) static int64_t hc_post_avx512(int hc, int64_t d, float *x,
                                                                 const float *f,
                                                                 const float *po,
                                                                 const float *cb)
{
    int64_t i = 0;
    __m512 res[16];
    for (; i + 16 <= d; i += 16) {
        for (int j = 0; j < hc; j++)
            res[j] = _mm512_loadu_ps(x + j * d + i);
        __m512 fv = _mm512_loadu_ps(f + i);
        for (int k = 0; k < hc; k++) {
            __m512 acc = _mm512_setzero_ps();
            for (int j = 0; j < hc; j++)
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(cb[j * hc + k]), res[j]));
            __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(po[k]), fv), acc);
            _mm512_storeu_ps(x + k * d + i, round_bf16_avx512(v));
        }
    }
    return i;
}

__attribute__((target("avx2"))) static int64_t hc_post_avx2(int hc, int64_t d, float *x,
                                                            const float *f, const float *po,
                                                            const float *cb)
{
    int64_t i = 0;
    __m256 res[16];
    for (; i + 8 <= d; i += 8) {
        for (int j = 0; j < hc; j++)
            res[j] = _mm256_loadu_ps(x + j * d + i);
        __m256 fv = _mm256_loadu_ps(f + i);
        for (int k = 0; k < hc; k++) {
            __m256 acc = _mm256_setzero_ps();
            for (int j = 0; j < hc; j++)
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(cb[j * hc + k]), res[j]));
            __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(po[k]), fv), acc);
            _mm256_storeu_ps(x + k * d + i, round_bf16_avx2(v));
        }
    }
    return i;
}
#endif

void ds4__hc_post(const ds4_model_config_t *c, float *X, int64_t rows, const float *f,
                  const float *post, const float *comb)
{
    int hc = c->hc_mult;
    int64_t d = c->hidden_size;
    float res[16];
    DS4_ASSERT(hc <= 16);
#ifdef OPS_X86
    ds4__attn_isa_t isa = ds4__attn_isa_select();
#endif
    for (int64_t r = 0; r < rows; r++) {
        float *x = X + r * hc * d;
        const float *po = post + r * hc;
        const float *cb = comb + r * hc * hc;
        int64_t i0 = 0;
#ifdef OPS_X86
        if (isa == DS4__ATTN_ISA_AVX512)
            i0 = hc_post_avx512(hc, d, x, f + r * d, po, cb);
        else if (isa == DS4__ATTN_ISA_AVX2)
            i0 = hc_post_avx2(hc, d, x, f + r * d, po, cb);
#endif
        for (int64_t i = i0; i < d; i++) {
            for (int j = 0; j < hc; j++)
                res[j] = x[j * d + i];
            float fv = f[r * d + i];
            for (int k = 0; k < hc; k++) {
                float acc = 0.0f;
                for (int j = 0; j < hc; j++)
                    acc += cb[j * hc + k] * res[j];
                x[k * d + i] = ds4_round_bf16(po[k] * fv + acc);
            }
        }
    }
}

void ds4__hc_head(ds4_model_h m, const float *X, int64_t rows, const float *fn,
                  const float *base, const float *scale, float *y)
{
    const ds4_model_config_t *c = &m->cfg;
    int hc = c->hc_mult;
    int64_t d = c->hidden_size;
    float *mixes = ds4_malloc_array((size_t)(rows * hc), sizeof(float));
    DS4_ASSERT(mixes != NULL);
    hc_mixes(m, X, rows, fn, hc, mixes);
    for (int64_t r = 0; r < rows; r++) {
        float pre[16];
        for (int j = 0; j < hc; j++) {
            float v = mixes[r * hc + j] * scale[0] + base[j];
            pre[j] = 1.0f / (1.0f + ds4__exp_ref(-v)) + (float)c->hc_eps;
        }
        const float *x = X + r * hc * d;
        for (int64_t i = 0; i < d; i++) {
            float acc = 0.0f;
            for (int j = 0; j < hc; j++)
                acc += pre[j] * x[j * d + i];
            y[r * d + i] = ds4_round_bf16(acc);
        }
    }
    ds4_free(mixes);
}

/* Row layout: nope e4m3 | nope/64 ue8m0 | rope bf16 | zero pad (to row_bytes). `vals` holds
 * the row's values; the nope part is FP8-simulated in place (block 64). */
void ds4__kv_row_encode(const ds4_model_config_t *c, float *vals, uint8_t *row)
{
    int hd = c->head_dim, rd = c->rope_head_dim, nope = hd - rd;
    uint32_t rb = ds4_config_kv_row_bytes(c);
    memset(row, 0, rb);
    ds4_act_quant_fp8(vals, nope, DS4_KV_FP8_BLOCK, vals, row, row + nope);
    uint8_t *rp = row + nope + nope / DS4_KV_FP8_BLOCK;
    for (int i = 0; i < rd; i++) {
        uint16_t b = ds4_f32_to_bf16(vals[nope + i]);
        rp[2 * i] = (uint8_t)(b & 0xff);
        rp[2 * i + 1] = (uint8_t)(b >> 8);
    }
}

/* ds4_e4m3_to_f32 of every byte (the decode of attended rows is per query for CSA: a table
 * lookup instead of the branchy bit construction; same values) */
static float e4m3_lut[256];
static pthread_once_t e4m3_lut_once = PTHREAD_ONCE_INIT;

static void e4m3_lut_init(void)
{
    for (int b = 0; b < 256; b++)
        e4m3_lut[b] = ds4_e4m3_to_f32((uint8_t)b);
}

void ds4__kv_row_decode(const ds4_model_config_t *c, const uint8_t *row, float *vals)
{
    int hd = c->head_dim, rd = c->rope_head_dim, nope = hd - rd;
    const uint8_t *sc = row + nope;
    pthread_once(&e4m3_lut_once, e4m3_lut_init);
    for (int b = 0; b < nope / DS4_KV_FP8_BLOCK; b++) {
        float s = ds4_e8m0_to_f32(sc[b]);
        for (int i = b * DS4_KV_FP8_BLOCK; i < (b + 1) * DS4_KV_FP8_BLOCK; i++)
            vals[i] = e4m3_lut[row[i]] * s;
    }
    const uint8_t *rp = row + nope + nope / DS4_KV_FP8_BLOCK;
    for (int i = 0; i < rd; i++)
        vals[nope + i] = ds4_bf16_to_f32((uint16_t)(rp[2 * i] | (rp[2 * i + 1] << 8)));
}

#ifdef OPS_X86
/* ds4_e4m3_to_f32 on 16 bytes by the same bit construction (normal: rebias, subnormal:
 * man * 2^-9 with the sign, 0x7f/0xff: NaN) */
__attribute__((target("avx512f"))) static inline __m512 e4m3_avx512(__m128i bytes)
{
    __m512i b = _mm512_cvtepu8_epi32(bytes);
    __m512i sign = _mm512_slli_epi32(_mm512_srli_epi32(b, 7), 31);
    __m512i ex = _mm512_and_si512(_mm512_srli_epi32(b, 3), _mm512_set1_epi32(15));
    __m512i man = _mm512_and_si512(b, _mm512_set1_epi32(7));
    __m512i normal = _mm512_or_si512(
        sign, _mm512_or_si512(_mm512_slli_epi32(_mm512_add_epi32(ex, _mm512_set1_epi32(120)), 23),
                              _mm512_slli_epi32(man, 20)));
    __m512i sub = _mm512_or_si512(
        sign, _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(man), _mm512_set1_ps(0x1p-9f))));
    __m512i v = _mm512_mask_blend_epi32(_mm512_cmpeq_epi32_mask(ex, _mm512_setzero_si512()),
                                        normal, sub);
    __mmask16 nan = _mm512_cmpeq_epi32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7f)),
                                            _mm512_set1_epi32(0x7f));
    return _mm512_mask_blend_ps(nan, _mm512_castsi512_ps(v), _mm512_set1_ps(NAN));
}

__attribute__((target("avx512f"))) static void kv_row_decode_avx512(const ds4_model_config_t *c,
                                                                    const uint8_t *row,
                                                                    float *vals)
{
    int hd = c->head_dim, rd = c->rope_head_dim, nope = hd - rd;
    const uint8_t *sc = row + nope;
    for (int i = 0; i < nope; i += 16) {
        __m512 s = _mm512_set1_ps(ds4_e8m0_to_f32(sc[i / DS4_KV_FP8_BLOCK]));
        __m512 v = e4m3_avx512(_mm_loadu_si128((const __m128i *)(row + i)));
        _mm512_storeu_ps(vals + i, _mm512_mul_ps(v, s));
    }
    const uint8_t *rp = row + nope + nope / DS4_KV_FP8_BLOCK;
    for (int i = 0; i < rd; i += 16) {
        __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(rp + 2 * i)));
        _mm512_storeu_si512(vals + nope + i, _mm512_slli_epi32(h, 16));
    }
}
#endif

void ds4__kv_row_decode_isa(ds4__attn_isa_t isa, const ds4_model_config_t *c,
                            const uint8_t *row, float *vals)
{
#ifdef OPS_X86
    int nope = c->head_dim - c->rope_head_dim;
    if (isa == DS4__ATTN_ISA_AVX512 && nope % 16 == 0 && DS4_KV_FP8_BLOCK % 16 == 0 &&
        c->rope_head_dim % 16 == 0) {
        kv_row_decode_avx512(c, row, vals);
        return;
    }
#endif
    (void)isa;
    ds4__kv_row_decode(c, row, vals);
}

void ds4__index_row_encode(const ds4_model_config_t *c, float *vals, uint8_t *row)
{
    int n = c->index_head_dim;
    memset(row, 0, ds4_config_index_row_bytes(c));
    ds4_act_quant_fp4(vals, n, vals, row, row + n / 2);
}

void ds4__index_row_decode(const ds4_model_config_t *c, const uint8_t *row, float *vals)
{
    int n = c->index_head_dim;
    const uint8_t *sc = row + n / 2;
    for (int i = 0; i < n; i++) {
        uint8_t code = (i & 1) ? (uint8_t)(row[i / 2] >> 4) : (uint8_t)(row[i / 2] & 15u);
        vals[i] = ds4_e2m1_to_f32(code) * ds4_e8m0_to_f32(sc[i / 32]);
    }
}
