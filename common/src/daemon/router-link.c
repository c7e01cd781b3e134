/* A worker's registration and heartbeats with its router. */
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/daemon.h"
#include "ds4/log.h"
#include "ds4_worker.pb-c.h"

struct ds4_router_link {
    ds4_daemon_h daemon;
    ds4_router_link_params_t p;
    char *router_addr, *worker_id, *rpc_address, *http_address, *model;
    uint8_t *digest;
    ds4_rpc_channel_h ch;
    uv_timer_t timer;
    ds4_rpc_client_call_h call; /* the register or heartbeat in flight */
    bool registered, closing;
    uint32_t interval_ms, registrations;
    bool logged_failure;
};

ds4_router_link_params_t ds4_router_link_params_default(void)
{
    ds4_router_link_params_t p = {.retry_ms = 200};
    return p;
}

static void link_tick(uv_timer_t *t);

static void link_free(uv_handle_t *h)
{
    ds4_router_link_h l = h->data;
    ds4_free(l->router_addr);
    ds4_free(l->worker_id);
    ds4_free(l->rpc_address);
    ds4_free(l->http_address);
    ds4_free(l->model);
    ds4_free(l->digest);
    ds4_free(l);
}

static void schedule(ds4_router_link_h l, uint32_t ms)
{
    if (!l->closing)
        uv_timer_start(&l->timer, link_tick, ms, 0);
}

static void fill_load(ds4_router_link_h l, Ds4__Worker__V1__Load *load)
{
    if (l->p.load_cb != NULL)
        l->p.load_cb(l->p.arg, load);
    load->draining = load->draining || ds4_daemon_draining(l->daemon);
}

static void fill_info(ds4_router_link_h l, Ds4__Worker__V1__WorkerInfo *info)
{
    info->role = (Ds4__Worker__V1__WorkerRole)l->p.role;
    info->worker_id = l->worker_id;
    info->incarnation = ds4_daemon_incarnation(l->daemon);
    info->rpc_address = l->rpc_address;
    info->http_address = l->http_address;
    info->model = l->model;
    info->kv_manifest_digest.data = l->digest;
    info->kv_manifest_digest.len = l->p.manifest_digest_len;
    info->max_sequences = l->p.max_sequences;
    info->kv_blocks_total = l->p.kv_blocks_total;
    info->max_context = l->p.max_context;
    info->vocab_size = l->p.vocab_size;
}

void ds4_router_link_reply_stats(ds4_router_link_h l, ds4_rpc_call_h call,
                                 uint64_t requests_done, uint64_t requests_failed,
                                 uint64_t tokens_processed)
{
    Ds4__Worker__V1__StatsResponse resp = DS4__WORKER__V1__STATS_RESPONSE__INIT;
    Ds4__Worker__V1__WorkerInfo info = DS4__WORKER__V1__WORKER_INFO__INIT;
    Ds4__Worker__V1__Load load = DS4__WORKER__V1__LOAD__INIT;
    fill_info(l, &info);
    fill_load(l, &load);
    resp.info = &info;
    resp.load = &load;
    resp.requests_done = requests_done;
    resp.requests_failed = requests_failed;
    resp.tokens_processed = tokens_processed;
    ds4_rpc_call_reply(call, &resp.base);
}

static void register_msg(ds4_router_link_h l, ProtobufCMessage *msg, void *arg)
{
    Ds4__Worker__V1__RegisterResponse *r = (void *)msg;
    l->interval_ms = r->heartbeat_interval_ms != 0 ? r->heartbeat_interval_ms : 500;
}

static void on_message(ds4_rpc_client_call_h call, ProtobufCMessage *msg, void *arg)
{
    ds4_router_link_h l = arg;
    if (msg->descriptor == &ds4__worker__v1__register_response__descriptor) {
        register_msg(l, msg, arg);
        l->registered = true;
        l->registrations++;
        l->logged_failure = false;
        ds4_log_info("router-link: registered worker %s with router %s (heartbeat %u ms)",
                     l->worker_id, l->router_addr, l->interval_ms);
    } else {
        Ds4__Worker__V1__HeartbeatResponse *h = (void *)msg;
        if (!h->known) {
            ds4_log_warn("router-link: router %s does not know worker %s, registering again",
                         l->router_addr, l->worker_id);
            l->registered = false;
        }
    }
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void on_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *message, void *arg)
{
    ds4_router_link_h l = arg;
    l->call = NULL;
    if (l->closing) {
        uv_close((uv_handle_t *)&l->timer, link_free);
        return;
    }
    if (code != DS4_RPC_OK) {
        if (!l->logged_failure)
            ds4_log_warn("router-link: router %s: %s %s", l->router_addr, ds4_rpc_code_name(code),
                         message);
        l->logged_failure = true;
        if (code == DS4_RPC_FAILED_PRECONDITION || code == DS4_RPC_INVALID_ARGUMENT)
            l->registered = false;
        schedule(l, l->registered ? l->interval_ms : l->p.retry_ms);
        return;
    }
    schedule(l, l->registered ? l->interval_ms : 0);
}

static void link_tick(uv_timer_t *t)
{
    ds4_router_link_h l = t->data;
    if (l->closing || l->call != NULL)
        return;
    Ds4__Worker__V1__Load load = DS4__WORKER__V1__LOAD__INIT;
    fill_load(l, &load);
    ds4_rpc_call_params_t cp = {
        .timeout_ms = 2000,
        .on_message = on_message,
        .on_done = on_done,
        .arg = l,
    };
    Ds4__Worker__V1__RegisterRequest reg = DS4__WORKER__V1__REGISTER_REQUEST__INIT;
    Ds4__Worker__V1__WorkerInfo info = DS4__WORKER__V1__WORKER_INFO__INIT;
    Ds4__Worker__V1__HeartbeatRequest hb = DS4__WORKER__V1__HEARTBEAT_REQUEST__INIT;
    if (!l->registered) {
        fill_info(l, &info);
        reg.proto_version = DS4__WORKER__V1__WORKER_PROTO_VERSION__WORKER_PROTO_VERSION_1;
        reg.info = &info;
        reg.load = &load;
        cp.method = "/ds4.worker.v1.Router/RegisterWorker";
        cp.request = &reg.base;
        cp.response_type = &ds4__worker__v1__register_response__descriptor;
    } else {
        hb.proto_version = DS4__WORKER__V1__WORKER_PROTO_VERSION__WORKER_PROTO_VERSION_1;
        hb.worker_id = l->worker_id;
        hb.incarnation = ds4_daemon_incarnation(l->daemon);
        hb.load = &load;
        cp.method = "/ds4.worker.v1.Router/Heartbeat";
        cp.request = &hb.base;
        cp.response_type = &ds4__worker__v1__heartbeat_response__descriptor;
    }
    if (ds4_rpc_channel_call(l->ch, &cp, &l->call) != DS4_OK) {
        l->call = NULL;
        schedule(l, l->p.retry_ms);
    }
}

ds4_status_t ds4_router_link_create(ds4_daemon_h d, const ds4_router_link_params_t *p,
                                    ds4_router_link_h *out)
{
    if (d == NULL || p == NULL || p->router_addr == NULL || p->worker_id == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    char rpc_addr[300], http_addr[300];
    if (!ds4_daemon_address(d, true, rpc_addr, sizeof(rpc_addr)) ||
        !ds4_daemon_address(d, false, http_addr, sizeof(http_addr))) {
        ds4_log_error("router link: the daemon's listen addresses are not host:port");
        return DS4_ERR_INVALID_ARG;
    }
    ds4_router_link_h l = ds4_calloc(1, sizeof(*l));
    if (l == NULL)
        return DS4_ERR_NO_MEMORY;
    l->daemon = d;
    l->p = *p;
    if (l->p.retry_ms == 0)
        l->p.retry_ms = 200;
    l->router_addr = ds4_strdup(p->router_addr);
    l->worker_id = ds4_strdup(p->worker_id);
    l->rpc_address = ds4_strdup(p->rpc_address != NULL ? p->rpc_address : rpc_addr);
    l->http_address = ds4_strdup(p->http_address != NULL ? p->http_address : http_addr);
    l->model = ds4_strdup(p->model != NULL ? p->model : "");
    l->digest = ds4_malloc(p->manifest_digest_len + 1);
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    if (l->router_addr == NULL || l->worker_id == NULL || l->rpc_address == NULL ||
        l->http_address == NULL || l->model == NULL || l->digest == NULL)
        goto fail;
    if (p->manifest_digest_len > 0)
        memcpy(l->digest, p->manifest_digest, p->manifest_digest_len);
    ds4_rpc_channel_params_t cp = ds4_rpc_channel_params_default();
    cp.target = l->router_addr;
    st = ds4_rpc_channel_create(ds4_daemon_rpc_ctx(d), &cp, &l->ch);
    if (st != DS4_OK)
        goto fail;
    l->interval_ms = 500;
    uv_timer_init(ds4_daemon_loop(d), &l->timer);
    l->timer.data = l;
    schedule(l, 0);
    *out = l;
    return DS4_OK;
fail:
    ds4_free(l->router_addr);
    ds4_free(l->worker_id);
    ds4_free(l->rpc_address);
    ds4_free(l->http_address);
    ds4_free(l->model);
    ds4_free(l->digest);
    ds4_free(l);
    return st;
}

bool ds4_router_link_registered(ds4_router_link_h l)
{
    return l->registered;
}

uint32_t ds4_router_link_registrations(ds4_router_link_h l)
{
    return l->registrations;
}

void ds4_router_link_poke(ds4_router_link_h l)
{
    if (l->call == NULL && !l->closing)
        schedule(l, 0);
}

void ds4_router_link_destroy(ds4_router_link_h l)
{
    if (l == NULL)
        return;
    l->closing = true;
    uv_timer_stop(&l->timer);
    /* Cancels the call in flight; the link is freed after its on_done (which still runs). */
    bool in_flight = l->call != NULL;
    ds4_rpc_channel_destroy(l->ch);
    if (!in_flight)
        uv_close((uv_handle_t *)&l->timer, link_free);
}
