/* K-blocked GEMM driver: level dispatch, activation packing, and the tiling over threads (each
 * job = one tile of up to KGEMM_TILE weight rows x a range of activation row groups, packed per K
 * chunk so the weight chunk stays in L2 while every row group passes over it). */
#include "kgemm.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static_assert(KGEMM_KC == KGEMM_KB, "packed x is block major: the kernels get one K block");

static bool cpu_has(ds4__kgemm_level_t level)
{
    switch (level) {
    case DS4_KGEMM_PORTABLE:
        return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    case DS4_KGEMM_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case DS4_KGEMM_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    default:
        return false;
    }
}

const ds4__kgemm_ops_t *ds4__kgemm_ops(ds4__kgemm_level_t level)
{
    if (!cpu_has(level))
        return NULL;
    switch (level) {
    case DS4_KGEMM_PORTABLE:
        return &ds4__kgemm_portable;
#if defined(__x86_64__)
    case DS4_KGEMM_AVX2:
        return &ds4__kgemm_avx2;
    case DS4_KGEMM_AVX512:
        return &ds4__kgemm_avx512;
#endif
    default:
        return NULL;
    }
}

static const ds4__kgemm_ops_t *g_best;
static pthread_once_t g_best_once = PTHREAD_ONCE_INIT;

static void best_init(void)
{
    int cap = DS4_KGEMM_N_LEVELS - 1;
    const char *env = getenv("DS4_CPU_GEMM");
    if (env != NULL) {
        static const char *const names[] = {"portable", "avx2", "avx512"};
        int found = -1;
        for (int i = 0; i < DS4_KGEMM_N_LEVELS; i++)
            if (strcmp(env, names[i]) == 0)
                found = i;
        if (found < 0)
            ds4_log_warn("DS4_CPU_GEMM=%s unknown (portable, avx2, avx512): ignored", env);
        else
            cap = found;
    }
    for (int l = cap; l >= 0; l--) {
        g_best = ds4__kgemm_ops((ds4__kgemm_level_t)l);
        if (g_best != NULL)
            break;
    }
    ds4_log_debug("cpu k-blocked gemm level %s", g_best->name);
}

const ds4__kgemm_ops_t *ds4__kgemm_best(void)
{
    pthread_once(&g_best_once, best_init);
    return g_best;
}

typedef struct kg_job {
    const ds4__kgemm_ops_t *ops;
    const ds4_weight_t *w;
    int64_t m;
    const float *x;  /* [m, k] */
    bool quantise;
    float **xrow;    /* per thread: one quantised row (k floats) when quantising */
    float *xp;       /* n_groups packed groups of mr * k */
    float *y;
    float **wbuf;    /* per thread: KGEMM_TILE * KGEMM_KC floats */
    int64_t n_groups;
    int64_t tile;     /* weight rows per tile: KGEMM_TILE, less for small weights */
    int64_t groups_per_chunk;
    int64_t n_chunks; /* row-group chunks per tile */
} kg_job_t;

static void pack_groups(void *arg, size_t begin, size_t end, int thread_index)
{
    kg_job_t *j = arg;
    int mr = j->ops->mr;
    int64_t k = j->w->k;
    for (size_t g = begin; g < end; g++) {
        int64_t r0 = (int64_t)g * mr;
        int64_t rows = j->m - r0 < mr ? j->m - r0 : mr;
        int64_t bstride = j->n_groups * KGEMM_KB * mr;
        float *xg = j->xp + (int64_t)g * KGEMM_KB * mr;
        if (!j->quantise) {
            j->ops->pack_x(j->x + r0 * k, rows, k, mr, bstride, xg);
            continue;
        }
        /* row by row through one quantised row: no [m, k] intermediate */
        float *xr = j->xrow[thread_index];
        for (int r = 0; r < mr; r++) {
            if (r < rows)
                j->ops->act_quant(j->x + (r0 + r) * k, k, KGEMM_KB, xr);
            else
                memset(xr, 0, (size_t)k * sizeof(float));
            for (int64_t b0 = 0; b0 < k; b0 += KGEMM_KB) {
                int64_t len = k - b0 < KGEMM_KB ? k - b0 : KGEMM_KB;
                float *dst = xg + (b0 / KGEMM_KB) * bstride + r;
                for (int64_t i = 0; i < len; i++)
                    dst[i * mr] = xr[b0 + i];
            }
        }
    }
}

static void run_jobs(void *arg, size_t begin, size_t end, int thread_index)
{
    kg_job_t *j = arg;
    const ds4_weight_t *w = j->w;
    int mr = j->ops->mr;
    int64_t k = w->k, n = w->n;
    float *wp = j->wbuf[thread_index];
    for (size_t job = begin; job < end; job++) {
        int64_t tile = (int64_t)job / j->n_chunks, chunk = (int64_t)job % j->n_chunks;
        int64_t r0 = tile * j->tile;
        int64_t nr = n - r0 < j->tile ? n - r0 : j->tile;
        int64_t g0 = chunk * j->groups_per_chunk;
        int64_t g1 = g0 + j->groups_per_chunk < j->n_groups ? g0 + j->groups_per_chunk
                                                             : j->n_groups;
        int64_t n_panels = (nr + KGEMM_NR - 1) / KGEMM_NR;
        for (int64_t k0 = 0; k0 < k; k0 += KGEMM_KC) {
            int64_t kl = k - k0 < KGEMM_KC ? k - k0 : KGEMM_KC;
            j->ops->pack_w(w, r0, nr, k0, kl, wp);
            for (int64_t g = g0; g < g1; g++) {
                int64_t row = g * mr;
                int mr_used = (int)(j->m - row < mr ? j->m - row : mr);
                const float *xg = j->xp + ((k0 / KGEMM_KB) * j->n_groups + g) * KGEMM_KB * mr;
                for (int64_t p = 0; p < n_panels; p++) {
                    int64_t o = p * KGEMM_NR;
                    int nr_used = (int)(nr - o < KGEMM_NR ? nr - o : KGEMM_NR);
                    j->ops->kernel(xg, mr, mr_used, wp + p * kl * KGEMM_NR, nr_used, k0, kl,
                                   j->y + row * n + r0 + o, n);
                }
            }
        }
    }
}

ds4_status_t ds4__kgemm_matmul(const ds4__kgemm_ops_t *ops, ds4_threadpool_h pool,
                               const ds4_weight_t *w, int64_t m, const float *x, bool quantise,
                               float *y)
{
    DS4_ASSERT(w->type == DS4_W_FP8 || w->type == DS4_W_FP4);
    if (m <= 0 || w->n <= 0)
        return DS4_OK;
    if (w->k <= 0) { /* empty sums */
        memset(y, 0, (size_t)(m * w->n) * sizeof(float));
        return DS4_OK;
    }
    if (ops == NULL)
        ops = ds4__kgemm_best();
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    int n_threads = pool != NULL ? ds4_threadpool_size(pool) : 1;
    int64_t k = w->k;
    int mr = ops->mr;
    /* The codes are 1/4 (FP8) or 1/8 (FP4) of the fp32 copy's bytes: dequantising them while
     * packing is faster than reading w->f32 (same values: dequantisation is exact). */
    ds4_weight_t wc = *w;
    wc.f32 = NULL;
    kg_job_t j = {.ops = ops, .w = &wc, .m = m, .x = x, .quantise = quantise, .y = y};
    j.n_groups = (m + mr - 1) / mr;
    /* Small weights: tiles of fewer rows (multiples of a panel, so 16-row strips stay inside
     * one 128-row scale block) until every thread has two. */
    j.tile = KGEMM_TILE;
    while (j.tile > KGEMM_NR && (w->n + j.tile - 1) / j.tile < 2 * (int64_t)n_threads)
        j.tile /= 2;
    int64_t n_tiles = (w->n + j.tile - 1) / j.tile;
    /* Too few weight tiles for the threads: split the rows too (each chunk packs the tile's
     * weights again; results do not depend on the split). */
    j.n_chunks = 1;
    if (n_tiles < 2 * (int64_t)n_threads) {
        int64_t want = (2 * (int64_t)n_threads + n_tiles - 1) / n_tiles;
        j.n_chunks = want < j.n_groups ? want : j.n_groups;
    }
    j.groups_per_chunk = (j.n_groups + j.n_chunks - 1) / j.n_chunks;
    /* At most KGEMM_MC rows per job: its output slice and activation block stay in L2 (each job
     * packs its weight tile again: a few % of a job this size; measured net gain at M = 2048). */
    int64_t max_groups = (KGEMM_MC + mr - 1) / mr;
    if (j.groups_per_chunk > max_groups)
        j.groups_per_chunk = max_groups;
    j.n_chunks = (j.n_groups + j.groups_per_chunk - 1) / j.groups_per_chunk;
    size_t xp_bytes = 0;
    int64_t n_kb = (k + KGEMM_KB - 1) / KGEMM_KB;
    if (!ds4_size_mul((size_t)(j.n_groups * mr * KGEMM_KB), (size_t)n_kb * sizeof(float),
                      &xp_bytes))
        goto out;
    j.xp = ds4_aligned_alloc(64, xp_bytes);
    if (j.xp == NULL)
        goto out;
    j.wbuf = ds4_calloc((size_t)n_threads, sizeof(*j.wbuf));
    j.xrow = ds4_calloc((size_t)n_threads, sizeof(*j.xrow));
    if (j.wbuf == NULL || j.xrow == NULL)
        goto free_wbuf;
    for (int t = 0; t < n_threads; t++) {
        j.wbuf[t] = ds4_aligned_alloc(64, (size_t)KGEMM_TILE * KGEMM_KC * sizeof(float));
        j.xrow[t] = ds4_aligned_alloc(64, (size_t)k * sizeof(float));
        if (j.wbuf[t] == NULL || j.xrow[t] == NULL)
            goto free_wbuf;
    }
    if (j.n_groups == 1)
        pack_groups(&j, 0, 1, 0); /* decode-sized: not worth waking the threads */
    else
        ds4_threadpool_parallel_for(pool, (size_t)j.n_groups, pack_groups, &j);
    ds4_threadpool_parallel_for(pool, (size_t)(n_tiles * j.n_chunks), run_jobs, &j);
    st = DS4_OK;
free_wbuf:
    for (int t = 0; t < n_threads; t++) {
        if (j.wbuf != NULL)
            ds4_free(j.wbuf[t]);
        if (j.xrow != NULL)
            ds4_free(j.xrow[t]);
    }
    ds4_free(j.wbuf);
    ds4_free(j.xrow);
    ds4_free(j.xp);
out:
    return st;
}
