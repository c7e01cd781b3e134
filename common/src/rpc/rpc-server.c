/* gRPC server on the C core: accept loop, per-call state machine, write queue, shutdown. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "ds4/alloc.h"
#include "ds4/log.h"
#include "health.pb-c.h"
#include "rpc-internal.h"

typedef struct server_method {
    char *name;
    const ProtobufCMessageDescriptor *request_type;
    ds4_rpc_handler_cb handler;
    void *arg;
} server_method_t;

typedef struct send_item {
    grpc_byte_buffer *bb;
    struct send_item *next;
} send_item_t;

struct ds4_rpc_server {
    ds4_rpc_ctx_h ctx;
    grpc_server *srv;
    int port;
    size_t max_message_bytes;
    server_method_t *methods;
    size_t n_methods;
    bool started, shutting_down, shutdown_done, serving, health_added;
    /* The one outstanding grpc_server_request_call. */
    ds4__rpc_tag_t accept_tag;
    bool accept_pending;
    grpc_call *accept_call;
    grpc_call_details accept_details;
    grpc_metadata_array accept_md;
    ds4__rpc_tag_t shutdown_tag;
    uv_timer_t grace_timer;
    size_t live_calls;
    ds4_rpc_stopped_cb stopped;
    void *stopped_arg;
    bool stopped_fired;
};

struct ds4_rpc_call {
    ds4_rpc_server_h server;
    grpc_call *call;
    char *method_name;
    const server_method_t *method; /* NULL: unknown method */
    gpr_timespec deadline;
    ProtobufCMessage *request;
    grpc_byte_buffer *recv_bb;
    ds4__rpc_tag_t recv_tag, close_tag, write_tag;
    bool recv_in_flight, close_done, write_in_flight;
    int cancelled_flag; /* written by RECV_CLOSE_ON_SERVER */
    bool cancelled;     /* the call ended without our status reaching the client */
    send_item_t *send_head, *send_tail;
    size_t n_pending;
    bool initial_md_sent, finish_requested, status_sent, handler_done;
    ds4_rpc_code_t code;
    grpc_slice details;
    ds4_rpc_cancel_cb cancel_cb;
    void *cancel_arg;
    bool cancel_fired;
    uv_idle_t *deferred_cancel; /* on_cancel registered after the cancel happened */
};

static void accept_next(ds4_rpc_server_h s);
static void free_handle(uv_handle_t *h)
{
    ds4_free(h);
}

static void call_pump(ds4_rpc_call_h c);
static void maybe_stopped(ds4_rpc_server_h s);

ds4_rpc_server_params_t ds4_rpc_server_params_default(void)
{
    ds4_rpc_server_params_t p = {.address = "127.0.0.1:0", .max_message_bytes = 64u << 20};
    return p;
}

static void shutdown_done(ds4__rpc_tag_t *tag, bool ok)
{
    ds4_rpc_server_h s = DS4__CONTAINER_OF(tag, struct ds4_rpc_server, shutdown_tag);
    s->shutdown_done = true;
    uv_timer_stop(&s->grace_timer);
    maybe_stopped(s);
}

static void server_free(uv_handle_t *h)
{
    ds4_rpc_server_h s = h->data;
    for (size_t i = 0; i < s->n_methods; i++)
        ds4_free(s->methods[i].name);
    ds4_free(s->methods);
    ds4_free(s);
}

ds4_status_t ds4_rpc_server_create(ds4_rpc_ctx_h ctx, const ds4_rpc_server_params_t *params,
                                   ds4_rpc_server_h *out)
{
    if (ctx == NULL || params == NULL || params->address == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_rpc_server_h s = ds4_calloc(1, sizeof(*s));
    if (s == NULL)
        return DS4_ERR_NO_MEMORY;
    s->ctx = ctx;
    s->max_message_bytes = params->max_message_bytes != 0 ? params->max_message_bytes : 64u << 20;
    grpc_arg args[2];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)DS4_MIN(s->max_message_bytes, (size_t)0x7fffffff);
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = args[0].value.integer;
    grpc_channel_args chargs = {.num_args = 2, .args = args};
    s->srv = grpc_server_create(&chargs, NULL);
    if (s->srv == NULL) {
        ds4_free(s);
        return DS4_ERR_INTERNAL;
    }
    grpc_server_register_completion_queue(s->srv, ctx->cq, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    s->port = grpc_server_add_http2_port(s->srv, params->address, creds);
    grpc_server_credentials_release(creds);
    if (s->port <= 0) {
        ds4_log_error("rpc: cannot listen on %s", params->address);
        grpc_server_destroy(s->srv);
        ds4_free(s);
        return DS4_ERR_IO;
    }
    uv_timer_init(ctx->loop, &s->grace_timer);
    s->grace_timer.data = s;
    s->shutdown_tag.done = shutdown_done;
    s->serving = true;
    ctx->n_objects++;
    *out = s;
    return DS4_OK;
}

ds4_status_t ds4_rpc_server_add_method(ds4_rpc_server_h s, const ds4_rpc_method_t *m)
{
    if (s == NULL || m == NULL || m->name == NULL || m->request_type == NULL ||
        m->handler == NULL || s->started)
        return DS4_ERR_INVALID_ARG;
    for (size_t i = 0; i < s->n_methods; i++)
        if (strcmp(s->methods[i].name, m->name) == 0)
            return DS4_ERR_EXISTS;
    server_method_t *grown = ds4_realloc_array(s->methods, s->n_methods + 1, sizeof(*grown));
    if (grown == NULL)
        return DS4_ERR_NO_MEMORY;
    s->methods = grown;
    server_method_t *dst = &s->methods[s->n_methods];
    dst->name = ds4_strdup(m->name);
    if (dst->name == NULL)
        return DS4_ERR_NO_MEMORY;
    dst->request_type = m->request_type;
    dst->handler = m->handler;
    dst->arg = m->arg;
    s->n_methods++;
    return DS4_OK;
}

/* True when `service` ("pkg.Service") has a registered method. */
static bool has_service(ds4_rpc_server_h s, const char *service)
{
    size_t n = strlen(service);
    for (size_t i = 0; i < s->n_methods; i++) {
        const char *name = s->methods[i].name;
        if (name[0] == '/' && strncmp(name + 1, service, n) == 0 && name[n + 1] == '/')
            return true;
    }
    return false;
}

static void health_check(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    ds4_rpc_server_h s = arg;
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)request;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    if (req->service[0] != '\0' && !has_service(s, req->service)) {
        ds4_rpc_call_finish(call, DS4_RPC_NOT_FOUND, "unknown service %s", req->service);
        return;
    }
    resp.status = s->serving && !s->shutting_down
                      ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    ds4_rpc_call_reply(call, &resp.base);
}

ds4_status_t ds4_rpc_server_add_health(ds4_rpc_server_h s)
{
    ds4_rpc_method_t m = {
        .name = "/grpc.health.v1.Health/Check",
        .request_type = &grpc__health__v1__health_check_request__descriptor,
        .handler = health_check,
        .arg = s,
    };
    ds4_status_t st = ds4_rpc_server_add_method(s, &m);
    if (st == DS4_OK)
        s->health_added = true;
    return st;
}

void ds4_rpc_server_set_serving(ds4_rpc_server_h s, bool serving)
{
    s->serving = serving;
}

int ds4_rpc_server_port(ds4_rpc_server_h s)
{
    return s->port;
}

size_t ds4_rpc_server_live_calls(ds4_rpc_server_h s)
{
    return s->live_calls;
}

ds4_status_t ds4_rpc_server_start(ds4_rpc_server_h s, int *port_out)
{
    if (s == NULL || s->started)
        return DS4_ERR_INVALID_ARG;
    grpc_server_start(s->srv);
    s->started = true;
    accept_next(s);
    if (port_out != NULL)
        *port_out = s->port;
    return DS4_OK;
}

/* ---- calls ---- */

static void call_maybe_free(ds4_rpc_call_h c)
{
    if (!c->handler_done || !c->close_done || c->write_in_flight || c->recv_in_flight)
        return;
    ds4_rpc_server_h s = c->server;
    while (c->send_head != NULL) {
        send_item_t *it = c->send_head;
        c->send_head = it->next;
        grpc_byte_buffer_destroy(it->bb);
        ds4_free(it);
    }
    if (c->request != NULL)
        protobuf_c_message_free_unpacked(c->request, NULL);
    grpc_slice_unref(c->details);
    grpc_call_unref(c->call);
    ds4_free(c->method_name);
    if (c->deferred_cancel != NULL) {
        /* Still pending in the loop: detach it; its close callback frees only itself. */
        c->deferred_cancel->data = NULL;
        uv_close((uv_handle_t *)c->deferred_cancel, free_handle);
    }
    ds4_free(c);
    s->live_calls--;
    maybe_stopped(s);
}

static void fire_cancel(ds4_rpc_call_h c)
{
    if (c->cancel_fired || c->handler_done || c->cancel_cb == NULL)
        return;
    c->cancel_fired = true;
    c->cancel_cb(c, c->cancel_arg);
}

static void close_done(ds4__rpc_tag_t *tag, bool ok)
{
    ds4_rpc_call_h c = DS4__CONTAINER_OF(tag, struct ds4_rpc_call, close_tag);
    c->close_done = true;
    if (c->cancelled_flag != 0 || !ok)
        c->cancelled = true;
    if (c->cancelled)
        fire_cancel(c);
    call_maybe_free(c);
}

static void write_done(ds4__rpc_tag_t *tag, bool ok)
{
    ds4_rpc_call_h c = DS4__CONTAINER_OF(tag, struct ds4_rpc_call, write_tag);
    c->write_in_flight = false;
    if (!ok)
        c->cancelled = true;
    call_pump(c);
    call_maybe_free(c);
}

/* Starts the next write batch if none is in flight: the next message (with the initial
 * metadata the first time, and the status when it is the last one and finish was asked). */
static void call_pump(ds4_rpc_call_h c)
{
    if (c->write_in_flight || c->status_sent)
        return;
    if (c->cancelled) {
        /* Nothing can reach the client; drop queued messages. The status op is still
         * attempted once finish is asked so the core releases the call. */
        while (c->send_head != NULL) {
            send_item_t *it = c->send_head;
            c->send_head = it->next;
            grpc_byte_buffer_destroy(it->bb);
            ds4_free(it);
        }
        c->send_tail = NULL;
        c->n_pending = 0;
    }
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    send_item_t *it = c->send_head;
    if (it == NULL && !c->finish_requested)
        return;
    if (!c->initial_md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
        c->initial_md_sent = true;
    }
    if (it != NULL) {
        c->send_head = it->next;
        if (c->send_head == NULL)
            c->send_tail = NULL;
        c->n_pending--;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = it->bb;
        n++;
    }
    if (c->finish_requested && c->send_head == NULL) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = (grpc_status_code)c->code;
        ops[n].data.send_status_from_server.status_details = &c->details;
        n++;
        c->status_sent = true;
    }
    c->write_in_flight = true;
    grpc_call_error err = grpc_call_start_batch(c->call, ops, n, &c->write_tag, NULL);
    DS4_ASSERT(err == GRPC_CALL_OK);
    if (it != NULL) {
        /* The core took its own reference to the payload when the batch started. */
        grpc_byte_buffer_destroy(it->bb);
        ds4_free(it);
    }
}

static void recv_done(ds4__rpc_tag_t *tag, bool ok)
{
    ds4_rpc_call_h c = DS4__CONTAINER_OF(tag, struct ds4_rpc_call, recv_tag);
    ds4_rpc_server_h s = c->server;
    c->recv_in_flight = false;
    grpc_byte_buffer *bb = c->recv_bb;
    c->recv_bb = NULL;
    if (!ok || c->cancelled) {
        if (bb != NULL)
            grpc_byte_buffer_destroy(bb);
        ds4_rpc_call_finish(c, DS4_RPC_CANCELLED, "cancelled before the request arrived");
        return;
    }
    if (bb == NULL) {
        ds4_rpc_call_finish(c, DS4_RPC_INVALID_ARGUMENT, "%s: no request message", c->method_name);
        return;
    }
    c->request = ds4__rpc_unpack(bb, c->method->request_type);
    grpc_byte_buffer_destroy(bb);
    if (c->request == NULL) {
        ds4_log_warn("rpc: malformed request method %s", c->method_name);
        ds4_rpc_call_finish(c, DS4_RPC_INVALID_ARGUMENT, "malformed %s message",
                            c->method->request_type->name);
        return;
    }
    if (s->shutting_down && s->stopped_fired) {
        ds4_rpc_call_finish(c, DS4_RPC_UNAVAILABLE, "server shutting down");
        return;
    }
    c->method->handler(c, c->request, c->method->arg);
}

static void accept_done(ds4__rpc_tag_t *tag, bool ok)
{
    ds4_rpc_server_h s = DS4__CONTAINER_OF(tag, struct ds4_rpc_server, accept_tag);
    s->accept_pending = false;
    grpc_call *call = s->accept_call;
    s->accept_call = NULL;
    if (!ok || call == NULL) {
        /* Server shutting down: the request was cancelled. */
        grpc_call_details_destroy(&s->accept_details);
        grpc_metadata_array_destroy(&s->accept_md);
        maybe_stopped(s);
        return;
    }
    ds4_rpc_call_h c = ds4_calloc(1, sizeof(*c));
    char *name = grpc_slice_to_c_string(s->accept_details.method);
    if (c == NULL || name == NULL) {
        ds4_free(c);
        gpr_free(name);
        grpc_call_cancel_with_status(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        grpc_call_unref(call);
        goto next;
    }
    c->server = s;
    c->call = call;
    c->method_name = ds4_strdup(name);
    gpr_free(name);
    c->deadline = s->accept_details.deadline;
    c->details = grpc_empty_slice();
    c->recv_tag.done = recv_done;
    c->close_tag.done = close_done;
    c->write_tag.done = write_done;
    s->live_calls++;
    for (size_t i = 0; c->method_name != NULL && i < s->n_methods; i++)
        if (strcmp(s->methods[i].name, c->method_name) == 0)
            c->method = &s->methods[i];

    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled_flag;
    grpc_call_error err = grpc_call_start_batch(call, &op, 1, &c->close_tag, NULL);
    DS4_ASSERT(err == GRPC_CALL_OK);

    if (c->method == NULL) {
        ds4_rpc_call_finish(c, DS4_RPC_UNIMPLEMENTED, "unknown method %s",
                            c->method_name != NULL ? c->method_name : "?");
    } else {
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &c->recv_bb;
        c->recv_in_flight = true;
        err = grpc_call_start_batch(call, &op, 1, &c->recv_tag, NULL);
        DS4_ASSERT(err == GRPC_CALL_OK);
    }
next:
    grpc_call_details_destroy(&s->accept_details);
    grpc_metadata_array_destroy(&s->accept_md);
    accept_next(s);
}

static void accept_next(ds4_rpc_server_h s)
{
    if (s->shutting_down || s->accept_pending)
        return;
    s->accept_tag.done = accept_done;
    grpc_call_details_init(&s->accept_details);
    grpc_metadata_array_init(&s->accept_md);
    s->accept_pending = true;
    grpc_call_error err =
        grpc_server_request_call(s->srv, &s->accept_call, &s->accept_details, &s->accept_md,
                                 s->ctx->cq, s->ctx->cq, &s->accept_tag);
    DS4_ASSERT(err == GRPC_CALL_OK);
}

ds4_status_t ds4_rpc_call_send(ds4_rpc_call_h c, const ProtobufCMessage *msg)
{
    DS4_ASSERT(!c->handler_done);
    if (c->cancelled)
        return DS4_ERR_CANCELLED;
    send_item_t *it = ds4_calloc(1, sizeof(*it));
    if (it == NULL)
        return DS4_ERR_NO_MEMORY;
    it->bb = ds4__rpc_pack(msg);
    if (c->send_tail != NULL)
        c->send_tail->next = it;
    else
        c->send_head = it;
    c->send_tail = it;
    c->n_pending++;
    call_pump(c);
    return DS4_OK;
}

void ds4_rpc_call_finish(ds4_rpc_call_h c, ds4_rpc_code_t code, const char *fmt, ...)
{
    DS4_ASSERT(!c->handler_done);
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->handler_done = true;
    c->finish_requested = true;
    c->code = code;
    grpc_slice_unref(c->details);
    c->details = grpc_slice_from_copied_string(msg);
    call_pump(c);
    call_maybe_free(c);
}

void ds4_rpc_call_reply(ds4_rpc_call_h c, const ProtobufCMessage *msg)
{
    if (ds4_rpc_call_send(c, msg) == DS4_ERR_NO_MEMORY) {
        ds4_rpc_call_finish(c, DS4_RPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    ds4_rpc_call_finish(c, DS4_RPC_OK, "%s", "");
}

static void deferred_cancel_run(uv_idle_t *idle)
{
    ds4_rpc_call_h c = idle->data;
    uv_idle_stop(idle);
    uv_close((uv_handle_t *)idle, free_handle);
    if (c == NULL)
        return;
    c->deferred_cancel = NULL;
    fire_cancel(c);
}

void ds4_rpc_call_on_cancel(ds4_rpc_call_h c, ds4_rpc_cancel_cb cb, void *arg)
{
    c->cancel_cb = cb;
    c->cancel_arg = arg;
    if (c->cancelled && !c->cancel_fired && c->deferred_cancel == NULL) {
        uv_idle_t *idle = ds4_calloc(1, sizeof(*idle));
        DS4_ASSERT(idle != NULL);
        uv_idle_init(c->server->ctx->loop, idle);
        idle->data = c;
        c->deferred_cancel = idle;
        uv_idle_start(idle, deferred_cancel_run);
    }
}

bool ds4_rpc_call_cancelled(ds4_rpc_call_h c)
{
    return c->cancelled;
}

uint64_t ds4_rpc_call_deadline_left_ms(ds4_rpc_call_h c)
{
    gpr_timespec dl = gpr_convert_clock_type(c->deadline, GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(dl, gpr_inf_future(GPR_CLOCK_MONOTONIC)) == 0)
        return UINT64_MAX;
    gpr_timespec left = gpr_time_sub(dl, gpr_now(GPR_CLOCK_MONOTONIC));
    int64_t ms = gpr_time_to_millis(left);
    return ms <= 0 ? 0 : (uint64_t)ms;
}

size_t ds4_rpc_call_pending_sends(ds4_rpc_call_h c)
{
    return c->n_pending;
}

const char *ds4_rpc_call_method(ds4_rpc_call_h c)
{
    return c->method_name != NULL ? c->method_name : "?";
}

/* ---- shutdown ---- */

static void maybe_stopped(ds4_rpc_server_h s)
{
    if (!s->shutting_down || !s->shutdown_done || s->live_calls != 0 || s->accept_pending ||
        s->stopped_fired)
        return;
    s->stopped_fired = true;
    if (s->stopped != NULL)
        s->stopped(s, s->stopped_arg);
}

static void grace_expired(uv_timer_t *t)
{
    ds4_rpc_server_h s = t->data;
    ds4_log_info("rpc: shutdown grace over port %d, cancelling %zu calls", s->port, s->live_calls);
    grpc_server_cancel_all_calls(s->srv);
}

void ds4_rpc_server_shutdown(ds4_rpc_server_h s, uint32_t grace_ms, ds4_rpc_stopped_cb stopped,
                             void *arg)
{
    if (s->shutting_down)
        return;
    s->shutting_down = true;
    s->stopped = stopped;
    s->stopped_arg = arg;
    if (!s->started) {
        s->shutdown_done = true;
        maybe_stopped(s);
        return;
    }
    grpc_server_shutdown_and_notify(s->srv, s->ctx->cq, &s->shutdown_tag);
    uv_timer_start(&s->grace_timer, grace_expired, grace_ms, 0);
}

void ds4_rpc_server_destroy(ds4_rpc_server_h s)
{
    if (s == NULL)
        return;
    DS4_ASSERT(!s->started || s->stopped_fired);
    grpc_server_destroy(s->srv);
    s->ctx->n_objects--;
    uv_close((uv_handle_t *)&s->grace_timer, server_free);
}
