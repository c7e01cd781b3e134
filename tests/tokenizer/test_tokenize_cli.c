/*
 * test_tokenize_cli - drives the ds4-tokenize JSON-lines tool: good rows give results, a bad
 * row gives one {"error": ...} line naming the problem and the next row is still processed,
 * and the exit status reports that some row failed.
 */
#include "test.h"

#include <jansson.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs ds4-tokenize `args` on `input`; returns the output lines as a JSON array of parsed
 * lines and the exit status in *status. */
static json_t *run_tool(const char *args, const char *input, int *status)
{
    char in_path[] = "/tmp/ds4-tok-cli-XXXXXX";
    int fd = mkstemp(in_path);
    DS4_CHECK(fd >= 0);
    if (fd < 0)
        return NULL;
    DS4_CHECK(write(fd, input, strlen(input)) == (ssize_t)strlen(input));
    close(fd);
    const char *bin = getenv("DS4_BINARY_DIR");
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/tools/ds4-tokenize/ds4-tokenize %s < %s",
             bin != NULL ? bin : "build", args, in_path);
    FILE *p = popen(cmd, "r");
    json_t *lines = json_array();
    char buf[65536];
    while (p != NULL && fgets(buf, sizeof(buf), p) != NULL)
        json_array_append_new(lines, json_loads(buf, 0, NULL));
    int rc = p != NULL ? pclose(p) : -1;
    *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    unlink(in_path);
    return lines;
}

static const char *error_of(const json_t *lines, size_t i)
{
    return json_string_value(json_object_get(json_array_get(lines, i), "error"));
}

static void test_encode_rows(void)
{
    int st = 0;
    json_t *out = run_tool("encode",
                           "{\"text\": \"<｜User｜>你好<｜Assistant｜>\"}\n"
                           "not json\n"
                           "{\"text\": 5}\n"
                           "{\"text\": \"again\"}\n"
                           "{\"text\": \"ab\xff\"}\n",
                           &st);
    DS4_CHECK_EQ_INT(json_array_size(out), 5);
    DS4_CHECK_STR_CONTAINS(error_of(out, 4), "DS4_ERR_INVALID_UTF8: line: invalid UTF-8 at byte "
                                             "offset 12");
    json_t *ids = json_object_get(json_array_get(out, 0), "ids");
    DS4_CHECK_EQ_INT(json_array_size(ids), 3);
    DS4_CHECK_EQ_INT(json_integer_value(json_array_get(ids, 0)), 128803);
    DS4_CHECK_EQ_INT(json_integer_value(json_array_get(ids, 1)), 30594);
    DS4_CHECK_STR_CONTAINS(error_of(out, 1), "invalid JSON");
    DS4_CHECK_STR_CONTAINS(error_of(out, 2), "text");
    DS4_CHECK(json_array_size(json_object_get(json_array_get(out, 3), "ids")) > 0);
    DS4_CHECK_EQ_INT(st, 1);
    json_decref(out);
}

static void test_decode_rows(void)
{
    int st = 0;
    json_t *out = run_tool("decode",
                           "{\"ids\": [128803, 30594, 1]}\n"
                           "{\"ids\": [5, 999999]}\n"
                           "{\"ids\": [128821, 36101], \"skip_special_tokens\": true}\n",
                           &st);
    DS4_CHECK_EQ_INT(json_array_size(out), 3);
    const char *t0 = json_string_value(json_object_get(json_array_get(out, 0), "text"));
    DS4_CHECK(t0 != NULL && strcmp(t0, "<｜User｜>你好<｜end▁of▁sentence｜>") == 0);
    DS4_CHECK_STR_CONTAINS(error_of(out, 1), "DS4_ERR_VOCAB");
    DS4_CHECK_STR_CONTAINS(error_of(out, 1), "id 999999");
    const char *t2 = json_string_value(json_object_get(json_array_get(out, 2), "text"));
    DS4_CHECK(t2 != NULL && strcmp(t2, "推理") == 0);
    DS4_CHECK_EQ_INT(st, 1);
    json_decref(out);
}

static void test_chat_rows(void)
{
    int st = 0;
    json_t *out = run_tool(
        "chat",
        "{\"kind\": \"encode\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
        "\"thinking_mode\": \"thinking\", \"reasoning_effort\": null, \"drop_thinking\": true}\n"
        "{\"kind\": \"encode\", \"messages\": [{\"role\": \"robot\"}], \"thinking_mode\": \"chat\"}\n"
        "{\"kind\": \"parse\", \"completion\": \"r</think>ok<｜end▁of▁sentence｜>\", "
        "\"thinking_mode\": \"thinking\"}\n",
        &st);
    DS4_CHECK_EQ_INT(json_array_size(out), 3);
    const char *p = json_string_value(json_object_get(json_array_get(out, 0), "prompt"));
    DS4_CHECK(p != NULL &&
              strcmp(p, "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>") == 0);
    DS4_CHECK_STR_CONTAINS(error_of(out, 1), "messages[0].role: unknown role \"robot\"");
    json_t *parsed = json_object_get(json_array_get(out, 2), "parsed");
    DS4_CHECK(strcmp(json_string_value(json_object_get(parsed, "content")), "ok") == 0);
    DS4_CHECK(strcmp(json_string_value(json_object_get(parsed, "reasoning_content")), "r") == 0);
    DS4_CHECK_EQ_INT(st, 1);
    json_decref(out);
}

int main(void)
{
    DS4_RUN(test_encode_rows);
    DS4_RUN(test_decode_rows);
    DS4_RUN(test_chat_rows);
    return ds4_test_finish();
}
