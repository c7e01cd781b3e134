/* Anthropic-compatible /v1/messages: system + text (and thinking) content blocks in, a message
 * with thinking / text blocks out, or the SSE sequence message_start, content_block_start,
 * content_block_delta..., content_block_stop, message_delta, message_stop. */
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/chat.h"
#include "ds4/json.h"
#include "http-api.h"

enum { BLOCK_NONE = 0, BLOCK_THINKING = 1, BLOCK_TEXT = 2 };

/* A string, or text blocks joined with "\n"; thinking blocks go to *thinking when allowed. */
static json_t *blocks_text(const json_t *content, const char *path, bool allow_thinking,
                           api_buf_t *thinking, ds4_diag_t *d)
{
    if (json_is_string(content))
        return json_incref((json_t *)content);
    if (!json_is_array(content)) {
        ds4_diag_addf(d, path, "expected a string or an array of content blocks, got %s",
                      ds4_json_type_name(content));
        return NULL;
    }
    api_buf_t b = {0};
    size_t i, n_text = 0;
    const json_t *blk;
    bool ok = true;
    json_array_foreach(content, i, blk)
    {
        char p[128];
        ds4_json_path_index(p, sizeof(p), path, i);
        const json_t *type = json_object_get(blk, "type");
        const char *t = json_is_string(type) ? json_string_value(type) : NULL;
        if (!json_is_object(blk) || t == NULL) {
            ds4_diag_addf(d, p, "expected a content block {\"type\": ...}");
            ok = false;
        } else if (strcmp(t, "text") == 0) {
            const json_t *text = json_object_get(blk, "text");
            char pp[160];
            if (!json_is_string(text)) {
                ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "text"), "expected a string");
                ok = false;
            } else if ((n_text++ > 0 && !api_buf_put(&b, "\n", 1)) ||
                       !api_buf_put(&b, json_string_value(text), json_string_length(text))) {
                ok = false;
            }
        } else if (strcmp(t, "thinking") == 0 && allow_thinking) {
            const json_t *th = json_object_get(blk, "thinking");
            if (json_is_string(th))
                api_buf_put(thinking, json_string_value(th), json_string_length(th));
        } else if (strcmp(t, "redacted_thinking") == 0 && allow_thinking) {
            /* opaque to this model: dropped */
        } else {
            ds4_diag_addf(d, p, "block type \"%s\" is not supported (text%s only)", t,
                          allow_thinking ? " and thinking" : "");
            ok = false;
        }
    }
    json_t *s = ok ? json_stringn(b.p != NULL ? b.p : "", b.len) : NULL;
    ds4_free(b.p);
    return s;
}

void anthropic_parse(api_req_t *a, const json_t *body, ds4_diag_t *d)
{
    bool b;
    a->chat_mode = DS4_CHAT_MODE_CHAT; /* Anthropic: thinking only when asked for */
    if (api_present(body, "stream") != NULL && ds4_json_get_bool(body, "", "stream", false, &b, d))
        a->stream = b;
    api_parse_sampling(a, body, true, d);
    const json_t *th = api_present(body, "thinking");
    if (th != NULL) {
        const json_t *type = json_is_object(th) ? json_object_get(th, "type") : NULL;
        const char *t = json_is_string(type) ? json_string_value(type) : "";
        if (strcmp(t, "enabled") == 0)
            a->chat_mode = DS4_CHAT_MODE_THINKING;
        else if (strcmp(t, "disabled") != 0)
            ds4_diag_addf(d, "thinking", "expected {\"type\": \"enabled\" | \"disabled\"}");
    }
    const json_t *tools = api_present(body, "tools");
    if (tools != NULL && !(json_is_array(tools) && json_array_size(tools) == 0))
        ds4_diag_addf(d, "tools",
                      "tools are not supported on /v1/messages (use "
                      "/v1/chat/completions)");
    json_t *out = json_array();
    if (out == NULL) {
        ds4_diag_addf(d, "messages", "out of memory");
        return;
    }
    a->chat_messages = out;
    const json_t *sys = api_present(body, "system");
    if (sys != NULL) {
        json_t *text = blocks_text(sys, "system", false, NULL, d);
        if (text != NULL)
            json_array_append_new(out, json_pack("{s:s, s:o}", "role", "system", "content", text));
    }
    const json_t *msgs = api_present(body, "messages");
    if (msgs == NULL) {
        ds4_diag_addf(d, "messages", "required");
        return;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        ds4_diag_addf(d, "messages", "expected a non-empty array of messages");
        return;
    }
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m)
    {
        char p[64], pp[96];
        ds4_json_path_index(p, sizeof(p), "messages", i);
        const json_t *role = json_is_object(m) ? json_object_get(m, "role") : NULL;
        const char *r = json_is_string(role) ? json_string_value(role) : "";
        if (strcmp(r, "user") != 0 && strcmp(r, "assistant") != 0) {
            ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "role"),
                          "expected \"user\" or \"assistant\"");
            continue;
        }
        const json_t *content = json_object_get(m, "content");
        if (content == NULL) {
            ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "content"), "required");
            continue;
        }
        bool assistant = strcmp(r, "assistant") == 0;
        api_buf_t thinking = {0};
        json_t *text = blocks_text(content, ds4_json_path(pp, sizeof(pp), p, "content"), assistant,
                                   &thinking, d);
        if (text != NULL) {
            json_t *o = json_pack("{s:s, s:o}", "role", r, "content", text);
            if (thinking.len > 0)
                json_object_set_new(o, "reasoning_content", json_stringn(thinking.p, thinking.len));
            json_array_append_new(out, o);
        }
        ds4_free(thinking.p);
    }
    if (d->count == 0)
        api_encode_chat(a, d);
}

/* stop_reason and the matched stop sequence (NULL when none). */
static const char *stop_reason(api_req_t *a, const char **seq)
{
    *seq = NULL;
    if (a->finish == DS4__V1__FINISH_REASON__FINISH_REASON_LENGTH)
        return "max_tokens";
    if (a->sp.n_stop == 0 || (int32_t)a->last_token == a->rt->eos_id)
        return "end_turn";
    for (size_t i = 0; i < a->sp.n_stop_token_ids; i++)
        if (a->sp.stop_token_ids[i] == a->last_token)
            return "end_turn";
    /* a stop string cut the text: it starts where the sent text ends */
    char *full = NULL;
    size_t len = 0;
    size_t n = a->all_ids.len / sizeof(uint32_t);
    if (ds4_tokenizer_decode(a->rt->tok, (const int32_t *)(const void *)a->all_ids.p, n, true,
                             &full, &len, NULL) != DS4_OK)
        return "end_turn";
    for (size_t i = 0; i < a->sp.n_stop && *seq == NULL; i++) {
        size_t sl = strlen(a->sp.stop[i]);
        if (a->emitted + sl <= len && memcmp(full + a->emitted, a->sp.stop[i], sl) == 0)
            *seq = a->sp.stop[i];
    }
    ds4_free(full);
    return *seq != NULL ? "stop_sequence" : "end_turn";
}

static void close_block(api_req_t *a)
{
    if (a->block == BLOCK_NONE)
        return;
    api_sse(a, "content_block_stop",
            json_pack("{s:s, s:i}", "type", "content_block_stop", "index", a->block_index));
    a->block = BLOCK_NONE;
    a->block_index++;
}

static void message_start(api_req_t *a)
{
    if (a->sent_role)
        return;
    a->sent_role = true;
    api_sse(a, "message_start",
            json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:{s:I, s:i}}}", "type",
                      "message_start", "message", "id", a->id, "type", "message", "role",
                      "assistant", "model", a->rt->opt.model, "content", "stop_reason",
                      "stop_sequence", "usage", "input_tokens", (json_int_t)a->prompt_tokens,
                      "output_tokens", 0));
}

void anthropic_on_message(api_req_t *a, const Ds4__V1__GenerateResponse *resp)
{
    bool reasoning = resp->channel == DS4__V1__CHANNEL__CHANNEL_REASONING;
    const char *text = resp->text_delta != NULL ? resp->text_delta : "";
    size_t len = strlen(text);
    if (!a->stream) {
        api_buf_put(reasoning ? &a->reasoning : &a->content, text, len);
        return;
    }
    message_start(a);
    if (len == 0)
        return;
    int want = reasoning ? BLOCK_THINKING : BLOCK_TEXT;
    if (a->block != want) {
        close_block(a);
        a->block = want;
        api_sse(a, "content_block_start",
                json_pack("{s:s, s:i, s:o}", "type", "content_block_start", "index", a->block_index,
                          "content_block",
                          reasoning ? json_pack("{s:s, s:s, s:s}", "type", "thinking", "thinking",
                                                "", "signature", "")
                                    : json_pack("{s:s, s:s}", "type", "text", "text", "")));
    }
    api_sse(a, "content_block_delta",
            json_pack("{s:s, s:i, s:{s:s, s:o}}", "type", "content_block_delta", "index",
                      a->block_index, "delta", "type", reasoning ? "thinking_delta" : "text_delta",
                      reasoning ? "thinking" : "text", json_stringn(text, len)));
}

void anthropic_on_done(api_req_t *a)
{
    const char *seq = NULL;
    const char *reason = stop_reason(a, &seq);
    if (a->stream) {
        message_start(a);
        close_block(a);
        api_sse(a, "message_delta",
                json_pack("{s:s, s:{s:s, s:s?}, s:{s:I}}", "type", "message_delta", "delta",
                          "stop_reason", reason, "stop_sequence", seq, "usage", "output_tokens",
                          (json_int_t)a->completion_tokens));
        api_sse(a, "message_stop", json_pack("{s:s}", "type", "message_stop"));
        return; /* sink_finish ends the stream */
    }
    json_t *content = json_array();
    if (a->chat_mode == DS4_CHAT_MODE_THINKING)
        json_array_append_new(
            content,
            json_pack("{s:s, s:o, s:s}", "type", "thinking", "thinking",
                      json_stringn(a->reasoning.p != NULL ? a->reasoning.p : "", a->reasoning.len),
                      "signature", ""));
    json_array_append_new(
        content, json_pack("{s:s, s:o}", "type", "text", "text",
                           json_stringn(a->content.p != NULL ? a->content.p : "", a->content.len)));
    json_t *obj =
        json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:s?, s:{s:I, s:I}}", "id", a->id, "type",
                  "message", "role", "assistant", "model", a->rt->opt.model, "content", content,
                  "stop_reason", reason, "stop_sequence", seq, "usage", "input_tokens",
                  (json_int_t)a->prompt_tokens, "output_tokens", (json_int_t)a->completion_tokens);
    api_respond_json(a, 200, obj);
}
