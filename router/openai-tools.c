/* Tool calls out of a completion: the V4 DSML grammar (ds4_chat_parse) → OpenAI tool_calls.
 * Kept free of router state so test_openai checks it on DeepSeek's official parse vectors. */
#include <stdio.h>
#include <string.h>

#include "ds4/chat.h"
#include "openai-tools.h"

json_t *openai_tool_message(const char *completion, size_t len, int mode, const char *id_prefix)
{
    json_t *msg = NULL;
    if (ds4_chat_parse(completion, len, (ds4_chat_mode_t)mode, &msg, NULL) != DS4_OK)
        return NULL;
    const json_t *calls = json_object_get(msg, "tool_calls");
    if (!json_is_array(calls) || json_array_size(calls) == 0) {
        json_decref(msg);
        return NULL;
    }
    json_t *out_calls = json_array();
    size_t i;
    const json_t *c;
    json_array_foreach(calls, i, c)
    {
        const json_t *fn = json_object_get(c, "function");
        char id[96];
        snprintf(id, sizeof(id), "call_%s_%zu", id_prefix, i);
        json_array_append_new(out_calls, json_pack("{s:i, s:s, s:s, s:{s:O, s:O}}", "index", (int)i,
                                                   "id", id, "type", "function", "function", "name",
                                                   json_object_get(fn, "name"), "arguments",
                                                   json_object_get(fn, "arguments")));
    }
    json_t *content = json_object_get(msg, "content");
    json_t *reasoning = json_object_get(msg, "reasoning_content");
    json_t *out = json_pack("{s:s, s:o, s:o, s:o}", "role", "assistant", "content",
                            json_is_string(content) ? json_incref(content) : json_string(""),
                            "reasoning_content",
                            json_is_string(reasoning) ? json_incref(reasoning) : json_string(""),
                            "tool_calls", out_calls);
    json_decref(msg);
    return out;
}
