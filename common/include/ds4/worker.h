/*
 * ds4/worker.h - what every worker daemon (ds4-prefill, ds4-decode) opens at start-up: the
 * checkpoint, its KV manifest and the manifest digest it announces when registering.
 *
 * ds4_worker_model_open logs every problem with the daemon's name and returns a status; on
 * failure nothing is left open. The handle owns model and manifest until ds4_worker_model_close.
 */
#ifndef DS4_WORKER_H
#define DS4_WORKER_H

#include "ds4/config.h"
#include "ds4/kv.h"
#include "ds4/model.h"
#include "ds4/status.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_worker_model {
    ds4_model_h model;
    const ds4_model_config_t *cfg;  /* owned by model */
    ds4_kv_manifest_h *manifest;
    uint8_t digest[8];              /* ds4_kv_manifest_digest, little-endian */
} ds4_worker_model_t;

/*
 * Loads the checkpoint directory `dir` with `threads` compute threads (0 = all cores), builds
 * its KV manifest, and clamps *max_context (0 = unset) to the model's max_position_embeddings.
 * `name` prefixes log lines ("ds4-decode").
 */
ds4_status_t ds4_worker_model_open(const char *name, const char *dir, uint32_t threads,
                                   uint32_t *max_context, ds4_worker_model_t *out);
void ds4_worker_model_close(ds4_worker_model_t *wm);

#ifdef __cplusplus
}
#endif
#endif /* DS4_WORKER_H */
