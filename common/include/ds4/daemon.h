/*
 * ds4/daemon.h - what ds4-router, ds4-prefill and ds4-decode share: options from flags and a
 * JSON config file, the libuv loop with the gRPC context and server, the admin HTTP server
 * (/health /ready /metrics), the metrics registry, the process incarnation, and the SIGTERM
 * drain.
 *
 * Options: each daemon declares a table of ds4_opt_t. `--config FILE` (a JSON object) is read
 * first, then flags override it: `--name value`, `--name=value`, `--flag` for booleans. JSON
 * keys may use '_' or '-' ("grpc_listen" = "grpc-listen"). Unknown flags or keys, bad values
 * and type mismatches are all collected in a ds4_diag_t (fail closed).
 *
 * Life of a daemon: create -> the app registers gRPC methods on ds4_daemon_rpc_server() ->
 * start (binds, starts serving, writes the ports file) -> run (the loop) -> on SIGTERM/SIGINT
 * or ds4_daemon_shutdown: drain (hooks.drain: take no new work; /ready answers 503 and the
 * gRPC health NOT_SERVING) until hooks.in_flight() is 0 or drain_timeout_ms passes; then the
 * gRPC server stops (calls still open are cancelled), hooks.stop releases the app's loop
 * objects, the HTTP server closes and run returns. A second signal skips the wait.
 * /health answers 200 while the process runs; /ready 200 only when hooks.ready says so and the
 * daemon is not draining. Everything runs on the loop thread.
 */
#ifndef DS4_DAEMON_H
#define DS4_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "ds4/diag.h"
#include "ds4/http.h"
#include "ds4/metrics.h"
#include "ds4/rpc.h"
#include "ds4/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- options ---- */

typedef enum ds4_opt_type {
    DS4_OPT_STR = 0,  /* const char ** (points into argv or the config; valid until
                         ds4_opts_free) */
    DS4_OPT_U32 = 1,  /* uint32_t * */
    DS4_OPT_U64 = 2,  /* uint64_t * */
    DS4_OPT_F64 = 3,  /* double * */
    DS4_OPT_BOOL = 4, /* bool * ("--x", "--x=true|false|1|0"; JSON true/false) */
} ds4_opt_type_t;

typedef struct ds4_opt {
    const char *name; /* "grpc-listen" (flag --grpc-listen, JSON grpc_listen) */
    ds4_opt_type_t type;
    void *ptr; /* holds the default on entry */
    const char *help;
} ds4_opt_t;

/* Keeps the config file's JSON alive for DS4_OPT_STR values. */
typedef struct ds4_opts_state {
    void *config_json;
    bool help; /* --help / -h was given */
} ds4_opts_state_t;

/* Parses argv[1..] (and --config FILE) into the table. DS4_ERR_CONFIG with every problem in
 * diag; DS4_OK with state->help set when help was asked. */
ds4_status_t ds4_opts_parse(const ds4_opt_t *opts, size_t n_opts, int argc, char **argv,
                            ds4_opts_state_t *state, ds4_diag_t *diag);
void ds4_opts_free(ds4_opts_state_t *state);
/* The opening of a ds4 program's main: ds4_opts_parse, then what ends the program right there.
 * Returns -1 to go on (state holds the options; ds4_opts_free it at exit), or the exit code with
 * state already freed: 2 after logging every problem ("prog: bad options"), 0 after printing
 * the usage to stdout for --help. log_level (NULL: none) points at the table's log-level value;
 * a valid level there is applied (ds4_log_set_level). */
int ds4_opts_start(const char *prog, const ds4_opt_t *opts, size_t n_opts, int argc, char **argv,
                   const char *const *log_level, ds4_opts_state_t *state);
/* Writes "usage: prog [options]" and one line per option with its default to `f`. */
void ds4_opts_usage(const char *prog, const ds4_opt_t *opts, size_t n_opts, void *file);

/* ---- daemon ---- */

typedef struct ds4_daemon *ds4_daemon_h;

typedef struct ds4_daemon_hooks {
    void *arg;
    /* Draining starts: refuse new work from now on. */
    void (*drain)(void *arg);
    /* Work still running (drain waits for 0). NULL: 0. */
    size_t (*in_flight)(void *arg);
    /* The gRPC server has stopped: release every loop object of the app (channels, timers). */
    void (*stop)(void *arg);
    /* Ready to serve? Fill `why` when not. NULL: ready. */
    bool (*ready)(void *arg, char *why, size_t why_len);
    /* Refresh gauges before /metrics renders. May be NULL. */
    void (*metrics_update)(void *arg);
    /* Any other HTTP path. NULL: 404. */
    ds4_http_handler_cb http;
} ds4_daemon_hooks_t;

typedef struct ds4_daemon_params {
    const char *name;          /* "ds4-decode" (logs, metrics label) */
    const char *grpc_listen;   /* "127.0.0.1:0" */
    const char *http_listen;   /* "127.0.0.1:0" (host:port) */
    const char *ports_file;    /* if set: written after start with
                                  {"grpc_port":N,"http_port":N,"pid":N,"incarnation":"hex"} */
    uint32_t drain_timeout_ms; /* default 30000 */
    ds4_daemon_hooks_t hooks;
} ds4_daemon_params_t;

ds4_daemon_params_t ds4_daemon_params_default(void);
ds4_status_t ds4_daemon_create(const ds4_daemon_params_t *params, ds4_daemon_h *out);
/* After ds4_daemon_run returned (or before start). */
void ds4_daemon_destroy(ds4_daemon_h d);

uv_loop_t *ds4_daemon_loop(ds4_daemon_h d);
ds4_rpc_ctx_h ds4_daemon_rpc_ctx(ds4_daemon_h d);
ds4_rpc_server_h ds4_daemon_rpc_server(ds4_daemon_h d);
ds4_metrics_h ds4_daemon_metrics(ds4_daemon_h d);
/* Random, never 0, fixed for the process. */
uint64_t ds4_daemon_incarnation(ds4_daemon_h d);
int ds4_daemon_grpc_port(ds4_daemon_h d);
int ds4_daemon_http_port(ds4_daemon_h d);
bool ds4_daemon_draining(ds4_daemon_h d);
/* The "host:port" peers dial for the started daemon's gRPC (grpc = true) or HTTP server: the
 * listen host (0.0.0.0 and :: announce as 127.0.0.1) with the bound port. False when it does not
 * fit `cap` bytes. */
bool ds4_daemon_address(ds4_daemon_h d, bool grpc, char *out, size_t cap);

/* Reads integer field `key` ("grpc_port", "http_port", "pid") of a ports file written by
 * ds4_daemon_start; -1 until the file exists and holds it (the launcher's poll). */
int ds4_daemon_read_port(const char *ports_file, const char *key);

/* Starts serving gRPC and HTTP, installs the signal handlers, writes the ports file. */
ds4_status_t ds4_daemon_start(ds4_daemon_h d);
/* Runs the loop until the daemon has stopped. Returns 0 after a clean stop. */
int ds4_daemon_run(ds4_daemon_h d);
/* Begins the drain as SIGTERM would. */
void ds4_daemon_shutdown(ds4_daemon_h d);

/* A random 64-bit value from getrandom (never 0). */
uint64_t ds4_random_u64(void);
/* Splits "host:port" (port required, 0..65535) into host (cap bytes) and port. */
bool ds4_split_host_port(const char *addr, char *host, size_t cap, int *port);

/* ---- a worker's link to its router ---- */

/*
 * Registers the worker with the router (RegisterWorker), retrying every retry_ms until it
 * succeeds, then heartbeats every interval the router asked for, with the load from load_cb.
 * When the router answers `known = false` (it restarted, or declared this worker dead) the link
 * registers again. Loop thread only.
 */
typedef struct ds4_router_link *ds4_router_link_h;

typedef struct ds4_router_link_params {
    const char *router_addr; /* "127.0.0.1:7000" */
    int role;                /* Ds4__Worker__V1__WorkerRole */
    const char *worker_id;
    const char *rpc_address;  /* advertised "host:port" of the Worker service; NULL: the
                               * daemon's (ds4_daemon_address) */
    const char *http_address; /* NULL: the daemon's */
    const char *model;
    const void *manifest_digest;
    size_t manifest_digest_len;
    uint32_t max_sequences;
    uint64_t kv_blocks_total;
    uint32_t max_context;
    uint32_t vocab_size;
    uint32_t retry_ms; /* default 200 */
    /* Fills the Load message (a Ds4__Worker__V1__Load *) for each heartbeat. */
    void (*load_cb)(void *arg, void *load);
    void *arg;
} ds4_router_link_params_t;

ds4_router_link_params_t ds4_router_link_params_default(void);
ds4_status_t ds4_router_link_create(ds4_daemon_h d, const ds4_router_link_params_t *params,
                                    ds4_router_link_h *out);
bool ds4_router_link_registered(ds4_router_link_h link);
/* Registrations that succeeded (1 normally; more after router restarts or being declared dead). */
uint32_t ds4_router_link_registrations(ds4_router_link_h link);
/* Answers the worker's Stats call with the identity it registered and its current load. */
void ds4_router_link_reply_stats(ds4_router_link_h link, ds4_rpc_call_h call,
                                 uint64_t requests_done, uint64_t requests_failed,
                                 uint64_t tokens_processed);
/* Sends one heartbeat now (e.g. right after draining starts). */
void ds4_router_link_poke(ds4_router_link_h link);
/* Cancels calls and frees on the loop (channel memory goes when its calls end). */
void ds4_router_link_destroy(ds4_router_link_h link);

#ifdef __cplusplus
}
#endif
#endif /* DS4_DAEMON_H */
