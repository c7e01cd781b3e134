/*
 * fuzz_chat - libFuzzer entry for the V4 chat encoding and the completion parser. The first
 * byte picks the options; the rest is read as a JSON messages array (encode, every mode) and as
 * a completion (parse, both modes). Nothing may crash; a rendered prompt must be valid UTF-8;
 * a parsed message must have the documented shape.
 */
#include "ds4/alloc.h"
#include "ds4/chat.h"
#include "ds4/log.h"
#include "ds4/tokenizer.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t opt = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    json_error_t err;
    json_t *messages = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (messages != NULL) {
        ds4_chat_params_t p = ds4_chat_params_default();
        p.mode = (opt & 1) ? DS4_CHAT_MODE_THINKING : DS4_CHAT_MODE_CHAT;
        p.reasoning_effort = (ds4_reasoning_effort_t)((opt >> 1) % 3);
        p.drop_thinking = (opt & 8) != 0;
        p.add_bos = (opt & 16) != 0;
        ds4_diag_t diag;
        ds4_diag_init(&diag);
        char *prompt = NULL;
        size_t plen = 0;
        ds4_status_t st = ds4_chat_encode(messages, &p, &prompt, &plen, &diag);
        if (st == DS4_OK)
            DS4_ASSERT(prompt != NULL && ds4_utf8_validate(prompt, plen, NULL));
        else
            DS4_ASSERT(prompt == NULL && (st == DS4_ERR_TEMPLATE || st == DS4_ERR_NO_MEMORY));
        ds4_free(prompt);
        ds4_diag_free(&diag);
        char *dump = ds4_chat_json_dumps(messages, NULL);
        DS4_ASSERT(dump != NULL);
        ds4_free(dump);
        json_decref(messages);
    }

    /* the same text as a tool call's arguments (Python-style json.loads of arguments) */
    if (ds4_utf8_validate(text, len, NULL)) {
        json_t *m = json_pack("[{s:s,s:s},{s:s,s:s,s:[{s:s,s:{s:s,s:s%}}]}]", "role", "user",
                              "content", "q", "role", "assistant", "content", "", "tool_calls",
                              "id", "c", "function", "name", "f", "arguments", text, len);
        if (m != NULL) {
            ds4_chat_params_t p = ds4_chat_params_default();
            char *prompt = NULL;
            size_t plen = 0;
            ds4_status_t st = ds4_chat_encode(m, &p, &prompt, &plen, NULL);
            DS4_ASSERT(st == DS4_OK || st == DS4_ERR_TEMPLATE || st == DS4_ERR_NO_MEMORY);
            if (st == DS4_OK)
                DS4_ASSERT(ds4_utf8_validate(prompt, plen, NULL));
            ds4_free(prompt);
            json_decref(m);
        }
    }

    for (int mode = 0; mode < 2; mode++) {
        json_t *msg = NULL;
        ds4_status_t st = ds4_chat_parse(text, len, (ds4_chat_mode_t)mode, &msg, NULL);
        if (st == DS4_OK) {
            DS4_ASSERT(json_is_string(json_object_get(msg, "content")));
            DS4_ASSERT(json_is_string(json_object_get(msg, "reasoning_content")));
            DS4_ASSERT(json_is_array(json_object_get(msg, "tool_calls")));
            json_decref(msg);
        } else {
            DS4_ASSERT(msg == NULL && (st == DS4_ERR_PARSE || st == DS4_ERR_NO_MEMORY));
        }
    }
    return 0;
}
