/* CPU numerics shared by the backend and the engine: activation quantisation (FP8/FP4
 * simulation exactly as the reference kernels do it) and weight dequantisation. */
#include "ds4/backend.h"
#include "ds4/numeric.h"
#include "kgemm.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

static float g_e4m3_lut[256];
static float g_e2m1_lut[16];
static pthread_once_t g_lut_once = PTHREAD_ONCE_INIT;

static void lut_init(void)
{
    for (int i = 0; i < 256; i++)
        g_e4m3_lut[i] = ds4_e4m3_to_f32((uint8_t)i);
    for (int i = 0; i < 16; i++)
        g_e2m1_lut[i] = ds4_e2m1_to_f32((uint8_t)i);
}

/* 2^ceil(log2(v)) by the exponent/mantissa bits of the fp32 product, as fast_round_scale
 * does (v = amax * fl32(1/max)); returns the exponent k. */
static int round_scale_exp(float amax, float inv_max)
{
    uint32_t b = ds4_f32_to_bits(amax * inv_max);
    int e = (int)((b >> 23) & 0xffu);
    return e - 127 + ((b & 0x7fffffu) != 0 ? 1 : 0);
}

/* Value of ds4_f32_to_e4m3(q) for |q| <= 448, without building the code byte: normal range
 * by round-to-nearest-even of the fp32 mantissa to 3 bits, subnormals on the 2^-9 grid. */
static inline float e4m3_round(float q)
{
    float a = fabsf(q);
    if (a < 0.015625f) /* 2^-6: e4m3 subnormal grid */
        return rintf(q * 512.0f) * (1.0f / 512.0f);
    uint32_t u = ds4_f32_to_bits(q);
    u += 0x7ffffu + ((u >> 20) & 1u);
    return ds4_bits_to_f32(u & 0xfff00000u);
}

int ds4__act_scale_fp8(float amax, float *s, float *inv_s)
{
    if (!(amax >= 1e-4f))
        amax = 1e-4f;
    int k = round_scale_exp(amax, (float)(1.0 / 448.0));
    *s = ldexpf(1.0f, k);
    *inv_s = ldexpf(1.0f, -k);
    return k;
}

void ds4_act_quant_fp8(const float *x, int64_t n, int block, float *out, uint8_t *codes,
                       uint8_t *scales)
{
    pthread_once(&g_lut_once, lut_init);
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        int64_t len = ((block) < (n - b0) ? (block) : (n - b0));
        float amax = 0.0f;
        for (int64_t i = 0; i < len; i++) {
            float a = fabsf(x[b0 + i]);
            amax = a > amax ? a : amax;
        }
        float s, inv_s;
        int k = ds4__act_scale_fp8(amax, &s, &inv_s);
        if (codes == NULL) {
            for (int64_t i = 0; i < len; i++) {
                float q = x[b0 + i] * inv_s;
                q = q > 448.0f ? 448.0f : (q < -448.0f ? -448.0f : q);
                out[b0 + i] = e4m3_round(q) * s;
            }
        } else {
            for (int64_t i = 0; i < len; i++) {
                float q = x[b0 + i] * inv_s;
                q = q > 448.0f ? 448.0f : (q < -448.0f ? -448.0f : q);
                uint8_t c = ds4_f32_to_e4m3(q);
                codes[b0 + i] = c;
                out[b0 + i] = g_e4m3_lut[c] * s;
            }
        }
        if (scales != NULL)
            scales[b0 / block] = ds4_e8m0_from_exp(k);
    }
}

void ds4_act_quant_fp4(const float *x, int64_t n, float *out, uint8_t *packed, uint8_t *scales)
{
    pthread_once(&g_lut_once, lut_init);
    const float inv6 = (float)(1.0 / 6.0);
    const float floor_amax = 6.0f * ldexpf(1.0f, -126);
    for (int64_t b0 = 0; b0 < n; b0 += 32) {
        float amax = 0.0f;
        for (int64_t i = 0; i < 32; i++) {
            float a = fabsf(x[b0 + i]);
            amax = a > amax ? a : amax;
        }
        if (!(amax >= floor_amax))
            amax = floor_amax;
        int k = round_scale_exp(amax, inv6);
        float s = ldexpf(1.0f, k);
        float inv_s = ldexpf(1.0f, -k);
        for (int64_t i = 0; i < 32; i++) {
            float q = x[b0 + i] * inv_s;
            q = q > 6.0f ? 6.0f : (q < -6.0f ? -6.0f : q);
            uint8_t c = ds4_f32_to_e2m1(q);
            if (packed != NULL) {
                int64_t j = b0 + i;
                if ((j & 1) == 0)
                    packed[j >> 1] = c;
                else
                    packed[j >> 1] = (uint8_t)(packed[j >> 1] | (c << 4));
            }
            out[b0 + i] = g_e2m1_lut[c] * s;
        }
        if (scales != NULL)
            scales[b0 / 32] = ds4_e8m0_from_exp(k);
    }
}

void ds4_weight_dequant_rows(const ds4_weight_t *w, int64_t r0, int64_t nr, float *out)
{
    pthread_once(&g_lut_once, lut_init);
    int64_t k = w->k;
    switch (w->type) {
    case DS4_W_F32:
        memcpy(out, (const float *)w->data + r0 * k, (size_t)(nr * k) * sizeof(float));
        break;
    case DS4_W_BF16: {
        const uint16_t *src = (const uint16_t *)w->data + r0 * k;
        for (int64_t i = 0; i < nr * k; i++)
            out[i] = ds4_bf16_to_f32(src[i]);
        break;
    }
    case DS4_W_FP8: {
        int64_t kb = (k + 127) / 128;
        for (int64_t r = 0; r < nr; r++) {
            int64_t row = r0 + r;
            const uint8_t *src = (const uint8_t *)w->data + row * k;
            const uint8_t *sc = w->scale + (row / 128) * kb;
            float *dst = out + r * k;
            for (int64_t b = 0; b < kb; b++) {
                float s = ds4_e8m0_to_f32(sc[b]);
                int64_t end = (b + 1) * 128 < k ? (b + 1) * 128 : k;
                for (int64_t i = b * 128; i < end; i++)
                    dst[i] = g_e4m3_lut[src[i]] * s;
            }
        }
        break;
    }
    case DS4_W_FP4: {
        int64_t kb = k / 32;
        for (int64_t r = 0; r < nr; r++) {
            int64_t row = r0 + r;
            const uint8_t *src = (const uint8_t *)w->data + row * (k / 2);
            const uint8_t *sc = w->scale + row * kb;
            float *dst = out + r * k;
            for (int64_t b = 0; b < kb; b++) {
                float s = ds4_e8m0_to_f32(sc[b]);
                for (int64_t i = 0; i < 16; i++) {
                    uint8_t byte = src[b * 16 + i];
                    dst[b * 32 + 2 * i] = g_e2m1_lut[byte & 15u] * s;
                    dst[b * 32 + 2 * i + 1] = g_e2m1_lut[byte >> 4] * s;
                }
            }
        }
        break;
    }
    }
}

ds4_weight_t ds4_weight_rows(const ds4_weight_t *w, int64_t r0, int64_t n)
{
    ds4_weight_t v = *w;
    v.n = n;
    if (w->f32 != NULL)
        v.f32 = w->f32 + r0 * w->k;
    switch (w->type) {
    case DS4_W_F32:
        v.data = (const float *)w->data + r0 * w->k;
        break;
    case DS4_W_BF16:
        v.data = (const uint16_t *)w->data + r0 * w->k;
        break;
    case DS4_W_FP8:
        v.data = (const uint8_t *)w->data + r0 * w->k;
        v.scale = w->scale + (r0 / 128) * ((w->k + 127) / 128);
        break;
    case DS4_W_FP4:
        v.data = (const uint8_t *)w->data + r0 * (w->k / 2);
        v.scale = w->scale + r0 * (w->k / 32);
        break;
    }
    return v;
}

void ds4__act_quant_row_c(const float *x, int64_t n, int block, float *out)
{
    ds4_act_quant_fp8(x, n, block, out, NULL, NULL);
}
