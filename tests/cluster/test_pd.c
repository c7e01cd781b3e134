/*
 * test_pd: the disaggregated path end to end with real processes on loopback: ds4-router, one
 * ds4-prefill and two ds4-decode on the tiny-a checkpoint (tests/fixtures/tiny-a).
 *
 *  - identity: 20 prompts of 1 .. 3000 tokens, greedy and seeded sampling, through router ->
 *    prefill -> UCX -> decode are token-for-token the single-process engine's output (whole
 *    prompt in one step, same sampler) computed in this process;
 *  - 32 concurrent streams of mixed lengths, same identity check, and the decode workers batch
 *    (ds4_decode_max_batch_size > 1 on /metrics);
 *  - cancel (client cancel, client disconnect, cancel during prefill) and deadline exceeded:
 *    KV blocks and sequences on prefill and decode return to zero (read from /metrics);
 *  - invalid requests: INVALID_ARGUMENT naming the field;
 *  - a registered prefill worker that cannot be reached: the router retries on another;
 *  - kill -9 of the decode worker during a stream: UNAVAILABLE/ABORTED quickly, the worker is
 *    dropped, new requests succeed, a restarted worker registers with a new incarnation and
 *    serves;
 *  - SIGTERM drain: a running stream completes, every daemon exits 0.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ds4.pb-c.h"
#include "ds4/clock.h"
#include "health.pb-c.h"
#include "pd-harness.h"
#include "test.h"

static proc_t router, prefill0, decode0, decode1;

/* Deterministic prompt of n ids in [2, vocab): no BOS/EOS inside. */
static int32_t *make_prompt(size_t n, uint32_t seed)
{
    int32_t *ids = malloc(n * sizeof(*ids));
    uint64_t x = seed * 2654435761u + 12345;
    int32_t vocab = pdh_ref_vocab();
    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = 2 + (int32_t)((x >> 33) % (uint64_t)(vocab - 2));
    }
    if (n > 0)
        ids[0] = 0; /* BOS */
    return ids;
}

static bool same_as_reference(const gen_t *g, const char *what)
{
    int32_t ref[4096];
    size_t n_ref = 0;
    if (!pdh_ref_generate(g, ref, &n_ref)) {
        fprintf(stderr, "  %s: reference failed\n", what);
        return false;
    }
    if (g->code != DS4_RPC_OK) {
        fprintf(stderr, "  %s: %s %s\n", what, ds4_rpc_code_name(g->code), g->message);
        return false;
    }
    if (n_ref != g->n_out || memcmp(ref, g->out, n_ref * sizeof(int32_t)) != 0) {
        fprintf(stderr, "  %s: %zu tokens vs reference %zu; first diff at", what, g->n_out, n_ref);
        for (size_t i = 0; i < n_ref && i < g->n_out; i++)
            if (ref[i] != g->out[i]) {
                fprintf(stderr, " [%zu] %d vs %d", i, g->out[i], ref[i]);
                break;
            }
        fprintf(stderr, "\n");
        return false;
    }
    return true;
}

static void seeded(gen_t *g, uint64_t seed)
{
    g->temperature = 0.8f;
    g->top_p = 0.9f;
    g->top_k = 40;
    g->seed = seed;
    g->seeded = true;
}

static void test_identity(void)
{
    static const size_t lens[20] = {1,   2,   3,   7,   16,  33,  64,   100,  128,  200,
                                    255, 256, 300, 500, 512, 700, 1000, 1500, 2000, 3000};
    for (int i = 0; i < 20; i++) {
        gen_t *g = calloc(1, sizeof(*g));
        int32_t *ids = make_prompt(lens[i], (uint32_t)i + 1);
        g->ids = ids;
        g->n_ids = lens[i];
        g->max_tokens = 8;
        g->timeout_ms = 60000;
        if (i % 2 == 1)
            seeded(g, 7919u * (uint64_t)i + 1);
        gen_t *gs[1] = {g};
        DS4_CHECK(pdh_generate(gs, 1, 60000));
        char what[64];
        snprintf(what, sizeof(what), "prompt %d (%zu tokens, %s)", i, lens[i],
                 i % 2 ? "seeded" : "greedy");
        DS4_CHECK(same_as_reference(g, what));
        DS4_CHECK(g->n_out > 0);
        free(ids);
        free(g);
    }
    /* every prompt longer than one token went through the prefill worker */
    DS4_CHECK(pdh_metric(prefill0.http_port, "ds4_prefill_tokens_total") > 0);
}

static void test_concurrent(void)
{
    enum { N = 32 };
    gen_t *gs[N];
    int32_t *prompts[N];
    for (int i = 0; i < N; i++) {
        gs[i] = calloc(1, sizeof(*gs[i]));
        size_t n = (size_t)((i * 37) % 300) + 1;
        prompts[i] = make_prompt(n, 100u + (uint32_t)i);
        gs[i]->ids = prompts[i];
        gs[i]->n_ids = n;
        gs[i]->max_tokens = 24;
        gs[i]->ignore_eos = true;
        gs[i]->timeout_ms = 90000;
        if (i % 2 == 1)
            seeded(gs[i], 31u * (uint64_t)i);
    }
    DS4_CHECK(pdh_generate(gs, N, 90000));
    int same = 0;
    for (int i = 0; i < N; i++) {
        char what[48];
        snprintf(what, sizeof(what), "stream %d (%zu tokens)", i, gs[i]->n_ids);
        same += same_as_reference(gs[i], what);
    }
    DS4_CHECK_EQ_INT(same, N);
    double b0 = pdh_metric(decode0.http_port, "ds4_decode_max_batch_size");
    double b1 = pdh_metric(decode1.http_port, "ds4_decode_max_batch_size");
    fprintf(stderr, "  max decode batch: decode-0 %.0f, decode-1 %.0f\n", b0, b1);
    DS4_CHECK(b0 > 1 || b1 > 1);
    for (int i = 0; i < N; i++) {
        free(prompts[i]);
        free(gs[i]);
    }
}

/* Every worker holds no KV and runs nothing. */
static bool all_released(uint32_t timeout_ms)
{
    bool ok = pdh_wait_metric(decode0.http_port, "ds4_kv_blocks{state=\"used\"}", 0, timeout_ms) &&
              pdh_wait_metric(decode1.http_port, "ds4_kv_blocks{state=\"used\"}", 0, timeout_ms) &&
              pdh_wait_metric(decode0.http_port, "ds4_running_requests", 0, timeout_ms) &&
              pdh_wait_metric(decode1.http_port, "ds4_running_requests", 0, timeout_ms) &&
              pdh_wait_metric(prefill0.http_port, "ds4_kv_sequences", 0, timeout_ms) &&
              pdh_wait_metric(router.http_port, "ds4_running_requests", 0, timeout_ms);
    if (!ok)
        fprintf(stderr,
                "  not released: decode used %g/%g running %g/%g prefill seqs %g "
                "router running %g\n",
                pdh_metric(decode0.http_port, "ds4_kv_blocks{state=\"used\"}"),
                pdh_metric(decode1.http_port, "ds4_kv_blocks{state=\"used\"}"),
                pdh_metric(decode0.http_port, "ds4_running_requests"),
                pdh_metric(decode1.http_port, "ds4_running_requests"),
                pdh_metric(prefill0.http_port, "ds4_kv_sequences"),
                pdh_metric(router.http_port, "ds4_running_requests"));
    return ok;
}

static void test_cancel_and_deadline(void)
{
    int32_t *ids = make_prompt(400, 9);
    /* client cancel mid-stream */
    gen_t a = {.ids = ids,
               .n_ids = 400,
               .max_tokens = 3000,
               .ignore_eos = true,
               .cancel_after = 5,
               .timeout_ms = 30000};
    gen_t *ga[1] = {&a};
    DS4_CHECK(pdh_generate(ga, 1, 30000));
    DS4_CHECKF(a.code == DS4_RPC_CANCELLED, "got %s", ds4_rpc_code_name(a.code));
    DS4_CHECK(a.n_out >= 5 && a.n_out < 3000);
    DS4_CHECK(all_released(5000));

    /* client disconnect: ds4-cli exits abruptly after 3 tokens */
    char exe[512], router_addr[64], idlist[8192];
    snprintf(exe, sizeof(exe), "%s/tools/ds4-cli/ds4-cli", getenv("DS4_BINARY_DIR"));
    snprintf(router_addr, sizeof(router_addr), "127.0.0.1:%d", router.grpc_port);
    size_t off = 0;
    for (int i = 0; i < 400; i++)
        off += (size_t)snprintf(idlist + off, sizeof(idlist) - off, "%s%d", i ? "," : "", ids[i]);
    pid_t pid = fork();
    if (pid == 0) {
        execl(exe, exe, "--router", router_addr, "--prompt-ids", idlist, "--max-tokens", "3000",
              "--ignore-eos", "--ids", "--hangup-after", "3", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    uint64_t end = ds4_clock_now_ms() + 30000;
    while (waitpid(pid, &st, WNOHANG) == 0 && ds4_clock_now_ms() < end)
        ds4_clock_sleep_ms(10);
    DS4_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    DS4_CHECK(all_released(5000));

    /* deadline exceeded */
    gen_t c = {.ids = ids, .n_ids = 400, .max_tokens = 3000, .ignore_eos = true, .timeout_ms = 600};
    gen_t *gc[1] = {&c};
    DS4_CHECK(pdh_generate(gc, 1, 10000));
    DS4_CHECKF(c.code == DS4_RPC_DEADLINE_EXCEEDED, "got %s", ds4_rpc_code_name(c.code));
    DS4_CHECK(all_released(5000));

    /* cancel while the prompt is still being prefilled */
    int32_t *longp = make_prompt(3500, 11);
    gen_t d = {.ids = longp, .n_ids = 3500, .max_tokens = 4, .timeout_ms = 30000};
    gen_t *gd[1] = {&d};
    DS4_CHECK(pdh_generate_start(&d));
    pdh_client_run(150, gd, 1);
    if (!d.done)
        ds4_rpc_client_call_cancel(d.call);
    pdh_client_run(10000, gd, 1);
    DS4_CHECK(d.done);
    DS4_CHECKF(d.code == DS4_RPC_CANCELLED, "got %s (%zu tokens)", ds4_rpc_code_name(d.code),
               d.n_out);
    DS4_CHECK(all_released(8000));
    free(longp);
    free(ids);
}

static void expect_invalid(gen_t *g, const char *needle)
{
    gen_t *gs[1] = {g};
    DS4_CHECK(pdh_generate(gs, 1, 10000));
    DS4_CHECKF(g->code == DS4_RPC_INVALID_ARGUMENT, "%s: got %s %s", needle,
               ds4_rpc_code_name(g->code), g->message);
    DS4_CHECK_STR_CONTAINS(g->message, needle);
}

static void test_invalid(void)
{
    int32_t *ids = make_prompt(5000, 3);
    gen_t empty = {.ids = ids, .n_ids = 0, .max_tokens = 4};
    expect_invalid(&empty, "prompt_ids.ids: must not be empty");
    gen_t toolong = {.ids = ids, .n_ids = 5000, .max_tokens = 4};
    expect_invalid(&toolong, "longer than the context length");
    gen_t notoks = {.ids = ids, .n_ids = 10, .max_tokens = 0};
    expect_invalid(&notoks, "sampling.max_tokens");
    gen_t badtemp = {.ids = ids, .n_ids = 10, .max_tokens = 4, .temperature = -1};
    expect_invalid(&badtemp, "sampling.temperature");
    gen_t model = {.ids = ids, .n_ids = 10, .max_tokens = 4, .model = "no-such-model"};
    expect_invalid(&model, "model: unknown model");
    int32_t bad_id[2] = {0, 999999};
    gen_t vocab = {.ids = bad_id, .n_ids = 2, .max_tokens = 4};
    expect_invalid(&vocab, "outside the vocabulary");
    Grpc__Health__V1__HealthCheckRequest junk = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    junk.service = "not a generate request";
    gen_t mal = {.raw = &junk.base};
    expect_invalid(&mal, "malformed ds4.v1.GenerateRequest");
    DS4_CHECK(pdh_wait_metric(router.http_port, "ds4_running_requests", 0, 2000));
    free(ids);
}

/* A prefill worker that registered but cannot be reached is chosen first (ties go to the
 * lower id); the router retries on the real one, so the client sees no error, and drops the
 * dead worker. */
static void test_retry(void)
{
    uint8_t digest[8];
    pdh_ref_digest(digest);
    DS4_CHECK(pdh_register_ghost("a-ghost-prefill", 1, digest, 8, pdh_dead_port()));
    DS4_CHECK(pdh_wait_metric(router.http_port, "ds4_workers{role=\"prefill\"}", 2, 2000));
    int32_t *ids = make_prompt(50, 77);
    gen_t g = {.ids = ids, .n_ids = 50, .max_tokens = 8, .timeout_ms = 20000};
    gen_t *gs[1] = {&g};
    DS4_CHECK(pdh_generate(gs, 1, 20000));
    DS4_CHECK(same_as_reference(&g, "after a retry"));
    DS4_CHECK(pdh_wait_metric(router.http_port, "ds4_workers{role=\"prefill\"}", 1, 3000));
    free(ids);
}

static char *read_incarnation(const proc_t *p, char *buf, size_t cap)
{
    FILE *f = fopen(p->ports, "r");
    buf[0] = '\0';
    if (f != NULL) {
        char line[256] = "";
        if (fgets(line, sizeof(line), f) != NULL) {
            const char *k = strstr(line, "\"incarnation\":\"");
            if (k != NULL)
                snprintf(buf, cap, "%.16s", k + 15);
        }
        fclose(f);
    }
    return buf;
}

static void test_kill9(void)
{
    int32_t *ids = make_prompt(64, 21);
    gen_t g = {
        .ids = ids, .n_ids = 64, .max_tokens = 3000, .ignore_eos = true, .timeout_ms = 20000};
    gen_t *gs[1] = {&g};
    DS4_CHECK(pdh_generate_start(&g));
    uint64_t end = ds4_clock_now_ms() + 10000;
    while (g.n_out < 5 && !g.done && ds4_clock_now_ms() < end)
        pdh_client_run(5, gs, 1);
    DS4_CHECK(g.n_out >= 5 && !g.done);
    proc_t *victim =
        pdh_metric(decode0.http_port, "ds4_running_requests") >= 1 ? &decode0 : &decode1;
    proc_t *other = victim == &decode0 ? &decode1 : &decode0;
    char inc_before[32];
    read_incarnation(victim, inc_before, sizeof(inc_before));
    double t_kill = ds4_clock_now_s();
    kill(victim->pid, SIGKILL);
    waitpid(victim->pid, NULL, 0);
    victim->pid = 0;
    pdh_client_run(15000, gs, 1);
    DS4_CHECK(g.done);
    DS4_CHECKF(g.code == DS4_RPC_UNAVAILABLE || g.code == DS4_RPC_ABORTED, "got %s: %s",
               ds4_rpc_code_name(g.code), g.message);
    double took = g.t_end - t_kill;
    fprintf(stderr, "  kill -9 %s: client ended %s after %.0f ms: %s\n", victim->name,
            ds4_rpc_code_name(g.code), took * 1e3, g.message);
    DS4_CHECK(took < 5.0);
    DS4_CHECK(pdh_wait_metric(router.http_port, "ds4_workers{role=\"decode\"}", 1, 5000));

    /* new requests succeed on the remaining worker */
    gen_t n1 = {.ids = ids, .n_ids = 64, .max_tokens = 8, .timeout_ms = 20000};
    gen_t *gn[1] = {&n1};
    DS4_CHECK(pdh_generate(gn, 1, 20000));
    DS4_CHECK(same_as_reference(&n1, "after kill"));

    /* a restarted worker registers with a new incarnation and serves */
    char vname[32];
    snprintf(vname, sizeof(vname), "%s", victim->name);
    bool restarted = pdh_start_worker(victim, false, vname, router.grpc_port);
    DS4_CHECK(restarted);
    char inc_after[32];
    read_incarnation(victim, inc_after, sizeof(inc_after));
    DS4_CHECKF(inc_before[0] != '\0' && strcmp(inc_before, inc_after) != 0, "%s vs %s", inc_before,
               inc_after);
    DS4_CHECK(pdh_wait_metric(router.http_port, "ds4_workers{role=\"decode\"}", 2, 10000));
    DS4_CHECK(pdh_wait_ready(victim->http_port, 10000));
    enum { M = 4 };
    gen_t *more[M];
    for (int i = 0; i < M; i++) {
        more[i] = calloc(1, sizeof(gen_t));
        more[i]->ids = ids;
        more[i]->n_ids = 64;
        more[i]->max_tokens = 16;
        more[i]->ignore_eos = true;
        more[i]->timeout_ms = 30000;
    }
    DS4_CHECK(pdh_generate(more, M, 30000));
    for (int i = 0; i < M; i++) {
        DS4_CHECK(same_as_reference(more[i], "after restart"));
        free(more[i]);
    }
    double served = pdh_metric(victim->http_port, "ds4_finished_total{reason=\"length\"}");
    fprintf(stderr, "  restarted %s served %g of %d requests (other served more: %g)\n",
            victim->name, served, M, pdh_metric(other->http_port, "ds4_generated_tokens_total"));
    DS4_CHECK(served >= 1);
    free(ids);
}

static void test_drain(void)
{
    int32_t *ids = make_prompt(32, 5);
    gen_t g = {.ids = ids, .n_ids = 32, .max_tokens = 60, .ignore_eos = true, .timeout_ms = 30000};
    gen_t *gs[1] = {&g};
    DS4_CHECK(pdh_generate_start(&g));
    uint64_t end = ds4_clock_now_ms() + 10000;
    while (g.n_out < 2 && !g.done && ds4_clock_now_ms() < end)
        pdh_client_run(5, gs, 1);
    kill(router.pid, SIGTERM);
    /* draining: /ready answers 503 (Kubernetes stops routing), /health still 200 */
    static char buf[4096];
    bool not_ready = false;
    uint64_t until = ds4_clock_now_ms() + 3000;
    while (!not_ready && ds4_clock_now_ms() < until) {
        not_ready = pdh_http_get(router.http_port, "/ready", buf, sizeof(buf)) == 503;
        pdh_client_run(5, gs, 1);
    }
    DS4_CHECK(not_ready);
    DS4_CHECK_STR_CONTAINS(buf, "not ready: draining");
    DS4_CHECK_EQ_INT(pdh_http_get(router.http_port, "/health", buf, sizeof(buf)), 200);
    pdh_client_run(20000, gs, 1);
    DS4_CHECKF(g.code == DS4_RPC_OK, "draining router cut the stream: %s %s",
               ds4_rpc_code_name(g.code), g.message);
    DS4_CHECK_EQ_INT(g.n_out, 60);
    DS4_CHECK_EQ_INT(pdh_stop(&router, SIGTERM, 8000), 0);
    DS4_CHECK_EQ_INT(pdh_stop(&prefill0, SIGTERM, 8000), 0);
    DS4_CHECK_EQ_INT(pdh_stop(&decode0, SIGTERM, 8000), 0);
    DS4_CHECK_EQ_INT(pdh_stop(&decode1, SIGTERM, 8000), 0);
    free(ids);
}

int main(void)
{
    if (getenv("DS4_BINARY_DIR") == NULL) {
        fprintf(stderr, "DS4_BINARY_DIR not set (run through ctest)\n");
        return DS4_TEST_SKIP;
    }
    if (!pdh_ref_open(ds4_test_fixture("tiny-a")))
        return 1;
    if (!pdh_start_router(&router, NULL) ||
        !pdh_start_worker(&prefill0, true, "prefill-0", router.grpc_port) ||
        !pdh_start_worker(&decode0, false, "decode-0", router.grpc_port) ||
        !pdh_start_worker(&decode1, false, "decode-1", router.grpc_port) ||
        !pdh_wait_ready(router.http_port, 20000) ||
        !pdh_wait_metric(router.http_port, "ds4_workers{role=\"decode\"}", 2, 10000) ||
        !pdh_client_open(router.grpc_port)) {
        fprintf(stderr, "cluster did not start (logs in %s)\n", pdh_run_dir());
        pdh_kill_all();
        return 1;
    }
    DS4_RUN(test_identity);
    DS4_RUN(test_concurrent);
    DS4_RUN(test_cancel_and_deadline);
    DS4_RUN(test_invalid);
    DS4_RUN(test_retry);
    DS4_RUN(test_kill9);
    DS4_RUN(test_drain);
    pdh_client_close();
    pdh_kill_all();
    pdh_ref_close();
    fprintf(stderr, "logs in %s\n", pdh_run_dir());
    return ds4_test_finish();
}
