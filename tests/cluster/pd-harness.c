/* Helpers of the cluster integration tests (see pd-harness.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "ds4.pb-c.h"
#include "ds4/clock.h"
#include "ds4/daemon.h"
#include "ds4/json.h"
#include "ds4/kv.h"
#include "ds4/metrics.h"
#include "ds4_worker.pb-c.h"
#include "pd-harness.h"

#define MAX_PROCS 32
static proc_t *procs[MAX_PROCS];
static int n_procs;
static char run_dir[256];

const char *pdh_run_dir(void)
{
    if (run_dir[0] == '\0') {
        snprintf(run_dir, sizeof(run_dir), "/tmp/ds4-pdtest.XXXXXX");
        if (mkdtemp(run_dir) == NULL)
            snprintf(run_dir, sizeof(run_dir), "/tmp");
    }
    return run_dir;
}

bool pdh_start(proc_t *p, const char *name, const char *exe_rel, const char *const *args)
{
    const char *bin = getenv("DS4_BINARY_DIR");
    char exe[512];
    snprintf(exe, sizeof(exe), "%s/%s", bin != NULL ? bin : ".", exe_rel);
    snprintf(p->name, sizeof(p->name), "%s", name);
    snprintf(p->ports, sizeof(p->ports), "%s/%s.ports", pdh_run_dir(), name);
    snprintf(p->log, sizeof(p->log), "%s/%s.log", pdh_run_dir(), name);
    unlink(p->ports);
    const char *argv[48];
    int k = 0;
    argv[k++] = exe;
    argv[k++] = "--ports-file";
    argv[k++] = p->ports;
    for (int i = 0; args[i] != NULL && k < 46; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    p->pid = pid;
    if (n_procs < MAX_PROCS)
        procs[n_procs++] = p;
    uint64_t end = ds4_clock_now_ms() + 10000;
    while (ds4_clock_now_ms() < end) {
        p->grpc_port = ds4_daemon_read_port(p->ports, "grpc_port");
        p->http_port = ds4_daemon_read_port(p->ports, "http_port");
        if (p->grpc_port > 0 && p->http_port > 0)
            return true;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "  %s exited during start (log %s)\n", name, p->log);
            p->pid = 0;
            return false;
        }
        ds4_clock_sleep_ms(20);
    }
    fprintf(stderr, "  %s wrote no ports file (log %s)\n", name, p->log);
    return false;
}

bool pdh_start_router(proc_t *p, const char *extra_flag)
{
    const char *args[] = {"--grpc-listen",
                          "127.0.0.1:0",
                          "--http-listen",
                          "127.0.0.1:0",
                          "--heartbeat-interval-ms",
                          "100",
                          "--liveness-timeout-ms",
                          "5000",
                          "--drain-timeout-ms",
                          "5000",
                          extra_flag,
                          NULL};
    return pdh_start(p, "router", "router/ds4-router", args);
}

bool pdh_start_worker(proc_t *p, bool prefill, const char *id, int router_port)
{
    char router[64];
    snprintf(router, sizeof(router), "127.0.0.1:%d", router_port);
    const char *model = getenv("DS4_FIXTURES");
    static char model_dir[512];
    snprintf(model_dir, sizeof(model_dir), "%s/tiny-a", model != NULL ? model : "tests/fixtures");
    const char *args[] = {
        "--model",   model_dir, "--router",           router, "--worker-id",    id,
        "--threads", "1",       "--drain-timeout-ms", "5000", "--chunk-tokens", "256",
        NULL};
    return pdh_start(p, id, prefill ? "prefill/ds4-prefill" : "decode/ds4-decode", args);
}

int pdh_stop(proc_t *p, int sig, uint32_t timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    kill(p->pid, sig);
    uint64_t end = ds4_clock_now_ms() + timeout_ms;
    int st = 0;
    while (ds4_clock_now_ms() < end) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        ds4_clock_sleep_ms(10);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &st, 0);
    p->pid = 0;
    return -1;
}

void pdh_kill_all(void)
{
    for (int i = 0; i < n_procs; i++)
        if (procs[i]->pid > 0) {
            kill(procs[i]->pid, SIGKILL);
            waitpid(procs[i]->pid, NULL, 0);
            procs[i]->pid = 0;
        }
    n_procs = 0;
}

int pdh_http_get(int port, const char *path, char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int status = -1;
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
        char req[256];
        int n = snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
        if (write(fd, req, (size_t)n) == n) {
            for (;;) {
                ssize_t r = read(fd, buf + got, cap - 1 - got);
                if (r <= 0)
                    break;
                got += (size_t)r;
                if (got == cap - 1)
                    break;
            }
            buf[got] = '\0';
            if (got > 12)
                status = atoi(buf + 9);
        }
    }
    close(fd);
    return status;
}

bool pdh_wait_ready(int http_port, uint32_t timeout_ms)
{
    static char buf[4096];
    uint64_t end = ds4_clock_now_ms() + timeout_ms;
    while (ds4_clock_now_ms() < end) {
        if (pdh_http_get(http_port, "/ready", buf, sizeof(buf)) == 200)
            return true;
        ds4_clock_sleep_ms(30);
    }
    return false;
}

double pdh_metric(int http_port, const char *series)
{
    static char buf[1 << 18];
    if (pdh_http_get(http_port, "/metrics", buf, sizeof(buf)) != 200)
        return NAN;
    const char *body = strstr(buf, "\r\n\r\n");
    double v = NAN;
    if (body == NULL || !ds4_metrics_text_find(body + 4, series, &v))
        return NAN;
    return v;
}

bool pdh_wait_metric(int http_port, const char *series, double want, uint32_t timeout_ms)
{
    uint64_t end = ds4_clock_now_ms() + timeout_ms;
    while (ds4_clock_now_ms() < end) {
        if (pdh_metric(http_port, series) == want)
            return true;
        ds4_clock_sleep_ms(30);
    }
    return false;
}

/* ---- client ---- */

static uv_loop_t loop;
static ds4_rpc_ctx_h ctx;
static ds4_rpc_channel_h channel;

bool pdh_client_open(int router_port)
{
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", router_port);
    uv_loop_init(&loop);
    if (ds4_rpc_ctx_create(&loop, &ctx) != DS4_OK)
        return false;
    ds4_rpc_channel_params_t p = ds4_rpc_channel_params_default();
    p.target = target;
    return ds4_rpc_channel_create(ctx, &p, &channel) == DS4_OK;
}

void pdh_client_close(void)
{
    ds4_rpc_channel_destroy(channel);
    uint64_t end = ds4_clock_now_ms() + 5000;
    while (ds4_rpc_ctx_live_objects(ctx) > 0 && ds4_clock_now_ms() < end)
        uv_run(&loop, UV_RUN_NOWAIT);
    ds4_rpc_ctx_destroy(ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

static void on_msg(ds4_rpc_client_call_h call, ProtobufCMessage *msg, void *arg)
{
    gen_t *g = arg;
    Ds4__V1__GenerateResponse *r = (void *)msg;
    for (size_t i = 0; i < r->n_token_ids; i++) {
        if (g->n_out == 0)
            g->t_first = ds4_clock_now_s();
        if (g->n_out < sizeof(g->out) / sizeof(g->out[0]))
            g->out[g->n_out++] = (int32_t)r->token_ids[i];
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    if (g->cancel_after != 0 && g->n_out >= g->cancel_after) {
        g->cancel_after = 0;
        ds4_rpc_client_call_cancel(call);
    }
}

static void on_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *message, void *arg)
{
    gen_t *g = arg;
    g->done = true;
    g->code = code;
    g->t_end = ds4_clock_now_s();
    snprintf(g->message, sizeof(g->message), "%s", message);
}

bool pdh_generate_start(gen_t *g)
{
    Ds4__V1__GenerateRequest req = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    Ds4__V1__TokenIds ids = DS4__V1__TOKEN_IDS__INIT;
    uint32_t *u = calloc(g->n_ids + 1, sizeof(*u));
    for (size_t i = 0; i < g->n_ids; i++)
        u[i] = (uint32_t)g->ids[i];
    ids.n_ids = g->n_ids;
    ids.ids = u;
    req.api_version = 1;
    req.model = (char *)(g->model != NULL ? g->model : "");
    req.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS;
    req.prompt_ids = &ids;
    sp.max_tokens = g->max_tokens;
    sp.temperature = g->temperature;
    sp.top_p = g->top_p;
    sp.top_k = g->top_k;
    sp.seed = g->seed;
    sp.seeded = g->seeded;
    sp.ignore_eos = g->ignore_eos;
    req.sampling = &sp;
    g->t_start = ds4_clock_now_s();
    ds4_rpc_call_params_t cp = {
        .method = "/ds4.v1.Ds4/Generate",
        .request = g->raw != NULL ? g->raw : &req.base,
        .response_type = &ds4__v1__generate_response__descriptor,
        .timeout_ms = g->timeout_ms != 0 ? g->timeout_ms : 60000,
        .on_message = on_msg,
        .on_done = on_done,
        .arg = g,
    };
    bool ok = ds4_rpc_channel_call(channel, &cp, &g->call) == DS4_OK;
    free(u);
    return ok;
}

void pdh_client_run(uint32_t ms, gen_t *const *gens, size_t n)
{
    uint64_t end = ds4_clock_now_ms() + ms;
    while (ds4_clock_now_ms() < end) {
        bool all = true;
        for (size_t i = 0; i < n; i++)
            all = all && gens[i]->done;
        if (all && n > 0)
            return;
        uv_run(&loop, UV_RUN_NOWAIT);
        ds4_clock_sleep_ms(1);
    }
}

bool pdh_generate(gen_t *const *gens, size_t n, uint32_t timeout_ms)
{
    for (size_t i = 0; i < n; i++)
        if (!pdh_generate_start(gens[i]))
            return false;
    pdh_client_run(timeout_ms, gens, n);
    for (size_t i = 0; i < n; i++)
        if (!gens[i]->done)
            return false;
    return true;
}

static void ghost_msg(ds4_rpc_client_call_h call, ProtobufCMessage *msg, void *arg)
{
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void ghost_done(ds4_rpc_client_call_h call, ds4_rpc_code_t code, const char *message,
                       void *arg)
{
    *(int *)arg = (int)code + 1;
}

bool pdh_register_ghost(const char *id, int role, const uint8_t *digest, size_t digest_len,
                        int dead_port)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", dead_port);
    Ds4__Worker__V1__RegisterRequest req = DS4__WORKER__V1__REGISTER_REQUEST__INIT;
    Ds4__Worker__V1__WorkerInfo info = DS4__WORKER__V1__WORKER_INFO__INIT;
    req.proto_version = 1;
    info.role = (Ds4__Worker__V1__WorkerRole)role;
    info.worker_id = (char *)id;
    info.incarnation = 0x600d600d600dull;
    info.rpc_address = addr;
    info.model = "ds4-tiny";
    info.kv_manifest_digest.data = (uint8_t *)digest;
    info.kv_manifest_digest.len = digest_len;
    info.max_sequences = 1;
    req.info = &info;
    int result = 0;
    ds4_rpc_call_params_t cp = {
        .method = "/ds4.worker.v1.Router/RegisterWorker",
        .request = &req.base,
        .response_type = &ds4__worker__v1__register_response__descriptor,
        .timeout_ms = 5000,
        .on_message = ghost_msg,
        .on_done = ghost_done,
        .arg = &result,
    };
    if (ds4_rpc_channel_call(channel, &cp, NULL) != DS4_OK)
        return false;
    uint64_t end = ds4_clock_now_ms() + 6000;
    while (result == 0 && ds4_clock_now_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        ds4_clock_sleep_ms(1);
    }
    return result == 1;
}

int pdh_dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* ---- reference ---- */

static ds4_model_h ref_model;

bool pdh_ref_open(const char *model_dir)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_model_params_t mp = ds4_model_params_default();
    mp.n_threads = 1;
    bool ok = ds4_model_load(model_dir, &mp, &ref_model, &d) == DS4_OK;
    if (!ok)
        ds4_diag_log(&d, "reference model");
    ds4_diag_free(&d);
    return ok;
}

void pdh_ref_close(void)
{
    ds4_model_free(ref_model);
    ref_model = NULL;
}

int32_t pdh_ref_vocab(void)
{
    return ds4_model_config(ref_model)->vocab_size;
}

void pdh_ref_digest(uint8_t out[8])
{
    ds4_kv_manifest_h *m = NULL;
    memset(out, 0, 8);
    if (ds4_kv_manifest_create(ds4_model_config(ref_model), &m) != DS4_OK)
        return;
    uint64_t d = ds4_kv_manifest_digest(m);
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(d >> (8 * i));
    ds4_kv_manifest_destroy(m);
}

int64_t pdh_ref_max_context(void)
{
    return ds4_model_config(ref_model)->max_position_embeddings;
}

bool pdh_ref_generate(const gen_t *g, int32_t *out, size_t *n_out)
{
    const ds4_model_config_t *cfg = ds4_model_config(ref_model);
    ds4_seq_h seq = NULL;
    if (ds4_seq_create(ref_model, &seq) != DS4_OK)
        return false;
    float *logits = malloc((size_t)cfg->vocab_size * sizeof(float));
    /* The request's conventions, as ds4-decode maps them: top_p 0 = off. */
    ds4_sampling_params_t sp = ds4_sampling_params_default();
    sp.temperature = g->temperature;
    sp.top_k = (int32_t)g->top_k;
    sp.top_p = g->top_p > 0.0f && g->top_p < 1.0f ? g->top_p : 1.0f;
    sp.seed = g->seed;
    ds4_sampler_h s = NULL;
    if (logits == NULL || ds4_sampler_create(&sp, cfg->vocab_size, &s) != DS4_OK) {
        free(logits);
        ds4_seq_destroy(seq);
        return false;
    }
    ds4_sampler_accept_prompt(s, g->ids, g->n_ids);
    /* The whole prompt in one step (in 8192-token steps beyond that, to bound memory; the
     * engine is chunking-invariant): the independent single-process answer to the cluster's
     * chunked, transferred computation. */
    bool ok = true;
    for (size_t off = 0; ok && off < g->n_ids; off += 8192) {
        size_t n = g->n_ids - off < 8192 ? g->n_ids - off : 8192;
        ds4_step_item_t it = {.seq = seq,
                              .tokens = g->ids + off,
                              .n_tokens = (int32_t)n,
                              .logits = off + n == g->n_ids ? logits : NULL};
        ok = ds4_model_step(ref_model, &it, 1, NULL) == DS4_OK;
    }
    size_t n = 0;
    while (ok && n < g->max_tokens) {
        ds4_sample_result_t so;
        if (ds4_sampler_sample(s, logits, &so) != DS4_OK) {
            ok = false;
            break;
        }
        ds4_sampler_accept(s, so.token);
        out[n++] = so.token;
        if ((!g->ignore_eos && so.token == cfg->eos_token_id) || n == g->max_tokens)
            break;
        int32_t t = so.token;
        ds4_step_item_t st = {.seq = seq, .tokens = &t, .n_tokens = 1, .logits = logits};
        ok = ds4_model_step(ref_model, &st, 1, NULL) == DS4_OK;
    }
    ds4_sampler_destroy(s);
    free(logits);
    ds4_seq_destroy(seq);
    *n_out = n;
    return ok;
}
