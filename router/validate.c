/* Request validation and tokenization: every problem named by its field, all at once. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/chat.h"
#include "ds4/json.h"
#include "ds4/rpc.h"
#include "router.h"

uint32_t router_max_context(router_t *rt)
{
    if (rt->opt.max_context != 0)
        return rt->opt.max_context;
    uint32_t m = 0;
    for (ds4_worker_t *w = rt->registry.head; w != NULL; w = w->next)
        if (w->max_context != 0 && (m == 0 || w->max_context < m))
            m = w->max_context;
    return m;
}

/* Ids must be below every live worker's model vocabulary (the tokenizer's range when no
 * worker says). */
uint32_t router_vocab(router_t *rt)
{
    uint32_t n = 0;
    for (ds4_worker_t *w = rt->registry.head; w != NULL; w = w->next)
        if (w->vocab_size != 0 && (n == 0 || w->vocab_size < n))
            n = w->vocab_size;
    return n != 0 ? n : ds4_tokenizer_n_ids(rt->tok);
}

static void join_diag(const ds4_diag_t *d, char *msg, size_t len)
{
    char *all = ds4_diag_join(d, "; ");
    snprintf(msg, len, "%s", all != NULL ? all : "invalid request");
    ds4_free(all);
}

/* Renders chat messages with the V4 encoding and tokenizes the result. */
static ds4_status_t encode_chat(router_t *rt, const Ds4__V1__ChatPrompt *chat,
                                Ds4__V1__ReasoningMode mode, int32_t **ids, size_t *n_ids,
                                bool *thinking, ds4_diag_t *d)
{
    json_t *msgs = json_array();
    if (msgs == NULL)
        return DS4_ERR_NO_MEMORY;
    for (size_t i = 0; i < chat->n_messages; i++) {
        const Ds4__V1__ChatMessage *m = chat->messages[i];
        json_t *o = json_object();
        json_object_set_new(o, "role", json_string(m->role));
        json_object_set_new(o, "content", json_string(m->content));
        if (m->reasoning_content[0] != '\0')
            json_object_set_new(o, "reasoning_content", json_string(m->reasoning_content));
        if (m->name[0] != '\0')
            json_object_set_new(o, "name", json_string(m->name));
        json_array_append_new(msgs, o);
    }
    ds4_chat_params_t cp = ds4_chat_params_default();
    cp.mode = mode == DS4__V1__REASONING_MODE__REASONING_OFF ? DS4_CHAT_MODE_CHAT
                                                             : DS4_CHAT_MODE_THINKING;
    char *prompt = NULL;
    size_t prompt_len = 0;
    ds4_status_t st = ds4_chat_encode(msgs, &cp, &prompt, &prompt_len, d);
    json_decref(msgs);
    if (st != DS4_OK)
        return st;
    st = ds4_tokenizer_encode(rt->tok, rt->scratch, prompt, prompt_len, ids, n_ids, NULL, d);
    ds4_free(prompt);
    *thinking = cp.mode == DS4_CHAT_MODE_THINKING;
    return st;
}

static void check_sampling(router_t *rt, const Ds4__V1__SamplingParams *s, ds4_diag_t *d)
{
    if (s == NULL) {
        ds4_diag_addf(d, "sampling.max_tokens", "must be >= 1 (sampling is missing)");
        return;
    }
    if (s->max_tokens == 0)
        ds4_diag_addf(d, "sampling.max_tokens", "must be >= 1, got 0");
    if (!(s->temperature >= 0) || isinf(s->temperature))
        ds4_diag_addf(d, "sampling.temperature", "must be a finite number >= 0, got %g",
                      (double)s->temperature);
    if (!(s->top_p >= 0 && s->top_p <= 1))
        ds4_diag_addf(d, "sampling.top_p", "must be in [0, 1], got %g", (double)s->top_p);
    if (!(s->min_p >= 0 && s->min_p <= 1))
        ds4_diag_addf(d, "sampling.min_p", "must be in [0, 1], got %g", (double)s->min_p);
    if (!(s->repetition_penalty >= 0) || isinf(s->repetition_penalty))
        ds4_diag_addf(d, "sampling.repetition_penalty", "must be a finite number >= 0, got %g",
                      (double)s->repetition_penalty);
    if (!isfinite(s->presence_penalty) || fabsf(s->presence_penalty) > 2)
        ds4_diag_addf(d, "sampling.presence_penalty", "must be in [-2, 2], got %g",
                      (double)s->presence_penalty);
    if (!isfinite(s->frequency_penalty) || fabsf(s->frequency_penalty) > 2)
        ds4_diag_addf(d, "sampling.frequency_penalty", "must be in [-2, 2], got %g",
                      (double)s->frequency_penalty);
    if (s->logprobs > rt->opt.max_logprobs)
        ds4_diag_addf(d, "sampling.logprobs", "must be <= %u, got %u", rt->opt.max_logprobs,
                      s->logprobs);
    uint32_t n_vocab = router_vocab(rt);
    for (size_t i = 0; i < s->n_stop_token_ids; i++)
        if (s->stop_token_ids[i] >= n_vocab) {
            ds4_diag_addf(d, "sampling.stop_token_ids",
                          "id %u at [%zu] outside the vocabulary "
                          "of %u",
                          s->stop_token_ids[i], i, n_vocab);
            break;
        }
    for (size_t i = 0; i < s->n_stop; i++)
        if (s->stop[i][0] == '\0') {
            ds4_diag_addf(d, "sampling.stop", "entry [%zu] is empty", i);
            break;
        }
}

ds4_rpc_code_t router_prepare(router_t *rt, const Ds4__V1__GenerateRequest *req, prepared_t *out,
                              char *msg, size_t msg_len)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_rpc_code_t code = DS4_RPC_INVALID_ARGUMENT;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    bool thinking = false;
    if (req->api_version > DS4__V1__API_VERSION__API_VERSION_1) {
        snprintf(msg, msg_len, "api_version: this router speaks 1, got %u", req->api_version);
        ds4_diag_free(&d);
        return DS4_RPC_FAILED_PRECONDITION;
    }
    if (req->model[0] != '\0' && strcmp(req->model, rt->opt.model) != 0)
        ds4_diag_addf(&d, "model", "unknown model \"%s\" (this cluster serves \"%s\")", req->model,
                      rt->opt.model);
    check_sampling(rt, req->sampling, &d);

    uint32_t n_vocab = router_vocab(rt);
    switch (req->prompt_case) {
    case DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS: {
        const Ds4__V1__TokenIds *p = req->prompt_ids;
        if (p->n_ids == 0) {
            ds4_diag_addf(&d, "prompt_ids.ids", "must not be empty");
            break;
        }
        for (size_t i = 0; i < p->n_ids; i++)
            if (p->ids[i] >= n_vocab) {
                ds4_diag_addf(&d, "prompt_ids.ids", "id %u at [%zu] outside the vocabulary of %u",
                              p->ids[i], i, n_vocab);
                break;
            }
        ids = ds4_malloc_array(p->n_ids, sizeof(*ids));
        if (ids == NULL) {
            code = DS4_RPC_RESOURCE_EXHAUSTED;
            ds4_diag_addf(&d, "prompt_ids", "out of memory");
            break;
        }
        for (size_t i = 0; i < p->n_ids; i++)
            ids[i] = (int32_t)p->ids[i];
        n_ids = p->n_ids;
        break;
    }
    case DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_TEXT:
        if (req->prompt_text[0] == '\0') {
            ds4_diag_addf(&d, "prompt_text", "must not be empty");
            break;
        }
        if (ds4_tokenizer_encode(rt->tok, rt->scratch, req->prompt_text, strlen(req->prompt_text),
                                 &ids, &n_ids, NULL, &d) != DS4_OK)
            break;
        if (n_ids == 0)
            ds4_diag_addf(&d, "prompt_text", "tokenizes to no tokens");
        break;
    case DS4__V1__GENERATE_REQUEST__PROMPT_CHAT:
        if (req->chat->n_messages == 0) {
            ds4_diag_addf(&d, "chat.messages", "must not be empty");
            break;
        }
        encode_chat(rt, req->chat, req->reasoning, &ids, &n_ids, &thinking, &d);
        break;
    default:
        ds4_diag_addf(&d, "prompt", "one of prompt_ids, prompt_text or chat is required");
        break;
    }
    if (d.count == 0 && req->prompt_case != DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS) {
        for (size_t i = 0; i < n_ids; i++)
            if ((uint32_t)ids[i] >= n_vocab) {
                ds4_diag_addf(&d,
                              req->prompt_case == DS4__V1__GENERATE_REQUEST__PROMPT_CHAT
                                  ? "chat"
                                  : "prompt_text",
                              "tokenizes to id %d at [%zu], outside the model's vocabulary of %u",
                              ids[i], i, n_vocab);
                break;
            }
    }
    if (d.count == 0 && req->sampling != NULL) {
        uint32_t ctx = router_max_context(rt);
        uint64_t need = (uint64_t)n_ids + req->sampling->max_tokens;
        if (ctx != 0 && n_ids > ctx)
            ds4_diag_addf(&d, "prompt", "%zu tokens, longer than the context length %u", n_ids,
                          ctx);
        else if (ctx != 0 && need > ctx)
            ds4_diag_addf(&d, "sampling.max_tokens",
                          "prompt %zu tokens + max_tokens %u exceed "
                          "the context length %u",
                          n_ids, req->sampling->max_tokens, ctx);
    }
    if (d.count != 0 || d.oom) {
        join_diag(&d, msg, msg_len);
        ds4_diag_free(&d);
        ds4_free(ids);
        return code;
    }
    ds4_diag_free(&d);
    out->ids = ids;
    out->n_ids = n_ids;
    out->thinking = thinking;
    return DS4_RPC_OK;
}

ds4_rpc_code_t router_tokenize(router_t *rt, const Ds4__V1__TokenizeRequest *req, int32_t **ids,
                               size_t *n_ids, char *msg, size_t msg_len)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    bool thinking = false;
    ds4_status_t st = DS4_ERR_BAD_REQUEST;
    if (req->model[0] != '\0' && strcmp(req->model, rt->opt.model) != 0)
        ds4_diag_addf(&d, "model", "unknown model \"%s\" (this cluster serves \"%s\")", req->model,
                      rt->opt.model);
    else if (req->input_case == DS4__V1__TOKENIZE_REQUEST__INPUT_TEXT)
        st = ds4_tokenizer_encode(rt->tok, rt->scratch, req->text, strlen(req->text), ids, n_ids,
                                  NULL, &d);
    else if (req->input_case == DS4__V1__TOKENIZE_REQUEST__INPUT_CHAT)
        st = encode_chat(rt, req->chat, req->reasoning, ids, n_ids, &thinking, &d);
    else
        ds4_diag_addf(&d, "input", "one of text or chat is required");
    if (st != DS4_OK) {
        join_diag(&d, msg, msg_len);
        ds4_diag_free(&d);
        return st == DS4_ERR_NO_MEMORY ? DS4_RPC_RESOURCE_EXHAUSTED : DS4_RPC_INVALID_ARGUMENT;
    }
    ds4_diag_free(&d);
    return DS4_RPC_OK;
}
