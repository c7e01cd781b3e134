/*
 * ds4/chat.h - the DeepSeek-V4 chat encoding: OpenAI-style messages → prompt string, and a
 * model completion → assistant message. Part of the tokenizer module (ds4_tokenizer library).
 *
 * The reference is DeepSeek's official encoding/encoding_dsv4.py (encode_messages,
 * parse_message_from_completion_text); shared/reference/v4-model.md §7 describes the grammar.
 * ds4 reproduces its output byte for byte, including JSON rendered the way Python's
 * json.dumps(ensure_ascii=False) writes it (", " and ": " separators, key order kept).
 * Where the official code would crash or silently render garbage (a tool result that answers no
 * call, non-string content, an unknown role), ds4 returns an error naming the message instead.
 *
 * Messages (a JSON array of objects, jansson):
 *   system     content, tools (OpenAI [{type, function: {...}}]), response_format
 *   developer  content (non-empty), tools, response_format
 *   user       content; task (quick-instruction tasks: action query authority domain title
 *              read_url); wo_eos
 *   assistant  content, reasoning_content, tool_calls ([{id, type, function: {name, arguments}}],
 *              arguments a JSON string or object); wo_eos
 *   tool       content (string, or a list of {type: "text", text} parts); needs an earlier
 *              assistant message with tool_calls; its tool_call_id, when given and the calls
 *              carry ids, must name one of those calls (results are reordered to call order)
 *   latest_reminder  content
 *
 * Thread-safe: no global state.
 */
#ifndef DS4_CHAT_H
#define DS4_CHAT_H

#include "ds4/diag.h"
#include "ds4/status.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds4_chat_mode {
    DS4_CHAT_MODE_CHAT = 0,     /* "chat": no reasoning; the assistant turn opens with </think> */
    DS4_CHAT_MODE_THINKING = 1, /* "thinking": the assistant turn opens with <think> */
} ds4_chat_mode_t;

typedef enum ds4_reasoning_effort {
    DS4_REASONING_EFFORT_NONE = 0, /* Python None */
    DS4_REASONING_EFFORT_HIGH = 1, /* "high" (renders like none) */
    DS4_REASONING_EFFORT_MAX = 2,  /* "max": the fixed maximum-effort paragraph is prepended */
} ds4_reasoning_effort_t;

typedef struct ds4_chat_params {
    ds4_chat_mode_t mode;                   /* default DS4_CHAT_MODE_CHAT */
    ds4_reasoning_effort_t reasoning_effort; /* default NONE; only used in thinking mode */
    bool drop_thinking;                     /* default true: drop reasoning of turns before the
                                               last user message (off when any tools exist) */
    bool add_bos;                           /* default true: start with <｜begin▁of▁sentence｜> */
} ds4_chat_params_t;

ds4_chat_params_t ds4_chat_params_default(void);

/* Parses "chat" / "thinking" and null / "high" / "max"; false for anything else. */
bool ds4_chat_mode_parse(const char *s, ds4_chat_mode_t *out);
bool ds4_reasoning_effort_parse(const char *s, ds4_reasoning_effort_t *out);

/*
 * Renders `messages` into the V4 prompt. *prompt (ds4_free, NUL-terminated; *prompt_len
 * excludes the NUL) is set only on success. Every problem found is added to diag (may be NULL)
 * with its path ("messages[3].tool_call_id: ..."); returns DS4_ERR_TEMPLATE for messages that
 * cannot be rendered, DS4_ERR_INVALID_ARG for a bad params value.
 */
ds4_status_t ds4_chat_encode(const json_t *messages, const ds4_chat_params_t *params,
                             char **prompt, size_t *prompt_len, ds4_diag_t *diag);

/*
 * Parses a completion (the model's text after the prompt, ending with <｜end▁of▁sentence｜>)
 * into {"role": "assistant", "content", "reasoning_content", "tool_calls": [{"type":
 * "function", "function": {"name", "arguments"}}]} with arguments a JSON string
 * (string="true" parameters quoted, string="false" ones copied raw). *message is a new
 * reference, set only on success. Malformed text → DS4_ERR_PARSE with the problem in diag.
 */
ds4_status_t ds4_chat_parse(const char *completion, size_t len, ds4_chat_mode_t mode,
                            json_t **message, ds4_diag_t *diag);

/*
 * Serialises a JSON value exactly as Python's json.dumps(value, ensure_ascii=False) does
 * (floats in Python repr, NaN/Infinity spelled like Python). Returns a new string (ds4_free) or
 * NULL on allocation failure; *len (optional) gets its length.
 */
char *ds4_chat_json_dumps(const json_t *value, size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* DS4_CHAT_H */
