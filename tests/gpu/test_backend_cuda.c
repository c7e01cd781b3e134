/*
 * The CUDA backend against the CPU backend (the reference), op by op, on random weights of every
 * weight type, with a normalised-error tolerance per op. Both backends quantise activations to
 * e4m3 identically (bit-exact scale and rounding rules), so the remaining difference is fp32
 * summation order.
 */
#include "ds4/backend.h"
#include "ds4/numeric.h"
#include "ds4/status.h"
#include "test.h"

#include <stdint.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static uint8_t brand(void)
{
    return (uint8_t)(frand() * 127.0f + 128.0f);
}

/* max|a-b| / max|b| over n values. */
static double norm_err(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - (double)b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / den;
}

static ds4_backend_h g_cpu, g_gpu;
static const ds4_backend_ops_t *g_cpu_ops, *g_gpu_ops;

static void check_matmul(ds4_wtype_t type, int64_t m, int64_t n, int64_t k, unsigned flags)
{
    size_t data_bytes = 0, scale_bytes = 0;
    switch (type) {
    case DS4_W_F32: data_bytes = (size_t)(n * k) * 4; break;
    case DS4_W_BF16: data_bytes = (size_t)(n * k) * 2; break;
    case DS4_W_FP8:
        data_bytes = (size_t)(n * k);
        scale_bytes = (size_t)(((n + 127) / 128) * ((k + 127) / 128));
        break;
    case DS4_W_FP4:
        data_bytes = (size_t)(n * k / 2);
        scale_bytes = (size_t)(n * k / 32);
        break;
    }
    uint8_t *data = malloc(data_bytes);
    uint8_t *scale = scale_bytes > 0 ? malloc(scale_bytes) : NULL;
    float *x = malloc((size_t)(m * k) * sizeof(float));
    float *y_cpu = malloc((size_t)(m * n) * sizeof(float));
    float *y_gpu = malloc((size_t)(m * n) * sizeof(float));
    if (type == DS4_W_F32) {
        for (int64_t i = 0; i < n * k; i++)
            ((float *)data)[i] = frand();
    } else if (type == DS4_W_BF16) {
        for (int64_t i = 0; i < n * k; i++)
            ((uint16_t *)data)[i] = ds4_f32_to_bf16(frand());
    } else {
        for (size_t i = 0; i < data_bytes; i++) {
            uint8_t b = brand();
            if (type == DS4_W_FP8 && (b & 0x7f) == 0x7f)
                b = 0x3c; /* no NaN codes */
            data[i] = b;
        }
        for (size_t i = 0; i < scale_bytes; i++)
            scale[i] = (uint8_t)(120 + (brand() % 8));
    }
    for (int64_t i = 0; i < m * k; i++)
        x[i] = frand() * 3.0f;
    ds4_weight_t w = {.type = type, .n = n, .k = k, .data = data, .scale = scale};
    g_cpu_ops->matmul(g_cpu, &w, m, x, y_cpu, flags);
    g_gpu_ops->matmul(g_gpu, &w, m, x, y_gpu, flags);
    double err = norm_err(y_gpu, y_cpu, (size_t)(m * n));
    DS4_CHECKF(err <= 1e-5, "type %d m %lld n %lld k %lld: normalised error %g", (int)type,
               (long long)m, (long long)n, (long long)k, err);
    free(data);
    free(scale);
    free(x);
    free(y_cpu);
    free(y_gpu);
}

static void test_matmul_all_types(void)
{
    static const int64_t shapes[][3] = {{1, 256, 256}, {7, 384, 512}, {33, 128, 1024}};
    for (size_t s = 0; s < 3; s++) {
        for (int t = DS4_W_F32; t <= DS4_W_FP4; t++)
            check_matmul((ds4_wtype_t)t, shapes[s][0], shapes[s][1], shapes[s][2], 0);
        check_matmul(DS4_W_FP8, shapes[s][0], shapes[s][1], shapes[s][2],
                     DS4_MATMUL_NO_ACT_QUANT);
    }
}

static void test_gemm_f32(void)
{
    int64_t m = 19, n = 45, k = 77;
    float *a = malloc((size_t)(m * k) * sizeof(float));
    float *b = malloc((size_t)(n * k) * sizeof(float));
    float *c1 = malloc((size_t)(m * n) * sizeof(float));
    float *c2 = malloc((size_t)(m * n) * sizeof(float));
    for (int64_t i = 0; i < m * k; i++)
        a[i] = frand();
    for (int64_t i = 0; i < n * k; i++)
        b[i] = frand();
    g_cpu_ops->gemm_f32(g_cpu, m, n, k, a, b, c1);
    g_gpu_ops->gemm_f32(g_gpu, m, n, k, a, b, c2);
    DS4_CHECK(norm_err(c2, c1, (size_t)(m * n)) <= 1e-5);
    free(a);
    free(b);
    free(c1);
    free(c2);
}

int main(void)
{
    g_gpu_ops = ds4_backend_get("cuda");
    if (g_gpu_ops == NULL) {
        printf("skipped: CUDA backend not compiled in or no device present\n");
        return DS4_TEST_SKIP;
    }
    g_cpu_ops = ds4_backend_get("cpu");
    if (g_cpu_ops->create(2, &g_cpu) != DS4_OK || g_gpu_ops->create(2, &g_gpu) != DS4_OK) {
        printf("skipped: backend creation failed (no usable device)\n");
        return DS4_TEST_SKIP;
    }
    DS4_RUN(test_matmul_all_types);
    DS4_RUN(test_gemm_f32);
    g_gpu_ops->destroy(g_gpu);
    g_cpu_ops->destroy(g_cpu);
    return ds4_test_finish();
}
