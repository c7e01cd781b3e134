/*
 * bench_pd - time to first token of the disaggregated path against the single-process engine
 * on the same prompt, in one run, and the latency the router adds to each streamed token.
 *
 *   bench_pd --model DIR [--tokens 32768] [--decode-tokens 64] [--chunk 4096] [--threads N]
 *            [--rounds 3]
 *            [--bin-dir BUILD]
 *
 *  1. single process: load the model here, prefill the prompt in chunks, sample the first
 *     token (greedy) -> TTFT_single;
 *  2. PD: start ds4-router + ds4-prefill + ds4-decode on loopback (binaries from --bin-dir,
 *     default this executable's build tree), warm the KV link with a short request, send the
 *     same prompt -> TTFT_pd at the client; both paths produce the same first token (checked);
 *  3. relay latency: for each streamed token, client receive time - decode sample time
 *     (CLOCK_MONOTONIC, same host) through the router, and the same for a Reserve stream
 *     opened on the decode worker directly; the router's share is the difference.
 * Prints one table; exit status 0 when everything ran (the goal is reported, not enforced).
 */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "ds4.pb-c.h"
#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/daemon.h"
#include "ds4/log.h"
#include "ds4/model.h"
#include "ds4/rpc.h"
#include "ds4_worker.pb-c.h"
#include "pd-harness.h"

typedef struct stream {
    bool done;
    ds4_rpc_code_t code;
    char msg[256];
    double t_start, t_first;
    int32_t first_token;
    double lat_us[8192];
    size_t n_lat, n_tokens;
} stream_t;

static uv_loop_t loop;

static void on_gen_msg(ds4_rpc_client_call_h call, ProtobufCMessage *m, void *arg)
{
    stream_t *s = arg;
    uint64_t now = ds4_clock_now_ns();
    uint64_t sampled = 0;
    size_t n = 0;
    uint32_t first = 0;
    if (m->descriptor == &ds4__v1__generate_response__descriptor) {
        Ds4__V1__GenerateResponse *g = (void *)m;
        n = g->n_token_ids;
        sampled = g->sampled_mono_ns;
        first = n > 0 ? g->token_ids[0] : 0;
    } else {
        Ds4__Worker__V1__ReserveEvent *e = (void *)m;
        if (e->event_case == DS4__WORKER__V1__RESERVE_EVENT__EVENT_TOKENS) {
            n = e->tokens->n_token_ids;
            sampled = e->tokens->sampled_mono_ns;
            first = n > 0 ? e->tokens->token_ids[0] : 0;
        }
    }
    if (n > 0) {
        if (s->n_tokens == 0) {
            s->t_first = ds4_clock_now_s();
            s->first_token = (int32_t)first;
        } else if (sampled != 0 && s->n_lat < 8192) {
            s->lat_us[s->n_lat++] = (double)(now - sampled) / 1e3;
        }
        s->n_tokens += n;
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

static void on_gen_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *msg, void *arg)
{
    stream_t *s = arg;
    s->done = true;
    s->code = code;
    snprintf(s->msg, sizeof(s->msg), "%s", msg);
}

static bool run_call(ds4_rpc_channel_h ch, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp, stream_t *s)
{
    memset(s, 0, sizeof(*s));
    ds4_rpc_call_params_t cp = {.method = method,
                                .request = req,
                                .response_type = resp,
                                .timeout_ms = 600000,
                                .on_message = on_gen_msg,
                                .on_done = on_gen_done,
                                .arg = s};
    s->t_start = ds4_clock_now_s();
    if (ds4_rpc_channel_call(ch, &cp, NULL) != DS4_OK)
        return false;
    while (!s->done)
        uv_run(&loop, UV_RUN_ONCE);
    if (s->code != DS4_RPC_OK)
        fprintf(stderr, "bench_pd: %s failed: %s %s\n", method, ds4_rpc_code_name(s->code), s->msg);
    return s->code == DS4_RPC_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    if (n == 0)
        return NAN;
    qsort(v, n, sizeof(*v), cmp_double);
    size_t i = (size_t)ceil(p * (double)n) - 1;
    return v[i < n ? i : n - 1];
}

/* Prefill of the whole prompt in chunks + greedy first token, on this process's engine. */
static double single_ttft(ds4_model_h m, const int32_t *prompt, uint32_t tokens, uint32_t chunk,
                          float *logits, int32_t vocab, int32_t *first)
{
    ds4_seq_h seq = NULL;
    if (ds4_seq_create(m, &seq) != DS4_OK)
        return NAN;
    double t0 = ds4_clock_now_s();
    for (uint32_t off = 0; off < tokens; off += chunk) {
        uint32_t n = tokens - off < chunk ? tokens - off : chunk;
        ds4_step_item_t it = {.seq = seq,
                              .tokens = prompt + off,
                              .n_tokens = (int32_t)n,
                              .logits = off + n == tokens ? logits : NULL};
        if (ds4_model_step(m, &it, 1, NULL) != DS4_OK) {
            ds4_seq_destroy(seq);
            return NAN;
        }
    }
    int32_t best = 0;
    for (int32_t i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    double t = ds4_clock_now_s() - t0;
    ds4_seq_destroy(seq);
    *first = best;
    return t;
}

static ds4_rpc_channel_h open_channel(ds4_rpc_ctx_h ctx, int port)
{
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    ds4_rpc_channel_params_t p = ds4_rpc_channel_params_default();
    p.target = target;
    ds4_rpc_channel_h ch = NULL;
    return ds4_rpc_channel_create(ctx, &p, &ch) == DS4_OK ? ch : NULL;
}

static void fill_gen(Ds4__V1__GenerateRequest *g, Ds4__V1__SamplingParams *sp,
                     Ds4__V1__TokenIds *ids, uint32_t *u, size_t n, uint32_t max_tokens)
{
    ids->n_ids = n;
    ids->ids = u;
    g->api_version = 1;
    g->prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS;
    g->prompt_ids = ids;
    sp->max_tokens = max_tokens;
    sp->ignore_eos = 1;
    g->sampling = sp;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *bin_dir = NULL;
    uint32_t tokens = 32768, decode_tokens = 64, chunk = 4096, threads = 0, rounds = 3;
    const ds4_opt_t opts[] = {
        {"model", DS4_OPT_STR, &model, "checkpoint directory (e.g. written by ds4-mkmodel)"},
        {"tokens", DS4_OPT_U32, &tokens, "prompt length"},
        {"decode-tokens", DS4_OPT_U32, &decode_tokens, "tokens streamed for the relay numbers"},
        {"chunk", DS4_OPT_U32, &chunk, "prefill chunk (both paths)"},
        {"threads", DS4_OPT_U32, &threads, "engine threads (0: all cores)"},
        {"rounds", DS4_OPT_U32, &rounds, "alternating single/PD measurement pairs (1..16)"},
        {"bin-dir", DS4_OPT_STR, &bin_dir, "build directory holding router/ prefill/ decode/"},
    };
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_opts_state_t os;
    if (ds4_opts_parse(opts, DS4_ARRAY_LEN(opts), argc, argv, &os, &diag) != DS4_OK ||
        model == NULL || tokens < 2 || decode_tokens < 2 || chunk == 0 || rounds < 1 ||
        rounds > 16) {
        ds4_diag_log(&diag, "bench_pd");
        ds4_opts_usage("bench_pd", opts, DS4_ARRAY_LEN(opts), stderr);
        return 2;
    }
    ds4_log_set_level(DS4_LOG_WARN);
    char self[PATH_MAX], bins[PATH_MAX + 16];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    self[sl > 0 ? sl : 0] = '\0';
    char *slash = strrchr(self, '/');
    if (slash != NULL)
        *slash = '\0';
    snprintf(bins, sizeof(bins), "%s", bin_dir != NULL ? bin_dir : self);
    if (bin_dir == NULL)
        snprintf(bins, sizeof(bins), "%s/../..", self);
    setenv("DS4_BINARY_DIR", bins, 1);
    char model_abs[PATH_MAX];
    if (realpath(model, model_abs) == NULL) {
        perror(model);
        return 2;
    }

    /* ---- 1. single process ---- */
    ds4_model_params_t mp = ds4_model_params_default();
    mp.n_threads = (int)threads;
    ds4_model_h m = NULL;
    if (ds4_model_load(model_abs, &mp, &m, &diag) != DS4_OK) {
        ds4_diag_log(&diag, "bench_pd: model");
        return 1;
    }
    const ds4_model_config_t *cfg = ds4_model_config(m);
    if ((int64_t)tokens + decode_tokens > cfg->max_position_embeddings) {
        fprintf(stderr, "bench_pd: %u tokens exceed the model's context %lld\n", tokens,
                (long long)cfg->max_position_embeddings);
        return 2;
    }
    int32_t *prompt = ds4_malloc_array(tokens, sizeof(*prompt));
    uint32_t *uprompt = ds4_malloc_array(tokens, sizeof(*uprompt));
    uint64_t x = 42;
    for (uint32_t i = 0; i < tokens; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] =
            i == 0 ? cfg->bos_token_id : 2 + (int32_t)((x >> 33) % (uint64_t)(cfg->vocab_size - 2));
        uprompt[i] = (uint32_t)prompt[i];
    }
    float *logits = ds4_malloc_array((size_t)cfg->vocab_size, sizeof(float));
    int32_t best = -1;
    double ttft_single = single_ttft(m, prompt, tokens, chunk, logits, cfg->vocab_size, &best);

    /* ---- 2. the cluster ---- */
    proc_t router, prefill, decode;
    char router_addr[64], arg_threads[16], arg_chunk[16];
    snprintf(arg_threads, sizeof(arg_threads), "%u", threads);
    snprintf(arg_chunk, sizeof(arg_chunk), "%u", chunk);
    const char *rargs[] = {
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--log-level",
        "warn",          NULL};
    if (!pdh_start(&router, "router", "router/ds4-router", rargs))
        return 1;
    snprintf(router_addr, sizeof(router_addr), "127.0.0.1:%d", router.grpc_port);
    const char *pargs[] = {"--model",   model_abs,        "--router", router_addr,   "--threads",
                           arg_threads, "--chunk-tokens", arg_chunk,  "--log-level", "warn",
                           NULL};
    const char *dargs[] = {
        "--model",        model_abs, "--router",    router_addr, "--threads",       arg_threads,
        "--chunk-tokens", arg_chunk, "--log-level", "warn",      "--max-sequences", "4",
        "--kv-tokens",    NULL,      NULL};
    char kv_tokens[16];
    snprintf(kv_tokens, sizeof(kv_tokens), "%u", tokens + decode_tokens);
    dargs[13] = kv_tokens;
    if (!pdh_start(&prefill, "prefill-0", "prefill/ds4-prefill", pargs) ||
        !pdh_start(&decode, "decode-0", "decode/ds4-decode", dargs) ||
        !pdh_wait_ready(router.http_port, 60000)) {
        fprintf(stderr, "bench_pd: cluster did not start (logs in %s)\n", pdh_run_dir());
        pdh_kill_all();
        return 1;
    }
    uv_loop_init(&loop);
    ds4_rpc_ctx_h ctx = NULL;
    ds4_rpc_ctx_create(&loop, &ctx);
    ds4_rpc_channel_h rch = open_channel(ctx, router.grpc_port);
    ds4_rpc_channel_h dch = open_channel(ctx, decode.grpc_port);

    Ds4__V1__GenerateRequest g = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    Ds4__V1__TokenIds ids = DS4__V1__TOKEN_IDS__INIT;
    static stream_t warm, pd, direct, viarouter;
    /* warm-up: connects prefill -> decode (handshake + preflight) */
    fill_gen(&g, &sp, &ids, uprompt, 64, 2);
    bool ok = run_call(rch, "/ds4.v1.Ds4/Generate", &g.base,
                       &ds4__v1__generate_response__descriptor, &warm);
    /* Rounds of one single-process and one PD measurement back to back: the machine is shared,
     * so each pair's ratio is compared under the same load and the median ratio is reported,
     * next to the best of each (the least disturbed measurements). */
    double ttft_pd = INFINITY, ratio[16];
    printf("bench_pd: round | TTFT single ms | TTFT PD ms | PD / single\n");
    for (uint32_t round = 0; round < rounds && ok; round++) {
        int32_t again = -1;
        double t = single_ttft(m, prompt, tokens, chunk, logits, cfg->vocab_size, &again);
        ok = again == best;
        if (t < ttft_single)
            ttft_single = t;
        fill_gen(&g, &sp, &ids, uprompt, tokens, 1);
        ok = ok && run_call(rch, "/ds4.v1.Ds4/Generate", &g.base,
                            &ds4__v1__generate_response__descriptor, &pd);
        double tp = pd.t_first - pd.t_start;
        if (tp < ttft_pd)
            ttft_pd = tp;
        ratio[round] = tp / t;
        printf("bench_pd: %5u | %14.1f | %10.1f | %.4f\n", round, t * 1e3, tp * 1e3, tp / t);
        fflush(stdout);
    }
    qsort(ratio, rounds, sizeof(double), cmp_double);
    double median_ratio = rounds % 2 ? ratio[rounds / 2]
                                     : 0.5 * (ratio[rounds / 2 - 1] + ratio[rounds / 2]);
    ds4_model_free(m);
    double prefill_tps = pdh_metric(prefill.http_port, "ds4_prefill_tokens_per_second");
    double xfer_s = pdh_metric(prefill.http_port, "ds4_kv_transfer_seconds_sum");
    double xfer_bytes = pdh_metric(prefill.http_port, "ds4_kv_transfer_bytes_total");
    double xfer_n = pdh_metric(prefill.http_port, "ds4_kv_transfer_seconds_count");

    /* ---- 3. relay latency: through the router vs straight from decode ---- */
    fill_gen(&g, &sp, &ids, uprompt, 16, decode_tokens);
    ok = ok && run_call(rch, "/ds4.v1.Ds4/Generate", &g.base,
                        &ds4__v1__generate_response__descriptor, &viarouter);
    Ds4__Worker__V1__ReserveRequest rr = DS4__WORKER__V1__RESERVE_REQUEST__INIT;
    rr.proto_version = 1;
    rr.request_id = 0x7fffffffffull;
    rr.prompt = &ids;
    rr.sampling = &sp;
    ok = ok && run_call(dch, "/ds4.worker.v1.Worker/Reserve", &rr.base,
                        &ds4__worker__v1__reserve_event__descriptor, &direct);
    double r50 = pct(viarouter.lat_us, viarouter.n_lat, 0.5);
    double r99 = pct(viarouter.lat_us, viarouter.n_lat, 0.99);
    double d50 = pct(direct.lat_us, direct.n_lat, 0.5);
    double d99 = pct(direct.lat_us, direct.n_lat, 0.99);

    char metrics_peak[3][32];
    proc_t *ps[3] = {&router, &prefill, &decode};
    for (int i = 0; i < 3; i++)
        snprintf(metrics_peak[i], sizeof(metrics_peak[i]), "%.0f MiB",
                 pdh_metric(ps[i]->http_port, "ds4_process_peak_resident_memory_bytes") /
                     1048576.0);

    if (!ok) {
        fprintf(stderr, "bench_pd: a request failed (logs in %s)\n", pdh_run_dir());
        pdh_kill_all();
        return 1;
    }
    printf("bench_pd: prompt %u tokens, chunk %u, threads %u, model %s\n", tokens, chunk, threads,
           model_abs);
    printf("  %-34s %12.1f ms\n", "TTFT single process", ttft_single * 1e3);
    printf("  %-34s %12.1f ms   (first token %s: %d vs %d)\n", "TTFT PD (client)", ttft_pd * 1e3,
           pd.first_token == best ? "identical" : "DIFFERENT", pd.first_token, best);
    printf("  %-34s %+11.1f %%   (goal <= 5%%; median of %u paired rounds)\n", "PD overhead",
           (median_ratio - 1) * 100, rounds);
    printf("  %-34s %+11.1f %%\n", "PD overhead, best vs best", (ttft_pd / ttft_single - 1) * 100);
    printf("  %-34s %12.0f tok/s\n", "prefill throughput (worker)", prefill_tps);
    printf("  %-34s %12.1f ms   (%.2f MiB KV per request, mean of %.0f)\n",
           "KV transfer (computed->verified)", xfer_s * 1e3 / xfer_n,
           xfer_bytes / 1048576.0 / xfer_n, xfer_n);
    printf("  %-34s p50 %8.1f us   p99 %8.1f us\n", "token latency via router", r50, r99);
    printf("  %-34s p50 %8.1f us   p99 %8.1f us\n", "token latency decode direct", d50, d99);
    printf("  %-34s p50 %8.1f us   p99 %8.1f us\n", "router added latency per token", r50 - d50,
           r99 - d99);
    printf("  peak RSS: router %s, prefill %s, decode %s\n", metrics_peak[0], metrics_peak[1],
           metrics_peak[2]);

    ds4_rpc_channel_destroy(rch);
    ds4_rpc_channel_destroy(dch);
    while (ds4_rpc_ctx_live_objects(ctx) > 0)
        uv_run(&loop, UV_RUN_ONCE);
    ds4_rpc_ctx_destroy(ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
    pdh_stop(&router, SIGTERM, 10000);
    pdh_stop(&prefill, SIGTERM, 10000);
    pdh_stop(&decode, SIGTERM, 10000);
    pdh_kill_all();
    ds4_free(prompt);
    ds4_free(uprompt);
    ds4_free(logits);
    ds4_opts_free(&os);
    return ok && pd.first_token == best ? 0 : 1;
}
