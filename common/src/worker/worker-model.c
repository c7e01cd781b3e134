#include "ds4/worker.h"
#include "ds4/alloc.h"
#include "ds4/log.h"

#include <stdio.h>
#include <string.h>

ds4_status_t ds4_worker_model_open(const char *name, const char *dir, uint32_t threads,
                                   uint32_t *max_context, ds4_worker_model_t *out)
{
    ds4_worker_model_t wm;
    memset(&wm, 0, sizeof(wm));
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_model_params_t mp = ds4_model_params_default();
    mp.n_threads = (int)threads;
    char what[96];
    snprintf(what, sizeof(what), "%s: model", name);
    ds4_status_t st = ds4_model_load(dir, &mp, &wm.model, &diag);
    if (st != DS4_OK) {
        ds4_diag_log(&diag, what);
        goto free_diag;
    }
    wm.cfg = ds4_model_config(wm.model);
    st = ds4_kv_manifest_create(wm.cfg, &wm.manifest);
    if (st != DS4_OK) {
        ds4_log_error("%s: cannot build the KV manifest: %s", name, ds4_status_str(st));
        goto free_model;
    }
    uint64_t dg = ds4_kv_manifest_digest(wm.manifest);
    for (int i = 0; i < 8; i++)
        wm.digest[i] = (uint8_t)(dg >> (8 * i));
    if (*max_context == 0 || *max_context > wm.cfg->max_position_embeddings)
        *max_context = (uint32_t)DS4_MIN(wm.cfg->max_position_embeddings, (int64_t)UINT32_MAX);
    *out = wm;
    goto free_diag;

free_model:
    ds4_model_free(wm.model);
free_diag:
    ds4_diag_free(&diag);
    return st;
}

void ds4_worker_model_close(ds4_worker_model_t *wm)
{
    ds4_kv_manifest_destroy(wm->manifest);
    ds4_model_free(wm->model);
    memset(wm, 0, sizeof(*wm));
}
