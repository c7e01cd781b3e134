/*
 * ds4-cli - a gRPC client of a ds4 cluster (ds4.v1.Ds4 on the router).
 *
 *   ds4-cli [--router HOST:PORT] --chat "question" [--system "..."] [--reasoning on|off]
 *   ds4-cli --prompt "raw text" | --prompt-ids 1,2,3   [sampling options]
 *   ds4-cli --tokenize "text" | --list-models | --health
 *
 * Streams the answer to stdout as it arrives (reasoning on stderr-style dim lines when
 * --reasoning on). --ids prints the generated token ids (one line, comma-separated) instead of
 * text; --cancel-after N cancels the call after N tokens; --hangup-after N exits the process
 * abruptly after N tokens (a client disconnect). Exit status: 0 on OK, 3 + the gRPC code
 * otherwise, with "error: CODE: message" on stderr.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ds4.pb-c.h"
#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/daemon.h"
#include "ds4/log.h"
#include "ds4/rpc.h"

typedef struct cli {
    const char *router, *chat, *system, *prompt, *prompt_ids, *reasoning, *tokenize, *model,
        *request_id;
    bool list_models, health, ids, text, usage, quiet;
    uint32_t max_tokens, top_k, timeout_ms, logprobs, cancel_after, hangup_after;
    double temperature, top_p, min_p, repetition_penalty;
    uint64_t seed;
    bool seeded, ignore_eos;
    /* run state */
    bool done;
    ds4_rpc_code_t code;
    char message[1024];
    uint32_t n_tokens;
    Ds4__V1__Channel channel;
    bool channel_printed;
    uint32_t *out_ids;
    size_t n_out, cap_out;
    double t0, t_first;
} cli_t;

static int parse_ids(const char *s, uint32_t **out, size_t *n)
{
    size_t cap = 16, k = 0;
    uint32_t *ids = malloc(cap * sizeof(*ids));
    const char *p = s;
    while (ids != NULL && *p != '\0') {
        char *end = NULL;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || v > UINT32_MAX) {
            free(ids);
            return -1;
        }
        if (k == cap) {
            cap *= 2;
            uint32_t *g = realloc(ids, cap * sizeof(*ids));
            if (g == NULL) {
                free(ids);
                return -1;
            }
            ids = g;
        }
        ids[k++] = (uint32_t)v;
        p = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end != '\0') {
            free(ids);
            return -1;
        }
    }
    *out = ids;
    *n = k;
    return ids != NULL ? 0 : -1;
}

static void on_message(ds4_rpc_client_call_h call, ProtobufCMessage *msg, void *arg)
{
    cli_t *c = arg;
    if (msg->descriptor == &ds4__v1__generate_response__descriptor) {
        Ds4__V1__GenerateResponse *g = (void *)msg;
        for (size_t i = 0; i < g->n_token_ids; i++) {
            if (c->n_out == c->cap_out) {
                c->cap_out = c->cap_out == 0 ? 64 : c->cap_out * 2;
                c->out_ids = realloc(c->out_ids, c->cap_out * sizeof(*c->out_ids));
            }
            if (c->out_ids != NULL)
                c->out_ids[c->n_out++] = g->token_ids[i];
            if (c->n_tokens++ == 0)
                c->t_first = ds4_clock_now_s();
        }
        if (!c->ids && !c->quiet && g->text_delta != NULL && g->text_delta[0] != '\0') {
            if (!c->channel_printed || g->channel != c->channel) {
                if (c->channel_printed)
                    fputc('\n', stdout);
                fputs(g->channel == DS4__V1__CHANNEL__CHANNEL_REASONING ? "[reasoning] "
                                                                        : "[answer] ",
                      stdout);
                c->channel = g->channel;
                c->channel_printed = true;
            }
            fputs(g->text_delta, stdout);
            fflush(stdout);
        }
        if (g->usage != NULL && c->usage) {
            const ProtobufCEnumValue *fr = protobuf_c_enum_descriptor_get_value(
                &ds4__v1__finish_reason__descriptor, (int)g->finish_reason);
            if (c->channel_printed)
                fputc('\n', stdout);
            fflush(stdout);
            /* "FINISH_REASON_LENGTH" -> "length" */
            char reason[32] = "unknown";
            if (fr != NULL && strncmp(fr->name, "FINISH_REASON_", 14) == 0) {
                size_t i = 0;
                for (const char *p = fr->name + 14; *p != '\0' && i + 1 < sizeof(reason); p++)
                    reason[i++] = (char)tolower((unsigned char)*p);
                reason[i] = '\0';
            }
            fprintf(stderr, "usage: prompt %u completion %u reasoning %u ttft %.1f ms finish %s\n",
                    g->usage->prompt_tokens, g->usage->completion_tokens,
                    g->usage->reasoning_tokens, g->usage->ttft_ms, reason);
        }
        if (c->hangup_after != 0 && c->n_tokens >= c->hangup_after)
            _exit(0); /* a client that vanishes mid-stream (socket closed by the kernel) */
        if (c->cancel_after != 0 && c->n_tokens >= c->cancel_after) {
            c->cancel_after = 0;
            ds4_rpc_client_call_cancel(call);
        }
    } else if (msg->descriptor == &ds4__v1__tokenize_response__descriptor) {
        Ds4__V1__TokenizeResponse *t = (void *)msg;
        for (size_t i = 0; i < t->n_ids; i++)
            printf("%s%u", i > 0 ? "," : "", t->ids[i]);
        printf("\n");
    } else if (msg->descriptor == &ds4__v1__list_models_response__descriptor) {
        Ds4__V1__ListModelsResponse *l = (void *)msg;
        for (size_t i = 0; i < l->n_models; i++)
            printf("%s context %u vocab %u\n", l->models[i]->id, l->models[i]->context_length,
                   l->models[i]->vocab_size);
    } else if (msg->descriptor == &ds4__v1__health_response__descriptor) {
        Ds4__V1__HealthResponse *h = (void *)msg;
        printf("%s %s prefill %u decode %u\n",
               h->status == DS4__V1__SERVING_STATUS__SERVING_STATUS_SERVING ? "SERVING"
                                                                            : "NOT_SERVING",
               h->version, h->prefill_workers, h->decode_workers);
    }
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void on_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *message, void *arg)
{
    cli_t *c = arg;
    c->done = true;
    c->code = code;
    snprintf(c->message, sizeof(c->message), "%s", message);
}

int main(int argc, char **argv)
{
    cli_t c;
    memset(&c, 0, sizeof(c));
    c.router = "127.0.0.1:7000";
    c.reasoning = "default";
    c.max_tokens = 64;
    c.timeout_ms = 120000;
    c.text = true;
    const ds4_opt_t opts[] = {
        {"router", DS4_OPT_STR, &c.router, "router gRPC address"},
        {"chat", DS4_OPT_STR, &c.chat, "a user message (chat encoding)"},
        {"system", DS4_OPT_STR, &c.system, "a system message before --chat"},
        {"reasoning", DS4_OPT_STR, &c.reasoning, "default|on|off"},
        {"prompt", DS4_OPT_STR, &c.prompt, "raw prompt text (no chat template)"},
        {"prompt-ids", DS4_OPT_STR, &c.prompt_ids, "raw prompt token ids, comma-separated"},
        {"model", DS4_OPT_STR, &c.model, "model name (default: the cluster's)"},
        {"request-id", DS4_OPT_STR, &c.request_id, "client-chosen request id"},
        {"max-tokens", DS4_OPT_U32, &c.max_tokens, "tokens to generate"},
        {"temperature", DS4_OPT_F64, &c.temperature, "0 = greedy"},
        {"top-p", DS4_OPT_F64, &c.top_p, "nucleus mass (0 = off)"},
        {"top-k", DS4_OPT_U32, &c.top_k, "0 = off"},
        {"min-p", DS4_OPT_F64, &c.min_p, "0 = off"},
        {"repetition-penalty", DS4_OPT_F64, &c.repetition_penalty, "0 = off"},
        {"seed", DS4_OPT_U64, &c.seed, "sampling seed (sets --seeded)"},
        {"seeded", DS4_OPT_BOOL, &c.seeded, "use --seed"},
        {"ignore-eos", DS4_OPT_BOOL, &c.ignore_eos, "do not stop at end-of-sentence"},
        {"logprobs", DS4_OPT_U32, &c.logprobs, "logprobs per token"},
        {"timeout-ms", DS4_OPT_U32, &c.timeout_ms, "gRPC deadline"},
        {"ids", DS4_OPT_BOOL, &c.ids, "print generated token ids instead of text"},
        {"usage", DS4_OPT_BOOL, &c.usage, "print usage and timing to stderr"},
        {"quiet", DS4_OPT_BOOL, &c.quiet, "print nothing but errors"},
        {"cancel-after", DS4_OPT_U32, &c.cancel_after, "cancel after N tokens"},
        {"hangup-after", DS4_OPT_U32, &c.hangup_after, "exit abruptly after N tokens"},
        {"tokenize", DS4_OPT_STR, &c.tokenize, "print the token ids of a text"},
        {"list-models", DS4_OPT_BOOL, &c.list_models, "list the served models"},
        {"health", DS4_OPT_BOOL, &c.health, "print the cluster health"},
    };
    ds4_opts_state_t os;
    int start = ds4_opts_start("ds4-cli", opts, DS4_ARRAY_LEN(opts), argc, argv, NULL, &os);
    if (start >= 0)
        return start;
    if (c.seed != 0)
        c.seeded = true;
    ds4_log_set_level(DS4_LOG_ERROR);

    uv_loop_t loop;
    uv_loop_init(&loop);
    ds4_rpc_ctx_h ctx = NULL;
    ds4_rpc_channel_h ch = NULL;
    int rc = 1;
    if (ds4_rpc_ctx_create(&loop, &ctx) != DS4_OK)
        goto out_loop;
    ds4_rpc_channel_params_t chp = ds4_rpc_channel_params_default();
    chp.target = c.router;
    if (ds4_rpc_channel_create(ctx, &chp, &ch) != DS4_OK)
        goto out_ctx;

    Ds4__V1__GenerateRequest gen = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    Ds4__V1__TokenIds tids = DS4__V1__TOKEN_IDS__INIT;
    Ds4__V1__ChatPrompt chat = DS4__V1__CHAT_PROMPT__INIT;
    Ds4__V1__ChatMessage m_sys = DS4__V1__CHAT_MESSAGE__INIT, m_user = DS4__V1__CHAT_MESSAGE__INIT;
    Ds4__V1__ChatMessage *msgs[2];
    Ds4__V1__TokenizeRequest tok = DS4__V1__TOKENIZE_REQUEST__INIT;
    Ds4__V1__ListModelsRequest lm = DS4__V1__LIST_MODELS_REQUEST__INIT;
    Ds4__V1__HealthRequest hr = DS4__V1__HEALTH_REQUEST__INIT;
    uint32_t *ids = NULL;
    ds4_rpc_call_params_t cp = {
        .timeout_ms = c.timeout_ms, .on_message = on_message, .on_done = on_done, .arg = &c};
    if (c.tokenize != NULL) {
        tok.input_case = DS4__V1__TOKENIZE_REQUEST__INPUT_TEXT;
        tok.text = (char *)c.tokenize;
        cp.method = "/ds4.v1.Ds4/Tokenize";
        cp.request = &tok.base;
        cp.response_type = &ds4__v1__tokenize_response__descriptor;
    } else if (c.list_models) {
        cp.method = "/ds4.v1.Ds4/ListModels";
        cp.request = &lm.base;
        cp.response_type = &ds4__v1__list_models_response__descriptor;
    } else if (c.health) {
        cp.method = "/ds4.v1.Ds4/Health";
        cp.request = &hr.base;
        cp.response_type = &ds4__v1__health_response__descriptor;
    } else {
        gen.api_version = DS4__V1__API_VERSION__API_VERSION_1;
        gen.model = (char *)(c.model != NULL ? c.model : "");
        gen.request_id = (char *)(c.request_id != NULL ? c.request_id : "");
        size_t n_ids = 0;
        if (c.prompt_ids != NULL) {
            if (parse_ids(c.prompt_ids, &ids, &n_ids) != 0) {
                fprintf(stderr, "ds4-cli: --prompt-ids: expected comma-separated ids\n");
                rc = 2;
                goto out_channel;
            }
            tids.n_ids = n_ids;
            tids.ids = ids;
            gen.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS;
            gen.prompt_ids = &tids;
        } else if (c.prompt != NULL) {
            gen.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_TEXT;
            gen.prompt_text = (char *)c.prompt;
        } else if (c.chat != NULL) {
            size_t k = 0;
            if (c.system != NULL) {
                m_sys.role = "system";
                m_sys.content = (char *)c.system;
                msgs[k++] = &m_sys;
            }
            m_user.role = "user";
            m_user.content = (char *)c.chat;
            msgs[k++] = &m_user;
            chat.n_messages = k;
            chat.messages = msgs;
            chat.add_generation_prompt = 1;
            gen.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_CHAT;
            gen.chat = &chat;
        } else {
            fprintf(stderr, "ds4-cli: give --chat, --prompt or --prompt-ids (see --help)\n");
            rc = 2;
            goto out_channel;
        }
        gen.reasoning = strcmp(c.reasoning, "on") == 0 ? DS4__V1__REASONING_MODE__REASONING_ON
                        : strcmp(c.reasoning, "off") == 0
                            ? DS4__V1__REASONING_MODE__REASONING_OFF
                            : DS4__V1__REASONING_MODE__REASONING_DEFAULT;
        sp.max_tokens = c.max_tokens;
        sp.temperature = (float)c.temperature;
        sp.top_p = (float)c.top_p;
        sp.top_k = c.top_k;
        sp.min_p = (float)c.min_p;
        sp.repetition_penalty = (float)c.repetition_penalty;
        sp.seed = c.seed;
        sp.seeded = c.seeded;
        sp.ignore_eos = c.ignore_eos;
        sp.logprobs = c.logprobs;
        gen.sampling = &sp;
        gen.return_text = !c.ids;
        cp.method = "/ds4.v1.Ds4/Generate";
        cp.request = &gen.base;
        cp.response_type = &ds4__v1__generate_response__descriptor;
    }
    c.t0 = ds4_clock_now_s();
    if (ds4_rpc_channel_call(ch, &cp, NULL) != DS4_OK)
        goto out_channel;
    while (!c.done)
        uv_run(&loop, UV_RUN_ONCE);
    if (cp.method != NULL && strcmp(cp.method, "/ds4.v1.Ds4/Generate") == 0) {
        if (c.ids) {
            for (size_t i = 0; i < c.n_out; i++)
                printf("%s%u", i > 0 ? "," : "", c.out_ids[i]);
            printf("\n");
        } else if (!c.quiet && c.channel_printed) {
            printf("\n");
        }
        if (c.usage)
            fprintf(stderr, "client: %u tokens, first after %.1f ms, total %.1f ms\n", c.n_tokens,
                    c.n_tokens > 0 ? (c.t_first - c.t0) * 1e3 : 0.0,
                    (ds4_clock_now_s() - c.t0) * 1e3);
    }
    if (c.code != DS4_RPC_OK) {
        fprintf(stderr, "error: %s: %s\n", ds4_rpc_code_name(c.code), c.message);
        rc = 3 + (int)c.code;
    } else {
        rc = 0;
    }
out_channel:
    free(ids);
    free(c.out_ids);
    ds4_rpc_channel_destroy(ch);
    while (ds4_rpc_ctx_live_objects(ctx) > 0)
        uv_run(&loop, UV_RUN_ONCE);
out_ctx:
    ds4_rpc_ctx_destroy(ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
out_loop:
    uv_loop_close(&loop);
    ds4_opts_free(&os);
    return rc;
}
