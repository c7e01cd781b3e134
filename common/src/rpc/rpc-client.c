/* gRPC client on the C core: channels and calls delivering responses on the loop. */
#include <string.h>

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>

#include "ds4/alloc.h"
#include "ds4/log.h"
#include "rpc-internal.h"

struct ds4_rpc_channel {
    ds4_rpc_ctx_h ctx;
    grpc_channel *ch;
    char *target;
    struct ds4_rpc_client_call *calls; /* running calls (doubly linked) */
    size_t n_calls;
    bool destroying;
};

struct ds4_rpc_client_call {
    ds4_rpc_channel_h channel;
    struct ds4_rpc_client_call *prev, *next;
    grpc_call *call;
    const ProtobufCMessageDescriptor *response_type;
    ds4_rpc_message_cb on_message;
    ds4_rpc_done_cb on_done;
    void *arg;
    ds4__rpc_tag_t start_tag, status_tag, recv_tag;
    grpc_byte_buffer *send_bb, *recv_bb;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    bool start_done, status_done, stream_ended;
    /* Set when we ended the call ourselves (malformed response): overrides the core's code. */
    bool local_error;
    ds4_rpc_code_t local_code;
    char local_msg[200];
};

ds4_rpc_channel_params_t ds4_rpc_channel_params_default(void)
{
    ds4_rpc_channel_params_t p = {
        .target = NULL,
        .max_message_bytes = 64u << 20,
        .reconnect_backoff_ms = 100,
        .max_reconnect_backoff_ms = 1000,
    };
    return p;
}

ds4_status_t ds4_rpc_channel_create(ds4_rpc_ctx_h ctx, const ds4_rpc_channel_params_t *params,
                                    ds4_rpc_channel_h *out)
{
    if (ctx == NULL || params == NULL || params->target == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_rpc_channel_h c = ds4_calloc(1, sizeof(*c));
    if (c == NULL)
        return DS4_ERR_NO_MEMORY;
    c->target = ds4_strdup(params->target);
    if (c->target == NULL) {
        ds4_free(c);
        return DS4_ERR_NO_MEMORY;
    }
    int max_msg =
        (int)DS4_MIN(params->max_message_bytes != 0 ? params->max_message_bytes : (size_t)64u << 20,
                     (size_t)0x7fffffff);
    int backoff = (int)(params->reconnect_backoff_ms != 0 ? params->reconnect_backoff_ms : 100);
    int max_backoff = (int)DS4_MAX(params->max_reconnect_backoff_ms, (uint32_t)backoff);
    grpc_arg args[6] = {
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = max_msg},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
         .value.integer = max_msg},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
         .value.integer = backoff},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
         .value.integer = backoff},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
         .value.integer = max_backoff},
        /* Separate channels to one target must not share a subchannel (and its backoff). */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, .value.integer = 1},
    };
    grpc_channel_args chargs = {.num_args = DS4_ARRAY_LEN(args), .args = args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    c->ch = grpc_channel_create(c->target, creds, &chargs);
    grpc_channel_credentials_release(creds);
    if (c->ch == NULL) {
        ds4_free(c->target);
        ds4_free(c);
        return DS4_ERR_INTERNAL;
    }
    c->ctx = ctx;
    ctx->n_objects++;
    *out = c;
    return DS4_OK;
}

static void channel_maybe_free(ds4_rpc_channel_h c)
{
    if (!c->destroying || c->n_calls != 0)
        return;
    grpc_channel_destroy(c->ch);
    c->ctx->n_objects--;
    ds4_free(c->target);
    ds4_free(c);
}

void ds4_rpc_channel_destroy(ds4_rpc_channel_h c)
{
    if (c == NULL)
        return;
    c->destroying = true;
    for (struct ds4_rpc_client_call *k = c->calls; k != NULL; k = k->next)
        grpc_call_cancel(k->call, NULL);
    channel_maybe_free(c);
}

const char *ds4_rpc_channel_target(ds4_rpc_channel_h c)
{
    return c->target;
}

static void call_maybe_done(ds4_rpc_client_call_h k)
{
    if (!k->start_done || !k->status_done || !k->stream_ended)
        return;
    ds4_rpc_code_t code = (ds4_rpc_code_t)k->status;
    char *msg = NULL;
    const char *text;
    if (k->local_error) {
        code = k->local_code;
        text = k->local_msg;
    } else {
        msg = grpc_slice_to_c_string(k->details);
        text = msg != NULL ? msg : "";
    }
    k->on_done(k, code, text, k->arg);
    gpr_free(msg);

    ds4_rpc_channel_h c = k->channel;
    if (k->prev != NULL)
        k->prev->next = k->next;
    else
        c->calls = k->next;
    if (k->next != NULL)
        k->next->prev = k->prev;
    c->n_calls--;
    grpc_metadata_array_destroy(&k->initial_md);
    grpc_metadata_array_destroy(&k->trailing_md);
    grpc_slice_unref(k->details);
    grpc_call_unref(k->call);
    ds4_free(k);
    channel_maybe_free(c);
}

static void start_done(ds4__rpc_tag_t *tag, bool ok)
{
    ds4_rpc_client_call_h k = DS4__CONTAINER_OF(tag, struct ds4_rpc_client_call, start_tag);
    k->start_done = true;
    if (k->send_bb != NULL) {
        grpc_byte_buffer_destroy(k->send_bb);
        k->send_bb = NULL;
    }
    call_maybe_done(k);
}

static void status_done(ds4__rpc_tag_t *tag, bool ok)
{
    ds4_rpc_client_call_h k = DS4__CONTAINER_OF(tag, struct ds4_rpc_client_call, status_tag);
    k->status_done = true;
    call_maybe_done(k);
}

static void recv_next(ds4_rpc_client_call_h k)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &k->recv_bb;
    grpc_call_error err = grpc_call_start_batch(k->call, &op, 1, &k->recv_tag, NULL);
    DS4_ASSERT(err == GRPC_CALL_OK);
}

static void recv_done(ds4__rpc_tag_t *tag, bool ok)
{
    ds4_rpc_client_call_h k = DS4__CONTAINER_OF(tag, struct ds4_rpc_client_call, recv_tag);
    grpc_byte_buffer *bb = k->recv_bb;
    k->recv_bb = NULL;
    if (!ok || bb == NULL) {
        if (bb != NULL)
            grpc_byte_buffer_destroy(bb);
        k->stream_ended = true;
        call_maybe_done(k);
        return;
    }
    ProtobufCMessage *msg = ds4__rpc_unpack(bb, k->response_type);
    grpc_byte_buffer_destroy(bb);
    if (msg == NULL) {
        if (!k->local_error) {
            k->local_error = true;
            k->local_code = DS4_RPC_INTERNAL;
            snprintf(k->local_msg, sizeof(k->local_msg), "malformed %s response from %s",
                     k->response_type->name, k->channel->target);
            ds4_log_warn("rpc: %s", k->local_msg);
        }
        grpc_call_cancel(k->call, NULL);
        k->stream_ended = true;
        call_maybe_done(k);
        return;
    }
    if (k->on_message != NULL && !k->local_error)
        k->on_message(k, msg, k->arg);
    else
        protobuf_c_message_free_unpacked(msg, NULL);
    recv_next(k);
}

ds4_status_t ds4_rpc_channel_call(ds4_rpc_channel_h c, const ds4_rpc_call_params_t *p,
                                  ds4_rpc_client_call_h *out)
{
    if (c == NULL || p == NULL || p->method == NULL || p->request == NULL ||
        p->response_type == NULL || p->on_done == NULL || c->destroying)
        return DS4_ERR_INVALID_ARG;
    ds4_rpc_client_call_h k = ds4_calloc(1, sizeof(*k));
    if (k == NULL)
        return DS4_ERR_NO_MEMORY;
    k->channel = c;
    k->response_type = p->response_type;
    k->on_message = p->on_message;
    k->on_done = p->on_done;
    k->arg = p->arg;
    k->start_tag.done = start_done;
    k->status_tag.done = status_done;
    k->recv_tag.done = recv_done;
    k->details = grpc_empty_slice();
    grpc_metadata_array_init(&k->initial_md);
    grpc_metadata_array_init(&k->trailing_md);
    grpc_slice method = grpc_slice_from_copied_string(p->method);
    k->call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->ctx->cq, method,
                                       NULL, ds4__rpc_deadline(p->timeout_ms), NULL);
    grpc_slice_unref(method);
    if (k->call == NULL) {
        grpc_metadata_array_destroy(&k->initial_md);
        grpc_metadata_array_destroy(&k->trailing_md);
        ds4_free(k);
        return DS4_ERR_INTERNAL;
    }
    k->send_bb = ds4__rpc_pack(p->request);

    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = k->send_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &k->initial_md;
    grpc_call_error err = grpc_call_start_batch(k->call, ops, 4, &k->start_tag, NULL);
    DS4_ASSERT(err == GRPC_CALL_OK);

    grpc_op st;
    memset(&st, 0, sizeof(st));
    st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st.data.recv_status_on_client.trailing_metadata = &k->trailing_md;
    st.data.recv_status_on_client.status = &k->status;
    st.data.recv_status_on_client.status_details = &k->details;
    err = grpc_call_start_batch(k->call, &st, 1, &k->status_tag, NULL);
    DS4_ASSERT(err == GRPC_CALL_OK);
    recv_next(k);

    k->next = c->calls;
    if (c->calls != NULL)
        c->calls->prev = k;
    c->calls = k;
    c->n_calls++;
    if (out != NULL)
        *out = k;
    return DS4_OK;
}

void ds4_rpc_client_call_cancel(ds4_rpc_client_call_h k)
{
    grpc_call_cancel(k->call, NULL);
}
