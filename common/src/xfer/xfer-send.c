/* Prefill (sender) half: connections with handshake + preflight, the thread-safe push API
 * (MPSC queue drained on the loop), puts into the decode blocks, flushes and records. */
#include "xfer-internal.h"

#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/crc32c.h"
#include "ds4/log.h"

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <stdio.h>
#include <string.h>

typedef enum flush_kind {
    FLUSH_GROUP_END, /* then send the group's RECORD */
    FLUSH_FINISH,    /* the transfer ended: then ABORT / ABORT_ACK / nothing, then the callback */
    FLUSH_PREFLIGHT, /* bandwidth probe finished */
    PUT_PREFLIGHT,   /* one bandwidth-probe put completed: post the next one */
    FLUSH_PROGRESS,  /* puts up to row_end landed: then send PROGRESS */
} flush_kind_t;

typedef enum peer_action {
    PEER_NONE,
    PEER_ABORT, /* tell decode we stopped (it frees the blocks) */
    PEER_ACK,   /* acknowledge decode's ABORT (it releases the quarantine) */
} peer_action_t;

typedef struct flush_ctx {
    ds4_xfer_h *x;
    flush_kind_t kind;
    ds4_xfer_send_h *tx;  /* GROUP_END / FINISH (tx->ops_inflight counts it) */
    uint32_t group;
    uint64_t row_end;     /* PROGRESS */
    peer_action_t action;
    ds4_status_t status;  /* FINISH: the transfer's final status */
    uint64_t conn_serial; /* PREFLIGHT: the conn is re-found by serial (it may be gone) */
} flush_ctx_t;

static xfer_conn_t *conn_by_serial(ds4_xfer_h *x, uint64_t serial)
{
    for (xfer_conn_t *it = x->conns; it != NULL; it = it->next) {
        if (it->serial == serial)
            return it->tc != NULL ? it : NULL;
    }
    return NULL;
}

static xfer_conn_t *conn_live(ds4_xfer_h *x, xfer_conn_t *c)
{
    for (xfer_conn_t *it = x->conns; it != NULL; it = it->next) {
        if (it == c)
            return c->tc != NULL ? c : NULL;
    }
    return NULL;
}

/* ------------------------------------------------------------------- tx lifetime */

void ds4__xfer_tx_unref(ds4_xfer_send_h *tx)
{
    if (atomic_fetch_sub(&tx->refs, 1) != 1)
        return;
    while (tx->tmps != NULL) {
        xfer_tmp_t *t = tx->tmps;
        tx->tmps = t->next;
        ds4_free(t);
    }
    pthread_mutex_destroy(&tx->lock);
    ds4_free(tx->rows_queued);
    ds4_free(tx->end_queued);
    ds4_free(tx->crc);
    ds4_free(tx->rows_sent);
    ds4_free(tx->unreported);
    ds4_free(tx->blob);
    ds4_free(tx);
}

/* Drops the library's reference once the callback fired and no flush is outstanding. */
static void tx_maybe_release(ds4_xfer_send_h *tx)
{
    ds4_xfer_h *x = tx->x;
    if (tx->state != TX_DONE || tx->ops_inflight > 0 || !tx->lib_ref)
        return;
    tx->rkey = NULL; /* owned by the connection's rkey cache */
    tx->conn = NULL;
    for (ds4_xfer_send_h **pp = &x->sends; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == tx) {
            *pp = tx->next;
            break;
        }
    }
    tx->lib_ref = false;
    ds4__xfer_tx_unref(tx);
}

static void tx_drop_pending(ds4_xfer_send_h *tx)
{
    while (tx->pending_head != NULL) {
        xfer_op_t *op = tx->pending_head;
        tx->pending_head = op->next;
        ds4__xfer_tx_unref(op->tx);
        ds4_free(op);
    }
    tx->pending_tail = NULL;
}

static void tx_fire(ds4_xfer_send_h *tx, ds4_status_t st, const char *msg)
{
    if (tx->cb != NULL) {
        ds4_xfer_send_done_cb cb = tx->cb;
        tx->cb = NULL;
        cb(tx->cb_arg, tx->request_id, st, msg);
    }
}

static void flush_done(void *arg, ds4_status_t st);

static ds4_status_t tx_flush(ds4_xfer_send_h *tx, flush_kind_t kind, uint32_t group,
                             peer_action_t action, ds4_status_t status)
{
    ds4_xfer_h *x = tx->x;
    flush_ctx_t *ctx = ds4_calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return DS4_ERR_NO_MEMORY;
    *ctx = (flush_ctx_t){.x = x, .kind = kind, .tx = tx, .group = group, .action = action,
                         .status = status};
    ds4_status_t s = x->ops->flush(x->tp, tx->conn->tc, flush_done, ctx);
    if (s != DS4_OK) {
        ds4_free(ctx);
        return s;
    }
    tx->ops_inflight++;
    return DS4_OK;
}

/*
 * Ends a transfer once. With a live connection the callback waits for a flush, so no put still
 * reads the caller's memory when it fires; `action` tells decode why we stopped.
 */
static void tx_finish(ds4_xfer_send_h *tx, ds4_status_t st, const char *msg,
                      peer_action_t action)
{
    ds4_xfer_h *x = tx->x;
    if (tx->state == TX_DONE)
        return;
    bool flushable = tx->state == TX_ACTIVE && !x->destroying && tx->conn != NULL &&
                     conn_live(x, tx->conn) != NULL;
    tx->state = TX_DONE;
    pthread_mutex_lock(&tx->lock);
    tx->finished = true;
    tx->final_status = st;
    pthread_mutex_unlock(&tx->lock);
    tx_drop_pending(tx);
    snprintf(tx->cb_msg, sizeof(tx->cb_msg), "%s", msg != NULL ? msg : "");
    if (st != DS4_OK)
        ds4_log_warn("kv send request %" PRIu64 " ended: %s: %s", tx->request_id,
                     ds4_status_str(st), tx->cb_msg);
    if (flushable && tx_flush(tx, FLUSH_FINISH, 0, action, st) == DS4_OK)
        return; /* continues in flush_done */
    tx_fire(tx, st, tx->cb_msg);
    tx_maybe_release(tx);
}

static void send_record(ds4_xfer_send_h *tx, uint32_t g)
{
    ds4_xfer_h *x = tx->x;
    /* rows written through rkey_ptr are plain stores: order them before the record */
    atomic_thread_fence(memory_order_seq_cst);
    xfer_record_t rec = {
        .seq = tx->next_seq++,
        .group = g,
        .n_rows = tx->rows_sent[g],
        .crc = tx->crc[g],
    };
    ds4_status_t st = ds4__xfer_send_msg(x, tx->conn, XFER_MSG_RECORD, tx->request_id, &rec,
                                         sizeof(rec));
    ds4_log_debug("kv send request %" PRIu64 " record seq %u group %u", tx->request_id, rec.seq,
                  g);
    if (st != DS4_OK)
        tx_finish(tx, st, "sending a completion record failed", PEER_NONE);
}

static void preflight_done(ds4_xfer_h *x, xfer_conn_t *c, ds4_status_t st);
static void preflight_put_done(ds4_xfer_h *x, xfer_conn_t *c, ds4_status_t st);

static void flush_done(void *arg, ds4_status_t st)
{
    flush_ctx_t *ctx = arg;
    ds4_xfer_h *x = ctx->x;
    ds4_xfer_send_h *tx = ctx->tx;
    if (ctx->kind == FLUSH_PREFLIGHT || ctx->kind == PUT_PREFLIGHT) {
        xfer_conn_t *c = conn_by_serial(x, ctx->conn_serial);
        flush_kind_t kind = ctx->kind;
        ds4_free(ctx);
        if (c == NULL || x->destroying || c->state != CONN_PREFLIGHT)
            return;
        if (kind == FLUSH_PREFLIGHT)
            preflight_done(x, c, st);
        else
            preflight_put_done(x, c, st);
        return;
    }
    DS4_ASSERT(tx->ops_inflight > 0);
    tx->ops_inflight--;
    if (x->destroying) {
        ds4_free(ctx);
        tx_maybe_release(tx);
        return;
    }
    if (ctx->kind == FLUSH_PROGRESS) {
        if (tx->state == TX_ACTIVE && st == DS4_OK) {
            xfer_progress_t pm = {.group = ctx->group, .row_end = ctx->row_end};
            ds4__xfer_send_msg(x, tx->conn, XFER_MSG_PROGRESS, tx->request_id, &pm, sizeof(pm));
        }
    } else if (ctx->kind == FLUSH_GROUP_END) {
        if (tx->state == TX_ACTIVE) {
            if (st != DS4_OK)
                tx_finish(tx, st, "flush before a completion record failed", PEER_NONE);
            else
                send_record(tx, ctx->group);
        }
    } else { /* FLUSH_FINISH */
        bool live = st == DS4_OK && tx->conn != NULL && conn_live(x, tx->conn) != NULL;
        if (live && ctx->action == PEER_ABORT &&
            ds4__xfer_send_status(x, tx->conn, XFER_MSG_ABORT, tx->request_id, ctx->status,
                                  tx->cb_msg) == DS4_OK) {
            /* keep the transfer (one pseudo op in flight) until decode acks the ABORT */
            tx->awaiting_ack = true;
            tx->cb_status = ctx->status;
            tx->ack_deadline_ns =
                ds4_clock_now_ns() + (uint64_t)x->p.quarantine_timeout_ms * 1000000u;
            tx->ops_inflight++;
            ds4_free(ctx);
            return;
        }
        if (live && ctx->action == PEER_ACK)
            ds4__xfer_send_status(x, tx->conn, XFER_MSG_ABORT_ACK, tx->request_id, DS4_OK, NULL);
        tx_fire(tx, ctx->status, tx->cb_msg);
    }
    ds4_free(ctx);
    tx_maybe_release(tx);
}

/* Decode acknowledged our ABORT (or can no longer): report and let the transfer go. */
static void tx_ack_done(ds4_xfer_send_h *tx)
{
    if (!tx->awaiting_ack)
        return;
    tx->awaiting_ack = false;
    DS4_ASSERT(tx->ops_inflight > 0);
    tx->ops_inflight--;
    tx_fire(tx, tx->cb_status, tx->cb_msg);
    tx_maybe_release(tx);
}

/* ------------------------------------------------------------------ connections */

static void conn_notify(xfer_conn_t *c, ds4_status_t st, const char *msg);
static xfer_conn_t *conn_get(ds4_xfer_h *x, const char *addr, ds4_status_t *st);

static void conn_fail_all(ds4_xfer_h *x, xfer_conn_t *c, ds4_status_t st, const char *why)
{
    for (ds4_xfer_send_h *tx = x->sends, *next; tx != NULL; tx = next) {
        next = tx->next;
        if (tx->conn == c && tx->state != TX_DONE) {
            tx->conn = NULL;
            tx_finish(tx, st, why, PEER_NONE);
        } else if (tx->conn == c) {
            tx->conn = NULL;
            tx_ack_done(tx); /* decode is gone: nothing more to wait for */
        }
    }
}

static void conn_notify(xfer_conn_t *c, ds4_status_t st, const char *msg)
{
    while (c->waiters != NULL) {
        xfer_waiter_t *w = c->waiters;
        c->waiters = w->next;
        w->cb(w->arg, c->addr, st, msg);
        ds4_free(w);
    }
}

void ds4__xfer_send_conn_lost(ds4_xfer_h *x, xfer_conn_t *c, ds4_status_t st, const char *why)
{
    char msg[XFER_TEXT_MAX + 80];
    snprintf(msg, sizeof(msg), "%s (%s)", why, c->addr);
    conn_fail_all(x, c, st, msg);
    conn_notify(c, st, msg);
}

ds4_status_t ds4_xfer_connect(ds4_xfer_h *x, const char *addr, ds4_xfer_connect_cb cb, void *arg)
{
    if (x == NULL || addr == NULL || cb == NULL)
        return DS4_ERR_INVALID_ARG;
    xfer_waiter_t *w = ds4_calloc(1, sizeof(*w));
    if (w == NULL)
        return DS4_ERR_NO_MEMORY;
    ds4_status_t st;
    xfer_conn_t *c = conn_get(x, addr, &st);
    if (c == NULL) {
        ds4_free(w);
        return st;
    }
    w->cb = cb;
    w->arg = arg;
    w->next = c->waiters;
    c->waiters = w;
    if (c->state == CONN_READY)
        conn_notify(c, DS4_OK, "connected");
    return DS4_OK;
}

/* Fails the connection's transfers and closes it; the conn itself is dropped later. */
static void conn_refuse(ds4_xfer_h *x, xfer_conn_t *c, ds4_status_t st, const char *why)
{
    ds4__xfer_conn_close(x, c);
    ds4__xfer_send_conn_lost(x, c, st, why);
}

static xfer_conn_t *conn_get(ds4_xfer_h *x, const char *addr, ds4_status_t *st)
{
    for (xfer_conn_t *c = x->conns; c != NULL; c = c->next) {
        if (c->outgoing && c->state != CONN_FAILED && strcmp(c->addr, addr) == 0)
            return c;
    }
    unsigned char *hello = ds4_malloc(sizeof(xfer_hello_t) + x->manifest_len);
    xfer_conn_t *c = hello != NULL ? ds4__xfer_conn_new(x) : NULL;
    if (c == NULL) {
        ds4_free(hello);
        *st = DS4_ERR_NO_MEMORY;
        return NULL;
    }
    c->outgoing = true;
    c->state = CONN_HELLO;
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    c->deadline_ns = ds4_clock_now_ns() + (uint64_t)x->p.connect_timeout_ms * 1000000u;
    *st = x->ops->connect(x->tp, addr, &c->tc);
    if (*st != DS4_OK) {
        c->state = CONN_FAILED; /* freed by the tick */
        ds4_free(hello);
        return NULL;
    }
    x->ops->conn_set_user(c->tc, c);
    xfer_hello_t h = {.manifest_len = (uint32_t)x->manifest_len};
    memcpy(hello, &h, sizeof(h));
    memcpy(hello + sizeof(h), x->manifest_buf, x->manifest_len);
    *st = ds4__xfer_send_msg(x, c, XFER_MSG_HELLO, 0, hello, sizeof(h) + x->manifest_len);
    ds4_free(hello);
    if (*st != DS4_OK) {
        ds4__xfer_conn_close(x, c);
        return NULL;
    }
    return c;
}

static void send_ping(ds4_xfer_h *x, xfer_conn_t *c)
{
    xfer_ping_t p = {.t_ns = ds4_clock_now_ns(), .seq = c->pings_done};
    if (ds4__xfer_send_msg(x, c, XFER_MSG_PING, 0, &p, sizeof(p)) != DS4_OK)
        conn_refuse(x, c, DS4_ERR_PEER_GONE, "preflight ping failed");
}

/*
 * Bandwidth probe: preflight_bytes of puts into the decode's scratch area, then a flush. The
 * puts are posted asynchronously, PREFLIGHT_WINDOW at a time, the next one from the previous
 * one's completion: posting them all at once ran every copy (shared memory) or socket write
 * (TCP) inside one loop callback, and the loop stalled for the whole probe. The source is a
 * static zero buffer (contents do not matter) that outlives any conn whose puts are still in
 * flight.
 */
#define PREFLIGHT_CHUNK (1u << 20)
#define PREFLIGHT_WINDOW 2u
static unsigned char preflight_zero[PREFLIGHT_CHUNK]; /* writable: RDMA registers it */

static void preflight_flush(ds4_xfer_h *x, xfer_conn_t *c)
{
    flush_ctx_t *ctx = ds4_calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        conn_refuse(x, c, DS4_ERR_NO_MEMORY, "preflight flush");
        return;
    }
    *ctx = (flush_ctx_t){.x = x, .kind = FLUSH_PREFLIGHT, .conn_serial = c->serial};
    ds4_status_t st = x->ops->flush(x->tp, c->tc, flush_done, ctx);
    if (st != DS4_OK) {
        ds4_free(ctx);
        conn_refuse(x, c, st, "preflight flush failed");
    }
}

/* Posts probe puts until the window is full or every byte is posted; false: refused. */
static bool preflight_post(ds4_xfer_h *x, xfer_conn_t *c)
{
    uint64_t total = x->p.preflight_bytes;
    while (c->bw_inflight < PREFLIGHT_WINDOW && c->bw_posted < total) {
        uint32_t n = (uint32_t)DS4_MIN((uint64_t)c->bw_chunk, total - c->bw_posted);
        flush_ctx_t *ctx = ds4_calloc(1, sizeof(*ctx));
        if (ctx == NULL) {
            conn_refuse(x, c, DS4_ERR_NO_MEMORY, "preflight put");
            return false;
        }
        *ctx = (flush_ctx_t){.x = x, .kind = PUT_PREFLIGHT, .conn_serial = c->serial};
        ds4_status_t st = x->ops->put(x->tp, c->tc, preflight_zero, n, c->scratch_addr,
                                      c->scratch_rkey, flush_done, ctx);
        if (st != DS4_OK) {
            ds4_free(ctx);
            conn_refuse(x, c, st, "preflight put failed");
            return false;
        }
        c->bw_inflight++;
        c->bw_posted += n;
        c->bw_bytes += n;
    }
    return true;
}

static void preflight_bandwidth(ds4_xfer_h *x, xfer_conn_t *c)
{
    uint64_t total = x->p.preflight_bytes;
    uint32_t chunk = (uint32_t)DS4_MIN((uint64_t)c->scratch_bytes, (uint64_t)PREFLIGHT_CHUNK);
    if (total == 0 || chunk == 0) {
        preflight_done(x, c, DS4_OK);
        return;
    }
    c->bw_chunk = chunk;
    c->bw_t0_ns = ds4_clock_now_ns();
    c->bw_bytes = 0;
    c->bw_posted = 0;
    c->bw_inflight = 0;
    preflight_post(x, c);
}

static void preflight_put_done(ds4_xfer_h *x, xfer_conn_t *c, ds4_status_t st)
{
    DS4_ASSERT(c->bw_inflight > 0);
    c->bw_inflight--;
    if (st != DS4_OK) {
        conn_refuse(x, c, st, "preflight put failed");
        return;
    }
    if (!preflight_post(x, c))
        return;
    if (c->bw_inflight == 0 && c->bw_posted >= x->p.preflight_bytes)
        preflight_flush(x, c);
}

static void preflight_done(ds4_xfer_h *x, xfer_conn_t *c, ds4_status_t st)
{
    if (st != DS4_OK) {
        conn_refuse(x, c, st, "preflight bandwidth probe failed");
        return;
    }
    uint64_t dt = ds4_clock_now_ns() - c->bw_t0_ns;
    c->stats.latency_us =
        c->pings_done > 0 ? (double)c->rtt_ns_sum / c->pings_done / 2.0 / 1000.0 : 0.0;
    c->stats.bandwidth_bps = c->bw_bytes > 0 && dt > 0 ? (double)c->bw_bytes * 1e9 / dt : 0.0;
    c->stats.measured_ns = ds4_clock_now_ns();
    c->stats_valid = true;
    c->state = CONN_READY;
    conn_notify(c, DS4_OK, "connected");
    ds4_log_info("kv send connected %s incarnation %016" PRIx64 " transports %s latency_us %.1f "
                 "bandwidth_gbps %.2f",
                 c->addr, c->peer_inc, c->stats.info.transports, c->stats.latency_us,
                 c->stats.bandwidth_bps / 1e9);
    ds4__xfer_send_conn_ready(x, c);
}

/* The connection's unpacked rkey for these packed bytes (unpacked once, then cached). */
static ds4_xfer_tp_rkey_t *rkey_get(ds4_xfer_h *x, xfer_conn_t *c, const void *buf, size_t len)
{
    for (xfer_rkey_cache_t *k = c->rkeys; k != NULL; k = k->next) {
        if (k->len == len && memcmp(k->buf, buf, len) == 0)
            return k->rkey;
    }
    xfer_rkey_cache_t *k = ds4_malloc(sizeof(*k) + len);
    if (k == NULL)
        return NULL;
    if (x->ops->rkey_unpack(x->tp, c->tc, buf, len, &k->rkey) != DS4_OK) {
        ds4_free(k);
        return NULL;
    }
    k->len = len;
    memcpy(k->buf, buf, len);
    k->next = c->rkeys;
    c->rkeys = k;
    return k->rkey;
}

typedef struct prefault_job {
    void *addr;
    size_t len;
} prefault_job_t;

/*
 * Populating page tables holds the process's address-space lock (read) for the whole range one
 * madvise call covers; any thread that maps or unmaps memory meanwhile (allocators, UCX, the
 * gRPC threads) waits for it, and every page fault queues behind that waiting writer - the
 * loop thread included. One call over a multi-GiB pool stalled the daemons' loops for seconds
 * at connect (missed heartbeats). So: slices of PREFAULT_SLICE bytes (about a millisecond
 * each), the lock released in between.
 */
#define PREFAULT_SLICE ((size_t)8 << 20)

static void *prefault_main(void *arg)
{
    prefault_job_t *j = arg;
    /* page tables only, no data change; failure (old kernel, unmapped meanwhile) is harmless */
    for (size_t off = 0; off < j->len; off += PREFAULT_SLICE) {
        if (madvise((char *)j->addr + off, DS4_MIN(PREFAULT_SLICE, j->len - off),
                    MADV_POPULATE_WRITE) != 0)
            break;
        sched_yield();
    }
    ds4_free(j);
    return NULL;
}

/*
 * When the decode region is mapped into this process (shared memory), populate its page
 * tables in the background once per connection: otherwise the first transfer takes a page
 * fault per 4 KiB page of the destination.
 */
static void prefault_region(ds4_xfer_h *x, ds4_xfer_tp_rkey_t *rkey, uint64_t addr, uint64_t len)
{
    void *local = NULL;
    if (len == 0 || x->ops->rkey_ptr == NULL ||
        x->ops->rkey_ptr(x->tp, rkey, addr, &local) != DS4_OK)
        return;
    uintptr_t begin = (uintptr_t)local & ~(uintptr_t)4095u;
    prefault_job_t *j = ds4_malloc(sizeof(*j));
    if (j == NULL)
        return;
    j->addr = (void *)begin;
    j->len = (size_t)(len + ((uintptr_t)local - begin));
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &attr, prefault_main, j) != 0)
        ds4_free(j);
    pthread_attr_destroy(&attr);
}

static void on_welcome(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                       size_t len)
{
    xfer_welcome_t w;
    char text[XFER_TEXT_MAX + 1] = "";
    if (c->state != CONN_HELLO || len < sizeof(w)) {
        conn_refuse(x, c, DS4_ERR_PROTOCOL, "unexpected or short WELCOME");
        return;
    }
    memcpy(&w, msg, sizeof(w));
    if ((uint64_t)sizeof(w) + w.rkey_len + w.text_len != len || w.text_len > XFER_TEXT_MAX) {
        conn_refuse(x, c, DS4_ERR_PROTOCOL, "WELCOME sizes do not add up");
        return;
    }
    memcpy(text, (const unsigned char *)msg + sizeof(w) + w.rkey_len, w.text_len);
    text[w.text_len] = '\0';
    if (w.status != DS4_OK) {
        char why[XFER_TEXT_MAX + 64];
        snprintf(why, sizeof(why), "decode refused the handshake: %s", text);
        conn_refuse(x, c, w.status < 0 ? (ds4_status_t)w.status : DS4_ERR_PROTOCOL, why);
        return;
    }
    c->peer_inc = h->sender_inc;
    if (x->ops->conn_info(x->tp, c->tc, &c->stats.info) != DS4_OK)
        snprintf(c->stats.info.transports, sizeof(c->stats.info.transports), "unknown");
    if (x->p.refuse_tcp_only && c->stats.info.tcp_only) {
        char why[160];
        snprintf(why, sizeof(why), "refusing PD transfers over a TCP-only link (transports %s)",
                 c->stats.info.transports);
        conn_refuse(x, c, DS4_ERR_UNSUPPORTED, why);
        return;
    }
    c->scratch_rkey = w.rkey_len > 0 && w.scratch_bytes > 0
                          ? rkey_get(x, c, (const unsigned char *)msg + sizeof(w), w.rkey_len)
                          : NULL;
    if (c->scratch_rkey == NULL) {
        conn_refuse(x, c, DS4_ERR_PROTOCOL, "WELCOME carries no usable region rkey");
        return;
    }
    prefault_region(x, c->scratch_rkey, w.region_addr, w.region_bytes);
    c->scratch_addr = w.scratch_addr;
    c->scratch_bytes = w.scratch_bytes;
    c->state = CONN_PREFLIGHT;
    if (x->p.preflight_pings > 0)
        send_ping(x, c);
    else
        preflight_bandwidth(x, c);
}

static ds4_xfer_send_h *tx_find(ds4_xfer_h *x, xfer_conn_t *c, uint64_t request_id)
{
    for (ds4_xfer_send_h *tx = x->sends; tx != NULL; tx = tx->next) {
        if (tx->conn == c && tx->request_id == request_id && tx->state != TX_DONE)
            return tx;
    }
    return NULL;
}

static void read_status_msg(const void *msg, size_t len, ds4_status_t *st, char *text,
                            size_t text_cap)
{
    xfer_status_msg_t m;
    *st = DS4_ERR_PROTOCOL;
    text[0] = '\0';
    if (len < sizeof(m))
        return;
    memcpy(&m, msg, sizeof(m));
    size_t tl = DS4_MIN((size_t)m.text_len, len - sizeof(m));
    tl = DS4_MIN(tl, text_cap - 1);
    memcpy(text, (const unsigned char *)msg + sizeof(m), tl);
    text[tl] = '\0';
    *st = m.status <= 0 ? (ds4_status_t)m.status : DS4_ERR_PROTOCOL;
}

void ds4__xfer_send_msg_in(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                           size_t len)
{
    char text[XFER_TEXT_MAX + 1];
    ds4_status_t st;
    switch (h->type) {
    case XFER_MSG_WELCOME:
        on_welcome(x, c, h, msg, len);
        return;
    case XFER_MSG_PONG: {
        xfer_ping_t p;
        if (c->state != CONN_PREFLIGHT || len != sizeof(p))
            return;
        memcpy(&p, msg, sizeof(p));
        c->rtt_ns_sum += ds4_clock_now_ns() - p.t_ns;
        if (++c->pings_done < x->p.preflight_pings)
            send_ping(x, c);
        else
            preflight_bandwidth(x, c);
        return;
    }
    case XFER_MSG_RESULT: {
        ds4_xfer_send_h *tx = tx_find(x, c, h->request_id);
        if (tx == NULL)
            return;
        read_status_msg(msg, len, &st, text, sizeof(text));
        if (st == DS4_OK)
            tx_finish(tx, DS4_OK, "verified at decode", PEER_NONE);
        else
            tx_finish(tx, st, text, PEER_ACK);
        return;
    }
    case XFER_MSG_ABORT_ACK:
        for (ds4_xfer_send_h *tx = x->sends; tx != NULL; tx = tx->next) {
            if (tx->conn == c && tx->request_id == h->request_id && tx->awaiting_ack) {
                tx_ack_done(tx);
                break;
            }
        }
        return;
    case XFER_MSG_ABORT: {
        ds4_xfer_send_h *tx = tx_find(x, c, h->request_id);
        if (tx == NULL)
            return;
        read_status_msg(msg, len, &st, text, sizeof(text));
        char why[XFER_TEXT_MAX + 32];
        snprintf(why, sizeof(why), "decode: %s", text);
        tx_finish(tx, st == DS4_OK ? DS4_ERR_PROTOCOL : st, why, PEER_ACK);
        return;
    }
    default:
        ds4_log_warn("kv send: unexpected message type %u from %s dropped", h->type, c->addr);
        return;
    }
}

/* --------------------------------------------------------------------- pushing */

/*
 * Tell decode which rows have landed so it checksums them while they are still in cache (a
 * hint; the RECORD is what is verified). Rows written through a mapped pointer are visible once
 * fenced (every 1 MiB); puts are visible once flushed (every 4 MiB, the flush is asynchronous).
 */
#define PROGRESS_BYTES_MAPPED (1u << 20)
#define PROGRESS_BYTES_PUT (4u << 20)

static void send_progress(ds4_xfer_send_h *tx, uint32_t g, bool mapped)
{
    tx->unreported[g] = 0;
    if (mapped) {
        atomic_thread_fence(memory_order_seq_cst);
        xfer_progress_t pm = {.group = g, .row_end = tx->rows_sent[g]};
        ds4__xfer_send_msg(tx->x, tx->conn, XFER_MSG_PROGRESS, tx->request_id, &pm, sizeof(pm));
        return;
    }
    flush_ctx_t *ctx = ds4_calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return;
    *ctx = (flush_ctx_t){.x = tx->x, .kind = FLUSH_PROGRESS, .tx = tx, .group = g,
                         .row_end = tx->rows_sent[g]};
    if (tx->x->ops->flush(tx->x->tp, tx->conn->tc, flush_done, ctx) != DS4_OK) {
        ds4_free(ctx);
        return;
    }
    tx->ops_inflight++;
}

static void run_rows(ds4_xfer_h *x, ds4_xfer_send_h *tx, const xfer_op_t *op)
{
    const ds4_kv_group_t *g = ds4_kv_manifest_group(x->p.manifest, op->group);
    const unsigned char *src = op->src;
    uint64_t row = op->row_begin, left = op->n_rows;
    bool last_mapped = false;
    while (left > 0) {
        uint64_t off = 0, contig = 0;
        ds4_status_t st = ds4_kv_view_row_offset(&tx->target.table, x->p.manifest, op->group,
                                                 row, &off, &contig);
        if (st != DS4_OK) {
            tx_finish(tx, st, "row outside the target's block table", PEER_ABORT);
            return;
        }
        uint64_t n = DS4_MIN(contig, left);
        size_t bytes = (size_t)(n * g->row_bytes);
        uint64_t raddr = tx->target.hdr.region_addr + off;
        uint64_t gbyte = row * g->row_bytes; /* byte offset within the group */
        bool corrupt_here = x->p.test_corrupt && !tx->corrupted &&
                            x->p.test_corrupt_request_id == tx->request_id &&
                            x->p.test_corrupt_group == op->group &&
                            x->p.test_corrupt_offset >= gbyte &&
                            x->p.test_corrupt_offset < gbyte + bytes;
        void *dst = NULL;
        last_mapped = false;
        if (x->ops->rkey_ptr != NULL && x->ops->rkey_ptr(x->tp, tx->rkey, raddr, &dst) == DS4_OK) {
            /* mapped peer memory: copy and checksum in one pass (fenced inside) */
            tx->crc[op->group] = ds4_crc32c_copy(tx->crc[op->group], dst, src, bytes);
            last_mapped = true;
            if (corrupt_here) /* the test hook: the byte lands damaged, the CRC is of the source */
                ((unsigned char *)dst)[x->p.test_corrupt_offset - gbyte] ^= 0x5a;
        } else {
            tx->crc[op->group] = ds4_crc32c(tx->crc[op->group], src, bytes);
            const void *from = src;
            if (corrupt_here) {
                xfer_tmp_t *t = ds4_malloc(sizeof(*t) + bytes);
                if (t == NULL) {
                    tx_finish(tx, DS4_ERR_NO_MEMORY, "test hook copy", PEER_ABORT);
                    return;
                }
                memcpy(t->data, src, bytes);
                t->data[x->p.test_corrupt_offset - gbyte] ^= 0x5a;
                t->next = tx->tmps;
                tx->tmps = t;
                from = t->data;
            }
            st = x->ops->put(x->tp, tx->conn->tc, from, bytes, raddr, tx->rkey, NULL, NULL);
            if (st != DS4_OK) {
                tx_finish(tx, st, "put into decode blocks failed", PEER_ABORT);
                return;
            }
        }
        if (corrupt_here) {
            tx->corrupted = true;
            ds4_log_info("kv send test hook: corrupting request %" PRIu64 " group %u byte %" PRIu64,
                         tx->request_id, op->group, x->p.test_corrupt_offset);
        }
        src += bytes;
        row += n;
        left -= n;
        tx->rows_sent[op->group] += n;
        tx->unreported[op->group] += bytes;
        if (tx->unreported[op->group] >=
            (dst != NULL ? PROGRESS_BYTES_MAPPED : PROGRESS_BYTES_PUT))
            send_progress(tx, op->group, dst != NULL);
    }
    if (tx->unreported[op->group] > 0 && last_mapped)
        send_progress(tx, op->group, true);
}

static void run_active_op(ds4_xfer_h *x, ds4_xfer_send_h *tx, const xfer_op_t *op)
{
    switch (op->type) {
    case OP_ROWS:
        run_rows(x, tx, op);
        break;
    case OP_END:
        if (tx_flush(tx, FLUSH_GROUP_END, op->group, PEER_NONE, DS4_OK) != DS4_OK)
            tx_finish(tx, DS4_ERR_PEER_GONE, "flush failed", PEER_NONE);
        break;
    case OP_ABORT:
        tx_finish(tx, DS4_ERR_CANCELLED, "aborted by prefill", PEER_ABORT);
        break;
    case OP_START:
        break;
    }
}

static void tx_activate(ds4_xfer_h *x, ds4_xfer_send_h *tx)
{
    xfer_conn_t *c = tx->conn;
    char why[200];
    if (tx->target.hdr.decode_incarnation != c->peer_inc) {
        snprintf(why, sizeof(why),
                 "decode at %s restarted: target names incarnation %016" PRIx64
                 ", decode now runs %016" PRIx64,
                 c->addr, tx->target.hdr.decode_incarnation, c->peer_inc);
        tx_finish(tx, DS4_ERR_STALE, why, PEER_NONE);
        return;
    }
    tx->rkey = rkey_get(x, c, tx->target.rkey, tx->target.hdr.rkey_len);
    if (tx->rkey == NULL) {
        tx_finish(tx, DS4_ERR_TRANSPORT, "the target's rkey cannot be unpacked", PEER_NONE);
        return;
    }
    ds4_status_t st;
    xfer_begin_t b = {
        .n_tokens = tx->target.hdr.n_tokens,
        .manifest_digest = tx->target.hdr.manifest_digest,
    };
    st = ds4__xfer_send_msg(x, c, XFER_MSG_BEGIN, tx->request_id, &b, sizeof(b));
    if (st != DS4_OK) {
        tx_finish(tx, st, "sending BEGIN failed", PEER_NONE);
        return;
    }
    tx->begun = true;
    tx->state = TX_ACTIVE;
    while (tx->pending_head != NULL && tx->state == TX_ACTIVE) {
        xfer_op_t *op = tx->pending_head;
        tx->pending_head = op->next;
        if (tx->pending_head == NULL)
            tx->pending_tail = NULL;
        run_active_op(x, tx, op);
        ds4__xfer_tx_unref(op->tx);
        ds4_free(op);
    }
}

void ds4__xfer_send_conn_ready(ds4_xfer_h *x, xfer_conn_t *c)
{
    for (ds4_xfer_send_h *tx = x->sends, *next; tx != NULL; tx = next) {
        next = tx->next;
        if (tx->conn == c && tx->state == TX_WAIT_CONN)
            tx_activate(x, tx);
    }
}

void ds4__xfer_send_run_op(ds4_xfer_h *x, xfer_op_t *op)
{
    ds4_xfer_send_h *tx = op->tx;
    bool keep = false;
    if (x->destroying) {
        if (op->type == OP_START)
            tx_finish(tx, DS4_ERR_SHUTDOWN, "prefill shutting down", PEER_NONE);
    } else if (op->type == OP_START) {
        tx->next = x->sends;
        x->sends = tx;
        tx->deadline_ns = ds4_clock_now_ns() + (uint64_t)tx->deadline_ms * 1000000u;
        ds4_status_t st;
        xfer_conn_t *c = conn_get(x, tx->target.addr, &st);
        if (c == NULL) {
            tx_finish(tx, st, "cannot connect to decode", PEER_NONE);
        } else {
            tx->conn = c;
            tx->state = TX_WAIT_CONN;
            if (c->state == CONN_READY)
                tx_activate(x, tx);
        }
    } else if (tx->state == TX_WAIT_CONN) {
        if (tx->pending_tail != NULL)
            tx->pending_tail->next = op;
        else
            tx->pending_head = op;
        tx->pending_tail = op;
        keep = true;
    } else if (tx->state == TX_ACTIVE) {
        run_active_op(x, tx, op);
    }
    if (!keep) {
        ds4__xfer_tx_unref(tx);
        ds4_free(op);
    }
}

void ds4__xfer_send_tick(ds4_xfer_h *x, uint64_t now_ns)
{
    for (ds4_xfer_send_h *tx = x->sends, *next; tx != NULL; tx = next) {
        next = tx->next;
        if (tx->awaiting_ack && now_ns > tx->ack_deadline_ns) {
            tx_ack_done(tx); /* decode's quarantine timeout frees the blocks on its side */
            continue;
        }
        if (tx->state != TX_DONE && now_ns > tx->deadline_ns)
            tx_finish(tx, DS4_ERR_TIMEOUT, "kv transfer not verified before its deadline",
                      PEER_ABORT);
    }
    /* outgoing connections whose transfers are all gone and that failed: drop them */
}

void ds4__xfer_send_destroy(ds4_xfer_h *x)
{
    for (ds4_xfer_send_h *tx = x->sends, *next; tx != NULL; tx = next) {
        next = tx->next;
        if (tx->awaiting_ack)
            tx_ack_done(tx);
        else
            tx_finish(tx, DS4_ERR_SHUTDOWN, "prefill shutting down", PEER_NONE);
    }
}

/* Called after the transport is gone: whatever still waits for a flush is released. */
void ds4__xfer_send_destroy_final(ds4_xfer_h *x);
void ds4__xfer_send_destroy_final(ds4_xfer_h *x)
{
    while (x->sends != NULL) {
        ds4_xfer_send_h *tx = x->sends;
        tx->ops_inflight = 0;
        tx->rkey = NULL;
        tx_maybe_release(tx);
        if (x->sends == tx) { /* not releasable: unlink anyway */
            x->sends = tx->next;
            tx->lib_ref = false;
            ds4__xfer_tx_unref(tx);
        }
    }
}

/* ------------------------------------------------------------------- public API */

static ds4_status_t enqueue(ds4_xfer_send_h *tx, xfer_op_type_t type, uint32_t group,
                            uint64_t row_begin, uint64_t n_rows, const void *src)
{
    ds4_xfer_h *x = tx->x;
    xfer_op_t *op = ds4_calloc(1, sizeof(*op));
    if (op == NULL)
        return DS4_ERR_NO_MEMORY;
    *op = (xfer_op_t){.type = type, .tx = tx, .group = group, .row_begin = row_begin,
                      .n_rows = n_rows, .src = src};
    atomic_fetch_add(&tx->refs, 1);
    pthread_mutex_lock(&x->q_lock);
    if (x->q_tail != NULL)
        x->q_tail->next = op;
    else
        x->q_head = op;
    x->q_tail = op;
    pthread_mutex_unlock(&x->q_lock);
    uv_async_send(&x->async);
    return DS4_OK;
}

ds4_status_t ds4_xfer_send_start(ds4_xfer_h *x, const void *target, size_t target_len,
                                 uint32_t deadline_ms, ds4_xfer_send_done_cb cb, void *arg,
                                 ds4_xfer_send_h **out)
{
    if (x == NULL || target == NULL || out == NULL || deadline_ms == 0)
        return DS4_ERR_INVALID_ARG;
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    ds4_xfer_send_h *tx = ds4_calloc(1, sizeof(*tx));
    if (tx == NULL)
        return DS4_ERR_NO_MEMORY;
    uint32_t n = ds4_kv_manifest_n_groups(x->p.manifest);
    tx->blob = ds4_malloc(target_len);
    tx->rows_queued = ds4_calloc(n, sizeof(uint64_t));
    tx->end_queued = ds4_calloc(n, 1);
    tx->crc = ds4_calloc(n, sizeof(uint32_t));
    tx->rows_sent = ds4_calloc(n, sizeof(uint64_t));
    tx->unreported = ds4_calloc(n, sizeof(uint64_t));
    if (tx->blob == NULL || tx->rows_queued == NULL || tx->end_queued == NULL ||
        tx->crc == NULL || tx->rows_sent == NULL || tx->unreported == NULL)
        goto fail;
    memcpy(tx->blob, target, target_len);
    char why[256] = "";
    st = ds4_xfer_target_decode(tx->blob, target_len, x->p.manifest, &tx->target, why,
                                sizeof(why));
    if (st != DS4_OK) {
        ds4_log_warn("kv send: refusing target: %s", why);
        goto fail;
    }
    atomic_init(&tx->refs, 2); /* the caller's and the library's */
    pthread_mutex_init(&tx->lock, NULL);
    tx->x = x;
    tx->request_id = tx->target.hdr.request_id;
    tx->manifest = x->p.manifest;
    tx->n_groups = n;
    tx->state = TX_QUEUED;
    tx->deadline_ms = deadline_ms;
    tx->lib_ref = true;
    tx->cb = cb;
    tx->cb_arg = arg;
    st = enqueue(tx, OP_START, 0, 0, 0, NULL);
    if (st != DS4_OK) {
        pthread_mutex_destroy(&tx->lock);
        goto fail;
    }
    *out = tx;
    return DS4_OK;

fail:
    ds4_free(tx->blob);
    ds4_free(tx->rows_queued);
    ds4_free(tx->end_queued);
    ds4_free(tx->crc);
    ds4_free(tx->rows_sent);
    ds4_free(tx->unreported);
    ds4_free(tx);
    return st;
}

ds4_status_t ds4_xfer_send_rows(ds4_xfer_send_h *tx, uint32_t group, uint64_t row_begin,
                                uint64_t n_rows, const void *src)
{
    if (tx == NULL || src == NULL || n_rows == 0)
        return DS4_ERR_INVALID_ARG;
    if (group >= tx->n_groups)
        return DS4_ERR_OUT_OF_RANGE;
    const ds4_kv_group_t *g = ds4_kv_manifest_group(tx->manifest, group);
    uint64_t rows = ds4_kv_group_rows(g, tx->target.hdr.n_tokens);
    pthread_mutex_lock(&tx->lock);
    ds4_status_t st = DS4_OK;
    if (tx->finished)
        st = tx->final_status == DS4_OK ? DS4_ERR_INVALID_ARG : tx->final_status;
    else if (tx->end_queued[group] || row_begin != tx->rows_queued[group])
        st = DS4_ERR_INVALID_ARG; /* rows go in order, once, before the group's end */
    else if (row_begin + n_rows > rows || row_begin + n_rows < row_begin)
        st = DS4_ERR_OUT_OF_RANGE;
    if (st == DS4_OK)
        tx->rows_queued[group] += n_rows;
    pthread_mutex_unlock(&tx->lock);
    if (st != DS4_OK)
        return st;
    return enqueue(tx, OP_ROWS, group, row_begin, n_rows, src);
}

ds4_status_t ds4_xfer_send_group_end(ds4_xfer_send_h *tx, uint32_t group)
{
    if (tx == NULL)
        return DS4_ERR_INVALID_ARG;
    if (group >= tx->n_groups)
        return DS4_ERR_OUT_OF_RANGE;
    const ds4_kv_group_t *g = ds4_kv_manifest_group(tx->manifest, group);
    uint64_t rows = ds4_kv_group_rows(g, tx->target.hdr.n_tokens);
    pthread_mutex_lock(&tx->lock);
    ds4_status_t st = DS4_OK;
    if (tx->finished)
        st = tx->final_status == DS4_OK ? DS4_ERR_INVALID_ARG : tx->final_status;
    else if (tx->end_queued[group] || tx->rows_queued[group] != rows)
        st = DS4_ERR_INVALID_ARG;
    if (st == DS4_OK)
        tx->end_queued[group] = 1;
    pthread_mutex_unlock(&tx->lock);
    if (st != DS4_OK)
        return st;
    return enqueue(tx, OP_END, group, 0, 0, NULL);
}

void ds4_xfer_send_abort(ds4_xfer_send_h *tx)
{
    if (tx == NULL)
        return;
    pthread_mutex_lock(&tx->lock);
    bool finished = tx->finished;
    pthread_mutex_unlock(&tx->lock);
    if (!finished)
        enqueue(tx, OP_ABORT, 0, 0, 0, NULL);
}

void ds4_xfer_send_release(ds4_xfer_send_h *tx)
{
    if (tx != NULL)
        ds4__xfer_tx_unref(tx);
}

uint64_t ds4_xfer_send_request_id(const ds4_xfer_send_h *tx)
{
    return tx->request_id;
}
