/* Anthropic-compatible /v1/messages: system, text / thinking / tool_use / tool_result content
 * blocks and tools in (converted to the V4 chat encoder's messages); a message with thinking,
 * text and tool_use blocks out, or the SSE sequence message_start, content_block_start,
 * content_block_delta..., content_block_stop, message_delta, message_stop. */
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/chat.h"
#include "ds4/json.h"
#include "http-api.h"

enum { BLOCK_NONE = 0, BLOCK_THINKING = 1, BLOCK_TEXT = 2 };

/* One message's content blocks, sorted into what the chat encoder takes. */
typedef struct blocks {
    ds4_buf_t text, thinking;
    size_t n_text;
    json_t *calls;   /* assistant tool_use → OpenAI tool_calls */
    json_t *results; /* user tool_result → tool messages */
} blocks_t;

static void blocks_free(blocks_t *b)
{
    ds4_buf_free(&b->text);
    ds4_buf_free(&b->thinking);
    json_decref(b->calls);
    json_decref(b->results);
}

static void put_text(blocks_t *b, const char *s, size_t n)
{
    if (b->n_text++ > 0)
        ds4_buf_put(&b->text, "\n", 1);
    ds4_buf_put(&b->text, s, n);
}

/* Text of a tool_result's content: a string or text blocks. */
static json_t *result_text(const json_t *c, const char *path, ds4_diag_t *d)
{
    if (c == NULL || json_is_string(c))
        return json_string(c != NULL ? json_string_value(c) : "");
    if (!json_is_array(c)) {
        ds4_diag_addf(d, path, "expected a string or text blocks");
        return NULL;
    }
    ds4_buf_t t = {0};
    size_t i;
    const json_t *blk;
    json_array_foreach(c, i, blk)
    {
        const json_t *type = json_object_get(blk, "type");
        const json_t *text = json_object_get(blk, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            char p[160];
            ds4_diag_addf(d, ds4_json_path_index(p, sizeof(p), path, i),
                          "expected a text block {\"type\": \"text\", \"text\": string}");
            ds4_buf_free(&t);
            return NULL;
        }
        if (i > 0)
            ds4_buf_put(&t, "\n", 1);
        ds4_buf_put(&t, json_string_value(text), json_string_length(text));
    }
    json_t *s = t.oom ? NULL : json_stringn(t.p != NULL ? t.p : "", t.len);
    ds4_buf_free(&t);
    if (s == NULL)
        ds4_diag_addf(d, path, "out of memory");
    return s;
}

static void add_tool_use(blocks_t *b, const json_t *blk, const char *p, ds4_diag_t *d)
{
    char pp[160];
    const json_t *id = json_object_get(blk, "id"), *name = json_object_get(blk, "name");
    const json_t *input = json_object_get(blk, "input");
    if (!json_is_string(name)) {
        ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "name"), "expected a string");
        return;
    }
    if (input != NULL && !json_is_object(input)) {
        ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "input"), "expected an object");
        return;
    }
    if (b->calls == NULL)
        b->calls = json_array();
    json_t *call =
        json_pack("{s:s, s:{s:O, s:o}}", "type", "function", "function", "name", name, "arguments",
                  input != NULL ? json_incref((json_t *)input) : json_object());
    if (json_is_string(id))
        json_object_set(call, "id", (json_t *)id);
    json_array_append_new(b->calls, call);
}

static void add_tool_result(blocks_t *b, const json_t *blk, const char *p, ds4_diag_t *d)
{
    char pp[160];
    const json_t *id = json_object_get(blk, "tool_use_id");
    json_t *text = result_text(json_object_get(blk, "content"),
                               ds4_json_path(pp, sizeof(pp), p, "content"), d);
    if (text == NULL)
        return;
    if (b->results == NULL)
        b->results = json_array();
    json_t *m = json_pack("{s:s, s:o}", "role", "tool", "content", text);
    if (json_is_string(id))
        json_object_set(m, "tool_call_id", (json_t *)id);
    json_array_append_new(b->results, m);
}

/* A string, or blocks: text (both roles), thinking / redacted_thinking / tool_use (assistant),
 * tool_result (user). False when a block was refused (the problem is in d). */
static bool read_blocks(const json_t *content, const char *path, bool assistant, blocks_t *b,
                        ds4_diag_t *d)
{
    if (json_is_string(content)) {
        put_text(b, json_string_value(content), json_string_length(content));
        return true;
    }
    if (!json_is_array(content)) {
        ds4_diag_addf(d, path, "expected a string or an array of content blocks, got %s",
                      ds4_json_type_name(content));
        return false;
    }
    size_t before = d->count, i;
    const json_t *blk;
    json_array_foreach(content, i, blk)
    {
        char p[128], pp[160];
        ds4_json_path_index(p, sizeof(p), path, i);
        const json_t *type = json_object_get(blk, "type");
        const char *t = json_is_string(type) ? json_string_value(type) : NULL;
        if (!json_is_object(blk) || t == NULL) {
            ds4_diag_addf(d, p, "expected a content block {\"type\": ...}");
        } else if (strcmp(t, "text") == 0) {
            const json_t *text = json_object_get(blk, "text");
            if (!json_is_string(text))
                ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "text"), "expected a string");
            else
                put_text(b, json_string_value(text), json_string_length(text));
        } else if (strcmp(t, "thinking") == 0 && assistant) {
            const json_t *th = json_object_get(blk, "thinking");
            if (json_is_string(th))
                ds4_buf_put(&b->thinking, json_string_value(th), json_string_length(th));
        } else if (strcmp(t, "redacted_thinking") == 0 && assistant) {
            /* opaque to this model: dropped */
        } else if (strcmp(t, "tool_use") == 0 && assistant) {
            add_tool_use(b, blk, p, d);
        } else if (strcmp(t, "tool_result") == 0 && !assistant) {
            add_tool_result(b, blk, p, d);
        } else {
            ds4_diag_addf(d, p, "block type \"%s\" is not supported in a%s message", t,
                          assistant ? "n assistant" : " user");
        }
    }
    return d->count == before;
}

/* Anthropic tools [{name, description, input_schema}] → OpenAI function tools. */
static json_t *convert_tools(const json_t *tools, ds4_diag_t *d)
{
    if (!json_is_array(tools)) {
        ds4_diag_addf(d, "tools", "expected an array, got %s", ds4_json_type_name(tools));
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t)
    {
        char p[64], pp[96];
        ds4_json_path_index(p, sizeof(p), "tools", i);
        const json_t *name = json_object_get(t, "name");
        const json_t *desc = json_object_get(t, "description");
        const json_t *schema = json_object_get(t, "input_schema");
        if (!json_is_string(name)) {
            ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "name"), "expected a string");
            continue;
        }
        if (schema != NULL && !json_is_object(schema)) {
            ds4_diag_addf(d, ds4_json_path(pp, sizeof(pp), p, "input_schema"),
                          "expected an object");
            continue;
        }
        json_t *fn = json_pack("{s:O}", "name", name);
        if (json_is_string(desc))
            json_object_set(fn, "description", (json_t *)desc);
        json_object_set_new(fn, "parameters",
                            schema != NULL ? json_incref((json_t *)schema) : json_object());
        json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function", fn));
    }
    return out;
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
    const json_t *tc = api_present(body, "tool_choice");
    const json_t *tct = json_is_object(tc) ? json_object_get(tc, "type") : NULL;
    const char *choice = json_is_string(tct) ? json_string_value(tct) : NULL;
    if (tc != NULL &&
        (choice == NULL || (strcmp(choice, "auto") != 0 && strcmp(choice, "none") != 0)))
        ds4_diag_addf(d, "tool_choice",
                      "only {\"type\": \"auto\"} and {\"type\": \"none\"} are supported");
    json_t *otools = tools != NULL && !(choice != NULL && strcmp(choice, "none") == 0)
                         ? convert_tools(tools, d)
                         : NULL;
    json_t *out = json_array();
    if (out == NULL) {
        json_decref(otools);
        ds4_diag_addf(d, "messages", "out of memory");
        return;
    }
    a->chat_messages = out;
    /* the system prompt, carrying the tools */
    const json_t *sys = api_present(body, "system");
    if (sys != NULL || json_array_size(otools) > 0) {
        blocks_t sb = {0};
        if (sys == NULL || read_blocks(sys, "system", false, &sb, d)) {
            json_t *m = json_pack("{s:s, s:s%}", "role", "system", "content",
                                  sb.text.p != NULL ? sb.text.p : "", sb.text.len);
            if (json_array_size(otools) > 0) {
                json_object_set(m, "tools", otools);
                a->tools = true;
            }
            json_array_append_new(out, m);
        }
        blocks_free(&sb);
    }
    json_decref(otools);
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
        blocks_t bl = {0};
        if (read_blocks(content, ds4_json_path(pp, sizeof(pp), p, "content"), assistant, &bl, d)) {
            /* tool results answer the previous turn's calls: they come before the user text */
            if (bl.results != NULL)
                json_array_extend(out, bl.results);
            if (bl.results == NULL || bl.n_text > 0 || assistant) {
                json_t *o = json_pack("{s:s, s:s%}", "role", r, "content",
                                      bl.text.p != NULL ? bl.text.p : "", bl.text.len);
                if (bl.thinking.len > 0)
                    json_object_set_new(o, "reasoning_content",
                                        json_stringn(bl.thinking.p, bl.thinking.len));
                if (bl.calls != NULL)
                    json_object_set(o, "tool_calls", bl.calls);
                json_array_append_new(out, o);
            }
        }
        blocks_free(&bl);
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

/* Opens a block of `type` (BLOCK_*) at the next index. */
static void open_block(api_req_t *a, int type)
{
    close_block(a);
    a->block = type;
    api_sse(a, "content_block_start",
            json_pack("{s:s, s:i, s:o}", "type", "content_block_start", "index", a->block_index,
                      "content_block",
                      type == BLOCK_THINKING
                          ? json_pack("{s:s, s:s, s:s}", "type", "thinking", "thinking", "",
                                      "signature", "")
                          : json_pack("{s:s, s:s}", "type", "text", "text", "")));
}

static void text_delta(api_req_t *a, bool reasoning, const char *text, size_t len)
{
    api_sse(a, "content_block_delta",
            json_pack("{s:s, s:i, s:{s:s, s:o}}", "type", "content_block_delta", "index",
                      a->block_index, "delta", "type", reasoning ? "thinking_delta" : "text_delta",
                      reasoning ? "thinking" : "text", json_stringn(text, len)));
}

void anthropic_on_message(api_req_t *a, const Ds4__V1__GenerateResponse *resp)
{
    bool reasoning = resp->channel == DS4__V1__CHANNEL__CHANNEL_REASONING;
    const char *text = resp->text_delta != NULL ? resp->text_delta : "";
    size_t len = strlen(text);
    if (!a->stream || (a->tools && !reasoning)) {
        /* whole answers, and with tools the answer text: it may be a tool call, parsed at the
         * end */
        ds4_buf_put(reasoning ? &a->reasoning : &a->content, text, len);
        return;
    }
    message_start(a);
    if (len == 0)
        return;
    int want = reasoning ? BLOCK_THINKING : BLOCK_TEXT;
    if (a->block != want)
        open_block(a, want);
    text_delta(a, reasoning, text, len);
}

/* tool_use content blocks of a parsed tool message: {type, id, name, input}. */
static json_t *tool_use_blocks(const json_t *tm)
{
    json_t *out = json_array();
    size_t i;
    const json_t *c;
    json_array_foreach(json_object_get(tm, "tool_calls"), i, c)
    {
        const char *args =
            json_string_value(json_object_get(json_object_get(c, "function"), "arguments"));
        json_t *input = args != NULL ? json_loads(args, JSON_DECODE_ANY, NULL) : NULL;
        if (!json_is_object(input)) { /* the model wrote no object: keep its text */
            json_decref(input);
            input = json_pack("{s:s}", "arguments", args != NULL ? args : "");
        }
        json_array_append_new(out,
                              json_pack("{s:s, s:O, s:O, s:o}", "type", "tool_use", "id",
                                        json_object_get(c, "id"), "name",
                                        json_object_get(json_object_get(c, "function"), "name"),
                                        "input", input));
    }
    return out;
}

void anthropic_on_done(api_req_t *a)
{
    const char *seq = NULL;
    const char *reason = stop_reason(a, &seq);
    json_t *tm = a->tools ? api_tool_message(a) : NULL;
    json_t *uses = tm != NULL ? tool_use_blocks(tm) : NULL;
    if (tm != NULL) {
        reason = "tool_use";
        seq = NULL;
    }
    const char *text = a->content.p != NULL ? a->content.p : "";
    size_t text_len = a->content.len;
    if (tm != NULL) {
        text = json_string_value(json_object_get(tm, "content"));
        text_len = json_string_length(json_object_get(tm, "content"));
    }
    if (a->stream) {
        message_start(a);
        if (a->tools && text_len > 0) { /* the held-back answer text */
            open_block(a, BLOCK_TEXT);
            text_delta(a, false, text, text_len);
        }
        close_block(a);
        size_t i;
        json_t *u;
        json_array_foreach(uses, i, u)
        {
            json_t *start = json_deep_copy(u);
            json_object_set_new(start, "input", json_object());
            api_sse(a, "content_block_start",
                    json_pack("{s:s, s:i, s:o}", "type", "content_block_start", "index",
                              a->block_index, "content_block", start));
            char *args = json_dumps(json_object_get(u, "input"), JSON_COMPACT);
            api_sse(a, "content_block_delta",
                    json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta", "index",
                              a->block_index, "delta", "type", "input_json_delta", "partial_json",
                              args != NULL ? args : "{}"));
            free(args);
            api_sse(a, "content_block_stop",
                    json_pack("{s:s, s:i}", "type", "content_block_stop", "index", a->block_index));
            a->block_index++;
        }
        api_sse(a, "message_delta",
                json_pack("{s:s, s:{s:s, s:s?}, s:{s:I}}", "type", "message_delta", "delta",
                          "stop_reason", reason, "stop_sequence", seq, "usage", "output_tokens",
                          (json_int_t)a->completion_tokens));
        api_sse(a, "message_stop", json_pack("{s:s}", "type", "message_stop"));
        json_decref(uses);
        json_decref(tm);
        return; /* sink_finish ends the stream */
    }
    json_t *content = json_array();
    if (a->chat_mode == DS4_CHAT_MODE_THINKING) {
        json_t *th = tm != NULL ? json_incref(json_object_get(tm, "reasoning_content"))
                                : json_stringn(a->reasoning.p != NULL ? a->reasoning.p : "",
                                               a->reasoning.len);
        json_array_append_new(content, json_pack("{s:s, s:o, s:s}", "type", "thinking", "thinking",
                                                 th, "signature", ""));
    }
    if (tm == NULL || text_len > 0)
        json_array_append_new(
            content, json_pack("{s:s, s:o}", "type", "text", "text", json_stringn(text, text_len)));
    if (uses != NULL)
        json_array_extend(content, uses);
    json_t *obj =
        json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:s?, s:{s:I, s:I}}", "id", a->id, "type",
                  "message", "role", "assistant", "model", a->rt->opt.model, "content", content,
                  "stop_reason", reason, "stop_sequence", seq, "usage", "input_tokens",
                  (json_int_t)a->prompt_tokens, "output_tokens", (json_int_t)a->completion_tokens);
    json_decref(uses);
    json_decref(tm);
    api_respond_json(a, 200, obj);
}
