/*
 * test_rpc: ds4/rpc.h over real loopback sockets: unary and server-streaming calls, many
 * concurrent streams, deadline exceeded, client cancel (both ends see it), malformed protobuf ->
 * INVALID_ARGUMENT, unknown method -> UNIMPLEMENTED, peer down -> UNAVAILABLE, the standard
 * health service, and shutdown with a grace period cancelling a stuck stream.
 */
#include <stdint.h>
#include <unistd.h>

#include <uv.h>

#include "ds4.pb-c.h"
#include "ds4/clock.h"
#include "ds4/rpc.h"
#include "health.pb-c.h"
#include "test.h"

static uv_loop_t loop;
static ds4_rpc_ctx_h ctx;

/* Runs the loop until *flag or `ms` pass; returns *flag. */
static bool run_until(const bool *flag, uint64_t ms)
{
    uint64_t end = ds4_clock_now_ms() + ms;
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, (uv_timer_cb)(void (*)(void))uv_timer_get_repeat, 5, 5);
    while (!*flag && ds4_clock_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return *flag;
}

/* ---- the test service ---- */

typedef struct stream_state {
    ds4_rpc_call_h call;
    uv_timer_t timer;
    uint32_t next, count;
} stream_state_t;

static int server_cancels;   /* cancel callbacks seen by the server */
static int streams_finished; /* streams the server ran to completion */

static void tokenize_handler(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    const Ds4__V1__TokenizeRequest *req = (const void *)request;
    if (req->input_case != DS4__V1__TOKENIZE_REQUEST__INPUT_TEXT) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT, "text: required");
        return;
    }
    size_t n = strlen(req->text);
    uint32_t *ids = malloc((n + 1) * sizeof(*ids));
    for (size_t i = 0; i < n; i++)
        ids[i] = (unsigned char)req->text[i];
    Ds4__V1__TokenizeResponse resp = DS4__V1__TOKENIZE_RESPONSE__INIT;
    resp.n_ids = n;
    resp.ids = ids;
    ds4_rpc_call_reply(call, &resp.base);
    free(ids);
}

static void stream_closed(uv_handle_t *h)
{
    free(h->data);
}

static void stream_tick(uv_timer_t *t)
{
    stream_state_t *s = t->data;
    Ds4__V1__GenerateResponse resp = DS4__V1__GENERATE_RESPONSE__INIT;
    uint32_t id = s->next++;
    resp.n_token_ids = 1;
    resp.token_ids = &id;
    if (s->next == s->count)
        resp.finish_reason = DS4__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    ds4_rpc_call_send(s->call, &resp.base);
    if (s->next == s->count) {
        streams_finished++;
        ds4_rpc_call_finish(s->call, DS4_RPC_OK, "%s", "");
        uv_timer_stop(t);
        uv_close((uv_handle_t *)t, stream_closed);
    }
}

static void stream_cancelled(ds4_rpc_call_h call, void *arg)
{
    stream_state_t *s = arg;
    server_cancels++;
    uv_timer_stop(&s->timer);
    ds4_rpc_call_finish(call, DS4_RPC_CANCELLED, "cancelled");
    uv_close((uv_handle_t *)&s->timer, stream_closed);
}

/* GenerateRequest: streams sampling.max_tokens responses, one every deadline_ms ms (0 = all
 * at once). */
static void generate_handler(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    const Ds4__V1__GenerateRequest *req = (const void *)request;
    if (req->sampling == NULL || req->sampling->max_tokens == 0) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT, "sampling.max_tokens: must be >= 1");
        return;
    }
    stream_state_t *s = calloc(1, sizeof(*s));
    s->call = call;
    s->count = req->sampling->max_tokens;
    uv_timer_init(&loop, &s->timer);
    s->timer.data = s;
    ds4_rpc_call_on_cancel(call, stream_cancelled, s);
    if (req->deadline_ms == 0) {
        /* All at once: exercises the write queue (one write in flight, the rest queued). */
        while (s->next < s->count)
            stream_tick(&s->timer);
        return;
    }
    uv_timer_start(&s->timer, stream_tick, req->deadline_ms, req->deadline_ms);
}

static ds4_rpc_server_h start_server(int *port)
{
    ds4_rpc_server_params_t p = ds4_rpc_server_params_default();
    ds4_rpc_server_h srv = NULL;
    DS4_CHECK_STATUS(ds4_rpc_server_create(ctx, &p, &srv), DS4_OK);
    ds4_rpc_method_t m1 = {"/ds4.v1.Ds4/Tokenize", &ds4__v1__tokenize_request__descriptor,
                           tokenize_handler, NULL};
    ds4_rpc_method_t m2 = {"/ds4.v1.Ds4/Generate", &ds4__v1__generate_request__descriptor,
                           generate_handler, NULL};
    DS4_CHECK_STATUS(ds4_rpc_server_add_method(srv, &m1), DS4_OK);
    DS4_CHECK_STATUS(ds4_rpc_server_add_method(srv, &m2), DS4_OK);
    DS4_CHECK_STATUS(ds4_rpc_server_add_method(srv, &m2), DS4_ERR_EXISTS);
    DS4_CHECK_STATUS(ds4_rpc_server_add_health(srv), DS4_OK);
    DS4_CHECK_STATUS(ds4_rpc_server_start(srv, port), DS4_OK);
    DS4_CHECK(*port > 0);
    return srv;
}

static bool stopped_flag;
static void on_stopped(ds4_rpc_server_h s, void *arg)
{
    stopped_flag = true;
}

static void stop_server(ds4_rpc_server_h srv, uint32_t grace_ms)
{
    stopped_flag = false;
    ds4_rpc_server_shutdown(srv, grace_ms, on_stopped, NULL);
    DS4_CHECK(run_until(&stopped_flag, 5000));
    ds4_rpc_server_destroy(srv);
}

/* ---- client side ---- */

typedef struct result {
    bool done;
    ds4_rpc_code_t code;
    char message[256];
    uint32_t n_msgs;
    uint32_t ids[256];
    uint32_t n_ids;
    bool in_order;
    uint32_t cancel_after; /* cancel the call after this many messages (0 = never) */
} result_t;

static void on_msg(ds4_rpc_client_call_h call, ProtobufCMessage *msg, void *arg)
{
    result_t *r = arg;
    if (msg->descriptor == &ds4__v1__generate_response__descriptor) {
        Ds4__V1__GenerateResponse *g = (void *)msg;
        for (size_t i = 0; i < g->n_token_ids; i++) {
            if (g->token_ids[i] != r->n_msgs)
                r->in_order = false;
        }
    } else if (msg->descriptor == &ds4__v1__tokenize_response__descriptor) {
        Ds4__V1__TokenizeResponse *t = (void *)msg;
        for (size_t i = 0; i < t->n_ids && r->n_ids < 256; i++)
            r->ids[r->n_ids++] = t->ids[i];
    } else if (msg->descriptor == &grpc__health__v1__health_check_response__descriptor) {
        Grpc__Health__V1__HealthCheckResponse *h = (void *)msg;
        r->ids[r->n_ids++] = (uint32_t)h->status;
    }
    r->n_msgs++;
    protobuf_c_message_free_unpacked(msg, NULL);
    if (r->cancel_after != 0 && r->n_msgs == r->cancel_after)
        ds4_rpc_client_call_cancel(call);
}

static void on_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *message, void *arg)
{
    result_t *r = arg;
    r->done = true;
    r->code = code;
    snprintf(r->message, sizeof(r->message), "%s", message);
}

static ds4_rpc_channel_h open_channel(int port)
{
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    ds4_rpc_channel_params_t p = ds4_rpc_channel_params_default();
    p.target = target;
    ds4_rpc_channel_h ch = NULL;
    DS4_CHECK_STATUS(ds4_rpc_channel_create(ctx, &p, &ch), DS4_OK);
    return ch;
}

static void start_generate(ds4_rpc_channel_h ch, result_t *r, uint32_t count, uint32_t every_ms,
                           uint32_t timeout_ms)
{
    Ds4__V1__GenerateRequest req = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    sp.max_tokens = count;
    req.sampling = &sp;
    req.deadline_ms = every_ms;
    r->in_order = true;
    ds4_rpc_call_params_t cp = {
        .method = "/ds4.v1.Ds4/Generate",
        .request = &req.base,
        .response_type = &ds4__v1__generate_response__descriptor,
        .timeout_ms = timeout_ms,
        .on_message = on_msg,
        .on_done = on_done,
        .arg = r,
    };
    DS4_CHECK_STATUS(ds4_rpc_channel_call(ch, &cp, NULL), DS4_OK);
}

static void test_unary_and_stream(void)
{
    int port = 0;
    ds4_rpc_server_h srv = start_server(&port);
    ds4_rpc_channel_h ch = open_channel(port);

    Ds4__V1__TokenizeRequest treq = DS4__V1__TOKENIZE_REQUEST__INIT;
    treq.input_case = DS4__V1__TOKENIZE_REQUEST__INPUT_TEXT;
    treq.text = "hi!";
    result_t r1 = {0};
    ds4_rpc_call_params_t cp = {
        .method = "/ds4.v1.Ds4/Tokenize",
        .request = &treq.base,
        .response_type = &ds4__v1__tokenize_response__descriptor,
        .timeout_ms = 5000,
        .on_message = on_msg,
        .on_done = on_done,
        .arg = &r1,
    };
    DS4_CHECK_STATUS(ds4_rpc_channel_call(ch, &cp, NULL), DS4_OK);
    DS4_CHECK(run_until(&r1.done, 5000));
    DS4_CHECK_EQ_INT(r1.code, DS4_RPC_OK);
    DS4_CHECK_EQ_INT(r1.n_ids, 3);
    DS4_CHECK(r1.ids[0] == 'h' && r1.ids[1] == 'i' && r1.ids[2] == '!');

    /* A handler's own INVALID_ARGUMENT message reaches the client verbatim. */
    treq.input_case = DS4__V1__TOKENIZE_REQUEST__INPUT__NOT_SET;
    result_t r2 = {0};
    cp.arg = &r2;
    DS4_CHECK_STATUS(ds4_rpc_channel_call(ch, &cp, NULL), DS4_OK);
    DS4_CHECK(run_until(&r2.done, 5000));
    DS4_CHECK_EQ_INT(r2.code, DS4_RPC_INVALID_ARGUMENT);
    DS4_CHECK_STR_CONTAINS(r2.message, "text: required");

    /* 16 concurrent streams of 100 messages each, written as fast as possible. */
    enum { N = 16 };
    static result_t rs[N];
    memset(rs, 0, sizeof(rs));
    for (int i = 0; i < N; i++)
        start_generate(ch, &rs[i], 100, 0, 10000);
    bool all = false;
    uint64_t end = ds4_clock_now_ms() + 10000;
    while (!all && ds4_clock_now_ms() < end) {
        uv_run(&loop, UV_RUN_ONCE);
        all = true;
        for (int i = 0; i < N; i++)
            all = all && rs[i].done;
    }
    DS4_CHECK(all);
    for (int i = 0; i < N; i++) {
        DS4_CHECKF(rs[i].code == DS4_RPC_OK, "stream %d: %s %s", i, ds4_rpc_code_name(rs[i].code),
                   rs[i].message);
        DS4_CHECK_EQ_INT(rs[i].n_msgs, 100);
        DS4_CHECK(rs[i].in_order);
    }
    ds4_rpc_channel_destroy(ch);
    stop_server(srv, 1000);
}

static void test_deadline_and_cancel(void)
{
    int port = 0;
    ds4_rpc_server_h srv = start_server(&port);
    ds4_rpc_channel_h ch = open_channel(port);
    server_cancels = 0;

    /* 100 messages 20 ms apart (2 s) under a 300 ms deadline. */
    result_t r1 = {0};
    uint64_t t0 = ds4_clock_now_ms();
    start_generate(ch, &r1, 100, 20, 300);
    DS4_CHECK(run_until(&r1.done, 5000));
    uint64_t took = ds4_clock_now_ms() - t0;
    DS4_CHECKF(r1.code == DS4_RPC_DEADLINE_EXCEEDED, "got %s", ds4_rpc_code_name(r1.code));
    DS4_CHECKF(took >= 250 && took < 2000, "took %llu ms", (unsigned long long)took);
    DS4_CHECK(r1.n_msgs > 0 && r1.n_msgs < 100);

    /* Client cancel after 3 messages. */
    result_t r2 = {0};
    r2.cancel_after = 3;
    start_generate(ch, &r2, 100, 10, 10000);
    DS4_CHECK(run_until(&r2.done, 5000));
    DS4_CHECKF(r2.code == DS4_RPC_CANCELLED, "got %s", ds4_rpc_code_name(r2.code));
    DS4_CHECK_EQ_INT(r2.n_msgs, 3);

    /* Both cancellations reach the server's handlers, and no call stays alive there. */
    bool served = false;
    uint64_t end = ds4_clock_now_ms() + 3000;
    while (!served && ds4_clock_now_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        served = server_cancels == 2 && ds4_rpc_server_live_calls(srv) == 0;
        usleep(1000);
    }
    DS4_CHECKF(served, "server cancels %d live %zu", server_cancels,
               ds4_rpc_server_live_calls(srv));
    ds4_rpc_channel_destroy(ch);
    stop_server(srv, 1000);
}

static void test_bad_requests(void)
{
    int port = 0;
    ds4_rpc_server_h srv = start_server(&port);
    ds4_rpc_channel_h ch = open_channel(port);

    /* A HealthCheckRequest{service: "xyz"} is field 1 length-delimited; GenerateRequest's
     * field 1 is a varint: the server cannot parse it. */
    Grpc__Health__V1__HealthCheckRequest bad = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    bad.service = "xyz";
    result_t r1 = {0};
    ds4_rpc_call_params_t cp = {
        .method = "/ds4.v1.Ds4/Generate",
        .request = &bad.base,
        .response_type = &ds4__v1__generate_response__descriptor,
        .timeout_ms = 5000,
        .on_message = on_msg,
        .on_done = on_done,
        .arg = &r1,
    };
    DS4_CHECK_STATUS(ds4_rpc_channel_call(ch, &cp, NULL), DS4_OK);
    DS4_CHECK(run_until(&r1.done, 5000));
    DS4_CHECKF(r1.code == DS4_RPC_INVALID_ARGUMENT, "got %s", ds4_rpc_code_name(r1.code));
    DS4_CHECK_STR_CONTAINS(r1.message, "malformed ds4.v1.GenerateRequest");

    result_t r2 = {0};
    cp.method = "/ds4.v1.Ds4/Nope";
    cp.arg = &r2;
    DS4_CHECK_STATUS(ds4_rpc_channel_call(ch, &cp, NULL), DS4_OK);
    DS4_CHECK(run_until(&r2.done, 5000));
    DS4_CHECKF(r2.code == DS4_RPC_UNIMPLEMENTED, "got %s", ds4_rpc_code_name(r2.code));

    /* Health: SERVING, NOT_SERVING after set_serving(false), NOT_FOUND for another service. */
    uint32_t want[3] = {1, 2, 0};
    const char *svc[3] = {"", "ds4.v1.Ds4", "no.Such"};
    for (int i = 0; i < 3; i++) {
        if (i == 1)
            ds4_rpc_server_set_serving(srv, false);
        Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
        hreq.service = (char *)svc[i];
        result_t rh = {0};
        cp.method = "/grpc.health.v1.Health/Check";
        cp.request = &hreq.base;
        cp.response_type = &grpc__health__v1__health_check_response__descriptor;
        cp.arg = &rh;
        DS4_CHECK_STATUS(ds4_rpc_channel_call(ch, &cp, NULL), DS4_OK);
        DS4_CHECK(run_until(&rh.done, 5000));
        if (i < 2) {
            DS4_CHECK_EQ_INT(rh.code, DS4_RPC_OK);
            DS4_CHECK(rh.n_ids == 1 && rh.ids[0] == want[i]);
        } else {
            DS4_CHECK_EQ_INT(rh.code, DS4_RPC_NOT_FOUND);
        }
    }
    ds4_rpc_channel_destroy(ch);
    stop_server(srv, 1000);
}

static void test_peer_down(void)
{
    /* A port that was just free: bind, learn it, close. Nothing listens there now. */
    uv_tcp_t tcp;
    struct sockaddr_in addr;
    uv_tcp_init(&loop, &tcp);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_bind(&tcp, (const struct sockaddr *)&addr, 0);
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_tcp_getsockname(&tcp, (struct sockaddr *)&got, &len);
    int port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    uv_close((uv_handle_t *)&tcp, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);

    ds4_rpc_channel_h ch = open_channel(port);
    result_t r = {0};
    uint64_t t0 = ds4_clock_now_ms();
    start_generate(ch, &r, 3, 0, 10000);
    DS4_CHECK(run_until(&r.done, 10000));
    DS4_CHECKF(r.code == DS4_RPC_UNAVAILABLE, "got %s: %s", ds4_rpc_code_name(r.code), r.message);
    DS4_CHECKF(ds4_clock_now_ms() - t0 < 5000, "failing took %llu ms",
               (unsigned long long)(ds4_clock_now_ms() - t0));
    ds4_rpc_channel_destroy(ch);
}

static void test_shutdown_grace(void)
{
    int port = 0;
    ds4_rpc_server_h srv = start_server(&port);
    ds4_rpc_channel_h ch = open_channel(port);
    server_cancels = 0;
    result_t r = {0};
    start_generate(ch, &r, 1000, 50, 0); /* 50 s of stream, no deadline */
    /* Wait for it to be running. */
    uint64_t end = ds4_clock_now_ms() + 3000;
    while (r.n_msgs < 2 && ds4_clock_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uint64_t t0 = ds4_clock_now_ms();
    stop_server(srv, 200);
    uint64_t took = ds4_clock_now_ms() - t0;
    DS4_CHECKF(took >= 150 && took < 3000, "shutdown took %llu ms", (unsigned long long)took);
    DS4_CHECK_EQ_INT(server_cancels, 1);
    DS4_CHECK(run_until(&r.done, 5000));
    DS4_CHECK(r.code != DS4_RPC_OK);
    ds4_rpc_channel_destroy(ch);
}

int main(void)
{
    uv_loop_init(&loop);
    if (ds4_rpc_ctx_create(&loop, &ctx) != DS4_OK) {
        fprintf(stderr, "cannot create rpc context\n");
        return 1;
    }
    DS4_RUN(test_unary_and_stream);
    DS4_RUN(test_deadline_and_cancel);
    DS4_RUN(test_bad_requests);
    DS4_RUN(test_peer_down);
    DS4_RUN(test_shutdown_grace);
    ds4_rpc_ctx_destroy(ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
    DS4_CHECK_EQ_INT(uv_loop_close(&loop), 0);
    return ds4_test_finish();
}
