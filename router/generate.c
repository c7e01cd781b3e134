/* The Generate request state machine: reserve on decode, prefill into its KV target, relay the
 * decode stream; deadlines, cancel and worker death end it with a clear gRPC status. */
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/buf.h"
#include "ds4/clock.h"
#include "ds4/log.h"
#include "ds4_worker.pb-c.h"
#include "router.h"

struct request {
    router_t *rt;
    request_t *prev, *next;
    uint64_t id;
    char *client_id;
    const router_sink_ops_t *sink;  /* where the output goes (gRPC stream or HTTP exchange) */
    void *out;                      /* the sink's argument; NULL once finished */
    uint64_t client_deadline_at_ms; /* the client's own deadline (UINT64_MAX: none) */
    prepared_t prep;
    bool return_text, in_reasoning;
    ds4_detok_h *detok;
    ds4_worker_t *dw, *pw;
    ds4_rpc_client_call_h reserve, prefill;
    uv_timer_t timer;
    bool timer_open;
    uint64_t t0_ns, t_first_ns, t_last_ns;
    uint32_t n_completion, n_reasoning;
    bool finished_event, completed;
    Ds4__V1__FinishReason finish_reason;
    /* stop strings (borrowed from the client's request, alive while `out` is) */
    char **stops;
    size_t n_stops, max_stop_len;
    ds4_buf_t text; /* generated text so far (only with stop strings) */
    size_t text_sent;
    /* attempts: a failure before the first token is retried once on other workers */
    const Ds4__V1__SamplingParams *sampling; /* borrowed like `stops` */
    uint64_t deadline_at_ms;
    uint32_t attempts;
    uint32_t stale; /* calls of an abandoned attempt not yet done */
    bool local;
};

static bool start_attempt(request_t *r, const char *exclude_decode, const char *exclude_prefill);

static void req_maybe_free(request_t *r);

static void timer_closed(uv_handle_t *h)
{
    request_t *r = h->data;
    r->timer_open = false;
    req_maybe_free(r);
}

static void req_maybe_free(request_t *r)
{
    if (r->out != NULL || r->reserve != NULL || r->prefill != NULL || r->timer_open ||
        r->stale != 0)
        return;
    router_t *rt = r->rt;
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        rt->requests = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    rt->n_requests--;
    ds4_series_set(rt->m_running, (double)rt->n_requests);
    if (r->detok != NULL)
        ds4_detok_destroy(r->detok);
    ds4_buf_free(&r->text);
    ds4_free(r->prep.ids);
    ds4_free(r->client_id);
    ds4_free(r);
}

static void release_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *message,
                         void *arg)
{
    if (code != DS4_RPC_OK && code != DS4_RPC_CANCELLED)
        ds4_log_debug("router: release failed: %s %s", ds4_rpc_code_name(code), message);
}

/* Fire-and-forget Release of request `id` on worker `w`. */
static void send_release(router_t *rt, ds4_worker_t *w, uint64_t id, const char *reason)
{
    if (w == NULL || w->user == NULL)
        return;
    Ds4__Worker__V1__ReleaseRequest rel = DS4__WORKER__V1__RELEASE_REQUEST__INIT;
    rel.proto_version = DS4__WORKER__V1__WORKER_PROTO_VERSION__WORKER_PROTO_VERSION_1;
    rel.request_id = id;
    rel.router_incarnation = ds4_daemon_incarnation(rt->daemon);
    rel.reason = (char *)reason;
    ds4_rpc_call_params_t cp = {
        .method = "/ds4.worker.v1.Worker/Release",
        .request = &rel.base,
        .response_type = &ds4__worker__v1__release_response__descriptor,
        .timeout_ms = 2000,
        .on_done = release_done,
    };
    ds4_rpc_channel_call(w->user, &cp, NULL);
}

static const char *code_kind(ds4_rpc_code_t code)
{
    switch (code) {
    case DS4_RPC_OK:
        return "ok";
    case DS4_RPC_CANCELLED:
        return "cancelled";
    case DS4_RPC_INVALID_ARGUMENT:
        return "invalid_argument";
    case DS4_RPC_NOT_FOUND:
        return "not_found";
    case DS4_RPC_DEADLINE_EXCEEDED:
        return "deadline_exceeded";
    case DS4_RPC_RESOURCE_EXHAUSTED:
        return "resource_exhausted";
    case DS4_RPC_UNAVAILABLE:
        return "unavailable";
    case DS4_RPC_ABORTED:
        return "aborted";
    case DS4_RPC_FAILED_PRECONDITION:
        return "failed_precondition";
    default:
        return "internal";
    }
}

/* Ends the client's call (once) and tears down the rest of the request. */
__attribute__((format(printf, 3, 4))) static void req_end(request_t *r, ds4_rpc_code_t code,
                                                          const char *fmt, ...)
{
    router_t *rt = r->rt;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r->out != NULL) {
        const char *kind[] = {code_kind(code)};
        ds4_series_add(ds4_metric_series(rt->m_requests, kind), 1);
        if (code != DS4_RPC_OK) {
            ds4_series_add(ds4_metric_series(rt->m_errors, kind), 1);
            ds4_log_info("router: request %" PRIu64 " ended %s: %s", r->id, ds4_rpc_code_name(code),
                         msg);
        }
        void *out = r->out;
        r->out = NULL;
        r->sink->finish(out, code, msg);
    }
    if (!r->completed) {
        /* Work may still be held on the workers: cancel the streams and release both. */
        const char *reason = code == DS4_RPC_DEADLINE_EXCEEDED ? "deadline"
                             : code == DS4_RPC_CANCELLED       ? "cancelled"
                             : code == DS4_RPC_OK              ? "stop string"
                                                               : "failed";
        if (r->reserve != NULL)
            ds4_rpc_client_call_cancel(r->reserve);
        if (r->prefill != NULL)
            ds4_rpc_client_call_cancel(r->prefill);
        send_release(rt, r->dw, r->id, reason);
        send_release(rt, r->pw, r->id, reason);
        r->completed = true;
    }
    if (r->dw != NULL && r->dw->assigned > 0)
        r->dw->assigned--;
    if (r->pw != NULL && r->pw->assigned > 0)
        r->pw->assigned--;
    r->dw = r->pw = NULL;
    if (r->timer_open && !uv_is_closing((uv_handle_t *)&r->timer)) {
        uv_timer_stop(&r->timer);
        uv_close((uv_handle_t *)&r->timer, timer_closed);
    }
    req_maybe_free(r);
}

/* A failure before any token reached the client is retried once, on other workers, while
 * the deadline leaves room; true when the retry started (or ended the request itself). */
static bool maybe_retry(request_t *r, ds4_rpc_code_t code, bool prefill_failed, const char *why)
{
    router_t *rt = r->rt;
    if (r->out == NULL || r->n_completion > 0 || r->attempts >= 2 ||
        (code != DS4_RPC_UNAVAILABLE && code != DS4_RPC_ABORTED &&
         code != DS4_RPC_RESOURCE_EXHAUSTED && code != DS4_RPC_DEADLINE_EXCEEDED) ||
        ds4_clock_now_ms() + 200 > r->deadline_at_ms)
        return false;
    /* a per-call deadline that fired while the request still has time is a stuck worker */
    char failed_d[128] = "", failed_p[128] = "";
    if (r->dw != NULL && !prefill_failed)
        snprintf(failed_d, sizeof(failed_d), "%s", r->dw->id);
    if (r->pw != NULL && prefill_failed)
        snprintf(failed_p, sizeof(failed_p), "%s", r->pw->id);
    ds4_log_info("router: request %" PRIu64 " retried after %s failure: %s", r->id,
                 prefill_failed ? "prefill" : "decode", why);
    if (r->reserve != NULL) {
        ds4_rpc_client_call_cancel(r->reserve);
        r->reserve = NULL;
        r->stale++;
    }
    if (r->prefill != NULL) {
        ds4_rpc_client_call_cancel(r->prefill);
        r->prefill = NULL;
        r->stale++;
    }
    send_release(rt, r->dw, r->id, "retry");
    send_release(rt, r->pw, r->id, "retry");
    if (r->dw != NULL && r->dw->assigned > 0)
        r->dw->assigned--;
    if (r->pw != NULL && r->pw->assigned > 0)
        r->pw->assigned--;
    r->dw = r->pw = NULL;
    r->id = ++rt->next_request_id; /* the old id may still be releasing on the workers */
    start_attempt(r, failed_d[0] != '\0' ? failed_d : NULL, failed_p[0] != '\0' ? failed_p : NULL);
    return true;
}

static void on_deadline(uv_timer_t *t)
{
    request_t *r = t->data;
    req_end(r, DS4_RPC_DEADLINE_EXCEEDED, "deadline exceeded after %.0f ms",
            (double)(ds4_clock_now_ns() - r->t0_ns) / 1e6);
}

static void on_client_cancel(ds4_rpc_call_h call, void *arg)
{
    request_t *r = arg;
    req_end(r, DS4_RPC_CANCELLED, "cancelled by the client");
}

/* Appends generated text (stop-string mode). */
static bool text_append(request_t *r, const char *t, size_t n)
{
    return ds4_buf_put(&r->text, t, n);
}

/* First stop string in the generated text (searching only where a new match can start);
 * returns its offset or -1. */
static ptrdiff_t find_stop(request_t *r, size_t new_from)
{
    size_t from = new_from > r->max_stop_len ? new_from - r->max_stop_len : 0;
    ptrdiff_t best = -1;
    for (size_t i = 0; i < r->n_stops; i++) {
        const char *hit = strstr(r->text.p + from, r->stops[i]);
        if (hit != NULL && (best < 0 || hit - r->text.p < best))
            best = hit - r->text.p;
    }
    return best;
}

static void fill_usage(request_t *r, Ds4__V1__Usage *usage)
{
    usage->prompt_tokens = (uint32_t)r->prep.n_ids;
    usage->completion_tokens = r->n_completion;
    usage->reasoning_tokens = r->n_reasoning;
    usage->ttft_ms = r->t_first_ns != 0 ? (double)(r->t_first_ns - r->t0_ns) / 1e6 : 0;
}

/* Sends one token to the client. */
static void relay_token(request_t *r, uint32_t id, const Ds4__V1__TokenLogprob *lp,
                        uint64_t sampled_ns)
{
    router_t *rt = r->rt;
    uint64_t now = ds4_clock_now_ns();
    if (r->t_first_ns == 0) {
        r->t_first_ns = now;
        ds4_series_observe(rt->m_ttft, (double)(now - r->t0_ns) / 1e9);
    } else {
        ds4_series_observe(rt->m_itl, (double)(now - r->t_last_ns) / 1e9);
    }
    r->t_last_ns = now;
    Ds4__V1__GenerateResponse resp = DS4__V1__GENERATE_RESPONSE__INIT;
    Ds4__V1__Usage usage = DS4__V1__USAGE__INIT;
    resp.request_id = r->client_id;
    resp.n_token_ids = 1;
    resp.token_ids = &id;
    resp.sampled_mono_ns = sampled_ns;
    resp.channel =
        r->in_reasoning ? DS4__V1__CHANNEL__CHANNEL_REASONING : DS4__V1__CHANNEL__CHANNEL_CONTENT;
    Ds4__V1__TokenLogprob *lps[1] = {(Ds4__V1__TokenLogprob *)lp};
    if (lp != NULL) {
        resp.n_logprobs = 1;
        resp.logprobs = lps;
    }
    const char *text = "";
    size_t text_len = 0;
    char *owned = NULL;
    bool stopped = false;
    if (r->detok != NULL) {
        if (ds4_detok_feed(r->detok, (int32_t)id, &text, &text_len, NULL) != DS4_OK)
            text_len = 0;
        if (r->n_stops > 0) {
            size_t before = r->text.len;
            text_append(r, text, text_len);
            ptrdiff_t at = find_stop(r, before);
            size_t end;
            if (at >= 0) {
                end = (size_t)at;
                stopped = true;
            } else if (r->in_reasoning && (int32_t)id == rt->think_end_id) {
                /* the reasoning ends: its held-back text goes out on the reasoning channel */
                end = r->text.len;
            } else {
                /* hold back what could still begin a stop string (whole code points only) */
                end = r->text.len > r->max_stop_len - 1 ? r->text.len - (r->max_stop_len - 1) : 0;
                while (end > r->text_sent && end < r->text.len &&
                       ((unsigned char)r->text.p[end] & 0xC0) == 0x80)
                    end--;
                if (end < r->text_sent)
                    end = r->text_sent;
            }
            owned =
                ds4_strndup(r->text.p + r->text_sent, end > r->text_sent ? end - r->text_sent : 0);
            r->text_sent = DS4_MAX(end, r->text_sent);
        } else {
            owned = ds4_strndup(text, text_len);
        }
        if (r->return_text)
            resp.text_delta = owned != NULL ? owned : "";
    }
    r->n_completion++;
    if (r->in_reasoning)
        r->n_reasoning++;
    if (r->in_reasoning && (int32_t)id == rt->think_end_id)
        r->in_reasoning = false;
    if (stopped) {
        resp.finish_reason = DS4__V1__FINISH_REASON__FINISH_REASON_STOP;
        fill_usage(r, &usage);
        resp.usage = &usage;
    }
    r->sink->send(r->out, &resp);
    ds4_free(owned);
    ds4_series_observe(rt->m_relay, (double)(ds4_clock_now_ns() - now) / 1e9);
    if (stopped) {
        ds4_series_add(rt->m_prompt_tokens, (double)r->prep.n_ids);
        ds4_series_add(rt->m_completion_tokens, (double)r->n_completion);
        /* decode is still generating: req_end cancels its stream and releases it */
        req_end(r, DS4_RPC_OK, "%s", "");
    }
}

static void prefill_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *message,
                         void *arg)
{
    request_t *r = arg;
    router_t *rt = r->rt;
    if (call != r->prefill) { /* an abandoned attempt's call */
        r->stale--;
        req_maybe_free(r);
        return;
    }
    r->prefill = NULL;
    if (code != DS4_RPC_OK && r->out != NULL) {
        ds4_worker_t *w = r->pw;
        char name[128];
        snprintf(name, sizeof(name), "%s", w != NULL ? w->id : "?");
        char why[700];
        snprintf(why, sizeof(why), "prefill worker %s: %s", name, message);
        bool retried = maybe_retry(r, code, true, why);
        if (code == DS4_RPC_UNAVAILABLE && w != NULL && (retried || r->out != NULL)) {
            /* The worker is unreachable: it is dead to this router until it registers again. */
            if (ds4_registry_find(&rt->registry, name) == w)
                ds4_registry_remove(&rt->registry, w, "prefill call failed: unavailable");
        }
        if (!retried && r->out != NULL)
            req_end(r, code == DS4_RPC_CANCELLED ? DS4_RPC_ABORTED : code, "%s", why);
    }
    req_maybe_free(r);
}

static void on_prefill_msg(ds4_rpc_client_call_h call, ProtobufCMessage *msg, void *arg)
{
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void start_prefill(request_t *r, const ProtobufCBinaryData *blob)
{
    router_t *rt = r->rt;
    uint32_t n_pre = (uint32_t)(r->prep.n_ids - 1);
    if (r->pw == NULL || r->pw->user == NULL) {
        req_end(r, DS4_RPC_UNAVAILABLE, "prefill worker gone before prefill started");
        return;
    }
    uint32_t *ids = ds4_malloc_array(r->prep.n_ids, sizeof(*ids));
    if (ids == NULL) {
        req_end(r, DS4_RPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    for (size_t i = 0; i < r->prep.n_ids; i++)
        ids[i] = (uint32_t)r->prep.ids[i];
    Ds4__V1__TokenIds prompt = DS4__V1__TOKEN_IDS__INIT;
    prompt.n_ids = n_pre;
    prompt.ids = ids;
    Ds4__Worker__V1__PrefillRequest pr = DS4__WORKER__V1__PREFILL_REQUEST__INIT;
    pr.proto_version = DS4__WORKER__V1__WORKER_PROTO_VERSION__WORKER_PROTO_VERSION_1;
    pr.request_id = r->id;
    pr.router_incarnation = ds4_daemon_incarnation(rt->daemon);
    pr.prompt = &prompt;
    pr.n_tokens = n_pre;
    pr.kv_target = *blob;
    uint64_t now_ms = ds4_clock_now_ms();
    uint64_t left = r->client_deadline_at_ms == UINT64_MAX ? UINT64_MAX
                    : r->client_deadline_at_ms > now_ms    ? r->client_deadline_at_ms - now_ms
                                                           : 1;
    pr.deadline_ms = left == UINT64_MAX ? 0 : (uint32_t)DS4_MIN(left, (uint64_t)UINT32_MAX);
    ds4_rpc_call_params_t cp = {
        .method = "/ds4.worker.v1.Worker/Prefill",
        .request = &pr.base,
        .response_type = &ds4__worker__v1__prefill_response__descriptor,
        .timeout_ms = pr.deadline_ms,
        .on_message = on_prefill_msg,
        .on_done = prefill_done,
        .arg = r,
    };
    ds4_status_t st = ds4_rpc_channel_call(r->pw->user, &cp, &r->prefill);
    ds4_free(ids);
    if (st != DS4_OK) {
        r->prefill = NULL;
        req_end(r, DS4_RPC_INTERNAL, "cannot start the prefill call: %s", ds4_status_str(st));
    }
}

static void on_reserve_msg(ds4_rpc_client_call_h call, ProtobufCMessage *msg, void *arg)
{
    request_t *r = arg;
    Ds4__Worker__V1__ReserveEvent *ev = (void *)msg;
    if (r->out == NULL || call != r->reserve) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return;
    }
    switch (ev->event_case) {
    case DS4__WORKER__V1__RESERVE_EVENT__EVENT_TARGET:
        if (r->pw != NULL && r->prefill == NULL)
            start_prefill(r, &ev->target->blob);
        break;
    case DS4__WORKER__V1__RESERVE_EVENT__EVENT_TOKENS:
        for (size_t i = 0; i < ev->tokens->n_token_ids && r->out != NULL; i++)
            relay_token(r, ev->tokens->token_ids[i],
                        i < ev->tokens->n_logprobs ? ev->tokens->logprobs[i] : NULL,
                        ev->tokens->sampled_mono_ns);
        break;
    case DS4__WORKER__V1__RESERVE_EVENT__EVENT_FINISH:
        r->finished_event = true;
        r->finish_reason = ev->finish->reason;
        if (ev->finish->reason == DS4__V1__FINISH_REASON__FINISH_REASON_ERROR) {
            req_end(r, DS4_RPC_INTERNAL, "decode failed: %s", ev->finish->error);
            break;
        }
        Ds4__V1__GenerateResponse resp = DS4__V1__GENERATE_RESPONSE__INIT;
        Ds4__V1__Usage usage = DS4__V1__USAGE__INIT;
        resp.request_id = r->client_id;
        resp.finish_reason = ev->finish->reason;
        resp.channel = r->in_reasoning ? DS4__V1__CHANNEL__CHANNEL_REASONING
                                       : DS4__V1__CHANNEL__CHANNEL_CONTENT;
        const char *tail = "";
        size_t tail_len = 0;
        char *owned = NULL;
        if (r->detok != NULL) {
            ds4_detok_finish(r->detok, &tail, &tail_len);
            if (r->n_stops > 0) {
                /* the held-back text can no longer start a stop string */
                text_append(r, tail, tail_len);
                ptrdiff_t at = find_stop(r, r->text_sent);
                size_t end = at >= 0 ? (size_t)at : r->text.len;
                if (at >= 0)
                    resp.finish_reason = DS4__V1__FINISH_REASON__FINISH_REASON_STOP;
                owned = ds4_strndup(r->text.p + r->text_sent,
                                    end > r->text_sent ? end - r->text_sent : 0);
            } else {
                owned = ds4_strndup(tail, tail_len);
            }
            if (r->return_text)
                resp.text_delta = owned != NULL ? owned : "";
        }
        fill_usage(r, &usage);
        resp.usage = &usage;
        r->sink->send(r->out, &resp);
        ds4_free(owned);
        ds4_series_add(r->rt->m_prompt_tokens, (double)r->prep.n_ids);
        ds4_series_add(r->rt->m_completion_tokens, (double)r->n_completion);
        break;
    default:
        break;
    }
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void reserve_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *message,
                         void *arg)
{
    request_t *r = arg;
    router_t *rt = r->rt;
    if (call != r->reserve) { /* an abandoned attempt's call */
        r->stale--;
        req_maybe_free(r);
        return;
    }
    r->reserve = NULL;
    if (r->out != NULL) {
        if (code == DS4_RPC_OK && r->finished_event) {
            r->completed = true; /* decode released its KV when it finished */
            req_end(r, DS4_RPC_OK, "%s", "");
        } else if (code == DS4_RPC_OK) {
            req_end(r, DS4_RPC_INTERNAL, "decode stream ended without a finish event");
        } else {
            ds4_worker_t *w = r->dw;
            char name[128];
            snprintf(name, sizeof(name), "%s", w != NULL ? w->id : "?");
            char why[700];
            snprintf(why, sizeof(why), "decode worker %s: %s", name, message);
            bool retried = maybe_retry(r, code, false, why);
            if (code == DS4_RPC_UNAVAILABLE && w != NULL &&
                ds4_registry_find(&rt->registry, name) == w) {
                ds4_series_add(rt->m_worker_deaths, 1);
                ds4_registry_remove(&rt->registry, w, "decode stream failed: unavailable");
            }
            if (!retried && r->out != NULL)
                req_end(r, code == DS4_RPC_CANCELLED ? DS4_RPC_ABORTED : code, "%s", why);
        }
    }
    req_maybe_free(r);
}

static request_t *find_client_id(router_t *rt, const char *id)
{
    for (request_t *r = rt->requests; r != NULL; r = r->next)
        if (r->out != NULL && strcmp(r->client_id, id) == 0)
            return r;
    return NULL;
}

/* Picks workers and opens the Reserve stream of one attempt. On failure ends the request. */
static bool start_attempt(request_t *r, const char *exclude_decode, const char *exclude_prefill)
{
    router_t *rt = r->rt;
    r->attempts++;
    uint64_t need = (uint64_t)r->prep.n_ids + r->sampling->max_tokens;
    ds4_worker_t *dw =
        ds4_registry_pick_except(&rt->registry, DS4_ROLE_DECODE, need, NULL, 0, exclude_decode);
    if (dw == NULL && exclude_decode != NULL) /* the only decode worker: try it again */
        dw = ds4_registry_pick(&rt->registry, DS4_ROLE_DECODE, need, NULL, 0);
    ds4_worker_t *pw = NULL;
    /* Local prefill (on the decode worker): tiny prompts, or no prefill worker when allowed. */
    bool local = r->prep.n_ids <= DS4_MAX(rt->opt.local_prefill_max, 1u);
    if (dw != NULL && !local) {
        pw = ds4_registry_pick_except(&rt->registry, DS4_ROLE_PREFILL, r->prep.n_ids, dw->digest,
                                      dw->digest_len, exclude_prefill);
        if (pw == NULL && exclude_prefill != NULL)
            pw = ds4_registry_pick(&rt->registry, DS4_ROLE_PREFILL, r->prep.n_ids, dw->digest,
                                   dw->digest_len);
        if (pw == NULL && rt->opt.prefill_fallback_local)
            local = true;
    }
    if (dw == NULL || (!local && pw == NULL)) {
        req_end(r, DS4_RPC_UNAVAILABLE,
                "no %s worker available (%zu prefill, %zu decode "
                "registered)",
                dw == NULL ? "decode" : "prefill",
                ds4_registry_count(&rt->registry, DS4_ROLE_PREFILL),
                ds4_registry_count(&rt->registry, DS4_ROLE_DECODE));
        return false;
    }
    r->local = local;
    r->dw = dw;
    r->pw = pw;
    dw->assigned++;
    if (pw != NULL)
        pw->assigned++;
    uint64_t now = ds4_clock_now_ms();
    uint64_t budget = r->deadline_at_ms > now ? r->deadline_at_ms - now : 1;
    uint32_t *ids = ds4_malloc_array(r->prep.n_ids, sizeof(*ids));
    if (ids == NULL) {
        req_end(r, DS4_RPC_RESOURCE_EXHAUSTED, "out of memory");
        return false;
    }
    for (size_t i = 0; i < r->prep.n_ids; i++)
        ids[i] = (uint32_t)r->prep.ids[i];
    Ds4__V1__TokenIds prompt = DS4__V1__TOKEN_IDS__INIT;
    prompt.n_ids = r->prep.n_ids;
    prompt.ids = ids;
    Ds4__Worker__V1__ReserveRequest rr = DS4__WORKER__V1__RESERVE_REQUEST__INIT;
    rr.proto_version = DS4__WORKER__V1__WORKER_PROTO_VERSION__WORKER_PROTO_VERSION_1;
    rr.request_id = r->id;
    rr.router_incarnation = ds4_daemon_incarnation(rt->daemon);
    rr.prompt = &prompt;
    rr.sampling = (Ds4__V1__SamplingParams *)r->sampling;
    rr.prefilled_tokens = local ? 0 : (uint32_t)(r->prep.n_ids - 1);
    rr.deadline_ms = (uint32_t)DS4_MIN(budget, (uint64_t)UINT32_MAX);
    rr.prefill_manifest_digest.data = pw != NULL ? pw->digest : NULL;
    rr.prefill_manifest_digest.len = pw != NULL ? pw->digest_len : 0;
    ds4_rpc_call_params_t cp = {
        .method = "/ds4.worker.v1.Worker/Reserve",
        .request = &rr.base,
        .response_type = &ds4__worker__v1__reserve_event__descriptor,
        .timeout_ms = rr.deadline_ms,
        .on_message = on_reserve_msg,
        .on_done = reserve_done,
        .arg = r,
    };
    ds4_status_t st = ds4_rpc_channel_call(dw->user, &cp, &r->reserve);
    ds4_free(ids);
    if (st != DS4_OK) {
        r->reserve = NULL;
        req_end(r, DS4_RPC_INTERNAL, "cannot start the reserve call: %s", ds4_status_str(st));
        return false;
    }
    return true;
}

void router_count_rejected(router_t *rt, ds4_rpc_code_t code)
{
    const char *kind[] = {code_kind(code)};
    ds4_series_add(ds4_metric_series(rt->m_requests, kind), 1);
    ds4_series_add(ds4_metric_series(rt->m_errors, kind), 1);
}

ds4_rpc_code_t router_submit(router_t *rt, const router_submit_t *sub, request_t **out, char *msg,
                             size_t msg_len)
{
    const Ds4__V1__GenerateRequest *req = sub->req;
    if (rt->draining) {
        snprintf(msg, msg_len, "router is draining");
        return DS4_RPC_UNAVAILABLE;
    }
    if (req->request_id[0] != '\0' && find_client_id(rt, req->request_id) != NULL) {
        snprintf(msg, msg_len, "request_id: \"%s\" is already in use", req->request_id);
        return DS4_RPC_INVALID_ARGUMENT;
    }
    request_t *r = ds4_calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(msg, msg_len, "out of memory");
        return DS4_RPC_RESOURCE_EXHAUSTED;
    }
    r->rt = rt;
    r->id = ++rt->next_request_id;
    r->t0_ns = sub->t0_ns != 0 ? sub->t0_ns : ds4_clock_now_ns();
    r->in_reasoning = sub->prep->thinking;
    r->return_text = req->return_text;
    r->sampling = req->sampling;
    if (req->request_id[0] != '\0') {
        r->client_id = ds4_strdup(req->request_id);
    } else {
        char id[64];
        snprintf(id, sizeof(id), "req-%08" PRIx64 "-%" PRIu64,
                 ds4_daemon_incarnation(rt->daemon) & 0xffffffffu, r->id);
        r->client_id = ds4_strdup(id);
    }
    r->stops = req->sampling->stop;
    r->n_stops = req->sampling->n_stop;
    for (size_t i = 0; i < r->n_stops; i++)
        r->max_stop_len = DS4_MAX(r->max_stop_len, strlen(r->stops[i]));
    bool need_text = r->return_text || r->n_stops > 0;
    ds4_detok_params_t dtp = ds4_detok_params_default();
    dtp.skip_special_tokens = sub->skip_special_tokens;
    if (r->client_id == NULL ||
        (need_text && ds4_detok_create(rt->tok, &dtp, &r->detok) != DS4_OK)) {
        ds4_free(r->client_id);
        ds4_free(r);
        snprintf(msg, msg_len, "out of memory");
        return DS4_RPC_RESOURCE_EXHAUSTED;
    }
    /* from here the request owns the prompt */
    r->prep = *sub->prep;
    *sub->prep = (prepared_t){0};
    r->sink = sub->sink;
    r->out = sub->sink_arg;
    r->next = rt->requests;
    if (rt->requests != NULL)
        rt->requests->prev = r;
    rt->requests = r;
    rt->n_requests++;
    ds4_series_set(rt->m_running, (double)rt->n_requests);

    /* The request's own deadline: the tighter of the client's deadline and deadline_ms. */
    uint64_t left = sub->client_deadline_ms;
    r->client_deadline_at_ms = left == UINT64_MAX ? UINT64_MAX : ds4_clock_now_ms() + left;
    uint64_t budget = req->deadline_ms != 0 ? req->deadline_ms : UINT64_MAX;
    budget = DS4_MIN(budget, left);
    if (budget == UINT64_MAX)
        budget = rt->opt.default_timeout_ms;
    r->deadline_at_ms = ds4_clock_now_ms() + budget;
    uv_timer_init(ds4_daemon_loop(rt->daemon), &r->timer);
    r->timer.data = r;
    r->timer_open = true;
    uv_timer_start(&r->timer, on_deadline, budget, 0);
    *out = r;
    start_attempt(r, NULL, NULL);
    return DS4_RPC_OK;
}

void router_request_cancel(request_t *r, const char *why)
{
    if (r->out != NULL)
        req_end(r, DS4_RPC_CANCELLED, "%s", why);
}

/* ---- the gRPC Generate sink ---- */

static void grpc_send(void *arg, const Ds4__V1__GenerateResponse *resp)
{
    ds4_rpc_call_send(arg, &resp->base);
}

static void grpc_finish(void *arg, ds4_rpc_code_t code, const char *msg)
{
    ds4_rpc_call_finish(arg, code, "%s", msg);
}

static const router_sink_ops_t grpc_sink = {.send = grpc_send, .finish = grpc_finish};

void router_generate(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    router_t *rt = arg;
    const Ds4__V1__GenerateRequest *req = (const void *)request;
    uint64_t t0 = ds4_clock_now_ns();
    if (rt->draining) {
        ds4_rpc_call_finish(call, DS4_RPC_UNAVAILABLE, "router is draining");
        return;
    }
    char msg[1024];
    prepared_t prep = {0};
    ds4_rpc_code_t code = router_prepare(rt, req, &prep, msg, sizeof(msg));
    if (code != DS4_RPC_OK) {
        router_count_rejected(rt, code);
        ds4_rpc_call_finish(call, code, "%s", msg);
        return;
    }
    router_submit_t sub = {
        .req = req,
        .prep = &prep,
        .t0_ns = t0,
        .client_deadline_ms = ds4_rpc_call_deadline_left_ms(call),
        .sink = &grpc_sink,
        .sink_arg = call,
    };
    request_t *r = NULL;
    code = router_submit(rt, &sub, &r, msg, sizeof(msg));
    if (code != DS4_RPC_OK) {
        ds4_free(prep.ids);
        ds4_rpc_call_finish(call, code, "%s", msg);
        return;
    }
    /* start_attempt may already have ended the request (no worker): then the call is gone */
    if (r->out != NULL)
        ds4_rpc_call_on_cancel(call, on_client_cancel, r);
}

void router_cancel(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    router_t *rt = arg;
    const Ds4__V1__CancelRequest *req = (const void *)request;
    Ds4__V1__CancelResponse resp = DS4__V1__CANCEL_RESPONSE__INIT;
    if (req->request_id[0] == '\0') {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT, "request_id: required");
        return;
    }
    request_t *r = find_client_id(rt, req->request_id);
    if (r != NULL) {
        resp.found = 1;
        req_end(r, DS4_RPC_CANCELLED, "cancelled by a Cancel call");
    }
    ds4_rpc_call_reply(call, &resp.base);
}

void router_worker_gone(router_t *rt, ds4_worker_t *w, const char *why)
{
    for (request_t *r = rt->requests, *next; r != NULL; r = next) {
        next = r->next;
        if (r->dw != w && r->pw != w)
            continue;
        bool decode = r->dw == w;
        if (decode)
            r->dw = NULL;
        else
            r->pw = NULL;
        if (r->out == NULL)
            continue;
        char msg[300];
        snprintf(msg, sizeof(msg), "%s worker %s is gone: %s", decode ? "decode" : "prefill", w->id,
                 why);
        /* before the first token the request can start over elsewhere (w is already out of
         * the registry, so it will not be picked again) */
        if (!maybe_retry(r, DS4_RPC_UNAVAILABLE, !decode, msg))
            req_end(r, DS4_RPC_UNAVAILABLE, "%s", msg);
    }
}

size_t router_waiting(router_t *rt)
{
    size_t n = 0;
    for (request_t *r = rt->requests; r != NULL; r = r->next)
        n += r->out != NULL && r->n_completion == 0;
    return n;
}

void router_fail_all(router_t *rt, ds4_rpc_code_t code, const char *why)
{
    for (request_t *r = rt->requests, *next; r != NULL; r = next) {
        next = r->next;
        if (r->out != NULL)
            req_end(r, code, "%s", why);
    }
}
