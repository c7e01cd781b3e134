/*
 * ds4/numeric.h - scalar conversions of V4's number formats, bit exact.
 *
 *   bf16     : upper 16 bits of an IEEE f32; f32 -> bf16 rounds to nearest even (NaN kept).
 *   e4m3fn   : FP8, 1-4-3, bias 7, max 448, no inf, 0x7f/0xff NaN; f32 -> e4m3 rounds to nearest
 *              even and saturates to +-448 (the reference clamps to +-448 before casting).
 *   e2m1     : FP4, codes 0..7 = 0, 0.5, 1, 1.5, 2, 3, 4, 6; 8..15 the same negated.
 *              Packed two per byte: element 2k in the low nibble, 2k+1 in the high nibble.
 *   ue8m0    : scale byte e => 2^(e - 127) (e = 255 is NaN).
 *
 * Header-only (static inline) so every layer, the KV format and the kernels share one
 * definition.
 */
#ifndef DS4_NUMERIC_H
#define DS4_NUMERIC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline float ds4_bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline uint32_t ds4_f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float ds4_bf16_to_f32(uint16_t h)
{
    return ds4_bits_to_f32((uint32_t)h << 16);
}

static inline uint16_t ds4_f32_to_bf16(float f)
{
    uint32_t u = ds4_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Rounds an f32 to the nearest bf16 value, returned as f32. */
static inline float ds4_round_bf16(float f)
{
    return ds4_bf16_to_f32(ds4_f32_to_bf16(f));
}

static inline float ds4_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        float v = (float)man * 0x1p-24f; /* exact: man < 2^10 */
        return sign ? -v : v;
    }
    if (exp == 31)
        return ds4_bits_to_f32(sign | 0x7f800000u | (man << 13));
    return ds4_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline float ds4_e8m0_to_f32(uint8_t e)
{
    if (e == 0xff)
        return NAN;
    if (e == 0)
        return 0x1p-127f;
    return ds4_bits_to_f32((uint32_t)e << 23);
}

static inline float ds4_e4m3_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b >> 7) << 31;
    uint32_t exp = (b >> 3) & 0xfu;
    uint32_t man = b & 0x7u;
    if (exp == 0xf && man == 0x7)
        return NAN;
    if (exp == 0) {
        float v = (float)man * 0x1p-9f; /* subnormal: man/8 * 2^-6, exact */
        return sign ? -v : v;
    }
    /* normal: rebias 7 -> 127, mantissa 3 -> 23 bits (bit construction, no libm) */
    return ds4_bits_to_f32(sign | ((exp + 120u) << 23) | (man << 20));
}

/* f32 -> e4m3fn, round to nearest even, saturating to +-448. */
static inline uint8_t ds4_f32_to_e4m3(float f)
{
    uint8_t sign = signbit(f) ? 0x80 : 0x00;
    float a = fabsf(f);
    if (isnan(f))
        return 0x7f;
    if (a >= 448.0f)
        return sign | 0x7e;
    if (a < 0x1p-6f) {
        /* subnormal grid step 2^-9: codes 0..7 (8 = smallest normal 2^-6) */
        float q = nearbyintf(a * 512.0f); /* default rounding mode: nearest even */
        return sign | (uint8_t)q;
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    int exp = e - 1 + 7;     /* biased exponent of 1.xxx form */
    float frac = (m * 2.0f - 1.0f) * 8.0f; /* 0..8 */
    float q = nearbyintf(frac);
    if (q >= 8.0f) {
        q = 0.0f;
        exp += 1;
    }
    if (exp > 15 || (exp == 15 && q > 6.0f))
        return sign | 0x7e;
    return sign | (uint8_t)(exp << 3) | (uint8_t)q;
}

static inline float ds4_e2m1_to_f32(uint8_t code)
{
    static const float table[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = table[code & 7u];
    return (code & 8u) ? -v : v;
}

/* f32 -> e2m1 code, round to nearest even on the e2m1 grid, saturating to +-6. */
static inline uint8_t ds4_f32_to_e2m1(float f)
{
    uint8_t sign = signbit(f) ? 8u : 0u;
    float a = fabsf(f);
    uint8_t c;
    if (isnan(f))
        return 0;
    /* Midpoints between grid values; ties go to the even code (codes with even mantissa). */
    if (a <= 0.25f) c = 0;        /* tie 0.25 -> 0 (even) */
    else if (a < 0.75f) c = 1;
    else if (a <= 1.25f) c = 2;   /* tie 0.75 -> 1.0 (code 2, even); tie 1.25 -> 1.0 */
    else if (a < 1.75f) c = 3;
    else if (a <= 2.5f) c = 4;    /* tie 1.75 -> 2 (even); tie 2.5 -> 2 */
    else if (a < 3.5f) c = 5;
    else if (a <= 5.0f) c = 6;    /* tie 3.5 -> 4 (even); tie 5 -> 4 */
    else c = 7;
    return sign | c;
}

/* ue8m0 scale byte of a power-of-two scale 2^k (k in [-127, 127]). */
static inline uint8_t ds4_e8m0_from_exp(int k)
{
    return (uint8_t)(k + 127);
}

#ifdef __cplusplus
}
#endif
#endif /* DS4_NUMERIC_H */
