/* The HTTP API front: routing, the request's life (parse, prepare, submit, sink, end of the
 * exchange), error objects, SSE framing. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ds4/alloc.h"
#include "ds4/chat.h"
#include "ds4/clock.h"
#include "ds4/json.h"
#include "ds4/log.h"
#include "http-api.h"
#include "openai-tools.h"

int api_http_status(ds4_rpc_code_t code)
{
    switch (code) {
    case DS4_RPC_OK:
        return 200;
    case DS4_RPC_INVALID_ARGUMENT:
    case DS4_RPC_FAILED_PRECONDITION:
    case DS4_RPC_OUT_OF_RANGE:
        return 400;
    case DS4_RPC_NOT_FOUND:
        return 404;
    case DS4_RPC_RESOURCE_EXHAUSTED:
        return 429;
    case DS4_RPC_CANCELLED:
        return 499; /* client closed request (nginx); nobody reads it */
    case DS4_RPC_UNAVAILABLE:
    case DS4_RPC_ABORTED:
        return 503;
    case DS4_RPC_DEADLINE_EXCEEDED:
        return 504;
    case DS4_RPC_UNIMPLEMENTED:
        return 501;
    default:
        return 500;
    }
}

/* OpenAI's error "type" for an HTTP status. */
static const char *openai_error_type(int status)
{
    switch (status) {
    case 400:
    case 404:
    case 405:
    case 413:
        return "invalid_request_error";
    case 429:
        return "rate_limit_exceeded";
    case 503:
        return "service_unavailable";
    case 504:
        return "timeout";
    default:
        return "server_error";
    }
}

/* Anthropic's error "type" for an HTTP status. */
static const char *anthropic_error_type(int status)
{
    switch (status) {
    case 400:
    case 405:
        return "invalid_request_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 503:
        return "overloaded_error";
    case 504:
        return "timeout_error";
    default:
        return "api_error";
    }
}

static json_t *error_object(api_kind_t kind, int status, const char *param, const char *message)
{
    json_t *e = NULL;
    if (kind == API_MESSAGES) {
        e = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type",
                      anthropic_error_type(status), "message", message);
    } else {
        const char *code = status == 404 && param != NULL && strcmp(param, "model") == 0
                               ? "model_not_found"
                               : NULL;
        e = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message, "type",
                      openai_error_type(status), "param",
                      param != NULL && param[0] != '\0' ? param : NULL, "code", code);
    }
    return e;
}

void api_error(ds4_http_exchange_h ex, api_kind_t kind, int status, const char *param,
               const char *message)
{
    json_t *e = error_object(kind, status, param, message);
    char *text = e != NULL ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    if (text == NULL) {
        ds4_http_respond(ex, 500, "text/plain", "out of memory\n", 14);
        return;
    }
    ds4_http_respond(ex, status, "application/json", text, strlen(text));
    free(text); /* jansson's allocator */
}

const char *api_param_of(const char *msg, char *buf, size_t cap)
{
    buf[0] = '\0';
    const char *colon = strstr(msg, ": ");
    if (colon == NULL)
        return buf;
    size_t n = (size_t)(colon - msg);
    for (size_t i = 0; i < n; i++)
        if (msg[i] == ' ' || msg[i] == ';')
            return buf; /* not a field name */
    snprintf(buf, cap, "%.*s", (int)n, msg);
    return buf;
}

static bool sse_write(api_req_t *a, const char *s, size_t n)
{
    if (a->ex == NULL || a->client_gone)
        return false;
    if (!a->stream_begun) {
        a->stream_begun = true;
        if (ds4_http_stream_begin(a->ex, 200, "text/event-stream; charset=utf-8") != DS4_OK)
            return false;
    }
    return ds4_http_stream_write(a->ex, s, n) == DS4_OK;
}

bool api_sse(api_req_t *a, const char *name, json_t *obj)
{
    if (obj == NULL)
        return false;
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (text == NULL)
        return false;
    ds4_buf_t b = {0};
    bool ok = true;
    if (name != NULL)
        ok = ds4_buf_put(&b, "event: ", 7) && ds4_buf_put(&b, name, strlen(name)) &&
             ds4_buf_put(&b, "\n", 1);
    ok = ok && ds4_buf_put(&b, "data: ", 6) && ds4_buf_put(&b, text, strlen(text)) &&
         ds4_buf_put(&b, "\n\n", 2);
    free(text);
    ok = ok && sse_write(a, b.p, b.len);
    ds4_buf_free(&b);
    return ok;
}

bool api_sse_raw(api_req_t *a, const char *raw)
{
    ds4_buf_t b = {0};
    bool ok = ds4_buf_put(&b, "data: ", 6) && ds4_buf_put(&b, raw, strlen(raw)) &&
              ds4_buf_put(&b, "\n\n", 2) && sse_write(a, b.p, b.len);
    ds4_buf_free(&b);
    return ok;
}

void api_respond_json(api_req_t *a, int status, json_t *obj)
{
    char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    ds4_http_exchange_h ex = a->ex;
    a->ex = NULL;
    if (text == NULL) {
        api_error(ex, a->kind, 500, NULL, "out of memory rendering the response");
        return;
    }
    ds4_http_respond(ex, status, "application/json", text, strlen(text));
    free(text);
}

char *api_token_text(router_t *rt, uint32_t id)
{
    int32_t one = (int32_t)id;
    char *text = NULL;
    size_t len = 0;
    if (ds4_tokenizer_decode(rt->tok, &one, 1, false, &text, &len, NULL) != DS4_OK)
        return ds4_strdup("");
    return text;
}

json_t *api_tool_message(api_req_t *a)
{
    router_t *rt = a->rt;
    const uint32_t *ids = (const uint32_t *)(const void *)a->all_ids.p;
    size_t n = a->all_ids.len / sizeof(*ids), k = 0;
    int32_t *known = ds4_malloc_array(n + 1, sizeof(*known));
    if (known == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) /* padded model vocabulary past the tokenizer: no text */
        if (ids[i] < ds4_tokenizer_n_ids(rt->tok))
            known[k++] = (int32_t)ids[i];
    char *raw = NULL;
    size_t len = 0;
    json_t *m = NULL;
    if (ds4_tokenizer_decode(rt->tok, known, k, false, &raw, &len, NULL) == DS4_OK)
        m = openai_tool_message(raw, len, a->chat_mode, a->id);
    ds4_free(raw);
    ds4_free(known);
    return m;
}

/* ---- request life ---- */

static void api_free(api_req_t *a)
{
    json_decref(a->body);
    json_decref(a->chat_messages);
    json_decref(a->token_ids);
    json_decref(a->lp);
    ds4_free(a->prompt_id_buf);
    ds4_free(a->stops);
    ds4_free(a->stop_token_ids);
    ds4_buf_free(&a->content);
    ds4_buf_free(&a->reasoning);
    ds4_buf_free(&a->all_ids);
    ds4_free(a);
}

/* A stream whose client stopped reading is cancelled once this much waits in the socket queue:
 * the router's memory stays bounded and the workers' KV is released. */
#define API_MAX_PENDING_BYTES ((size_t)16 << 20)

static void sink_send(void *arg, const Ds4__V1__GenerateResponse *resp)
{
    api_req_t *a = arg;
    if (a->stream_begun && a->ex != NULL && a->r != NULL &&
        ds4_http_exchange_pending_bytes(a->ex) > API_MAX_PENDING_BYTES) {
        char why[128];
        snprintf(why, sizeof(why), "the HTTP client is not reading (%zu bytes queued)",
                 ds4_http_exchange_pending_bytes(a->ex));
        /* generate.c checks that the request is still open after each send: ending it from
         * here is safe; the finish frees `a` */
        router_request_cancel(a->r, why);
        return;
    }
    if (resp->usage != NULL) {
        a->prompt_tokens = resp->usage->prompt_tokens;
        a->completion_tokens = resp->usage->completion_tokens;
        a->reasoning_tokens = resp->usage->reasoning_tokens;
    }
    if (resp->n_token_ids > 0) {
        a->last_token = resp->token_ids[resp->n_token_ids - 1];
        a->n_tokens += (uint32_t)resp->n_token_ids;
        if (a->sp.n_stop > 0 || a->tools)
            ds4_buf_put(&a->all_ids, (const char *)resp->token_ids,
                        resp->n_token_ids * sizeof(*resp->token_ids));
    }
    a->emitted += resp->text_delta != NULL ? strlen(resp->text_delta) : 0;
    if (resp->finish_reason != DS4__V1__FINISH_REASON__FINISH_REASON_NONE)
        a->finish = resp->finish_reason;
    if (a->kind == API_MESSAGES)
        anthropic_on_message(a, resp);
    else
        openai_on_message(a, resp);
}

static void sink_finish(void *arg, ds4_rpc_code_t code, const char *msg)
{
    api_req_t *a = arg;
    a->r = NULL;
    if (a->ex != NULL) {
        if (code == DS4_RPC_OK) {
            if (a->kind == API_MESSAGES)
                anthropic_on_done(a);
            else
                openai_on_done(a);
        } else if (a->stream_begun) {
            /* the status line is gone: the error travels as an event */
            int status = api_http_status(code);
            char param[64];
            json_t *e = error_object(a->kind, status, api_param_of(msg, param, sizeof(param)), msg);
            if (a->kind == API_MESSAGES) {
                api_sse(a, "error", e);
            } else {
                api_sse(a, NULL, e);
                api_sse_raw(a, "[DONE]");
            }
        } else {
            char param[64];
            api_error(a->ex, a->kind, api_http_status(code),
                      api_param_of(msg, param, sizeof(param)), msg);
            a->ex = NULL;
        }
        if (a->ex != NULL) { /* a stream (the renderers end non-streaming exchanges) */
            if (!a->stream_begun)
                ds4_http_stream_begin(a->ex, 200, "text/event-stream; charset=utf-8");
            ds4_http_stream_end(a->ex);
            a->ex = NULL;
        }
    }
    if (a->in_submit)
        a->ended_in_submit = true; /* api_post frees it */
    else
        api_free(a);
}

static const router_sink_ops_t api_sink = {.send = sink_send, .finish = sink_finish};

static void on_client_close(ds4_http_exchange_h ex, void *arg)
{
    api_req_t *a = arg;
    a->client_gone = true;
    if (a->r != NULL)
        router_request_cancel(a->r, "the HTTP client closed the connection"); /* frees a */
}

/* router_prepare's field names ("sampling.max_tokens", "prompt_ids.ids") in the API's words. */
static void rename_fields(const api_req_t *a, const char *in, char *out, size_t cap)
{
    static const char *const from[] = {"sampling.stop_token_ids", "sampling.stop", "sampling.",
                                       "prompt_ids.ids",          "prompt_text",   "prompt:"};
    const char *prompt = a->kind == API_COMPLETION ? "prompt" : "messages";
    size_t o = 0;
    while (*in != '\0' && o + 1 < cap) {
        size_t k = 0;
        for (; k < DS4_ARRAY_LEN(from); k++)
            if (strncmp(in, from[k], strlen(from[k])) == 0)
                break;
        const char *to = NULL;
        switch (k) {
        case 0:
            to = "stop_token_ids";
            break;
        case 1:
            to = a->kind == API_MESSAGES ? "stop_sequences" : "stop";
            break;
        case 2:
            to = "";
            break;
        case 3:
        case 4:
            to = prompt;
            break;
        case 5:
            to = a->kind == API_COMPLETION ? "prompt:" : "messages:";
            break;
        default:
            out[o++] = *in++;
            continue;
        }
        in += strlen(from[k]);
        int n = snprintf(out + o, cap - o, "%s", to);
        o = DS4_MIN(cap - 1, o + (size_t)n);
    }
    out[o] = '\0';
}

static void api_post(ds4_http_exchange_h ex, const ds4_http_request_t *req, router_t *rt,
                     api_kind_t kind)
{
    uint64_t t0 = ds4_clock_now_ns();
    if (rt->draining) {
        api_error(ex, kind, 503, NULL, "router is draining");
        return;
    }
    api_req_t *a = ds4_calloc(1, sizeof(*a));
    if (a == NULL) {
        api_error(ex, kind, 500, NULL, "out of memory");
        return;
    }
    a->rt = rt;
    a->ex = ex;
    a->kind = kind;
    a->t0_ns = t0;
    a->created = (int64_t)time(NULL);
    a->chat_mode = DS4_CHAT_MODE_THINKING; /* the proto's REASONING_DEFAULT for V4 chat */
    a->greq = (Ds4__V1__GenerateRequest)DS4__V1__GENERATE_REQUEST__INIT;
    a->sp = (Ds4__V1__SamplingParams)DS4__V1__SAMPLING_PARAMS__INIT;
    a->prompt_ids = (Ds4__V1__TokenIds)DS4__V1__TOKEN_IDS__INIT;
    a->greq.api_version = DS4__V1__API_VERSION__API_VERSION_1;
    a->greq.sampling = &a->sp;
    a->greq.return_text = 1;
    static const char *const prefix[] = {"chatcmpl-", "cmpl-", "msg_"};
    snprintf(a->id, sizeof(a->id), "%s%016" PRIx64 "%08" PRIx64, prefix[kind],
             ds4_daemon_incarnation(rt->daemon), ++rt->next_request_id);

    char msg[1024];
    ds4_diag_t d;
    ds4_diag_init(&d);
    prepared_t prep = {0};
    int status = 400;
    if (ds4_json_load_buf(req->body, req->body_len, "request body", &a->body, &d) != DS4_OK ||
        !json_is_object(a->body)) {
        if (d.count == 0)
            ds4_diag_addf(&d, "request body", "expected a JSON object, got %s",
                          ds4_json_type_name(a->body));
        goto reject;
    }
    const json_t *model = json_object_get(a->body, "model");
    if (model != NULL && !json_is_null(model) &&
        (!json_is_string(model) || strcmp(json_string_value(model), rt->opt.model) != 0)) {
        status = json_is_string(model) ? 404 : 400;
        if (json_is_string(model))
            ds4_diag_addf(&d, "model",
                          "the model \"%s\" does not exist (this cluster serves \"%s\")",
                          json_string_value(model), rt->opt.model);
        else
            ds4_diag_addf(&d, "model", "expected a string, got %s", ds4_json_type_name(model));
        goto reject;
    }
    if (kind == API_MESSAGES)
        anthropic_parse(a, a->body, &d);
    else
        openai_parse(a, a->body, &d);
    if (d.count != 0 || d.oom)
        goto reject;
    /* no max_tokens: as many as the context leaves */
    if (!a->max_tokens_given) {
        uint32_t ctx = router_max_context(rt);
        size_t n_prompt = a->greq.prompt_case == DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS
                              ? a->prompt_ids.n_ids
                              : 0;
        if (a->greq.prompt_case == DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_TEXT) {
            int32_t *ids = NULL;
            if (ds4_tokenizer_encode(rt->tok, rt->scratch, a->greq.prompt_text,
                                     strlen(a->greq.prompt_text), &ids, &n_prompt, NULL,
                                     NULL) != DS4_OK)
                n_prompt = 0;
            ds4_free(ids);
        }
        uint32_t left = ctx > n_prompt + 1 ? ctx - (uint32_t)n_prompt : 1;
        a->sp.max_tokens = DS4_MAX(1u, ctx == 0 ? rt->opt.default_max_tokens
                                                : DS4_MIN(left, rt->opt.default_max_tokens));
    }
    /* logprobs: the proto's N is the sampled token + the top N-1 */
    a->sp.logprobs = a->want_logprobs ? a->top_logprobs + 1 : 0;
    ds4_rpc_code_t code = router_prepare(rt, &a->greq, &prep, msg, sizeof(msg));
    if (code != DS4_RPC_OK) {
        char renamed[1024];
        rename_fields(a, msg, renamed, sizeof(renamed));
        char param[64];
        router_count_rejected(rt, code);
        api_error(ex, kind, api_http_status(code), api_param_of(renamed, param, sizeof(param)),
                  renamed);
        ds4_diag_free(&d);
        api_free(a);
        return;
    }
    a->prompt_tokens = (uint32_t)prep.n_ids;
    if (kind != API_COMPLETION)
        prep.thinking = a->chat_mode == DS4_CHAT_MODE_THINKING;
    if (a->return_token_ids && !a->stream)
        a->token_ids = json_array();
    router_submit_t sub = {
        .req = &a->greq,
        .prep = &prep,
        .t0_ns = t0,
        .client_deadline_ms = UINT64_MAX,
        .skip_special_tokens = true,
        .sink = &api_sink,
        .sink_arg = a,
    };
    request_t *r = NULL;
    a->in_submit = true;
    code = router_submit(rt, &sub, &r, msg, sizeof(msg));
    a->in_submit = false;
    ds4_diag_free(&d);
    if (code != DS4_RPC_OK) {
        ds4_free(prep.ids);
        router_count_rejected(rt, code);
        char param[64];
        api_error(ex, kind, api_http_status(code), api_param_of(msg, param, sizeof(param)), msg);
        api_free(a);
        return;
    }
    if (a->ended_in_submit) { /* no worker: the error is already answered */
        api_free(a);
        return;
    }
    a->r = r;
    ds4_http_exchange_on_close(ex, on_client_close, a);
    return;

reject:;
    char *all = ds4_diag_join(&d, "; ");
    char param[64];
    api_param_of(all != NULL ? all : "", param, sizeof(param));
    router_count_rejected(rt, status == 404 ? DS4_RPC_NOT_FOUND : DS4_RPC_INVALID_ARGUMENT);
    api_error(ex, kind, status, param, all != NULL ? all : "invalid request");
    ds4_free(all);
    ds4_diag_free(&d);
    api_free(a);
}

static json_t *model_object(router_t *rt)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:I, s:I}", "id", rt->opt.model, "object", "model",
                     "created", (json_int_t)0, "owned_by", "ds4", "context_length",
                     (json_int_t)router_max_context(rt), "vocab_size",
                     (json_int_t)router_vocab(rt));
}

static void respond_value(ds4_http_exchange_h ex, json_t *obj)
{
    char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (text == NULL) {
        api_error(ex, API_CHAT, 500, NULL, "out of memory");
        return;
    }
    ds4_http_respond(ex, 200, "application/json", text, strlen(text));
    free(text);
}

void router_http_api(ds4_http_exchange_h ex, const ds4_http_request_t *req, void *arg)
{
    router_t *rt = arg;
    static const struct {
        const char *path;
        api_kind_t kind;
    } posts[] = {
        {"/v1/chat/completions", API_CHAT},
        {"/v1/completions", API_COMPLETION},
        {"/v1/messages", API_MESSAGES},
    };
    bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    for (size_t i = 0; i < DS4_ARRAY_LEN(posts); i++) {
        if (strcmp(req->path, posts[i].path) != 0)
            continue;
        if (strcmp(req->method, "POST") != 0) {
            char m[128];
            snprintf(m, sizeof(m), "method %s not allowed on %s (use POST)", req->method,
                     req->path);
            api_error(ex, posts[i].kind, 405, NULL, m);
            return;
        }
        api_post(ex, req, rt, posts[i].kind);
        return;
    }
    if (strcmp(req->path, "/v1/models") == 0 || strncmp(req->path, "/v1/models/", 11) == 0) {
        if (!get) {
            char m[128];
            snprintf(m, sizeof(m), "method %s not allowed on %s (use GET)", req->method, req->path);
            api_error(ex, API_CHAT, 405, NULL, m);
            return;
        }
        if (req->path[10] == '/') {
            if (strcmp(req->path + 11, rt->opt.model) != 0) {
                char m[256];
                snprintf(m, sizeof(m), "the model \"%.120s\" does not exist", req->path + 11);
                api_error(ex, API_CHAT, 404, "model", m);
                return;
            }
            respond_value(ex, model_object(rt));
            return;
        }
        json_t *m = model_object(rt);
        respond_value(ex,
                      m != NULL ? json_pack("{s:s, s:[o]}", "object", "list", "data", m) : NULL);
        return;
    }
    char m[200];
    snprintf(m, sizeof(m), "no route %s %.120s", req->method, req->path);
    api_error(ex, strncmp(req->path, "/v1/messages", 12) == 0 ? API_MESSAGES : API_CHAT, 404, NULL,
              m);
}
