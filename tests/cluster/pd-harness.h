/*
 * tests/cluster/pd-harness.h - helpers of the cluster integration tests: start the daemons as
 * real processes on loopback (free ports, ports files), wait for /ready, read /metrics, run
 * Generate calls through ds4/rpc.h, and compute the single-process reference on the engine.
 * Every wait is bounded; every child dies with the test (PR_SET_PDEATHSIG) and is killed at
 * exit.
 */
#ifndef DS4_TESTS_PD_HARNESS_H
#define DS4_TESTS_PD_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ds4/model.h"
#include "ds4/rpc.h"
#include "ds4/sampling.h"

typedef struct proc {
    pid_t pid;
    char name[32];
    char ports[512];
    char log[512];
    int grpc_port, http_port;
} proc_t;

/* Temp run directory (created once). */
const char *pdh_run_dir(void);
/* Starts a daemon; extra args end with NULL. Waits for its ports file (10 s). */
bool pdh_start(proc_t *p, const char *name, const char *exe_rel, const char *const *args);
bool pdh_start_router(proc_t *p, const char *extra_flag);
bool pdh_start_worker(proc_t *p, bool prefill, const char *id, int router_port);
/* SIGTERM (or SIGKILL) and wait (bounded); returns the exit status or -1. */
int pdh_stop(proc_t *p, int sig, uint32_t timeout_ms);
void pdh_kill_all(void);
/* GET path into buf (NUL-terminated); returns the HTTP status or -1. */
int pdh_http_get(int port, const char *path, char *buf, size_t cap);
/* Waits until GET /ready answers 200. */
bool pdh_wait_ready(int http_port, uint32_t timeout_ms);
/* Value of one metric sample of a daemon; NAN when absent. */
double pdh_metric(int http_port, const char *series);
/* Waits until the metric equals want. */
bool pdh_wait_metric(int http_port, const char *series, double want, uint32_t timeout_ms);

/* ---- client ---- */

typedef struct gen {
    /* request */
    const int32_t *ids;
    size_t n_ids;
    uint32_t max_tokens;
    float temperature, top_p;
    uint32_t top_k;
    uint64_t seed;
    bool seeded, ignore_eos;
    uint32_t timeout_ms;
    uint32_t cancel_after;       /* client-cancel after this many tokens (0: never) */
    const ProtobufCMessage *raw; /* send this message instead (malformed tests) */
    const char *model;
    /* result */
    bool done;
    ds4_rpc_code_t code;
    char message[512];
    int32_t out[4096];
    size_t n_out;
    double t_start, t_first, t_end;
    ds4_rpc_client_call_h call;
} gen_t;

bool pdh_client_open(int router_port);
void pdh_client_close(void);
/* Starts every call, runs the loop until all are done or timeout_ms passes. */
bool pdh_generate(gen_t *const *gens, size_t n, uint32_t timeout_ms);
/* Starts calls and returns; pdh_client_run runs the loop for ms (or until all done). */
bool pdh_generate_start(gen_t *g);
void pdh_client_run(uint32_t ms, gen_t *const *gens, size_t n);

/* Registers a worker that does not exist (its Worker service address is a closed port) with
 * the router, as a real worker would; true when the router accepted it. */
bool pdh_register_ghost(const char *id, int role, const uint8_t *digest, size_t digest_len,
                        int dead_port);
/* A port nothing listens on (bound, then closed). */
int pdh_dead_port(void);

/* ---- single-process reference ---- */

bool pdh_ref_open(const char *model_dir);
void pdh_ref_close(void);
/* Greedy/seeded generation exactly as ds4-decode does it (same sampler, EOS + max_tokens). */
bool pdh_ref_generate(const gen_t *g, int32_t *out, size_t *n_out);
int32_t pdh_ref_vocab(void);
int64_t pdh_ref_max_context(void);
/* 8-byte little-endian KV manifest digest of the reference model (what workers register). */
void pdh_ref_digest(uint8_t out[8]);

#endif /* DS4_TESTS_PD_HARNESS_H */
