/*
 * test_pd_long (label slow): a 1M-token prompt (raw ids; DS4_PD_LONG_TOKENS overrides the
 * length) on the embedded tiny model (written here with ds4-mkmodel) goes through router ->
 * prefill -> UCX -> decode and decodes 8 tokens identical to the single-process engine. Prints
 * TTFT, prefill throughput, transfer time and the peak RSS of each process.
 *
 * The reference is computed in this process after the cluster run, unless DS4_PD_LONG_EXPECT
 * holds the 8 tokens ("a,b,...") that `bench-engine --long N` (bench/engine: the same prompt,
 * single-process engine) printed for the same N — that saves one 1M-token prefill — or
 * DS4_PD_LONG_EXPECT_FILE names the output file of such a bench-engine run going on beside
 * this test (its "long greedy tokens" line is awaited after the cluster run, up to 4 h).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ds4/clock.h"
#include "pd-harness.h"
#include "test.h"

static proc_t router, prefill0, decode0;

int main(void)
{
    const char *bin = getenv("DS4_BINARY_DIR");
    if (bin == NULL)
        return DS4_TEST_SKIP;
    uint32_t tokens = 1048576 - 64;
    if (getenv("DS4_PD_LONG_TOKENS") != NULL)
        tokens = (uint32_t)strtoul(getenv("DS4_PD_LONG_TOKENS"), NULL, 10);
    char model[600], cmd[1400];
    snprintf(model, sizeof(model), "%s/ds4-tiny", pdh_run_dir());
    snprintf(cmd, sizeof(cmd), "%s/tools/ds4-mkmodel/ds4-mkmodel %s > /dev/null", bin, model);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot write the tiny model\n");
        return 1;
    }
    if (!pdh_ref_open(model))
        return 1;
    char router_addr[64], kv_tokens[32];
    const char *rargs[] = {"--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", NULL};
    DS4_CHECK(pdh_start(&router, "router", "router/ds4-router", rargs));
    snprintf(router_addr, sizeof(router_addr), "127.0.0.1:%d", router.grpc_port);
    snprintf(kv_tokens, sizeof(kv_tokens), "%u", tokens + 16);
    const char *pargs[] = {"--model",        model,  "--router", router_addr,
                           "--chunk-tokens", "4096", NULL};
    const char *dargs[] = {"--model",         model,     "--router",  router_addr,
                           "--max-sequences", "2",       "--kv-seqs", "1",
                           "--kv-tokens",     kv_tokens, NULL};
    DS4_CHECK(pdh_start(&prefill0, "prefill-0", "prefill/ds4-prefill", pargs));
    DS4_CHECK(pdh_start(&decode0, "decode-0", "decode/ds4-decode", dargs));
    if (!pdh_wait_ready(router.http_port, 60000) || !pdh_client_open(router.grpc_port)) {
        pdh_kill_all();
        return 1;
    }
    int32_t vocab = pdh_ref_vocab();
    int32_t *ids = malloc((size_t)tokens * sizeof(*ids));
    uint64_t x = 1;
    for (uint32_t i = 0; i < tokens; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = i == 0 ? 0 : 2 + (int32_t)((x >> 33) % (uint64_t)(vocab - 2));
    }
    gen_t *g = calloc(1, sizeof(*g));
    g->ids = ids;
    g->n_ids = tokens;
    g->max_tokens = 8;
    g->ignore_eos = true;
    g->timeout_ms = 4 * 3600 * 1000;
    gen_t *gs[1] = {g};
    DS4_CHECK(pdh_generate(gs, 1, g->timeout_ms));
    DS4_CHECKF(g->code == 0, "%s", g->message);
    double ttft = g->t_first - g->t_start;
    double tps = pdh_metric(prefill0.http_port, "ds4_prefill_tokens_per_second");
    double xfer = pdh_metric(prefill0.http_port, "ds4_kv_transfer_seconds_sum");
    double bytes = pdh_metric(prefill0.http_port, "ds4_kv_transfer_bytes_total");
    double rss_r = pdh_metric(router.http_port, "ds4_process_peak_resident_memory_bytes");
    double rss_p = pdh_metric(prefill0.http_port, "ds4_process_peak_resident_memory_bytes");
    double rss_d = pdh_metric(decode0.http_port, "ds4_process_peak_resident_memory_bytes");

    /* reference: the same prompt on the single-process engine (chunking-invariant) */
    int32_t ref[16];
    size_t n_ref = 0;
    double t0 = ds4_clock_now_s(), t_ref = 0.0;
    const char *expect = getenv("DS4_PD_LONG_EXPECT");
    const char *expect_file = getenv("DS4_PD_LONG_EXPECT_FILE");
    static char expect_line[512];
    const char *tag = "long greedy tokens (DS4_PD_LONG_EXPECT):";
    for (int waited = 0; expect == NULL && expect_file != NULL && waited < 4 * 3600; waited++) {
        FILE *f = fopen(expect_file, "r");
        while (expect == NULL && f != NULL && fgets(expect_line, sizeof(expect_line), f) != NULL)
            if (strncmp(expect_line, tag, strlen(tag)) == 0)
                expect = expect_line + strlen(tag); /* stop reading: the line stays intact */
        if (f != NULL)
            fclose(f);
        if (expect == NULL)
            sleep(1);
    }
    if (expect != NULL) {
        for (const char *p = expect; *p != '\0' && n_ref < 16;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p)
                break;
            ref[n_ref++] = (int32_t)v;
            p = *end == ',' ? end + 1 : end;
        }
        printf("pd-long: reference tokens from %s (bench-engine --long %u):%s%s",
               expect_file != NULL ? expect_file : "DS4_PD_LONG_EXPECT", tokens, expect,
               strchr(expect, '\n') != NULL ? "" : "\n");
    } else {
        DS4_CHECK(pdh_ref_generate(g, ref, &n_ref));
        t_ref = ds4_clock_now_s() - t0;
    }
    DS4_CHECK_EQ_INT(n_ref, 8);
    DS4_CHECK_EQ_INT(g->n_out, 8);
    DS4_CHECK(n_ref == 8 && memcmp(ref, g->out, 8 * sizeof(int32_t)) == 0);
    printf("pd-long: PD tokens:");
    for (size_t i = 0; i < g->n_out; i++)
        printf("%s%d", i ? "," : " ", g->out[i]);
    printf("\n");
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("pd-long: %u tokens: TTFT %.1f s, prefill %.0f tok/s, KV %.1f MiB transferred in "
           "%.0f ms (computed -> verified), single-process prefill+8 tokens %.1f s\n",
           tokens, ttft, tps, bytes / 1048576.0, xfer * 1e3, t_ref);
    printf("pd-long: peak RSS router %.0f MiB, prefill %.0f MiB, decode %.0f MiB, "
           "test (reference) %.0f MiB\n",
           rss_r / 1048576.0, rss_p / 1048576.0, rss_d / 1048576.0, ru.ru_maxrss / 1024.0);
    pdh_client_close();
    pdh_stop(&router, SIGTERM, 10000);
    pdh_stop(&prefill0, SIGTERM, 10000);
    pdh_stop(&decode0, SIGTERM, 10000);
    pdh_kill_all();
    pdh_ref_close();
    free(ids);
    free(g);
    return ds4_test_finish();
}
