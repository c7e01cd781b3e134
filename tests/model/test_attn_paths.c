/* Sparse attention kernels (common/src/model/attn-sparse.c): every dispatch level this CPU runs
 * against a plain reference written here from the formula (docs/engine.md "Numerics": sequential
 * fp32 q.k, blocks of 64 entries with online softmax, block sums in the reference's row order,
 * bf16 probabilities, double P.V accumulators rounded to fp32 at each rescale, sink in the
 * denominator), bit for bit, on long random contexts: window runs of every length, padding,
 * HCA-like runs of several 64-key tiles with ragged tails, CSA-like scattered selections;
 * the sequential fp32 dots of the hc mixes, bf16 rounding, hc post, row sums and RMSNorm
 * (ops.c) likewise; then
 * the engine itself (default tiny model, 1,500 tokens, HCA ratio 128): portable vs best level
 * and whole vs unaligned chunks, logits bitwise identical. */
#include "test.h"

#include "attn-sparse.h"
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/model.h"
#include "mkmodel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd32(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}

/* uniform in [-1, 1) */
static float rndf(void)
{
    return (float)((double)rnd32() / 2147483648.0 - 1.0);
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* ---------------- exp ---------------- */

static void test_exp_levels(void)
{
    enum { N = 1 << 20 };
    float *x = ds4_malloc_array(N, sizeof(float));
    float *y = ds4_malloc_array(N, sizeof(float));
    DS4_CHECK(x != NULL && y != NULL);
    static const float edges[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 104.0f, -104.0f,
                                  104.00001f, -104.00001f, 88.72283f, 88.72284f, -87.33654f,
                                  -87.33655f, -103.97208f, -100.0f, 1e-30f, -1e-30f, 0.5f,
                                  -0.34657359f, 0.34657359f, 1.0f, -1.0f};
    int ne = (int)(sizeof(edges) / sizeof(edges[0]));
    for (int i = 0; i < N; i++) {
        if (i < ne)
            x[i] = edges[i];
        else if (i < N / 2)
            x[i] = 110.0f * rndf(); /* the whole finite range incl. subnormal results */
        else if (i < 3 * N / 4)
            x[i] = -20.0f * (float)((double)rnd32() / 4294967296.0); /* softmax range */
        else {
            uint32_t u = rnd32();
            if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu) != 0)
                u |= 0x400000u; /* quiet NaNs only (signalling ones change on arithmetic) */
            x[i] = from_bits(u);
        }
    }
    /* the scalar reference against libm in double: within 1 ulp (independent sanity) */
    int far = 0;
    for (int i = 0; i < N; i++) {
        float r = ds4__exp_ref(x[i]);
        double ref = exp((double)x[i]);
        if (isnan(x[i]) || x[i] > 104.0f || x[i] < -104.0f || ref < 0x1p-126 ||
            ref > 0x1p127)
            continue;
        if (fabs((double)r - ref) > ldexp(1.0, ilogb(ref) - 23))
            far++;
    }
    DS4_CHECKF(far == 0, "%d values of ds4__exp_ref off by more than 1 ulp", far);
    for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++) {
        if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
            continue;
        ds4__attn_exp((ds4__attn_isa_t)isa, x, N, y);
        int bad = 0, first = -1;
        for (int i = 0; i < N; i++) {
            float r = ds4__exp_ref(x[i]);
            if (bits(r) != bits(y[i]) && !(isnan(r) && isnan(y[i]))) {
                bad++;
                if (first < 0)
                    first = i;
            }
        }
        DS4_CHECKF(bad == 0, "exp %s: %d of %d differ (first x=%a: %a vs %a)",
                   ds4__attn_isa_name((ds4__attn_isa_t)isa), bad, N,
                   first >= 0 ? (double)x[first] : 0.0,
                   first >= 0 ? (double)y[first] : 0.0,
                   first >= 0 ? (double)ds4__exp_ref(x[first]) : 0.0);
        printf("exp %-6s: %d values bitwise equal to ds4__exp_ref: %s\n",
               ds4__attn_isa_name((ds4__attn_isa_t)isa), N, bad == 0 ? "yes" : "NO");
    }
    ds4_free(x);
    ds4_free(y);
}

/* ---------------- one query ---------------- */

/* The plain reference: entries e < n with row pointers rows[e] (NULL = invalid). */
static void ref_query(int H, int hd, const float *q, const float *const *rows, int64_t n,
                      const float *sink, float *o)
{
    const float scale = (float)(1.0 / sqrt((double)hd));
    double *acc = ds4_malloc_array((size_t)hd, sizeof(double));
    DS4_CHECK(acc != NULL);
    for (int h = 0; h < H; h++) {
        const float *qh = q + (int64_t)h * hd;
        float mrun = -INFINITY, sum = 0.0f;
        for (int i = 0; i < hd; i++)
            acc[i] = 0.0;
        for (int64_t b0 = 0; b0 < n; b0 += 64) {
            int64_t b1 = b0 + 64 < n ? b0 + 64 : n;
            float sc[64], pr[64];
            float bm = mrun;
            for (int64_t e = b0; e < b1; e++) {
                if (rows[e] == NULL) {
                    sc[e - b0] = -INFINITY;
                    continue;
                }
                float d = 0.0f;
                for (int i = 0; i < hd; i++) {
                    float prod = qh[i] * rows[e][i];
                    d = d + prod;
                }
                sc[e - b0] = d * scale;
                if (sc[e - b0] > bm)
                    bm = sc[e - b0];
            }
            float rescale = ds4__exp_ref(mrun - bm);
            for (int64_t e = 0; e < 64; e++)
                pr[e] = b0 + e < b1 ? ds4__exp_ref(sc[e] - bm) : 0.0f;
            sum = sum * rescale + ds4__sum_row_f32(pr, 64);
            for (int i = 0; i < hd; i++) {
                double scaled = acc[i] * (double)rescale;
                acc[i] = (double)(float)scaled;
            }
            for (int64_t e = b0; e < b1; e++) {
                if (rows[e] == NULL)
                    continue;
                float pbf = ds4_round_bf16(pr[e - b0]);
                for (int i = 0; i < hd; i++) {
                    float prod = pbf * rows[e][i];
                    acc[i] = acc[i] + (double)prod;
                }
            }
            mrun = bm;
        }
        sum = sum + ds4__exp_ref(sink[h] - mrun);
        for (int i = 0; i < hd; i++)
            o[(int64_t)h * hd + i] = ds4_round_bf16((float)acc[i] / sum);
    }
    ds4_free(acc);
}

/* values like the engine's (bf16: products exact in fp32), or full fp32 mantissas (products
 * round: then the order of every sum and the absence of FMA show in the results) */
static float key_value(bool full)
{
    float v = rndf() * (float)(1 << (rnd32() % 4));
    return full ? v : ds4_round_bf16(v);
}

typedef struct qcase {
    int H, hd, win;
    int64_t p;        /* query position: window holds min(p + 1, win) keys */
    int64_t n_comp;   /* compressed entries */
    bool scattered;   /* CSA-like: compressed entries picked in random order from a pool */
    bool full;        /* full fp32 mantissas (else bf16 values) */
} qcase_t;

/* The score and P.V kernels of every level on one key run, before any rounding to bf16:
 * scores against sequential fp32 sums, accumulators against the double loop. Returns the
 * number of levels that differ. */
static int kernel_levels(const ds4__attn_shape_t *sh, const ds4__attn_seg_t *sg,
                         const qcase_t *cs)
{
    const int H = sh->n_heads, hd = sh->head_dim;
    int64_t n = sg->n, ss = n + 5;
    if (n == 0)
        return 0;
    float *q = ds4_malloc_array((size_t)(H * hd), sizeof(float));
    float *sc = ds4_malloc_array((size_t)(H * ss), sizeof(float));
    float *scref = ds4_malloc_array((size_t)(H * ss), sizeof(float));
    float *pb = ds4_malloc_array((size_t)(H * n), sizeof(float));
    double *acc0 = ds4_malloc_array((size_t)(H * hd), sizeof(double));
    double *acc = ds4_malloc_array((size_t)(H * hd), sizeof(double));
    double *accref = ds4_malloc_array((size_t)(H * hd), sizeof(double));
    DS4_CHECK(q && sc && scref && pb && acc0 && acc && accref);
    for (int i = 0; i < H * hd; i++) {
        q[i] = key_value(cs->full);
        acc0[i] = (double)(rndf() * 8.0f);
        accref[i] = acc0[i];
    }
    for (int64_t i = 0; i < H * n; i++)
        pb[i] = ds4_round_bf16(0.5f * (rndf() + 1.0f));
    for (int h = 0; h < H; h++) {
        for (int64_t j = 0; j < n; j++) {
            float d = 0.0f;
            for (int i = 0; i < hd; i++) {
                float prod = q[h * hd + i] * sg->kr[j * hd + i];
                d = d + prod;
            }
            scref[h * ss + j] = d * sh->scale;
        }
    }
    for (int64_t j = 0; j < n; j++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < hd; i++) {
                float prod = pb[h * n + j] * sg->kr[j * hd + i];
                accref[h * hd + i] = accref[h * hd + i] + (double)prod;
            }
    int bad_levels = 0;
    for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++) {
        if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
            continue;
        ds4__attn_scores((ds4__attn_isa_t)isa, sh, sg, q, sc, ss);
        memcpy(acc, acc0, sizeof(double) * (size_t)(H * hd));
        ds4__attn_pv((ds4__attn_isa_t)isa, sh, pb, n, n, sg->kr, sg->exact, acc);
        int dsc = 0, dacc = 0;
        for (int h = 0; h < H; h++)
            for (int64_t j = 0; j < n; j++)
                dsc += bits(sc[h * ss + j]) != bits(scref[h * ss + j]);
        for (int i = 0; i < H * hd; i++)
            dacc += memcmp(&acc[i], &accref[i], sizeof(double)) != 0;
        DS4_CHECKF(dsc == 0 && dacc == 0,
                   "%s kernels, H %d hd %d run of %lld keys%s%s: %d scores, %d accumulators "
                   "differ",
                   ds4__attn_isa_name((ds4__attn_isa_t)isa), H, hd, (long long)n,
                   cs->full ? " fp32" : "", sg->exact ? " exact" : "", dsc, dacc);
        bad_levels += dsc != 0 || dacc != 0;
    }
    ds4_free(q);
    ds4_free(sc);
    ds4_free(scref);
    ds4_free(pb);
    ds4_free(acc0);
    ds4_free(acc);
    ds4_free(accref);
    return bad_levels;
}

static int n_exact_runs; /* key runs that took the exact-product kernels */

static int run_case(const qcase_t *cs)
{
    const int H = cs->H, hd = cs->hd, win = cs->win;
    int64_t nw = cs->p + 1 < win ? cs->p + 1 : win;
    int64_t L = nw + 37;       /* the window matrix holds extra positions around the run */
    int64_t w0 = 17;           /* the run starts at column 17 (unaligned) */
    int64_t pool = cs->scattered ? cs->n_comp * 3 + 5 : cs->n_comp;
    int64_t n_tiles = (cs->n_comp + 63) / 64;
    int64_t n = win + cs->n_comp;
    float *wr = ds4_malloc_array((size_t)(L * hd), sizeof(float));
    float *wt = ds4_malloc_array((size_t)(L * hd), sizeof(float));
    float *prow = ds4_malloc_array((size_t)((pool + 1) * hd), sizeof(float));
    float *cr = ds4_malloc_array((size_t)((cs->n_comp + 1) * hd), sizeof(float));
    float *ct = ds4_calloc((size_t)((n_tiles + 1) * 64 * hd), sizeof(float));
    float *q = ds4_malloc_array((size_t)(H * hd), sizeof(float));
    float *o = ds4_malloc_array((size_t)(H * hd), sizeof(float));
    float *oref = ds4_malloc_array((size_t)(H * hd), sizeof(float));
    const float **rows = ds4_malloc_array((size_t)n, sizeof(*rows));
    float sink[8];
    DS4_CHECK(wr && wt && prow && cr && ct && q && o && oref && rows);
    for (int64_t i = 0; i < L * hd; i++)
        wr[i] = key_value(cs->full);
    for (int64_t r = 0; r < L; r++)
        for (int i = 0; i < hd; i++)
            wt[(int64_t)i * L + r] = wr[r * hd + i];
    for (int64_t i = 0; i < pool * hd; i++)
        prow[i] = key_value(cs->full);
    for (int64_t g = 0; g < cs->n_comp; g++) {
        int64_t src = cs->scattered ? (int64_t)(rnd32() % (uint32_t)pool) : g;
        memcpy(cr + g * hd, prow + src * hd, sizeof(float) * (size_t)hd);
        for (int i = 0; i < hd; i++)
            ct[(g / 64) * 64 * hd + (int64_t)i * 64 + g % 64] = cr[g * hd + i];
    }
    for (int i = 0; i < H * hd; i++)
        q[i] = key_value(cs->full) * 2.0f;
    for (int h = 0; h < H; h++)
        sink[h] = rndf() * 3.0f;
    int64_t e = 0;
    for (int64_t w = 0; w < win; w++)
        rows[e++] = w < nw ? wr + (w0 + w) * hd : NULL;
    for (int64_t g = 0; g < cs->n_comp; g++)
        rows[e++] = cr + g * hd;
    ref_query(H, hd, q, rows, n, sink, oref);

    ds4__attn_seg_t segs[3] = {
        {.n = nw, .kt = wt + w0, .ld = L, .tile_stride = 64, .kr = wr + w0 * hd,
         .exact = ds4__attn_keys_exact(DS4__ATTN_ISA_C, wr + w0 * hd, nw * hd)},
        {.n = win - nw},
        {.n = cs->n_comp, .kt = ct, .ld = 64, .tile_stride = 64 * (int64_t)hd, .kr = cr,
         .exact = ds4__attn_keys_exact(DS4__ATTN_ISA_C, cr, cs->n_comp * hd)},
    };
    n_exact_runs += segs[0].exact + segs[2].exact;
    ds4__attn_shape_t sh = {.n_heads = H, .head_dim = hd,
                            .scale = (float)(1.0 / sqrt((double)hd)), .sink = sink};
    void *scratch = ds4_aligned_alloc(64, ds4__attn_scratch_bytes(&sh, n));
    DS4_CHECK(scratch != NULL);
    int bad_levels = kernel_levels(&sh, &segs[0], cs) + kernel_levels(&sh, &segs[2], cs);
    for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++) {
        if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
            continue;
        memset(o, 0xff, sizeof(float) * (size_t)(H * hd));
        ds4__attn_query((ds4__attn_isa_t)isa, &sh, segs, 3, q, o, scratch);
        int diff = 0;
        for (int i = 0; i < H * hd; i++)
            diff += bits(o[i]) != bits(oref[i]);
        DS4_CHECKF(diff == 0,
                   "%s: H %d hd %d win %d p %lld comp %lld%s%s: %d of %d outputs differ",
                   ds4__attn_isa_name((ds4__attn_isa_t)isa), H, hd, win, (long long)cs->p,
                   (long long)cs->n_comp, cs->scattered ? " scattered" : "",
                   cs->full ? " fp32" : "", diff, H * hd);
        bad_levels += diff != 0;
    }
    ds4_free(scratch);
    ds4_free(wr);
    ds4_free(wt);
    ds4_free(prow);
    ds4_free(cr);
    ds4_free(ct);
    ds4_free(q);
    ds4_free(o);
    ds4_free(oref);
    ds4_free(rows);
    return bad_levels;
}

static void test_query_levels(void)
{
    int n_cases = 0, n_bad = 0;
    /* fixed shapes: window fill levels, tails of every kind, several tiles */
    static const qcase_t fixed[] = {
        {2, 128, 128, 0, 0, false, false}, {2, 128, 128, 5, 0, false, false},
        {2, 128, 128, 63, 0, false, false}, {2, 128, 128, 64, 0, false, false},
        {2, 128, 128, 127, 0, false, false}, {2, 128, 128, 1000, 7, false, false},
        {2, 128, 128, 9000, 70, false, false}, {2, 128, 128, 200000, 1563, false, false},
        {2, 128, 128, 3000, 64, true, false}, {2, 128, 128, 500, 37, true, false},
        {3, 128, 128, 700, 130, false, false}, {1, 128, 128, 4000, 31, false, false},
        {2, 64, 100, 40, 129, false, false}, {3, 48, 100, 300, 65, true, false},
        {4, 512, 128, 9000, 200, false, false}, {2, 16, 70, 69, 300, false, false},
    };
    for (int full = 0; full < 2; full++) {
        for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++, n_cases++) {
            qcase_t cs = fixed[i];
            cs.full = full != 0;
            n_bad += run_case(&cs) != 0;
        }
    }
    /* random shapes */
    static const int hds[] = {16, 48, 64, 128, 192, 256};
    for (int i = 0; i < 60; i++, n_cases++) {
        qcase_t cs = {.H = 1 + (int)(rnd32() % 4), .hd = hds[rnd32() % 6],
                      .win = 1 + (int)(rnd32() % 200)};
        cs.p = rnd32() % 3 == 0 ? (int64_t)(rnd32() % (uint32_t)cs.win) : cs.win + 5000;
        cs.n_comp = rnd32() % 4 == 0 ? 0 : (int64_t)(rnd32() % 900);
        cs.scattered = (rnd32() & 1) != 0;
        cs.full = (rnd32() & 1) != 0;
        n_bad += run_case(&cs) != 0;
    }
    DS4_CHECK(n_exact_runs > 0);
    printf("one-query attention: %d cases (%d key runs with exact products), every level "
           "bitwise equal to the plain reference: %s\n",
           n_cases, n_exact_runs, n_bad == 0 ? "yes" : "NO");
}

static void test_keys_exact(void)
{
    float ok[40];
    static const float okv[] = {0.0f,     -0.0f,     1.0f,         -3.5f,
                                0x1p-20f, -0x1p-20f, 0x1.fep127f, 0.15625f};
    for (int i = 0; i < 40; i++)
        ok[i] = okv[i % 8];
    static const float badv[] = {0x1p-21f, 1.0f + 0x1p-8f, INFINITY, NAN, 0x1p-140f, -0x1p-30f};
    for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++) {
        if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
            continue;
        DS4_CHECK(ds4__attn_keys_exact((ds4__attn_isa_t)isa, ok, 40));
        DS4_CHECK(ds4__attn_keys_exact((ds4__attn_isa_t)isa, ok, 0));
        for (size_t i = 0; i < sizeof(badv) / sizeof(badv[0]); i++) {
            for (int pos = 0; pos < 40; pos += 13) {
                float v[40];
                memcpy(v, ok, sizeof(v));
                v[pos] = badv[i];
                DS4_CHECKF(!ds4__attn_keys_exact((ds4__attn_isa_t)isa, v, 40),
                           "%s: value %zu at %d taken as exact",
                           ds4__attn_isa_name((ds4__attn_isa_t)isa), i, pos);
                /* outside the range: not looked at */
                DS4_CHECK(ds4__attn_keys_exact((ds4__attn_isa_t)isa, v, pos) || pos == 0);
            }
        }
    }
}

static void test_transpose_levels(void)
{
    static const int shapes[][2] = {{64, 128}, {1, 128}, {7, 64}, {130, 48}, {71, 8}, {9, 20}};
    int bad = 0;
    for (size_t c = 0; c < sizeof(shapes) / sizeof(shapes[0]); c++) {
        int n = shapes[c][0], hd = shapes[c][1];
        int64_t tsz = (int64_t)(n + 63) / 64 * 64 * hd;
        float *rows = ds4_malloc_array((size_t)(n * hd), sizeof(float));
        float *t = ds4_malloc_array((size_t)tsz, sizeof(float));
        DS4_CHECK(rows != NULL && t != NULL);
        for (int i = 0; i < n * hd; i++)
            rows[i] = rndf();
        for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++) {
            if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
                continue;
            for (int64_t i = 0; i < tsz; i++)
                t[i] = -7.0f; /* untouched slots stay */
            ds4__attn_transpose_tiles((ds4__attn_isa_t)isa, rows, n, hd, t);
            int diff = 0;
            for (int64_t idx = 0; idx < tsz; idx++) {
                int64_t r = idx / (64 * hd) * 64 + idx % 64, i = idx % (64 * hd) / 64;
                float want = r < n ? rows[r * hd + i] : -7.0f;
                diff += bits(t[idx]) != bits(want);
            }
            DS4_CHECKF(diff == 0, "transpose %s n %d hd %d: %d slots wrong",
                       ds4__attn_isa_name((ds4__attn_isa_t)isa), n, hd, diff);
            bad += diff != 0;
        }
        ds4_free(rows);
        ds4_free(t);
    }
    DS4_CHECK(bad == 0);
}

/* KV row decode (ops.c) at every level against the scalar decode: every e4m3 byte, every
 * scale byte (0 and 0xff included), random bf16 rope values; V4 and tiny row shapes */
static void test_kv_decode_levels(void)
{
    static const int shapes[][2] = {{128, 64}, {512, 64}};
    int bad = 0;
    for (int c = 0; c < 2; c++) {
        ds4_model_config_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.head_dim = shapes[c][0];
        cfg.rope_head_dim = shapes[c][1];
        int nope = cfg.head_dim - cfg.rope_head_dim, rb = nope + nope / 64 + 2 * 64;
        uint8_t row[1024];
        float want[512], got[512];
        for (int it = 0; it < 600; it++) {
            for (int i = 0; i < nope; i++)
                row[i] = (uint8_t)(it < 256 ? (it + i) & 255 : rnd32() & 255);
            for (int b = 0; b < nope / 64; b++)
                row[nope + b] = (uint8_t)(it < 256 ? (it * 7 + b) & 255 : 100 + rnd32() % 40);
            for (int i = nope + nope / 64; i < rb; i++)
                row[i] = (uint8_t)rnd32();
            ds4__kv_row_decode(&cfg, row, want);
            for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++) {
                if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
                    continue;
                ds4__kv_row_decode_isa((ds4__attn_isa_t)isa, &cfg, row, got);
                int diff = 0;
                for (int i = 0; i < cfg.head_dim; i++)
                    diff += bits(got[i]) != bits(want[i]);
                DS4_CHECKF(diff == 0, "kv decode %s hd %d row %d: %d values differ",
                           ds4__attn_isa_name((ds4__attn_isa_t)isa), cfg.head_dim, it, diff);
                bad += diff != 0;
            }
        }
    }
    DS4_CHECK(bad == 0);
}

/* ---------------- sequential dots (hc mixes) ---------------- */

static void test_dots_levels(void)
{
    static const int shapes[][3] = {{1, 512, 24}, {5, 512, 24}, {9, 512, 4},  {3, 37, 33},
                                    {4, 1, 1},    {7, 100, 300}, {2, 640, 17}, {13, 256, 48}};
    int bad = 0, n_cases = 0;
    for (size_t c = 0; c < sizeof(shapes) / sizeof(shapes[0]); c++) {
        int rows = shapes[c][0], n = shapes[c][1], m = shapes[c][2];
        float *x = ds4_malloc_array((size_t)(rows * n), sizeof(float));
        float *w = ds4_malloc_array((size_t)(m * n), sizeof(float));
        float *y = ds4_malloc_array((size_t)(rows * m), sizeof(float));
        float *yref = ds4_malloc_array((size_t)(rows * m), sizeof(float));
        DS4_CHECK(x && w && y && yref);
        for (int i = 0; i < rows * n; i++)
            x[i] = rndf() * 3.0f;
        for (int i = 0; i < m * n; i++)
            w[i] = rndf();
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < m; j++) {
                float d = 0.0f;
                for (int i = 0; i < n; i++) {
                    float prod = x[r * n + i] * w[j * n + i];
                    d = d + prod;
                }
                yref[r * m + j] = d;
            }
        for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++, n_cases++) {
            if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
                continue;
            memset(y, 0xff, sizeof(float) * (size_t)(rows * m));
            ds4__dots_seq((ds4__attn_isa_t)isa, x, rows, n, w, m, y);
            int diff = 0;
            for (int i = 0; i < rows * m; i++)
                diff += bits(y[i]) != bits(yref[i]);
            DS4_CHECKF(diff == 0, "dots %s rows %d n %d m %d: %d of %d differ",
                       ds4__attn_isa_name((ds4__attn_isa_t)isa), rows, n, m, diff, rows * m);
            bad += diff != 0;
        }
        ds4_free(x);
        ds4_free(w);
        ds4_free(y);
        ds4_free(yref);
    }
    printf("sequential dots: every level bitwise equal to the plain loop: %s\n",
           bad == 0 ? "yes" : "NO");
}

/* ---------------- bf16 rounding, hc post (ops.c; level chosen by DS4_ATTN_ISA) ---------------- */

static void test_elementwise_levels(void)
{
    enum { N = 100003, HC = 4, D = 136, ROWS = 3 };
    float *x = ds4_malloc_array(N, sizeof(float));
    float *y = ds4_malloc_array(N, sizeof(float));
    float *X0 = ds4_malloc_array(ROWS * HC * D, sizeof(float));
    float *X = ds4_malloc_array(ROWS * HC * D, sizeof(float));
    float *Xref = ds4_malloc_array(ROWS * HC * D, sizeof(float));
    float f[ROWS * D], post[ROWS * HC], comb[ROWS * HC * HC];
    DS4_CHECK(x && y && X0 && X && Xref);
    for (int i = 0; i < N; i++) {
        uint32_t u = rnd32();
        if (i % 7 == 0 && (u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu) != 0)
            u |= 0x400000u;
        x[i] = i % 3 == 0 ? from_bits(u) : rndf() * 100.0f;
    }
    x[0] = NAN;
    x[1] = INFINITY;
    x[2] = -0.0f;
    x[3] = from_bits(0x7f7fffffu); /* rounds up to inf */
    x[4] = from_bits(0x3f808000u); /* tie, even: down */
    x[5] = from_bits(0x3f818000u); /* tie, odd: up */
    for (int i = 0; i < ROWS * HC * D; i++)
        X0[i] = rndf() * 2.0f;
    for (int i = 0; i < ROWS * D; i++)
        f[i] = rndf();
    for (int i = 0; i < ROWS * HC; i++)
        post[i] = rndf() + 1.0f;
    for (int i = 0; i < ROWS * HC * HC; i++)
        comb[i] = rndf() * 0.5f + 0.25f;
    /* references: the plain loops */
    memcpy(Xref, X0, sizeof(float) * ROWS * HC * D);
    for (int r = 0; r < ROWS; r++)
        for (int i = 0; i < D; i++) {
            float res[HC];
            for (int j = 0; j < HC; j++)
                res[j] = Xref[r * HC * D + j * D + i];
            for (int k = 0; k < HC; k++) {
                float acc = 0.0f;
                for (int j = 0; j < HC; j++) {
                    float prod = comb[r * HC * HC + j * HC + k] * res[j];
                    acc = acc + prod;
                }
                float pf = post[r * HC + k] * f[r * D + i];
                Xref[r * HC * D + k * D + i] = ds4_round_bf16(pf + acc);
            }
        }
    ds4_model_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.hc_mult = HC;
    cfg.hidden_size = D;
    int bad = 0;
    for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++) {
        if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
            continue;
        setenv("DS4_ATTN_ISA", ds4__attn_isa_name((ds4__attn_isa_t)isa), 1);
        memcpy(y, x, sizeof(float) * N);
        ds4__round_bf16_arr(y, N);
        int diff = 0;
        for (int i = 0; i < N; i++)
            diff += bits(y[i]) != bits(ds4_round_bf16(x[i]));
        memcpy(X, X0, sizeof(float) * ROWS * HC * D);
        ds4__hc_post(&cfg, X, ROWS, f, post, comb);
        int dpost = 0;
        for (int i = 0; i < ROWS * HC * D; i++)
            dpost += bits(X[i]) != bits(Xref[i]);
        DS4_CHECKF(diff == 0 && dpost == 0, "%s: bf16 rounding %d of %d differ, hc post %d",
                   ds4__attn_isa_name((ds4__attn_isa_t)isa), diff, (int)N, dpost);
        bad += diff != 0 || dpost != 0;
    }
    unsetenv("DS4_ATTN_ISA");
    printf("bf16 rounding and hc post: every level bitwise equal to the plain loops: %s\n",
           bad == 0 ? "yes" : "NO");
    ds4_free(x);
    ds4_free(y);
    ds4_free(X0);
    ds4_free(X);
    ds4_free(Xref);
}

/* ds4__sum_row_f32 (the reference's reduction order) and RMSNorm at every level against the
 * scalar order / the plain formula, on sizes around every cascade boundary */
static void test_row_sums_levels(void)
{
    enum { NMAX = 70000 };
    float *x = ds4_malloc_array(NMAX, sizeof(float));
    float *sq = ds4_malloc_array(NMAX, sizeof(float));
    float *o = ds4_malloc_array(NMAX, sizeof(float));
    float *oref = ds4_malloc_array(NMAX, sizeof(float));
    uint16_t *w = ds4_malloc_array(NMAX, sizeof(uint16_t));
    DS4_CHECK(x && sq && o && oref && w);
    for (int i = 0; i < NMAX; i++) {
        x[i] = rndf() * (float)(1 << (rnd32() % 12)) * 0.01f;
        w[i] = ds4_f32_to_bf16(rndf() + 1.5f);
    }
    static const int sizes[] = {0,   1,    7,    8,    31,   32,   33,   63,   64,   65,
                                127, 128,  129,  512,  513,  1024, 2047, 2048, 2049, 4096,
                                7168, 8191, 8192, 8200, 28672, 65536, 65537, 69999};
    int bad = 0;
    for (size_t c = 0; c < sizeof(sizes) / sizeof(sizes[0]); c++) {
        int n = sizes[c];
        float want = ds4__sum_row_f32(x, n);
        for (int i = 0; i < n; i++)
            sq[i] = x[i] * x[i];
        float ms = n > 0 ? ds4__sum_row_f32(sq, n) / (float)n : 0.0f;
        float rs = 1.0f / sqrtf(ms + 1e-6f);
        for (int i = 0; i < n; i++)
            oref[i] = ds4_round_bf16(ds4_bf16_to_f32(w[i]) * (x[i] * rs));
        for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++) {
            if (!ds4__attn_isa_supported((ds4__attn_isa_t)isa))
                continue;
            float got = ds4__sum_row_f32_isa((ds4__attn_isa_t)isa, x, n);
            int diff = bits(got) != bits(want);
            if (n > 0) {
                setenv("DS4_ATTN_ISA", ds4__attn_isa_name((ds4__attn_isa_t)isa), 1);
                ds4__rmsnorm_rows(x, w, 1, n, 1e-6, o);
                unsetenv("DS4_ATTN_ISA");
                for (int i = 0; i < n; i++)
                    diff += bits(o[i]) != bits(oref[i]);
            }
            DS4_CHECKF(diff == 0, "row sum / rmsnorm %s n %d: %d differ",
                       ds4__attn_isa_name((ds4__attn_isa_t)isa), n, diff);
            bad += diff != 0;
        }
    }
    printf("row sums and RMSNorm: every level bitwise equal to the scalar order: %s\n",
           bad == 0 ? "yes" : "NO");
    ds4_free(x);
    ds4_free(sq);
    ds4_free(o);
    ds4_free(oref);
    ds4_free(w);
}

/* ---------------- the engine, long context ---------------- */

#define ENG_N 1500

/* Prefills `prompt` in chunks of `chunk` and returns the logits of the last position. */
static float *engine_logits(ds4_model_h m, const int32_t *prompt, int chunk, const char *isa)
{
    int V = ds4_model_config(m)->vocab_size;
    float *logits = ds4_malloc_array((size_t)V, sizeof(float));
    ds4_seq_h s;
    DS4_CHECK(logits != NULL);
    DS4_CHECK_STATUS(ds4_seq_create(m, &s), DS4_OK);
    setenv("DS4_ATTN_ISA", isa, 1);
    for (int i = 0; i < ENG_N; i += chunk) {
        int k = ENG_N - i < chunk ? ENG_N - i : chunk;
        ds4_step_item_t it = {.seq = s, .tokens = prompt + i, .n_tokens = k,
                              .logits = i + k == ENG_N ? logits : NULL};
        DS4_CHECK_STATUS(ds4_model_step(m, &it, 1, NULL), DS4_OK);
    }
    unsetenv("DS4_ATTN_ISA");
    ds4_seq_destroy(s);
    return logits;
}

static void test_engine_levels(void)
{
    char dir[] = "/tmp/ds4-attn-XXXXXX";
    DS4_CHECK(mkdtemp(dir) != NULL);
    ds4_mkmodel_params_t mp = ds4_mkmodel_params_default();
    DS4_CHECK_STATUS(ds4_mkmodel_write(dir, &mp), DS4_OK);
    ds4_model_h m;
    DS4_CHECK_STATUS(ds4_model_load(dir, NULL, &m, NULL), DS4_OK);
    int V = ds4_model_config(m)->vocab_size;
    int32_t *prompt = ds4_malloc_array(ENG_N, sizeof(int32_t));
    DS4_CHECK(prompt != NULL);
    for (int i = 0; i < ENG_N; i++)
        prompt[i] = (int32_t)(((int64_t)i * 104729 + 7) % V);
    const char *best = ds4__attn_isa_name(ds4__attn_isa_select());
    float *ref = engine_logits(m, prompt, ENG_N, "c");
    float *a = engine_logits(m, prompt, ENG_N, best);
    float *b = engine_logits(m, prompt, 333, best);
    float *c = engine_logits(m, prompt, 333, "c");
    size_t bytes = sizeof(float) * (size_t)V;
    DS4_CHECKF(memcmp(ref, a, bytes) == 0, "%s differs from c (whole prompt)", best);
    DS4_CHECKF(memcmp(ref, b, bytes) == 0, "%s chunks of 333 differ from c whole", best);
    DS4_CHECKF(memcmp(ref, c, bytes) == 0, "c chunks of 333 differ from c whole");
    printf("engine, %d tokens: logits of c / %s, whole / chunks of 333: bitwise identical: %s\n",
           ENG_N, best,
           memcmp(ref, a, bytes) == 0 && memcmp(ref, b, bytes) == 0 &&
                   memcmp(ref, c, bytes) == 0
               ? "yes"
               : "NO");
    ds4_free(ref);
    ds4_free(a);
    ds4_free(b);
    ds4_free(c);
    ds4_free(prompt);
    ds4_model_free(m);
    char path[64];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    for (int isa = 0; isa < DS4__ATTN_ISA_COUNT; isa++)
        printf("level %-6s: %s\n", ds4__attn_isa_name((ds4__attn_isa_t)isa),
               ds4__attn_isa_supported((ds4__attn_isa_t)isa) ? "runs here" : "not on this CPU");
    DS4_RUN(test_exp_levels);
    DS4_RUN(test_keys_exact);
    DS4_RUN(test_transpose_levels);
    DS4_RUN(test_kv_decode_levels);
    DS4_RUN(test_query_levels);
    DS4_RUN(test_dots_levels);
    DS4_RUN(test_elementwise_levels);
    DS4_RUN(test_row_sums_levels);
    DS4_RUN(test_engine_levels);
    return ds4_test_finish();
}
