/* The CPU backend: FP8/FP4 weights with quantised activations through the K-blocked GEMM
 * (kgemm.h); F32/BF16 weights and DS4_MATMUL_NO_ACT_QUANT through OpenBLAS sgemm or
 * sequential dots on weight tiles dequantised on the fly (128 rows, each thread its own tile). */
#include "ds4/backend.h"
#include "ds4/alloc.h"
#include "ds4/log.h"
#include "ds4/threadpool.h"
#include "kgemm.h"

#include <cblas.h>
#include <string.h>

/* Rows per sgemm call: fixed per weight (never per call) so that row results do not depend on
 * the batch; 64 amortises weight packing for large weights, 16 keeps small-batch decode cheap on
 * small ones. */
static int64_t row_block(const ds4_weight_t *w)
{
    return w->n * w->k >= (1 << 20) ? 64 : 16;
}

struct ds4_backend {
    ds4_threadpool_h pool;
    int n_threads;
};

static ds4_status_t cpu_create(int n_threads, ds4_backend_h *out)
{
    struct ds4_backend *be = ds4_calloc(1, sizeof(*be));
    if (be == NULL)
        return DS4_ERR_NO_MEMORY;
    ds4_threadpool_params_t p = ds4_threadpool_params_default();
    p.n_threads = n_threads;
    ds4_status_t st = ds4_threadpool_create(&p, &be->pool);
    if (st != DS4_OK) {
        ds4_free(be);
        return st;
    }
    be->n_threads = ds4_threadpool_size(be->pool);
    /* Parallelism comes from our tiles; OpenBLAS runs single-threaded inside each. */
    openblas_set_num_threads(1);
    *out = be;
    return DS4_OK;
}

static void cpu_destroy(ds4_backend_h be)
{
    if (be == NULL)
        return;
    ds4_threadpool_destroy(be->pool);
    ds4_free(be);
}

static int cpu_n_threads(ds4_backend_h be)
{
    return be->n_threads;
}

typedef struct mm_job {
    const ds4_weight_t *w;
    int64_t m;
    const float *x;
    float *y;
    int64_t ldy;
    int64_t rb;
    int64_t tile;
    int64_t n_tiles;
    bool seq;            /* sequential fp32 dot products instead of sgemm (see cpu_matmul) */
} mm_job_t;

/* y[r][o] = x[r] . W[o] as plain sequential fp32 sums (element 0 first), 4 weight rows at a
 * time for instruction-level parallelism; each output's order is fixed. */
static void seq_dots(const float *x, int64_t m, int64_t k, const float *wt, int64_t nr,
                     float *y, int64_t ldy)
{
    for (int64_t r = 0; r < m; r++) {
        const float *xr = x + r * k;
        int64_t o = 0;
        for (; o + 4 <= nr; o += 4) {
            const float *w0 = wt + o * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (int64_t i = 0; i < k; i++) {
                a0 += xr[i] * w0[i];
                a1 += xr[i] * w1[i];
                a2 += xr[i] * w2[i];
                a3 += xr[i] * w3[i];
            }
            y[r * ldy + o] = a0;
            y[r * ldy + o + 1] = a1;
            y[r * ldy + o + 2] = a2;
            y[r * ldy + o + 3] = a3;
        }
        for (; o < nr; o++) {
            const float *w0 = wt + o * k;
            float a0 = 0.0f;
            for (int64_t i = 0; i < k; i++)
                a0 += xr[i] * w0[i];
            y[r * ldy + o] = a0;
        }
    }
}

static void mm_tiles(void *arg, size_t begin, size_t end, int thread_index)
{
    mm_job_t *j = arg;
    const ds4_weight_t *w = j->w;
    int64_t k = w->k;
    float *buf = NULL;
    if (w->type != DS4_W_F32 && w->f32 == NULL) {
        buf = ds4_malloc((size_t)(j->tile * k) * sizeof(float));
        DS4_ASSERT(buf != NULL);
    }
    for (size_t t = begin; t < end; t++) {
        int64_t r0 = (int64_t)t * j->tile;
        int64_t nr = w->n - r0 < j->tile ? w->n - r0 : j->tile;
        const float *wt;
        if (w->f32 != NULL) {
            wt = w->f32 + r0 * k;
        } else if (w->type == DS4_W_F32) {
            wt = (const float *)w->data + r0 * k;
        } else {
            ds4_weight_dequant_rows(w, r0, nr, buf);
            wt = buf;
        }
        if (j->seq) {
            seq_dots(j->x, j->m, k, wt, nr, j->y + r0, j->ldy);
            continue;
        }
        /* Fixed 16-row blocks: every sgemm call of a weight tile has the same shape, so
         * OpenBLAS takes the same kernel and each row's sums do not depend on how many rows
         * are computed together. */
        for (int64_t b = 0; b < j->m; b += j->rb)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->rb, (int)nr, (int)k,
                        1.0f, j->x + b * k, (int)k, wt, (int)k, 0.0f,
                        j->y + b * j->ldy + r0, (int)j->ldy);
    }
    ds4_free(buf);
}

typedef struct stream_job {
    const ds4_weight_t *w;
    int64_t m;
    const float *x;
    float *y;
} stream_job_t;

/* y[r][o] = x[r] . W[o] as a sequential fp32 sum (element 0 first): the reference's fp32
 * F.linear order for the head (measured: the golden logits are then byte-identical). Each
 * output depends only on its own row and weight row (row-independent by construction); W is
 * read once for all rows, STREAM_ROWS weight rows at a time (independent accumulators: one
 * AVX-512 vector, two AVX2 ones; compiled per level by target_clones, and the file's
 * -ffp-contract=off keeps each sum a mul then an add, so every level gives the same bits). */
#define STREAM_ROWS 16
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STREAM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define STREAM_CLONES
#endif
STREAM_CLONES static void stream_rows(void *arg, size_t begin, size_t end, int thread_index)
{
    stream_job_t *j = arg;
    int64_t k = j->w->k, n = j->w->n;
    /* STREAM_ROWS weight rows interleaved: wi[i * STREAM_ROWS + q] = W[o0 + q][i], so that the
     * STREAM_ROWS independent sequential sums advance together (vectorisable) */
    float *wi = ds4_malloc((size_t)(STREAM_ROWS * k) * sizeof(float));
    DS4_ASSERT(wi != NULL);
    for (size_t g = begin; g < end; g++) {
        int64_t o0 = (int64_t)g * STREAM_ROWS;
        int no = n - o0 < STREAM_ROWS ? (int)(n - o0) : STREAM_ROWS;
        for (int q = 0; q < STREAM_ROWS; q++) {
            int64_t o = o0 + (q < no ? q : 0);
            if (j->w->f32 != NULL || j->w->type == DS4_W_F32) {
                const float *src = j->w->f32 != NULL ? j->w->f32 + o * k
                                                     : (const float *)j->w->data + o * k;
                for (int64_t i = 0; i < k; i++)
                    wi[i * STREAM_ROWS + q] = src[i];
            } else {
                const uint16_t *src = (const uint16_t *)j->w->data + o * k;
                for (int64_t i = 0; i < k; i++) {
                    uint32_t u = (uint32_t)src[i] << 16;
                    memcpy(&wi[i * STREAM_ROWS + q], &u, 4);
                }
            }
        }
        for (int64_t r = 0; r < j->m; r++) {
            const float *xr = j->x + r * k;
            float acc[STREAM_ROWS] = {0};
            for (int64_t i = 0; i < k; i++) {
                const float xv = xr[i];
                const float *w8 = wi + i * STREAM_ROWS;
                for (int q = 0; q < STREAM_ROWS; q++)
                    acc[q] += xv * w8[q];
            }
            for (int q = 0; q < no; q++)
                j->y[r * n + o0 + q] = acc[q];
        }
    }
    ds4_free(wi);
}

static void cpu_matmul(ds4_backend_h be, const ds4_weight_t *w, int64_t m, const float *x,
                       float *y, unsigned flags)
{
    if ((flags & DS4_MATMUL_STREAM) && (w->type == DS4_W_F32 || w->type == DS4_W_BF16) &&
        w->k <= 8192 && m > 0) {
        stream_job_t sj = {.w = w, .m = m, .x = x, .y = y};
        ds4_threadpool_parallel_for(be->pool, (size_t)((w->n + STREAM_ROWS - 1) / STREAM_ROWS),
                                    stream_rows, &sj);
        return;
    }
    if (m <= 0 || w->n <= 0)
        return;
    bool quant = (w->type == DS4_W_FP8 || w->type == DS4_W_FP4) &&
                 !(flags & DS4_MATMUL_NO_ACT_QUANT);
    if (quant) {
        /* FP8/FP4 weights with quantised activations accumulate like the reference's fp8_gemm
         * / fp4_gemm kernels: fp32 partial sums per 128-input block along K (the activation
         * scale block), each scaled (powers of two: exact on the dequantised values) and added
         * to the output in block order (kgemm.h states the order). Summing all of K at once
         * instead rounds at other points and flips bf16 outputs (measured on the golden
         * checkpoint; blocked, it is bit-exact). The reference's fp4_gemm adds per 32-input
         * sub-block; that equals the 128-block sum whenever the latter is exact in fp32
         * (identical on the golden). Rows are independent by construction (no padding). */
        ds4_status_t st = ds4__kgemm_matmul(NULL, be->pool, w, m, x, true, y);
        DS4_ASSERT(st == DS4_OK);
        return;
    }
    /* OpenBLAS picks kernels by shape (results differ in the last bits), so rows are padded
     * to a multiple of the weight's row block and computed in blocks of exactly that many: every
     * row's result is independent of the batch (chunked prefill == whole prefill, bitwise).
     * DS4_MATMUL_NO_ACT_QUANT (the reference's bf16 einsum with wo_a, fp32 accumulation) is
     * computed as sequential fp32 dot products: measured on the golden checkpoint, that order
     * reproduces the reference's bf16 outputs where sgemm's blocked order flips roundings. */
    int64_t rb = row_block(w);
    int64_t m_run = (m + rb - 1) / rb * rb;
    float *ypad = NULL;
    float *yout = y;
    if (m_run != m) {
        ypad = ds4_malloc((size_t)(m_run * w->n) * sizeof(float));
        DS4_ASSERT(ypad != NULL);
        yout = ypad;
    }
    float *xq = NULL;
    const float *xin = x;
    if (m_run != m) {
        xq = ds4_calloc((size_t)(m_run * w->k), sizeof(float));
        DS4_ASSERT(xq != NULL);
        memcpy(xq, x, (size_t)(m * w->k) * sizeof(float));
        xin = xq;
    }
    mm_job_t j = {.w = w, .m = m_run, .x = xin, .y = yout, .ldy = w->n, .rb = rb, .tile = 128,
                  .seq = (flags & DS4_MATMUL_NO_ACT_QUANT) != 0};
    if (w->type == DS4_W_F32 || w->type == DS4_W_BF16 || w->f32 != NULL) {
        /* Enough tiles for every thread, never below 64 rows. */
        int64_t per = (w->n + be->n_threads - 1) / be->n_threads;
        j.tile = per < 64 ? 64 : (per > 512 ? 512 : per);
    }
    j.n_tiles = (w->n + j.tile - 1) / j.tile;
    ds4_threadpool_parallel_for(be->pool, (size_t)j.n_tiles, mm_tiles, &j);
    if (ypad != NULL) {
        memcpy(y, ypad, (size_t)(m * w->n) * sizeof(float));
        ds4_free(ypad);
    }
    ds4_free(xq);
}

static void cpu_gemm_f32(ds4_backend_h be, int64_t m, int64_t n, int64_t k, const float *a,
                         const float *b, float *c)
{
    ds4_weight_t w = {.type = DS4_W_F32, .n = n, .k = k, .data = b};
    cpu_matmul(be, &w, m, a, c, 0);
}

static void cpu_parallel_for(ds4_backend_h be, size_t n,
                             void (*fn)(void *, size_t, size_t, int), void *arg)
{
    ds4_threadpool_parallel_for(be->pool, n, fn, arg);
}

const ds4_backend_ops_t ds4_backend_cpu_ops = {
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .n_threads = cpu_n_threads,
    .matmul = cpu_matmul,
    .gemm_f32 = cpu_gemm_f32,
    .parallel_for = cpu_parallel_for,
};
