/* The fused lightning-indexer kernel (common/src/model/indexer-kernel.h) against a plain
 * reference written here from the formula: FP4 decoded to values, q.k summed in double, then
 * score = bf16(sum_h bf16(relu(bf16(dot)) * w_h)) in fp32 and a full sort by (score desc,
 * g asc). Every dispatch level this CPU runs (portable C always) is checked, on random FP4 data
 * built to tie often (few distinct key rows, few weights), with n_keys 0, 1, 15, 16, 17, 1000+,
 * causal visibility from positions that are not multiples of 4, and rows split into chunks. */
#include "test.h"

#include "indexer-kernel.h"

#include "ds4/backend.h"
#include "ds4/numeric.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 11);
}

/* A test case: keys as FP4 wire rows, queries as packed codes + scales, weights. */
typedef struct icase {
    int dim, nh, topk;
    int64_t n_keys, T;
    size_t row_bytes;
    uint8_t *rows;         /* [n_keys][row_bytes] */
    uint8_t *qpk;          /* [T][nh][dim/2 + dim/32] */
    float *w;              /* [T][nh] */
    int64_t *n_vis;        /* [T] */
} icase_t;

static void fp4_random_row(uint8_t *row, int dim, int s_lo, int s_span, int distinct)
{
    /* `distinct` > 0 limits the codes to a few magnitudes so many dots coincide */
    for (int i = 0; i < dim / 2; i++) {
        uint8_t lo = (uint8_t)(rnd() & 15u), hi = (uint8_t)(rnd() & 15u);
        if (distinct > 0) {
            lo = (uint8_t)((lo & 8u) | (rnd() % (unsigned)distinct));
            hi = (uint8_t)((hi & 8u) | (rnd() % (unsigned)distinct));
        }
        row[i] = (uint8_t)(lo | (hi << 4));
    }
    for (int b = 0; b < dim / 32; b++)
        row[dim / 2 + b] = (uint8_t)(s_lo + (int)(rnd() % (unsigned)s_span));
}

/* Makes a row's block exponents leave the kernel's shifted form (spread 4, or a scale byte
 * below its range when there is one block) while staying within the exactness condition. */
static void make_slow(uint8_t *row, int dim)
{
    int nb = dim / 32;
    if (nb >= 2) {
        row[dim / 2 + nb - 1] = (uint8_t)(row[dim / 2] + 4);
    } else {
        row[dim / 2] = 64;
    }
}

/* Block exponents: queries s in [120, 120 + span), keys [124, 124 + span); slow_pct percent
 * of the key rows and query rows get the exponents of make_slow. */
static icase_t case_make(int dim, int nh, int topk, int64_t n_keys, int64_t T, int64_t p0,
                         int span, int slow_pct)
{
    icase_t c = {.dim = dim, .nh = nh, .topk = topk, .n_keys = n_keys, .T = T};
    c.row_bytes = (size_t)(dim / 2 + dim / 32 + 3); /* odd stride on purpose */
    c.rows = calloc((size_t)(n_keys > 0 ? n_keys : 1), c.row_bytes);
    size_t qb = (size_t)(dim / 2 + dim / 32);
    c.qpk = calloc((size_t)(T * nh) * qb, 1);
    c.w = calloc((size_t)(T * nh), sizeof(float));
    c.n_vis = calloc((size_t)T, sizeof(int64_t));
    /* few distinct key rows (repeated at random) -> equal scores at many g */
    int n_distinct = 6;
    uint8_t *pool = calloc((size_t)n_distinct, c.row_bytes);
    for (int i = 0; i < n_distinct; i++)
        fp4_random_row(pool + (size_t)i * c.row_bytes, dim, 124, span, 4);
    for (int64_t g = 0; g < n_keys; g++) {
        uint8_t *row = c.rows + (size_t)g * c.row_bytes;
        if (rnd() % 3 == 0)
            fp4_random_row(row, dim, 124, span, 0);
        else
            memcpy(row, pool + (size_t)(rnd() % (unsigned)n_distinct) * c.row_bytes,
                   c.row_bytes);
        if ((int)(rnd() % 100) < slow_pct)
            make_slow(row, dim);
    }
    free(pool);
    static const float wset[] = {0.5f, 0.25f, -0.375f, 0.0f, 1.0f, 0.1875f, -1.5f};
    for (int64_t t = 0; t < T; t++) {
        for (int h = 0; h < nh; h++) {
            fp4_random_row(c.qpk + (size_t)(t * nh + h) * qb, dim, 120, span, 0);
            if ((int)(rnd() % 100) < slow_pct)
                make_slow(c.qpk + (size_t)(t * nh + h) * qb, dim);
            c.w[t * nh + h] = wset[rnd() % (sizeof(wset) / sizeof(wset[0]))];
        }
        /* causal: position p0 + t sees groups g < (p + 1) / 4, capped by the keys present */
        int64_t nv = (p0 + t + 1) / 4;
        c.n_vis[t] = nv < n_keys ? nv : n_keys;
    }
    return c;
}

static void case_free(icase_t *c)
{
    free(c->rows);
    free(c->qpk);
    free(c->w);
    free(c->n_vis);
}

static double fp4_value(const uint8_t *packed, const uint8_t *scales, int i)
{
    uint8_t code = (i & 1) ? (uint8_t)(packed[i / 2] >> 4) : (uint8_t)(packed[i / 2] & 15u);
    return (double)ds4_e2m1_to_f32(code) * (double)ds4_e8m0_to_f32(scales[i / 32]);
}

typedef struct scored {
    float sc;
    int32_t g;
} scored_t;

static int scored_cmp(const void *a, const void *b)
{
    const scored_t *x = a, *y = b;
    if (x->sc != y->sc)
        return x->sc > y->sc ? -1 : 1;
    return x->g < y->g ? -1 : (x->g > y->g);
}

/* Reference selection of row t: sel[topk], returns the count; *ties_at_edge counts rows whose
 * k-th and (k+1)-th scores are equal (the data must exercise the tie rule). */
static int ref_row(const icase_t *c, int64_t t, int32_t *sel, int *ties_at_edge)
{
    int64_t nv = c->n_vis[t];
    size_t qb = (size_t)(c->dim / 2 + c->dim / 32);
    scored_t *all = malloc(sizeof(scored_t) * (size_t)(nv > 0 ? nv : 1));
    for (int64_t g = 0; g < nv; g++) {
        const uint8_t *kr = c->rows + (size_t)g * c->row_bytes;
        float acc = 0.0f;
        for (int h = 0; h < c->nh; h++) {
            const uint8_t *qr = c->qpk + (size_t)(t * c->nh + h) * qb;
            double dot = 0.0;
            for (int i = 0; i < c->dim; i++)
                dot += fp4_value(qr, qr + c->dim / 2, i) * fp4_value(kr, kr + c->dim / 2, i);
            float d = ds4_round_bf16((float)dot);
            if (d < 0.0f)
                d = 0.0f;
            acc += ds4_round_bf16(d * c->w[t * c->nh + h]);
        }
        all[g].sc = ds4_round_bf16(acc);
        all[g].g = (int32_t)g;
    }
    qsort(all, (size_t)nv, sizeof(scored_t), scored_cmp);
    int n = nv < c->topk ? (int)nv : c->topk;
    for (int i = 0; i < n; i++)
        sel[i] = all[i].g;
    if (nv > c->topk && all[c->topk - 1].sc == all[c->topk].sc)
        (*ties_at_edge)++;
    free(all);
    return n;
}

/* CPU time of this thread (the machine is shared: wall time would measure the neighbours). */
static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Tiles [0] and query rows [1] seen in plain [][0] and shifted [][1] form. */
static long g_forms[2][2];

/* Runs the kernel on rows [r0, r1) of the case at `level`; sel/n_sel are [T] arrays. */
static void kernel_rows(const icase_t *c, int64_t r0, int64_t r1, ds4__idxk_level_t level,
                        const ds4_backend_ops_t *ops, ds4_backend_h be, int32_t *sel,
                        int32_t *n_sel, double *select_s)
{
    ds4__idxk_keys_t keys;
    ds4__idxk_queries_t q;
    int64_t T = r1 - r0;
    DS4_CHECK(ds4__idxk_keys_alloc(&keys, c->dim, c->n_keys) == DS4_OK);
    DS4_CHECK(ds4__idxk_queries_alloc(&q, c->dim, c->nh, T) == DS4_OK);
    /* fill in two tile ranges, as threads would */
    int64_t half = keys.n_tiles / 2;
    ds4__idxk_keys_fill(&keys, c->rows, c->row_bytes, half, keys.n_tiles);
    ds4__idxk_keys_fill(&keys, c->rows, c->row_bytes, 0, half);
    size_t qb = (size_t)(c->dim / 2 + c->dim / 32);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < c->nh; h++) {
            const uint8_t *p = c->qpk + (size_t)((r0 + t) * c->nh + h) * qb;
            ds4__idxk_queries_set(&q, t, h, p, p + c->dim / 2);
        }
    for (int64_t t = 0; t < keys.n_tiles; t++)
        g_forms[0][keys.fast[t] != 0]++;
    for (int64_t t = 0; t < T; t++)
        g_forms[1][q.row_fast[t] != 0]++;
    float *best = malloc(sizeof(float) * (size_t)(T > 0 ? T * c->topk : 1));
    ds4__idxk_job_t job = {.keys = &keys, .q = &q, .w = c->w + r0 * c->nh,
                           .n_visible = c->n_vis + r0, .topk = c->topk, .level = level,
                           .sel = sel + r0 * c->topk, .best = best, .n_sel = n_sel + r0};
    double t0 = thread_cpu_s();
    ds4__idxk_select(&job, ops, be);
    if (select_s != NULL)
        *select_s = thread_cpu_s() - t0;
    if (level != DS4__IDXK_AUTO && c->nh % 4 == 0)
        DS4_CHECK_EQ_INT(job.run_level, level);
    free(best);
    ds4__idxk_queries_free(&q);
    ds4__idxk_keys_free(&keys);
}

static const ds4__idxk_level_t k_levels[] = {DS4__IDXK_PORTABLE, DS4__IDXK_AVX2,
                                             DS4__IDXK_AVX512VNNI};

/* Checks every supported level (and a chunked / threaded run) against the reference. */
static void check_case(const char *name, icase_t *c, int *ties)
{
    int64_t T = c->T;
    int32_t *rsel = calloc((size_t)(T * c->topk + 1), sizeof(int32_t));
    int32_t *rn = calloc((size_t)T + 1, sizeof(int32_t));
    for (int64_t t = 0; t < T; t++)
        rn[t] = ref_row(c, t, rsel + t * c->topk, ties);
    int32_t *sel = calloc((size_t)(T * c->topk + 1), sizeof(int32_t));
    int32_t *nsel = calloc((size_t)T + 1, sizeof(int32_t));
    ds4_backend_h be = NULL;
    const ds4_backend_ops_t *cpu = ds4_backend_get("cpu");
    DS4_CHECK(cpu != NULL && cpu->create(2, &be) == DS4_OK);
    for (size_t li = 0; li < sizeof(k_levels) / sizeof(k_levels[0]); li++) {
        ds4__idxk_level_t lv = k_levels[li];
        if (!ds4__idxk_level_supported(lv)) {
            fprintf(stderr, "  %s: level %s not supported here, skipped\n", name,
                    ds4__idxk_level_name(lv));
            continue;
        }
        for (int mode = 0; mode < 2; mode++) {
            memset(sel, 0xff, sizeof(int32_t) * (size_t)(T * c->topk + 1));
            memset(nsel, 0xff, sizeof(int32_t) * ((size_t)T + 1));
            if (mode == 0) {
                kernel_rows(c, 0, T, lv, NULL, NULL, sel, nsel, NULL);
            } else {
                /* chunks of rows (uneven split) on the backend's 2 threads */
                int64_t a = T / 3;
                kernel_rows(c, 0, a, lv, cpu, be, sel, nsel, NULL);
                kernel_rows(c, a, T, lv, cpu, be, sel, nsel, NULL);
            }
            int bad = 0;
            for (int64_t t = 0; t < T && bad < 3; t++) {
                int ok = nsel[t] == rn[t] &&
                         memcmp(sel + t * c->topk, rsel + t * c->topk,
                                sizeof(int32_t) * (size_t)rn[t]) == 0;
                if (!ok) {
                    bad++;
                    DS4_CHECKF(ok, "%s level %s mode %d row %lld: n %d vs %d, first sel %d vs %d",
                               name, ds4__idxk_level_name(lv), mode, (long long)t, nsel[t],
                               rn[t], sel[t * c->topk], rsel[t * c->topk]);
                }
            }
        }
    }
    cpu->destroy(be);
    free(rsel);
    free(rn);
    free(sel);
    free(nsel);
}

static void test_v4_shape(void)
{
    /* V4 indexer shape: dim 128, 4 heads (tiny) , topk 64 */
    static const int64_t nks[] = {0, 1, 15, 16, 17, 1000, 1503};
    int ties = 0;
    for (size_t i = 0; i < sizeof(nks) / sizeof(nks[0]); i++) {
        int64_t nk = nks[i];
        int64_t T = nk > 100 ? 40 : 23;
        int64_t p0 = nk * 4 - T + 2; /* not a multiple of 4; the last rows see every key */
        if (p0 < 0)
            p0 = 1;
        icase_t c = case_make(128, 4, 64, nk, T, p0, 3, i % 2 == 0 ? 2 : 0);
        char name[64];
        snprintf(name, sizeof(name), "dim128 nh4 topk64 n_keys %lld", (long long)nk);
        check_case(name, &c, &ties);
        case_free(&c);
    }
    fprintf(stderr, "  rows with a tie at the top-k edge: %d\n", ties);
    fprintf(stderr, "  tiles plain %ld shifted %ld, query rows plain %ld shifted %ld\n",
            g_forms[0][0], g_forms[0][1], g_forms[1][0], g_forms[1][1]);
    /* every path of the kernel ran: per-block (plain tiles / plain rows) and whole-dot */
    DS4_CHECK(g_forms[0][0] > 10 && g_forms[0][1] > 10);
    DS4_CHECK(g_forms[1][0] > 10 && g_forms[1][1] > 10);
    DS4_CHECK(ties > 10); /* the data must exercise "ties -> lower g" at the threshold */
}

static void test_other_shapes(void)
{
    int ties = 0;
    /* 8 heads (two groups of 4), dim 64, small topk: mostly threshold path */
    icase_t a = case_make(64, 8, 5, 1200, 37, 4 * 1200 - 37 - 1, 4, 3);
    check_case("dim64 nh8 topk5", &a, &ties);
    case_free(&a);
    /* 3 heads: the portable level only (SIMD levels take heads 4 at a time) */
    icase_t b = case_make(32, 3, 7, 300, 19, 4 * 300 - 21, 2, 10);
    check_case("dim32 nh3 topk7", &b, &ties);
    case_free(&b);
    /* dim 2048: past the shifted form's limit, plain tiles and rows only */
    long plain_before = g_forms[0][0], shifted_before = g_forms[0][1] + g_forms[1][1];
    icase_t e = case_make(2048, 4, 9, 90, 12, 4 * 90 - 13, 3, 0);
    check_case("dim2048 nh4 topk9", &e, &ties);
    case_free(&e);
    DS4_CHECK(g_forms[0][0] > plain_before && g_forms[0][1] + g_forms[1][1] == shifted_before);
    /* topk larger than every row's visible keys */
    icase_t d = case_make(128, 4, 200, 150, 30, 4 * 150 - 31, 3, 0);
    check_case("topk > n_visible", &d, &ties);
    case_free(&d);
    DS4_CHECK(ties > 0);
}

/* Outside the exactness condition (block exponents spread far) the levels still agree with
 * each other bit for bit (same operation order). */
static void test_levels_agree_wide_exponents(void)
{
    icase_t c = case_make(128, 4, 16, 700, 24, 4 * 700 - 24, 40, 0);
    int32_t *ref = calloc((size_t)(c.T * c.topk), sizeof(int32_t));
    int32_t *rn = calloc((size_t)c.T, sizeof(int32_t));
    int32_t *sel = calloc((size_t)(c.T * c.topk), sizeof(int32_t));
    int32_t *nsel = calloc((size_t)c.T, sizeof(int32_t));
    kernel_rows(&c, 0, c.T, DS4__IDXK_PORTABLE, NULL, NULL, ref, rn, NULL);
    for (size_t li = 1; li < sizeof(k_levels) / sizeof(k_levels[0]); li++) {
        if (!ds4__idxk_level_supported(k_levels[li]))
            continue;
        kernel_rows(&c, 0, c.T, k_levels[li], NULL, NULL, sel, nsel, NULL);
        DS4_CHECK(memcmp(rn, nsel, sizeof(int32_t) * (size_t)c.T) == 0);
        DS4_CHECK(memcmp(ref, sel, sizeof(int32_t) * (size_t)(c.T * c.topk)) == 0);
    }
    free(ref);
    free(rn);
    free(sel);
    free(nsel);
    case_free(&c);
}

/* Corrupt keys (scale byte 255 decodes to NaN, e.g. from a damaged imported state): no crash,
 * every selection is a valid distinct visible key, and all levels agree. */
static void test_nan_keys(void)
{
    icase_t c = case_make(128, 4, 8, 300, 20, 4 * 300 - 20, 3, 0);
    for (int64_t g = 0; g < c.n_keys; g += 7)
        c.rows[(size_t)g * c.row_bytes + 64 + (size_t)(g % 4)] = 255;
    int32_t *ref = calloc((size_t)(c.T * c.topk), sizeof(int32_t));
    int32_t *rn = calloc((size_t)c.T, sizeof(int32_t));
    int32_t *sel = calloc((size_t)(c.T * c.topk), sizeof(int32_t));
    int32_t *nsel = calloc((size_t)c.T, sizeof(int32_t));
    kernel_rows(&c, 0, c.T, DS4__IDXK_PORTABLE, NULL, NULL, ref, rn, NULL);
    for (int64_t t = 0; t < c.T; t++) {
        DS4_CHECK(rn[t] >= 0 && rn[t] <= c.topk && rn[t] <= c.n_vis[t]);
        for (int i = 0; i < rn[t]; i++) {
            int32_t g = ref[t * c.topk + i];
            DS4_CHECK(g >= 0 && g < c.n_vis[t]);
            for (int j = 0; j < i; j++)
                DS4_CHECK(ref[t * c.topk + j] != g);
        }
    }
    for (size_t li = 1; li < sizeof(k_levels) / sizeof(k_levels[0]); li++) {
        if (!ds4__idxk_level_supported(k_levels[li]))
            continue;
        kernel_rows(&c, 0, c.T, k_levels[li], NULL, NULL, sel, nsel, NULL);
        DS4_CHECK(memcmp(rn, nsel, sizeof(int32_t) * (size_t)c.T) == 0);
        DS4_CHECK(memcmp(ref, sel, sizeof(int32_t) * (size_t)(c.T * c.topk)) == 0);
    }
    free(ref);
    free(rn);
    free(sel);
    free(nsel);
    case_free(&c);
}

/* Side-by-side speed of the levels (informational): rows x keys at the tiny model's shape. */
static void test_bench_levels(void)
{
    icase_t c = case_make(128, 4, 64, 4096, 64, 4 * 4096, 3, 0);
    int32_t *sel = calloc((size_t)(c.T * c.topk), sizeof(int32_t));
    int32_t *nsel = calloc((size_t)c.T, sizeof(int32_t));
    for (size_t li = 0; li < sizeof(k_levels) / sizeof(k_levels[0]); li++) {
        if (!ds4__idxk_level_supported(k_levels[li]))
            continue;
        int64_t rows = k_levels[li] == DS4__IDXK_PORTABLE ? 8 : c.T;
        double dt = 0.0;
        kernel_rows(&c, 0, rows, k_levels[li], NULL, NULL, sel, nsel, &dt);
        fprintf(stderr, "  %-10s %.2f ns per (row, key) [4 heads x 128], 1 thread, cpu time\n",
                ds4__idxk_level_name(k_levels[li]), dt * 1e9 / (double)(rows * c.n_keys));
    }
    free(sel);
    free(nsel);
    case_free(&c);
}

int main(void)
{
    DS4_RUN(test_v4_shape);
    DS4_RUN(test_other_shapes);
    DS4_RUN(test_levels_agree_wide_exponents);
    DS4_RUN(test_nan_keys);
    DS4_RUN(test_bench_levels);
    return ds4_test_finish();
}
