/* ds4/numeric.h and the CPU quantisers against brute-force nearest-value search. */
#include "test.h"

#include "ds4/backend.h"
#include "ds4/numeric.h"

#include <math.h>
#include <stdlib.h>

/* Nearest representable value among vals[0..n) to x, ties to the code with even mantissa
 * (lowest bit 0), as round-to-nearest-even does. Returns the code. */
static int nearest(const float *vals, int n, float x, int mant_mask)
{
    int best = -1;
    double bd = INFINITY;
    for (int c = 0; c < n; c++) {
        if (isnan(vals[c]))
            continue;
        double d = fabs((double)vals[c] - (double)x);
        if (d < bd || (d == bd && (c & mant_mask) == 0 && (best & mant_mask) != 0)) {
            bd = d;
            best = c;
        }
    }
    return best;
}

static void test_e4m3_brute(void)
{
    float vals[128];
    for (int c = 0; c < 128; c++)
        vals[c] = ds4_e4m3_to_f32((uint8_t)c);
    DS4_CHECK(vals[0x7e] == 448.0f && vals[1] == ldexpf(1, -9) && vals[8] == ldexpf(1, -6));
    int bad = 0;
    /* every bf16 value in [0, 448] plus the midpoints of the e4m3 grid */
    for (uint32_t h = 0; h < 0x7f80; h++) {
        float x = ds4_bf16_to_f32((uint16_t)h);
        if (x > 448.0f)
            break;
        int want = nearest(vals, 127, x, 1);
        int got = ds4_f32_to_e4m3(x);
        int gotn = ds4_f32_to_e4m3(-x);
        if (got != want || gotn != (want | 0x80))
            bad++;
    }
    for (int c = 0; c + 1 < 127; c++) {
        float mid = (vals[c] + vals[c + 1]) * 0.5f;
        int want = nearest(vals, 127, mid, 1);
        if (ds4_f32_to_e4m3(mid) != want)
            bad++;
    }
    DS4_CHECKF(bad == 0, "%d e4m3 mismatches", bad);
    DS4_CHECK(ds4_f32_to_e4m3(1000.0f) == 0x7e && ds4_f32_to_e4m3(-1000.0f) == 0xfe);
}

static void test_e2m1_brute(void)
{
    float vals[8];
    for (int c = 0; c < 8; c++)
        vals[c] = ds4_e2m1_to_f32((uint8_t)c);
    int bad = 0;
    for (uint32_t h = 0; h < 0x7f80; h++) {
        float x = ds4_bf16_to_f32((uint16_t)h);
        if (x > 6.0f)
            break;
        int want = nearest(vals, 8, x, 1);
        if (ds4_f32_to_e2m1(x) != want || ds4_f32_to_e2m1(-x) != (want | 8))
            bad++;
    }
    DS4_CHECKF(bad == 0, "%d e2m1 mismatches", bad);
}

static void test_bf16_round(void)
{
    int bad = 0;
    srand(7);
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = ((uint32_t)rand() << 16) ^ (uint32_t)rand();
        float x = ds4_bits_to_f32(u & 0x7f3fffffu); /* finite, below the top binade */
        float lo = ds4_bits_to_f32(ds4_f32_to_bits(x) & 0xffff0000u);
        float hi = ds4_bits_to_f32((ds4_f32_to_bits(x) & 0xffff0000u) + 0x10000u);
        double dl = (double)x - lo, dh = (double)hi - x;
        float want = dl < dh ? lo : (dh < dl ? hi : (((ds4_f32_to_bits(lo) >> 16) & 1) ? hi : lo));
        if (ds4_round_bf16(x) != want)
            bad++;
    }
    DS4_CHECKF(bad == 0, "%d bf16 mismatches", bad);
}

/* The fast value path of ds4_act_quant_fp8 (no code bytes) equals the code path bitwise. */
static void test_act_quant_fast_path(void)
{
    enum { N = 1 << 16 };
    static float x[N], a[N], b[N];
    static uint8_t codes[N], sc[N / 64];
    uint32_t st = 12345;
    for (int i = 0; i < N; i++) {
        st = st * 1664525u + 1013904223u;
        /* bf16 values over many binades, including ties and subnormal-scaled ones */
        float v = ldexpf((float)((st >> 8) & 0xff) / 128.0f - 1.0f, (int)((st >> 20) % 40) - 30);
        x[i] = ds4_round_bf16(v);
    }
    ds4_act_quant_fp8(x, N, 64, a, NULL, NULL);
    ds4_act_quant_fp8(x, N, 64, b, codes, sc);
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += ds4_f32_to_bits(a[i]) != ds4_f32_to_bits(b[i]);
    DS4_CHECKF(bad == 0, "%d fast-path mismatches", bad);
}

static void test_act_quant_scale(void)
{
    /* amax 448 -> scale 1; amax 449 -> 2; tiny block -> clamp 1e-4 */
    float x[128] = {0}, out[128];
    uint8_t codes[128], sc[1];
    x[0] = 448.0f;
    x[1] = 1.0f;
    ds4_act_quant_fp8(x, 128, 128, out, codes, sc);
    DS4_CHECK_EQ_INT(sc[0], 127);
    DS4_CHECK(out[0] == 448.0f && out[1] == 1.0f);
    x[0] = 449.0f;
    ds4_act_quant_fp8(x, 128, 128, out, codes, sc);
    DS4_CHECK_EQ_INT(sc[0], 128);
    float y[32] = {0}, yo[32];
    uint8_t pk[16], s4[1];
    y[0] = 6.0f;
    y[1] = 1.25f;
    ds4_act_quant_fp4(y, 32, yo, pk, s4);
    /* 6 * fl32(1/6) rounds to exactly 1.0f -> scale 1 */
    DS4_CHECK_EQ_INT(s4[0], 127);
    DS4_CHECK(yo[0] == 6.0f && yo[1] == 1.0f);
    y[0] = 6.5f; /* -> scale 2: 6.5/2 = 3.25 -> 3, 1.25/2 = 0.625 -> 0.5 */
    ds4_act_quant_fp4(y, 32, yo, pk, s4);
    DS4_CHECK_EQ_INT(s4[0], 128);
    DS4_CHECK(yo[0] == 6.0f && yo[1] == 1.0f);
    DS4_CHECK_EQ_INT(pk[0], 0x15); /* low nibble code 5 (3.0), high nibble code 1 (0.5) */
}

int main(void)
{
    DS4_RUN(test_e4m3_brute);
    DS4_RUN(test_e2m1_brute);
    DS4_RUN(test_bf16_round);
    DS4_RUN(test_act_quant_scale);
    DS4_RUN(test_act_quant_fast_path);
    return ds4_test_finish();
}
