/*
 * chat-encode.c - OpenAI-style messages → DeepSeek-V4 prompt, following the official
 * encode_messages pipeline: validate, merge tool results into user turns, reorder them to
 * call order, drop old reasoning, render each message.
 */
#include "chat-internal.h"

#include "ds4/alloc.h"
#include "ds4/json.h"

#include <string.h>

#define BOS "<｜begin▁of▁sentence｜>"
#define EOS "<｜end▁of▁sentence｜>"
#define THINK_START "<think>"
#define THINK_END "</think>"
#define DSML "｜DSML｜"
#define USER_SP "<｜User｜>"
#define ASSISTANT_SP "<｜Assistant｜>"
#define LATEST_REMINDER_SP "<｜latest_reminder｜>"

static const char REASONING_EFFORT_MAX[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate "
    "step, considered alternative, and rejected hypothesis to ensure absolutely no assumption "
    "is left unchecked.\n\n";

static const char TOOLS_HEAD[] =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke "
    "tools by writing a \"<" DSML "tool_calls>\" block like the following:\n\n"
    "<" DSML "tool_calls>\n"
    "<" DSML "invoke name=\"$TOOL_NAME\">\n"
    "<" DSML "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSML
    "parameter>\n"
    "...\n"
    "</" DSML "invoke>\n"
    "<" DSML "invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</" DSML "invoke>\n"
    "</" DSML "tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other "
    "types (numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by " THINK_START "), you MUST output your complete "
    "reasoning inside " THINK_START "..." THINK_END " BEFORE any tool calls or final "
    "response.\n\n"
    "Otherwise, output directly after " THINK_END " with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";

static const char TOOLS_TAIL[] =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke "
    "tool calls.\n";

static const char RESPONSE_FORMAT_HEAD[] =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

static const char *const TASKS[][2] = {
    {"action", "<｜action｜>"}, {"query", "<｜query｜>"},   {"authority", "<｜authority｜>"},
    {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"},   {"read_url", "<｜read_url｜>"},
};

enum role { R_SYSTEM, R_USER, R_DEVELOPER, R_ASSISTANT, R_TOOL, R_LATEST_REMINDER };
static const char *const ROLE_NAMES[] = {"system", "user", "developer",
                                         "assistant", "tool", "latest_reminder"};

enum block_type { B_TEXT, B_TOOL_RESULT };

typedef struct block {
    enum block_type type;
    const json_t *content; /* string, or array of parts for tool results; NULL = "" */
    const char *tool_use_id;
} block_t;

typedef struct cmsg {
    enum role role;
    const json_t *src;      /* the original message (tools, response_format, tool_calls) */
    const char *content;    /* NULL = None */
    size_t content_len;
    const char *reasoning;  /* NULL = None or dropped */
    size_t reasoning_len;
    const char *task;       /* NULL = None */
    bool wo_eos;
    bool has_blocks;
    block_t *blocks;
    size_t n_blocks, cap_blocks;
} cmsg_t;

ds4_chat_params_t ds4_chat_params_default(void)
{
    return (ds4_chat_params_t){.mode = DS4_CHAT_MODE_CHAT,
                               .reasoning_effort = DS4_REASONING_EFFORT_NONE,
                               .drop_thinking = true,
                               .add_bos = true};
}

bool ds4_chat_mode_parse(const char *s, ds4_chat_mode_t *out)
{
    if (s != NULL && strcmp(s, "chat") == 0)
        *out = DS4_CHAT_MODE_CHAT;
    else if (s != NULL && strcmp(s, "thinking") == 0)
        *out = DS4_CHAT_MODE_THINKING;
    else
        return false;
    return true;
}

bool ds4_reasoning_effort_parse(const char *s, ds4_reasoning_effort_t *out)
{
    if (s == NULL)
        *out = DS4_REASONING_EFFORT_NONE;
    else if (strcmp(s, "high") == 0)
        *out = DS4_REASONING_EFFORT_HIGH;
    else if (strcmp(s, "max") == 0)
        *out = DS4_REASONING_EFFORT_MAX;
    else
        return false;
    return true;
}

/* Python truthiness of a JSON value. */
static bool truthy(const json_t *v)
{
    if (v == NULL)
        return false;
    switch (json_typeof(v)) {
    case JSON_NULL:
    case JSON_FALSE: return false;
    case JSON_TRUE: return true;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0.0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_OBJECT: return json_object_size(v) > 0;
    }
    return false;
}

static bool add_block(cmsg_t *m, block_t b)
{
    if (m->n_blocks == m->cap_blocks) {
        size_t cap = m->cap_blocks == 0 ? 4 : m->cap_blocks * 2;
        block_t *nb = ds4_realloc_array(m->blocks, cap, sizeof(*nb));
        if (nb == NULL)
            return false;
        m->blocks = nb;
        m->cap_blocks = cap;
    }
    m->blocks[m->n_blocks++] = b;
    return true;
}

/* Id of a tool call: tc.id or tc.function.id ("" when neither is a non-empty string). */
static const char *tool_call_id(const json_t *tc)
{
    const char *id = json_string_value(json_object_get(tc, "id"));
    if (id != NULL && id[0] != '\0')
        return id;
    id = json_string_value(json_object_get(json_object_get(tc, "function"), "id"));
    return id != NULL ? id : "";
}

/* Checks one message; returns its role or -1 (problems in diag). */
static int validate_message(const json_t *m, size_t i, const json_t *last_calls,
                            ds4_diag_t *diag, int *errors)
{
    char path[64], p[96];
    ds4_json_path_index(path, sizeof(path), "messages", i);
#define BAD(where, ...)                                                                   \
    do {                                                                                  \
        ds4__chat_diag(diag, where, __VA_ARGS__);                                         \
        (*errors)++;                                                                      \
    } while (0)
    if (!json_is_object(m)) {
        BAD(path, "expected an object, got %s", ds4_json_type_name(m));
        return -1;
    }
    const json_t *jrole = json_object_get(m, "role");
    ds4_json_path(p, sizeof(p), path, "role");
    if (!json_is_string(jrole)) {
        BAD(p, jrole == NULL ? "missing" : "expected a string, got %s",
            jrole != NULL ? ds4_json_type_name(jrole) : "");
        return -1;
    }
    int role = -1;
    for (int r = 0; r < (int)DS4_ARRAY_LEN(ROLE_NAMES); r++)
        if (strcmp(json_string_value(jrole), ROLE_NAMES[r]) == 0)
            role = r;
    if (role < 0) {
        BAD(p, "unknown role \"%s\" (expected system, user, assistant, tool, developer or "
               "latest_reminder)", json_string_value(jrole));
        return -1;
    }
    int before = *errors;
    const json_t *content = json_object_get(m, "content");
    ds4_json_path(p, sizeof(p), path, "content");
    bool content_ok = content == NULL || json_is_null(content) || json_is_string(content);
    if (role == R_TOOL && json_is_array(content)) {
        size_t k;
        const json_t *part;
        content_ok = true;
        json_array_foreach(content, k, part)
        {
            const json_t *text = json_object_get(part, "text");
            if (!json_is_object(part) || !json_is_string(json_object_get(part, "type")) ||
                (text != NULL && !json_is_string(text))) {
                char pp[128];
                BAD(ds4_json_path_index(pp, sizeof(pp), p, k),
                    "expected a content part {\"type\": ..., \"text\": string}");
            }
        }
    }
    if (!content_ok)
        BAD(p, "expected a string, got %s", ds4_json_type_name(content));
    else if (role == R_DEVELOPER && !truthy(content))
        BAD(p, "a developer message needs non-empty string content");
    else if ((role == R_LATEST_REMINDER || role == R_TOOL) && json_is_null(content))
        BAD(p, "expected a string, got null");
    else if (role == R_LATEST_REMINDER && content == NULL)
        BAD(p, "missing");
    const json_t *rc = json_object_get(m, "reasoning_content");
    if (rc != NULL && !json_is_null(rc) && !json_is_string(rc))
        BAD(ds4_json_path(p, sizeof(p), path, "reasoning_content"), "expected a string, got %s",
            ds4_json_type_name(rc));
    const json_t *tools = json_object_get(m, "tools");
    if (truthy(tools)) {
        size_t k;
        const json_t *tool;
        ds4_json_path(p, sizeof(p), path, "tools");
        if (!json_is_array(tools))
            BAD(p, "expected an array, got %s", ds4_json_type_name(tools));
        else
            json_array_foreach(tools, k, tool)
            {
                char pp[128];
                if (!json_is_object(json_object_get(tool, "function")))
                    BAD(ds4_json_path_index(pp, sizeof(pp), p, k),
                        "expected {\"type\": \"function\", \"function\": {...}}");
            }
    }
    const json_t *calls = json_object_get(m, "tool_calls");
    if (truthy(calls)) {
        size_t k;
        const json_t *tc;
        ds4_json_path(p, sizeof(p), path, "tool_calls");
        if (!json_is_array(calls))
            BAD(p, "expected an array, got %s", ds4_json_type_name(calls));
        else
            json_array_foreach(calls, k, tc)
            {
                char pp[128];
                ds4_json_path_index(pp, sizeof(pp), p, k);
                const json_t *fn = json_object_get(tc, "function");
                const json_t *args = json_object_get(fn, "arguments");
                if (!json_is_object(fn))
                    BAD(pp, "expected {\"function\": {\"name\", \"arguments\"}}");
                else if (!json_is_string(json_object_get(fn, "name")))
                    BAD(pp, "function.name must be a string");
                else if (!json_is_string(args) && !json_is_object(args))
                    BAD(pp, "function.arguments must be a JSON string or an object");
                else if (json_is_string(args)) {
                    ds4__pyarg_t *a = NULL;
                    size_t na = 0;
                    int prc = ds4__pyargs_parse(json_string_value(args),
                                               json_string_length(args), &a, &na);
                    ds4__pyargs_free(a, na);
                    if (prc == -1)
                        BAD(pp, "function.arguments is JSON but not an object");
                    else if (prc == -3)
                        BAD(pp, "function.arguments holds a lone UTF-16 surrogate escape");
                }
            }
    }
    const json_t *task = json_object_get(m, "task");
    if (task != NULL && !json_is_null(task)) {
        bool ok = false;
        for (size_t k = 0; k < DS4_ARRAY_LEN(TASKS); k++)
            ok |= json_is_string(task) && strcmp(json_string_value(task), TASKS[k][0]) == 0;
        if (!ok)
            BAD(ds4_json_path(p, sizeof(p), path, "task"),
                "invalid task (expected action, query, authority, domain, title or read_url)");
    }
    const json_t *wo = json_object_get(m, "wo_eos");
    if (wo != NULL && !json_is_boolean(wo) && !json_is_null(wo))
        BAD(ds4_json_path(p, sizeof(p), path, "wo_eos"), "expected a boolean");
    if (role == R_TOOL) {
        /* The official encoder pairs results with calls by id when both carry one and by
         * position otherwise; a result with no call to answer, or an id naming no call, is an
         * error here (it would otherwise be rendered against the wrong call). */
        const json_t *jid = json_object_get(m, "tool_call_id");
        ds4_json_path(p, sizeof(p), path, "tool_call_id");
        bool calls_have_ids = false;
        size_t k;
        const json_t *tc;
        if (json_is_array(last_calls))
            json_array_foreach(last_calls, k, tc) calls_have_ids |= tool_call_id(tc)[0] != '\0';
        if (last_calls == NULL) {
            BAD(path, "tool result with no preceding assistant tool call");
        } else if (jid != NULL && !json_is_null(jid) && !json_is_string(jid)) {
            BAD(p, "expected a string, got %s", ds4_json_type_name(jid));
        } else if (json_is_string(jid) && json_string_length(jid) > 0 && calls_have_ids) {
            bool found = false;
            json_array_foreach(last_calls, k, tc)
                found |= strcmp(tool_call_id(tc), json_string_value(jid)) == 0;
            if (!found)
                BAD(p, "\"%s\" matches no tool call of the preceding assistant message",
                    json_string_value(jid));
        }
    }
#undef BAD
    return *errors == before ? role : -1;
}

static void free_msgs(cmsg_t *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ds4_free(msgs[i].blocks);
    ds4_free(msgs);
}

/* Fills a message from its JSON (validated). */
static void fill_msg(cmsg_t *c, const json_t *m, enum role role)
{
    memset(c, 0, sizeof(*c));
    c->role = role;
    c->src = m;
    const json_t *content = json_object_get(m, "content");
    if (json_is_string(content)) {
        c->content = json_string_value(content);
        c->content_len = json_string_length(content);
    }
    const json_t *rc = json_object_get(m, "reasoning_content");
    if (json_is_string(rc)) {
        c->reasoning = json_string_value(rc);
        c->reasoning_len = json_string_length(rc);
    }
    c->task = json_string_value(json_object_get(m, "task"));
    c->wo_eos = json_is_true(json_object_get(m, "wo_eos"));
}

/* merge_tool_messages: tool results and following user text join one user turn. */
static ds4_status_t merge_messages(const json_t *messages, const int *roles, cmsg_t **out,
                                   size_t *n_out)
{
    size_t n = json_array_size(messages);
    cmsg_t *msgs = ds4_calloc(n + 1, sizeof(*msgs));
    if (msgs == NULL)
        return DS4_ERR_NO_MEMORY;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(messages, i);
        enum role role = (enum role)roles[i];
        cmsg_t *last = k > 0 ? &msgs[k - 1] : NULL;
        bool ok = true;
        if (role == R_TOOL) {
            block_t b = {.type = B_TOOL_RESULT,
                         .content = json_object_get(m, "content"),
                         .tool_use_id = json_string_value(json_object_get(m, "tool_call_id"))};
            if (last != NULL && last->role == R_USER && last->has_blocks) {
                ok = add_block(last, b);
            } else {
                cmsg_t *c = &msgs[k++];
                memset(c, 0, sizeof(*c));
                c->role = R_USER;
                c->src = NULL;
                c->has_blocks = true;
                ok = add_block(c, b);
            }
        } else if (role == R_USER) {
            block_t b = {.type = B_TEXT, .content = json_object_get(m, "content")};
            if (last != NULL && last->role == R_USER && last->has_blocks && last->task == NULL) {
                ok = add_block(last, b);
            } else {
                cmsg_t *c = &msgs[k++];
                fill_msg(c, m, R_USER);
                c->src = NULL; /* a rebuilt user message keeps only content, task, wo_eos */
                c->reasoning = NULL;
                c->has_blocks = true;
                ok = add_block(c, b);
            }
        } else {
            fill_msg(&msgs[k++], m, role);
        }
        if (!ok) {
            free_msgs(msgs, k);
            return DS4_ERR_NO_MEMORY;
        }
    }
    *out = msgs;
    *n_out = k;
    return DS4_OK;
}

/* sort_tool_results_by_call_order: stable sort of tool results by the last calls' order. */
static void sort_tool_results(cmsg_t *msgs, size_t n)
{
    const json_t *calls = NULL;
    for (size_t i = 0; i < n; i++) {
        cmsg_t *m = &msgs[i];
        if (m->role == R_ASSISTANT && m->src != NULL &&
            truthy(json_object_get(m->src, "tool_calls"))) {
            calls = json_object_get(m->src, "tool_calls");
            continue;
        }
        if (m->role != R_USER || !m->has_blocks || calls == NULL)
            continue;
        size_t n_tool = 0;
        for (size_t b = 0; b < m->n_blocks; b++)
            n_tool += m->blocks[b].type == B_TOOL_RESULT;
        bool any_id = false;
        size_t k;
        const json_t *tc;
        json_array_foreach(calls, k, tc) any_id |= tool_call_id(tc)[0] != '\0';
        if (n_tool < 2 || !any_id)
            continue;
        /* insertion sort of the tool-result slots by call index (0 when not found) */
        size_t order[n_tool], slots[n_tool];
        block_t sorted[n_tool];
        size_t t = 0;
        for (size_t b = 0; b < m->n_blocks; b++) {
            if (m->blocks[b].type != B_TOOL_RESULT)
                continue;
            size_t idx = 0;
            const char *id = m->blocks[b].tool_use_id != NULL ? m->blocks[b].tool_use_id : "";
            json_array_foreach(calls, k, tc)
            {
                const char *cid = tool_call_id(tc);
                if (cid[0] != '\0' && strcmp(cid, id) == 0)
                    idx = k; /* a repeated id maps to its last call, like a Python dict */
            }
            size_t j = t;
            while (j > 0 && order[j - 1] > idx) {
                order[j] = order[j - 1];
                sorted[j] = sorted[j - 1];
                j--;
            }
            order[j] = idx;
            sorted[j] = m->blocks[b];
            slots[t++] = b;
        }
        for (size_t j = 0; j < n_tool; j++)
            m->blocks[slots[j]] = sorted[j];
    }
}

static int last_user_index(const cmsg_t *msgs, size_t n)
{
    for (size_t i = n; i > 0; i--)
        if (msgs[i - 1].role == R_USER || msgs[i - 1].role == R_DEVELOPER)
            return (int)(i - 1);
    return -1;
}

/* _drop_thinking_messages: in place; returns the new count. */
static size_t drop_thinking(cmsg_t *msgs, size_t n)
{
    int last = last_user_index(msgs, n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        cmsg_t m = msgs[i];
        bool keep_role = m.role == R_USER || m.role == R_SYSTEM || m.role == R_TOOL ||
                         m.role == R_LATEST_REMINDER;
        if (keep_role || (int)i >= last) {
            msgs[k++] = m;
        } else if (m.role == R_ASSISTANT) {
            m.reasoning = NULL;
            m.reasoning_len = 0;
            msgs[k++] = m;
        } else {
            ds4_free(m.blocks); /* an earlier developer message is dropped */
        }
    }
    return k;
}

static void render_tools(ds4_str_t *s, const json_t *tools)
{
    ds4__str_puts(s, TOOLS_HEAD);
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t)
    {
        if (i > 0)
            ds4__str_put(s, "\n", 1);
        ds4__pyjson_dump(s, json_object_get(t, "function"));
    }
    ds4__str_puts(s, TOOLS_TAIL);
}

static void render_extras(ds4_str_t *s, const json_t *src)
{
    const json_t *tools = json_object_get(src, "tools");
    const json_t *rf = json_object_get(src, "response_format");
    if (truthy(tools)) {
        ds4__str_puts(s, "\n\n");
        render_tools(s, tools);
    }
    if (truthy(rf)) {
        ds4__str_puts(s, "\n\n");
        ds4__str_puts(s, RESPONSE_FORMAT_HEAD);
        ds4__pyjson_dump(s, rf);
    }
}

static void render_param(ds4_str_t *s, const char *key, size_t key_len, bool is_string,
                         const char *value, size_t value_len)
{
    ds4__str_puts(s, "<" DSML "parameter name=\"");
    ds4__str_put(s, key, key_len);
    ds4__str_puts(s, is_string ? "\" string=\"true\">" : "\" string=\"false\">");
    ds4__str_put(s, value, value_len);
    ds4__str_puts(s, "</" DSML "parameter>");
}

/* encode_arguments_to_dsml for one call (arguments validated by validate_message). */
static ds4_status_t render_arguments(ds4_str_t *s, const json_t *args)
{
    if (json_is_string(args)) {
        ds4__pyarg_t *a = NULL;
        size_t n = 0;
        int rc = ds4__pyargs_parse(json_string_value(args), json_string_length(args), &a, &n);
        if (rc == 1) {
            for (size_t i = 0; i < n; i++) {
                if (i > 0)
                    ds4__str_put(s, "\n", 1);
                render_param(s, a[i].key, a[i].key_len, a[i].is_string, a[i].value,
                             a[i].value_len);
            }
            ds4__pyargs_free(a, n);
            return DS4_OK;
        }
        if (rc == -2)
            return DS4_ERR_NO_MEMORY;
        if (rc != 0)
            return DS4_ERR_INTERNAL; /* rejected by validate_message */
        /* not JSON: the whole string becomes one parameter named "arguments" */
        render_param(s, "arguments", 9, true, json_string_value(args),
                     json_string_length(args));
        return DS4_OK;
    }
    /* an object (json.loads fails on a dict): one parameter "arguments" holding its JSON */
    ds4_str_t v = {0};
    ds4__pyjson_dump(&v, args);
    if (v.oom) {
        ds4__str_free(&v);
        return DS4_ERR_NO_MEMORY;
    }
    render_param(s, "arguments", 9, false, v.p, v.n);
    ds4__str_free(&v);
    return DS4_OK;
}

static void render_content_value(ds4_str_t *s, const json_t *content)
{
    if (json_is_string(content)) {
        ds4__str_put(s, json_string_value(content), json_string_length(content));
    } else if (json_is_array(content)) {
        size_t i;
        const json_t *part;
        json_array_foreach(content, i, part)
        {
            if (i > 0)
                ds4__str_puts(s, "\n\n");
            const char *type = json_string_value(json_object_get(part, "type"));
            if (strcmp(type, "text") == 0) {
                const json_t *text = json_object_get(part, "text");
                if (text != NULL)
                    ds4__str_put(s, json_string_value(text), json_string_length(text));
            } else {
                ds4__str_puts(s, "[Unsupported ");
                ds4__str_puts(s, type);
                ds4__str_puts(s, "]");
            }
        }
    }
}

static ds4_status_t render_message(ds4_str_t *s, const cmsg_t *msgs, size_t n, size_t index,
                                   const ds4_chat_params_t *p, bool drop, ds4_diag_t *diag)
{
    const cmsg_t *m = &msgs[index];
    int last_user = last_user_index(msgs, n);
    bool thinking = p->mode == DS4_CHAT_MODE_THINKING;
    if (index == 0 && thinking && p->reasoning_effort == DS4_REASONING_EFFORT_MAX)
        ds4__str_puts(s, REASONING_EFFORT_MAX);

    switch (m->role) {
    case R_SYSTEM:
        if (m->content != NULL)
            ds4__str_put(s, m->content, m->content_len);
        render_extras(s, m->src);
        break;
    case R_DEVELOPER:
        ds4__str_puts(s, USER_SP);
        ds4__str_put(s, m->content, m->content_len);
        render_extras(s, m->src);
        break;
    case R_USER:
        ds4__str_puts(s, USER_SP);
        for (size_t b = 0; b < m->n_blocks; b++) {
            if (b > 0)
                ds4__str_puts(s, "\n\n");
            if (m->blocks[b].type == B_TEXT) {
                render_content_value(s, m->blocks[b].content);
            } else {
                ds4__str_puts(s, "<tool_result>");
                render_content_value(s, m->blocks[b].content);
                ds4__str_puts(s, "</tool_result>");
            }
        }
        break;
    case R_LATEST_REMINDER:
        ds4__str_puts(s, LATEST_REMINDER_SP);
        ds4__str_put(s, m->content, m->content_len);
        break;
    case R_ASSISTANT: {
        bool prev_task = index > 0 && msgs[index - 1].task != NULL;
        if (thinking && !prev_task && (!drop || (int)index > last_user)) {
            if (m->reasoning != NULL)
                ds4__str_put(s, m->reasoning, m->reasoning_len);
            ds4__str_puts(s, THINK_END);
        }
        if (m->content != NULL)
            ds4__str_put(s, m->content, m->content_len);
        const json_t *calls = json_object_get(m->src, "tool_calls");
        if (truthy(calls)) {
            ds4__str_puts(s, "\n\n<" DSML "tool_calls>\n");
            size_t i;
            const json_t *tc;
            json_array_foreach(calls, i, tc)
            {
                const json_t *fn = json_object_get(tc, "function");
                if (i > 0)
                    ds4__str_put(s, "\n", 1);
                ds4__str_puts(s, "<" DSML "invoke name=\"");
                ds4__str_puts(s, json_string_value(json_object_get(fn, "name")));
                ds4__str_puts(s, "\">\n");
                ds4_status_t st = render_arguments(s, json_object_get(fn, "arguments"));
                if (st != DS4_OK)
                    return st;
                ds4__str_puts(s, "\n</" DSML "invoke>");
            }
            ds4__str_puts(s, "\n</" DSML "tool_calls>");
        }
        if (!m->wo_eos)
            ds4__str_puts(s, EOS);
        break;
    }
    case R_TOOL:
        return DS4_ERR_INTERNAL; /* merged away */
    }

    if (index + 1 < n && msgs[index + 1].role != R_ASSISTANT &&
        msgs[index + 1].role != R_LATEST_REMINDER)
        return DS4_OK;
    if (m->task != NULL) {
        const char *tok = NULL;
        for (size_t k = 0; k < DS4_ARRAY_LEN(TASKS); k++)
            if (strcmp(m->task, TASKS[k][0]) == 0)
                tok = TASKS[k][1];
        if (strcmp(m->task, "action") != 0) {
            ds4__str_puts(s, tok);
        } else {
            ds4__str_puts(s, ASSISTANT_SP);
            ds4__str_puts(s, thinking ? THINK_START : THINK_END);
            ds4__str_puts(s, tok);
        }
    } else if (m->role == R_USER || m->role == R_DEVELOPER) {
        ds4__str_puts(s, ASSISTANT_SP);
        if (thinking && (!drop || (int)index >= last_user))
            ds4__str_puts(s, THINK_START);
        else
            ds4__str_puts(s, THINK_END);
    }
    return DS4_OK;
}

ds4_status_t ds4_chat_encode(const json_t *messages, const ds4_chat_params_t *params,
                             char **prompt, size_t *prompt_len, ds4_diag_t *diag)
{
    if (params == NULL || prompt == NULL)
        return DS4_ERR_INVALID_ARG;
    if ((params->mode != DS4_CHAT_MODE_CHAT && params->mode != DS4_CHAT_MODE_THINKING) ||
        (unsigned)params->reasoning_effort > DS4_REASONING_EFFORT_MAX) {
        ds4__chat_diag(diag, "params", "invalid thinking mode or reasoning effort");
        return DS4_ERR_INVALID_ARG;
    }
    if (!json_is_array(messages)) {
        ds4__chat_diag(diag, "messages", "expected an array, got %s",
                       messages != NULL ? ds4_json_type_name(messages) : "nothing");
        return DS4_ERR_TEMPLATE;
    }
    size_t n = json_array_size(messages);
    int *roles = ds4_calloc(n + 1, sizeof(*roles));
    if (roles == NULL)
        return DS4_ERR_NO_MEMORY;
    int errors = 0;
    const json_t *last_calls = NULL;
    bool any_tools = false;
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(messages, i);
        roles[i] = validate_message(m, i, last_calls, diag, &errors);
        if (roles[i] == R_ASSISTANT && truthy(json_object_get(m, "tool_calls")))
            last_calls = json_object_get(m, "tool_calls");
        /* a user message is rebuilt by the merge step without its tools */
        if (roles[i] >= 0 && roles[i] != R_USER && roles[i] != R_TOOL &&
            truthy(json_object_get(m, "tools")))
            any_tools = true;
    }
    if (errors > 0) {
        ds4_free(roles);
        return DS4_ERR_TEMPLATE;
    }
    cmsg_t *msgs = NULL;
    size_t nm = 0;
    ds4_status_t st = merge_messages(messages, roles, &msgs, &nm);
    ds4_free(roles);
    if (st != DS4_OK)
        return st;
    sort_tool_results(msgs, nm);
    bool drop = params->drop_thinking && !any_tools;
    if (params->mode == DS4_CHAT_MODE_THINKING && drop)
        nm = drop_thinking(msgs, nm);

    ds4_str_t s = {0};
    ds4__str_puts(&s, params->add_bos ? BOS : "");
    for (size_t i = 0; i < nm && st == DS4_OK; i++)
        st = render_message(&s, msgs, nm, i, params, drop, diag);
    free_msgs(msgs, nm);
    if (st == DS4_OK && s.oom)
        st = DS4_ERR_NO_MEMORY;
    if (st != DS4_OK) {
        ds4__str_free(&s);
        return st;
    }
    *prompt = s.p;
    if (prompt_len != NULL)
        *prompt_len = s.n;
    return DS4_OK;
}
