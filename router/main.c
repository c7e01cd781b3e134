/*
 * ds4-router: the front door. Serves the public API (ds4.v1.Ds4) and the workers' control
 * service (ds4.worker.v1.Router) on one gRPC port, /health /ready /metrics on HTTP, keeps the
 * worker registry, and runs each Generate through prefill -> decode (generate.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/log.h"
#include "ds4_worker.pb-c.h"
#include "http-api.h"
#include "router.h"

#define DS4_VERSION_STRING "ds4 0.1.0"

static void load_from_proto(const Ds4__Worker__V1__Load *in, ds4_worker_load_t *out)
{
    memset(out, 0, sizeof(*out));
    if (in == NULL)
        return;
    out->running = in->running;
    out->queued = in->queued;
    out->kv_blocks_used = in->kv_blocks_used;
    out->kv_blocks_free = in->kv_blocks_free;
    out->queued_tokens = in->queued_tokens;
    out->draining = in->draining;
}

static void update_worker_gauges(router_t *rt)
{
    ds4_series_set(rt->m_workers_prefill,
                   (double)ds4_registry_count(&rt->registry, DS4_ROLE_PREFILL));
    ds4_series_set(rt->m_workers_decode,
                   (double)ds4_registry_count(&rt->registry, DS4_ROLE_DECODE));
}

static void on_worker_gone(void *arg, ds4_worker_t *w, const char *why)
{
    router_t *rt = arg;
    router_worker_gone(rt, w, why);
    if (w->user != NULL)
        ds4_rpc_channel_destroy(w->user);
    w->user = NULL;
    update_worker_gauges(rt);
}

static void rpc_register(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    router_t *rt = arg;
    const Ds4__Worker__V1__RegisterRequest *req = (const void *)request;
    if (req->proto_version != DS4__WORKER__V1__WORKER_PROTO_VERSION__WORKER_PROTO_VERSION_1) {
        ds4_rpc_call_finish(call, DS4_RPC_FAILED_PRECONDITION,
                            "proto_version: router speaks 1, got %u", req->proto_version);
        return;
    }
    if (req->info == NULL) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT, "info: required");
        return;
    }
    if (req->info->model[0] != '\0' && strcmp(req->info->model, rt->opt.model) != 0) {
        ds4_rpc_call_finish(call, DS4_RPC_FAILED_PRECONDITION,
                            "info.model: worker serves \"%s\", this router \"%s\"",
                            req->info->model, rt->opt.model);
        return;
    }
    ds4_worker_info_t in = {
        .id = req->info->worker_id,
        .rpc_address = req->info->rpc_address,
        .http_address = req->info->http_address,
        .model = req->info->model,
        .incarnation = req->info->incarnation,
        .role = (ds4_role_t)req->info->role,
        .digest = req->info->kv_manifest_digest.data,
        .digest_len = req->info->kv_manifest_digest.len,
        .max_sequences = req->info->max_sequences,
        .max_context = req->info->max_context,
        .vocab_size = req->info->vocab_size,
        .kv_blocks_total = req->info->kv_blocks_total,
    };
    ds4_worker_load_t load;
    load_from_proto(req->load, &load);
    ds4_worker_t *w = NULL;
    bool is_new = false;
    char why[256] = "";
    ds4_status_t st = ds4_registry_register(&rt->registry, &in, &load, ds4_clock_now_ms(), &w,
                                            &is_new, why, sizeof(why));
    if (st != DS4_OK) {
        ds4_rpc_call_finish(call, ds4_rpc_code_from_status(st), "%s", why);
        return;
    }
    if (w->user == NULL) {
        ds4_rpc_channel_params_t cp = ds4_rpc_channel_params_default();
        cp.target = w->rpc_address;
        ds4_rpc_channel_h ch = NULL;
        if (ds4_rpc_channel_create(ds4_daemon_rpc_ctx(rt->daemon), &cp, &ch) != DS4_OK) {
            ds4_registry_remove(&rt->registry, w, "cannot create its channel");
            ds4_rpc_call_finish(call, DS4_RPC_INTERNAL, "cannot open a channel to %s",
                                in.rpc_address);
            return;
        }
        w->user = ch;
    }
    update_worker_gauges(rt);
    Ds4__Worker__V1__RegisterResponse resp = DS4__WORKER__V1__REGISTER_RESPONSE__INIT;
    resp.router_incarnation = ds4_daemon_incarnation(rt->daemon);
    resp.heartbeat_interval_ms = rt->opt.heartbeat_interval_ms;
    resp.liveness_timeout_ms = rt->opt.liveness_timeout_ms;
    ds4_rpc_call_reply(call, &resp.base);
}

static void rpc_heartbeat(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    router_t *rt = arg;
    const Ds4__Worker__V1__HeartbeatRequest *req = (const void *)request;
    ds4_worker_load_t load;
    load_from_proto(req->load, &load);
    Ds4__Worker__V1__HeartbeatResponse resp = DS4__WORKER__V1__HEARTBEAT_RESPONSE__INIT;
    resp.known = ds4_registry_heartbeat(&rt->registry, req->worker_id, req->incarnation, &load,
                                        ds4_clock_now_ms());
    ds4_rpc_call_reply(call, &resp.base);
}

static void rpc_tokenize(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    router_t *rt = arg;
    int32_t *ids = NULL;
    size_t n = 0;
    char msg[1024];
    ds4_rpc_code_t code = router_tokenize(rt, (const void *)request, &ids, &n, msg, sizeof(msg));
    if (code != DS4_RPC_OK) {
        ds4_rpc_call_finish(call, code, "%s", msg);
        return;
    }
    Ds4__V1__TokenizeResponse resp = DS4__V1__TOKENIZE_RESPONSE__INIT;
    resp.n_ids = n;
    resp.ids = (uint32_t *)ids; /* ids are non-negative; same width */
    ds4_rpc_call_reply(call, &resp.base);
    ds4_free(ids);
}

static void rpc_list_models(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    router_t *rt = arg;
    Ds4__V1__ListModelsResponse resp = DS4__V1__LIST_MODELS_RESPONSE__INIT;
    Ds4__V1__ModelInfo info = DS4__V1__MODEL_INFO__INIT;
    Ds4__V1__ModelInfo *infos[1] = {&info};
    info.id = (char *)rt->opt.model;
    info.context_length = router_max_context(rt);
    info.vocab_size = router_vocab(rt);
    resp.n_models = 1;
    resp.models = infos;
    ds4_rpc_call_reply(call, &resp.base);
}

static bool router_ready(void *arg, char *why, size_t n)
{
    router_t *rt = arg;
    size_t np = ds4_registry_count(&rt->registry, DS4_ROLE_PREFILL);
    size_t nd = ds4_registry_count(&rt->registry, DS4_ROLE_DECODE);
    if ((np == 0 && !rt->opt.prefill_fallback_local) || nd == 0) {
        snprintf(why, n, "%zu prefill and %zu decode workers registered", np, nd);
        return false;
    }
    return true;
}

static void rpc_health(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    router_t *rt = arg;
    char why[128];
    Ds4__V1__HealthResponse resp = DS4__V1__HEALTH_RESPONSE__INIT;
    resp.status = !rt->draining && router_ready(rt, why, sizeof(why))
                      ? DS4__V1__SERVING_STATUS__SERVING_STATUS_SERVING
                      : DS4__V1__SERVING_STATUS__SERVING_STATUS_NOT_SERVING;
    resp.version = DS4_VERSION_STRING;
    resp.prefill_workers = (uint32_t)ds4_registry_count(&rt->registry, DS4_ROLE_PREFILL);
    resp.decode_workers = (uint32_t)ds4_registry_count(&rt->registry, DS4_ROLE_DECODE);
    ds4_rpc_call_reply(call, &resp.base);
}

static void hook_metrics(void *arg)
{
    router_t *rt = arg;
    ds4_series_set(rt->m_queue, (double)router_waiting(rt));
    ds4_series_set(rt->m_running, (double)rt->n_requests);
}

static void sweep(uv_timer_t *t)
{
    router_t *rt = t->data;
    if (ds4_registry_sweep(&rt->registry, ds4_clock_now_ms()) > 0)
        ds4_series_add(rt->m_worker_deaths, 1);
}

static void hook_drain(void *arg)
{
    router_t *rt = arg;
    rt->draining = true;
}

static size_t hook_in_flight(void *arg)
{
    router_t *rt = arg;
    return rt->n_requests;
}

static void hook_stop(void *arg)
{
    router_t *rt = arg;
    router_fail_all(rt, DS4_RPC_UNAVAILABLE, "router stopped");
    uv_timer_stop(&rt->sweep_timer);
    uv_close((uv_handle_t *)&rt->sweep_timer, NULL);
    ds4_registry_clear(&rt->registry);
}

static int register_methods(router_t *rt)
{
    ds4_rpc_server_h srv = ds4_daemon_rpc_server(rt->daemon);
    const ds4_rpc_method_t methods[] = {
        {"/ds4.v1.Ds4/Generate", &ds4__v1__generate_request__descriptor, router_generate, rt},
        {"/ds4.v1.Ds4/Cancel", &ds4__v1__cancel_request__descriptor, router_cancel, rt},
        {"/ds4.v1.Ds4/Tokenize", &ds4__v1__tokenize_request__descriptor, rpc_tokenize, rt},
        {"/ds4.v1.Ds4/ListModels", &ds4__v1__list_models_request__descriptor, rpc_list_models, rt},
        {"/ds4.v1.Ds4/Health", &ds4__v1__health_request__descriptor, rpc_health, rt},
        {"/ds4.worker.v1.Router/RegisterWorker", &ds4__worker__v1__register_request__descriptor,
         rpc_register, rt},
        {"/ds4.worker.v1.Router/Heartbeat", &ds4__worker__v1__heartbeat_request__descriptor,
         rpc_heartbeat, rt},
    };
    for (size_t i = 0; i < DS4_ARRAY_LEN(methods); i++)
        if (ds4_rpc_server_add_method(srv, &methods[i]) != DS4_OK)
            return -1;
    return 0;
}

static void make_metrics(router_t *rt)
{
    ds4_metrics_h m = ds4_daemon_metrics(rt->daemon);
    const double *lb = ds4_metrics_latency_buckets;
    size_t nlb = ds4_metrics_n_latency_buckets;
    rt->m_requests =
        ds4_metrics_counter(m, "ds4_requests_total", "Generate requests by outcome.", "code");
    rt->m_errors = ds4_metrics_counter(m, "ds4_errors_total", "Failed requests by kind.", "kind");
    rt->m_running = ds4_metric_default(
        ds4_metrics_gauge(m, "ds4_running_requests", "Requests in flight at the router.", NULL));
    rt->m_queue = ds4_metric_default(
        ds4_metrics_gauge(m, "ds4_queue_depth", "Requests admitted that have no token yet.", NULL));
    rt->m_ttft = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_ttft_seconds", "Time to first token at the router.", NULL, lb, nlb));
    rt->m_itl = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_itl_seconds", "Inter-token latency at the router.", NULL, lb, nlb));
    static const double relay_b[] = {1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3};
    rt->m_relay = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_router_relay_seconds", "Router time to relay one streamed token.", NULL, relay_b,
        DS4_ARRAY_LEN(relay_b)));
    rt->m_prompt_tokens = ds4_metric_default(
        ds4_metrics_counter(m, "ds4_prompt_tokens_total", "Prompt tokens served.", NULL));
    rt->m_completion_tokens = ds4_metric_default(
        ds4_metrics_counter(m, "ds4_completion_tokens_total", "Tokens generated.", NULL));
    ds4_metric_h workers = ds4_metrics_gauge(m, "ds4_workers", "Live workers by role.", "role");
    const char *p[] = {"prefill"}, *d[] = {"decode"};
    rt->m_workers_prefill = ds4_metric_series(workers, p);
    rt->m_workers_decode = ds4_metric_series(workers, d);
    rt->m_worker_deaths = ds4_metric_default(ds4_metrics_counter(
        m, "ds4_worker_deaths_total", "Workers declared dead (timeout or failed stream).", NULL));
}

int main(int argc, char **argv)
{
    router_t rt;
    memset(&rt, 0, sizeof(rt));
    rt.opt = (router_opts_t){
        .grpc_listen = "127.0.0.1:7000",
        .http_listen = "127.0.0.1:7080",
        .model = "ds4-tiny",
        .log_level = "info",
        .heartbeat_interval_ms = 500,
        .liveness_timeout_ms = 10000,
        .drain_timeout_ms = 30000,
        .default_timeout_ms = 600000,
        .max_logprobs = 20,
        .default_max_tokens = 4096,
    };
    const ds4_opt_t opts[] = {
        {"grpc-listen", DS4_OPT_STR, &rt.opt.grpc_listen, "gRPC address (public API + workers)"},
        {"http-listen", DS4_OPT_STR, &rt.opt.http_listen,
         "HTTP address (OpenAI/Anthropic API, /health /ready /metrics)"},
        {"ports-file", DS4_OPT_STR, &rt.opt.ports_file, "write the bound ports here (JSON)"},
        {"model", DS4_OPT_STR, &rt.opt.model, "model name served"},
        {"tokenizer", DS4_OPT_STR, &rt.opt.tokenizer, "tokenizer.json (default: embedded)"},
        {"log-level", DS4_OPT_STR, &rt.opt.log_level, "error|warn|info|debug"},
        {"heartbeat-interval-ms", DS4_OPT_U32, &rt.opt.heartbeat_interval_ms,
         "heartbeat period asked of workers"},
        {"liveness-timeout-ms", DS4_OPT_U32, &rt.opt.liveness_timeout_ms,
         "a worker silent this long is dead"},
        {"drain-timeout-ms", DS4_OPT_U32, &rt.opt.drain_timeout_ms,
         "SIGTERM: wait this long for requests to finish"},
        {"default-timeout-ms", DS4_OPT_U32, &rt.opt.default_timeout_ms,
         "deadline of a request that sets none"},
        {"max-context", DS4_OPT_U32, &rt.opt.max_context,
         "context length limit (0: from the workers)"},
        {"max-logprobs", DS4_OPT_U32, &rt.opt.max_logprobs, "largest sampling.logprobs accepted"},
        {"default-max-tokens", DS4_OPT_U32, &rt.opt.default_max_tokens,
         "HTTP API: max_tokens of a request that sets none (capped by the context)"},
        {"local-prefill-max", DS4_OPT_U32, &rt.opt.local_prefill_max,
         "prompts of at most this many tokens prefill on the decode worker"},
        {"prefill-fallback-local", DS4_OPT_BOOL, &rt.opt.prefill_fallback_local,
         "with no prefill worker, prefill on the decode worker"},
    };
    ds4_opts_state_t os;
    int rc = ds4_opts_start("ds4-router", opts, DS4_ARRAY_LEN(opts), argc, argv,
                            &rt.opt.log_level, &os);
    if (rc >= 0)
        return rc;
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    rc = 1;
    ds4_status_t st = rt.opt.tokenizer != NULL
                          ? ds4_tokenizer_load(rt.opt.tokenizer, &rt.tok, &diag)
                          : ds4_tokenizer_load_default(&rt.tok, &diag);
    if (st != DS4_OK) {
        ds4_diag_log(&diag, "ds4-router: tokenizer");
        goto out_opts;
    }
    if (ds4_tok_scratch_create(rt.tok, &rt.scratch) != DS4_OK)
        goto out_tok;
    rt.think_end_id = ds4_tokenizer_token_id(rt.tok, "</think>");
    rt.eos_id = ds4_tokenizer_token_id(rt.tok, "<｜end▁of▁sentence｜>");
    ds4_registry_init(&rt.registry, rt.opt.liveness_timeout_ms, on_worker_gone, &rt);

    ds4_daemon_params_t dp = ds4_daemon_params_default();
    dp.name = "ds4-router";
    dp.grpc_listen = rt.opt.grpc_listen;
    dp.http_listen = rt.opt.http_listen;
    dp.ports_file = rt.opt.ports_file;
    dp.drain_timeout_ms = rt.opt.drain_timeout_ms;
    dp.hooks = (ds4_daemon_hooks_t){
        .arg = &rt,
        .drain = hook_drain,
        .in_flight = hook_in_flight,
        .stop = hook_stop,
        .ready = router_ready,
        .metrics_update = hook_metrics,
        .http = router_http_api, /* the OpenAI / Anthropic API (http-api.c) */
    };
    if (ds4_daemon_create(&dp, &rt.daemon) != DS4_OK) {
        ds4_log_error("ds4-router: cannot listen on %s", rt.opt.grpc_listen);
        goto out_scratch;
    }
    make_metrics(&rt);
    if (register_methods(&rt) != 0)
        goto out_daemon;
    uv_timer_init(ds4_daemon_loop(rt.daemon), &rt.sweep_timer);
    rt.sweep_timer.data = &rt;
    uv_timer_start(&rt.sweep_timer, sweep, 100, 100);
    if (ds4_daemon_start(rt.daemon) != DS4_OK) {
        uv_close((uv_handle_t *)&rt.sweep_timer, NULL);
        goto out_daemon;
    }
    rc = ds4_daemon_run(rt.daemon);
out_daemon:
    ds4_daemon_destroy(rt.daemon);
out_scratch:
    ds4_tok_scratch_destroy(rt.scratch);
out_tok:
    ds4_tokenizer_destroy(rt.tok);
out_opts:
    ds4_diag_free(&diag);
    ds4_opts_free(&os);
    return rc;
}
