/* The completion-queue thread and its hand-off to the libuv loop; status code tables. */
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/support/time.h>

#include "ds4/alloc.h"
#include "ds4/log.h"
#include "rpc-internal.h"

typedef struct ds4__rpc_event {
    ds4__rpc_tag_t *tag;
    bool ok;
} ds4__rpc_event_t;

static void cq_thread_main(void *arg)
{
    ds4_rpc_ctx_h ctx = arg;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(ctx->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        uv_mutex_lock(&ctx->mu);
        if (ctx->n_events == ctx->cap_events) {
            size_t cap = ctx->cap_events == 0 ? 64 : ctx->cap_events * 2;
            ds4__rpc_event_t *grown = ds4_realloc_array(ctx->events, cap, sizeof(*grown));
            /* Losing a completion would leak a call forever; there is no way to continue. */
            DS4_ASSERT(grown != NULL);
            ctx->events = grown;
            ctx->cap_events = cap;
        }
        ctx->events[ctx->n_events].tag = ev.tag;
        ctx->events[ctx->n_events].ok = ev.success != 0;
        ctx->n_events++;
        uv_mutex_unlock(&ctx->mu);
        uv_async_send(&ctx->async);
    }
}

static void drain_events(uv_async_t *async)
{
    ds4_rpc_ctx_h ctx = async->data;
    for (;;) {
        uv_mutex_lock(&ctx->mu);
        ds4__rpc_event_t *batch = ctx->events;
        size_t n = ctx->n_events, cap = ctx->cap_events;
        ctx->events = ctx->spare;
        ctx->cap_events = ctx->cap_spare;
        ctx->n_events = 0;
        uv_mutex_unlock(&ctx->mu);
        for (size_t i = 0; i < n; i++)
            batch[i].tag->done(batch[i].tag, batch[i].ok);
        ctx->spare = batch;
        ctx->cap_spare = cap;
        if (n == 0)
            break;
    }
}

ds4_status_t ds4_rpc_ctx_create(uv_loop_t *loop, ds4_rpc_ctx_h *out)
{
    if (loop == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_rpc_ctx_h ctx = ds4_calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return DS4_ERR_NO_MEMORY;
    ctx->loop = loop;
    if (uv_mutex_init(&ctx->mu) != 0)
        goto fail_free;
    grpc_init();
    ctx->cq = grpc_completion_queue_create_for_next(NULL);
    if (ctx->cq == NULL)
        goto fail_grpc;
    /* The thread posts only completions of calls, and none exist before this returns, so it
     * may start before the doorbell it rings is initialised. */
    if (uv_thread_create(&ctx->thread, cq_thread_main, ctx) != 0)
        goto fail_cq;
    if (uv_async_init(loop, &ctx->async, drain_events) != 0)
        goto fail_thread;
    ctx->async.data = ctx;
    *out = ctx;
    return DS4_OK;

fail_thread:
    grpc_completion_queue_shutdown(ctx->cq);
    uv_thread_join(&ctx->thread);
    grpc_completion_queue_destroy(ctx->cq);
    goto fail_grpc;
fail_cq:
    grpc_completion_queue_shutdown(ctx->cq);
    grpc_completion_queue_destroy(ctx->cq);
fail_grpc:
    grpc_shutdown();
    uv_mutex_destroy(&ctx->mu);
fail_free:
    ds4_free(ctx);
    ds4_log_error("rpc: cannot start the completion queue");
    return DS4_ERR_INTERNAL;
}

size_t ds4_rpc_ctx_live_objects(ds4_rpc_ctx_h ctx)
{
    return ctx->n_objects;
}

static void ctx_closed(uv_handle_t *handle)
{
    ds4_rpc_ctx_h ctx = handle->data;
    ds4_free(ctx->events);
    ds4_free(ctx->spare);
    ds4_free(ctx);
}

void ds4_rpc_ctx_destroy(ds4_rpc_ctx_h ctx)
{
    if (ctx == NULL)
        return;
    DS4_ASSERT(ctx->n_objects == 0);
    grpc_completion_queue_shutdown(ctx->cq);
    uv_thread_join(&ctx->thread);
    /* Completions already queued belong to objects that are gone only if they were delivered;
     * with every object destroyed there can be none left. */
    drain_events(&ctx->async);
    grpc_completion_queue_destroy(ctx->cq);
    grpc_shutdown();
    uv_mutex_destroy(&ctx->mu);
    uv_close((uv_handle_t *)&ctx->async, ctx_closed);
}

grpc_byte_buffer *ds4__rpc_pack(const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    grpc_slice slice = grpc_slice_malloc(n);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

ProtobufCMessage *ds4__rpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *type)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    ProtobufCMessage *msg =
        protobuf_c_message_unpack(type, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    return msg;
}

gpr_timespec ds4__rpc_deadline(uint32_t timeout_ms)
{
    if (timeout_ms == 0)
        return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis((int64_t)timeout_ms, GPR_TIMESPAN));
}

const char *ds4_rpc_code_name(ds4_rpc_code_t code)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if ((unsigned)code < DS4_ARRAY_LEN(names))
        return names[code];
    return "UNKNOWN_CODE";
}

ds4_rpc_code_t ds4_rpc_code_from_status(ds4_status_t status)
{
    switch (status) {
    case DS4_OK:
        return DS4_RPC_OK;
    case DS4_ERR_INVALID_ARG:
    case DS4_ERR_PARSE:
    case DS4_ERR_INVALID_UTF8:
    case DS4_ERR_VOCAB:
    case DS4_ERR_TEMPLATE:
    case DS4_ERR_BAD_REQUEST:
        return DS4_RPC_INVALID_ARGUMENT;
    case DS4_ERR_CONTEXT_FULL:
    case DS4_ERR_OUT_OF_RANGE:
        return DS4_RPC_OUT_OF_RANGE;
    case DS4_ERR_NOT_FOUND:
        return DS4_RPC_NOT_FOUND;
    case DS4_ERR_EXISTS:
        return DS4_RPC_ALREADY_EXISTS;
    case DS4_ERR_UNSUPPORTED:
        return DS4_RPC_UNIMPLEMENTED;
    case DS4_ERR_TIMEOUT:
        return DS4_RPC_DEADLINE_EXCEEDED;
    case DS4_ERR_CANCELLED:
        return DS4_RPC_CANCELLED;
    case DS4_ERR_BUSY:
    case DS4_ERR_NO_BLOCKS:
    case DS4_ERR_OVERLOADED:
    case DS4_ERR_NO_MEMORY:
        return DS4_RPC_RESOURCE_EXHAUSTED;
    case DS4_ERR_SHUTDOWN:
    case DS4_ERR_UNAVAILABLE:
    case DS4_ERR_TRANSPORT:
        return DS4_RPC_UNAVAILABLE;
    case DS4_ERR_PEER_GONE:
    case DS4_ERR_STALE:
        return DS4_RPC_ABORTED;
    case DS4_ERR_VERSION:
    case DS4_ERR_KV_MANIFEST:
        return DS4_RPC_FAILED_PRECONDITION;
    case DS4_ERR_KV_CORRUPT:
    case DS4_ERR_KV_INCOMPLETE:
        return DS4_RPC_DATA_LOSS;
    default:
        return DS4_RPC_INTERNAL;
    }
}

ds4_status_t ds4_rpc_status_from_code(ds4_rpc_code_t code)
{
    switch (code) {
    case DS4_RPC_OK:
        return DS4_OK;
    case DS4_RPC_CANCELLED:
        return DS4_ERR_CANCELLED;
    case DS4_RPC_INVALID_ARGUMENT:
        return DS4_ERR_BAD_REQUEST;
    case DS4_RPC_DEADLINE_EXCEEDED:
        return DS4_ERR_TIMEOUT;
    case DS4_RPC_NOT_FOUND:
        return DS4_ERR_NOT_FOUND;
    case DS4_RPC_ALREADY_EXISTS:
        return DS4_ERR_EXISTS;
    case DS4_RPC_RESOURCE_EXHAUSTED:
        return DS4_ERR_OVERLOADED;
    case DS4_RPC_FAILED_PRECONDITION:
        return DS4_ERR_VERSION;
    case DS4_RPC_ABORTED:
        return DS4_ERR_PEER_GONE;
    case DS4_RPC_OUT_OF_RANGE:
        return DS4_ERR_OUT_OF_RANGE;
    case DS4_RPC_UNIMPLEMENTED:
        return DS4_ERR_UNSUPPORTED;
    case DS4_RPC_UNAVAILABLE:
        return DS4_ERR_UNAVAILABLE;
    case DS4_RPC_DATA_LOSS:
        return DS4_ERR_KV_CORRUPT;
    default:
        return DS4_ERR_PROTOCOL;
    }
}
