/* ds4_xfer_h: creation, the loop plumbing (transport events, MPSC queue, deadline tick) and
 * message framing shared by the receiver (xfer-recv.c) and sender (xfer-send.c) halves. */
#include "xfer-internal.h"

#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#define XFER_TICK_MS 5u

ds4_xfer_params_t ds4_xfer_params_default(void)
{
    return (ds4_xfer_params_t){
        .connect_timeout_ms = 5000,
        .quarantine_timeout_ms = 2000,
        .preflight_pings = 16,
        .preflight_bytes = 8u << 20,
    };
}

static uint64_t xfer_random_incarnation(void)
{
    uint64_t v = 0;
    while (v == 0) {
        if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
            v = ds4_clock_now_ns() ^ ((uint64_t)getpid() << 32);
    }
    return v;
}

ds4_status_t ds4__xfer_send_msg(ds4_xfer_h *x, xfer_conn_t *c, uint16_t type, uint64_t req,
                                void *msg, size_t len)
{
    xfer_hdr_t *h = msg;
    h->magic = XFER_MAGIC;
    h->version = XFER_WIRE_VERSION;
    h->type = type;
    h->sender_inc = x->inc;
    h->receiver_inc = c->peer_inc;
    h->request_id = req;
    if (c->tc == NULL)
        return DS4_ERR_PEER_GONE;
    return x->ops->send(x->tp, c->tc, msg, len);
}

ds4_status_t ds4__xfer_send_status(ds4_xfer_h *x, xfer_conn_t *c, uint16_t type, uint64_t req,
                                   ds4_status_t st, const char *text)
{
    unsigned char buf[sizeof(xfer_status_msg_t) + XFER_TEXT_MAX];
    size_t tl = text != NULL ? strnlen(text, XFER_TEXT_MAX) : 0;
    xfer_status_msg_t m = {.status = st, .text_len = (uint32_t)tl};
    memcpy(buf, &m, sizeof(m));
    if (tl > 0)
        memcpy(buf + sizeof(m), text, tl);
    return ds4__xfer_send_msg(x, c, type, req, buf, sizeof(m) + tl);
}

void ds4__xfer_conn_close(ds4_xfer_h *x, xfer_conn_t *c)
{
    if (c->tc != NULL) {
        x->ops->close(x->tp, c->tc);
        c->tc = NULL;
    }
    c->state = CONN_FAILED;
}

xfer_conn_t *ds4__xfer_conn_new(ds4_xfer_h *x)
{
    xfer_conn_t *c = ds4_calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->x = x;
    c->serial = ++x->next_serial;
    c->next = x->conns;
    x->conns = c;
    return c;
}

static void conn_free(ds4_xfer_h *x, xfer_conn_t *c)
{
    /* A conn may be freed while a preflight flush still names it: flush_done looks it up. */
    for (xfer_conn_t **pp = &x->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    ds4__xfer_conn_close(x, c);
    /* scratch_rkey lives in the rkey cache */
    while (c->rkeys != NULL) {
        xfer_rkey_cache_t *k = c->rkeys;
        c->rkeys = k->next;
        if (!x->destroying)
            x->ops->rkey_destroy(x->tp, k->rkey);
        ds4_free(k);
    }
    while (c->waiters != NULL) { /* only at destroy: connect callbacks not yet fired */
        xfer_waiter_t *w = c->waiters;
        c->waiters = w->next;
        w->cb(w->arg, c->addr, DS4_ERR_SHUTDOWN, "shutting down");
        ds4_free(w);
    }
    ds4_free(c);
}

/* ------------------------------------------------------------------ transport upcalls */

static void on_accept(void *arg, ds4_xfer_tp_conn_t *tc)
{
    ds4_xfer_h *x = arg;
    xfer_conn_t *c = ds4__xfer_conn_new(x);
    if (c == NULL) {
        x->ops->close(x->tp, tc);
        return;
    }
    c->tc = tc;
    c->state = CONN_AWAIT_HELLO;
    x->ops->conn_set_user(tc, c);
}

static void on_conn_error(void *arg, ds4_xfer_tp_conn_t *tc, ds4_status_t st)
{
    ds4_xfer_h *x = arg;
    xfer_conn_t *c = x->ops->conn_user(tc);
    if (c == NULL) {
        x->ops->close(x->tp, tc);
        return;
    }
    ds4_log_info("kv xfer connection lost peer %s incarnation %016" PRIx64 ": %s",
                 c->outgoing ? c->addr : "(incoming)", c->peer_inc, ds4_status_str(st));
    ds4__xfer_conn_close(x, c);
    if (c->outgoing)
        ds4__xfer_send_conn_lost(x, c, DS4_ERR_PEER_GONE, "connection to decode lost");
    else
        ds4__xfer_recv_conn_lost(x, c);
    conn_free(x, c);
}

static void on_recv(void *arg, ds4_xfer_tp_conn_t *tc, const void *msg, size_t len)
{
    ds4_xfer_h *x = arg;
    xfer_conn_t *c = x->ops->conn_user(tc);
    if (c == NULL)
        return;
    xfer_hdr_t h;
    if (len < sizeof(h)) {
        ds4_log_warn("kv xfer: %zu-byte message is shorter than a header; closing", len);
        goto protocol_error;
    }
    memcpy(&h, msg, sizeof(h));
    if (h.magic != XFER_MAGIC) {
        ds4_log_warn("kv xfer: message with bad magic %08x; closing", h.magic);
        goto protocol_error;
    }
    if (h.version != XFER_WIRE_VERSION) {
        ds4_log_warn("kv xfer: peer speaks wire version %u, we speak %u; closing", h.version,
                     XFER_WIRE_VERSION);
        goto protocol_error;
    }
    /* Fencing: after the handshake every message names both incarnations. */
    if (h.type != XFER_MSG_HELLO) {
        if (h.receiver_inc != x->inc) {
            ds4_log_warn("kv xfer: dropped message type %u for incarnation %016" PRIx64
                         " (we are %016" PRIx64 ")",
                         h.type, h.receiver_inc, x->inc);
            if (!c->outgoing && h.type != XFER_MSG_ABORT && h.type != XFER_MSG_ABORT_ACK)
                ds4__xfer_send_status(x, c, XFER_MSG_ABORT, h.request_id, DS4_ERR_STALE,
                                      "decode restarted: message names an old incarnation");
            return;
        }
        if (h.type != XFER_MSG_WELCOME && c->peer_inc != 0 && h.sender_inc != c->peer_inc) {
            ds4_log_warn("kv xfer: dropped message from incarnation %016" PRIx64
                         " on a connection of %016" PRIx64,
                         h.sender_inc, c->peer_inc);
            return;
        }
    }
    if (c->outgoing)
        ds4__xfer_send_msg_in(x, c, &h, msg, len);
    else
        ds4__xfer_recv_msg(x, c, &h, msg, len);
    return;

protocol_error:
    ds4__xfer_conn_close(x, c);
    if (c->outgoing)
        ds4__xfer_send_conn_lost(x, c, DS4_ERR_PROTOCOL, "decode broke the protocol");
    else
        ds4__xfer_recv_conn_lost(x, c);
    conn_free(x, c);
}

/* --------------------------------------------------------------------- loop handles */

static void on_async(uv_async_t *h)
{
    ds4_xfer_h *x = h->data;
    pthread_mutex_lock(&x->q_lock);
    xfer_op_t *op = x->q_head;
    x->q_head = x->q_tail = NULL;
    pthread_mutex_unlock(&x->q_lock);
    while (op != NULL) {
        xfer_op_t *next = op->next;
        op->next = NULL;
        ds4__xfer_send_run_op(x, op);
        op = next;
    }
}

static void on_tick(uv_timer_t *h)
{
    ds4_xfer_h *x = h->data;
    uint64_t now = ds4_clock_now_ns();
    ds4__xfer_recv_tick(x, now);
    ds4__xfer_send_tick(x, now);
    for (xfer_conn_t *c = x->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->outgoing && c->state == CONN_FAILED) {
            conn_free(x, c); /* refused or lost; its transfers and waiters were told */
            continue;
        }
        if (c->outgoing && c->state != CONN_READY && c->state != CONN_FAILED &&
            now > c->deadline_ns) {
            ds4_log_warn("kv xfer: connecting to %s timed out", c->addr);
            ds4__xfer_conn_close(x, c);
            ds4__xfer_send_conn_lost(x, c, DS4_ERR_TIMEOUT,
                                     "connect/handshake/preflight deadline passed");
            conn_free(x, c);
        }
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    ds4_xfer_h *x = h->data;
    if (--x->handles_open == 0)
        ds4_free(x);
}

/* ------------------------------------------------------------------ create / destroy */

ds4_status_t ds4_xfer_create(uv_loop_t *loop, const ds4_xfer_params_t *params, ds4_xfer_h **out)
{
    ds4_status_t st;
    if (loop == NULL || params == NULL || params->manifest == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_xfer_h *x = ds4_calloc(1, sizeof(*x));
    if (x == NULL)
        return DS4_ERR_NO_MEMORY;
    x->loop = loop;
    x->p = *params;
    x->ops = params->ops != NULL ? params->ops : ds4_xfer_ucx_ops();
    x->inc = params->incarnation != 0 ? params->incarnation : xfer_random_incarnation();
    if (x->p.connect_timeout_ms == 0)
        x->p.connect_timeout_ms = 5000;
    if (x->p.quarantine_timeout_ms == 0)
        x->p.quarantine_timeout_ms = 2000;
    st = ds4_kv_manifest_encode(params->manifest, &x->manifest_buf, &x->manifest_len);
    if (st != DS4_OK)
        goto fail_x;
    ds4_xfer_tp_events_t ev = {
        .arg = x,
        .accept_cb = on_accept,
        .recv_cb = on_recv,
        .conn_error_cb = on_conn_error,
    };
    st = x->ops->create(loop, params->listen_addr, &ev, &x->tp);
    if (st != DS4_OK)
        goto fail_manifest;
    if (params->listen_addr != NULL) {
        st = x->ops->local_address(x->tp, x->address, sizeof(x->address));
        if (st != DS4_OK)
            goto fail_tp;
        /* One registered region: the pool's blocks, then the preflight scratch. */
        size_t pool_bytes = 0;
        ds4_kv_pool_params_t pp;
        if (params->pool != NULL) {
            pp = *params->pool;
            pp.manifest = params->manifest;
            st = ds4_kv_pool_memory_bytes(&pp, &pool_bytes);
            if (st != DS4_OK)
                goto fail_tp;
        }
        x->scratch_off = pool_bytes;
        x->region_bytes = pool_bytes + DS4_MAX(params->preflight_bytes, 4096u);
        st = x->ops->mem_alloc(x->tp, x->region_bytes, &x->region, &x->region_base);
        if (st != DS4_OK)
            goto fail_tp;
        st = x->ops->mem_pack(x->tp, x->region, &x->rkey_buf, &x->rkey_len);
        if (st != DS4_OK)
            goto fail_region;
        if (params->pool != NULL) {
            pp.memory = x->region_base;
            st = ds4_kv_pool_create(&pp, &x->pool);
            if (st != DS4_OK)
                goto fail_rkey;
        }
    }
    pthread_mutex_init(&x->q_lock, NULL);
    uv_async_init(loop, &x->async, on_async);
    uv_timer_init(loop, &x->tick);
    x->async.data = x->tick.data = x;
    x->handles_open = 2;
    uv_timer_start(&x->tick, on_tick, XFER_TICK_MS, XFER_TICK_MS);
    ds4_log_info("kv xfer up incarnation %016" PRIx64 " address %s transport %s", x->inc,
                 x->address[0] != '\0' ? x->address : "(none)", x->ops->name);
    *out = x;
    return DS4_OK;

fail_rkey:
    ds4_free(x->rkey_buf);
fail_region:
    x->ops->mem_free(x->tp, x->region);
fail_tp:
    x->ops->destroy(x->tp);
fail_manifest:
    ds4_free(x->manifest_buf);
fail_x:
    ds4_free(x);
    return st;
}

void ds4__xfer_send_destroy_final(ds4_xfer_h *x);

void ds4_xfer_destroy(ds4_xfer_h *x)
{
    if (x == NULL)
        return;
    x->destroying = true;
    /* Ops still queued belong to transfers that are about to fail: drain them first. */
    on_async(&x->async);
    ds4__xfer_send_destroy(x);
    ds4__xfer_recv_destroy(x);
    for (xfer_conn_t *c = x->conns; c != NULL; c = c->next)
        ds4__xfer_conn_close(x, c);
    /* The transport completes (with errors) what is in flight, then frees its regions and
     * rkeys; puts may still read a preflight buffer until then, so conns are freed after. */
    x->ops->destroy(x->tp);
    ds4__xfer_send_destroy_final(x);
    while (x->conns != NULL)
        conn_free(x, x->conns);
    if (x->pool != NULL)
        ds4_kv_pool_destroy(x->pool);
    ds4_free(x->rkey_buf);
    ds4_free(x->manifest_buf);
    pthread_mutex_destroy(&x->q_lock);
    uv_close((uv_handle_t *)&x->async, on_handle_closed);
    uv_close((uv_handle_t *)&x->tick, on_handle_closed);
}

uint64_t ds4_xfer_incarnation(const ds4_xfer_h *x)
{
    return x->inc;
}

const char *ds4_xfer_address(const ds4_xfer_h *x)
{
    return x->address;
}

ds4_kv_pool_h *ds4_xfer_pool(ds4_xfer_h *x)
{
    return x->pool;
}

uint32_t ds4_xfer_n_reservations(const ds4_xfer_h *x)
{
    return x->n_resvs;
}

ds4_status_t ds4_xfer_link_stats(ds4_xfer_h *x, const char *addr, ds4_xfer_link_stats_t *out)
{
    for (xfer_conn_t *c = x->conns; c != NULL; c = c->next) {
        if (c->outgoing && c->stats_valid && strcmp(c->addr, addr) == 0) {
            *out = c->stats;
            return DS4_OK;
        }
    }
    return DS4_ERR_NOT_FOUND;
}
