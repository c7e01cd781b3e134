/*
 * router/http-api.h - the router's OpenAI- and Anthropic-compatible HTTP API, shared by
 * http-api.c (routing, errors, the request's output sink, SSE), http-api-fields.c (fields the
 * APIs share), openai.c (/v1/chat/completions, /v1/completions) and anthropic.c (/v1/messages).
 *
 * A request body is parsed with jansson, every problem is collected with the name of its field
 * (ds4_diag_t), and the request becomes a ds4.v1.GenerateRequest that runs through the same
 * router_prepare + router_submit as the gRPC Generate: the token stream, stop strings,
 * deadlines, retries and cancel (a client that closes the connection cancels the request and
 * its KV is released on the workers) are the gRPC path's. Text is detokenised without special
 * tokens (</think>, EOS); tokens before </think> in thinking mode are the reasoning.
 *
 * Everything runs on the router's loop thread.
 */
#ifndef DS4_ROUTER_HTTP_API_H
#define DS4_ROUTER_HTTP_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ds4/buf.h"
#include "ds4/diag.h"
#include "ds4/http.h"
#include "router.h"

typedef enum api_kind {
    API_CHAT = 0,       /* /v1/chat/completions */
    API_COMPLETION = 1, /* /v1/completions */
    API_MESSAGES = 2,   /* /v1/messages (Anthropic) */
} api_kind_t;

/* One HTTP API request from parse to the end of its exchange. */
typedef struct api_req {
    router_t *rt;
    ds4_http_exchange_h ex; /* NULL once the exchange has ended */
    api_kind_t kind;
    request_t *r; /* the running request; NULL before submit and after finish */
    json_t *body; /* the parsed body: the strings of greq point into it */
    uint64_t t0_ns;
    /* the GenerateRequest built from the body */
    Ds4__V1__GenerateRequest greq;
    Ds4__V1__SamplingParams sp;
    Ds4__V1__TokenIds prompt_ids;
    uint32_t *prompt_id_buf; /* ds4_free */
    char **stops;            /* ds4_free (the strings point into body) */
    uint32_t *stop_token_ids;
    bool max_tokens_given;
    /* chat encoding done here (tools and tool calls do not fit the proto's ChatMessage) */
    json_t *chat_messages; /* the messages handed to ds4_chat_encode */
    int chat_mode;         /* ds4_chat_mode_t */
    int reasoning_effort;  /* ds4_reasoning_effort_t */
    /* response options */
    char id[64];
    int64_t created; /* unix seconds */
    bool stream, include_usage, return_token_ids;
    bool want_logprobs;
    uint32_t top_logprobs;
    bool tools; /* chat with tools: the answer is parsed for tool calls at the end */
    /* progress */
    bool in_submit, ended_in_submit;
    bool stream_begun, sent_role;
    bool client_gone;
    uint32_t n_tokens;
    ds4_buf_t content, reasoning; /* non-streaming: the whole answer */
    json_t *token_ids;            /* non-streaming (return_token_ids) */
    json_t *lp;                   /* non-streaming logprobs (chat: content[]; completion: obj) */
    size_t text_offset;           /* completion logprobs text_offset */
    Ds4__V1__FinishReason finish;
    uint32_t last_token;
    uint32_t prompt_tokens, completion_tokens, reasoning_tokens;
    /* Anthropic streaming: the open content block (0 none, 1 thinking, 2 text) and its index */
    int block, block_index;
    ds4_buf_t all_ids; /* every token id (uint32_t), kept to name a matched stop sequence */
    size_t emitted;    /* bytes of text sent to the client (reasoning + content) */
} api_req_t;

/* HTTP entry point (ds4_daemon_hooks_t.http). */
void router_http_api(ds4_http_exchange_h ex, const ds4_http_request_t *req, void *arg);

/* ---- http-api.c and http-api-fields.c: helpers for the endpoint files ---- */

/* HTTP status of a gRPC code (INVALID_ARGUMENT 400, NOT_FOUND 404, RESOURCE_EXHAUSTED 429,
 * UNAVAILABLE 503, DEADLINE_EXCEEDED 504, ...). */
int api_http_status(ds4_rpc_code_t code);
/* Responds with the error object of the request's API ({"error": {message, type, param, code}}
 * for OpenAI, {"type": "error", "error": {type, message}} for Anthropic) and ends the exchange.
 * `param` (may be NULL) names the field. */
void api_error(ds4_http_exchange_h ex, api_kind_t kind, int status, const char *param,
               const char *message);
/* The first field named by a diag message "field: problem; ..." copied into buf ("" if none). */
const char *api_param_of(const char *msg, char *buf, size_t cap);
/* Writes one SSE event ("event: <name>\n" when name != NULL, "data: <json>\n\n"); steals `obj`.
 * False once the client is gone. */
bool api_sse(api_req_t *a, const char *name, json_t *obj);
/* Writes "data: <raw>\n\n". */
bool api_sse_raw(api_req_t *a, const char *raw);
/* Responds 200 with the JSON body `obj` (stolen) and ends the exchange. */
void api_respond_json(api_req_t *a, int status, json_t *obj);

/* Sampling fields common to the three APIs (names as the API spells them), into a->sp.
 * `anthropic`: stop_sequences / max_tokens required, no penalties. */
void api_parse_sampling(api_req_t *a, const json_t *body, bool anthropic, ds4_diag_t *d);
/* reasoning_effort / thinking → chat mode and effort (a->chat_mode, a->reasoning_effort). */
void api_parse_reasoning(api_req_t *a, const json_t *body, ds4_diag_t *d);
/* Renders a->chat_messages with the V4 chat encoding and tokenizes them into a->prompt_ids. */
bool api_encode_chat(api_req_t *a, ds4_diag_t *d);
/* obj[key] unless absent or null (clients send null for "not set"). */
const json_t *api_present(const json_t *obj, const char *key);
/* The whole answer (special tokens included) parsed for tool calls: openai_tool_message's
 * message, or NULL when there are none. Needs a->tools (the ids are kept then). */
json_t *api_tool_message(api_req_t *a);
/* Text of one token id (special tokens included), new string (ds4_free) or NULL. */
char *api_token_text(router_t *rt, uint32_t id);

/* ---- openai.c ---- */

/* Parses a /v1/chat/completions or /v1/completions body into `a`; problems into d. */
void openai_parse(api_req_t *a, const json_t *body, ds4_diag_t *d);
/* One GenerateResponse of the request (stream chunk, or accumulated). */
void openai_on_message(api_req_t *a, const Ds4__V1__GenerateResponse *resp);
/* The request ended OK: the final chunk(s) / the whole response. */
void openai_on_done(api_req_t *a);

/* ---- anthropic.c ---- */

void anthropic_parse(api_req_t *a, const json_t *body, ds4_diag_t *d);
void anthropic_on_message(api_req_t *a, const Ds4__V1__GenerateResponse *resp);
void anthropic_on_done(api_req_t *a);

#endif /* DS4_ROUTER_HTTP_API_H */
