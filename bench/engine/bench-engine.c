/*
 * bench-engine - engine throughput on the default tiny model (ds4-mkmodel), 2 threads:
 *   prefill tokens/s for 1K / 8K / 32K-token prompts (chunks of 2048),
 *   decode tokens/s at batch 1 / 8 / 32,
 *   FP8- and FP4-weight GEMMs (act quant + K-blocked kgemm) vs OpenBLAS sgemm on fp32 weights of
 *   the same shapes (interleaved, best of 5; 20 for the decode-sized shape),
 *   optional --long N: an N-token prefill with wall time, peak RSS and the KV bytes it holds,
 *   then 8 greedy tokens. Its prompt is tests/cluster/test_pd_long.c's (id 0, then the LCG
 *   below from seed 1), so the printed tokens are the single-process reference of that test
 *   (DS4_PD_LONG_EXPECT).
 *
 *   bench-engine [--model DIR] [--threads N] [--long N] [--quick]
 */
#include "ds4/alloc.h"
#include "ds4/backend.h"
#include "ds4/clock.h"
#include "ds4/model.h"
#include "mkmodel.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static int32_t *make_tokens(int n, int V, uint64_t seed)
{
    int32_t *t = ds4_malloc_array((size_t)n, sizeof(int32_t));
    uint64_t x = seed;
    for (int i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)(2 + (x >> 33) % (uint64_t)(V - 2));
    }
    return t;
}

/* The prompt of tests/cluster/test_pd_long.c: make_tokens from seed 1 with id 0 first. */
static int32_t *make_long_prompt(int n, int V)
{
    int32_t *t = make_tokens(n, V, 1);
    if (t != NULL && n > 0)
        t[0] = 0;
    return t;
}

/* Prefills n tokens in 2048-token chunks; with `keep` the sequence is kept and the last
 * position's logits are written to *keep_logits (vocab floats, ds4_free). */
static double prefill(ds4_model_h m, int n, ds4_seq_h *keep, float **keep_logits)
{
    int V = ds4_model_config(m)->vocab_size;
    int32_t *t = keep != NULL ? make_long_prompt(n, V) : make_tokens(n, V, (uint64_t)n);
    float *logits = ds4_malloc_array((size_t)V, sizeof(float));
    ds4_seq_h s;
    ds4_seq_create(m, &s);
    double t0 = ds4_clock_now_s();
    for (int i = 0; i < n; i += 2048) {
        int k = n - i < 2048 ? n - i : 2048;
        ds4_step_item_t it = {.seq = s, .tokens = t + i, .n_tokens = k,
                              .logits = i + k == n ? logits : NULL};
        if (ds4_model_step(m, &it, 1, NULL) != DS4_OK) {
            fprintf(stderr, "prefill failed\n");
            exit(1);
        }
    }
    double dt = ds4_clock_now_s() - t0;
    if (keep != NULL) {
        *keep = s;
        *keep_logits = logits;
        logits = NULL;
    } else {
        ds4_seq_destroy(s);
    }
    ds4_free(t);
    ds4_free(logits);
    return dt;
}

static double decode(ds4_model_h m, int batch, int steps, int ctx)
{
    int V = ds4_model_config(m)->vocab_size;
    ds4_seq_h *seqs = ds4_calloc((size_t)batch, sizeof(ds4_seq_h));
    ds4_step_item_t *items = ds4_calloc((size_t)batch, sizeof(ds4_step_item_t));
    float *logits = ds4_malloc_array((size_t)batch * V, sizeof(float));
    int32_t *tok = make_tokens(ctx + steps, V, 7);
    for (int b = 0; b < batch; b++) {
        ds4_seq_create(m, &seqs[b]);
        ds4_step_item_t it = {.seq = seqs[b], .tokens = tok, .n_tokens = ctx};
        ds4_model_step(m, &it, 1, NULL);
    }
    double t0 = ds4_clock_now_s();
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < batch; b++)
            items[b] = (ds4_step_item_t){.seq = seqs[b], .tokens = tok + ctx + s, .n_tokens = 1,
                                         .logits = logits + (size_t)b * V};
        ds4_model_step(m, items, batch, NULL);
    }
    double dt = ds4_clock_now_s() - t0;
    for (int b = 0; b < batch; b++)
        ds4_seq_destroy(seqs[b]);
    ds4_free(seqs);
    ds4_free(items);
    ds4_free(logits);
    ds4_free(tok);
    return (double)batch * steps / dt;
}

/* n greedy tokens after a prefill (argmax, ties to the lowest id: ds4/sampling.h greedy). */
static void long_greedy(ds4_model_h m, ds4_seq_h s, float *logits, int n)
{
    int V = ds4_model_config(m)->vocab_size;
    printf("long greedy tokens (DS4_PD_LONG_EXPECT):");
    double t0 = ds4_clock_now_s();
    for (int i = 0; i < n; i++) {
        int32_t best = 0;
        for (int32_t v = 1; v < V; v++)
            best = logits[v] > logits[best] ? v : best;
        printf("%s%d", i ? "," : " ", best);
        ds4_step_item_t it = {.seq = s, .tokens = &best, .n_tokens = 1, .logits = logits};
        if (i + 1 < n && ds4_model_step(m, &it, 1, NULL) != DS4_OK) {
            fprintf(stderr, "decode step failed\n");
            exit(1);
        }
    }
    printf("\n%d decode steps at the long context: %.2f s\n", n - 1, ds4_clock_now_s() - t0);
}

/* The smaller of two timings (the fastest of interleaved repetitions). */
static double best_of(double prev, double t)
{
    return t < prev ? t : prev;
}

static void gemm_bench(int threads)
{
    const ds4_backend_ops_t *ops = ds4_backend_get("cpu");
    ds4_backend_h be;
    ops->create(threads, &be);
    /* prefill-sized projections and one decode-sized batch (8 rows) */
    static const int shapes[][3] = {
        {512, 4096, 1024}, {512, 1024, 4096}, {2048, 4096, 4096}, {8, 4096, 4096}};
    printf("\n| GEMM M x K -> N | FP8 weights GFLOP/s | FP4 weights GFLOP/s | sgemm fp32 GFLOP/s "
           "| FP8 / sgemm | FP4 / sgemm |\n|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        int M = shapes[i][0], K = shapes[i][1], N = shapes[i][2];
        float *x = ds4_malloc_array((size_t)M * K, sizeof(float));
        float *wf = ds4_malloc_array((size_t)N * K, sizeof(float));
        float *y = ds4_malloc_array((size_t)M * N, sizeof(float));
        uint8_t *w8 = ds4_malloc((size_t)N * K);
        uint8_t *sc = ds4_malloc((size_t)((N + 127) / 128) * ((K + 127) / 128));
        uint8_t *w4 = ds4_malloc((size_t)N * K / 2);
        uint8_t *sc4 = ds4_malloc((size_t)N * K / 32);
        for (size_t j = 0; j < (size_t)M * K; j++)
            x[j] = (float)((j * 2654435761u) % 1000) / 1000.0f - 0.5f;
        for (size_t j = 0; j < (size_t)N * K; j++) {
            w8[j] = (uint8_t)((j * 40503u) & 0x77);
            wf[j] = (float)(w8[j] & 0x3f) / 64.0f;
        }
        for (size_t j = 0; j < (size_t)N * K / 2; j++)
            w4[j] = (uint8_t)(j * 2654435761u >> 7);
        memset(sc, 120, (size_t)((N + 127) / 128) * ((K + 127) / 128));
        memset(sc4, 124, (size_t)N * K / 32);
        ds4_weight_t w = {.type = DS4_W_FP8, .n = N, .k = K, .data = w8, .scale = sc};
        ds4_weight_t w4t = {.type = DS4_W_FP4, .n = N, .k = K, .data = w4, .scale = sc4};
        double flops = 2.0 * M * N * K;
        ops->matmul(be, &w, M, x, y, 0);
        ops->matmul(be, &w4t, M, x, y, 0);
        /* the machine may be shared: contenders interleaved, best of `reps` each */
        int reps = M < 64 ? 20 : 5;
        double t8 = 1e30, t4 = 1e30, ts = 1e30;
        for (int r = 0; r < reps; r++) {
            double t0 = ds4_clock_now_s();
            ops->matmul(be, &w, M, x, y, 0);
            t8 = best_of(t8, ds4_clock_now_s() - t0);
            t0 = ds4_clock_now_s();
            ops->matmul(be, &w4t, M, x, y, 0);
            t4 = best_of(t4, ds4_clock_now_s() - t0);
            openblas_set_num_threads(threads);
            t0 = ds4_clock_now_s();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, wf, K,
                        0.0f, y, N);
            ts = best_of(ts, ds4_clock_now_s() - t0);
            openblas_set_num_threads(1);
        }
        printf("| %d x %d -> %d | %.1f | %.1f | %.1f | %.2f | %.2f |\n", M, K, N,
               flops / t8 / 1e9, flops / t4 / 1e9, flops / ts / 1e9, ts / t8, ts / t4);
        fflush(stdout);
        ds4_free(x);
        ds4_free(wf);
        ds4_free(y);
        ds4_free(w8);
        ds4_free(sc);
        ds4_free(w4);
        ds4_free(sc4);
    }
    ops->destroy(be);
}

static long peak_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    int threads = 2, quick = 0;
    long long long_n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            model = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--long") == 0 && i + 1 < argc)
            long_n = atoll(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
    }
    char dir[] = "/tmp/ds4-bench-XXXXXX";
    if (model == NULL) {
        if (mkdtemp(dir) == NULL)
            return 1;
        ds4_mkmodel_params_t mp = ds4_mkmodel_params_default();
        if (ds4_mkmodel_write(dir, &mp) != DS4_OK)
            return 1;
        model = dir;
    }
    ds4_model_params_t p = ds4_model_params_default();
    p.n_threads = threads;
    ds4_model_h m;
    if (ds4_model_load(model, &p, &m, NULL) != DS4_OK)
        return 1;
    printf("model %s, %d threads\n\n| prefill tokens | seconds | tokens/s |\n|---|---|---|\n",
           model, threads);
    int sizes[] = {1024, 8192, 32768};
    int n_sizes = quick ? 1 : 3;
    for (int i = 0; i < n_sizes; i++) {
        double dt = prefill(m, sizes[i], NULL, NULL);
        printf("| %d | %.2f | %.0f |\n", sizes[i], dt, sizes[i] / dt);
        fflush(stdout);
    }
    printf("\n| decode batch | context | tokens/s |\n|---|---|---|\n");
    int batches[] = {1, 8, 32};
    for (int i = 0; i < 3; i++) {
        double tps = decode(m, batches[i], quick ? 4 : 16, 256);
        printf("| %d | 256 | %.1f |\n", batches[i], tps);
        fflush(stdout);
    }
    gemm_bench(threads);
    if (long_n > 0) {
        ds4_seq_h s;
        float *logits;
        double dt = prefill(m, (int)long_n, &s, &logits);
        uint64_t kv = ds4_seq_export_bytes(s);
        printf("\nlong prefill %lld tokens: %.1f s (%.0f tokens/s), peak RSS %.1f MiB, KV state "
               "%.1f MiB (%.1f B/token)\n",
               long_n, dt, (double)long_n / dt, peak_rss_kb() / 1024.0, kv / 1048576.0,
               (double)kv / (double)long_n);
        fflush(stdout);
        long_greedy(m, s, logits, 8);
        ds4_free(logits);
        ds4_seq_destroy(s);
    }
    ds4_model_free(m);
    if (model == dir) {
        char path[64];
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/config.json", dir);
        unlink(path);
        rmdir(dir);
    }
    return 0;
}
