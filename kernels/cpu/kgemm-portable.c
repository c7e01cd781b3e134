/* K-blocked GEMM, portable level: plain C packers (also the reference layout for the vector
 * levels) and an fmaf kernel. */
#include "kgemm.h"

#include "ds4/log.h"
#include "ds4/numeric.h"

#include <math.h>
#include <string.h>

void ds4__kgemm_pack_x_c(const float *x, int64_t m, int64_t k, int mr, int64_t bstride,
                         float *xp)
{
    for (int64_t b0 = 0; b0 < k; b0 += KGEMM_KB) {
        int64_t len = k - b0 < KGEMM_KB ? k - b0 : KGEMM_KB;
        float *dst = xp + (b0 / KGEMM_KB) * bstride;
        for (int r = 0; r < mr; r++) {
            for (int64_t i = 0; i < len; i++)
                dst[i * mr + r] = r < m ? x[r * k + b0 + i] : 0.0f;
        }
    }
}

/* Row `row` of w, inputs [k0, k0 + kl), dequantised exactly (the values of
 * ds4_weight_dequant_rows) to dst[i * stride]. */
static void row_values(const ds4_weight_t *w, int64_t row, int64_t k0, int64_t kl, float *dst,
                       int64_t stride)
{
    int64_t k = w->k;
    if (w->type == DS4_W_FP8) {
        const uint8_t *src = (const uint8_t *)w->data + row * k;
        const uint8_t *sc = w->scale + (row / 128) * ((k + 127) / 128);
        for (int64_t i = 0; i < kl; i++) {
            int64_t c = k0 + i;
            dst[i * stride] = ds4_e4m3_to_f32(src[c]) * ds4_e8m0_to_f32(sc[c / 128]);
        }
        return;
    }
    DS4_ASSERT(w->type == DS4_W_FP4);
    const uint8_t *src = (const uint8_t *)w->data + row * (k / 2);
    const uint8_t *sc = w->scale + row * (k / 32);
    for (int64_t i = 0; i < kl; i++) {
        int64_t c = k0 + i;
        uint8_t byte = src[c / 2];
        uint8_t code = (c & 1) != 0 ? (uint8_t)(byte >> 4) : (uint8_t)(byte & 15u);
        dst[i * stride] = ds4_e2m1_to_f32(code) * ds4_e8m0_to_f32(sc[c / 32]);
    }
}

void ds4__kgemm_pack_w_c(const ds4_weight_t *w, int64_t r0, int64_t nr, int64_t k0, int64_t kl,
                         float *wp)
{
    int64_t n_panels = (nr + KGEMM_NR - 1) / KGEMM_NR;
    for (int64_t p = 0; p < n_panels; p++) {
        float *panel = wp + p * kl * KGEMM_NR;
        for (int j = 0; j < KGEMM_NR; j++) {
            int64_t t = p * KGEMM_NR + j;
            if (t < nr) {
                row_values(w, r0 + t, k0, kl, panel + j, KGEMM_NR);
            } else {
                for (int64_t i = 0; i < kl; i++)
                    panel[i * KGEMM_NR + j] = 0.0f;
            }
        }
    }
}

#define PORTABLE_MR 4

static void kernel_c(const float *xp, int mr, int mr_used, const float *wp, int nr_used,
                     int64_t k0, int64_t kl, float *y, int64_t ldy)
{
    for (int64_t b = 0; b < kl; b += KGEMM_KB) {
        int64_t bl = kl - b < KGEMM_KB ? kl - b : KGEMM_KB;
        float acc[PORTABLE_MR][KGEMM_NR];
        memset(acc, 0, sizeof(acc));
        for (int64_t i = b; i < b + bl; i++) {
            const float *wi = wp + i * KGEMM_NR;
            for (int r = 0; r < mr_used; r++) {
                float xv = xp[i * mr + r];
                for (int j = 0; j < KGEMM_NR; j++)
                    acc[r][j] = fmaf(xv, wi[j], acc[r][j]);
            }
        }
        for (int r = 0; r < mr_used; r++) {
            float *yr = y + r * ldy;
            for (int j = 0; j < nr_used; j++)
                yr[j] = k0 + b == 0 ? acc[r][j] : yr[j] + acc[r][j];
        }
    }
}

const ds4__kgemm_ops_t ds4__kgemm_portable = {
    .name = "portable",
    .mr = PORTABLE_MR,
    .act_quant = ds4__act_quant_row_c,
    .pack_x = ds4__kgemm_pack_x_c,
    .pack_w = ds4__kgemm_pack_w_c,
    .kernel = kernel_c,
};
