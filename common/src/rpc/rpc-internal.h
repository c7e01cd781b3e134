/* Internals shared by the rpc-*.c files. Not installed. */
#ifndef DS4_RPC_INTERNAL_H
#define DS4_RPC_INTERNAL_H

#include <stddef.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>

#include "ds4/rpc.h"

#define DS4__CONTAINER_OF(ptr, type, member)                                                       \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Every grpc tag of this module points at one of these; `done` runs on the loop thread. */
typedef struct ds4__rpc_tag {
    void (*done)(struct ds4__rpc_tag *tag, bool ok);
} ds4__rpc_tag_t;

struct ds4_rpc_ctx {
    uv_loop_t *loop;
    grpc_completion_queue *cq;
    uv_async_t async; /* doorbell from the CQ thread */
    uv_thread_t thread;
    uv_mutex_t mu;                 /* guards the event vector */
    struct ds4__rpc_event *events; /* completions not yet handled by the loop */
    size_t n_events, cap_events;
    struct ds4__rpc_event *spare; /* the other half of the double buffer */
    size_t cap_spare;
    size_t n_objects; /* servers + channels alive (destroy asserts 0) */
};

/* The byte buffer of a packed message, or NULL (out of memory). */
grpc_byte_buffer *ds4__rpc_pack(const ProtobufCMessage *msg);
/* Parses a byte buffer as `type`; NULL when malformed. */
ProtobufCMessage *ds4__rpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *type);
/* gpr deadline `ms` from now (0 = infinite). */
gpr_timespec ds4__rpc_deadline(uint32_t timeout_ms);

#endif /* DS4_RPC_INTERNAL_H */
