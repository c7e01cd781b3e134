/* K-blocked GEMM, AVX2 + FMA level (x86-64, selected at run time): weights dequantised 8 rows x
 * 8 inputs at a time and transposed into panels; a 6-row x 16-output kernel (12 accumulators)
 * run on each half of a 32-row panel, fmas input by input (the portable level's order). */
#include "kgemm.h"

#if defined(__x86_64__)

#include "ds4/log.h"
#include "ds4/numeric.h"

#include <immintrin.h>
#include <string.h>

#define TGT __attribute__((target("avx2,fma")))
#define TGT_INLINE static inline __attribute__((always_inline, target("avx2,fma")))
#define MR 6

/* e4m3 codes (one per 32-bit lane) -> exact f32 values, as in the AVX-512 level. */
TGT_INLINE __m256 e4m3_decode(__m256i c)
{
    const __m256i m7 = _mm256_and_si256(c, _mm256_set1_epi32(0x7f));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x80)), 24);
    __m256i norm = _mm256_add_epi32(_mm256_slli_epi32(m7, 20), _mm256_set1_epi32(120 << 23));
    __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(m7), _mm256_set1_ps(0x1p-9f));
    __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(8), m7);
    __m256 v = _mm256_blendv_ps(_mm256_castsi256_ps(norm), sub, _mm256_castsi256_ps(is_sub));
    v = _mm256_or_ps(v, _mm256_castsi256_ps(sign));
    __m256i is_nan = _mm256_cmpeq_epi32(m7, _mm256_set1_epi32(0x7f));
    return _mm256_blendv_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)),
                            _mm256_castsi256_ps(is_nan));
}

/* 8 inputs [c0, c0 + len) of row `row` (len <= 8, the rest zero), exact f32. */
TGT_INLINE __m256 row8(const ds4_weight_t *w, int64_t row, int64_t c0, int64_t len)
{
    int64_t k = w->k;
    if (w->type == DS4_W_FP8) {
        const uint8_t *src = (const uint8_t *)w->data + row * k + c0;
        uint8_t tmp[16] = {0};
        memcpy(tmp, src, (size_t)(len >= 8 ? 8 : len));
        __m128i bytes = _mm_loadl_epi64((const __m128i *)tmp);
        float s = ds4_e8m0_to_f32(w->scale[(row / 128) * ((k + 127) / 128) + c0 / 128]);
        return _mm256_mul_ps(e4m3_decode(_mm256_cvtepu8_epi32(bytes)), _mm256_set1_ps(s));
    }
    /* FP4: len is 8; 4 bytes, element 2i low nibble of byte i */
    const __m256 table = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const uint8_t *src = (const uint8_t *)w->data + row * (k / 2) + c0 / 2;
    int32_t word;
    memcpy(&word, src, 4);
    __m128i bytes = _mm_cvtsi32_si128(word);
    __m256i d = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, bytes));
    const __m256i shifts = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);
    __m256i code = _mm256_and_si256(_mm256_srlv_epi32(d, shifts), _mm256_set1_epi32(15));
    __m256 mag = _mm256_permutevar8x32_ps(table, code); /* uses the low 3 bits */
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(code, _mm256_set1_epi32(8)), 28);
    __m256 v = _mm256_or_ps(mag, _mm256_castsi256_ps(sign));
    float s = ds4_e8m0_to_f32(w->scale[row * (k / 32) + c0 / 32]);
    return _mm256_mul_ps(v, _mm256_set1_ps(s));
}

TGT_INLINE void transpose8(const __m256 r[8], __m256 c[8])
{
    __m256 t[8], u[8];
#pragma GCC unroll 16
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 2; i++) {
        __m256d a = _mm256_castps_pd(t[4 * i]), b = _mm256_castps_pd(t[4 * i + 1]);
        __m256d e = _mm256_castps_pd(t[4 * i + 2]), f = _mm256_castps_pd(t[4 * i + 3]);
        u[4 * i] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, e));
        u[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, e));
        u[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, f));
        u[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, f));
    }
    /* u[4i + q], 128-bit lane L: rows 4i..4i+3 of column 4L + q */
#pragma GCC unroll 16
    for (int q = 0; q < 4; q++) {
        c[q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x20);
        c[4 + q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x31);
    }
}

/* 8 inputs of act_quant with the scalar code's operations (see the AVX-512 level). */
TGT_INLINE __m256 quant8(__m256 v, __m256 vinv, __m256 vs)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 q = _mm256_mul_ps(v, vinv);
    q = _mm256_max_ps(_mm256_set1_ps(-448.0f), _mm256_min_ps(_mm256_set1_ps(448.0f), q));
    __m256 sub = _mm256_cmp_ps(_mm256_and_ps(q, absmask), _mm256_set1_ps(0.015625f), _CMP_LT_OQ);
    __m256 rs = _mm256_round_ps(_mm256_mul_ps(q, _mm256_set1_ps(512.0f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    rs = _mm256_mul_ps(rs, _mm256_set1_ps(1.0f / 512.0f));
    __m256i u = _mm256_castps_si256(q);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 20), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7ffff)));
    u = _mm256_and_si256(u, _mm256_set1_epi32((int)0xfff00000u));
    return _mm256_mul_ps(_mm256_blendv_ps(_mm256_castsi256_ps(u), rs, sub), vs);
}

/* ds4_act_quant_fp8 without codes, 8 lanes at a time; a ragged tail goes through a zero-padded
 * copy (zeros change neither the block's amax nor the other lanes). */
TGT static void act_quant_avx2(const float *x, int64_t n, int block, float *out)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        int64_t len = block < n - b0 ? block : n - b0;
        int64_t full = len / 8 * 8;
        float tail[8] = {0};
        memcpy(tail, x + b0 + full, (size_t)(len - full) * sizeof(float));
        /* max_ps returns its second operand when the first is NaN: NaN never enters amax */
        __m256 amax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(tail), absmask),
                                    _mm256_setzero_ps());
        for (int64_t i = 0; i < full; i += 8)
            amax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + b0 + i), absmask), amax);
        float lanes[8], m = 0.0f;
        _mm256_storeu_ps(lanes, amax);
        for (int i = 0; i < 8; i++)
            m = lanes[i] > m ? lanes[i] : m;
        float s, inv_s;
        ds4__act_scale_fp8(m, &s, &inv_s);
        const __m256 vs = _mm256_set1_ps(s), vinv = _mm256_set1_ps(inv_s);
        for (int64_t i = 0; i < full; i += 8)
            _mm256_storeu_ps(out + b0 + i, quant8(_mm256_loadu_ps(x + b0 + i), vinv, vs));
        if (full < len) {
            _mm256_storeu_ps(tail, quant8(_mm256_loadu_ps(tail), vinv, vs));
            memcpy(out + b0 + full, tail, (size_t)(len - full) * sizeof(float));
        }
    }
}

/* Full 8 rows x 8 inputs of an FP8 weight (one scale for the strip), dequantised and
 * transposed to dst[i * KGEMM_NR + t]. */
TGT_INLINE void tile8_fp8(const uint8_t *src, int64_t k, __m256 s, float *dst)
{
    __m256 r[8], c[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) {
        __m128i bytes = _mm_loadl_epi64((const __m128i *)(src + t * k));
        r[t] = e4m3_decode(_mm256_cvtepu8_epi32(bytes));
    }
    transpose8(r, c);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        _mm256_store_ps(dst + i * KGEMM_NR, _mm256_mul_ps(c[i], s));
}

/* Full 8 rows x 8 inputs of an FP4 weight (rows kp bytes apart; s: the 8 rows' scales). */
TGT_INLINE void tile8_fp4(const uint8_t *src, int64_t kp, __m256 s, float *dst)
{
    const __m256 table = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);
    __m256 r[8], c[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) {
        int32_t word;
        memcpy(&word, src + t * kp, 4);
        __m128i bytes = _mm_cvtsi32_si128(word);
        __m256i d = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, bytes));
        __m256i code = _mm256_and_si256(_mm256_srlv_epi32(d, shifts), _mm256_set1_epi32(15));
        __m256 mag = _mm256_permutevar8x32_ps(table, code);
        __m256i sign = _mm256_slli_epi32(_mm256_and_si256(code, _mm256_set1_epi32(8)), 28);
        r[t] = _mm256_or_ps(mag, _mm256_castsi256_ps(sign));
    }
    transpose8(r, c);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        _mm256_store_ps(dst + i * KGEMM_NR, _mm256_mul_ps(c[i], s));
}

TGT static void pack_w_avx2(const ds4_weight_t *w, int64_t r0, int64_t nr, int64_t k0,
                            int64_t kl, float *wp)
{
    int64_t k = w->k;
    int64_t n_panels = (nr + KGEMM_NR - 1) / KGEMM_NR;
    for (int64_t q = 0; q < n_panels * 4; q++) {
        float *dst = wp + (q / 4) * kl * KGEMM_NR + (q % 4) * 8;
        int64_t row0 = r0 + q * 8;
        bool full_rows = q * 8 + 8 <= nr;
        int64_t i0 = 0;
        if (full_rows && w->type == DS4_W_FP8) {
            /* k0 is block aligned and kl <= 128: one scale for the whole 8-row strip */
            __m256 s = _mm256_set1_ps(
                ds4_e8m0_to_f32(w->scale[(row0 / 128) * ((k + 127) / 128) + k0 / 128]));
            const uint8_t *src = (const uint8_t *)w->data + row0 * k + k0;
            for (; i0 + 8 <= kl; i0 += 8)
                tile8_fp8(src + i0, k, s, dst + i0 * KGEMM_NR);
        } else if (full_rows) {
            const uint8_t *src = (const uint8_t *)w->data + row0 * (k / 2) + k0 / 2;
            for (; i0 + 8 <= kl; i0 += 8) {
                float sv[8];
                for (int t = 0; t < 8; t++)
                    sv[t] = ds4_e8m0_to_f32(w->scale[(row0 + t) * (k / 32) + (k0 + i0) / 32]);
                tile8_fp4(src + i0 / 2, k / 2, _mm256_loadu_ps(sv), dst + i0 * KGEMM_NR);
            }
        }
        /* ragged: rows past nr (zero) or a last partial 8 inputs (FP8 with k % 8 != 0) */
        for (; i0 < kl; i0 += 8) {
            int64_t len = kl - i0 < 8 ? kl - i0 : 8;
            __m256 r[8], c[8];
            for (int t = 0; t < 8; t++) {
                int64_t tr = q * 8 + t;
                r[t] = tr < nr ? row8(w, r0 + tr, k0 + i0, len) : _mm256_setzero_ps();
            }
            transpose8(r, c);
            for (int64_t i = 0; i < len; i++)
                _mm256_store_ps(dst + (i0 + i) * KGEMM_NR, c[i]);
        }
    }
}

TGT_INLINE __m256i lane_mask(int n)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

/* R rows x 16 outputs (one half of a panel, nh of them used) over one K chunk. */
TGT_INLINE void kern_rows(const int R, const float *xp, const float *wp, int nh, int64_t k0,
                          int64_t kl, float *y, int64_t ldy)
{
    __m256i m0 = lane_mask(nh), m1 = lane_mask(nh - 8);
    for (int64_t b = 0; b < kl; b += KGEMM_KB) {
        int64_t bl = kl - b < KGEMM_KB ? kl - b : KGEMM_KB;
        __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            acc0[r] = _mm256_setzero_ps();
            acc1[r] = _mm256_setzero_ps();
        }
        const float *xi = xp + b * MR;
        const float *wi = wp + b * KGEMM_NR;
        for (int64_t i = 0; i < bl; i++) {
            __m256 w0 = _mm256_load_ps(wi), w1 = _mm256_load_ps(wi + 8);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                __m256 xv = _mm256_broadcast_ss(xi + r);
                acc0[r] = _mm256_fmadd_ps(xv, w0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(xv, w1, acc1[r]);
            }
            xi += MR;
            wi += KGEMM_NR;
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float *y0 = y + r * ldy, *y1 = y0 + 8;
            if (k0 + b == 0) {
                _mm256_maskstore_ps(y0, m0, acc0[r]);
                _mm256_maskstore_ps(y1, m1, acc1[r]);
            } else {
                _mm256_maskstore_ps(y0, m0, _mm256_add_ps(_mm256_maskload_ps(y0, m0), acc0[r]));
                _mm256_maskstore_ps(y1, m1, _mm256_add_ps(_mm256_maskload_ps(y1, m1), acc1[r]));
            }
        }
    }
}

#define KERN(R)                                                                            \
    TGT static void kern_##R(const float *xp, const float *wp, int nr_used, int64_t k0,    \
                             int64_t kl, float *y, int64_t ldy)                            \
    {                                                                                      \
        kern_rows(R, xp, wp, nr_used < 16 ? nr_used : 16, k0, kl, y, ldy);                 \
        if (nr_used > 16)                                                                  \
            kern_rows(R, xp, wp + 16, nr_used - 16, k0, kl, y + 16, ldy);                  \
    }
KERN(1) KERN(2) KERN(3) KERN(4) KERN(5) KERN(6)
#undef KERN

typedef void (*kern_fn)(const float *, const float *, int, int64_t, int64_t, float *, int64_t);

TGT static void kernel_avx2(const float *xp, int mr, int mr_used, const float *wp, int nr_used,
                            int64_t k0, int64_t kl, float *y, int64_t ldy)
{
    static const kern_fn fns[MR + 1] = {NULL, kern_1, kern_2, kern_3, kern_4, kern_5, kern_6};
    DS4_ASSERT(mr == MR && mr_used >= 1 && mr_used <= MR);
    fns[mr_used](xp, wp, nr_used, k0, kl, y, ldy);
}

const ds4__kgemm_ops_t ds4__kgemm_avx2 = {
    .name = "avx2",
    .mr = MR,
    .act_quant = act_quant_avx2,
    .pack_x = ds4__kgemm_pack_x_c,
    .pack_w = pack_w_avx2,
    .kernel = kernel_avx2,
};

#endif /* __x86_64__ */
