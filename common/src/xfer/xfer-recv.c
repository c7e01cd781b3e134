/* Decode (receiver) half: reservations, handshake answers, record verification, fencing. */
#include "xfer-internal.h"

#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/crc32c.h"
#include "ds4/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

ds4_status_t ds4__xfer_target_encode(ds4_xfer_h *x, const xfer_resv_t *r, uint32_t deadline_ms,
                                     void **out, size_t *out_len);

static xfer_resv_t *resv_find(ds4_xfer_h *x, uint64_t request_id)
{
    for (xfer_resv_t *r = x->resvs; r != NULL; r = r->next) {
        if (r->request_id == request_id)
            return r;
    }
    return NULL;
}

static void resv_free(ds4_xfer_h *x, xfer_resv_t *r)
{
    for (xfer_resv_t **pp = &x->resvs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    x->n_resvs--;
    ds4_kv_pool_free(x->pool, r->table);
    ds4_free(r->group_done);
    ds4_free(r->rows_checked);
    ds4_free(r->crc);
    ds4_free(r);
}

static void resv_notify(ds4_xfer_h *x, uint64_t request_id, ds4_status_t st, const char *msg)
{
    if (x->p.recv_cb != NULL)
        x->p.recv_cb(x->p.cb_arg, request_id, st, msg);
}

/*
 * Ends a reservation with an error. A sender that may still be writing into the blocks is
 * told (ABORT) and the blocks wait in quarantine for its ack; otherwise they are freed now.
 */
static void resv_fail(ds4_xfer_h *x, xfer_resv_t *r, ds4_status_t st, const char *msg)
{
    if (r->state == RESV_QUARANTINE)
        return;
    ds4_log_warn("kv recv request %" PRIu64 " failed: %s: %s", r->request_id,
                 ds4_status_str(st), msg);
    uint64_t id = r->request_id;
    bool sender_live = r->state == RESV_RECEIVING && r->conn != NULL && r->conn->tc != NULL;
    if (sender_live &&
        ds4__xfer_send_status(x, r->conn, XFER_MSG_ABORT, id, st, msg) == DS4_OK) {
        r->state = RESV_QUARANTINE;
        r->deadline_ns = ds4_clock_now_ns() + (uint64_t)x->p.quarantine_timeout_ms * 1000000u;
    } else {
        resv_free(x, r);
    }
    resv_notify(x, id, st, msg);
}

ds4_status_t ds4_xfer_reserve(ds4_xfer_h *x, uint64_t request_id, uint64_t n_tokens,
                              uint32_t deadline_ms, void **target, size_t *target_len)
{
    if (x == NULL || target == NULL || target_len == NULL || n_tokens == 0 || deadline_ms == 0)
        return DS4_ERR_INVALID_ARG;
    if (x->pool == NULL)
        return DS4_ERR_UNSUPPORTED;
    if (resv_find(x, request_id) != NULL)
        return DS4_ERR_EXISTS;
    xfer_resv_t *r = ds4_calloc(1, sizeof(*r));
    if (r == NULL)
        return DS4_ERR_NO_MEMORY;
    uint32_t n_groups = ds4_kv_manifest_n_groups(x->p.manifest);
    r->group_done = ds4_calloc(n_groups, 1);
    r->rows_checked = ds4_calloc(n_groups, sizeof(uint64_t));
    r->crc = ds4_calloc(n_groups, sizeof(uint32_t));
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    if (r->group_done == NULL || r->rows_checked == NULL || r->crc == NULL)
        goto fail_resv;
    st = ds4_kv_pool_alloc(x->pool, n_tokens, &r->table);
    if (st != DS4_OK)
        goto fail_resv;
    r->request_id = request_id;
    r->n_tokens = n_tokens;
    r->state = RESV_RESERVED;
    r->deadline_ns = ds4_clock_now_ns() + (uint64_t)deadline_ms * 1000000u;
    st = ds4__xfer_target_encode(x, r, deadline_ms, target, target_len);
    if (st != DS4_OK)
        goto fail_table;
    r->next = x->resvs;
    x->resvs = r;
    x->n_resvs++;
    return DS4_OK;

fail_table:
    ds4_kv_pool_free(x->pool, r->table);
fail_resv:
    ds4_free(r->group_done);
    ds4_free(r->rows_checked);
    ds4_free(r->crc);
    ds4_free(r);
    return st;
}

ds4_status_t ds4_xfer_acquire(ds4_xfer_h *x, uint64_t request_id,
                              const ds4_kv_block_table_h **table)
{
    xfer_resv_t *r = resv_find(x, request_id);
    if (r == NULL || r->state == RESV_QUARANTINE)
        return DS4_ERR_NOT_FOUND;
    if (r->state != RESV_VERIFIED)
        return DS4_ERR_KV_INCOMPLETE;
    *table = r->table;
    return DS4_OK;
}

ds4_status_t ds4_xfer_reservation_info(ds4_xfer_h *x, uint64_t request_id,
                                       ds4_xfer_resv_info_t *out)
{
    xfer_resv_t *r = resv_find(x, request_id);
    if (r == NULL || r->state == RESV_QUARANTINE)
        return DS4_ERR_NOT_FOUND;
    *out = (ds4_xfer_resv_info_t){
        .sender_bound = r->state != RESV_RESERVED,
        .verified = r->state == RESV_VERIFIED,
        .groups_verified = r->n_verified,
        .n_groups = ds4_kv_manifest_n_groups(x->p.manifest),
    };
    return DS4_OK;
}

ds4_status_t ds4_xfer_release(ds4_xfer_h *x, uint64_t request_id)
{
    xfer_resv_t *r = resv_find(x, request_id);
    if (r == NULL || r->state == RESV_QUARANTINE)
        return DS4_ERR_NOT_FOUND;
    if (r->state == RESV_VERIFIED)
        resv_free(x, r);
    else
        resv_fail(x, r, DS4_ERR_CANCELLED, "reservation cancelled by decode");
    return DS4_OK;
}

/* --------------------------------------------------------------------- messages */

static void on_hello(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                     size_t len)
{
    char why[XFER_TEXT_MAX] = "";
    ds4_status_t st = DS4_OK;
    xfer_hello_t hello;
    ds4_kv_manifest_h *remote = NULL;
    if (c->state != CONN_AWAIT_HELLO || len < sizeof(hello)) {
        snprintf(why, sizeof(why), "unexpected or short HELLO");
        st = DS4_ERR_PROTOCOL;
        goto reply;
    }
    memcpy(&hello, msg, sizeof(hello));
    c->peer_inc = h->sender_inc;
    if (hello.manifest_len != len - sizeof(hello)) {
        snprintf(why, sizeof(why), "HELLO manifest length %u does not match the message",
                 hello.manifest_len);
        st = DS4_ERR_PROTOCOL;
        goto reply;
    }
    st = ds4_kv_manifest_decode((const unsigned char *)msg + sizeof(hello), hello.manifest_len,
                                &remote, why, sizeof(why));
    if (st != DS4_OK)
        goto reply;
    st = ds4_kv_manifest_compare(x->p.manifest, remote, why, sizeof(why));
    ds4_kv_manifest_destroy(remote);
    if (st != DS4_OK)
        goto reply;
    if (x->p.refuse_tcp_only) {
        ds4_xfer_link_info_t info;
        if (x->ops->conn_info(x->tp, c->tc, &info) == DS4_OK && info.tcp_only) {
            snprintf(why, sizeof(why),
                     "decode refuses PD transfers over TCP-only links (transports: %s)",
                     info.transports);
            st = DS4_ERR_UNSUPPORTED;
        }
    }

reply:;
    size_t tl = strnlen(why, sizeof(why));
    size_t rk = st == DS4_OK ? x->rkey_len : 0;
    unsigned char *buf = ds4_malloc(sizeof(xfer_welcome_t) + rk + tl);
    if (buf == NULL)
        return;
    xfer_welcome_t w = {
        .status = st,
        .text_len = (uint32_t)tl,
        .scratch_addr = st == DS4_OK ? (uint64_t)(uintptr_t)x->region_base + x->scratch_off : 0,
        .scratch_bytes = st == DS4_OK ? (uint32_t)(x->region_bytes - x->scratch_off) : 0,
        .rkey_len = (uint32_t)rk,
        .region_addr = st == DS4_OK ? (uint64_t)(uintptr_t)x->region_base : 0,
        .region_bytes = st == DS4_OK ? x->region_bytes : 0,
    };
    memcpy(buf, &w, sizeof(w));
    if (rk > 0)
        memcpy(buf + sizeof(w), x->rkey_buf, rk);
    memcpy(buf + sizeof(w) + rk, why, tl);
    ds4__xfer_send_msg(x, c, XFER_MSG_WELCOME, 0, buf, sizeof(w) + rk + tl);
    ds4_free(buf);
    if (st == DS4_OK) {
        c->state = CONN_READY;
        ds4_log_info("kv recv peer incarnation %016" PRIx64 " connected", c->peer_inc);
    } else {
        c->state = CONN_REJECTED;
        ds4_log_warn("kv recv refused peer incarnation %016" PRIx64 ": %s: %s", c->peer_inc,
                     ds4_status_str(st), why);
    }
}

static void on_begin(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                     size_t len)
{
    xfer_begin_t b;
    char why[160];
    if (len != sizeof(b)) {
        ds4__xfer_send_status(x, c, XFER_MSG_ABORT, h->request_id, DS4_ERR_PROTOCOL,
                              "BEGIN has the wrong size");
        return;
    }
    memcpy(&b, msg, sizeof(b));
    xfer_resv_t *r = resv_find(x, h->request_id);
    if (r == NULL || r->state == RESV_QUARANTINE) {
        ds4__xfer_send_status(x, c, XFER_MSG_ABORT, h->request_id, DS4_ERR_NOT_FOUND,
                              "no live reservation for this request (released or expired)");
        return;
    }
    if (r->state != RESV_RESERVED) {
        ds4__xfer_send_status(x, c, XFER_MSG_ABORT, h->request_id, DS4_ERR_PROTOCOL,
                              "reservation already bound to a sender");
        return;
    }
    if (b.n_tokens != r->n_tokens || b.manifest_digest != ds4_kv_manifest_digest(x->p.manifest)) {
        snprintf(why, sizeof(why), "BEGIN for %" PRIu64 " tokens, reserved %" PRIu64,
                 b.n_tokens, r->n_tokens);
        ds4__xfer_send_status(x, c, XFER_MSG_ABORT, h->request_id, DS4_ERR_PROTOCOL, why);
        return;
    }
    r->state = RESV_RECEIVING;
    r->conn = c;
    r->sender_inc = h->sender_inc;
}

/* Folds rows [rows_checked[g], row_end) of the pool into the group's running CRC. */
static void resv_check_rows(ds4_xfer_h *x, xfer_resv_t *r, uint32_t g, uint64_t row_end)
{
    const ds4_kv_group_t *grp = ds4_kv_manifest_group(x->p.manifest, g);
    uint64_t row = r->rows_checked[g];
    while (row < row_end) {
        uint64_t contig = 0;
        const void *p = ds4_kv_table_row_ptr(x->pool, r->table, g, row, &contig);
        DS4_ASSERT(p != NULL && contig > 0);
        uint64_t n = DS4_MIN(contig, row_end - row);
        r->crc[g] = ds4_crc32c(r->crc[g], p, (size_t)(n * grp->row_bytes));
        row += n;
    }
    r->rows_checked[g] = row;
}

static void on_progress(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                        size_t len)
{
    xfer_progress_t pm;
    xfer_resv_t *r = resv_find(x, h->request_id);
    if (r == NULL || r->state != RESV_RECEIVING || r->conn != c ||
        r->sender_inc != h->sender_inc || len != sizeof(pm))
        return; /* a late or foreign hint: the RECORD decides */
    memcpy(&pm, msg, sizeof(pm));
    if (pm.group >= ds4_kv_manifest_n_groups(x->p.manifest) || r->group_done[pm.group])
        return;
    const ds4_kv_group_t *g = ds4_kv_manifest_group(x->p.manifest, pm.group);
    if (pm.row_end > ds4_kv_group_rows(g, r->n_tokens) || pm.row_end <= r->rows_checked[pm.group])
        return;
    resv_check_rows(x, r, pm.group, pm.row_end);
}

static void on_record(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                      size_t len)
{
    xfer_record_t rec;
    char why[XFER_TEXT_MAX];
    char name[64];
    xfer_resv_t *r = resv_find(x, h->request_id);
    if (r == NULL || r->state != RESV_RECEIVING || r->conn != c ||
        r->sender_inc != h->sender_inc) {
        ds4__xfer_send_status(x, c, XFER_MSG_ABORT, h->request_id, DS4_ERR_STALE,
                              "record for a reservation this sender does not hold");
        return;
    }
    if (len != sizeof(rec)) {
        resv_fail(x, r, DS4_ERR_PROTOCOL, "RECORD has the wrong size");
        return;
    }
    memcpy(&rec, msg, sizeof(rec));
    uint32_t n_groups = ds4_kv_manifest_n_groups(x->p.manifest);
    if (rec.seq != r->next_seq) {
        snprintf(why, sizeof(why), "record sequence %u, expected %u", rec.seq, r->next_seq);
        resv_fail(x, r, DS4_ERR_KV_CORRUPT, why);
        return;
    }
    r->next_seq++;
    if (rec.group >= n_groups || r->group_done[rec.group]) {
        snprintf(why, sizeof(why), "record for group %u: unknown or duplicate", rec.group);
        resv_fail(x, r, DS4_ERR_KV_CORRUPT, why);
        return;
    }
    const ds4_kv_group_t *g = ds4_kv_manifest_group(x->p.manifest, rec.group);
    uint64_t rows = ds4_kv_group_rows(g, r->n_tokens);
    if (rec.n_rows != rows) {
        snprintf(why, sizeof(why), "%s: record has %" PRIu64 " rows, expected %" PRIu64,
                 ds4_kv_group_describe(x->p.manifest, rec.group, name, sizeof(name)),
                 rec.n_rows, rows);
        resv_fail(x, r, DS4_ERR_KV_CORRUPT, why);
        return;
    }
    resv_check_rows(x, r, rec.group, rows);
    uint32_t crc = r->crc[rec.group];
    if (crc != rec.crc) {
        snprintf(why, sizeof(why), "%s: crc32c %08x at decode, sender recorded %08x",
                 ds4_kv_group_describe(x->p.manifest, rec.group, name, sizeof(name)), crc,
                 rec.crc);
        resv_fail(x, r, DS4_ERR_KV_CORRUPT, why);
        return;
    }
    r->group_done[rec.group] = 1;
    ds4_log_debug("kv recv request %" PRIu64 " verified seq %u group %u", r->request_id, rec.seq,
                  rec.group);
    if (++r->n_verified < n_groups)
        return;
    r->state = RESV_VERIFIED;
    ds4__xfer_send_status(x, c, XFER_MSG_RESULT, r->request_id, DS4_OK, NULL);
    ds4_log_debug("kv recv request %" PRIu64 " verified (%u groups)", r->request_id, n_groups);
    resv_notify(x, r->request_id, DS4_OK, "verified");
}

static void on_abort(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                     size_t len, bool ack)
{
    xfer_resv_t *r = resv_find(x, h->request_id);
    if (!ack) /* the sender waits for this before reporting: answer even for unknown requests */
        ds4__xfer_send_status(x, c, XFER_MSG_ABORT_ACK, h->request_id, DS4_OK, NULL);
    if (r == NULL || r->conn != c || r->sender_inc != h->sender_inc)
        return;
    if (ack || r->state == RESV_QUARANTINE) {
        /* an ack of our ABORT, or the sender's own ABORT crossing ours: either way it flushed
         * and stopped writing, so the blocks are ours again */
        if (r->state == RESV_QUARANTINE)
            resv_free(x, r);
        return;
    }
    if (r->state != RESV_RECEIVING)
        return;
    char text[XFER_TEXT_MAX + 1] = "sender aborted";
    xfer_status_msg_t m;
    ds4_status_t st = DS4_ERR_CANCELLED;
    if (len >= sizeof(m)) {
        memcpy(&m, msg, sizeof(m));
        size_t tl = DS4_MIN((size_t)m.text_len, len - sizeof(m));
        tl = DS4_MIN(tl, (size_t)XFER_TEXT_MAX);
        if (tl > 0) {
            memcpy(text, (const unsigned char *)msg + sizeof(m), tl);
            text[tl] = '\0';
        }
        if (m.status < 0)
            st = (ds4_status_t)m.status;
    }
    uint64_t id = r->request_id;
    resv_free(x, r); /* the sender flushed before ABORT: nothing more will land */
    ds4_log_info("kv recv request %" PRIu64 " aborted by sender: %s", id, text);
    resv_notify(x, id, st, text);
}

void ds4__xfer_recv_msg(ds4_xfer_h *x, xfer_conn_t *c, const xfer_hdr_t *h, const void *msg,
                        size_t len)
{
    if (h->type == XFER_MSG_HELLO) {
        on_hello(x, c, h, msg, len);
        return;
    }
    if (c->state != CONN_READY) {
        ds4_log_warn("kv recv: message type %u before a successful handshake dropped", h->type);
        return;
    }
    switch (h->type) {
    case XFER_MSG_PING: {
        xfer_ping_t p;
        if (len != sizeof(p))
            return;
        memcpy(&p, msg, sizeof(p));
        ds4__xfer_send_msg(x, c, XFER_MSG_PONG, 0, &p, sizeof(p));
        break;
    }
    case XFER_MSG_BEGIN:
        on_begin(x, c, h, msg, len);
        break;
    case XFER_MSG_RECORD:
        on_record(x, c, h, msg, len);
        break;
    case XFER_MSG_PROGRESS:
        on_progress(x, c, h, msg, len);
        break;
    case XFER_MSG_ABORT:
        on_abort(x, c, h, msg, len, false);
        break;
    case XFER_MSG_ABORT_ACK:
        on_abort(x, c, h, msg, len, true);
        break;
    default:
        ds4_log_warn("kv recv: unexpected message type %u dropped", h->type);
        break;
    }
}

void ds4__xfer_recv_conn_lost(ds4_xfer_h *x, xfer_conn_t *c)
{
    for (xfer_resv_t *r = x->resvs, *next; r != NULL; r = next) {
        next = r->next;
        if (r->conn != c)
            continue;
        r->conn = NULL;
        if (r->state == RESV_RECEIVING) {
            uint64_t id = r->request_id;
            resv_free(x, r); /* the sender is gone: nothing more can arrive */
            ds4_log_warn("kv recv request %" PRIu64 " failed: sender connection lost", id);
            resv_notify(x, id, DS4_ERR_PEER_GONE, "sender connection lost mid-transfer");
        } else if (r->state == RESV_QUARANTINE) {
            resv_free(x, r);
        }
    }
}

void ds4__xfer_recv_tick(ds4_xfer_h *x, uint64_t now_ns)
{
    for (xfer_resv_t *r = x->resvs, *next; r != NULL; r = next) {
        next = r->next;
        if (r->state == RESV_VERIFIED || now_ns <= r->deadline_ns)
            continue;
        if (r->state == RESV_QUARANTINE) {
            ds4_log_warn("kv recv request %" PRIu64 " sender never acknowledged the abort; "
                         "freeing its blocks",
                         r->request_id);
            resv_free(x, r);
            continue;
        }
        resv_fail(x, r, DS4_ERR_TIMEOUT, "kv transfer not verified before its deadline");
    }
}

void ds4__xfer_recv_destroy(ds4_xfer_h *x)
{
    while (x->resvs != NULL) {
        xfer_resv_t *r = x->resvs;
        uint64_t id = r->request_id;
        bool notify = r->state == RESV_RESERVED || r->state == RESV_RECEIVING;
        resv_free(x, r);
        if (notify)
            resv_notify(x, id, DS4_ERR_SHUTDOWN, "decode shutting down");
    }
}
