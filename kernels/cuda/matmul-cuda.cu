// CUDA matmul kernels with the CPU backend's numerics (kernels/cpu/quant.c):
//  - act_quant: per row, per 128 inputs, s = 2^ceil(log2(max(amax, 1e-4) * fl32(1/448))) taken
//    from the fp32 bits, q = e4m3_rne(clamp(x / s, +-448)), x' = q * s;
//  - weights dequantised while staged into shared memory (FP8 128x128 blocks, FP4 per-32 rows,
//    BF16, F32); fp32 accumulation.
#include "cuda-internal.h"

#include <cuda_fp8.h>
#include <stdint.h>

namespace {

constexpr int kTile = 32;   // output tile edge (rows of x, rows of W)
constexpr int kTileK = 32;  // k step staged in shared memory

__device__ __forceinline__ int round_scale_exp(float v)
{
    uint32_t b = __float_as_uint(v);
    int e = (int)((b >> 23) & 0xffu);
    return e - 127 + ((b & 0x7fffffu) != 0 ? 1 : 0);
}

__device__ __forceinline__ float e4m3_round(float q)
{
    __nv_fp8_storage_t c = __nv_cvt_float_to_fp8(q, __NV_SATFINITE, __NV_E4M3);
    __half_raw h = __nv_cvt_fp8_to_halfraw(c, __NV_E4M3);
    return __half2float(__half(h));
}

__device__ __forceinline__ float e8m0(uint8_t e)
{
    return e == 0 ? ldexpf(1.0f, -127) : __uint_as_float((uint32_t)e << 23);
}

__device__ __forceinline__ float e2m1(uint32_t code)
{
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = mag[code & 7u];
    return (code & 8u) ? -v : v;
}

// One block per (row, 128-input group); 128 threads. In-place on x.
__global__ void act_quant_fp8_kernel(float *x, int64_t k)
{
    __shared__ float red[128];
    int64_t row = blockIdx.y;
    int64_t i = (int64_t)blockIdx.x * 128 + threadIdx.x;
    float v = i < k ? x[row * k + i] : 0.0f;
    red[threadIdx.x] = fabsf(v);
    __syncthreads();
    for (int s = 64; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    float amax = red[0];
    if (!(amax >= 1e-4f))
        amax = 1e-4f;
    int e = round_scale_exp(amax * (float)(1.0 / 448.0));
    if (i < k) {
        float q = v * ldexpf(1.0f, -e);
        q = fminf(fmaxf(q, -448.0f), 448.0f);
        x[row * k + i] = e4m3_round(q) * ldexpf(1.0f, e);
    }
}

__device__ __forceinline__ float load_w(int type, const void *data, const uint8_t *scale,
                                        int64_t k, int64_t r, int64_t c)
{
    switch (type) {
    case DS4_W_F32:
        return ((const float *)data)[r * k + c];
    case DS4_W_BF16:
        return __uint_as_float((uint32_t)((const uint16_t *)data)[r * k + c] << 16);
    case DS4_W_FP8: {
        uint8_t b = ((const uint8_t *)data)[r * k + c];
        __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
        int64_t kb = (k + 127) / 128;
        return __half2float(__half(h)) * e8m0(scale[(r / 128) * kb + c / 128]);
    }
    default: { // FP4
        uint8_t b = ((const uint8_t *)data)[r * (k / 2) + c / 2];
        uint32_t code = (c & 1) ? (b >> 4) : (b & 15u);
        return e2m1(code) * e8m0(scale[r * (k / 32) + c / 32]);
    }
    }
}

// y[m, n] = x[m, k] . W[n, k]^T, 32x32 output tile per block, 32x8 threads, 4 outputs each.
__global__ void matmul_kernel(int type, const void *wdata, const uint8_t *wscale, int64_t m,
                              int64_t n, int64_t k, const float *x, float *y)
{
    __shared__ float xs[kTile][kTileK + 1];
    __shared__ float ws[kTile][kTileK + 1];
    int tx = threadIdx.x;           // 0..31: output column (weight row) within the tile
    int ty = threadIdx.y;           // 0..7: 4 output rows each
    int64_t row0 = (int64_t)blockIdx.y * kTile;
    int64_t col0 = (int64_t)blockIdx.x * kTile;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
        for (int r = ty; r < kTile; r += 8) {
            int64_t xr = row0 + r, wr = col0 + r, c = k0 + tx;
            xs[r][tx] = (xr < m && c < k) ? x[xr * k + c] : 0.0f;
            ws[r][tx] = (wr < n && c < k) ? load_w(type, wdata, wscale, k, wr, c) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < kTileK; kk++) {
            float wv = ws[tx][kk];
            for (int j = 0; j < 4; j++)
                acc[j] += xs[ty + 8 * j][kk] * wv;
        }
        __syncthreads();
    }
    for (int j = 0; j < 4; j++) {
        int64_t r = row0 + ty + 8 * j, c = col0 + tx;
        if (r < m && c < n)
            y[r * n + c] = acc[j];
    }
}

ds4_status_t ensure_scratch(struct ds4_backend *be, size_t x_bytes, size_t y_bytes)
{
    if (x_bytes > be->dev_x_cap) {
        cudaFree(be->dev_x);
        be->dev_x = NULL;
        be->dev_x_cap = 0;
        ds4_status_t st = DS4_CUDA_CHECK(cudaMalloc((void **)&be->dev_x, x_bytes));
        if (st != DS4_OK)
            return st;
        be->dev_x_cap = x_bytes;
    }
    if (y_bytes > be->dev_y_cap) {
        cudaFree(be->dev_y);
        be->dev_y = NULL;
        be->dev_y_cap = 0;
        ds4_status_t st = DS4_CUDA_CHECK(cudaMalloc((void **)&be->dev_y, y_bytes));
        if (st != DS4_OK)
            return st;
        be->dev_y_cap = y_bytes;
    }
    return DS4_OK;
}

ds4_status_t run_matmul(struct ds4_backend *be, int type, const void *wdata,
                        const uint8_t *wscale, int64_t m, int64_t n, int64_t k, const float *x,
                        float *y, bool quant_act)
{
    size_t xb = (size_t)(m * k) * sizeof(float), yb = (size_t)(m * n) * sizeof(float);
    ds4_status_t st = ensure_scratch(be, xb, yb);
    if (st != DS4_OK)
        return st;
    st = DS4_CUDA_CHECK(cudaMemcpyAsync(be->dev_x, x, xb, cudaMemcpyHostToDevice, be->stream));
    if (st != DS4_OK)
        return st;
    if (quant_act) {
        dim3 grid((unsigned)((k + 127) / 128), (unsigned)m);
        act_quant_fp8_kernel<<<grid, 128, 0, be->stream>>>(be->dev_x, k);
    }
    dim3 grid((unsigned)((n + kTile - 1) / kTile), (unsigned)((m + kTile - 1) / kTile));
    dim3 block(32, 8);
    matmul_kernel<<<grid, block, 0, be->stream>>>(type, wdata, wscale, m, n, k, be->dev_x,
                                                  be->dev_y);
    st = DS4_CUDA_CHECK(cudaGetLastError());
    if (st != DS4_OK)
        return st;
    st = DS4_CUDA_CHECK(cudaMemcpyAsync(y, be->dev_y, yb, cudaMemcpyDeviceToHost, be->stream));
    if (st != DS4_OK)
        return st;
    return DS4_CUDA_CHECK(cudaStreamSynchronize(be->stream));
}

} // namespace

ds4_status_t ds4__cuda_matmul(struct ds4_backend *be, const ds4_weight_t *w, int64_t m,
                              const float *x, float *y, unsigned flags)
{
    ds4_cuda_weight_t dw;
    ds4_status_t st = ds4__cuda_weight_get(be, w, &dw);
    if (st != DS4_OK)
        return st;
    bool quant = (w->type == DS4_W_FP8 || w->type == DS4_W_FP4) &&
                 (flags & DS4_MATMUL_NO_ACT_QUANT) == 0;
    return run_matmul(be, (int)w->type, dw.dev_data, dw.dev_scale, m, w->n, w->k, x, y, quant);
}

ds4_status_t ds4__cuda_gemm_f32(struct ds4_backend *be, int64_t m, int64_t n, int64_t k,
                                const float *a, const float *b, float *c)
{
    // B is a transient operand (not a checkpoint weight): upload it per call.
    float *dev_b = NULL;
    size_t bb = (size_t)(n * k) * sizeof(float);
    ds4_status_t st = DS4_CUDA_CHECK(cudaMalloc((void **)&dev_b, bb));
    if (st != DS4_OK)
        return st;
    st = DS4_CUDA_CHECK(cudaMemcpyAsync(dev_b, b, bb, cudaMemcpyHostToDevice, be->stream));
    if (st == DS4_OK)
        st = run_matmul(be, DS4_W_F32, dev_b, NULL, m, n, k, a, c, false);
    cudaFree(dev_b);
    return st;
}
