/*
 * ds4-tokenize - the tokenizer and V4 chat encoding as a JSON-lines filter (stdin → stdout).
 *
 *   ds4-tokenize encode [--tokenizer FILE]     {"text": s}            → {"ids": [...]}
 *   ds4-tokenize decode [--tokenizer FILE] [--skip-special-tokens]
 *                                              {"ids": [...]}         → {"text": s}
 *   ds4-tokenize chat                          {"kind": "encode", "messages", "thinking_mode",
 *                                               "reasoning_effort", "drop_thinking"}
 *                                                                     → {"prompt": s}
 *                                              {"kind": "parse", "completion", "thinking_mode"}
 *                                                                     → {"parsed": {...}}
 * A bad row gives {"error": "..."} and processing continues with the next line. Exit status 0
 * when every row succeeded, 1 when some row failed, 2 on a usage or tokenizer-loading error.
 * Without --tokenizer the embedded default (models/tokenizer/tokenizer.json, or
 * $DS4_TOKENIZER) is used.
 */
#include "ds4/alloc.h"
#include "ds4/chat.h"
#include "ds4/json.h"
#include "ds4/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { CMD_ENCODE, CMD_DECODE, CMD_CHAT } cmd_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: ds4-tokenize encode|decode|chat [--tokenizer FILE] "
               "[--skip-special-tokens]\n"
               "  reads JSON lines on stdin, writes one JSON line per input line on stdout\n");
}

static void emit(json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT);
    if (s != NULL) {
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
    } else {
        fputs("{\"error\":\"out of memory\"}\n", stdout);
    }
    json_decref(obj);
}

static void emit_error(ds4_status_t st, ds4_diag_t *diag)
{
    char *joined = ds4_diag_join(diag, "; ");
    char msg[2048];
    snprintf(msg, sizeof(msg), "%s: %s", ds4_status_name(st),
             joined != NULL && joined[0] != '\0' ? joined : ds4_status_str(st));
    ds4_free(joined);
    emit(json_pack("{s:s}", "error", msg));
}

static ds4_status_t do_encode(const ds4_tokenizer_h *tok, ds4_tok_scratch_h *scratch,
                              const json_t *row, ds4_diag_t *diag)
{
    const char *text = NULL;
    if (!ds4_json_get_str(row, "", "text", true, &text, diag))
        return DS4_ERR_BAD_REQUEST;
    int32_t *ids = NULL;
    size_t n = 0;
    ds4_status_t st = ds4_tokenizer_encode(tok, scratch, text,
                                           json_string_length(json_object_get(row, "text")),
                                           &ids, &n, NULL, diag);
    if (st != DS4_OK)
        return st;
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_integer(ids[i]));
    ds4_free(ids);
    emit(json_pack("{s:o}", "ids", arr));
    return DS4_OK;
}

static ds4_status_t do_decode(const ds4_tokenizer_h *tok, const json_t *row, bool skip,
                              ds4_diag_t *diag)
{
    const json_t *arr = ds4_json_get_typed(row, "", "ids", true, JSON_ARRAY, diag);
    if (arr == NULL)
        return DS4_ERR_BAD_REQUEST;
    size_t n = json_array_size(arr);
    int32_t *ids = ds4_malloc_array(n + 1, sizeof(*ids));
    if (ids == NULL)
        return DS4_ERR_NO_MEMORY;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < INT32_MIN ||
            json_integer_value(v) > INT32_MAX) {
            ds4_diag_addf(diag, "ids", "element %zu is not a 32-bit integer", i);
            ds4_free(ids);
            return DS4_ERR_BAD_REQUEST;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    const json_t *js = json_object_get(row, "skip_special_tokens");
    if (json_is_boolean(js))
        skip = json_is_true(js);
    char *text = NULL;
    size_t len = 0;
    ds4_status_t st = ds4_tokenizer_decode(tok, ids, n, skip, &text, &len, diag);
    ds4_free(ids);
    if (st != DS4_OK)
        return st;
    emit(json_pack("{s:s%}", "text", text, len));
    ds4_free(text);
    return DS4_OK;
}

static ds4_status_t do_chat(const json_t *row, ds4_diag_t *diag)
{
    const char *kind = NULL, *mode_s = "chat";
    if (!ds4_json_get_str(row, "", "kind", true, &kind, diag))
        return DS4_ERR_BAD_REQUEST;
    ds4_json_get_str(row, "", "thinking_mode", false, &mode_s, diag);
    ds4_chat_mode_t mode;
    if (!ds4_chat_mode_parse(mode_s, &mode)) {
        ds4_diag_addf(diag, "thinking_mode", "expected \"chat\" or \"thinking\"");
        return DS4_ERR_BAD_REQUEST;
    }
    if (strcmp(kind, "encode") == 0) {
        ds4_chat_params_t p = ds4_chat_params_default();
        p.mode = mode;
        const json_t *re = json_object_get(row, "reasoning_effort");
        if ((re != NULL && !json_is_null(re) && !json_is_string(re)) ||
            !ds4_reasoning_effort_parse(json_string_value(re), &p.reasoning_effort)) {
            ds4_diag_addf(diag, "reasoning_effort", "expected null, \"high\" or \"max\"");
            return DS4_ERR_BAD_REQUEST;
        }
        const json_t *dt = json_object_get(row, "drop_thinking");
        if (json_is_boolean(dt))
            p.drop_thinking = json_is_true(dt);
        const json_t *bos = json_object_get(row, "add_default_bos_token");
        if (json_is_boolean(bos))
            p.add_bos = json_is_true(bos);
        char *prompt = NULL;
        size_t len = 0;
        ds4_status_t st = ds4_chat_encode(json_object_get(row, "messages"), &p, &prompt, &len,
                                          diag);
        if (st != DS4_OK)
            return st;
        emit(json_pack("{s:s%}", "prompt", prompt, len));
        ds4_free(prompt);
        return DS4_OK;
    }
    if (strcmp(kind, "parse") == 0) {
        const char *completion = NULL;
        if (!ds4_json_get_str(row, "", "completion", true, &completion, diag))
            return DS4_ERR_BAD_REQUEST;
        json_t *msg = NULL;
        ds4_status_t st = ds4_chat_parse(
            completion, json_string_length(json_object_get(row, "completion")), mode, &msg,
            diag);
        if (st != DS4_OK)
            return st;
        emit(json_pack("{s:o}", "parsed", msg));
        return DS4_OK;
    }
    ds4_diag_addf(diag, "kind", "expected \"encode\" or \"parse\", got \"%s\"", kind);
    return DS4_ERR_BAD_REQUEST;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    cmd_t cmd;
    if (strcmp(argv[1], "encode") == 0)
        cmd = CMD_ENCODE;
    else if (strcmp(argv[1], "decode") == 0)
        cmd = CMD_DECODE;
    else if (strcmp(argv[1], "chat") == 0)
        cmd = CMD_CHAT;
    else if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    } else {
        usage(stderr);
        return 2;
    }
    const char *tok_path = NULL;
    bool skip = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) {
            tok_path = argv[++i];
        } else if (strcmp(argv[i], "--skip-special-tokens") == 0) {
            skip = true;
        } else {
            usage(stderr);
            return 2;
        }
    }
    ds4_tokenizer_h *tok = NULL;
    ds4_tok_scratch_h *scratch = NULL;
    if (cmd != CMD_CHAT) {
        ds4_diag_t diag;
        ds4_diag_init(&diag);
        ds4_status_t st = tok_path != NULL ? ds4_tokenizer_load(tok_path, &tok, &diag)
                                           : ds4_tokenizer_load_default(&tok, &diag);
        if (st != DS4_OK) {
            char *j = ds4_diag_join(&diag, "\n  ");
            fprintf(stderr, "ds4-tokenize: cannot load tokenizer %s: %s\n  %s\n",
                    tok_path != NULL ? tok_path : ds4_tokenizer_default_path(),
                    ds4_status_str(st), j != NULL ? j : "");
            ds4_free(j);
            ds4_diag_free(&diag);
            return 2;
        }
        ds4_diag_free(&diag);
        if (ds4_tok_scratch_create(tok, &scratch) != DS4_OK) {
            ds4_tokenizer_destroy(tok);
            return 2;
        }
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int failed = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (n == 1 && line[0] == '\n')
            continue;
        ds4_diag_t diag;
        ds4_diag_init(&diag);
        json_t *row = NULL;
        size_t bad = 0;
        ds4_status_t st = DS4_OK;
        if (!ds4_utf8_validate(line, (size_t)n, &bad)) {
            /* JSON text must be UTF-8: name the offending byte instead of a JSON error */
            ds4_diag_addf(&diag, "line", "invalid UTF-8 at byte offset %zu of the line (byte "
                          "0x%02x)", bad, (unsigned)(unsigned char)line[bad]);
            st = DS4_ERR_INVALID_UTF8;
        } else {
            st = ds4_json_load_buf(line, (size_t)n, "line", &row, &diag);
        }
        if (st == DS4_OK && !json_is_object(row)) {
            ds4_diag_addf(&diag, "line", "expected a JSON object");
            st = DS4_ERR_BAD_REQUEST;
        }
        if (st == DS4_OK) {
            if (cmd == CMD_ENCODE)
                st = do_encode(tok, scratch, row, &diag);
            else if (cmd == CMD_DECODE)
                st = do_decode(tok, row, skip, &diag);
            else
                st = do_chat(row, &diag);
        }
        if (st != DS4_OK) {
            emit_error(st, &diag);
            failed++;
        }
        json_decref(row);
        ds4_diag_free(&diag);
        fflush(stdout);
    }
    free(line);
    ds4_tok_scratch_destroy(scratch);
    ds4_tokenizer_destroy(tok);
    return failed > 0 ? 1 : 0;
}
