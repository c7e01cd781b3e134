/* The shared daemon frame: loop, gRPC server, admin HTTP, signals and drain. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/daemon.h"
#include "ds4/json.h"
#include "ds4/log.h"

typedef enum { ST_CREATED, ST_RUNNING, ST_DRAINING, ST_STOPPING, ST_STOPPED } daemon_state_t;

struct ds4_daemon {
    ds4_daemon_params_t params;
    char *name, *grpc_listen, *http_listen, *ports_file;
    uv_loop_t loop;
    ds4_rpc_ctx_h rpc;
    ds4_rpc_server_h server;
    ds4_http_server_h http;
    ds4_metrics_h metrics;
    uint64_t incarnation;
    int grpc_port, http_port;
    daemon_state_t state;
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    uint64_t drain_started_ms;
    bool handles_open;
    ds4_series_h m_up, m_draining, m_rss, m_peak_rss, m_start, m_http;
    int exit_code;
};

uint64_t ds4_random_u64(void)
{
    uint64_t v = 0;
    while (v == 0) {
        if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
            v = ds4_clock_now_ns() ^ ((uint64_t)getpid() << 32);
    }
    return v;
}

bool ds4_split_host_port(const char *addr, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || (size_t)(colon - addr) >= cap)
        return false;
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || p < 0 || p > 65535)
        return false;
    const char *h = addr;
    size_t n = (size_t)(colon - addr);
    if (h[0] == '[' && n >= 2 && h[n - 1] == ']') { /* [::1]:80 */
        h++;
        n -= 2;
    }
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (int)p;
    return true;
}

bool ds4_daemon_address(ds4_daemon_h d, bool grpc, char *out, size_t cap)
{
    char host[256];
    int port = 0;
    if (!ds4_split_host_port(grpc ? d->grpc_listen : d->http_listen, host, sizeof(host), &port))
        return false;
    const char *h = strcmp(host, "0.0.0.0") == 0 || strcmp(host, "[::]") == 0 ? "127.0.0.1" : host;
    int n = snprintf(out, cap, "%s:%d", h, grpc ? ds4_daemon_grpc_port(d) : ds4_daemon_http_port(d));
    return n > 0 && (size_t)n < cap;
}

ds4_daemon_params_t ds4_daemon_params_default(void)
{
    ds4_daemon_params_t p = {
        .name = "ds4",
        .grpc_listen = "127.0.0.1:0",
        .http_listen = "127.0.0.1:0",
        .ports_file = NULL,
        .drain_timeout_ms = 30000,
    };
    return p;
}

ds4_status_t ds4_daemon_create(const ds4_daemon_params_t *params, ds4_daemon_h *out)
{
    if (params == NULL || out == NULL || params->name == NULL || params->grpc_listen == NULL ||
        params->http_listen == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    ds4_daemon_h d = ds4_calloc(1, sizeof(*d));
    if (d == NULL)
        return DS4_ERR_NO_MEMORY;
    d->params = *params;
    d->name = ds4_strdup(params->name);
    d->grpc_listen = ds4_strdup(params->grpc_listen);
    d->http_listen = ds4_strdup(params->http_listen);
    d->ports_file = params->ports_file != NULL ? ds4_strdup(params->ports_file) : NULL;
    if (d->name == NULL || d->grpc_listen == NULL || d->http_listen == NULL ||
        (params->ports_file != NULL && d->ports_file == NULL))
        goto fail_strings;
    d->incarnation = ds4_random_u64();
    if (uv_loop_init(&d->loop) != 0) {
        st = DS4_ERR_INTERNAL;
        goto fail_strings;
    }
    st = ds4_metrics_create(&d->metrics);
    if (st != DS4_OK)
        goto fail_loop;
    st = ds4_rpc_ctx_create(&d->loop, &d->rpc);
    if (st != DS4_OK)
        goto fail_metrics;
    ds4_rpc_server_params_t sp = ds4_rpc_server_params_default();
    sp.address = d->grpc_listen;
    st = ds4_rpc_server_create(d->rpc, &sp, &d->server);
    if (st != DS4_OK)
        goto fail_rpc;
    st = ds4_rpc_server_add_health(d->server);
    if (st != DS4_OK)
        goto fail_server;
    ds4_rpc_server_set_serving(d->server, false);
    d->grpc_port = ds4_rpc_server_port(d->server);

    const char *role[] = {d->name};
    d->m_up = ds4_metric_series(
        ds4_metrics_gauge(d->metrics, "ds4_up", "1 while the process runs.", "daemon"), role);
    d->m_draining = ds4_metric_default(
        ds4_metrics_gauge(d->metrics, "ds4_draining", "1 while draining after SIGTERM.", NULL));
    d->m_rss = ds4_metric_default(ds4_metrics_gauge(d->metrics, "ds4_process_resident_memory_bytes",
                                                    "Resident set size.", NULL));
    d->m_peak_rss = ds4_metric_default(ds4_metrics_gauge(
        d->metrics, "ds4_process_peak_resident_memory_bytes", "Peak resident set size.", NULL));
    d->m_start = ds4_metric_default(ds4_metrics_gauge(d->metrics, "ds4_process_incarnation_low32",
                                                      "Low 32 bits of the incarnation.", NULL));
    d->m_http = ds4_metric_default(ds4_metrics_counter(d->metrics, "ds4_http_requests_total",
                                                       "Admin/API HTTP requests.", NULL));
    ds4_series_set(d->m_up, 1);
    ds4_series_set(d->m_start, (double)(d->incarnation & 0xffffffffu));
    d->state = ST_CREATED;
    *out = d;
    return DS4_OK;

fail_server:
    ds4_rpc_server_destroy(d->server);
fail_rpc:
    ds4_rpc_ctx_destroy(d->rpc);
    uv_run(&d->loop, UV_RUN_DEFAULT);
fail_metrics:
    ds4_metrics_destroy(d->metrics);
fail_loop:
    uv_loop_close(&d->loop);
fail_strings:
    ds4_free(d->name);
    ds4_free(d->grpc_listen);
    ds4_free(d->http_listen);
    ds4_free(d->ports_file);
    ds4_free(d);
    return st;
}

uv_loop_t *ds4_daemon_loop(ds4_daemon_h d)
{
    return &d->loop;
}
ds4_rpc_ctx_h ds4_daemon_rpc_ctx(ds4_daemon_h d)
{
    return d->rpc;
}
ds4_rpc_server_h ds4_daemon_rpc_server(ds4_daemon_h d)
{
    return d->server;
}
ds4_metrics_h ds4_daemon_metrics(ds4_daemon_h d)
{
    return d->metrics;
}
uint64_t ds4_daemon_incarnation(ds4_daemon_h d)
{
    return d->incarnation;
}
int ds4_daemon_grpc_port(ds4_daemon_h d)
{
    return d->grpc_port;
}
int ds4_daemon_http_port(ds4_daemon_h d)
{
    return d->http_port;
}
bool ds4_daemon_draining(ds4_daemon_h d)
{
    return d->state >= ST_DRAINING;
}

static bool app_ready(ds4_daemon_h d, char *why, size_t n)
{
    if (d->state != ST_RUNNING) {
        snprintf(why, n, "%s", d->state == ST_CREATED ? "starting" : "draining");
        return false;
    }
    if (d->params.hooks.ready != NULL)
        return d->params.hooks.ready(d->params.hooks.arg, why, n);
    return true;
}

static void update_process_metrics(ds4_daemon_h d)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &pages, &resident) == 2)
            ds4_series_set(d->m_rss, (double)resident * (double)sysconf(_SC_PAGESIZE));
        fclose(f);
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        ds4_series_set(d->m_peak_rss, (double)ru.ru_maxrss * 1024.0);
}

static void http_handler(ds4_http_exchange_h ex, const ds4_http_request_t *req, void *arg)
{
    ds4_daemon_h d = arg;
    ds4_series_add(d->m_http, 1);
    bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    if (get && strcmp(req->path, "/health") == 0) {
        ds4_http_respond(ex, 200, "text/plain", "ok\n", 3);
        return;
    }
    if (get && strcmp(req->path, "/ready") == 0) {
        char why[200] = "";
        char body[256];
        if (app_ready(d, why, sizeof(why))) {
            ds4_http_respond(ex, 200, "text/plain", "ready\n", 6);
        } else {
            int n = snprintf(body, sizeof(body), "not ready: %s\n", why);
            ds4_http_respond(ex, 503, "text/plain", body, (size_t)n);
        }
        return;
    }
    if (get && strcmp(req->path, "/metrics") == 0) {
        update_process_metrics(d);
        if (d->params.hooks.metrics_update != NULL)
            d->params.hooks.metrics_update(d->params.hooks.arg);
        char *text = ds4_metrics_render(d->metrics);
        if (text == NULL) {
            ds4_http_respond(ex, 500, "text/plain", "out of memory\n", 14);
            return;
        }
        ds4_http_respond(ex, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
        ds4_free(text);
        return;
    }
    if (d->params.hooks.http != NULL) {
        d->params.hooks.http(ex, req, d->params.hooks.arg);
        return;
    }
    ds4_http_respond(ex, 404, "text/plain", "not found\n", 10);
}

int ds4_daemon_read_port(const char *ports_file, const char *key)
{
    json_t *root = NULL;
    ds4_diag_t d;
    ds4_diag_init(&d);
    int port = -1;
    if (access(ports_file, R_OK) == 0 &&
        ds4_json_load_file(ports_file, 4096, &root, &d) == DS4_OK) {
        json_t *v = json_object_get(root, key);
        if (json_is_integer(v))
            port = (int)json_integer_value(v);
        json_decref(root);
    }
    ds4_diag_free(&d);
    return port;
}

static ds4_status_t write_ports_file(ds4_daemon_h d)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%d", d->ports_file, (int)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return DS4_ERR_INVALID_ARG;
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        ds4_log_error("%s: cannot write ports file %s", d->name, tmp);
        return DS4_ERR_IO;
    }
    fprintf(f,
            "{\"grpc_port\":%d,\"http_port\":%d,\"pid\":%d,\"incarnation\":\"%016" PRIx64 "\"}\n",
            d->grpc_port, d->http_port, (int)getpid(), d->incarnation);
    if (fclose(f) != 0 || rename(tmp, d->ports_file) != 0) {
        ds4_log_error("%s: cannot write ports file %s", d->name, d->ports_file);
        unlink(tmp);
        return DS4_ERR_IO;
    }
    return DS4_OK;
}

static void begin_stop(ds4_daemon_h d);

static void on_signal(uv_signal_t *sig, int signum)
{
    ds4_daemon_h d = sig->data;
    if (d->state == ST_DRAINING) {
        ds4_log_warn("%s: second signal %d, stopping now", d->name, signum);
        begin_stop(d);
        return;
    }
    ds4_log_info("%s: signal %d, draining", d->name, signum);
    ds4_daemon_shutdown(d);
}

ds4_status_t ds4_daemon_start(ds4_daemon_h d)
{
    if (d->state != ST_CREATED)
        return DS4_ERR_INVALID_ARG;
    char host[256];
    int port = 0;
    if (!ds4_split_host_port(d->http_listen, host, sizeof(host), &port)) {
        ds4_log_error("%s: bad http address \"%s\" (want host:port)", d->name, d->http_listen);
        return DS4_ERR_INVALID_ARG;
    }
    ds4_http_server_params_t hp = ds4_http_server_params_default();
    hp.host = host;
    hp.port = port;
    ds4_status_t st = ds4_http_server_create(&d->loop, &hp, http_handler, d, &d->http);
    if (st != DS4_OK)
        return st;
    d->http_port = ds4_http_server_port(d->http);
    signal(SIGPIPE, SIG_IGN);
    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sigint);
    uv_timer_init(&d->loop, &d->drain_timer);
    d->sigterm.data = d->sigint.data = d->drain_timer.data = d;
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    d->handles_open = true;
    st = ds4_rpc_server_start(d->server, NULL);
    if (st != DS4_OK)
        return st;
    ds4_rpc_server_set_serving(d->server, true);
    d->state = ST_RUNNING;
    if (d->ports_file != NULL && (st = write_ports_file(d)) != DS4_OK)
        return st;
    ds4_log_info("%s: serving grpc port %d http port %d incarnation %016" PRIx64, d->name,
                 d->grpc_port, d->http_port, d->incarnation);
    return DS4_OK;
}

static void http_closed(void *arg)
{
    ds4_daemon_h d = arg;
    d->http = NULL;
}

/* After the app released its objects: wait for channels to finish, then close the rest. */
static void final_close(uv_timer_t *t)
{
    ds4_daemon_h d = t->data;
    if (ds4_rpc_ctx_live_objects(d->rpc) > 1) { /* the server itself is still counted */
        uv_timer_start(&d->drain_timer, final_close, 5, 0);
        return;
    }
    ds4_rpc_server_destroy(d->server);
    d->server = NULL;
    ds4_rpc_ctx_destroy(d->rpc);
    d->rpc = NULL;
    if (d->http != NULL)
        ds4_http_server_close(d->http, http_closed, d);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->drain_timer, NULL);
    d->handles_open = false;
    d->state = ST_STOPPED;
}

static void rpc_stopped(ds4_rpc_server_h server, void *arg)
{
    ds4_daemon_h d = arg;
    if (d->params.hooks.stop != NULL)
        d->params.hooks.stop(d->params.hooks.arg);
    uv_timer_stop(&d->drain_timer);
    uv_timer_start(&d->drain_timer, final_close, 0, 0);
}

static void begin_stop(ds4_daemon_h d)
{
    if (d->state >= ST_STOPPING)
        return;
    d->state = ST_STOPPING;
    uv_timer_stop(&d->drain_timer);
    ds4_log_info("%s: stopping (in flight %zu)", d->name,
                 d->params.hooks.in_flight != NULL ? d->params.hooks.in_flight(d->params.hooks.arg)
                                                   : (size_t)0);
    /* Calls still open get 100 ms to finish their last writes, then are cancelled. */
    ds4_rpc_server_shutdown(d->server, 100, rpc_stopped, d);
}

static void drain_poll(uv_timer_t *t)
{
    ds4_daemon_h d = t->data;
    size_t n =
        d->params.hooks.in_flight != NULL ? d->params.hooks.in_flight(d->params.hooks.arg) : 0;
    uint64_t waited = ds4_clock_now_ms() - d->drain_started_ms;
    if (n == 0 || waited >= d->params.drain_timeout_ms) {
        if (n != 0)
            ds4_log_warn("%s: drain timeout after %" PRIu64 " ms, %zu requests cut", d->name,
                         waited, n);
        begin_stop(d);
        return;
    }
    uv_timer_start(&d->drain_timer, drain_poll, 20, 0);
}

void ds4_daemon_shutdown(ds4_daemon_h d)
{
    if (d->state != ST_RUNNING)
        return;
    d->state = ST_DRAINING;
    d->drain_started_ms = ds4_clock_now_ms();
    ds4_series_set(d->m_draining, 1);
    ds4_rpc_server_set_serving(d->server, false);
    if (d->params.hooks.drain != NULL)
        d->params.hooks.drain(d->params.hooks.arg);
    uv_timer_start(&d->drain_timer, drain_poll, 0, 0);
}

int ds4_daemon_run(ds4_daemon_h d)
{
    uv_run(&d->loop, UV_RUN_DEFAULT);
    return d->state == ST_STOPPED ? d->exit_code : 1;
}

static void flag_set(ds4_rpc_server_h server, void *arg)
{
    *(bool *)arg = true;
}

void ds4_daemon_destroy(ds4_daemon_h d)
{
    if (d == NULL)
        return;
    if (d->state != ST_STOPPED) {
        /* Never started (or start failed): tear down what exists. */
        if (d->http != NULL)
            ds4_http_server_close(d->http, http_closed, d);
        if (d->handles_open) {
            uv_close((uv_handle_t *)&d->sigterm, NULL);
            uv_close((uv_handle_t *)&d->sigint, NULL);
            uv_close((uv_handle_t *)&d->drain_timer, NULL);
        }
        if (d->server != NULL) {
            if (d->state == ST_CREATED) {
                ds4_rpc_server_destroy(d->server);
            } else {
                bool stopped = false;
                ds4_rpc_server_shutdown(d->server, 0, flag_set, &stopped);
                while (!stopped)
                    uv_run(&d->loop, UV_RUN_ONCE);
                ds4_rpc_server_destroy(d->server);
            }
        }
        if (d->rpc != NULL)
            ds4_rpc_ctx_destroy(d->rpc);
        uv_run(&d->loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(&d->loop) != 0)
        ds4_log_warn("%s: loop closed with handles open", d->name);
    ds4_metrics_destroy(d->metrics);
    ds4_free(d->name);
    ds4_free(d->grpc_listen);
    ds4_free(d->http_listen);
    ds4_free(d->ports_file);
    ds4_free(d);
}
