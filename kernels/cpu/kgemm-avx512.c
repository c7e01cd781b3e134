/* K-blocked GEMM, AVX-512 level (x86-64, selected at run time; no global -march): weights
 * dequantised 16 rows x 16 inputs at a time in registers and transposed into panels; a 12-row x
 * 32-output register-blocked kernel (24 accumulators) whose fmas run input by input, so each
 * output's block sum has the sequential order of the portable level. */
#include "kgemm.h"

#if defined(__x86_64__)

#include "ds4/log.h"
#include "ds4/numeric.h"

#include <immintrin.h>
#include <string.h>

#define TGT __attribute__((target("avx512f,fma")))
#define TGT_INLINE static inline __attribute__((always_inline, target("avx512f,fma")))
#define MR 12

/* e4m3 codes (one per 32-bit lane) -> exact f32 values (ds4_e4m3_to_f32): normals by bit
 * construction, subnormals (exponent 0) as man * 2^-9, 0x7f/0xff NaN. */
TGT_INLINE __m512 e4m3_decode(__m512i c)
{
    const __m512i m7 = _mm512_and_si512(c, _mm512_set1_epi32(0x7f));
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(c, _mm512_set1_epi32(0x80)), 24);
    __m512i norm = _mm512_add_epi32(_mm512_slli_epi32(m7, 20), _mm512_set1_epi32(120 << 23));
    __m512 sub = _mm512_mul_ps(_mm512_cvtepi32_ps(m7), _mm512_set1_ps(0x1p-9f));
    __mmask16 is_sub = _mm512_cmplt_epu32_mask(m7, _mm512_set1_epi32(8));
    __m512i v = _mm512_mask_blend_epi32(is_sub, norm, _mm512_castps_si512(sub));
    v = _mm512_or_si512(v, sign);
    __mmask16 is_nan = _mm512_cmpeq_epi32_mask(m7, _mm512_set1_epi32(0x7f));
    v = _mm512_mask_blend_epi32(is_nan, v, _mm512_set1_epi32(0x7fc00000));
    return _mm512_castsi512_ps(v);
}

/* 16 inputs [c0, c0 + len) of row `row` (len <= 16, the rest zero), exact f32. */
TGT_INLINE __m512 row16(const ds4_weight_t *w, int64_t row, int64_t c0, int64_t len)
{
    int64_t k = w->k;
    if (w->type == DS4_W_FP8) {
        const uint8_t *src = (const uint8_t *)w->data + row * k + c0;
        __m128i bytes;
        if (len >= 16) {
            bytes = _mm_loadu_si128((const __m128i *)src);
        } else {
            uint8_t tmp[16] = {0};
            memcpy(tmp, src, (size_t)len);
            bytes = _mm_loadu_si128((const __m128i *)tmp);
        }
        float s = ds4_e8m0_to_f32(w->scale[(row / 128) * ((k + 127) / 128) + c0 / 128]);
        return _mm512_mul_ps(e4m3_decode(_mm512_cvtepu8_epi32(bytes)), _mm512_set1_ps(s));
    }
    /* FP4: k is a multiple of 32, so len is 16; 8 bytes, element 2i low nibble of byte i */
    const __m512 table = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f,
                                        -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
    const uint8_t *src = (const uint8_t *)w->data + row * (k / 2) + c0 / 2;
    __m128i bytes = _mm_loadl_epi64((const __m128i *)src);
    __m512i d = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, bytes));
    const __m512i shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(d, shifts), _mm512_set1_epi32(15));
    float s = ds4_e8m0_to_f32(w->scale[row * (k / 32) + c0 / 32]);
    return _mm512_mul_ps(_mm512_permutexvar_ps(idx, table), _mm512_set1_ps(s));
}

/* In-register 16x16 transpose: r[i] = row i -> c[j] = column j. */
TGT_INLINE void transpose16(const __m512 r[16], __m512 c[16])
{
    __m512 t[16], u[16];
#pragma GCC unroll 16
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d e = _mm512_castps_pd(t[4 * i + 2]), f = _mm512_castps_pd(t[4 * i + 3]);
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, e));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, e));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, f));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, f));
    }
    /* u[4i + q], 128-bit lane L: rows 4i..4i+3 of column 4L + q */
#pragma GCC unroll 16
    for (int q = 0; q < 4; q++) {
        __m512 a = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88);
        __m512 b = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xdd);
        __m512 d = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88);
        __m512 e = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xdd);
        c[q] = _mm512_shuffle_f32x4(a, d, 0x88);
        c[8 + q] = _mm512_shuffle_f32x4(a, d, 0xdd);
        c[4 + q] = _mm512_shuffle_f32x4(b, e, 0x88);
        c[12 + q] = _mm512_shuffle_f32x4(b, e, 0xdd);
    }
}

/* ds4_act_quant_fp8 without codes, 16 lanes at a time with the scalar code's operations: amax
 * ignores NaN (max_ps returns its second operand on NaN), the clamp keeps NaN (min/max with the
 * bound first), e4m3 rounding by the same bit arithmetic, subnormals by round-to-nearest-even
 * on the 2^-9 grid. */
TGT static void act_quant_avx512(const float *x, int64_t n, int block, float *out)
{
    const __m512 lim = _mm512_set1_ps(448.0f), nlim = _mm512_set1_ps(-448.0f);
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        int64_t len = block < n - b0 ? block : n - b0;
        __m512 amax = _mm512_setzero_ps();
        for (int64_t i = 0; i < len; i += 16) {
            __mmask16 m = len - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - i)) - 1u);
            __m512 v = _mm512_maskz_loadu_ps(m, x + b0 + i);
            __m512 a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), absmask));
            amax = _mm512_max_ps(a, amax);
        }
        float s, inv_s;
        ds4__act_scale_fp8(_mm512_reduce_max_ps(amax), &s, &inv_s);
        const __m512 vs = _mm512_set1_ps(s), vinv = _mm512_set1_ps(inv_s);
        for (int64_t i = 0; i < len; i += 16) {
            __mmask16 m = len - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - i)) - 1u);
            __m512 q = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + b0 + i), vinv);
            q = _mm512_max_ps(nlim, _mm512_min_ps(lim, q));
            __m512i u = _mm512_castps_si512(q);
            __m512 aq = _mm512_castsi512_ps(_mm512_and_si512(u, absmask));
            __mmask16 sub = _mm512_cmp_ps_mask(aq, _mm512_set1_ps(0.015625f), _CMP_LT_OQ);
            __m512 rs = _mm512_roundscale_ps(_mm512_mul_ps(q, _mm512_set1_ps(512.0f)),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            rs = _mm512_mul_ps(rs, _mm512_set1_ps(1.0f / 512.0f));
            __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(1));
            u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7ffff)));
            u = _mm512_and_si512(u, _mm512_set1_epi32((int)0xfff00000u));
            __m512 r = _mm512_mask_blend_ps(sub, _mm512_castsi512_ps(u), rs);
            _mm512_mask_storeu_ps(out + b0 + i, m, _mm512_mul_ps(r, vs));
        }
    }
}

/* Full 16 rows x 16 inputs of an FP8 weight (one scale: rows share a 128-row block, inputs a
 * 128-input block), dequantised and transposed to dst[i * KGEMM_NR + t]. */
TGT_INLINE void tile16_fp8(const uint8_t *src, int64_t k, __m512 s, float *dst)
{
    __m512 r[16], c[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)(src + t * k));
        r[t] = e4m3_decode(_mm512_cvtepu8_epi32(bytes));
    }
    transpose16(r, c);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        _mm512_store_ps(dst + i * KGEMM_NR, _mm512_mul_ps(c[i], s));
}

/* Full 16 rows x 16 inputs of an FP4 weight (rows kp bytes apart; s: the 16 rows' scales). */
TGT_INLINE void tile16_fp4(const uint8_t *src, int64_t kp, __m512 s, float *dst)
{
    const __m512 table = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f,
                                        -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
    const __m512i shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    __m512 r[16], c[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) {
        __m128i bytes = _mm_loadl_epi64((const __m128i *)(src + t * kp));
        __m512i d = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, bytes));
        __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(d, shifts), _mm512_set1_epi32(15));
        r[t] = _mm512_permutexvar_ps(idx, table);
    }
    transpose16(r, c);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        _mm512_store_ps(dst + i * KGEMM_NR, _mm512_mul_ps(c[i], s));
}

TGT static void pack_w_avx512(const ds4_weight_t *w, int64_t r0, int64_t nr, int64_t k0,
                              int64_t kl, float *wp)
{
    int64_t k = w->k;
    int64_t n_panels = (nr + KGEMM_NR - 1) / KGEMM_NR;
    for (int64_t q = 0; q < n_panels * 2; q++) {
        float *dst = wp + (q / 2) * kl * KGEMM_NR + (q % 2) * 16;
        int64_t row0 = r0 + q * 16;
        bool full_rows = q * 16 + 16 <= nr;
        int64_t i0 = 0;
        if (full_rows && w->type == DS4_W_FP8) {
            /* k0 is block aligned and kl <= 128: one scale for the whole 16-row strip */
            __m512 s = _mm512_set1_ps(
                ds4_e8m0_to_f32(w->scale[(row0 / 128) * ((k + 127) / 128) + k0 / 128]));
            const uint8_t *src = (const uint8_t *)w->data + row0 * k + k0;
            for (; i0 + 16 <= kl; i0 += 16)
                tile16_fp8(src + i0, k, s, dst + i0 * KGEMM_NR);
        } else if (full_rows) {
            const uint8_t *src = (const uint8_t *)w->data + row0 * (k / 2) + k0 / 2;
            for (; i0 + 16 <= kl; i0 += 16) {
                /* the 16 rows' scales of this 32-input group */
                float sv[16];
                for (int t = 0; t < 16; t++)
                    sv[t] = ds4_e8m0_to_f32(w->scale[(row0 + t) * (k / 32) + (k0 + i0) / 32]);
                tile16_fp4(src + i0 / 2, k / 2, _mm512_loadu_ps(sv), dst + i0 * KGEMM_NR);
            }
        }
        /* ragged: rows past nr (zero) or a last partial 16 inputs (FP8 with k % 16 != 0) */
        for (; i0 < kl; i0 += 16) {
            int64_t len = kl - i0 < 16 ? kl - i0 : 16;
            __m512 r[16], c[16];
            for (int t = 0; t < 16; t++) {
                int64_t tr = q * 16 + t;
                r[t] = tr < nr ? row16(w, r0 + tr, k0 + i0, len) : _mm512_setzero_ps();
            }
            transpose16(r, c);
            for (int64_t i = 0; i < len; i++)
                _mm512_store_ps(dst + (i0 + i) * KGEMM_NR, c[i]);
        }
    }
}

/* R rows (a compile-time constant after inlining) x 32 outputs over one K chunk. */
TGT_INLINE void kern_rows(const int R, const float *xp, const float *wp, int nr_used,
                          int64_t k0, int64_t kl, float *y, int64_t ldy)
{
    __mmask16 m0 = nr_used >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr_used) - 1u);
    __mmask16 m1 = nr_used >= 32 ? (__mmask16)0xffff
                   : nr_used > 16 ? (__mmask16)((1u << (nr_used - 16)) - 1u) : (__mmask16)0;
    /* the outputs' lines arrive while the block's fmas run (rows are ldy apart: no stream) */
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
        _mm_prefetch((const char *)(y + r * ldy), _MM_HINT_T0);
        _mm_prefetch((const char *)(y + r * ldy + 16), _MM_HINT_T0);
    }
    for (int64_t b = 0; b < kl; b += KGEMM_KB) {
        int64_t bl = kl - b < KGEMM_KB ? kl - b : KGEMM_KB;
        __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            acc0[r] = _mm512_setzero_ps();
            acc1[r] = _mm512_setzero_ps();
        }
        const float *xi = xp + b * MR;
        const float *wi = wp + b * KGEMM_NR;
        for (int64_t i = 0; i < bl; i++) {
            __m512 w0 = _mm512_load_ps(wi), w1 = _mm512_load_ps(wi + 16);
#pragma GCC unroll 16
            for (int r = 0; r < R; r++) {
                __m512 xv = _mm512_set1_ps(xi[r]);
                acc0[r] = _mm512_fmadd_ps(xv, w0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(xv, w1, acc1[r]);
            }
            xi += MR;
            wi += KGEMM_NR;
        }
        if (k0 + b == 0) {
#pragma GCC unroll 16
            for (int r = 0; r < R; r++) {
                _mm512_mask_storeu_ps(y + r * ldy, m0, acc0[r]);
                _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc1[r]);
            }
        } else {
#pragma GCC unroll 16
            for (int r = 0; r < R; r++) {
                __m512 y0 = _mm512_maskz_loadu_ps(m0, y + r * ldy);
                __m512 y1 = _mm512_maskz_loadu_ps(m1, y + r * ldy + 16);
                _mm512_mask_storeu_ps(y + r * ldy, m0, _mm512_add_ps(y0, acc0[r]));
                _mm512_mask_storeu_ps(y + r * ldy + 16, m1, _mm512_add_ps(y1, acc1[r]));
            }
        }
    }
}

#define KERN(R)                                                                            \
    TGT static void kern_##R(const float *xp, const float *wp, int nr_used, int64_t k0,    \
                             int64_t kl, float *y, int64_t ldy)                            \
    {                                                                                      \
        kern_rows(R, xp, wp, nr_used, k0, kl, y, ldy);                                     \
    }
KERN(1) KERN(2) KERN(3) KERN(4) KERN(5) KERN(6) KERN(7) KERN(8) KERN(9) KERN(10) KERN(11)
KERN(12)
#undef KERN

typedef void (*kern_fn)(const float *, const float *, int, int64_t, int64_t, float *, int64_t);

TGT static void kernel_avx512(const float *xp, int mr, int mr_used, const float *wp,
                              int nr_used, int64_t k0, int64_t kl, float *y, int64_t ldy)
{
    static const kern_fn fns[MR + 1] = {NULL,   kern_1, kern_2, kern_3,  kern_4,  kern_5, kern_6,
                                        kern_7, kern_8, kern_9, kern_10, kern_11, kern_12};
    DS4_ASSERT(mr == MR && mr_used >= 1 && mr_used <= MR);
    fns[mr_used](xp, wp, nr_used, k0, kl, y, ldy);
}

const ds4__kgemm_ops_t ds4__kgemm_avx512 = {
    .name = "avx512",
    .mr = MR,
    .act_quant = act_quant_avx512,
    .pack_x = ds4__kgemm_pack_x_c,
    .pack_w = pack_w_avx512,
    .kernel = kernel_avx512,
};

#endif /* __x86_64__ */
