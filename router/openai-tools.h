/*
 * router/openai-tools.h - tool calls in a model's answer, for /v1/chat/completions.
 */
#ifndef DS4_ROUTER_OPENAI_TOOLS_H
#define DS4_ROUTER_OPENAI_TOOLS_H

#include <stddef.h>

#include <jansson.h>

/*
 * Parses a completion (the model's raw text after the prompt, special tokens included, ending
 * with <｜end▁of▁sentence｜>) rendered in chat mode `mode` (ds4_chat_mode_t) with the V4 grammar
 * (ds4_chat_parse). When it holds tool calls, returns a new OpenAI assistant message
 * {"role", "content", "reasoning_content", "tool_calls": [{"index", "id": "call_<id_prefix>_<i>",
 * "type": "function", "function": {"name", "arguments" (a JSON string)}}]}; NULL when the text
 * has no tool call or does not parse (the caller then answers with the plain text).
 */
json_t *openai_tool_message(const char *completion, size_t len, int mode, const char *id_prefix);

#endif /* DS4_ROUTER_OPENAI_TOOLS_H */
