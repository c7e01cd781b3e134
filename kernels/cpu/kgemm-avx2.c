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

TGT static void pack_w_avx2(const ds4_weight_t *w, int64_t r0, int64_t nr, int64_t k0,
                            int64_t kl, float *wp)
{
    int64_t n_panels = (nr + KGEMM_NR - 1) / KGEMM_NR;
    for (int64_t q = 0; q < n_panels * 4; q++) {
        float *dst = wp + (q / 4) * kl * KGEMM_NR + (q % 4) * 8;
        for (int64_t i0 = 0; i0 < kl; i0 += 8) {
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
    .act_quant = ds4__act_quant_row_c,
    .pack_x = ds4__kgemm_pack_x_c,
    .pack_w = pack_w_avx2,
    .kernel = kernel_avx2,
};

#endif /* __x86_64__ */
