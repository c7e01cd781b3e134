/*
 * ds4-prefill: a prefill worker. Serves ds4.worker.v1.Worker (Prefill, Release, Stats) and
 * /health /ready /metrics; registers and heartbeats with the router.
 *
 * Prefill(kv_target): runs the prompt through the engine chunk by chunk on the compute thread
 * and pushes the sequence's KV (the engine's export rows, group by group in manifest order)
 * into the decode worker's blocks named by the target (ds4/xfer.h): completed history rows
 * after every chunk, while the next one computes; the fixed groups after the last; then each
 * group's completion record. The call returns when the decode side has verified every group; any
 * failure (decode gone, CRC, deadline, cancel) ends it with the mapped gRPC status.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/daemon.h"
#include "ds4/kv.h"
#include "ds4/log.h"
#include "ds4/model.h"
#include "ds4/worker.h"
#include "ds4/xfer.h"
#include "ds4_worker.pb-c.h"

typedef struct prefill_opts {
    const char *grpc_listen, *http_listen, *advertise, *ports_file, *router, *worker_id, *model,
        *model_name, *log_level;
    uint32_t chunk_tokens, threads, drain_timeout_ms, max_context, max_queue;
    bool refuse_tcp_only;
    uint32_t xfer_connect_timeout_ms, xfer_preflight_bytes;
} prefill_opts_t;

typedef struct pjob pjob_t;

typedef struct prefill {
    prefill_opts_t opt;
    ds4_daemon_h daemon;
    ds4_worker_model_t wm; /* model, config, KV manifest and its digest */
    ds4_xfer_h *xfer;
    ds4_router_link_h link;
    pjob_t *jobs; /* loop list of every live job */
    size_t n_jobs;
    bool draining;
    /* compute thread */
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    uv_async_t async;
    pjob_t *queue_head, *queue_tail; /* waiting for compute (mu) */
    pjob_t *done_list;               /* computed, not yet seen by the loop (mu) */
    bool stop;
    int running; /* atomic: a job is computing */
    uint64_t progress; /* atomic: prompt tokens computed of the running job (0 when idle) */
    uint64_t done, failed, tokens;
    ds4_series_h m_running, m_queue, m_tokens, m_seconds, m_tps, m_bytes, m_xfer_seconds, m_seqs,
        m_bytes_held, m_progress;
    ds4_metric_h m_errors;
} prefill_t;

struct pjob {
    prefill_t *pf;
    pjob_t *prev, *next; /* loop list */
    pjob_t *qnext;       /* compute queue / done list */
    uint64_t id;
    ds4_rpc_call_h call; /* NULL once finished */
    int32_t *prompt;
    size_t n;
    uint32_t chunk;
    ds4_xfer_send_h *tx;
    unsigned char *state; /* exported KV; read by the transport until sent_done */
    uint64_t state_len;
    int cancel; /* atomic */
    bool computed, sent_done;
    ds4_status_t compute_status, send_status;
    char compute_msg[160], send_msg[200];
    uint64_t t0_ns, t_exported_ns, t_computed_ns, t_sent_ns;
};

static void job_maybe_end(pjob_t *j);

/* ---- compute thread ---- */

/* Copies rows [from, to) of group g from an export (src, the group at src_off) into the final
 * layout (j->state, the group at dst_off) and pushes them. History rows are final once their group
 * of tokens is complete, so pushed bytes never change afterwards. */
static ds4_status_t push_rows(prefill_t *pf, pjob_t *j, uint32_t g, const unsigned char *src,
                              uint64_t src_off, uint64_t dst_off, uint64_t from, uint64_t to)
{
    const ds4_kv_group_t *grp = ds4_kv_manifest_group(pf->wm.manifest, g);
    if (to <= from)
        return DS4_OK;
    uint64_t rb = grp->row_bytes;
    unsigned char *dst = j->state + sizeof(ds4_seq_state_header_t) + dst_off + from * rb;
    memcpy(dst, src + sizeof(ds4_seq_state_header_t) + src_off + from * rb, (to - from) * rb);
    return ds4_xfer_send_rows(j->tx, g, from, to - from, dst);
}

/* Exports the sequence into *buf (growing it); its size must be `want`. */
static ds4_status_t export_into(ds4_seq_h seq, unsigned char **buf, uint64_t *cap, uint64_t want)
{
    uint64_t need = ds4_seq_export_bytes(seq);
    if (need != want)
        return DS4_ERR_KV_MANIFEST;
    if (need > *cap) {
        unsigned char *grown = ds4_realloc_array(*buf, need, 1);
        if (grown == NULL)
            return DS4_ERR_NO_MEMORY;
        *buf = grown;
        *cap = need;
    }
    uint64_t written = 0;
    ds4_status_t st = ds4_seq_export(seq, *buf, *cap, &written);
    return st == DS4_OK && written != want ? DS4_ERR_KV_MANIFEST : st;
}

/*
 * Prefill in chunks; after each chunk but the last, the history rows (CSA, indexer, HCA) that
 * became complete are pushed while the next chunk computes. The fixed groups (window ring,
 * compressor tails) change with every token and go after the last chunk, then every group's
 * completion record.
 */
static ds4_status_t compute(prefill_t *pf, pjob_t *j)
{
    uint32_t ng = ds4_kv_manifest_n_groups(pf->wm.manifest);
    uint64_t *final_off = ds4_calloc(ng + 1, sizeof(*final_off));
    uint64_t *sent = ds4_calloc(ng + 1, sizeof(*sent));
    unsigned char *tmp = NULL;
    uint64_t tmp_cap = 0;
    ds4_seq_h seq = NULL;
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    if (final_off == NULL || sent == NULL) {
        snprintf(j->compute_msg, sizeof(j->compute_msg), "out of memory");
        goto out;
    }
    uint64_t total = 0;
    for (uint32_t g = 0; g < ng; g++) {
        final_off[g] = total;
        total += ds4_kv_group_bytes(ds4_kv_manifest_group(pf->wm.manifest, g), j->n);
    }
    j->state_len = sizeof(ds4_seq_state_header_t) + total;
    j->state = ds4_malloc(j->state_len);
    if (j->state == NULL) {
        snprintf(j->compute_msg, sizeof(j->compute_msg), "out of memory for %" PRIu64 " bytes",
                 j->state_len);
        goto out;
    }
    st = ds4_seq_create(pf->wm.model, &seq);
    if (st != DS4_OK) {
        snprintf(j->compute_msg, sizeof(j->compute_msg), "cannot create a sequence");
        goto out;
    }
    for (size_t off = 0; off < j->n;) {
        if (__atomic_load_n(&j->cancel, __ATOMIC_ACQUIRE)) {
            st = DS4_ERR_CANCELLED;
            snprintf(j->compute_msg, sizeof(j->compute_msg), "cancelled after %zu tokens", off);
            goto out;
        }
        size_t n = DS4_MIN((size_t)j->chunk, j->n - off);
        ds4_step_item_t it = {.seq = seq, .tokens = j->prompt + off, .n_tokens = (int32_t)n};
        st = ds4_model_step(pf->wm.model, &it, 1, NULL);
        if (st != DS4_OK) {
            snprintf(j->compute_msg, sizeof(j->compute_msg), "engine step at token %zu: %s", off,
                     ds4_status_str(st));
            goto out;
        }
        off += n;
        __atomic_store_n(&pf->progress, (uint64_t)off, __ATOMIC_RELAXED);
        if (off == j->n)
            break;
        /* Push the history rows completed so far (overlaps the next chunk's compute). */
        uint64_t want =
            sizeof(ds4_seq_state_header_t) + ds4_kv_manifest_seq_bytes(pf->wm.manifest, off);
        st = export_into(seq, &tmp, &tmp_cap, want);
        if (st != DS4_OK) {
            snprintf(j->compute_msg, sizeof(j->compute_msg), "export at %zu tokens: %s", off,
                     ds4_status_str(st));
            goto out;
        }
        uint64_t o = 0;
        for (uint32_t g = 0; g < ng && st == DS4_OK; g++) {
            const ds4_kv_group_t *grp = ds4_kv_manifest_group(pf->wm.manifest, g);
            if (grp->tokens_per_row != 0) {
                uint64_t rows = ds4_kv_group_rows(grp, off);
                st = push_rows(pf, j, g, tmp, o, final_off[g], sent[g], rows);
                sent[g] = DS4_MAX(sent[g], rows);
            }
            o += ds4_kv_group_bytes(grp, off);
        }
        if (st != DS4_OK) {
            snprintf(j->compute_msg, sizeof(j->compute_msg), "push: %s", ds4_status_str(st));
            goto out;
        }
    }
    st = export_into(seq, &tmp, &tmp_cap, j->state_len);
    if (st != DS4_OK) {
        snprintf(j->compute_msg, sizeof(j->compute_msg), "export: %s", ds4_status_str(st));
        goto out;
    }
    j->t_exported_ns = ds4_clock_now_ns();
    memcpy(j->state, tmp, sizeof(ds4_seq_state_header_t));
    for (uint32_t g = 0; g < ng && st == DS4_OK; g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(pf->wm.manifest, g);
        st = push_rows(pf, j, g, tmp, final_off[g], final_off[g], sent[g],
                       ds4_kv_group_rows(grp, j->n));
        if (st == DS4_OK)
            st = ds4_xfer_send_group_end(j->tx, g);
    }
    if (st != DS4_OK)
        snprintf(j->compute_msg, sizeof(j->compute_msg), "push: %s", ds4_status_str(st));
out:
    ds4_seq_destroy(seq);
    ds4_free(tmp);
    ds4_free(final_off);
    ds4_free(sent);
    return st;
}

static void thread_main(void *arg)
{
    prefill_t *pf = arg;
    for (;;) {
        uv_mutex_lock(&pf->mu);
        while (!pf->stop && pf->queue_head == NULL)
            uv_cond_wait(&pf->cond, &pf->mu);
        if (pf->stop && pf->queue_head == NULL) {
            uv_mutex_unlock(&pf->mu);
            break;
        }
        pjob_t *j = pf->queue_head;
        pf->queue_head = j->qnext;
        if (pf->queue_head == NULL)
            pf->queue_tail = NULL;
        __atomic_store_n(&pf->running, 1, __ATOMIC_RELEASE);
        bool stopping = pf->stop;
        uv_mutex_unlock(&pf->mu);
        if (stopping) {
            j->compute_status = DS4_ERR_SHUTDOWN;
            snprintf(j->compute_msg, sizeof(j->compute_msg), "prefill worker stopping");
        } else {
            j->compute_status = compute(pf, j);
        }
        j->t_computed_ns = ds4_clock_now_ns();
        uv_mutex_lock(&pf->mu);
        j->qnext = pf->done_list;
        pf->done_list = j;
        __atomic_store_n(&pf->running, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&pf->progress, 0, __ATOMIC_RELAXED);
        uv_mutex_unlock(&pf->mu);
        uv_async_send(&pf->async);
    }
}

/* ---- loop side ---- */

static void on_computed(uv_async_t *a)
{
    prefill_t *pf = a->data;
    uv_mutex_lock(&pf->mu);
    pjob_t *list = pf->done_list;
    pf->done_list = NULL;
    uv_mutex_unlock(&pf->mu);
    while (list != NULL) {
        pjob_t *j = list;
        list = j->qnext;
        j->computed = true;
        if (j->compute_status != DS4_OK)
            ds4_xfer_send_abort(j->tx); /* the send callback follows */
        else {
            double s = (double)(j->t_computed_ns - j->t0_ns) / 1e9;
            ds4_series_observe(pf->m_seconds, s);
            ds4_series_add(pf->m_tokens, (double)j->n);
            pf->tokens += j->n;
            if (s > 0)
                ds4_series_set(pf->m_tps, (double)j->n / s);
        }
        job_maybe_end(j);
    }
}

static void on_sent(void *arg, uint64_t request_id, ds4_status_t status, const char *msg)
{
    pjob_t *j = arg;
    j->sent_done = true;
    j->send_status = status;
    j->t_sent_ns = ds4_clock_now_ns();
    snprintf(j->send_msg, sizeof(j->send_msg), "%s", msg != NULL ? msg : "");
    job_maybe_end(j);
}

static void job_free(pjob_t *j)
{
    prefill_t *pf = j->pf;
    if (j->prev != NULL)
        j->prev->next = j->next;
    else
        pf->jobs = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    pf->n_jobs--;
    ds4_xfer_send_release(j->tx);
    ds4_free(j->state);
    ds4_free(j->prompt);
    ds4_free(j);
}

static void job_maybe_end(pjob_t *j)
{
    prefill_t *pf = j->pf;
    if (!j->computed || !j->sent_done)
        return;
    if (j->call != NULL) {
        bool cancelled = __atomic_load_n(&j->cancel, __ATOMIC_ACQUIRE);
        if (j->compute_status == DS4_OK && j->send_status == DS4_OK) {
            Ds4__Worker__V1__PrefillResponse resp = DS4__WORKER__V1__PREFILL_RESPONSE__INIT;
            resp.n_tokens = (uint32_t)j->n;
            resp.bytes_sent = j->state_len - sizeof(ds4_seq_state_header_t);
            resp.compute_ms = (double)(j->t_exported_ns - j->t0_ns) / 1e6;
            /* from the end of compute (export) to the decode side's verification */
            resp.transfer_ms = ((double)j->t_sent_ns - (double)j->t_exported_ns) / 1e6;
            ds4_series_add(pf->m_bytes, (double)resp.bytes_sent);
            ds4_series_observe(pf->m_xfer_seconds, resp.transfer_ms / 1e3);
            pf->done++;
            ds4_rpc_call_reply(j->call, &resp.base);
        } else {
            ds4_status_t st = j->compute_status != DS4_OK ? j->compute_status : j->send_status;
            const char *msg = j->compute_status != DS4_OK ? j->compute_msg : j->send_msg;
            const char *ek[] = {cancelled                     ? "cancelled"
                                : j->compute_status != DS4_OK ? "compute"
                                                              : "kv_transfer"};
            ds4_series_add(ds4_metric_series(pf->m_errors, ek), 1);
            pf->failed++;
            ds4_rpc_call_finish(
                j->call, cancelled ? DS4_RPC_CANCELLED : ds4_rpc_code_from_status(st),
                "prefill of request %" PRIu64 " failed: %s: %s", j->id, ds4_status_str(st), msg);
        }
        j->call = NULL;
    }
    job_free(j);
}

static void job_cancel(pjob_t *j)
{
    __atomic_store_n(&j->cancel, 1, __ATOMIC_RELEASE);
    ds4_xfer_send_abort(j->tx);
}

static void on_call_cancel(ds4_rpc_call_h call, void *arg)
{
    job_cancel(arg);
}

static void rpc_prefill(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    prefill_t *pf = arg;
    const Ds4__Worker__V1__PrefillRequest *req = (const void *)request;
    if (req->proto_version != DS4__WORKER__V1__WORKER_PROTO_VERSION__WORKER_PROTO_VERSION_1) {
        ds4_rpc_call_finish(call, DS4_RPC_FAILED_PRECONDITION, "proto_version: want 1, got %u",
                            req->proto_version);
        return;
    }
    if (pf->draining) {
        ds4_rpc_call_finish(call, DS4_RPC_UNAVAILABLE, "prefill worker %s is draining",
                            pf->opt.worker_id);
        return;
    }
    size_t n = req->n_tokens;
    if (n == 0 || req->prompt == NULL || req->prompt->n_ids < n) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT,
                            "n_tokens: must be in [1, prompt length %zu], got %zu",
                            req->prompt != NULL ? req->prompt->n_ids : (size_t)0, n);
        return;
    }
    if (n > pf->opt.max_context) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT,
                            "n_tokens: %zu exceeds the context length %u", n, pf->opt.max_context);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (req->prompt->ids[i] >= (uint32_t)pf->wm.cfg->vocab_size) {
            ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT,
                                "prompt.ids: id %u at [%zu] outside the vocabulary of %d",
                                req->prompt->ids[i], i, pf->wm.cfg->vocab_size);
            return;
        }
    if (req->kv_target.len == 0) {
        ds4_rpc_call_finish(call, DS4_RPC_INVALID_ARGUMENT, "kv_target: required");
        return;
    }
    for (pjob_t *o = pf->jobs; o != NULL; o = o->next)
        if (o->id == req->request_id) {
            ds4_rpc_call_finish(call, DS4_RPC_ALREADY_EXISTS, "request_id %" PRIu64 " is live",
                                req->request_id);
            return;
        }
    if (pf->n_jobs >= pf->opt.max_queue) {
        ds4_rpc_call_finish(call, DS4_RPC_RESOURCE_EXHAUSTED, "prefill queue full (%u)",
                            pf->opt.max_queue);
        return;
    }
    pjob_t *j = ds4_calloc(1, sizeof(*j));
    int32_t *prompt = ds4_malloc_array(n, sizeof(*prompt));
    if (j == NULL || prompt == NULL) {
        ds4_free(j);
        ds4_free(prompt);
        ds4_rpc_call_finish(call, DS4_RPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++)
        prompt[i] = (int32_t)req->prompt->ids[i];
    j->pf = pf;
    j->id = req->request_id;
    j->prompt = prompt;
    j->n = n;
    j->chunk = req->chunk_tokens != 0 ? req->chunk_tokens : pf->opt.chunk_tokens;
    j->t0_ns = ds4_clock_now_ns();
    uint32_t deadline = req->deadline_ms != 0 ? req->deadline_ms : 600000;
    ds4_status_t st = ds4_xfer_send_start(pf->xfer, req->kv_target.data, req->kv_target.len,
                                          deadline, on_sent, j, &j->tx);
    if (st != DS4_OK) {
        ds4_free(prompt);
        ds4_free(j);
        const char *ek[] = {"kv_target"};
        ds4_series_add(ds4_metric_series(pf->m_errors, ek), 1);
        ds4_rpc_call_finish(
            call, st == DS4_ERR_PARSE ? DS4_RPC_INVALID_ARGUMENT : ds4_rpc_code_from_status(st),
            "kv_target: %s", ds4_status_str(st));
        return;
    }
    j->call = call;
    j->next = pf->jobs;
    if (pf->jobs != NULL)
        pf->jobs->prev = j;
    pf->jobs = j;
    pf->n_jobs++;
    ds4_rpc_call_on_cancel(call, on_call_cancel, j);
    uv_mutex_lock(&pf->mu);
    if (pf->queue_tail != NULL)
        pf->queue_tail->qnext = j;
    else
        pf->queue_head = j;
    pf->queue_tail = j;
    uv_cond_signal(&pf->cond);
    uv_mutex_unlock(&pf->mu);
}

static void rpc_release(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    prefill_t *pf = arg;
    const Ds4__Worker__V1__ReleaseRequest *req = (const void *)request;
    Ds4__Worker__V1__ReleaseResponse resp = DS4__WORKER__V1__RELEASE_RESPONSE__INIT;
    for (pjob_t *j = pf->jobs; j != NULL; j = j->next)
        if (j->id == req->request_id) {
            resp.found = 1;
            job_cancel(j);
            break;
        }
    ds4_rpc_call_reply(call, &resp.base);
}

/* The router link's load callback (load: a Ds4__Worker__V1__Load). */
static void fill_load(void *arg, void *out)
{
    prefill_t *pf = arg;
    Ds4__Worker__V1__Load *load = out;
    uint32_t running = (uint32_t)__atomic_load_n(&pf->running, __ATOMIC_ACQUIRE);
    load->running = running;
    load->queued = pf->n_jobs > running ? (uint32_t)(pf->n_jobs - running) : 0;
    uint64_t queued_tokens = 0;
    for (pjob_t *j = pf->jobs; j != NULL; j = j->next)
        if (!j->computed)
            queued_tokens += j->n;
    load->queued_tokens = queued_tokens;
    load->draining = pf->draining;
}

static void rpc_stats(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    prefill_t *pf = arg;
    ds4_router_link_reply_stats(pf->link, call, pf->done, pf->failed, pf->tokens);
}

static void rpc_reserve(ds4_rpc_call_h call, const ProtobufCMessage *request, void *arg)
{
    ds4_rpc_call_finish(call, DS4_RPC_UNIMPLEMENTED, "this is a prefill worker");
}

static void hook_drain(void *arg)
{
    prefill_t *pf = arg;
    pf->draining = true;
    ds4_router_link_poke(pf->link);
}

static size_t hook_in_flight(void *arg)
{
    prefill_t *pf = arg;
    return pf->n_jobs;
}

static void stop_thread(prefill_t *pf)
{
    uv_mutex_lock(&pf->mu);
    pf->stop = true;
    for (pjob_t *j = pf->queue_head; j != NULL; j = j->qnext)
        __atomic_store_n(&j->cancel, 1, __ATOMIC_RELEASE);
    uv_cond_signal(&pf->cond);
    uv_mutex_unlock(&pf->mu);
    uv_thread_join(&pf->thread);
}

static void hook_stop(void *arg)
{
    prefill_t *pf = arg;
    for (pjob_t *j = pf->jobs; j != NULL; j = j->next)
        job_cancel(j);
    stop_thread(pf);
    on_computed(&pf->async);
    /* Destroying the transfer engine fires every send callback (SHUTDOWN), ending the jobs. */
    ds4_xfer_destroy(pf->xfer);
    pf->xfer = NULL;
    uv_close((uv_handle_t *)&pf->async, NULL);
    ds4_router_link_destroy(pf->link);
    pf->link = NULL;
}

static bool hook_ready(void *arg, char *why, size_t n)
{
    prefill_t *pf = arg;
    if (!ds4_router_link_registered(pf->link)) {
        snprintf(why, n, "not registered with router %s", pf->opt.router);
        return false;
    }
    return true;
}

static void hook_metrics(void *arg)
{
    prefill_t *pf = arg;
    Ds4__Worker__V1__Load load = DS4__WORKER__V1__LOAD__INIT;
    fill_load(pf, &load);
    ds4_series_set(pf->m_running, load.running);
    ds4_series_set(pf->m_queue, load.queued);
    uint64_t held = 0;
    for (pjob_t *j = pf->jobs; j != NULL; j = j->next)
        held += j->state != NULL ? j->state_len : 0;
    ds4_series_set(pf->m_seqs, (double)pf->n_jobs);
    ds4_series_set(pf->m_bytes_held, (double)held);
    ds4_series_set(pf->m_progress, (double)__atomic_load_n(&pf->progress, __ATOMIC_RELAXED));
}

static void make_metrics(prefill_t *pf)
{
    ds4_metrics_h m = ds4_daemon_metrics(pf->daemon);
    const double *lb = ds4_metrics_latency_buckets;
    size_t nlb = ds4_metrics_n_latency_buckets;
    pf->m_running = ds4_metric_default(
        ds4_metrics_gauge(m, "ds4_running_requests", "Prefills computing.", NULL));
    pf->m_queue = ds4_metric_default(
        ds4_metrics_gauge(m, "ds4_queue_depth", "Prefills waiting for compute.", NULL));
    pf->m_tokens = ds4_metric_default(
        ds4_metrics_counter(m, "ds4_prefill_tokens_total", "Prompt tokens prefilled.", NULL));
    pf->m_seconds = ds4_metric_default(
        ds4_metrics_histogram(m, "ds4_prefill_seconds", "Arrival to computed KV.", NULL, lb, nlb));
    pf->m_tps = ds4_metric_default(ds4_metrics_gauge(m, "ds4_prefill_tokens_per_second",
                                                     "Throughput of the last prefill.", NULL));
    pf->m_bytes = ds4_metric_default(ds4_metrics_counter(m, "ds4_kv_transfer_bytes_total",
                                                         "KV bytes pushed and verified.", NULL));
    pf->m_xfer_seconds = ds4_metric_default(ds4_metrics_histogram(
        m, "ds4_kv_transfer_seconds", "Computed KV to verified at decode.", NULL, lb, nlb));
    pf->m_seqs = ds4_metric_default(ds4_metrics_gauge(
        m, "ds4_kv_sequences", "Prefill sequences holding KV (computing or sending).", NULL));
    pf->m_bytes_held = ds4_metric_default(ds4_metrics_gauge(
        m, "ds4_kv_bytes_held", "Exported KV bytes held until the decode side verifies.", NULL));
    pf->m_progress = ds4_metric_default(ds4_metrics_gauge(
        m, "ds4_prefill_progress_tokens", "Prompt tokens computed of the running prefill.", NULL));
    pf->m_errors = ds4_metrics_counter(m, "ds4_errors_total", "Errors by kind.", "kind");
}

int main(int argc, char **argv)
{
    prefill_t pf;
    memset(&pf, 0, sizeof(pf));
    pf.opt = (prefill_opts_t){
        .grpc_listen = "127.0.0.1:0",
        .http_listen = "127.0.0.1:0",
        .router = "127.0.0.1:7000",
        .worker_id = "prefill-0",
        .model_name = "ds4-tiny",
        .log_level = "info",
        .chunk_tokens = 512,
        .drain_timeout_ms = 30000,
        /* a loaded host can take seconds to set up a link; 1 MiB measures bandwidth well
         * enough and keeps the first transfer short */
        .xfer_connect_timeout_ms = 20000,
        .xfer_preflight_bytes = 1u << 20,
        .max_queue = 256,
    };
    const ds4_opt_t opts[] = {
        {"grpc-listen", DS4_OPT_STR, &pf.opt.grpc_listen, "gRPC address of the Worker service"},
        {"http-listen", DS4_OPT_STR, &pf.opt.http_listen, "HTTP address (/health /ready /metrics)"},
        {"advertise", DS4_OPT_STR, &pf.opt.advertise,
         "host:port the router dials (default: grpc-listen with the bound port)"},
        {"ports-file", DS4_OPT_STR, &pf.opt.ports_file, "write the bound ports here (JSON)"},
        {"router", DS4_OPT_STR, &pf.opt.router, "router gRPC address"},
        {"worker-id", DS4_OPT_STR, &pf.opt.worker_id, "name, unique in the cluster"},
        {"model", DS4_OPT_STR, &pf.opt.model, "checkpoint directory (required)"},
        {"model-name", DS4_OPT_STR, &pf.opt.model_name, "model name the router serves"},
        {"log-level", DS4_OPT_STR, &pf.opt.log_level, "error|warn|info|debug"},
        {"chunk-tokens", DS4_OPT_U32, &pf.opt.chunk_tokens, "prefill chunk size in tokens"},
        {"threads", DS4_OPT_U32, &pf.opt.threads, "engine threads (0: all cores)"},
        {"max-context", DS4_OPT_U32, &pf.opt.max_context,
         "longest prompt (0: the model's max_position_embeddings)"},
        {"max-queue", DS4_OPT_U32, &pf.opt.max_queue, "prefills admitted at once"},
        {"drain-timeout-ms", DS4_OPT_U32, &pf.opt.drain_timeout_ms,
         "SIGTERM: wait this long for prefills to finish"},
        {"refuse-tcp-only", DS4_OPT_BOOL, &pf.opt.refuse_tcp_only,
         "refuse KV pushes over TCP-only links"},
        {"xfer-connect-timeout-ms", DS4_OPT_U32, &pf.opt.xfer_connect_timeout_ms,
         "KV link connect + handshake + preflight bound"},
        {"xfer-preflight-bytes", DS4_OPT_U32, &pf.opt.xfer_preflight_bytes,
         "bytes put to measure a new KV link's bandwidth"},
    };
    ds4_opts_state_t os;
    int rc = ds4_opts_start("ds4-prefill", opts, DS4_ARRAY_LEN(opts), argc, argv,
                            &pf.opt.log_level, &os);
    if (rc >= 0)
        return rc;
    rc = 2;
    if (pf.opt.model == NULL || pf.opt.chunk_tokens == 0 || pf.opt.max_queue == 0) {
        ds4_log_error("ds4-prefill: --model DIR is required; --chunk-tokens, --max-queue >= 1");
        goto out_opts;
    }
    rc = 1;
    if (ds4_worker_model_open("ds4-prefill", pf.opt.model, pf.opt.threads, &pf.opt.max_context,
                              &pf.wm) != DS4_OK)
        goto out_opts;

    ds4_daemon_params_t dp = ds4_daemon_params_default();
    dp.name = "ds4-prefill";
    dp.grpc_listen = pf.opt.grpc_listen;
    dp.http_listen = pf.opt.http_listen;
    dp.ports_file = pf.opt.ports_file;
    dp.drain_timeout_ms = pf.opt.drain_timeout_ms;
    dp.hooks = (ds4_daemon_hooks_t){
        .arg = &pf,
        .drain = hook_drain,
        .in_flight = hook_in_flight,
        .stop = hook_stop,
        .ready = hook_ready,
        .metrics_update = hook_metrics,
    };
    if (ds4_daemon_create(&dp, &pf.daemon) != DS4_OK) {
        ds4_log_error("ds4-prefill: cannot listen on %s", pf.opt.grpc_listen);
        goto out_model;
    }
    make_metrics(&pf);
    const ds4_rpc_method_t methods[] = {
        {"/ds4.worker.v1.Worker/Prefill", &ds4__worker__v1__prefill_request__descriptor,
         rpc_prefill, &pf},
        {"/ds4.worker.v1.Worker/Release", &ds4__worker__v1__release_request__descriptor,
         rpc_release, &pf},
        {"/ds4.worker.v1.Worker/Stats", &ds4__worker__v1__stats_request__descriptor, rpc_stats,
         &pf},
        {"/ds4.worker.v1.Worker/Reserve", &ds4__worker__v1__reserve_request__descriptor,
         rpc_reserve, &pf},
    };
    for (size_t i = 0; i < DS4_ARRAY_LEN(methods); i++)
        if (ds4_rpc_server_add_method(ds4_daemon_rpc_server(pf.daemon), &methods[i]) != DS4_OK)
            goto out_daemon;
    ds4_xfer_params_t xp = ds4_xfer_params_default();
    xp.manifest = pf.wm.manifest;
    xp.refuse_tcp_only = pf.opt.refuse_tcp_only;
    xp.connect_timeout_ms = pf.opt.xfer_connect_timeout_ms;
    xp.preflight_bytes = pf.opt.xfer_preflight_bytes;
    if (ds4_xfer_create(ds4_daemon_loop(pf.daemon), &xp, &pf.xfer) != DS4_OK) {
        ds4_log_error("ds4-prefill: cannot start the KV transfer engine");
        goto out_daemon;
    }
    uv_mutex_init(&pf.mu);
    uv_cond_init(&pf.cond);
    uv_async_init(ds4_daemon_loop(pf.daemon), &pf.async, on_computed);
    pf.async.data = &pf;
    if (uv_thread_create(&pf.thread, thread_main, &pf) != 0) {
        uv_close((uv_handle_t *)&pf.async, NULL);
        goto out_xfer;
    }

    if (ds4_daemon_start(pf.daemon) != DS4_OK)
        goto out_thread;
    ds4_router_link_params_t lp = ds4_router_link_params_default();
    lp.router_addr = pf.opt.router;
    lp.role = DS4__WORKER__V1__WORKER_ROLE__WORKER_ROLE_PREFILL;
    lp.worker_id = pf.opt.worker_id;
    lp.rpc_address = pf.opt.advertise; /* NULL: grpc-listen with the bound port */
    lp.model = pf.opt.model_name;
    lp.max_sequences = 1;
    lp.max_context = pf.opt.max_context;
    lp.vocab_size = (uint32_t)pf.wm.cfg->vocab_size;
    lp.manifest_digest = pf.wm.digest;
    lp.manifest_digest_len = sizeof(pf.wm.digest);
    lp.load_cb = fill_load;
    lp.arg = &pf;
    if (ds4_router_link_create(pf.daemon, &lp, &pf.link) != DS4_OK)
        goto out_thread;
    rc = ds4_daemon_run(pf.daemon);
    goto out_daemon;
out_thread:
    stop_thread(&pf);
    uv_close((uv_handle_t *)&pf.async, NULL);
out_xfer:
    ds4_xfer_destroy(pf.xfer);
out_daemon:
    ds4_daemon_destroy(pf.daemon);
out_model:
    ds4_worker_model_close(&pf.wm);
out_opts:
    ds4_opts_free(&os);
    return rc;
}
