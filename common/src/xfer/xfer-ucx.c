/*
 * The UCX (ucp) transport behind ds4_xfer_transport_ops_t.
 *
 * One ucp context + worker (single-threaded: only the loop thread touches it). The worker's
 * event fd is polled by libuv; every UCX callback (connection request, active message, error,
 * put/flush/send completion) only records an event, and events are dispatched to the core from
 * `tp_service` *outside* ucp_worker_progress, so the core may call back into the transport
 * freely. `tp_service` works in bounded slices (TP_SLICE_NS): when the worker has nothing more
 * it is armed and the loop sleeps on the event fd (also with requests in flight, unless
 * DS4_XFER_BUSY_POLL=1); when a slice runs out with work left a uv_idle handle continues in the
 * next loop iteration, so timers and other I/O on the loop are never held for more than a slice.
 * A 10 ms timer is a safety net for missed wakeups.
 */
#include "ds4/xfer.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucp/api/ucp.h>

#define TP_AM_ID 23u
#define TP_SAFETY_TIMER_MS 10u
/* ds4_xfer_destroy: how long graceful endpoint closes (a last ABORT reaching the peer) may take
 * before whatever is still in flight is abandoned (released to UCX, callbacks fired with
 * DS4_ERR_SHUTDOWN). A peer that is stopped or starved does not answer a close at all. */
#define TP_DESTROY_GRACE_MS 500u
/* The longest one tp_service call works before it lets the loop run other handles. */
#define TP_SLICE_NS (2u * 1000000u)

typedef enum tp_event_type {
    TP_EV_CONN_REQUEST,
    TP_EV_RECV,
    TP_EV_ERROR,
    TP_EV_DONE,
    TP_EV_CLOSED,
} tp_event_type_t;

typedef struct tp_event {
    struct tp_event *next;
    tp_event_type_t type;
    ds4_xfer_tp_conn_t *conn;        /* RECV, ERROR, CLOSED (holds a conn reference) */
    ucp_conn_request_h conn_request; /* CONN_REQUEST */
    ds4_xfer_tp_done_cb cb;          /* DONE */
    void *arg;
    ds4_status_t status;
    bool requeued;                   /* ERROR: already put back once behind pending messages */
    size_t len;
    unsigned char data[];            /* RECV payload */
} tp_event_t;

struct ds4_xfer_tp_conn {
    ds4_xfer_tp_t *tp;
    ucp_ep_h ep;
    void *user;
    int refs;           /* 1 while the ep lives + 1 per queued event naming this conn */
    bool failed;        /* the error handler fired */
    bool closed;        /* the core closed it: no more upcalls */
    bool close_pending; /* ucp_ep_close_nbx still to be issued (deferred out of callbacks) */
    struct ds4_xfer_tp_conn *next; /* tp->conns */
};

/* Regions and rkeys are tracked so that destroy can release whatever the core still holds
 * (after every endpoint is closed and every request has completed). */
struct ds4_xfer_tp_mem {
    ucp_mem_h memh;
    void *base;
    size_t len;
    struct ds4_xfer_tp_mem *next;
};

struct ds4_xfer_tp_rkey {
    ucp_rkey_h rkey;
    struct ds4_xfer_tp_rkey *next;
};

struct ds4_xfer_tp {
    uv_loop_t *loop;
    ds4_xfer_tp_events_t ev;
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_listener_h listener;
    int efd;
    uv_poll_t poll;
    uv_idle_t idle;
    uv_timer_t timer;
    int handles_open;
    bool destroying;
    bool in_service;
    bool busy_poll;     /* DS4_XFER_BUSY_POLL=1: spin while requests are in flight */
    uint64_t inflight;  /* UCX requests not yet completed */
    tp_event_t *ev_head, *ev_tail;
    ds4_xfer_tp_conn_t *conns;
    ds4_xfer_tp_mem_t *mems;
    ds4_xfer_tp_rkey_t *rkeys;
    struct tp_req_ctx *reqs;
    char local_addr[64];
};

/*
 * Completion context of one UCX operation (send, put, flush, endpoint close).
 * Invariant: while `req` is non-NULL UCX owns a request for it that we have not freed; it is
 * freed exactly once, either by tp_req_done (completion) or, at destroy, by tp_abandon
 * (ucp_request_free before completion marks it released: UCX frees it when it completes, and
 * ucp_worker_destroy asserts that every request still queued on an endpoint was released).
 */
typedef struct tp_req_ctx {
    struct tp_req_ctx *prev, *next; /* tp->reqs: every operation not yet completed */
    ds4_xfer_tp_t *tp;
    ds4_xfer_tp_done_cb cb;
    void *arg;
    void *owned;        /* freed at completion (copied message UCX may still read) */
    ds4_xfer_tp_conn_t *closing; /* ep close request: conn to release */
    void *req;          /* the UCX request while in flight and not yet freed by us */
    bool abandoned;     /* destroy gave up on it: completion only frees the context */
} tp_req_ctx_t;

static struct tp_req_ctx *tp_ctx_new(ds4_xfer_tp_t *tp);
static void tp_ctx_unlink(struct tp_req_ctx *ctx);

static ds4_status_t tp_status(ucs_status_t s)
{
    switch (s) {
    case UCS_OK: return DS4_OK;
    case UCS_ERR_NO_MEMORY: return DS4_ERR_NO_MEMORY;
    case UCS_ERR_CANCELED: return DS4_ERR_CANCELLED;
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_ENDPOINT_TIMEOUT: return DS4_ERR_TIMEOUT;
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED: return DS4_ERR_PEER_GONE;
    default: return DS4_ERR_TRANSPORT;
    }
}

static void tp_kick(ds4_xfer_tp_t *tp);

static void tp_push_event(ds4_xfer_tp_t *tp, tp_event_t *e)
{
    e->next = NULL;
    if (e->conn != NULL)
        e->conn->refs++;
    if (tp->ev_tail != NULL)
        tp->ev_tail->next = e;
    else
        tp->ev_head = e;
    tp->ev_tail = e;
}

static tp_event_t *tp_new_event(tp_event_type_t type, size_t extra)
{
    tp_event_t *e = ds4_calloc(1, sizeof(*e) + extra);
    if (e != NULL)
        e->type = type;
    return e;
}

static void tp_conn_unref(ds4_xfer_tp_conn_t *c)
{
    DS4_ASSERT(c->refs > 0);
    if (--c->refs > 0)
        return;
    ds4_xfer_tp_t *tp = c->tp;
    for (ds4_xfer_tp_conn_t **pp = &tp->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    ds4_free(c);
}

static tp_req_ctx_t *tp_ctx_new(ds4_xfer_tp_t *tp)
{
    tp_req_ctx_t *ctx = ds4_calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return NULL;
    ctx->tp = tp;
    ctx->next = tp->reqs;
    if (tp->reqs != NULL)
        tp->reqs->prev = ctx;
    tp->reqs = ctx;
    return ctx;
}

static void tp_ctx_unlink(tp_req_ctx_t *ctx)
{
    if (ctx->prev != NULL)
        ctx->prev->next = ctx->next;
    else
        ctx->tp->reqs = ctx->next;
    if (ctx->next != NULL)
        ctx->next->prev = ctx->prev;
}

/* ------------------------------------------------------------------ UCX callbacks */

static void tp_req_done(void *request, ucs_status_t status, void *user_data)
{
    tp_req_ctx_t *ctx = user_data;
    ds4_xfer_tp_t *tp = ctx->tp;
    if (ctx->abandoned) {
        /* completed inside ucp_worker_destroy (or its last progress): the request was already
         * freed (released) by tp_abandon and the core was told; nothing else may be touched */
        tp_ctx_unlink(ctx);
        ds4_free(ctx->owned);
        ds4_free(ctx);
        return;
    }
    ctx->req = NULL;
    DS4_ASSERT(tp->inflight > 0);
    tp->inflight--;
    if (ctx->cb != NULL) {
        tp_event_t *e = tp_new_event(TP_EV_DONE, 0);
        if (e != NULL) {
            e->cb = ctx->cb;
            e->arg = ctx->arg;
            e->status = tp_status(status);
            tp_push_event(tp, e);
        } else {
            ds4_log_error("xfer ucx: lost a completion (out of memory)");
        }
    }
    if (ctx->closing != NULL) {
        tp_event_t *e = tp_new_event(TP_EV_CLOSED, 0);
        DS4_ASSERT(e != NULL);
        e->conn = ctx->closing;
        tp_push_event(tp, e);
        tp_conn_unref(ctx->closing); /* the ep's own reference; the event holds one */
    }
    tp_ctx_unlink(ctx);
    ds4_free(ctx->owned);
    ds4_free(ctx);
    if (request != NULL)
        ucp_request_free(request);
}

static void tp_send_cb(void *request, ucs_status_t status, void *user_data)
{
    tp_req_done(request, status, user_data);
}

static void tp_close_cb(void *request, ucs_status_t status, void *user_data)
{
    tp_req_done(request, status, user_data);
}

static void tp_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ds4_xfer_tp_conn_t *c = arg;
    if (c->failed)
        return;
    c->failed = true;
    tp_event_t *e = tp_new_event(TP_EV_ERROR, 0);
    if (e == NULL)
        return;
    e->conn = c;
    e->status = tp_status(status);
    ds4_log_debug("xfer ucx: endpoint error %s", ucs_status_string(status));
    tp_push_event(c->tp, e);
}

static void tp_conn_request_cb(ucp_conn_request_h req, void *arg)
{
    ds4_xfer_tp_t *tp = arg;
    tp_event_t *e = tp_new_event(TP_EV_CONN_REQUEST, 0);
    if (e == NULL) {
        ucp_listener_reject(tp->listener, req);
        return;
    }
    e->conn_request = req;
    tp_push_event(tp, e);
}

static ucs_status_t tp_am_cb(void *arg, const void *header, size_t header_length, void *data,
                             size_t length, const ucp_am_recv_param_t *param)
{
    ds4_xfer_tp_t *tp = arg;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 ||
        (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0) {
        ds4_log_warn("xfer ucx: dropping a message without reply endpoint or sent rendezvous");
        return UCS_OK;
    }
    ds4_xfer_tp_conn_t *c = NULL;
    for (ds4_xfer_tp_conn_t *it = tp->conns; it != NULL; it = it->next) {
        if (it->ep == param->reply_ep) {
            c = it;
            break;
        }
    }
    if (c == NULL || c->closed) {
        ds4_log_debug("xfer ucx: message on an unknown or closed endpoint dropped");
        return UCS_OK;
    }
    tp_event_t *e = tp_new_event(TP_EV_RECV, length);
    if (e == NULL)
        return UCS_OK;
    e->conn = c;
    e->len = length;
    memcpy(e->data, data, length);
    tp_push_event(tp, e);
    return UCS_OK;
}

/* ---------------------------------------------------------------- servicing the worker */

static ds4_xfer_tp_conn_t *tp_conn_new(ds4_xfer_tp_t *tp)
{
    ds4_xfer_tp_conn_t *c = ds4_calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->tp = tp;
    c->refs = 1;
    c->next = tp->conns;
    tp->conns = c;
    return c;
}

static ucp_ep_params_t tp_ep_params(ds4_xfer_tp_conn_t *c)
{
    ucp_ep_params_t p = {0};
    p.field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = tp_err_cb;
    p.err_handler.arg = c;
    return p;
}

static void tp_accept(ds4_xfer_tp_t *tp, ucp_conn_request_h req)
{
    ds4_xfer_tp_conn_t *c = tp_conn_new(tp);
    if (c == NULL) {
        ucp_listener_reject(tp->listener, req);
        return;
    }
    ucp_ep_params_t p = tp_ep_params(c);
    p.field_mask |= UCP_EP_PARAM_FIELD_CONN_REQUEST;
    p.conn_request = req;
    ucs_status_t s = ucp_ep_create(tp->worker, &p, &c->ep);
    if (s != UCS_OK) {
        ds4_log_warn("xfer ucx: accepting a connection failed: %s", ucs_status_string(s));
        c->ep = NULL;
        tp_conn_unref(c);
        return;
    }
    tp->ev.accept_cb(tp->ev.arg, c);
}

static void tp_issue_close(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *c, bool force)
{
    c->close_pending = false;
    tp_req_ctx_t *ctx = tp_ctx_new(tp);
    DS4_ASSERT(ctx != NULL);
    ctx->closing = c;
    ucp_request_param_t rp = {0};
    rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                      UCP_OP_ATTR_FIELD_FLAGS;
    rp.cb.send = tp_close_cb;
    rp.user_data = ctx;
    rp.flags = force || c->failed ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    tp->inflight++;
    ucp_ep_h ep = c->ep;
    c->ep = NULL;
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &rp);
    if (UCS_PTR_IS_PTR(r))
        ctx->req = r;
    else
        tp_req_done(NULL, UCS_PTR_STATUS(r), ctx);
}

static void tp_dispatch(ds4_xfer_tp_t *tp, tp_event_t *e)
{
    switch (e->type) {
    case TP_EV_CONN_REQUEST:
        if (tp->destroying)
            ucp_listener_reject(tp->listener, e->conn_request);
        else
            tp_accept(tp, e->conn_request);
        break;
    case TP_EV_RECV:
        if (!e->conn->closed && !tp->destroying)
            tp->ev.recv_cb(tp->ev.arg, e->conn, e->data, e->len);
        break;
    case TP_EV_ERROR:
        if (!e->conn->closed && !tp->destroying)
            tp->ev.conn_error_cb(tp->ev.arg, e->conn, e->status);
        break;
    case TP_EV_DONE:
        e->cb(e->arg, e->status);
        break;
    case TP_EV_CLOSED:
        break;
    }
    if (e->conn != NULL)
        tp_conn_unref(e->conn);
    ds4_free(e);
}

static uint64_t tp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * One bounded slice of work on the loop thread: progress the worker and dispatch queued events
 * until there is nothing left (then arm the worker: the loop sleeps on its event fd) or the
 * slice's TP_SLICE_NS have passed (then the idle handle continues in the next loop iteration,
 * after libuv has run everything else that is ready). Never an unbounded wait: while a bulk
 * transfer keeps ucp_worker_progress busy, or a burst of messages arrives, the loop still
 * turns every few milliseconds (timers, gRPC, heartbeats).
 */
static void tp_service(ds4_xfer_tp_t *tp)
{
    if (tp->in_service)
        return;
    tp->in_service = true;
    uint64_t end_ns = tp_now_ns() + TP_SLICE_NS;
    bool more = false; /* the slice ran out with work left */
    for (;;) {
        while (ucp_worker_progress(tp->worker) != 0) {
            if (tp_now_ns() >= end_ns) {
                more = true;
                break;
            }
        }
        for (ds4_xfer_tp_conn_t *c = tp->conns; c != NULL; c = c->next) {
            if (c->close_pending)
                tp_issue_close(tp, c, false);
        }
        if (more)
            break;
        if (tp->ev_head != NULL) {
            tp_event_t *e = tp->ev_head;
            tp->ev_head = e->next;
            if (tp->ev_head == NULL)
                tp->ev_tail = NULL;
            if (e->type == TP_EV_ERROR && !e->requeued) {
                /* A peer's last messages (an ABORT before it closed) may still sit in a
                 * shared-memory FIFO while the disconnect arrived first: poll once more and
                 * deliver the error behind whatever that brings in. */
                e->requeued = true;
                e->conn->refs--; /* tp_push_event takes the reference again */
                for (int i = 0; i < 64 && ucp_worker_progress(tp->worker) != 0; i++) {
                }
                tp_push_event(tp, e);
                continue;
            }
            tp_dispatch(tp, e);
            if (tp_now_ns() >= end_ns) {
                more = true;
                break;
            }
            continue;
        }
        if (tp->inflight > 0 && tp->busy_poll)
            break; /* keep polling from the idle handle */
        ucs_status_t s = ucp_worker_arm(tp->worker);
        if (s == UCS_ERR_BUSY) {
            if (tp_now_ns() >= end_ns) {
                more = true;
                break;
            }
            continue;
        }
        break;
    }
    tp->in_service = false;
    if (!tp->destroying) {
        if (more || (tp->inflight > 0 && tp->busy_poll) || tp->ev_head != NULL)
            tp_kick(tp);
        else
            uv_idle_stop(&tp->idle);
    }
}

static void tp_idle_cb(uv_idle_t *h)
{
    ds4_xfer_tp_t *tp = h->data;
    if (!tp->destroying) /* a handle closing in this loop iteration */
        tp_service(tp);
}

static void tp_poll_cb(uv_poll_t *h, int status, int events)
{
    ds4_xfer_tp_t *tp = h->data;
    if (!tp->destroying) /* a handle closing in this loop iteration */
        tp_service(tp);
}

static void tp_timer_cb(uv_timer_t *h)
{
    ds4_xfer_tp_t *tp = h->data;
    if (!tp->destroying) /* a handle closing in this loop iteration */
        tp_service(tp);
}

/* Work was posted outside tp_service: make sure the loop services the worker soon. */
static void tp_kick(ds4_xfer_tp_t *tp)
{
    if (!tp->destroying)
        uv_idle_start(&tp->idle, tp_idle_cb);
}

/* ------------------------------------------------------------------------ ops */

static ds4_status_t tp_parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof(host) || colon == addr) {
        ds4_log_error("xfer ucx: address \"%s\" is not host:port", addr);
        return DS4_ERR_INVALID_ARG;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0 || res == NULL) {
        ds4_log_error("xfer ucx: cannot resolve \"%s\": %s", addr, gai_strerror(rc));
        return DS4_ERR_INVALID_ARG;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return DS4_OK;
}

static void tp_handle_closed(uv_handle_t *h)
{
    ds4_xfer_tp_t *tp = h->data;
    if (--tp->handles_open == 0)
        ds4_free(tp);
}

static ds4_status_t tp_create(uv_loop_t *loop, const char *listen_addr,
                              const ds4_xfer_tp_events_t *events, ds4_xfer_tp_t **out)
{
    ds4_status_t st = DS4_ERR_TRANSPORT;
    ucs_status_t s;
    ds4_xfer_tp_t *tp = ds4_calloc(1, sizeof(*tp));
    if (tp == NULL)
        return DS4_ERR_NO_MEMORY;
    tp->loop = loop;
    tp->ev = *events;
    tp->busy_poll = getenv("DS4_XFER_BUSY_POLL") != NULL && atoi(getenv("DS4_XFER_BUSY_POLL")) != 0;

    /* Bulk puts over UCX TCP: the 8 KiB default segments and kernel-default socket buffers cap
     * loopback throughput far below a plain socket. Larger ones unless the user set them (the
     * transport keys are only honoured from the environment, read by ucp_config_read). */
    setenv("UCX_TCP_TX_SEG_SIZE", "256k", 0);
    setenv("UCX_TCP_RX_SEG_SIZE", "256k", 0);
    setenv("UCX_TCP_SNDBUF", "4m", 0);
    setenv("UCX_TCP_RCVBUF", "4m", 0);
    ucp_config_t *config = NULL;
    s = ucp_config_read(NULL, NULL, &config);
    if (s != UCS_OK) {
        ds4_log_error("xfer ucx: reading UCX config failed: %s", ucs_status_string(s));
        goto fail_tp;
    }
    /* UCX 1.13 leaves shared-memory transports out of endpoints that ask for peer error
     * handling unless MM_ERROR_HANDLING is on (openucx/ucx#8477); we need both. */
    const char *tls = getenv("UCX_TLS");
    bool mm_possible = tls == NULL || strstr(tls, "sm") != NULL || strstr(tls, "posix") != NULL ||
                       strstr(tls, "sysv") != NULL || strstr(tls, "mm") != NULL ||
                       strstr(tls, "all") != NULL;
    if (mm_possible && getenv("UCX_MM_ERROR_HANDLING") == NULL &&
        ucp_config_modify(config, "MM_ERROR_HANDLING", "y") != UCS_OK)
        ds4_log_warn("xfer ucx: cannot enable MM_ERROR_HANDLING; shared memory may be unused");
    ucp_params_t cp = {0};
    cp.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    cp.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    cp.mt_workers_shared = 0;
    s = ucp_init(&cp, config, &tp->ctx);
    ucp_config_release(config);
    if (s != UCS_OK) {
        ds4_log_error("xfer ucx: ucp_init failed: %s", ucs_status_string(s));
        goto fail_tp;
    }
    ucp_worker_params_t wp = {0};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    s = ucp_worker_create(tp->ctx, &wp, &tp->worker);
    if (s != UCS_OK) {
        ds4_log_error("xfer ucx: ucp_worker_create failed: %s", ucs_status_string(s));
        goto fail_ctx;
    }
    ucp_am_handler_param_t ap = {0};
    ap.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG;
    ap.id = TP_AM_ID;
    ap.cb = tp_am_cb;
    ap.arg = tp;
    s = ucp_worker_set_am_recv_handler(tp->worker, &ap);
    if (s != UCS_OK) {
        ds4_log_error("xfer ucx: setting the am handler failed: %s", ucs_status_string(s));
        goto fail_worker;
    }
    s = ucp_worker_get_efd(tp->worker, &tp->efd);
    if (s != UCS_OK) {
        ds4_log_error("xfer ucx: ucp_worker_get_efd failed: %s", ucs_status_string(s));
        goto fail_worker;
    }
    if (listen_addr != NULL) {
        struct sockaddr_storage ss;
        socklen_t slen;
        st = tp_parse_addr(listen_addr, &ss, &slen);
        if (st != DS4_OK)
            goto fail_worker;
        st = DS4_ERR_TRANSPORT;
        ucp_listener_params_t lp = {0};
        lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
        lp.sockaddr.addr = (const struct sockaddr *)&ss;
        lp.sockaddr.addrlen = slen;
        lp.conn_handler.cb = tp_conn_request_cb;
        lp.conn_handler.arg = tp;
        s = ucp_listener_create(tp->worker, &lp, &tp->listener);
        if (s != UCS_OK) {
            ds4_log_error("xfer ucx: listening on %s failed: %s", listen_addr,
                          ucs_status_string(s));
            st = s == UCS_ERR_BUSY ? DS4_ERR_EXISTS : DS4_ERR_TRANSPORT;
            goto fail_worker;
        }
        ucp_listener_attr_t la = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
        s = ucp_listener_query(tp->listener, &la);
        if (s != UCS_OK)
            goto fail_listener;
        char ip[INET_ADDRSTRLEN] = "?";
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&la.sockaddr;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(tp->local_addr, sizeof(tp->local_addr), "%s:%u", ip, ntohs(sin->sin_port));
    }
    uv_poll_init(loop, &tp->poll, tp->efd);
    uv_idle_init(loop, &tp->idle);
    uv_timer_init(loop, &tp->timer);
    tp->poll.data = tp->idle.data = tp->timer.data = tp;
    tp->handles_open = 3;
    uv_poll_start(&tp->poll, UV_READABLE, tp_poll_cb);
    uv_timer_start(&tp->timer, tp_timer_cb, TP_SAFETY_TIMER_MS, TP_SAFETY_TIMER_MS);
    uv_unref((uv_handle_t *)&tp->timer); /* the safety net alone keeps no loop alive */
    tp_kick(tp);
    *out = tp;
    return DS4_OK;

fail_listener:
    ucp_listener_destroy(tp->listener);
fail_worker:
    ucp_worker_destroy(tp->worker);
fail_ctx:
    ucp_cleanup(tp->ctx);
fail_tp:
    ds4_free(tp);
    return st;
}

/* Destroy: progresses the worker and dispatches events (core completion callbacks only: the
 * conns are closed) until nothing is in flight or `end_ns`. Sleeps on the event fd between
 * rounds: spinning would starve the very peer whose answer we wait for on a loaded host. */
static void tp_drain(ds4_xfer_tp_t *tp, uint64_t end_ns)
{
    for (;;) {
        while (ucp_worker_progress(tp->worker) != 0) {
        }
        for (ds4_xfer_tp_conn_t *c = tp->conns; c != NULL; c = c->next) {
            if (c->close_pending)
                tp_issue_close(tp, c, c->failed);
        }
        while (tp->ev_head != NULL) {
            tp_event_t *e = tp->ev_head;
            tp->ev_head = e->next;
            if (tp->ev_head == NULL)
                tp->ev_tail = NULL;
            tp_dispatch(tp, e);
        }
        if (tp->inflight == 0)
            return;
        uint64_t now = tp_now_ns();
        if (now >= end_ns)
            return;
        if (ucp_worker_arm(tp->worker) == UCS_ERR_BUSY)
            continue;
        struct pollfd pfd = {.fd = tp->efd, .events = POLLIN};
        uint64_t left_ms = (end_ns - now + 999999u) / 1000000u;
        poll(&pfd, 1, (int)DS4_MIN(left_ms, (uint64_t)5));
    }
}

/* Gives up on every operation still in flight: frees (releases) its UCX request so that UCX
 * frees it whenever it completes - ucp_worker_destroy requires released requests - and tells
 * the core now (DS4_ERR_SHUTDOWN), so no core callback runs after destroy. */
static void tp_abandon(ds4_xfer_tp_t *tp)
{
    for (tp_req_ctx_t *ctx = tp->reqs; ctx != NULL; ctx = ctx->next) {
        if (ctx->abandoned)
            continue;
        ctx->abandoned = true;
        if (ctx->req != NULL) {
            ucp_request_free(ctx->req);
            ctx->req = NULL;
        }
        if (ctx->cb != NULL) {
            ds4_xfer_tp_done_cb cb = ctx->cb;
            ctx->cb = NULL;
            cb(ctx->arg, DS4_ERR_SHUTDOWN);
        }
        if (ctx->closing != NULL) {
            tp_conn_unref(ctx->closing); /* the ep's reference */
            ctx->closing = NULL;
        }
    }
    tp->inflight = 0;
}

static void tp_destroy(ds4_xfer_tp_t *tp)
{
    tp->destroying = true;
    for (ds4_xfer_tp_conn_t *c = tp->conns; c != NULL; c = c->next)
        c->closed = true;
    /* Close every endpoint still open, flushing what was sent (a last ABORT must reach the
     * peer) unless it already failed, and wait a bounded time for the closes and whatever else
     * is in flight; the core's completion callbacks fire meanwhile. */
    for (ds4_xfer_tp_conn_t *c = tp->conns; c != NULL; c = c->next) {
        if (c->ep != NULL)
            tp_issue_close(tp, c, c->failed);
    }
    tp_drain(tp, tp_now_ns() + (uint64_t)TP_DESTROY_GRACE_MS * 1000000u);
    if (tp->inflight > 0) {
        ds4_log_warn("xfer ucx: %" PRIu64 " operations still in flight after %u ms at shutdown "
                     "(peer not answering); abandoning them",
                     tp->inflight, TP_DESTROY_GRACE_MS);
        tp_abandon(tp);
    }
    /* Requests that complete from here on (inside ucp_worker_destroy) are abandoned ones:
     * tp_req_done only frees their contexts. Events they could queue do not exist. */
    while (tp->rkeys != NULL) {
        ds4_xfer_tp_rkey_t *k = tp->rkeys;
        tp->rkeys = k->next;
        ucp_rkey_destroy(k->rkey); /* before the worker: small rkeys live in its mpool */
        ds4_free(k);
    }
    while (tp->mems != NULL) {
        ds4_xfer_tp_mem_t *m = tp->mems;
        tp->mems = m->next;
        ucp_mem_unmap(tp->ctx, m->memh);
        ds4_free(m);
    }
    if (tp->listener != NULL)
        ucp_listener_destroy(tp->listener);
    ucp_worker_destroy(tp->worker);
    ucp_cleanup(tp->ctx);
    /* events queued by the last progress (errors, received messages: dropped) */
    while (tp->ev_head != NULL) {
        tp_event_t *e = tp->ev_head;
        tp->ev_head = e->next;
        if (e->type == TP_EV_DONE)
            e->cb(e->arg, e->status);
        ds4_free(e);
    }
    tp->ev_tail = NULL;
    /* abandoned requests UCX never completed (a close the peer never answered) */
    while (tp->reqs != NULL) {
        tp_req_ctx_t *ctx = tp->reqs;
        tp->reqs = ctx->next;
        ds4_free(ctx->owned);
        ds4_free(ctx);
    }
    while (tp->conns != NULL) {
        ds4_xfer_tp_conn_t *c = tp->conns;
        tp->conns = c->next;
        ds4_free(c);
    }
    uv_close((uv_handle_t *)&tp->poll, tp_handle_closed);
    uv_close((uv_handle_t *)&tp->idle, tp_handle_closed);
    uv_close((uv_handle_t *)&tp->timer, tp_handle_closed);
}

static ds4_status_t tp_local_address(ds4_xfer_tp_t *tp, char *buf, size_t buf_len)
{
    if (tp->local_addr[0] == '\0')
        return DS4_ERR_NOT_FOUND;
    snprintf(buf, buf_len, "%s", tp->local_addr);
    return DS4_OK;
}

static ds4_status_t tp_mem_alloc(ds4_xfer_tp_t *tp, size_t bytes, ds4_xfer_tp_mem_t **out,
                                 void **base)
{
    ds4_xfer_tp_mem_t *m = ds4_calloc(1, sizeof(*m));
    if (m == NULL)
        return DS4_ERR_NO_MEMORY;
    ucp_mem_map_params_t mp = {0};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                    UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.address = NULL;
    mp.length = bytes == 0 ? 1 : bytes;
    mp.flags = UCP_MEM_MAP_ALLOCATE;
    ucs_status_t s = ucp_mem_map(tp->ctx, &mp, &m->memh);
    if (s != UCS_OK) {
        ds4_log_error("xfer ucx: ucp_mem_map of %zu bytes failed: %s", bytes,
                      ucs_status_string(s));
        ds4_free(m);
        return s == UCS_ERR_NO_MEMORY ? DS4_ERR_NO_MEMORY : DS4_ERR_TRANSPORT;
    }
    ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH};
    s = ucp_mem_query(m->memh, &ma);
    if (s != UCS_OK || ma.length < bytes) {
        ds4_log_error("xfer ucx: ucp_mem_query failed");
        ucp_mem_unmap(tp->ctx, m->memh);
        ds4_free(m);
        return DS4_ERR_TRANSPORT;
    }
    m->base = ma.address;
    m->len = ma.length;
    memset(m->base, 0, bytes); /* zeroed and pre-faulted */
    m->next = tp->mems;
    tp->mems = m;
    *base = m->base;
    *out = m;
    return DS4_OK;
}

static void tp_mem_free(ds4_xfer_tp_t *tp, ds4_xfer_tp_mem_t *m)
{
    if (m == NULL)
        return;
    for (ds4_xfer_tp_mem_t **pp = &tp->mems; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    }
    ucp_mem_unmap(tp->ctx, m->memh);
    ds4_free(m);
}

static ds4_status_t tp_mem_pack(ds4_xfer_tp_t *tp, ds4_xfer_tp_mem_t *m, void **buf, size_t *len)
{
    void *rb = NULL;
    size_t rlen = 0;
    ucs_status_t s = ucp_rkey_pack(tp->ctx, m->memh, &rb, &rlen);
    if (s != UCS_OK) {
        ds4_log_error("xfer ucx: ucp_rkey_pack failed: %s", ucs_status_string(s));
        return DS4_ERR_TRANSPORT;
    }
    void *copy = ds4_malloc(rlen);
    if (copy == NULL) {
        ucp_rkey_buffer_release(rb);
        return DS4_ERR_NO_MEMORY;
    }
    memcpy(copy, rb, rlen);
    ucp_rkey_buffer_release(rb);
    *buf = copy;
    *len = rlen;
    return DS4_OK;
}

static ds4_status_t tp_connect(ds4_xfer_tp_t *tp, const char *addr, ds4_xfer_tp_conn_t **out)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    ds4_status_t st = tp_parse_addr(addr, &ss, &slen);
    if (st != DS4_OK)
        return st;
    ds4_xfer_tp_conn_t *c = tp_conn_new(tp);
    if (c == NULL)
        return DS4_ERR_NO_MEMORY;
    ucp_ep_params_t p = tp_ep_params(c);
    p.field_mask |= UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_FLAGS;
    p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    p.sockaddr.addr = (const struct sockaddr *)&ss;
    p.sockaddr.addrlen = slen;
    ucs_status_t s = ucp_ep_create(tp->worker, &p, &c->ep);
    if (s != UCS_OK) {
        ds4_log_warn("xfer ucx: connecting to %s failed: %s", addr, ucs_status_string(s));
        c->ep = NULL;
        tp_conn_unref(c);
        return tp_status(s) == DS4_ERR_TRANSPORT ? DS4_ERR_PEER_GONE : tp_status(s);
    }
    tp_kick(tp);
    *out = c;
    return DS4_OK;
}

static void tp_conn_set_user(ds4_xfer_tp_conn_t *c, void *user)
{
    c->user = user;
}

static void *tp_conn_user(ds4_xfer_tp_conn_t *c)
{
    return c->user;
}

/* Lane lines of ucp_ep_print_info look like "#   lane[0]:  3:posix/memory.0 md[3] ...". */
static ds4_status_t tp_conn_info(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *c,
                                 ds4_xfer_link_info_t *out)
{
    char *text = NULL;
    size_t text_len = 0;
    FILE *f = open_memstream(&text, &text_len);
    if (f == NULL)
        return DS4_ERR_NO_MEMORY;
    ucp_ep_print_info(c->ep, f);
    fclose(f);
    if (getenv("DS4_XFER_DEBUG_LANES") != NULL)
        fprintf(stderr, "%s\n", text);
    ds4_xfer_link_info_t info = {0};
    bool any = false, non_tcp = false;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char *lane = strstr(line, "lane[");
        if (lane == NULL)
            continue;
        char *colon = strchr(lane, ':');
        if (colon == NULL)
            continue;
        char *tl = colon + 1;
        while (*tl == ' ')
            tl++;
        while (*tl >= '0' && *tl <= '9')
            tl++;
        if (*tl == ':')
            tl++;
        size_t n = strcspn(tl, "/ ");
        if (n == 0 || n > 16 || strncmp(tl, "cm ", 3) == 0)
            continue; /* the connection-manager lane carries no data */
        char name[17];
        memcpy(name, tl, n);
        name[n] = '\0';
        if (strcmp(name, "tcp") != 0)
            non_tcp = true;
        any = true;
        if (strstr(info.transports, name) == NULL &&
            strlen(info.transports) + n + 2 < sizeof(info.transports)) {
            if (info.transports[0] != '\0')
                strcat(info.transports, ",");
            strcat(info.transports, name);
        }
    }
    free(text);
    if (!any)
        return DS4_ERR_NOT_FOUND;
    info.tcp_only = !non_tcp;
    *out = info;
    return DS4_OK;
}

static void tp_close(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    c->user = NULL;
    if (c->ep == NULL) {
        tp_conn_unref(c);
        return;
    }
    c->close_pending = true; /* issued from tp_service, outside any UCX callback */
    tp_kick(tp);
}

static ds4_status_t tp_send(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *c, const void *msg,
                            size_t len)
{
    if (c->closed || c->failed || c->ep == NULL)
        return DS4_ERR_PEER_GONE;
    void *copy = ds4_malloc(len);
    tp_req_ctx_t *ctx = copy != NULL ? tp_ctx_new(tp) : NULL;
    if (ctx == NULL) {
        ds4_free(copy);
        return DS4_ERR_NO_MEMORY;
    }
    memcpy(copy, msg, len);
    ctx->owned = copy;
    ucp_request_param_t rp = {0};
    rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                      UCP_OP_ATTR_FIELD_FLAGS;
    rp.cb.send = tp_send_cb;
    rp.user_data = ctx;
    rp.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
    tp->inflight++;
    ucs_status_ptr_t r = ucp_am_send_nbx(c->ep, TP_AM_ID, NULL, 0, copy, len, &rp);
    if (UCS_PTR_IS_ERR(r)) {
        tp->inflight--;
        tp_ctx_unlink(ctx);
        ds4_free(copy);
        ds4_free(ctx);
        ds4_log_warn("xfer ucx: send failed: %s", ucs_status_string(UCS_PTR_STATUS(r)));
        return tp_status(UCS_PTR_STATUS(r));
    }
    if (r == NULL)
        tp_req_done(NULL, UCS_OK, ctx);
    else
        ctx->req = r;
    tp_kick(tp);
    return DS4_OK;
}

static ds4_status_t tp_rkey_unpack(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *c, const void *buf,
                                   size_t len, ds4_xfer_tp_rkey_t **out)
{
    if (c->ep == NULL || c->failed)
        return DS4_ERR_PEER_GONE;
    ds4_xfer_tp_rkey_t *k = ds4_calloc(1, sizeof(*k));
    if (k == NULL)
        return DS4_ERR_NO_MEMORY;
    ucs_status_t s = ucp_ep_rkey_unpack(c->ep, buf, &k->rkey);
    if (s != UCS_OK) {
        ds4_log_warn("xfer ucx: rkey unpack failed: %s", ucs_status_string(s));
        ds4_free(k);
        return DS4_ERR_TRANSPORT;
    }
    k->next = tp->rkeys;
    tp->rkeys = k;
    *out = k;
    return DS4_OK;
}

static void tp_rkey_destroy(ds4_xfer_tp_t *tp, ds4_xfer_tp_rkey_t *k)
{
    if (k == NULL)
        return;
    for (ds4_xfer_tp_rkey_t **pp = &tp->rkeys; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    }
    ucp_rkey_destroy(k->rkey);
    ds4_free(k);
}

static ds4_status_t tp_post(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *c, bool is_flush,
                            const void *src, size_t len, uint64_t raddr, ds4_xfer_tp_rkey_t *k,
                            ds4_xfer_tp_done_cb cb, void *arg)
{
    if (c->closed || c->failed || c->ep == NULL)
        return DS4_ERR_PEER_GONE;
    tp_req_ctx_t *ctx = tp_ctx_new(tp);
    if (ctx == NULL)
        return DS4_ERR_NO_MEMORY;
    ctx->cb = cb;
    ctx->arg = arg;
    ucp_request_param_t rp = {0};
    rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    rp.cb.send = tp_send_cb;
    rp.user_data = ctx;
    tp->inflight++;
    ucs_status_ptr_t r = is_flush ? ucp_ep_flush_nbx(c->ep, &rp)
                                  : ucp_put_nbx(c->ep, src, len, raddr, k->rkey, &rp);
    if (UCS_PTR_IS_ERR(r)) {
        tp->inflight--;
        tp_ctx_unlink(ctx); /* still on tp->reqs: freeing it linked corrupts the list */
        ds4_free(ctx);
        ds4_log_warn("xfer ucx: %s failed: %s", is_flush ? "flush" : "put",
                     ucs_status_string(UCS_PTR_STATUS(r)));
        return tp_status(UCS_PTR_STATUS(r));
    }
    if (r == NULL)
        tp_req_done(NULL, UCS_OK, ctx); /* completed in place: the callback still comes as an
                                           event, never from inside this call */
    else
        ctx->req = r;
    tp_kick(tp);
    return DS4_OK;
}

static ds4_status_t tp_put(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *c, const void *src, size_t len,
                           uint64_t raddr, ds4_xfer_tp_rkey_t *k, ds4_xfer_tp_done_cb cb,
                           void *arg)
{
    return tp_post(tp, c, false, src, len, raddr, k, cb, arg);
}

static ds4_status_t tp_flush(ds4_xfer_tp_t *tp, ds4_xfer_tp_conn_t *c, ds4_xfer_tp_done_cb cb,
                             void *arg)
{
    return tp_post(tp, c, true, NULL, 0, 0, NULL, cb, arg);
}

static ds4_status_t tp_rkey_ptr(ds4_xfer_tp_t *tp, ds4_xfer_tp_rkey_t *k, uint64_t raddr,
                                void **local)
{
    ucs_status_t s = ucp_rkey_ptr(k->rkey, raddr, local);
    return s == UCS_OK ? DS4_OK : DS4_ERR_UNSUPPORTED;
}

static const ds4_xfer_transport_ops_t tp_ucx_ops = {
    .name = "ucx",
    .create = tp_create,
    .destroy = tp_destroy,
    .local_address = tp_local_address,
    .mem_alloc = tp_mem_alloc,
    .mem_free = tp_mem_free,
    .mem_pack = tp_mem_pack,
    .connect = tp_connect,
    .conn_set_user = tp_conn_set_user,
    .conn_user = tp_conn_user,
    .conn_info = tp_conn_info,
    .close = tp_close,
    .send = tp_send,
    .rkey_unpack = tp_rkey_unpack,
    .rkey_destroy = tp_rkey_destroy,
    .put = tp_put,
    .flush = tp_flush,
    .rkey_ptr = tp_rkey_ptr,
};

const ds4_xfer_transport_ops_t *ds4_xfer_ucx_ops(void)
{
    return &tp_ucx_ops;
}
