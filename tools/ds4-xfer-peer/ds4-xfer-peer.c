/*
 * ds4-xfer-peer - a standalone KV transfer peer for the multi-process tests and benchmark.
 *
 *   ds4-xfer-peer decode  --config C --listen HOST:PORT --tokens N --seqs S [--refuse-tcp-only]
 *                         [--no-check]  (benchmarks: CRC verification only, no byte compare)
 *       Owns a KV pool for S sequences of N tokens. Prints "ready <addr> <incarnation>", then
 *       reads commands on stdin (one per line) and answers on stdout:
 *         reserve <id> <n_tokens> <deadline_ms> <file>  -> "reserved <id>" | "error <id> <ST>"
 *         release <id>                                  -> "released <id> <ST>"
 *         stats                                         -> "stats <used_blocks> <tables> <resv>"
 *         quit
 *       and reports each reservation's end as "done <id> <ST> match|mismatch|-" (every byte
 *       of a verified sequence is checked against the synthetic generator).
 *
 *   ds4-xfer-peer prefill --config C --target FILE [--target FILE ...] [--chunks K]
 *                 [--layer-delay-us D] [--deadline-ms T] [--corrupt ID:GROUP:OFFSET]
 *                 [--abort-after-layers K] [--refuse-tcp-only]
 *       Pushes synthetic KV into every target concurrently from a compute thread, chunk by
 *       chunk and layer by layer (each layer's rows as soon as that layer is "computed", then
 *       its group ends after the last chunk). Prints "sent <id> <ST> <message>" per target.
 *
 *   ds4-xfer-peer connect --config C --addr HOST:PORT [--refuse-tcp-only]
 *                 [--preflight-bytes B]
 *       Handshake + preflight only: prints "connect <ST> <message>" and the link statistics.
 *
 * Exit status: 0 when the command ran (results are in the output), 2 on usage errors.
 */
#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/config.h"
#include "ds4/kv.h"
#include "ds4/log.h"
#include "ds4/xfer.h"
#include "kv-synth.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

typedef struct opts {
    const char *mode;
    const char *config;
    const char *listen;
    const char *addr;
    const char *targets[256];
    int n_targets;
    uint64_t tokens;
    uint32_t seqs;
    uint32_t chunks;
    uint32_t layer_delay_us;
    uint32_t deadline_ms;
    uint32_t abort_after_layers; /* 0: never */
    uint32_t preflight_bytes;    /* 0: the library default */
    bool refuse_tcp_only;
    bool no_check;
    bool corrupt;
    uint64_t corrupt_id;
    uint32_t corrupt_group;
    uint64_t corrupt_offset;
} opts_t;

static uv_loop_t loop;
static ds4_kv_manifest_h *manifest;
static ds4_xfer_h *xfer;
static uv_timer_t quit_timer;

static void on_quit_timer(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, NULL);
    if (xfer != NULL) {
        ds4_xfer_destroy(xfer);
        xfer = NULL;
    }
}

/* ds4_xfer_destroy may not run inside a ds4_xfer callback: defer it to a fresh loop turn. */
static void quit_soon(void)
{
    if (uv_is_active((uv_handle_t *)&quit_timer) || uv_is_closing((uv_handle_t *)&quit_timer))
        return;
    uv_timer_init(&loop, &quit_timer);
    uv_timer_start(&quit_timer, on_quit_timer, 0, 0);
}

static int usage(void)
{
    fprintf(stderr, "usage: ds4-xfer-peer decode|prefill|connect --config C ... "
                    "(see the header of tools/ds4-xfer-peer/ds4-xfer-peer.c)\n");
    return 2;
}

static bool parse_args(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->chunks = 4;
    o->deadline_ms = 60000;
    o->seqs = 1;
    if (argc < 2)
        return false;
    o->mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--refuse-tcp-only") == 0) {
            o->refuse_tcp_only = true;
            continue;
        }
        if (strcmp(a, "--no-check") == 0) {
            o->no_check = true;
            continue;
        }
        if (v == NULL)
            return false;
        i++;
        if (strcmp(a, "--config") == 0)
            o->config = v;
        else if (strcmp(a, "--listen") == 0)
            o->listen = v;
        else if (strcmp(a, "--addr") == 0)
            o->addr = v;
        else if (strcmp(a, "--target") == 0 && o->n_targets < 256)
            o->targets[o->n_targets++] = v;
        else if (strcmp(a, "--tokens") == 0)
            o->tokens = strtoull(v, NULL, 10);
        else if (strcmp(a, "--seqs") == 0)
            o->seqs = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--chunks") == 0)
            o->chunks = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--layer-delay-us") == 0)
            o->layer_delay_us = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--abort-after-layers") == 0)
            o->abort_after_layers = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--preflight-bytes") == 0)
            o->preflight_bytes = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--deadline-ms") == 0)
            o->deadline_ms = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--corrupt") == 0) {
            o->corrupt = sscanf(v, "%" SCNu64 ":%u:%" SCNu64, &o->corrupt_id, &o->corrupt_group,
                                &o->corrupt_offset) == 3;
            if (!o->corrupt)
                return false;
        } else
            return false;
    }
    return o->config != NULL && o->chunks > 0;
}

static bool load_manifest(const char *path)
{
    static ds4_model_config_t cfg;
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_status_t st = ds4_config_load(path, &cfg, &diag, NULL);
    if (st != DS4_OK) {
        ds4_diag_log(&diag, path);
        ds4_diag_free(&diag);
        return false;
    }
    ds4_diag_free(&diag);
    return ds4_kv_manifest_create(&cfg, &manifest) == DS4_OK;
}

/* ------------------------------------------------------------------------ decode */

static uv_pipe_t stdin_pipe;
static bool no_check;
static char line_buf[4096];
static size_t line_len;

static void on_recv_done(void *arg, uint64_t id, ds4_status_t st, const char *msg)
{
    const char *check = "-";
    if (st == DS4_OK && !no_check) {
        const ds4_kv_block_table_h *t = NULL;
        uint64_t bad = 0;
        if (ds4_xfer_acquire(xfer, id, &t) != DS4_OK)
            check = "unavailable";
        else
            check = ds4_synth_check_table(ds4_xfer_pool(xfer), manifest, t, id, &bad)
                        ? "match"
                        : "mismatch";
    }
    printf("done %" PRIu64 " %s %s %s\n", id, ds4_status_name(st), check, msg);
    fflush(stdout);
}

static void handle_line(char *line)
{
    char cmd[32], path[1024];
    uint64_t id = 0, n = 0;
    uint32_t deadline = 0;
    if (sscanf(line, "%31s", cmd) != 1)
        return;
    if (strcmp(cmd, "reserve") == 0 &&
        sscanf(line, "%*s %" SCNu64 " %" SCNu64 " %u %1023s", &id, &n, &deadline, path) == 4) {
        void *blob = NULL;
        size_t len = 0;
        ds4_status_t st = ds4_xfer_reserve(xfer, id, n, deadline, &blob, &len);
        if (st == DS4_OK) {
            FILE *f = fopen(path, "wb");
            if (f == NULL || fwrite(blob, 1, len, f) != len)
                st = DS4_ERR_IO;
            if (f != NULL)
                fclose(f);
            ds4_free(blob);
        }
        if (st == DS4_OK)
            printf("reserved %" PRIu64 "\n", id);
        else
            printf("error %" PRIu64 " %s\n", id, ds4_status_name(st));
    } else if (strcmp(cmd, "release") == 0 && sscanf(line, "%*s %" SCNu64, &id) == 1) {
        printf("released %" PRIu64 " %s\n", id, ds4_status_name(ds4_xfer_release(xfer, id)));
    } else if (strcmp(cmd, "stats") == 0) {
        ds4_kv_pool_stats_t s;
        ds4_kv_pool_stats(ds4_xfer_pool(xfer), &s);
        printf("stats %" PRIu64 " %" PRIu64 " %u\n", s.used_blocks_all, s.n_tables,
               ds4_xfer_n_reservations(xfer));
    } else if (strcmp(cmd, "quit") == 0) {
        uv_read_stop((uv_stream_t *)&stdin_pipe);
        uv_close((uv_handle_t *)&stdin_pipe, NULL);
        quit_soon();
    } else {
        printf("error 0 unknown-command\n");
    }
    fflush(stdout);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char rbuf[4096];
    buf->base = rbuf;
    buf->len = sizeof(rbuf);
}

static void on_stdin(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n < 0) { /* EOF: the test driver went away */
        uv_read_stop(s);
        uv_close((uv_handle_t *)s, NULL);
        quit_soon();
        return;
    }
    for (ssize_t i = 0; i < n && !uv_is_closing((uv_handle_t *)s); i++) {
        char c = buf->base[i];
        if (c == '\n') {
            line_buf[line_len] = '\0';
            handle_line(line_buf);
            line_len = 0;
        } else if (line_len + 1 < sizeof(line_buf)) {
            line_buf[line_len++] = c;
        }
    }
}

static int run_decode(const opts_t *o)
{
    if (o->listen == NULL || o->tokens == 0)
        return usage();
    no_check = o->no_check;
    ds4_kv_pool_params_t pp = ds4_kv_pool_params_default(manifest);
    if (ds4_kv_pool_params_for_tokens(&pp, o->tokens, o->seqs) != DS4_OK)
        return usage();
    ds4_xfer_params_t xp = ds4_xfer_params_default();
    xp.manifest = manifest;
    xp.listen_addr = o->listen;
    xp.pool = &pp;
    xp.refuse_tcp_only = o->refuse_tcp_only;
    xp.recv_cb = on_recv_done;
    ds4_status_t st = ds4_xfer_create(&loop, &xp, &xfer);
    if (st != DS4_OK) {
        printf("failed %s\n", ds4_status_name(st));
        fflush(stdout);
        return 1;
    }
    printf("ready %s %016" PRIx64 "\n", ds4_xfer_address(xfer), ds4_xfer_incarnation(xfer));
    fflush(stdout);
    uv_pipe_init(&loop, &stdin_pipe, 0);
    uv_pipe_open(&stdin_pipe, 0);
    uv_read_start((uv_stream_t *)&stdin_pipe, on_alloc, on_stdin);
    uv_run(&loop, UV_RUN_DEFAULT);
    return 0;
}

/* ----------------------------------------------------------------------- prefill */

typedef struct push {
    ds4_xfer_send_h *tx;
    uint64_t id;
    uint64_t n_tokens;
    unsigned char **rows; /* per group: the group's rows, generated as "computed" */
    bool done;
} push_t;

static push_t pushes[256];
static int n_pushes, n_done;
static bool compute_finished;
static uv_async_t compute_async;

/* Quit once every transfer ended and the compute thread stopped calling into ds4_xfer. */
static void maybe_quit(void)
{
    if (n_done == n_pushes && compute_finished) {
        uv_close((uv_handle_t *)&compute_async, NULL);
        quit_soon();
    }
}

static void on_compute_finished(uv_async_t *h)
{
    compute_finished = true;
    maybe_quit();
}
static uint32_t n_layers_total;

static void on_send_done(void *arg, uint64_t id, ds4_status_t st, const char *msg)
{
    push_t *p = arg;
    p->done = true;
    printf("sent %" PRIu64 " %s %s\n", id, ds4_status_name(st), msg);
    fflush(stdout);
    n_done++;
    maybe_quit();
}

typedef struct compute_args {
    const opts_t *o;
} compute_args_t;

/* Pushes layer `layer` of chunk `c` of push p: history rows of the chunk, and on the last chunk
 * the fixed groups (window ring, compressor tail) and every group end of the layer. */
static void push_layer(const opts_t *o, push_t *p, uint32_t layer, uint32_t c)
{
    uint64_t t0 = p->n_tokens * c / o->chunks, t1 = p->n_tokens * (c + 1) / o->chunks;
    bool last = c + 1 == o->chunks;
    for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(manifest); g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(manifest, g);
        if ((uint32_t)grp->layer != layer)
            continue;
        uint64_t r0, r1;
        if (grp->tokens_per_row != 0) {
            r0 = t0 / grp->tokens_per_row;
            r1 = t1 / grp->tokens_per_row;
        } else {
            r0 = 0;
            r1 = last ? grp->fixed_rows : 0;
        }
        if (r1 > r0) {
            unsigned char *dst = p->rows[g] + r0 * grp->row_bytes;
            ds4_synth_rows(dst, p->id, g, r0, r1 - r0, grp->row_bytes);
            ds4_status_t st = ds4_xfer_send_rows(p->tx, g, r0, r1 - r0, dst);
            if (st != DS4_OK)
                return; /* the transfer already ended; its callback reports why */
        }
        if (last && ds4_xfer_send_group_end(p->tx, g) != DS4_OK)
            return;
    }
}

static void *compute_main(void *arg)
{
    const opts_t *o = ((compute_args_t *)arg)->o;
    uint32_t layers_done = 0;
    for (uint32_t c = 0; c < o->chunks; c++) {
        for (uint32_t l = 0; l < n_layers_total; l++) {
            if (o->abort_after_layers != 0 && layers_done++ == o->abort_after_layers) {
                for (int i = 0; i < n_pushes; i++)
                    ds4_xfer_send_abort(pushes[i].tx);
                uv_async_send(&compute_async);
                return NULL;
            }
            if (o->layer_delay_us > 0)
                usleep(o->layer_delay_us);
            for (int i = 0; i < n_pushes; i++)
                push_layer(o, &pushes[i], l, c);
        }
    }
    uv_async_send(&compute_async);
    return NULL;
}

static int run_prefill(const opts_t *o)
{
    if (o->n_targets == 0)
        return usage();
    ds4_xfer_params_t xp = ds4_xfer_params_default();
    xp.manifest = manifest;
    xp.refuse_tcp_only = o->refuse_tcp_only;
    xp.test_corrupt = o->corrupt;
    xp.test_corrupt_request_id = o->corrupt_id;
    xp.test_corrupt_group = o->corrupt_group;
    xp.test_corrupt_offset = o->corrupt_offset;
    ds4_status_t st = ds4_xfer_create(&loop, &xp, &xfer);
    if (st != DS4_OK) {
        printf("failed %s\n", ds4_status_name(st));
        return 1;
    }
    uint32_t n_groups = ds4_kv_manifest_n_groups(manifest);
    n_layers_total = 0;
    for (uint32_t g = 0; g < n_groups; g++) {
        uint32_t layer = (uint32_t)ds4_kv_manifest_group(manifest, g)->layer;
        n_layers_total = DS4_MAX(n_layers_total, layer + 1);
    }
    for (int i = 0; i < o->n_targets; i++) {
        FILE *f = fopen(o->targets[i], "rb");
        static unsigned char blob[1u << 22];
        size_t len = f != NULL ? fread(blob, 1, sizeof(blob), f) : 0;
        if (f != NULL)
            fclose(f);
        ds4_xfer_target_t t;
        char why[256] = "";
        st = ds4_xfer_target_decode(blob, len, manifest, &t, why, sizeof(why));
        push_t *p = &pushes[n_pushes];
        if (st == DS4_OK)
            st = ds4_xfer_send_start(xfer, blob, len, o->deadline_ms, on_send_done, p, &p->tx);
        if (st != DS4_OK) {
            printf("sent %" PRIu64 " %s %s\n", st == DS4_OK ? t.hdr.request_id : 0,
                   ds4_status_name(st), why);
            continue;
        }
        p->id = t.hdr.request_id;
        p->n_tokens = t.hdr.n_tokens;
        p->rows = ds4_calloc(n_groups, sizeof(*p->rows));
        for (uint32_t g = 0; g < n_groups; g++) {
            const ds4_kv_group_t *grp = ds4_kv_manifest_group(manifest, g);
            p->rows[g] = ds4_malloc(DS4_MAX(ds4_kv_group_bytes(grp, p->n_tokens), 1u));
        }
        n_pushes++;
    }
    fflush(stdout);
    if (n_pushes == 0) {
        quit_soon();
        uv_run(&loop, UV_RUN_DEFAULT);
        return 0;
    }
    compute_args_t ca = {o};
    uv_async_init(&loop, &compute_async, on_compute_finished);
    pthread_t th;
    pthread_create(&th, NULL, compute_main, &ca);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    for (int i = 0; i < n_pushes; i++) {
        ds4_xfer_send_release(pushes[i].tx);
        for (uint32_t g = 0; g < n_groups; g++)
            ds4_free(pushes[i].rows[g]);
        ds4_free(pushes[i].rows);
    }
    return 0;
}

/* ----------------------------------------------------------------------- connect */

static void on_connected(void *arg, const char *addr, ds4_status_t st, const char *msg)
{
    printf("connect %s %s\n", ds4_status_name(st), msg);
    ds4_xfer_link_stats_t s;
    if (st == DS4_OK && ds4_xfer_link_stats(xfer, addr, &s) == DS4_OK)
        printf("link transports %s tcp_only %d latency_us %.2f bandwidth_gbps %.3f\n",
               s.info.transports, (int)s.info.tcp_only, s.latency_us, s.bandwidth_bps / 1e9);
    fflush(stdout);
    quit_soon();
}

static int run_connect(const opts_t *o)
{
    if (o->addr == NULL)
        return usage();
    ds4_xfer_params_t xp = ds4_xfer_params_default();
    xp.manifest = manifest;
    xp.refuse_tcp_only = o->refuse_tcp_only;
    if (o->preflight_bytes != 0)
        xp.preflight_bytes = o->preflight_bytes;
    xp.connect_timeout_ms = 20000;
    ds4_status_t st = ds4_xfer_create(&loop, &xp, &xfer);
    if (st == DS4_OK)
        st = ds4_xfer_connect(xfer, o->addr, on_connected, NULL);
    if (st != DS4_OK) {
        printf("connect %s immediate failure\n", ds4_status_name(st));
        quit_soon();
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o;
    if (!parse_args(argc, argv, &o))
        return usage();
    if (!load_manifest(o.config))
        return 1;
    uv_loop_init(&loop);
    int rc;
    if (strcmp(o.mode, "decode") == 0)
        rc = run_decode(&o);
    else if (strcmp(o.mode, "prefill") == 0)
        rc = run_prefill(&o);
    else if (strcmp(o.mode, "connect") == 0)
        rc = run_connect(&o);
    else
        rc = usage();
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    ds4_kv_manifest_destroy(manifest);
    return rc;
}
