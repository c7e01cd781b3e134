/*
 * ds4-bench-xfer - KV transfer benchmark (issue [kv-transfer] acceptance 5), one run, ratios
 * printed side by side:
 *   (a) push of ~1 GiB and of a V4-Pro 1M-token KV over UCX shared memory vs memcpy of the same
 *       bytes (goal >= 0.8x memcpy);
 *   (b) the same over UCX TCP vs raw loopback TCP throughput;
 *   (c) layer-pipelined push vs push-after-prefill: time from the last layer computed to
 *       "verified at decode" (goal: at most one layer group's transfer time).
 * This process is the prefill side; the decode side is a `ds4-xfer-peer decode --no-check`
 * child (it still verifies every group's CRC32C, as in production). Push times are measured
 * until the decode side has verified every group (the sender's done callback).
 *
 *   ds4-bench-xfer [--config C] [--quick] [--skip-tcp] [--peer PATH]
 *     --quick: 128K-token sizes instead of 1 GiB / 1M tokens (smoke run).
 */
#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/config.h"
#include "ds4/crc32c.h"
#include "ds4/kv.h"
#include "ds4/log.h"
#include "ds4/xfer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CYC_BYTES (256ull << 20) /* source rows cycle through this buffer (> last-level cache) */
#define PIECE_BYTES (32ull << 20)

static uv_loop_t loop;
static ds4_kv_manifest_h *manifest;
static unsigned char *cyc;
static char peer_bin[4096];
static uint32_t n_layers_total;

/* ------------------------------------------------------------------ decode child */

typedef struct child {
    pid_t pid;
    int in_fd, out_fd;
    char buf[8192];
    size_t len;
} child_t;

static child_t decode;

static bool child_wait_for(child_t *c, const char *needle, int timeout_ms)
{
    uint64_t end = ds4_clock_now_ms() + (uint64_t)timeout_ms;
    while (strstr(c->buf, needle) == NULL) {
        if (ds4_clock_now_ms() > end)
            return false;
        uv_run(&loop, UV_RUN_NOWAIT);
        ssize_t n = read(c->out_fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
        if (n > 0) {
            c->len += (size_t)n;
            c->buf[c->len] = '\0';
        } else {
            usleep(500);
        }
    }
    return true;
}

static bool decode_start(const char *config, uint64_t tokens, const char *tls, char *addr)
{
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0)
        return false;
    memset(&decode, 0, sizeof(decode));
    char tok[32];
    snprintf(tok, sizeof(tok), "%" PRIu64, tokens);
    decode.pid = fork();
    if (decode.pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        if (tls != NULL)
            setenv("UCX_TLS", tls, 1);
        setenv("DS4_LOG_LEVEL", getenv("DS4_BENCH_PEER_LOG") != NULL ? "debug" : "error", 1);
        execl(peer_bin, "ds4-xfer-peer", "decode", "--config", config, "--listen",
              "127.0.0.1:0", "--tokens", tok, "--seqs", "1", "--no-check", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    decode.in_fd = in[1];
    decode.out_fd = out[0];
    fcntl(decode.out_fd, F_SETFL, O_NONBLOCK);
    if (!child_wait_for(&decode, "\n", 60000) || strncmp(decode.buf, "ready ", 6) != 0)
        return false;
    sscanf(decode.buf + 6, "%63s", addr);
    return true;
}

static void decode_stop(void)
{
    if (decode.pid > 0) {
        kill(decode.pid, SIGKILL);
        waitpid(decode.pid, NULL, 0);
        close(decode.in_fd);
        close(decode.out_fd);
        decode.pid = 0;
    }
}

static bool decode_reserve(uint64_t id, uint64_t tokens, void **blob, size_t *len)
{
    static char path[256];
    snprintf(path, sizeof(path), "/tmp/ds4-bench-xfer-%d-%" PRIu64, (int)getpid(), id);
    char cmd[512], want[64];
    snprintf(cmd, sizeof(cmd), "reserve %" PRIu64 " %" PRIu64 " 600000 %s\n", id, tokens, path);
    snprintf(want, sizeof(want), "reserved %" PRIu64 "\n", id);
    if (write(decode.in_fd, cmd, strlen(cmd)) < 0 || !child_wait_for(&decode, want, 30000))
        return false;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return false;
    static unsigned char data[1u << 21];
    *len = fread(data, 1, sizeof(data), f);
    fclose(f);
    unlink(path);
    *blob = data;
    return *len > 0;
}

static void decode_release(uint64_t id)
{
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "release %" PRIu64 "\n", id);
    if (write(decode.in_fd, cmd, strlen(cmd)) < 0)
        return;
    snprintf(cmd, sizeof(cmd), "released %" PRIu64, id);
    child_wait_for(&decode, cmd, 10000);
}

/* --------------------------------------------------------------------- pushing */

typedef struct run {
    ds4_xfer_send_h *tx;
    uint64_t n_tokens;
    uint32_t chunks;
    uint32_t layer_us;       /* simulated compute per layer and chunk */
    bool pipelined;
    uint64_t src_off;        /* running offset into the cyclic source */
    double t_start, t_last_layer, t_done;
    ds4_status_t st;
    char msg[256];
    bool done;
} run_t;

static void on_done(void *arg, uint64_t id, ds4_status_t st, const char *msg)
{
    run_t *r = arg;
    r->t_done = ds4_clock_now_s();
    r->st = st;
    snprintf(r->msg, sizeof(r->msg), "%s", msg);
    r->done = true;
}

static const void *src_for(run_t *r, size_t bytes)
{
    if (r->src_off + bytes > CYC_BYTES)
        r->src_off = (r->src_off + 4096) % (CYC_BYTES - PIECE_BYTES);
    const void *p = cyc + r->src_off;
    r->src_off += bytes;
    return p;
}

/* Pushes rows [r0, r1) of group g in pieces of at most PIECE_BYTES. */
static void push_range(run_t *r, uint32_t g, uint64_t r0, uint64_t r1)
{
    const ds4_kv_group_t *grp = ds4_kv_manifest_group(manifest, g);
    uint64_t per = PIECE_BYTES / grp->row_bytes;
    while (r0 < r1) {
        uint64_t n = r1 - r0 < per ? r1 - r0 : per;
        ds4_xfer_send_rows(r->tx, g, r0, n, src_for(r, (size_t)(n * grp->row_bytes)));
        r0 += n;
    }
}

static void push_layer_chunk(run_t *r, uint32_t layer, uint32_t c)
{
    uint64_t t0 = r->n_tokens * c / r->chunks, t1 = r->n_tokens * (c + 1) / r->chunks;
    bool last = c + 1 == r->chunks;
    for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(manifest); g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(manifest, g);
        if ((uint32_t)grp->layer != layer)
            continue;
        if (grp->tokens_per_row != 0)
            push_range(r, g, t0 / grp->tokens_per_row, t1 / grp->tokens_per_row);
        else if (last)
            push_range(r, g, 0, grp->fixed_rows);
        if (last)
            ds4_xfer_send_group_end(r->tx, g);
    }
}

static void sleep_us(uint32_t us)
{
    if (us > 0)
        usleep(us);
}

static void *compute_main(void *arg)
{
    run_t *r = arg;
    r->t_start = ds4_clock_now_s();
    for (uint32_t c = 0; c < r->chunks; c++) {
        for (uint32_t l = 0; l < n_layers_total; l++) {
            sleep_us(r->layer_us); /* "compute" layer l of chunk c */
            if (c + 1 == r->chunks && l + 1 == n_layers_total)
                r->t_last_layer = ds4_clock_now_s();
            if (r->pipelined)
                push_layer_chunk(r, l, c);
        }
    }
    if (!r->pipelined) {
        for (uint32_t c = 0; c < r->chunks; c++)
            for (uint32_t l = 0; l < n_layers_total; l++)
                push_layer_chunk(r, l, c);
    }
    return NULL;
}

/* One transfer of n_tokens into a fresh reservation; returns false on failure. */
static bool run_transfer(ds4_xfer_h *x, uint64_t id, run_t *r)
{
    void *blob;
    size_t len;
    if (!decode_reserve(id, r->n_tokens, &blob, &len)) {
        fprintf(stderr, "bench: reserve %" PRIu64 " failed: %s\n", id, decode.buf);
        return false;
    }
    ds4_status_t st = ds4_xfer_send_start(x, blob, len, 600000, on_done, r, &r->tx);
    if (st != DS4_OK) {
        fprintf(stderr, "bench: send_start: %s\n", ds4_status_str(st));
        return false;
    }
    pthread_t th;
    pthread_create(&th, NULL, compute_main, r);
    while (!r->done)
        uv_run(&loop, UV_RUN_ONCE);
    pthread_join(th, NULL);
    ds4_xfer_send_release(r->tx);
    decode_release(id);
    if (r->st != DS4_OK) {
        fprintf(stderr, "bench: transfer failed: %s: %s\n", ds4_status_name(r->st), r->msg);
        return false;
    }
    return true;
}

typedef struct conn_wait {
    bool done;
    ds4_status_t st;
    char msg[256];
} conn_wait_t;

static void on_conn(void *arg, const char *addr, ds4_status_t st, const char *msg)
{
    conn_wait_t *w = arg;
    w->done = true;
    w->st = st;
    snprintf(w->msg, sizeof(w->msg), "%s", msg);
}

static ds4_xfer_h *sender_up(const char *addr, ds4_xfer_link_stats_t *ls)
{
    ds4_xfer_params_t xp = ds4_xfer_params_default();
    xp.manifest = manifest;
    ds4_xfer_h *x = NULL;
    if (ds4_xfer_create(&loop, &xp, &x) != DS4_OK)
        return NULL;
    conn_wait_t w = {0};
    if (ds4_xfer_connect(x, addr, on_conn, &w) != DS4_OK)
        return NULL;
    while (!w.done)
        uv_run(&loop, UV_RUN_ONCE);
    if (w.st != DS4_OK) {
        fprintf(stderr, "bench: connect failed: %s\n", w.msg);
        return NULL;
    }
    ds4_xfer_link_stats(x, addr, ls);
    return x;
}

static void sender_down(ds4_xfer_h *x)
{
    ds4_xfer_destroy(x);
    uv_run(&loop, UV_RUN_DEFAULT);
}

/* ------------------------------------------------------------------- baselines */

static double bench_memcpy(uint64_t bytes, unsigned char *dst)
{
    /* the same bytes in the same pieces as the push (cyclic source, contiguous destination) */
    double best = 1e30;
    for (int rep = 0; rep < 2; rep++) {
        uint64_t off = 0, src = 0;
        double t0 = ds4_clock_now_s();
        while (off < bytes) {
            size_t n = (size_t)(bytes - off < PIECE_BYTES ? bytes - off : PIECE_BYTES);
            if (src + n > CYC_BYTES)
                src = (src + 4096) % (CYC_BYTES - PIECE_BYTES);
            memcpy(dst + off, cyc + src, n);
            src += n;
            off += n;
        }
        double dt = ds4_clock_now_s() - t0;
        best = dt < best ? dt : best;
    }
    return best;
}

static double bench_raw_tcp(uint64_t bytes)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 1) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) != 0)
        return 0;
    pid_t pid = fork();
    if (pid == 0) { /* receiver: read everything, then ack one byte */
        int s = accept(ls, NULL, NULL);
        static unsigned char buf[4u << 20];
        uint64_t got = 0;
        while (got < bytes) {
            ssize_t n = read(s, buf, sizeof(buf));
            if (n <= 0)
                _exit(1);
            got += (uint64_t)n;
        }
        char ack = 1;
        if (write(s, &ack, 1) != 1)
            _exit(1);
        _exit(0);
    }
    close(ls);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0)
        return 0;
    double t0 = ds4_clock_now_s();
    uint64_t sent = 0, src = 0;
    while (sent < bytes) {
        size_t n = (size_t)(bytes - sent < (4u << 20) ? bytes - sent : (4u << 20));
        if (src + n > CYC_BYTES)
            src = 0;
        ssize_t w = write(s, cyc + src, n);
        if (w <= 0)
            break;
        sent += (uint64_t)w;
        src += (uint64_t)w;
    }
    char ack;
    if (read(s, &ack, 1) != 1)
        sent = 0;
    double dt = ds4_clock_now_s() - t0;
    close(s);
    waitpid(pid, NULL, 0);
    return sent == bytes ? dt : 0;
}

/* ------------------------------------------------------------------------ main */

typedef struct size_case {
    const char *name;
    uint64_t tokens;
    uint64_t bytes;
    double memcpy_s;
    double shm_s;
    double tcp_s;
    double raw_tcp_s;
} size_case_t;

static double gbps(uint64_t bytes, double s)
{
    return s > 0 ? bytes / s / 1e9 : 0.0;
}

int main(int argc, char **argv)
{
    const char *config = NULL;
    bool quick = false, skip_tcp = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config = argv[++i];
        else if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (strcmp(argv[i], "--skip-tcp") == 0)
            skip_tcp = true;
        else if (strcmp(argv[i], "--peer") == 0 && i + 1 < argc)
            snprintf(peer_bin, sizeof(peer_bin), "%s", argv[++i]);
        else {
            fprintf(stderr, "usage: ds4-bench-xfer [--config C] [--quick] [--skip-tcp] "
                            "[--peer P]\n");
            return 2;
        }
    }
    static char cfg_default[4096];
    if (config == NULL) {
        const char *src = getenv("DS4_SOURCE_DIR");
        snprintf(cfg_default, sizeof(cfg_default), "%s/tests/fixtures/configs/v4-pro/config.json",
                 src != NULL ? src : ".");
        config = cfg_default;
    }
    if (peer_bin[0] == '\0') {
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0)
            return 1;
        self[n] = '\0';
        snprintf(peer_bin, sizeof(peer_bin), "%s/../../tools/ds4-xfer-peer/ds4-xfer-peer",
                 dirname(self));
    }
    if (access(peer_bin, X_OK) != 0) {
        fprintf(stderr, "bench: %s not found (build ds4-xfer-peer or pass --peer)\n", peer_bin);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (getenv("DS4_LOG_LEVEL") == NULL)
        ds4_log_set_level(DS4_LOG_ERROR);
    ds4_model_config_t cfg;
    ds4_diag_t d;
    ds4_diag_init(&d);
    if (ds4_config_load(config, &cfg, &d, NULL) != DS4_OK) {
        ds4_diag_log(&d, config);
        return 1;
    }
    ds4_diag_free(&d);
    if (ds4_kv_manifest_create(&cfg, &manifest) != DS4_OK)
        return 1;
    for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(manifest); g++)
        n_layers_total = DS4_MAX(n_layers_total,
                                 (uint32_t)ds4_kv_manifest_group(manifest, g)->layer + 1);
    uv_loop_init(&loop);
    cyc = ds4_aligned_alloc(4096, CYC_BYTES);
    uint64_t x = 0x243F6A8885A308D3ull;
    for (uint64_t i = 0; i < CYC_BYTES / 8; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(cyc + 8 * i, &x, 8);
    }

    /* ~1 GiB of V4 KV and the 1M-token sequence */
    double per_token = ds4_config_history_bytes_per_token(&cfg);
    size_case_t cases[2] = {
        {.name = "1 GiB", .tokens = (uint64_t)((double)(1ull << 30) / per_token)},
        {.name = "1M tokens", .tokens = 1048576},
    };
    if (quick) {
        cases[0] = (size_case_t){.name = "64K tokens", .tokens = 65536};
        cases[1] = (size_case_t){.name = "128K tokens", .tokens = 131072};
    }
    for (int i = 0; i < 2; i++)
        cases[i].bytes = ds4_kv_manifest_seq_bytes(manifest, cases[i].tokens);
    printf("ds4 kv transfer benchmark: %s, %d layers, %u groups, %.4f history B/token, "
           "crc32c %s\n",
           config, n_layers_total, ds4_kv_manifest_n_groups(manifest), per_token,
           ds4_crc32c_is_hw() ? "hardware" : "software");
    fflush(stdout);

    /* memcpy baselines first (their destination is gone before the decode pool exists) */
    unsigned char *dst = ds4_aligned_alloc(4096, cases[1].bytes);
    if (dst == NULL)
        return 1;
    memset(dst, 1, cases[1].bytes);
    for (int i = 0; i < 2; i++)
        cases[i].memcpy_s = bench_memcpy(cases[i].bytes, dst);
    ds4_free(dst);

    /* (a) UCX shared memory */
    char addr[64];
    ds4_xfer_link_stats_t shm_link = {0}, tcp_link = {0};
    if (!decode_start(config, cases[1].tokens, NULL, addr))
        return 1;
    ds4_xfer_h *sx = sender_up(addr, &shm_link);
    if (sx == NULL)
        return 1;
    uint64_t id = 1;
    double layer_group_bytes = 0;
    /* The first transfer on a connection may still take page faults on the mapped decode
     * region (the background prefault started at connect may not have finished); a serving
     * prefill keeps its connections, so the steady state is compared. Cold is reported too. */
    run_t cold = {.n_tokens = cases[1].tokens, .chunks = 1, .pipelined = false};
    if (!run_transfer(sx, id++, &cold))
        return 1;
    double cold_s = cold.t_done - cold.t_start;
    for (int i = 0; i < 2; i++) {
        cases[i].shm_s = 1e30;
        for (int rep = 0; rep < 3; rep++) { /* best of 3, like the memcpy baseline's best of 2 */
            run_t r = {.n_tokens = cases[i].tokens, .chunks = 1, .pipelined = false};
            if (!run_transfer(sx, id++, &r))
                return 1;
            cases[i].shm_s = DS4_MIN(cases[i].shm_s, r.t_done - r.t_start);
        }
    }

    /* (c) pipelined vs after-prefill: V4-Pro 128K tokens, 8 chunks of 16K, simulated compute */
    const uint64_t c_tokens = 131072;
    const uint32_t c_chunks = 8, c_layer_us = 2000;
    for (uint32_t l = 0; l < n_layers_total; l++) {
        double b = 0;
        for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(manifest); g++) {
            const ds4_kv_group_t *grp = ds4_kv_manifest_group(manifest, g);
            if ((uint32_t)grp->layer == l)
                b += (double)ds4_kv_group_bytes(grp, c_tokens);
        }
        layer_group_bytes = b > layer_group_bytes ? b : layer_group_bytes;
    }
    run_t pipe_run = {.n_tokens = c_tokens, .chunks = c_chunks, .layer_us = c_layer_us,
                      .pipelined = true};
    run_t after_run = {.n_tokens = c_tokens, .chunks = c_chunks, .layer_us = c_layer_us,
                       .pipelined = false};
    if (!run_transfer(sx, id++, &pipe_run) || !run_transfer(sx, id++, &after_run))
        return 1;
    uint64_t c_bytes = ds4_kv_manifest_seq_bytes(manifest, c_tokens);
    double after_bw = c_bytes / (after_run.t_done - after_run.t_last_layer);
    sender_down(sx);
    decode_stop();

    /* (b) UCX TCP vs raw loopback TCP */
    if (!skip_tcp) {
        if (!decode_start(config, cases[1].tokens, "tcp", addr))
            return 1;
        const char *old = getenv("UCX_TLS");
        char *saved = old != NULL ? ds4_strdup(old) : NULL;
        setenv("UCX_TLS", "tcp", 1);
        ds4_xfer_h *tx = sender_up(addr, &tcp_link);
        if (tx == NULL)
            return 1;
        run_t warm = {.n_tokens = cases[0].tokens, .chunks = 1, .pipelined = false};
        if (!run_transfer(tx, id++, &warm))
            return 1;
        for (int i = 0; i < 2; i++) {
            run_t r = {.n_tokens = cases[i].tokens, .chunks = 1, .pipelined = false};
            if (!run_transfer(tx, id++, &r))
                return 1;
            cases[i].tcp_s = r.t_done - r.t_start;
        }
        sender_down(tx);
        decode_stop();
        if (saved != NULL) {
            setenv("UCX_TLS", saved, 1);
            ds4_free(saved);
        } else {
            unsetenv("UCX_TLS");
        }
        for (int i = 0; i < 2; i++)
            cases[i].raw_tcp_s = bench_raw_tcp(cases[i].bytes);
    }

    printf("\npreflight: shm link [%s] latency %.1f us, %.2f GB/s", shm_link.info.transports,
           shm_link.latency_us, shm_link.bandwidth_bps / 1e9);
    if (!skip_tcp)
        printf("; tcp link [%s] latency %.1f us, %.2f GB/s", tcp_link.info.transports,
               tcp_link.latency_us, tcp_link.bandwidth_bps / 1e9);
    printf("\n\n(a) UCX shared memory push (until verified at decode) vs memcpy of the same "
           "bytes\n");
    printf("    %-12s %10s %12s %12s %14s %8s\n", "size", "tokens", "GiB", "memcpy GB/s",
           "ucx shm GB/s", "ratio");
    for (int i = 0; i < 2; i++)
        printf("    %-12s %10" PRIu64 " %12.3f %12.2f %14.2f %7.2fx\n", cases[i].name,
               cases[i].tokens, cases[i].bytes / 1073741824.0,
               gbps(cases[i].bytes, cases[i].memcpy_s), gbps(cases[i].bytes, cases[i].shm_s),
               cases[i].memcpy_s / cases[i].shm_s);
    printf("    (first transfer on a new connection, %s cold: %.2f GB/s = %.2fx memcpy; page "
           "tables of the mapped decode region may still be filling)\n",
           cases[1].name, gbps(cases[1].bytes, cold_s), cases[1].memcpy_s / cold_s);
    if (!skip_tcp) {
        printf("\n(b) UCX TCP push (until verified) vs raw loopback TCP (write/read, no checks)\n");
        printf("    %-12s %12s %14s %14s %8s\n", "size", "GiB", "raw tcp GB/s", "ucx tcp GB/s",
               "ratio");
        for (int i = 0; i < 2; i++)
            printf("    %-12s %12.3f %14.2f %14.2f %7.2fx\n", cases[i].name,
                   cases[i].bytes / 1073741824.0, gbps(cases[i].bytes, cases[i].raw_tcp_s),
                   gbps(cases[i].bytes, cases[i].tcp_s),
                   cases[i].tcp_s > 0 ? cases[i].raw_tcp_s / cases[i].tcp_s : 0.0);
    }
    double one_group_s = layer_group_bytes / after_bw;
    printf("\n(c) tail = last layer computed -> verified at decode; V4-Pro %" PRIu64
           " tokens (%.1f MiB), %u chunks, %u us compute per layer and chunk, shm\n",
           c_tokens, c_bytes / 1048576.0, c_chunks, c_layer_us);
    printf("    %-22s %10s\n", "mode", "tail ms");
    printf("    %-22s %10.2f\n", "layer-pipelined",
           1e3 * (pipe_run.t_done - pipe_run.t_last_layer));
    printf("    %-22s %10.2f\n", "push-after-prefill",
           1e3 * (after_run.t_done - after_run.t_last_layer));
    printf("    one layer group (largest layer, %.1f MiB at %.2f GB/s): %.2f ms; pipelined tail / "
           "layer group = %.2fx (goal <= 1)\n",
           layer_group_bytes / 1048576.0, after_bw / 1e9, 1e3 * one_group_s,
           (pipe_run.t_done - pipe_run.t_last_layer) / one_group_s);
    printf("    end-to-end: pipelined %.3f s, push-after-prefill %.3f s (compute alone %.3f s)\n",
           pipe_run.t_done - pipe_run.t_start, after_run.t_done - after_run.t_start,
           after_run.t_last_layer - after_run.t_start);
    ds4_free(cyc);
    ds4_kv_manifest_destroy(manifest);
    uv_loop_close(&loop);
    return 0;
}
