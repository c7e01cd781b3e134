/* OpenAI-compatible /v1/chat/completions and /v1/completions: request fields → GenerateRequest,
 * the token stream → chat.completion(.chunk) / text_completion objects. */
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/chat.h"
#include "ds4/json.h"
#include "http-api.h"
#include "openai-tools.h"

/* Content parts [{type: "text", text}] → one string ("\n" between parts, as vLLM joins them). */
static json_t *join_text_parts(const json_t *parts, const char *path, ds4_diag_t *d)
{
    ds4_buf_t b = {0};
    size_t i;
    const json_t *part;
    bool ok = true;
    json_array_foreach(parts, i, part)
    {
        char p[128];
        ds4_json_path_index(p, sizeof(p), path, i);
        const json_t *type = json_object_get(part, "type");
        const json_t *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type)) {
            ds4_diag_addf(d, p, "expected a content part {\"type\": \"text\", \"text\": string}");
            ok = false;
            continue;
        }
        if (strcmp(json_string_value(type), "text") != 0) {
            ds4_diag_addf(d, p, "part type \"%s\" is not supported (text only)",
                          json_string_value(type));
            ok = false;
            continue;
        }
        if (!json_is_string(text)) {
            char pp[160];
            ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "text"), "expected a string");
            ok = false;
            continue;
        }
        if ((i > 0 && !ds4_buf_put(&b, "\n", 1)) ||
            !ds4_buf_put(&b, json_string_value(text), json_string_length(text)))
            ok = false;
    }
    json_t *s = ok ? json_stringn(b.p != NULL ? b.p : "", b.len) : NULL;
    ds4_buf_free(&b);
    return s;
}

/* OpenAI messages → the chat encoder's messages: text parts joined, tools (and a
 * response_format) attached to the first system message (one is added when there is none). */
static void parse_messages(api_req_t *a, const json_t *body, ds4_diag_t *d)
{
    const json_t *msgs = api_present(body, "messages");
    if (msgs == NULL) {
        ds4_diag_addf(d, "messages", "required");
        return;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        ds4_diag_addf(d, "messages", "expected a non-empty array of messages");
        return;
    }
    json_t *out = json_array();
    if (out == NULL) {
        ds4_diag_addf(d, "messages", "out of memory");
        return;
    }
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m)
    {
        char p[64];
        ds4_json_path_index(p, sizeof(p), "messages", i);
        if (!json_is_object(m)) {
            ds4_diag_addf(d, p, "expected an object, got %s", ds4_json_type_name(m));
            continue;
        }
        json_t *c = json_copy((json_t *)m);
        const json_t *content = json_object_get(m, "content");
        const json_t *role = json_object_get(m, "role");
        bool tool = json_is_string(role) && strcmp(json_string_value(role), "tool") == 0;
        if (json_is_array(content) && !tool) {
            char pc[96];
            json_t *joined =
                join_text_parts(content, ds4_json_path(pc, sizeof(pc), p, "content"), d);
            if (joined != NULL)
                json_object_set_new(c, "content", joined);
        } else if (json_is_null(content) && !tool) {
            json_object_set_new(c, "content", json_string("")); /* assistant with tool_calls */
        }
        json_array_append_new(out, c);
    }
    a->chat_messages = out;
    /* tools */
    const json_t *tools = api_present(body, "tools");
    const json_t *tc = api_present(body, "tool_choice");
    const json_t *rf = api_present(body, "response_format");
    if (tools != NULL && !json_is_array(tools))
        ds4_diag_addf(d, "tools", "expected an array, got %s", ds4_json_type_name(tools));
    if (tc != NULL && !(json_is_string(tc) && (strcmp(json_string_value(tc), "auto") == 0 ||
                                               strcmp(json_string_value(tc), "none") == 0)))
        ds4_diag_addf(d, "tool_choice", "only \"auto\" and \"none\" are supported");
    if (tc != NULL && json_is_string(tc) && strcmp(json_string_value(tc), "none") == 0)
        tools = NULL;
    if (rf != NULL) {
        const json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(t))
            ds4_diag_addf(d, "response_format", "expected {\"type\": ...}");
        else if (strcmp(json_string_value(t), "text") == 0)
            rf = NULL;
    }
    if ((tools == NULL || json_array_size(tools) == 0) && rf == NULL)
        return;
    json_t *sys = NULL;
    json_array_foreach(out, i, m)
    {
        const json_t *role = json_object_get(m, "role");
        if (json_is_string(role) && strcmp(json_string_value(role), "system") == 0) {
            sys = (json_t *)m;
            break;
        }
    }
    if (sys == NULL) {
        sys = json_pack("{s:s, s:s}", "role", "system", "content", "");
        json_array_insert_new(out, 0, sys);
    }
    if (sys != NULL && tools != NULL && json_is_array(tools) && json_array_size(tools) > 0) {
        json_object_set(sys, "tools", (json_t *)tools);
        a->tools = true;
    }
    if (sys != NULL && rf != NULL)
        json_object_set(sys, "response_format", (json_t *)rf);
}

/* prompt: a string, or an array of token ids (a one-element array of either also works). */
static void parse_prompt(api_req_t *a, const json_t *body, ds4_diag_t *d)
{
    const json_t *p = api_present(body, "prompt");
    if (p == NULL) {
        ds4_diag_addf(d, "prompt", "required");
        return;
    }
    if (json_is_array(p) && json_array_size(p) == 1 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0); /* a batch of one */
    if (json_is_string(p)) {
        if (json_string_length(p) == 0) {
            ds4_diag_addf(d, "prompt", "must not be empty");
            return;
        }
        if (strlen(json_string_value(p)) != json_string_length(p)) {
            ds4_diag_addf(d, "prompt", "must not contain a NUL character");
            return;
        }
        a->greq.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_TEXT;
        a->greq.prompt_text = (char *)json_string_value(p);
        return;
    }
    if (!json_is_array(p)) {
        ds4_diag_addf(d, "prompt", "expected a string or an array of token ids, got %s",
                      ds4_json_type_name(p));
        return;
    }
    size_t n = json_array_size(p);
    if (n == 0) {
        ds4_diag_addf(d, "prompt", "must not be empty");
        return;
    }
    a->prompt_id_buf = ds4_calloc(n, sizeof(*a->prompt_id_buf));
    if (a->prompt_id_buf == NULL) {
        ds4_diag_addf(d, "prompt", "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(p, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (json_int_t)UINT32_MAX) {
            char pp[64];
            ds4_diag_addf(d, ds4_json_path_index(pp, sizeof(pp), "prompt", i),
                          json_is_array(v) || json_is_string(v)
                              ? "only one prompt per request is supported"
                              : "expected a token id (a non-negative integer)");
            return;
        }
        a->prompt_id_buf[i] = (uint32_t)json_integer_value(v);
    }
    a->prompt_ids.ids = a->prompt_id_buf;
    a->prompt_ids.n_ids = n;
    a->greq.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS;
    a->greq.prompt_ids = &a->prompt_ids;
}

void openai_parse(api_req_t *a, const json_t *body, ds4_diag_t *d)
{
    router_t *rt = a->rt;
    bool chat = a->kind == API_CHAT;
    int64_t i64;
    bool b;
    if (api_present(body, "stream") != NULL && ds4_json_get_bool(body, "", "stream", false, &b, d))
        a->stream = b;
    api_parse_sampling(a, body, false, d);
    uint32_t max_top = rt->opt.max_logprobs > 0 ? rt->opt.max_logprobs - 1 : 0;
    if (chat) {
        if (api_present(body, "logprobs") != NULL &&
            ds4_json_get_bool(body, "", "logprobs", false, &b, d))
            a->want_logprobs = b;
        if (api_present(body, "top_logprobs") != NULL &&
            ds4_json_get_i64(body, "", "top_logprobs", false, 0, max_top, &i64, d))
            a->top_logprobs = (uint32_t)i64;
        api_parse_reasoning(a, body, d);
        parse_messages(a, body, d);
        if (d->count == 0)
            api_encode_chat(a, d);
    } else {
        if (api_present(body, "logprobs") != NULL &&
            ds4_json_get_i64(body, "", "logprobs", false, 0, max_top, &i64, d)) {
            a->want_logprobs = true;
            a->top_logprobs = (uint32_t)i64;
        }
        if (api_present(body, "echo") != NULL &&
            ds4_json_get_bool(body, "", "echo", false, &b, d) && b)
            ds4_diag_addf(d, "echo", "echo is not supported");
        const json_t *suffix = api_present(body, "suffix");
        if (suffix != NULL && !(json_is_string(suffix) && json_string_length(suffix) == 0))
            ds4_diag_addf(d, "suffix", "suffix is not supported");
        if (api_present(body, "best_of") != NULL &&
            ds4_json_get_i64(body, "", "best_of", false, INT64_MIN, INT64_MAX, &i64, d) && i64 != 1)
            ds4_diag_addf(d, "best_of", "only best_of = 1 is supported");
        parse_prompt(a, body, d);
    }
}

static const char *finish_name(Ds4__V1__FinishReason f)
{
    switch (f) {
    case DS4__V1__FINISH_REASON__FINISH_REASON_LENGTH:
        return "length";
    case DS4__V1__FINISH_REASON__FINISH_REASON_CANCELLED:
        return "cancelled";
    default:
        return "stop";
    }
}

static json_t *bytes_of(const char *s)
{
    json_t *arr = json_array();
    for (const unsigned char *p = (const unsigned char *)s; arr != NULL && *p != '\0'; p++)
        json_array_append_new(arr, json_integer(*p));
    return arr;
}

/* Chat logprob entry {token, logprob, bytes, top_logprobs} of one token. */
static json_t *chat_lp(api_req_t *a, const Ds4__V1__TokenLogprob *lp)
{
    char *t = api_token_text(a->rt, lp->token_id);
    json_t *top = json_array();
    for (size_t i = 0; i < lp->n_top && top != NULL; i++) {
        char *tt = api_token_text(a->rt, lp->top[i]->token_id);
        json_array_append_new(top, json_pack("{s:s, s:f, s:o}", "token", tt != NULL ? tt : "",
                                             "logprob", (double)lp->top[i]->logprob, "bytes",
                                             bytes_of(tt != NULL ? tt : "")));
        ds4_free(tt);
    }
    json_t *e =
        json_pack("{s:s, s:f, s:o, s:o}", "token", t != NULL ? t : "", "logprob",
                  (double)lp->logprob, "bytes", bytes_of(t != NULL ? t : ""), "top_logprobs", top);
    ds4_free(t);
    return e;
}

/* Completion logprobs {tokens, token_logprobs, top_logprobs, text_offset} of a message. */
static json_t *completion_lp_new(void)
{
    return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

static void completion_lp_add(api_req_t *a, json_t *obj, const Ds4__V1__TokenLogprob *lp)
{
    char *t = api_token_text(a->rt, lp->token_id);
    json_t *top = json_object();
    for (size_t i = 0; i < lp->n_top && top != NULL; i++) {
        char *tt = api_token_text(a->rt, lp->top[i]->token_id);
        json_object_set_new(top, tt != NULL ? tt : "", json_real((double)lp->top[i]->logprob));
        ds4_free(tt);
    }
    json_array_append_new(json_object_get(obj, "tokens"), json_string(t != NULL ? t : ""));
    json_array_append_new(json_object_get(obj, "token_logprobs"), json_real((double)lp->logprob));
    json_array_append_new(json_object_get(obj, "top_logprobs"), top);
    json_array_append_new(json_object_get(obj, "text_offset"),
                          json_integer((json_int_t)a->text_offset));
    a->text_offset += t != NULL ? strlen(t) : 0;
    ds4_free(t);
}

static json_t *chunk_head(api_req_t *a)
{
    return json_pack("{s:s, s:s, s:I, s:s}", "id", a->id, "object",
                     a->kind == API_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)a->created, "model", a->rt->opt.model);
}

static json_t *usage_object(api_req_t *a)
{
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)a->prompt_tokens,
                     "completion_tokens", (json_int_t)a->completion_tokens, "total_tokens",
                     (json_int_t)a->prompt_tokens + a->completion_tokens,
                     "completion_tokens_details", "reasoning_tokens",
                     (json_int_t)a->reasoning_tokens);
}

static json_t *ids_of(const Ds4__V1__GenerateResponse *resp)
{
    json_t *ids = json_array();
    for (size_t i = 0; i < resp->n_token_ids && ids != NULL; i++)
        json_array_append_new(ids, json_integer(resp->token_ids[i]));
    return ids;
}

void openai_on_message(api_req_t *a, const Ds4__V1__GenerateResponse *resp)
{
    bool reasoning = resp->channel == DS4__V1__CHANNEL__CHANNEL_REASONING;
    const char *text = resp->text_delta != NULL ? resp->text_delta : "";
    size_t text_len = strlen(text);
    bool lps = a->want_logprobs && resp->n_logprobs > 0;
    if (!a->stream) {
        if (a->kind == API_CHAT && reasoning)
            ds4_buf_put(&a->reasoning, text, text_len);
        else
            ds4_buf_put(&a->content, text, text_len);
        for (size_t i = 0; i < resp->n_token_ids && a->token_ids != NULL; i++)
            json_array_append_new(a->token_ids, json_integer(resp->token_ids[i]));
        if (lps && a->lp == NULL)
            a->lp = a->kind == API_CHAT ? json_array() : completion_lp_new();
        for (size_t i = 0; lps && i < resp->n_logprobs && a->lp != NULL; i++) {
            if (a->kind == API_CHAT && !reasoning)
                json_array_append_new(a->lp, chat_lp(a, resp->logprobs[i]));
            else if (a->kind == API_COMPLETION)
                completion_lp_add(a, a->lp, resp->logprobs[i]);
        }
        return;
    }
    if (a->tools && !reasoning) {
        /* the answer may be a tool call: held back until it can be parsed whole */
        ds4_buf_put(&a->content, text, text_len);
        return;
    }
    /* streaming: one chunk per message that carries text (or ids / logprobs asked for) */
    if (text_len == 0 && !(a->return_token_ids && resp->n_token_ids > 0) && !lps)
        return;
    json_t *chunk = chunk_head(a);
    json_t *choice = json_pack("{s:i, s:n}", "index", 0, "finish_reason");
    if (a->kind == API_CHAT) {
        json_t *delta = json_object();
        if (!a->sent_role) {
            json_object_set_new(delta, "role", json_string("assistant"));
            a->sent_role = true;
        }
        json_object_set_new(delta, reasoning ? "reasoning_content" : "content",
                            json_stringn(text, text_len));
        json_object_set_new(choice, "delta", delta);
        if (lps && !reasoning) {
            json_t *content = json_array();
            for (size_t i = 0; i < resp->n_logprobs; i++)
                json_array_append_new(content, chat_lp(a, resp->logprobs[i]));
            json_object_set_new(choice, "logprobs", json_pack("{s:o}", "content", content));
        } else {
            json_object_set_new(choice, "logprobs", json_null());
        }
    } else {
        json_object_set_new(choice, "text", json_stringn(text, text_len));
        json_t *lp = NULL;
        if (lps) {
            lp = completion_lp_new();
            for (size_t i = 0; i < resp->n_logprobs; i++)
                completion_lp_add(a, lp, resp->logprobs[i]);
        }
        json_object_set_new(choice, "logprobs", lp != NULL ? lp : json_null());
    }
    if (a->return_token_ids)
        json_object_set_new(choice, "token_ids", ids_of(resp));
    json_object_set_new(chunk, "choices", json_pack("[o]", choice));
    api_sse(a, NULL, chunk);
}

void openai_on_done(api_req_t *a)
{
    const char *finish = finish_name(a->finish);
    json_t *tm = a->tools ? api_tool_message(a) : NULL;
    if (tm != NULL)
        finish = "tool_calls";
    if (a->stream && a->tools) {
        /* the held-back answer: its text, then its tool calls */
        const char *text = tm != NULL ? json_string_value(json_object_get(tm, "content"))
                                      : (a->content.p != NULL ? a->content.p : "");
        json_t *deltas[2] = {NULL, NULL};
        if (text != NULL && text[0] != '\0')
            deltas[0] = json_pack("{s:s}", "content", text);
        if (tm != NULL)
            deltas[1] = json_pack("{s:O}", "tool_calls", json_object_get(tm, "tool_calls"));
        for (int i = 0; i < 2; i++) {
            if (deltas[i] == NULL)
                continue;
            if (!a->sent_role) {
                json_object_set_new(deltas[i], "role", json_string("assistant"));
                a->sent_role = true;
            }
            json_t *chunk = chunk_head(a);
            json_object_set_new(chunk, "choices",
                                json_pack("[{s:i, s:o, s:n, s:n}]", "index", 0, "delta", deltas[i],
                                          "logprobs", "finish_reason"));
            api_sse(a, NULL, chunk);
        }
    }
    if (a->stream) {
        json_t *chunk = chunk_head(a);
        json_t *choice =
            json_pack("{s:i, s:s, s:n}", "index", 0, "finish_reason", finish, "logprobs");
        if (a->kind == API_CHAT)
            json_object_set_new(choice, "delta",
                                a->sent_role
                                    ? json_object()
                                    : json_pack("{s:s, s:s}", "role", "assistant", "content", ""));
        else
            json_object_set_new(choice, "text", json_string(""));
        json_object_set_new(chunk, "choices", json_pack("[o]", choice));
        if (a->include_usage)
            json_object_set_new(chunk, "usage", json_null());
        api_sse(a, NULL, chunk);
        if (a->include_usage) {
            json_t *u = chunk_head(a);
            json_object_set_new(u, "choices", json_array());
            json_object_set_new(u, "usage", usage_object(a));
            api_sse(a, NULL, u);
        }
        api_sse_raw(a, "[DONE]");
        json_decref(tm);
        return; /* sink_finish ends the stream */
    }
    json_t *choice = json_pack("{s:i, s:s}", "index", 0, "finish_reason", finish);
    if (a->kind == API_CHAT) {
        json_t *msg =
            json_pack("{s:s, s:o}", "role", "assistant", "content",
                      json_stringn(a->content.p != NULL ? a->content.p : "", a->content.len));
        if (a->chat_mode == DS4_CHAT_MODE_THINKING)
            json_object_set_new(
                msg, "reasoning_content",
                json_stringn(a->reasoning.p != NULL ? a->reasoning.p : "", a->reasoning.len));
        if (tm != NULL) { /* the parsed text replaces the plain one */
            json_object_set(msg, "content", json_object_get(tm, "content"));
            if (a->chat_mode == DS4_CHAT_MODE_THINKING)
                json_object_set(msg, "reasoning_content", json_object_get(tm, "reasoning_content"));
            size_t i;
            json_t *c;
            json_array_foreach(json_object_get(tm, "tool_calls"), i, c) json_object_del(c, "index");
            json_object_set(msg, "tool_calls", json_object_get(tm, "tool_calls"));
        }
        json_object_set_new(choice, "message", msg);
        json_object_set_new(
            choice, "logprobs",
            a->want_logprobs
                ? json_pack("{s:o}", "content", a->lp != NULL ? json_incref(a->lp) : json_array())
                : json_null());
    } else {
        json_object_set_new(choice, "text",
                            json_stringn(a->content.p != NULL ? a->content.p : "", a->content.len));
        json_object_set_new(choice, "logprobs",
                            a->want_logprobs ? json_incref(a->lp != NULL ? a->lp : json_null())
                                             : json_null());
    }
    if (a->token_ids != NULL)
        json_object_set(choice, "token_ids", a->token_ids);
    json_t *obj = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", a->id, "object",
                            a->kind == API_CHAT ? "chat.completion" : "text_completion", "created",
                            (json_int_t)a->created, "model", a->rt->opt.model, "choices", choice,
                            "usage", usage_object(a));
    json_decref(tm);
    api_respond_json(a, 200, obj);
}
