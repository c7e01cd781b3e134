/* ds4-decode's KV receive path: verified pool rows -> engine sequence -> batch. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "decode.h"
#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/log.h"

/* Copies the verified rows out of the pool in the engine's export layout and imports them. */
static ds4_status_t import_kv(decode_t *dc, dreq_t *r, char *why, size_t why_len)
{
    const ds4_kv_block_table_h *table = NULL;
    ds4_status_t st = ds4_xfer_acquire(dc->xfer, r->id, &table);
    if (st != DS4_OK) {
        snprintf(why, why_len, "kv not available: %s", ds4_status_str(st));
        return st;
    }
    ds4_kv_pool_h *pool = ds4_xfer_pool(dc->xfer);
    uint64_t n_tokens = r->prefilled;
    uint64_t bytes =
        sizeof(ds4_seq_state_header_t) + ds4_kv_manifest_seq_bytes(dc->wm.manifest, n_tokens);
    unsigned char *buf = ds4_malloc(bytes);
    if (buf == NULL) {
        snprintf(why, why_len, "out of memory for %" PRIu64 " bytes of KV", bytes);
        return DS4_ERR_NO_MEMORY;
    }
    ds4_seq_state_header_t h = {
        .magic = DS4_SEQ_STATE_MAGIC,
        .version = DS4_SEQ_STATE_VERSION,
        .pos = (int64_t)n_tokens,
        .mtp_pos = 0,
        .n_layers = (uint32_t)ds4_config_n_layers_total(dc->wm.cfg),
        .row_bytes = ds4_kv_manifest_kind_row_bytes(dc->wm.manifest, DS4_KV_WINDOW),
        .index_row_bytes = ds4_kv_manifest_kind_row_bytes(dc->wm.manifest, DS4_KV_INDEX),
    };
    memcpy(buf, &h, sizeof(h));
    uint64_t off = sizeof(h);
    uint32_t ng = ds4_kv_manifest_n_groups(dc->wm.manifest);
    for (uint32_t g = 0; g < ng; g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(dc->wm.manifest, g);
        uint64_t rows = ds4_kv_group_rows(grp, n_tokens);
        for (uint64_t row = 0; row < rows;) {
            uint64_t contig = 0;
            const void *p = ds4_kv_table_row_ptr(pool, table, g, row, &contig);
            if (p == NULL || contig == 0) {
                ds4_free(buf);
                snprintf(why, why_len, "kv row %" PRIu64 " of group %u missing", row, g);
                return DS4_ERR_KV_INCOMPLETE;
            }
            uint64_t take = DS4_MIN(contig, rows - row);
            memcpy(buf + off, p, take * grp->row_bytes);
            off += take * grp->row_bytes;
            row += take;
        }
    }
    DS4_ASSERT(off == bytes);
    ds4_seq_h seq = NULL;
    st = ds4_seq_import(dc->wm.model, buf, bytes, &seq);
    ds4_free(buf);
    if (st != DS4_OK) {
        snprintf(why, why_len, "kv import failed: %s", ds4_status_str(st));
        return st;
    }
    r->bseq->seq = seq;
    r->bseq->n_fed = n_tokens;
    ds4_series_add(dc->m_xfer_bytes, (double)bytes);
    return DS4_OK;
}

/* Ends a request that never reached the batcher. */
void ds4__decode_fail_unsubmitted(dreq_t *r, ds4_rpc_code_t code, const char *msg)
{
    if (r->call != NULL) {
        ds4_rpc_call_finish(r->call, code, "%s", msg);
        r->call = NULL;
    }
    ds4__decode_req_free(r);
}

void ds4__decode_kv_timer_cb(uv_timer_t *t)
{
    decode_t *dc = t->data;
    for (dreq_t *r = dc->reqs, *next; r != NULL; r = next) {
        next = r->next;
        if (!r->waiting_kv || !r->kv_ended)
            continue;
        r->waiting_kv = false;
        if (r->kv_status != DS4_OK) {
            ds4_rpc_code_t code =
                r->cancel_sent ? DS4_RPC_CANCELLED : ds4_rpc_code_from_status(r->kv_status);
            const char *ek[] = {r->cancel_sent ? "cancelled" : "kv_transfer"};
            ds4_series_add(ds4_metric_series(dc->m_errors, ek), 1);
            char msg[300];
            snprintf(msg, sizeof(msg), "kv transfer for request %" PRIu64 " failed: %s", r->id,
                     r->kv_msg);
            ds4__decode_fail_unsubmitted(r, code, msg);
            continue;
        }
        ds4_series_observe(dc->m_xfer_seconds, (double)(ds4_clock_now_ns() - r->t0_ns) / 1e9);
        char why[200] = "";
        uint64_t t_import = ds4_clock_now_ns();
        ds4_status_t st = r->cancel_sent || r->call == NULL ? DS4_ERR_CANCELLED
                                                            : import_kv(dc, r, why, sizeof(why));
        ds4_series_observe(dc->m_import_seconds, (double)(ds4_clock_now_ns() - t_import) / 1e9);
        ds4_xfer_release(dc->xfer, r->id); /* the rows now live in the engine sequence */
        if (st != DS4_OK) {
            ds4__decode_fail_unsubmitted(
                r, st == DS4_ERR_CANCELLED ? DS4_RPC_CANCELLED : ds4_rpc_code_from_status(st),
                st == DS4_ERR_CANCELLED ? "cancelled" : why);
            continue;
        }
        r->submitted = true;
        ds4_batcher_submit(dc->batcher, r->bseq);
    }
}

void ds4__decode_on_kv(void *arg, uint64_t request_id, ds4_status_t status, const char *msg)
{
    decode_t *dc = arg;
    dreq_t *r = ds4__decode_find(dc, request_id);
    if (r == NULL || !r->waiting_kv || r->kv_ended)
        return;
    r->kv_ended = true;
    r->kv_status = status;
    snprintf(r->kv_msg, sizeof(r->kv_msg), "%s%s%s", ds4_status_str(status),
             msg != NULL && msg[0] != '\0' ? ": " : "", msg != NULL ? msg : "");
    uv_timer_start(&dc->kv_timer, ds4__decode_kv_timer_cb, 0, 0);
}

dreq_t *ds4__decode_find(decode_t *dc, uint64_t id)
{
    for (dreq_t *r = dc->reqs; r != NULL; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}
