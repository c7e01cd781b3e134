/*
 * ds4-decode: a decode worker. Serves ds4.worker.v1.Worker (Reserve, Release, Stats) and
 * /health /ready /metrics; registers and heartbeats with the router; runs every sequence in one
 * continuous batch (batcher.c) and streams the sampled tokens back on each Reserve stream.
 *
 * Reserve with prefilled_tokens = 0 computes the whole prompt here (local prefill). With
 * prefilled_tokens = n > 0 the worker reserves KV blocks for n tokens (ds4/xfer.h) and answers
 * with the KV target; once the prefill worker's push is verified (fail closed), the KV is
 * imported into an engine sequence (the pool's group rows are exactly the engine's export
 * format), the blocks are freed, and the sequence joins the batch with the rest of the prompt.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "decode.h"
#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/log.h"

void ds4__decode_req_free(dreq_t *r)
{
    decode_t *dc = r->dc;
    if (r->bseq != NULL && !r->submitted)
        ds4_batcher_free_seq(r->bseq);
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        dc->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    dc->n_reqs--;
    ds4_free(r);
}

static void dreq_cancel(dreq_t *r)
{
    if (r->cancel_sent)
        return;
    if (r->waiting_kv) {
        /* The recv callback follows (DS4_ERR_CANCELLED) and ends the request. */
        r->cancel_sent = true;
        ds4_xfer_release(r->dc->xfer, r->id);
    } else if (r->bseq != NULL && r->submitted) {
        r->cancel_sent = true;
        ds4_batcher_cancel(r->dc->batcher, r->bseq);
    }
}

static void on_call_cancel(ds4_rpc_call_h call, void *arg)
{
    dreq_cancel(arg);
}

static Ds4__V1__FinishReason finish_proto(ds4_finish_t f)
{
    switch (f) {
    case DS4_FINISH_STOP:
        return DS4__V1__FINISH_REASON__FINISH_REASON_STOP;
    case DS4_FINISH_LENGTH:
        return DS4__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    case DS4_FINISH_CANCELLED:
        return DS4__V1__FINISH_REASON__FINISH_REASON_CANCELLED;
    default:
        return DS4__V1__FINISH_REASON__FINISH_REASON_ERROR;
    }
}

static void on_events(void *arg, const ds4_bevent_t *evs, size_t n)
{
    decode_t *dc = arg;
    for (size_t i = 0; i < n; i++) {
        const ds4_bevent_t *ev = &evs[i];
        dreq_t *r = ev->bseq->owner;
        if (ev->kind == DS4_BEVENT_TOKEN) {
            uint64_t now = ds4_clock_now_ns();
            if (r->n_tokens == 0)
                ds4_series_observe(dc->m_ttft, (double)(now - r->t0_ns) / 1e9);
            else
                ds4_series_observe(dc->m_itl, (double)(now - r->t_last_ns) / 1e9);
            r->t_last_ns = now;
            r->n_tokens++;
            dc->tokens++;
            ds4_series_add(dc->m_tokens, 1);
            ds4_series_observe(dc->m_batch, ev->batch_size);
            if (r->call == NULL || ds4_rpc_call_cancelled(r->call))
                continue;
            Ds4__Worker__V1__ReserveEvent out = DS4__WORKER__V1__RESERVE_EVENT__INIT;
            Ds4__Worker__V1__TokenChunk chunk = DS4__WORKER__V1__TOKEN_CHUNK__INIT;
            Ds4__V1__TokenLogprob lp = DS4__V1__TOKEN_LOGPROB__INIT;
            Ds4__V1__TopLogprob tops[20], *top_ptrs[20];
            Ds4__V1__TokenLogprob *lps[1] = {&lp};
            uint32_t tok = (uint32_t)ev->sample.token;
            chunk.n_token_ids = 1;
            chunk.token_ids = &tok;
            chunk.batch_size = ev->batch_size;
            chunk.sampled_mono_ns = ev->sampled_ns;
            if (r->bseq->n_logprobs > 0) {
                lp.token_id = tok;
                lp.logprob = ev->sample.logprob;
                for (int32_t k = 0; k < ev->sample.n_top; k++) {
                    Ds4__V1__TopLogprob t = DS4__V1__TOP_LOGPROB__INIT;
                    t.token_id = (uint32_t)ev->sample.top_ids[k];
                    t.logprob = ev->sample.top_logprobs[k];
                    tops[k] = t;
                    top_ptrs[k] = &tops[k];
                }
                lp.n_top = (size_t)ev->sample.n_top;
                lp.top = top_ptrs;
                chunk.n_logprobs = 1;
                chunk.logprobs = lps;
            }
            out.event_case = DS4__WORKER__V1__RESERVE_EVENT__EVENT_TOKENS;
            out.tokens = &chunk;
            ds4_rpc_call_send(r->call, &out.base);
            continue;
        }
        /* FINISH: the batcher is done with the sequence. */
        const char *kind[] = {ev->finish == DS4_FINISH_STOP        ? "stop"
                              : ev->finish == DS4_FINISH_LENGTH    ? "length"
                              : ev->finish == DS4_FINISH_CANCELLED ? "cancelled"
                                                                   : "error"};
        ds4_series_add(ds4_metric_series(dc->m_finished, kind), 1);
        if (ev->finish == DS4_FINISH_ERROR) {
            const char *ek[] = {"engine"};
            ds4_series_add(ds4_metric_series(dc->m_errors, ek), 1);
            dc->failed++;
        } else {
            dc->done++;
        }
        ds4_batcher_free_seq(ev->bseq);
        r->bseq = NULL;
        if (r->call != NULL) {
            if (ev->finish == DS4_FINISH_CANCELLED) {
                ds4_rpc_call_finish(r->call, DS4_RPC_CANCELLED, "request %" PRIu64 " cancelled",
                                    r->id);
            } else {
                Ds4__Worker__V1__ReserveEvent out = DS4__WORKER__V1__RESERVE_EVENT__INIT;
                Ds4__Worker__V1__Finish fin = DS4__WORKER__V1__FINISH__INIT;
                fin.reason = finish_proto(ev->finish);
                fin.completion_tokens = ev->n_generated;
                fin.error = (char *)ev->error;
                out.event_case = DS4__WORKER__V1__RESERVE_EVENT__EVENT_FINISH;
                out.finish = &fin;
                ds4_rpc_call_send(r->call, &out.base);
                ds4_rpc_call_finish(r->call, DS4_RPC_OK, "%s", "");
            }
            r->call = NULL;
        }
        ds4__decode_req_free(r);
    }
    ds4_series_set(dc->m_running, (double)ds4_batcher_active(dc->batcher));
    ds4_series_set(dc->m_max_batch, (double)ds4_batcher_max_batch_seen(dc->batcher));
}

static void rpc_reserve(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    decode_t *dc = arg;
    const Ds4__Worker__V1__ReserveRequest *req = (const void *)request;
    if (req->proto_version != DS4__WORKER__V1__WORKER_PROTO_VERSION__WORKER_PROTO_VERSION_1) {
        ds4_rpc_call_finish(call, DS4_RPC_FAILED_PRECONDITION, "proto_version: want 1, got %u",
                            req->proto_version);
        return;
    }
    if (dc->draining) {
        ds4_rpc_call_finish(call, DS4_RPC_UNAVAILABLE, "decode worker %s is draining",
                            dc->opt.worker_id);
        return;
    }
    size_t n = req->prompt != NULL ? req->prompt->n_ids : 0;
    const Ds4__V1__SamplingParams *sp = req->sampling;
    uint32_t n_vocab = (uint32_t)dc->wm.cfg->vocab_size;
    if (n == 0) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT, "prompt.ids: must not be empty");
        return;
    }
    if (sp == NULL || sp->max_tokens == 0) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT, "sampling.max_tokens: must be >= 1");
        return;
    }
    if (req->prefilled_tokens >= n) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT,
                            "prefilled_tokens: %u must be below the prompt length %zu",
                            req->prefilled_tokens, n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (req->prompt->ids[i] >= n_vocab) {
            ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT,
                                "prompt.ids: id %u at [%zu] outside the vocabulary of %u",
                                req->prompt->ids[i], i, n_vocab);
            return;
        }
    if ((uint64_t)n + sp->max_tokens > dc->opt.max_context) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT,
                            "prompt %zu tokens + max_tokens %u exceed the context length %u", n,
                            sp->max_tokens, dc->opt.max_context);
        return;
    }
    if (ds4__decode_find(dc, req->request_id) != NULL) {
        ds4_rpc_call_finish(call, DS4_RPC_ALREADY_EXISTS, "request_id %" PRIu64 " is live",
                            req->request_id);
        return;
    }
    if (dc->n_reqs >= dc->opt.max_sequences) {
        const char *ek[] = {"capacity"};
        ds4_series_add(ds4_metric_series(dc->m_errors, ek), 1);
        ds4_rpc_call_finish(call, DS4_RPC_RESOURCE_EXHAUSTED,
                            "decode worker %s is full (%u sequences)", dc->opt.worker_id,
                            dc->opt.max_sequences);
        return;
    }
    if (req->prefilled_tokens > 0 && req->prefill_manifest_digest.len != 0 &&
        (req->prefill_manifest_digest.len != sizeof(dc->wm.digest) ||
         memcmp(req->prefill_manifest_digest.data, dc->wm.digest, sizeof(dc->wm.digest)) != 0)) {
        ds4_rpc_call_finish(call, DS4_RPC_FAILED_PRECONDITION,
                            "prefill_manifest_digest: the prefill worker's KV manifest differs "
                            "from this decode worker's");
        return;
    }
    void *blob = NULL;
    size_t blob_len = 0;
    if (req->prefilled_tokens > 0) {
        ds4_status_t rs =
            ds4_xfer_reserve(dc->xfer, req->request_id, req->prefilled_tokens,
                             req->deadline_ms != 0 ? req->deadline_ms : 600000, &blob, &blob_len);
        if (rs != DS4_OK) {
            const char *ek[] = {rs == DS4_ERR_NO_BLOCKS ? "no_blocks" : "reserve"};
            ds4_series_add(ds4_metric_series(dc->m_errors, ek), 1);
            ds4_rpc_call_finish(call, ds4_rpc_code_from_status(rs),
                                "cannot reserve KV for %u tokens on %s: %s", req->prefilled_tokens,
                                dc->opt.worker_id, ds4_status_str(rs));
            return;
        }
    }

    dreq_t *r = ds4_calloc(1, sizeof(*r));
    ds4_bseq_t *s = ds4_calloc(1, sizeof(*s));
    int32_t *prompt = ds4_malloc_array(n, sizeof(*prompt));
    int32_t *stops = ds4_malloc_array(sp->n_stop_token_ids + 1, sizeof(*stops));
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    if (r == NULL || s == NULL || prompt == NULL || stops == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++)
        prompt[i] = (int32_t)req->prompt->ids[i];
    for (size_t i = 0; i < sp->n_stop_token_ids; i++)
        stops[i] = (int32_t)sp->stop_token_ids[i];
    /* Request conventions (ds4.proto): 0 = off for top_k / top_p / repetition_penalty;
     * logprobs N = the token's logprob + the top N-1. */
    ds4_sampling_params_t sampling = ds4_sampling_params_default();
    sampling.temperature = sp->temperature;
    sampling.top_k = (int32_t)sp->top_k;
    sampling.top_p = sp->top_p > 0.0f && sp->top_p < 1.0f ? sp->top_p : 1.0f;
    sampling.min_p = sp->min_p;
    sampling.repetition_penalty = sp->repetition_penalty > 0.0f ? sp->repetition_penalty : 1.0f;
    sampling.presence_penalty = sp->presence_penalty;
    sampling.frequency_penalty = sp->frequency_penalty;
    sampling.seed = sp->seeded ? sp->seed : ds4_random_u64();
    sampling.n_logprobs = sp->logprobs > 1 ? (int32_t)DS4_MIN(sp->logprobs - 1, DS4_MAX_LOGPROBS)
                                           : 0;
    s->n_logprobs = sp->logprobs;
    st = ds4_sampler_create(&sampling, (int32_t)n_vocab, &s->sampler);
    if (st != DS4_OK)
        goto fail;
    ds4_sampler_accept_prompt(s->sampler, prompt, n);
    if (req->prefilled_tokens == 0) {
        st = ds4_seq_create(dc->wm.model, &s->seq);
        if (st != DS4_OK) {
            ds4_sampler_destroy(s->sampler);
            s->sampler = NULL;
            goto fail;
        }
    }
    s->request_id = req->request_id;
    s->owner = r;
    s->prompt = prompt;
    s->n_prompt = n;
    s->n_fed = 0;
    s->max_tokens = sp->max_tokens;
    s->stop_ids = stops;
    s->n_stop_ids = sp->n_stop_token_ids;
    s->eos_id = dc->wm.cfg->eos_token_id;
    s->ignore_eos = sp->ignore_eos;
    r->dc = dc;
    r->id = req->request_id;
    r->call = call;
    r->bseq = s;
    r->t0_ns = ds4_clock_now_ns();
    r->prefilled = req->prefilled_tokens;
    r->waiting_kv = req->prefilled_tokens > 0;
    r->next = dc->reqs;
    if (dc->reqs != NULL)
        dc->reqs->prev = r;
    dc->reqs = r;
    dc->n_reqs++;
    ds4_rpc_call_on_cancel(call, on_call_cancel, r);
    /* The KV target always comes first; empty for a local prefill. */
    Ds4__Worker__V1__ReserveEvent ev = DS4__WORKER__V1__RESERVE_EVENT__INIT;
    Ds4__Worker__V1__KvTarget target = DS4__WORKER__V1__KV_TARGET__INIT;
    ev.event_case = DS4__WORKER__V1__RESERVE_EVENT__EVENT_TARGET;
    ev.target = &target;
    target.blob.data = blob;
    target.blob.len = blob_len;
    ds4_rpc_call_send(call, &ev.base);
    ds4_free(blob);
    if (!r->waiting_kv) {
        r->submitted = true;
        ds4_batcher_submit(dc->batcher, s);
    }
    return;
fail:
    if (blob != NULL) {
        ds4_free(blob);
        ds4_xfer_release(dc->xfer, req->request_id);
    }
    ds4_free(r);
    ds4_free(s);
    ds4_free(prompt);
    ds4_free(stops);
    ds4_rpc_call_finish(call, ds4_rpc_code_from_status(st), "cannot start the sequence: %s",
                        ds4_status_str(st));
}

static void rpc_release(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    decode_t *dc = arg;
    const Ds4__Worker__V1__ReleaseRequest *req = (const void *)request;
    Ds4__Worker__V1__ReleaseResponse resp = DS4__WORKER__V1__RELEASE_RESPONSE__INIT;
    dreq_t *r = ds4__decode_find(dc, req->request_id);
    if (r != NULL) {
        resp.found = 1;
        dreq_cancel(r);
    }
    ds4_rpc_call_reply(call, &resp.base);
}

/* The router link's load callback (load: a Ds4__Worker__V1__Load). */
static void fill_load(void *arg, void *out)
{
    decode_t *dc = arg;
    Ds4__Worker__V1__Load *load = out;
    uint32_t active = ds4_batcher_active(dc->batcher);
    load->running = active;
    load->queued = dc->n_reqs > active ? (uint32_t)(dc->n_reqs - active) : 0;
    load->draining = dc->draining;
    if (dc->xfer != NULL) {
        ds4_kv_pool_stats_t ps;
        ds4_kv_pool_stats(ds4_xfer_pool(dc->xfer), &ps);
        uint64_t total = 0;
        for (int k = 0; k < DS4_KV_N_KINDS; k++)
            total += ps.total_blocks[k];
        load->kv_blocks_used = ps.used_blocks_all;
        load->kv_blocks_free = total - ps.used_blocks_all;
    }
}

static void rpc_stats(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    decode_t *dc = arg;
    ds4_router_link_reply_stats(dc->link, call, dc->done, dc->failed, dc->tokens);
}

static void rpc_prefill(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    ds4_rpc_call_finish(call, DS4_RPC_UNIMPLEMENTED, "this is a decode worker");
}

static void hook_drain(void *arg)
{
    decode_t *dc = arg;
    dc->draining = true;
    ds4_router_link_poke(dc->link);
}

static size_t hook_in_flight(void *arg)
{
    decode_t *dc = arg;
    return dc->n_reqs;
}

static void hook_stop(void *arg)
{
    decode_t *dc = arg;
    /* Running sequences are cancelled; their FINISH events (delivered from inside destroy)
     * end the calls and free the requests. */
    ds4_batcher_destroy(dc->batcher);
    dc->batcher = NULL;
    /* Requests still waiting for KV: the xfer engine fails them (SHUTDOWN) as it goes. */
    for (dreq_t *r = dc->reqs, *next; r != NULL; r = next) {
        next = r->next;
        if (!r->submitted)
            ds4__decode_fail_unsubmitted(r, DS4_RPC_UNAVAILABLE, "decode worker stopping");
    }
    uv_timer_stop(&dc->kv_timer);
    uv_close((uv_handle_t *)&dc->kv_timer, NULL);
    ds4_xfer_destroy(dc->xfer);
    dc->xfer = NULL;
    ds4_router_link_destroy(dc->link);
    dc->link = NULL;
}

static bool hook_ready(void *arg, char *why, size_t n)
{
    decode_t *dc = arg;
    if (!ds4_router_link_registered(dc->link)) {
        snprintf(why, n, "not registered with router %s", dc->opt.router);
        return false;
    }
    return true;
}

static void hook_metrics(void *arg)
{
    decode_t *dc = arg;
    if (dc->batcher == NULL)
        return;
    uint32_t active = ds4_batcher_active(dc->batcher);
    ds4_series_set(dc->m_running, active);
    ds4_series_set(dc->m_queue, dc->n_reqs > active ? (double)(dc->n_reqs - active) : 0);
    ds4_series_set(dc->m_max_batch, ds4_batcher_max_batch_seen(dc->batcher));
    Ds4__Worker__V1__Load load = DS4__WORKER__V1__LOAD__INIT;
    fill_load(dc, &load);
    ds4_series_set(dc->m_kv_used, (double)load.kv_blocks_used);
    ds4_series_set(dc->m_kv_free, (double)load.kv_blocks_free);
}

static void make_metrics(decode_t *dc)
{
    ds4_metrics_h m = ds4_daemon_metrics(dc->daemon);
    const double *lb = ds4_metrics_latency_buckets;
    size_t nlb = ds4_metrics_n_latency_buckets;
    static const double bb[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    dc->m_running = ds4_metric_default(
        ds4_metrics_gauge(m, "ds4_running_requests", "Sequences in the decode batch.", NULL));
    dc->m_queue = ds4_metric_default(
        ds4_metrics_gauge(m, "ds4_queue_depth", "Requests admitted, not yet batched.", NULL));
    dc->m_batch = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_decode_batch_size", "Sequences in the step of each generated token.", NULL, bb,
        DS4_ARRAY_LEN(bb)));
    dc->m_max_batch = ds4_metric_default(
        ds4_metrics_gauge(m, "ds4_decode_max_batch_size", "Largest decode batch so far.", NULL));
    dc->m_ttft = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_ttft_seconds", "Reserve to first token at the decode worker.", NULL, lb, nlb));
    dc->m_itl = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_itl_seconds", "Inter-token latency at the decode worker.", NULL, lb, nlb));
    dc->m_tokens = ds4_metric_default(
        ds4_metrics_counter(m, "ds4_generated_tokens_total", "Tokens sampled.", NULL));
    ds4_metric_h kv = ds4_metrics_gauge(m, "ds4_kv_blocks", "KV pool blocks by state.", "state");
    const char *used[] = {"used"}, *free_[] = {"free"};
    dc->m_kv_used = ds4_metric_series(kv, used);
    dc->m_kv_free = ds4_metric_series(kv, free_);
    dc->m_xfer_bytes = ds4_metric_default(ds4_metrics_counter(
        m, "ds4_kv_transfer_bytes_total", "KV bytes received and imported.", NULL));
    dc->m_xfer_seconds = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_kv_transfer_seconds", "Reserve to verified KV.", NULL, lb, nlb));
    dc->m_import_seconds = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_kv_import_seconds", "Pool rows to engine sequence.", NULL, lb, nlb));
    dc->m_errors = ds4_metrics_counter(m, "ds4_errors_total", "Errors by kind.", "kind");
    dc->m_finished = ds4_metrics_counter(m, "ds4_finished_total", "Sequences by finish.", "reason");
}

int main(int argc, char **argv)
{
    decode_t dc;
    memset(&dc, 0, sizeof(dc));
    dc.opt = (decode_opts_t){
        .grpc_listen = "127.0.0.1:0",
        .http_listen = "127.0.0.1:0",
        .router = "127.0.0.1:7000",
        .worker_id = "decode-0",
        .model_name = "ds4-tiny",
        .log_level = "info",
        .max_sequences = 64,
        .xfer_listen = "127.0.0.1:0",
        .max_batch = 64,
        .chunk_tokens = 512,
        .drain_timeout_ms = 30000,
        /* a loaded host can take seconds to set up a link; 1 MiB measures bandwidth well
         * enough and keeps the first transfer short */
        .xfer_connect_timeout_ms = 20000,
        .xfer_preflight_bytes = 1u << 20,
    };
    const ds4_opt_t opts[] = {
        {"grpc-listen", DS4_OPT_STR, &dc.opt.grpc_listen, "gRPC address of the Worker service"},
        {"http-listen", DS4_OPT_STR, &dc.opt.http_listen, "HTTP address (/health /ready /metrics)"},
        {"advertise", DS4_OPT_STR, &dc.opt.advertise,
         "host:port the router dials (default: grpc-listen with the bound port)"},
        {"ports-file", DS4_OPT_STR, &dc.opt.ports_file, "write the bound ports here (JSON)"},
        {"router", DS4_OPT_STR, &dc.opt.router, "router gRPC address"},
        {"worker-id", DS4_OPT_STR, &dc.opt.worker_id, "name, unique in the cluster"},
        {"model", DS4_OPT_STR, &dc.opt.model, "checkpoint directory (required)"},
        {"model-name", DS4_OPT_STR, &dc.opt.model_name, "model name the router serves"},
        {"log-level", DS4_OPT_STR, &dc.opt.log_level, "error|warn|info|debug"},
        {"max-sequences", DS4_OPT_U32, &dc.opt.max_sequences, "concurrent sequences"},
        {"max-batch", DS4_OPT_U32, &dc.opt.max_batch, "sequences per engine step"},
        {"chunk-tokens", DS4_OPT_U32, &dc.opt.chunk_tokens, "prompt tokens per sequence per step"},
        {"threads", DS4_OPT_U32, &dc.opt.threads, "engine threads (0: all cores)"},
        {"max-context", DS4_OPT_U32, &dc.opt.max_context,
         "context limit (0: the model's max_position_embeddings)"},
        {"drain-timeout-ms", DS4_OPT_U32, &dc.opt.drain_timeout_ms,
         "SIGTERM: wait this long for sequences to finish"},
        {"xfer-listen", DS4_OPT_STR, &dc.opt.xfer_listen, "KV transfer (UCX) listen address"},
        {"kv-seqs", DS4_OPT_U32, &dc.opt.kv_seqs,
         "sequences of kv-tokens the KV pool holds at once (0: max-sequences)"},
        {"kv-tokens", DS4_OPT_U32, &dc.opt.kv_tokens,
         "tokens per sequence the KV pool is sized for (0: max-context)"},
        {"refuse-tcp-only", DS4_OPT_BOOL, &dc.opt.refuse_tcp_only,
         "refuse KV pushes over TCP-only links"},
        {"xfer-connect-timeout-ms", DS4_OPT_U32, &dc.opt.xfer_connect_timeout_ms,
         "KV link connect + handshake + preflight bound"},
        {"xfer-preflight-bytes", DS4_OPT_U32, &dc.opt.xfer_preflight_bytes,
         "bytes put to measure a new KV link's bandwidth"},
    };
    ds4_opts_state_t os;
    int rc = ds4_opts_start("ds4-decode", opts, DS4_ARRAY_LEN(opts), argc, argv,
                            &dc.opt.log_level, &os);
    if (rc >= 0)
        return rc;
    rc = 2;
    if (dc.opt.model == NULL) {
        ds4_log_error("ds4-decode: --model DIR is required");
        goto out_opts;
    }
    if (dc.opt.max_sequences == 0 || dc.opt.max_batch == 0 || dc.opt.chunk_tokens == 0) {
        ds4_log_error("ds4-decode: --max-sequences, --max-batch, --chunk-tokens must be >= 1");
        goto out_opts;
    }
    rc = 1;
    if (ds4_worker_model_open("ds4-decode", dc.opt.model, dc.opt.threads, &dc.opt.max_context,
                              &dc.wm) != DS4_OK)
        goto out_opts;

    ds4_daemon_params_t dp = ds4_daemon_params_default();
    dp.name = "ds4-decode";
    dp.grpc_listen = dc.opt.grpc_listen;
    dp.http_listen = dc.opt.http_listen;
    dp.ports_file = dc.opt.ports_file;
    dp.drain_timeout_ms = dc.opt.drain_timeout_ms;
    dp.hooks = (ds4_daemon_hooks_t){
        .arg = &dc,
        .drain = hook_drain,
        .in_flight = hook_in_flight,
        .stop = hook_stop,
        .ready = hook_ready,
        .metrics_update = hook_metrics,
    };
    if (ds4_daemon_create(&dp, &dc.daemon) != DS4_OK) {
        ds4_log_error("ds4-decode: cannot listen on %s", dc.opt.grpc_listen);
        goto out_model;
    }
    make_metrics(&dc);
    const ds4_rpc_method_t methods[] = {
        {"/ds4.worker.v1.Worker/Reserve", &ds4__worker__v1__reserve_request__descriptor,
         rpc_reserve, &dc},
        {"/ds4.worker.v1.Worker/Release", &ds4__worker__v1__release_request__descriptor,
         rpc_release, &dc},
        {"/ds4.worker.v1.Worker/Stats", &ds4__worker__v1__stats_request__descriptor, rpc_stats,
         &dc},
        {"/ds4.worker.v1.Worker/Prefill", &ds4__worker__v1__prefill_request__descriptor,
         rpc_prefill, &dc},
    };
    for (size_t i = 0; i < DS4_ARRAY_LEN(methods); i++)
        if (ds4_rpc_server_add_method(ds4_daemon_rpc_server(dc.daemon), &methods[i]) != DS4_OK)
            goto out_daemon;
    ds4_batcher_params_t bp = {
        .model = dc.wm.model,
        .n_vocab = (uint32_t)dc.wm.cfg->vocab_size,
        .max_batch = dc.opt.max_batch,
        .chunk_tokens = dc.opt.chunk_tokens,
        .on_events = on_events,
        .arg = &dc,
    };
    if (ds4_batcher_create(ds4_daemon_loop(dc.daemon), &bp, &dc.batcher) != DS4_OK)
        goto out_daemon;
    ds4_kv_pool_params_t pp = ds4_kv_pool_params_default(dc.wm.manifest);
    if (ds4_kv_pool_params_for_tokens(
            &pp, dc.opt.kv_tokens != 0 ? dc.opt.kv_tokens : dc.opt.max_context,
            dc.opt.kv_seqs != 0 ? dc.opt.kv_seqs : dc.opt.max_sequences) != DS4_OK) {
        ds4_log_error("ds4-decode: bad KV pool size");
        goto out_batcher;
    }
    ds4_xfer_params_t xp = ds4_xfer_params_default();
    xp.manifest = dc.wm.manifest;
    xp.listen_addr = dc.opt.xfer_listen;
    xp.pool = &pp;
    xp.refuse_tcp_only = dc.opt.refuse_tcp_only;
    xp.connect_timeout_ms = dc.opt.xfer_connect_timeout_ms;
    xp.preflight_bytes = dc.opt.xfer_preflight_bytes;
    xp.recv_cb = ds4__decode_on_kv;
    xp.cb_arg = &dc;
    if (ds4_xfer_create(ds4_daemon_loop(dc.daemon), &xp, &dc.xfer) != DS4_OK) {
        ds4_log_error("ds4-decode: cannot start the KV transfer engine on %s", dc.opt.xfer_listen);
        goto out_batcher;
    }
    uv_timer_init(ds4_daemon_loop(dc.daemon), &dc.kv_timer);
    dc.kv_timer.data = &dc;

    ds4_router_link_params_t lp = ds4_router_link_params_default();
    lp.router_addr = dc.opt.router;
    lp.role = DS4__WORKER__V1__WORKER_ROLE__WORKER_ROLE_DECODE;
    lp.worker_id = dc.opt.worker_id;
    lp.rpc_address = dc.opt.advertise; /* NULL: grpc-listen with the bound port */
    lp.model = dc.opt.model_name;
    lp.max_sequences = dc.opt.max_sequences;
    lp.max_context = dc.opt.max_context;
    lp.vocab_size = (uint32_t)dc.wm.cfg->vocab_size;
    lp.manifest_digest = dc.wm.digest;
    lp.manifest_digest_len = sizeof(dc.wm.digest);
    ds4_kv_pool_stats_t pstats;
    ds4_kv_pool_stats(ds4_xfer_pool(dc.xfer), &pstats);
    for (int k = 0; k < DS4_KV_N_KINDS; k++)
        lp.kv_blocks_total += pstats.total_blocks[k];
    lp.load_cb = fill_load;
    lp.arg = &dc;
    if (ds4_daemon_start(dc.daemon) != DS4_OK)
        goto out_batcher;
    if (ds4_router_link_create(dc.daemon, &lp, &dc.link) != DS4_OK)
        goto out_batcher;
    rc = ds4_daemon_run(dc.daemon);
    goto out_daemon;
out_batcher:
    if (dc.batcher != NULL)
        ds4_batcher_destroy(dc.batcher);
    if (dc.xfer != NULL) {
        uv_close((uv_handle_t *)&dc.kv_timer, NULL);
        ds4_xfer_destroy(dc.xfer);
    }
out_daemon:
    ds4_daemon_destroy(dc.daemon);
out_model:
    ds4_worker_model_close(&dc.wm);
out_opts:
    ds4_opts_free(&os);
    return rc;
}
