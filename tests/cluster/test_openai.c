/*
 * test_openai: the router's OpenAI- and Anthropic-compatible HTTP API with real processes on
 * loopback (ds4-router, ds4-prefill, ds4-decode on the embedded tiny model written here by
 * ds4-mkmodel), driven by a small HTTP/1.1 client on plain sockets.
 *
 *  - /v1/completions with a token-id prompt and /v1/chat/completions (chat and thinking mode),
 *    greedy: the token ids are the single-process engine's (pdh_ref_generate) and the gRPC
 *    Generate's for the same request; the text is the tokenizer's decoding of those ids without
 *    special tokens, split at </think> into reasoning_content and content; usage counts match;
 *  - streaming: the chunks concatenate to the non-streaming text and ids, the last chunk has
 *    finish_reason, the usage chunk follows, then data: [DONE];
 *  - stop strings: the text ends before the stop, finish_reason stop (Anthropic: stop_sequence);
 *  - each invalid field → 400 whose message and param name it; malformed JSON; 404 / 405 / 413;
 *  - a client that closes the connection mid-stream: KV blocks on the workers return to 0;
 *  - deadline_ms → 504; no decode worker → 503;
 *  - /v1/messages: the Anthropic response and SSE event order, its error shape;
 *  - tool calls: DeepSeek's official parse vectors (tests/fixtures/chat-encoding) through the
 *    completion → OpenAI tool_calls mapping; a chat with tools renders them into the prompt.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "ds4.pb-c.h"
#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/diag.h"
#include "ds4/tokenizer.h"
#include "openai-tools.h"
#include "pd-harness.h"
#include "test.h"

static proc_t router, prefill0, decode0;
static ds4_tokenizer_h *tok;
static int32_t think_end_id;

/* ---- a minimal HTTP/1.1 client (Connection: close, chunked decoding) ---- */

typedef struct http_resp {
    int status;
    char head[4096];
    char *body; /* de-chunked, NUL-terminated (free) */
    size_t len;
} http_resp_t;

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static bool send_request(int fd, const char *method, const char *path, const char *body,
                         size_t body_len)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     method, path, body_len);
    return send_all(fd, head, (size_t)n) && send_all(fd, body, body_len);
}

/* Decodes a chunked body in place; false when malformed. */
static bool dechunk(char *p, size_t len, size_t *out_len)
{
    size_t in = 0, out = 0;
    for (;;) {
        char *end = NULL;
        if (in >= len)
            return false;
        unsigned long n = strtoul(p + in, &end, 16);
        char *crlf = strstr(p + in, "\r\n");
        if (crlf == NULL || end == p + in)
            return false;
        in = (size_t)(crlf - p) + 2;
        if (n == 0)
            break;
        if (in + n + 2 > len)
            return false;
        memmove(p + out, p + in, n);
        out += n;
        in += n + 2;
    }
    p[out] = '\0';
    *out_len = out;
    return true;
}

static bool http(const char *method, const char *path, const char *body, http_resp_t *r)
{
    memset(r, 0, sizeof(*r));
    r->status = -1;
    int fd = connect_to(router.http_port);
    if (fd < 0)
        return false;
    /* a refused body (413) may be cut short by the server: read its answer anyway */
    send_request(fd, method, path, body, strlen(body));
    size_t cap = 1 << 16, got = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (got + 1 >= cap)
            buf = realloc(buf, cap *= 2);
        ssize_t n = read(fd, buf + got, cap - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    char *sep = strstr(buf, "\r\n\r\n");
    if (got < 12 || sep == NULL) {
        free(buf);
        return false;
    }
    r->status = atoi(buf + 9);
    snprintf(r->head, sizeof(r->head), "%.*s", (int)(sep - buf), buf);
    size_t body_len = got - (size_t)(sep + 4 - buf);
    memmove(buf, sep + 4, body_len);
    buf[body_len] = '\0';
    r->body = buf;
    r->len = body_len;
    if (strstr(r->head, "Transfer-Encoding: chunked") != NULL && !dechunk(buf, body_len, &r->len))
        return false;
    return true;
}

/* POST a JSON object (stolen); the parsed response body (NULL when not JSON). */
static json_t *post(const char *path, json_t *req, http_resp_t *r)
{
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    bool ok = http("POST", path, text, r);
    free(text);
    if (!ok)
        return NULL;
    return json_loads(r->body, 0, NULL);
}

/* SSE events of a body: names (or "") and parsed data (or a JSON string for "[DONE]"). */
typedef struct sse {
    size_t n;
    char names[512][32];
    json_t *data[512];
} sse_t;

static void sse_parse(const char *body, sse_t *s)
{
    memset(s, 0, sizeof(*s));
    const char *p = body;
    while (*p != '\0' && s->n < 512) {
        const char *end = strstr(p, "\n\n");
        if (end == NULL)
            break;
        char *ev = strndup(p, (size_t)(end - p));
        char *line = ev;
        while (line != NULL && *line != '\0') {
            char *nl = strchr(line, '\n');
            if (nl != NULL)
                *nl = '\0';
            if (strncmp(line, "event: ", 7) == 0)
                snprintf(s->names[s->n], sizeof(s->names[0]), "%s", line + 7);
            else if (strncmp(line, "data: ", 6) == 0)
                s->data[s->n] = strcmp(line + 6, "[DONE]") == 0 ? json_string("[DONE]")
                                                                : json_loads(line + 6, 0, NULL);
            line = nl != NULL ? nl + 1 : NULL;
        }
        free(ev);
        s->n++;
        p = end + 2;
    }
}

static void sse_free(sse_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        json_decref(s->data[i]);
}

/* o at a path like "$.choices[0].delta.content" or "object" (NULL when absent). */
static json_t *jpath(const json_t *o, const char *path)
{
    const char *p = path[0] == '$' ? path + 1 : path;
    json_t *v = (json_t *)o;
    while (v != NULL && *p != '\0') {
        if (*p == '.') {
            p++;
            continue;
        }
        if (*p == '[') {
            char *end = NULL;
            long i = strtol(p + 1, &end, 10);
            v = json_array_get(v, (size_t)i);
            p = end + 1;
            continue;
        }
        size_t n = strcspn(p, ".[");
        char key[64];
        snprintf(key, sizeof(key), "%.*s", (int)n, p);
        v = json_object_get(v, key);
        p += n;
    }
    return v;
}

static const char *jstr(const json_t *o, const char *path)
{
    json_t *v = jpath(o, path);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ---- gRPC Generate / Tokenize (the path already checked against the engine) ---- */

static uv_loop_t loop;
static ds4_rpc_ctx_h ctx;
static ds4_rpc_channel_h ch;

typedef struct rpc_state {
    bool done;
    ds4_rpc_code_t code;
    int32_t ids[4096];
    size_t n_ids;
    char text[16384];
    size_t text_len;
} rpc_state_t;

static void on_msg(ds4_rpc_client_call_h call, ProtobufCMessage *m, void *arg)
{
    rpc_state_t *s = arg;
    if (m->descriptor == &ds4__v1__tokenize_response__descriptor) {
        Ds4__V1__TokenizeResponse *t = (void *)m;
        for (size_t i = 0; i < t->n_ids && s->n_ids < 4096; i++)
            s->ids[s->n_ids++] = (int32_t)t->ids[i];
    } else {
        Ds4__V1__GenerateResponse *g = (void *)m;
        for (size_t i = 0; i < g->n_token_ids && s->n_ids < 4096; i++)
            s->ids[s->n_ids++] = (int32_t)g->token_ids[i];
        size_t n = strlen(g->text_delta);
        if (s->text_len + n < sizeof(s->text)) {
            memcpy(s->text + s->text_len, g->text_delta, n + 1);
            s->text_len += n;
        }
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

static void on_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *msg, void *arg)
{
    rpc_state_t *s = arg;
    s->done = true;
    s->code = code;
}

static bool rpc(const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp, rpc_state_t *s)
{
    memset(s, 0, sizeof(*s));
    ds4_rpc_call_params_t cp = {.method = method,
                                .request = req,
                                .response_type = resp,
                                .timeout_ms = 30000,
                                .on_message = on_msg,
                                .on_done = on_done,
                                .arg = s};
    if (ds4_rpc_channel_call(ch, &cp, NULL) != DS4_OK)
        return false;
    uint64_t end = ds4_clock_now_ms() + 30000;
    while (!s->done && ds4_clock_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    return s->done && s->code == DS4_RPC_OK;
}

/* gRPC Generate of token ids, greedy. */
static bool grpc_generate_ids(const int32_t *ids, size_t n, uint32_t max_tokens, rpc_state_t *s)
{
    uint32_t *u = malloc(n * sizeof(*u));
    for (size_t i = 0; i < n; i++)
        u[i] = (uint32_t)ids[i];
    Ds4__V1__TokenIds p = DS4__V1__TOKEN_IDS__INIT;
    p.n_ids = n;
    p.ids = u;
    Ds4__V1__GenerateRequest g = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    g.api_version = 1;
    g.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS;
    g.prompt_ids = &p;
    g.return_text = 1;
    sp.max_tokens = max_tokens;
    g.sampling = &sp;
    bool ok = rpc("/ds4.v1.Ds4/Generate", &g.base, &ds4__v1__generate_response__descriptor, s);
    free(u);
    return ok;
}

/* ---- references ---- */

static char *decode_text(const int32_t *ids, size_t n)
{
    /* ids of the model's padded vocabulary past the tokenizer's have no text */
    int32_t *known = malloc((n + 1) * sizeof(*known));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if ((uint32_t)ids[i] < ds4_tokenizer_n_ids(tok))
            known[k++] = ids[i];
    char *t = NULL;
    size_t len = 0;
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_status_t st = ds4_tokenizer_decode(tok, known, k, true, &t, &len, &d);
    free(known);
    if (st != DS4_OK) {
        ds4_diag_log(&d, "decode");
        ds4_diag_free(&d);
        return strdup("?");
    }
    ds4_diag_free(&d);
    return t;
}

static bool ids_equal(const json_t *arr, const int32_t *ids, size_t n)
{
    if (!json_is_array(arr) || json_array_size(arr) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(arr, i)) != ids[i])
            return false;
    return true;
}

static int32_t *make_prompt(size_t n, uint32_t seed)
{
    int32_t *ids = malloc(n * sizeof(*ids));
    uint64_t x = seed * 2654435761u + 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = 2 + (int32_t)((x >> 33) % 100000u); /* ordinary vocab ids */
    }
    ids[0] = 0; /* BOS */
    return ids;
}

static json_t *ids_json(const int32_t *ids, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

/* ---- tests ---- */

static void test_completions_ids(void)
{
    enum { N = 40, MAX = 12 };
    int32_t *prompt = make_prompt(N, 5);
    gen_t g = {.ids = prompt, .n_ids = N, .max_tokens = MAX};
    int32_t want[64];
    size_t n_want = 0;
    DS4_CHECK(pdh_ref_generate(&g, want, &n_want));
    static rpc_state_t gs;
    DS4_CHECK(grpc_generate_ids(prompt, N, MAX, &gs));
    DS4_CHECK(gs.n_ids == n_want && memcmp(gs.ids, want, n_want * 4) == 0);
    char *want_text = decode_text(want, n_want);

    http_resp_t r;
    json_t *o = post("/v1/completions",
                     json_pack("{s:s, s:o, s:i, s:f, s:b}", "model", "ds4-tiny", "prompt",
                               ids_json(prompt, N), "max_tokens", MAX, "temperature", 0.0,
                               "return_token_ids", 1),
                     &r);
    DS4_CHECKF(r.status == 200 && o != NULL, "%d %s", r.status, r.body);
    DS4_CHECK_STR_CONTAINS(jstr(o, "object"), "text_completion");
    DS4_CHECK(ids_equal(jpath(o, "$.choices[0].token_ids"), want, n_want));
    const char *text = jstr(o, "$.choices[0].text");
    DS4_CHECKF(text != NULL && strcmp(text, want_text) == 0, "\"%s\" vs \"%s\"", text, want_text);
    DS4_CHECK_EQ_INT(json_integer_value(jpath(o, "$.usage.prompt_tokens")), N);
    DS4_CHECK_EQ_INT(json_integer_value(jpath(o, "$.usage.completion_tokens")), n_want);
    DS4_CHECK_EQ_INT(json_integer_value(jpath(o, "$.usage.total_tokens")), N + n_want);
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.choices[0].finish_reason"),
                           n_want == MAX ? "length" : "stop");
    json_decref(o);
    free(r.body);

    /* streaming: chunks concatenate to the same text and ids */
    o = post("/v1/completions",
             json_pack("{s:o, s:i, s:f, s:b, s:b, s:{s:b}}", "prompt", ids_json(prompt, N),
                       "max_tokens", MAX, "temperature", 0.0, "return_token_ids", 1, "stream", 1,
                       "stream_options", "include_usage", 1),
             &r);
    DS4_CHECK(r.status == 200 && o == NULL);
    DS4_CHECK_STR_CONTAINS(r.head, "text/event-stream");
    static sse_t s;
    sse_parse(r.body, &s);
    char acc[4096] = "";
    json_t *ids = json_array();
    DS4_CHECK(s.n >= 4);
    for (size_t i = 0; i + 2 < s.n; i++) {
        const char *t = jstr(s.data[i], "$.choices[0].text");
        if (t != NULL)
            strncat(acc, t, sizeof(acc) - strlen(acc) - 1);
        json_array_extend(ids, jpath(s.data[i], "$.choices[0].token_ids"));
    }
    DS4_CHECKF(strcmp(acc, want_text) == 0, "\"%s\" vs \"%s\"", acc, want_text);
    DS4_CHECK(ids_equal(ids, want, n_want));
    json_decref(ids);
    DS4_CHECK_STR_CONTAINS(jstr(s.data[s.n - 3], "$.choices[0].finish_reason"),
                           n_want == MAX ? "length" : "stop");
    DS4_CHECK_EQ_INT(json_array_size(json_object_get(s.data[s.n - 2], "choices")), 0);
    DS4_CHECK_EQ_INT(json_integer_value(jpath(s.data[s.n - 2], "$.usage.completion_tokens")),
                     n_want);
    DS4_CHECK_EQ_INT(json_integer_value(jpath(s.data[s.n - 2], "$.usage.prompt_tokens")), N);
    DS4_CHECK(json_is_string(s.data[s.n - 1]) &&
              strcmp(json_string_value(s.data[s.n - 1]), "[DONE]") == 0);
    sse_free(&s);
    free(r.body);
    free(want_text);

    /* seeded sampling: the same tokens as the engine with the same sampler and seed */
    gen_t g2 = {.ids = prompt,
                .n_ids = N,
                .max_tokens = MAX,
                .temperature = 0.8f,
                .top_p = 0.9f,
                .top_k = 40,
                .seed = 4242,
                .seeded = true};
    DS4_CHECK(pdh_ref_generate(&g2, want, &n_want));
    o = post("/v1/completions",
             json_pack("{s:o, s:i, s:f, s:f, s:i, s:i, s:b}", "prompt", ids_json(prompt, N),
                       "max_tokens", MAX, "temperature", 0.8, "top_p", 0.9, "top_k", 40, "seed",
                       4242, "return_token_ids", 1),
             &r);
    DS4_CHECKF(r.status == 200, "%d %s", r.status, r.body);
    DS4_CHECK(ids_equal(jpath(o, "$.choices[0].token_ids"), want, n_want));
    json_decref(o);
    free(r.body);
    free(prompt);
}

/* Chat (thinking or not): ids = the engine's on the gRPC Tokenize of the same messages. */
static void check_chat(bool thinking, uint32_t max_tokens)
{
    Ds4__V1__ChatMessage ms = DS4__V1__CHAT_MESSAGE__INIT, mu = DS4__V1__CHAT_MESSAGE__INIT;
    ms.role = "system";
    ms.content = "You are terse.";
    mu.role = "user";
    mu.content = "Explain KV caches.";
    Ds4__V1__ChatMessage *msgs[2] = {&ms, &mu};
    Ds4__V1__ChatPrompt chat = DS4__V1__CHAT_PROMPT__INIT;
    chat.n_messages = 2;
    chat.messages = msgs;
    chat.add_generation_prompt = 1;
    Ds4__V1__TokenizeRequest tr = DS4__V1__TOKENIZE_REQUEST__INIT;
    tr.input_case = DS4__V1__TOKENIZE_REQUEST__INPUT_CHAT;
    tr.chat = &chat;
    tr.reasoning =
        thinking ? DS4__V1__REASONING_MODE__REASONING_ON : DS4__V1__REASONING_MODE__REASONING_OFF;
    static rpc_state_t ts;
    DS4_CHECK(rpc("/ds4.v1.Ds4/Tokenize", &tr.base, &ds4__v1__tokenize_response__descriptor, &ts));
    gen_t g = {.ids = ts.ids, .n_ids = ts.n_ids, .max_tokens = max_tokens};
    int32_t want[256];
    size_t n_want = 0;
    DS4_CHECK(pdh_ref_generate(&g, want, &n_want));
    /* thinking: tokens up to </think> are the reasoning */
    size_t split = thinking ? n_want : 0;
    for (size_t i = 0; thinking && i < n_want; i++)
        if (want[i] == think_end_id) {
            split = i + 1;
            break;
        }
    char *want_reasoning = decode_text(want, split);
    char *want_content = decode_text(want + split, n_want - split);

    json_t *messages = json_pack("[{s:s, s:s}, {s:s, s:[{s:s, s:s}]}]", "role", "system", "content",
                                 "You are terse.", "role", "user", "content", "type", "text",
                                 "text", "Explain KV caches.");
    http_resp_t r;
    json_t *req = json_pack("{s:o, s:i, s:f, s:b, s:s}", "messages", messages,
                            "max_completion_tokens", max_tokens, "temperature", 0.0,
                            "return_token_ids", 1, "reasoning_effort", thinking ? "high" : "none");
    if (!thinking) { /* logprobs of the answer: greedy took the most likely token */
        json_object_set_new(req, "logprobs", json_true());
        json_object_set_new(req, "top_logprobs", json_integer(2));
    }
    json_t *o = post("/v1/chat/completions", json_deep_copy(req), &r);
    DS4_CHECKF(r.status == 200 && o != NULL, "%d %s", r.status, r.body);
    DS4_CHECK_STR_CONTAINS(jstr(o, "object"), "chat.completion");
    if (!thinking) {
        json_t *lc = jpath(o, "$.choices[0].logprobs.content");
        DS4_CHECK_EQ_INT(json_array_size(lc), n_want);
        for (size_t i = 0; i < json_array_size(lc) && i < n_want; i++) {
            json_t *e = json_array_get(lc, i);
            char *t = (uint32_t)want[i] < ds4_tokenizer_n_ids(tok) ? NULL : strdup("");
            if (t == NULL)
                ds4_tokenizer_decode(tok, &want[i], 1, false, &t, &(size_t){0}, NULL);
            DS4_CHECKF(jstr(e, "token") != NULL && strcmp(jstr(e, "token"), t) == 0,
                       "[%zu] %s vs %s", i, jstr(e, "token"), t);
            free(t);
            double lp = json_real_value(json_object_get(e, "logprob"));
            json_t *top = json_object_get(e, "top_logprobs");
            DS4_CHECK_EQ_INT(json_array_size(top), 2);
            DS4_CHECK(lp <= 0 && lp >= json_real_value(jpath(top, "[1].logprob")));
            DS4_CHECK(fabs(lp - json_real_value(jpath(top, "[0].logprob"))) < 1e-6);
        }
        json_object_del(req, "logprobs");
        json_object_del(req, "top_logprobs");
    }
    DS4_CHECK(ids_equal(jpath(o, "$.choices[0].token_ids"), want, n_want));
    const char *content = jstr(o, "$.choices[0].message.content");
    const char *reasoning = jstr(o, "$.choices[0].message.reasoning_content");
    DS4_CHECKF(content != NULL && strcmp(content, want_content) == 0, "\"%s\" vs \"%s\"", content,
               want_content);
    if (thinking)
        DS4_CHECKF(reasoning != NULL && strcmp(reasoning, want_reasoning) == 0, "\"%s\" vs \"%s\"",
                   reasoning, want_reasoning);
    else
        DS4_CHECK(reasoning == NULL);
    DS4_CHECK_EQ_INT(json_integer_value(jpath(o, "$.usage.prompt_tokens")), ts.n_ids);
    DS4_CHECK_EQ_INT(json_integer_value(jpath(o, "$.usage.completion_tokens")), n_want);
    DS4_CHECK_EQ_INT(
        json_integer_value(jpath(o, "$.usage.completion_tokens_details.reasoning_tokens")), split);
    json_decref(o);
    free(r.body);

    /* streaming: role first, deltas concatenate, finish chunk, usage chunk, [DONE] */
    json_object_set_new(req, "stream", json_true());
    json_object_set_new(req, "stream_options", json_pack("{s:b}", "include_usage", 1));
    o = post("/v1/chat/completions", req, &r);
    DS4_CHECK(r.status == 200);
    static sse_t s;
    sse_parse(r.body, &s);
    char acc_c[8192] = "", acc_r[8192] = "";
    json_t *ids = json_array();
    DS4_CHECK(s.n >= 4);
    DS4_CHECK_STR_CONTAINS(jstr(s.data[0], "$.choices[0].delta.role"), "assistant");
    for (size_t i = 0; i + 2 < s.n; i++) {
        DS4_CHECK_STR_CONTAINS(jstr(s.data[i], "object"), "chat.completion.chunk");
        const char *t = jstr(s.data[i], "$.choices[0].delta.content");
        if (t != NULL)
            strncat(acc_c, t, sizeof(acc_c) - strlen(acc_c) - 1);
        t = jstr(s.data[i], "$.choices[0].delta.reasoning_content");
        if (t != NULL)
            strncat(acc_r, t, sizeof(acc_r) - strlen(acc_r) - 1);
        json_array_extend(ids, jpath(s.data[i], "$.choices[0].token_ids"));
        if (i + 3 < s.n)
            DS4_CHECK(json_is_null(jpath(s.data[i], "$.choices[0].finish_reason")));
    }
    DS4_CHECKF(strcmp(acc_c, want_content) == 0, "\"%s\" vs \"%s\"", acc_c, want_content);
    DS4_CHECKF(strcmp(acc_r, want_reasoning) == 0, "\"%s\" vs \"%s\"", acc_r, want_reasoning);
    DS4_CHECK(ids_equal(ids, want, n_want));
    json_decref(ids);
    DS4_CHECK(jstr(s.data[s.n - 3], "$.choices[0].finish_reason") != NULL);
    DS4_CHECK_EQ_INT(json_integer_value(jpath(s.data[s.n - 2], "$.usage.total_tokens")),
                     ts.n_ids + n_want);
    DS4_CHECK(json_is_string(s.data[s.n - 1]));
    sse_free(&s);
    free(r.body);
    json_decref(o);
    free(want_reasoning);
    free(want_content);
}

static void test_chat(void)
{
    check_chat(false, 10);
    check_chat(true, 10);
}

/* A stop string from the middle of the full answer cuts the text there (finish stop). */
static void test_stop(void)
{
    http_resp_t r;
    json_t *req = json_pack("{s:s, s:i, s:f, s:b}", "prompt", "Once upon a time", "max_tokens", 16,
                            "temperature", 0.0, "ignore_eos", 1);
    json_t *o = post("/v1/completions", json_deep_copy(req), &r);
    const char *full = jstr(o, "$.choices[0].text");
    DS4_CHECKF(r.status == 200 && full != NULL && strlen(full) > 8, "%d %s", r.status, r.body);
    if (full == NULL || strlen(full) <= 8) {
        json_decref(req);
        json_decref(o);
        free(r.body);
        return;
    }
    size_t len = strlen(full), at = len / 2;
    while (at > 0 && ((unsigned char)full[at] & 0xC0) == 0x80)
        at--;
    size_t end = at + 1;
    while (end < len && ((unsigned char)full[end] & 0xC0) == 0x80)
        end++;
    char stop[16];
    snprintf(stop, sizeof(stop), "%.*s", (int)(end - at), full + at);
    size_t first = (size_t)(strstr(full, stop) - full);
    char *prefix = strndup(full, first);
    json_decref(o);
    free(r.body);
    json_object_set_new(req, "stop", json_string(stop));
    o = post("/v1/completions", req, &r);
    DS4_CHECK(r.status == 200);
    const char *cut = jstr(o, "$.choices[0].text");
    DS4_CHECKF(cut != NULL && strcmp(cut, prefix) == 0, "\"%s\" vs \"%s\"", cut, prefix);
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.choices[0].finish_reason"), "stop");
    json_decref(o);
    free(r.body);
    /* Anthropic names the stop sequence (chat mode, so compare to its own unstopped text) */
    json_t *areq = json_pack("{s:[{s:s, s:s}], s:i, s:f}", "messages", "role", "user", "content",
                             "Once upon a time", "max_tokens", 16, "temperature", 0.0);
    o = post("/v1/messages", json_deep_copy(areq), &r);
    const char *afull = jstr(o, "$.content[0].text");
    DS4_CHECKF(r.status == 200 && afull != NULL, "%d %s", r.status, r.body);
    char astop[16] = "";
    if (afull != NULL && strlen(afull) > 4) {
        size_t l = strlen(afull), a = l / 2;
        while (a > 0 && ((unsigned char)afull[a] & 0xC0) == 0x80)
            a--;
        size_t e = a + 1;
        while (e < l && ((unsigned char)afull[e] & 0xC0) == 0x80)
            e++;
        snprintf(astop, sizeof(astop), "%.*s", (int)(e - a), afull + a);
    }
    json_decref(o);
    free(r.body);
    if (astop[0] != '\0') {
        json_object_set_new(areq, "stop_sequences", json_pack("[s]", astop));
        o = post("/v1/messages", json_incref(areq), &r);
        DS4_CHECKF(r.status == 200, "%s", r.body);
        DS4_CHECK_STR_CONTAINS(jstr(o, "stop_reason"), "stop_sequence");
        DS4_CHECK(jstr(o, "stop_sequence") != NULL && strcmp(jstr(o, "stop_sequence"), astop) == 0);
        json_decref(o);
        free(r.body);
    }
    json_decref(areq);
    free(prefix);
}

/* One invalid request: status, and the field in the message and param. */
static void expect_error(const char *path, const char *body, int status, const char *field)
{
    http_resp_t r;
    DS4_CHECK(http("POST", path, body, &r));
    json_t *o = json_loads(r.body != NULL ? r.body : "", 0, NULL);
    DS4_CHECKF(r.status == status, "%s: got %d %s", body, r.status, r.body);
    const char *msg = jstr(o, "$.error.message");
    DS4_CHECKF(msg != NULL && strstr(msg, field) != NULL, "%s: \"%s\" lacks %s", body, r.body,
               field);
    if (strcmp(path, "/v1/messages") == 0) {
        DS4_CHECK_STR_CONTAINS(jstr(o, "type"), "error");
        DS4_CHECK(jstr(o, "$.error.type") != NULL);
    } else {
        DS4_CHECK(jstr(o, "$.error.type") != NULL);
        DS4_CHECK(json_object_get(json_object_get(o, "error"), "code") != NULL);
        const char *param = jstr(o, "$.error.param");
        if (status == 400 && field[0] != ' ')
            DS4_CHECKF(param != NULL && strcmp(param, field) == 0, "%s: param %s, want %s", body,
                       param, field);
    }
    json_decref(o);
    free(r.body);
}

static void test_invalid(void)
{
    const char *cc = "/v1/chat/completions";
#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
    expect_error(cc, "{" MSGS ",\"temperature\":-1}", 400, "temperature");
    expect_error(cc, "{" MSGS ",\"top_p\":1.5}", 400, "top_p");
    expect_error(cc, "{" MSGS ",\"top_k\":\"x\"}", 400, "top_k");
    expect_error(cc, "{" MSGS ",\"min_p\":2}", 400, "min_p");
    expect_error(cc, "{" MSGS ",\"presence_penalty\":3}", 400, "presence_penalty");
    expect_error(cc, "{" MSGS ",\"frequency_penalty\":-3}", 400, "frequency_penalty");
    expect_error(cc, "{" MSGS ",\"n\":2}", 400, "n");
    expect_error(cc, "{" MSGS ",\"max_tokens\":0}", 400, "max_tokens");
    expect_error(cc, "{" MSGS ",\"max_completion_tokens\":-5}", 400, "max_completion_tokens");
    expect_error(cc, "{" MSGS ",\"max_tokens\":100000000}", 400, "max_tokens");
    expect_error(cc, "{" MSGS ",\"stop\":[\"\"]}", 400, "stop[0]");
    expect_error(cc, "{" MSGS ",\"stop\":7}", 400, "stop");
    expect_error(cc, "{" MSGS ",\"logprobs\":\"yes\"}", 400, "logprobs");
    expect_error(cc, "{" MSGS ",\"top_logprobs\":99}", 400, "top_logprobs");
    expect_error(cc, "{" MSGS ",\"seed\":1.5}", 400, "seed");
    expect_error(cc, "{" MSGS ",\"stream\":\"yes\"}", 400, "stream");
    expect_error(cc, "{" MSGS ",\"reasoning_effort\":\"ultra\"}", 400, "reasoning_effort");
    expect_error(cc, "{" MSGS ",\"tool_choice\":\"required\"}", 400, "tool_choice");
    expect_error(cc, "{\"messages\":[]}", 400, "messages");
    expect_error(cc, "{}", 400, "messages");
    expect_error(cc, "{\"messages\":[{\"role\":\"pirate\",\"content\":\"arr\"}]}", 400,
                 "messages[0].role");
    expect_error(cc, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
                 400, "messages[0].content[0]");
    expect_error(cc, "{" MSGS ",\"model\":\"gpt-4o\"}", 404, "model");
    expect_error(cc, "{" MSGS ",\"temperature\":0.5", 400, " JSON");
    expect_error(cc, "not json at all", 400, " JSON");
    expect_error(cc, "[1,2]", 400, " object");
    const char *cp = "/v1/completions";
    expect_error(cp, "{\"prompt\":[0,-4]}", 400, "prompt[1]");
    expect_error(cp, "{\"prompt\":[0,99999999],\"max_tokens\":2}", 400, "prompt");
    expect_error(cp, "{\"prompt\":\"\"}", 400, "prompt");
    expect_error(cp, "{\"prompt\":\"x\",\"echo\":true}", 400, "echo");
    expect_error(cp, "{\"prompt\":\"x\",\"logprobs\":50}", 400, "logprobs");
    expect_error(cp, "{\"prompt\":{}}", 400, "prompt");
    expect_error(cp, "{\"prompt\":\"a\\u0000b\"}", 400, "prompt");
    expect_error(cp, "{\"prompt\":\"a\",\"stop\":[\"x\",\"\\u0000\"]}", 400, "stop[1]");
    const char *am = "/v1/messages";
    expect_error(am, "{" MSGS "}", 400, "max_tokens");
    expect_error(am, "{" MSGS ",\"max_tokens\":4,\"temperature\":1.5}", 400, "temperature");
    expect_error(am, "{\"messages\":[{\"role\":\"system\",\"content\":\"x\"}],\"max_tokens\":4}",
                 400, "messages[0].role");
    expect_error(am, "{" MSGS ",\"max_tokens\":4,\"stop_sequences\":\"x\"}", 400, "stop_sequences");
    expect_error(am, "{" MSGS ",\"max_tokens\":4,\"model\":\"claude\"}", 404, "model");
    expect_error(am, "{\"max_tokens\":4,", 400, " JSON");
    /* routes and methods */
    http_resp_t r;
    DS4_CHECK(http("GET", "/v1/chat/completions", "", &r));
    DS4_CHECK_EQ_INT(r.status, 405);
    DS4_CHECK_STR_CONTAINS(r.body, "\"error\"");
    free(r.body);
    DS4_CHECK(http("POST", "/v1/nothing", "{}", &r));
    DS4_CHECK_EQ_INT(r.status, 404);
    DS4_CHECK_STR_CONTAINS(r.body, "\"error\"");
    free(r.body);
    DS4_CHECK(http("GET", "/v1/models", "", &r));
    DS4_CHECK_EQ_INT(r.status, 200);
    json_t *o = json_loads(r.body, 0, NULL);
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.data[0].id"), "ds4-tiny");
    DS4_CHECK_STR_CONTAINS(jstr(o, "object"), "list");
    json_decref(o);
    free(r.body);
    /* a body over the server's 16 MiB limit */
    size_t big = (size_t)17 << 20;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[big] = '\0';
    DS4_CHECK(http("POST", "/v1/chat/completions", huge, &r));
    DS4_CHECK_EQ_INT(r.status, 413);
    free(r.body);
    free(huge);
    DS4_CHECK(pdh_wait_metric(router.http_port, "ds4_running_requests", 0, 2000));
#undef MSGS
}

static bool all_released(uint32_t timeout_ms)
{
    bool ok = pdh_wait_metric(decode0.http_port, "ds4_kv_blocks{state=\"used\"}", 0, timeout_ms) &&
              pdh_wait_metric(decode0.http_port, "ds4_running_requests", 0, timeout_ms) &&
              pdh_wait_metric(prefill0.http_port, "ds4_kv_sequences", 0, timeout_ms) &&
              pdh_wait_metric(router.http_port, "ds4_running_requests", 0, timeout_ms);
    if (!ok)
        fprintf(stderr, "  not released: decode used %g running %g, prefill seqs %g, router %g\n",
                pdh_metric(decode0.http_port, "ds4_kv_blocks{state=\"used\"}"),
                pdh_metric(decode0.http_port, "ds4_running_requests"),
                pdh_metric(prefill0.http_port, "ds4_kv_sequences"),
                pdh_metric(router.http_port, "ds4_running_requests"));
    return ok;
}

/* Reads an SSE stream until `events` data lines came, then closes the socket. */
static int stream_and_hang_up(const char *path, const char *body, int events)
{
    int fd = connect_to(router.http_port);
    if (fd < 0 || !send_request(fd, "POST", path, body, strlen(body)))
        return -1;
    char buf[65536];
    size_t got = 0;
    int seen = 0;
    while (seen < events && got + 1 < sizeof(buf)) {
        ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        seen = 0;
        for (const char *p = buf; (p = strstr(p, "data: ")) != NULL; p += 6)
            seen++;
    }
    close(fd);
    return seen;
}

static void test_disconnect(void)
{
    double cancelled0 = pdh_metric(router.http_port, "ds4_requests_total{code=\"cancelled\"}");
    if (cancelled0 != cancelled0) /* NAN: none yet */
        cancelled0 = 0;
    int seen = stream_and_hang_up(
        "/v1/chat/completions",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a long story.\"}],"
        "\"max_tokens\":3000,\"ignore_eos\":true,\"stream\":true}",
        4);
    DS4_CHECK(seen >= 4);
    DS4_CHECK(all_released(8000));
    DS4_CHECK(pdh_metric(router.http_port, "ds4_requests_total{code=\"cancelled\"}") ==
              cancelled0 + 1);
    /* the same for an Anthropic stream, and during a longer prefill (hang up at once) */
    seen = stream_and_hang_up("/v1/messages",
                              "{\"messages\":[{\"role\":\"user\",\"content\":\"Go on.\"}],"
                              "\"max_tokens\":3000,\"stream\":true}",
                              3);
    DS4_CHECK(seen >= 3);
    DS4_CHECK(all_released(8000));
    int32_t *p = make_prompt(2500, 8);
    json_t *req = json_pack("{s:o, s:i, s:b, s:b}", "prompt", ids_json(p, 2500), "max_tokens", 3000,
                            "ignore_eos", 1, "stream", 1);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    int fd = connect_to(router.http_port);
    DS4_CHECK(fd >= 0 && send_request(fd, "POST", "/v1/completions", body, strlen(body)));
    ds4_clock_sleep_ms(100);
    close(fd);
    DS4_CHECK(all_released(8000));
    free(body);
    free(p);
}

/* A full decode worker sheds load: 429 with the error object; the held streams, once their
 * clients hang up, release everything. */
static void test_shed(void)
{
    enum { FULL = 8 }; /* the decode worker's --max-sequences */
    int fds[FULL];
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Go on.\"}],"
                       "\"max_tokens\":3000,\"ignore_eos\":true,\"stream\":true}";
    for (int i = 0; i < FULL; i++) {
        fds[i] = connect_to(router.http_port);
        DS4_CHECK(fds[i] >= 0 &&
                  send_request(fds[i], "POST", "/v1/chat/completions", body, strlen(body)));
    }
    DS4_CHECK(pdh_wait_metric(decode0.http_port, "ds4_running_requests", FULL, 10000));
    http_resp_t r;
    json_t *o = post("/v1/chat/completions",
                     json_pack("{s:[{s:s, s:s}], s:i}", "messages", "role", "user", "content",
                               "one more", "max_tokens", 4),
                     &r);
    DS4_CHECKF(r.status == 429, "%d %s", r.status, r.body);
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.error.type"), "rate_limit");
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.error.message"), "full");
    json_decref(o);
    free(r.body);
    for (int i = 0; i < FULL; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    DS4_CHECK(all_released(10000));
}

static void test_deadline(void)
{
    http_resp_t r;
    json_t *o = post("/v1/chat/completions",
                     json_pack("{s:[{s:s, s:s}], s:i, s:b, s:i}", "messages", "role", "user",
                               "content", "Count to a million.", "max_tokens", 3000, "ignore_eos",
                               1, "deadline_ms", 300),
                     &r);
    DS4_CHECKF(r.status == 504, "%d %s", r.status, r.body);
    const char *m = jstr(o, "$.error.message");
    DS4_CHECKF(m != NULL && strcasestr(m, "deadline") != NULL, "%s", r.body);
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.error.type"), "timeout");
    json_decref(o);
    free(r.body);
    DS4_CHECK(all_released(8000));
}

static void test_anthropic(void)
{
    http_resp_t r;
    json_t *req =
        json_pack("{s:s, s:s, s:[{s:s, s:[{s:s, s:s}]}], s:i, s:f, s:{s:s, s:i}}", "model",
                  "ds4-tiny", "system", "Be brief.", "messages", "role", "user", "content", "type",
                  "text", "text", "Name a colour.", "max_tokens", 8, "temperature", 0.0, "thinking",
                  "type", "enabled", "budget_tokens", 1024);
    json_t *o = post("/v1/messages", json_deep_copy(req), &r);
    DS4_CHECKF(r.status == 200 && o != NULL, "%d %s", r.status, r.body);
    DS4_CHECK_STR_CONTAINS(jstr(o, "type"), "message");
    DS4_CHECK_STR_CONTAINS(jstr(o, "role"), "assistant");
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.content[0].type"), "thinking");
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.content[1].type"), "text");
    DS4_CHECK_STR_CONTAINS(jstr(o, "stop_reason"), "max_tokens");
    DS4_CHECK_EQ_INT(json_integer_value(jpath(o, "$.usage.output_tokens")), 8);
    long long in_tokens = json_integer_value(jpath(o, "$.usage.input_tokens"));
    DS4_CHECK(in_tokens > 5);
    char thinking[4096], text[4096];
    snprintf(thinking, sizeof(thinking), "%s", jstr(o, "$.content[0].thinking"));
    snprintf(text, sizeof(text), "%s", jstr(o, "$.content[1].text"));
    DS4_CHECK(strlen(thinking) + strlen(text) > 0);
    json_decref(o);
    free(r.body);

    json_object_set_new(req, "stream", json_true());
    o = post("/v1/messages", req, &r);
    DS4_CHECK(r.status == 200);
    static sse_t s;
    sse_parse(r.body, &s);
    DS4_CHECK(s.n >= 5);
    /* message_start (content_block_start delta+ content_block_stop)* message_delta message_stop */
    DS4_CHECK(strcmp(s.names[0], "message_start") == 0);
    DS4_CHECK_STR_CONTAINS(jstr(s.data[0], "type"), "message_start");
    DS4_CHECK_EQ_INT(json_integer_value(jpath(s.data[0], "$.message.usage.input_tokens")),
                     in_tokens);
    char acc_t[4096] = "", acc_x[4096] = "";
    size_t i = 1;
    int index = 0;
    bool order = true;
    while (i < s.n && strcmp(s.names[i], "content_block_start") == 0) {
        order &= json_integer_value(json_object_get(s.data[i], "index")) == index;
        const char *bt = jstr(s.data[i], "$.content_block.type");
        i++;
        while (i < s.n && strcmp(s.names[i], "content_block_delta") == 0) {
            order &= json_integer_value(json_object_get(s.data[i], "index")) == index;
            const char *t = jstr(s.data[i], "$.delta.thinking");
            if (t != NULL && bt != NULL && strcmp(bt, "thinking") == 0)
                strncat(acc_t, t, sizeof(acc_t) - strlen(acc_t) - 1);
            t = jstr(s.data[i], "$.delta.text");
            if (t != NULL && bt != NULL && strcmp(bt, "text") == 0)
                strncat(acc_x, t, sizeof(acc_x) - strlen(acc_x) - 1);
            i++;
        }
        order &= i < s.n && strcmp(s.names[i], "content_block_stop") == 0 &&
                 json_integer_value(json_object_get(s.data[i], "index")) == index;
        i++;
        index++;
    }
    DS4_CHECK(order);
    DS4_CHECK(index >= 1);
    DS4_CHECK(i + 2 == s.n);
    DS4_CHECK(i < s.n && strcmp(s.names[i], "message_delta") == 0);
    DS4_CHECK_STR_CONTAINS(jstr(s.data[i], "$.delta.stop_reason"), "max_tokens");
    DS4_CHECK_EQ_INT(json_integer_value(jpath(s.data[i], "$.usage.output_tokens")), 8);
    DS4_CHECK(i + 1 < s.n && strcmp(s.names[i + 1], "message_stop") == 0);
    DS4_CHECKF(strcmp(acc_t, thinking) == 0, "\"%s\" vs \"%s\"", acc_t, thinking);
    DS4_CHECKF(strcmp(acc_x, text) == 0, "\"%s\" vs \"%s\"", acc_x, text);
    sse_free(&s);
    free(r.body);
}

/* The same conversation with a tool call and its result through /v1/messages and
 * /v1/chat/completions renders the same prompt and gets the same greedy answer. */
static void test_anthropic_tools(void)
{
    json_t *params = json_pack("{s:s, s:{s:{s:s}}, s:[s]}", "type", "object", "properties", "city",
                               "type", "string", "required", "city");
    json_t *oai = json_pack(
        "{s:[{s:s, s:s}, {s:s, s:s}, {s:s, s:s, s:[{s:s, s:s, s:{s:s, s:{s:s}}}]},"
        " {s:s, s:s, s:s}], s:[{s:s, s:{s:s, s:s, s:O}}], s:i, s:f, s:s}",
        "messages", "role", "system", "content", "You help.", "role", "user", "content",
        "Weather in Paris?", "role", "assistant", "content", "", "tool_calls", "id", "c1", "type",
        "function", "function", "name", "get_weather", "arguments", "city", "Paris", "role", "tool",
        "tool_call_id", "c1", "content", "18 C", "tools", "type", "function", "function", "name",
        "get_weather", "description", "Weather of a city", "parameters", params, "max_tokens", 8,
        "temperature", 0.0, "reasoning_effort", "none");
    json_t *ant = json_pack(
        "{s:s, s:[{s:s, s:s}, {s:s, s:[{s:s, s:s, s:s, s:{s:s}}]},"
        " {s:s, s:[{s:s, s:s, s:s}]}], s:[{s:s, s:s, s:O}], s:i, s:f}",
        "system", "You help.", "messages", "role", "user", "content", "Weather in Paris?", "role",
        "assistant", "content", "type", "tool_use", "id", "c1", "name", "get_weather", "input",
        "city", "Paris", "role", "user", "content", "type", "tool_result", "tool_use_id", "c1",
        "content", "18 C", "tools", "name", "get_weather", "description", "Weather of a city",
        "input_schema", params, "max_tokens", 8, "temperature", 0.0);
    json_decref(params);
    http_resp_t r1, r2;
    json_t *o1 = post("/v1/chat/completions", oai, &r1);
    json_t *o2 = post("/v1/messages", ant, &r2);
    DS4_CHECKF(r1.status == 200, "%d %s", r1.status, r1.body);
    DS4_CHECKF(r2.status == 200, "%d %s", r2.status, r2.body);
    long long p1 = json_integer_value(jpath(o1, "usage.prompt_tokens"));
    long long p2 = json_integer_value(jpath(o2, "usage.input_tokens"));
    DS4_CHECKF(p1 == p2 && p1 > 100, "%lld vs %lld prompt tokens", p1, p2);
    const char *c1 = jstr(o1, "$.choices[0].message.content");
    const char *c2 = jstr(o2, "$.content[0].text");
    DS4_CHECKF(c1 != NULL && c2 != NULL && strcmp(c1, c2) == 0, "\"%s\" vs \"%s\"", c1, c2);
    json_decref(o1);
    json_decref(o2);
    free(r1.body);
    free(r2.body);
    expect_error("/v1/messages",
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":4,"
                 "\"tools\":[{\"name\":\"f\"}],\"tool_choice\":{\"type\":\"any\"}}",
                 400, "tool_choice");
    expect_error("/v1/messages",
                 "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_use\"}]}],"
                 "\"max_tokens\":4}",
                 400, "messages[0].content[0]");
}

/* With no decode worker the API answers 503 with the error object. */
static void test_no_workers(void)
{
    DS4_CHECK_EQ_INT(pdh_stop(&decode0, SIGTERM, 8000), 0);
    /* a drained worker leaves the registry at once, or after the liveness timeout (8 s) */
    DS4_CHECK(pdh_wait_metric(router.http_port, "ds4_workers{role=\"decode\"}", 0, 15000));
    http_resp_t r;
    json_t *o = post("/v1/chat/completions",
                     json_pack("{s:[{s:s, s:s}], s:i}", "messages", "role", "user", "content",
                               "hello", "max_tokens", 4),
                     &r);
    DS4_CHECKF(r.status == 503, "%d %s", r.status, r.body);
    DS4_CHECK_STR_CONTAINS(jstr(o, "$.error.message"), "no decode worker");
    json_decref(o);
    free(r.body);
}

typedef struct conc {
    int32_t *prompt;
    size_t n;
    bool stream;
    http_resp_t r;
    json_t *ids;
} conc_t;

static void *conc_run(void *arg)
{
    conc_t *c = arg;
    json_t *req = json_pack("{s:o, s:i, s:f, s:b, s:b, s:b}", "prompt", ids_json(c->prompt, c->n),
                            "max_tokens", 10, "temperature", 0.0, "return_token_ids", 1,
                            "ignore_eos", 1, "stream", c->stream);
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    http("POST", "/v1/completions", text, &c->r);
    free(text);
    return NULL;
}

/* 8 streams and whole answers at once: each gets its own tokens (the engine's). */
static void test_concurrent(void)
{
    enum { M = 8 };
    static conc_t cs[M];
    /* requests cut by a stop string end at the router first: let the decode worker catch up */
    DS4_CHECK(pdh_wait_metric(decode0.http_port, "ds4_running_requests", 0, 5000));
    pthread_t th[M];
    for (int i = 0; i < M; i++) {
        cs[i] = (conc_t){.n = 20 + 13 * (size_t)i, .stream = i % 2 == 0};
        cs[i].prompt = make_prompt(cs[i].n, 100u + (uint32_t)i);
        pthread_create(&th[i], NULL, conc_run, &cs[i]);
    }
    for (int i = 0; i < M; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < M; i++) {
        gen_t g = {.ids = cs[i].prompt, .n_ids = cs[i].n, .max_tokens = 10, .ignore_eos = true};
        int32_t want[16];
        size_t n_want = 0;
        DS4_CHECK(pdh_ref_generate(&g, want, &n_want));
        DS4_CHECKF(cs[i].r.status == 200, "[%d] %d %s", i, cs[i].r.status, cs[i].r.body);
        json_t *ids = json_array();
        if (cs[i].stream) {
            static sse_t s;
            sse_parse(cs[i].r.body != NULL ? cs[i].r.body : "", &s);
            for (size_t k = 0; k < s.n; k++)
                json_array_extend(ids, jpath(s.data[k], "$.choices[0].token_ids"));
            sse_free(&s);
        } else {
            json_t *o = json_loads(cs[i].r.body != NULL ? cs[i].r.body : "", 0, NULL);
            json_array_extend(ids, jpath(o, "$.choices[0].token_ids"));
            json_decref(o);
        }
        DS4_CHECKF(ids_equal(ids, want, n_want), "stream %d (%zu prompt tokens)", i, cs[i].n);
        json_decref(ids);
        free(cs[i].r.body);
        free(cs[i].prompt);
    }
}

/* Two requests on one keep-alive connection, pipelined: two answers, in order. */
static void test_keep_alive(void)
{
    int fd = connect_to(router.http_port);
    DS4_CHECK(fd >= 0);
    if (fd < 0)
        return;
    const char *b1 = "{\"prompt\":[0,5,6],\"max_tokens\":2,\"temperature\":0}";
    const char *b2 = "{\"prompt\":[0,7,8],\"max_tokens\":2,\"temperature\":0,\"stream\":true}";
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s"
                     "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     strlen(b1), b1, strlen(b2), b2);
    DS4_CHECK(send_all(fd, req, (size_t)n));
    static char buf[65536];
    size_t got = 0;
    ssize_t r;
    while (got + 1 < sizeof(buf) && (r = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
        got += (size_t)r;
    buf[got] = '\0';
    close(fd);
    const char *first = strstr(buf, "HTTP/1.1 200");
    const char *second = first != NULL ? strstr(first + 1, "HTTP/1.1 200") : NULL;
    DS4_CHECKF(first == buf && second != NULL, "%s", buf);
    DS4_CHECK(second != NULL && strstr(first, "\"object\":\"text_completion\"") < second);
    DS4_CHECK(second != NULL && strstr(second, "data: [DONE]") != NULL);
}

/* Official parse rows (completion → message): rows with tool calls map to OpenAI tool_calls
 * with the same names, arguments, content and reasoning; rows without give NULL. */
static void test_tool_parse(void)
{
    const char *path = ds4_test_fixture("chat-encoding/differential-official.jsonl");
    FILE *f = fopen(path, "r");
    DS4_CHECKF(f != NULL, "%s", path);
    if (f == NULL)
        return;
    static char line[1 << 16];
    int with = 0, without = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        json_t *row = json_loads(line, 0, NULL);
        if (row == NULL || strcmp(jstr(row, "kind"), "parse") != 0) {
            json_decref(row);
            continue;
        }
        const char *mode_s = jstr(row, "thinking_mode");
        int mode = mode_s != NULL && strcmp(mode_s, "thinking") == 0 ? 1 : 0;
        json_t *comp = json_object_get(row, "completion");
        json_t *want = json_object_get(json_object_get(row, "parsed"), "tool_calls");
        json_t *got =
            openai_tool_message(json_string_value(comp), json_string_length(comp), mode, "t");
        if (json_array_size(want) == 0) {
            DS4_CHECK(got == NULL);
            without++;
        } else {
            with++;
            DS4_CHECK(got != NULL);
            json_t *calls = json_object_get(got, "tool_calls");
            DS4_CHECK_EQ_INT(json_array_size(calls), json_array_size(want));
            for (size_t i = 0; i < json_array_size(want) && i < json_array_size(calls); i++) {
                json_t *g = json_array_get(calls, i), *w = json_array_get(want, i);
                DS4_CHECK_STR_CONTAINS(jstr(g, "type"), "function");
                DS4_CHECK(jstr(g, "id") != NULL);
                DS4_CHECK(json_equal(jpath(g, "function.name"), jpath(w, "function.name")));
                DS4_CHECK(
                    json_equal(jpath(g, "function.arguments"), jpath(w, "function.arguments")));
            }
            DS4_CHECK(json_equal(json_object_get(got, "content"), jpath(row, "parsed.content")));
            DS4_CHECK(json_equal(json_object_get(got, "reasoning_content"),
                                 jpath(row, "parsed.reasoning_content")));
        }
        json_decref(got);
        json_decref(row);
    }
    fclose(f);
    fprintf(stderr, "  %d official completions with tool calls, %d without\n", with, without);
    DS4_CHECK(with >= 10 && without >= 1);
}

/* Tools are rendered into the prompt; the answer (plain text from this model) streams the same
 * as it comes whole. */
static void test_chat_tools(void)
{
    json_t *base = json_pack("{s:[{s:s, s:s}], s:i, s:f, s:s}", "messages", "role", "user",
                             "content", "Weather in Paris?", "max_tokens", 6, "temperature", 0.0,
                             "reasoning_effort", "none");
    http_resp_t r;
    json_t *plain = post("/v1/chat/completions", json_deep_copy(base), &r);
    free(r.body);
    json_object_set_new(base, "tools",
                        json_pack("[{s:s, s:{s:s, s:s, s:{s:s, s:{s:{s:s}}}}}]", "type", "function",
                                  "function", "name", "get_weather", "description",
                                  "Weather of a city", "parameters", "type", "object", "properties",
                                  "city", "type", "string"));
    json_t *o = post("/v1/chat/completions", json_deep_copy(base), &r);
    DS4_CHECKF(r.status == 200, "%d %s", r.status, r.body);
    free(r.body);
    long long p0 = json_integer_value(jpath(plain, "usage.prompt_tokens"));
    long long p1 = json_integer_value(jpath(o, "usage.prompt_tokens"));
    DS4_CHECKF(p1 > p0 + 50, "prompt %lld tokens with tools, %lld without", p1, p0);
    const char *content = jstr(o, "$.choices[0].message.content");
    json_object_set_new(base, "stream", json_true());
    json_t *s0 = post("/v1/chat/completions", base, &r);
    static sse_t s;
    sse_parse(r.body, &s);
    char acc[4096] = "";
    for (size_t i = 0; i < s.n; i++) {
        const char *t = jstr(s.data[i], "$.choices[0].delta.content");
        if (t != NULL)
            strncat(acc, t, sizeof(acc) - strlen(acc) - 1);
    }
    DS4_CHECKF(content != NULL && strcmp(acc, content) == 0, "\"%s\" vs \"%s\"", acc, content);
    DS4_CHECK(s.n >= 2 && json_is_string(s.data[s.n - 1]));
    sse_free(&s);
    free(r.body);
    json_decref(s0);
    json_decref(o);
    json_decref(plain);
}

int main(void)
{
    const char *bin = getenv("DS4_BINARY_DIR");
    if (bin == NULL)
        return DS4_TEST_SKIP;
    signal(SIGPIPE, SIG_IGN);
    char model[600], cmd[1400];
    snprintf(model, sizeof(model), "%s/ds4-tiny", pdh_run_dir());
    snprintf(cmd, sizeof(cmd), "%s/tools/ds4-mkmodel/ds4-mkmodel %s > /dev/null", bin, model);
    if (system(cmd) != 0 || !pdh_ref_open(model) ||
        ds4_tokenizer_load_default(&tok, NULL) != DS4_OK)
        return 1;
    think_end_id = ds4_tokenizer_token_id(tok, "</think>");
    char router_addr[64];
    const char *rargs[] = {
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--liveness-timeout-ms",
        "8000",          NULL};
    bool ok = pdh_start(&router, "router", "router/ds4-router", rargs);
    snprintf(router_addr, sizeof(router_addr), "127.0.0.1:%d", router.grpc_port);
    const char *pargs[] = {"--model",        model, "--router", router_addr, "--threads", "1",
                           "--chunk-tokens", "512", NULL};
    const char *dargs[] = {"--model",
                           model,
                           "--router",
                           router_addr,
                           "--threads",
                           "1",
                           "--chunk-tokens",
                           "512",
                           "--kv-tokens",
                           "8300",
                           "--max-sequences",
                           "8",
                           "--drain-timeout-ms",
                           "2000",
                           NULL};
    ok = ok && pdh_start(&prefill0, "prefill-0", "prefill/ds4-prefill", pargs) &&
         pdh_start(&decode0, "decode-0", "decode/ds4-decode", dargs) &&
         pdh_wait_ready(router.http_port, 60000);
    if (!ok) {
        fprintf(stderr, "cluster did not start (logs in %s)\n", pdh_run_dir());
        pdh_kill_all();
        return 1;
    }
    uv_loop_init(&loop);
    ds4_rpc_ctx_create(&loop, &ctx);
    ds4_rpc_channel_params_t cp = ds4_rpc_channel_params_default();
    cp.target = router_addr;
    ds4_rpc_channel_create(ctx, &cp, &ch);
    DS4_RUN(test_completions_ids);
    DS4_RUN(test_chat);
    DS4_RUN(test_stop);
    DS4_RUN(test_concurrent);
    DS4_RUN(test_keep_alive);
    DS4_RUN(test_tool_parse);
    DS4_RUN(test_chat_tools);
    DS4_RUN(test_invalid);
    DS4_RUN(test_disconnect);
    DS4_RUN(test_shed);
    DS4_RUN(test_deadline);
    DS4_RUN(test_anthropic);
    DS4_RUN(test_anthropic_tools);
    DS4_RUN(test_no_workers);
    ds4_rpc_channel_destroy(ch);
    while (ds4_rpc_ctx_live_objects(ctx) > 0)
        uv_run(&loop, UV_RUN_ONCE);
    ds4_rpc_ctx_destroy(ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    pdh_stop(&router, SIGTERM, 10000);
    pdh_stop(&prefill0, SIGTERM, 10000);
    pdh_kill_all();
    pdh_ref_close();
    ds4_tokenizer_destroy(tok);
    fprintf(stderr, "logs in %s\n", pdh_run_dir());
    return ds4_test_finish();
}
