/*
 * test_chat - the V4 chat encoding against DeepSeek's official encoder: the three official test
 * vectors (with their parse assertions), the 90 generated rows, 250 differential rows, reject
 * cases for malformed messages and completions, and Python-compatible JSON output.
 */
#include "test.h"
#include "tok-test-util.h"

#include "ds4/chat.h"
#include "ds4/json.h"

static void check_rows(const char *fixture, size_t want_enc, size_t want_parse)
{
    json_t *rows = tok_test_read_jsonl(ds4_test_fixture(fixture));
    DS4_CHECK(rows != NULL);
    size_t i, n_enc = 0, n_parse = 0, bad = 0;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        const char *kind = json_string_value(json_object_get(row, "kind"));
        ds4_chat_mode_t mode;
        DS4_CHECK(ds4_chat_mode_parse(json_string_value(json_object_get(row, "thinking_mode")),
                                      &mode));
        ds4_diag_t diag;
        ds4_diag_init(&diag);
        if (strcmp(kind, "encode") == 0) {
            n_enc++;
            ds4_chat_params_t p = ds4_chat_params_default();
            p.mode = mode;
            DS4_CHECK(ds4_reasoning_effort_parse(
                json_string_value(json_object_get(row, "reasoning_effort")),
                &p.reasoning_effort));
            const json_t *dt = json_object_get(row, "drop_thinking");
            if (json_is_boolean(dt))
                p.drop_thinking = json_is_true(dt);
            char *prompt = NULL;
            size_t len = 0;
            ds4_status_t st = ds4_chat_encode(json_object_get(row, "messages"), &p, &prompt,
                                              &len, &diag);
            const json_t *want = json_object_get(row, "prompt");
            bool ok = st == DS4_OK && len == json_string_length(want) &&
                      memcmp(prompt, json_string_value(want), len) == 0;
            if (!ok && bad++ < 5)
                fprintf(stderr, "  row %zu: prompt differs (status %s)\n", i,
                        ds4_status_name(st));
            ds4_free(prompt);
        } else {
            n_parse++;
            const json_t *c = json_object_get(row, "completion");
            json_t *msg = NULL;
            ds4_status_t st = ds4_chat_parse(json_string_value(c), json_string_length(c), mode,
                                             &msg, &diag);
            bool ok = st == DS4_OK && json_equal(msg, json_object_get(row, "parsed"));
            if (!ok && bad++ < 5)
                fprintf(stderr, "  row %zu: parsed message differs (status %s)\n", i,
                        ds4_status_name(st));
            json_decref(msg);
        }
        ds4_diag_free(&diag);
    }
    DS4_CHECK_EQ_INT(n_enc, want_enc);
    DS4_CHECK_EQ_INT(n_parse, want_parse);
    DS4_CHECKF(bad == 0, "%zu of %zu rows differ", bad, n_enc + n_parse);
    json_decref(rows);
}

static void test_generated_rows(void)
{
    check_rows("chat-encoding/generated-public.jsonl", 60, 30);
}

/* Random conversations (tools, tool results out of order, tasks, developer, reminders, odd
 * JSON values) rendered and parsed by the official encoder. */
static void test_differential_rows(void)
{
    check_rows("chat-encoding/differential-official.jsonl", 150, 100);
}

/* Encodes official case k in thinking mode; returns the prompt (ds4_free) after comparing. */
static char *official_case(int k)
{
    char path[64];
    snprintf(path, sizeof(path), "chat-encoding/test_input_%d.json", k);
    json_error_t err;
    json_t *in = json_load_file(ds4_test_fixture(path), 0, &err);
    DS4_CHECKF(in != NULL, "%s: %s", path, err.text);
    if (in == NULL)
        return NULL;
    json_t *messages = in;
    if (json_is_object(in)) { /* case 1: {"tools", "messages"}; tools belong to messages[0] */
        messages = json_object_get(in, "messages");
        json_object_set(json_array_get(messages, 0), "tools", json_object_get(in, "tools"));
    }
    snprintf(path, sizeof(path), "chat-encoding/test_output_%d.txt", k);
    size_t glen = 0;
    char *gold = ds4_test_read_file(ds4_test_fixture(path), &glen);
    DS4_CHECK(gold != NULL);
    ds4_chat_params_t p = ds4_chat_params_default();
    p.mode = DS4_CHAT_MODE_THINKING;
    char *prompt = NULL;
    size_t len = 0;
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    DS4_CHECK_STATUS(ds4_chat_encode(messages, &p, &prompt, &len, &diag), DS4_OK);
    DS4_CHECKF(prompt != NULL && gold != NULL && len == glen && memcmp(prompt, gold, len) == 0,
               "official case %d prompt differs", k);
    ds4_diag_free(&diag);
    ds4_free(gold);
    json_decref(in);
    return prompt;
}

static json_t *parse_between(const char *start, const char *end)
{
    json_t *msg = NULL;
    DS4_CHECK_STATUS(ds4_chat_parse(start, (size_t)(end - start), DS4_CHAT_MODE_THINKING, &msg,
                                    NULL),
                     DS4_OK);
    return msg;
}

static void test_official_case_1(void)
{
    char *prompt = official_case(1);
    if (prompt == NULL)
        return;
    const char *marker = "<｜Assistant｜><think>";
    const char *first = strstr(prompt, marker) + strlen(marker);
    const char *first_end = strstr(first, "<｜User｜>");
    json_t *tc = parse_between(first, first_end);
    DS4_CHECK(strcmp(json_string_value(json_object_get(tc, "reasoning_content")),
                     "The user wants to know the weather in Beijing. I should use the "
                     "get_weather tool.") == 0);
    DS4_CHECK(strcmp(json_string_value(json_object_get(tc, "content")), "") == 0);
    json_t *calls = json_object_get(tc, "tool_calls");
    DS4_CHECK_EQ_INT(json_array_size(calls), 1);
    json_t *fn = json_object_get(json_array_get(calls, 0), "function");
    DS4_CHECK(strcmp(json_string_value(json_object_get(fn, "name")), "get_weather") == 0);
    json_t *args = json_loads(json_string_value(json_object_get(fn, "arguments")), 0, NULL);
    json_t *want = json_pack("{s:s,s:s}", "location", "Beijing", "unit", "celsius");
    DS4_CHECK(json_equal(args, want));
    json_decref(args);
    json_decref(want);
    json_decref(tc);

    const char *last = prompt, *p;
    while ((p = strstr(last, marker)) != NULL)
        last = p + strlen(marker);
    json_t *fin = parse_between(last, prompt + strlen(prompt));
    DS4_CHECK(strcmp(json_string_value(json_object_get(fin, "reasoning_content")),
                     "Got the weather data. Let me format a nice response.") == 0);
    DS4_CHECK_STR_CONTAINS(json_string_value(json_object_get(fin, "content")), "22°C");
    DS4_CHECK_EQ_INT(json_array_size(json_object_get(fin, "tool_calls")), 0);
    json_decref(fin);
    ds4_free(prompt);
}

static void test_official_case_2(void)
{
    char *prompt = official_case(2);
    if (prompt == NULL)
        return;
    const char *marker = "<｜Assistant｜><think>";
    const char *last = prompt, *p;
    while ((p = strstr(last, marker)) != NULL)
        last = p + strlen(marker);
    json_t *msg = parse_between(last, prompt + strlen(prompt));
    DS4_CHECK(strcmp(json_string_value(json_object_get(msg, "reasoning_content")),
                     "The user asks about the capital of France. It is Paris.") == 0);
    DS4_CHECK(strcmp(json_string_value(json_object_get(msg, "content")),
                     "The capital of France is Paris.") == 0);
    DS4_CHECK_EQ_INT(json_array_size(json_object_get(msg, "tool_calls")), 0);
    DS4_CHECK(strstr(prompt, "The user said hello") == NULL);
    json_decref(msg);
    ds4_free(prompt);
}

static void test_official_case_3(void)
{
    ds4_free(official_case(3));
}

/* Encodes messages written as JSON text; returns the status, diag filled. */
static ds4_status_t encode_text(const char *json, ds4_diag_t *diag)
{
    json_t *m = json_loads(json, 0, NULL);
    DS4_CHECKF(m != NULL, "bad test JSON %s", json);
    ds4_chat_params_t p = ds4_chat_params_default();
    char *prompt = NULL;
    ds4_status_t st = ds4_chat_encode(m, &p, &prompt, NULL, diag);
    DS4_CHECK((st == DS4_OK) == (prompt != NULL));
    ds4_free(prompt);
    json_decref(m);
    return st;
}

static void expect_reject(const char *json, const char *needle)
{
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    DS4_CHECK_STATUS(encode_text(json, &diag), DS4_ERR_TEMPLATE);
    char *all = ds4_diag_join(&diag, "; ");
    DS4_CHECK_STR_CONTAINS(all, needle);
    ds4_free(all);
    ds4_diag_free(&diag);
}

static void test_bad_messages(void)
{
    expect_reject("[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"wizard\", "
                  "\"content\": \"x\"}]",
                  "messages[1].role: unknown role \"wizard\"");
    expect_reject("[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", "
                  "\"content\": \"\", \"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\", "
                  "\"function\": {\"name\": \"f\", \"arguments\": \"{}\"}}]}, {\"role\": "
                  "\"tool\", \"tool_call_id\": \"c2\", \"content\": \"r\"}]",
                  "messages[2].tool_call_id: \"c2\" matches no tool call");
    expect_reject("[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"tool\", "
                  "\"tool_call_id\": \"c1\", \"content\": \"r\"}]",
                  "messages[1]: tool result with no preceding assistant tool call");
    expect_reject("[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"x\"}]}]",
                  "messages[0].content: expected a string, got array");
    expect_reject("[{\"role\": \"system\", \"content\": 42}]",
                  "messages[0].content: expected a string, got integer");
    expect_reject("{\"role\": \"user\"}", "messages: expected an array");
    expect_reject("[\"hello\"]", "messages[0]: expected an object");
    expect_reject("[{\"content\": \"x\"}]", "messages[0].role: missing");
    expect_reject("[{\"role\": \"developer\", \"content\": \"\"}]", "messages[0].content");
    expect_reject("[{\"role\": \"user\", \"content\": \"x\", \"task\": \"dance\"}]",
                  "messages[0].task");
    expect_reject("[{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", "
                  "\"content\": \"\", \"tool_calls\": [{\"id\": \"c1\", \"function\": {\"name\": "
                  "\"f\", \"arguments\": \"[1, 2]\"}}]}]",
                  "messages[1].tool_calls[0]: function.arguments is JSON but not an object");
    /* every problem is reported, not just the first */
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    DS4_CHECK_STATUS(encode_text("[{\"role\": \"x\"}, {\"role\": \"user\", \"content\": 1}]",
                                 &diag),
                     DS4_ERR_TEMPLATE);
    DS4_CHECK(diag.count == 2);
    ds4_diag_free(&diag);
    /* a user message may carry content parts only through tool results; null diag is fine */
    DS4_CHECK_STATUS(encode_text("[{\"role\": \"bogus\"}]", NULL), DS4_ERR_TEMPLATE);
}

static void test_tool_results_reordered(void)
{
    /* results arrive in the reverse order of the calls; the prompt lists them in call order */
    const char *msgs =
        "[{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"\","
        " \"tool_calls\": [{\"id\": \"a\", \"function\": {\"name\": \"f\", \"arguments\": "
        "\"{\\\"x\\\": 1.5, \\\"y\\\": \\\"s\\\"}\"}}, {\"id\": \"b\", \"function\": {\"name\": "
        "\"g\", \"arguments\": \"not json\"}}]}, {\"role\": \"tool\", \"tool_call_id\": \"b\", "
        "\"content\": \"RB\"}, {\"role\": \"tool\", \"tool_call_id\": \"a\", \"content\": "
        "\"RA\"}, {\"role\": \"user\", \"content\": \"more\"}]";
    json_t *m = json_loads(msgs, 0, NULL);
    ds4_chat_params_t p = ds4_chat_params_default();
    char *prompt = NULL;
    DS4_CHECK_STATUS(ds4_chat_encode(m, &p, &prompt, NULL, NULL), DS4_OK);
    DS4_CHECK_STR_CONTAINS(prompt, "<｜User｜><tool_result>RA</tool_result>\n\n<tool_result>RB"
                                   "</tool_result>\n\nmore<｜Assistant｜></think>");
    DS4_CHECK_STR_CONTAINS(prompt, "<｜DSML｜parameter name=\"x\" string=\"false\">1.5<");
    DS4_CHECK_STR_CONTAINS(prompt, "<｜DSML｜parameter name=\"arguments\" string=\"true\">not "
                                   "json</｜DSML｜parameter>");
    ds4_free(prompt);
    json_decref(m);
}

static void expect_parse_error(const char *text, ds4_chat_mode_t mode, const char *needle)
{
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    json_t *msg = NULL;
    DS4_CHECK_STATUS(ds4_chat_parse(text, strlen(text), mode, &msg, &diag), DS4_ERR_PARSE);
    DS4_CHECK(msg == NULL);
    char *all = ds4_diag_join(&diag, "; ");
    DS4_CHECK_STR_CONTAINS(all, needle);
    ds4_free(all);
    ds4_diag_free(&diag);
}

static void test_bad_completions(void)
{
    expect_parse_error("no end", DS4_CHAT_MODE_CHAT, "missing <｜end▁of▁sentence｜>");
    expect_parse_error("thinking<｜end▁of▁sentence｜>", DS4_CHAT_MODE_THINKING, "missing </think>");
    expect_parse_error("a<think>b<｜end▁of▁sentence｜>", DS4_CHAT_MODE_CHAT,
                       "special token \"<think>\"");
    expect_parse_error("x<｜end▁of▁sentence｜>tail", DS4_CHAT_MODE_CHAT, "unexpected content");
    expect_parse_error("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter "
                       "nam=\"a\" string=\"true\">v</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
                       "</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
                       DS4_CHAT_MODE_CHAT, "parameter format error");
    expect_parse_error("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter "
                       "name=\"a\" string=\"true\">v</｜DSML｜parameter>\n<｜DSML｜parameter "
                       "name=\"a\" string=\"true\">w</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
                       "</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
                       DS4_CHAT_MODE_CHAT, "duplicate parameter name \"a\"");
    expect_parse_error("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n"
                       "</｜DSML｜tool_calls>junk<｜end▁of▁sentence｜>",
                       DS4_CHAT_MODE_CHAT, "unexpected content after the tool calls");
    expect_parse_error("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n",
                       DS4_CHAT_MODE_CHAT, "missing </｜DSML｜tool_calls>");
}

static void test_parse_tool_call_arguments(void)
{
    const char *text = "r</think>c\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
                       "<｜DSML｜parameter name=\"s\" string=\"true\">a \"q\"\n</｜DSML｜parameter>"
                       "\n<｜DSML｜parameter name=\"n\" string=\"false\">[1, 2]</｜DSML｜parameter>"
                       "\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>";
    json_t *msg = NULL;
    DS4_CHECK_STATUS(ds4_chat_parse(text, strlen(text), DS4_CHAT_MODE_THINKING, &msg, NULL),
                     DS4_OK);
    json_t *fn = json_object_get(json_array_get(json_object_get(msg, "tool_calls"), 0),
                                 "function");
    DS4_CHECK(strcmp(json_string_value(json_object_get(fn, "arguments")),
                     "{\"s\": \"a \\\"q\\\"\\n\", \"n\": [1, 2]}") == 0);
    DS4_CHECK(strcmp(json_string_value(json_object_get(msg, "reasoning_content")), "r") == 0);
    DS4_CHECK(strcmp(json_string_value(json_object_get(msg, "content")), "c") == 0);
    json_decref(msg);
}

/* Renders one assistant tool call with `args` and checks the DSML parameters. */
static void check_arguments(const char *args, const char *want_params)
{
    json_t *m = json_pack("[{s:s,s:s},{s:s,s:s,s:[{s:s,s:s,s:{s:s,s:s}}]}]", "role", "user",
                          "content", "q", "role", "assistant", "content", "", "tool_calls",
                          "id", "c", "type", "function", "function", "name", "f", "arguments",
                          args);
    ds4_chat_params_t p = ds4_chat_params_default();
    char *prompt = NULL;
    DS4_CHECK_STATUS(ds4_chat_encode(m, &p, &prompt, NULL, NULL), DS4_OK);
    DS4_CHECK_STR_CONTAINS(prompt, want_params);
    ds4_free(prompt);
    json_decref(m);
}

static void test_python_json_arguments(void)
{
    /* expected parameters are what the official encode_arguments_to_dsml writes (Python's
     * json.loads: unbounded ints, -0 → 0, repeated keys, NaN, 1e400 → Infinity) */
    check_arguments("{\"n\": 123456789012345678901234567890, \"z\": -0}",
                    "<｜DSML｜parameter name=\"n\" string=\"false\">123456789012345678901234567890"
                    "</｜DSML｜parameter>\n<｜DSML｜parameter name=\"z\" string=\"false\">0"
                    "</｜DSML｜parameter>");
    check_arguments("{\"a\": 1, \"b\": 2, \"a\": 3}",
                    "<｜DSML｜parameter name=\"a\" string=\"false\">3</｜DSML｜parameter>\n"
                    "<｜DSML｜parameter name=\"b\" string=\"false\">2</｜DSML｜parameter>");
    check_arguments("{\"x\": NaN, \"y\": 1e400, \"w\": 0.1e-3}",
                    "<｜DSML｜parameter name=\"x\" string=\"false\">NaN</｜DSML｜parameter>\n"
                    "<｜DSML｜parameter name=\"y\" string=\"false\">Infinity</｜DSML｜parameter>\n"
                    "<｜DSML｜parameter name=\"w\" string=\"false\">0.0001</｜DSML｜parameter>");
    check_arguments("{\"a\": 1} x", /* not JSON for Python: one raw "arguments" parameter */
                    "<｜DSML｜parameter name=\"arguments\" string=\"true\">{\"a\": 1} x<");
}

static void check_dump(const char *json_in, const char *python_out)
{
    json_t *v = json_loads(json_in, JSON_DECODE_ANY, NULL);
    char *s = ds4_chat_json_dumps(v, NULL);
    DS4_CHECKF(s != NULL && strcmp(s, python_out) == 0, "%s → %s, Python writes %s", json_in,
               s != NULL ? s : "(null)", python_out);
    ds4_free(s);
    json_decref(v);
}

static void test_python_json(void)
{
    /* expected strings are what CPython 3 json.dumps(..., ensure_ascii=False) prints */
    check_dump("{\"a\": [1, 2.0, true, null], \"b\": {}}",
               "{\"a\": [1, 2.0, true, null], \"b\": {}}");
    check_dump("[1e16, 1e-05, 0.0001, 123.456, 1.5e300, -0.0, 1e15]",
               "[1e+16, 1e-05, 0.0001, 123.456, 1.5e+300, -0.0, 1000000000000000.0]");
    check_dump("[0.30000000000000004, 12345678901234567890.0, 5e-324]",
               "[0.30000000000000004, 1.2345678901234567e+19, 5e-324]");
    check_dump("\"tab\\there \\u0001 \\\" \\\\ é 日本 \\u007f\"",
               "\"tab\\there \\u0001 \\\" \\\\ é 日本 \x7f\"");
    check_dump("{\"z\": 1, \"a\": 2}", "{\"z\": 1, \"a\": 2}");
}

int main(void)
{
    DS4_RUN(test_generated_rows);
    DS4_RUN(test_differential_rows);
    DS4_RUN(test_official_case_1);
    DS4_RUN(test_official_case_2);
    DS4_RUN(test_official_case_3);
    DS4_RUN(test_bad_messages);
    DS4_RUN(test_tool_results_reordered);
    DS4_RUN(test_bad_completions);
    DS4_RUN(test_parse_tool_call_arguments);
    DS4_RUN(test_python_json);
    DS4_RUN(test_python_json_arguments);
    return ds4_test_finish();
}
