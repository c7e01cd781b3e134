/*
 * decode/decode.h - state shared by ds4-decode's files (main.c: options, services, batching
 * events; kv-recv.c: the KV receive path). Loop thread only.
 */
#ifndef DS4_DECODE_DECODE_H
#define DS4_DECODE_DECODE_H

#include <stdbool.h>
#include <stdint.h>

#include "batcher.h"
#include "ds4/daemon.h"
#include "ds4/kv.h"
#include "ds4/model.h"
#include "ds4/worker.h"
#include "ds4/xfer.h"
#include "ds4_worker.pb-c.h"

typedef struct decode_opts {
    const char *grpc_listen, *http_listen, *advertise, *ports_file, *router, *worker_id, *model,
        *model_name, *log_level, *xfer_listen;
    uint32_t max_sequences, max_batch, chunk_tokens, threads, drain_timeout_ms, max_context;
    uint32_t kv_seqs, kv_tokens;
    bool refuse_tcp_only;
    uint32_t xfer_connect_timeout_ms, xfer_preflight_bytes;
} decode_opts_t;

typedef struct dreq dreq_t;

typedef struct decode {
    decode_opts_t opt;
    ds4_daemon_h daemon;
    ds4_worker_model_t wm; /* model, config, KV manifest and its digest */
    ds4_batcher_t *batcher;
    ds4_router_link_h link;
    ds4_xfer_h *xfer;
    uv_timer_t kv_timer; /* imports verified KV outside the xfer callback */
    dreq_t *reqs;
    size_t n_reqs;
    bool draining;
    uint64_t done, failed, tokens;
    ds4_series_h m_running, m_queue, m_batch, m_max_batch, m_ttft, m_itl, m_tokens, m_kv_used,
        m_kv_free, m_xfer_bytes, m_xfer_seconds, m_import_seconds;
    ds4_metric_h m_errors, m_finished;
} decode_t;

struct dreq {
    decode_t *dc;
    dreq_t *prev, *next;
    uint64_t id;
    ds4_rpc_call_h call; /* NULL once finished */
    ds4_bseq_t *bseq;    /* in the batcher until its FINISH event */
    bool submitted;      /* bseq handed to the batcher */
    bool waiting_kv;     /* an xfer reservation is open */
    bool kv_ended;       /* the reservation reached its end (kv_status) */
    ds4_status_t kv_status;
    char kv_msg[200];
    uint32_t prefilled;
    bool cancel_sent;
    uint64_t t0_ns, t_last_ns;
    uint32_t n_tokens;
};

/* Unlinks and frees a request (and its sequence if the batcher never had it). */
void ds4__decode_req_free(dreq_t *r);
dreq_t *ds4__decode_find(decode_t *dc, uint64_t id);
/* Ends a request that never reached the batcher with `code`. */
void ds4__decode_fail_unsubmitted(dreq_t *r, ds4_rpc_code_t code, const char *msg);
/* ds4_xfer recv callback: a reservation ended (verified or failed). */
void ds4__decode_on_kv(void *arg, uint64_t request_id, ds4_status_t status, const char *msg);
/* Imports verified KV / fails requests, outside the xfer callback. */
void ds4__decode_kv_timer_cb(uv_timer_t *t);

#endif /* DS4_DECODE_DECODE_H */
