/* Internal state of ds4_xfer_h shared by xfer-core.c, xfer-recv.c and xfer-send.c. */
#ifndef DS4_XFER_INTERNAL_H
#define DS4_XFER_INTERNAL_H

#include "ds4/xfer.h"
#include "xfer-wire.h"

#include <pthread.h>
#include <stdatomic.h>

typedef enum xfer_conn_state {
    CONN_HELLO,      /* outgoing: HELLO sent, waiting for WELCOME */
    CONN_PREFLIGHT,  /* outgoing: measuring latency and bandwidth */
    CONN_READY,      /* both: transfers may run */
    CONN_AWAIT_HELLO,/* incoming: accepted, no HELLO yet */
    CONN_REJECTED,   /* incoming: refused at handshake */
    CONN_FAILED,     /* closed; kept only until its transfers are failed */
} xfer_conn_state_t;

typedef struct xfer_waiter {
    struct xfer_waiter *next;
    ds4_xfer_connect_cb cb;
    void *arg;
} xfer_waiter_t;

/* A remote key unpacked once per connection and reused by every transfer that names the same
 * region: unpacking maps the peer's shared-memory segment, and a fresh mapping would take a
 * page fault on every page of every transfer. */
typedef struct xfer_rkey_cache {
    struct xfer_rkey_cache *next;
    ds4_xfer_tp_rkey_t *rkey;
    size_t len;
    unsigned char buf[];
} xfer_rkey_cache_t;

typedef struct xfer_conn {
    ds4_xfer_h *x;
    uint64_t serial;             /* unique per ds4_xfer_h: callbacks re-find conns by it */
    ds4_xfer_tp_conn_t *tc;
    bool outgoing;
    xfer_conn_state_t state;
    char addr[64];               /* outgoing: the decode address */
    uint64_t peer_inc;           /* learnt from HELLO / WELCOME */
    uint64_t deadline_ns;        /* outgoing: READY by then */
    /* outgoing preflight */
    ds4_xfer_tp_rkey_t *scratch_rkey;
    uint64_t scratch_addr;
    uint32_t scratch_bytes;
    uint32_t bw_chunk;           /* bytes per preflight put */
    uint32_t bw_inflight;        /* preflight puts posted, not yet completed */
    uint64_t bw_posted;          /* preflight bytes posted so far */
    uint32_t pings_done;
    uint64_t rtt_ns_sum;
    uint64_t bw_t0_ns;
    bool stats_valid;
    uint64_t bw_bytes;
    struct xfer_waiter *waiters; /* ds4_xfer_connect callers */
    xfer_rkey_cache_t *rkeys;    /* outgoing: unpacked target rkeys */
    ds4_xfer_link_stats_t stats;
    struct xfer_conn *next;
} xfer_conn_t;

typedef enum xfer_resv_state {
    RESV_RESERVED,   /* target handed out, no sender yet */
    RESV_RECEIVING,  /* bound to a sender connection + incarnation */
    RESV_VERIFIED,   /* every group verified: may decode */
    RESV_QUARANTINE, /* failed; waiting for the sender to stop writing */
} xfer_resv_state_t;

typedef struct xfer_resv {
    uint64_t request_id;
    uint64_t n_tokens;
    ds4_kv_block_table_h *table;
    xfer_resv_state_t state;
    xfer_conn_t *conn;
    uint64_t sender_inc;
    uint64_t deadline_ns;        /* RESERVED/RECEIVING: verified by then; QUARANTINE: freed */
    uint32_t next_seq;
    uint32_t n_verified;
    uint8_t *group_done;
    uint64_t *rows_checked;      /* per group: rows [0, n) already folded into crc[] */
    uint32_t *crc;               /* per group: running CRC32C over the checked rows */
    struct xfer_resv *next;
} xfer_resv_t;

typedef enum xfer_op_type {
    OP_START,
    OP_ROWS,
    OP_END,
    OP_ABORT,
} xfer_op_type_t;

typedef struct xfer_op {
    struct xfer_op *next;
    xfer_op_type_t type;
    ds4_xfer_send_h *tx;         /* holds a reference */
    uint32_t group;
    uint64_t row_begin;
    uint64_t n_rows;
    const void *src;
} xfer_op_t;

typedef enum xfer_tx_state {
    TX_QUEUED,       /* START not yet processed on the loop */
    TX_WAIT_CONN,    /* waiting for the connection to be READY */
    TX_ACTIVE,       /* BEGIN sent; pushing */
    TX_DONE,         /* callback fired; draining in-flight flushes */
} xfer_tx_state_t;

typedef struct xfer_tmp {
    struct xfer_tmp *next;
    unsigned char data[];
} xfer_tmp_t;

struct ds4_xfer_send {
    atomic_int refs;
    ds4_xfer_h *x;
    uint64_t request_id;
    void *blob;                  /* copy of the target; `target` borrows it */
    ds4_xfer_target_t target;
    const ds4_kv_manifest_h *manifest; /* the caller-side calls never touch `x` once finished */
    uint32_t n_groups;
    /* caller side (any thread), under `lock` */
    pthread_mutex_t lock;
    uint64_t *rows_queued;       /* per group */
    uint8_t *end_queued;         /* per group */
    bool finished;               /* final status known */
    ds4_status_t final_status;
    /* loop side */
    xfer_tx_state_t state;
    xfer_conn_t *conn;
    ds4_xfer_tp_rkey_t *rkey;
    uint64_t deadline_ns;
    uint32_t deadline_ms;
    uint32_t *crc;               /* running CRC32C per group */
    uint64_t *rows_sent;         /* per group */
    uint64_t *unreported;        /* per group: bytes written since the last PROGRESS */
    uint32_t next_seq;
    uint32_t ops_inflight;       /* flushes we wait for */
    bool begun;                  /* BEGIN sent */
    bool lib_ref;                /* the library's reference is held */
    xfer_op_t *pending_head, *pending_tail; /* ops held until ACTIVE */
    xfer_tmp_t *tmps;            /* corrupted copies (test hook), freed at the end */
    bool corrupted;              /* the test hook fired for this transfer */
    bool awaiting_ack;           /* our ABORT is out: the callback waits for decode's ack
                                    (so decode has freed the blocks before we report) */
    ds4_status_t cb_status;
    uint64_t ack_deadline_ns;
    ds4_xfer_send_done_cb cb;
    void *cb_arg;
    char cb_msg[XFER_TEXT_MAX + 1]; /* message of the deferred callback */
    struct ds4_xfer_send *next;  /* x->sends */
};

struct ds4_xfer {
    uv_loop_t *loop;
    ds4_xfer_params_t p;
    const ds4_xfer_transport_ops_t *ops;
    ds4_xfer_tp_t *tp;
    uint64_t inc;
    char address[64];
    /* decode side */
    ds4_kv_pool_h *pool;
    ds4_xfer_tp_mem_t *region;
    void *region_base;
    size_t region_bytes;
    size_t scratch_off;          /* preflight scratch at the end of the region */
    void *rkey_buf;
    size_t rkey_len;
    xfer_resv_t *resvs;
    uint32_t n_resvs;
    void *manifest_buf;          /* our encoded manifest (HELLO) */
    size_t manifest_len;
    /* connections and transfers */
    xfer_conn_t *conns;
    ds4_xfer_send_h *sends;
    /* MPSC queue of sender ops */
    pthread_mutex_t q_lock;
    xfer_op_t *q_head, *q_tail;
    uv_async_t async;
    uv_timer_t tick;
    int handles_open;
    bool destroying;
    uint64_t next_serial;
};

/* xfer-core.c */
ds4_status_t ds4__xfer_send_msg(ds4_xfer_h *x, xfer_conn_t *c, uint16_t type, uint64_t req,
                                void *msg, size_t len);
ds4_status_t ds4__xfer_send_status(ds4_xfer_h *x, xfer_conn_t *c, uint16_t type, uint64_t req,
                                   ds4_status_t st, const char *text);
void ds4__xfer_conn_close(ds4_xfer_h *x, xfer_conn_t *c);
xfer_conn_t *ds4__xfer_conn_new(ds4_xfer_h *x);
/* xfer-recv.c */
void ds4__xfer_recv_msg(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                        size_t len);
void ds4__xfer_recv_conn_lost(ds4_xfer_h *x, xfer_conn_t *c);
void ds4__xfer_recv_tick(ds4_xfer_h *x, uint64_t now_ns);
void ds4__xfer_recv_destroy(ds4_xfer_h *x);
/* xfer-send.c */
void ds4__xfer_send_msg_in(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                           size_t len);
void ds4__xfer_send_conn_lost(ds4_xfer_h *x, xfer_conn_t *c, ds4_status_t st, const char *why);
void ds4__xfer_send_conn_ready(ds4_xfer_h *x, xfer_conn_t *c);
void ds4__xfer_send_run_op(ds4_xfer_h *x, xfer_op_t *op);
void ds4__xfer_send_tick(ds4_xfer_h *x, uint64_t now_ns);
void ds4__xfer_send_destroy(ds4_xfer_h *x);
void ds4__xfer_tx_unref(ds4_xfer_send_h *tx);

#endif /* DS4_XFER_INTERNAL_H */
