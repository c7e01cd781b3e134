/* The request fields the OpenAI and Anthropic endpoints share: sampling, stop sequences, the
 * reasoning switches, and the V4 chat encoding of their messages. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/chat.h"
#include "ds4/json.h"
#include "http-api.h"

/* obj[key] unless absent or null (clients send null for "not set"). */
const json_t *api_present(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return v != NULL && !json_is_null(v) ? v : NULL;
}

static bool get_f32(const json_t *body, const char *key, double min, double max, float *out,
                    ds4_diag_t *d)
{
    double v;
    if (api_present(body, key) == NULL || !ds4_json_get_f64(body, "", key, false, min, max, &v, d))
        return false;
    *out = (float)v;
    return true;
}

/* Stop strings from a string or an array of strings. */
static void parse_stops(api_req_t *a, const json_t *body, const char *key, bool allow_string,
                        ds4_diag_t *d)
{
    const json_t *v = api_present(body, key);
    if (v == NULL)
        return;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!(json_is_array(v) || (allow_string && json_is_string(v)))) {
        ds4_diag_addf(d, key, "expected %s, got %s",
                      allow_string ? "a string or an array of strings" : "an array of strings",
                      ds4_json_type_name(v));
        return;
    }
    if (n > 16) {
        ds4_diag_addf(d, key, "at most 16 stop sequences, got %zu", n);
        return;
    }
    if (n == 0)
        return;
    a->stops = ds4_calloc(n, sizeof(*a->stops));
    if (a->stops == NULL) {
        ds4_diag_addf(d, key, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        char p[64];
        if (!json_is_string(s)) {
            ds4_diag_addf(d, ds4_json_path_index(p, sizeof(p), key, i), "expected a string, got %s",
                          ds4_json_type_name(s));
            return;
        }
        if (json_string_length(s) == 0) {
            ds4_diag_addf(d, ds4_json_path_index(p, sizeof(p), key, i), "must not be empty");
            return;
        }
        if (strlen(json_string_value(s)) != json_string_length(s)) {
            ds4_diag_addf(d, ds4_json_path_index(p, sizeof(p), key, i),
                          "must not contain a NUL character");
            return;
        }
        a->stops[i] = (char *)json_string_value(s);
    }
    a->sp.stop = a->stops;
    a->sp.n_stop = n;
}

void api_parse_sampling(api_req_t *a, const json_t *body, bool anthropic, ds4_diag_t *d)
{
    router_t *rt = a->rt;
    Ds4__V1__SamplingParams *sp = &a->sp;
    sp->temperature = 1.0f; /* both APIs sample at temperature 1 unless told */
    get_f32(body, "temperature", 0, anthropic ? 1 : 1e6, &sp->temperature, d);
    get_f32(body, "top_p", 0, 1, &sp->top_p, d);
    int64_t i64;
    if (api_present(body, "top_k") != NULL &&
        ds4_json_get_i64(body, "", "top_k", false, -1, UINT32_MAX, &i64, d))
        sp->top_k = i64 < 0 ? 0 : (uint32_t)i64; /* -1 = off (vLLM) */
    /* max_tokens: Anthropic requires it; OpenAI's chat prefers max_completion_tokens */
    const char *mt = "max_tokens";
    if (!anthropic && api_present(body, "max_completion_tokens") != NULL)
        mt = "max_completion_tokens";
    if (anthropic && api_present(body, "max_tokens") == NULL)
        ds4_diag_addf(d, "max_tokens", "required");
    if (api_present(body, mt) != NULL &&
        ds4_json_get_i64(body, "", mt, false, 1, UINT32_MAX, &i64, d)) {
        sp->max_tokens = (uint32_t)i64;
        a->max_tokens_given = true;
    }
    parse_stops(a, body, anthropic ? "stop_sequences" : "stop", !anthropic, d);
    if (anthropic)
        return;
    get_f32(body, "min_p", 0, 1, &sp->min_p, d);
    get_f32(body, "presence_penalty", -2, 2, &sp->presence_penalty, d);
    get_f32(body, "frequency_penalty", -2, 2, &sp->frequency_penalty, d);
    get_f32(body, "repetition_penalty", 0, 1e6, &sp->repetition_penalty, d);
    if (api_present(body, "seed") != NULL &&
        ds4_json_get_i64(body, "", "seed", false, INT64_MIN, INT64_MAX, &i64, d)) {
        sp->seed = (uint64_t)i64;
        sp->seeded = 1;
    }
    bool b;
    if (api_present(body, "ignore_eos") != NULL &&
        ds4_json_get_bool(body, "", "ignore_eos", false, &b, d))
        sp->ignore_eos = b;
    const json_t *sti = api_present(body, "stop_token_ids");
    if (sti != NULL && !json_is_array(sti)) {
        ds4_diag_addf(d, "stop_token_ids", "expected an array of token ids, got %s",
                      ds4_json_type_name(sti));
    } else if (sti != NULL && json_array_size(sti) > 0) {
        size_t n = json_array_size(sti);
        a->stop_token_ids = ds4_calloc(n, sizeof(*a->stop_token_ids));
        if (a->stop_token_ids == NULL) {
            ds4_diag_addf(d, "stop_token_ids", "out of memory");
            return;
        }
        for (size_t i = 0; i < n; i++) {
            const json_t *v = json_array_get(sti, i);
            char p[64];
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) >= (json_int_t)router_vocab(rt)) {
                ds4_diag_addf(d, ds4_json_path_index(p, sizeof(p), "stop_token_ids", i),
                              "expected a token id in [0, %u)", router_vocab(rt));
                return;
            }
            a->stop_token_ids[i] = (uint32_t)json_integer_value(v);
        }
        sp->stop_token_ids = a->stop_token_ids;
        sp->n_stop_token_ids = n;
    }
    if (api_present(body, "n") != NULL &&
        ds4_json_get_i64(body, "", "n", false, INT64_MIN, INT64_MAX, &i64, d) && i64 != 1)
        ds4_diag_addf(d, "n", "only n = 1 is supported, got %" PRId64, i64);
    if (api_present(body, "deadline_ms") != NULL &&
        ds4_json_get_i64(body, "", "deadline_ms", false, 1, UINT32_MAX, &i64, d))
        a->greq.deadline_ms = (uint32_t)i64;
    if (api_present(body, "return_token_ids") != NULL &&
        ds4_json_get_bool(body, "", "return_token_ids", false, &b, d))
        a->return_token_ids = b;
    const json_t *so = api_present(body, "stream_options");
    if (so != NULL && !json_is_object(so))
        ds4_diag_addf(d, "stream_options", "expected an object, got %s", ds4_json_type_name(so));
    else if (so != NULL && api_present(so, "include_usage") != NULL &&
             ds4_json_get_bool(so, "stream_options", "include_usage", false, &b, d))
        a->include_usage = b;
}

void api_parse_reasoning(api_req_t *a, const json_t *body, ds4_diag_t *d)
{
    const json_t *v;
    if ((v = api_present(body, "reasoning_effort")) != NULL) {
        const char *e = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(e, "none") == 0) {
            a->chat_mode = DS4_CHAT_MODE_CHAT;
        } else if (strcmp(e, "minimal") == 0 || strcmp(e, "low") == 0 || strcmp(e, "medium") == 0) {
            a->chat_mode = DS4_CHAT_MODE_THINKING;
            a->reasoning_effort = DS4_REASONING_EFFORT_NONE;
        } else if (strcmp(e, "high") == 0) {
            a->chat_mode = DS4_CHAT_MODE_THINKING;
            a->reasoning_effort = DS4_REASONING_EFFORT_HIGH;
        } else if (strcmp(e, "max") == 0 || strcmp(e, "xhigh") == 0) {
            a->chat_mode = DS4_CHAT_MODE_THINKING;
            a->reasoning_effort = DS4_REASONING_EFFORT_MAX;
        } else {
            ds4_diag_addf(d, "reasoning_effort",
                          "expected \"none\", \"minimal\", \"low\", \"medium\", \"high\" or "
                          "\"max\"");
        }
    }
    /* thinking: true/false, or {"type": "enabled"|"disabled"} (DeepSeek, Anthropic); also
     * chat_template_kwargs.thinking (vLLM's switch for DeepSeek models) */
    const json_t *ctk = api_present(body, "chat_template_kwargs");
    v = api_present(body, "thinking");
    const char *path = "thinking";
    if (v == NULL && json_is_object(ctk) && api_present(ctk, "thinking") != NULL) {
        v = api_present(ctk, "thinking");
        path = "chat_template_kwargs.thinking";
    }
    if (v == NULL)
        return;
    if (json_is_boolean(v)) {
        a->chat_mode = json_is_true(v) ? DS4_CHAT_MODE_THINKING : DS4_CHAT_MODE_CHAT;
        return;
    }
    const json_t *type = json_is_object(v) ? api_present(v, "type") : NULL;
    const char *t = json_is_string(type) ? json_string_value(type) : "";
    if (strcmp(t, "enabled") == 0)
        a->chat_mode = DS4_CHAT_MODE_THINKING;
    else if (strcmp(t, "disabled") == 0)
        a->chat_mode = DS4_CHAT_MODE_CHAT;
    else
        ds4_diag_addf(d, path, "expected a boolean or {\"type\": \"enabled\" | \"disabled\"}");
}

bool api_encode_chat(api_req_t *a, ds4_diag_t *d)
{
    router_t *rt = a->rt;
    ds4_chat_params_t cp = ds4_chat_params_default();
    cp.mode = (ds4_chat_mode_t)a->chat_mode;
    cp.reasoning_effort = (ds4_reasoning_effort_t)a->reasoning_effort;
    char *prompt = NULL;
    size_t prompt_len = 0;
    if (ds4_chat_encode(a->chat_messages, &cp, &prompt, &prompt_len, d) != DS4_OK)
        return false;
    int32_t *ids = NULL;
    size_t n = 0;
    ds4_status_t st =
        ds4_tokenizer_encode(rt->tok, rt->scratch, prompt, prompt_len, &ids, &n, NULL, d);
    ds4_free(prompt);
    if (st != DS4_OK)
        return false;
    a->prompt_id_buf = (uint32_t *)ids; /* same width; ids are non-negative */
    a->prompt_ids.ids = a->prompt_id_buf;
    a->prompt_ids.n_ids = n;
    a->greq.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS;
    a->greq.prompt_ids = &a->prompt_ids;
    return true;
}
