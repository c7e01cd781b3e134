/*
 * kgemm.h - the CPU backend's K-blocked GEMM for FP8/FP4 weights (internal to kernels/cpu and
 * its tests).
 *
 *   y[r][o] = sum over K blocks b (128 inputs, the last one ragged), in order, of
 *             blocksum_b(r, o) = fl32 sequential sum, input 0 of the block first, of
 *                                fma(xq[r][i], W[o][i], acc) starting from acc = +0
 *   with y = blocksum_0, then y = fl32(y + blocksum_b): the reference fp8_gemm / fp4_gemm's
 *   per-scale-block partial sums, and bit for bit what OpenBLAS's Cooperlake/SkylakeX sgemm
 *   kernel computes for one (16|64) x 128 x 128 block with beta = 1 (the backend's previous
 *   sgemm-per-block path; measured with OpenBLAS 0.3.21 - its other kernels, e.g. Haswell's or
 *   the small-shape ones, order a block differently, which only shows where a block sum is
 *   inexact in fp32). W is the exactly dequantised weight (e4m3 or e2m1 times its ue8m0 scale),
 *   xq the act_quant'ed activations (ds4_act_quant_fp8, block 128).
 *
 * Every output is computed by the same instruction sequence whatever M, the row group, the
 * tile or the thread: rows are independent and any batch split gives the same bits. All
 * dispatch levels compute the same bits (fma is single-rounded everywhere).
 *
 * Layouts (all fp32):
 *   packed x  : rows in groups of `mr` (the level's row count), K-block major: block b of group
 *               g is [KGEMM_KB][mr] at (b * n_groups + g) * KGEMM_KB * mr (element (r, i) at
 *               i * mr + r inside it), so one block of every group is contiguous; rows past m
 *               are zero.
 *   packed W  : a tile of up to KGEMM_TILE weight rows and a K chunk [k0, k0 + kl) as
 *               panels of KGEMM_NR rows: panel p holds [kl][KGEMM_NR] (row p*NR + j of the
 *               tile, input k0 + i at i * NR + j); rows past the tile's end are zero.
 */
#ifndef DS4_KGEMM_H
#define DS4_KGEMM_H

#include "ds4/backend.h"
#include "ds4/threadpool.h"

#include <stdbool.h>
#include <stdint.h>

#define KGEMM_KB 128   /* inputs per K block (the activation scale block) */
#define KGEMM_NR 32    /* weight rows per panel */
#define KGEMM_TILE 128 /* weight rows per tile (one thread's unit of work) */
#define KGEMM_KC 128   /* inputs per packed weight chunk: one K block (packed x is block major) */
#define KGEMM_MC 256   /* activation rows per job at most */

typedef enum ds4__kgemm_level {
    DS4_KGEMM_PORTABLE = 0, /* plain C (fmaf) */
    DS4_KGEMM_AVX2 = 1,     /* x86-64 AVX2 + FMA */
    DS4_KGEMM_AVX512 = 2,   /* x86-64 AVX-512F + FMA */
    DS4_KGEMM_N_LEVELS
} ds4__kgemm_level_t;

typedef struct ds4__kgemm_ops {
    const char *name;
    int mr; /* rows per packed x group (<= 16) */
    /* act_quant of one row without codes: ds4_act_quant_fp8(x, n, block, out, NULL, NULL),
     * bit for bit (out may alias x). */
    void (*act_quant)(const float *x, int64_t n, int block, float *out);
    /* Packs rows [0, m) (m <= mr) of x [m, k] into one group: block b at xp + b * bstride
     * ([KGEMM_KB][mr] floats), zero rows past m. */
    void (*pack_x)(const float *x, int64_t m, int64_t k, int mr, int64_t bstride, float *xp);
    /* Packs weight rows [r0, r0 + nr) (r0 a multiple of 16, nr <= KGEMM_TILE), inputs
     * [k0, k0 + kl) (k0 a multiple of KGEMM_KB, kl <= KGEMM_KC) into ceil(nr / NR) panels of
     * kl * NR floats at wp; rows past nr are zero. Reads the codes (w->f32 is ignored). */
    void (*pack_w)(const ds4_weight_t *w, int64_t r0, int64_t nr, int64_t k0, int64_t kl,
                   float *wp);
    /* One row group (mr_used <= mr rows, packed with stride mr, kl inputs contiguous: the
     * driver passes one K block) against one panel (nr_used <= NR rows) over kl inputs starting
     * at block boundary k0 (k0 == 0: the first block stores, later blocks add). y: row r, panel
     * row j at y[r * ldy + j]. */
    void (*kernel)(const float *xp, int mr, int mr_used, const float *wp, int nr_used,
                   int64_t k0, int64_t kl, float *y, int64_t ldy);
} ds4__kgemm_ops_t;

/* The ops of `level`, or NULL when it is not compiled in or this CPU lacks it. */
const ds4__kgemm_ops_t *ds4__kgemm_ops(ds4__kgemm_level_t level);
/* The best level this CPU runs; DS4_CPU_GEMM=portable|avx2|avx512 in the environment caps it
 * (read once). */
const ds4__kgemm_ops_t *ds4__kgemm_best(void);

/* y[m, w->n] (row stride w->n) = the K-blocked product of act_quant(x[m, w->k]) (per 128, as
 * ds4_act_quant_fp8; x used as given when !quantise) and the FP8/FP4 weight w, with `ops`
 * (NULL: ds4__kgemm_best()) on `pool` (NULL: the caller). DS4_ERR_NO_MEMORY: y untouched. */
ds4_status_t ds4__kgemm_matmul(const ds4__kgemm_ops_t *ops, ds4_threadpool_h pool,
                               const ds4_weight_t *w, int64_t m, const float *x, bool quantise,
                               float *y);

/* act_quant's per-block scale (quant.c): s = 2^k, inv_s = 2^-k for the block's amax (floored
 * at 1e-4); returns k. */
int ds4__act_scale_fp8(float amax, float *s, float *inv_s);
/* The plain-C act_quant of one row (no codes/scales). */
void ds4__act_quant_row_c(const float *x, int64_t n, int block, float *out);

/* The plain-C packers (any level may use them). */
void ds4__kgemm_pack_x_c(const float *x, int64_t m, int64_t k, int mr, int64_t bstride,
                         float *xp);
void ds4__kgemm_pack_w_c(const ds4_weight_t *w, int64_t r0, int64_t nr, int64_t k0, int64_t kl,
                         float *wp);

/* Per-level tables (x86-64 ones only compiled there); used by ds4__kgemm_ops. */
extern const ds4__kgemm_ops_t ds4__kgemm_portable;
#if defined(__x86_64__)
extern const ds4__kgemm_ops_t ds4__kgemm_avx2;
extern const ds4__kgemm_ops_t ds4__kgemm_avx512;
#endif

#endif /* DS4_KGEMM_H */
