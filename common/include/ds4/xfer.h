/*
 * ds4/xfer.h - KV transfer from prefill to decode: reserve, layer-pipelined push, verify.
 *
 * One ds4_xfer_h per process and libuv loop. It owns the transport (UCX by default, through the
 * ds4_xfer_transport_ops_t vtable so this core never calls UCX directly), the decode-side KV
 * pool (registered with the transport once), the connections to peers and their preflight link
 * measurements. Every process start draws a random 64-bit incarnation; every message carries
 * the sender's and the expected receiver's incarnation.
 *
 * Protocol (docs/kv-transfer.md has the message table):
 *   decode  ds4_xfer_reserve(request_id, n_tokens)  -> a KV *target* blob (below), which the
 *           router hands to prefill inside its own message;
 *   prefill ds4_xfer_send_start(target)             -> connects (once per decode address):
 *           HELLO(manifest) / WELCOME(incarnation, scratch rkey) - manifests compared, mismatch
 *           refused naming the group; preflight (ping-pong latency, put bandwidth); BEGIN;
 *   prefill ds4_xfer_send_rows(group, rows...)      -> one-sided puts straight into the decode
 *           pool's blocks (or, on shared memory, one copy+CRC pass into the mapped region), as
 *           soon as that layer of that chunk is computed, with PROGRESS hints so decode can
 *           checksum rows while they are in cache;
 *   prefill ds4_xfer_send_group_end(group)          -> flush (puts remotely complete), then a
 *           RECORD {sequence number, group, rows, CRC32C of the payload};
 *   decode  verifies each RECORD against the bytes in its pool as it arrives (sequence must be
 *           the next one, CRC must match); when every group is verified the reservation becomes
 *           VERIFIED, the decode callback fires with DS4_OK and a RESULT goes to the sender.
 * Fail closed: ds4_xfer_acquire returns the block table of a VERIFIED reservation only.
 * Any failure (CRC -> DS4_ERR_KV_CORRUPT, deadline -> DS4_ERR_TIMEOUT, peer lost ->
 * DS4_ERR_PEER_GONE, stale incarnation -> DS4_ERR_STALE, cancel/abort -> DS4_ERR_CANCELLED)
 * fires the callbacks once on both sides and frees the blocks: immediately when the sender is
 * gone or has acknowledged that it stopped writing, else after quarantine_timeout_ms.
 *
 * Threading: ds4_xfer_create/destroy, the decode calls (reserve/acquire/release/pool stats) and
 * ds4_xfer_link_stats run on the loop thread. The ds4_xfer_send_* calls are thread-safe (a
 * prefill compute thread calls them as layers finish): they validate, enqueue onto an MPSC
 * queue and wake the loop with uv_async_send. Callbacks run on the loop thread.
 *
 * Memory passed to ds4_xfer_send_rows is read asynchronously: it must stay valid and unchanged
 * until the transfer's done callback has fired.
 */
#ifndef DS4_XFER_H
#define DS4_XFER_H

#include "ds4/kv.h"
#include "ds4/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ transport vtable */

typedef struct ds4_xfer_tp ds4_xfer_tp_t;           /* a transport instance */
typedef struct ds4_xfer_tp_conn ds4_xfer_tp_conn_t; /* one connection (endpoint) */
typedef struct ds4_xfer_tp_mem ds4_xfer_tp_mem_t;   /* a registered memory region */
typedef struct ds4_xfer_tp_rkey ds4_xfer_tp_rkey_t; /* a remote key unpacked on a connection */

/* Upcalls from the transport into the core, always on the loop thread, never from inside a
 * transport call made by the core (so the core may call the transport from them). */
typedef struct ds4_xfer_tp_events {
    void *arg;
    void (*accept_cb)(void *arg, ds4_xfer_tp_conn_t *conn);
    void (*recv_cb)(void *arg, ds4_xfer_tp_conn_t *conn, const void *msg, size_t len);
    /* The connection failed or the peer closed it; no more events for `conn` follow and the
     * core must call close() on it. */
    void (*conn_error_cb)(void *arg, ds4_xfer_tp_conn_t *conn, ds4_status_t status);
} ds4_xfer_tp_events_t;

/* Completion of a put or flush: DS4_OK, or an error (the connection failed). */
typedef void (*ds4_xfer_tp_done_cb)(void *arg, ds4_status_t status);

/* What a connection runs on, for preflight and the refuse-TCP-only policy. */
typedef struct ds4_xfer_link_info {
    char transports[96]; /* comma-separated transport names of the data lanes, e.g. "posix" */
    bool tcp_only;       /* every lane is TCP (no shared memory / RDMA) */
} ds4_xfer_link_info_t;

typedef struct ds4_xfer_transport_ops {
    const char *name;
    /* listen_addr "host:port" (port 0: ephemeral) or NULL for no listener. */
    ds4_status_t (*create)(uv_loop_t *loop, const char *listen_addr,
                           const ds4_xfer_tp_events_t *events, ds4_xfer_tp_t **out);
    /* Force-closes every connection and frees everything; uv handles finish closing on the next
     * loop iterations (run the loop until it has no more handles). */
    void (*destroy)(ds4_xfer_tp_t *tp);
    /* The bound listen address ("127.0.0.1:41234"). */
    ds4_status_t (*local_address)(ds4_xfer_tp_t *tp, char *buf, size_t buf_len);
    /* Allocates and registers `bytes` (zeroed) for remote writes; *base is its address. */
    ds4_status_t (*mem_alloc)(ds4_xfer_tp_t *tp, size_t bytes, ds4_xfer_tp_mem_t **out,
                              void **base);
    void (*mem_free)(ds4_xfer_tp_t *tp, ds4_xfer_tp_mem_t *mem);
    /* Packed remote key of a region (ds4_free the buffer). */
    ds4_status_t (*mem_pack)(ds4_xfer_tp_t *tp, ds4_xfer_tp_mem_t *mem, void **buf, size_t *len);
    ds4_status_t (*connect)(ds4_xfer_tp_t *tp, const char *addr, ds4_xfer_tp_conn_t **out);
    void (*conn_set_user)(ds4_xfer_tp_conn_t *conn, void *user);
    void *(*conn_user)(ds4_xfer_tp_conn_t *conn);
    ds4_status_t (*conn_info)(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *conn,
                              ds4_xfer_link_info_t *out);
    /* Closes a connection (flushing what was sent); no callbacks for it afterwards. */
    void (*close)(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *conn);
    /* Sends a message (copied); delivery in order per connection; failures surface later as
     * conn_error_cb. */
    ds4_status_t (*send)(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *conn, const void *msg,
                         size_t len);
    ds4_status_t (*rkey_unpack)(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *conn, const void *buf,
                                size_t len, ds4_xfer_tp_rkey_t **out);
    void (*rkey_destroy)(ds4_xfer_tp_t *tp, ds4_xfer_tp_rkey_t *rkey);
    /* One-sided write of `len` bytes to the peer's `remote_addr`. `src` must stay valid until
     * `cb` (may be NULL) fires or a later flush completes. */
    ds4_status_t (*put)(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *conn, const void *src, size_t len,
                        uint64_t remote_addr, ds4_xfer_tp_rkey_t *rkey, ds4_xfer_tp_done_cb cb,
                        void *arg);
    /* `cb` fires once every put issued before on `conn` is complete at the remote side. */
    ds4_status_t (*flush)(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *conn, ds4_xfer_tp_done_cb cb,
                          void *arg);
    /* Optional (may be NULL): a local pointer to the peer's `remote_addr` when the region is
     * mapped into this process (shared memory), so the sender copies and checksums in one
     * pass; DS4_ERR_UNSUPPORTED when the link cannot (TCP, RDMA) and put() must be used. */
    ds4_status_t (*rkey_ptr)(ds4_xfer_tp_t *tp, ds4_xfer_tp_rkey_t *rkey, uint64_t remote_addr,
                             void **local);
} ds4_xfer_transport_ops_t;

/* The UCX (ucp) implementation: sockaddr listener + endpoints, ucp_mem_map'd regions with
 * rkeys, ucp_put_nbx (ucp_rkey_ptr on shared memory), active messages, worker event fd polled
 * by libuv. Transports follow UCX_TLS (shared memory and TCP on loopback here). */
const ds4_xfer_transport_ops_t *ds4_xfer_ucx_ops(void);

/* ------------------------------------------------------------------------ the engine */

typedef struct ds4_xfer ds4_xfer_h;
typedef struct ds4_xfer_send ds4_xfer_send_h;

/* Decode side: reservation `request_id` reached its end. DS4_OK: every group verified (the
 * blocks stay until ds4_xfer_release). Any error: the reservation is gone (blocks freed or in
 * quarantine); `msg` says what happened. */
typedef void (*ds4_xfer_recv_cb)(void *arg, uint64_t request_id, ds4_status_t status,
                                 const char *msg);
/* Prefill side: a transfer ended. DS4_OK: the decode side verified every group. */
typedef void (*ds4_xfer_send_done_cb)(void *arg, uint64_t request_id, ds4_status_t status,
                                      const char *msg);

typedef struct ds4_xfer_params {
    const ds4_kv_manifest_h *manifest;      /* required; borrowed */
    const ds4_xfer_transport_ops_t *ops;    /* NULL: ds4_xfer_ucx_ops() */
    uint64_t incarnation;                   /* 0: random (getrandom) */
    const char *listen_addr;                /* decode: "127.0.0.1:0"; NULL: no listener */
    const ds4_kv_pool_params_t *pool;       /* decode: pool shape (its memory field is ignored:
                                               the transport allocates the region); NULL: none */
    bool refuse_tcp_only;                   /* refuse PD transfers over TCP-only links */
    uint32_t connect_timeout_ms;            /* connect + handshake + preflight; default 5000 */
    uint32_t quarantine_timeout_ms;         /* wait for a sender's stop ack; default 2000 */
    uint32_t preflight_pings;               /* ping-pong rounds for latency; default 16 */
    uint32_t preflight_bytes;               /* bytes put for bandwidth; default 8 MiB */
    ds4_xfer_recv_cb recv_cb;               /* decode: reservation ended */
    void *cb_arg;
    /* Test hook (sender): corrupt one byte of the payload in flight (the CRC is taken over the
     * unmodified source) for request `corrupt_request_id`, group `corrupt_group`, byte offset
     * `corrupt_offset` within that group. */
    bool test_corrupt;
    uint64_t test_corrupt_request_id;
    uint32_t test_corrupt_group;
    uint64_t test_corrupt_offset;
} ds4_xfer_params_t;

ds4_xfer_params_t ds4_xfer_params_default(void);

ds4_status_t ds4_xfer_create(uv_loop_t *loop, const ds4_xfer_params_t *params, ds4_xfer_h **out);
/* Fails every live transfer (callbacks fire with DS4_ERR_SHUTDOWN), frees everything; run the
 * loop afterwards until its handles are closed. Loop thread, not from a ds4_xfer callback, and
 * after every thread calling ds4_xfer_send_* has stopped (send handles may still be released
 * afterwards). */
void ds4_xfer_destroy(ds4_xfer_h *x);

uint64_t ds4_xfer_incarnation(const ds4_xfer_h *x);
/* The listen address peers connect to (decode), e.g. "127.0.0.1:41234"; "" without listener. */
const char *ds4_xfer_address(const ds4_xfer_h *x);

/* ---------------------------------------------------------------- decode (receiver) side */

/*
 * Reserves KV blocks for request `request_id` (unique among live reservations) of `n_tokens`
 * and returns the KV target blob (*target, ds4_free) to hand to the prefill side. The
 * reservation fails with DS4_ERR_TIMEOUT unless verified within `deadline_ms`.
 * DS4_ERR_NO_BLOCKS when the pool lacks room, DS4_ERR_EXISTS for a live request_id.
 */
ds4_status_t ds4_xfer_reserve(ds4_xfer_h *x, uint64_t request_id, uint64_t n_tokens,
                              uint32_t deadline_ms, void **target, size_t *target_len);
/* The block table of a VERIFIED reservation; DS4_ERR_KV_INCOMPLETE before that,
 * DS4_ERR_NOT_FOUND for an unknown (or failed) request. Valid until ds4_xfer_release. */
ds4_status_t ds4_xfer_acquire(ds4_xfer_h *x, uint64_t request_id,
                              const ds4_kv_block_table_h **table);
/* Ends a reservation: frees a verified one; cancels one in progress (the sender is told, the
 * recv callback fires with DS4_ERR_CANCELLED before this returns; the blocks come back once the
 * sender acknowledged, see quarantine). DS4_ERR_NOT_FOUND when unknown. */
ds4_status_t ds4_xfer_release(ds4_xfer_h *x, uint64_t request_id);
/* Progress of a reservation, for metrics and tests. */
typedef struct ds4_xfer_resv_info {
    bool sender_bound;        /* a sender's BEGIN bound it (pushing may be under way) */
    bool verified;            /* every group verified: ds4_xfer_acquire succeeds */
    uint32_t groups_verified;
    uint32_t n_groups;
} ds4_xfer_resv_info_t;
/* DS4_ERR_NOT_FOUND for unknown, failed or quarantined reservations. */
ds4_status_t ds4_xfer_reservation_info(ds4_xfer_h *x, uint64_t request_id,
                                       ds4_xfer_resv_info_t *out);
/* The decode pool (NULL without one) for stats and row access. */
ds4_kv_pool_h *ds4_xfer_pool(ds4_xfer_h *x);
/* Live reservations (any state, quarantined ones included). */
uint32_t ds4_xfer_n_reservations(const ds4_xfer_h *x);

/* ---------------------------------------------------------------- prefill (sender) side */

/*
 * Starts pushing into the KV target `target` (copied). Parses and checks it synchronously
 * (DS4_ERR_PARSE / DS4_ERR_VERSION / DS4_ERR_KV_MANIFEST for a bad or foreign target); the
 * rest is asynchronous and ends with exactly one `cb`. The transfer fails with DS4_ERR_TIMEOUT
 * unless verified within `deadline_ms`. Thread-safe. *out holds a reference: drop it with
 * ds4_xfer_send_release (any time, also before the callback).
 */
ds4_status_t ds4_xfer_send_start(ds4_xfer_h *x, const void *target, size_t target_len,
                                 uint32_t deadline_ms, ds4_xfer_send_done_cb cb, void *arg,
                                 ds4_xfer_send_h **out);
/*
 * Pushes rows [row_begin, row_begin + n_rows) of `group` from `src` (n_rows * row_bytes
 * contiguous bytes). Rows of a group must be pushed in order, each exactly once.
 * DS4_ERR_INVALID_ARG / DS4_ERR_OUT_OF_RANGE for bad calls; after the transfer ended, its final
 * status (DS4_ERR_CANCELLED ...). Thread-safe.
 */
ds4_status_t ds4_xfer_send_rows(ds4_xfer_send_h *tx, uint32_t group, uint64_t row_begin,
                                uint64_t n_rows, const void *src);
/* Declares `group` complete (all its rows pushed): its completion record is sent once the
 * puts are remotely complete. Thread-safe. */
ds4_status_t ds4_xfer_send_group_end(ds4_xfer_send_h *tx, uint32_t group);
/* Aborts (cb fires with DS4_ERR_CANCELLED; decode frees the blocks). Thread-safe. */
void ds4_xfer_send_abort(ds4_xfer_send_h *tx);
void ds4_xfer_send_release(ds4_xfer_send_h *tx);
uint64_t ds4_xfer_send_request_id(const ds4_xfer_send_h *tx);

/* Connection to a decode address finished its handshake + preflight (DS4_OK), or was refused
 * (DS4_ERR_KV_MANIFEST naming the group, DS4_ERR_UNSUPPORTED for a refused TCP-only link,
 * DS4_ERR_TIMEOUT, DS4_ERR_PEER_GONE ...) with `msg` saying why. */
typedef void (*ds4_xfer_connect_cb)(void *arg, const char *addr, ds4_status_t status,
                                    const char *msg);
/* Connects (or reuses the connection) to a decode address ahead of any transfer, so the
 * handshake and preflight measurements are ready (loop thread). `cb` fires exactly once, before
 * this returns when the connection is already up. */
ds4_status_t ds4_xfer_connect(ds4_xfer_h *x, const char *addr, ds4_xfer_connect_cb cb,
                              void *arg);

/* ------------------------------------------------------------- preflight link statistics */

typedef struct ds4_xfer_link_stats {
    ds4_xfer_link_info_t info;
    double latency_us;       /* one-way: half the mean ping-pong round trip */
    double bandwidth_bps;    /* bytes per second of puts (flushed) */
    uint64_t measured_ns;    /* ds4_clock_now_ns() of the measurement */
} ds4_xfer_link_stats_t;

/* Preflight result of the connection to `addr` (sender side, loop thread). DS4_ERR_NOT_FOUND
 * when no measured connection exists. */
ds4_status_t ds4_xfer_link_stats(ds4_xfer_h *x, const char *addr, ds4_xfer_link_stats_t *out);

/* ------------------------------------------------------------------------ KV target blob */

/*
 * Wire form: "DS4T" header (ds4_xfer_target_hdr_t, 72 bytes, little-endian), then the decode
 * address (addr_len bytes, no NUL), the packed rkey of the pool region, the block table view
 * (ds4/kv.h), and a CRC32C of everything before it.
 */
#define DS4_XFER_TARGET_VERSION 1u
typedef struct ds4_xfer_target_hdr {
    char magic[4];                /* "DS4T" */
    uint16_t version;             /* DS4_XFER_TARGET_VERSION */
    uint16_t hdr_bytes;           /* sizeof(ds4_xfer_target_hdr_t) */
    uint64_t request_id;
    uint64_t decode_incarnation;
    uint64_t manifest_digest;     /* ds4_kv_manifest_digest of the decode side */
    uint64_t n_tokens;
    uint64_t region_addr;         /* address of the pool region in the decode process */
    uint64_t region_bytes;
    uint32_t deadline_ms;         /* the reservation's deadline (informational) */
    uint16_t addr_len;
    uint16_t rkey_len;
    uint32_t view_len;
    uint32_t reserved;
} ds4_xfer_target_hdr_t;

/* A parsed target; pointers borrow the blob. */
typedef struct ds4_xfer_target {
    ds4_xfer_target_hdr_t hdr;
    char addr[64];
    const void *rkey;
    const void *view;
    ds4_kv_view_t table;
} ds4_xfer_target_t;

/* Parses and checks a target against the local manifest (`why` receives the reason). */
ds4_status_t ds4_xfer_target_decode(const void *buf, size_t len, const ds4_kv_manifest_h *m,
                                    ds4_xfer_target_t *out, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif
#endif /* DS4_XFER_H */
