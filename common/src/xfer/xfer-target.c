/* The KV target blob: what decode's reserve hands (through the router) to prefill. */
#include "xfer-internal.h"

#include "ds4/alloc.h"
#include "ds4/crc32c.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static_assert(sizeof(ds4_xfer_target_hdr_t) == 72, "the KV target header is a wire format");

/* Builds the blob of a reservation (decode side). */
ds4_status_t ds4__xfer_target_encode(ds4_xfer_h *x, const xfer_resv_t *r, uint32_t deadline_ms,
                                     void **out, size_t *out_len);
ds4_status_t ds4__xfer_target_encode(ds4_xfer_h *x, const xfer_resv_t *r, uint32_t deadline_ms,
                                     void **out, size_t *out_len)
{
    void *view = NULL;
    size_t view_len = 0;
    ds4_status_t st = ds4_kv_table_encode(x->pool, r->table, &view, &view_len);
    if (st != DS4_OK)
        return st;
    size_t addr_len = strlen(x->address);
    if (view_len > UINT32_MAX || x->rkey_len > UINT16_MAX) {
        ds4_free(view);
        return DS4_ERR_OUT_OF_RANGE;
    }
    size_t total = sizeof(ds4_xfer_target_hdr_t) + addr_len + x->rkey_len + view_len + 4u;
    unsigned char *p = ds4_malloc(total);
    if (p == NULL) {
        ds4_free(view);
        return DS4_ERR_NO_MEMORY;
    }
    ds4_xfer_target_hdr_t h = {
        .magic = {'D', 'S', '4', 'T'},
        .version = DS4_XFER_TARGET_VERSION,
        .hdr_bytes = sizeof(ds4_xfer_target_hdr_t),
        .request_id = r->request_id,
        .decode_incarnation = x->inc,
        .manifest_digest = ds4_kv_manifest_digest(x->p.manifest),
        .n_tokens = r->n_tokens,
        .region_addr = (uint64_t)(uintptr_t)x->region_base,
        .region_bytes = x->region_bytes,
        .deadline_ms = deadline_ms,
        .addr_len = (uint16_t)addr_len,
        .rkey_len = (uint16_t)x->rkey_len,
        .view_len = (uint32_t)view_len,
    };
    unsigned char *q = p;
    memcpy(q, &h, sizeof(h));
    q += sizeof(h);
    memcpy(q, x->address, addr_len);
    q += addr_len;
    memcpy(q, x->rkey_buf, x->rkey_len);
    q += x->rkey_len;
    memcpy(q, view, view_len);
    q += view_len;
    uint32_t crc = ds4_crc32c(0, p, (size_t)(q - p));
    memcpy(q, &crc, 4);
    ds4_free(view);
    *out = p;
    *out_len = total;
    return DS4_OK;
}

ds4_status_t ds4_xfer_target_decode(const void *buf, size_t len, const ds4_kv_manifest_h *m,
                                    ds4_xfer_target_t *out, char *why, size_t why_len)
{
    const unsigned char *p = buf;
    ds4_xfer_target_t t;
    memset(&t, 0, sizeof(t));
    if (buf == NULL || len < sizeof(t.hdr) + 4u) {
        snprintf(why, why_len, "kv target: %zu bytes, too short", len);
        return DS4_ERR_PARSE;
    }
    memcpy(&t.hdr, p, sizeof(t.hdr));
    if (memcmp(t.hdr.magic, "DS4T", 4) != 0) {
        snprintf(why, why_len, "kv target: bad magic");
        return DS4_ERR_PARSE;
    }
    if (t.hdr.version != DS4_XFER_TARGET_VERSION) {
        snprintf(why, why_len, "kv target: version %u, this build speaks %u", t.hdr.version,
                 DS4_XFER_TARGET_VERSION);
        return DS4_ERR_VERSION;
    }
    uint64_t want = (uint64_t)sizeof(t.hdr) + t.hdr.addr_len + t.hdr.rkey_len + t.hdr.view_len +
                    4u;
    if (t.hdr.hdr_bytes != sizeof(t.hdr) || want != len || t.hdr.addr_len == 0 ||
        t.hdr.addr_len >= sizeof(t.addr) || t.hdr.rkey_len == 0) {
        snprintf(why, why_len, "kv target: inconsistent sizes (%zu bytes)", len);
        return DS4_ERR_PARSE;
    }
    uint32_t crc;
    memcpy(&crc, p + len - 4, 4);
    if (crc != ds4_crc32c(0, p, len - 4)) {
        snprintf(why, why_len, "kv target: crc32c mismatch");
        return DS4_ERR_PARSE;
    }
    if (t.hdr.manifest_digest != ds4_kv_manifest_digest(m)) {
        snprintf(why, why_len,
                 "kv target: decode manifest digest %016" PRIx64 " differs from ours %016" PRIx64
                 " (different model config)",
                 t.hdr.manifest_digest, ds4_kv_manifest_digest(m));
        return DS4_ERR_KV_MANIFEST;
    }
    const unsigned char *q = p + sizeof(t.hdr);
    memcpy(t.addr, q, t.hdr.addr_len);
    t.addr[t.hdr.addr_len] = '\0';
    q += t.hdr.addr_len;
    t.rkey = q;
    q += t.hdr.rkey_len;
    t.view = q;
    ds4_status_t st = ds4_kv_view_decode(t.view, t.hdr.view_len, m, &t.table, why, why_len);
    if (st != DS4_OK)
        return st;
    if (t.table.n_tokens != t.hdr.n_tokens) {
        snprintf(why, why_len, "kv target: block table is for %" PRIu64 " tokens, header %" PRIu64,
                 t.table.n_tokens, t.hdr.n_tokens);
        return DS4_ERR_PARSE;
    }
    /* every block must lie inside the registered region */
    for (int k = 0; k < DS4_KV_N_KINDS; k++) {
        uint64_t end = t.table.kind_offset[k] +
                       (uint64_t)t.table.n_blocks[k] * t.table.block_bytes[k];
        if (end > t.hdr.region_bytes || end < t.table.kind_offset[k]) {
            snprintf(why, why_len, "kv target: kind %s blocks exceed the region",
                     ds4_kv_kind_name((ds4_kv_group_kind_t)k));
            return DS4_ERR_PARSE;
        }
    }
    *out = t;
    return DS4_OK;
}
