/*
 * router/router.h - state shared by the router's files (main.c: options, services, registry
 * glue; validate.c: request checks and tokenization; generate.c: the Generate state machine).
 * Everything runs on the daemon's loop thread.
 */
#ifndef DS4_ROUTER_ROUTER_H
#define DS4_ROUTER_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

#include "ds4.pb-c.h"
#include "ds4/daemon.h"
#include "ds4/diag.h"
#include "ds4/tokenizer.h"
#include "registry.h"

typedef struct router_opts {
    const char *grpc_listen, *http_listen, *ports_file, *model, *tokenizer, *log_level;
    uint32_t heartbeat_interval_ms, liveness_timeout_ms, drain_timeout_ms;
    uint32_t default_timeout_ms; /* a Generate with neither gRPC deadline nor deadline_ms */
    uint32_t max_context;        /* 0: the smallest max_context of the live workers */
    uint32_t max_logprobs;
    uint32_t default_max_tokens; /* HTTP API requests without max_tokens (capped by the context) */
    uint32_t local_prefill_max;  /* prompts of at most this many tokens prefill on decode */
    bool prefill_fallback_local; /* no prefill worker: prefill on decode instead of failing */
} router_opts_t;

typedef struct request request_t;

typedef struct router {
    router_opts_t opt;
    ds4_daemon_h daemon;
    ds4_registry_t registry;
    ds4_tokenizer_h *tok;
    ds4_tok_scratch_h *scratch;
    int32_t think_end_id; /* "</think>" token id, or -1 */
    int32_t eos_id;       /* end of sentence, or -1 */
    uv_timer_t sweep_timer;
    request_t *requests;
    size_t n_requests;
    uint64_t next_request_id;
    bool draining;
    /* metrics */
    ds4_metric_h m_requests, m_errors;
    ds4_series_h m_running, m_ttft, m_itl, m_relay, m_prompt_tokens, m_completion_tokens;
    ds4_series_h m_workers_prefill, m_workers_decode, m_worker_deaths, m_queue;
} router_t;

/* A validated, tokenized request. */
typedef struct prepared {
    int32_t *ids; /* ds4_free */
    size_t n_ids;
    bool thinking; /* chat rendered in thinking mode: output starts in reasoning */
} prepared_t;

/* Checks every field of `req`, tokenizes its prompt, and checks lengths. On failure returns the
 * gRPC code and fills msg with every problem ("field: problem; field: problem"). */
ds4_rpc_code_t router_prepare(router_t *rt, const Ds4__V1__GenerateRequest *req, prepared_t *out,
                              char *msg, size_t msg_len);
/* Tokenize RPC body: same rules for text / chat. */
ds4_rpc_code_t router_tokenize(router_t *rt, const Ds4__V1__TokenizeRequest *req, int32_t **ids,
                               size_t *n_ids, char *msg, size_t msg_len);
/* Token ids must be below this: every live worker's model vocabulary (the tokenizer's range
 * when no worker says). */
uint32_t router_vocab(router_t *rt);
/* The context length requests are checked against (0: unknown, no worker). */
uint32_t router_max_context(router_t *rt);

/* Where a request's output goes (called on the loop thread): the gRPC Generate stream
 * (generate.c) or an HTTP API exchange (http-api.c). */
typedef struct router_sink_ops {
    /* One response message, as the gRPC stream would carry it: new tokens (text_delta when
     * return_text), and last the one with finish_reason and usage. `resp` is valid during the
     * call only. */
    void (*send)(void *arg, const Ds4__V1__GenerateResponse *resp);
    /* The request is over: called exactly once, never followed by a send. DS4_RPC_OK comes after
     * the message with finish_reason; any other code is a failure described by `msg`. */
    void (*finish)(void *arg, ds4_rpc_code_t code, const char *msg);
} router_sink_ops_t;

typedef struct router_submit {
    const Ds4__V1__GenerateRequest *req; /* borrowed until the sink's finish */
    prepared_t *prep;                    /* router_prepare's result; taken over on success */
    uint64_t t0_ns;                      /* arrival (0: now) */
    uint64_t client_deadline_ms;         /* the client's own deadline from now (UINT64_MAX: none) */
    bool skip_special_tokens;            /* text_delta without special tokens (</think>, EOS) */
    const router_sink_ops_t *sink;
    void *sink_arg;
} router_submit_t;

/* Admits a prepared request and starts it. On DS4_RPC_OK *out is the request, which may already
 * have finished through the sink (e.g. no worker available: finish ran inside this call). On
 * failure (draining, duplicate request_id, out of memory) the sink is never called, msg says
 * why and *prep is left to the caller. */
ds4_rpc_code_t router_submit(router_t *rt, const router_submit_t *sub, request_t **out, char *msg,
                             size_t msg_len);
/* Ends a running request as cancelled (the client went away): Release on its workers; the
 * sink's finish runs inside this call. No-op when it has already finished. */
void router_request_cancel(request_t *r, const char *why);
/* Counts a request rejected before admission in ds4_requests_total / ds4_errors_total. */
void router_count_rejected(router_t *rt, ds4_rpc_code_t code);

void router_generate(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg);
void router_cancel(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg);
/* A worker left the registry: fail its requests. */
void router_worker_gone(router_t *rt, ds4_worker_t *w, const char *why);
/* Requests admitted that have not streamed a token yet (prefill queue + compute). */
size_t router_waiting(router_t *rt);
/* Fails every request (drain timeout / stop). */
void router_fail_all(router_t *rt, ds4_rpc_code_t code, const char *why);

#endif /* DS4_ROUTER_ROUTER_H */
