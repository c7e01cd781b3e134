/* tiny-a golden extras: layer streams at sampled positions, CSA selections, final normed
 * hidden state and MTP logits against DeepSeek's official model.py (tests/fixtures/tiny-a). */
#include "golden.h"
#include "test.h"

#include "ds4/json.h"
#include "ds4/model.h"

#include <string.h>

#define N_POS 11
static const int k_pos[N_POS] = {0, 1, 15, 16, 31, 32, 63, 127, 150, 298, 299};

typedef struct cap {
    int n_layers, hc, d, topk, N;
    float *streams;      /* [layers][N_POS][hc*d] */
    int32_t *sel;        /* [layers][N][topk] entries, -1 = none */
} cap_t;

static float *g_final;
static void on_layer(void *arg, ds4_seq_h seq, int layer, int64_t pos0, int n,
                     const float *streams)
{
    cap_t *c = arg;
    if (layer == c->n_layers - 1 && g_final != NULL)
        memcpy(g_final + pos0 * c->hc * c->d, streams, sizeof(float) * (size_t)n * c->hc * c->d);
    size_t row = (size_t)c->hc * c->d;
    for (int i = 0; i < N_POS; i++) {
        if (k_pos[i] >= pos0 && k_pos[i] < pos0 + n)
            memcpy(c->streams + ((size_t)layer * N_POS + i) * row,
                   streams + (size_t)(k_pos[i] - pos0) * row, row * sizeof(float));
    }
}

static void on_topk(void *arg, int layer, int64_t pos, const int32_t *sel, int n_sel)
{
    cap_t *c = arg;
    int32_t *dst = c->sel + ((size_t)layer * c->N + (size_t)pos) * c->topk;
    for (int i = 0; i < c->topk; i++)
        dst[i] = i < n_sel ? sel[i] : -1;
}

static ds4_model_h g_model;
static int32_t g_prompt[4096];
static int g_n;
static cap_t g_cap;
static float *g_logits_all;

static void setup(void)
{
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_status_t st = ds4_model_load(ds4_test_fixture("tiny-a"), NULL, &g_model, &diag);
    DS4_CHECK_STATUS(st, DS4_OK);
    ds4_diag_free(&diag);
    if (st != DS4_OK)
        exit(ds4_test_finish());
    json_t *pj = NULL;
    char path[8192];
    snprintf(path, sizeof(path), "%s/prompt.json", ds4_test_fixture("tiny-a"));
    DS4_CHECK_STATUS(ds4_json_load_file(path, 1 << 20, &pj, NULL), DS4_OK);
    json_t *ids = json_object_get(pj, "token_ids");
    g_n = (int)json_array_size(ids);
    for (int i = 0; i < g_n; i++)
        g_prompt[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
    json_decref(pj);
    const ds4_model_config_t *c = ds4_model_config(g_model);
    g_cap = (cap_t){.n_layers = c->n_layers, .hc = c->hc_mult, .d = c->hidden_size,
                    .topk = c->index_topk, .N = g_n};
    g_cap.streams = ds4_calloc((size_t)c->n_layers * N_POS * c->hc_mult * c->hidden_size,
                               sizeof(float));
    g_cap.sel = ds4_malloc_array((size_t)c->n_layers * g_n * c->index_topk, sizeof(int32_t));
    memset(g_cap.sel, 0xff, (size_t)c->n_layers * g_n * c->index_topk * sizeof(int32_t));
    g_logits_all = ds4_malloc_array((size_t)g_n * c->vocab_size, sizeof(float));
    g_final = ds4_malloc_array((size_t)g_n * c->hc_mult * c->hidden_size, sizeof(float));
    ds4_seq_h s;
    DS4_CHECK_STATUS(ds4_seq_create(g_model, &s), DS4_OK);
    ds4_step_hooks_t hooks = {.arg = &g_cap, .layer_done = on_layer, .csa_topk = on_topk};
    ds4_step_item_t it = {.seq = s, .tokens = g_prompt, .n_tokens = g_n,
                          .logits = g_logits_all, .flags = DS4_STEP_ALL_LOGITS};
    DS4_CHECK_STATUS(ds4_model_step(g_model, &it, 1, &hooks), DS4_OK);
    ds4_seq_destroy(s);
}

static void test_layer_streams(void)
{
    size_t row = (size_t)g_cap.hc * g_cap.d;
    if (getenv("DS4_DUMP") != NULL) {
        FILE *f = fopen(getenv("DS4_DUMP"), "wb");
        fwrite(g_cap.streams, sizeof(float), (size_t)g_cap.n_layers * N_POS * row, f);
        fclose(f);
    }
    for (int l = 0; l < g_cap.n_layers; l++) {
        char path[8192];
        snprintf(path, sizeof(path), "%s/extras/layer%02d_out_streams_at_positions.bin",
                 ds4_test_fixture("tiny-a"), l);
        size_t nb;
        float *ref = ds4_test_read_file(path, &nb);
        DS4_CHECK(ref != NULL && nb == N_POS * row * sizeof(float));
        if (ref == NULL)
            continue;
        double worst = 0;
        for (int i = 0; i < N_POS; i++) {
            const float *a = g_cap.streams + ((size_t)l * N_POS + i) * row;
            const float *r = ref + (size_t)i * row;
            double rel = golden_maxdiff(a, r, row) / golden_maxabs(r, row);
            worst = rel > worst ? rel : worst;
            if (getenv("DS4_TEST_VERBOSE") != NULL) {
                int nd = 0;
                for (size_t e = 0; e < row; e++)
                    nd += a[e] != r[e];
                printf("  layer %d pos %d rel %.3g differing %d/%zu\n", l, k_pos[i], rel, nd, row);
            }
            /* issue target: layers 0/1 within 1e-2 of max|ref| at every sampled position */
            if (l <= 1)
                DS4_CHECKF(rel <= 1e-2, "layer %d pos %d rel %.3g", l, k_pos[i], rel);
        }
        printf("layer %d streams: worst max|d|/max|ref| %.3g%s\n", l, worst,
               l <= 1 ? (worst <= 1e-2 ? " (issue target 1e-2: MET)" : " (issue target 1e-2: NOT MET)")
                      : "");
        ds4_free(ref);
    }
}

static void test_final_streams(void)
{
    size_t row = (size_t)g_cap.hc * g_cap.d;
    char path[8192];
    snprintf(path, sizeof(path), "%s/extras/final_hidden_streams.bin", ds4_test_fixture("tiny-a"));
    float *ref = ds4_test_read_file(path, NULL);
    DS4_CHECK(ref != NULL);
    if (ref == NULL)
        return;
    int first = -1;
    for (int p = 0; p < g_n; p++) {
        int nd = 0;
        for (size_t e = 0; e < row; e++)
            nd += g_final[p * row + e] != ref[p * row + e];
        if (nd > 0 && first < 0)
            first = p;
        if (getenv("DS4_TEST_VERBOSE") != NULL && p < 64) {
            double md = 0, mr = 0;
            for (size_t e = 0; e < row; e++) {
                double dd = fabs(g_final[p * row + e] - ref[p * row + e]);
                md = dd > md ? dd : md;
                mr = fabs(ref[p * row + e]) > mr ? fabs(ref[p * row + e]) : mr;
            }
            printf("final streams pos %d: %d differ rel %.4f\n", p, nd, md / mr);
        }
    }
    int n_exact = 0;
    for (int p = 0; p < g_n; p++) {
        int nd = 0;
        for (size_t e = 0; e < row; e++)
            nd += g_final[p * row + e] != ref[p * row + e];
        n_exact += nd == 0;
    }
    printf("final streams: first differing position %d, %d/%d positions bit-exact\n", first,
           n_exact, g_n);
    ds4_free(ref);
}

static void test_csa_selection(void)
{
    const ds4_model_config_t *c = ds4_model_config(g_model);
    for (int l = 0; l < c->n_layers; l++) {
        if (c->layer_kind[l] != DS4_LAYER_CSA)
            continue;
        char path[8192];
        snprintf(path, sizeof(path), "%s/extras/layer%02d_indexer_topk.i32",
                 ds4_test_fixture("tiny-a"), l);
        size_t nb;
        int32_t *ref = ds4_test_read_file(path, &nb);
        DS4_CHECK(ref != NULL && nb == (size_t)g_n * c->index_topk * 4);
        if (ref == NULL)
            continue;
        int equal = 0;
        for (int p = 0; p < g_n; p++) {
            const int32_t *a = g_cap.sel + ((size_t)l * g_n + p) * c->index_topk;
            const int32_t *r = ref + (size_t)p * c->index_topk;
            bool same = true;
            for (int i = 0; i < c->index_topk && same; i++) {
                int32_t want = r[i] < 0 ? -1 : r[i] - g_n;
                bool found = false;
                for (int j = 0; j < c->index_topk; j++)
                    found |= a[j] == want;
                same = found;
            }
            equal += same;
            if (!same && getenv("DS4_TEST_VERBOSE") != NULL) {
                printf("  L%d row %d ours:", l, p);
                for (int i = 0; i < c->index_topk; i++)
                    printf(" %d", a[i]);
                printf("  ref:");
                for (int i = 0; i < c->index_topk; i++)
                    printf(" %d", r[i] < 0 ? -1 : r[i] - g_n);
                printf("\n");
            }
        }
        printf("layer %d CSA selections: %d/%d rows equal as sets (issue target 99%%: %s)\n", l,
               equal, g_n, equal * 100 >= 99 * g_n ? "MET" : "NOT MET");
        /* the acceptance: >= 99 % of the rows equal as sets */
        DS4_CHECKF(equal * 100 >= 99 * g_n, "layer %d: %d/%d", l, equal, g_n);
        ds4_free(ref);
    }
}

static void test_prompt_logits(void)
{
    const ds4_model_config_t *c = ds4_model_config(g_model);
    size_t V = (size_t)c->vocab_size;
    for (int i = 0; i < N_POS; i++) {
        char path[8192];
        snprintf(path, sizeof(path), "%s/extras/logits_pos%04d.bin", ds4_test_fixture("tiny-a"),
                 k_pos[i]);
        float *ref = ds4_test_read_file(path, NULL);
        DS4_CHECK(ref != NULL);
        if (ref == NULL)
            continue;
        const float *a = g_logits_all + (size_t)k_pos[i] * V;
        double corr = golden_corr(a, ref, V);
        printf("prompt logits pos %d: corr %.5f max|d| %.4f argmax %d/%d\n", k_pos[i], corr,
               golden_maxdiff(a, ref, V), golden_argmax(a, V), golden_argmax(ref, V));
        DS4_CHECKF(corr >= 0.95, "pos %d corr %.4f", k_pos[i], corr);
        ds4_free(ref);
    }
}

static void test_mtp(void)
{
    const ds4_model_config_t *c = ds4_model_config(g_model);
    size_t V = (size_t)c->vocab_size, row = (size_t)c->hc_mult * c->hidden_size;
    char path[8192];
    snprintf(path, sizeof(path), "%s/extras/final_hidden_streams.bin", ds4_test_fixture("tiny-a"));
    float *streams = ds4_test_read_file(path, NULL);
    snprintf(path, sizeof(path), "%s/extras/mtp_prefill_last.bin", ds4_test_fixture("tiny-a"));
    float *ref = ds4_test_read_file(path, NULL);
    DS4_CHECK(streams != NULL && ref != NULL);
    if (streams == NULL || ref == NULL)
        return;
    /* next tokens: prompt[1:] + greedy token 0 (argmax of the reference's step 0) */
    int32_t *next = ds4_malloc_array((size_t)g_n, sizeof(int32_t));
    for (int i = 0; i + 1 < g_n; i++)
        next[i] = g_prompt[i + 1];
    next[g_n - 1] = golden_argmax(g_logits_all + (size_t)(g_n - 1) * V, V);
    ds4_seq_h s;
    DS4_CHECK_STATUS(ds4_seq_create(g_model, &s), DS4_OK);
    float *lg = ds4_malloc_array(V, sizeof(float));
    DS4_CHECK_STATUS(ds4_model_mtp_forward(g_model, s, 0, g_n, streams, next, lg), DS4_OK);
    double corr = golden_corr(lg, ref, V);
    printf("mtp logits: corr %.5f max|d| %.4f argmax %d/%d\n", corr, golden_maxdiff(lg, ref, V),
           golden_argmax(lg, V), golden_argmax(ref, V));
    DS4_CHECKF(corr >= 0.95, "mtp corr %.4f", corr);
    (void)row;
    ds4_free(lg);
    ds4_free(next);
    ds4_free(streams);
    ds4_free(ref);
    ds4_seq_destroy(s);
}

int main(void)
{
    setup();
    DS4_RUN(test_layer_streams);
    DS4_RUN(test_final_streams);
    DS4_RUN(test_csa_selection);
    DS4_RUN(test_prompt_logits);
    DS4_RUN(test_mtp);
    ds4_free(g_cap.streams);
    ds4_free(g_cap.sel);
    ds4_free(g_logits_all);
    ds4_model_free(g_model);
    return ds4_test_finish();
}
