/*
 * router/registry.h - the router's worker registry: who is alive, with which incarnation and
 * load, and the least-loaded choice. Pure bookkeeping (time is passed in, no I/O), so it is
 * unit-tested on its own; router.c attaches gRPC channels through the `user` pointer.
 *
 * A worker is keyed by worker_id. A registration with a new incarnation replaces the old
 * entry: the old incarnation is reported dead (its requests must fail) before the new one is
 * added. A heartbeat from an unknown (id, incarnation) is answered "unknown" so the worker
 * registers again. A worker not heard from for liveness_timeout_ms is dead and removed.
 */
#ifndef DS4_ROUTER_REGISTRY_H
#define DS4_ROUTER_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ds4/status.h"

typedef enum ds4_role {
    DS4_ROLE_PREFILL = 1, /* = WORKER_ROLE_PREFILL on the wire */
    DS4_ROLE_DECODE = 2,
} ds4_role_t;

typedef struct ds4_worker_load {
    uint32_t running, queued;
    uint64_t kv_blocks_used, kv_blocks_free, queued_tokens;
    bool draining;
} ds4_worker_load_t;

typedef struct ds4_worker {
    char *id;
    uint64_t incarnation;
    ds4_role_t role;
    char *rpc_address, *http_address, *model;
    uint8_t digest[64];
    size_t digest_len;
    uint32_t max_sequences, max_context, vocab_size;
    uint64_t kv_blocks_total;
    ds4_worker_load_t load;
    uint64_t last_seen_ms;
    uint32_t assigned; /* requests this router has placed on it and not yet finished */
    void *user;        /* router.c: its channel */
    struct ds4_worker *next;
} ds4_worker_t;

/* Called for a worker leaving the registry (replaced, timed out, removed); free `user` here. */
typedef void (*ds4_worker_gone_cb)(void *arg, ds4_worker_t *w, const char *why);

typedef struct ds4_registry {
    ds4_worker_t *head;
    uint32_t liveness_timeout_ms;
    ds4_worker_gone_cb gone;
    void *gone_arg;
} ds4_registry_t;

void ds4_registry_init(ds4_registry_t *r, uint32_t liveness_timeout_ms, ds4_worker_gone_cb gone,
                       void *arg);
/* Removes every worker (gone fires with "router stopping"). */
void ds4_registry_clear(ds4_registry_t *r);

typedef struct ds4_worker_info {
    const char *id, *rpc_address, *http_address, *model;
    uint64_t incarnation;
    ds4_role_t role;
    const uint8_t *digest;
    size_t digest_len;
    uint32_t max_sequences, max_context, vocab_size;
    uint64_t kv_blocks_total;
} ds4_worker_info_t;

/* Adds or replaces. *is_new is false when the same incarnation registered again (idempotent).
 * DS4_ERR_BAD_REQUEST (why filled) for a bad info, DS4_ERR_STALE for an incarnation of 0. */
ds4_status_t ds4_registry_register(ds4_registry_t *r, const ds4_worker_info_t *info,
                                   const ds4_worker_load_t *load, uint64_t now_ms,
                                   ds4_worker_t **out, bool *is_new, char *why, size_t why_len);
/* True when (id, incarnation) is known; updates its load and liveness. */
bool ds4_registry_heartbeat(ds4_registry_t *r, const char *id, uint64_t incarnation,
                            const ds4_worker_load_t *load, uint64_t now_ms);
/* Removes workers silent for longer than the liveness timeout; returns how many. */
size_t ds4_registry_sweep(ds4_registry_t *r, uint64_t now_ms);
/* Removes one worker (e.g. its stream broke: declared dead at once). */
void ds4_registry_remove(ds4_registry_t *r, ds4_worker_t *w, const char *why);
ds4_worker_t *ds4_registry_find(ds4_registry_t *r, const char *id);

/* The least-loaded live, non-draining worker of `role` that can hold `n_tokens` of context and
 * whose KV digest matches `digest` (NULL: any); NULL when none. Load is
 * max(running + queued, assigned) / max_sequences; ties go to more free KV blocks, then id. */
ds4_worker_t *ds4_registry_pick(ds4_registry_t *r, ds4_role_t role, uint64_t n_tokens,
                                const uint8_t *digest, size_t digest_len);
/* The same, never choosing the worker named `exclude_id` (may be NULL). */
ds4_worker_t *ds4_registry_pick_except(ds4_registry_t *r, ds4_role_t role, uint64_t n_tokens,
                                       const uint8_t *digest, size_t digest_len,
                                       const char *exclude_id);
size_t ds4_registry_count(const ds4_registry_t *r, ds4_role_t role);

#endif /* DS4_ROUTER_REGISTRY_H */
