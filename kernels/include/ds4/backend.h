/*
 * ds4/backend.h - the compute backend vtable: the few heavy ops the model engine needs.
 *
 * A backend is selected by name through the registry (ds4_backend_get("cpu")); the CUDA backend
 * implements the same vtable later. Only the registry (kernels/registry/) may contain
 * `#ifdef DS4_WITH_CUDA`.
 *
 * Numerics contract (DeepSeek-V4 reference, inference/kernel.py):
 *   - ds4_weight_t of type FP8: e4m3 [n, k] + ue8m0 scales [ceil(n/128), ceil(k/128)] (one power
 *     of two per 128x128 block). FP4: e2m1 packed two per byte along k (low nibble = even
 *     element) [n, k/2] + ue8m0 scales [n, k/32]. BF16 / F32: plain [n, k].
 *   - matmul with an FP8/FP4 weight first quantises each activation row per 128 inputs to e4m3
 *     with a ue8m0 scale s = 2^ceil(log2(max(amax, 1e-4) * (1/448))) (act_quant), unless
 *     DS4_MATMUL_NO_ACT_QUANT is given (the reference's bf16 use of a dequantised FP8 weight).
 *     Products are accumulated in fp32; the output is fp32 (callers round to bf16 where the
 *     reference does). Summation order is the backend's own.
 *   - BF16/F32 weights: y = x . W^T in fp32.
 *
 * Threading: a backend handle owns its worker threads; calls on one handle are serialised by
 * the caller (the engine). Weight memory is never written.
 */
#ifndef DS4_BACKEND_H
#define DS4_BACKEND_H

#include "ds4/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds4_wtype {
    DS4_W_F32 = 0,
    DS4_W_BF16 = 1,
    DS4_W_FP8 = 2, /* e4m3 + ue8m0 per 128x128 block */
    DS4_W_FP4 = 3, /* e2m1 packed + ue8m0 per 32 inputs of a row */
} ds4_wtype_t;

/* A read-only weight matrix [n, k] (out x in); `data`/`scale` usually point into an mmap. */
typedef struct ds4_weight {
    ds4_wtype_t type;
    int64_t n;             /* output features (rows) */
    int64_t k;             /* input features */
    const void *data;
    const uint8_t *scale;  /* ue8m0 bytes; NULL for F32/BF16 */
    const float *f32;      /* optional exact fp32 copy of the dequantised weight [n, k] (small
                            * models): used instead of per-call tile dequantisation; the type
                            * still decides activation quantisation */
} ds4_weight_t;

/* Rows [r0, r0 + n) of `w` (r0 a multiple of 128 for FP8). */
ds4_weight_t ds4_weight_rows(const ds4_weight_t *w, int64_t r0, int64_t n);

enum {
    DS4_MATMUL_NO_ACT_QUANT = 1u << 0, /* FP8/FP4: use the activations as given (bf16 einsum) */
    DS4_MATMUL_STREAM = 1u << 1,       /* F32/BF16 weights: stream the weight once through a
                                          fixed-order dot kernel (no sgemm packing; best for few
                                          rows against a large weight, e.g. the vocab head) */
};

typedef struct ds4_backend *ds4_backend_h;

typedef struct ds4_backend_ops {
    const char *name;
    ds4_status_t (*create)(int n_threads, ds4_backend_h *out);
    void (*destroy)(ds4_backend_h be);
    int (*n_threads)(ds4_backend_h be);
    /* y[m, n] = act(x[m, k]) . W^T ; x rows have stride k, y rows stride n. */
    void (*matmul)(ds4_backend_h be, const ds4_weight_t *w, int64_t m, const float *x, float *y,
                   unsigned flags);
    /* Plain fp32 C[m, n] = A[m, k] . B[n, k]^T (row-major, contiguous). */
    void (*gemm_f32)(ds4_backend_h be, int64_t m, int64_t n, int64_t k, const float *a,
                     const float *b, float *c);
    /* Runs fn over [0, n) on the backend's threads (CPU helpers of the engine). */
    void (*parallel_for)(ds4_backend_h be, size_t n,
                         void (*fn)(void *arg, size_t begin, size_t end, int thread_index),
                         void *arg);
} ds4_backend_ops_t;

/* The backend called `name` ("cpu", "cuda"); NULL when not compiled in. */
const ds4_backend_ops_t *ds4_backend_get(const char *name);

/* ---- shared CPU numerics (kernels/cpu), also used by the engine's reference paths ---- */

/* act_quant of one row: per `block` inputs, e4m3 with a ue8m0 scale; writes the dequantised
 * values (exactly e4m3 * 2^k) to out (may alias x). When codes/scales are non-NULL, also the
 * e4m3 bytes and the scale bytes (n/block of them). */
void ds4_act_quant_fp8(const float *x, int64_t n, int block, float *out, uint8_t *codes,
                       uint8_t *scales);
/* FP4 simulation of one row: per 32 inputs, e2m1 with a ue8m0 scale
 * s = 2^ceil(log2(max(amax, 6*2^-126) * (1/6))); dequantised to out (may alias x); optional
 * packed codes (n/2 bytes, low nibble first) and scale bytes. */
void ds4_act_quant_fp4(const float *x, int64_t n, float *out, uint8_t *packed, uint8_t *scales);
/* Dequantises rows [r0, r0+nr) of w into out[nr, k] (fp32). */
void ds4_weight_dequant_rows(const ds4_weight_t *w, int64_t r0, int64_t nr, float *out);

#ifdef __cplusplus
}
#endif
#endif /* DS4_BACKEND_H */
