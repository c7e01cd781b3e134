/* The fused lightning-indexer kernel: key tiling, query preparation, dispatch and the portable
 * C level (see indexer-kernel.h for the contract and the exactness condition). */
#include "indexer-kernel.h"

#include "ds4/alloc.h"
#include "ds4/log.h"
#include "ds4/numeric.h"

#include <string.h>

/* 2 * e2m1 of a code: an integer in [-12, 12]. */
static int fp4_c(uint8_t code)
{
    static const int8_t mag[8] = {0, 1, 2, 3, 4, 6, 8, 12};
    int v = mag[code & 7u];
    return (code & 8u) ? -v : v;
}

/* 2^(s - 128): the block scale of c (the e2m1 value is c / 2). NaN for s = 255, as decoding. */
static float fp4_scale(uint8_t s)
{
    return ds4_e8m0_to_f32(s) * 0.5f;
}

ds4_status_t ds4__idxk_keys_alloc(ds4__idxk_keys_t *k, int dim, int64_t n_keys)
{
    DS4_ASSERT(dim > 0 && dim % DS4__IDXK_BLOCK == 0 && n_keys >= 0);
    int64_t n_tiles = (n_keys + DS4__IDXK_TILE - 1) / DS4__IDXK_TILE;
    size_t nt = (size_t)(n_tiles > 0 ? n_tiles : 1);
    size_t vbytes, sbytes;
    if (!ds4_size_mul(nt, (size_t)dim * DS4__IDXK_TILE, &vbytes) ||
        !ds4_size_mul(nt, (size_t)(dim / DS4__IDXK_BLOCK) * DS4__IDXK_TILE * sizeof(float),
                      &sbytes))
        return DS4_ERR_NO_MEMORY;
    uint8_t *vals = ds4_aligned_alloc(64, vbytes);
    float *scale = ds4_aligned_alloc(64, sbytes);
    uint8_t *fast = ds4_malloc(nt);
    if (vals == NULL || scale == NULL || fast == NULL) {
        ds4_free(vals);
        ds4_free(scale);
        ds4_free(fast);
        return DS4_ERR_NO_MEMORY;
    }
    k->dim = dim;
    k->n_keys = n_keys;
    k->n_tiles = n_tiles;
    k->vals = vals;
    k->scale = scale;
    k->fast = fast;
    return DS4_OK;
}

void ds4__idxk_keys_free(ds4__idxk_keys_t *k)
{
    ds4_free(k->vals);
    ds4_free(k->scale);
    ds4_free(k->fast);
    k->vals = NULL;
    k->scale = NULL;
    k->fast = NULL;
}

/* Shifted-form eligibility of dim/32 scale bytes; *smin receives the smallest. */
static bool fast_ok(const uint8_t *sc, int nb, int *smin)
{
    int lo = 255, hi = 0;
    for (int b = 0; b < nb; b++) {
        lo = sc[b] < lo ? sc[b] : lo;
        hi = sc[b] > hi ? sc[b] : hi;
    }
    *smin = lo;
    return nb * DS4__IDXK_BLOCK <= DS4__IDXK_FMAXDIM && lo >= DS4__IDXK_FSMIN &&
           hi <= DS4__IDXK_FSMAX && hi - lo <= DS4__IDXK_FSPREAD;
}

void ds4__idxk_keys_fill(ds4__idxk_keys_t *k, const uint8_t *rows, size_t row_bytes, int64_t t0,
                         int64_t t1)
{
    /* One packed byte (two codes) -> two offset values, low element first: plain (c + 12) and
     * shifted by d = 0..3 (c * 2^d + 96). */
    uint16_t pair[1 + DS4__IDXK_FSPREAD + 1][256];
    for (int b = 0; b < 256; b++) {
        int lo = fp4_c((uint8_t)(b & 15)), hi = fp4_c((uint8_t)(b >> 4));
        pair[0][b] = (uint16_t)((lo + DS4__IDXK_KOFF) | ((hi + DS4__IDXK_KOFF) << 8));
        for (int d = 0; d <= DS4__IDXK_FSPREAD; d++)
            pair[1 + d][b] = (uint16_t)((lo * (1 << d) + DS4__IDXK_FOFF) |
                                        ((hi * (1 << d) + DS4__IDXK_FOFF) << 8));
    }
    const int dim = k->dim, nq = dim / 4, nb = dim / DS4__IDXK_BLOCK, L = DS4__IDXK_TILE;
    for (int64_t t = t0; t < t1; t++) {
        uint8_t *tv = k->vals + t * (int64_t)dim * L;
        float *ts = k->scale + t * (int64_t)nb * L;
        bool fast = true;
        for (int l = 0; l < L && fast; l++) {
            int64_t g = t * L + l;
            int smin;
            if (g < k->n_keys)
                fast = fast_ok(rows + (size_t)g * row_bytes + dim / 2, nb, &smin);
        }
        k->fast[t] = fast ? 1 : 0;
        for (int l = 0; l < L; l++) {
            int64_t g = t * L + l;
            if (g >= k->n_keys) {
                for (int j = 0; j < nq; j++)
                    memset(tv + ((int64_t)j * L + l) * 4, fast ? DS4__IDXK_FOFF : DS4__IDXK_KOFF,
                           4);
                for (int b = 0; b < nb; b++)
                    ts[b * L + l] = 0.0f;
                continue;
            }
            const uint8_t *row = rows + (size_t)g * row_bytes;
            const uint8_t *sc = row + dim / 2;
            int smin = 0;
            if (fast)
                fast_ok(sc, nb, &smin);
            for (int j = 0; j < nq; j++) {
                const uint16_t *pt = fast ? pair[1 + sc[j / 8] - smin] : pair[0];
                uint32_t v = (uint32_t)pt[row[2 * j]] | ((uint32_t)pt[row[2 * j + 1]] << 16);
                memcpy(tv + ((int64_t)j * L + l) * 4, &v, 4);
            }
            for (int b = 0; b < nb; b++)
                ts[b * L + l] = fp4_scale(fast ? (uint8_t)smin : sc[b]);
        }
    }
}

ds4_status_t ds4__idxk_queries_alloc(ds4__idxk_queries_t *q, int dim, int n_heads, int64_t n_rows)
{
    DS4_ASSERT(dim > 0 && dim % DS4__IDXK_BLOCK == 0 && n_heads > 0 && n_rows >= 0);
    size_t n = (size_t)(n_rows > 0 ? n_rows : 1) * (size_t)n_heads;
    int nb = dim / DS4__IDXK_BLOCK;
    size_t nr = (size_t)(n_rows > 0 ? n_rows : 1);
    ds4__idxk_queries_t z = {.dim = dim, .n_heads = n_heads, .n_rows = n_rows};
    z.vals = ds4_aligned_alloc(64, n * (size_t)dim);
    z.corr = ds4_malloc_array(n * (size_t)nb, sizeof(int32_t));
    z.scale = ds4_malloc_array(n * (size_t)nb, sizeof(float));
    z.fvals = ds4_aligned_alloc(64, n * (size_t)dim);
    z.fcorr = ds4_malloc_array(n, sizeof(int32_t));
    z.fscale = ds4_malloc_array(n, sizeof(float));
    z.row_fast = ds4_malloc(nr);
    if (z.vals == NULL || z.corr == NULL || z.scale == NULL || z.fvals == NULL ||
        z.fcorr == NULL || z.fscale == NULL || z.row_fast == NULL) {
        ds4__idxk_queries_free(&z);
        return DS4_ERR_NO_MEMORY;
    }
    memset(z.row_fast, 1, nr);
    *q = z;
    return DS4_OK;
}

void ds4__idxk_queries_free(ds4__idxk_queries_t *q)
{
    ds4_free(q->vals);
    ds4_free(q->corr);
    ds4_free(q->scale);
    ds4_free(q->fvals);
    ds4_free(q->fcorr);
    ds4_free(q->fscale);
    ds4_free(q->row_fast);
    q->vals = NULL;
    q->corr = NULL;
    q->scale = NULL;
    q->fvals = NULL;
    q->fcorr = NULL;
    q->fscale = NULL;
    q->row_fast = NULL;
}

void ds4__idxk_queries_set(ds4__idxk_queries_t *q, int64_t r, int h, const uint8_t *packed,
                           const uint8_t *scales)
{
    const int dim = q->dim, nb = dim / DS4__IDXK_BLOCK;
    int64_t qi = r * q->n_heads + h;
    int8_t *v = q->vals + qi * dim;
    for (int i = 0; i < dim; i++)
        v[i] = (int8_t)fp4_c((i & 1) ? (uint8_t)(packed[i / 2] >> 4)
                                     : (uint8_t)(packed[i / 2] & 15u));
    for (int b = 0; b < nb; b++) {
        int32_t sum = 0;
        for (int i = b * DS4__IDXK_BLOCK; i < (b + 1) * DS4__IDXK_BLOCK; i++)
            sum += v[i];
        q->corr[qi * nb + b] = -DS4__IDXK_KOFF * sum;
        q->scale[qi * nb + b] = fp4_scale(scales[b]);
    }
    int smin;
    if (!fast_ok(scales, nb, &smin)) {
        q->row_fast[r] = 0;
        return;
    }
    int8_t *fv = q->fvals + qi * dim;
    int32_t fsum = 0;
    for (int i = 0; i < dim; i++) {
        fv[i] = (int8_t)(v[i] * (1 << (scales[i / DS4__IDXK_BLOCK] - smin)));
        fsum += fv[i];
    }
    q->fcorr[qi] = -DS4__IDXK_FOFF * fsum;
    q->fscale[qi] = fp4_scale((uint8_t)smin);
}

/* Portable level: the arithmetic of the SIMD levels written over the 16 lanes of a tile (plain
 * loops the compiler may vectorise): per-block sums on any tile form, the whole-dot path on
 * shifted tiles and rows (the offset values and the correction cancel exactly in int32). */
static void portable_tile(const ds4__idxk_job_t *job, int64_t t, int64_t r, float *score)
{
    const ds4__idxk_keys_t *K = job->keys;
    const ds4__idxk_queries_t *Q = job->q;
    const int dim = K->dim, nb = dim / DS4__IDXK_BLOCK, nh = Q->n_heads;
    enum { L = DS4__IDXK_TILE };
    const uint8_t *tv = K->vals + t * (int64_t)dim * L;
    const float *ts = K->scale + t * (int64_t)nb * L;
    const bool fast = K->fast[t] != 0 && Q->row_fast[r] != 0;
    const int32_t cm = K->fast[t] ? DS4__IDXK_FOFF / DS4__IDXK_KOFF : 1;
    for (int l = 0; l < L; l++)
        score[l] = 0.0f;
    for (int h = 0; h < nh; h++) {
        const int64_t qi = r * nh + h;
        float s[L];
        int32_t acc[L];
        if (fast) {
            const int8_t *qv = Q->fvals + qi * dim;
            for (int l = 0; l < L; l++)
                acc[l] = Q->fcorr[qi];
            for (int j = 0; j < dim / 4; j++) {
                const uint8_t *kv = tv + (int64_t)j * 4 * L;
                const int32_t q0 = qv[4 * j], q1 = qv[4 * j + 1], q2 = qv[4 * j + 2],
                              q3 = qv[4 * j + 3];
                for (int l = 0; l < L; l++)
                    acc[l] += kv[4 * l] * q0 + kv[4 * l + 1] * q1 + kv[4 * l + 2] * q2 +
                              kv[4 * l + 3] * q3;
            }
            for (int l = 0; l < L; l++)
                s[l] = (float)acc[l] * ts[l] * Q->fscale[qi];
        } else {
            const int8_t *qv = Q->vals + qi * dim;
            for (int b = 0; b < nb; b++) {
                for (int l = 0; l < L; l++)
                    acc[l] = cm * Q->corr[qi * nb + b];
                for (int j = b * 8; j < b * 8 + 8; j++) {
                    const uint8_t *kv = tv + (int64_t)j * 4 * L;
                    const int32_t q0 = qv[4 * j], q1 = qv[4 * j + 1], q2 = qv[4 * j + 2],
                                  q3 = qv[4 * j + 3];
                    for (int l = 0; l < L; l++)
                        acc[l] += kv[4 * l] * q0 + kv[4 * l + 1] * q1 + kv[4 * l + 2] * q2 +
                                  kv[4 * l + 3] * q3;
                }
                const float qs = Q->scale[qi * nb + b];
                for (int l = 0; l < L; l++) {
                    float x = (float)acc[l] * ts[b * L + l];
                    x = x * qs;
                    s[l] = b == 0 ? x : s[l] + x;
                }
            }
        }
        const float w = job->w[qi];
        for (int l = 0; l < L; l++) {
            float d = ds4_round_bf16(s[l]);
            if (d < 0.0f)
                d = 0.0f;
            score[l] = score[l] + ds4_round_bf16(d * w);
        }
    }
    for (int l = 0; l < L; l++)
        score[l] = ds4_round_bf16(score[l]);
}

void ds4__idxk_rows_portable(const ds4__idxk_job_t *job, int64_t r0, int64_t r1)
{
    const int topk = job->topk, L = DS4__IDXK_TILE;
    for (int64_t r = r0; r < r1; r++)
        job->n_sel[r] = 0;
    const int64_t n_tiles = (job->n_visible[r1 - 1] + L - 1) / L;
    for (int64_t t = 0; t < n_tiles; t++) {
        for (int64_t r = r0; r < r1; r++) {
            const int64_t nv = job->n_visible[r];
            if (t * L >= nv)
                continue;
            float score[DS4__IDXK_TILE];
            portable_tile(job, t, r, score);
            int32_t *sel = job->sel + r * topk;
            float *best = job->best + r * topk;
            int k = job->n_sel[r];
            int n = nv - t * L < L ? (int)(nv - t * L) : L;
            for (int l = 0; l < n; l++)
                ds4__idxk_insert(sel, best, &k, topk, (int32_t)(t * L + l), score[l]);
            job->n_sel[r] = k;
        }
    }
}

bool ds4__idxk_level_supported(ds4__idxk_level_t level)
{
    switch (level) {
    case DS4__IDXK_AUTO:
    case DS4__IDXK_PORTABLE:
        return true;
#if defined(__x86_64__) || defined(__i386__)
    case DS4__IDXK_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    case DS4__IDXK_AVX512VNNI:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    default:
        return false;
    }
}

ds4__idxk_level_t ds4__idxk_level_best(void)
{
    if (ds4__idxk_level_supported(DS4__IDXK_AVX512VNNI))
        return DS4__IDXK_AVX512VNNI;
    if (ds4__idxk_level_supported(DS4__IDXK_AVX2))
        return DS4__IDXK_AVX2;
    return DS4__IDXK_PORTABLE;
}

const char *ds4__idxk_level_name(ds4__idxk_level_t level)
{
    switch (level) {
    case DS4__IDXK_AUTO:
        return "auto";
    case DS4__IDXK_PORTABLE:
        return "portable";
    case DS4__IDXK_AVX2:
        return "avx2";
    case DS4__IDXK_AVX512VNNI:
        return "avx512vnni";
    }
    return "?";
}

static void run_rows(const ds4__idxk_job_t *job, int64_t r0, int64_t r1)
{
    switch (job->run_level) {
#if defined(__x86_64__) || defined(__i386__)
    case DS4__IDXK_AVX512VNNI:
        ds4__idxk_rows_avx512(job, r0, r1);
        return;
    case DS4__IDXK_AVX2:
        ds4__idxk_rows_avx2(job, r0, r1);
        return;
#endif
    default:
        ds4__idxk_rows_portable(job, r0, r1);
        return;
    }
}

/* Each participating thread takes row blocks from a shared counter, the (causally) heaviest
 * last blocks first; a row's result does not depend on which thread computes it. */
static void select_worker(void *arg, size_t begin, size_t end, int thread_index)
{
    ds4__idxk_job_t *job = arg;
    const int64_t nb = job->n_blocks, qb = job->rows_per_block;
    for (;;) {
        long i = atomic_fetch_add(&job->next_block, 1);
        if (i >= nb)
            break;
        int64_t b = nb - 1 - i;
        int64_t r0 = b * qb, r1 = r0 + qb < job->q->n_rows ? r0 + qb : job->q->n_rows;
        run_rows(job, r0, r1);
    }
}

void ds4__idxk_select(ds4__idxk_job_t *job, const ds4_backend_ops_t *ops, ds4_backend_h be)
{
    const ds4__idxk_queries_t *Q = job->q;
    DS4_ASSERT(job->topk > 0 && Q->dim == job->keys->dim);
    ds4__idxk_level_t level = job->level;
    if (level == DS4__IDXK_AUTO || !ds4__idxk_level_supported(level))
        level = ds4__idxk_level_best();
    if (Q->n_heads % 4 != 0) /* the SIMD levels take heads four at a time */
        level = DS4__IDXK_PORTABLE;
    job->run_level = level;
    if (Q->n_rows == 0)
        return;
    /* Rows per block: the block's query values (rows x heads x dim bytes) stay in L1 while
     * each key tile is used by all of them. */
    int64_t per_row = (int64_t)Q->n_heads * Q->dim;
    int64_t qb = 16384 / per_row;
    qb = qb < 1 ? 1 : (qb > 64 ? 64 : qb);
    job->rows_per_block = qb;
    job->n_blocks = (Q->n_rows + qb - 1) / qb;
    atomic_store(&job->next_block, 0);
    if (ops != NULL && ops->parallel_for != NULL)
        ops->parallel_for(be, (size_t)job->n_blocks, select_worker, job);
    else
        select_worker(job, 0, (size_t)job->n_blocks, 0);
}
