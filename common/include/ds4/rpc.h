/*
 * ds4/rpc.h - gRPC servers and clients on the gRPC C core, driven from a libuv loop.
 *
 * Threading model (shared/DESIGN.md): one ds4_rpc_ctx_h per libuv loop owns one gRPC completion
 * queue drained by its own thread; every completion is handed to the loop with uv_async_send,
 * so every callback of this module (handlers, cancel, message, done, stopped) runs on the loop
 * thread, and every function here must be called on that thread. Messages are protobuf-c
 * messages (proto/ds4_proto); the (de)serialisation to grpc_byte_buffer happens here.
 *
 * Server: methods are registered by full name ("/ds4.v1.Ds4/Generate") with the protobuf-c
 * descriptor of their request. The handler gets the parsed request; it answers with
 * ds4_rpc_call_send (0..n messages, server streaming) and must end every call exactly once
 * with ds4_rpc_call_finish (or ds4_rpc_call_reply for unary: one message + OK). A request that
 * does not parse is answered INVALID_ARGUMENT ("malformed ds4.v1.GenerateRequest message")
 * without reaching the handler; an unknown method UNIMPLEMENTED. A call may be cancelled (client
 * cancel or disconnect, deadline passed, server shutdown): the cancel callback fires once, on
 * the loop, and the handler must still call ds4_rpc_call_finish (its sends are then dropped).
 * The call handle stays valid until that finish.
 *
 * Client: ds4_rpc_channel_call sends one request and receives 0..n responses (unary and server
 * streaming alike): on_message for each (the callee owns the message), then on_done exactly
 * once with the final code and message. A peer that cannot be reached fails fast with
 * UNAVAILABLE; a call past its deadline ends DEADLINE_EXCEEDED; a response that does not parse
 * ends INTERNAL and the call is cancelled.
 *
 * Shutdown order: ds4_rpc_server_shutdown (stop accepting, cancel what remains after a grace
 * period) -> stopped callback -> ds4_rpc_server_destroy; ds4_rpc_channel_destroy; then
 * ds4_rpc_ctx_destroy, and run the loop until it returns so the handles close.
 */
#ifndef DS4_RPC_H
#define DS4_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>
#include <uv.h>

#include "ds4/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* gRPC status codes (same numbers as grpc_status_code and the gRPC spec). */
typedef enum ds4_rpc_code {
    DS4_RPC_OK = 0,
    DS4_RPC_CANCELLED = 1,
    DS4_RPC_UNKNOWN = 2,
    DS4_RPC_INVALID_ARGUMENT = 3,
    DS4_RPC_DEADLINE_EXCEEDED = 4,
    DS4_RPC_NOT_FOUND = 5,
    DS4_RPC_ALREADY_EXISTS = 6,
    DS4_RPC_PERMISSION_DENIED = 7,
    DS4_RPC_RESOURCE_EXHAUSTED = 8,
    DS4_RPC_FAILED_PRECONDITION = 9,
    DS4_RPC_ABORTED = 10,
    DS4_RPC_OUT_OF_RANGE = 11,
    DS4_RPC_UNIMPLEMENTED = 12,
    DS4_RPC_INTERNAL = 13,
    DS4_RPC_UNAVAILABLE = 14,
    DS4_RPC_DATA_LOSS = 15,
    DS4_RPC_UNAUTHENTICATED = 16,
} ds4_rpc_code_t;

/* "OK", "INVALID_ARGUMENT", ... ; never NULL. */
const char *ds4_rpc_code_name(ds4_rpc_code_t code);
/* The gRPC code a ds4 status is reported as (DS4_ERR_BAD_REQUEST -> INVALID_ARGUMENT, ...). */
ds4_rpc_code_t ds4_rpc_code_from_status(ds4_status_t status);
/* The ds4 status a gRPC code maps to (UNAVAILABLE -> DS4_ERR_UNAVAILABLE, ...). */
ds4_status_t ds4_rpc_status_from_code(ds4_rpc_code_t code);

/* ---- context: one per libuv loop ---- */

typedef struct ds4_rpc_ctx *ds4_rpc_ctx_h;

/* Starts the completion-queue thread. `loop` must outlive the context. */
ds4_status_t ds4_rpc_ctx_create(uv_loop_t *loop, ds4_rpc_ctx_h *out);
/* Every server, channel and call of the context must be gone. Memory is released in the loop's
 * next iteration (uv_close); run the loop until it returns. */
void ds4_rpc_ctx_destroy(ds4_rpc_ctx_h ctx);
/* Servers and channels not yet released (a destroyed channel counts until its calls end). */
size_t ds4_rpc_ctx_live_objects(ds4_rpc_ctx_h ctx);

/* ---- server ---- */

typedef struct ds4_rpc_server *ds4_rpc_server_h;
typedef struct ds4_rpc_call *ds4_rpc_call_h;

/* `request` is owned by the call and valid until ds4_rpc_call_finish. */
typedef void (*ds4_rpc_handler_cb)(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg);
/* The call was cancelled before the handler finished it (see the header comment). */
typedef void (*ds4_rpc_cancel_cb)(ds4_rpc_call_h call, void *arg);
typedef void (*ds4_rpc_stopped_cb)(ds4_rpc_server_h server, void *arg);

typedef struct ds4_rpc_method {
    const char *name; /* "/pkg.Service/Method"; copied */
    const ProtobufCMessageDescriptor *request_type;
    ds4_rpc_handler_cb handler;
    void *arg;
} ds4_rpc_method_t;

typedef struct ds4_rpc_server_params {
    const char *address;      /* "127.0.0.1:0" (port 0 = pick a free one) */
    size_t max_message_bytes; /* send and receive limit; default 64 MiB */
} ds4_rpc_server_params_t;

ds4_rpc_server_params_t ds4_rpc_server_params_default(void);
/* Binds the address (DS4_ERR_IO when it cannot). The server is not yet serving. */
ds4_status_t ds4_rpc_server_create(ds4_rpc_ctx_h ctx, const ds4_rpc_server_params_t *params,
                                   ds4_rpc_server_h *out);
/* Registers a method; only before ds4_rpc_server_start. DS4_ERR_EXISTS for a duplicate name. */
ds4_status_t ds4_rpc_server_add_method(ds4_rpc_server_h server, const ds4_rpc_method_t *method);
/* Serves grpc.health.v1.Health/Check: SERVING while `serving` (see set_serving) for the service
 * "" and every service whose methods are registered; NOT_FOUND for other services. */
ds4_status_t ds4_rpc_server_add_health(ds4_rpc_server_h server);
void ds4_rpc_server_set_serving(ds4_rpc_server_h server, bool serving);
/* Starts accepting calls; *port_out (may be NULL) is the bound TCP port. */
ds4_status_t ds4_rpc_server_start(ds4_rpc_server_h server, int *port_out);
int ds4_rpc_server_port(ds4_rpc_server_h server);
/* Stops accepting new calls; calls still running after `grace_ms` are cancelled. `stopped`
 * fires once when every call has been finished by its handler. */
void ds4_rpc_server_shutdown(ds4_rpc_server_h server, uint32_t grace_ms, ds4_rpc_stopped_cb stopped,
                             void *arg);
/* After the stopped callback (or before start). */
void ds4_rpc_server_destroy(ds4_rpc_server_h server);
/* Calls accepted and not yet finished by their handler. */
size_t ds4_rpc_server_live_calls(ds4_rpc_server_h server);

/* Queues one response message (serialised now; the caller keeps ownership of `msg`). Returns
 * DS4_ERR_CANCELLED when the call is already cancelled (the message is dropped). */
ds4_status_t ds4_rpc_call_send(ds4_rpc_call_h call, const ProtobufCMessage *msg);
/* Ends the call after the queued messages with `code` and a printf-style message ("" for OK).
 * The handle is invalid afterwards. */
void ds4_rpc_call_finish(ds4_rpc_call_h call, ds4_rpc_code_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Unary shorthand: send `msg` and finish OK. */
void ds4_rpc_call_reply(ds4_rpc_call_h call, const ProtobufCMessage *msg);
/* Registers the cancel callback (replaces a previous one). If the call is already cancelled it
 * fires from the loop's next iteration, never from inside this function. */
void ds4_rpc_call_on_cancel(ds4_rpc_call_h call, ds4_rpc_cancel_cb cb, void *arg);
bool ds4_rpc_call_cancelled(ds4_rpc_call_h call);
/* Milliseconds until the client's deadline (0 when passed); UINT64_MAX when it set none. */
uint64_t ds4_rpc_call_deadline_left_ms(ds4_rpc_call_h call);
/* Messages queued and not yet written (for flow control). */
size_t ds4_rpc_call_pending_sends(ds4_rpc_call_h call);
const char *ds4_rpc_call_method(ds4_rpc_call_h call);

/* ---- client ---- */

typedef struct ds4_rpc_channel *ds4_rpc_channel_h;
typedef struct ds4_rpc_client_call *ds4_rpc_client_call_h;

/* A response; the callee owns it (protobuf_c_message_free_unpacked(msg, NULL)). */
typedef void (*ds4_rpc_message_cb)(ds4_rpc_client_call_h call, ProtobufCMessage *msg, void *arg);
/* Exactly once per call, after its last message. `message` is "" for OK; valid during the
 * callback. The call handle is invalid after this returns. */
typedef void (*ds4_rpc_done_cb)(ds4_rpc_client_call_h call, ds4_rpc_code_t code,
                                const char *message, void *arg);

typedef struct ds4_rpc_channel_params {
    const char *target;                /* "127.0.0.1:5000" */
    size_t max_message_bytes;          /* default 64 MiB */
    uint32_t reconnect_backoff_ms;     /* first/min reconnect backoff; default 100 */
    uint32_t max_reconnect_backoff_ms; /* default 1000 */
} ds4_rpc_channel_params_t;

ds4_rpc_channel_params_t ds4_rpc_channel_params_default(void);
/* Connects lazily (the first call connects). */
ds4_status_t ds4_rpc_channel_create(ds4_rpc_ctx_h ctx, const ds4_rpc_channel_params_t *params,
                                    ds4_rpc_channel_h *out);
/* Cancels the channel's calls (their on_done still fires, CANCELLED); memory goes when the last
 * call is done. */
void ds4_rpc_channel_destroy(ds4_rpc_channel_h channel);
const char *ds4_rpc_channel_target(ds4_rpc_channel_h channel);

typedef struct ds4_rpc_call_params {
    const char *method;              /* "/pkg.Service/Method" */
    const ProtobufCMessage *request; /* serialised now; caller keeps ownership */
    const ProtobufCMessageDescriptor *response_type;
    uint32_t timeout_ms;           /* 0 = no deadline */
    ds4_rpc_message_cb on_message; /* may be NULL (messages are then freed) */
    ds4_rpc_done_cb on_done;       /* required */
    void *arg;
} ds4_rpc_call_params_t;

/* Starts a call. On failure nothing fires. *out (may be NULL) is valid until on_done returns. */
ds4_status_t ds4_rpc_channel_call(ds4_rpc_channel_h channel, const ds4_rpc_call_params_t *params,
                                  ds4_rpc_client_call_h *out);
/* Cancels a running call (only before its on_done): on_done follows with CANCELLED. */
void ds4_rpc_client_call_cancel(ds4_rpc_client_call_h call);

#ifdef __cplusplus
}
#endif
#endif /* DS4_RPC_H */
