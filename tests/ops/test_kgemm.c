/* The CPU backend's K-blocked FP8/FP4 GEMM (kernels/cpu/kgemm.h), every dispatch level this CPU
 * runs:
 *   - against an independent reference written here: weights dequantised and activations
 *     act_quant'ed with the formulas of ds4/numeric.h (frexp scale, ds4_f32_to_e4m3), block sums
 *     in double. On data whose 128-input block sums are exact in fp32 the result must equal the
 *     reference's fp32 block-order accumulation bit for bit; on wide-range data (inexact block
 *     sums) it must lie within the rounding bound (k + blocks) * 2^-24 * sum |x w|, and equal
 *     bit for bit the order kgemm.h promises (sequential fmaf per block, written out here).
 *   - bitwise against the portable level (same order everywhere), on both kinds of data;
 *   - act_quant of each level bitwise against ds4_act_quant_fp8 (incl. NaN, inf, ties, tiny);
 *   - rows independent of the batch split, the thread count and the fp32 weight copy.
 * Shapes include ragged K (not a multiple of 128 or 16) and ragged N (not a multiple of 32). */
#include "test.h"

#include "ds4/alloc.h"
#include "ds4/backend.h"
#include "ds4/numeric.h"
#include "ds4/threadpool.h"
#include "kgemm.h"

#include <math.h>
#include <string.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd_u32(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_rng >> 33);
}
/* uniform in [-1, 1) */
static float rnd_unit(void)
{
    return (float)(rnd_u32() & 0xffffff) / 8388608.0f - 1.0f;
}

typedef struct shape {
    ds4_wtype_t type;
    int64_t m, n, k;
} shape_t;

static const shape_t g_shapes[] = {
    {DS4_W_FP8, 1, 1, 1},      {DS4_W_FP8, 3, 37, 100},   {DS4_W_FP8, 13, 130, 300},
    {DS4_W_FP8, 25, 64, 128},  {DS4_W_FP8, 12, 33, 257},  {DS4_W_FP8, 40, 129, 1000},
    {DS4_W_FP8, 7, 200, 515},  {DS4_W_FP8, 2, 256, 1024}, {DS4_W_FP4, 1, 3, 32},
    {DS4_W_FP4, 7, 33, 96},    {DS4_W_FP4, 12, 70, 160},  {DS4_W_FP4, 29, 160, 544},
    {DS4_W_FP4, 5, 128, 1024},
};

typedef struct mat {
    ds4_weight_t w;
    uint8_t *data, *scale;
    float *x; /* [m, k] activations */
} mat_t;

/* wide: activations spanning 2^-12..2^12 inside a block and weight codes of every exponent
 * (block sums inexact); otherwise activations of magnitude [0.25, 2) and weight codes with
 * exponents 5..10 (block sums need <= 22 bits: exact in fp32, checked). */
static void make(const shape_t *s, bool wide, mat_t *mt)
{
    int64_t n = s->n, k = s->k;
    memset(mt, 0, sizeof(*mt));
    mt->x = ds4_malloc_array((size_t)(s->m * k), sizeof(float));
    for (int64_t i = 0; i < s->m * k; i++) {
        float v = rnd_unit();
        mt->x[i] = wide ? ldexpf(v, (int)(rnd_u32() % 25) - 12)
                        : copysignf(ldexpf(1.0f + fabsf(v), -(int)(rnd_u32() % 3)), v);
    }
    if (s->type == DS4_W_FP8) {
        int64_t nsc = ((n + 127) / 128) * ((k + 127) / 128);
        mt->data = ds4_malloc((size_t)(n * k));
        mt->scale = ds4_malloc((size_t)nsc);
        for (int64_t i = 0; i < n * k; i++) {
            uint8_t c;
            do {
                c = (uint8_t)rnd_u32();
                if (!wide)
                    c = (uint8_t)((c & 0x87) | ((5 + rnd_u32() % 6) << 3));
            } while ((c & 0x7f) == 0x7f); /* no NaN weights */
            mt->data[i] = c;
        }
        for (int64_t i = 0; i < nsc; i++)
            mt->scale[i] = (uint8_t)(112 + rnd_u32() % 16);
    } else {
        mt->data = ds4_malloc((size_t)(n * k / 2));
        mt->scale = ds4_malloc((size_t)(n * k / 32));
        for (int64_t i = 0; i < n * k / 2; i++)
            mt->data[i] = (uint8_t)rnd_u32();
        for (int64_t i = 0; i < n * k / 32; i++)
            mt->scale[i] = (uint8_t)(wide ? 100 + rnd_u32() % 40 : 124 + rnd_u32() % 4);
    }
    mt->w = (ds4_weight_t){.type = s->type, .n = n, .k = k, .data = mt->data,
                           .scale = mt->scale};
}

static void unmake(mat_t *mt)
{
    ds4_free(mt->x);
    ds4_free(mt->data);
    ds4_free(mt->scale);
}

/* ---- the independent reference (numeric.h formulas only) ---- */

static double ref_weight(const ds4_weight_t *w, int64_t o, int64_t i)
{
    const uint8_t *d = w->data;
    if (w->type == DS4_W_FP8) {
        uint8_t sc = w->scale[(o / 128) * ((w->k + 127) / 128) + i / 128];
        return (double)ds4_e4m3_to_f32(d[o * w->k + i]) * ldexp(1.0, sc - 127);
    }
    uint8_t byte = d[o * (w->k / 2) + i / 2];
    uint8_t code = (i % 2) == 0 ? (uint8_t)(byte & 15) : (uint8_t)(byte >> 4);
    uint8_t sc = w->scale[o * (w->k / 32) + i / 32];
    return (double)ds4_e2m1_to_f32(code) * ldexp(1.0, sc - 127);
}

/* act_quant of one row: per 128 inputs, s = 2^ceil(log2(fl32(max(amax, 1e-4) * fl32(1/448)))),
 * value = e4m3(x / s) * s with ds4_f32_to_e4m3 (RNE, saturating). */
static void ref_act_quant(const float *x, int64_t k, double *out)
{
    for (int64_t b0 = 0; b0 < k; b0 += 128) {
        int64_t len = k - b0 < 128 ? k - b0 : 128;
        float amax = 0.0f;
        for (int64_t i = 0; i < len; i++)
            amax = fmaxf(amax, fabsf(x[b0 + i]));
        if (amax < 1e-4f)
            amax = 1e-4f;
        float v = amax * (float)(1.0 / 448.0);
        int e;
        float mant = frexpf(v, &e); /* v = mant * 2^e, mant in [0.5, 1) */
        int sexp = mant == 0.5f ? e - 1 : e;
        for (int64_t i = 0; i < len; i++) {
            float q = ldexpf(x[b0 + i], -sexp); /* exact: power of two */
            out[b0 + i] = ldexp((double)ds4_e4m3_to_f32(ds4_f32_to_e4m3(q)), sexp);
        }
    }
}

/* Compares y [m, n] with the reference; *n_inexact counts blocks whose double sum is not an fp32
 * value. exact_expected: bitwise check of the fp32 block-order accumulation. */
static void check_reference(const mat_t *mt, int64_t m, const float *y, bool exact_expected,
                            const char *what)
{
    const ds4_weight_t *w = &mt->w;
    int64_t n = w->n, k = w->k;
    double *xq = ds4_malloc_array((size_t)k, sizeof(double));
    double *wd = ds4_malloc_array((size_t)(n * k), sizeof(double));
    for (int64_t o = 0; o < n; o++)
        for (int64_t i = 0; i < k; i++)
            wd[o * k + i] = ref_weight(w, o, i);
    int64_t inexact = 0, bad_bits = 0, bad_bound = 0, bad_order = 0;
    double worst = 0.0;
    for (int64_t r = 0; r < m; r++) {
        ref_act_quant(mt->x + r * k, k, xq);
        for (int64_t o = 0; o < n; o++) {
            float acc = 0.0f, seq = 0.0f;
            double exact = 0.0, mag = 0.0;
            for (int64_t b0 = 0; b0 < k; b0 += 128) {
                int64_t len = k - b0 < 128 ? k - b0 : 128;
                double blk = 0.0;
                float blk32 = 0.0f;
                for (int64_t i = b0; i < b0 + len; i++) {
                    double p = xq[i] * wd[o * k + i]; /* exact: <= 8-bit significands */
                    blk += p;
                    mag += fabs(p);
                    blk32 = fmaf((float)xq[i], (float)wd[o * k + i], blk32);
                }
                inexact += (double)(float)blk != blk;
                acc = b0 == 0 ? (float)blk : (float)((double)acc + (double)(float)blk);
                seq = b0 == 0 ? blk32 : seq + blk32;
                exact += blk;
            }
            float got = y[r * n + o];
            bad_bits += memcmp(&acc, &got, sizeof(got)) != 0;
            bad_order += memcmp(&seq, &got, sizeof(got)) != 0;
            double bound = (double)(k + (k + 127) / 128 + 1) * 0x1p-24 * mag + 1e-30;
            double err = fabs((double)got - exact);
            bad_bound += !(err <= bound);
            worst = err / bound > worst ? err / bound : worst;
        }
    }
    DS4_CHECKF(bad_bound == 0, "%s: %lld outputs outside the rounding bound (worst %.3g x)", what,
               (long long)bad_bound, worst);
    DS4_CHECKF(bad_order == 0, "%s: %lld outputs differ from kgemm.h's order (sequential fma "
               "per 128-block, blocks added in order)", what, (long long)bad_order);
    if (exact_expected) {
        DS4_CHECKF(inexact == 0, "%s: test data not exact (%lld blocks)", what,
                   (long long)inexact);
        DS4_CHECKF(bad_bits == 0, "%s: %lld outputs differ from the exact reference bits", what,
                   (long long)bad_bits);
    }
    ds4_free(xq);
    ds4_free(wd);
}

static const ds4__kgemm_ops_t *g_levels[DS4_KGEMM_N_LEVELS];

static float *run(const ds4__kgemm_ops_t *ops, ds4_threadpool_h pool, const mat_t *mt, int64_t m)
{
    float *y = ds4_malloc_array((size_t)(m * mt->w.n), sizeof(float));
    for (int64_t i = 0; i < m * mt->w.n; i++)
        y[i] = NAN; /* every output must be written */
    DS4_CHECK_STATUS(ds4__kgemm_matmul(ops, pool, &mt->w, m, mt->x, true, y), DS4_OK);
    return y;
}

static void test_levels_against_reference(void)
{
    int n_run = 0;
    for (int l = 0; l < DS4_KGEMM_N_LEVELS; l++) {
        g_levels[l] = ds4__kgemm_ops((ds4__kgemm_level_t)l);
        printf("level %d: %s\n", l, g_levels[l] != NULL ? g_levels[l]->name : "not available");
        n_run += g_levels[l] != NULL;
    }
    DS4_CHECK(g_levels[DS4_KGEMM_PORTABLE] != NULL && ds4__kgemm_best() != NULL);
    for (int wide = 0; wide < 2; wide++) {
        for (size_t si = 0; si < sizeof(g_shapes) / sizeof(g_shapes[0]); si++) {
            const shape_t *s = &g_shapes[si];
            mat_t mt;
            make(s, wide != 0, &mt);
            float *y0 = run(g_levels[DS4_KGEMM_PORTABLE], NULL, &mt, s->m);
            char what[128];
            snprintf(what, sizeof(what), "%s %lldx%lldx%lld %s",
                     s->type == DS4_W_FP8 ? "fp8" : "fp4", (long long)s->m, (long long)s->k,
                     (long long)s->n, wide ? "wide" : "exact");
            check_reference(&mt, s->m, y0, wide == 0, what);
            for (int l = 1; l < DS4_KGEMM_N_LEVELS; l++) {
                if (g_levels[l] == NULL)
                    continue;
                float *y = run(g_levels[l], NULL, &mt, s->m);
                DS4_CHECKF(memcmp(y, y0, sizeof(float) * (size_t)(s->m * s->n)) == 0,
                           "%s: level %s differs from portable", what, g_levels[l]->name);
                ds4_free(y);
            }
            ds4_free(y0);
            unmake(&mt);
        }
    }
    printf("%d levels checked on %zu shapes x 2 data kinds\n", n_run,
           sizeof(g_shapes) / sizeof(g_shapes[0]));
}

/* Row splits, thread counts and the fp32 weight copy change no bit (best level). */
static void test_independence(void)
{
    const ds4__kgemm_ops_t *ops = ds4__kgemm_best();
    shape_t s = {DS4_W_FP8, 50, 161, 389};
    for (int t = 0; t < 2; t++) {
        s.type = t == 0 ? DS4_W_FP8 : DS4_W_FP4;
        s.k = t == 0 ? 389 : 416;
        mat_t mt;
        make(&s, true, &mt);
        float *y = run(ops, NULL, &mt, s.m);
        static const int64_t splits[] = {1, 5, 13};
        for (size_t i = 0; i < 3; i++) {
            float *y2 = ds4_malloc_array((size_t)(s.m * s.n), sizeof(float));
            for (int64_t r = 0; r < s.m; r += splits[i]) {
                int64_t mm = s.m - r < splits[i] ? s.m - r : splits[i];
                DS4_CHECK_STATUS(ds4__kgemm_matmul(ops, NULL, &mt.w, mm, mt.x + r * s.k, true,
                                                   y2 + r * s.n),
                                 DS4_OK);
            }
            DS4_CHECKF(memcmp(y, y2, sizeof(float) * (size_t)(s.m * s.n)) == 0,
                       "type %d: batches of %lld differ", s.type, (long long)splits[i]);
            ds4_free(y2);
        }
        for (int nt = 2; nt <= 3; nt++) {
            ds4_threadpool_params_t p = ds4_threadpool_params_default();
            p.n_threads = nt;
            ds4_threadpool_h pool;
            DS4_CHECK_STATUS(ds4_threadpool_create(&p, &pool), DS4_OK);
            float *y2 = run(ops, pool, &mt, s.m);
            DS4_CHECKF(memcmp(y, y2, sizeof(float) * (size_t)(s.m * s.n)) == 0,
                       "type %d: %d threads differ", s.type, nt);
            ds4_free(y2);
            ds4_threadpool_destroy(pool);
        }
        float *wf = ds4_malloc_array((size_t)(s.n * s.k), sizeof(float));
        ds4_weight_dequant_rows(&mt.w, 0, s.n, wf);
        mt.w.f32 = wf;
        float *y3 = run(ops, NULL, &mt, s.m);
        DS4_CHECKF(memcmp(y, y3, sizeof(float) * (size_t)(s.m * s.n)) == 0,
                   "type %d: fp32 weight copy differs", s.type);
        ds4_free(y3);
        ds4_free(wf);
        ds4_free(y);
        unmake(&mt);
    }
}

/* The backend's matmul goes through kgemm: same bits as the best level called directly. */
static void test_backend_path(void)
{
    const ds4_backend_ops_t *be_ops = ds4_backend_get("cpu");
    ds4_backend_h be;
    DS4_CHECK_STATUS(be_ops->create(2, &be), DS4_OK);
    shape_t s = {DS4_W_FP8, 9, 300, 640};
    mat_t mt;
    make(&s, true, &mt);
    float *y = run(ds4__kgemm_best(), NULL, &mt, s.m);
    float *y2 = ds4_malloc_array((size_t)(s.m * s.n), sizeof(float));
    be_ops->matmul(be, &mt.w, s.m, mt.x, y2, 0);
    DS4_CHECK(memcmp(y, y2, sizeof(float) * (size_t)(s.m * s.n)) == 0);
    /* K = 0: empty sums are zero on every level */
    for (int l = 0; l < DS4_KGEMM_N_LEVELS; l++) {
        const ds4__kgemm_ops_t *ops = ds4__kgemm_ops((ds4__kgemm_level_t)l);
        ds4_weight_t w0 = {.type = DS4_W_FP8, .n = 5, .k = 0, .data = mt.data,
                           .scale = mt.scale};
        for (int i = 0; i < 15; i++)
            y[i] = NAN;
        if (ops != NULL)
            DS4_CHECK_STATUS(ds4__kgemm_matmul(ops, NULL, &w0, 3, mt.x, true, y), DS4_OK);
        for (int i = 0; ops != NULL && i < 15; i++)
            DS4_CHECK(y[i] == 0.0f);
    }
    ds4_free(y);
    ds4_free(y2);
    unmake(&mt);
    be_ops->destroy(be);
}

static void test_act_quant_levels(void)
{
    enum { N = 997 }; /* ragged last blocks (101 and 37 inputs): vector tails */
    float *x = ds4_malloc_array(N, sizeof(float));
    float *a = ds4_malloc_array(N, sizeof(float));
    float *b = ds4_malloc_array(N, sizeof(float));
    for (int trial = 0; trial < 6; trial++) {
        for (int i = 0; i < N; i++) {
            float v = rnd_unit();
            switch (trial) {
            case 0: x[i] = v; break;
            case 1: x[i] = ldexpf(v, (int)(rnd_u32() % 60) - 30); break;
            case 2: x[i] = ldexpf(v, -140); break; /* fp32 subnormals: amax floor */
            case 3: /* e4m3 rounding ties and near-ties around a 448 * 2^-3 block max */
                x[i] = i % 128 == 0 ? 56.0f
                       : ldexpf((float)(rnd_u32() % 64) + 0.5f * (float)(rnd_u32() % 3),
                                -(int)(rnd_u32() % 12));
                break;
            case 4: x[i] = i % 97 == 0 ? NAN : (i % 89 == 0 ? -INFINITY : v); break;
            default: x[i] = i % 3 == 0 ? -0.0f : (i % 3 == 1 ? 0.0f : ldexpf(v, -20)); break;
            }
        }
        if (trial == 4) {
            x[N - 2] = NAN; /* NaN in a vector tail */
            x[N - 40] = 1e6f; /* the largest value of its lane elsewhere */
        }
        ds4_act_quant_fp8(x, N, 128, a, NULL, NULL);
        /* the scalar path against the numeric.h reference (finite inputs) */
        if (trial != 4) {
            double *r = ds4_malloc_array(N, sizeof(double));
            ref_act_quant(x, N, r);
            int bad = 0;
            for (int i = 0; i < N; i++) {
                bad += (double)a[i] != r[i] || (signbit(a[i]) != 0) != (signbit(r[i]) != 0);
            }
            DS4_CHECKF(bad == 0, "trial %d: %d act_quant values differ from the reference", trial,
                       bad);
            ds4_free(r);
        }
        for (int l = 0; l < DS4_KGEMM_N_LEVELS; l++) {
            const ds4__kgemm_ops_t *ops = ds4__kgemm_ops((ds4__kgemm_level_t)l);
            if (ops == NULL)
                continue;
            for (int block = 64; block <= 128; block += 64) {
                ds4_act_quant_fp8(x, N, block, a, NULL, NULL);
                ops->act_quant(x, N, block, b);
                DS4_CHECKF(memcmp(a, b, sizeof(float) * N) == 0,
                           "trial %d block %d: act_quant of level %s differs", trial, block,
                           ops->name);
            }
        }
    }
    ds4_free(x);
    ds4_free(a);
    ds4_free(b);
}

int main(void)
{
    DS4_RUN(test_levels_against_reference);
    DS4_RUN(test_independence);
    DS4_RUN(test_backend_path);
    DS4_RUN(test_act_quant_levels);
    return ds4_test_finish();
}
