/* CPU backend matmul: FP8 / FP4 / BF16 results against a double-precision reference on the
 * dequantised operands, and row independence (any batch split gives bitwise the same rows). */
#include "test.h"

#include "ds4/alloc.h"
#include "ds4/backend.h"
#include "ds4/numeric.h"

#include <math.h>
#include <string.h>

static uint32_t g_st = 99;
static float rnd(void)
{
    g_st = g_st * 1664525u + 1013904223u;
    return (float)((g_st >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void check_type(ds4_backend_h be, const ds4_backend_ops_t *ops, ds4_wtype_t type,
                       int64_t n, int64_t k)
{
    int64_t M = 300;
    float *x = ds4_malloc_array((size_t)(M * k), sizeof(float));
    for (int64_t i = 0; i < M * k; i++)
        x[i] = ds4_round_bf16(rnd());
    uint8_t *data = ds4_malloc((size_t)(n * k * 2));
    uint8_t *scale = ds4_malloc((size_t)(n * k / 32 + 16));
    ds4_weight_t w = {.type = type, .n = n, .k = k, .data = data, .scale = scale};
    if (type == DS4_W_FP8) {
        for (int64_t i = 0; i < n * k; i++)
            data[i] = (uint8_t)(g_st = g_st * 1664525u + 1013904223u) & 0x77;
        for (int64_t i = 0; i < ((n + 127) / 128) * ((k + 127) / 128); i++)
            scale[i] = (uint8_t)(120 + i % 5);
    } else if (type == DS4_W_FP4) {
        for (int64_t i = 0; i < n * k / 2; i++)
            data[i] = (uint8_t)((g_st = g_st * 1664525u + 1013904223u) >> 13);
        for (int64_t i = 0; i < n * k / 32; i++)
            scale[i] = (uint8_t)(124 + i % 4);
    } else {
        uint16_t *b = (uint16_t *)data;
        for (int64_t i = 0; i < n * k; i++)
            b[i] = ds4_f32_to_bf16(rnd() * 0.1f);
    }
    float *y = ds4_malloc_array((size_t)(M * n), sizeof(float));
    ops->matmul(be, &w, M, x, y, 0);
    /* reference on dequantised operands, activations quantised like act_quant */
    float *wd = ds4_malloc_array((size_t)(n * k), sizeof(float));
    ds4_weight_dequant_rows(&w, 0, n, wd);
    float *xq = ds4_malloc_array((size_t)k, sizeof(float));
    double worst = 0;
    for (int64_t r = 0; r < M; r += 37) {
        if (type == DS4_W_BF16)
            memcpy(xq, x + r * k, sizeof(float) * (size_t)k);
        else
            ds4_act_quant_fp8(x + r * k, k, 128, xq, NULL, NULL);
        for (int64_t o = 0; o < n; o++) {
            double acc = 0;
            for (int64_t i = 0; i < k; i++)
                acc += (double)xq[i] * wd[o * k + i];
            double d = fabs(acc - y[r * n + o]) / (fabs(acc) + 1e-3);
            worst = d > worst ? d : worst;
        }
    }
    DS4_CHECKF(worst < 1e-4, "type %d: rel err %.3g", type, worst);
    /* row independence: batches of 1, 7, 70 rows */
    static const int64_t splits[] = {1, 7, 70};
    for (size_t s = 0; s < 3; s++) {
        float *y2 = ds4_malloc_array((size_t)(M * n), sizeof(float));
        for (int64_t r = 0; r < M; r += splits[s]) {
            int64_t mm = M - r < splits[s] ? M - r : splits[s];
            ops->matmul(be, &w, mm, x + r * k, y2 + r * n, 0);
        }
        DS4_CHECKF(memcmp(y, y2, sizeof(float) * (size_t)(M * n)) == 0,
                   "type %d n %lld k %lld: batches of %lld differ", type, (long long)n,
                   (long long)k, (long long)splits[s]);
        ds4_free(y2);
    }
    ds4_free(x);
    ds4_free(data);
    ds4_free(scale);
    ds4_free(y);
    ds4_free(wd);
    ds4_free(xq);
}

static void test_matmul(void)
{
    const ds4_backend_ops_t *ops = ds4_backend_get("cpu");
    DS4_CHECK(ops != NULL);
    ds4_backend_h be;
    DS4_CHECK_STATUS(ops->create(2, &be), DS4_OK);
    check_type(be, ops, DS4_W_FP8, 256, 384);    /* small: 16-row blocks */
    check_type(be, ops, DS4_W_FP8, 1024, 1024);  /* large: 64-row blocks */
    check_type(be, ops, DS4_W_FP4, 256, 256);
    check_type(be, ops, DS4_W_BF16, 300, 256);
    ops->destroy(be);
}

int main(void)
{
    DS4_RUN(test_matmul);
    return ds4_test_finish();
}
