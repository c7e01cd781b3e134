/*
 * test_pd_chat: chat and text prompts, and an 8K-token raw prompt, on the embedded tiny model
 * (vocab 129280, written here with ds4-mkmodel) through router -> prefill -> UCX -> decode.
 * The router's Tokenize of the same chat messages gives the ids the single-process reference
 * runs on; the streamed tokens must be identical (greedy and seeded), the channel must follow
 * the reasoning mode (thinking starts in reasoning, chat answers directly) and text deltas must
 * arrive.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "ds4.pb-c.h"
#include "ds4/clock.h"
#include "pd-harness.h"
#include "test.h"

static proc_t router, prefill0, decode0;
static uv_loop_t loop;
static ds4_rpc_ctx_h ctx;
static ds4_rpc_channel_h ch;

typedef struct call_state {
    bool done;
    ds4_rpc_code_t code;
    char msg[256];
    int32_t ids[8192];
    size_t n_ids;
    char text[8192];
    size_t text_len;
    int reasoning_msgs, content_msgs;
    int finish;
} call_state_t;

static void on_msg(ds4_rpc_client_call_h call, ProtobufCMessage *m, void *arg)
{
    call_state_t *s = arg;
    if (m->descriptor == &ds4__v1__tokenize_response__descriptor) {
        Ds4__V1__TokenizeResponse *t = (void *)m;
        for (size_t i = 0; i < t->n_ids && s->n_ids < 8192; i++)
            s->ids[s->n_ids++] = (int32_t)t->ids[i];
    } else {
        Ds4__V1__GenerateResponse *g = (void *)m;
        if (g->finish_reason != 0)
            s->finish = (int)g->finish_reason;
        for (size_t i = 0; i < g->n_token_ids && s->n_ids < 8192; i++)
            s->ids[s->n_ids++] = (int32_t)g->token_ids[i];
        if (g->n_token_ids > 0) {
            if (g->channel == DS4__V1__CHANNEL__CHANNEL_REASONING)
                s->reasoning_msgs++;
            else
                s->content_msgs++;
        }
        size_t n = strlen(g->text_delta);
        if (s->text_len + n < sizeof(s->text)) {
            memcpy(s->text + s->text_len, g->text_delta, n);
            s->text_len += n;
            s->text[s->text_len] = '\0';
        }
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

static void on_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *msg, void *arg)
{
    call_state_t *s = arg;
    s->done = true;
    s->code = code;
    snprintf(s->msg, sizeof(s->msg), "%s", msg);
}

static bool call(const char *method, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp, call_state_t *s)
{
    memset(s, 0, sizeof(*s));
    ds4_rpc_call_params_t cp = {.method = method,
                                .request = req,
                                .response_type = resp,
                                .timeout_ms = 300000,
                                .on_message = on_msg,
                                .on_done = on_done,
                                .arg = s};
    if (ds4_rpc_channel_call(ch, &cp, NULL) != DS4_OK)
        return false;
    uint64_t end = ds4_clock_now_ms() + 300000;
    while (!s->done && ds4_clock_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    return s->done;
}

static void check_chat(const char *system, const char *user, Ds4__V1__ReasoningMode mode,
                       bool seeded)
{
    Ds4__V1__ChatMessage ms = DS4__V1__CHAT_MESSAGE__INIT, mu = DS4__V1__CHAT_MESSAGE__INIT;
    Ds4__V1__ChatMessage *msgs[2];
    size_t k = 0;
    if (system != NULL) {
        ms.role = "system";
        ms.content = (char *)system;
        msgs[k++] = &ms;
    }
    mu.role = "user";
    mu.content = (char *)user;
    msgs[k++] = &mu;
    Ds4__V1__ChatPrompt chat = DS4__V1__CHAT_PROMPT__INIT;
    chat.n_messages = k;
    chat.messages = msgs;
    chat.add_generation_prompt = 1;

    Ds4__V1__TokenizeRequest tr = DS4__V1__TOKENIZE_REQUEST__INIT;
    tr.input_case = DS4__V1__TOKENIZE_REQUEST__INPUT_CHAT;
    tr.chat = &chat;
    tr.reasoning = mode;
    static call_state_t tok, gen;
    DS4_CHECK(
        call("/ds4.v1.Ds4/Tokenize", &tr.base, &ds4__v1__tokenize_response__descriptor, &tok));
    DS4_CHECKF(tok.code == DS4_RPC_OK && tok.n_ids > 0, "%s", tok.msg);

    Ds4__V1__GenerateRequest g = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    g.api_version = 1;
    g.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_CHAT;
    g.chat = &chat;
    g.reasoning = mode;
    g.return_text = 1;
    sp.max_tokens = 12;
    if (seeded) {
        sp.temperature = 0.7f;
        sp.top_p = 0.95f;
        sp.seed = 1234;
        sp.seeded = 1;
    }
    g.sampling = &sp;
    DS4_CHECK(call("/ds4.v1.Ds4/Generate", &g.base, &ds4__v1__generate_response__descriptor, &gen));
    DS4_CHECKF(gen.code == DS4_RPC_OK, "%s", gen.msg);

    gen_t ref = {.ids = tok.ids, .n_ids = tok.n_ids, .max_tokens = 12};
    if (seeded) {
        ref.temperature = 0.7f;
        ref.top_p = 0.95f;
        ref.seed = 1234;
        ref.seeded = true;
    }
    int32_t want[16];
    size_t n_want = 0;
    DS4_CHECK(pdh_ref_generate(&ref, want, &n_want));
    DS4_CHECK_EQ_INT(gen.n_ids, n_want);
    DS4_CHECK(memcmp(gen.ids, want, n_want * sizeof(int32_t)) == 0);
    /* thinking mode starts in the reasoning channel; chat mode answers directly */
    if (mode == DS4__V1__REASONING_MODE__REASONING_OFF)
        DS4_CHECK(gen.reasoning_msgs == 0 && gen.content_msgs > 0);
    else
        DS4_CHECK(gen.reasoning_msgs > 0);
    DS4_CHECK(gen.text_len > 0);
}

static void test_chat(void)
{
    check_chat(NULL, "Hello! Who are you?", DS4__V1__REASONING_MODE__REASONING_ON, false);
    check_chat("You are terse.", "Explain KV caches.", DS4__V1__REASONING_MODE__REASONING_OFF,
               false);
    check_chat(NULL, "Write a haiku about prefill.", DS4__V1__REASONING_MODE__REASONING_ON, true);
    check_chat("Réponds en français.", "Qu'est-ce qu'un routeur ?",
               DS4__V1__REASONING_MODE__REASONING_OFF, true);
}

static void test_text_and_8k(void)
{
    /* raw text */
    Ds4__V1__TokenizeRequest tr = DS4__V1__TOKENIZE_REQUEST__INIT;
    tr.input_case = DS4__V1__TOKENIZE_REQUEST__INPUT_TEXT;
    tr.text = "The quick brown fox jumps over the lazy dog.";
    static call_state_t tok;
    DS4_CHECK(
        call("/ds4.v1.Ds4/Tokenize", &tr.base, &ds4__v1__tokenize_response__descriptor, &tok));
    gen_t a = {.ids = tok.ids, .n_ids = tok.n_ids, .max_tokens = 10};
    int32_t want[16];
    size_t n_want = 0;
    DS4_CHECK(pdh_ref_generate(&a, want, &n_want));
    Ds4__V1__GenerateRequest g = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    g.api_version = 1;
    g.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_TEXT;
    g.prompt_text = tr.text;
    sp.max_tokens = 10;
    g.sampling = &sp;
    static call_state_t gen;
    DS4_CHECK(call("/ds4.v1.Ds4/Generate", &g.base, &ds4__v1__generate_response__descriptor, &gen));
    DS4_CHECKF(gen.code == DS4_RPC_OK, "%s", gen.msg);
    DS4_CHECK(gen.n_ids == n_want && memcmp(gen.ids, want, n_want * sizeof(int32_t)) == 0);

    /* 8K raw ids */
    int32_t vocab = pdh_ref_vocab();
    int32_t *ids = malloc(8192 * sizeof(*ids));
    uint64_t x = 77;
    for (int i = 0; i < 8192; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = i == 0 ? 0 : 2 + (int32_t)((x >> 33) % (uint64_t)(vocab - 2));
    }
    gen_t b = {.ids = ids, .n_ids = 8192, .max_tokens = 6, .timeout_ms = 300000};
    gen_t *gs[1] = {&b};
    DS4_CHECK(pdh_generate(gs, 1, 300000));
    DS4_CHECKF(b.code == DS4_RPC_OK, "%s", b.message);
    DS4_CHECK(pdh_ref_generate(&b, want, &n_want));
    DS4_CHECK(b.n_out == n_want && memcmp(b.out, want, n_want * sizeof(int32_t)) == 0);
    fprintf(stderr, "  8K prompt: TTFT %.0f ms through PD\n", (b.t_first - b.t_start) * 1e3);
    free(ids);
}

/* Stop strings are applied at the router on the detokenised text: the answer ends before the
 * stop string, with finish STOP; the reference is the same request without the stop. */
static void test_stop_strings(void)
{
    Ds4__V1__GenerateRequest g = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    g.api_version = 1;
    g.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_TEXT;
    g.prompt_text = "Once upon a time";
    g.return_text = 1;
    sp.max_tokens = 16;
    sp.ignore_eos = 1;
    g.sampling = &sp;
    static call_state_t full, cut;
    DS4_CHECK(
        call("/ds4.v1.Ds4/Generate", &g.base, &ds4__v1__generate_response__descriptor, &full));
    DS4_CHECKF(full.code == DS4_RPC_OK && full.text_len > 8, "%s (%zu bytes)", full.msg,
               full.text_len);
    DS4_CHECK_EQ_INT(full.finish, DS4__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    /* a stop string from the middle of the full answer, starting at a code point, whose first
     * occurrence is where we took it */
    size_t at = full.text_len / 2;
    while (at > 0 && ((unsigned char)full.text[at] & 0xC0) == 0x80)
        at--;
    size_t end = at;
    for (int cp = 0; cp < 3 && end < full.text_len; cp++) { /* three code points */
        end++;
        while (end < full.text_len && ((unsigned char)full.text[end] & 0xC0) == 0x80)
            end++;
    }
    char stop[64];
    snprintf(stop, sizeof(stop), "%.*s", (int)(end - at), full.text + at);
    size_t first = (size_t)(strstr(full.text, stop) - full.text);
    char *stops[1] = {stop};
    sp.n_stop = 1;
    sp.stop = stops;
    DS4_CHECK(call("/ds4.v1.Ds4/Generate", &g.base, &ds4__v1__generate_response__descriptor, &cut));
    DS4_CHECKF(cut.code == DS4_RPC_OK, "%s", cut.msg);
    DS4_CHECK_EQ_INT(cut.finish, DS4__V1__FINISH_REASON__FINISH_REASON_STOP);
    DS4_CHECK_EQ_INT(cut.text_len, first);
    DS4_CHECK(memcmp(cut.text, full.text, first) == 0);
    DS4_CHECK(cut.n_ids <= full.n_ids && memcmp(cut.ids, full.ids, cut.n_ids * 4) == 0);
    fprintf(stderr, "  stop \"%s\" at byte %zu: %zu of %zu tokens\n", stop, first, cut.n_ids,
            full.n_ids);
}

int main(void)
{
    const char *bin = getenv("DS4_BINARY_DIR");
    if (bin == NULL)
        return DS4_TEST_SKIP;
    char model[600], cmd[1400];
    snprintf(model, sizeof(model), "%s/ds4-tiny", pdh_run_dir());
    snprintf(cmd, sizeof(cmd), "%s/tools/ds4-mkmodel/ds4-mkmodel %s > /dev/null", bin, model);
    if (system(cmd) != 0 || !pdh_ref_open(model))
        return 1;
    char router_addr[64];
    const char *rargs[] = {"--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", NULL};
    bool ok = pdh_start(&router, "router", "router/ds4-router", rargs);
    snprintf(router_addr, sizeof(router_addr), "127.0.0.1:%d", router.grpc_port);
    const char *pargs[] = {"--model",        model,  "--router", router_addr, "--threads", "1",
                           "--chunk-tokens", "2048", NULL};
    const char *dargs[] = {
        "--model", model,         "--router", router_addr,       "--threads", "1", "--chunk-tokens",
        "2048",    "--kv-tokens", "8300",     "--max-sequences", "4",         NULL};
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
    pdh_client_open(router.grpc_port);
    DS4_RUN(test_chat);
    DS4_RUN(test_stop_strings);
    DS4_RUN(test_text_and_8k);
    ds4_rpc_channel_destroy(ch);
    while (ds4_rpc_ctx_live_objects(ctx) > 0)
        uv_run(&loop, UV_RUN_ONCE);
    ds4_rpc_ctx_destroy(ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
    pdh_client_close();
    pdh_stop(&router, SIGTERM, 10000);
    pdh_stop(&prefill0, SIGTERM, 10000);
    pdh_stop(&decode0, SIGTERM, 10000);
    pdh_kill_all();
    pdh_ref_close();
    return ds4_test_finish();
}
