/* Worker registry of the router (see registry.h). */
#include <stdio.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/log.h"
#include "registry.h"

void ds4_registry_init(ds4_registry_t *r, uint32_t liveness_timeout_ms, ds4_worker_gone_cb gone,
                       void *arg)
{
    memset(r, 0, sizeof(*r));
    r->liveness_timeout_ms = liveness_timeout_ms;
    r->gone = gone;
    r->gone_arg = arg;
}

static void worker_free(ds4_worker_t *w)
{
    ds4_free(w->id);
    ds4_free(w->rpc_address);
    ds4_free(w->http_address);
    ds4_free(w->model);
    ds4_free(w);
}

void ds4_registry_remove(ds4_registry_t *r, ds4_worker_t *w, const char *why)
{
    for (ds4_worker_t **pp = &r->head; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            ds4_log_info("registry: worker %s incarnation %016llx gone: %s", w->id,
                         (unsigned long long)w->incarnation, why);
            if (r->gone != NULL)
                r->gone(r->gone_arg, w, why);
            worker_free(w);
            return;
        }
    }
}

void ds4_registry_clear(ds4_registry_t *r)
{
    while (r->head != NULL)
        ds4_registry_remove(r, r->head, "router stopping");
}

ds4_worker_t *ds4_registry_find(ds4_registry_t *r, const char *id)
{
    for (ds4_worker_t *w = r->head; w != NULL; w = w->next)
        if (strcmp(w->id, id) == 0)
            return w;
    return NULL;
}

ds4_status_t ds4_registry_register(ds4_registry_t *r, const ds4_worker_info_t *in,
                                   const ds4_worker_load_t *load, uint64_t now_ms,
                                   ds4_worker_t **out, bool *is_new, char *why, size_t why_len)
{
    if (in->id == NULL || in->id[0] == '\0') {
        snprintf(why, why_len, "info.worker_id: required");
        return DS4_ERR_BAD_REQUEST;
    }
    if (in->role != DS4_ROLE_PREFILL && in->role != DS4_ROLE_DECODE) {
        snprintf(why, why_len, "info.role: must be PREFILL or DECODE, got %d", (int)in->role);
        return DS4_ERR_BAD_REQUEST;
    }
    if (in->rpc_address == NULL || strchr(in->rpc_address, ':') == NULL) {
        snprintf(why, why_len, "info.rpc_address: must be host:port");
        return DS4_ERR_BAD_REQUEST;
    }
    if (in->incarnation == 0) {
        snprintf(why, why_len, "info.incarnation: must not be 0");
        return DS4_ERR_STALE;
    }
    if (in->digest_len > sizeof(((ds4_worker_t *)0)->digest)) {
        snprintf(why, why_len, "info.kv_manifest_digest: longer than 64 bytes");
        return DS4_ERR_BAD_REQUEST;
    }
    ds4_worker_t *old = ds4_registry_find(r, in->id);
    if (old != NULL && old->incarnation == in->incarnation && old->role == in->role) {
        if (load != NULL)
            old->load = *load;
        old->last_seen_ms = now_ms;
        *out = old;
        *is_new = false;
        return DS4_OK;
    }
    ds4_worker_t *w = ds4_calloc(1, sizeof(*w));
    if (w == NULL)
        return DS4_ERR_NO_MEMORY;
    w->id = ds4_strdup(in->id);
    w->rpc_address = ds4_strdup(in->rpc_address);
    w->http_address = ds4_strdup(in->http_address != NULL ? in->http_address : "");
    w->model = ds4_strdup(in->model != NULL ? in->model : "");
    if (w->id == NULL || w->rpc_address == NULL || w->http_address == NULL || w->model == NULL) {
        worker_free(w);
        return DS4_ERR_NO_MEMORY;
    }
    if (old != NULL)
        ds4_registry_remove(r, old, "replaced by a new incarnation");
    w->incarnation = in->incarnation;
    w->role = in->role;
    if (in->digest_len > 0)
        memcpy(w->digest, in->digest, in->digest_len);
    w->digest_len = in->digest_len;
    w->max_sequences = in->max_sequences != 0 ? in->max_sequences : 1;
    w->max_context = in->max_context;
    w->vocab_size = in->vocab_size;
    w->kv_blocks_total = in->kv_blocks_total;
    if (load != NULL)
        w->load = *load;
    w->last_seen_ms = now_ms;
    w->next = r->head;
    r->head = w;
    ds4_log_info("registry: worker %s role %s incarnation %016llx at %s", w->id,
                 w->role == DS4_ROLE_PREFILL ? "prefill" : "decode",
                 (unsigned long long)w->incarnation, w->rpc_address);
    *out = w;
    *is_new = true;
    return DS4_OK;
}

bool ds4_registry_heartbeat(ds4_registry_t *r, const char *id, uint64_t incarnation,
                            const ds4_worker_load_t *load, uint64_t now_ms)
{
    ds4_worker_t *w = ds4_registry_find(r, id);
    if (w == NULL || w->incarnation != incarnation)
        return false;
    if (load != NULL)
        w->load = *load;
    w->last_seen_ms = now_ms;
    return true;
}

size_t ds4_registry_sweep(ds4_registry_t *r, uint64_t now_ms)
{
    size_t n = 0;
    for (ds4_worker_t *w = r->head, *next; w != NULL; w = next) {
        next = w->next;
        if (now_ms > w->last_seen_ms && now_ms - w->last_seen_ms > r->liveness_timeout_ms) {
            char why[96];
            snprintf(why, sizeof(why), "no heartbeat for %llu ms",
                     (unsigned long long)(now_ms - w->last_seen_ms));
            ds4_registry_remove(r, w, why);
            n++;
        }
    }
    return n;
}

/* Load as a fraction of capacity, compared without floating point: a/b < c/d. */
static bool less_loaded(const ds4_worker_t *a, const ds4_worker_t *b)
{
    uint64_t la = DS4_MAX((uint64_t)a->load.running + a->load.queued, (uint64_t)a->assigned);
    uint64_t lb = DS4_MAX((uint64_t)b->load.running + b->load.queued, (uint64_t)b->assigned);
    uint64_t x = la * b->max_sequences, y = lb * a->max_sequences;
    if (x != y)
        return x < y;
    if (a->load.kv_blocks_free != b->load.kv_blocks_free)
        return a->load.kv_blocks_free > b->load.kv_blocks_free;
    return strcmp(a->id, b->id) < 0;
}

ds4_worker_t *ds4_registry_pick(ds4_registry_t *r, ds4_role_t role, uint64_t n_tokens,
                                const uint8_t *digest, size_t digest_len)
{
    return ds4_registry_pick_except(r, role, n_tokens, digest, digest_len, NULL);
}

ds4_worker_t *ds4_registry_pick_except(ds4_registry_t *r, ds4_role_t role, uint64_t n_tokens,
                                       const uint8_t *digest, size_t digest_len,
                                       const char *exclude_id)
{
    ds4_worker_t *best = NULL;
    for (ds4_worker_t *w = r->head; w != NULL; w = w->next) {
        if (w->role != role || w->load.draining)
            continue;
        if (exclude_id != NULL && strcmp(w->id, exclude_id) == 0)
            continue;
        if (w->max_context != 0 && n_tokens > w->max_context)
            continue;
        if (digest != NULL &&
            (w->digest_len != digest_len || memcmp(w->digest, digest, digest_len) != 0))
            continue;
        if (best == NULL || less_loaded(w, best))
            best = w;
    }
    return best;
}

size_t ds4_registry_count(const ds4_registry_t *r, ds4_role_t role)
{
    size_t n = 0;
    for (const ds4_worker_t *w = r->head; w != NULL; w = w->next)
        n += w->role == role;
    return n;
}
